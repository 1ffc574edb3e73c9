"""The engine: a network compiled to a tape of ops, run for whole epochs in compiled code.

A tape row is one op: ``ops[k] = (code, in, out, in_grad, out_grad, n_in, n_out, w, b, a1, a2,
a3, work)`` with ``fp[k]`` its float parameter and ``work`` its operations per row: an op with
``rows * work < PAR_MIN_WORK`` runs through the serial twin of its kernel (waking the other
threads would cost more than it saves; far more when another process holds a core). ``in``/``out`` are activation registers and
``in_grad``/``out_grad`` gradient registers (-1: not needed); ``regs[r] = (offset, width)``
places register r in the workspaces ``act`` and ``grad`` for the current batch. Every op calls
the same leaf kernel as the node's Python class, so the engine and the per-node path give the
same numbers.
"""

import math

import numpy as np

from .._config import SERIAL, njit
from . import activations as KA
from . import dense as KD
from . import divergences as KDiv
from . import optim as KO
from . import products as KP
from . import vector as KV

LINEAR, SCALAR, SOFTMAX, PAIR, POWER, MAX, MUL, FORK = range(1, 9)
L2, KL_LABELS, KL_PROBS, BKL, SOFTMAX_KL_LABELS, SOFTMAX_KL_PROBS, SIGMOID_BKL = range(1, 8)
NO_OPT, SGD, ADAM = range(3)
PAR_MIN_WORK = 1 << 16


@njit(**SERIAL)
def _reg(ws, regs, r, rows):
    o = regs[r, 0]
    return ws[o:o + rows * regs[r, 1]].reshape((rows, regs[r, 1]))


@njit(**SERIAL)
def _flat(ws, regs, r, rows):
    return ws[regs[r, 0]:regs[r, 0] + rows * regs[r, 1]]


@njit(**SERIAL)
def tape_forward(ops, fp, regs, params, zeros, consts, iconsts, act, iact, rows, wt):
    """Run every op of the tape forward on the first ``rows`` rows."""
    for k in range(ops.shape[0]):
        code, i, o, par = ops[k, 0], ops[k, 1], ops[k, 2], rows * ops[k, 12] >= PAR_MIN_WORK
        x, y = _reg(act, regs, i, rows), _reg(act, regs, o, rows)
        if code == LINEAR:
            n_in, n_out, w, b = ops[k, 5], ops[k, 6], ops[k, 7], ops[k, 8]
            W = params[w:w + n_out * n_in].reshape((n_out, n_in))
            bias = params[b:b + n_out] if b >= 0 else zeros[:n_out]
            KD.affine(x, W, bias, y, wt[:n_in * n_out].reshape((n_in, n_out)))
        elif code == SCALAR:
            xf, yf = _flat(act, regs, i, rows), _flat(act, regs, o, rows)
            if par:
                KA.scalar_forward(ops[k, 9], fp[k], xf, yf)
            else:
                KA.scalar_forward_serial(ops[k, 9], fp[k], xf, yf)
        elif code == SOFTMAX:
            if par:
                KV.softmax_forward(x, y)
            else:
                KV.softmax_forward_serial(x, y)
        elif code == MUL:
            a, b, yf = (_flat(act, regs, i, rows), _flat(act, regs, ops[k, 9], rows),
                        _flat(act, regs, o, rows))
            if par:
                KP.elementwise_product_forward(a, b, yf)
            else:
                KP.elementwise_product_forward_serial(a, b, yf)
        elif code == PAIR:
            KP.pair_product_forward(x, y)
        elif code == POWER:
            a = consts[ops[k, 9]:ops[k, 9] + ops[k, 5] * ops[k, 6]].reshape((ops[k, 5], ops[k, 6]))
            KP.power_product_forward(x, a, y)
        elif code == MAX:
            M = ops[k, 6]
            indptr = iconsts[ops[k, 9]:ops[k, 9] + M + 1]
            indices = iconsts[ops[k, 10]:ops[k, 10] + indptr[M]]
            arg = iact[ops[k, 11]:ops[k, 11] + rows * M].reshape((rows, M))
            KP.max_forward(x, indptr, indices, y, arg)


@njit(**SERIAL)
def _linear_backward(ops, k, regs, params, grads, dbias, act, grad, rows, wt):
    """dW, db and (where needed) the input gradient of the LINEAR op k."""
    i, gi, go = ops[k, 1], ops[k, 3], ops[k, 4]
    n_in, n_out, w, b = ops[k, 5], ops[k, 6], ops[k, 7], ops[k, 8]
    dz, y = _reg(grad, regs, go, rows), _reg(act, regs, i, rows)
    dW = grads[w:w + n_out * n_in].reshape((n_out, n_in))
    db = grads[b:b + n_out] if b >= 0 else dbias[:n_out]
    W = params[w:w + n_out * n_in].reshape((n_out, n_in))
    dy = _reg(grad, regs, gi, rows) if gi >= 0 else y  # y: a placeholder, never written
    dzT = wt[:n_out * rows].reshape((n_out, rows))
    KD.affine_backward(dz, y, W, dW, db, dy, gi >= 0, dzT)


@njit(**SERIAL)
def tape_backward(ops, fp, regs, params, grads, dbias, consts, iconsts, act, iact, grad, rows,
                  last, wt):
    """Run ops ``last`` down to 0 backward: gradients of parameters into ``grads``, of
    activations into the gradient registers."""
    for k in range(last, -1, -1):
        code, i, o, gi, go = ops[k, 0], ops[k, 1], ops[k, 2], ops[k, 3], ops[k, 4]
        par = rows * ops[k, 12] >= PAR_MIN_WORK
        if code == LINEAR:
            _linear_backward(ops, k, regs, params, grads, dbias, act, grad, rows, wt)
            continue
        if gi < 0:
            continue
        dx, dy = _reg(grad, regs, gi, rows), _reg(grad, regs, go, rows)
        if code == SCALAR:
            args = (_flat(act, regs, i, rows), _flat(act, regs, o, rows),
                    _flat(grad, regs, go, rows), _flat(grad, regs, gi, rows))
            if par:
                KA.scalar_backward(ops[k, 9], fp[k], *args)
            else:
                KA.scalar_backward_serial(ops[k, 9], fp[k], *args)
        elif code == SOFTMAX:
            if par:
                KV.softmax_vjp(_reg(act, regs, o, rows), dy, dx)
            else:
                KV.softmax_vjp_serial(_reg(act, regs, o, rows), dy, dx)
        elif code == MUL:
            args = (_flat(act, regs, i, rows), _flat(act, regs, ops[k, 9], rows),
                    _flat(grad, regs, go, rows), _flat(grad, regs, gi, rows),
                    _flat(grad, regs, ops[k, 10], rows))
            if par:
                KP.elementwise_product_backward(*args)
            else:
                KP.elementwise_product_backward_serial(*args)
        elif code == PAIR:
            KP.pair_product_backward(_reg(act, regs, i, rows), dy, dx)
        elif code == POWER:
            a = consts[ops[k, 9]:ops[k, 9] + ops[k, 5] * ops[k, 6]].reshape((ops[k, 5], ops[k, 6]))
            x = _reg(act, regs, i, rows)
            KP.power_product_backward(x, a, dy, dx, np.empty_like(x))
        elif code == MAX:
            M = ops[k, 6]
            arg = iact[ops[k, 11]:ops[k, 11] + rows * M].reshape((rows, M))
            KP.max_backward(dy, arg, dx)
        elif code == FORK:
            ga, gb, g = (_flat(grad, regs, ops[k, 9], rows), _flat(grad, regs, ops[k, 10], rows),
                         _flat(grad, regs, gi, rows))
            for n in range(g.shape[0]):
                g[n] = ga[n] + gb[n]


@njit(**SERIAL)
def loss_stage(kind, regs, y_reg, z_reg, act, grad, labels, d, div, rows):
    """The mean divergence of the batch and its gradient into the last (or, fused, the
    pre-activation) gradient register."""
    Y = _reg(act, regs, y_reg, rows)
    scale = 1.0 / rows
    dv = div[:rows]
    if rows * regs[y_reg, 1] < PAR_MIN_WORK and kind == SOFTMAX_KL_LABELS:
        KDiv.softmax_kl_labels_serial(_reg(act, regs, z_reg, rows), Y, labels[:rows], dv,
                                      _reg(grad, regs, z_reg, rows), scale)
    elif rows * regs[y_reg, 1] < PAR_MIN_WORK and kind == SIGMOID_BKL:
        KDiv.sigmoid_binary_kl_serial(_reg(act, regs, z_reg, rows), Y, d[:rows], dv,
                                      _reg(grad, regs, z_reg, rows), scale)
    elif kind == L2:
        KDiv.l2(Y, d[:rows], dv, _reg(grad, regs, y_reg, rows), scale)
    elif kind == KL_LABELS:
        KDiv.kl_labels(Y, labels[:rows], dv, _reg(grad, regs, y_reg, rows), scale)
    elif kind == KL_PROBS:
        KDiv.kl_probs(Y, d[:rows], dv, _reg(grad, regs, y_reg, rows), scale)
    elif kind == BKL:
        KDiv.binary_kl(Y, d[:rows], dv, _reg(grad, regs, y_reg, rows), scale)
    elif kind == SOFTMAX_KL_LABELS:
        KDiv.softmax_kl_labels(_reg(act, regs, z_reg, rows), Y, labels[:rows], dv,
                               _reg(grad, regs, z_reg, rows), scale)
    elif kind == SOFTMAX_KL_PROBS:
        KDiv.softmax_kl_probs(_reg(act, regs, z_reg, rows), Y, d[:rows], dv,
                              _reg(grad, regs, z_reg, rows), scale)
    else:
        KDiv.sigmoid_binary_kl(_reg(act, regs, z_reg, rows), Y, d[:rows], dv,
                               _reg(grad, regs, z_reg, rows), scale)
    return KDiv.mean(dv)


@njit(**SERIAL)
def _finite_grads(grads, ok):
    """No NaN or inf in the gradients (on the threads only where there is enough to split)."""
    if grads.shape[0] >= PAR_MIN_WORK:
        return KO.all_finite(grads, ok)
    return KO.all_finite_serial(grads, ok)


@njit(**SERIAL)
def _update(opt, params, grads, lr, hyper, state1, state2, t):
    """The optimizer's update of the flat parameters (serially for small networks)."""
    if params.shape[0] >= PAR_MIN_WORK:
        if opt == SGD:
            KO.sgd_step(params, grads, state1, lr, hyper[0], hyper[1] != 0, hyper[2])
        elif opt == ADAM:
            KO.adam_step(params, grads, state1, state2, lr, hyper[0], hyper[1], hyper[2],
                         hyper[3], t)
    elif opt == SGD:
        KO.sgd_step_serial(params, grads, state1, lr, hyper[0], hyper[1] != 0, hyper[2])
    elif opt == ADAM:
        KO.adam_step_serial(params, grads, state1, state2, lr, hyper[0], hyper[1], hyper[2],
                            hyper[3], t)


@njit(**SERIAL)
def train_epoch(ops, fp, regs, params, grads, zeros, dbias, consts, iconsts, act, iact, grad,
                X, labels, d, order, batch, loss_kind, y_reg, z_reg, last, div, blabels, bd,
                opt, lr, hyper, state1, state2, t0, out, wt, count):
    """One epoch: for every batch of rows ``order[lo:lo + batch]``, forward, loss, backward and
    the optimizer's update. ``out`` receives (sum of batch loss * rows, steps done, first bad
    step or -1, rows classified right as they were trained on); a step whose loss or gradient
    is not finite stops the epoch before its update."""
    T = order.shape[0]
    n_in = X.shape[1]
    ok = np.empty(-(-grads.shape[0] // KO.FINITE_BLOCK), np.bool_)
    total = 0.0
    step = 0
    right = 0
    out[2] = -1
    for lo in range(0, T, batch):
        rows = min(batch, T - lo)
        x = _reg(act, regs, 0, rows)
        for r in range(rows):
            src = order[lo + r]
            for c in range(n_in):
                x[r, c] = X[src, c]
            blabels[r] = labels[src] if labels.shape[0] > 0 else 0
            for c in range(bd.shape[1]):
                bd[r, c] = d[src, c]
        tape_forward(ops, fp, regs, params, zeros, consts, iconsts, act, iact, rows, wt)
        value = loss_stage(loss_kind, regs, y_reg, z_reg, act, grad, blabels, bd, div, rows)
        tape_backward(ops, fp, regs, params, grads, dbias, consts, iconsts, act, iact, grad,
                      rows, last, wt)
        if not (math.isfinite(value) and _finite_grads(grads, ok)):
            out[2] = step
            break
        if count:
            right += KDiv.correct(_reg(act, regs, y_reg, rows), blabels[:rows] if
                                  labels.shape[0] > 0 else labels, bd[:rows])
        _update(opt, params, grads, lr, hyper, state1, state2, t0 + step + 1)
        total += value * rows
        step += 1
    out[0] = total
    out[1] = step
    out[3] = right


@njit(**SERIAL)
def train_epochs(ops, fp, regs, params, grads, zeros, dbias, consts, iconsts, act, iact, grad,
                 X, labels, d, orders, batch, loss_kind, y_reg, z_reg, last, div, blabels, bd,
                 opt, lrs, hyper, state1, state2, t0, outs, wt, count, tol, prev):
    """Epochs one after another, epoch e on rows ``orders[e]`` (or ``orders[0]`` for every epoch)
    with learning rate ``lrs[e]``; ``outs[e]`` as ``train_epoch``'s ``out``. Stops after an
    epoch with a non-finite step, or whose mean loss differs from the previous one (``prev``
    before the first) by less than ``tol`` (the seed's test; tol < 0: never). Returns the
    number of epochs run."""
    T = orders.shape[1]
    steps = 0
    for e in range(lrs.shape[0]):
        order = orders[e] if orders.shape[0] > 1 else orders[0]
        train_epoch(ops, fp, regs, params, grads, zeros, dbias, consts, iconsts, act, iact,
                    grad, X, labels, d, order, batch, loss_kind, y_reg, z_reg, last, div,
                    blabels, bd, opt, lrs[e], hyper, state1, state2, t0 + steps, outs[e], wt,
                    count)
        steps += int(outs[e, 1])
        if outs[e, 2] >= 0:
            return e + 1
        value = outs[e, 0] / T
        if tol >= 0 and abs(value - prev) < tol:
            return e + 1
        prev = value
    return lrs.shape[0]
