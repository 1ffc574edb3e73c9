"""Normalisation nodes: ``LayerNorm`` (each row) and ``BatchNorm1d`` (each unit over the batch).

Both compute y = g * xhat + b with xhat = (x - mean) / sqrt(var + eps), as PyTorch's modules of
the same names; the kernels are in :mod:`fastbp.kernels.norm`.
"""

import numpy as np

from . import _checks
from .kernels import norm as KN
from .nodes import Node


def _float(value, name, low, high=np.inf, low_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (low < v if low_open else low <= v) or not v <= high:
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], "
                         f"got {value!r}")
    return v


class _Norm(Node):
    """What both nodes share: the width, eps, the gain g and bias b (PyTorch's ``weight`` and
    ``bias``, present when ``affine``) and how the engine places them."""

    keeps_width = True

    def __init__(self, n, eps=1e-5, affine=True):
        self.n = self.n_in = _checks.positive_int(n, "n")
        self.eps = _float(eps, "eps", 0.0, low_open=True)
        self.affine = bool(affine)

    def infer(self, n_in):
        if n_in is not None and n_in != self.n:
            raise ValueError(f"{self!r} expects {self.n} inputs but receives {n_in}")
        return self.n

    def param_specs(self):
        return [("g", (self.n,)), ("b", (self.n,))] if self.affine else []

    def reset_parameters(self, rng):
        if self.affine:
            self.g[...] = 1.0
            self.b[...] = 0.0

    def _gain_bias(self, dtype):
        """(g, b) for the kernels: the parameters, or ones and zeros without them."""
        if self.affine:
            return self.g, self.b
        return np.ones(self.n, dtype), np.zeros(self.n, dtype)

    def _grads(self, dtype):
        """(dg, db) for the kernels: the gradient views, or empty arrays (nothing to write)."""
        if self.affine:
            return self.dg, self.db
        return np.zeros(0, dtype), np.zeros(0, dtype)

    def _check_input(self, x):
        if self.affine and not hasattr(self, "g"):
            raise RuntimeError(f"{self!r} has no parameters yet: use it inside a "
                               f"fb.Sequential, which allocates them")
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"{self!r} expects input of shape (T, {self.n}), got {x.shape}")

    def _place(self, tape, x, gx, forward, backward, stat_width, block):
        """The node's op on the tape: registers for the output and for the saved mean and
        rstd (``stat_width`` values per row each), the ICONSTS block (see kernels/norm.py)."""
        n = self.n
        y, mean, rstd = tape.register(n), tape.register(stat_width), tape.register(stat_width)
        aux = {KN.W: tape.offset(self, "g") if self.affine else -1,
               KN.B: tape.offset(self, "b") if self.affine else -1,
               KN.A1: mean, KN.A2: rstd,
               KN.A3: tape.iconst(np.array([tape.const(np.ones(n))] + block, np.int64))}
        tape.op(forward, backward, x, y, gx, y, n, n, aux=aux, aux_regs=(KN.A1, KN.A2),
                p=self.eps, params=True)
        return y

    def config(self):
        return dict(n=self.n, eps=self.eps, affine=self.affine)


class LayerNorm(_Norm):
    """Layer normalisation of each row: y[t] = g * (x[t] - mean_t) / sqrt(var_t + eps) + b,
    with mean_t and the biased variance var_t over the n units of row t, as
    ``torch.nn.LayerNorm(n)``. Every output of a row depends on every input of the row (the
    seed's vector activation, with a full Jacobian); the same in training and evaluation.

    Parameters
    ----------
    n : int
        The width (PyTorch's ``normalized_shape``, one dimension).
    eps : float
        Added to the variance.
    affine : bool
        Whether the node has the learnable gain ``g`` (starts at 1) and bias ``b`` (starts at
        0), PyTorch's ``elementwise_affine``; their gradients are ``dg`` and ``db``.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(3, 4), fb.LayerNorm(4), seed=0)
    >>> Y = net.forward(np.random.default_rng(0).normal(size=(5, 3)))
    >>> bool(np.allclose(Y.mean(axis=1), 0)), bool(np.allclose(Y.var(axis=1), 1, atol=1e-3))
    (True, True)
    >>> net[1].g.shape, net.param_names[2:]
    ((4,), ['1.g', '1.b'])
    """

    def _apply(self, x, train):
        self._check_input(x)
        T, dt = x.shape[0], x.dtype
        y, mean, rstd = np.empty_like(x), np.empty(T, dt), np.empty(T, dt)
        g, b = self._gain_bias(dt)
        KN.layernorm_forward(x, g, b, self.eps, y, mean, rstd)
        return y, (x, mean, rstd)

    def _backprop(self, ctx, dy, need_dx=True):
        x, mean, rstd = ctx
        dx = np.empty_like(x)
        dg, db = self._grads(x.dtype)
        KN.layernorm_backward(x, self._gain_bias(x.dtype)[0], dy, mean, rstd, dx, dg, db,
                              bool(need_dx))
        return dx if need_dx else None

    def engine_emit(self, tape, x, gx):
        return self._place(tape, x, gx, (KN.layernorm_op_forward, KN.layernorm_forward),
                           (KN.layernorm_op_backward, KN.layernorm_backward), 1, [])

    def __repr__(self):
        extra = ("" if self.eps == 1e-5 else f", eps={self.eps:g}") + \
            ("" if self.affine else ", affine=False")
        return f"LayerNorm({self.n}{extra})"


class BatchNorm1d(_Norm):
    """Batch normalisation of each unit, as ``torch.nn.BatchNorm1d(n)`` on (T, n) input:
    y[:, j] = g[j] * (x[:, j] - mean_j) / sqrt(var_j + eps) + b[j].

    In training (``net.train()``, the default) mean_j and the biased variance var_j are the
    batch's, the gradient flows through them, and the running statistics move towards them:
    running = (1 - momentum) * running + momentum * batch statistic (the unbiased variance for
    ``running_var``). In evaluation (``net.eval()``, ``predict``) the running statistics are
    used and the node is affine. Training needs batches of more than one row.

    The running statistics ``running_mean`` (starts at 0) and ``running_var`` (starts at 1)
    are buffers of the network's dtype, not trained parameters: they are not in ``params``,
    and they are saved, loaded, checkpointed and copied (``astype``) with the network.

    Parameters
    ----------
    n : int
        The number of units (PyTorch's ``num_features``).
    eps : float
        Added to the variance.
    momentum : float
        In [0, 1]; the weight of the batch statistic in the running statistics.
    affine : bool
        Whether the node has the learnable gain ``g`` (starts at 1) and bias ``b`` (starts at
        0); their gradients are ``dg`` and ``db``.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(3, 2), fb.BatchNorm1d(2), seed=0)
    >>> X = np.random.default_rng(0).normal(size=(8, 3))
    >>> Y = net.forward(X)                     # training: the batch's statistics
    >>> bool(np.allclose(Y.mean(axis=0), 0))
    True
    >>> net[1].running_var.shape, net[1].running_mean.dtype
    ((2,), dtype('float64'))
    >>> P = net.eval().predict(X)              # evaluation: the running statistics
    >>> bool(np.allclose(P.mean(axis=0), 0))
    False
    """

    couples_rows = True

    def __init__(self, n, eps=1e-5, momentum=0.1, affine=True):
        super().__init__(n, eps, affine)
        self.momentum = _float(momentum, "momentum", 0.0, 1.0)
        self.running_mean = np.zeros(self.n)
        self.running_var = np.ones(self.n)

    def buffer_specs(self):
        return [("running_mean", (self.n,)), ("running_var", (self.n,))]

    def bind(self, dtype):
        # Keep the statistics (a copy converted by astype keeps them), in the network's dtype.
        self.running_mean = np.ascontiguousarray(self.running_mean, dtype).copy()
        self.running_var = np.ascontiguousarray(self.running_var, dtype).copy()

    def reset_running_stats(self):
        """Running mean 0 and running variance 1, as at construction."""
        self.running_mean[...] = 0.0
        self.running_var[...] = 1.0

    def _apply(self, x, train):
        self._check_input(x)
        dt = x.dtype
        y, mean, rstd = np.empty_like(x), np.empty(self.n, dt), np.empty(self.n, dt)
        g, b = self._gain_bias(dt)
        rm, rv = self._stats(dt)
        if train:
            if x.shape[0] < 2:
                raise ValueError(f"{self!r}: Expected more than 1 value per channel when "
                                 f"training, got input of shape {x.shape}")
            KN.batchnorm_forward_train(x, g, b, self.eps, self.momentum, y, mean, rstd, rm, rv)
        else:
            KN.batchnorm_forward_eval(x, g, b, self.eps, rm, rv, y, mean, rstd)
        return y, (x, mean, rstd, bool(train))

    def _stats(self, dtype):
        """The running statistics, checked: the kernels write them in place."""
        for name in ("running_mean", "running_var"):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.shape != (self.n,) or a.dtype != dtype or \
                    not a.flags.c_contiguous or not a.flags.writeable:
                raise TypeError(f"{self!r}.{name} must be a writable contiguous {dtype} array "
                                f"of shape ({self.n},), got {type(a).__name__} "
                                f"{getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}")
        return self.running_mean, self.running_var

    def _backprop(self, ctx, dy, need_dx=True):
        x, mean, rstd, train = ctx
        dx = np.empty_like(x)
        dg, db = self._grads(x.dtype)
        kernel = KN.batchnorm_backward_train if train else KN.batchnorm_backward_eval
        kernel(x, self._gain_bias(x.dtype)[0], dy, mean, rstd, dx, dg, db, bool(need_dx))
        return dx if need_dx else None

    def engine_emit(self, tape, x, gx):
        mean, var = tape.buffer(self, "running_mean"), tape.buffer(self, "running_var")
        momentum = int(np.array([self.momentum]).view(np.int64)[0])  # its float64 bits
        if tape.train:
            tape.require_rows(2, f"{self!r}: Expected more than 1 value per channel when "
                              f"training")
            forward = (KN.batchnorm_op_forward_train, KN.batchnorm_forward_train)
        else:
            forward = (KN.batchnorm_op_forward_eval, KN.batchnorm_forward_eval)
        # Evaluation tapes only predict: their backward is never run.
        return self._place(tape, x, gx, forward,
                           (KN.batchnorm_op_backward, KN.batchnorm_backward_train), self.n,
                           [momentum, mean, var])

    def config(self):
        return dict(super().config(), momentum=self.momentum)

    def __repr__(self):
        extra = ("" if self.eps == 1e-5 else f", eps={self.eps:g}") + \
            ("" if self.momentum == 0.1 else f", momentum={self.momentum:g}") + \
            ("" if self.affine else ", affine=False")
        return f"BatchNorm1d({self.n}{extra})"
