"""fastbp.sklearn: scikit-learn's conformance suite, and agreement with scikit-learn's own MLPs."""

import io
import pickle
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
from sklearn import neural_network as skn
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

import fastbp as fb
from fastbp.sklearn import MLPClassifier, MLPRegressor

#: SGD/Adam with alpha=0 follow scikit-learn's trajectory to rounding
SAME_PATH_ATOL = 1e-12
#: with alpha > 0 the decay differs (intercepts decayed by SGD, decoupled by Adam)
ALPHA_SGD_ATOL = 1e-3

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _expected_failed_checks(estimator):
    """Checks expected to fail, with the reason: none. (The suite's own skips give their reason:
    array-API input needs SCIPY_ARRAY_API=1, decision_function does not exist on MLPs, pandas
    checks need pandas.)"""
    return {}


@parametrize_with_checks([MLPClassifier(max_iter=100, random_state=0),
                          MLPRegressor(max_iter=100, random_state=0)],
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_conformance(estimator, check):
    check(estimator)


# -- data ------------------------------------------------------------------------------------
def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5))
    return {
        "multiclass": (X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)),
        "binary": (X, np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")),
        "multilabel": (X, (X[:, :3] > 0).astype(int)),
        "regression": (X, np.c_[X[:, 0] ** 2, X[:, 1] - X[:, 2]]),
    }


DATA = _data()
KINDS = {"multiclass": ("softmax", 3), "binary": ("logistic", 1),
         "multilabel": ("logistic", 3), "regression": ("identity", 2)}


def _pair(kind):
    return (MLPRegressor, skn.MLPRegressor) if kind == "regression" else \
        (MLPClassifier, skn.MLPClassifier)


# -- agreement with scikit-learn ----------------------------------------------------------------
@pytest.mark.parametrize("kind", list(DATA))
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_same_trajectory_as_sklearn_without_alpha(kind, solver):
    X, y = DATA[kind]
    ours, theirs = _pair(kind)
    kw = dict(hidden_layer_sizes=(7, 6), activation="tanh", solver=solver, alpha=0.0,
              batch_size=32, max_iter=4, random_state=0, learning_rate_init=0.01)
    a, b = ours(**kw).fit(X, y), theirs(**kw).fit(X, y)
    assert a.out_activation_ == b.out_activation_ == KINDS[kind][0]
    assert a.n_outputs_ == b.n_outputs_ == KINDS[kind][1]
    assert a.n_layers_ == b.n_layers_ == 4
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        assert p.shape == q.shape
        np.testing.assert_allclose(p, q, rtol=0, atol=SAME_PATH_ATOL)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    if kind == "regression":
        np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=0, atol=SAME_PATH_ATOL)
    else:
        np.testing.assert_array_equal(a.predict(X), b.predict(X))


@pytest.mark.parametrize("kind", list(DATA))
@pytest.mark.parametrize("solver, extra", [("sgd", {}), ("adam", {}),
                                           ("adam", {"early_stopping": True}),
                                           ("sgd", {"alpha": 0.01})])
def test_sample_weight_follows_sklearn(kind, solver, extra):
    """Weighted batches (loss and penalty over the batch's weight), a weighted early-stopping
    split and validation score: scikit-learn's trajectory to rounding (with alpha > 0 the
    intercepts' decay differs, as unweighted)."""
    X, y = DATA[kind]
    w = np.random.default_rng(7).uniform(0, 3, size=X.shape[0])
    ours, theirs = _pair(kind)
    kw = dict(hidden_layer_sizes=(7,), activation="tanh", solver=solver, alpha=0.0,
              batch_size=32, max_iter=6, random_state=0, learning_rate_init=0.01)
    kw.update(extra)
    a, b = ours(**kw).fit(X, y, sample_weight=w), theirs(**kw).fit(X, y, sample_weight=w)
    atol = ALPHA_SGD_ATOL if kw["alpha"] else SAME_PATH_ATOL
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(p, q, rtol=0, atol=atol)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-3 if kw["alpha"] else 1e-12)
    if extra.get("early_stopping"):
        np.testing.assert_allclose(a.validation_scores_, b.validation_scores_, rtol=1e-12)
    unweighted = ours(**kw).fit(X, y)
    assert not np.allclose(unweighted.coefs_[0], a.coefs_[0], atol=1e-6)
    # partial_fit takes the weights too
    c, e = ours(**kw), theirs(**kw)
    if not extra.get("early_stopping"):
        classes = {} if kind == "regression" else \
            {"classes": np.unique(y) if kind != "multilabel" else np.arange(3)}
        c.partial_fit(X, y, sample_weight=w, **classes)
        e.partial_fit(X, y, sample_weight=w, **classes)
        np.testing.assert_allclose(c.coefs_[0], e.coefs_[0], rtol=0, atol=atol)


def test_sample_weight_with_lbfgs_and_score():
    X, y = DATA["multiclass"]
    w = np.random.default_rng(8).uniform(0, 3, size=X.shape[0])
    kw = dict(hidden_layer_sizes=(6,), activation="tanh", solver="lbfgs", alpha=1e-3,
              max_iter=30, random_state=0)
    a, b = MLPClassifier(**kw).fit(X, y, sample_weight=w), \
        skn.MLPClassifier(**kw).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(a.loss_, b.loss_, rtol=1e-6)
    assert a.score(X, y, sample_weight=w) == pytest.approx(b.score(X, y, sample_weight=w))
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier(**kw).fit(X, y, sample_weight=w[:-1])


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_poisson_follows_sklearn(solver):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = rng.poisson(np.exp(X @ [0.3, -0.2, 0.1]))
    kw = dict(loss="poisson", hidden_layer_sizes=(6,), activation="tanh", solver=solver,
              alpha=0.0, max_iter=20, random_state=0)
    a, b = MLPRegressor(**kw).fit(X, y), skn.MLPRegressor(**kw).fit(X, y)
    assert a.out_activation_ == b.out_activation_ == "exp"
    assert isinstance(a.network_[-1], fb.Exp)
    rtol = 1e-6 if solver == "lbfgs" else 1e-12
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=rtol)
    np.testing.assert_allclose(a.loss_, b.loss_, rtol=rtol)
    assert a.n_iter_ == b.n_iter_
    with pytest.raises(ValueError, match="Poisson targets must be >= 0"):
        MLPRegressor(**kw).fit(X, y - 5.0)


def test_poisson_with_one_identity_unit_is_a_poisson_regression():
    """One identity hidden unit and an exp output: a Poisson GLM, which L-BFGS fits to the
    same predictions as scikit-learn's PoissonRegressor."""
    from sklearn.linear_model import PoissonRegressor

    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 3))
    y = rng.poisson(np.exp(X @ [0.4, -0.3, 0.2] + 0.1))
    glm = PoissonRegressor(alpha=0, tol=1e-10, max_iter=1000).fit(X, y)
    mlp = MLPRegressor(loss="poisson", hidden_layer_sizes=(1,), activation="identity",
                       solver="lbfgs", alpha=0, tol=1e-12, max_iter=2000,
                       random_state=0).fit(X, y)
    np.testing.assert_allclose(mlp.predict(X), glm.predict(X), rtol=1e-4)


def test_a_diverging_fit_with_early_stopping_ends_as_sklearn_does():
    """scikit-learn trains on with NaN weights: NaN scores up to max_iter, a convergence
    warning, the best (finite) parameters kept."""
    X, y = DATA["regression"]
    kw = dict(hidden_layer_sizes=(8,), activation="identity", solver="sgd",
              learning_rate_init=1.0, early_stopping=True, random_state=0, max_iter=30)
    a = MLPRegressor(**kw)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        a.fit(X, y)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = skn.MLPRegressor(**kw).fit(X, y)
    assert a.n_iter_ == b.n_iter_ == 30 and len(a.validation_scores_) == 30
    assert isinstance(a.validation_scores_[-1], float) and np.isnan(a.validation_scores_[-1])
    assert np.isnan(b.validation_scores_[-1])
    first_nan = [int(np.argmax(np.isnan(v))) for v in (a.validation_scores_,
                                                       b.validation_scores_)]
    assert abs(first_nan[0] - first_nan[1]) <= 1
    assert a.best_validation_score_ == pytest.approx(b.best_validation_score_, rel=1e-6)
    assert np.isfinite(a.network_.flat_params).all()
    # the best epoch came after steps of growing size: rounding grows with them
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-5, atol=1e-5)


# -- fastbp extras: class_weight, dropout, clip_norm, activation nodes, callbacks ---------------
@pytest.mark.parametrize("class_weight", ["balanced", {0: 3.0, 1: 0.5, 2: 1.0}])
def test_class_weight_is_sample_weight_by_class(class_weight):
    from sklearn.utils.class_weight import compute_sample_weight

    X, y = DATA["multiclass"]
    kw = dict(hidden_layer_sizes=(6,), max_iter=5, random_state=0, batch_size=32)
    w = np.random.default_rng(0).uniform(0.5, 2, size=len(y))
    a = MLPClassifier(class_weight=class_weight, **kw).fit(X, y, sample_weight=w)
    b = MLPClassifier(**kw).fit(X, y, sample_weight=w * compute_sample_weight(class_weight, y))
    c = MLPClassifier(**kw).fit(X, y, sample_weight=w)
    assert np.array_equal(a.network_.flat_params, b.network_.flat_params)
    assert not np.array_equal(a.network_.flat_params, c.network_.flat_params)
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight="most", **kw).fit(X, y)


def test_dropout_clip_norm_and_activation_nodes():
    X, y = DATA["multiclass"]
    kw = dict(hidden_layer_sizes=(8, 8), max_iter=4, batch_size=32)
    a = MLPClassifier(dropout=0.25, clip_norm=0.5, activation=fb.ELU(0.5), random_state=0,
                      **kw).fit(X, y)
    kinds = [type(n).__name__ for n in a.network_.nodes]
    assert kinds == ["Linear", "ELU", "Dropout", "Linear", "ELU", "Dropout", "Linear", "Softmax"]
    assert a.network_[1].alpha == 0.5 and a.network_[1] is not a.network_[4]
    assert a._optimizer.clip_norm == 0.5
    again = MLPClassifier(dropout=0.25, clip_norm=0.5, activation=fb.ELU(0.5), random_state=0,
                          **kw).fit(X, y)
    assert np.array_equal(a.network_.flat_params, again.network_.flat_params)
    other = MLPClassifier(dropout=0.25, random_state=1, **kw).fit(X, y)
    assert other.network_[2].seed != a.network_[2].seed
    # a clip norm no gradient reaches is no clipping
    p = MLPClassifier(clip_norm=1e9, random_state=0, **kw).fit(X, y)
    q = MLPClassifier(random_state=0, **kw).fit(X, y)
    assert np.array_equal(p.network_.flat_params, q.network_.flat_params)
    assert clone(a).get_params()["activation"] is not a.activation  # cloned, unfitted
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(a)).predict_proba(X),
                                  a.predict_proba(X))
    with pytest.raises(ValueError, match="dropout"):
        MLPClassifier(dropout=1.0).fit(X, y)


def test_callbacks_see_the_epochs_and_can_stop(tmp_path):
    X, y = DATA["multiclass"]
    seen = []

    def cb(epoch, history, net):
        seen.append((epoch, history.loss[-1], len(history.val_loss)))
        return epoch == 3

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # stopped by the callback: no warning
        a = MLPClassifier((6,), max_iter=50, random_state=0, callbacks=[cb]).fit(X, y)
    assert a.n_iter_ == 4 and [e for e, _, _ in seen] == [0, 1, 2, 3]
    keep = fb.callbacks.BestCheckpoint(tmp_path / "best.npz")
    b = MLPClassifier((6,), max_iter=15, random_state=0, early_stopping=True,
                      callbacks=[keep]).fit(X, y)
    assert keep.best == min(b.validation_loss_curve_)
    assert keep.best_epoch == b.validation_loss_curve_.index(keep.best)
    assert keep.load().predict(X).shape == (len(y), 3)


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_alpha_with_sgd_close_to_sklearn(kind):
    X, y = DATA[kind]
    ours, theirs = _pair(kind)
    kw = dict(hidden_layer_sizes=(8,), activation="tanh", solver="sgd", alpha=0.01,
              batch_size=32, max_iter=5, random_state=0, learning_rate_init=0.01)
    a, b = ours(**kw).fit(X, y), theirs(**kw).fit(X, y)
    for p, q in zip(a.coefs_, b.coefs_):
        np.testing.assert_allclose(p, q, atol=ALPHA_SGD_ATOL)
    # loss_ holds scikit-learn's penalty term too
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-3)


def test_digits_accuracy_within_a_point_of_sklearn():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16, y, random_state=0, stratify=y)
    kw = dict(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=30, random_state=0)
    ours = MLPClassifier(**kw).fit(Xtr, ytr).score(Xte, yte)
    theirs = skn.MLPClassifier(**kw).fit(Xtr, ytr).score(Xte, yte)
    assert abs(ours - theirs) <= 0.01
    assert ours > 0.95


def test_lbfgs_matches_sklearn_objective():
    X, y = DATA["multiclass"]
    kw = dict(hidden_layer_sizes=(8,), activation="tanh", solver="lbfgs", alpha=1e-3,
              max_iter=50, random_state=0)
    a, b = MLPClassifier(**kw).fit(X, y), skn.MLPClassifier(**kw).fit(X, y)
    assert not hasattr(a, "loss_curve_")
    assert a.n_iter_ <= 50
    np.testing.assert_allclose(a.loss_, b.loss_, rtol=0.05)
    assert a.score(X, y) > 0.9
    assert not hasattr(a, "partial_fit")


# -- attributes and methods -------------------------------------------------------------------
def test_classifier_attributes_and_probabilities():
    X, y = DATA["binary"]
    clf = MLPClassifier((10,), max_iter=30, random_state=0).fit(X, y)
    assert list(clf.classes_) == ["no", "yes"]
    assert clf.n_features_in_ == 5 and clf.n_layers_ == 3 and clf.n_outputs_ == 1
    assert [c.shape for c in clf.coefs_] == [(5, 10), (10, 1)]
    assert [b.shape for b in clf.intercepts_] == [(10,), (1,)]
    P = clf.predict_proba(X)
    assert P.shape == (150, 2)
    np.testing.assert_allclose(P.sum(axis=1), 1)
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(P))
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[P.argmax(axis=1)])
    assert len(clf.loss_curve_) == clf.n_iter_ == 30
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.loss_ == clf.loss_curve_[-1]
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert clf.validation_loss_curve_ is None
    assert isinstance(clf.network_, fb.Sequential)
    np.testing.assert_allclose(clf.network_.predict(X)[:, 0], P[:, 1])


def test_multilabel_predicts_indicator_rows():
    X, Y = DATA["multilabel"]
    clf = MLPClassifier((16,), learning_rate_init=0.01, max_iter=100, random_state=0).fit(X, Y)
    assert clf.predict(X).shape == Y.shape
    assert clf.predict_proba(X).shape == Y.shape
    assert clf.score(X, Y) > 0.8


def test_coefs_are_writable_views_of_the_network():
    X, y = DATA["multiclass"]
    clf = MLPClassifier((6,), max_iter=5, random_state=0).fit(X, y)
    clf.coefs_[1][...] = 0
    clf.intercepts_[1][...] = 0
    np.testing.assert_allclose(clf.predict_proba(X), 1 / 3)
    clf.coefs_ = [np.ones((5, 6)), np.ones((6, 3))]
    np.testing.assert_array_equal(clf.network_[0].W, np.ones((6, 5)))
    with pytest.raises(ValueError, match="shape"):
        clf.coefs_ = [np.ones((6, 5)), np.ones((6, 3))]


def test_partial_fit_and_warm_start():
    X, y = DATA["multiclass"]
    clf = MLPClassifier((8,), random_state=0)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    clf.partial_fit(X[50:], y[50:])
    assert clf.t_ == 150 and len(clf.loss_curve_) == 2
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X, y + 5)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])

    warm = MLPClassifier((8,), max_iter=10, warm_start=True, random_state=0).fit(X, y)
    first = warm.loss_curve_[-1]
    warm.fit(X, y)
    assert warm.loss_curve_[10] < warm.loss_curve_[0] and len(warm.loss_curve_) == 20
    assert warm.loss_curve_[10] <= first * 1.05


def test_early_stopping_records_validation_curves():
    X, y = DATA["multiclass"]
    clf = MLPClassifier((8,), early_stopping=True, max_iter=30, random_state=0).fit(X, y)
    assert len(clf.validation_scores_) == len(clf.validation_loss_curve_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None
    reg = MLPRegressor(hidden_layer_sizes=(8,), early_stopping=True, max_iter=20,
                       random_state=0).fit(*DATA["regression"])
    assert len(reg.validation_loss_curve_) == reg.n_iter_
    assert np.all(np.isfinite(reg.validation_loss_curve_))


@pytest.mark.parametrize("schedule", ["invscaling", "adaptive"])
def test_sgd_learning_rate_schedules(schedule):
    X, y = DATA["regression"]
    reg = MLPRegressor(hidden_layer_sizes=(8,), solver="sgd", learning_rate=schedule, max_iter=50,
                       n_iter_no_change=2, tol=10.0, random_state=0).fit(X, y)
    if schedule == "invscaling":
        assert reg._optimizer.lr == pytest.approx(0.001 / (reg.t_ + 1) ** 0.5)
    else:  # no epoch improves by tol=10: lr is divided by 5 until below 1e-6, then it stops
        assert reg._optimizer.lr <= 1e-6 and reg.n_iter_ < 50


def test_fastbp_extras_activation_dtype_threads():
    X, y = DATA["multiclass"]
    clf = MLPClassifier((8,), activation="leaky_relu", dtype=np.float32, max_iter=10,
                        random_state=0).fit(X, y)
    assert type(clf.network_[1]).__name__ == "LeakyReLU"
    assert clf.coefs_[0].dtype == np.float32 and clf.predict_proba(X).dtype == np.float32
    one = MLPClassifier((8,), max_iter=10, random_state=0, n_threads=1).fit(X, y)
    two = MLPClassifier((8,), max_iter=10, random_state=0, n_threads=2).fit(X, y)
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))


def test_verbose_prints_like_sklearn():
    X, y = DATA["regression"]
    out = io.StringIO()
    with redirect_stdout(out):
        MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, verbose=True, random_state=0).fit(X, y)
    assert "Iteration 1, loss = " in out.getvalue()


def test_pickle_and_clone_keep_the_network_working():
    X, y = DATA["multiclass"]
    clf = MLPClassifier((8,), max_iter=5, random_state=0).fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    back.coefs_[0][...] = 0  # still a view of the rebuilt network's W
    assert not np.any(back.network_[0].W)
    back.partial_fit(X, y)  # and still trainable
    assert clone(clf).get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        clone(clf).predict(X)


def test_feature_names_in():
    pd = pytest.importorskip("pandas")
    X, y = DATA["multiclass"]
    df = pd.DataFrame(X, columns=list("abcde"))
    clf = MLPClassifier((4,), max_iter=2, random_state=0).fit(df, y)
    assert list(clf.feature_names_in_) == list("abcde")


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("params, error, match", [
    (dict(activation="swish"), ValueError, "unknown activation"),
    (dict(solver="newton"), ValueError, "solver"),
    (dict(hidden_layer_sizes=(3, 0)), ValueError, "hidden_layer_sizes"),
    (dict(dtype=np.int32), TypeError, "float32 or float64"),
    (dict(learning_rate_init=0.0), ValueError, "learning_rate_init"),
    (dict(batch_size=0), ValueError, "batch_size"),
])
def test_bad_parameters(params, error, match):
    X, y = DATA["multiclass"]
    with pytest.raises(error, match=match):
        MLPClassifier(**params).fit(X, y)


def test_bad_data():
    X, y = DATA["regression"]
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLPRegressor().fit(bad, y)
    reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        reg.predict(X[:, :3])


def test_divergence_raises_and_keeps_parameters():
    X, y = DATA["regression"]
    reg = MLPRegressor(hidden_layer_sizes=(4,), activation="identity", solver="sgd",
                       learning_rate_init=0.1, max_iter=1, random_state=0).fit(X, y)
    before = reg.network_.flat_params.copy()
    reg.set_params(warm_start=True, learning_rate_init=1e6, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="non-finite"):
            reg.fit(X * 1e3, y * 1e3)
    np.testing.assert_array_equal(reg.network_.flat_params, before)


def test_convergence_warning_at_max_iter():
    X, y = DATA["regression"]
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
@pytest.mark.parametrize("in_dtype", [np.float32, np.float64, np.int64])
def test_the_input_dtype_carries_through_as_in_scikit_learn(in_dtype, solver):
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((80, 5)) * 3).astype(in_dtype)
    y = X[:, 0].astype(np.float64) - X[:, 1]
    labels = (y > 0).astype(int) + (y > 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for fb_cls, sk_cls, target in [(MLPRegressor, skn.MLPRegressor, y),
                                       (MLPClassifier, skn.MLPClassifier, labels)]:
            ours = fb_cls(hidden_layer_sizes=(6,), solver=solver, max_iter=5,
                          random_state=0).fit(X, target)
            theirs = sk_cls(hidden_layer_sizes=(6,), solver=solver, max_iter=5,
                            random_state=0).fit(X, target)
            for attr in ("coefs_", "intercepts_"):
                assert [a.dtype for a in getattr(ours, attr)] == \
                    [a.dtype for a in getattr(theirs, attr)], (fb_cls.__name__, attr)
            assert ours.predict(X).dtype == theirs.predict(X).dtype
            if fb_cls is MLPClassifier:
                assert ours.predict_proba(X).dtype == theirs.predict_proba(X).dtype
    # an explicit dtype still wins, and a warm start keeps the network's
    clf = MLPRegressor(hidden_layer_sizes=(6,), max_iter=2, dtype=np.float64, warm_start=True,
                       random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X.astype(np.float32), y)
        assert clf.coefs_[0].dtype == np.float64
        clf.set_params(dtype=None).fit(X.astype(np.float64), y)
        assert clf.coefs_[0].dtype == np.float64


@pytest.mark.parametrize("schedule", ["invscaling", "adaptive"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_schedules_follow_scikit_learn_across_a_warm_start(schedule, nesterov):
    # scikit-learn's momentum keeps each step at the rate it was taken with; fastbp rescales
    # its velocity when the rate changes, so both take the same steps and stop at the same
    # epoch; a second fit with warm_start continues scikit-learn's step count t_.
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X[:600] / 16
    y = y[:600]
    kw = dict(hidden_layer_sizes=(16,), solver="sgd", learning_rate=schedule,
              learning_rate_init=0.1, nesterovs_momentum=nesterov, max_iter=30,
              n_iter_no_change=2, tol=1e-2, alpha=0.0, random_state=0, warm_start=True)
    ours, theirs = MLPClassifier(**kw), skn.MLPClassifier(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(2):
            ours.fit(X, y)
            theirs.fit(X, y)
            assert (ours.n_iter_, ours.t_) == (theirs.n_iter_, theirs.t_)
            assert ours._optimizer.learning_rate == pytest.approx(
                theirs._optimizer.learning_rate, rel=1e-12)
            np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
