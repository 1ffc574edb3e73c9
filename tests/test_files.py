"""Hostile and broken files (issue 9, items 6-10 and 12): members the format does not define,
files that are not regular files, malformed checkpoints given to ``fit(resume=...)``, huge
integers in the architecture, file modes and temporary files of ``save``, missing files; and
``net.meta``, the JSON metadata a network carries through ``save`` and ``load``."""

import contextlib
import io
import json
import os
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastbp as fb
from conftest import time_limit

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file semantics")
MAX_PEAK = 4 << 20  # bytes traced while loading a small network: far below any junk member


def _small():
    return fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 3), fb.Softmax(), seed=0)


def _members(path):
    """Every member of an .npz as raw bytes, in order."""
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write_members(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


def _arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _arch_file(path, arch, params):
    np.savez(path, architecture=np.array(json.dumps(arch)), params=params)
    return path


def _zero_member(z, name, header_shape, nbytes):
    """A deflated member ``name`` holding an .npy header of ``header_shape`` (float64) and
    ``nbytes`` zeros: megabytes in the archive's claims, kilobytes on disk."""
    with z.open(name, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
        chunk = bytes(1 << 20)
        for lo in range(0, nbytes, len(chunk)):
            f.write(chunk[:min(len(chunk), nbytes - lo)])


def _peak_of(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# ==============================================================================================
# net.meta
# ==============================================================================================
META = {"classes": ["cat", "dog", 3], "scaler": {"mean": [0.5, -1.25], "std": [2.0, 1.0]},
        "target": None, "flag": True, "n": -7, "nested": [[1, [2.5, {"k": "v"}]]]}


def test_meta_round_trips_through_save_and_load(tmp_path):
    net = _small()
    net.meta = json.loads(json.dumps(META))
    net.save(tmp_path / "m.npz")
    back = fb.load(tmp_path / "m.npz")
    assert back.meta == META
    assert back.meta is not net.meta


def test_meta_absent_or_empty_loads_as_empty_dict(tmp_path):
    net = _small()
    assert not hasattr(net, "meta") or net.meta == {}
    net.save(tmp_path / "a.npz")
    assert fb.load(tmp_path / "a.npz").meta == {}
    net.meta = {}
    net.save(tmp_path / "b.npz")
    assert fb.load(tmp_path / "b.npz").meta == {}


@pytest.mark.parametrize("meta, error, words", [
    (["not", "a", "dict"], TypeError, "must be a dict"),
    ({"n": np.int64(3)}, TypeError, "'n'"),
    ({"x": {1: "int key"}}, TypeError, "key 1"),
    ({"f": float("nan")}, ValueError, "finite"),
    ({"f": [1.0, float("inf")]}, ValueError, "finite"),
    ({"big": 1 << 70}, ValueError, "64 bits"),
    ({"s": {1, 2}}, TypeError, "set"),
    ({"long": "x" * (fb.io.META_MAX_CHARS + 1)}, ValueError, "characters"),
    ({"deep": json.loads("[" * 40 + "]" * 40)}, ValueError, "deeper"),
])
def test_save_refuses_meta_that_is_not_bounded_json(tmp_path, meta, error, words):
    net = _small()
    net.meta = meta
    with pytest.raises(error, match=words):
        net.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []  # refused before anything was written


@pytest.mark.parametrize("meta", [[1, 2], "text", {"deep": json.loads("[" * 40 + "]" * 40)},
                                  {"big": 10 ** 30}, {"s": "x" * (fb.io.META_MAX_CHARS + 1)}])
def test_load_refuses_a_file_whose_meta_is_not_bounded_json(tmp_path, meta):
    net = _small()
    arch = fb.io.architecture(net)
    arch["meta"] = meta
    bad = _arch_file(tmp_path / "bad.npz", arch, net.flat_params)
    with pytest.raises(fb.CheckpointError, match="meta"):
        fb.load(bad)


def test_checkpoints_written_by_fit_keep_meta(tmp_path):
    net = _small()
    net.meta = {"source": "test", "columns": [0, 1, 2]}
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 3
    fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1), epochs=2, checkpoint=tmp_path / "ck.npz",
           progress=False, engine=False)
    assert fb.load(tmp_path / "ck.npz").meta == net.meta


# ==============================================================================================
# 6. Only the members the format defines are read, each bounded by the declared sizes
# ==============================================================================================
def test_unknown_member_of_zeros_is_never_read(tmp_path):
    """A 64 MiB member of zeros in a file of a few hundred kilobytes: the load of the 3-4-3
    network must not decompress it (fastbp 0.1 read it into memory)."""
    path = tmp_path / "junk.npz"
    net = _small()
    net.save(path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        _zero_member(z, "junk.npy", (8 << 20,), 64 << 20)
        z.writestr("notes.txt", b"not an array either")
    assert os.path.getsize(path) < 1 << 20
    box = {}
    peak = _peak_of(lambda: box.setdefault("net", fb.load(path)))
    assert peak < MAX_PEAK, peak
    assert np.array_equal(box["net"].flat_params, net.flat_params)


def test_params_longer_than_the_architecture_declares_are_refused_unread(tmp_path):
    """The architecture declares 31 parameters; a params member claiming 8 Mi (and holding
    them, as compressible zeros) is refused from its header, before it is allocated."""
    path = tmp_path / "long.npz"
    _small().save(tmp_path / "g.npz")
    good = _members(tmp_path / "g.npz")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("architecture.npy", good["architecture.npy"])
        _zero_member(z, "params.npy", (8 << 20,), 64 << 20)

    def load():
        with pytest.raises(fb.CheckpointError, match="declares"):
            fb.load(path)

    assert _peak_of(load) < MAX_PEAK


def test_architecture_member_beyond_its_bound_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(fb.io, "ARCH_MAX_BYTES", 1 << 12)
    net = _small()
    arch = fb.io.architecture(net)
    arch["meta"] = {"pad": "x" * 5000}
    bad = _arch_file(tmp_path / "big.npz", arch, net.flat_params)
    with pytest.raises(fb.CheckpointError, match="at most 4096"):
        fb.load(bad)


def test_params_holding_nan_are_refused_on_load_and_on_save(tmp_path):
    net = _small()
    arch = fb.io.architecture(net)
    p = net.flat_params.copy()
    p[5] = np.nan
    with pytest.raises(fb.CheckpointError, match="NaN at index 5"):
        fb.load(_arch_file(tmp_path / "nan.npz", arch, p))
    net.flat_params[7] = np.inf
    with pytest.raises(ValueError, match="inf at index 7"):
        net.save(tmp_path / "inf.npz")
    assert not (tmp_path / "inf.npz").exists()


# ==============================================================================================
# 7. Only regular files are opened; a FIFO is refused, not waited on
# ==============================================================================================
@POSIX
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_symlink_to_dev_zero_is_refused(tmp_path):
    link = tmp_path / "zero.npz"
    link.symlink_to("/dev/zero")
    with time_limit(10), pytest.raises(fb.CheckpointError) as info:
        fb.load(link)
    assert "character device" in str(info.value) and str(link) in str(info.value)
    assert "/dev/zero" in str(info.value)


@POSIX
@pytest.mark.parametrize("reader", [fb.load, fb.io.read_npy,
                                    lambda p: fb.fit(_small(), np.zeros((4, 3)), np.zeros(4, int),
                                                     fb.KL(), fb.SGD(lr=0.1), epochs=1,
                                                     resume=p, progress=False)],
                         ids=["load", "read_npy", "resume"])
def test_fifo_is_refused_without_blocking(tmp_path, reader):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with time_limit(10), pytest.raises(fb.CheckpointError, match="FIFO") as info:
        reader(fifo)
    assert str(fifo) in str(info.value)


def test_directory_is_refused_naming_it(tmp_path):
    folder = tmp_path / "dir.npz"
    folder.mkdir()
    with pytest.raises(fb.CheckpointError, match="directory") as info:
        fb.load(folder)
    assert str(folder) in str(info.value)


# ==============================================================================================
# 12 (part). A missing file is FileNotFoundError
# ==============================================================================================
def test_missing_file_raises_file_not_found(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError) as info:
        fb.load(missing)
    assert info.value.filename == str(missing)
    with pytest.raises(FileNotFoundError):
        fb.fit(_small(), np.zeros((4, 3)), np.zeros(4, int), fb.KL(), fb.SGD(lr=0.1),
               epochs=1, resume=missing, progress=False)


# ==============================================================================================
# 9. Every integer in the JSON is bounded; widths of every wrong kind are CheckpointError
# ==============================================================================================
WIDTHS = {"4000 digits": "9" * 4000, "5000 digits": "9" * 5000, "-4000 digits": "-" + "9" * 4000,
          "1e30": str(10 ** 30), "2^53+1": str((1 << 53) + 1), "negative": "-3", "zero": "0",
          "float": "2.0", "fraction": "3.5", "overflowing float": "1e400", "bool": "true",
          "string": '"3"', "null": "null", "list": "[3]", "NaN": "NaN"}


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_bad_width_raises_checkpoint_error(tmp_path, width):
    """The last layer's width (no later layer checks it) as JSON text: Python cannot even
    print an int of 5000 digits."""
    net = _small()
    arch = fb.io.architecture(net)
    arch["root"]["nodes"][2]["config"]["n_out"] = "WIDTH"
    text = json.dumps(arch).replace('"WIDTH"', width)
    bad = tmp_path / "w.npz"
    np.savez(bad, architecture=np.array(text), params=net.flat_params)
    with pytest.raises(fb.CheckpointError):
        fb.load(bad)


@pytest.mark.parametrize("where", ["version", "pool size", "pool stride", "subset index"])
def test_huge_integers_elsewhere_raise_checkpoint_error(tmp_path, where):
    net = fb.Sequential(fb.Linear(3, 4), fb.MaxPool1d(2), fb.MaxOver([[0, 1], [1]]), seed=0)
    arch = fb.io.architecture(net)
    nodes = arch["root"]["nodes"]
    huge = int("7" * 4000)
    if where == "version":
        arch["version"] = huge
    elif where == "pool size":
        nodes[1]["config"]["size"] = 10 ** 20
    elif where == "pool stride":
        nodes[1]["config"]["stride"] = huge
    else:
        nodes[2]["config"]["subsets"] = [[0, 10 ** 25]]
    bad = _arch_file(tmp_path / "h.npz", arch, net.flat_params)
    with time_limit(20), pytest.raises(fb.CheckpointError):
        fb.load(bad)


def test_huge_width_is_refused_before_widths_are_inferred(tmp_path):
    """Linear(3, 2**40) then MaxPool1d(1): inferring widths would build 2**40 windows; the
    parameter count the architecture declares is compared with the file first."""
    net = fb.Sequential(fb.Linear(3, 4), fb.MaxPool1d(1), seed=0)
    arch = fb.io.architecture(net)
    arch["root"]["nodes"][0]["config"]["n_out"] = 1 << 40
    bad = _arch_file(tmp_path / "wide.npz", arch, net.flat_params)
    with time_limit(20), pytest.raises(fb.CheckpointError, match="declares"):
        fb.load(bad)


# ==============================================================================================
# 10. Modes, temporary files and error messages of save
# ==============================================================================================
@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@POSIX
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_saved_file_mode_honours_the_umask(tmp_path, mask):
    net = _small()
    with umask(mask):
        net.save(tmp_path / "n.npz")
        with open(tmp_path / "plain", "w"):
            pass
    assert (tmp_path / "n.npz").stat().st_mode & 0o777 == \
        (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~mask


def _temps(folder):
    return [n for n in os.listdir(folder) if n.startswith(".fastbp-")]


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device"),
                                 MemoryError()], ids=["KeyboardInterrupt", "ENOSPC", "Memory"])
def test_exception_mid_write_removes_the_temporary_file(tmp_path, monkeypatch, exc):
    net = _small()
    target = tmp_path / "n.npz"
    net.save(target)
    before = target.read_bytes()
    real = np.savez

    def half_then_fail(f, **arrays):
        real(f, **arrays)
        f.write(b"\0" * 4096)
        assert _temps(tmp_path)  # the temporary file exists while it is written
        raise exc

    monkeypatch.setattr(fb.io.np, "savez", half_then_fail)
    net.flat_params[...] = 0
    with pytest.raises(type(exc)) as info:
        net.save(target)
    assert _temps(tmp_path) == []
    assert target.read_bytes() == before  # the old file is intact
    if isinstance(exc, OSError):
        assert str(target) in str(info.value) and ".fastbp-" not in str(info.value)


def test_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    old = time.time() - fb.io.STALE_SECONDS - 60
    names = {"stale": ".fastbp-n.npz-0123abcd.tmp", "stale_v01": ".fastbp-k2_x9abc.tmp",
             "fresh": ".fastbp-n.npz-89abcdef.tmp", "other": ".fastbp-other.npz-0123abcd.tmp",
             "longer": ".fastbp-n.npz-b-0123abcd.tmp", "unrelated": "n.npz-0123abcd.tmp"}
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"partial")
        if key != "fresh":
            os.utime(tmp_path / name, (old, old))
    _small().save(tmp_path / "n.npz")
    left = set(os.listdir(tmp_path))
    assert left == {"n.npz"} | {names[k] for k in ("fresh", "other", "longer", "unrelated")}


def test_save_errors_name_the_requested_path(tmp_path):
    net = _small()
    missing = tmp_path / "no" / "such" / "dir" / "n.npz"
    with pytest.raises(FileNotFoundError) as info:
        net.save(missing)
    assert info.value.filename == str(missing) and ".fastbp-" not in str(info.value)
    folder = tmp_path / "isdir.npz"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        net.save(folder)
    assert info.value.filename == str(folder) and ".fastbp-" not in str(info.value)
    assert _temps(tmp_path) == []


@POSIX
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes to read-only folders")
def test_save_into_a_read_only_folder_names_the_requested_path(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError) as info:
            _small().save(folder / "n.npz")
        assert info.value.filename == str(folder / "n.npz")
    finally:
        folder.chmod(0o700)


# ==============================================================================================
# 8. fit(resume=...) validates the whole checkpoint first and changes nothing on failure
# ==============================================================================================
DATA = np.random.default_rng(1).normal(size=(24, 3)), np.arange(24) % 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint with every part: momentum buffers, best parameters, full history."""
    folder = tmp_path_factory.mktemp("ck")
    X, y = DATA
    net = _small()
    net.meta = {"run": 1}
    fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1, momentum=0.9), batch_size=8, epochs=3,
           validation=(X[:8], y[:8]), patience=5, checkpoint=folder / "ck.npz", progress=False,
           engine=False)
    return folder / "ck.npz"


def _state(path):
    return json.loads(str(_arrays(path)["state"]))


def _with(path, out, new_state=None, drop=(), **arrays):
    """A copy of checkpoint ``path`` at ``out`` with the state JSON replaced, members dropped
    or replaced (raw bytes for a key ending in ``_raw``)."""
    a = _arrays(path)
    if new_state is not None:
        a["state"] = np.array(json.dumps(new_state))
    for k in drop:
        a.pop(k)
    raw = {k[:-4]: v for k, v in arrays.items() if k.endswith("_raw")}
    a.update({k: v for k, v in arrays.items() if not k.endswith("_raw")})
    np.savez(out, **a)
    if raw:
        m = _members(out)
        m.update({k + ".npy": v for k, v in raw.items()})
        _write_members(out, m)
    return out


def _edit(key, value):
    def f(s):
        if value is KeyError:
            s.pop(key)
        else:
            s[key] = value
        return s
    return f


def _edit_history(key, value):
    def f(s):
        if value is KeyError:
            s["history"].pop(key)
        else:
            s["history"][key] = value
        return s
    return f


STATE_EDITS = {
    **{f"no {k}": _edit(k, KeyError) for k in
       ("epoch", "rng", "net_rng", "history", "best_loss", "optimizer", "opt_t", "opt_epoch")},
    "epoch str": _edit("epoch", "3"), "epoch float": _edit("epoch", 3.0),
    "epoch bool": _edit("epoch", True), "epoch 0": _edit("epoch", 0),
    "epoch negative": _edit("epoch", -1), "epoch huge": _edit("epoch", 10 ** 30),
    "epoch 4000 digits": _edit("epoch", int("9" * 4000)),
    "opt_t negative": _edit("opt_t", -5), "opt_t list": _edit("opt_t", [1]),
    "opt_epoch float": _edit("opt_epoch", 1.5),
    "wrong optimizer": _edit("optimizer", "Adam"), "optimizer null": _edit("optimizer", None),
    "best_loss NaN": _edit("best_loss", float("nan")), "best_loss str": _edit("best_loss", "x"),
    "best_loss null with best_params": _edit("best_loss", None),
    "rng garbage": _edit("rng", {"bit_generator": "PCG64", "state": "x"}),
    "rng other generator": _edit("rng", {"bit_generator": "MT19937",
                                         "state": {"key": [0] * 624, "pos": 0}}),
    "rng list": _edit("rng", [1, 2, 3]), "net_rng null": _edit("net_rng", None),
    "history list": _edit("history", [1, 2]),
    "history unknown field": _edit_history("__class__", "x"),
    "history property": _edit_history("epochs", 3),
    "history short": _edit_history("loss", [0.5]),
    "history strings": _edit_history("lr", ["a", "b", "c"]),
    "history too long": _edit_history("val_loss", [1.0] * 10),
    "history loss not list": _edit_history("loss", 1.0),
    "best_epoch out of range": _edit_history("best_epoch", 99),
    "stop_reason dict": _edit_history("stop_reason", {"a": 1}),
    "state not object": lambda s: [s],
}


def _variants(ck, tmp_path):
    n = _arrays(ck)["params"].size
    nan = _arrays(ck)["params"].copy()
    nan[2] = np.nan
    yield "clean copy (control)", None
    for name, edit in STATE_EDITS.items():
        yield name, _with(ck, tmp_path / "v.npz", new_state=edit(_state(ck)))
    arrays = {
        "params wrong shape": dict(params=np.zeros(n + 1)),
        "params 2-D": dict(params=np.zeros((1, n))),
        "params float32": dict(params=np.zeros(n, np.float32)),
        "params NaN": dict(params=nan),
        "params object": dict(params_raw=_npy_bytes(np.array([1.0, None]))),
        "opt_v NaN": dict(opt_v=nan), "opt_v short": dict(opt_v=np.zeros(n - 1)),
        "opt_v int": dict(opt_v=np.zeros(n, np.int64)),
        "extra opt_m": dict(opt_m=np.zeros(n)),
        "best_params inf": dict(best_params=np.full(n, np.inf)),
        "best_params wrong shape": dict(best_params=np.zeros(3)),
        "state not a string": dict(state=np.zeros(3)),
        "state bad JSON": dict(state=np.array("{'epoch': 3")),
        "state NaN epoch": dict(state=np.array(json.dumps(_state(ck)).replace(
            '"epoch": 3', '"epoch": NaN'))),
        "params damaged": dict(params_raw=b"\x93NUMPY garbage"),
    }
    for name, repl in arrays.items():
        yield name, _with(ck, tmp_path / "v.npz", **repl)
    for member in ("params", "state", "opt_v", "best_params", "architecture"):
        yield f"no {member}", _with(ck, tmp_path / "v.npz", drop=[member])
    arch = json.loads(str(_arrays(ck)["architecture"]))
    arch["root"]["nodes"][0]["config"]["n_out"] = 5
    yield "other architecture", _with(ck, tmp_path / "v.npz",
                                      architecture=np.array(json.dumps(arch)))
    data = ck.read_bytes()
    for cut in (0, 30, len(data) // 3, len(data) - 30):
        (tmp_path / "v.npz").write_bytes(data[:cut])
        yield f"truncated at {cut}", tmp_path / "v.npz"
    (tmp_path / "v.npz").write_bytes(np.random.default_rng(0).bytes(len(data)))
    yield "random bytes", tmp_path / "v.npz"


def _npy_bytes(a):
    f = io.BytesIO()
    np.save(f, a, allow_pickle=True)
    return f.getvalue()


def _snapshot(net, opt):
    return (net.flat_params.tobytes(), {k: v.tobytes() if isinstance(v, np.ndarray) else v
                                        for k, v in opt.state.items()},
            opt.t, opt.epoch, json.dumps(net.rng.bit_generator.state))


@pytest.mark.parametrize("engine", [True, False])
def test_malformed_checkpoints_raise_and_change_nothing(checkpoint, tmp_path, engine):
    X, y = DATA
    net = _small()
    opt = fb.SGD(lr=0.1, momentum=0.9)
    fb.fit(net, X, y, fb.KL(), opt, batch_size=8, epochs=2, progress=False, seed=7,
           engine=False)
    assert opt.state and opt.t > 0  # a trained optimizer: its state can be overwritten
    before = _snapshot(net, opt)
    tried = 0
    for name, bad in _variants(checkpoint, tmp_path):
        if bad is None:  # the control: the unmodified checkpoint resumes
            probe = _small()
            fb.fit(probe, X, y, fb.KL(), fb.SGD(lr=0.1, momentum=0.9), batch_size=8,
                   epochs=4, resume=checkpoint, progress=False, engine=engine)
            continue
        with pytest.raises(fb.CheckpointError):
            fb.fit(net, X, y, fb.KL(), opt, batch_size=8, epochs=5, resume=bad,
                   progress=False, engine=engine)
        assert _snapshot(net, opt) == before, name
        tried += 1
    assert tried > 60


def test_resume_with_a_fresh_optimizer_refuses_and_leaves_it_fresh(checkpoint, tmp_path):
    X, y = DATA
    net, opt = _small(), fb.Adam(lr=0.01)
    before = net.flat_params.tobytes()
    with pytest.raises(fb.CheckpointError, match="SGD"):
        fb.fit(net, X, y, fb.KL(), opt, epochs=5, resume=checkpoint, progress=False,
               engine=False)
    assert net.flat_params.tobytes() == before and opt.t == 0 and opt.state == {}
