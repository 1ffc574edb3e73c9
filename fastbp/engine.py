"""Compile a network of built-in nodes into the engine's tape (see fastbp/kernels/engine.py),
and run epochs, training steps and predictions through it without Python per step."""

import threading

import numba
import numpy as np

from ._config import (compile_later, compile_ops, compiled_later, op_kernel, prefetch_ops,
                      runnable, serial_twin_of)
from .errors import Unsupported
from .nodes import blas_kernels, by_units, dense_mode, input_scratch
from .kernels import dense as KD
from .kernels import divergences as KDiv
from .kernels import engine as KE
from .kernels import optim as KO

LOSS = "loss"  # in a program's calls, the loss op (see ``Tape._calls``)
REST = "rest"  # and the row of the parameters outside the linear ops' W (``Tape.rest_op``)


class Op:
    """One op of the tape: the fields of its row (``fields``; those named in ``regs`` are
    registers, placed per workspace), its float parameter, its elements per row (``work``),
    and its kernels: ``forward`` and ``backward`` are (op function of
    :mod:`fastbp.kernels.engine`, leaf kernel) or None; the leaf's serial twin runs ops too
    small for the threads. A linear op picks its kernels by ``dense.dense_mode``. An op with
    ``params`` writes parameter gradients in its backward, which therefore runs even where no
    input gradient is wanted, compiled with NEED_DY saying whether one is."""

    __slots__ = ("forward", "backward", "fields", "regs", "p", "work", "linear", "params")

    def __init__(self, forward, backward, fields, regs, work, p=0.0, linear=False,
                 params=False):
        self.forward, self.backward, self.fields, self.regs = forward, backward, fields, regs
        self.work, self.p, self.linear, self.params = work, p, linear, params

    def _leaf(self, leaf, rows):
        return leaf if rows * self.work >= KE.PAR_MIN_WORK else serial_twin_of(leaf)

    def forward_kernel(self, dt, rows):
        """The compiled forward op for a batch of ``rows`` rows (None: nothing to do). The
        choice depends on the sizes alone, as the per-node path's does, so both always run
        the same leaf kernel."""
        if self.linear:
            mode = dense_mode(rows, self.fields[KE.N_OUT], self.fields[KE.N_IN])
            if mode == KD.LOOP_MODE:
                return op_kernel(KE.linear_forward, dt, KERNEL=KD.dense_forward, BLAS=False)
            return op_kernel(KE.linear_forward, dt, KERNEL=blas_kernels(rows, mode)[0],
                             BLAS=True)
        if self.forward is None:
            return None
        fn, leaf = self.forward
        return op_kernel(fn, dt, KERNEL=self._leaf(leaf, rows))

    def backward_kernel(self, dt, rows, defer=False):
        """The compiled backward op (None: nothing to do, no gradient wanted); a linear op's
        with ``defer`` leaves dW to ``KE.linear_sgd``."""
        need_dy = bool(self.fields[KE.GIN] >= 0)
        if self.linear:
            mode = dense_mode(rows, self.fields[KE.N_OUT], self.fields[KE.N_IN])
            if defer:
                return op_kernel(KE.linear_backward, dt, KERNEL2=KD.dense_backward_input if
                                 mode == KD.LOOP_MODE else
                                 blas_kernels(rows, KD.BLAS_SERIAL_MODE)[1],
                                 NEED_DY=need_dy, DEFER=True)
            if mode == KD.LOOP_MODE:
                return op_kernel(KE.linear_backward, dt, KERNEL=KD.dense_backward_params,
                                 KERNEL2=KD.dense_backward_input, NEED_DY=need_dy, BLAS=False)
            par = mode == KD.BLAS_MODE
            split = need_dy and by_units(rows, self.fields[KE.N_OUT], self.fields[KE.N_IN])
            dy = KD.dense_backward_input_parts if split else blas_kernels(rows, mode)[1]
            return op_kernel(KE.linear_backward, dt, KERNEL=KD.dense_backward_params_blas if par
                             else KD.dense_backward_params_blas_serial, KERNEL2=dy,
                             NEED_DY=need_dy, BLAS=True, SPLIT_DY=split)
        if self.backward is None or not (need_dy or self.params):
            return None
        fn, leaf = self.backward
        flags = dict(NEED_DY=need_dy) if self.params else {}
        return op_kernel(fn, dt, **flags) if leaf is None else \
            op_kernel(fn, dt, KERNEL=self._leaf(leaf, rows), **flags)


class Workspace:
    """One calling thread's buffers for up to ``capacity`` rows (activations, gradients, argmax
    indices, scratch, a batch's labels, targets and divergences), the op rows with their
    registers placed, the ``ctx`` fields that point at all of them, and the programs built so
    far (by phase and rows)."""

    __slots__ = ("capacity", "ops", "act", "grad", "iact", "wt", "blabels", "bd", "bw", "div",
                 "ok", "ctx", "fscal", "programs", "later", "loss_op", "out", "bound",
                 "prepared")


class Tape:
    """A network's ops, registers and constants; each calling thread gets workspaces of its own
    (the kernels release the GIL, so two threads predicting with one network must not share
    them)."""

    def __init__(self, net, train):
        self.net, self.train = net, train
        self.ops, self.widths = [], []
        self.consts, self.iconsts, self.iwidths = [], [], []
        self.buffers = []  # [ICONSTS offset, node, attribute, the array held] (see ``buffer``)
        self.min_rows = (1, "")  # (rows a training batch needs, why; see ``require_rows``)
        self.y = self.emit(net, self.register(net.n_in), -1)
        self.n_out = self.widths[self.y]
        self._local = threading.local()

    # -- building ----------------------------------------------------------------------------
    def register(self, width):
        """A new register of ``width`` values per row (its index)."""
        if width is None:
            raise Unsupported("input width unknown")
        self.widths.append(int(width))
        return len(self.widths) - 1

    def op(self, forward, backward, i, o, gi, go, n_in, n_out, aux=None, aux_regs=(), p=0.0,
           linear=False, params=False):
        """Append an op (see ``Op``) reading register i and writing o, gradients from go to gi
        (-1: none); ``aux`` sets auxiliary fields, those in ``aux_regs`` being registers."""
        fields = np.zeros(KE.N_OP, np.int64)
        fields[[KE.IN, KE.OUT, KE.GIN, KE.GOUT, KE.N_IN, KE.N_OUT, KE.W, KE.B]] = \
            [i, o, gi, go, n_in, n_out, -1, -1]
        aux = aux or {}
        for name, value in aux.items():
            fields[name] = value
        fields[KE.K] = len(self.ops)
        op = Op(forward, backward, fields, (KE.IN, KE.OUT, KE.GIN, KE.GOUT) + aux_regs, n_out, p,
                linear, params)
        self.ops.append(op)
        return op

    def emit(self, node, x, gx):
        """Place ``node`` reading register x (gx: x's gradient register, -1: not needed);
        returns its output register (its gradient register has the same index). The class
        that states the node's engine code (``engine_op`` or ``engine_emit``) must also be
        the one that computes it: a subclass that changes ``_apply`` or ``_backprop`` and not
        its engine code runs node by node."""
        cls = type(node)
        owner = next(c for c in cls.__mro__ if "engine_op" in vars(c) or "engine_emit" in vars(c))
        if cls._apply is not owner._apply or cls._backprop is not owner._backprop:
            raise Unsupported(f"{cls.__name__} computes otherwise than its engine op")
        return node.engine_emit(self, x, gx)

    def place(self, op, x, gx, n_out):
        """Place a node's one op (an ``EngineOp``) reading x; returns its output register."""
        y = self.register(n_out)
        self.op(op.forward, op.backward, x, y, gx, y, self.widths[x], n_out, dict(op.aux),
                p=op.p, linear=op.linear)
        return y

    # -- what nodes place (see Node.engine_op) -------------------------------------------------
    def offset(self, node, attr):
        """The offset of the parameter ``node.attr`` in the network's flat parameters."""
        view, flat = getattr(node, attr), self.net.flat_params
        o = (view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) \
            // view.itemsize
        if not (view.base is flat and 0 <= o and o + view.size <= flat.size):
            raise RuntimeError(f"{node!r}.{attr} is not a view into the network's flat_params "
                               f"(was it replaced by a new array? assign with W[...] = ...)")
        return o

    def const(self, a):
        """The offset of the float constants ``a`` (raveled) in CONSTS."""
        o = sum(c.size for c in self.consts)
        self.consts.append(np.ravel(a))
        return o

    def iconst(self, a):
        """The offset of the integer constants ``a`` (raveled) in ICONSTS."""
        o = sum(c.size for c in self.iconsts)
        self.iconsts.append(np.ravel(a).astype(np.int64))
        return o

    def buffer(self, node, attr):
        """The offset in ICONSTS of the address of ``node.attr``, a 1-D contiguous array of the
        network's dtype that the node owns and its op updates in place (BatchNorm's running
        statistics). The tape holds the array; before each run, ``_bind_buffers`` points the
        address at the node's array again if it was replaced (``load``, a user's assignment)."""
        a = self._checked_buffer(node, attr, None)
        o = self.iconst([a.ctypes.data])
        self.buffers.append([o, node, attr, a])
        return o

    def _checked_buffer(self, node, attr, shape):
        a = getattr(node, attr)
        dt = self.net.dtype
        if not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != 1 or \
                not a.flags.c_contiguous or not a.flags.writeable or \
                shape is not None and a.shape != shape:
            want = f"of shape {shape}" if shape is not None else "1-D"
            raise TypeError(f"{node!r}.{attr} must be a writable contiguous {dt} array {want}, "
                            f"got {type(a).__name__} {getattr(a, 'dtype', '')} "
                            f"{getattr(a, 'shape', '')}")
        return a

    def _bind_buffers(self):
        for entry in self.buffers:
            o, node, attr, held = entry
            if getattr(node, attr) is not held:
                entry[3] = self._checked_buffer(node, attr, held.shape)
                self.iconsts[o] = entry[3].ctypes.data

    def require_rows(self, rows, why):
        """Training batches must have at least ``rows`` rows (``why`` says which node needs
        them); ``check_rows`` raises ValueError before a run on fewer."""
        if rows > self.min_rows[0]:
            self.min_rows = (int(rows), why)

    def check_rows(self, rows):
        if 0 < rows < self.min_rows[0]:
            raise ValueError(f"{self.min_rows[1]}, got a batch of {rows} row"
                             f"{'s' if rows != 1 else ''}")

    def argmax(self, width):
        """A block of ``width`` argmax indices per row in IACT (its index; each workspace places
        it)."""
        self.iwidths.append(int(width))
        return len(self.iwidths) - 1

    def finish(self):
        dt = self.net.dtype
        self.fp = np.array([op.p for op in self.ops], np.float64)
        self.consts = np.concatenate(self.consts).astype(dt) if self.consts else np.zeros(1, dt)
        self.iconsts = np.concatenate(self.iconsts) if self.iconsts else np.zeros(1, np.int64)
        self.zeros = np.zeros(max(self.widths), dt)
        self.dbias = np.zeros(max(self.widths), dt)
        self.rest_op = self._rest_op()
        return self

    def _rest_op(self):
        """The op row of the parameters outside every linear op's W: A2 ranges of the flat
        parameters, (start, end) pairs at A1 in ICONSTS (appended to them here), for the
        ``finite`` and ``sgd`` ops of a step whose linear layers update by ``linear_sgd``."""
        cuts = sorted((int(f[KE.W]), int(f[KE.W] + f[KE.N_IN] * f[KE.N_OUT]))
                      for f in (op.fields for op in self.ops if op.linear) if f[KE.W] >= 0)
        ranges, lo = [], 0
        for start, end in cuts + [(self.net.flat_params.size,) * 2]:
            if start > lo:
                ranges += [lo, start]
            lo = max(lo, end)
        row = np.zeros(KE.N_OP, np.int64)
        row[KE.A1], row[KE.A2] = self.iconsts.size, len(ranges) // 2
        self.iconsts = np.concatenate([self.iconsts, np.array(ranges, np.int64)])
        return row

    # -- workspaces and programs ---------------------------------------------------------------
    def workspace(self, rows):
        """The calling thread's workspaces for at least ``rows`` rows (kept while large
        enough)."""
        ws = getattr(self._local, "ws", None)
        if ws is None or ws.capacity < rows:
            ws = self._local.ws = self._allocate(rows)
        return ws

    def _allocate(self, rows):
        dt, ws = self.net.dtype, Workspace()
        # Scratch for W^T (loop kernels) and dz^T (BLAS kernels), shared by all linear ops.
        lin = [op.fields for op in self.ops if op.linear]
        ws.wt = np.zeros(max([1] + [int(f[KE.N_IN] * f[KE.N_OUT]) for f in lin]
                             + [int(f[KE.N_OUT]) * rows for f in lin]
                             + [input_scratch(rows, int(f[KE.N_OUT]), int(f[KE.N_IN]))
                                for f in lin]), dt)
        widths = np.array(self.widths, np.int64)
        offsets = np.concatenate([[0], np.cumsum(widths[:-1])]) * rows
        ws.act = np.zeros(int(widths.sum()) * rows, dt)
        ws.grad = np.zeros_like(ws.act)
        ws.iact = np.zeros(max(sum(self.iwidths), 1) * rows, np.int64)
        istarts = np.concatenate([[0], np.cumsum(self.iwidths)[:-1]]).astype(np.int64) * rows
        ws.ops = np.zeros((len(self.ops), KE.N_OP), np.int64)
        for k, op in enumerate(self.ops):
            ws.ops[k] = op.fields
            for name in op.regs:
                if op.fields[name] >= 0:
                    ws.ops[k, name] = offsets[op.fields[name]]
            if op.forward is not None and op.forward[0] is KE.max_forward:
                ws.ops[k, KE.A3] = istarts[op.fields[KE.A3]]
        ws.blabels = np.zeros(rows, np.int64)
        ws.bw = np.zeros(rows, np.float64)
        ws.div = np.zeros(rows, np.float64)
        ws.ok = np.zeros(-(-self.net.flat_params.size // KO.FINITE_BLOCK) + 1, np.bool_)
        ws.fscal = np.zeros(KE.N_FSCAL, np.float64)
        ws.ctx = np.zeros(KE.N_CTX, np.int64)
        ws.bd = {}
        for name, a in ((KE.ACT, ws.act), (KE.GRAD, ws.grad), (KE.IACT, ws.iact),
                        (KE.CONSTS, self.consts), (KE.ICONSTS, self.iconsts),
                        (KE.SCRATCH, ws.wt), (KE.ZEROS, self.zeros), (KE.DBIAS, self.dbias),
                        (KE.FP, self.fp), (KE.BLABELS, ws.blabels), (KE.BW, ws.bw),
                        (KE.DIV, ws.div),
                        (KE.FSCAL, ws.fscal), (KE.OK, ws.ok)):
            ws.ctx[name] = a.ctypes.data
        # The loss stage's row: the output y, and z, the last op's input (for the fused kinds).
        z = self.ops[-1].fields[KE.IN]
        ws.loss_op = np.zeros(KE.N_OP, np.int64)
        ws.loss_op[[KE.IN, KE.OUT, KE.GIN, KE.GOUT, KE.N_IN, KE.N_OUT]] = \
            [offsets[z], offsets[self.y], offsets[z], offsets[self.y], self.n_out, self.n_out]
        ws.out = offsets[self.y]
        ws.programs = {}
        ws.later = []  # (program, row, kernel): rows running a serial twin meanwhile (``_calls``)
        ws.bound = None  # (flat_params, flat_grads) that ctx points at
        ws.prepared = None  # the last training call's Prepared
        ws.capacity = rows
        return ws

    def _bind_params(self, ws):
        """Point ctx at the network's parameters and gradients (arrays that may be replaced
        between calls, e.g. by ``load_state_dict``'s callers), and at the nodes' buffers."""
        self._bind_buffers()
        p, g = self.net.flat_params, self.net.flat_grads
        if ws.bound is not None and ws.bound[0] is p and ws.bound[1] is g:
            return  # the same arrays as last time (held here, so their addresses hold)
        ws.ctx[KE.PARAMS], ws.ctx[KE.GRADS], ws.ctx[KE.N_PARAMS] = \
            p.ctypes.data, g.ctypes.data, p.size
        ws.bound = (p, g)

    def _calls(self, ws, kernels):
        """The program array for the calls ``kernels``: (kernel, op index, or LOSS for the
        loss op, or None for no op), compiling the kernels not compiled yet. A parallel kernel
        neither compiled nor cached runs as its serial twin while a helper compiles it
        (``_config.runnable``); ``ws.later`` holds its row until ``swap`` puts it in."""
        chosen = [runnable(k) for k, _ in kernels]
        compile_ops([k for k, _ in chosen])
        ctx = ws.ctx.ctypes.data
        ops = {None: 0, LOSS: ws.loss_op.ctypes.data, REST: self.rest_op.ctypes.data}
        ops.update((k, ws.ops[k].ctypes.data) for k in range(len(ws.ops)))
        calls = np.array([[k.address, ctx, ops[op]] for (k, _), (_, op) in zip(chosen, kernels)],
                         np.int64).reshape(-1, 3)
        later = [(calls, row, k) for row, (_, k) in enumerate(chosen) if k is not None]
        if later:
            compile_later([k for _, _, k in later])
            ws.later += later
        return calls

    def swap(self, ws):
        """Put the parallel kernels that helpers have compiled into the programs that run their
        serial twins meanwhile (those whose helper failed keep their twin)."""
        keep = []
        for calls, row, k in ws.later:
            if not compiled_later(k):
                keep.append((calls, row, k))
            elif k.compiled or k.cached():
                calls[row, 0] = k.address
        ws.later = keep

    def forward_program(self, ws, rows):
        """The calls of a forward pass of ``rows`` rows (kept per workspace)."""
        key = ("forward", rows)
        if ws.later:
            self.swap(ws)
        if key not in ws.programs:
            ws.programs[key] = self._calls(ws, self._forward_kernels(self.net.dtype.type, rows))
        return ws.programs[key]

    def _forward_kernels(self, dt, rows, n_ops=None):
        """The forward calls of the first ``n_ops`` ops (None: all)."""
        calls = [(op.forward_kernel(dt, rows), k) for k, op in enumerate(self.ops[:n_ops])]
        return [c for c in calls if c[0] is not None]

    def step_program(self, ws, rows, *step):
        """A training step's calls on ``rows`` rows (see ``step_kernels``; kept per workspace)
        and how many come before the update."""
        key = ("step", rows, *step)
        if key not in ws.programs:
            calls, n_pre = self.step_kernels(rows, *step)
            ws.programs[key] = self._calls(ws, calls), n_pre
        return ws.programs[key]

    def step_kernels(self, rows, loss, last, update, labels, count, weighted=False,
                     rank1=False):
        """A training step's calls on ``rows`` rows (kernel and op, see ``_calls``) and how
        many come before the update: load the batch, forward, the loss (weighted by sample
        weights if ``weighted``), backward from op ``last`` down, the finite check; then the
        count of rows right (if ``count``), the clipping of the gradient (if ``update`` says
        so) and the update. ``loss`` is (leaf kernel, fused: it writes the last op's output,
        whose forward is then left out), ``update`` (op function, leaf kernel, clip).
        ``rank1`` (the update being SGD without momentum or clipping): on one row, each
        linear op's W is updated from its dz and y (``KE.linear_sgd``), its dW never
        written; the other parameters as before."""
        dt = self.net.dtype.type
        par = rows * self.n_out >= KE.PAR_MIN_WORK
        calls = [(op_kernel(KE.load_batch, dt, BY_LABEL=labels, WEIGHTED=weighted), None)]
        calls += self._forward_kernels(dt, rows, len(self.ops) - 1 if loss[1] else None)
        calls.append((op_kernel(KE.loss, dt, KERNEL=loss[0] if par else serial_twin_of(loss[0]),
                                FUSED=loss[1], BY_LABEL=labels, WEIGHTED=weighted), LOSS))
        lin = [k for k, op in enumerate(self.ops) if op.linear and op.fields[KE.W] >= 0] \
            if rank1 and rows == 1 else []
        for k in range(last, -1, -1):
            kernel = self.ops[k].backward_kernel(dt, rows, k in lin)
            if kernel is not None:
                calls.append((kernel, k))
        par = self.net.flat_params.size >= KE.PAR_MIN_WORK and self._threaded(rows)
        if lin:
            calls.append((op_kernel(KE.finite, dt, KERNEL=KO.finite, PART=True), REST))
            calls += [(op_kernel(KE.linear_finite, dt, KERNEL=KO.outer_finite), k) for k in lin]
        else:
            calls.append((op_kernel(KE.finite, dt, KERNEL=KO.all_finite if par
                                    else KO.all_finite_serial), None))
        n_pre = len(calls)
        if count:
            calls.append((op_kernel(KE.correct, dt, BY_LABEL=labels), LOSS))
        if lin:
            calls.append((op_kernel(KE.sgd, dt, KERNEL=KO.sgd_step_serial, PART=True), REST))
            calls += [(op_kernel(KE.linear_sgd, dt, KERNEL=KO.sgd_rank1), k) for k in lin]
            return calls, n_pre
        if update[2]:
            calls.append((op_kernel(KE.clip, dt, KERNEL=KO.clip_by_norm if par
                                    else KO.clip_by_norm_serial), None))
        calls.append((op_kernel(update[0], dt, KERNEL=update[1] if par
                                else serial_twin_of(update[1])), None))
        return calls, n_pre

    def _threaded(self, rows):
        """Whether a dense op of a step on ``rows`` rows runs on the threads. If none does, the
        passes over the parameters (the finite check, clipping, the update) stay on the calling
        thread too, in whose cache the gradient is: a single-row step of 784-256-10 took 328 us
        against 426 with them on two threads (medians of 3 runs, alternating; W3a 0.96x, W2
        1.02x)."""
        return any(op.linear and dense_mode(rows, op.fields[KE.N_OUT], op.fields[KE.N_IN])
                   == KD.BLAS_MODE for op in self.ops)

    def forward(self, X, last_input=False):
        """The output for the C-contiguous X of the network's dtype (a new array), or None if
        X or the output holds NaN or inf; with ``last_input``, (output, a copy of the last
        op's input)."""
        rows = X.shape[0]
        ws = self.workspace(rows)
        self._bind_params(ws)
        Y = np.empty((rows, self.n_out), X.dtype)
        if KE.forward_rows(self.forward_program(ws, rows), X, ws.act, ws.out, Y):
            return None
        if not last_input:
            return Y
        start, width = ws.ops[-1, KE.IN], self.ops[-1].fields[KE.N_IN]
        return Y, ws.act[start:start + rows * width].reshape(rows, width).copy()


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
    """The network's output for X (C-contiguous, the network's dtype) in evaluation mode, or
    None if the engine cannot run it or X or the output holds NaN or inf (the caller's
    checks then say where)."""
    tape = compile_tape(net, False)
    return None if tape is None else tape.forward(X)


def evaluate(net, X, target, loss, weights=None):
    """(the mean divergence over the rows of X in evaluation mode, the outputs) through the
    network's forward program: the leaf kernels of the node-by-node forward, then the
    divergence's own (fused where the network ends in its node), so the bits of
    ``Sequential._loss_and_output``; None where the engine cannot run the network, the
    divergence is a user's, or X or the output holds NaN or inf (the caller then goes node by
    node)."""
    tape = compile_tape(net, False)
    if tape is None or not loss.built_in():
        return None
    out = tape.forward(np.ascontiguousarray(X, net.dtype), last_input=True)
    if out is None:
        return None
    Y, z = out
    fused = loss.fused(net.nodes[-1], (z, Y), target, weights)
    return (fused if fused is not None else loss.value_and_grad(Y, target, weights))[0], Y


def check_supported(net, loss, target, opt):
    """Raise ``Unsupported`` unless the engine can train ``net`` with this divergence and
    optimizer; returns the tape, the loss stage and whether it is fused, and the update's
    arguments."""
    tape = compile_tape(net, True)
    if tape is None:
        raise Unsupported("the network holds a node the engine cannot run")
    return tape, loss.engine_loss(net.nodes[-1], target), opt.engine_update(net)


def chooses(net, loss, target, opt, wanted="auto"):
    """Whether training runs through the engine: ``wanted`` True (raise ``Unsupported`` if it
    cannot), False, or "auto" (where it can)."""
    if wanted is False:
        return False
    try:
        check_supported(net, loss, target, opt)
    except Unsupported:
        if wanted is True:
            raise
        return False
    return True


class Prepared:
    """What a training call needs besides its arrays, kept on the workspace while ``key`` holds:
    the arguments of ``Tape.step_kernels`` after ``rows`` (``step``), the programs for full
    batches of ``batch`` rows and the last, shorter one of ``rest`` rows (built by
    ``programs``, after the batch is checked: a refused first call compiles nothing), the calls
    before the update (``n_pre``), and the hyper-parameters and state buffers whose ids ``key``
    holds (kept alive here, so the ids stay theirs). Building it all again cost a one-row
    ``train_step`` about 1.5 us of its 55 (the rest of its 12 us of Python is spread over
    some twenty steps of 0.2-1 us: docs/DESIGN-NOTES.md)."""

    __slots__ = ("key", "step", "batch", "rest", "full", "tail", "n_pre", "held")

    def programs(self, tape, ws):
        if ws.later:
            tape.swap(ws)
        if self.full is None:
            self.full, self.n_pre = tape.step_program(ws, self.batch, *self.step)
            self.tail = tape.step_program(ws, self.rest, *self.step)[0] if self.rest \
                else self.full
        return self


def prepare(net, loss, target, opt, T, batch, count, weighted, gradient=False):
    """The tape, its workspace for ``batch`` rows (bound to the network's parameters) and the
    ``Prepared`` call on T rows (the one kept, if it still holds), and the update's hyper-
    parameters and state buffers; ``Unsupported`` if the engine cannot train this. With
    ``gradient``, the step of ``gradient`` (every dW written, nothing clipped)."""
    tape, loss_code, (code, hyper, states) = check_supported(net, loss, target, opt)
    ws = tape.workspace(batch)
    tape._bind_params(ws)
    labels = target.ndim == 1
    key = (loss_code, code, id(hyper), *map(id, states), batch, T % batch, labels,
           0 if labels else target.shape[1], count, weighted, gradient)
    p = ws.prepared
    if p is None or p.key != key:
        tape.check_rows(batch)
        tape.check_rows(T % batch)
        p = Prepared()
        p.key, p.held, p.batch, p.rest, p.full = key, (hyper, states), batch, T % batch, None
        p.step = training_step(tape, loss_code, code, hyper, labels, count, weighted, gradient)
        if not (_started or gradient):  # a first fit: compile its kernels in parallel
            prefetch_ops([runnable(k)[0] for rows in {batch, T % batch} - {0}
                          for k, _ in tape.step_kernels(rows, *p.step)[0]])
            _start(ws)
        ws.prepared = p
    return tape, ws, p, hyper, states


def _bind_batch(net, ws, X, target, orders, hyper, states, weights=None, check=False):
    """Point ws.ctx at this call's arrays (which the caller keeps alive, and forgets with
    ``KE.forget``); returns them as passed, or None if ``check`` finds NaN or inf in X
    (nothing bound)."""
    dt = net.dtype
    X = np.ascontiguousarray(X, dt)
    labels = target.ndim == 1
    target = np.ascontiguousarray(target, np.int64 if labels else dt)
    orders = np.ascontiguousarray(orders, np.int64)
    weights = _NO_WEIGHTS if weights is None else np.ascontiguousarray(weights, np.float64)
    width = 0 if labels else target.shape[1]
    if width not in ws.bd:
        bd = np.zeros((ws.capacity, width), dt)
        ws.bd[width] = bd, bd.ctypes.data
    ws.ctx[KE.BD] = ws.bd[width][1]
    s = states + states[-1:] * (3 - len(states))
    if KE.bind(ws.ctx, X, target, orders, hyper, s[0], s[1], s[2], weights, check):
        KE.forget(ws.ctx)
        return None
    return X, target, orders, weights if weights.size else None


_NO_WEIGHTS = np.zeros(0, np.float64)


def training_step(tape, loss_code, code, hyper, labels, count, weighted, gradient=False):
    """The arguments of ``Tape.step_kernels`` after ``rows`` for a training step: the loss's
    (kernel, fused), the backward's first op, the update (its op function and leaf kernel,
    whether it clips), ``labels``, ``count`` and ``weighted`` as given, and whether one-row
    steps update W from dz and y (SGD without momentum or clipping). ``gradient``: for a step
    whose caller runs all but the update (``gradient``), which writes every dW and clips
    nothing."""
    clip = bool(hyper[KE.CLIP] > 0) and not gradient
    last = len(tape.ops) - (2 if loss_code[1] else 1)
    rank1 = code[0] is KE.sgd and hyper[0] == 0 and not clip and not gradient
    return loss_code, last, (*code, clip), labels, count, weighted, rank1


def run_epochs(net, X, target, loss, opt, orders, batch, lrs, tol, prev, count, weights=None,
               check=False):
    """Several epochs in one compiled call (see ``kernels.engine.train_epochs``); returns the
    per-epoch rows (loss sum by weight, steps, first bad step or -1, rows right, loss sum by
    rows) of the epochs run. ``weights``: the rows' sample weights (None: unweighted). With
    ``check``, X is checked for NaN and inf first: None, having run nothing, if it holds one."""
    T = np.shape(orders)[1]
    tape, ws, p, hyper, states = prepare(net, loss, target, opt, T, batch, count,
                                         weights is not None)
    bound = _bind_batch(net, ws, X, target, orders, hyper, states, weights, check)
    if bound is None:
        return None
    X, target, orders, weights = bound
    p.programs(tape, ws)
    outs = np.zeros((len(lrs), 5), np.float64)
    done = KE.train_epochs(ws.ctx, ws.fscal, p.full, p.tail, p.n_pre, orders, batch,
                           np.asarray(lrs, np.float64), -1.0 if tol is None else float(tol),
                           np.nan if prev is None else float(prev), outs, opt.t,
                           float(T) if weights is None else KDiv.total(weights))
    KE.forget(ws.ctx)
    opt.t += int(sum(outs[:done, 1].tolist()))  # (a NumPy sum: 3 us of a one-row step)
    return outs[:done]


_started = False  # whether a fit has compiled (or loaded) train_epochs in this process


def _start(ws):
    """Compile (or load) train_epochs for the workspace ``ws`` and the argument types every
    call passes, with empty programs: the first fit does it while other processes compile
    the step's kernels (see ``_config.prefetch_ops``)."""
    global _started
    empty = np.zeros((0, 3), np.int64)
    args = (ws.ctx, ws.fscal, empty, empty, 0, np.zeros((1, 1), np.int64), 1, np.zeros(1),
            0.0, 0.0, np.zeros((1, 5)), 0, 0.0)
    KE.train_epochs.compile(tuple(numba.typeof(a) for a in args))
    _started = True


def gradient(net, X, target, loss, opt, order, count=False, weights=None, norm=None, grads=None):
    """The mean loss over the rows ``X[order]`` and its gradient (into ``net.flat_grads``, or
    ``grads``), in compiled code, with no update: a training step's program without its last
    call. With ``norm`` (the weight of a larger batch the rows are part of, an MPI step's) the
    gradient and the loss are the rows' share of that batch's mean. Returns (loss, rows
    classified right if ``count``, the rows' weight: their number or the sum of their sample
    weights)."""
    rows = len(order)
    # no clipping: the caller clips the sum of the ranks' gradients
    tape, ws, p, hyper, states = prepare(net, loss, target, opt, rows, rows, count,
                                         weights is not None, gradient=True)
    _bind_batch(net, ws, X, target, order, hyper, states, weights)
    prog = p.programs(tape, ws).full
    ws.ctx[KE.LO], ws.ctx[KE.RIGHT], ws.ctx[KE.STEP] = 0, 0, opt.t + 1
    if grads is not None:
        if grads.shape != net.flat_grads.shape or grads.dtype != net.dtype or \
                not grads.flags.c_contiguous:
            raise ValueError("grads must be a C-contiguous array like net.flat_grads")
        ws.ctx[KE.GRADS], ws.bound = grads.ctypes.data, None  # re-pointed by the next call
    ws.fscal[KE.NORM] = 0.0 if norm is None else float(norm)
    try:
        KE.run(prog[:-1], rows)  # the update is the last call
    finally:
        ws.fscal[KE.NORM] = 0.0
        KE.forget(ws.ctx)
    return float(ws.fscal[KE.LOSS]), int(ws.ctx[KE.RIGHT]), float(ws.fscal[KE.WSUM])


def run_epoch(net, X, target, loss, opt, order, batch, count=False, weights=None, check=False):
    """One training epoch in compiled code; returns (sum of batch loss * batch weight, steps,
    first non-finite step or -1, rows classified right while training if ``count``, sum of
    batch loss * rows), or None if ``check`` finds NaN or inf in X (see ``run_epochs``)."""
    out = run_epochs(net, X, target, loss, opt, order[None, :], batch, [opt.current_lr()], None,
                     None, count, weights, check)
    if out is None:
        return None
    (total, steps, bad, right, by_rows), = out
    return total, int(steps), int(bad), int(right), by_rows
