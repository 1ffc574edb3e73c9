"""fastbp: neural networks trained by backpropagation on the CPU, with numba kernels."""

from . import datasets
from ._config import get_num_threads, set_num_threads
from .gradcheck import GradcheckReport, gradcheck
from .io import CheckpointError, load
from .losses import KL, L2, BinaryKL, Divergence
from .network import Sequential
from .norm import BatchNorm1d, LayerNorm
from .nodes import ELU, GELU, Identity, LeakyReLU, Linear, Node, ReLU, RReLU, Sigmoid, Softplus, Tanh
from .optim import SGD, Adam, CosineLR, ExponentialLR, Schedule, StepLR
from .products import MaxOver, MaxPool1d, PairProduct, PowerProduct, Product
from .training import History, TrainingError, accuracy_of, fit
from .vector import Softmax, VectorActivation

__version__ = "0.1.0"

__all__ = [
    "Adam", "CheckpointError", "CosineLR", "ExponentialLR", "History", "SGD", "Schedule",
    "StepLR", "TrainingError", "accuracy_of", "datasets", "fit", "load",
    "BinaryKL", "Divergence", "ELU", "GELU", "GradcheckReport", "Identity", "KL", "L2",
    "LeakyReLU", "Linear", "MaxOver", "MaxPool1d", "Node", "PairProduct", "PowerProduct",
    "Product", "ReLU", "RReLU", "Sequential", "Sigmoid", "Softmax", "Softplus", "Tanh",
    "VectorActivation", "get_num_threads", "gradcheck", "set_num_threads",
    "BatchNorm1d", "LayerNorm",
]
