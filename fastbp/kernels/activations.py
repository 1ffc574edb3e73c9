"""Scalar activations y = f(z) and dz = dy f'(z), elementwise over flat arrays.

One forward and one backward kernel serve every scalar activation; ``kind`` picks the function
(it is loop-invariant, so the branch costs nothing per element) and ``p`` is its one parameter.
exp, tanh, sigmoid and softplus come from :mod:`fastbp.kernels.fastmath` (pure arithmetic, within
about 1 ulp, vectorised); GELU's erf is libm's.
"""

import math

from numba import prange

from .._config import INLINE, PARALLEL, njit, serial_twin
from .fastmath import fexp, fexpm1, fsigmoid, fsoftplus, ftanh

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTPLUS, ELU, GELU = range(8)

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


sigmoid, softplus = fsigmoid, fsoftplus  # stable for any z: exp(-|z|) never overflows


@njit(**INLINE)
def _gelu(z):
    return 0.5 * z * (1 + math.erf(z * _SQRT_HALF))


@njit(**INLINE)
def _dgelu(z):
    return 0.5 * (1 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * fexp(-0.5 * z * z)


@njit(**PARALLEL)
def scalar_forward(kind, p, z, y):
    """y[i] = f(z[i]) over flat arrays. One loop per kind (the branch outside the loop, so each
    loop vectorises). ``not z < 0`` keeps NaN as NaN where ``z >= 0`` would map it to 0."""
    n = z.shape[0]
    if kind == IDENTITY:
        for i in prange(n):
            y[i] = z[i]
    elif kind == SIGMOID:
        for i in prange(n):
            y[i] = fsigmoid(z[i])
    elif kind == TANH:
        for i in prange(n):
            y[i] = ftanh(z[i])
    elif kind == RELU:
        for i in prange(n):
            y[i] = z[i] if not z[i] < 0 else 0 * z[i]
    elif kind == LEAKY_RELU:
        for i in prange(n):
            y[i] = z[i] if not z[i] < 0 else p * z[i]
    elif kind == SOFTPLUS:
        for i in prange(n):
            y[i] = fsoftplus(z[i])
    elif kind == ELU:
        for i in prange(n):
            y[i] = z[i] if not z[i] < 0 else p * fexpm1(z[i])
    else:  # GELU, the exact (erf) form
        for i in prange(n):
            y[i] = _gelu(z[i])


@njit(**PARALLEL)
def scalar_backward(kind, p, z, y, dy, dz):
    """dz[i] = dy[i] f'(z[i]) over flat arrays (the diagonal Jacobian), f' from z and y = f(z);
    at the kink z = 0 the seed's convention (the z >= 0 branch; ReLU's f'(0) = p)."""
    n = z.shape[0]
    if kind == IDENTITY:
        for i in prange(n):
            dz[i] = dy[i]
    elif kind == SIGMOID:
        for i in prange(n):
            dz[i] = dy[i] * (y[i] * (1 - y[i]))
    elif kind == TANH:
        for i in prange(n):
            dz[i] = dy[i] * (1 - y[i] * y[i])
    elif kind == RELU:
        for i in prange(n):
            dz[i] = dy[i] * (0 if z[i] < 0 else (p if z[i] == 0 else 1))
    elif kind == LEAKY_RELU:
        for i in prange(n):
            dz[i] = dy[i] * (p if z[i] < 0 else 1)
    elif kind == SOFTPLUS:
        for i in prange(n):
            dz[i] = dy[i] * fsigmoid(z[i])
    elif kind == ELU:
        for i in prange(n):
            dz[i] = dy[i] * (y[i] + p if z[i] < 0 else 1)
    else:
        for i in prange(n):
            dz[i] = dy[i] * _dgelu(z[i])


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
