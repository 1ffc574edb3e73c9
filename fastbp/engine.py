"""Compile a network of built-in nodes into the engine's tape (see fastbp/kernels/engine.py),
and run epochs, training steps and predictions through it without Python per step."""

import threading

import numpy as np

from .kernels import engine as KE
from .losses import KL, L2, BinaryKL
from .network import Sequential
from .nodes import Linear, RReLU, Sigmoid, _Scalar
from .optim import SGD, Adam
from .products import MaxOver, PairProduct, PowerProduct, Product
from .vector import Softmax


class Unsupported(Exception):
    """The network holds a node the engine cannot run (then the per-node path runs it)."""


class Workspace:
    """One calling thread's buffers for up to ``capacity`` rows: activations, gradients, argmax
    indices, scratch, the register table, and the tape's ops (MAX ops hold offsets into
    ``iact``, which depend on the capacity)."""

    __slots__ = ("capacity", "ops", "regs", "act", "grad", "iact", "wt")


class Tape:
    """A network's ops, registers and constants; each calling thread gets workspaces of its own
    (the kernels release the GIL, so two threads predicting with one network must not share
    them)."""

    def __init__(self, net, train):
        self.net, self.train = net, train
        self.ops, self.fp, self.widths = [], [], []
        self.consts, self.iconsts, self.iwidths = [], [], []
        x = self._register(net.n_in)
        self.y = self._emit_seq(net, x, -1)
        self.n_out = self.widths[self.y]
        self._local = threading.local()

    # -- building ----------------------------------------------------------------------------
    def _register(self, width):
        if width is None:
            raise Unsupported("input width unknown")
        self.widths.append(int(width))
        return len(self.widths) - 1

    def _op(self, code, i, o, gi, go, n_in=0, n_out=0, w=-1, b=-1, a1=0, a2=0, a3=0, p=0.0):
        work = n_in * n_out if code == KE.LINEAR else self.widths[o]
        self.ops.append([code, i, o, gi, go, n_in, n_out, w, b, a1, a2, a3, work])
        self.fp.append(p)

    def _emit_seq(self, seq, x, gx):
        """Ops for the nodes of ``seq`` reading register x; gx is x's gradient register (-1:
        not needed). Returns the output register."""
        for node in seq.nodes:
            x, gx = self._emit(node, x, gx)
        return x

    def _emit(self, node, x, gx):
        n_in = self.widths[x]
        if isinstance(node, Sequential):
            y = self._emit_seq(node, x, gx)
            return y, y
        if isinstance(node, Product):
            ga = self._register(n_in) if gx >= 0 else -1
            gb = self._register(n_in) if gx >= 0 else -1
            self._op(KE.FORK, x, x, gx, -1, a1=ga, a2=gb)
            ya = self._emit_seq(node.a, x, ga)
            yb = self._emit_seq(node.b, x, gb)
            y = self._register(self.widths[ya])
            self._op(KE.MUL, ya, y, ya, y, a1=yb, a2=yb)
            return y, y
        n_out = node.infer(n_in)
        y = self._register(n_out)
        if isinstance(node, Linear):
            w, b = (self._offset(node, "W"), self._offset(node, "b") if node.bias else -1)
            self._op(KE.LINEAR, x, y, gx, y, n_in, n_out, w, b)
        elif isinstance(node, RReLU) and self.train:
            raise Unsupported("RReLU in training draws slopes from NumPy's generator")
        elif isinstance(node, _Scalar):
            self._op(KE.SCALAR, x, y, gx, y, n_in, n_out, a1=node.kind, p=node._p())
        elif type(node) is Softmax:
            self._op(KE.SOFTMAX, x, y, gx, y, n_in, n_out)
        elif type(node) is PairProduct:
            self._op(KE.PAIR, x, y, gx, y, n_in, n_out)
        elif type(node) is PowerProduct:
            self._op(KE.POWER, x, y, gx, y, n_in, n_out, a1=self._const(node.alpha))
        elif isinstance(node, MaxOver):
            a1, a2 = self._iconst(node.indptr), self._iconst(node.indices)
            self.iwidths.append(n_out)
            self._op(KE.MAX, x, y, gx, y, n_in, n_out, a1=a1, a2=a2, a3=len(self.iwidths) - 1)
        else:
            raise Unsupported(f"{type(node).__name__} is not a built-in node")
        return y, y

    def _offset(self, node, attr):
        view, flat = getattr(node, attr), self.net.flat_params
        o = (view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) \
            // view.itemsize
        if not (view.base is flat and 0 <= o and o + view.size <= flat.size):
            raise RuntimeError(f"{node!r}.{attr} is not a view into the network's flat_params "
                               f"(was it replaced by a new array? assign with W[...] = ...)")
        return o

    def _const(self, a):
        o = sum(c.size for c in self.consts)
        self.consts.append(np.ravel(a))
        return o

    def _iconst(self, a):
        o = sum(c.size for c in self.iconsts)
        self.iconsts.append(np.ravel(a).astype(np.int64))
        return o

    def finish(self):
        dt = self.net.dtype
        self.ops = np.array(self.ops, np.int64).reshape(-1, 13)
        self.fp = np.array(self.fp, np.float64)
        self.consts = np.concatenate(self.consts).astype(dt) if self.consts else np.zeros(0, dt)
        self.iconsts = np.concatenate(self.iconsts) if self.iconsts else np.zeros(0, np.int64)
        self.zeros = np.zeros(max(self.widths), dt)
        self.dbias = np.zeros(max(self.widths), dt)
        return self

    def workspace(self, rows):
        """The calling thread's workspaces for at least ``rows`` rows (kept while large
        enough)."""
        ws = getattr(self._local, "ws", None)
        if ws is None or ws.capacity < rows:
            ws = self._local.ws = self._allocate(rows)
        return ws

    def _allocate(self, rows):
        ws = Workspace()
        # Scratch for W^T (loop kernels) and dz^T (BLAS kernels), shared by all LINEAR ops.
        lin = self.ops[self.ops[:, 0] == KE.LINEAR]
        ws.wt = np.zeros(max([1] + [int(r[5] * r[6]) for r in lin]
                             + [int(r[6]) * rows for r in lin]), self.net.dtype)
        widths = np.array(self.widths, np.int64)
        ws.regs = np.stack([np.concatenate([[0], np.cumsum(widths[:-1])]) * rows, widths],
                           axis=1).astype(np.int64)
        ws.act = np.zeros(int(widths.sum()) * rows, self.net.dtype)
        ws.grad = np.zeros_like(ws.act)
        ws.iact = np.zeros(max(sum(self.iwidths), 1) * rows, np.int64)
        # MAX ops address their argmax block by offset (op a3 indexes iwidths, in op order).
        starts = np.concatenate([[0], np.cumsum(self.iwidths)[:-1]]).astype(np.int64) * rows
        ws.ops = self.ops.copy()
        maxes = np.flatnonzero(self.ops[:, 0] == KE.MAX)
        ws.ops[maxes, 11] = starts[:len(maxes)]
        ws.capacity = rows
        return ws

    def forward(self, X):
        rows = X.shape[0]
        ws = self.workspace(rows)
        ws.act[:X.size] = X.reshape(-1)
        KE.tape_forward(ws.ops, self.fp, ws.regs, self.net.flat_params, self.zeros,
                        self.consts, self.iconsts, ws.act, ws.iact, rows, ws.wt)
        o, w = ws.regs[self.y]
        return ws.act[o:o + rows * w].reshape(rows, w)


def compile_tape(net, train):
    """The tape for ``net`` in training or evaluation mode, or None where the network holds a
    node the engine cannot run; cached on the network."""
    cache = net.__dict__.setdefault("_tapes", {})
    key = (train, id(net.flat_params))
    if key not in cache:
        try:
            cache[key] = Tape(net, train).finish()
        except Unsupported:
            cache[key] = None
    return cache[key]


def predict(net, X):
    """The network's output for X in evaluation mode, or None if the engine cannot run it."""
    tape = compile_tape(net, False)
    return None if tape is None else tape.forward(X).copy()


def loss_kind(net, loss, target):
    """The loss stage code and whether it is fused with the last node."""
    last = net.nodes[-1]
    labels = target.ndim == 1
    if isinstance(loss, KL):
        if type(last) is Softmax:
            return (KE.SOFTMAX_KL_LABELS if labels else KE.SOFTMAX_KL_PROBS), True
        return (KE.KL_LABELS if labels else KE.KL_PROBS), False
    if isinstance(loss, BinaryKL):
        return (KE.SIGMOID_BKL, True) if type(last) is Sigmoid else (KE.BKL, False)
    if type(loss) is L2:
        return KE.L2, False
    raise Unsupported(f"{type(loss).__name__} is not a built-in divergence")


def optimizer_args(opt, net):
    """(code, hyper-parameters, state buffers) for the engine's update."""
    if type(opt) is SGD:
        (v,) = opt._buffers(net, ["v"])
        return KE.SGD, np.array([opt.momentum, float(opt.nesterov), opt.weight_decay, 0.0]), v, v
    if type(opt) is Adam:
        m, v = opt._buffers(net, ["m", "v"])
        return KE.ADAM, np.array([*opt.betas, opt.eps, opt.weight_decay]), m, v
    raise Unsupported(f"{type(opt).__name__} is not a built-in optimizer")


def check_supported(net, loss, target, opt):
    """Raise ``Unsupported`` unless the engine can train ``net`` with this divergence and
    optimizer; returns the tape, the loss stage and whether it is fused, and the update's
    arguments."""
    tape = compile_tape(net, True)
    if tape is None:
        raise Unsupported("the network holds a node the engine cannot run")
    return tape, loss_kind(net, loss, target), optimizer_args(opt, net)


def _epoch_args(net, target, loss, opt, batch):
    """The arguments of the engine's epoch kernels that do not change between epochs."""
    tape, (kind, fused), (code, hyper, s1, s2) = check_supported(net, loss, target, opt)
    ws = tape.workspace(batch)
    labels = target if target.ndim == 1 else np.zeros(0, np.int64)
    d = target if target.ndim == 2 else np.zeros((0, 0), net.dtype)
    last = len(tape.ops) - (2 if fused else 1)
    return tape, ws, kind, last, labels, d, code, hyper, s1, s2


def run_epochs(net, X, target, loss, opt, orders, batch, lrs, tol, prev, count):
    """Several epochs in one compiled call (see ``kernels.engine.train_epochs``); returns the
    per-epoch rows (loss sum, steps, first bad step or -1, rows right) of the epochs run."""
    tape, ws, kind, last, labels, d, code, hyper, s1, s2 = _epoch_args(net, target, loss, opt,
                                                                       batch)
    outs = np.zeros((len(lrs), 4), np.float64)
    done = KE.train_epochs(ws.ops, tape.fp, ws.regs, net.flat_params, net.flat_grads,
                           tape.zeros, tape.dbias, tape.consts, tape.iconsts, ws.act,
                           ws.iact, ws.grad, X, labels, d, orders, batch, kind, tape.y,
                           int(tape.ops[-1, 1]), last, np.zeros(batch, np.float64),
                           np.zeros(batch, np.int64), np.zeros((batch, d.shape[1]), net.dtype),
                           code, np.asarray(lrs, np.float64), hyper, s1, s2, opt.t, outs,
                           ws.wt, count, -1.0 if tol is None else float(tol),
                           np.nan if prev is None else float(prev))
    opt.t += int(outs[:done, 1].sum())
    return outs[:done]


def run_epoch(net, X, target, loss, opt, order, batch, count=False):
    """One training epoch in compiled code; returns (sum of batch losses * rows, steps, first
    non-finite step or -1, rows classified right while training if ``count``)."""
    tape, ws, kind, last, labels, d, code, hyper, s1, s2 = _epoch_args(net, target, loss, opt,
                                                                       batch)
    out = np.zeros(4, np.float64)
    KE.train_epoch(ws.ops, tape.fp, ws.regs, net.flat_params, net.flat_grads, tape.zeros,
                   tape.dbias, tape.consts, tape.iconsts, ws.act, ws.iact, ws.grad, X,
                   labels, d, order, batch, kind, tape.y, int(tape.ops[-1, 1]), last,
                   np.zeros(batch, np.float64), np.zeros(batch, np.int64),
                   np.zeros((batch, d.shape[1]), net.dtype), code, opt.current_lr(), hyper, s1,
                   s2, opt.t, out, ws.wt, count)
    opt.t += int(out[1])
    return out[0], int(out[1]), int(out[2]), int(out[3])
