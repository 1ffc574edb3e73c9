"""Normalisation: layer normalisation of each row and batch normalisation of each column.

Both give y = g * xhat + b with xhat = (x - mu) r, r = 1 / sqrt(var + eps), var the biased
variance, as PyTorch's ``LayerNorm`` and ``BatchNorm1d``: LayerNorm takes mu and var over the
units of a row t (every output of the row depends on every input of the row), BatchNorm over
the rows of a column j while training, and its running statistics in evaluation. Forward saves
mu and r (rounded to the dtype) and computes y from the saved values, so backward
differentiates exactly what forward computed. Every sum is one owner's loop in increasing
index order, accumulated in float64: row t by its thread (LayerNorm's dx), column j by its
(BatchNorm, and the parameter gradients dg, db of both), so results do not depend on the
thread count. An empty ``dg`` (a node without gain and bias) skips the parameter gradients.

The engine's op functions for both nodes follow the kernels (see :mod:`fastbp.kernels.engine`).
"""

import math

import numpy as np
from numba import carray, prange

from .._config import OP, PARALLEL, SERIAL, njit, pointer, serial_twin
from .engine import (A1, A2, A3, ACT, B, CONSTS, DBIAS, FP, GIN, GOUT, GRAD, GRADS, ICONSTS,
                     IN, K, N_OUT, OUT, PARAMS, W, ZEROS, _fields, _ints, _mat, _vec)


# -- leaf helpers ------------------------------------------------------------------------------
@njit(**SERIAL)
def _moments(x, eps):
    """(mean, 1 / sqrt(biased variance + eps), sum of squared deviations) of the vector x, in
    float64, in two passes."""
    n = x.shape[0]
    s = 0.0
    for i in range(n):
        s += x[i]
    m = s / n
    v = 0.0
    for i in range(n):
        d = x[i] - m
        v += d * d
    return m, 1.0 / math.sqrt(v / n + eps), v


@njit(**SERIAL)
def _affine_sums(x, dy, m, r):
    """(sum_t dy[t] xhat[t], sum_t dy[t]) with xhat = (x - m) r, over one column."""
    sg, sb = 0.0, 0.0
    for t in range(x.shape[0]):
        sg += dy[t] * ((x[t] - m) * r)
        sb += dy[t]
    return sg, sb


# -- LayerNorm ---------------------------------------------------------------------------------
@njit(**PARALLEL)
def layernorm_forward(x, g, b, eps, y, mean, rstd):
    """y[t, i] = g[i] (x[t, i] - mean[t]) rstd[t] + b[i], mean[t] and rstd[t] = 1 / sqrt(var[t]
    + eps) over row t (saved for backward); row t owned by t."""
    for t in prange(x.shape[0]):
        m, r, _ = _moments(x[t], eps)
        mean[t], rstd[t] = m, r
        for i in range(x.shape[1]):
            y[t, i] = (x[t, i] - mean[t]) * rstd[t] * g[i] + b[i]


@njit(**PARALLEL)
def layernorm_backward(x, g, dy, mean, rstd, dx, dg, db, need_dx):
    """dg[i] = sum_t dy[t, i] xhat[t, i], db[i] = sum_t dy[t, i] (column i owned by i), and if
    ``need_dx`` the row's VJP dx[t] = rstd[t] (e - mean(e) - xhat[t] mean(e xhat[t])), e = g dy[t]
    (row t owned by t)."""
    for i in prange(dg.shape[0]):
        sg, sb = 0.0, 0.0
        for t in range(x.shape[0]):
            sg += dy[t, i] * ((x[t, i] - mean[t]) * rstd[t])
            sb += dy[t, i]
        dg[i], db[i] = sg, sb
    if need_dx:
        for t in prange(x.shape[0]):
            _layernorm_row_vjp(x[t], g, dy[t], mean[t], rstd[t], dx[t])


@njit(**SERIAL)
def _layernorm_row_vjp(x, g, dy, m, r, dx):
    n = x.shape[0]
    se, seh = 0.0, 0.0
    for i in range(n):
        e = dy[i] * g[i]
        se += e
        seh += e * ((x[i] - m) * r)
    se, seh = se / n, seh / n
    for i in range(n):
        dx[i] = r * (dy[i] * g[i] - se - (x[i] - m) * r * seh)


# -- BatchNorm1d -------------------------------------------------------------------------------
@njit(**PARALLEL)
def batchnorm_forward_train(x, g, b, eps, momentum, y, mean, rstd, running_mean, running_var):
    """y[:, j] = g[j] (x[:, j] - mean[j]) rstd[j] + b[j] with the batch's mean and biased
    variance of column j (saved for backward); running = (1 - momentum) running + momentum
    batch statistic, the unbiased variance for ``running_var``; column j owned by j."""
    T = x.shape[0]
    for j in prange(x.shape[1]):
        m, r, v = _moments(x[:, j], eps)
        mean[j], rstd[j] = m, r
        for t in range(T):
            y[t, j] = (x[t, j] - mean[j]) * rstd[j] * g[j] + b[j]
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * m
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * (v / (T - 1))


@njit(**PARALLEL)
def batchnorm_forward_eval(x, g, b, eps, running_mean, running_var, y, mean, rstd):
    """y[t, j] = g[j] (x[t, j] - mean[j]) rstd[j] + b[j] with mean = running_mean and rstd =
    1 / sqrt(running_var + eps) (saved for backward); row t owned by t."""
    for j in range(x.shape[1]):
        mean[j], rstd[j] = running_mean[j], 1.0 / math.sqrt(running_var[j] + eps)
    for t in prange(x.shape[0]):
        for j in range(x.shape[1]):
            y[t, j] = (x[t, j] - mean[j]) * rstd[j] * g[j] + b[j]


@njit(**PARALLEL)
def batchnorm_backward_train(x, g, dy, mean, rstd, dx, dg, db, need_dx):
    """Through the batch statistics, per column j (owned by j): with sg = sum_t dy xhat and
    sb = sum_t dy, dg[j] = sg, db[j] = sb and dx[t, j] = g[j] rstd[j] / T (T dy[t, j] - sb -
    xhat[t, j] sg)."""
    T = x.shape[0]
    for j in prange(x.shape[1]):
        sg, sb = _affine_sums(x[:, j], dy[:, j], mean[j], rstd[j])
        if dg.shape[0] > 0:
            dg[j], db[j] = sg, sb
        if need_dx:
            k = g[j] * rstd[j] / T
            for t in range(T):
                dx[t, j] = k * (T * dy[t, j] - sb - (x[t, j] - mean[j]) * rstd[j] * sg)


@njit(**PARALLEL)
def batchnorm_backward_eval(x, g, dy, mean, rstd, dx, dg, db, need_dx):
    """With fixed (running) statistics the node is affine: dg[j] = sum_t dy xhat, db[j] =
    sum_t dy (column j owned by j), dx[t, j] = dy[t, j] g[j] rstd[j] (row t owned by t)."""
    for j in prange(dg.shape[0]):
        dg[j], db[j] = _affine_sums(x[:, j], dy[:, j], mean[j], rstd[j])
    if need_dx:
        for t in prange(x.shape[0]):
            for j in range(x.shape[1]):
                dx[t, j] = dy[t, j] * g[j] * rstd[j]


# The same kernels run serially, for ops too small to split (see _config.serial_twin).
layernorm_forward_serial = serial_twin(layernorm_forward)
layernorm_backward_serial = serial_twin(layernorm_backward)
batchnorm_forward_train_serial = serial_twin(batchnorm_forward_train)
batchnorm_forward_eval_serial = serial_twin(batchnorm_forward_eval)
batchnorm_backward_train_serial = serial_twin(batchnorm_backward_train)


# ---------------------------------------------------------------------------------------------
# Op functions (see kernels/engine.py; ``_config.op_kernel`` binds DT, KERNEL and NEED_DY).
# The op's row: W and B the offsets of g and b in PARAMS (-1: no gain and bias); A1 and A2 the
# registers of the saved mean and rstd (LayerNorm: one per row; BatchNorm: one per column, in
# a register of the node's width); A3 an offset in ICONSTS of the block
#   [offset of n ones in CONSTS (the gain without parameters), momentum as float64 bits,
#    ICONSTS offset of the address of running_mean, of running_var]  (BatchNorm: all four)
# and the op's float parameter (FP[K]) is eps.
# ---------------------------------------------------------------------------------------------
DT = KERNEL = None
NEED_DY = False
ONES, MOMENTUM, RUNNING_MEAN, RUNNING_VAR = range(4)


@njit(**SERIAL)
def _float64_at(addr, offset):
    """The float64 whose bits are the int64 at ``offset`` of the int64 buffer at ``addr``."""
    return carray(pointer(addr, offset, np.float64), 1)[0]


@njit(**SERIAL)
def _buffer_address(c, o, which):
    """The address of a node's buffer (running_mean or running_var) from the op's block."""
    return _ints(c[ICONSTS], _ints(c[ICONSTS], o[A3] + which, 1)[0], 1)[0]


@njit(**OP)
def layernorm_op_forward(ctx, op, rows):
    """KERNEL(x, g, b, eps, y, mean, rstd)."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    ones = _ints(c[ICONSTS], o[A3] + ONES, 1)[0]
    g = _vec(c[PARAMS], o[W], n, DT) if o[W] >= 0 else _vec(c[CONSTS], ones, n, DT)
    b = _vec(c[PARAMS], o[B], n, DT) if o[B] >= 0 else _vec(c[ZEROS], 0, n, DT)
    KERNEL(_mat(c[ACT], o[IN], rows, n, DT), g, b, _vec(c[FP], o[K], 1, np.float64)[0],
           _mat(c[ACT], o[OUT], rows, n, DT), _vec(c[ACT], o[A1], rows, DT),
           _vec(c[ACT], o[A2], rows, DT))


@njit(**OP)
def batchnorm_op_forward_train(ctx, op, rows):
    """KERNEL(x, g, b, eps, momentum, y, mean, rstd, running_mean, running_var)."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    ones = _ints(c[ICONSTS], o[A3] + ONES, 1)[0]
    g = _vec(c[PARAMS], o[W], n, DT) if o[W] >= 0 else _vec(c[CONSTS], ones, n, DT)
    b = _vec(c[PARAMS], o[B], n, DT) if o[B] >= 0 else _vec(c[ZEROS], 0, n, DT)
    KERNEL(_mat(c[ACT], o[IN], rows, n, DT), g, b, _vec(c[FP], o[K], 1, np.float64)[0],
           _float64_at(c[ICONSTS], o[A3] + MOMENTUM), _mat(c[ACT], o[OUT], rows, n, DT),
           _vec(c[ACT], o[A1], n, DT), _vec(c[ACT], o[A2], n, DT),
           _vec(_buffer_address(c, o, RUNNING_MEAN), 0, n, DT),
           _vec(_buffer_address(c, o, RUNNING_VAR), 0, n, DT))


@njit(**OP)
def batchnorm_op_forward_eval(ctx, op, rows):
    """KERNEL(x, g, b, eps, running_mean, running_var, y, mean, rstd)."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    ones = _ints(c[ICONSTS], o[A3] + ONES, 1)[0]
    g = _vec(c[PARAMS], o[W], n, DT) if o[W] >= 0 else _vec(c[CONSTS], ones, n, DT)
    b = _vec(c[PARAMS], o[B], n, DT) if o[B] >= 0 else _vec(c[ZEROS], 0, n, DT)
    KERNEL(_mat(c[ACT], o[IN], rows, n, DT), g, b, _vec(c[FP], o[K], 1, np.float64)[0],
           _vec(_buffer_address(c, o, RUNNING_MEAN), 0, n, DT),
           _vec(_buffer_address(c, o, RUNNING_VAR), 0, n, DT),
           _mat(c[ACT], o[OUT], rows, n, DT), _vec(c[ACT], o[A1], n, DT),
           _vec(c[ACT], o[A2], n, DT))


@njit(**OP)
def layernorm_op_backward(ctx, op, rows):
    """KERNEL(x, g, dy, mean, rstd, dx, dg, db, NEED_DY), the statistics one per row."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    ones = _ints(c[ICONSTS], o[A3] + ONES, 1)[0]
    g = _vec(c[PARAMS], o[W], n, DT) if o[W] >= 0 else _vec(c[CONSTS], ones, n, DT)
    dg = _vec(c[GRADS], o[W], n, DT) if o[W] >= 0 else _vec(c[DBIAS], 0, 0, DT)
    db = _vec(c[GRADS], o[B], n, DT) if o[W] >= 0 else _vec(c[DBIAS], 0, 0, DT)
    dy = _mat(c[GRAD], o[GOUT], rows, n, DT)
    KERNEL(_mat(c[ACT], o[IN], rows, n, DT), g, dy, _vec(c[ACT], o[A1], rows, DT),
           _vec(c[ACT], o[A2], rows, DT), _mat(c[GRAD], o[GIN], rows, n, DT) if NEED_DY else dy,
           dg, db, NEED_DY)


@njit(**OP)
def batchnorm_op_backward(ctx, op, rows):
    """KERNEL(x, g, dy, mean, rstd, dx, dg, db, NEED_DY), the statistics one per column."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    ones = _ints(c[ICONSTS], o[A3] + ONES, 1)[0]
    g = _vec(c[PARAMS], o[W], n, DT) if o[W] >= 0 else _vec(c[CONSTS], ones, n, DT)
    dg = _vec(c[GRADS], o[W], n, DT) if o[W] >= 0 else _vec(c[DBIAS], 0, 0, DT)
    db = _vec(c[GRADS], o[B], n, DT) if o[W] >= 0 else _vec(c[DBIAS], 0, 0, DT)
    dy = _mat(c[GRAD], o[GOUT], rows, n, DT)
    KERNEL(_mat(c[ACT], o[IN], rows, n, DT), g, dy, _vec(c[ACT], o[A1], n, DT),
           _vec(c[ACT], o[A2], n, DT), _mat(c[GRAD], o[GIN], rows, n, DT) if NEED_DY else dy,
           dg, db, NEED_DY)
