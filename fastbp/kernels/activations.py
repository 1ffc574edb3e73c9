"""Scalar activations y = f(z) and dz = dy f'(z), elementwise over flat arrays.

Every activation is a pair of scalar functions f(z, p), f'(z, y, p); one loop kernel per
direction is compiled for each activation apart (``FORWARD``, ``BACKWARD``), so that a network
compiles its own activations only and each loop vectorises.
exp, tanh, sigmoid and softplus come from :mod:`fastbp.kernels.fastmath` (pure arithmetic, within
about 1 ulp, vectorised); GELU's erf is libm's.
"""

import math

from numba import prange

from .._config import INLINE, PARALLEL, njit, serial_twin, specialise
from .fastmath import fexp, fexpm1, fsigmoid, fsoftplus, ftanh

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTPLUS, ELU, GELU, EXP = range(9)

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


sigmoid, softplus = fsigmoid, fsoftplus  # stable for any z: exp(-|z|) never overflows


@njit(**INLINE)
def _gelu(z):
    return 0.5 * z * (1 + math.erf(z * _SQRT_HALF))


@njit(**INLINE)
def _dgelu(z):
    return 0.5 * (1 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * fexp(-0.5 * z * z)


# F and DF: the activation and its derivative, bound per kind by ``_config.specialise``.
F = DF = None


@njit(**PARALLEL)
def elementwise_forward(p, z, y):
    """y[i] = F(z[i], p) over flat arrays."""
    for i in prange(z.shape[0]):
        y[i] = F(z[i], p)


@njit(**PARALLEL)
def elementwise_backward(p, z, y, dy, dz):
    """dz[i] = dy[i] DF(z[i], y[i], p) over flat arrays (the diagonal Jacobian)."""
    for i in prange(z.shape[0]):
        dz[i] = dy[i] * DF(z[i], y[i], p)


# Each activation: f(z, p) and f'(z, y, p) from z and y = f(z). ``not z < 0`` keeps NaN as NaN
# where ``z >= 0`` would map it to 0; at the kink z = 0 the seed's convention (the z >= 0
# branch; ReLU's f'(0) = p).
@njit(**INLINE)
def _identity(z, p):
    return z


@njit(**INLINE)
def _didentity(z, y, p):
    return 1


@njit(**INLINE)
def _sigmoid(z, p):
    return fsigmoid(z)


@njit(**INLINE)
def _dsigmoid(z, y, p):
    return y * (1 - y)


@njit(**INLINE)
def _tanh(z, p):
    return ftanh(z)


@njit(**INLINE)
def _dtanh(z, y, p):
    return 1 - y * y


@njit(**INLINE)
def _relu(z, p):
    return z if not z < 0 else 0 * z


@njit(**INLINE)
def _drelu(z, y, p):
    return 0 if z < 0 else (p if z == 0 else 1)


@njit(**INLINE)
def _leaky_relu(z, p):
    return z if not z < 0 else p * z


@njit(**INLINE)
def _dleaky_relu(z, y, p):
    return p if z < 0 else 1


@njit(**INLINE)
def _softplus(z, p):
    return fsoftplus(z)


@njit(**INLINE)
def _dsoftplus(z, y, p):
    return fsigmoid(z)


@njit(**INLINE)
def _elu(z, p):
    return z if not z < 0 else p * fexpm1(z)


@njit(**INLINE)
def _delu(z, y, p):
    return y + p if z < 0 else 1


@njit(**INLINE)
def _gelu_p(z, p):
    return _gelu(z)


@njit(**INLINE)
def _dgelu_p(z, y, p):
    return _dgelu(z)


@njit(**INLINE)
def _exp(z, p):
    return fexp(z)


@njit(**INLINE)
def _dexp(z, y, p):
    return y


_KINDS = {IDENTITY: ("identity", _identity, _didentity),
          SIGMOID: ("sigmoid", _sigmoid, _dsigmoid),
          TANH: ("tanh", _tanh, _dtanh), RELU: ("relu", _relu, _drelu),
          LEAKY_RELU: ("leaky_relu", _leaky_relu, _dleaky_relu),
          SOFTPLUS: ("softplus", _softplus, _dsoftplus), ELU: ("elu", _elu, _delu),
          GELU: ("gelu", _gelu_p, _dgelu_p), EXP: ("exp", _exp, _dexp)}
#: kind -> its forward kernel (p, z, y) and backward kernel (p, z, y, dy, dz), each compiled on
#: first use, so a network compiles only its own activations; their serial twins the same.
FORWARD = {k: specialise(elementwise_forward, f"{n}_forward", F=f)
           for k, (n, f, _) in _KINDS.items()}
BACKWARD = {k: specialise(elementwise_backward, f"{n}_backward", DF=df)
            for k, (n, _, df) in _KINDS.items()}
FORWARD_SERIAL = {k: serial_twin(v) for k, v in FORWARD.items()}
BACKWARD_SERIAL = {k: serial_twin(v) for k, v in BACKWARD.items()}


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


