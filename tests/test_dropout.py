"""fb.Dropout: masks from the counter-based generator keyed by (seed, step, row, unit); the
engine and the per-node path bit-identical, for 1 and 2 threads and across a resume; the
identity in evaluation; its gradient against central differences at a fixed step."""

import math

import numpy as np
import pytest

import fastbp as fb
from conftest import DTYPES
from fastbp.kernels import dropout as KDr


def _mask_reference(seed, step, rows, units, p):
    """Kept units by the generator's definition: the draw u(seed, step, row, unit) >= p."""
    return np.array([[KDr.uniform(seed, step, r, j) >= p for j in range(units)]
                     for r in range(rows)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kernel_against_the_reference(dtype, p, rng):
    x = rng.normal(size=(7, 13)).astype(dtype)
    x[0, 0] = np.nan
    y, y2 = np.empty_like(x), np.empty_like(x)
    KDr.dropout(x, y, 99, 3, p)
    KDr.dropout_serial(x, y2, 99, 3, p)
    assert y.tobytes() == y2.tobytes()
    keep = _mask_reference(99, 3, 7, 13, p)
    scale = dtype(1) / dtype(1 - p)
    expected = np.where(keep, x * scale, x * dtype(0))
    np.testing.assert_array_equal(y, expected)  # NaN stays NaN where dropped too (x * 0)
    assert np.isnan(y[0, 0])


def test_draws_are_uniform_and_independent_across_steps_rows_and_units():
    n = 200_000
    x = np.ones((400, n // 400))
    y = np.empty_like(x)
    masks = []
    for step in (1, 2):
        KDr.dropout(x, y, 5, step, 0.3)
        masks.append(y != 0)
    for m in masks:  # 0.7 kept, within 5 binomial standard deviations
        assert abs(m.mean() - 0.7) < 5 * math.sqrt(0.21 / n)
    both = (masks[0] & masks[1]).mean()
    assert abs(both - 0.49) < 5 * math.sqrt(0.49 * 0.51 / n)
    rows_alike = (masks[0][0] == masks[0][1]).mean()
    assert abs(rows_alike - 0.58) < 5 * math.sqrt(0.58 * 0.42 / masks[0].shape[1])
    u = np.array([KDr.uniform(11, 1, 0, j) for j in range(20_000)])
    assert u.min() >= 0 and u.max() < 1
    counts = np.histogram(u, bins=10, range=(0, 1))[0]  # chi-square, 9 degrees of freedom
    assert ((counts - 2000) ** 2 / 2000).sum() < 33.7  # p = 1e-4


def _net(dtype=np.float64, p=0.3):
    return fb.Sequential(fb.Linear(6, 40), fb.ReLU(), fb.Dropout(p), fb.Linear(40, 3),
                         fb.Softmax(), dtype=dtype, seed=2)


def _data(T=90):
    rng = np.random.default_rng(1)
    return rng.normal(size=(T, 6)), rng.integers(0, 3, size=T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_opt", [lambda: fb.SGD(lr=0.1, momentum=0.9),
                                      lambda: fb.Adam(lr=0.01)])
def test_engine_and_per_node_path_are_bit_identical(dtype, make_opt):
    X, y = _data()
    a, b = _net(dtype), _net(dtype)
    kw = dict(batch_size=16, epochs=3, progress=False)
    ha = fb.fit(a, X, y, fb.KL(), make_opt(), engine=True, **kw)
    hb = fb.fit(b, X, y, fb.KL(), make_opt(), engine=False, **kw)
    assert np.array_equal(a.flat_params, b.flat_params) and ha.loss == hb.loss
    c = _net(dtype, p=0.0)  # the same initial network, without dropping: another result
    fb.fit(c, X, y, fb.KL(), make_opt(), engine=True, **kw)
    assert not np.array_equal(c.flat_params, a.flat_params)


def test_train_step_uses_the_optimizer_step_as_the_key():
    X, y = _data(20)
    a, b = _net(), _net()
    opt_a, opt_b = fb.SGD(lr=0.1), fb.SGD(lr=0.1)
    for _ in range(3):
        a.train_step(X, y, fb.KL(), opt_a)  # engine
        b._node_step(X, fb.KL().target(y, 20, 3, np.float64), fb.KL(), opt_b)
    assert np.array_equal(a.flat_params, b.flat_params)
    c = _net()
    opt_c = fb.SGD(lr=0.1)
    opt_c.t = 5  # a later step: other masks
    c.train_step(X, y, fb.KL(), opt_c)
    d = _net()
    d.train_step(X, y, fb.KL(), fb.SGD(lr=0.1))
    assert not np.array_equal(c.flat_params, d.flat_params)


@pytest.mark.parametrize("engine", [True, False])
def test_results_do_not_depend_on_the_thread_count(engine):
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(2000, 6)), rng.integers(0, 3, size=2000)
    out, before = [], fb.get_num_threads()
    try:
        for n in (1, 2):
            fb.set_num_threads(n)
            net = _net(p=0.5)
            fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1), batch_size=1000, epochs=2,
                   engine=engine, progress=False)  # 40,000 units a batch: the threads split it
            out.append(net.flat_params.copy())
    finally:
        fb.set_num_threads(before)
    assert np.array_equal(out[0], out[1])


def _interrupt_at(epoch):
    def cb(e, history, net):
        if e == epoch:
            raise KeyboardInterrupt
    return cb


@pytest.mark.parametrize("engine", [True, False])
def test_resume_is_bit_identical(tmp_path, engine):
    X, y = _data()
    kw = dict(batch_size=16, epochs=5, progress=False, engine=engine)
    whole = _net()
    fb.fit(whole, X, y, fb.KL(), fb.Adam(lr=0.01), **kw)
    part, path = _net(), tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt):
        fb.fit(part, X, y, fb.KL(), fb.Adam(lr=0.01), checkpoint=path,
               callbacks=[_interrupt_at(2)], **kw)
    resumed = _net()
    fb.fit(resumed, X, y, fb.KL(), fb.Adam(lr=0.01), resume=path, **kw)
    assert np.array_equal(resumed.flat_params, whole.flat_params)
    other = _net()
    other[2].seed += 1  # the seed is part of the architecture: masks of another run
    with pytest.raises(fb.CheckpointError, match="architecture does not match"):
        fb.fit(other, X, y, fb.KL(), fb.Adam(lr=0.01), resume=path, **kw)


def test_evaluation_and_p_zero_are_the_identity(rng):
    X = rng.normal(size=(5, 6))
    net = _net()
    assert np.array_equal(net.eval().predict(X), net.predict(X))
    y = X
    for k in (0, 1, 3, 4):  # the network without its Dropout, node by node
        y = net[k].forward(y)
    np.testing.assert_array_equal(net.predict(X), y)
    zero = fb.Sequential(fb.Linear(6, 4), fb.Dropout(0.0), seed=0).train()
    assert np.array_equal(zero.forward(X), zero[0].forward(X))


def test_forward_in_training_mode_draws_fresh_masks():
    X = np.ones((4, 6))
    net = fb.Sequential(fb.Linear(6, 50), fb.Dropout(0.5), seed=0).train()
    a, b = net.forward(X), net.forward(X)
    assert not np.array_equal(a, b)
    assert set(np.unique(np.round(a / net[0].forward(X), 12))) <= {0.0, 2.0}


def test_gradient_against_central_differences_at_a_fixed_step(rng):
    """In training the mask is fixed by (seed, step): the loss is smooth in the parameters
    and the input, and its backward pass is its gradient."""
    net = fb.Sequential(fb.Linear(4, 8), fb.Tanh(), fb.Dropout(0.4), fb.Linear(8, 3),
                        fb.Softmax(), seed=0)
    X, d = rng.normal(size=(5, 4)), rng.integers(0, 3, size=5)
    target = fb.KL().target(d, 5, 3, np.float64)
    step, eps = 7, 1e-6
    _, dX = net._loss_and_grad(X, target, fb.KL(), train=step)
    grads = [g.copy() for g in net.grads] + [dX]
    for p, g in zip(net.params + [X], grads):
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            fp = net._loss_value(X, target, fb.KL(), train=step)[0]
            flat[i] = old - eps
            fm = net._loss_value(X, target, fb.KL(), train=step)[0]
            flat[i] = old
            assert abs((fp - fm) / (2 * eps) - gflat[i]) <= 1e-6 * max(1.0, abs(gflat[i]))
    assert (net[2]._apply(np.ones((5, 8)), step)[0] == 0).any()  # some units dropped


def test_save_load_and_astype_keep_the_seed(tmp_path):
    net = _net()
    path = tmp_path / "net.npz"
    net.save(path)
    back = fb.load(path)
    assert back[2].seed == net[2].seed and back[2].p == 0.3
    assert net.astype(np.float32)[2].seed == net[2].seed
    X, y = _data(30)
    a, b = net, back
    fb.fit(a, X, y, fb.KL(), fb.SGD(lr=0.1), batch_size=10, epochs=1, progress=False)
    fb.fit(b, X, y, fb.KL(), fb.SGD(lr=0.1), batch_size=10, epochs=1, progress=False)
    assert np.array_equal(a.flat_params, b.flat_params)


@pytest.mark.parametrize("bad, match", [(dict(p=1.0), "0 <= p < 1"), (dict(p=-0.1), "0 <= p < 1"),
                                        (dict(seed=-1), "seed must be an int"),
                                        (dict(seed=2 ** 60), "seed must be an int"),
                                        (dict(seed=1.5), "seed must be an int")])
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        fb.Dropout(**bad)
