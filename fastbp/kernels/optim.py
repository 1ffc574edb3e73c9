"""Optimizer updates, each one kernel over the flat parameter buffer (element i owns p[i])."""

import math

from numba import prange

from .._config import PARALLEL, njit, serial_twin


@njit(**PARALLEL)
def sgd_step(p, g, v, lr, momentum, nesterov, weight_decay):
    """g' = g + wd p; v = mu v + g'; p -= lr (g' + mu v if nesterov else v) (PyTorch's SGD;
    with mu = 0, plain gradient descent p -= lr g')."""
    for i in prange(p.shape[0]):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0:
            v[i] = momentum * v[i] + gi
            gi = gi + momentum * v[i] if nesterov else v[i]
        p[i] -= lr * gi


@njit(**PARALLEL)
def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """AdamW: p -= lr wd p; m, v moving averages of g and g^2; p -= lr m^ / (sqrt(v^) + eps)
    with the bias corrections m^ = m / (1 - beta1^t), v^ = v / (1 - beta2^t)."""
    c1 = 1 - beta1 ** t
    c2 = 1 - beta2 ** t
    for i in prange(p.shape[0]):
        p[i] -= lr * weight_decay * p[i]
        m[i] = beta1 * m[i] + (1 - beta1) * g[i]
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
        p[i] -= lr * (m[i] / c1) / (math.sqrt(v[i] / c2) + eps)


# The same kernels run serially, for ops too small to split (see _config.serial_twin).
sgd_step_serial = serial_twin(sgd_step)
adam_step_serial = serial_twin(adam_step)
