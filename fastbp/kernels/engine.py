"""The engine's compiled half: op kernels called through their addresses, and the interpreter.

An op kernel is a C function ``void(ctx, op, rows)`` that runs one step of one op (a layer's
forward, its backward, the loss, the update, ...) by calling the same leaf kernel as the node's
Python class, so the engine and the per-node path give the same numbers. Each is compiled for
one dtype and one choice of kernel (its activation kind, BLAS or loops, threads or not), only
when the first network that needs it appears, and cached on disk.

The interpreter calls op kernels through their addresses and references none of them. numba
compiles a caller with the machine code of every callee again (a one-line caller of one leaf
took 0.6-1.4 s to compile), and the first engine, whose interpreter called every kernel of
every kind directly through five levels of callers, compiled 21 s (float64) + 41 s (float32)
before the first fit. This interpreter compiles once, for both dtypes, in well under a second.

``ctx`` is the address of an int64 array with the fields below: buffer addresses, then a few
integers. ``op`` is the address of the op's row of int64 fields, ``rows`` the rows of the batch.
Offsets count elements of the buffer's dtype. A program is an int64 array of calls, one row
``(kernel address, ctx, op)`` each, built in :mod:`fastbp.engine`.
"""

import math

import numpy as np
from numba import carray

from .._config import GLUE, OP, SERIAL, call_op, njit, pointer
from . import dense as KD
from . import divergences as KDiv
from . import optim as KO

PAR_MIN_WORK = 1 << 16  # elements from which an elementwise op runs on the threads (below it,
# waking the other threads costs more than it saves; far more when another process holds a core)

# ctx: addresses (of the workspace's buffers, the network's, and the batch's), then integers.
(ACT, GRAD, IACT, PARAMS, GRADS, CONSTS, ICONSTS, SCRATCH, ZEROS, DBIAS, FP, X, LABELS, D,
 ORDER, BLABELS, BD, DIV, HYPER, STATE1, STATE2, STATE3, FSCAL, OK, SW, BW,
 N_X, D_W, N_PARAMS, LO, STEP, RIGHT) = range(32)
N_CTX = 32
# HYPER, float64: the optimizer's own hyper-parameters, then at CLIP the gradient's clip norm.
N_HYPER, CLIP = 6, 5
# FSCAL, float64: the epoch's learning rate, the batch's loss, whether its gradient is finite,
# the batch's weight (its rows, or the sum of their sample weights), and NORM: 0, or the weight
# of a larger batch these rows are part of (a block of an MPI step), which then scales the
# gradient and LOSS (the rows' share of that batch's mean loss).
LR, LOSS, FINITE, WSUM, NORM = range(5)
N_FSCAL = 5
# An op's row: activation offsets in and out, gradient offsets in and out (-1: none), widths,
# parameter offsets of W and b (-1: none), three auxiliary fields (say which in the op's
# kernels), and the op's index into FP (its float parameter).
IN, OUT, GIN, GOUT, N_IN, N_OUT, W, B, A1, A2, A3, K = range(12)
N_OP = 12


@njit(**GLUE)
def _ints(addr, offset, n):
    return carray(pointer(addr, offset, np.int64), n)


@njit(**GLUE)
def _vec(addr, offset, n, dt):
    return carray(pointer(addr, offset, dt), n)


@njit(**GLUE)
def _mat(addr, offset, r, c, dt):
    return carray(pointer(addr, offset, dt), (r, c))


@njit(**GLUE)
def _fields(ctx, op):
    return _ints(ctx, 0, N_CTX), _ints(op, 0, N_OP)


# ---------------------------------------------------------------------------------------------
# Op functions. ``_config.op_kernel(op, dtype, **leaves)`` compiles a copy of one with these
# globals bound (numba compiles globals as constants, and drops branches on them before it
# types anything): DT the dtype, KERNEL/KERNEL2 the leaf kernels it calls, and its flags
# (NEED_DY, BY_LABEL, FUSED, BLAS, WEIGHTED, DEFER, PART, SPLIT_DY).
# ---------------------------------------------------------------------------------------------
DT = KERNEL = KERNEL2 = None
NEED_DY = BY_LABEL = FUSED = BLAS = WEIGHTED = DEFER = PART = SPLIT_DY = False


@njit(**OP)
def load_batch(ctx, op, rows):
    """Rows ``order[LO:LO + rows]`` of X into the input register (offset 0), their labels into
    BLABELS (BY_LABEL) or their target rows into BD, and (WEIGHTED) their sample weights from
    SW into BW."""
    c = _ints(ctx, 0, N_CTX)
    order, n_x, w = _ints(c[ORDER], c[LO], rows), c[N_X], c[D_W]
    x, bd, bl = _mat(c[ACT], 0, rows, n_x, DT), _mat(c[BD], 0, rows, w, DT), _ints(c[BLABELS], 0,
                                                                                   rows)
    for r in range(rows):
        src = _vec(c[X], order[r] * n_x, n_x, DT)
        for j in range(n_x):
            x[r, j] = src[j]
        if BY_LABEL:
            bl[r] = _ints(c[LABELS], order[r], 1)[0]
        else:
            bl[r] = 0
            d = _vec(c[D], order[r] * w, w, DT)
            for j in range(w):
                bd[r, j] = d[j]
        if WEIGHTED:
            _vec(c[BW], r, 1, np.float64)[0] = _vec(c[SW], order[r], 1, np.float64)[0]


@njit(**OP)
def linear_forward(ctx, op, rows):
    """z = y W^T + b by a dense BLAS kernel KERNEL(y, W, b, z, scratch of n_out x rows) or,
    not BLAS, the loop kernel KERNEL(y, W, b, z, W^T scratch)."""
    c, o = _fields(ctx, op)
    n_in, n_out = o[N_IN], o[N_OUT]
    y, z = _mat(c[ACT], o[IN], rows, n_in, DT), _mat(c[ACT], o[OUT], rows, n_out, DT)
    Wm = _mat(c[PARAMS], o[W], n_out, n_in, DT)
    b = _vec(c[PARAMS], o[B], n_out, DT) if o[B] >= 0 else _vec(c[ZEROS], 0, n_out, DT)
    if BLAS:
        KERNEL(y, Wm, b, z, _mat(c[SCRATCH], 0, n_out, rows, DT))
    else:
        KERNEL(y, Wm, b, z, _mat(c[SCRATCH], 0, n_in, n_out, DT))


@njit(**OP)
def linear_backward(ctx, op, rows):
    """dW, db by KERNEL(dz, y, dW, db, dz^T scratch) (BLAS) or KERNEL(dz, y, dW, db) (the loop
    kernel), and if NEED_DY, dy at GIN by KERNEL2(dz, W, dy) or (SPLIT_DY, the dy summed from
    parts: ``dense.dense_backward_input_parts``) KERNEL2(dz, W, dy, scratch), after dW: they
    share the scratch. DEFER: db alone (summed over the
    rows in increasing order from 0, as those kernels do), dW being left to ``linear_sgd``."""
    c, o = _fields(ctx, op)
    n_in, n_out = o[N_IN], o[N_OUT]
    dz, y = _mat(c[GRAD], o[GOUT], rows, n_out, DT), _mat(c[ACT], o[IN], rows, n_in, DT)
    db = _vec(c[GRADS], o[B], n_out, DT) if o[B] >= 0 else _vec(c[DBIAS], 0, n_out, DT)
    if DEFER:
        for j in range(n_out):
            s = dz.dtype.type(0)
            for t in range(rows):
                s += dz[t, j]
            db[j] = s
    elif BLAS:
        KERNEL(dz, y, _mat(c[GRADS], o[W], n_out, n_in, DT), db,
               _mat(c[SCRATCH], 0, n_out, rows, DT))
    else:
        KERNEL(dz, y, _mat(c[GRADS], o[W], n_out, n_in, DT), db)
    if NEED_DY and SPLIT_DY:
        KERNEL2(dz, _mat(c[PARAMS], o[W], n_out, n_in, DT), _mat(c[GRAD], o[GIN], rows, n_in, DT),
                _vec(c[SCRATCH], 0, KD.input_scratch(rows, n_out, n_in), DT))
    elif NEED_DY:
        KERNEL2(dz, _mat(c[PARAMS], o[W], n_out, n_in, DT), _mat(c[GRAD], o[GIN], rows, n_in, DT))


@njit(**OP)
def elementwise_forward(ctx, op, rows):
    """y = f(z) over the flat registers: KERNEL(p, z, y), p the op's float parameter."""
    c, o = _fields(ctx, op)
    n = rows * o[N_OUT]
    KERNEL(_vec(c[FP], o[K], 1, np.float64)[0], _vec(c[ACT], o[IN], n, DT),
           _vec(c[ACT], o[OUT], n, DT))


@njit(**OP)
def elementwise_backward(ctx, op, rows):
    """dz = dy f'(z): KERNEL(p, z, y, dy, dz) over the flat registers."""
    c, o = _fields(ctx, op)
    n = rows * o[N_OUT]
    KERNEL(_vec(c[FP], o[K], 1, np.float64)[0], _vec(c[ACT], o[IN], n, DT),
           _vec(c[ACT], o[OUT], n, DT), _vec(c[GRAD], o[GOUT], n, DT),
           _vec(c[GRAD], o[GIN], n, DT))


@njit(**OP)
def dropout_forward(ctx, op, rows):
    """y = dropout of z: KERNEL(z, y, seed, step, p), the seed at A1, the step ctx[STEP]."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    KERNEL(_mat(c[ACT], o[IN], rows, n, DT), _mat(c[ACT], o[OUT], rows, n, DT), o[A1], c[STEP],
           _vec(c[FP], o[K], 1, np.float64)[0])


@njit(**OP)
def dropout_backward(ctx, op, rows):
    """dz = dy through the forward pass's mask: KERNEL(dy, dz, seed, step, p)."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    KERNEL(_mat(c[GRAD], o[GOUT], rows, n, DT), _mat(c[GRAD], o[GIN], rows, n, DT), o[A1],
           c[STEP], _vec(c[FP], o[K], 1, np.float64)[0])


@njit(**OP)
def rows_forward(ctx, op, rows):
    """y = f(z) row by row (softmax, pair products): KERNEL(z, y)."""
    c, o = _fields(ctx, op)
    KERNEL(_mat(c[ACT], o[IN], rows, o[N_IN], DT), _mat(c[ACT], o[OUT], rows, o[N_OUT], DT))


@njit(**OP)
def softmax_backward(ctx, op, rows):
    """dz from y and dy: KERNEL(y, dy, dz)."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    KERNEL(_mat(c[ACT], o[OUT], rows, n, DT), _mat(c[GRAD], o[GOUT], rows, n, DT),
           _mat(c[GRAD], o[GIN], rows, n, DT))


@njit(**OP)
def pair_backward(ctx, op, rows):
    """dz from z and dy: KERNEL(z, dy, dz)."""
    c, o = _fields(ctx, op)
    KERNEL(_mat(c[ACT], o[IN], rows, o[N_IN], DT), _mat(c[GRAD], o[GOUT], rows, o[N_OUT], DT),
           _mat(c[GRAD], o[GIN], rows, o[N_IN], DT))


@njit(**OP)
def mul_forward(ctx, op, rows):
    """y = a * b: KERNEL(a, b, y), a at IN, b at A1 (activations)."""
    c, o = _fields(ctx, op)
    n = rows * o[N_OUT]
    KERNEL(_vec(c[ACT], o[IN], n, DT), _vec(c[ACT], o[A1], n, DT), _vec(c[ACT], o[OUT], n, DT))


@njit(**OP)
def mul_backward(ctx, op, rows):
    """da at GIN and db at A2 (gradients) from dy at GOUT: KERNEL(a, b, dy, da, db)."""
    c, o = _fields(ctx, op)
    n = rows * o[N_OUT]
    KERNEL(_vec(c[ACT], o[IN], n, DT), _vec(c[ACT], o[A1], n, DT),
           _vec(c[GRAD], o[GOUT], n, DT), _vec(c[GRAD], o[GIN], n, DT),
           _vec(c[GRAD], o[A2], n, DT))


@njit(**OP)
def fork_backward(ctx, op, rows):
    """The gradient at GIN is the sum of the two branches' gradients at A1 and A2."""
    c, o = _fields(ctx, op)
    n = rows * o[N_IN]
    ga, gb, g = (_vec(c[GRAD], o[A1], n, DT), _vec(c[GRAD], o[A2], n, DT),
                 _vec(c[GRAD], o[GIN], n, DT))
    for i in range(n):
        g[i] = ga[i] + gb[i]


@njit(**OP)
def power_forward(ctx, op, rows):
    """y_i = prod_l z_l^alpha_li, alpha of shape (N_IN, N_OUT) at A1 in CONSTS."""
    c, o = _fields(ctx, op)
    KERNEL(_mat(c[ACT], o[IN], rows, o[N_IN], DT), _mat(c[CONSTS], o[A1], o[N_IN], o[N_OUT], DT),
           _mat(c[ACT], o[OUT], rows, o[N_OUT], DT))


@njit(**OP)
def power_backward(ctx, op, rows):
    c, o = _fields(ctx, op)
    z = _mat(c[ACT], o[IN], rows, o[N_IN], DT)
    KERNEL(z, _mat(c[CONSTS], o[A1], o[N_IN], o[N_OUT], DT),
           _mat(c[GRAD], o[GOUT], rows, o[N_OUT], DT), _mat(c[GRAD], o[GIN], rows, o[N_IN], DT),
           np.empty_like(z))


@njit(**OP)
def max_forward(ctx, op, rows):
    """y_i = max over a subset of z: the subsets' CSR indptr at A1 and indices at A2 in
    ICONSTS; the argmax of each output at A3 in IACT."""
    c, o = _fields(ctx, op)
    m = o[N_OUT]
    indptr = _ints(c[ICONSTS], o[A1], m + 1)
    KERNEL(_mat(c[ACT], o[IN], rows, o[N_IN], DT), indptr,
           _ints(c[ICONSTS], o[A2], indptr[m]), _mat(c[ACT], o[OUT], rows, m, DT),
           carray(pointer(c[IACT], o[A3], np.int64), (rows, m)))


@njit(**OP)
def max_backward(ctx, op, rows):
    c, o = _fields(ctx, op)
    m = o[N_OUT]
    KERNEL(_mat(c[GRAD], o[GOUT], rows, m, DT), carray(pointer(c[IACT], o[A3], np.int64), (rows, m)),
           _mat(c[GRAD], o[GIN], rows, o[N_IN], DT))


@njit(**OP)
def loss(ctx, op, rows):
    """The batch's mean divergence into FSCAL[LOSS] and its gradient, by KERNEL(Y, target, div,
    dY, 1 / rows) into GOUT or, FUSED, by KERNEL(z, Y, target, div, dz, 1 / rows) into GIN (z the
    last op's input at IN); the target is the labels (BY_LABEL) or the target rows. WEIGHTED:
    the weighted mean by the batch's weights in BW, as ``Divergence.value_and_grad``. With
    FSCAL[NORM] > 0 the scale is 1 / NORM, and LOSS the rows' share of that batch's mean."""
    c, o = _fields(ctx, op)
    n = o[N_OUT]
    Y, dv = _mat(c[ACT], o[OUT], rows, n, DT), _vec(c[DIV], 0, rows, np.float64)
    fs, bw = _vec(c[FSCAL], 0, N_FSCAL, np.float64), _vec(c[BW], 0, rows if WEIGHTED else 0,
                                                          np.float64)
    wsum = KDiv.total(bw) if WEIGHTED else float(rows)
    norm = fs[NORM]
    scale = 1.0 / norm if norm > 0 else KDiv.weight_scale(wsum) if WEIGHTED else 1.0 / rows
    g = _mat(c[GRAD], o[GIN] if FUSED else o[GOUT], rows, n, DT)
    if FUSED and BY_LABEL:
        KERNEL(_mat(c[ACT], o[IN], rows, n, DT), Y, _ints(c[BLABELS], 0, rows), dv, g, scale)
    elif FUSED:
        KERNEL(_mat(c[ACT], o[IN], rows, n, DT), Y, _mat(c[BD], 0, rows, c[D_W], DT), dv, g,
               scale)
    elif BY_LABEL:
        KERNEL(Y, _ints(c[BLABELS], 0, rows), dv, g, scale)
    else:
        KERNEL(Y, _mat(c[BD], 0, rows, c[D_W], DT), dv, g, scale)
    if WEIGHTED:
        fs[LOSS] = KDiv.weighted_mean(dv, g, bw, scale)
    else:
        fs[LOSS] = KDiv.mean(dv) if norm == 0 else KDiv.total(dv) * scale
    fs[WSUM] = wsum


@njit(**OP)
def finite(ctx, op, rows):
    """FSCAL[FINITE] = 1 if the parameters' gradient holds no NaN or inf (KERNEL(g, ok)), else 0.
    PART: only in the op's A2 ranges of the gradient, (start, end) pairs at A1 in ICONSTS, by
    KERNEL(part) (the layers updated by ``linear_sgd`` check theirs in ``linear_finite``)."""
    c = _ints(ctx, 0, N_CTX)
    if PART:
        o = _ints(op, 0, N_OP)
        r = _ints(c[ICONSTS], o[A1], 2 * o[A2])
        good = True
        for k in range(o[A2]):
            good &= KERNEL(_vec(c[GRADS], r[2 * k], r[2 * k + 1] - r[2 * k], DT))
    else:
        good = KERNEL(_vec(c[GRADS], 0, c[N_PARAMS], DT),
                      carray(pointer(c[OK], 0, np.bool_), -(-c[N_PARAMS] // KO.FINITE_BLOCK)))
    _vec(c[FSCAL], 0, N_FSCAL, np.float64)[FINITE] = 1.0 if good else 0.0


@njit(**OP)
def linear_finite(ctx, op, rows):
    """FSCAL[FINITE] = 0 unless every term of the linear op's one-row dW = dz^T y is finite:
    KERNEL(dz, y) (after ``finite``, whose result it can only clear)."""
    c, o = _fields(ctx, op)
    if not KERNEL(_vec(c[GRAD], o[GOUT], o[N_OUT], DT), _vec(c[ACT], o[IN], o[N_IN], DT)):
        _vec(c[FSCAL], 0, N_FSCAL, np.float64)[FINITE] = 0.0


@njit(**OP)
def correct(ctx, op, rows):
    """Adds the rows of the batch classified right to ctx[RIGHT] (the output at OUT)."""
    c, o = _fields(ctx, op)
    c[RIGHT] += KDiv.correct(_mat(c[ACT], o[OUT], rows, o[N_OUT], DT),
                             _ints(c[BLABELS], 0, rows if BY_LABEL else 0),
                             _mat(c[BD], 0, rows, c[D_W], DT))


@njit(**OP)
def sgd(ctx, op, rows):
    """SGD's step by KERNEL(p, g, v, lr, momentum, nesterov, weight decay), the
    hyper-parameters in HYPER, the learning rate in FSCAL[LR]. PART: on the ranges of the
    parameters that ``finite`` checks (PART), the layers of ``linear_sgd`` left to it."""
    c = _ints(ctx, 0, N_CTX)
    h = _vec(c[HYPER], 0, N_HYPER, np.float64)
    lr = _vec(c[FSCAL], 0, N_FSCAL, np.float64)[LR]
    if PART:
        o = _ints(op, 0, N_OP)
        r = _ints(c[ICONSTS], o[A1], 2 * o[A2])
        for k in range(o[A2]):
            lo, n = r[2 * k], r[2 * k + 1] - r[2 * k]
            KERNEL(_vec(c[PARAMS], lo, n, DT), _vec(c[GRADS], lo, n, DT),
                   _vec(c[STATE1], lo, n, DT), lr, h[0], h[1] != 0, h[2])
    else:
        n = c[N_PARAMS]
        KERNEL(_vec(c[PARAMS], 0, n, DT), _vec(c[GRADS], 0, n, DT), _vec(c[STATE1], 0, n, DT),
               lr, h[0], h[1] != 0, h[2])


@njit(**OP)
def linear_sgd(ctx, op, rows):
    """SGD without momentum on the linear op's W from its one row, by KERNEL(W, dz, y, lr,
    weight decay) (``optim.sgd_rank1``): dW is never stored."""
    c, o = _fields(ctx, op)
    KERNEL(_mat(c[PARAMS], o[W], o[N_OUT], o[N_IN], DT), _vec(c[GRAD], o[GOUT], o[N_OUT], DT),
           _vec(c[ACT], o[IN], o[N_IN], DT), _vec(c[FSCAL], 0, N_FSCAL, np.float64)[LR],
           _vec(c[HYPER], 0, N_HYPER, np.float64)[2])


@njit(**OP)
def adam(ctx, op, rows):
    """Adam's step by KERNEL(p, g, m, v, lr, beta1, beta2, eps, weight decay, t), t the step
    number in ctx[STEP]."""
    c = _ints(ctx, 0, N_CTX)
    n = c[N_PARAMS]
    h = _vec(c[HYPER], 0, N_HYPER, np.float64)
    KERNEL(_vec(c[PARAMS], 0, n, DT), _vec(c[GRADS], 0, n, DT), _vec(c[STATE1], 0, n, DT),
           _vec(c[STATE2], 0, n, DT), _vec(c[FSCAL], 0, N_FSCAL, np.float64)[LR], h[0], h[1],
           h[2], h[3], c[STEP])


@njit(**OP)
def rmsprop(ctx, op, rows):
    """RMSprop's step by KERNEL(p, g, v, b, a, lr, alpha, eps, weight decay, momentum,
    centered), v, b, a the three state buffers."""
    c = _ints(ctx, 0, N_CTX)
    n = c[N_PARAMS]
    h = _vec(c[HYPER], 0, N_HYPER, np.float64)
    KERNEL(_vec(c[PARAMS], 0, n, DT), _vec(c[GRADS], 0, n, DT), _vec(c[STATE1], 0, n, DT),
           _vec(c[STATE2], 0, n, DT), _vec(c[STATE3], 0, n, DT),
           _vec(c[FSCAL], 0, N_FSCAL, np.float64)[LR], h[0], h[1], h[2], h[3], h[4] != 0)


@njit(**OP)
def clip(ctx, op, rows):
    """Clip the gradient by its global norm to HYPER[CLIP]: KERNEL(g, max norm, partial sums)."""
    c = _ints(ctx, 0, N_CTX)
    n = c[N_PARAMS]
    KERNEL(_vec(c[GRADS], 0, n, DT), _vec(c[HYPER], 0, N_HYPER, np.float64)[CLIP],
           np.empty(-(-n // KO.FINITE_BLOCK), np.float64))


# ---------------------------------------------------------------------------------------------
# The interpreter, and the calls that prepare it from Python
# ---------------------------------------------------------------------------------------------
@njit(**SERIAL)
def run(prog, rows):
    """Every call of the program, in order, on ``rows`` rows."""
    for k in range(prog.shape[0]):
        call_op(prog[k, 0], prog[k, 1], prog[k, 2], rows)


@njit(**SERIAL)
def forward_rows(prog, X, act, out, Y):
    """A forward pass of the rows of X: X into the input register (the start of ``act``), the
    program, then the output register (from ``act[out]``) into Y. Returns 1, having run
    nothing, if X holds NaN or inf; 2 if Y does; else 0 (a single-row predict pays one call
    for all of it)."""
    x = X.reshape(X.size)
    if not KO.finite(x):
        return 1
    for i in range(x.size):
        act[i] = x[i]
    run(prog, X.shape[0])
    y = Y.reshape(Y.size)
    for i in range(y.size):
        y[i] = act[out + i]
    return 0 if KO.finite(y) else 2


@njit(**SERIAL)
def bind(ctx, x, target, orders, hyper, s1, s2, s3, weights, check):
    """Point ctx at one call's arrays: x (the inputs), the targets (class labels, 1-D, or
    rows), the orders of the rows, the optimizer's hyper-parameters and three state buffers,
    and the sample weights (an empty array: none). With ``check``, returns 1 if x holds NaN or
    inf, else 0. (Python pays 2-3 us to look up each address; this call, one dispatch.)"""
    ctx[X] = x.ctypes.data
    ctx[N_X] = x.shape[1]
    if target.ndim == 1:
        ctx[LABELS], ctx[D_W] = target.ctypes.data, 0
    else:
        ctx[D], ctx[D_W] = target.ctypes.data, target.shape[target.ndim - 1]
    ctx[ORDER] = orders.ctypes.data
    ctx[HYPER] = hyper.ctypes.data
    ctx[STATE1], ctx[STATE2], ctx[STATE3] = s1.ctypes.data, s2.ctypes.data, s3.ctypes.data
    if weights.size:
        ctx[SW] = weights.ctypes.data
    return 0 if not check or KO.finite(x.reshape(x.size)) else 1


@njit(**SERIAL)
def forget(ctx):
    """Zero ctx's addresses of one call's arrays (see ``bind``)."""
    for field in (X, ORDER, LABELS, D, HYPER, SW):
        ctx[field] = 0


@njit(**SERIAL)
def converged(prev, loss, tol):
    """The seed's convergence test |Loss_k - Loss_{k-1}| < tol (tol < 0: never; prev NaN before
    the first epoch). ``fit`` runs the same function in Python (``converged.py_func``)."""
    return tol >= 0 and abs(loss - prev) < tol


@njit(**SERIAL)
def train_epochs(ctx, fscal, full, tail, n_pre, orders, batch, lrs, tol, prev, outs, t0,
                 weight):
    """Epochs one after another, epoch e on rows ``orders[e]`` (or ``orders[0]`` for every
    epoch) in batches of ``batch`` rows, with learning rate ``lrs[e]``. A step runs the program
    ``full`` (``tail`` for a last, shorter batch): its first ``n_pre`` calls load the batch, run
    forward, the loss and backward and check the gradient; if the loss and the gradient are
    finite, the others update the parameters. ``outs[e]`` receives (sum of batch loss * batch
    weight, steps done, first bad step or -1, rows classified right as they were trained on,
    sum of batch loss * rows), a batch's weight being its rows or, weighted, the sum of its
    sample weights, whose total over the epoch is ``weight``. Stops after an epoch with a
    non-finite step, or whose mean loss (the first sum / ``weight``) differs from the previous
    one (``prev`` before the first) by less than ``tol`` (the seed's test; tol < 0: never).
    Returns the number of epochs run."""
    T = orders.shape[1]
    steps = 0
    for e in range(lrs.shape[0]):
        fscal[LR] = lrs[e]
        ctx[RIGHT] = 0
        total, by_rows, step, bad = 0.0, 0.0, 0, -1
        for lo in range(0, T, batch):
            rows = min(batch, T - lo)
            prog = full if rows == batch else tail
            ctx[LO] = (e * T if orders.shape[0] > 1 else 0) + lo
            ctx[STEP] = t0 + steps + step + 1
            for k in range(n_pre):
                call_op(prog[k, 0], prog[k, 1], prog[k, 2], rows)
            if not (math.isfinite(fscal[LOSS]) and fscal[FINITE] != 0):
                bad = step
                break
            for k in range(n_pre, prog.shape[0]):
                call_op(prog[k, 0], prog[k, 1], prog[k, 2], rows)
            total += fscal[LOSS] * fscal[WSUM]
            by_rows += fscal[LOSS] * rows
            step += 1
        outs[e, 0], outs[e, 1], outs[e, 2], outs[e, 3] = total, step, bad, ctx[RIGHT]
        outs[e, 4] = by_rows
        steps += step
        if bad >= 0:
            return e + 1
        value = total / weight
        if converged(prev, value, tol):
            return e + 1
        prev = value
    return lrs.shape[0]
