"""The engine: a network of built-in nodes compiled, per network, to straight-line numba code.

``Tape`` lists the network's ops over registers (activations in one workspace, their gradients
in a second of the same layout). For each use (a training run, a prediction) the engine writes
the Python source of one function that runs the ops for that network: every width, offset and
node kind is a literal, and every op calls the leaf kernel it needs by name, chosen from the
number of rows exactly as the per-node path chooses it (``dense_mode`` for products, the serial
twin below ``PAR_MIN_WORK`` operations), so both paths give the same numbers. The source goes to
a file named by its hash in the kernel cache folder and numba caches its machine code there:
a network compiles only the kernels it uses, and a second process loads them.
"""

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading

import numpy as np

from . import _config
from .kernels import divergences as KDiv
from .kernels import dense as KD
from .kernels import optim as KO
from .losses import KL, L2, BinaryKL
from .network import Sequential
from .nodes import Linear, RReLU, _Scalar
from .optim import SGD, Adam
from .products import MaxOver, PairProduct, PowerProduct, Product
from .vector import Softmax

LINEAR, SCALAR, SOFTMAX, PAIR, POWER, MAX, MUL, FORK = range(1, 9)
PAR_MIN_WORK = 1 << 16  # elementwise operations from which an op runs on the threads
OP_FIELDS = ("code", "i", "o", "gi", "go", "n_in", "n_out", "w", "b", "a1", "a2", "a3",
             "work")
(CODE, IN, OUT, IN_GRAD, OUT_GRAD, N_IN, N_OUT, W_AT, B_AT, A1, A2, A3, WORK) = range(13)


class Unsupported(Exception):
    """The network holds a node the engine cannot run (then the per-node path runs it)."""


class Workspace:
    """One calling thread's buffers for up to ``capacity`` rows: activations, gradients,
    argmax indices and scratch, as the tuple the generated code takes."""

    __slots__ = ("capacity", "arrays")


class Tape:
    """A network's ops, registers and constants; each calling thread gets workspaces of its own
    (the kernels release the GIL, so two threads predicting with one network must not share
    them). Row k of ``ops`` is one op with the fields ``OP_FIELDS``."""

    def __init__(self, net, train):
        self.net, self.train = net, train
        self.ops, self.fp, self.widths = [], [], []
        self.consts, self.iconsts, self.iwidths = [], [], []
        x = self._register(net.n_in)
        self.y = self._emit_seq(net, x, -1)
        self.n_out = self.widths[self.y]
        self._local = threading.local()
        self._functions = {}

    # -- building ----------------------------------------------------------------------------
    def _register(self, width):
        if width is None:
            raise Unsupported("input width unknown")
        self.widths.append(int(width))
        return len(self.widths) - 1

    def _op(self, code, i, o, gi, go, n_in=0, n_out=0, w=-1, b=-1, a1=0, a2=0, a3=0, p=0.0):
        work = n_in * n_out if code == LINEAR else self.widths[o]
        self.ops.append([code, i, o, gi, go, n_in, n_out, w, b, a1, a2, a3, work])
        self.fp.append(float(p))

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
            self._op(FORK, x, x, gx, -1, a1=ga, a2=gb)
            ya = self._emit_seq(node.a, x, ga)
            yb = self._emit_seq(node.b, x, gb)
            y = self._register(self.widths[ya])
            self._op(MUL, ya, y, ya, y, a1=yb, a2=yb)
            return y, y
        n_out = node.infer(n_in)
        y = self._register(n_out)
        if isinstance(node, Linear):
            w, b = (self._offset(node, "W"), self._offset(node, "b") if node.bias else -1)
            self._op(LINEAR, x, y, gx, y, n_in, n_out, w, b)
        elif isinstance(node, RReLU) and self.train:
            raise Unsupported("RReLU in training draws slopes from NumPy's generator")
        elif isinstance(node, _Scalar):
            self._op(SCALAR, x, y, gx, y, n_in, n_out, a1=node.kind, p=node._p())
        elif type(node) is Softmax:
            self._op(SOFTMAX, x, y, gx, y, n_in, n_out)
        elif type(node) is PairProduct:
            self._op(PAIR, x, y, gx, y, n_in, n_out)
        elif type(node) is PowerProduct:
            self._op(POWER, x, y, gx, y, n_in, n_out, a1=self._const(node.alpha))
        elif isinstance(node, MaxOver):
            a1, a2 = self._iconst(node.indptr), self._iconst(node.indices)
            self._op(MAX, x, y, gx, y, n_in, n_out, a1=a1, a2=a2, a3=sum(self.iwidths))
            self.iwidths.append(n_out)
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
        self.ops = np.array(self.ops, np.int64).reshape(-1, len(OP_FIELDS))
        self.consts = np.concatenate(self.consts).astype(dt) if self.consts else np.zeros(0, dt)
        self.iconsts = np.concatenate(self.iconsts) if self.iconsts else np.zeros(0, np.int64)
        widths = np.array(self.widths, np.int64)
        self.regs = np.stack([np.concatenate([[0], np.cumsum(widths[:-1])]), widths], axis=1)
        self.fp = np.array(self.fp, np.float64)
        self.constants = (np.zeros(max(self.widths), dt), np.zeros(max(self.widths), dt),
                          self.consts, self.iconsts)  # zeros (no bias), dbias, alphas, indices
        return self

    def arguments(self, s1=None, s2=None):
        """The network tuple the generated functions take: parameters, gradients, optimizer
        state, and the tape's ops, registers and float parameters."""
        net = self.net
        s1 = net.flat_params if s1 is None else s1  # a placeholder when nothing is trained
        return (net.flat_params, net.flat_grads, s1, s1 if s2 is None else s2, self.ops,
                self.regs, self.fp)

    # -- running -----------------------------------------------------------------------------
    def workspace(self, rows):
        """The calling thread's workspaces for at least ``rows`` rows (kept while large
        enough), as the tuple ``(act, grad, iact, wt, capacity)``."""
        ws = getattr(self._local, "ws", None)
        if ws is None or ws.capacity < rows:
            ws = self._local.ws = self._allocate(rows)
        return ws.arrays

    def _allocate(self, rows):
        dt = self.net.dtype
        lin = self.ops[self.ops[:, CODE] == LINEAR]
        # Scratch for W^T (loop kernels) and dz^T (BLAS kernels), shared by all LINEAR ops.
        wt = np.zeros(max([1] + [int(r[N_IN] * r[N_OUT]) for r in lin]
                          + [int(r[N_OUT]) * rows for r in lin]), dt)
        act = np.zeros(sum(self.widths) * rows, dt)
        ws = Workspace()
        ws.capacity = rows
        ws.arrays = (act, np.zeros_like(act), np.zeros(max(sum(self.iwidths), 1) * rows,
                                                       np.int64), wt, rows)
        return ws

    def modes(self, rows):
        """Which kernel each op runs for ``rows`` rows: ``dense_mode`` for a product, 1 (on the
        threads) or 0 (the serial twin) for the others; the per-node path decides alike."""
        return tuple(int(KD.dense_mode(rows, int(r[N_OUT]), int(r[N_IN]))) if r[CODE] == LINEAR
                     else int(rows * int(r[WORK]) >= PAR_MIN_WORK) for r in self.ops)

    def function(self, key, write):
        """The generated function for ``key`` (made by ``write(self, *key[1:])`` once)."""
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = _load(write(self, *key[1:]), key[0])
        return fn

    def forward(self, X):
        rows = X.shape[0]
        fn = self._functions.get(("predict", rows))
        if fn is None:
            fn = self._functions[("predict", rows)] = self.function(
                ("predict", self.modes(rows)), _predict_source)
        ws = self.workspace(rows)
        ws[0][:X.size] = X.reshape(-1)
        fn(self.arguments(), self.constants, ws, rows)
        o = int(self.regs[self.y, 0]) * ws[4]
        return ws[0][o:o + rows * self.n_out].reshape(rows, self.n_out)


# -- code generation ---------------------------------------------------------------------------
# The source depends on the network's structure alone (op codes, how registers connect, which
# kernel each op runs): widths, offsets and parameters are read at run time from ``ops``,
# ``regs`` (each register's base offset, in rows of the capacity, and width) and ``fp``, so
# networks that differ only in widths or activation kinds share one compiled function.
HEADER = """\
# Generated by fastbp.engine for one network structure; the file name is a hash of this text.
import math

import numpy as np

from fastbp._config import SERIAL, njit
from fastbp.kernels import activations as KA
from fastbp.kernels import dense as KD
from fastbp.kernels import divergences as KDiv
from fastbp.kernels import optim as KO
from fastbp.kernels import products as KP
from fastbp.kernels import vector as KV
"""
_SFX = ("_serial", "")  # by mode: 0 the serial twin, 1 the parallel kernel
ARGS = "net, constants, ws"  # (params, grads, s1, s2, ops, regs, fp); zeros, dbias, ...; act, ...
UNPACK = ["params, grads, s1, s2, ops, regs, fp = net",
          "zeros, dbias, consts, iconsts = constants",
          "act, grad, iact, wt, cap = ws"]


def _layers(tape, train):
    """Per LINEAR op k: W<k>, b<k> (and dW<k>, db<k> in training), views into the flat
    buffers."""
    out = []
    for k in np.flatnonzero(tape.ops[:, CODE] == LINEAR):
        shape = f"(ops[{k}, {N_OUT}], ops[{k}, {N_IN}])"
        span = f"ops[{k}, {W_AT}]:ops[{k}, {W_AT}] + ops[{k}, {N_OUT}] * ops[{k}, {N_IN}]"
        bspan = (f"ops[{k}, {B_AT}]:ops[{k}, {B_AT}] + ops[{k}, {N_OUT}]"
                 if tape.ops[k, B_AT] >= 0 else None)
        out += [f"W{k} = params[{span}].reshape({shape})",
                f"b{k} = params[{bspan}]" if bspan else f"b{k} = zeros[:ops[{k}, {N_OUT}]]"]
        if train:
            out += [f"dW{k} = grads[{span}].reshape({shape})",
                    f"db{k} = grads[{bspan}]" if bspan else f"db{k} = dbias[:ops[{k}, {N_OUT}]]"]
    return out


def _views(tape):
    """Views of every register for ``rows`` rows: a<r>/g<r> (rows, width), f<r>/h<r> flat."""
    out = []
    for r in range(len(tape.widths)):
        span = f"regs[{r}, 0] * cap:regs[{r}, 0] * cap + rows * regs[{r}, 1]"
        out += [f"f{r} = act[{span}]", f"a{r} = f{r}.reshape((rows, regs[{r}, 1]))",
                f"h{r} = grad[{span}]", f"g{r} = h{r}.reshape((rows, regs[{r}, 1]))"]
    return out


def _alpha(k):
    return (f"consts[ops[{k}, {A1}]:ops[{k}, {A1}] + ops[{k}, {N_IN}] * ops[{k}, {N_OUT}]]"
            f".reshape((ops[{k}, {N_IN}], ops[{k}, {N_OUT}]))")


def _max_args(k):
    indptr = f"iconsts[ops[{k}, {A1}]:ops[{k}, {A1}] + ops[{k}, {N_OUT}] + 1]"
    nnz = f"iconsts[ops[{k}, {A1}] + ops[{k}, {N_OUT}]]"
    return (indptr, f"iconsts[ops[{k}, {A2}]:ops[{k}, {A2}] + {nnz}]",
            f"iact[ops[{k}, {A3}] * cap:ops[{k}, {A3}] * cap + rows * ops[{k}, {N_OUT}]]"
            f".reshape((rows, ops[{k}, {N_OUT}]))")


def _forward(tape, modes):
    """One line per op: its forward kernel."""
    out = []
    for k, r in enumerate(tape.ops):
        code, i, o, m = r[CODE], r[IN], r[OUT], modes[k]
        s = _SFX[min(m, 1)]
        if code == LINEAR:
            if m == KD.LOOP_MODE:
                out.append(f"KD.dense_forward(a{i}, W{k}, b{k}, a{o}, wt[:W{k}.size]"
                           f".reshape((W{k}.shape[1], W{k}.shape[0])))")
            else:
                out.append(f"KD.dense_forward_blas{_SFX[m == KD.BLAS_MODE]}(a{i}, W{k}, b{k}, "
                           f"a{o})")
        elif code == SCALAR:
            out.append(f"KA.scalar_forward{s}(ops[{k}, {A1}], fp[{k}], f{i}, f{o})")
        elif code == SOFTMAX:
            out.append(f"KV.softmax_forward{s}(a{i}, a{o})")
        elif code == MUL:
            out.append(f"KP.elementwise_product_forward{s}(f{i}, f{r[A1]}, f{o})")
        elif code == PAIR:
            out.append(f"KP.pair_product_forward{s}(a{i}, a{o})")
        elif code == POWER:
            out.append(f"KP.power_product_forward{s}(a{i}, {_alpha(k)}, a{o})")
        elif code == MAX:
            indptr, indices, arg = _max_args(k)
            out.append(f"KP.max_forward{s}(a{i}, {indptr}, {indices}, a{o}, {arg})")
        elif code != FORK:  # a fork's forward is the two branches reading one register
            raise AssertionError(f"op code {code} has no forward")
    return out


def _backward(tape, modes, last):
    """Ops ``last`` down to 0 backward: parameter gradients into ``grads``, activation
    gradients into the gradient registers."""
    out = []
    for k in range(last, -1, -1):
        r, m = tape.ops[k], modes[k]
        code, i, o, gi, go = r[CODE], r[IN], r[OUT], r[IN_GRAD], r[OUT_GRAD]
        s = _SFX[min(m, 1)]
        if code == LINEAR:
            if m == KD.LOOP_MODE:
                out.append(f"KD.dense_backward_params(g{go}, a{i}, dW{k}, db{k})")
                if gi >= 0:
                    out.append(f"KD.dense_backward_input(g{go}, W{k}, g{gi})")
            else:
                b = _SFX[m == KD.BLAS_MODE]
                out.append(f"KD.dense_backward_params_blas{b}(g{go}, a{i}, dW{k}, db{k}, "
                           f"wt[:W{k}.shape[0] * rows].reshape((W{k}.shape[0], rows)))")
                if gi >= 0:
                    out.append(f"KD.dense_backward_input_blas{b}(g{go}, W{k}, g{gi})")
        elif gi < 0:
            continue
        elif code == SCALAR:
            out.append(f"KA.scalar_backward{s}(ops[{k}, {A1}], fp[{k}], f{i}, f{o}, h{go}, "
                       f"h{gi})")
        elif code == SOFTMAX:
            out.append(f"KV.softmax_vjp{s}(a{o}, g{go}, g{gi})")
        elif code == MUL:
            out.append(f"KP.elementwise_product_backward{s}(f{i}, f{r[A1]}, h{go}, h{gi}, "
                       f"h{r[A2]})")
        elif code == PAIR:
            out.append(f"KP.pair_product_backward{s}(a{i}, g{go}, g{gi})")
        elif code == POWER:
            out.append(f"KP.power_product_backward{s}(a{i}, {_alpha(k)}, g{go}, g{gi}, "
                       f"np.empty_like(a{i}))")
        elif code == MAX:
            out.append(f"KP.max_backward{s}(g{go}, {_max_args(k)[2]}, g{gi})")
        elif code == FORK:  # the input's gradient is the sum of the two branches'
            out += [f"for n in range(h{gi}.shape[0]):",
                    f"    h{gi}[n] = h{r[A1]}[n] + h{r[A2]}[n]"]
    return out


def _indent(lines, n):
    return [" " * n + line for line in lines]


def _predict_source(tape, modes):
    lines = ["", "", "@njit(**SERIAL)", f"def predict({ARGS}, rows):"]
    lines += _indent(UNPACK + _layers(tape, False) + _views(tape) + _forward(tape, modes), 4)
    return HEADER + "\n".join(lines) + "\n"


# The divergences and optimizers the engine runs: (name in the generated code, how the
# generated code calls it). Their kernels are the ones their classes call.
OPTIMIZERS = {
    SGD: ("KO.sgd_step{s}(params, grads, s1, lr, hyper[0], hyper[1] != 0, hyper[2])",
          lambda o: [o.momentum, float(o.nesterov), o.weight_decay, 0.0], ["v", "v"]),
    Adam: ("KO.adam_step{s}(params, grads, s1, s2, lr, hyper[0], hyper[1], hyper[2], hyper[3], "
           "t0 + steps + step + 1)", lambda o: [*o.betas, o.eps, o.weight_decay], ["m", "v"]),
}


def _epochs_source(tape, loss, labels, fused, opt, modes_full, modes_last, loss_par,
                   par_params):
    """``epochs``: epoch e trains on the rows ``orders[e]`` (or ``orders[0]`` for every
    epoch) in batches of ``batch`` with learning rate ``lrs[e]``: for every batch, forward,
    the loss, backward, the check that loss and gradients are finite, and the update.
    ``outs[e]`` receives (sum of batch loss * rows, steps done, first bad step or -1, rows
    classified right); a non-finite step stops before its update. Stops after an epoch with
    a bad step or whose mean loss differs from the previous one (``prev`` before the first)
    by less than ``tol`` (the seed's test; tol < 0: never). Returns the epochs run."""
    y, z = tape.y, int(tape.ops[-1, IN])
    last = len(tape.ops) - (2 if fused else 1)
    wanted = "blabels[:rows]" if labels else "bd[:rows]"
    step = {}
    for name, modes, lpar in (("full", modes_full, loss_par[0]),
                              ("last", modes_last, loss_par[1])):
        if modes is not None:
            kern = f"KDiv.{loss}{_SFX[lpar]}"
            call = (f"{kern}(a{z}, a{y}, {wanted}, dv, g{z}, 1.0 / rows)" if fused else
                    f"{kern}(a{y}, {wanted}, dv, g{y}, 1.0 / rows)")
            step[name] = _forward(tape, modes) + [call] + _backward(tape, modes, last)
    if modes_last is None or (modes_last, loss_par[1]) == (modes_full, loss_par[0]):
        body = step["full"]
    else:  # the last, shorter batch of an epoch may take other kernels
        body = ["if rows == batch:", *_indent(step["full"], 4), "else:",
                *_indent(step["last"], 4)]
    right = (f"KDiv.correct(a{y}, blabels[:rows], bd[:rows])" if labels else
             f"KDiv.correct(a{y}, labels, bd[:rows])")
    batch_loop = _views(tape) + [
        "dv = div[:rows]",
        "for r in range(rows):",
        "    src = order[lo + r]",
        "    a0[r, :] = X[src]",
        "    blabels[r] = labels[src]" if labels else "    bd[r, :] = d[src]",
        *body,
        "value = KDiv.mean(dv)",
        f"if not (math.isfinite(value) and KO.all_finite{_SFX[par_params]}(grads, ok)):",
        "    outs[e, 2] = step",
        "    break",
        "if count:",
        f"    right += {right}",
        OPTIMIZERS[opt][0].format(s=_SFX[par_params]),
        "total += value * rows",
        "step += 1"]
    epoch_loop = [
        "order = orders[e] if orders.shape[0] > 1 else orders[0]",
        "lr = lrs[e]",
        "total = 0.0",
        "step = 0",
        "right = 0",
        "outs[e, 2] = -1",
        "for lo in range(0, T, batch):",
        "    rows = min(batch, T - lo)",
        *_indent(batch_loop, 4),
        "outs[e, 0] = total",
        "outs[e, 1] = step",
        "outs[e, 3] = right",
        "steps += step",
        "if outs[e, 2] >= 0:",
        "    return e + 1",
        "value = total / T",
        "if tol >= 0 and abs(value - prev) < tol:",
        "    return e + 1",
        "prev = value"]
    body = UNPACK + _layers(tape, True) + [
        "X, labels, d, div, blabels, bd, ok = data",
        "T = orders.shape[1]",
        "steps = 0",
        "for e in range(lrs.shape[0]):",
        *_indent(epoch_loop, 4),
        "return lrs.shape[0]"]
    lines = ["", "", "@njit(**SERIAL)",
             f"def epochs({ARGS}, data, orders, batch, lrs, hyper, t0, outs, count, tol, "
             "prev):", *_indent(body, 4)]
    return HEADER + "\n".join(lines) + "\n"


_MODULES = {}
_LOCK = threading.Lock()


def _load(source, name):
    """``name`` from the module whose source is ``source``: written once to a file named by
    its hash in the kernel cache folder (never rewritten: numba's cache checks the file's time
    stamp), imported once per process."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    with _LOCK:
        module = _MODULES.get(digest)
        if module is None:
            module = _MODULES[digest] = _import(source, f"fastbp_net_{digest}")
    return getattr(module, name)


def _import(source, modname):
    folder = os.path.join(_config.CACHE_DIR, "engine") if _config.CACHE_DIR else None
    path = os.path.join(folder, modname + ".py") if folder else None
    if path is not None and not os.path.exists(path):
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(source)
            try:
                os.link(tmp, path)  # atomic, and never replaces a file another process wrote
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        except OSError:
            path = None
    # Registered before it runs: numba finds a function's globals through sys.modules, and a
    # module it cannot import makes the function uncachable (and its cached code unloadable).
    if path is None:  # nowhere to write: compiled in memory only (_config turns caching off)
        module = sys.modules[modname] = type(sys)(modname)
        source = source.replace("@njit(**SERIAL)", "@njit(**dict(SERIAL, cache=False))")
        exec(compile(source, f"<fastbp engine {modname}>", "exec"), module.__dict__)
        return module
    spec = importlib.util.spec_from_file_location(modname, path)
    module = sys.modules[modname] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- entry points ------------------------------------------------------------------------------
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


def loss_kernel(net, loss, target):
    """(name of the divergence's kernel, whether it is fused with the last node): the kernel
    the divergence's own class calls."""
    if type(loss) not in (L2, KL, BinaryKL):
        raise Unsupported(f"{type(loss).__name__} is not a built-in divergence")
    fused = loss.fuses_with is not None and type(net.nodes[-1]) is loss.fuses_with
    kernel = loss._fused_kernel(target) if fused else loss._kernel(target)
    if getattr(KDiv, kernel.__name__, None) is not kernel:
        raise Unsupported(f"{type(loss).__name__}'s kernel is not one of fastbp's")
    return kernel.__name__, fused


def check_supported(net, loss, target, opt):
    """Raise ``Unsupported`` unless the engine can train ``net`` with this divergence and
    optimizer; returns the tape and the divergence's kernel."""
    tape = compile_tape(net, True)
    if tape is None:
        raise Unsupported("the network holds a node the engine cannot run")
    if type(opt) not in OPTIMIZERS:
        raise Unsupported(f"{type(opt).__name__} is not a built-in optimizer")
    return tape, loss_kernel(net, loss, target)


def _epoch_args(net, target, loss, opt, batch, T):
    """The generated ``epochs`` for this network, divergence, optimizer and batch layout, and
    the arguments that do not change between epochs."""
    tape, (kernel, fused) = check_supported(net, loss, target, opt)
    labels = target.ndim == 1
    rest = T % batch
    work = tape.n_out
    loss_par = (int(batch * work >= PAR_MIN_WORK), int(rest * work >= PAR_MIN_WORK))
    par_params = int(net.flat_params.size >= PAR_MIN_WORK)
    key = ("epochs", kernel, labels, fused, type(opt), tape.modes(batch),
           tape.modes(rest) if rest else None, loss_par, par_params)
    fn = tape.function(key, _epochs_source)
    _, hyper, names = OPTIMIZERS[type(opt)]
    state = tape.arguments(*opt._buffers(net, names))
    d = target if target.ndim == 2 else np.zeros((0, 0), net.dtype)
    data = (target if labels else np.zeros(0, np.int64), d, np.zeros(batch, np.float64),
            np.zeros(batch, np.int64), np.zeros((batch, d.shape[1]), net.dtype),
            np.empty(-(-net.flat_grads.size // KO.FINITE_BLOCK), np.bool_))
    return fn, tape, state, data, np.array(hyper(opt), np.float64)


def run_epochs(net, X, target, loss, opt, orders, batch, lrs, tol, prev, count):
    """Several epochs in one compiled call; returns the per-epoch rows (loss sum, steps, first
    bad step or -1, rows right) of the epochs run."""
    _config.use_num_threads()
    fn, tape, state, (labels, d, *bufs), hyper = _epoch_args(net, target, loss, opt, batch,
                                                             orders.shape[1])
    outs = np.zeros((len(lrs), 4), np.float64)
    done = fn(state, tape.constants, tape.workspace(batch), (X, labels, d, *bufs), orders,
              batch, np.asarray(lrs, np.float64), hyper, opt.t, outs, count,
              -1.0 if tol is None else float(tol), np.nan if prev is None else float(prev))
    opt.t += int(outs[:done, 1].sum())
    return outs[:done]


def run_epoch(net, X, target, loss, opt, order, batch, count=False):
    """One training epoch in compiled code; returns (sum of batch losses * rows, steps, first
    non-finite step or -1, rows classified right while training if ``count``)."""
    out = run_epochs(net, X, target, loss, opt, order[None, :], batch, [opt.current_lr()],
                     None, None, count)[0]
    return out[0], int(out[1]), int(out[2]), int(out[3])
