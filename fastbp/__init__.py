"""fastbp: neural networks trained by backpropagation on the CPU, with numba kernels."""

from . import callbacks, datasets
from ._config import get_num_threads, set_num_threads
from .gradcheck import GradcheckReport, gradcheck
from .io import CheckpointError, load
from .lbfgs import LBFGS
from .losses import KL, L2, BinaryKL, Divergence, Poisson
from .network import Sequential
from .norm import BatchNorm1d, LayerNorm
from .nodes import (ELU, GELU, Dropout, Exp, Identity, LeakyReLU, Linear, Node, ReLU, RReLU,
                    Sigmoid, Softplus, Tanh)
from .optim import SGD, Adam, CosineLR, ExponentialLR, RMSprop, Schedule, StepLR
from .products import MaxOver, MaxPool1d, PairProduct, PowerProduct, Product
from .training import History, TrainingError, accuracy_of, fit
from .vector import Softmax, VectorActivation

__version__ = "0.1.0"

__all__ = [
    "Adam", "CheckpointError", "CosineLR", "ExponentialLR", "History", "LBFGS", "SGD",
    "Schedule", "StepLR", "TrainingError", "accuracy_of", "callbacks", "datasets", "fit", "load",
    "BinaryKL", "Divergence", "Dropout", "ELU", "Exp", "GELU", "GradcheckReport", "Identity",
    "KL", "L2", "LeakyReLU", "Linear", "MaxOver", "MaxPool1d", "Node", "PairProduct",
    "PowerProduct", "Poisson", "Product", "ReLU", "RMSprop", "RReLU", "Sequential", "Sigmoid",
    "Softmax", "Softplus", "Tanh", "VectorActivation", "get_num_threads", "gradcheck",
    "set_num_threads", "BatchNorm1d", "LayerNorm",
]
