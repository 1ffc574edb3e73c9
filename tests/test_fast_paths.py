"""The single-row paths (``predict`` and ``train_step`` on an X that needs no conversion: one
compiled call checks X's values), the rules they rest on, and the optimizers' arithmetic in the
parameters' precision."""

import numpy as np
import pytest

import fastbp as fb
from fastbp import _checks, _config, engine
from fastbp.kernels import dense as KD
from fastbp.kernels import engine as KE
from fastbp.kernels import optim as KO
from reference_training import adam, rmsprop, sgd

DTYPES = [np.float32, np.float64]


def _net(dtype, out=fb.Softmax):
    return fb.Sequential(fb.Linear(6, 5), fb.Tanh(), fb.Linear(5, 3), out(), dtype=dtype, seed=0)


def _rows(dtype, n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 6)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_ready_x_and_a_converted_one_predict_the_same(dtype):
    net = _net(dtype)
    X = _rows(dtype)
    assert net._ready(X) and not net._ready(np.asfortranarray(X)) and not net._ready(X[:0])
    fast = net.predict(X)
    assert np.array_equal(fast, net.predict(np.asfortranarray(X)))  # converted, then checked
    assert np.array_equal(fast, net.predict(X.tolist()))
    assert np.array_equal(fast, net._apply(X, False)[0])  # node by node
    assert np.array_equal(net.predict(X[1:2]), fast[1:2])  # a single row
    assert fast.flags.owndata  # a new array, not the workspace


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_names_nan_or_inf_in_a_ready_x(dtype, bad):
    net = _net(dtype)
    X = _rows(dtype, 3)
    X[2, 4] = bad
    assert net._ready(X)
    with pytest.raises(ValueError, match=f"X contains {'NaN' if bad != bad else 'inf'} at "
                                         f"row 2, column 4"):
        net.predict(X)


@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_raises_when_a_ready_x_overflows_the_output(dtype):
    net = fb.Sequential(fb.Linear(2, 1), fb.Exp(), dtype=dtype, seed=0)
    net[0].W[...] = 1e3
    X = np.ones((1, 2), dtype)
    assert net._ready(X)
    with pytest.raises(FloatingPointError, match="the output"):
        net.predict(X)
    X[0] = -1.0
    assert net.predict(X)[0, 0] == 0.0  # exp(-2000) underflows to 0: finite, no error


@pytest.mark.parametrize("dtype", DTYPES)
def test_train_step_refuses_nan_in_a_ready_x_and_changes_nothing(dtype):
    net = _net(dtype)
    X, y = _rows(dtype, 3), np.array([0, 2, 1])
    opt = fb.Adam(lr=0.01)
    net.train_step(X, y, fb.KL(), opt)
    before, t = net.flat_params.copy(), opt.t
    X[1, 0] = np.nan
    with pytest.raises(ValueError, match="X contains NaN at row 1, column 0"):
        net.train_step(X, y, fb.KL(), opt)
    assert np.array_equal(net.flat_params, before) and opt.t == t
    X[1, 0] = 0.5
    net.train_step(X, y, fb.KL(), opt)  # the engine's ctx was left clean: training goes on
    assert opt.t == t + 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_train_step_on_a_ready_x_equals_a_converted_one(dtype):
    a, b = _net(dtype), _net(dtype)
    opt_a, opt_b = fb.SGD(lr=0.1, momentum=0.9), fb.SGD(lr=0.1, momentum=0.9)
    for k in range(5):
        X, y = _rows(dtype, 1 + k, seed=k), np.arange(1 + k) % 3
        la = a.train_step(X, y, fb.KL(), opt_a)
        lb = b.train_step(X.tolist(), y.tolist(), fb.KL(), opt_b)
        assert la == lb
    assert np.array_equal(a.flat_params, b.flat_params)


@pytest.mark.parametrize("rows", [3, 40])  # the list branch of in_range and NumPy's
def test_train_step_refuses_labels_out_of_range(rows):
    net = _net(np.float32)
    X, y = _rows(np.float32, rows), np.arange(rows) % 3
    y[rows // 2] = 7
    with pytest.raises(ValueError, match="Target 7 is out of bounds"):
        net.train_step(X, y, fb.KL(), fb.SGD())
    y[rows // 2] = -1
    with pytest.raises(ValueError, match="Target -1 is out of bounds"):
        net.train_step(X, y, fb.KL(), fb.SGD())


def test_in_range_equals_numpys_test():
    rng = np.random.default_rng(1)
    for size in (1, 2, 16, 17, 100):
        for _ in range(50):
            labels = rng.integers(-2, 6, size=size)
            assert _checks.in_range(labels, 4) == bool(labels.min() >= 0 and labels.max() < 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_finds_nan_and_inf_and_passes_every_finite_value(dtype):
    info = np.finfo(dtype)
    ok = np.array([0.0, -0.0, info.max, -info.max, info.tiny, info.smallest_subnormal, 1.0],
                  dtype)
    assert KO.finite(ok) and KO.finite(ok[:0])
    for n in (1, 7, 64, 1000):
        a = np.resize(ok, n)
        assert KO.finite(a)
        for pos in {0, n // 3, n - 1}:
            for bad in (np.nan, np.inf, -np.inf):
                b = a.copy()
                b[pos] = bad
                assert not KO.finite(b), (n, pos, bad)


def test_dense_mode_runs_as_python_with_the_compiled_rule():
    rule = _config.in_python(KD.dense_mode)
    assert not hasattr(rule, "py_func")  # plain Python, its callee (row_block) too
    assert not hasattr(rule.__globals__["row_block"], "py_func")
    for T in (1, 7, 8, 63, 64, 256, 512, 1000):
        for n_out in (1, 10, 64, 256, 4096):
            for n_in in (2, 64, 784, 4096):
                assert rule(T, n_out, n_in) == KD.dense_mode(T, n_out, n_in)


def test_passes_over_the_parameters_run_on_the_threads_only_beside_threaded_products():
    small = compile_train_tape(fb.Sequential(fb.Linear(784, 256), fb.ReLU(), fb.Linear(256, 10),
                                             fb.Softmax(), dtype=np.float32, seed=0))
    assert small.net.flat_params.size >= KE.PAR_MIN_WORK  # large enough for the threads ...
    assert not small._threaded(1) and not small._threaded(4)  # ... but the products are not
    assert small._threaded(8)  # 8 x 256 x 784 multiply-adds: two blocks of units
    wide = compile_train_tape(fb.Sequential(fb.Linear(64, 4096), fb.ReLU(), fb.Linear(4096, 10),
                                            fb.Softmax(), dtype=np.float32, seed=0))
    assert wide._threaded(512) and not wide._threaded(1)


def compile_train_tape(net):
    tape = engine.compile_tape(net, True)
    assert tape is not None
    return tape


# The updates compute in the parameters' precision: float32 parameters step exactly as NumPy's
# float32 arithmetic in the written-out references (tests/reference_training.py), bit for bit.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_opt, ref, kw", [
    (lambda: fb.SGD(lr=0.05), sgd, dict(lr=0.05)),
    (lambda: fb.SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3), sgd,
     dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    (lambda: fb.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), adam,
     dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1)),
    (lambda: fb.RMSprop(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.8), rmsprop,
     dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.8)),
    (lambda: fb.RMSprop(lr=0.005, momentum=0.5, centered=True), rmsprop,
     dict(lr=0.005, momentum=0.5, centered=True)),
])
def test_updates_equal_the_references_arithmetic_in_the_parameters_dtype(dtype, make_opt, ref,
                                                                         kw):
    rng = np.random.default_rng(2)
    net = _net(dtype)
    opt, state, p = make_opt(), {}, net.flat_params.copy()
    for _ in range(6):
        g = rng.normal(size=p.size).astype(dtype)
        net.flat_grads[...] = g
        opt.step(net)
        p = ref(p, g, state, **kw)
        assert p.dtype == dtype
        assert np.array_equal(net.flat_params, p)
