"""The compiled engine gives the same numbers as the per-node Python path, bit for bit."""

import numpy as np
import pytest

import fastbp as fb
from fastbp import _config, engine
from fastbp.kernels import dense as KD
from fastbp.kernels import engine as KE
from fastbp.kernels import optim as KO


def _nets(dtype):
    """Networks that together use every built-in node kind the engine runs."""
    return {
        "mlp": lambda: fb.Sequential(fb.Linear(8, 16), fb.Tanh(), fb.Linear(16, 3), fb.Softmax(),
                                     dtype=dtype, seed=0),
        "gated": lambda: fb.Sequential(
            fb.Product(fb.Sequential(fb.Linear(8, 6), fb.ReLU()),
                       fb.Sequential(fb.Linear(8, 6), fb.Sigmoid())),
            fb.Linear(6, 3), fb.Softmax(), dtype=dtype, seed=1),
        "mixed": lambda: fb.Sequential(
            fb.Linear(8, 12), fb.ELU(), fb.MaxPool1d(2), fb.Linear(6, 8, bias=False),
            fb.LeakyReLU(0.2), fb.PairProduct(), fb.GELU(), fb.Linear(4, 4), fb.Softplus(),
            fb.MaxOver([[0, 1], [1, 2, 3], [3]]), fb.Identity(), fb.Linear(3, 2),
            fb.ReLU(grad_at_zero=0), fb.PowerProduct([[1.0, 2.0, 0.0], [1.0, 0.0, 1.0]]),
            fb.Linear(3, 3), fb.Softmax(), dtype=dtype, seed=2),
    }


LOSSES = {
    "kl_labels": (fb.KL, lambda rng, n: rng.integers(0, 3, size=n)),
    "kl_probs": (fb.KL, lambda rng, n: rng.dirichlet(np.ones(3), size=n)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["mlp", "gated", "mixed"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("make_opt", [lambda: fb.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                      lambda: fb.Adam(lr=0.01, weight_decay=0.01),
                                      lambda: fb.RMSprop(lr=0.01, momentum=0.5, centered=True,
                                                         clip_norm=0.3)],
                         ids=["sgd", "adam", "rmsprop-clipped"])
def test_fit_engine_equals_per_node(dtype, name, loss_name, make_opt):
    rng = np.random.default_rng(0)
    X = rng.uniform(0.1, 1.0, size=(37, 8))  # positive: PowerProduct's inputs after layers
    loss_cls, target = LOSSES[loss_name]
    d = target(rng, 37)
    make = _nets(dtype)[name]
    a, b = make(), make()
    kw = dict(batch_size=10, epochs=3, tol=None, seed=3, progress=False)
    ha = fb.fit(a, X, d, loss_cls(), make_opt(), engine=True, **kw)
    hb = fb.fit(b, X, d, loss_cls(), make_opt(), engine=False, **kw)
    assert np.array_equal(a.flat_params, b.flat_params)
    assert ha.loss == hb.loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss, last, d", [
    (fb.BinaryKL, fb.Sigmoid, lambda rng, n: (rng.random((n, 2)) < 0.5).astype(float)),
    (fb.BinaryKL, fb.Softmax, lambda rng, n: rng.random((n, 2))),  # general (unfused) path
    (fb.L2, fb.Tanh, lambda rng, n: rng.normal(size=(n, 2))),
    (fb.KL, fb.Softmax, lambda rng, n: rng.integers(0, 2, size=n)),
    (fb.Poisson, fb.Exp, lambda rng, n: rng.poisson(1.0, size=(n, 2)).astype(float)),
    (fb.Poisson, fb.Softplus, lambda rng, n: rng.poisson(1.0, size=(n, 2)).astype(float)),
])
def test_full_batch_engine_equals_per_node_for_every_divergence(dtype, loss, last, d):
    rng = np.random.default_rng(1)
    X, target = rng.normal(size=(21, 4)), d(rng, 21)

    def make():
        return fb.Sequential(fb.Linear(4, 5), fb.Tanh(), fb.Linear(5, 2), last(), dtype=dtype,
                             seed=4)

    a, b = make(), make()
    for net, eng in ((a, True), (b, False)):
        fb.fit(net, X, target, loss(), fb.SGD(lr=0.1), epochs=4, tol=None, progress=False,
               engine=eng)
    assert np.array_equal(a.flat_params, b.flat_params)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_predict_engine_equals_per_node(dtype, rows):
    X = np.random.default_rng(2).uniform(0.1, 1, size=(rows, 8))
    for make in _nets(dtype).values():
        net = make()
        per_node = net._apply(net._input(X), False)[0]
        assert np.array_equal(net.predict(X), per_node)
        assert engine.compile_tape(net, False) is not None


def test_predict_after_a_larger_batch_reuses_workspace_correctly():
    net = _nets(np.float64)["mlp"]()
    X = np.random.default_rng(0).normal(size=(50, 8))
    big = net.predict(X)
    small = net.predict(X[:3])
    assert np.array_equal(small, big[:3])
    assert not np.shares_memory(small, big)


def test_train_step_engine_equals_per_node():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(1, 8)), np.array([2])
    a, b = _nets(np.float32)["gated"](), _nets(np.float32)["gated"]()
    oa, ob = fb.SGD(lr=0.1), fb.SGD(lr=0.1)
    for _ in range(5):
        la = a.train_step(X, y, fb.KL(), oa)
        Xb = b._input(X)
        tb = fb.KL().target(y, 1, 3, b.dtype)
        lb = fb.training.train_step(b, Xb, tb, fb.KL(), ob)
        assert la == lb
    assert np.array_equal(a.flat_params, b.flat_params)


@pytest.mark.parametrize("rows", [1, 32])
@pytest.mark.parametrize("last, loss, target", [
    (fb.Softmax, fb.KL, lambda rows: np.zeros(rows, np.int64)),
    (fb.Softmax, fb.KL, lambda rows: np.full((rows, 3), 1 / 3)),
    (fb.Sigmoid, fb.BinaryKL, lambda rows: np.zeros((rows, 3))),
    (fb.Exp, fb.Poisson, lambda rows: np.zeros((rows, 3))),
    (fb.Softmax, fb.L2, lambda rows: np.zeros((rows, 3))),
], ids=["kl-labels", "kl-probs", "binary-kl", "poisson", "l2"])
def test_a_fused_loss_step_leaves_out_the_last_forward(rows, last, loss, target):
    """A fused loss kernel writes its activation's output, so a training step does not run that
    activation's forward (the rows classified right, counted from that output, are as on the
    per-node path: ``test_fit_engine_equals_per_node``); a step whose loss reads the output
    (L2 after a Softmax) runs it. Predict runs it either way."""
    net = fb.Sequential(fb.Linear(8, 16), fb.Tanh(), fb.Linear(16, 3), last(), seed=0)
    out = len(net.nodes) - 1
    loss, target = loss(), target(rows)
    tape, loss_code, (code, hyper, _) = engine.check_supported(net, loss, target, fb.SGD())
    calls, _ = tape.step_kernels(rows, *engine.training_step(
        tape, loss_code, code, hyper, target.ndim == 1, True, False))
    forward = [op for _, op in tape._forward_kernels(net.dtype.type, rows)]
    assert len(tape.ops) == len(net.nodes) and out in forward
    assert (out in [op for _, op in calls]) == isinstance(loss, fb.L2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("last, loss, target", [
    (fb.Softmax, fb.KL, lambda rng, rows: rng.integers(0, 5, rows)),
    (fb.Softmax, fb.KL, lambda rng, rows: rng.dirichlet(np.ones(5), rows)),
    (fb.Sigmoid, fb.BinaryKL, lambda rng, rows: rng.integers(0, 2, (rows, 5)).astype(float)),
    (fb.Exp, fb.Poisson, lambda rng, rows: rng.poisson(1.0, (rows, 5)).astype(float)),
    (fb.Tanh, fb.L2, lambda rng, rows: rng.normal(size=(rows, 5))),
], ids=["kl-labels", "kl-probs", "binary-kl", "poisson", "l2"])
def test_evaluate_gives_the_per_node_loss_and_outputs(dtype, last, loss, target):
    """The validation loss of a fit (``engine.evaluate``: the forward program, then the
    divergence's kernel, fused where it can be) has the bits of the node-by-node pass, with
    and without sample weights, on rows that take the threads and on a few; non-finite
    outputs and a user's divergence go node by node (None)."""
    rng = np.random.default_rng(3)
    net = fb.Sequential(fb.Linear(30, 300), fb.Tanh(), fb.Linear(300, 5), last(), dtype=dtype,
                        seed=0)
    assert 450 * 30 * 300 >= KD.PAR_MIN_WORK
    for rows in (3, 450):
        X, t = rng.normal(size=(rows, 30)).astype(dtype), target(rng, rows)
        for w in (None, rng.uniform(size=rows)):
            value, Y = engine.evaluate(net, X, t, loss(), w)
            want, _, Y_node = net._loss_and_output(X, t, loss(), weights=w)
            assert value == want and Y.tobytes() == Y_node.tobytes()
    X[0, 0] = np.inf
    assert engine.evaluate(net, X, t, loss()) is None
    assert engine.evaluate(net, X[1:], t[1:], type("Mine", (loss,), {})()) is None


def _node_train_step(net, X, y, loss, opt):
    return fb.training.train_step(net, net._input(X), loss.target(y, len(X), net.n_out,
                                                                 net.dtype), loss, opt)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_prepared_train_step_follows_every_change_to_the_optimizer(dtype):
    """The engine keeps a training call prepared while its optimizer's hyper-parameters and
    state hold (``engine.Prepared``): momentum switched on and off (the one-row path from dz
    and y and back), the learning rate, clipping, weight decay, the optimizer's state reset and
    a new optimizer all take effect as on the per-node path, step for step, bit for bit."""
    rng = np.random.default_rng(2)
    a, b = _nets(dtype)["mlp"](), _nets(dtype)["mlp"]()
    oa, ob = fb.SGD(lr=0.1), fb.SGD(lr=0.1)
    changes = [dict(momentum=0.9), dict(state={}), dict(lr=0.05), dict(momentum=0.0),
               dict(clip_norm=0.01), dict(clip_norm=None, weight_decay=0.1), "new"]
    for change in changes:  # one-row steps only: the same call but for the change
        for rows in (1, 1):
            X, y = rng.normal(size=(rows, 8)), rng.integers(0, 3, rows)
            assert a.train_step(X, y, fb.KL(), oa) == _node_train_step(b, X, y, fb.KL(), ob)
            assert np.array_equal(a.flat_params, b.flat_params), change
        if change == "new":
            oa, ob = fb.Adam(lr=0.01), fb.Adam(lr=0.01)
        else:
            for opt in (oa, ob):
                for k, v in change.items():
                    setattr(opt, k, v)
    assert np.array_equal(a.flat_params, b.flat_params)


def test_probability_targets_fill_a_batch_of_the_workspaces_capacity():
    """The engine's buffer for probability targets holds every row the workspace can take,
    whichever batch first needed it: labels at batch 8, then rows at batch 2, then rows at
    batch 8 (which once wrote past a buffer of 2 rows), as the per-node path."""
    rng = np.random.default_rng(4)
    X, labels = rng.normal(size=(16, 8)), rng.integers(0, 3, 16)
    rows = np.eye(3)[labels] * 0.9 + 0.1 / 3
    nets = [_nets(np.float64)["mlp"]() for _ in range(2)]
    kw = dict(epochs=2, tol=None, seed=1, progress=False)
    for net, engine_on in zip(nets, (True, False)):
        for d, batch in ((labels, 8), (rows, 2), (rows, 8)):
            fb.fit(net, X, d, fb.KL(), fb.SGD(lr=0.1), batch_size=batch, engine=engine_on, **kw)
    assert np.array_equal(nets[0].flat_params, nets[1].flat_params)
    ws = engine.compile_tape(nets[0], True).workspace(8)
    assert ws.bd[3][0].shape == (ws.capacity, 3)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["mlp", "gated", "mixed", "blas", "norm"])
@pytest.mark.parametrize("weight_decay, batch", [(0.0, 1), (0.01, 1), (0.0, 4)])
def test_one_row_sgd_updates_w_from_dz_and_y_as_the_per_node_path(dtype, name, weight_decay,
                                                                  batch):
    """Plain SGD on one row updates each linear layer's W from its dz and y, never writing dW
    (kernels.engine.linear_sgd): bit for bit the per-node path's gradient and update (batch 4
    of 9 rows: two steps of 4 rows, then the last row so)."""
    nets = dict(_nets(dtype), blas=lambda: fb.Sequential(  # products that run through BLAS
        fb.Linear(8, 64), fb.ReLU(), fb.Linear(64, 40), fb.Tanh(), fb.Linear(40, 3),
        fb.Softmax(), dtype=dtype, seed=5),
        norm=lambda: fb.Sequential(  # parameters between the linear layers' W: several ranges
            fb.Linear(8, 16), fb.LayerNorm(16), fb.Dropout(0.25, seed=1), fb.Tanh(),
            fb.Linear(16, 6, bias=False), fb.LayerNorm(6), fb.Linear(6, 3), fb.Softmax(),
            dtype=dtype, seed=6))
    rng = np.random.default_rng(7)
    X, d = rng.uniform(0.1, 1.0, size=(9, 8)), rng.integers(0, 3, 9)
    a, b = nets[name](), nets[name]()
    kw = dict(batch_size=batch, epochs=2, tol=None, seed=3, progress=False)
    ha = fb.fit(a, X, d, fb.KL(), fb.SGD(lr=0.05, weight_decay=weight_decay), engine=True, **kw)
    hb = fb.fit(b, X, d, fb.KL(), fb.SGD(lr=0.05, weight_decay=weight_decay), engine=False, **kw)
    assert np.array_equal(a.flat_params, b.flat_params) and ha.loss == hb.loss
    tape = engine.compile_tape(a, True)
    update = _config.op_kernel(KE.linear_sgd, a.dtype.type, KERNEL=KO.sgd_rank1).address
    steps = [p for key, (p, _) in tape.workspace(1).programs.items() if key[:2] == ("step", 1)]
    assert steps and all(update in p[:, 0] for p in steps)  # the path this test is about ran
    if name == "norm":  # b1 with the first norm's gain and shift, the second's, b3
        assert tape.rest_op[KE.A2] == 3


@pytest.mark.parametrize("engine_on", [True, False])
def test_one_row_sgd_refuses_a_gradient_that_overflows_and_changes_nothing(engine_on):
    """dW = dz y^T overflows float32 while the loss is finite: the step is refused whether dW
    is written (node by node) or checked from dz and y (the one-row engine step)."""
    net = fb.Sequential(fb.Linear(2, 1), dtype=np.float32, seed=0)
    net[0].W[...], net[0].b[...] = 1.0, 0.0
    X, d = np.array([[1e30, -1e30]], np.float32), np.array([[1e10]], np.float32)
    before = net.flat_params.copy()
    fit = fb.fit if engine_on else (lambda *a, **k: fb.fit(*a, engine=False, **k))
    with pytest.raises(fb.TrainingError):
        fit(net, X, d, fb.L2(), fb.SGD(lr=1e-3), batch_size=1, epochs=1, tol=None,
            progress=False)
    assert np.array_equal(net.flat_params, before)
    net.train_step(X / 1e20, d, fb.L2(), fb.SGD(lr=1e-3))  # no overflow now: a step is taken
    assert not np.array_equal(net.flat_params, before)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_split_over_the_threads_give_the_per_node_bits(dtype):
    """A batch of one block of rows through a layer whose forward is split by units and whose
    dy is summed from parts (``dense.dense_backward_input_parts``, in the program): the engine
    and the per-node path give the same bits."""
    assert KD.by_units(60, 130, 1100)
    rng = np.random.default_rng(8)
    X, d = rng.normal(size=(120, 5)), rng.integers(0, 3, 120)
    nets = [fb.Sequential(fb.Linear(5, 1100), fb.Tanh(), fb.Linear(1100, 130), fb.ReLU(),
                          fb.Linear(130, 3), fb.Softmax(), dtype=dtype, seed=2) for _ in "ab"]
    kw = dict(batch_size=60, epochs=2, tol=None, seed=1, progress=False)
    for net, on in zip(nets, (True, False)):
        fb.fit(net, X, d, fb.KL(), fb.SGD(lr=0.05, momentum=0.9), engine=on, **kw)
    assert np.array_equal(nets[0].flat_params, nets[1].flat_params)
    split = {k.address for k in _config._op_kernels.values()
             if k.compiled and k.consts.get("KERNEL2") is KD.dense_backward_input_parts}
    tape = engine.compile_tape(nets[0], True)
    steps = [p for key, (p, _) in tape.workspace(60).programs.items() if key[:2] == ("step", 60)]
    assert split and steps and all(split & set(p[:, 0]) for p in steps)  # the path ran


def test_unsupported_nodes_fall_back_to_the_per_node_path():
    sq = fb.VectorActivation(lambda z: z ** 2, lambda z: np.diag(2 * z))
    net = fb.Sequential(fb.Linear(3, 3), sq, fb.Linear(3, 2), fb.Softmax(), seed=0)
    assert engine.compile_tape(net, True) is None
    X, y = np.random.default_rng(0).normal(size=(10, 3)), np.arange(10) % 2
    h = fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1), epochs=2, progress=False)
    assert h.epochs == 2
    with pytest.raises(engine.Unsupported):
        fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1), epochs=2, progress=False, engine=True)
    rr = fb.Sequential(fb.Linear(3, 3), fb.RReLU(), seed=0)
    assert engine.compile_tape(rr, True) is None  # random slopes: per-node in training
    assert engine.compile_tape(rr, False) is not None  # the mean slope: engine in evaluation


@pytest.mark.parametrize("shuffle, batch", [(False, None), (True, 32), (False, 64)])
@pytest.mark.parametrize("make_opt", [
    lambda: fb.SGD(lr=0.5, momentum=0.9, schedule=fb.StepLR(3, 0.5)),
    lambda: fb.Adam(lr=0.01, schedule=fb.CosineLR(20)),
    lambda: fb.SGD(lr=0.5, clip_norm=0.1)], ids=["sgd-step", "adam-cosine", "sgd-clipped"])
def test_fit_in_compiled_chunks_equals_the_epoch_loop(shuffle, batch, make_opt):
    """Without validation, callbacks or checkpoints, fit runs chunks of epochs in one compiled
    call; a no-op callback forces the epoch-by-epoch loop. Same numbers, same stop."""
    X, d = fb.datasets.xor(200, seed=1)

    def make():
        return fb.Sequential(fb.Linear(2, 8), fb.Sigmoid(), fb.Linear(8, 1), fb.Sigmoid(),
                             seed=0)

    a, b = make(), make()
    kw = dict(batch_size=batch, epochs=120, tol=1e-6, shuffle=shuffle, seed=3, progress=False)
    ha = fb.fit(a, X, d, fb.BinaryKL(), make_opt(), **kw)
    hb = fb.fit(b, X, d, fb.BinaryKL(), make_opt(), callbacks=[lambda *args: False], **kw)
    assert np.array_equal(a.flat_params, b.flat_params)
    assert (ha.loss, ha.accuracy, ha.lr, ha.stop_reason) == \
        (hb.loss, hb.accuracy, hb.lr, hb.stop_reason)
