"""Divergences: the loss is the mean divergence over instances, Loss = (1/T) sum_t Div(Y_t, d_t).

Each divergence gives the loss value (``loss(Y, d)``) and its gradient with respect to Y with the
1/T already applied (``loss.grad(Y, d)``), so ``net.backward(loss.grad(Y, d))`` yields dLoss/dW.

With per-instance weights w_t >= 0 (``sample_weight``) the loss is the weighted mean
Loss = sum_t w_t Div(Y_t, d_t) / sum_t w_t, scikit-learn's normalisation: a weight of 2 counts as
the row given twice, and weights that are all equal give the unweighted loss.
"""

import numpy as np

from . import _checks
from .errors import Unsupported
from .kernels import divergences as KDiv
from .nodes import Exp, Sigmoid, Softplus, sized
from .vector import Softmax, VectorActivation


class Divergence:
    """Base class: subclasses provide ``target``, ``_kernel`` and optionally ``_fused``."""

    fuses_with = None  # the node that ends a network made for this divergence
    also_fits = ()  # other last nodes whose outputs fit it (no warning)
    expects = None  # what that node gives, for messages: "probability outputs"

    def __call__(self, Y, d, sample_weight=None):
        """The mean divergence over the rows of Y (weighted by ``sample_weight``)."""
        return self.value_and_grad(*self._prepare(Y, d, sample_weight))[0]

    def grad(self, Y, d, sample_weight=None):
        """dLoss/dY = (1/T) dDiv/dY (w_t / sum w dDiv/dY with weights), same shape as Y."""
        return self.value_and_grad(*self._prepare(Y, d, sample_weight))[1]

    def _prepare(self, Y, d, sample_weight=None):
        Y = np.asarray(Y)
        dtype = Y.dtype if Y.dtype in _checks.FLOAT_DTYPES else np.float64
        Y = _checks.as_float_array(Y, "Y", dtype)
        target = self.target(d, Y.shape[0], Y.shape[1], dtype)
        return Y, target, _checks.sample_weight(sample_weight, Y.shape[0])

    def value_and_grad(self, Y, target, weights=None, norm=None):
        """(mean divergence, dLoss/dY) for a prepared target and weights (None: unweighted;
        else float64 weights as ``_checks.sample_weight`` gives them). With ``norm``, the
        weight of a larger batch these rows are part of: their share of its mean and of its
        gradient (an MPI step's block, as the engine's loss op computes it)."""
        div = np.empty(Y.shape[0], np.float64)
        dY = np.empty_like(Y)
        scale = _scale(Y.shape[0], weights, norm)
        sized(self._kernel(target), Y.size)(Y, target, div, dY, scale)
        return _mean(div, dY, weights, norm, scale), dY

    def fused(self, node, ctx, target, weights=None, norm=None):
        """(value, dLoss/dz) through the fused stable form when ``node`` ends the network and
        this divergence fuses with it; else None. The kernel writes the node's output y in
        ``ctx`` again, in the same bits (the engine's training step, which runs no forward
        of that node, takes y from it)."""
        if self.fuses_with is None or type(node) is not self.fuses_with:
            return None
        z, y = ctx
        div = np.empty(z.shape[0], np.float64)
        dz = np.empty_like(z)
        scale = _scale(z.shape[0], weights, norm)
        sized(self._fused_kernel(target), z.size)(z, y, target, div, dz, scale)
        return _mean(div, dz, weights, norm, scale), dz

    def built_in(self):
        """Whether this is one of fastbp's divergences, computing through ``_kernel`` as the
        engine does (not a user's subclass)."""
        cls = type(self)
        return hasattr(cls, "_kernel") and cls.value_and_grad is Divergence.value_and_grad \
            and cls.fused is Divergence.fused and cls.__module__.startswith("fastbp.")

    def engine_loss(self, last, target):
        """The engine's loss stage after the node ``last``: (leaf kernel, fused), the same
        kernels as ``value_and_grad`` and ``fused``; ``Unsupported`` for a divergence that
        computes otherwise (a user's subclass). A fused kernel writes ``last``'s output from
        z itself, in the bits of ``last``'s forward, which a training step then leaves out."""
        cls = type(self)
        if not self.built_in():
            raise Unsupported(f"{cls.__name__} is not a built-in divergence")
        if self.fuses_with is not None and type(last) is self.fuses_with:
            return self._fused_kernel(target), True
        return self._kernel(target), False

    def output_hint(self, net):
        """A sentence naming the likely cause of trouble when ``net`` ends in a built-in node
        other than the one this divergence expects (``KL`` without ``Softmax``), else None."""
        last = net
        while hasattr(last, "nodes"):  # the last node inside nested Sequentials
            last = last.nodes[-1]
        # A user's node or VectorActivation may well give probabilities; no built-in node but
        # ``fuses_with`` does (a Sigmoid's outputs do not sum to 1, a Softmax's single output
        # is always 1).
        user = isinstance(last, VectorActivation) or \
            not type(last).__module__.startswith("fastbp.")
        if self.fuses_with is None or isinstance(last, (self.fuses_with, *self.also_fits)) \
                or user:
            return None
        return (f"{type(self).__name__} expects {self.expects}: end the network with "
                f"fb.{self.fuses_with.__name__}() (it ends in {type(last).__name__})")

    def __repr__(self):
        return f"{type(self).__name__}()"

    def config(self):
        return {}


def correct_rows(Y, target):
    """Per row, whether ``correct`` counts it as classified right (a bool array)."""
    if Y.shape[1] == 1 and target.ndim == 2:
        return (Y[:, 0] >= 0.5) == (target[:, 0] >= 0.5)
    return Y.argmax(axis=1) == (target if target.ndim == 1 else target.argmax(axis=1))


def _scale(rows, weights, norm=None):
    """The gradient's scale, as the engine's loss op: 1 / norm, or 1 / the rows' weight."""
    if norm:
        return 1.0 / norm
    return 1.0 / rows if weights is None else KDiv.weight_scale(KDiv.total(weights))


def _mean(div, grad, weights, norm, scale):
    """The batch's (weighted) mean divergence, or with ``norm`` its share of the larger
    batch's; with weights, ``grad``'s rows are weighted too."""
    if weights is not None:
        return KDiv.weighted_mean(div, grad, weights, scale)
    return KDiv.total(div) * scale if norm else KDiv.mean(div)


def correct(Y, target):
    """Rows of the outputs Y classified right for a prepared target (argmax for class labels
    or probability rows, y >= 0.5 for one output; see ``kernels.divergences.correct``)."""
    labels = target if target.ndim == 1 else np.zeros(0, np.int64)
    d = target if target.ndim == 2 else Y[:0]
    return KDiv.correct(Y, labels, d)


def _float_target(d, rows, width, dtype, name="d"):
    d = _checks.as_numeric(d, name)
    if d.ndim == 1 and width == 1:
        d = d.reshape(-1, 1)
    if d.ndim != 2:
        raise ValueError(f"{name} must be 2-D (T, {width}), got shape {d.shape}")
    _checks.check_rows(d, name, rows, "input")
    if d.shape[1] != width:
        raise ValueError(f"{name} has {d.shape[1]} columns but the output has {width} "
                         f"(shape {d.shape})")
    d = np.ascontiguousarray(d, dtype=dtype)
    _checks.check_finite(d, name)
    return d


class L2(Divergence):
    """Div(y, d) = 1/2 ||y - d||^2; dDiv/dy = y - d.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> fb.L2()(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]]))
    2.5
    """

    def target(self, d, rows, width, dtype):
        return _float_target(d, rows, width, dtype)

    def _kernel(self, target):
        return KDiv.l2


class KL(Divergence):
    """Div(y, d) = sum_i d_i log(d_i / y_i), for probability outputs (a softmax).

    ``d`` is class indices (T,) or probability rows (T, K); for one-hot d this is the
    cross-entropy -log y_c. After a ``Softmax``, training uses the fused gradient (y - d) / T
    with the loss from log-sum-exp of the logits, finite even for logits of +-1000.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> round(fb.KL()(np.array([[0.5, 0.25, 0.25]]), np.array([0])), 6)
    0.693147
    """

    fuses_with = Softmax
    expects = "probability outputs"

    def target(self, d, rows, width, dtype):
        d = _checks.as_numeric(d, "d")
        if d.ndim == 2 and d.shape[1] == 1 and width > 1:
            raise ValueError(f"d has shape {d.shape}, one column, but the network has {width} "
                             f"outputs: class labels go in a 1-D array, pass d.ravel()")
        if d.ndim == 1:
            if d.dtype.kind not in "iu":
                raise TypeError(f"class labels d must be integers, got dtype {d.dtype}; "
                                f"give probability rows as a 2-D array")
            _checks.check_rows(d, "d", rows, "input")
            if d.size and not _checks.in_range(d, width):
                bad = d[(d < 0) | (d >= width)][0]
                raise ValueError(f"Target {bad} is out of bounds: labels must be in "
                                 f"[0, {width - 1}] for {width} outputs.")
            return np.ascontiguousarray(d, dtype=np.int64)
        d = _float_target(d, rows, width, dtype)
        if (d < 0).any():
            raise ValueError(f"probability targets must be >= 0, found {d.min()}")
        sums = d.sum(axis=1)
        tol = 1e-4 if dtype == np.float32 else 1e-8
        if np.abs(sums - 1).max() > tol * width:
            t = int(np.argmax(np.abs(sums - 1)))
            raise ValueError(f"probability targets must sum to 1 per row; row {t} sums to "
                             f"{sums[t]}")
        return d

    def _kernel(self, target):
        return KDiv.kl_labels if target.ndim == 1 else KDiv.kl_probs

    def _fused_kernel(self, target):
        return KDiv.softmax_kl_labels if target.ndim == 1 else KDiv.softmax_kl_probs


class BinaryKL(Divergence):
    """Div(y, d) = d log(d / y) + (1 - d) log((1 - d) / (1 - y)) per output, summed over
    outputs, for sigmoid outputs with d in [0, 1]. After a ``Sigmoid``, training uses the fused
    gradient (y - d) / T and a loss computed from the logits (finite for logits of +-1000).

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> round(fb.BinaryKL()(np.array([[0.5]]), np.array([1.0])), 6)
    0.693147
    """

    fuses_with = Sigmoid
    expects = "outputs in (0, 1)"

    def target(self, d, rows, width, dtype):
        d = _float_target(d, rows, width, dtype)
        if ((d < 0) | (d > 1)).any():
            bad = d[(d < 0) | (d > 1)][0]
            raise ValueError(f"binary targets must be in [0, 1], found {bad}")
        return d

    def _kernel(self, target):
        return KDiv.binary_kl

    def _fused_kernel(self, target):
        return KDiv.sigmoid_binary_kl


class Poisson(Divergence):
    """Half the Poisson deviance, Div(y, d) = sum_k d log(d / y) - d + y, for counts or rates
    d >= 0 and outputs y > 0 (scikit-learn's ``loss='poisson'``, with 0 log 0 = 0).

    After an ``Exp`` output node (the log link, y = exp(z)), training uses the fused gradient
    dDiv/dz = (y - d) / T and the loss d log d - d z - d + y from z itself.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> round(fb.Poisson()(np.array([[2.0]]), np.array([[1.0]])), 6)  # log(1/2) - 1 + 2
    0.306853
    """

    fuses_with = Exp
    also_fits = (Softplus, Sigmoid, Softmax)  # positive outputs too, trained unfused
    expects = "positive outputs"

    def target(self, d, rows, width, dtype):
        d = _float_target(d, rows, width, dtype)
        if (d < 0).any():
            raise ValueError(f"Poisson targets must be >= 0, found {d[d < 0][0]}")
        return d

    def _kernel(self, target):
        return KDiv.poisson

    def _fused_kernel(self, target):
        return KDiv.exp_poisson
