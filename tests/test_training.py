"""fit, train_step and the optimizers against the seed's algorithm and written-out references."""

import subprocess
import sys
import types

import numpy as np
import pytest

import fastbp as fb
from reference_training import adam, clip_by_norm, rmsprop, seed_gradient_descent, sgd

EXACT = 1e-12


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


TANH = (np.tanh, lambda z, y, dy: dy * (1 - y * y))
SOFTMAX = (_softmax, lambda z, y, dy: y * (dy - dy @ y))
SIGMOID = (lambda z: 1 / (1 + np.exp(-z)), lambda z, y, dy: dy * y * (1 - y))


def test_full_batch_gd_equals_the_seeds_algorithm():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4))
    labels = rng.integers(0, 3, size=20)
    net = fb.Sequential(fb.Linear(4, 5), fb.Tanh(), fb.Linear(5, 3), fb.Softmax(), seed=1)
    Ws, bs = [net[0].W.copy(), net[2].W.copy()], [net[0].b.copy(), net[2].b.copy()]
    onehot = np.eye(3)[labels]
    Ws, bs = seed_gradient_descent(Ws, bs, [TANH, SOFTMAX], X, onehot,
                                   lambda y, d: -d / y, eta=0.5, steps=25)
    h = fb.fit(net, X, labels, fb.KL(), fb.SGD(lr=0.5), batch_size=None, epochs=25, tol=None,
               progress=False)
    assert h.epochs == 25
    for got, want in zip(net.params, [Ws[0], bs[0], Ws[1], bs[1]]):
        np.testing.assert_allclose(got, want, rtol=EXACT, atol=EXACT)


def test_full_batch_gd_is_it_a_2_sigmoid_binary_kl():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(16, 3))
    d = (rng.random(16) < 0.5).astype(float)
    net = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 1), fb.Sigmoid(), seed=2)
    Ws, bs = [net[0].W.copy(), net[2].W.copy()], [net[0].b.copy(), net[2].b.copy()]
    Ws, bs = seed_gradient_descent(Ws, bs, [TANH, SIGMOID], X, d.reshape(-1, 1),
                                   lambda y, t: (y - t) / (y * (1 - y)), eta=1.0, steps=25)
    fb.fit(net, X, d, fb.BinaryKL(), fb.SGD(lr=1.0), epochs=25, tol=None, progress=False)
    for got, want in zip(net.params, [Ws[0], bs[0], Ws[1], bs[1]]):
        np.testing.assert_allclose(got, want, rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("make_opt, ref, kw", [
    (lambda: fb.SGD(lr=0.05, momentum=0.9), sgd, dict(lr=0.05, momentum=0.9)),
    (lambda: fb.SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3), sgd,
     dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    (lambda: fb.Adam(lr=0.01), adam, dict(lr=0.01)),
    (lambda: fb.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), adam,
     dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1)),
    (lambda: fb.RMSprop(lr=0.01), rmsprop, dict(lr=0.01)),
    (lambda: fb.RMSprop(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.8), rmsprop,
     dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.8)),
    (lambda: fb.RMSprop(lr=0.005, momentum=0.5, centered=True), rmsprop,
     dict(lr=0.005, momentum=0.5, centered=True)),
    (lambda: fb.SGD(lr=0.05, momentum=0.9, clip_norm=0.05), sgd, dict(lr=0.05, momentum=0.9,
                                                                      clip=0.05)),
    (lambda: fb.Adam(lr=0.01, clip_norm=0.1), adam, dict(lr=0.01, clip=0.1)),
    (lambda: fb.RMSprop(lr=0.01, centered=True, clip_norm=0.2), rmsprop,
     dict(lr=0.01, centered=True, clip=0.2)),
])
def test_minibatch_optimizers_equal_reference_step_by_step(make_opt, ref, kw):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(23, 5))
    y = rng.integers(0, 4, size=23)
    net = fb.Sequential(fb.Linear(5, 6), fb.ReLU(), fb.Linear(6, 4), fb.Softmax(), seed=0)
    shadow = fb.Sequential(fb.Linear(5, 6), fb.ReLU(), fb.Linear(6, 4), fb.Softmax(), seed=0)
    opt, state, p = make_opt(), {}, net.flat_params.copy()
    kw = dict(kw)
    clip = kw.pop("clip", None)
    order = np.random.default_rng(7).permutation(23)
    for lo in range(0, 23, 8):  # the last batch is short (7 rows)
        idx = order[lo:lo + 8]
        shadow.flat_params[...] = p
        shadow.loss_and_grad(X[idx], y[idx], fb.KL())
        g = shadow.flat_grads.copy()
        if clip is not None:  # clipped by the global norm before the step, as PyTorch
            g, _ = clip_by_norm(g, clip)
        p = ref(p, g, state, **kw)
        net.train_step(X[idx], y[idx], fb.KL(), opt)
        np.testing.assert_allclose(net.flat_params, p, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [10, 70_000])  # the serial and the parallel kernel
def test_clipping_by_global_norm_against_the_reference(dtype, size):
    rng = np.random.default_rng(5)
    g = rng.normal(size=size).astype(dtype)
    net = types.SimpleNamespace(flat_params=np.zeros(size, dtype), flat_grads=g.copy())
    for max_norm in (1e9, 0.5):  # no clipping, clipping
        opt = fb.SGD(lr=1e-300, clip_norm=max_norm)  # the step moves nothing visible
        net.flat_grads[...] = g
        opt.step(net)
        want, norm = clip_by_norm(g.astype(np.float64), max_norm)
        assert opt.last_grad_norm == pytest.approx(norm, rel=1e-13)
        if max_norm > norm:
            assert np.array_equal(net.flat_grads, g)
        else:
            # float64: the norm summed by blocks against fsum
            rtol = 1e-13 if dtype == np.float64 else 4 * np.finfo(dtype).eps
            np.testing.assert_allclose(net.flat_grads, want, rtol=rtol)
            assert np.linalg.norm(net.flat_grads.astype(np.float64)) == \
                pytest.approx(max_norm, rel=1e-5)


def test_clipped_optimizers_are_thread_count_independent():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(400, 50)), rng.integers(0, 10, size=400)
    out, before = [], fb.get_num_threads()
    try:
        for n in (1, 2):
            fb.set_num_threads(n)
            net = fb.Sequential(fb.Linear(50, 300), fb.ReLU(), fb.Linear(300, 10), fb.Softmax(),
                                seed=1)  # 18,310 parameters x 4 ... the parallel kernels
            fb.fit(net, X, y, fb.KL(), fb.RMSprop(lr=0.01, centered=True, momentum=0.5,
                                                   clip_norm=0.5),
                   batch_size=200, epochs=2, progress=False)
            out.append(net.flat_params.copy())
    finally:
        fb.set_num_threads(before)
    assert np.array_equal(out[0], out[1])


@pytest.mark.parametrize("engine", [True, False])
def test_fit_minibatches_match_train_steps_with_seeded_shuffle(engine):
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, size=30)
    a = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 2), fb.Softmax(), seed=5)
    b = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 2), fb.Softmax(), seed=5)
    fb.fit(a, X, y, fb.KL(), fb.SGD(lr=0.1), batch_size=7, epochs=3, tol=None, seed=11,
           progress=False, engine=engine)
    opt, perm_rng = fb.SGD(lr=0.1), np.random.default_rng(11)
    for _ in range(3):
        order = perm_rng.permutation(30)
        for lo in range(0, 30, 7):
            b.train_step(X[order[lo:lo + 7]], y[order[lo:lo + 7]], fb.KL(), opt)
    assert np.array_equal(a.flat_params, b.flat_params)


def test_convergence_test_stops_as_the_seed_writes_it():
    X, d = fb.datasets.xor(64, seed=0)
    net = fb.Sequential(fb.Linear(2, 4), fb.Tanh(), fb.Linear(4, 1), fb.Sigmoid(), seed=0)
    h = fb.fit(net, X, d, fb.BinaryKL(), fb.SGD(lr=0.5), epochs=5000, tol=1e-4, progress=False)
    assert h.stop_reason == "converged"
    assert abs(h.loss[-1] - h.loss[-2]) < 1e-4
    assert all(abs(a - b) >= 1e-4 for a, b in zip(h.loss[:-2], h.loss[1:-1]))


def test_early_stopping_restores_the_best_weights():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 3, size=40)
    Xv, yv = rng.normal(size=(40, 5)), rng.integers(0, 3, size=40)  # noise: overfits at once
    net = fb.Sequential(fb.Linear(5, 32), fb.Tanh(), fb.Linear(32, 3), fb.Softmax(), seed=0)
    h = fb.fit(net, X, y, fb.KL(), fb.Adam(lr=0.05), batch_size=8, epochs=200, tol=None,
               validation=(Xv, yv), patience=5, progress=False)
    assert h.stop_reason == "early stopping"
    assert h.epochs == h.best_epoch + 6
    target = fb.KL().target(yv, 40, 3, np.float64)
    val_now = net._loss_value(net._input(Xv), target, fb.KL())[0]
    assert val_now == pytest.approx(min(h.val_loss), rel=1e-12)


def test_history_records_accuracy_lr_and_times():
    X, y = fb.datasets.spirals(90, classes=3, seed=0)
    net = fb.Sequential(fb.Linear(2, 16), fb.Tanh(), fb.Linear(16, 3), fb.Softmax(), seed=0)
    h = fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1, schedule=fb.StepLR(2, 0.5)), batch_size=16,
               epochs=5, tol=None, validation=(X, y), progress=False)
    assert len(h.loss) == len(h.val_loss) == len(h.accuracy) == len(h.epoch_time) == 5
    assert h.lr == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert all(0 <= a <= 1 for a in h.val_accuracy)


def test_schedules():
    assert fb.StepLR(3, 0.1).factor(7) == pytest.approx(0.01)
    assert fb.ExponentialLR(0.5).factor(3) == 0.125
    c = fb.CosineLR(10, min_factor=0.1)
    assert c.factor(0) == 1 and c.factor(10) == pytest.approx(0.1)
    assert c.factor(5) == pytest.approx(0.55)


def test_callback_stops_training():
    X, d = fb.datasets.xor(32)
    net = fb.Sequential(fb.Linear(2, 3), fb.Tanh(), fb.Linear(3, 1), fb.Sigmoid(), seed=0)
    h = fb.fit(net, X, d, fb.BinaryKL(), fb.SGD(lr=0.1), epochs=50, tol=None, progress=False,
               callbacks=[lambda epoch, history, net: epoch == 2])
    assert h.epochs == 3 and h.stop_reason == "callback"


@pytest.mark.parametrize("engine", [True, False])
def test_nan_stops_training_naming_epoch_and_step_and_keeps_last_good(engine):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)) * 50
    y = rng.normal(size=(64, 2)) * 1e4
    net = fb.Sequential(fb.Linear(4, 8), fb.ReLU(), fb.Linear(8, 2), seed=0)
    with pytest.raises(fb.TrainingError, match=r"epoch \d+, step \d+") as err:
        fb.fit(net, X, y, fb.L2(), fb.SGD(lr=10.0), batch_size=16, epochs=50, tol=None,
               shuffle=False, progress=False, engine=engine)
    assert np.isfinite(net.flat_params).all()
    # Replay the steps before the failure: the network holds exactly those parameters.
    epoch, step = (int(v) for v in
                   __import__("re").search(r"epoch (\d+), step (\d+)", str(err.value)).groups())
    replay = fb.Sequential(fb.Linear(4, 8), fb.ReLU(), fb.Linear(8, 2), seed=0)
    opt = fb.SGD(lr=10.0)
    for s in range(epoch * 4 + step):
        lo = (s % 4) * 16
        replay.train_step(X[lo:lo + 16], y[lo:lo + 16], fb.L2(), opt)
    assert np.array_equal(replay.flat_params, net.flat_params)


@pytest.mark.parametrize("bad, err", [
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), y),
     "NaN at row 0, column 7"),
    (lambda X, y: (X, np.where(np.arange(y.size) == 3, 10, y)), "Target 10 is out of bounds"),
    (lambda X, y: (X[:-1], y), "batch_size"),
    (lambda X, y: (X[:, :5], y), "columns"),
    (lambda X, y: (X.astype(object), y), "real numbers"),
])
def test_bad_data_raises_before_any_update(bad, err):
    X, y = fb.datasets.digits()
    X, y = X[:50], y[:50]
    net = fb.Sequential(fb.Linear(64, 8), fb.Tanh(), fb.Linear(8, 10), fb.Softmax(), seed=0)
    before = net.flat_params.copy()
    Xb, yb = bad(X, y)
    with pytest.raises((ValueError, TypeError), match=err):
        fb.fit(net, Xb, yb, fb.KL(), fb.SGD(lr=0.1), epochs=2, progress=False)
    assert np.array_equal(net.flat_params, before)


def test_demo_accuracy_targets():
    """The seed's two examples: >= 97% on the 10 digits, >= 99% on 'is it a 2'."""
    X, y = fb.datasets.digits()
    Xtr, Xte, ytr, yte = fb.datasets.split(X, y, seed=0)
    net = fb.Sequential(fb.Linear(64, 64), fb.Tanh(), fb.Linear(64, 10), fb.Softmax(), seed=0)
    h = fb.fit(net, Xtr, ytr, fb.KL(), fb.SGD(lr=0.1, momentum=0.9), batch_size=32, epochs=40,
               tol=None, validation=(Xte, yte), progress=False)
    assert h.val_accuracy[-1] >= 0.97
    X2, d2 = fb.datasets.is_it_a_2()
    Xtr, Xte, dtr, dte = fb.datasets.split(X2, d2, seed=0)
    net = fb.Sequential(fb.Linear(64, 32), fb.Tanh(), fb.Linear(32, 1), fb.Sigmoid(), seed=0)
    h = fb.fit(net, Xtr, dtr, fb.BinaryKL(), fb.SGD(lr=0.1, momentum=0.9), batch_size=32,
               epochs=40, tol=None, validation=(Xte, dte), progress=False)
    assert h.val_accuracy[-1] >= 0.99


def test_progress_bar_is_silent_without_a_terminal(capsys):
    X, d = fb.datasets.xor(32)
    net = fb.Sequential(fb.Linear(2, 3), fb.Tanh(), fb.Linear(3, 1), fb.Sigmoid(), seed=0)
    fb.fit(net, X, d, fb.BinaryKL(), fb.SGD(lr=0.1), epochs=3, progress=True)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_datasets():
    X, y = fb.datasets.digits()
    assert X.shape == (1797, 64) and X.min() == 0 and X.max() == 1 and set(y) == set(range(10))
    X2, d2 = fb.datasets.is_it_a_2()
    assert np.array_equal(d2, (y == 2).astype(float))
    Xs, ys = fb.datasets.spirals(99, classes=3)
    assert Xs.shape == (99, 2) and np.bincount(ys).tolist() == [33, 33, 33]
    Xx, dx = fb.datasets.xor(100)
    assert np.array_equal(dx, ((Xx[:, 0] > 0) ^ (Xx[:, 1] > 0)).astype(float))


def test_digits_are_scikit_learns_read_without_importing_it(monkeypatch):
    from sklearn.datasets import load_digits

    X, y = fb.datasets.digits()
    ref = load_digits()
    assert X.dtype == np.float64 and y.dtype == np.int64 and X.flags.c_contiguous
    assert np.array_equal(X, ref.data / 16.0) and np.array_equal(y, ref.target)
    monkeypatch.setattr(fb.datasets, "_digits_file", lambda: None)  # the fallback: sklearn's
    Xf, yf = fb.datasets.digits()
    assert np.array_equal(Xf, X) and np.array_equal(yf, y)
    code = ("import sys, fastbp\n"
            "X, y = fastbp.datasets.digits()\n"
            "assert X.shape == (1797, 64) and 'sklearn' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
