"""Affine layer z = y W^T + b and its backward pass (seed notation), three ways.

- Loop kernels (``dense_forward``, ``dense_backward_params``, ``dense_backward_input``): every
  output element is a running sum in a fixed order of its terms, z[t, j] = b[j] + y[t, 0]
  W[0, j]^T + y[t, 1] W[1, j]^T + ..., computed as axpy over the contiguous output row, which
  LLVM vectorises without reordering any sum. ``prange`` runs over blocks of outputs that each
  iteration owns, and their ``_serial`` twins run the same code on one thread.
- BLAS kernels (``*_blas``), for products large enough that a tuned GEMM wins.
- ``dense_mode`` picks one from the sizes alone, so the per-node path and the engine always pick
  the same kernel and give the same numbers.
"""

import numpy as np
from numba import prange

from .._config import ARITH, ARITH_PARALLEL, SERIAL, njit, serial_twin

SERIAL_MODE, PARALLEL_MODE, BLAS_MODE = 0, 1, 2
PAR_MIN_WORK = 1 << 16  # multiply-adds below which waking a second thread does not pay
BLAS_MIN_WORK = 1 << 22  # multiply-adds above which BLAS's GEMM beats the loop kernels
ROWS, COLS = 8, 512  # output block: 8 rows share each loaded row of W^T; 512 columns in cache


@njit(**SERIAL)
def dense_mode(T, n_out, n_in):
    """The kernel for a (T, n_in) x (n_in, n_out) product: serial, parallel or BLAS."""
    work = T * n_out * n_in
    if work >= BLAS_MIN_WORK and T >= 16:
        return BLAS_MODE
    return PARALLEL_MODE if work >= PAR_MIN_WORK else SERIAL_MODE


@njit(**ARITH)
def _axpy(alpha, x, out):
    """out += alpha * x."""
    for i in range(x.shape[0]):
        out[i] += alpha * x[i]


@njit(**ARITH)
def _affine_block(y, WT, b, z, t0, t1, j0, j1):
    """z[t0:t1, j0:j1] = b[j0:j1] + sum_i y[t, i] WT[i, j0:j1], i in increasing order."""
    for t in range(t0, t1):
        z[t, j0:j1] = b[j0:j1]
    for i in range(y.shape[1]):
        w = WT[i, j0:j1]
        for t in range(t0, t1):
            _axpy(y[t, i], w, z[t, j0:j1])


@njit(**ARITH_PARALLEL)
def dense_forward(y, W, b, z, WT):
    """z[t, j] = b[j] + sum_i W[j, i] y[t, i]; WT receives W^T; block (rows, columns) owns z."""
    for i in prange(W.shape[1]):
        WT[i, :] = W[:, i]
    nt, nj = -(-y.shape[0] // ROWS), -(-W.shape[0] // COLS)
    for blk in prange(nt * nj):
        t0, j0 = (blk // nj) * ROWS, (blk % nj) * COLS
        _affine_block(y, WT, b, z, t0, min(t0 + ROWS, y.shape[0]), j0, min(j0 + COLS, W.shape[0]))


@njit(**ARITH_PARALLEL)
def dense_backward_params(dz, y, dW, db):
    """dW[j, i] = sum_t dz[t, j] y[t, i] and db[j] = sum_t dz[t, j], t in increasing order;
    unit j owns dW[j] and db[j]."""
    for j in prange(dW.shape[0]):
        dW[j, :] = 0
        s = dz.dtype.type(0)
        for t in range(dz.shape[0]):
            _axpy(dz[t, j], y[t], dW[j])
            s += dz[t, j]
        db[j] = s


@njit(**ARITH_PARALLEL)
def dense_backward_input(dz, W, dy):
    """dy[t, i] = sum_j dz[t, j] W[j, i], j in increasing order; block (row, columns) owns dy."""
    nc = -(-W.shape[1] // COLS)
    for blk in prange(dz.shape[0] * nc):
        t, i0 = blk // nc, (blk % nc) * COLS
        i1 = min(i0 + COLS, W.shape[1])
        dy[t, i0:i1] = 0
        for j in range(W.shape[0]):
            _axpy(dz[t, j], W[j, i0:i1], dy[t, i0:i1])


@njit(**SERIAL)
def dense_forward_blas(y, W, b, z):
    """z = y W^T + b through BLAS's GEMM."""
    np.dot(y, W.T, z)
    for t in range(z.shape[0]):
        z[t, :] += b


@njit(**SERIAL)
def dense_backward_params_blas(dz, y, dW, db):
    """dW = dz^T y through GEMM; db[j] = sum_t dz[t, j] in increasing t."""
    np.dot(dz.T, y, dW)
    db[:] = 0
    for t in range(dz.shape[0]):
        db += dz[t]


@njit(**SERIAL)
def dense_backward_input_blas(dz, W, dy):
    """dy = dz W through GEMM."""
    np.dot(dz, W, dy)


# The same kernels run serially, for ops too small to split (see _config.serial_twin).
dense_forward_serial = serial_twin(dense_forward)
dense_backward_params_serial = serial_twin(dense_backward_params)
dense_backward_input_serial = serial_twin(dense_backward_input)


@njit(**SERIAL)
def affine(y, W, b, z, WT):
    """z = y W^T + b by the kernel ``dense_mode`` picks (WT: scratch of shape (n_in, n_out))."""
    mode = dense_mode(y.shape[0], W.shape[0], W.shape[1])
    if mode == BLAS_MODE:
        dense_forward_blas(y, W, b, z)
    elif mode == PARALLEL_MODE:
        dense_forward(y, W, b, z, WT)
    else:
        dense_forward_serial(y, W, b, z, WT)


@njit(**SERIAL)
def affine_backward(dz, y, W, dW, db, dy, need_dy):
    """dW, db and (if ``need_dy``) dy by the kernels ``dense_mode`` picks."""
    mode = dense_mode(dz.shape[0], W.shape[0], W.shape[1])
    if mode == BLAS_MODE:
        dense_backward_params_blas(dz, y, dW, db)
        if need_dy:
            dense_backward_input_blas(dz, W, dy)
    elif mode == PARALLEL_MODE:
        dense_backward_params(dz, y, dW, db)
        if need_dy:
            dense_backward_input(dz, W, dy)
    else:
        dense_backward_params_serial(dz, y, dW, db)
        if need_dy:
            dense_backward_input_serial(dz, W, dy)
