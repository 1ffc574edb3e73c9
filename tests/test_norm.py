"""LayerNorm and BatchNorm1d: kernels against plain NumPy references and central differences,
thread-count independence, the engine against the per-node path, PyTorch, files, checkpoints,
conversions and errors."""

import numpy as np
import pytest

import fastbp as fb
from fastbp import io as fio
from fastbp.interop import from_torch, load_state_dict, state_dict, to_torch
from fastbp.kernels import norm as KN

RTOL = 1e-12  # kernels against the float64 references
GRAD_TOL = 1e-6  # central differences (float64, eps 1e-6)
TORCH_RTOL = {np.float64: 1e-10, np.float32: 2e-4}
DTYPES = (np.float32, np.float64)


# ---------------------------------------------------------------------------------------------
# Plain NumPy references, loop by loop
# ---------------------------------------------------------------------------------------------
def normalise_ref(v, eps):
    """(xhat, mean, rstd) of one vector v: xhat = (v - mean) / sqrt(biased var + eps)."""
    n = len(v)
    mean = sum(v) / n
    var = sum((v[i] - mean) ** 2 for i in range(n)) / n
    rstd = 1 / np.sqrt(var + eps)
    return np.array([(v[i] - mean) * rstd for i in range(n)]), mean, rstd


def normalise_vjp_ref(v, gdy, eps):
    """dL/dv from dL/dxhat = gdy, through the full Jacobian of xhat(v):
    dxhat_i/dv_k = rstd (delta_ik - 1/n - xhat_i xhat_k / n)."""
    n = len(v)
    xhat, _, rstd = normalise_ref(v, eps)
    J = np.array([[rstd * ((i == k) - 1 / n - xhat[i] * xhat[k] / n) for k in range(n)]
                  for i in range(n)])
    return gdy @ J


def layernorm_ref(x, g, b, eps, dy):
    """(y, dx, dg, db) of LayerNorm, row by row."""
    y, dx = np.zeros_like(x), np.zeros_like(x)
    dg, db = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for t in range(x.shape[0]):
        xhat, _, _ = normalise_ref(x[t], eps)
        y[t] = g * xhat + b
        dx[t] = normalise_vjp_ref(x[t], dy[t] * g, eps)
        dg += dy[t] * xhat
        db += dy[t]
    return y, dx, dg, db


def batchnorm_train_ref(x, g, b, eps, momentum, rm, rv, dy):
    """(y, dx, dg, db, new running mean, new running var) of BatchNorm in training, column by
    column; the running variance takes the unbiased variance."""
    T, n = x.shape
    y, dx = np.zeros_like(x), np.zeros_like(x)
    dg, db, rm, rv = np.zeros(n), np.zeros(n), rm.copy(), rv.copy()
    for j in range(n):
        xhat, mean, _ = normalise_ref(x[:, j], eps)
        y[:, j] = g[j] * xhat + b[j]
        dx[:, j] = normalise_vjp_ref(x[:, j], dy[:, j] * g[j], eps)
        dg[j], db[j] = np.sum(dy[:, j] * xhat), np.sum(dy[:, j])
        unbiased = sum((x[t, j] - mean) ** 2 for t in range(T)) / (T - 1)
        rm[j] = (1 - momentum) * rm[j] + momentum * mean
        rv[j] = (1 - momentum) * rv[j] + momentum * unbiased
    return y, dx, dg, db, rm, rv


def batchnorm_eval_ref(x, g, b, eps, rm, rv, dy):
    """(y, dx, dg, db) of BatchNorm with fixed statistics: an affine map per unit."""
    xhat = (x - rm) / np.sqrt(rv + eps)
    return g * xhat + b, dy * g / np.sqrt(rv + eps), (dy * xhat).sum(0), dy.sum(0)


SHAPES = [(5, 4), (2, 1), (1, 6), (7, 3)]


def _data(rng, T, n, zero_row=False):
    x = rng.normal(size=(T, n)) * 3 + 1
    if zero_row:
        x[0] = 0
    return x, rng.normal(size=n), rng.normal(size=n), rng.normal(size=(T, n))


def _close(a, b, rtol=RTOL, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Kernels against the references
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,n", SHAPES)
@pytest.mark.parametrize("zero_row", [False, True])
def test_layernorm_kernels_match_reference(rng, T, n, zero_row):
    x, g, b, dy = _data(rng, T, n, zero_row)
    eps = 1e-5
    y, mean, rstd = np.empty_like(x), np.empty(T), np.empty(T)
    KN.layernorm_forward(x, g, b, eps, y, mean, rstd)
    dx, dg, db = np.empty_like(x), np.empty(n), np.empty(n)
    KN.layernorm_backward(x, g, dy, mean, rstd, dx, dg, db, True)
    yr, dxr, dgr, dbr = layernorm_ref(x, g, b, eps, dy)
    for got, want in ((y, yr), (dx, dxr), (dg, dgr), (db, dbr)):
        _close(got, want)


@pytest.mark.parametrize("T,n", [(5, 4), (2, 1), (7, 3)])
@pytest.mark.parametrize("zero_row", [False, True])
def test_batchnorm_train_kernels_match_reference(rng, T, n, zero_row):
    x, g, b, dy = _data(rng, T, n, zero_row)
    eps, momentum = 1e-5, 0.3
    rm0, rv0 = rng.normal(size=n), rng.uniform(0.5, 2, size=n)
    rm, rv = rm0.copy(), rv0.copy()
    y, mean, rstd = np.empty_like(x), np.empty(n), np.empty(n)
    KN.batchnorm_forward_train(x, g, b, eps, momentum, y, mean, rstd, rm, rv)
    dx, dg, db = np.empty_like(x), np.empty(n), np.empty(n)
    KN.batchnorm_backward_train(x, g, dy, mean, rstd, dx, dg, db, True)
    want = batchnorm_train_ref(x, g, b, eps, momentum, rm0, rv0, dy)
    for got, w in zip((y, dx, dg, db, rm, rv), want):
        _close(got, w)


@pytest.mark.parametrize("T,n", SHAPES)
def test_batchnorm_eval_kernels_match_reference(rng, T, n):
    x, g, b, dy = _data(rng, T, n)
    eps = 1e-3
    rm, rv = rng.normal(size=n), rng.uniform(0.5, 2, size=n)
    y, mean, rstd = np.empty_like(x), np.empty(n), np.empty(n)
    KN.batchnorm_forward_eval(x, g, b, eps, rm, rv, y, mean, rstd)
    dx, dg, db = np.empty_like(x), np.empty(n), np.empty(n)
    KN.batchnorm_backward_eval(x, g, dy, mean, rstd, dx, dg, db, True)
    for got, w in zip((y, dx, dg, db), batchnorm_eval_ref(x, g, b, eps, rm, rv, dy)):
        _close(got, w)


def test_empty_parameter_gradients_and_no_dx_write_nothing(rng):
    x, g, b, dy = _data(rng, 6, 3)
    for fwd, bwd, stat in ((KN.layernorm_forward, KN.layernorm_backward, 6),
                           (None, KN.batchnorm_backward_train, 3)):
        mean, rstd = np.empty(stat), np.empty(stat)
        y = np.empty_like(x)
        if fwd is not None:
            fwd(x, g, b, 1e-5, y, mean, rstd)
        else:
            KN.batchnorm_forward_train(x, g, b, 1e-5, 0.1, y, mean, rstd, np.zeros(3), np.ones(3))
        dx = np.full_like(x, 7.0)
        empty = np.zeros(0)
        bwd(x, g, dy, mean, rstd, dx, empty, empty.copy(), False)
        assert (dx == 7.0).all()


# ---------------------------------------------------------------------------------------------
# Central differences (float64)
# ---------------------------------------------------------------------------------------------
def _net(norm, dtype=np.float64, seed=0, n_in=4, width=5, head=3):
    return fb.Sequential(fb.Linear(n_in, width), norm, fb.Tanh(), fb.Linear(width, head),
                         fb.Softmax(), dtype=dtype, seed=seed)


def _perturb_norm_params(net, rng):
    for node in net.walk():
        if isinstance(node, (fb.LayerNorm, fb.BatchNorm1d)):
            if node.affine:
                node.g[...] = rng.uniform(0.5, 1.5, node.n)
                node.b[...] = rng.normal(size=node.n) * 0.3
            if isinstance(node, fb.BatchNorm1d):
                node.running_mean[...] = rng.normal(size=node.n) * 0.3
                node.running_var[...] = rng.uniform(0.5, 2, node.n)


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_gradcheck(rng, affine):
    net = _net(fb.LayerNorm(5, affine=affine))
    _perturb_norm_params(net, rng)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    report = fb.gradcheck(net, X, y, fb.KL(), tol=GRAD_TOL)
    assert report.ok, report


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_eval_gradcheck(rng, affine):
    net = _net(fb.BatchNorm1d(5, affine=affine))
    _perturb_norm_params(net, rng)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    report = fb.gradcheck(net, X, y, fb.KL(), tol=GRAD_TOL)  # gradcheck runs in eval mode
    assert report.ok, report


def _train_mode_differences(net, X, d, loss, eps=1e-6):
    """The worst relative error between the training-mode gradients (of the parameters and
    the input) and central differences of the training-mode loss."""
    target = loss.target(d, X.shape[0], net.n_out, np.float64)
    _, dX = net._loss_and_grad(X, target, loss, need_dx=True, train=True)
    worst = 0.0
    for p, g in [(p, g.copy()) for p, g in zip(net.params, net.grads)] + [(X, dX)]:
        flat, num = p.reshape(-1), np.empty(p.size)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            fp = net._loss_value(X, target, loss, train=True)[0]
            flat[i] = old - eps
            fm = net._loss_value(X, target, loss, train=True)[0]
            flat[i] = old
            num[i] = (fp - fm) / (2 * eps)
        scale = max(np.abs(num).max(), 1e-8)
        worst = max(worst, float(np.abs(num - g.reshape(-1)).max() / scale))
    return worst


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("first", [True, False])
def test_batchnorm_train_gradient_through_batch_statistics(rng, affine, first):
    if first:  # on the input: no gradient wanted below it in training
        net = fb.Sequential(fb.BatchNorm1d(4, affine=affine), fb.Linear(4, 3), fb.Softmax(),
                            seed=0)
    else:
        net = _net(fb.BatchNorm1d(5, affine=affine))
    _perturb_norm_params(net, rng)
    X, y = rng.normal(size=(7, 4)), rng.integers(0, 3, 7)
    assert _train_mode_differences(net, X, y, fb.KL()) < GRAD_TOL


def test_layernorm_train_mode_gradient(rng):
    net = _net(fb.LayerNorm(5))
    _perturb_norm_params(net, rng)
    X, y = rng.normal(size=(4, 4)), rng.integers(0, 3, 4)
    assert _train_mode_differences(net, X, y, fb.KL()) < GRAD_TOL


def test_batchnorm_training_gradient_differs_from_eval(rng):
    """The training gradient flows through the batch statistics (it is not the affine one)."""
    net = _net(fb.BatchNorm1d(5))
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    target = fb.KL().target(y, 6, 3, np.float64)
    _, dtrain = net._loss_and_grad(X, target, fb.KL(), train=True)
    _, deval = net._loss_and_grad(X, target, fb.KL(), train=False)
    assert not np.allclose(dtrain, deval)


# ---------------------------------------------------------------------------------------------
# Threads: 1 and 2 give the same bits
# ---------------------------------------------------------------------------------------------
def test_kernels_independent_of_thread_count(rng):
    x, g, b, dy = _data(rng, 301, 67)
    T, n = x.shape
    runs = []
    old = fb.get_num_threads()
    try:
        for threads in (1, 2):
            fb.set_num_threads(threads)
            out = []
            y, mean, rstd = np.empty_like(x), np.empty(T), np.empty(T)
            KN.layernorm_forward(x, g, b, 1e-5, y, mean, rstd)
            dx, dg, db = np.empty_like(x), np.empty(n), np.empty(n)
            KN.layernorm_backward(x, g, dy, mean, rstd, dx, dg, db, True)
            out += [y, dx, dg, db]
            rm, rv = np.zeros(n), np.ones(n)
            y, mean, rstd = np.empty_like(x), np.empty(n), np.empty(n)
            KN.batchnorm_forward_train(x, g, b, 1e-5, 0.1, y, mean, rstd, rm, rv)
            dx, dg, db = np.empty_like(x), np.empty(n), np.empty(n)
            KN.batchnorm_backward_train(x, g, dy, mean, rstd, dx, dg, db, True)
            out += [y, dx, dg, db, rm, rv]
            KN.batchnorm_forward_eval(x, g, b, 1e-5, rm, rv, y, mean, rstd)
            KN.batchnorm_backward_eval(x, g, dy, mean, rstd, dx, dg, db, True)
            out += [y.copy(), dx.copy(), dg.copy(), db.copy()]
            runs.append(out)
    finally:
        fb.set_num_threads(old)
    for a, b_ in zip(*runs):
        assert np.array_equal(a, b_)


def test_serial_twins_give_the_same_bits(rng):
    x, g, b, dy = _data(rng, 50, 9)
    T, n = x.shape
    outs = []
    for fwd, bwd in ((KN.layernorm_forward, KN.layernorm_backward),
                     (KN.layernorm_forward_serial, KN.layernorm_backward_serial)):
        y, mean, rstd = np.empty_like(x), np.empty(T), np.empty(T)
        fwd(x, g, b, 1e-5, y, mean, rstd)
        dx, dg, db = np.empty_like(x), np.empty(n), np.empty(n)
        bwd(x, g, dy, mean, rstd, dx, dg, db, True)
        outs.append((y, dx, dg, db))
    for fwd, bwd in ((KN.batchnorm_forward_train, KN.batchnorm_backward_train),
                     (KN.batchnorm_forward_train_serial, KN.batchnorm_backward_train_serial)):
        y, mean, rstd, rm, rv = np.empty_like(x), np.empty(n), np.empty(n), np.zeros(n), np.ones(n)
        fwd(x, g, b, 1e-5, 0.1, y, mean, rstd, rm, rv)
        dx, dg, db = np.empty_like(x), np.empty(n), np.empty(n)
        bwd(x, g, dy, mean, rstd, dx, dg, db, True)
        outs.append((y, dx, dg, db, rm, rv))
    rm, rv = rng.normal(size=n), rng.uniform(0.5, 2, n)
    for fwd in (KN.batchnorm_forward_eval, KN.batchnorm_forward_eval_serial):
        y, mean, rstd = np.empty_like(x), np.empty(n), np.empty(n)
        fwd(x, g, b, 1e-5, rm, rv, y, mean, rstd)
        outs.append((y, mean, rstd))
    for a, b_ in ((outs[0], outs[1]), (outs[2], outs[3]), (outs[4], outs[5])):
        for u, v in zip(a, b_):
            assert np.array_equal(u, v)


# ---------------------------------------------------------------------------------------------
# The engine against the per-node path
# ---------------------------------------------------------------------------------------------
def _engine_pair(build, dtype, X, y, **kw):
    a, b = build(dtype), build(dtype)
    opts = dict(epochs=3, progress=False, seed=1)
    opts.update(kw)
    assert fb.engine.chooses(a, fb.KL(), fb.KL().target(y, len(y), a.n_out, a.dtype),
                             fb.SGD(lr=0.1))
    fb.fit(a, X, y, fb.KL(), fb.SGD(lr=0.1, momentum=0.9), engine=True, **opts)
    fb.fit(b, X, y, fb.KL(), fb.SGD(lr=0.1, momentum=0.9), engine=False, **opts)
    return a, b


def _same_state(a, b):
    assert np.array_equal(a.flat_params, b.flat_params)
    for na, nb in zip(a.walk(), b.walk()):
        for attr, _ in na.buffer_specs():
            assert np.array_equal(getattr(na, attr), getattr(nb, attr)), attr


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_engine_matches_node_path(rng, dtype, affine):
    def build(dt):
        return fb.Sequential(fb.BatchNorm1d(4, momentum=0.2, affine=affine), fb.Linear(4, 6),
                             fb.LayerNorm(6, affine=affine), fb.ReLU(), fb.Linear(6, 5),
                             fb.BatchNorm1d(5, eps=1e-3, affine=affine), fb.Tanh(),
                             fb.Linear(5, 3), fb.LayerNorm(3), fb.Softmax(), dtype=dt, seed=0)
    X, y = rng.normal(size=(30, 4)) * 2 + 1, rng.integers(0, 3, 30)
    a, b = _engine_pair(build, dtype, X, y, batch_size=7)  # a tail of 2 rows
    _same_state(a, b)
    assert not np.array_equal(a[0].running_mean, np.zeros(4))
    Xd = X.astype(dtype)
    assert np.array_equal(a.predict(X), b.eval()._apply(Xd, False)[0])  # engine vs nodes


@pytest.mark.parametrize("dtype", DTYPES)
def test_engine_matches_node_path_on_the_threads(rng, dtype):
    """Large enough (rows * width >= PAR_MIN_WORK) that the engine runs the parallel leaves."""
    def build(dt):
        return fb.Sequential(fb.Linear(8, 128), fb.BatchNorm1d(128), fb.LayerNorm(128),
                             fb.Linear(128, 3), fb.Softmax(), dtype=dt, seed=0)
    X, y = rng.normal(size=(512, 8)), rng.integers(0, 3, 512)
    a, b = _engine_pair(build, dtype, X, y, epochs=2)
    _same_state(a, b)


def test_engine_follows_a_replaced_running_statistic(rng):
    net = _net(fb.BatchNorm1d(5)).eval()
    X = rng.normal(size=(4, 4))
    net.predict(X)  # compiles the tape with the arrays of now
    net[1].running_mean = rng.normal(size=5)
    net[1].running_var = rng.uniform(0.5, 2, 5)
    assert np.array_equal(net.predict(X), net._apply(X, False)[0])
    net[1].running_var = np.ones(5, np.float32)
    with pytest.raises(TypeError, match="running_var must be a writable contiguous float64"):
        net.predict(X)


def test_train_step_updates_running_statistics_in_the_engine(rng):
    a, b = _net(fb.BatchNorm1d(5)), _net(fb.BatchNorm1d(5))
    X, y = rng.normal(size=(8, 4)), rng.integers(0, 3, 8)
    for _ in range(3):
        a.train_step(X, y, fb.KL(), fb.SGD(lr=0.1))
        b.train()
        b._node_step(b._input(X), fb.KL().target(y, 8, 3, np.float64), fb.KL(), fb.SGD(lr=0.1))
    _same_state(a, b)


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------
try:
    import torch
except ImportError:  # the tests against PyTorch are skipped
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
TDT = {} if torch is None else {np.float32: torch.float32, np.float64: torch.float64}


def _torch_check(node, module, x, dy, dtype, train):
    """Outputs and gradients (input, weight, bias) of the fastbp node and the torch module."""
    rtol = TORCH_RTOL[dtype]
    module.train(train)
    xt = torch.tensor(x, dtype=TDT[dtype], requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy, dtype=TDT[dtype]))
    y, ctx = node._apply(x.astype(dtype), train)
    dx = node._backprop(ctx, dy.astype(dtype))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=rtol, atol=rtol)
    if node.affine:
        np.testing.assert_allclose(node.dg, module.weight.grad.numpy(), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(node.db, module.bias.grad.numpy(), rtol=rtol, atol=rtol)
        module.weight.grad = module.bias.grad = None


def _bound(node, dtype, rng):
    """The node inside a network of ``dtype`` (so its parameters exist), with random gain and
    bias; and those as torch wants them."""
    net = fb.Sequential(node, dtype=dtype, seed=0)
    if node.affine:
        node.g[...] = rng.uniform(0.5, 1.5, node.n)
        node.b[...] = rng.normal(size=node.n)
    return net


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_matches_torch(rng, dtype, affine):
    node = fb.LayerNorm(6, eps=1e-4, affine=affine)
    _bound(node, dtype, rng)
    m = torch.nn.LayerNorm(6, eps=1e-4, elementwise_affine=affine, dtype=TDT[dtype])
    if affine:
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(node.g.copy()))
            m.bias.copy_(torch.from_numpy(node.b.copy()))
    for train in (True, False):
        x, dy = rng.normal(size=(5, 6)) * 2 + 3, rng.normal(size=(5, 6))
        _torch_check(node, m, x, dy, dtype, train)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_torch_with_running_statistics(rng, dtype, affine):
    node = fb.BatchNorm1d(4, eps=1e-3, momentum=0.25, affine=affine)
    _bound(node, dtype, rng)
    m = torch.nn.BatchNorm1d(4, eps=1e-3, momentum=0.25, affine=affine, dtype=TDT[dtype])
    if affine:
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(node.g.copy()))
            m.bias.copy_(torch.from_numpy(node.b.copy()))
    rtol = TORCH_RTOL[dtype]
    for step in range(4):  # training steps move the running statistics
        x, dy = rng.normal(size=(6, 4)) * 2 + 3, rng.normal(size=(6, 4))
        _torch_check(node, m, x, dy, dtype, train=True)
        np.testing.assert_allclose(node.running_mean, m.running_mean.numpy(), rtol=rtol)
        np.testing.assert_allclose(node.running_var, m.running_var.numpy(), rtol=rtol)
    x, dy = rng.normal(size=(3, 4)) * 2 + 3, rng.normal(size=(3, 4))
    _torch_check(node, m, x, dy, dtype, train=False)


# ---------------------------------------------------------------------------------------------
# Files, copies, checkpoints
# ---------------------------------------------------------------------------------------------
def _trained(rng, dtype=np.float64):
    net = fb.Sequential(fb.Linear(4, 5), fb.BatchNorm1d(5, momentum=0.3), fb.Tanh(),
                        fb.Linear(5, 3), fb.LayerNorm(3, eps=1e-4), fb.Softmax(), dtype=dtype,
                        seed=0)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1), batch_size=5, epochs=2, progress=False)
    return net, X, y


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load_round_trip_with_running_statistics(rng, tmp_path, dtype):
    net, X, _ = _trained(rng, dtype)
    path = tmp_path / "net.npz"
    net.save(path)
    back = fb.load(path)
    assert repr(back) == repr(net) and back.dtype == net.dtype
    _same_state(back, net)
    assert back[1].running_mean.dtype == dtype
    assert np.array_equal(back.predict(X), net.predict(X))
    assert fio.architecture(back)["root"] == fio.architecture(net)["root"]


def test_load_refuses_bad_running_statistics(rng, tmp_path):
    net, _, _ = _trained(rng)
    path = tmp_path / "net.npz"
    net.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for name, buffers in (("nan", np.where(np.arange(10) == 3, np.nan, arrays["buffers"])),
                          ("short", arrays["buffers"][:-1]), ("missing", None)):
        bad = dict(arrays)
        if buffers is None:
            del bad["buffers"]
        else:
            bad["buffers"] = buffers
        p = tmp_path / f"{name}.npz"
        fio.write_npz(p, bad)
        with pytest.raises(fb.CheckpointError, match="buffers"):
            fb.load(p)


def test_save_refuses_non_finite_running_statistics(rng, tmp_path):
    net, _, _ = _trained(rng)
    net[1].running_var[0] = np.inf
    with pytest.raises(ValueError, match="running statistics"):
        net.save(tmp_path / "net.npz")


def test_astype_and_copies_carry_running_statistics(rng):
    net, X, _ = _trained(rng, np.float32)
    wide = net.astype(np.float64)
    assert wide[1].running_mean.dtype == np.float64
    assert np.array_equal(wide[1].running_mean, net[1].running_mean.astype(np.float64))
    assert np.array_equal(wide[1].running_var, net[1].running_var.astype(np.float64))
    assert wide[1].running_mean is not net[1].running_mean
    np.testing.assert_allclose(wide.predict(X), net.predict(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", [True, False])
def test_checkpoint_resume_is_bit_identical(rng, tmp_path, engine):
    X, y = rng.normal(size=(23, 4)), rng.integers(0, 3, 23)

    def build():
        return fb.Sequential(fb.Linear(4, 6), fb.BatchNorm1d(6), fb.ReLU(), fb.Linear(6, 3),
                             fb.LayerNorm(3), fb.Softmax(), seed=0)

    opts = dict(batch_size=5, progress=False, seed=4, tol=None, engine=engine)
    whole = build()
    fb.fit(whole, X, y, fb.KL(), fb.Adam(lr=0.01), epochs=5, **opts)
    path = str(tmp_path / "ck.npz")
    first = build()
    fb.fit(first, X, y, fb.KL(), fb.Adam(lr=0.01), epochs=2, checkpoint=path, **opts)
    resumed = build()
    fb.fit(resumed, X, y, fb.KL(), fb.Adam(lr=0.01), epochs=5, resume=path, **opts)
    _same_state(resumed, whole)
    assert not np.array_equal(first[1].running_mean, whole[1].running_mean)


# ---------------------------------------------------------------------------------------------
# PyTorch conversions
# ---------------------------------------------------------------------------------------------
def _torch_model(dtype):
    nn = torch.nn
    m = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, eps=1e-4, momentum=0.2), nn.ReLU(),
                      nn.Linear(5, 3), nn.LayerNorm(3), nn.Tanh(),
                      nn.BatchNorm1d(3, affine=False), nn.LayerNorm(3, elementwise_affine=False))
    m = m.to(TDT[dtype])
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for bn in (m[1], m[6]):
            bn.running_mean.copy_(torch.randn_like(bn.running_mean))
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    return m


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_from_torch_and_to_torch_round_trip(rng, dtype):
    torch.manual_seed(0)
    m = _torch_model(dtype)
    net = from_torch(m)
    assert net.dtype == dtype
    assert [type(net[k]).__name__ for k in (1, 4, 6, 7)] == \
        ["BatchNorm1d", "LayerNorm", "BatchNorm1d", "LayerNorm"]
    assert net[1].momentum == 0.2 and net[1].eps == 1e-4 and not net[6].affine
    assert not net[7].affine and net[4].affine
    back = to_torch(net)
    sd, sd_back = m.state_dict(), back.state_dict()
    assert set(sd) == set(sd_back)
    for k in sd:
        if "num_batches" not in k:
            assert torch.equal(sd[k], sd_back[k]), k
    assert list(state_dict(net)) == [k for k in sd if "num_b" not in k]
    for k, v in state_dict(net).items():
        assert np.array_equal(v, sd[k].numpy()), k
    other = from_torch(_torch_model(dtype))
    load_state_dict(other, m.state_dict())  # PyTorch's own, num_batches_tracked included
    _same_state(other, net)
    with pytest.raises(ValueError, match=r"missing \['1.running_var'\]"):
        load_state_dict(other, {k: v for k, v in sd.items() if k != "1.running_var"})
    X = rng.normal(size=(6, 4))
    Xt = torch.tensor(X, dtype=TDT[dtype])
    rtol = TORCH_RTOL[dtype]
    with torch.no_grad():
        want_eval = m.eval()(Xt).numpy()
        np.testing.assert_allclose(back.eval()(Xt).numpy(), want_eval, rtol=rtol, atol=rtol)
        want_train = m.train()(Xt).numpy()  # moves m's running statistics
    np.testing.assert_allclose(net.eval().predict(X), want_eval, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(net.train().forward(X), want_train, rtol=rtol, atol=rtol)
    for k in (1, 6):
        np.testing.assert_allclose(net[k].running_mean, m[k].running_mean.numpy(), rtol=rtol)
        np.testing.assert_allclose(net[k].running_var, m[k].running_var.numpy(), rtol=rtol)


@needs_torch
def test_from_torch_refuses_what_fastbp_lacks():
    nn = torch.nn
    for m, match in ((nn.LayerNorm((2, 3)), "one dimension"),
                     (nn.BatchNorm1d(3, track_running_stats=False), "track_running_stats"),
                     (nn.BatchNorm1d(3, momentum=None), "momentum=None"),
                     (nn.LayerNorm(3, bias=False), "bias=False"),
                     (nn.BatchNorm2d(3), "has no fastbp node")):
        with pytest.raises(ValueError, match=match):
            from_torch(nn.Sequential(nn.Linear(3, 3), m))


# ---------------------------------------------------------------------------------------------
# Configuration, errors
# ---------------------------------------------------------------------------------------------
def test_config_and_repr():
    ln, bn = fb.LayerNorm(3, eps=1e-3, affine=False), fb.BatchNorm1d(4, momentum=0.5)
    assert repr(ln) == "LayerNorm(3, eps=0.001, affine=False)"
    assert repr(bn) == "BatchNorm1d(4, momentum=0.5)"
    assert type(bn)(**bn.config()).config() == bn.config()
    assert fb.Node.builtin["LayerNorm"] is fb.LayerNorm
    net = fb.Sequential(ln, fb.Linear(3, 4), bn, seed=0)
    assert net.n_in == 3 and net.param_names == ["1.W", "1.b", "2.g", "2.b"]


def test_wrong_width_is_refused(rng):
    with pytest.raises(ValueError, match=r"LayerNorm\(5\) expects 5 inputs but receives 4"):
        fb.Sequential(fb.Linear(3, 4), fb.LayerNorm(5))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(5\) expects 5 inputs but receives 4"):
        fb.Sequential(fb.Linear(3, 4), fb.BatchNorm1d(5))
    net = fb.Sequential(fb.LayerNorm(3), seed=0)
    with pytest.raises(ValueError, match="3"):
        net.forward(rng.normal(size=(2, 4)))


@pytest.mark.parametrize("bad", [dict(n=0), dict(n=2, eps=0), dict(n=2, eps=-1),
                                 dict(n=2, momentum=1.5), dict(n=2, momentum="x")])
def test_bad_configuration_is_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        fb.BatchNorm1d(**bad)


def test_batch_of_one_in_training(rng):
    net = _net(fb.BatchNorm1d(5))
    X, y = rng.normal(size=(9, 4)), rng.integers(0, 3, 9)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        net.forward(X[:1])
    before = net.flat_params.copy()
    for engine in (True,):  # the engine refuses before any step
        with pytest.raises(ValueError, match="more than 1 value per channel.*1 row"):
            fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1), batch_size=4, epochs=1,
                   progress=False, engine=engine)
        assert np.array_equal(net.flat_params, before)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        net.train_step(X[:1], y[:1], fb.KL(), fb.SGD(lr=0.1))
    assert np.array_equal(net.flat_params, before)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1), batch_size=4, epochs=1, progress=False,
               engine=False)
    # one row in evaluation is fine, through the engine and node by node
    assert np.array_equal(net.eval().predict(X[:1]), net._apply(X[:1], False)[0])
    # LayerNorm has no such limit
    ln = _net(fb.LayerNorm(5))
    ln.train_step(X[:1], y[:1], fb.KL(), fb.SGD(lr=0.1))


def test_standalone_node_needs_a_network():
    with pytest.raises(RuntimeError, match=r"LayerNorm\(3\) has no parameters yet"):
        fb.LayerNorm(3).forward(np.ones((2, 3)))


def test_data_parallel_training_refuses_batch_statistics(rng):
    MPI = pytest.importorskip("mpi4py.MPI")
    net = _net(fb.BatchNorm1d(5))
    before = net.flat_params.copy()
    X, y = rng.normal(size=(8, 4)), rng.integers(0, 3, 8)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(5\) normalises over the batch"):
        fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1), epochs=1, progress=False,
               comm=MPI.COMM_SELF)
    assert np.array_equal(net.flat_params, before)
    ln = _net(fb.LayerNorm(5))
    fb.fit(ln, X, y, fb.KL(), fb.SGD(lr=0.1), epochs=1, progress=False, comm=MPI.COMM_SELF)


def test_restore_best_restores_that_epochs_running_statistics(rng, tmp_path):
    X, y = rng.normal(size=(24, 4)), rng.integers(0, 3, 24)
    Xv, yv = rng.normal(size=(12, 4)), rng.integers(0, 3, 12)  # noise: overfitting shows

    def build():
        return fb.Sequential(fb.Linear(4, 16), fb.BatchNorm1d(16, momentum=0.5), fb.ReLU(),
                             fb.Linear(16, 3), fb.Softmax(), seed=0)

    opts = dict(batch_size=6, progress=False, seed=2, tol=None)
    early = build()
    h = fb.fit(early, X, y, fb.KL(), fb.Adam(lr=0.05), epochs=40, validation=(Xv, yv),
               patience=4, **opts)
    assert h.best_epoch < len(h.loss) - 1  # training went on past the best epoch
    upto = build()  # the same run stopped at the best epoch
    fb.fit(upto, X, y, fb.KL(), fb.Adam(lr=0.05), epochs=h.best_epoch + 1, **opts)
    _same_state(early, upto)
    # through a checkpoint taken after the best epoch, the same
    path = str(tmp_path / "ck.npz")
    part = build()
    fb.fit(part, X, y, fb.KL(), fb.Adam(lr=0.05), epochs=h.best_epoch + 2,
           validation=(Xv, yv), patience=4, restore_best=False, checkpoint=path, **opts)
    with np.load(path) as z:
        assert "best_buffers" in z.files
    resumed = build()
    fb.fit(resumed, X, y, fb.KL(), fb.Adam(lr=0.05), epochs=40, validation=(Xv, yv),
           patience=4, resume=path, **opts)
    _same_state(resumed, early)
