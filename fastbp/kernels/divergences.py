"""Divergences per instance, div[t] = Div(Y[t], d[t]), and their gradients scaled by 1/T.

Row t owns div[t] and dY[t]. The ``softmax_kl_*``, ``sigmoid_binary_kl`` and ``exp_poisson``
kernels are the fused forms used when the network ends in that activation: they take its input
z and give the stable loss (through log-sum-exp, softplus, or z = log y) and
dDiv/dz = (y - d) / T directly. Each also writes the activation's output y from z, through
the activation's own function (``vector.softmax_row``, ``activations._sigmoid``, ``_exp``: the
bits of its forward), so a training step leaves that forward out. Weighted batches: the same
kernels with scale 1 / sum_t w_t, then ``weighted_mean``.
"""

import math

from numba import prange

from .._config import GLUE, PARALLEL, SERIAL, njit, serial_twin
from .activations import _exp, _sigmoid, softplus
from .fastmath import flog, flog1p
from .vector import softmax_row


@njit(**SERIAL)
def xlogx(x):
    """x log x with the limit 0 log 0 = 0; 1 log 1 = 0 without computing the log (targets
    are mostly 0 and 1: the fused sigmoid + binary KL loss took 12.6 us for 256 rows with
    the two logs, where the loop does not vectorise)."""
    return 0.0 if x == 0 or x == 1 else x * flog(x)


@njit(**SERIAL)
def mean(div):
    """sum_t div[t] / T in one fixed order (the per-node path and the engine share it)."""
    s = 0.0
    for t in range(div.shape[0]):
        s += div[t]
    return s / div.shape[0]


@njit(**SERIAL)
def total(w):
    """sum_t w[t], in one fixed order (a weighted batch's weight)."""
    s = 0.0
    for t in range(w.shape[0]):
        s += w[t]
    return s


@njit(**SERIAL)
def weight_scale(wsum):
    """1 / wsum, the scale of a weighted batch's gradient; 0 for a batch whose weights are all
    0 (it contributes nothing)."""
    return 1.0 / wsum if wsum > 0 else 0.0


@njit(**SERIAL)
def weighted_mean(div, dY, w, scale):
    """sum_t w[t] div[t] scale, the weighted mean divergence, after weighting each row of the
    gradient, computed with ``scale`` = 1 / sum_t w[t]: dY[t] *= w[t]."""
    s = 0.0
    for t in range(div.shape[0]):
        s += w[t] * div[t]
        for i in range(dY.shape[1]):
            dY[t, i] *= w[t]
    return s * scale


@njit(**SERIAL)
def correct(Y, labels, d):
    """How many rows of Y are classified right: argmax against ``labels`` when given (first
    index on ties), else argmax against the argmax of probability rows ``d``, or for one
    output y >= 0.5 against d >= 0.5. The training accuracy of an epoch sums this per batch."""
    n = 0
    for t in range(Y.shape[0]):
        if Y.shape[1] == 1 and labels.shape[0] == 0:
            n += (Y[t, 0] >= 0.5) == (d[t, 0] >= 0.5)
            continue
        best = 0
        for i in range(1, Y.shape[1]):
            if Y[t, i] > Y[t, best]:
                best = i
        if labels.shape[0] > 0:
            n += best == labels[t]
        else:
            want = 0
            for i in range(1, d.shape[1]):
                if d[t, i] > d[t, want]:
                    want = i
            n += best == want
    return n


@njit(**PARALLEL)
def l2(Y, d, div, dY, scale):
    """Div = 1/2 sum_i (y_i - d_i)^2; dY = (y - d) scale."""
    for t in prange(Y.shape[0]):
        s = 0.0
        for i in range(Y.shape[1]):
            e = Y[t, i] - d[t, i]
            s += e * e
            dY[t, i] = e * scale
        div[t] = 0.5 * s


@njit(**PARALLEL)
def kl_probs(Y, d, div, dY, scale):
    """Div = sum_i d_i log(d_i / y_i); dY = -d / y scale (0 where d_i = 0)."""
    for t in prange(Y.shape[0]):
        s = 0.0
        for i in range(Y.shape[1]):
            if d[t, i] != 0:
                s += xlogx(d[t, i]) - d[t, i] * flog(Y[t, i])
                dY[t, i] = -d[t, i] / Y[t, i] * scale
            else:
                dY[t, i] = 0
        div[t] = s


@njit(**PARALLEL)
def kl_labels(Y, labels, div, dY, scale):
    """One-hot d: Div = -log y_c; dY = -1 / y_c scale at c = labels[t], 0 elsewhere."""
    for t in prange(Y.shape[0]):
        c = labels[t]
        dY[t, :] = 0
        dY[t, c] = -1 / Y[t, c] * scale
        div[t] = -flog(Y[t, c])


@njit(**GLUE)
def _softmax_lse(z, y):
    """y = softmax(z) for one row (``vector.softmax_row``) and logsumexp(z): m + log s, or m
    where the row's max m is +-inf."""
    m, s = softmax_row(z, y)
    return m if m == math.inf or m == -math.inf else m + flog(s)


@njit(**PARALLEL)
def softmax_kl_probs(z, y, d, div, dz, scale):
    """Fused softmax + KL: y = softmax(z), as ``softmax_forward`` gives it;
    Div = sum_i d_i (log d_i - z_i) + logsumexp(z); dz = (y - d) scale."""
    for t in prange(z.shape[0]):
        lse = _softmax_lse(z[t], y[t])
        s = 0.0
        for i in range(z.shape[1]):
            if d[t, i] != 0:
                s += xlogx(d[t, i]) - d[t, i] * (z[t, i] - lse)
            dz[t, i] = (y[t, i] - d[t, i]) * scale
        div[t] = s


@njit(**PARALLEL)
def softmax_kl_labels(z, y, labels, div, dz, scale):
    """Fused softmax + KL, one-hot d: y = softmax(z) (as ``softmax_kl_probs``);
    Div = logsumexp(z) - z_c; dz = (y - onehot(c)) scale."""
    for t in prange(z.shape[0]):
        c = labels[t]
        div[t] = _softmax_lse(z[t], y[t]) - z[t, c]
        for i in range(z.shape[1]):
            dz[t, i] = y[t, i] * scale
        dz[t, c] = (y[t, c] - 1) * scale


@njit(**PARALLEL)
def binary_kl(Y, d, div, dY, scale):
    """Div = sum_k d log(d / y) + (1 - d) log((1 - d) / (1 - y)); dY = (y - d) / (y (1 - y)) scale."""
    for t in prange(Y.shape[0]):
        s = 0.0
        for k in range(Y.shape[1]):
            y, dd = Y[t, k], d[t, k]
            if dd != 0:
                s += xlogx(dd) - dd * flog(y)
            if dd != 1:
                s += xlogx(1 - dd) - (1 - dd) * flog1p(-y)
            dY[t, k] = (y - dd) / (y * (1 - y)) * scale
        div[t] = s


@njit(**PARALLEL)
def sigmoid_binary_kl(z, y, d, div, dz, scale):
    """Fused sigmoid + binary KL from logits: y = sigmoid(z); Div = (1 - d) z + softplus(-z) -
    H(d); dz = (y - d) scale, with H(d) = -d log d - (1 - d) log(1 - d). One output (a
    binary classifier) is a loop over rows that vectorises, where the sum over outputs kept
    each row scalar (256 rows: 12.4 -> 4.9 us), with the same arithmetic (0.0 + the term)."""
    if z.shape[1] == 1:
        for t in prange(z.shape[0]):
            x, dd = z[t, 0], d[t, 0]
            y[t, 0] = _sigmoid(x, 0.0)
            div[t] = 0.0 + ((1 - dd) * x + softplus(-x) + xlogx(dd) + xlogx(1 - dd))
            dz[t, 0] = (y[t, 0] - dd) * scale
    else:
        for t in prange(z.shape[0]):
            s = 0.0
            for k in range(z.shape[1]):
                x, dd = z[t, k], d[t, k]
                y[t, k] = _sigmoid(x, 0.0)
                s += (1 - dd) * x + softplus(-x) + xlogx(dd) + xlogx(1 - dd)
                dz[t, k] = (y[t, k] - dd) * scale
            div[t] = s


@njit(**PARALLEL)
def poisson(Y, d, div, dY, scale):
    """Half the Poisson deviance: Div = sum_k d log(d / y) - d + y (y > 0, d >= 0);
    dY = (1 - d / y) scale."""
    for t in prange(Y.shape[0]):
        s = 0.0
        for k in range(Y.shape[1]):
            y, dd = Y[t, k], d[t, k]
            s += xlogx(dd) - dd * flog(y) - dd + y
            dY[t, k] = (1 - dd / y) * scale
        div[t] = s


@njit(**PARALLEL)
def exp_poisson(z, y, d, div, dz, scale):
    """Fused exp + half Poisson deviance through the log link, from z = log y: y = exp(z);
    Div = sum_k d log d - d z - d + y; dz = (y - d) scale (finite where y = exp(z) is)."""
    for t in prange(z.shape[0]):
        s = 0.0
        for k in range(z.shape[1]):
            dd = d[t, k]
            y[t, k] = _exp(z[t, k], 0.0)
            s += xlogx(dd) - dd * z[t, k] - dd + y[t, k]
            dz[t, k] = (y[t, k] - dd) * scale
        div[t] = s


# The same kernels run serially, for ops too small to split (see _config.serial_twin).
l2_serial = serial_twin(l2)
kl_probs_serial = serial_twin(kl_probs)
kl_labels_serial = serial_twin(kl_labels)
softmax_kl_probs_serial = serial_twin(softmax_kl_probs)
softmax_kl_labels_serial = serial_twin(softmax_kl_labels)
binary_kl_serial = serial_twin(binary_kl)
sigmoid_binary_kl_serial = serial_twin(sigmoid_binary_kl)
poisson_serial = serial_twin(poisson)
exp_poisson_serial = serial_twin(exp_poisson)
