"""Nodes: the affine layer and the scalar activations.

Every node works on a batch of rows, (T, D_in) -> (T, D_out), through two methods that keep no
state: ``_apply(x, train) -> (y, ctx)`` and ``_backprop(ctx, dy, need_dx) -> dx`` (which also
writes the node's parameter gradients). ``forward``/``backward`` wrap them for a node used alone;
:class:`fastbp.Sequential` keeps the contexts for a whole network.
"""

from collections import namedtuple

import numpy as np

from . import _checks
from ._config import in_python, serial_twin_of
from .errors import Unsupported
from .kernels import activations as KA
from .kernels import dense as KD
from .kernels import dropout as KDr
from .kernels import engine as KE

dense_mode = in_python(KD.dense_mode)  # the compiled kernels' rule, asked from Python
by_units, input_scratch = in_python(KD.by_units), in_python(KD.input_scratch)


def sized(kernel, n):
    """``kernel`` (a parallel kernel) for ``n`` elements, or its serial twin below
    ``engine.PAR_MIN_WORK`` as the engine chooses. The numbers are the same (one source, each
    output its own computation), and the node-by-node calls of a first fit (a validation
    loss, say) reuse the twins the engine compiled instead of compiling parallel kernels."""
    return kernel if n >= KE.PAR_MIN_WORK else serial_twin_of(kernel)


def blas_kernels(rows, mode):
    """The BLAS kernels (forward, dy) of a batch of ``rows`` rows in a BLAS ``mode``
    (``dense.dense_mode``): the GEMV kernels for fewer than ``dense.FEW`` rows, the serial
    twins out of ``BLAS_MODE``."""
    few = rows < KD.FEW
    kernels = (KD.dense_forward_gemv if few else KD.dense_forward_blas,
               KD.dense_backward_input_gemv if few else KD.dense_backward_input_blas)
    return kernels if mode == KD.BLAS_MODE else tuple(map(serial_twin_of, kernels))


def affine(y, W, b, z):
    """z = y W^T + b by the kernel ``dense.dense_mode`` picks, chosen in Python so that only
    that kernel compiles (a compiled choice compiles all three: 7 s of a first fit with a
    validation set)."""
    mode = dense_mode(y.shape[0], W.shape[0], W.shape[1])
    if mode == KD.LOOP_MODE:
        KD.dense_forward(y, W, b, z, np.empty((W.shape[1], W.shape[0]), z.dtype))
    else:
        blas_kernels(y.shape[0], mode)[0](y, W, b, z, np.empty((W.shape[0], y.shape[0]),
                                                               z.dtype))


def affine_backward(dz, y, W, dW, db, dy, need_dy):
    """dW, db and (if ``need_dy``) dy by the kernels ``dense.dense_mode`` picks."""
    mode = dense_mode(dz.shape[0], W.shape[0], W.shape[1])
    if mode == KD.LOOP_MODE:
        KD.dense_backward_params(dz, y, dW, db)
        if need_dy:
            KD.dense_backward_input(dz, W, dy)
    elif mode == KD.BLAS_MODE:
        KD.dense_backward_params_blas(dz, y, dW, db, np.empty((W.shape[0], dz.shape[0]),
                                                              dz.dtype))
        if need_dy and by_units(dz.shape[0], W.shape[0], W.shape[1]):
            KD.dense_backward_input_parts(dz, W, dy, np.empty(
                input_scratch(dz.shape[0], W.shape[0], W.shape[1]), dz.dtype))
        elif need_dy:
            blas_kernels(dz.shape[0], mode)[1](dz, W, dy)
    else:
        KD.dense_backward_params_blas_serial(dz, y, dW, db,
                                             np.empty((W.shape[0], dz.shape[0]), dz.dtype))
        if need_dy:
            blas_kernels(dz.shape[0], mode)[1](dz, W, dy)


class EngineOp(namedtuple("EngineOp", "forward backward aux p linear", defaults=((), 0.0, False))):
    """A node's op in the engine (see ``Node.engine_op``): ``forward`` and ``backward`` are
    (op function of :mod:`fastbp.kernels.engine`, leaf kernel) pairs or None, ``aux`` the op
    row's auxiliary fields as (field, value) pairs, ``p`` its float parameter; ``linear``
    marks the affine layer, whose kernels the engine picks by ``dense.dense_mode``."""


class Node:
    """Base class of fastbp's nodes. fastbp's own public node classes are listed by name in
    ``Node.builtin`` as they are defined (the file format's node types; user subclasses are
    not, since files hold no code)."""

    builtin = {}
    training = True
    n_in = None  # the input width, where the node fixes it
    keeps_width = False  # True where the output width always equals the input width
    couples_rows = False  # True where a row's output in training depends on the batch's other
    # rows (batch statistics): such a node cannot be trained on blocks of a batch apart

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("fastbp.") and not cls.__name__.startswith("_"):
            Node.builtin[cls.__name__] = cls

    # -- structure -------------------------------------------------------------------------
    def infer(self, n_in):
        """The output width for an input width ``n_in`` (None: not known yet); raises if the
        input width does not fit this node. Elementwise nodes keep the width."""
        return n_in

    def children(self):
        """Nodes inside this one (for sub-networks); their parameters belong to this node."""
        return []

    def param_specs(self):
        """(name, shape) of each parameter array this node owns itself."""
        return []

    def buffer_specs(self):
        """(name, shape) of each array of state this node owns that is not trained (running
        statistics): of the network's dtype, saved and loaded with the parameters."""
        return []

    def reset_parameters(self, rng):
        """Fill this node's own parameters with initial values drawn from ``rng``."""

    def kinks(self, ctx):
        """An array that changes when an input crosses a point where the node is not
        differentiable (None for smooth nodes); gradcheck skips such perturbations."""
        return None

    def engine_op(self, tape):
        """This node's op in the compiled engine, an ``EngineOp``; ``tape`` places constants
        (``tape.const``, ``tape.iconst``, ``tape.argmax``) and parameter offsets
        (``tape.offset``), ``tape.train`` says whether it trains. Raises ``Unsupported`` where
        the engine cannot run the node, which then runs node by node. A subclass that changes
        ``_apply`` or ``_backprop`` without stating its own op runs node by node too."""
        raise Unsupported(f"{type(self).__name__} is not a built-in node")

    def engine_emit(self, tape, x, gx):
        """Place this node on the engine's tape, reading register x (gx: x's gradient
        register, -1: none wanted); returns its output register. A node places the one op its
        ``engine_op`` states; nodes made of sub-networks (``Sequential``, ``Product``) place
        theirs with ``tape.emit``, ``tape.register`` and ``tape.op``."""
        return tape.place(self.engine_op(tape), x, gx, self.infer(tape.widths[x]))

    # -- computation -----------------------------------------------------------------------
    def _apply(self, x, train):
        raise NotImplementedError

    def _backprop(self, ctx, dy, need_dx=True):
        raise NotImplementedError

    def forward(self, x):
        """y = f(x) for a batch x of shape (T, D_in); keeps what ``backward`` needs."""
        y, self._ctx = self._apply(x, self.training)
        return y

    def backward(self, dy):
        """dDiv/dx from dDiv/dy for the batch of the last ``forward``."""
        if getattr(self, "_ctx", None) is None:
            raise RuntimeError(f"{self!r}: call forward before backward")
        return self._backprop(self._ctx, dy)

    def __repr__(self):
        return f"{type(self).__name__}()"


_INITS = ("xavier", "he", "lecun", "torch", "zeros")


class Linear(Node):
    """The affine layer z = W y + b, with W of shape (n_out, n_in) as in the seed and PyTorch.

    Parameters
    ----------
    n_in, n_out : int
        Input and output widths.
    bias : bool
        Whether the layer has the bias b (the seed's weight w_0j on the constant input y_0 = 1).
    init : {"xavier", "he", "lecun", "torch", "zeros"} or callable
        Initial W: uniform with bound sqrt(6 / (n_in + n_out)) (xavier, the default),
        sqrt(6 / n_in) (he), sqrt(3 / n_in) (lecun), 1 / sqrt(n_in) (torch, also for b), or all
        zeros; a callable ``init(rng, shape)`` returns W. b starts at zero except with "torch".

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(3, 2), seed=0)
    >>> net[0].W.shape, net[0].b.shape
    ((2, 3), (2,))
    """

    def __init__(self, n_in, n_out, bias=True, init="xavier"):
        self.n_in = _checks.positive_int(n_in, "n_in")
        self.n_out = _checks.positive_int(n_out, "n_out")
        self.bias = bool(bias)
        if not callable(init) and init not in _INITS:
            raise ValueError(f"init must be one of {_INITS} or a callable, got {init!r}")
        self.init = init

    def infer(self, n_in):
        if n_in is not None and n_in != self.n_in:
            raise ValueError(f"{self!r} expects {self.n_in} inputs but receives {n_in}")
        return self.n_out

    def param_specs(self):
        shapes = [("W", (self.n_out, self.n_in))]
        return shapes + [("b", (self.n_out,))] if self.bias else shapes

    def bind(self, dtype):
        # Without a bias the kernels still add b: give them zeros and a scratch gradient.
        if not self.bias:
            self.b = np.zeros(self.n_out, dtype)
            self.db = np.zeros(self.n_out, dtype)

    def reset_parameters(self, rng):
        n_in, n_out, shape = self.n_in, self.n_out, (self.n_out, self.n_in)
        bound = {"xavier": np.sqrt(6 / (n_in + n_out)), "he": np.sqrt(6 / n_in),
                 "lecun": np.sqrt(3 / n_in), "torch": 1 / np.sqrt(n_in), "zeros": 0.0}
        if callable(self.init):
            W = np.asarray(self.init(rng, shape), dtype=np.float64)
            if W.shape != shape:
                raise ValueError(f"init returned shape {W.shape}, expected {shape}")
        else:
            W = rng.uniform(-bound[self.init], bound[self.init], size=shape)
        self.W[...] = W
        if self.bias:
            b = rng.uniform(-bound["torch"], bound["torch"], size=n_out) \
                if self.init == "torch" else 0.0
            self.b[...] = b

    def _apply(self, y, train):
        z = np.empty((y.shape[0], self.n_out), y.dtype)
        affine(y, self.W, self.b, z)
        return z, y

    def engine_op(self, tape):
        return EngineOp(None, None, ((KE.W, tape.offset(self, "W")),
                                     (KE.B, tape.offset(self, "b") if self.bias else -1)),
                        linear=True)

    def _backprop(self, y, dz, need_dx=True):
        dy = np.empty_like(y)
        affine_backward(dz, y, self.W, self.dW, self.db, dy, need_dx)
        return dy if need_dx else None

    def config(self):
        if callable(self.init):
            return dict(n_in=self.n_in, n_out=self.n_out, bias=self.bias)
        return dict(n_in=self.n_in, n_out=self.n_out, bias=self.bias, init=self.init)

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        return f"Linear({self.n_in}, {self.n_out}{extra})"


class _Scalar(Node):
    """A scalar activation y_i = f(z_i): its Jacobian is diagonal, dz = dy * f'(z)."""

    kind = None
    keeps_width = True

    def _p(self):
        return 0.0

    def engine_op(self, tape):
        return EngineOp((KE.elementwise_forward, KA.FORWARD[self.kind]),
                        (KE.elementwise_backward, KA.BACKWARD[self.kind]), p=self._p())

    def _apply(self, z, train):
        y = np.empty_like(z)
        sized(KA.FORWARD[self.kind], z.size)(self._p(), z.reshape(-1), y.reshape(-1))
        return y, (z, y)

    def _backprop(self, ctx, dy, need_dx=True):
        z, y = ctx
        dz = np.empty_like(z)
        sized(KA.BACKWARD[self.kind], z.size)(self._p(), z.reshape(-1), y.reshape(-1),
                                              dy.reshape(-1), dz.reshape(-1))
        return dz

    def config(self):
        return {}


class _Kinked(_Scalar):
    def kinks(self, ctx):
        return np.sign(ctx[0])


class Identity(_Scalar):
    """y = z."""

    kind = KA.IDENTITY


class Sigmoid(_Scalar):
    """y = 1 / (1 + exp(-z)); f'(z) = y (1 - y)."""

    kind = KA.SIGMOID


class Tanh(_Scalar):
    """y = tanh(z); f'(z) = 1 - y^2."""

    kind = KA.TANH


class Softplus(_Scalar):
    """y = log(1 + exp(z)); f'(z) = sigmoid(z)."""

    kind = KA.SOFTPLUS


class Exp(_Scalar):
    """y = exp(z); f'(z) = y. The output node of a Poisson model (the log link): after it,
    ``fb.Poisson`` trains through its fused, stable gradient (y - d) / T.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> fb.Exp().forward(np.array([[0.0, 1.0]]))
    array([[1.        , 2.71828183]])
    """

    kind = KA.EXP


class GELU(_Scalar):
    """y = z Phi(z) with Phi the standard normal CDF (the exact, erf form)."""

    kind = KA.GELU


class ReLU(_Kinked):
    """y = max(z, 0), with the subgradient f'(0) = ``grad_at_zero``.

    The seed's convention is f'(z) = 1 for z >= 0 (the default); ``grad_at_zero=0`` matches
    PyTorch and scikit-learn.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> r = fb.ReLU()
    >>> r.forward(np.array([[-1.0, 0.0, 2.0]]))  # z < 0 gives 0 * z: -0.0, equal to 0.0
    array([[-0.,  0.,  2.]])
    >>> r.backward(np.ones((1, 3)))
    array([[0., 1., 1.]])
    """

    kind = KA.RELU

    def __init__(self, grad_at_zero=1.0):
        self.grad_at_zero = float(grad_at_zero)

    def _p(self):
        return self.grad_at_zero

    def config(self):
        return dict(grad_at_zero=self.grad_at_zero)

    def __repr__(self):
        return "ReLU()" if self.grad_at_zero == 1 else f"ReLU(grad_at_zero={self.grad_at_zero})"


class LeakyReLU(_Kinked):
    """y = z for z >= 0, slope * z below; f'(0) = 1 as in the seed."""

    kind = KA.LEAKY_RELU

    def __init__(self, slope=0.01):
        self.slope = float(slope)

    def _p(self):
        return self.slope

    def config(self):
        return dict(slope=self.slope)

    def __repr__(self):
        return f"LeakyReLU(slope={self.slope})"


class ELU(_Kinked):
    """y = z for z >= 0, alpha (exp(z) - 1) below."""

    kind = KA.ELU

    def __init__(self, alpha=1.0):
        self.alpha = float(alpha)

    def _p(self):
        return self.alpha

    def config(self):
        return dict(alpha=self.alpha)

    def __repr__(self):
        return f"ELU(alpha={self.alpha})"


class RReLU(_Kinked):
    """Randomized leaky ReLU: in training each element draws its slope from U(lower, upper)
    (from the network's seeded generator); in evaluation the slope is (lower + upper) / 2.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(2, 2), fb.RReLU(), seed=0).eval()
    >>> net[1].forward(np.array([[-2.0, 2.0]]))  # eval: the mean slope
    array([[-0.45833333,  2.        ]])
    """

    kind = KA.LEAKY_RELU

    def __init__(self, lower=1 / 8, upper=1 / 3):
        self.lower, self.upper = float(lower), float(upper)
        if not 0 <= self.lower <= self.upper:
            raise ValueError(f"RReLU needs 0 <= lower <= upper, got {self.lower}, {self.upper}")
        self.rng = np.random.default_rng()

    def _p(self):
        return (self.lower + self.upper) / 2

    def engine_op(self, tape):
        if tape.train:
            raise Unsupported("RReLU in training draws slopes from NumPy's generator")
        return super().engine_op(tape)

    def _apply(self, z, train):
        if not train:
            return super()._apply(z, train)
        a = self.rng.uniform(self.lower, self.upper, size=z.shape).astype(z.dtype)
        y = np.empty_like(z)
        KA.rrelu_forward(z.reshape(-1), a.reshape(-1), y.reshape(-1))
        return y, (z, y, a)

    def _backprop(self, ctx, dy, need_dx=True):
        if len(ctx) == 2:
            return super()._backprop(ctx, dy, need_dx)
        z, _, a = ctx
        dz = np.empty_like(z)
        KA.rrelu_backward(z.reshape(-1), a.reshape(-1), dy.reshape(-1), dz.reshape(-1))
        return dz

    def config(self):
        return dict(lower=self.lower, upper=self.upper)

    def __repr__(self):
        return f"RReLU(lower={self.lower:g}, upper={self.upper:g})"


class Dropout(Node):
    """Inverted dropout: in training each unit is kept with probability 1 - p and scaled by
    1 / (1 - p), else zeroed; in evaluation the identity.

    The masks come from a counter-based generator keyed by (seed, step, row, unit): the
    training step t (the optimizer's step count, 1, 2, ...; restored on resume), the row in
    the batch and the unit. So a step's mask is the same for any number of threads, in the
    engine and node by node, and after a resume from a checkpoint. ``seed`` None draws one
    from the network's generator when the network is built (kept from then on, and saved
    with it). A forward pass in training mode outside a training step (``net.forward``) draws
    fresh masks from a count of its own.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(4, 6), fb.ReLU(), fb.Dropout(0.5), fb.Linear(6, 2), seed=0)
    >>> x = np.ones((3, 4))
    >>> bool((net.eval().predict(x) == net.predict(x)).all())  # evaluation: no dropout
    True
    """

    keeps_width = True

    def __init__(self, p=0.5, seed=None):
        self.p = float(p)
        if not 0 <= self.p < 1:
            raise ValueError(f"Dropout needs 0 <= p < 1, got {p}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed < 1 << 53):
            raise ValueError(f"Dropout's seed must be an int in [0, 2**53) or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)  # < 2**53: exact in the file's JSON
        self._draws = 0

    def reset_parameters(self, rng):
        if self.seed is None:
            self.seed = int(rng.integers(1 << 53))

    def _step(self, train):
        """The step of a forward pass in training: the training step given, or past the range
        of training steps, a count of this node's own draws."""
        if train is not True:
            return int(train)
        self._draws += 1
        return (1 << 62) + self._draws

    def _apply(self, x, train):
        if not train or self.p == 0:
            return x, None
        step = self._step(train)
        y = np.empty_like(x)
        KDr.dropout(x, y, self._key(), step, self.p)
        return y, step

    def _backprop(self, step, dy, need_dx=True):
        if step is None:
            return dy
        dz = np.empty_like(dy)
        KDr.dropout(dy, dz, self._key(), step, self.p)
        return dz

    def _key(self):
        if self.seed is None:
            raise RuntimeError("Dropout has no seed: put it in a fb.Sequential first")
        return self.seed

    def engine_op(self, tape):
        return EngineOp((KE.dropout_forward, KDr.dropout), (KE.dropout_backward, KDr.dropout),
                        ((KE.A1, self._key()),), p=self.p)

    def engine_emit(self, tape, x, gx):
        if not tape.train or self.p == 0:
            return x  # the identity: nothing to place
        return super().engine_emit(tape, x, gx)

    def config(self):
        return dict(p=self.p, seed=self.seed)

    def __repr__(self):
        return f"Dropout(p={self.p:g})"


def activation(name):
    """A scalar or vector activation node from its name (as in the command line's
    architecture strings and the scikit-learn adapter): identity, logistic/sigmoid, tanh, relu,
    leaky_relu, rrelu, softplus, elu, gelu, softmax."""
    key = str(name).lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from "
                         f"{', '.join(sorted(_ACTIVATIONS))}")
    return Node.builtin[_ACTIVATIONS[key]]()


_ACTIVATIONS = {"identity": "Identity", "none": "Identity", "linear": "Identity",
                "logistic": "Sigmoid", "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "ReLU",
                "leaky_relu": "LeakyReLU", "rrelu": "RReLU", "softplus": "Softplus",
                "elu": "ELU", "gelu": "GELU", "exp": "Exp",
                "softmax": "Softmax"}  # Softmax: fastbp.vector
