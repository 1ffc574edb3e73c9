"""Multiplicative nodes (the seed's special case 2) and max over subsets of inputs."""

import numpy as np

from . import _checks
from .kernels import engine as KE
from .kernels import products as KP
from .network import Sequential
from .nodes import EngineOp, Node


class PairProduct(Node):
    """y_i = z_{2i-1} z_{2i}: the seed's multiplicative layer, halving the width.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> fb.PairProduct().forward(np.array([[2.0, 3.0, 4.0, 5.0]]))
    array([[ 6., 20.]])
    """

    def infer(self, n_in):
        if n_in is not None and n_in % 2:
            raise ValueError(f"PairProduct needs an even input width, got {n_in}")
        return None if n_in is None else n_in // 2

    def engine_op(self, tape):
        return EngineOp((KE.rows_forward, KP.pair_product_forward),
                        (KE.pair_backward, KP.pair_product_backward))

    def _apply(self, z, train):
        if z.shape[1] % 2:
            raise ValueError(f"PairProduct needs an even input width, got shape {z.shape}")
        y = np.empty((z.shape[0], z.shape[1] // 2), z.dtype)
        KP.pair_product_forward(z, y)
        return y, z

    def _backprop(self, z, dy, need_dx=True):
        dz = np.empty_like(z)
        KP.pair_product_backward(z, dy, dz)
        return dz

    def config(self):
        return {}


class PowerProduct(Node):
    """y_i = prod_l z_l ** alpha[l, i], the seed's general multiplicative combination.

    Parameters
    ----------
    alpha : array of shape (D, M)
        Exponents; with non-integer exponents the inputs must be positive.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> node = fb.PowerProduct([[1.0, 2.0], [1.0, 0.0]])   # y = (z1 z2, z1^2)
    >>> node.forward(np.array([[3.0, 5.0]]))
    array([[15.,  9.]])
    """

    def __init__(self, alpha):
        a = np.array(alpha, dtype=np.float64)
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"alpha must be a non-empty 2-D array (D, M), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("alpha must be finite")
        self.alpha = a
        self._cast = {}

    def infer(self, n_in):
        if n_in is not None and n_in != self.alpha.shape[0]:
            raise ValueError(f"PowerProduct with alpha of shape {self.alpha.shape} needs "
                             f"{self.alpha.shape[0]} inputs, receives {n_in}")
        return self.alpha.shape[1]

    def engine_op(self, tape):
        return EngineOp((KE.power_forward, KP.power_product_forward),
                        (KE.power_backward, KP.power_product_backward),
                        ((KE.A1, tape.const(self.alpha)),))

    def _alpha(self, dtype):
        if dtype not in self._cast:
            self._cast[dtype] = np.ascontiguousarray(self.alpha, dtype=dtype)
        return self._cast[dtype]

    def _apply(self, z, train):
        self.infer(z.shape[1])
        y = np.empty((z.shape[0], self.alpha.shape[1]), z.dtype)
        KP.power_product_forward(z, self._alpha(z.dtype), y)
        return y, z

    def _backprop(self, z, dy, need_dx=True):
        dz, work = np.empty_like(z), np.empty_like(z)
        KP.power_product_backward(z, self._alpha(z.dtype), dy, dz, work)
        return dz

    def config(self):
        return dict(alpha=self.alpha.tolist())

    def __repr__(self):
        return f"PowerProduct(alpha of shape {self.alpha.shape})"


class Product(Node):
    """y = a(x) * b(x) elementwise, for two sub-networks of the same input (gating, as in
    LSTMs and GLUs). Gradients: da = dy * b(x), db = dy * a(x), dx = dx_a + dx_b.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> glu = fb.Product(fb.Sequential(fb.Linear(4, 3)),
    ...                  fb.Sequential(fb.Linear(4, 3), fb.Sigmoid()))
    >>> net = fb.Sequential(glu, fb.Linear(3, 2), seed=0)
    >>> net.forward(np.ones((5, 4))).shape
    (5, 2)
    """

    def __init__(self, a, b):
        self.a = a if isinstance(a, Sequential) else Sequential(a, _bind=False)
        self.b = b if isinstance(b, Sequential) else Sequential(b, _bind=False)

    def children(self):
        return [self.a, self.b]

    @property
    def n_in(self):
        return self.a.n_in if self.a.n_in is not None else self.b.n_in

    def infer(self, n_in):
        na, nb = self.a.infer(n_in), self.b.infer(n_in)
        if na is not None and nb is not None and na != nb:
            raise ValueError(f"Product needs branches of equal output width, got {na} and {nb}")
        return na if na is not None else nb

    def engine_emit(self, tape, x, gx):
        """x forks into both branches (their input gradients summed by the fork's backward),
        then one op multiplies the branch outputs."""
        n_in = tape.widths[x]
        ga = tape.register(n_in) if gx >= 0 else -1
        gb = tape.register(n_in) if gx >= 0 else -1
        tape.op(None, (KE.fork_backward, None), x, x, gx, -1, n_in, n_in,
                {KE.A1: ga, KE.A2: gb}, (KE.A1, KE.A2))
        ya, yb = tape.emit(self.a, x, ga), tape.emit(self.b, x, gb)
        w = tape.widths[ya]
        y = tape.register(w)
        tape.op((KE.mul_forward, KP.elementwise_product_forward),
                (KE.mul_backward, KP.elementwise_product_backward), ya, y, ya, y, w, w,
                {KE.A1: yb, KE.A2: yb}, (KE.A1, KE.A2))
        return y

    def _apply(self, x, train):
        ya, ca = self.a._apply(x, train)
        yb, cb = self.b._apply(x, train)
        y = np.empty_like(ya)
        KP.elementwise_product_forward(ya.reshape(-1), yb.reshape(-1), y.reshape(-1))
        return y, (ca, cb, ya, yb)

    def _backprop(self, ctx, dy, need_dx=True):
        ca, cb, ya, yb = ctx
        da, db = np.empty_like(ya), np.empty_like(yb)
        KP.elementwise_product_backward(ya.reshape(-1), yb.reshape(-1), dy.reshape(-1),
                                        da.reshape(-1), db.reshape(-1))
        dxa = self.a._backprop(ca, da, need_dx)
        dxb = self.b._backprop(cb, db, need_dx)
        return dxa + dxb if need_dx else None

    def kinks(self, ctx):
        ka, kb = self.a.kinks(ctx[0]), self.b.kinks(ctx[1])
        parts = [k.ravel() for k in (ka, kb) if k is not None]
        return np.concatenate(parts) if parts else None

    def __repr__(self):
        return f"Product({self.a!r}, {self.b!r})"


class MaxOver(Node):
    """y_j = max of z_l over l in subsets[j]; the gradient goes to the first index attaining
    the max (the seed's subgradient), 0 to the rest.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> m = fb.MaxOver([[0, 1], [1, 2, 3]])
    >>> m.forward(np.array([[5.0, 5.0, 1.0, 7.0]]))
    array([[5., 7.]])
    >>> m.backward(np.array([[1.0, 1.0]]))
    array([[1., 0., 0., 1.]])
    """

    def __init__(self, subsets):
        self._set_subsets(subsets)

    def _set_subsets(self, subsets):
        lists = [np.asarray(s).reshape(-1) for s in subsets]
        if not lists:
            raise ValueError("MaxOver needs at least one subset")
        for j, s in enumerate(lists):
            if s.size == 0:
                raise ValueError(f"subset {j} is empty")
            if s.dtype.kind not in "iu":
                raise TypeError(f"subset {j} must hold integer indices, got dtype {s.dtype}")
            if s.min() < 0:
                raise ValueError(f"subset {j} holds a negative index {int(s.min())}")
        self.subsets = [s.astype(np.int64) for s in lists]
        self.indices = np.concatenate(self.subsets)
        self.indptr = np.zeros(len(lists) + 1, np.int64)
        self.indptr[1:] = np.cumsum([s.size for s in lists])

    def infer(self, n_in):
        top = int(self.indices.max())
        if n_in is not None and top >= n_in:
            raise ValueError(f"MaxOver refers to input {top} but receives only {n_in} inputs")
        return len(self.subsets)

    def engine_op(self, tape):
        return EngineOp((KE.max_forward, KP.max_forward), (KE.max_backward, KP.max_backward),
                        ((KE.A1, tape.iconst(self.indptr)), (KE.A2, tape.iconst(self.indices)),
                         (KE.A3, tape.argmax(len(self.subsets)))))

    def _apply(self, z, train):
        self.infer(z.shape[1])
        M = len(self.subsets)
        y, arg = np.empty((z.shape[0], M), z.dtype), np.empty((z.shape[0], M), np.int64)
        KP.max_forward(z, self.indptr, self.indices, y, arg)
        return y, (arg, z.shape)

    def _backprop(self, ctx, dy, need_dx=True):
        arg, shape = ctx
        dz = np.empty(shape, dy.dtype)
        KP.max_backward(dy, arg, dz)
        return dz

    def kinks(self, ctx):
        return ctx[0]

    def config(self):
        return dict(subsets=[s.tolist() for s in self.subsets])

    def __repr__(self):
        return f"MaxOver({len(self.subsets)} subsets)"


class MaxPool1d(MaxOver):
    """Max over windows of ``size`` inputs every ``stride`` inputs: y_j = max z[j s : j s + size].

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> fb.MaxPool1d(2).forward(np.array([[1.0, 4.0, 3.0, 2.0]]))
    array([[4., 3.]])
    """

    def __init__(self, size, stride=None):
        self.size = _checks.positive_int(size, "size")
        self.stride = _checks.positive_int(stride if stride is not None else size, "stride")
        self.subsets = None
        self._n_in = None

    def infer(self, n_in):
        if n_in is None:
            return None
        if n_in < self.size:
            raise ValueError(f"MaxPool1d(size={self.size}) needs at least {self.size} inputs, "
                             f"receives {n_in}")
        if n_in != self._n_in:
            n_out = (n_in - self.size) // self.stride + 1
            self._set_subsets([np.arange(j * self.stride, j * self.stride + self.size)
                               for j in range(n_out)])
            self._n_in = n_in
        return len(self.subsets)

    def config(self):
        return dict(size=self.size, stride=self.stride)

    def __repr__(self):
        return f"MaxPool1d(size={self.size}, stride={self.stride})"
