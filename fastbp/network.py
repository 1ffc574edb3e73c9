"""Sequential networks: the seed's layer-by-layer forward pass and the backward pass."""

import collections
import copy
import math

import numpy as np

from . import _checks, _config, engine, io
from .errors import TrainingError, Unsupported
from .kernels import divergences as KDiv
from .nodes import Node

_REPR_WIDTH = 88  # a network's repr up to this long stays on one line

SummaryRow = collections.namedtuple("SummaryRow", "name layer depth width params")
SummaryRow.__doc__ = """One node in ``Sequential.summary()``: ``name`` as in ``param_names``
("4.a.0"), ``layer`` its description, ``depth`` its nesting level, ``width`` its output width
(None where unknown), ``params`` its parameter count with those of the nodes inside it."""


class Summary:
    """The table of :meth:`Sequential.summary`; ``str`` and ``repr`` give the table."""

    def __init__(self, net):
        self.n_in, self.n_out = net.n_in, net.n_out
        self.dtype = getattr(net, "dtype", None)
        self.rows = list(self._rows(net, net.n_in, "", 0))
        self.total_params = sum(int(np.prod(s)) for *_, s in net.named_specs())

    @classmethod
    def _rows(cls, seq, n, prefix, depth):
        for k, node in enumerate(seq.nodes):
            name, n_out = f"{prefix}{k}", node.infer(n)
            params = sum(int(np.prod(s)) for *_, s in Sequential._node_specs(node, name))
            inner = node.nodes if isinstance(node, Sequential) else node.children()
            layer = type(node).__name__ if inner else " ".join(repr(node).split())
            yield SummaryRow(name, layer, depth, n_out, params)
            if isinstance(node, Sequential):
                yield from cls._rows(node, n, f"{name}.", depth + 1)
            else:  # a node's sub-networks, named "a", "b" as in ``named_specs``
                for c, child in zip("ab", node.children()):
                    yield from cls._rows(child, n, f"{name}.{c}.", depth + 1)
            n = n_out

    def __str__(self):
        table = [("#", "layer", "output", "params")] + [
            (r.name, "  " * r.depth + r.layer, _count(r.width), _count(r.params))
            for r in self.rows]
        w = [max(len(row[i]) for row in table) for i in range(4)]
        lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d:>{w[3]}}" for a, b, c, d in table]
        rule = "-" * len(lines[0])
        head = f"Sequential: {_count(self.n_in)} inputs, {_count(self.n_out)} outputs"
        total = f"total: {self.total_params:,} parameters"
        if self.dtype is not None:
            head += f", {self.dtype.name}"
            total += f", {self.total_params * self.dtype.itemsize:,} bytes"
        return "\n".join([head, lines[0], rule, *lines[1:], rule, total])

    __repr__ = __str__


def _count(n):
    return "?" if n is None else f"{n:,}"


class Sequential(Node):
    """A network y_N = f_N(... f_1(x)), run node by node; also usable as a node itself.

    All parameters live in one flat, contiguous buffer (``flat_params``) and all gradients in a
    second one of the same layout (``flat_grads``); each layer's W and b are views into them.

    Parameters
    ----------
    *nodes : Node
        The nodes in order, e.g. ``Linear(64, 32), Tanh(), Linear(32, 10), Softmax()``.
    dtype : float32 or float64
        The dtype of parameters, activations and gradients.
    seed : int or None
        Seeds the initial parameters and the random slopes of RReLU in training.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(4, 8), fb.Tanh(), fb.Linear(8, 3), fb.Softmax(), seed=0)
    >>> X = np.random.default_rng(0).normal(size=(5, 4))
    >>> Y = net.forward(X)
    >>> Y.shape, np.allclose(Y.sum(axis=1), 1)
    ((5, 3), True)
    >>> loss = net.loss_and_grad(X, np.array([0, 1, 2, 0, 1]), fb.KL())
    >>> [g.shape for g in net.grads]
    [(8, 4), (8,), (3, 8), (3,)]
    """

    def __init__(self, *nodes, dtype=np.float64, seed=None, _bind=True):
        if len(nodes) == 1 and isinstance(nodes[0], (list, tuple)):
            nodes = tuple(nodes[0])
        if not nodes:
            raise ValueError("Sequential needs at least one node")
        for k, node in enumerate(nodes):
            if isinstance(node, type):  # fb.Tanh for fb.Tanh(): say so
                _checks.instance_of(node, Node, f"node {k}")
            if not isinstance(node, Node):
                raise TypeError(f"node {k} is not a fastbp node: {node!r}")
        self.nodes = list(nodes)
        self.n_in = self._first_width()
        self.n_out = self.infer(self.n_in)
        self.seed = seed
        self._ctx = None
        if _bind:
            self._bind(_checks.as_dtype(dtype), np.random.default_rng(seed))

    # -- structure -------------------------------------------------------------------------
    def _first_width(self):
        # The first declared input width, if only width-keeping nodes (activations) precede it.
        for node in self.nodes:
            if node.n_in is not None:
                return node.n_in
            if not node.keeps_width:
                return None
        return None

    def infer(self, n_in):
        n = n_in
        for node in self.nodes:
            n = node.infer(n)
        return n

    def children(self):
        return self.nodes

    def engine_emit(self, tape, x, gx):
        """The nodes one after another, each reading the register the previous one wrote."""
        for node in self.nodes:
            x = gx = tape.emit(node, x, gx)
        return x

    def walk(self):
        """Every node inside this network, depth first, this network first."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children()))

    def named_specs(self, prefix=""):
        """(name, node, attribute, shape) of every parameter array, in layer order."""
        out = []
        for k, node in enumerate(self.nodes):
            out += self._node_specs(node, f"{prefix}{k}")
        return out

    @classmethod
    def _node_specs(cls, node, name):
        out = [(f"{name}.{a}", node, a, s) for a, s in node.param_specs()]
        for c, child in zip("ab", node.children()) if not isinstance(node, Sequential) else ():
            out += child.named_specs(f"{name}.{c}.")
        if isinstance(node, Sequential):
            out += node.named_specs(f"{name}.")
        return out

    def _bind(self, dtype, rng):
        """Allocate the flat buffers, point every parameter at its view, initialise."""
        size = sum(int(np.prod(s)) for *_, s in self.named_specs())
        self.dtype = dtype
        self.flat_params = np.zeros(size, dtype)
        self.flat_grads = np.zeros(size, dtype)
        self._point_views()
        self.rng = rng
        for node in self.walk():
            node.dtype = dtype
            if hasattr(node, "bind"):
                node.bind(dtype)
            if hasattr(node, "rng") and node is not self:
                node.rng = rng
        for node in self.walk():
            if node is not self:
                node.reset_parameters(rng)

    def _point_views(self):
        """Make every node's parameter and gradient arrays views into the flat buffers."""
        self._views = []
        o = 0
        for name, node, attr, shape in self.named_specs():
            n = int(np.prod(shape))
            setattr(node, attr, self.flat_params[o:o + n].reshape(shape))
            setattr(node, "d" + attr, self.flat_grads[o:o + n].reshape(shape))
            self._views.append((name, node, attr))
            o += n

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_tapes", None)  # compiled tapes hold addresses; rebuilt on demand
        state.pop("_walked", None)  # the copy's own nodes, walked on demand
        return state

    def __setstate__(self, state):
        # pickle and deepcopy copy each view as an array of its own: point them back into the
        # flat buffers (which carry the values), or W would no longer be part of flat_params.
        self.__dict__.update(state)
        if "flat_params" in state:
            self._point_views()

    def __getitem__(self, k):
        return self.nodes[k]

    def __len__(self):
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def __repr__(self):
        # Constructor-like: on one line while it is short, else one node a line (nested
        # networks indented); the dtype only where it is not the default float64.
        parts = [repr(n) for n in self.nodes]
        dt = getattr(self, "dtype", None)
        if dt is not None and dt != np.float64:
            parts.append(f"dtype=np.{dt.name}")
        line = f"Sequential({', '.join(parts)})"
        if len(line) <= _REPR_WIDTH and "\n" not in line:
            return line
        inner = ",\n".join("  " + p.replace("\n", "\n  ") for p in parts)
        return f"Sequential(\n{inner})"

    def summary(self):
        """A table of the nodes (nested ones indented under theirs), each node's output width
        and parameter count, and the total, as Keras' ``model.summary()`` and torchinfo show.

        Returns a :class:`Summary`: ``print(net.summary())`` prints the table, ``rows`` holds
        one ``SummaryRow(name, layer, depth, width, params)`` per node, ``total_params`` the
        total. ``name`` is the prefix of the node's entries in ``param_names``.

        Examples
        --------
        >>> import fastbp as fb
        >>> net = fb.Sequential(fb.Linear(4, 8), fb.Tanh(), fb.Linear(8, 3), fb.Softmax(), seed=0)
        >>> net.summary()
        Sequential: 4 inputs, 3 outputs, float64
        #  layer         output  params
        -------------------------------
        0  Linear(4, 8)       8      40
        1  Tanh()             8       0
        2  Linear(8, 3)       3      27
        3  Softmax()          3       0
        -------------------------------
        total: 67 parameters, 536 bytes
        """
        return Summary(self)

    @property
    def params(self):
        """Parameter arrays in layer order (W then b), views into ``flat_params``."""
        return [getattr(node, attr) for _, node, attr in self._views]

    @property
    def grads(self):
        """Gradient arrays, same shapes and order as ``params``, views into ``flat_grads``."""
        return [getattr(node, "d" + attr) for _, node, attr in self._views]

    @property
    def param_names(self):
        return [name for name, _, _ in self._views]

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (RReLU draws random slopes); returns the network."""
        nodes = self.__dict__.get("_walked")
        if nodes is None:  # kept: a single-row train_step spent 6 us walking the nodes
            nodes = self.__dict__["_walked"] = tuple(self.walk())
        for node in nodes:
            node.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode (RReLU uses its mean slope); returns the network."""
        return self.train(False)

    def astype(self, dtype):
        """A copy of the network with parameters converted to ``dtype``."""
        net = copy.deepcopy(self)
        old = self.flat_params
        net._bind(_checks.as_dtype(dtype), copy.deepcopy(self.rng))
        net.flat_params[...] = old
        return net

    # -- computation -----------------------------------------------------------------------
    def _apply(self, x, train):
        ctxs = []
        for node in self.nodes:
            x, ctx = node._apply(x, train)
            ctxs.append(ctx)
        return x, ctxs

    def _backprop(self, ctxs, dy, need_dx=True, start=None):
        # From node ``start`` (default: the last) back to the first.
        start = len(self.nodes) - 1 if start is None else start
        for k in range(start, -1, -1):
            dy = self.nodes[k]._backprop(ctxs[k], dy, need_dx or k > 0)
        return dy

    def kinks(self, ctxs):
        parts = [n.kinks(c) for n, c in zip(self.nodes, ctxs)]
        parts = [p.ravel() for p in parts if p is not None]
        return np.concatenate(parts) if parts else None

    def _input(self, X, name="X"):
        # Every entry point validates its input here: apply fastbp's thread count to this thread.
        _config.use_num_threads()
        X = _checks.as_float_array(X, name, self.dtype)
        _checks.check_width(X, name, self.n_in)
        if X.shape[0] == 0:
            raise ValueError(f"{name} has no rows (shape {X.shape})")
        return X

    def _ready(self, X):
        """Whether X needs no conversion: a C-contiguous 2-D array of the network's dtype and
        width, with rows (its values still need checking)."""
        return type(X) is np.ndarray and X.dtype == self.dtype and X.ndim == 2 and \
            X.shape[1] == self.n_in and X.shape[0] > 0 and X.flags.c_contiguous

    def forward(self, X):
        """Y = y_N for a batch X of shape (T, D_0); keeps what ``backward`` needs.

        Raises ValueError for a wrong width, NaN or inf (naming where), TypeError for
        non-numeric data. A 1-D X is one row.
        """
        X = self._input(X)
        Y, self._ctx = self._apply(X, self.training)
        self._out_shape = Y.shape
        return Y

    def backward(self, dY):
        """Propagate dLoss/dY back through the network (the seed's backward pass).

        Sets every gradient in ``grads`` (overwriting) and returns dLoss/dX.
        """
        if self._ctx is None:
            raise RuntimeError("call forward before backward")
        _config.use_num_threads()
        dY = _checks.as_float_array(dY, "dY", self.dtype)
        if dY.shape != self._out_shape:
            raise ValueError(f"dY has shape {dY.shape} but the last forward gave "
                             f"{self._out_shape}")
        return self._backprop(self._ctx, dY)

    def predict(self, X):
        """The output for X in evaluation mode; keeps nothing (``backward`` is unaffected).

        Networks of built-in nodes run through the compiled engine (one call, no Python per
        layer), others node by node; both give the same numbers. An output that overflows to
        inf or NaN raises ``FloatingPointError`` naming where.
        """
        if self._ready(X):  # one compiled call checks X, runs and checks the output
            _config.use_num_threads()
            Y = engine.predict(self, X)
            if Y is not None:
                return Y
        X = self._input(X)
        Y = engine.predict(self, X)
        Y = self._apply(X, False)[0] if Y is None else Y
        if not _checks.all_finite(Y):  # the message's figures only when it is needed
            _checks.check_finite(Y, f"the output (overflow in {self.dtype.name}? inputs as "
                                 f"large as {np.abs(X).max():.3g})", error=FloatingPointError)
        return Y

    def loss_and_grad(self, X, d, loss, sample_weight=None):
        """Forward, the mean divergence (weighted by ``sample_weight``: sum_t w_t Div_t /
        sum_t w_t), and backward in one call; returns the loss.

        With ``Softmax`` + ``KL``, ``Sigmoid`` + ``BinaryKL`` or ``Exp`` + ``Poisson`` at the
        end it uses the fused, stable gradient (y - d) / T for the last pre-activation.
        """
        X = self._input(X)
        target = loss.target(d, X.shape[0], self.n_out, self.dtype)
        weights = _checks.sample_weight(sample_weight, X.shape[0])
        value, _ = self._loss_and_grad(X, target, loss, weights=weights)
        return value

    def step_mode(self, optimizer):
        """The ``train`` argument of the forward pass of the optimizer's next step: in training
        mode the step's number t >= 1 (what ``Dropout`` keys its masks by), else False."""
        return optimizer.t + 1 if self.training else False

    def _loss_and_grad(self, X, target, loss, need_dx=True, train=None, weights=None,
                       norm=None):
        train = self.training if train is None else train
        Y, ctxs = self._apply(X, train)
        fused = _weighed(loss.fused, weights, norm, self.nodes[-1], ctxs[-1], target)
        if fused is not None:
            value, dz = fused
            dX = self._backprop(ctxs, dz, need_dx, start=len(self.nodes) - 2)
        else:
            value, dY = _weighed(loss.value_and_grad, weights, norm, Y, target)
            dX = self._backprop(ctxs, dY, need_dx)
        self._ctx, self._out_shape, self._last_output = ctxs, Y.shape, Y
        return value, dX

    def train_step(self, X, d, loss, optimizer, sample_weight=None):
        """Forward, backward and one optimizer update on the batch (X, d) (its loss weighted
        by ``sample_weight``); returns the loss.

        Refuses a step whose loss or gradient is NaN or inf (``fastbp.TrainingError``),
        leaving the parameters unchanged. Afterwards ``grads`` holds the step's gradient,
        except the linear layers' dW after a one-row step of SGD without momentum or
        clipping, which updates W from dz and y without forming dW (``loss_and_grad`` gives
        the whole gradient).
        """
        ready = self._ready(X)  # then the engine checks X's values
        if ready:
            _config.use_num_threads()
        else:
            X = self._input(X)
        T = X.shape[0]
        target = loss.target(d, T, self.n_out, self.dtype)
        weights = _checks.sample_weight(sample_weight, T)
        self.train()
        try:
            out = engine.run_epoch(self, X, target, loss, optimizer, np.arange(T), T,
                                   weights=weights, check=ready)
        except Unsupported:
            out = None
        if out is not None:
            total, _, bad, _, _ = out
            if bad >= 0:
                raise TrainingError(f"epoch 0, step 0: {not_finite(self, loss)}")
            return total / (T if weights is None else KDiv.total(weights))
        X = self._input(X)  # raises if the engine found NaN or inf in X
        try:
            return self._node_step(X, target, loss, optimizer, weights)
        except TrainingError as e:
            raise TrainingError(f"epoch 0, step 0: {e}") from None

    def _node_step(self, X, target, loss, optimizer, weights=None):
        """``train_step`` node by node on a prepared batch; refuses a non-finite step."""
        value, _ = self._loss_and_grad(X, target, loss, need_dx=False, weights=weights,
                                       train=self.step_mode(optimizer))
        if not math.isfinite(value) or not np.isfinite(self.flat_grads).all():
            raise TrainingError(not_finite(self, loss))
        optimizer.step(self)
        return value

    def save(self, path):
        """Write the architecture (JSON) and parameters to an ``.npz`` file, atomically."""
        io.save(self, path)

    def _loss_value(self, X, target, loss, train=False, weights=None):
        return self._loss_and_output(X, target, loss, train, weights)[:2]

    def _loss_and_output(self, X, target, loss, train=False, weights=None):
        """The mean divergence over the rows of X, the nodes' contexts and the output, node
        by node."""
        Y, ctxs = self._apply(X, train)
        fused = _weighed(loss.fused, weights, None, self.nodes[-1], ctxs[-1], target)
        return (fused[0] if fused is not None else
                _weighed(loss.value_and_grad, weights, None, Y, target)[0]), ctxs, Y


def _weighed(method, weights, norm, *args):
    """A divergence's ``method(*args)``, with the sample weights and ``norm`` if there are any
    (a user's divergence written before weights existed takes neither)."""
    if norm is not None:
        return method(*args, weights, norm)
    return method(*args) if weights is None else method(*args, weights)


def not_finite(net, loss):
    """The TrainingError message, naming the likely cause where the divergence does not fit
    the network's last node (KL without Softmax)."""
    hint = loss.output_hint(net)
    return "the loss or a gradient is not finite; parameters are those of the last good " \
        "step" + (f" (likely cause: {hint})" if hint else "")
