"""Scalar activations y = f(z) and dz = dy f'(z), elementwise over flat arrays.

One forward and one backward kernel serve every scalar activation; ``kind`` picks the function
(it is loop-invariant, so the branch costs nothing per element) and ``p`` is its one parameter.
exp, tanh, sigmoid and softplus come from :mod:`fastbp.kernels.fastmath` (pure arithmetic, within
about 1 ulp, vectorised); GELU's erf is libm's.
"""

import math

from numba import prange

from .._config import PARALLEL, SERIAL, njit, serial_twin
from .fastmath import fexp, fexpm1, fsigmoid, fsoftplus, ftanh

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTPLUS, ELU, GELU = range(8)

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


sigmoid, softplus = fsigmoid, fsoftplus  # stable for any z: exp(-|z|) never overflows


@njit(**SERIAL)
def _f(kind, p, z):
    """y = f(z). ``not z < 0`` keeps NaN as NaN where ``z >= 0`` would map it to 0."""
    if kind == IDENTITY:
        return z
    if kind == SIGMOID:
        return sigmoid(z)
    if kind == TANH:
        return ftanh(z)
    if kind == RELU:
        return z if not z < 0 else 0 * z
    if kind == LEAKY_RELU:
        return z if not z < 0 else p * z
    if kind == SOFTPLUS:
        return softplus(z)
    if kind == ELU:
        return z if not z < 0 else p * fexpm1(z)
    return 0.5 * z * (1 + math.erf(z * _SQRT_HALF))  # GELU, exact (erf) form


@njit(**SERIAL)
def _df(kind, p, z, y):
    """f'(z), from z and y = f(z); at the kink z = 0 the seed's convention (the z >= 0 branch)."""
    if kind == IDENTITY:
        return 1
    if kind == SIGMOID:
        return y * (1 - y)
    if kind == TANH:
        return 1 - y * y
    if kind == RELU:
        return 0 if z < 0 else (p if z == 0 else 1)
    if kind == LEAKY_RELU:
        return p if z < 0 else 1
    if kind == SOFTPLUS:
        return sigmoid(z)
    if kind == ELU:
        return y + p if z < 0 else 1
    return 0.5 * (1 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * fexp(-0.5 * z * z)


@njit(**PARALLEL)
def scalar_forward(kind, p, z, y):
    """y[i] = f(z[i]) over flat arrays."""
    for i in prange(z.shape[0]):
        y[i] = _f(kind, p, z[i])


@njit(**PARALLEL)
def scalar_backward(kind, p, z, y, dy, dz):
    """dz[i] = dy[i] f'(z[i]) over flat arrays (the diagonal Jacobian)."""
    for i in prange(z.shape[0]):
        dz[i] = dy[i] * _df(kind, p, z[i], y[i])


@njit(**PARALLEL)
def rrelu_forward(z, a, y):
    """Randomized leaky ReLU in training: y[i] = z[i] if z[i] >= 0 else a[i] z[i]."""
    for i in prange(z.shape[0]):
        y[i] = z[i] if not z[i] < 0 else a[i] * z[i]


@njit(**PARALLEL)
def rrelu_backward(z, a, dy, dz):
    """dz[i] = dy[i] (1 if z[i] >= 0 else a[i])."""
    for i in prange(z.shape[0]):
        dz[i] = dy[i] if not z[i] < 0 else a[i] * dy[i]


# The same kernels run serially, for ops too small to split (see _config.serial_twin).
scalar_forward_serial = serial_twin(scalar_forward)
scalar_backward_serial = serial_twin(scalar_backward)
