"""scikit-learn drop-in estimators: ``MLPClassifier`` and ``MLPRegressor`` trained by fastbp.

Changing ``from sklearn.neural_network import MLPClassifier`` to
``from fastbp.sklearn import MLPClassifier`` is all a user does: the constructor parameters,
their meanings, the fitted attributes and the methods are scikit-learn's. Training runs
scikit-learn's epoch loop (the same shuffling of the same generator, the same batches and
stopping rules) with each minibatch one compiled :meth:`fastbp.Sequential.train_step`;
prediction runs through :meth:`fastbp.Sequential.predict`.

Where the two differ, and why
-----------------------------
- ``alpha`` (L2 penalty). scikit-learn adds ``alpha * W / rows`` to the gradient of the
  weights only (not the intercepts) and ``0.5 * alpha * ||W||^2 / rows`` to each batch's loss
  (rows: the rows in the batch). fastbp's optimizers decay every parameter, so before each
  minibatch the estimators set ``weight_decay = alpha / rows`` on :class:`fastbp.SGD` (which adds
  ``wd * p`` to the gradient: exactly scikit-learn's term for the weights, plus the same term
  on the intercepts) and on :class:`fastbp.Adam` (which decays decoupled, AdamW-style,
  ``p -= lr * wd * p`` per step, where scikit-learn feeds the L2 term through Adam's moment
  estimates). ``loss_`` and ``loss_curve_`` add scikit-learn's penalty
  ``0.5 * alpha * ||W||^2 / w_b`` per batch (w_b: the batch's rows or total sample weight),
  counted by the batch's rows, from the weights at the end of each epoch.
  With ``alpha=0`` SGD and Adam follow scikit-learn's trajectory to rounding (same initial
  weights from ``random_state``, same shuffles, same batches); with ``alpha > 0`` they differ
  by the decay of the intercepts (SGD) and by decoupled decay (Adam). ``solver='lbfgs'``
  applies the penalty exactly as scikit-learn does (weights only, in the loss and gradient).
- Adam's epsilon: scikit-learn divides by ``sqrt(v) + eps`` with the bias correction moved into
  the step size, fastbp by ``sqrt(v_hat) + eps``; the estimators pass fastbp
  ``eps / sqrt(1 - beta_2^t)`` at step t, which makes the two updates equal.
- ReLU's derivative at 0 is 0 in the hidden layers, as in scikit-learn (fastbp's own default is
  the seed's 1).
- Sparse input is accepted and converted to a dense array (fastbp's kernels are dense).
- A step whose loss or gradient is not finite: scikit-learn trains on with NaN weights; fastbp
  refuses the step. With ``early_stopping`` the result is the same as scikit-learn's (the
  remaining epochs' ``loss_curve_`` and ``validation_scores_`` entries are NaN up to
  ``max_iter``, a ``ConvergenceWarning``, the best parameters kept); without, both raise
  ValueError.
"""

import copy
import math
import warnings
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import scipy.sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from . import _checks, engine
from . import io as _io
from ._config import get_num_threads, set_num_threads
from .errors import TrainingError
from .lbfgs import LBFGS, NON_FINITE
from .losses import KL, L2, BinaryKL, Poisson
from .network import Sequential
from .nodes import Dropout, Exp, Linear, Node, ReLU, Sigmoid, _Scalar
from .nodes import activation as _activation_node
from .optim import SGD, Adam
from .training import History, epoch_loop
from .vector import Softmax

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

try:
    from sklearn.utils._param_validation import Interval, Options, StrOptions
except ImportError:  # pragma: no cover
    Interval = Options = StrOptions = None

try:  # a ValueError and a TypeError, what scikit-learn raises for a parameter out of its options
    from sklearn.utils._param_validation import InvalidParameterError
except ImportError:  # pragma: no cover - older scikit-learn
    InvalidParameterError = ValueError

__all__ = ["MLPClassifier", "MLPRegressor"]

_SKLEARN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
# Hidden activations: scikit-learn's and fastbp's other elementwise ones ('sigmoid', 'linear' and
# 'none' are accepted as aliases). Softmax maps a whole row: an output activation, which
# scikit-learn refuses for hidden layers, and so do the estimators.
_HIDDEN_ACTIVATIONS = _SKLEARN_ACTIVATIONS + ("leaky_relu", "rrelu", "softplus", "elu", "gelu",
                                               "exp")
_OUTPUT_NODES = {"softmax": Softmax, "logistic": Sigmoid, "exp": Exp}


def _hidden_node(activation):
    """The hidden activation node for an activation name (a new one per layer) or a copy of a
    fastbp elementwise activation node; 'relu' gets scikit-learn's f'(0) = 0."""
    if isinstance(activation, Node):
        return copy.deepcopy(activation)
    if str(activation).lower() == "relu":
        return ReLU(grad_at_zero=0.0)
    return _activation_node(activation)


def _build_network(layer_units, activation, out_activation, dtype, random_state, dropout=0.0):
    """Linear layers with ``activation`` between them (and ``Dropout(dropout)`` after each, if
    > 0) and the output node; parameters drawn as scikit-learn draws them (Glorot uniform,
    bound sqrt(6 / (fan_in + fan_out)), sqrt(2 / ...) for 'logistic', intercepts from the same
    range), from ``random_state`` in the same order, then the dropout seeds."""
    nodes, linears = [], []
    for k, (n_in, n_out) in enumerate(zip(layer_units[:-1], layer_units[1:])):
        linears.append(Linear(n_in, n_out, init="zeros"))
        nodes.append(linears[-1])
        if k < len(layer_units) - 2:
            nodes.append(_hidden_node(activation))
            if dropout > 0:
                nodes.append(Dropout(dropout))
    if out_activation in _OUTPUT_NODES:
        nodes.append(_OUTPUT_NODES[out_activation]())
    net = Sequential(*nodes, dtype=dtype, seed=0)
    logistic = isinstance(activation, Sigmoid) or str(activation).lower() in ("logistic",
                                                                              "sigmoid")
    factor = 2.0 if logistic else 6.0
    for lin in linears:
        bound = np.sqrt(factor / (lin.n_in + lin.n_out))
        lin.W[...] = random_state.uniform(-bound, bound, (lin.n_in, lin.n_out)).T
        lin.b[...] = random_state.uniform(-bound, bound, lin.n_out)
    for node in net.nodes:
        if isinstance(node, Dropout):
            node.seed = int(random_state.randint(1 << 30)) << 23 | \
                int(random_state.randint(1 << 23))
    return net


def _linears(net):
    return [node for node in net.nodes if isinstance(node, Linear)]


def _dense(X):
    return X.toarray() if scipy.sparse.issparse(X) else X


@contextmanager
def _threads(n):
    """Run with ``n`` numba/BLAS threads (None: leave them as they are)."""
    if n is None:
        yield
        return
    before = get_num_threads()
    set_num_threads(int(n))
    try:
        yield
    finally:
        set_num_threads(before)


def _set_rate(opt, lr):
    """Change SGD's learning rate as scikit-learn does. Its momentum keeps each past step at
    the rate it was taken with (u = mu u - lr g, p += u); fastbp's, PyTorch's, applies the
    current rate to the whole velocity (v = mu v + g, p -= lr v). Scaling v by old / new rate
    when the rate changes makes the two the same."""
    v = opt.state.get("v") if isinstance(opt, SGD) and opt.momentum else None
    if v is not None and lr != opt.lr:
        v *= opt.lr / lr
    opt.lr = lr


def _store_params(estimator, params):
    """Keep each constructor argument as an attribute of the same name, as given (scikit-learn's
    rule for ``__init__``; its signature names the parameters)."""
    for name, value in params.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


class _BaseMLP(BaseEstimator):
    """Shared machinery of :class:`MLPClassifier` and :class:`MLPRegressor`."""

    if Interval is not None:
        _parameter_constraints: dict = {
            "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
            "activation": [str, Node],
            "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
            "alpha": [Interval(Real, 0, None, closed="left")],
            "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
            "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
            "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
            "power_t": [Interval(Real, 0, None, closed="left")],
            "max_iter": [Interval(Integral, 1, None, closed="left")],
            "shuffle": ["boolean"],
            "random_state": ["random_state"],
            "tol": [Interval(Real, 0, None, closed="left")],
            "verbose": ["verbose"],
            "warm_start": ["boolean"],
            "momentum": [Interval(Real, 0, 1, closed="both")],
            "nesterovs_momentum": ["boolean"],
            "early_stopping": ["boolean"],
            "validation_fraction": [Interval(Real, 0, 1, closed="left")],
            "beta_1": [Interval(Real, 0, 1, closed="left")],
            "beta_2": [Interval(Real, 0, 1, closed="left")],
            "epsilon": [Interval(Real, 0, None, closed="neither")],
            "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                                 Options(Real, {np.inf})],
            "max_fun": [Interval(Integral, 1, None, closed="left")],
            "dtype": "no_validation",
            "n_threads": [Interval(Integral, 1, None, closed="left"), None],
            "dropout": [Interval(Real, 0, 1, closed="left")],
            "clip_norm": [Interval(Real, 0, None, closed="neither"), None],
            "callbacks": ["array-like", None],
        }

    # -- fitted attributes that live in the network ------------------------------------------
    @property
    def coefs_(self):
        """Weight matrices in scikit-learn's (n_in, n_out) layout: writable views of the
        network's W (shape (out, in)), so writing into them changes the network."""
        if "network_" not in self.__dict__:
            raise AttributeError("coefs_ exists after fit")
        return [lin.W.T for lin in _linears(self.network_)]

    @coefs_.setter
    def coefs_(self, coefs):
        self._set_layers(coefs, "W", lambda a: np.asarray(a).T)

    @property
    def intercepts_(self):
        """Bias vectors, writable views of the network's b."""
        if "network_" not in self.__dict__:
            raise AttributeError("intercepts_ exists after fit")
        return [lin.b for lin in _linears(self.network_)]

    @intercepts_.setter
    def intercepts_(self, intercepts):
        self._set_layers(intercepts, "b", np.asarray)

    def _set_layers(self, arrays, attr, convert):
        check_is_fitted(self)
        lins = _linears(self.network_)
        if len(arrays) != len(lins):
            raise ValueError(f"expected {len(lins)} arrays, got {len(arrays)}")
        new = [convert(a) for a in arrays]
        for k, (lin, a) in enumerate(zip(lins, new)):
            if a.shape != getattr(lin, attr).shape:
                raise ValueError(f"layer {k}: shape {a.shape} does not fit "
                                 f"{getattr(lin, attr).shape}")
        for lin, a in zip(lins, new):
            getattr(lin, attr)[...] = a

    @property
    def validation_loss_curve_(self):
        """fastbp extra: the validation loss after every epoch (with ``early_stopping``, on the
        held-out ``validation_fraction``; None otherwise)."""
        if "_validation_loss_curve" not in self.__dict__:
            raise AttributeError("validation_loss_curve_ exists after fit")
        return self._validation_loss_curve

    def __sklearn_is_fitted__(self):
        return "network_" in self.__dict__

    # -- pickling: the network's W and b are views into one flat buffer, rebuild them --------
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else dict(vars(self))
        state = dict(state)
        net = state.pop("network_", None)
        if net is not None:
            state["_network_state"] = (_io.architecture(net), net.flat_params.copy())
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop("_network_state", None)
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:  # pragma: no cover
            self.__dict__.update(state)
        if saved is not None:
            arch, flat = saved
            net = _io.build(arch)
            net.flat_params[...] = flat
            self.network_ = net

    # -- validation -----------------------------------------------------------------------
    def _check_params(self):
        if hasattr(self, "_validate_params") and Interval is not None:
            self._validate_params()
        try:
            node = _hidden_node(self.activation)
        except ValueError:
            node = None
        if not isinstance(node, _Scalar):
            why = "unknown activation" if node is None else "not elementwise: an output activation"
            raise InvalidParameterError(
                f"The 'activation' parameter of {type(self).__name__} must be a str among "
                f"{{{', '.join(map(repr, sorted(_HIDDEN_ACTIVATIONS)))}}}. "
                f"Got {self.activation!r} instead ({why}).")
        dt = np.dtype(self.dtype) if self.dtype is not None else None
        if dt not in (None, np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64 (or None: as the input), got "
                            f"{self.dtype!r}")
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(isinstance(s, bool) or not isinstance(s, Integral) or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes], dt

    def _validate_X(self, X, reset):
        X = _validate_data(self, X, accept_sparse=["csr", "csc"], reset=reset,
                           dtype=(np.float64, np.float32))
        return _dense(X)

    # -- fitting --------------------------------------------------------------------------
    def _fit(self, X, y, incremental=False, sample_weight=None):
        hidden, dtype = self._check_params()
        first_pass = "network_" not in self.__dict__ or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        X = _dense(X)
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if getattr(self, "class_weight", None) is not None:
            cw = compute_sample_weight(self.class_weight, y)
            weights = cw if weights is None else weights * cw
        if weights is not None:
            weights = _checks.sample_weight(weights, X.shape[0])
        if dtype is None:  # as scikit-learn: float32 input stays float32 (but for L-BFGS-B,
            # which scipy runs in float64), any other float64
            dtype = self.network_.dtype if not first_pass else np.dtype(np.float64) \
                if self.solver == "lbfgs" else X.dtype
        target, n_outputs = self._target(y)
        layer_units = [X.shape[1]] + hidden + [n_outputs]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(layer_units, dtype)
        else:
            units = [lin.n_in for lin in _linears(self.network_)] + [self.network_.n_out]
            if units != layer_units:
                raise ValueError(f"warm_start/partial_fit with layer sizes {layer_units}, but the "
                                 f"fitted network has {units}")
            if self.network_.dtype != dtype:
                self.network_ = self.network_.astype(dtype)
        target = self._loss().target(target, X.shape[0], n_outputs, np.float64)  # y's range
        with _threads(self.n_threads):
            if self.solver == "lbfgs":
                self._fit_lbfgs(X, target, weights)
            else:
                self._fit_stochastic(X, y, target, incremental, weights)
        return self

    def _initialize(self, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = layer_units[-1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        self.network_ = _build_network(layer_units, self.activation, self.out_activation_, dtype,
                                       self._random_state, self.dropout)
        self.__dict__.pop("_optimizer", None)
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._validation_loss_curve = [] if self.early_stopping else None
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None
        else:
            self._validation_loss_curve = None

    def _loss(self):
        return {"identity": L2, "exp": Poisson, "softmax": KL}.get(self.out_activation_,
                                                                   BinaryKL)()

    def _scale(self):
        # scikit-learn's squared_error is 1/2 the squared error averaged over the outputs;
        # fastbp's L2 sums over the outputs (the gradient is the same: scikit-learn's delta is
        # y - d for each output, not divided by the number of outputs).
        return 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0

    def _penalty(self):
        return 0.5 * self.alpha * sum(float(np.dot(c.ravel(), c.ravel())) for c in
                                      (lin.W for lin in _linears(self.network_)))

    def _make_optimizer(self, batch_size):
        wd = self.alpha / batch_size
        if self.solver == "sgd":
            return SGD(lr=self.learning_rate_init, momentum=self.momentum,
                       nesterov=bool(self.nesterovs_momentum) and self.momentum > 0,
                       weight_decay=wd, clip_norm=self.clip_norm)
        return Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                    eps=self.epsilon, weight_decay=wd, clip_norm=self.clip_norm)

    def _fit_stochastic(self, X, y, target, incremental, weights=None):
        """scikit-learn's epochs (same shuffling, same batches, same stopping rules) through
        ``fastbp.training.epoch_loop``, the loop of ``fb.fit``; each minibatch one compiled
        step. A step that is not finite ends the fit as scikit-learn's would end: with early
        stopping, the remaining epochs' losses and scores are NaN and the best parameters are
        kept; without, a ValueError."""
        net, loss = self.network_, self._loss()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X = np.ascontiguousarray(X, dtype=net.dtype)
        n = X.shape[0]
        validation = None
        if self.early_stopping:
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            i_train, i_val = train_test_split(np.arange(n), random_state=self._random_state,
                                              test_size=self.validation_fraction,
                                              stratify=stratify)
            if i_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            validation = (X[i_val], y[i_val], target[i_val],
                          None if weights is None else weights[i_val])
            X, target = X[i_train], target[i_train]
            weights = None if weights is None else weights[i_train]
            n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n))
        if not incremental or "_optimizer" not in self.__dict__:
            self._optimizer = self._make_optimizer(batch_size)
        opt = self._optimizer
        adam = isinstance(opt, Adam)
        scale = self._scale()
        sample_idx = np.arange(n)
        best, before = None, net.flat_params.copy()
        self.n_iter_ = 0
        penalty_share = 0.0  # sum over the epoch's batches of rows / batch weight

        def order_of(epoch):
            nonlocal sample_idx
            if not self.shuffle:
                return None
            # sklearn.utils.shuffle's draw (without its per-call validation cost)
            perm = np.arange(n)
            self._random_state.shuffle(perm)
            sample_idx = sample_idx[perm]
            return sample_idx

        def before_step(rows, weight):
            nonlocal penalty_share
            # scikit-learn's penalty 0.5 alpha ||W||^2 / (the batch's weight), in the gradient
            # and in the batch's loss, which counts by its rows in the epoch's
            penalty_share += rows / weight
            opt.weight_decay = self.alpha / weight
            if adam:
                # scikit-learn divides by sqrt(v) + eps with the bias correction in the step
                # size; fastbp by sqrt(v_hat) + eps: this eps makes them equal.
                opt.eps = self.epsilon / math.sqrt(1 - self.beta_2 ** (opt.t + 1))

        def end_epoch(epoch, t0):
            nonlocal best, penalty_share
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = history.loss[-1] * scale + self._penalty() * penalty_share / n
            penalty_share = 0.0
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
            if validation is not None:
                best = self._validate_epoch(validation, loss, scale, best)
            else:
                self._update_no_improvement_count()
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                _set_rate(opt, float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t)
            if validation is not None:  # for callbacks: the records fb.fit keeps
                history.val_loss.append(self._validation_loss_curve[-1])
                if is_classifier(self):
                    history.val_accuracy.append(self.validation_scores_[-1])
            if any(cb(epoch, history, net) for cb in self.callbacks or ()):
                if self.verbose:
                    print("A callback stopped training.")
                return True
            return self._no_improvement_count > self.n_iter_no_change and \
                self._trigger_stopping(opt, validation is not None)

        history = History()
        net.train()
        try:
            stopped = epoch_loop(net, X, target, loss, opt, batch_size,
                                 range(1 if incremental else self.max_iter), order_of,
                                 end_epoch, history, engine.chooses(net, loss, target, opt),
                                 before_step=before_step, weights=weights, by_rows=True)
        except TrainingError as e:
            if validation is None or best is None:
                net.flat_params[...] = before
                raise ValueError("Solver produced non-finite parameter weights. The input data "
                                 "may contain large values and need to be preprocessed.") from e
            self._diverged(n)
            stopped = False
        if not stopped and not incremental:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                          "optimization hasn't converged yet." % self.max_iter,
                          ConvergenceWarning)
        if best is not None:
            net.flat_params[...] = best

    def _diverged(self, n):
        """After a step that was not finite, with early stopping: scikit-learn trains on with
        NaN weights, so every remaining epoch's loss and validation score is NaN (and its
        count of epochs without improvement stays 0) until ``max_iter``; then it puts back the
        best parameters, as the caller does."""
        for _ in range(self.n_iter_, self.max_iter):
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = np.nan
            self.loss_curve_.append(np.nan)
            self.validation_scores_.append(np.nan)
            self._validation_loss_curve.append(np.nan)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                print("Validation score: %f" % np.nan)

    def _trigger_stopping(self, opt, early_stopping):
        """scikit-learn's rule: stop, or with SGD's 'adaptive' schedule divide lr by 5."""
        what = "Validation score" if early_stopping else "Training loss"
        msg = (f"{what} did not improve more than tol={self.tol:f} for "
               f"{self.n_iter_no_change} consecutive epochs.")
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if opt.lr <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        _set_rate(opt, opt.lr / 5.0)
        if self.verbose:
            print(msg + " Setting learning rate to %f" % opt.lr)
        self._no_improvement_count = 0
        return False

    def _validate_epoch(self, validation, loss, scale, best):
        """Validation score (accuracy or R^2) for early stopping, and the validation loss."""
        X_val, y_val, t_val, w_val = validation
        try:
            Y = self.network_.predict(X_val)
        except FloatingPointError:  # outputs overflowed: no loss, and scikit-learn's NaN score
            Y = None
        if Y is not None and self.out_activation_ in ("softmax", "logistic"):
            eps = np.finfo(Y.dtype).eps  # as scikit-learn's log_loss: clip to [eps, 1-eps]
            Y = np.clip(Y, eps, 1 - eps)
        self._validation_loss_curve.append(np.nan if Y is None else
                                           float(loss(Y, t_val, w_val)) * scale)
        score = self._score_raw(X_val, y_val, w_val)
        self.validation_scores_.append(score)
        if self.verbose:
            print("Validation score: %f" % score)
        if score < self.best_validation_score_ + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            best = self.network_.flat_params.copy()
        return best

    def _update_no_improvement_count(self):
        if self.loss_curve_[-1] > self.best_loss_ - self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])

    def _fit_lbfgs(self, X, target, weights=None):
        net, loss = self.network_, self._loss()
        scale = self._scale()
        n = X.shape[0] if weights is None else float(weights.sum())  # the penalty's divisor
        mask = np.zeros(net.flat_params.size, bool)
        o = 0
        for p, name in zip(net.params, net.param_names):
            if name.endswith(".W"):
                mask[o:o + p.size] = True
            o += p.size
        X = np.ascontiguousarray(X, dtype=net.dtype)

        def value_and_grad(p):
            net.flat_params[...] = p
            value = net.loss_and_grad(X, target, loss, sample_weight=weights)
            W = p[mask]
            g = net.flat_grads.astype(np.float64)
            g[mask] += self.alpha * W / n
            return value + 0.5 * self.alpha * float(W @ W) / n, g

        res = LBFGS(maxfun=self.max_fun, maxiter=self.max_iter, gtol=self.tol).fit_flat(
            value_and_grad, net.flat_params)
        if res.message.startswith(NON_FINITE):
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        self.n_iter_ = int(min(res.nit, self.max_iter))
        if res.status != 0:
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                          f"(status={res.status}): {res.message}", ConvergenceWarning)
        self.loss_ = net.loss_and_grad(X, target, loss, sample_weight=weights) * scale + \
            self._penalty() / n

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default None
            Per-instance weights: each batch's loss (and the L2 penalty) is divided by the
            batch's total weight, as scikit-learn does; the early-stopping split carries its
            weights and the validation score is weighted.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    # -- prediction ------------------------------------------------------------------------
    def _forward(self, X, check_input=True):
        check_is_fitted(self)
        if check_input:
            X = self._validate_X(X, reset=False)
        with _threads(self.n_threads):
            return self.network_.predict(X)

    def _score_raw(self, X, y, sample_weight=None):
        try:
            y_pred = self._predict(X, check_input=False)
        except FloatingPointError:  # outputs that overflowed: scikit-learn's score is NaN
            return np.nan
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return (accuracy_score if is_classifier(self) else r2_score)(
            y, y_pred, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multilabel": is_classifier(self)}


_COMMON_DOC = """
    Parameters
    ----------
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
    learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
    momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon,
    n_iter_no_change, max_fun
        As in scikit-learn, with one extension: ``activation`` is any elementwise fastbp
        activation name (scikit-learn's 'identity', 'logistic', 'tanh', 'relu', and
        'leaky_relu', 'elu', 'gelu', 'softplus', 'rrelu', 'exp', 'sigmoid') or node (e.g.
        ``fastbp.LeakyReLU(0.2)``, copied for each layer); 'softmax' is refused as
        scikit-learn refuses it (``InvalidParameterError``, a ``ValueError``).
        ``solver='lbfgs'`` minimises the full-batch loss with :class:`fastbp.LBFGS`, which
        takes the steps of scipy's L-BFGS-B (``max_iter``, ``max_fun``, ``tol`` as in
        scikit-learn).
    dtype : float32, float64 or None, default None
        fastbp extra: the dtype of the network's parameters and computations. None: as
        scikit-learn, the input's (float32 input gives float32 ``coefs_``, ``intercepts_``
        and predictions, except with ``solver='lbfgs'``, which works in float64; any other
        input float64); a later ``partial_fit`` or warm start keeps the network's.
    n_threads : int or None, default None
        fastbp extra: threads for fit and predict (None: the current ``fastbp.get_num_threads``).
    class_weight : dict, 'balanced' or None, default None
        fastbp extra (classifier): weights of the classes, as in scikit-learn's
        LogisticRegression: each row's weight is its class's (times its ``sample_weight``);
        'balanced' gives n_samples / (n_classes * count of the class).
    dropout : float in [0, 1), default 0
        fastbp extra: ``fastbp.Dropout(dropout)`` after every hidden activation (masks keyed
        by a seed drawn from ``random_state``, so a fit is reproducible); 0: none.
    clip_norm : float or None, default None
        fastbp extra: clip the gradient by its global norm before each SGD or Adam step
        (PyTorch's ``clip_grad_norm_``).
    callbacks : list of callables or None, default None
        fastbp extra: ``cb(epoch, history, network_)`` after every SGD or Adam epoch, as in
        ``fastbp.fit`` (``history.loss``, and with ``early_stopping`` ``history.val_loss`` and,
        for a classifier, ``history.val_accuracy``); one returning True stops training (no
        ConvergenceWarning). ``fastbp.callbacks.BestCheckpoint`` keeps the best network on
        disk.

    Attributes
    ----------
    coefs_, intercepts_, n_layers_, n_outputs_, out_activation_, loss_, best_loss_,
    loss_curve_, validation_scores_, best_validation_score_, n_iter_, t_, n_features_in_,
    feature_names_in_
        As in scikit-learn; ``coefs_[i]`` is a (n_in, n_out) writable view of layer i's W.
    validation_loss_curve_ : list of float or None
        fastbp extra: the validation loss per epoch (with ``early_stopping``).
    network_ : fastbp.Sequential
        fastbp extra: the trained network (``network_.predict``, ``save``, ``fastbp.fit``).

    Notes
    -----
    ``alpha`` is applied as ``weight_decay = alpha / rows`` on every parameter, decoupled with
    Adam (the module docstring of :mod:`fastbp.sklearn` says exactly how this differs from
    scikit-learn).
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's interface, fastbp's training.

    Multiclass targets get a softmax output and the KL divergence (cross-entropy); binary
    targets one logistic output and binary KL; multilabel indicator targets one logistic output
    per label, as scikit-learn chooses.
    """ + _COMMON_DOC + """
    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from fastbp.sklearn import MLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=30, random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.95
    True
    """

    if Interval is not None:
        _parameter_constraints = {**_BaseMLP._parameter_constraints,
                                  "class_weight": [dict, StrOptions({"balanced"}), None]}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=None, n_threads=None, class_weight=None, dropout=0.0, clip_norm=None,
                 callbacks=None):
        _store_params(self, locals())

    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if "classes_" not in self.__dict__ or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the "
                        f"previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, y

    def _target(self, y):
        Y = self._label_binarizer.transform(y)
        if self._label_binarizer.y_type_ == "multiclass":
            return np.ascontiguousarray(Y.argmax(axis=1), dtype=np.int64), Y.shape[1]
        return np.ascontiguousarray(Y, dtype=np.float64), Y.shape[1]

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with a single epoch over the given data (weighted by
        ``sample_weight``, as in :meth:`fit`).

        ``classes`` (all the labels, ``np.unique(y_all)``) is required on the first call.
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X):
        """The predicted classes, shape (n_samples,) or (n_samples, n_classes) (multilabel)."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self)
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            p = y_pred.ravel()
            return np.vstack([1 - p, p]).T
        return y_pred

    def predict_log_proba(self, X):
        """log of :meth:`predict_proba`."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, scikit-learn's interface, fastbp's training.

    Identity output and the squared error: fastbp trains on :class:`fastbp.L2`
    (1/2 ||y - d||^2 per instance, the gradient scikit-learn uses), and reports ``loss_`` as
    scikit-learn does (1/2 the squared error averaged over instances and outputs, plus the
    ``alpha`` penalty).

    Parameters
    ----------
    loss : {'squared_error', 'poisson'}
        'poisson': half the Poisson deviance through the log link (an :class:`fastbp.Exp`
        output and :class:`fastbp.Poisson`, trained by its fused gradient), for y >= 0.
    """ + _COMMON_DOC + """
    Examples
    --------
    >>> import numpy as np
    >>> from fastbp.sklearn import MLPRegressor
    >>> X = np.random.default_rng(0).uniform(-1, 1, size=(200, 2))
    >>> y = X[:, 0] ** 2 - X[:, 1]
    >>> reg = MLPRegressor((32,), activation="tanh", max_iter=300, random_state=0).fit(X, y)
    >>> reg.score(X, y) > 0.9
    True
    """

    if Interval is not None:
        _parameter_constraints = {**_BaseMLP._parameter_constraints,
                                  "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=None, n_threads=None, dropout=0.0, clip_norm=None, callbacks=None):
        _store_params(self, locals())

    def _check_params(self):
        out = super()._check_params()
        if self.loss not in ("squared_error", "poisson"):
            raise InvalidParameterError(f"The 'loss' parameter of MLPRegressor must be a str "
                                        f"among {{'poisson', 'squared_error'}}. Got "
                                        f"{self.loss!r} instead.")
        return out

    def _out_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _target(self, y):
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        return np.ascontiguousarray(Y, dtype=np.float64), Y.shape[1]

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with a single epoch over the given data (weighted by
        ``sample_weight``, as in :meth:`fit`)."""
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X):
        """The predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)
