"""save/load and training checkpoints: round trips, bit-identical resume, hostile files."""

import copy
import json
import pickle
import os
import zipfile

import numpy as np
import pytest

import fastbp as fb


def _net(dtype=np.float64, rrelu=True):
    return fb.Sequential(
        fb.Linear(6, 8), fb.ReLU(grad_at_zero=0.0), fb.Linear(8, 8, bias=False), fb.LeakyReLU(0.1),
        fb.Product(fb.Sequential(fb.Linear(8, 6), fb.ELU()),
                   fb.Sequential(fb.Linear(8, 6), fb.Sigmoid())),
        fb.MaxPool1d(2), fb.Linear(3, 4), fb.PairProduct(), fb.GELU(),
        fb.PowerProduct([[1.0, 2.0], [1.0, 0.0]]), fb.MaxOver([[0], [0, 1]]), fb.Softplus(),
        fb.Linear(2, 3), fb.RReLU() if rrelu else fb.Tanh(), fb.Linear(3, 3), fb.Softmax(),
        dtype=dtype, seed=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, dtype):
    net = _net(dtype)
    path = tmp_path / "net.npz"
    net.save(path)
    back = fb.load(path)
    assert repr(back) == repr(net)
    assert back.dtype == net.dtype and np.array_equal(back.flat_params, net.flat_params)
    X = np.random.default_rng(0).normal(size=(4, 6))
    assert np.array_equal(back.predict(X), net.predict(X))


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    net = fb.Sequential(fb.Linear(2, 2), seed=0)
    net.save(tmp_path / "a.npz")
    net.save(tmp_path / "a.npz")
    assert sorted(os.listdir(tmp_path)) == ["a.npz"]


def test_user_functions_cannot_be_saved(tmp_path):
    net = fb.Sequential(fb.Linear(2, 2), fb.VectorActivation(np.tanh, lambda z: np.diag(1 - np.tanh(z) ** 2)))
    with pytest.raises(TypeError, match="cannot be saved"):
        net.save(tmp_path / "v.npz")


def _interrupt_at(epoch_to_stop):
    def cb(epoch, history, net):
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt
    return cb


@pytest.mark.parametrize("engine", [True, False])
@pytest.mark.parametrize("make_opt", [lambda: fb.SGD(lr=0.05, momentum=0.9),
                                      lambda: fb.Adam(lr=0.01),
                                      lambda: fb.RMSprop(lr=0.01, momentum=0.9, centered=True,
                                                         clip_norm=1.0)])
def test_resume_is_bit_identical(tmp_path, make_opt, engine):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 6)), rng.integers(0, 3, size=50)
    # The engine cannot train RReLU (its slopes come from NumPy's generator): per-node only.
    kw = dict(batch_size=8, epochs=6, tol=None, seed=4, validation=(X[:10], y[:10]),
              progress=False, engine=engine)
    def make():
        return _net(rrelu=not engine)

    whole = make()
    h_whole = fb.fit(whole, X, y, fb.KL(), make_opt(), **kw)
    path = tmp_path / "ck.npz"
    part = make()
    with pytest.raises(KeyboardInterrupt):
        fb.fit(part, X, y, fb.KL(), make_opt(), checkpoint=path, callbacks=[_interrupt_at(2)],
               **kw)
    resumed = make()
    resumed.flat_params[...] = 0  # nothing of the fresh network survives the resume
    h = fb.fit(resumed, X, y, fb.KL(), make_opt(), resume=path, **kw)
    assert np.array_equal(resumed.flat_params, whole.flat_params)
    assert h.loss == h_whole.loss and h.val_loss == h_whole.val_loss


def test_resume_refuses_another_architecture(tmp_path):
    X, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    a = fb.Sequential(fb.Linear(2, 2), fb.Softmax(), seed=0)
    fb.fit(a, X, y, fb.KL(), fb.SGD(lr=0.1), epochs=1, checkpoint=tmp_path / "c.npz",
           progress=False)
    b = fb.Sequential(fb.Linear(2, 3), fb.Tanh(), fb.Linear(3, 2), fb.Softmax(), seed=0)
    with pytest.raises(fb.CheckpointError, match="does not match"):
        fb.fit(b, X, y, fb.KL(), fb.SGD(lr=0.1), epochs=2, resume=tmp_path / "c.npz",
               progress=False)


class _Payload:
    """Unpickling this would create a marker file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _saved(tmp_path):
    path = tmp_path / "good.npz"
    fb.Sequential(fb.Linear(3, 2), fb.Tanh(), seed=0).save(path)
    return path


def test_truncated_file_raises(tmp_path):
    data = _saved(tmp_path).read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(fb.CheckpointError):
            fb.load(bad)


def test_random_bytes_raise(tmp_path):
    bad = tmp_path / "random.npz"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(fb.CheckpointError):
        fb.load(bad)


def test_object_array_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "EXECUTED"
    bad = tmp_path / "object.npz"
    arch = fb.io.architecture(fb.Sequential(fb.Linear(3, 2), seed=0))
    obj = np.empty(1, dtype=object)
    obj[0] = _Payload(str(marker))
    np.savez(bad, architecture=np.array(json.dumps(arch)), params=obj, allow_pickle=True)
    with pytest.raises(fb.CheckpointError, match="object"):
        fb.load(bad)
    assert not marker.exists()


def test_pickle_file_is_refused_and_nothing_runs(tmp_path):
    import pickle

    marker = tmp_path / "EXECUTED"
    bad = tmp_path / "pickle.npz"
    bad.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(fb.CheckpointError):
        fb.load(bad)
    assert not marker.exists()


def test_huge_claimed_shape_is_refused_without_allocating(tmp_path):
    path = _saved(tmp_path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    hdr = members["params.npy"]
    members["params.npy"] = hdr.replace(b"'shape': (8,)", b"'shape': (99999999999,)")
    assert members["params.npy"] != hdr
    bad = tmp_path / "huge.npz"
    with zipfile.ZipFile(bad, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(fb.CheckpointError, match="claims"):
        fb.load(bad)


@pytest.mark.parametrize("arch", [
    {"format": "fastbp", "version": 1, "dtype": "float64",
     "root": {"type": "os.system", "config": {}}},
    {"format": "fastbp", "version": 1, "dtype": "float64",
     "root": {"type": "Sequential", "nodes": [{"type": "Linear", "config": {"n_in": -1}}]}},
    {"format": "other"},
])
def test_foreign_architecture_raises(tmp_path, arch):
    bad = tmp_path / "arch.npz"
    np.savez(bad, architecture=np.array(json.dumps(arch)), params=np.zeros(8))
    with pytest.raises(fb.CheckpointError):
        fb.load(bad)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda n: pickle.loads(pickle.dumps(n))],
                         ids=["deepcopy", "pickle"])
def test_copies_keep_parameters_as_views_of_their_flat_buffer(clone):
    """deepcopy and pickle copy each view as an array of its own; a copy must point them back
    into its own flat buffers, or the engine would read parameters from the wrong memory."""
    X, y = fb.datasets.digits()
    net = _net(np.float64, rrelu=False)
    Xs = np.abs(X[:40, :6]) + 0.1
    ys = y[:40] % 3
    before = net.predict(Xs)
    c = clone(net)
    for (_, node, attr), p in zip(c._views, c.params):
        assert getattr(node, attr).base is c.flat_params and p.base is c.flat_params
        assert getattr(node, "d" + attr).base is c.flat_grads
    assert np.array_equal(c.predict(Xs), before)
    fb.fit(c, Xs, ys, fb.KL(), fb.SGD(lr=0.05), batch_size=8, epochs=2, progress=False)
    assert np.array_equal(net.predict(Xs), before)  # the original is untouched
    assert not np.array_equal(c.flat_params, net.flat_params)
    c[0].W[...] = 0  # writes through the view reach the flat buffer the kernels read
    assert not c.flat_params[:c[0].W.size].any()


def test_a_parameter_replaced_by_a_new_array_is_refused_by_the_engine():
    net = fb.Sequential(fb.Linear(3, 2), fb.Softmax(), seed=0)
    net[0].W = np.zeros((2, 3))  # not a view of flat_params any more
    with pytest.raises(RuntimeError, match="not a view"):
        net.predict(np.ones((1, 3)))
