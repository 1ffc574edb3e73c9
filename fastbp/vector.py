"""Vector activations: each output of a row depends on every input of the row."""

import numpy as np

from .kernels import engine as KE
from .kernels import vector as KV
from .nodes import EngineOp, Node, sized


class Softmax(Node):
    """y_i = exp(z_i) / sum_j exp(z_j), row by row (computed with the row maximum subtracted).

    Backward is the vector-Jacobian product dz_i = y_i (dy_i - sum_j dy_j y_j). Followed by
    :class:`fastbp.KL` at the end of a network, training uses the fused gradient (y - d) / T.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> fb.Softmax().forward(np.array([[1000.0, 0.0, -1000.0]]))
    array([[1., 0., 0.]])
    """

    keeps_width = True

    def engine_op(self, tape):
        return EngineOp((KE.rows_forward, KV.softmax_forward),
                        (KE.softmax_backward, KV.softmax_vjp))

    def _apply(self, z, train):
        y = np.empty_like(z)
        sized(KV.softmax_forward, z.size)(z, y)
        return y, (z, y)

    def _backprop(self, ctx, dy, need_dx=True):
        dz = np.empty_like(dy)
        sized(KV.softmax_vjp, dy.size)(ctx[1], dy, dz)
        return dz

    def config(self):
        return {}


def _map_rows(fn, Z, shape, what):
    """Stack fn(row) for every row of Z, checking each result has ``shape``."""
    out = np.empty((Z.shape[0],) + shape, Z.dtype)
    for t, row in enumerate(Z):
        r = np.asarray(fn(row.copy()))
        if r.shape != shape:
            raise ValueError(f"{what} returned shape {r.shape} for row {t}, expected {shape}")
        out[t] = r
    return out


class VectorActivation(Node):
    """A user's vector activation y = f(z), applied row by row, with its Jacobian.

    Parameters
    ----------
    f : callable
        Maps one row z of shape (D,) to y of shape (M,). Plain Python or numba functions.
    jacobian : callable
        Maps z to the (M, D) matrix J[m, d] = dy_m / dz_d.
    n_out : int, optional
        M; by default M = D.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> sq = fb.VectorActivation(lambda z: z ** 2, lambda z: np.diag(2 * z))
    >>> sq.forward(np.array([[1.0, -3.0]]))
    array([[1., 9.]])
    >>> sq.backward(np.array([[1.0, 1.0]]))
    array([[ 2., -6.]])
    """

    def __init__(self, f, jacobian, n_out=None):
        if not callable(f) or not callable(jacobian):
            raise TypeError("VectorActivation needs callables f(z) and jacobian(z)")
        self.f, self.jacobian, self.n_out = f, jacobian, n_out
        self.keeps_width = n_out is None

    def infer(self, n_in):
        return self.n_out if self.n_out is not None else n_in

    def _apply(self, z, train):
        M = self.n_out if self.n_out is not None else z.shape[1]
        return _map_rows(self.f, z, (M,), "f"), z

    def _backprop(self, z, dy, need_dx=True):
        J = _map_rows(self.jacobian, z, (dy.shape[1], z.shape[1]), "jacobian")
        dz = np.empty_like(z)
        KV.jacobian_vjp(J, dy, dz)
        return dz

    def __repr__(self):
        return f"VectorActivation({getattr(self.f, '__name__', 'f')})"
