"""Affine layer z = y W^T + b and its backward pass, as per-unit loops (seed notation)."""

from numba import prange

from .._config import ARITH, ARITH_PARALLEL, njit


@njit(**ARITH)
def _dot(a, b):
    """sum_i a[i] b[i], one fixed order for a given length (vectorised by reassociation)."""
    s = a.dtype.type(0)
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(**ARITH)
def _axpy(alpha, x, out):
    """out += alpha * x."""
    for i in range(x.shape[0]):
        out[i] += alpha * x[i]


@njit(**ARITH_PARALLEL)
def dense_forward(y, W, b, z):
    """z[t, j] = b[j] + sum_i W[j, i] y[t, i]; instance t owns row z[t]."""
    for t in prange(y.shape[0]):
        for j in range(W.shape[0]):
            z[t, j] = b[j] + _dot(W[j], y[t])


@njit(**ARITH_PARALLEL)
def dense_backward_params(dz, y, dW, db):
    """dW[j, i] = sum_t dz[t, j] y[t, i] and db[j] = sum_t dz[t, j]; unit j owns dW[j], db[j]."""
    for j in prange(dW.shape[0]):
        dW[j, :] = 0
        s = dz.dtype.type(0)
        for t in range(dz.shape[0]):
            _axpy(dz[t, j], y[t], dW[j])
            s += dz[t, j]
        db[j] = s


@njit(**ARITH_PARALLEL)
def dense_backward_input(dz, W, dy):
    """dy[t, i] = sum_j dz[t, j] W[j, i]; instance t owns row dy[t]."""
    for t in prange(dz.shape[0]):
        dy[t, :] = 0
        for j in range(W.shape[0]):
            _axpy(dz[t, j], W[j], dy[t])
