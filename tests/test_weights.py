"""Per-instance weights (``sample_weight``): the weighted mean loss sum_t w_t Div_t / sum_t w_t
through ``fit``, ``train_step`` and ``loss_and_grad``, in the engine and node by node.

A weight of 2 is the row given twice (full-batch gradient descent, every divergence); a weight
of 0 is the row left out; equal weights are no weights; the engine and the per-node path give
bit-identical parameters, for 1 and 2 threads; bad weights are refused before anything changes.
"""

import warnings

import numpy as np
import pytest

import fastbp as fb
from conftest import DTYPES

DIVERGENCES = {  # name: (divergence, last node, targets for T rows)
    "L2": (fb.L2, fb.Tanh, lambda rng, T: rng.normal(size=(T, 3))),
    "KL-labels": (fb.KL, fb.Softmax, lambda rng, T: rng.integers(0, 3, size=T)),
    "KL-probs": (fb.KL, fb.Softmax, lambda rng, T: rng.dirichlet(np.ones(3), size=T)),
    "BinaryKL": (fb.BinaryKL, fb.Sigmoid, lambda rng, T: rng.uniform(size=(T, 3))),
    "Poisson": (fb.Poisson, fb.Exp, lambda rng, T: rng.poisson(1.0, size=(T, 3)).astype(float)),
    "KL-unfused": (fb.KL, fb.Sigmoid, None),  # probability rows through the general path
}


def _data(name, T=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(T, 4))
    make_d = DIVERGENCES[name][2]
    d = rng.dirichlet(np.ones(3), size=T) if make_d is None else make_d(rng, T)
    return X, d


def _net(name, dtype=np.float64, seed=3):
    return fb.Sequential(fb.Linear(4, 6), fb.Tanh(), fb.Linear(6, 3), DIVERGENCES[name][1](),
                         dtype=dtype, seed=seed)


def _fit(net, X, d, name, engine, **kw):
    kw.setdefault("epochs", 15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # KL after a Sigmoid: the hint
        return fb.fit(net, X, d, DIVERGENCES[name][0](), kw.pop("opt", fb.SGD(lr=0.3)),
                      tol=None, progress=False, engine=engine, **kw)


@pytest.mark.parametrize("engine", [True, False])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_weight_two_is_the_row_twice(name, engine):
    X, d = _data(name)
    w = np.random.default_rng(1).integers(0, 4, size=X.shape[0]).astype(float)
    reps = w.astype(int)
    a, b = _net(name), _net(name)
    ha = _fit(a, X, d, name, engine, sample_weight=w)
    hb = _fit(b, np.repeat(X, reps, axis=0), np.repeat(d, reps, axis=0), name, engine)
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ha.loss, hb.loss, rtol=1e-12)


@pytest.mark.parametrize("engine", [True, False])
def test_weight_zero_leaves_the_row_out(engine):
    X, d = _data("KL-labels")
    w = np.ones(X.shape[0])
    w[::3] = 0
    a, b = _net("KL-labels"), _net("KL-labels")
    _fit(a, X, d, "KL-labels", engine, sample_weight=w)
    _fit(b, X[w > 0], d[w > 0], "KL-labels", engine)
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-12, atol=1e-14)


def test_equal_weights_are_no_weights():
    X, d = _data("BinaryKL")
    a, b = _net("BinaryKL"), _net("BinaryKL")
    _fit(a, X, d, "BinaryKL", True, sample_weight=np.full(X.shape[0], 0.5), batch_size=7)
    _fit(b, X, d, "BinaryKL", True, batch_size=7)
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_engine_and_per_node_path_are_bit_identical(name, dtype):
    X, d = _data(name, T=37)
    w = np.random.default_rng(2).uniform(0, 2, size=X.shape[0])
    a, b = _net(name, dtype), _net(name, dtype)
    kw = dict(batch_size=8, epochs=4, sample_weight=w, validation=(X[:9], d[:9], w[:9]))
    ha = _fit(a, X, d, name, True, opt=fb.Adam(lr=0.02), **kw)
    hb = _fit(b, X, d, name, False, opt=fb.Adam(lr=0.02), **kw)
    assert np.array_equal(a.flat_params, b.flat_params)
    assert ha.loss == hb.loss and ha.val_loss == hb.val_loss


def test_compiled_epochs_equal_the_epoch_loop():
    """With nothing to run between epochs, fit runs chunks of epochs in one compiled call;
    a callback forces the Python loop: the same numbers."""
    X, d = _data("KL-labels", T=41)
    w = np.random.default_rng(3).uniform(0, 2, size=X.shape[0])
    a, b = _net("KL-labels"), _net("KL-labels")
    ha = _fit(a, X, d, "KL-labels", True, batch_size=16, sample_weight=w)
    hb = _fit(b, X, d, "KL-labels", True, batch_size=16, sample_weight=w,
              callbacks=[lambda *args: False])
    assert np.array_equal(a.flat_params, b.flat_params) and ha.loss == hb.loss


@pytest.mark.parametrize("engine", [True, False])
def test_results_do_not_depend_on_the_thread_count(engine):
    X, d = _data("KL-probs", T=300)
    w = np.random.default_rng(4).uniform(0, 2, size=X.shape[0])
    before = fb.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            fb.set_num_threads(n)
            net = _net("KL-probs")
            _fit(net, X, d, "KL-probs", engine, sample_weight=w, batch_size=100, epochs=3)
            out.append(net.flat_params.copy())
    finally:
        fb.set_num_threads(before)
    assert np.array_equal(out[0], out[1])


def test_history_loss_is_the_weighted_mean_and_val_loss_is_weighted():
    X, d = _data("L2")
    w = np.random.default_rng(5).uniform(0.1, 2, size=X.shape[0])
    net = _net("L2")
    h = _fit(net, X, d, "L2", True, epochs=1, sample_weight=w, validation=(X, d, w))
    fresh = _net("L2")
    assert h.loss[0] == pytest.approx(fresh.loss_and_grad(X, d, fb.L2(), sample_weight=w),
                                      rel=1e-14)
    assert h.val_loss[0] == pytest.approx(net.loss_and_grad(X, d, fb.L2(), sample_weight=w),
                                          rel=1e-13)
    assert h.val_loss[0] != pytest.approx(net.loss_and_grad(X, d, fb.L2()), rel=1e-6)


def test_weighted_validation_accuracy():
    X, d = _data("KL-labels")
    net = _net("KL-labels")
    right = net.predict(X).argmax(axis=1) == d
    w = np.where(right, 3.0, 1.0)
    target = fb.KL().target(d, X.shape[0], 3, np.float64)
    expected = (3.0 * right.sum()) / (3.0 * right.sum() + (~right).sum())
    assert fb.accuracy_of(net, X, target, fb.KL(), w) == pytest.approx(expected, rel=1e-15)


def test_train_step_with_weights_equals_fit_one_full_batch_epoch():
    X, d = _data("Poisson")
    w = np.random.default_rng(6).uniform(0, 2, size=X.shape[0])
    a, b = _net("Poisson"), _net("Poisson")
    value = a.train_step(X, d, fb.Poisson(), fb.SGD(lr=0.1), sample_weight=w)
    h = _fit(b, X, d, "Poisson", True, epochs=1, opt=fb.SGD(lr=0.1), sample_weight=w)
    assert np.array_equal(a.flat_params, b.flat_params)
    assert value == pytest.approx(h.loss[0], rel=1e-14)


@pytest.mark.parametrize("bad, match", [
    (np.ones(29), r"Expected X batch_size \(30\) to match sample_weight batch_size \(29\)"),
    (np.ones((30, 2)), "must be 1-D"),
    (np.r_[np.ones(29), np.nan], "sample_weight contains NaN at index 29"),
    (np.r_[np.ones(29), -1.0], "must be >= 0; index 29 holds -1.0"),
    (np.zeros(30), "0 for every row"),
    (np.array(["a"] * 30), "must hold real numbers"),
])
def test_bad_weights_are_refused_before_anything_changes(bad, match):
    X, d = _data("KL-labels")
    net = _net("KL-labels")
    before = net.flat_params.copy()
    with pytest.raises((ValueError, TypeError), match=match):
        fb.fit(net, X, d, fb.KL(), fb.SGD(), sample_weight=bad, progress=False)
    assert np.array_equal(net.flat_params, before)


def test_a_batch_of_weight_zero_changes_nothing_but_momentum():
    """A minibatch whose rows all weigh 0 has a zero gradient (not 0/0): plain SGD leaves the
    parameters as they were."""
    X, d = _data("L2", T=8)
    w = np.r_[np.zeros(4), np.ones(4)]
    net, b = _net("L2"), _net("L2")
    h = _fit(net, X, d, "L2", True, epochs=1, batch_size=4, shuffle=False, sample_weight=w)
    hb = _fit(b, X[4:], d[4:], "L2", True, epochs=1)
    np.testing.assert_allclose(net.flat_params, b.flat_params, rtol=1e-13, atol=1e-15)
    assert h.loss[0] == pytest.approx(hb.loss[0], rel=1e-14)
