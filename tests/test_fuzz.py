"""Fuzzed files and numerical properties, with hypothesis.

Files: ``fb.load`` on mutated checkpoints, ``fastbp train`` on mutated CSV and .npy tables.
Every case either works or raises the documented error (``fb.CheckpointError`` for load; exit
code 2 and one line on standard error for the command line); no other exception, no
traceback, no pickled code runs, no memory is allocated for sizes a small file only claims.

Numerics: random small networks of every node kind match finite differences; extreme inputs
(logits of +-1e4, inputs of 1e30, all-equal rows, one-row batches) give finite, correct results or
a clear error; NaN anywhere in the data is refused naming its position.
"""

import contextlib
import functools
import io
import json
import math
import pathlib
import pickle
import sys
import tempfile
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastbp as fb
from conftest import time_limit
from fastbp.cli import main as cli_main
from fastbp.gradcheck import central_differences

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROPS = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WORK = pathlib.Path(tempfile.mkdtemp(prefix="fastbp-fuzz-"))


class _Payload:
    """Unpickling this creates a marker file: the proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


MARKER = WORK / "EXECUTED"


def _npy_bytes(a, allow_pickle=False):
    f = io.BytesIO()
    np.save(f, a, allow_pickle=allow_pickle)
    return f.getvalue()


def _object_array_bytes():
    obj = np.empty(2, dtype=object)
    obj[0] = _Payload(str(MARKER))
    obj[1] = 1.0
    return _npy_bytes(obj, allow_pickle=True)


def _header_with(data, **changes):
    """The .npy ``data`` with its header rewritten (``shape``, ``descr``, ``fortran_order``),
    the payload after it left as it is."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
        np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    payload = data[f.tell():]
    d = {"shape": shape, "fortran_order": fortran, "descr": np.lib.format.dtype_to_descr(dtype)}
    d.update(changes)
    out = io.BytesIO()
    np.lib.format.write_array_header_2_0(out, d) if version == (2, 0) else \
        np.lib.format.write_array_header_1_0(out, d)
    return out.getvalue() + payload


# ==============================================================================================
# Mutations of bytes
# ==============================================================================================
@st.composite
def mutated(draw, data, tokens=()):
    """``data`` truncated, with bytes flipped, inserted or deleted, or a token spliced in."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "token"]
                                if tokens else ["truncate", "flip", "insert", "delete"]))
    n = len(data)
    if kind == "truncate":
        return data[:draw(st.integers(0, max(0, n - 1)))]
    b = bytearray(data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, n - 1))
            b[i] ^= draw(st.integers(1, 255))
    elif kind == "insert":
        i = draw(st.integers(0, n))
        b[i:i] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "delete":
        i = draw(st.integers(0, n - 1))
        del b[i:i + draw(st.integers(1, 64))]
    else:
        i = draw(st.integers(0, n))
        b[i:i + draw(st.integers(0, 4))] = draw(st.sampled_from(tokens))
    return bytes(b)


# ==============================================================================================
# 5a. fb.load on mutated checkpoints
# ==============================================================================================
def _valid_checkpoint():
    net = fb.Sequential(
        fb.Linear(3, 4), fb.Tanh(),
        fb.Product(fb.Sequential(fb.Linear(4, 4), fb.ReLU(grad_at_zero=0.0)),
                   fb.Sequential(fb.Linear(4, 4, bias=False), fb.Sigmoid())),
        fb.MaxPool1d(2), fb.PowerProduct([[1.0, 2.0], [0.5, 1.0]]), fb.MaxOver([[0, 1], [1]]),
        fb.ELU(0.5), fb.Linear(2, 2), fb.Softmax(), dtype=np.float32, seed=0)
    path = WORK / "valid.npz"
    net.save(path)
    return path.read_bytes()


VALID = _valid_checkpoint()
with zipfile.ZipFile(io.BytesIO(VALID)) as _z:
    MEMBERS = {n: _z.read(n) for n in _z.namelist()}
JSON_TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"null", b"1e400", b"-1", b"NaN",
               b"99", b'"type"', b'"Sequential"', b'"os.system"', b"\\u0000"]


def _zip(members):
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return f.getvalue()


@st.composite
def checkpoints(draw):
    """A mutated checkpoint: damage to the file's bytes, or to one member's bytes inside a
    well-formed archive (valid CRCs, so the damage reaches the .npy and JSON parsers)."""
    level = draw(st.sampled_from(["file", "member", "huge", "object", "dtype", "extra"]))
    if level == "file":
        return draw(mutated(VALID))
    members = dict(MEMBERS)
    name = draw(st.sampled_from(sorted(members)))
    if level == "member":
        tokens = JSON_TOKENS if name.startswith("architecture") else ()
        members[name] = draw(mutated(members[name], tokens))
    elif level == "huge":
        dims = draw(st.lists(st.integers(0, 10 ** 15), min_size=1, max_size=3))
        members[name] = _header_with(members[name], shape=tuple(dims))
    elif level == "object":
        members[name] = _object_array_bytes()
    elif level == "dtype":
        descr = draw(st.sampled_from(["<f8", "<f4", ">f8", "<i8", "|b1", "<c16", "<U8", "|S4",
                                      "|V8", [("a", "<f4")], "<m8[s]"]))
        members[name] = _header_with(members[name], descr=descr)
    else:
        extra = draw(st.sampled_from(["x.npy", "../../evil.npy", "payload.pkl", "params.npy"]))
        members[extra] = draw(st.sampled_from([_object_array_bytes(), b"\x80\x04K\x01.",
                                               _npy_bytes(np.zeros(3))]))
    return _zip(members)


def _load_or_checkpoint_error(data):
    path = WORK / "fuzzed.npz"
    path.write_bytes(data)
    try:
        with time_limit(20):
            net = fb.load(path)
    except fb.CheckpointError as e:
        assert str(e)
        return None
    assert isinstance(net, fb.Sequential)
    return net


def test_the_checkpoint_fuzzer_starts_from_a_valid_file():
    net = _load_or_checkpoint_error(VALID)
    assert net is not None and net.dtype == np.float32
    assert set(MEMBERS) == {"architecture.npy", "params.npy"}


@FUZZ
@given(checkpoints())
@example(VALID[:len(VALID) // 2])
@example(_zip(dict(MEMBERS, **{"params.npy": _object_array_bytes()})))
@example(_zip(dict(MEMBERS, **{"architecture.npy": _object_array_bytes()})))
@example(_zip(dict(MEMBERS, **{"params.npy": _header_with(MEMBERS["params.npy"],
                                                         shape=(10 ** 12,))})))
@example(pickle.dumps(_Payload(str(MARKER))))
def test_load_of_a_damaged_file_returns_a_network_or_raises_checkpoint_error(data):
    _load_or_checkpoint_error(data)
    assert not MARKER.exists(), "code from the file ran"


@settings(FUZZ, max_examples=40)
@given(st.lists(st.integers(0, 10 ** 15), min_size=1, max_size=3),
       st.sampled_from(["architecture.npy", "params.npy"]))
def test_a_huge_claimed_shape_is_refused_without_allocating_it(dims, name):
    data = _zip(dict(MEMBERS, **{name: _header_with(MEMBERS[name], shape=tuple(dims))}))
    tracemalloc.start()
    try:
        _load_or_checkpoint_error(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"loading a {len(data)}-byte file allocated {peak} bytes"


# -- architectures: any JSON, with node types and configs a hostile file might give ----------
NODE_TYPES = ["Linear", "Identity", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "RReLU", "ELU",
              "GELU", "Softplus", "Softmax", "PairProduct", "PowerProduct", "MaxOver",
              "MaxPool1d", "Product", "Sequential", "VectorActivation", "Node", "_Scalar",
              "os.system", "__import__", "eval"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 3, 300) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
CONFIG_KEYS = ["n_in", "n_out", "bias", "init", "grad_at_zero", "slope", "alpha", "lower",
               "upper", "subsets", "size", "stride", "f", "jacobian", "n_out"]


@st.composite
def node_dicts(draw, depth=0):
    kind = draw(st.sampled_from(NODE_TYPES))
    d = {"type": kind}
    if kind == "Sequential" and depth < 3:
        d["nodes"] = draw(st.lists(node_dicts(depth + 1), max_size=4))
    elif kind == "Product" and depth < 3:
        d["a"], d["b"] = draw(node_dicts(depth + 1)), draw(node_dicts(depth + 1))
    else:
        d["config"] = draw(st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values,
                                           max_size=3) | json_values)
    return d


@FUZZ
@given(st.lists(node_dicts(), max_size=5), st.sampled_from(["float32", "float64", "int8", "O",
                                                           "complex128", None, 3]),
       st.sampled_from([np.zeros(0), np.zeros(8), np.zeros(30, np.float32), np.zeros((2, 3))]))
def test_load_of_a_hostile_architecture_raises_checkpoint_error(nodes, dtype, params):
    arch = {"format": "fastbp", "version": 1, "dtype": dtype,
            "root": {"type": "Sequential", "nodes": nodes}}
    data = _zip({"architecture.npy": _npy_bytes(np.array(json.dumps(arch))),
                 "params.npy": _npy_bytes(params)})
    _load_or_checkpoint_error(data)


def _arch_file(root, params=np.zeros(8)):
    arch = {"format": "fastbp", "version": 1, "dtype": "float64", "root": root}
    return _zip({"architecture.npy": _npy_bytes(np.array(json.dumps(arch))),
                 "params.npy": _npy_bytes(params)})


def test_an_architecture_claiming_a_huge_layer_raises_checkpoint_error():
    data = _arch_file({"type": "Sequential",
                       "nodes": [{"type": "Linear", "config": {"n_in": 10 ** 6,
                                                               "n_out": 10 ** 6}}]})
    _load_or_checkpoint_error(data)


def test_an_architecture_claiming_a_large_layer_is_refused_without_allocating_it():
    data = _arch_file({"type": "Sequential",
                       "nodes": [{"type": "Linear", "config": {"n_in": 4000, "n_out": 4000}}]})
    tracemalloc.start()
    try:
        _load_or_checkpoint_error(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"loading a {len(data)}-byte file allocated {peak} bytes"


@pytest.mark.parametrize("text", ["[" * 100_000,
                                  '{"format": "fastbp", "version": 1, "root": '
                                  + '{"type": "Sequential", "nodes": [' * 20_000])
def test_deeply_nested_json_raises_checkpoint_error(text):
    data = _zip({"architecture.npy": _npy_bytes(np.array(text)),
                 "params.npy": _npy_bytes(np.zeros(8))})
    _load_or_checkpoint_error(data)


# ==============================================================================================
# 5b. fastbp train on mutated CSV and .npy tables
# ==============================================================================================
_rng = np.random.default_rng(0)
_TABLE = np.column_stack([_rng.normal(size=(40, 3)).round(3), np.arange(40) % 2])
CSV = "\n".join(",".join(f"{v:g}" for v in row) for row in _TABLE).encode() + b"\n"
NPY = _npy_bytes(_TABLE)
CSV_TOKENS = [b"nan", b"inf", b"-inf", b"1e999", b"1e308", b"-1e308", b"1e30", b",", b",,",
              b"\n", b"\r\n", b"\n\n", b" ", b"-", b"2", b"-1", b"0.5", b"1e18", b"abc", b"#",
              b'"', b"\x00", b"\xff\xfe", b"1,2,3,4,5"]


def _run_cli(data, suffix):
    path = WORK / f"table{suffix}"
    path.write_bytes(data)
    out = WORK / "model.npz"
    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout), time_limit(60), \
            warnings.catch_warnings():
        # as in a terminal: warnings are printed on standard error (pytest would collect them)
        warnings.simplefilter("default")
        warnings.showwarning = _print_warning
        code = cli_main(["train", str(path), "--arch", "3-4-2:tanh:softmax", "--epochs", "1",
                         "--out", str(out)])
    return code, err.getvalue()


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _assert_clean_exit(code, err):
    assert code in (0, 2), code
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("fastbp: error: ") and err.count("\n") == 1, repr(err)


@functools.lru_cache(maxsize=None)
def _cli_runs_on_valid_tables():
    """Also the warm-up: the first fit of a process loads its kernels (tens of MB of Python
    objects, which would count in the allocation limits below)."""
    for data, suffix in ((CSV, ".csv"), (NPY, ".npy")):
        code, err = _run_cli(data, suffix)
        assert code == 0, err
    return True


def test_the_cli_fuzzer_starts_from_valid_tables():
    assert _cli_runs_on_valid_tables()


@FUZZ
@given(mutated(CSV, CSV_TOKENS))
@example(b"")
@example(b"1,2,3,nan\n" + CSV)
@example(CSV.replace(b"\n", b"\n1e999,0,0,1\n", 1))
def test_cli_train_on_a_damaged_csv_exits_cleanly(data):
    assert _cli_runs_on_valid_tables()
    _assert_clean_exit(*_run_cli(data, ".csv"))


@st.composite
def npy_tables(draw):
    kind = draw(st.sampled_from(["bytes", "huge", "dtype", "shape", "object", "fortran"]))
    if kind == "bytes":
        return draw(mutated(NPY))
    if kind == "huge":
        dims = draw(st.lists(st.integers(0, 10 ** 15), min_size=1, max_size=3))
        return _header_with(NPY, shape=tuple(dims))
    if kind == "dtype":
        descr = draw(st.sampled_from(["<f4", ">f8", "<i8", "|u1", "|b1", "<c16", "<U8", "|S4",
                                      "|V8", [("a", "<f8"), ("b", "<f8")], "<m8[s]", "<f2"]))
        return _header_with(NPY, descr=descr)
    if kind == "shape":
        dims = draw(st.lists(st.integers(0, 200), min_size=0, max_size=3))
        return _header_with(NPY, shape=tuple(dims))
    if kind == "object":
        return _object_array_bytes()
    return _header_with(NPY, fortran_order=True)


@FUZZ
@given(npy_tables())
@example(_header_with(NPY, shape=(4_000_000_000, 4)))
@example(_header_with(NPY, shape=(1 << 20, 4)))
@example(_object_array_bytes())
@example(NPY[:10] + NPY[11:])  # the header's opening brace deleted
def test_cli_train_on_a_damaged_npy_exits_cleanly_without_allocating_claimed_sizes(data):
    assert _cli_runs_on_valid_tables()
    tracemalloc.start()
    try:
        code, err = _run_cli(data, ".npy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _assert_clean_exit(code, err)
    assert not MARKER.exists(), "code from the file ran"
    assert peak < 32 << 20, f"a {len(data)}-byte table made train allocate {peak} bytes"


@pytest.mark.parametrize("version", [b"\x02\x00", b"\x00\x01"])
def test_cli_npy_claiming_a_huge_header_is_refused_without_allocating_it(version):
    import struct

    assert _cli_runs_on_valid_tables()
    data = NPY[:6] + version + struct.pack("<I", 2 ** 31) + NPY[10:]
    tracemalloc.start()
    try:
        code, err = _run_cli(data, ".npy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _assert_clean_exit(code, err)
    assert code == 2
    assert peak < 32 << 20, f"a {len(data)}-byte table made train allocate {peak} bytes"


@pytest.mark.parametrize("cut", [10])
def test_cli_npy_with_a_malformed_header_is_a_one_line_error(cut):
    code, err = _run_cli(NPY[:cut] + NPY[cut + 1:], ".npy")
    _assert_clean_exit(code, err)
    assert code == 2


def test_cli_empty_csv_is_a_one_line_error():
    code, err = _run_cli(b"", ".csv")
    _assert_clean_exit(code, err)
    assert code == 2


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_cli_inf_in_the_label_column_is_a_one_line_error_naming_it(suffix):
    table = _TABLE.copy()
    table[5, -1] = np.inf
    data = _npy_bytes(table) if suffix == ".npy" else \
        "\n".join(",".join(f"{v:g}" for v in row) for row in table).encode()
    code, err = _run_cli(data, suffix)
    _assert_clean_exit(code, err)
    assert code == 2 and "inf" in err


def test_cli_train_reports_a_diverging_fit_as_a_one_line_error():
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.normal(size=(40, 3)) * 1e150, rng.normal(size=40) * 1e200])
    path = WORK / "diverge.csv"
    np.savetxt(path, table, delimiter=",")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["train", str(path), "--arch", "3-4-1:identity:identity", "--epochs",
                         "3", "--lr", "10", "--out", str(WORK / "m.npz")])
    assert code == 2
    _assert_clean_exit(code, err.getvalue())
    assert "not finite" in err.getvalue()


# ==============================================================================================
# 6. Numerics: gradients of random networks of every node kind match finite differences
# ==============================================================================================
SCALARS = {"Identity": lambda draw: fb.Identity(), "Sigmoid": lambda draw: fb.Sigmoid(),
           "Tanh": lambda draw: fb.Tanh(),
           "ReLU": lambda draw: fb.ReLU(grad_at_zero=draw(st.sampled_from([0.0, 1.0]))),
           "LeakyReLU": lambda draw: fb.LeakyReLU(draw(st.floats(0.0, 0.5))),
           "ELU": lambda draw: fb.ELU(draw(st.floats(0.1, 2.0))),
           "GELU": lambda draw: fb.GELU(), "Softplus": lambda draw: fb.Softplus()}
KINDS = ["Linear", *SCALARS, "Softmax", "PairProduct", "PowerProduct", "Product", "MaxOver",
         "MaxPool1d"]


def _layer(draw, kind, w):
    """Nodes of ``kind`` (with what it needs before it) for input width w; returns (nodes,
    output width)."""
    if kind == "Linear":
        m = draw(st.integers(2, 6))
        return [fb.Linear(w, m, bias=draw(st.booleans()))], m
    if kind in SCALARS:
        return [SCALARS[kind](draw)], w
    if kind == "Softmax":
        return [fb.Softmax()], w
    if kind == "PairProduct":
        m = draw(st.integers(2, 3))
        return [fb.Linear(w, 2 * m), fb.PairProduct()], m
    if kind == "PowerProduct":  # positive inputs: through a sigmoid first
        dd, m = draw(st.integers(2, 4)), draw(st.integers(2, 4))
        alpha = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]),
                              min_size=dd * m, max_size=dd * m))
        return [fb.Linear(w, dd), fb.Sigmoid(),
                fb.PowerProduct(np.reshape(alpha, (dd, m)))], m
    if kind == "Product":
        m = draw(st.integers(2, 5))
        acts = [SCALARS[draw(st.sampled_from(sorted(SCALARS)))](draw) for _ in range(2)]
        return [fb.Product(fb.Sequential(fb.Linear(w, m), acts[0], _bind=False),
                           fb.Sequential(fb.Linear(w, m), acts[1], _bind=False))], m
    if kind == "MaxOver":
        subsets = draw(st.lists(st.lists(st.integers(0, w - 1), min_size=1, max_size=w,
                                         unique=True), min_size=1, max_size=4))
        return [fb.MaxOver(subsets)], len(subsets)
    if kind == "MaxPool1d":
        size = draw(st.integers(1, w))
        stride = draw(st.integers(1, 3))
        return [fb.MaxPool1d(size, stride)], (w - size) // stride + 1
    raise AssertionError(kind)


HEADS = ["softmax_kl", "sigmoid_bkl", "l2", "softmax_kl_probs"]


@st.composite
def networks_with(draw, kind):
    """A random small float64 network holding ``kind`` (and up to 2 other random kinds that
    are not products: a chain of products of small numbers has gradients so small next to the
    loss that finite differences cannot resolve them), a batch of 1-5 rows, a head (output
    node and divergence) and targets."""
    n_in = draw(st.integers(1, 5))
    w, nodes = n_in, []
    kinds = draw(st.lists(st.sampled_from([k for k in KINDS if "Product" not in k]),
                          max_size=2))
    kinds.insert(draw(st.integers(0, len(kinds))), kind)
    for k in kinds:
        new, w = _layer(draw, k, w)
        nodes += new
    head = draw(st.sampled_from(HEADS))
    K = draw(st.integers(2, 4))
    last = {"softmax_kl": fb.Softmax, "softmax_kl_probs": fb.Softmax,
            "sigmoid_bkl": fb.Sigmoid, "l2": fb.Identity}[head]
    net = fb.Sequential(*nodes, fb.Linear(w, K), last(), dtype=np.float64,
                        seed=draw(st.integers(0, 2 ** 16)))
    T = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    X = rng.normal(size=(T, n_in))
    if head == "softmax_kl":
        loss, d = fb.KL(), rng.integers(0, K, size=T)
    elif head == "softmax_kl_probs":
        loss, d = fb.KL(), rng.dirichlet(np.ones(K), size=T)
    elif head == "sigmoid_bkl":
        loss, d = fb.BinaryKL(), rng.uniform(size=(T, K))
    else:
        loss, d = fb.L2(), rng.normal(size=(T, K))
    return net, X, d, loss


@pytest.mark.parametrize("kind", KINDS)
@PROPS
@given(data=st.data())
def test_gradients_of_random_networks_match_finite_differences(kind, data):
    net, X, d, loss = data.draw(networks_with(kind))
    # Central differences lose to rounding (small steps) or to curvature (large steps) where a
    # gradient is tiny next to the loss, as in products of near-zero branches. An array passes
    # if one of four steps matches it to 1e-4; a wrong gradient (as small as 0.1% off) fails
    # at every step.
    best, reports = {}, []
    for eps in (1e-4, 1e-3, 1e-5, 1e-6):
        report = fb.gradcheck(net, X, d, loss, eps=eps, tol=1e-4, max_per_array=6, seed=0)
        reports.append(report)
        for name, err in report.errors.items():
            best[name] = min(best.get(name, math.inf), err)
        if max(best.values()) <= 1e-4:
            break
    bad = {name for name, err in best.items() if err > 1e-4}
    bad -= _agree_at_network_scale(net, X, d, loss, bad)
    assert not bad, f"{net!r}\n{loss!r}\n" + "\n".join(map(repr, reports))


def _agree_at_network_scale(net, X, d, loss, names, eps=1e-4):
    """Of the arrays ``names``, those whose analytic and central-difference gradients agree to
    1e-4 relative, or to 1e-6 of the network's largest gradient, or to 1e-8 absolute (the
    rounding noise of the differences where the loss is a difference of numbers near 10, as
    with a saturated softmax).

    gradcheck scales errors per array, with a floor of 1e-3 of the array's largest gradient
    or 1e-12: an array whose gradients are all tiny next to the rest (behind a near-dead unit,
    or products of near-zero branches) or exactly zero (see
    test_gradcheck_passes_a_correct_network_whose_exact_gradient_is_zero) then fails on the
    rounding noise of the differences alone. A wrong backward pass is still caught: its error
    is a fraction of gradients that matter. Kink crossings are skipped as in gradcheck."""
    if not names:
        return set()
    net = net.astype(np.float64).eval()
    X = net._input(X)
    target = loss.target(d, X.shape[0], net.n_out, np.float64)
    value, rows = central_differences(net, X, target, loss, eps, names=names)
    scale = max(np.abs(g).max(initial=0) for _, g, _, _, _ in rows) or max(abs(value), 1.0)
    ok = set()
    for name, analytic, idx, numeric, _ in rows:
        a = analytic[idx]
        if name in names and np.all(np.abs(numeric - a) <= np.maximum.reduce([
                1e-4 * np.maximum(np.abs(numeric), np.abs(a)), np.full(a.shape, 1e-6 * scale),
                np.full(a.shape, 1e-8)])):
            ok.add(name)
    return ok


def test_gradcheck_passes_a_correct_network_whose_exact_gradient_is_zero():
    # LeakyReLU(0) of negative inputs is 0, so the softmax sees b2 + W2 b1 = 0 in every row,
    # p = (1/2, 1/2), and with balanced labels dLoss/db1 = W2^T mean(p - d) = 0 exactly.
    net = fb.Sequential(fb.LeakyReLU(0.0), fb.Linear(1, 2), fb.Linear(2, 2), fb.Softmax(),
                        dtype=np.float64, seed=0)
    X = -np.array([[1.7], [1.3], [1.4], [0.4]])
    assert fb.gradcheck(net, X, np.array([1, 1, 0, 0]), fb.KL()).ok


# ==============================================================================================
# 6b. Extreme inputs
# ==============================================================================================
def _logits_net(K, last, dtype):
    """A network whose pre-activations are exactly its input: Linear(K, K) with W = I, b = 0."""
    net = fb.Sequential(fb.Linear(K, K, init="zeros"), last(), dtype=dtype, seed=0)
    net[0].W[...] = np.eye(K)
    return net


def _logsumexp(z):
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


extreme_logits = st.integers(1, 6).flatmap(lambda T: st.integers(2, 5).flatmap(
    lambda K: st.lists(st.sampled_from([1e4, -1e4, 0.0, 1.0, -3.5, 1e4 - 1]),
                       min_size=T * K, max_size=T * K).map(
        lambda v: np.reshape(v, (T, K)))))


@PROPS
@given(extreme_logits, st.sampled_from([np.float32, np.float64]), st.data())
def test_logits_of_1e4_through_softmax_kl_give_the_exact_finite_loss(Z, dtype, data):
    T, K = Z.shape
    labels = np.array(data.draw(st.lists(st.integers(0, K - 1), min_size=T, max_size=T)))
    net = _logits_net(K, fb.Softmax, dtype)
    value = net.loss_and_grad(Z, labels, fb.KL())
    expected = np.mean(_logsumexp(Z) - Z[np.arange(T), labels])
    assert math.isfinite(value) and np.isfinite(net.flat_grads).all()
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-6)
    P = np.exp(Z - _logsumexp(Z)[:, None])
    dz = (P - np.eye(K)[labels]) / T
    np.testing.assert_allclose(net[0].dW, dz.T @ Z, rtol=1e-5, atol=1e-3)
    for engine in ("auto", False):  # one step of training, loss recorded before the step
        h = fb.fit(_logits_net(K, fb.Softmax, dtype), Z, labels, fb.KL(), fb.SGD(lr=1e-9),
                   epochs=1, progress=False, engine=engine)
        assert h.loss[0] == pytest.approx(expected, rel=1e-6, abs=1e-6)


@PROPS
@given(extreme_logits, st.sampled_from([np.float32, np.float64]), st.data())
def test_logits_of_1e4_through_sigmoid_binary_kl_give_the_exact_finite_loss(Z, dtype, data):
    T, K = Z.shape
    d = np.reshape(data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.25]), min_size=T * K,
                                      max_size=T * K)), (T, K))
    net = _logits_net(K, fb.Sigmoid, dtype)
    value = net.loss_and_grad(Z, d, fb.BinaryKL())
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = np.where(d > 0, d * np.log(d), 0) + np.where(d < 1, (1 - d) * np.log1p(-d), 0)
    expected = np.mean(np.sum(np.logaddexp(0, Z) - d * Z + ent, axis=1))
    assert math.isfinite(value) and np.isfinite(net.flat_grads).all()
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-6)
    for engine in ("auto", False):
        h = fb.fit(_logits_net(K, fb.Sigmoid, dtype), Z, d, fb.BinaryKL(), fb.SGD(lr=1e-9),
                   epochs=1, progress=False, engine=engine)
        assert h.loss[0] == pytest.approx(expected, rel=1e-6, abs=1e-6)


@PROPS
@given(st.sampled_from(KINDS), st.sampled_from([np.float32, np.float64]),
       st.sampled_from(["auto", False]), st.integers(0, 2 ** 16), st.floats(0.05, 1.0),
       st.data())
def test_inputs_of_1e30_give_finite_results_or_a_clear_error(kind, dtype, engine, seed, frac,
                                                              data):
    nodes, w = _layer(data.draw, kind, 4)
    net = fb.Sequential(fb.Linear(4, 4), *nodes, fb.Linear(w, 3), fb.Softmax(), dtype=dtype,
                        seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(8, 4))
    X[rng.random(X.shape) < frac] = 1e30
    X[::2] *= -1
    y = np.arange(8) % 3
    try:
        h = fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.1, momentum=0.9), batch_size=4, epochs=2,
                   tol=None, progress=False, engine=engine)
        assert all(math.isfinite(v) for v in h.loss)
    except fb.TrainingError as e:  # the documented error; the last good parameters are kept
        assert "not finite" in str(e)
    except ValueError as e:
        assert str(e)
    assert np.isfinite(net.flat_params).all(), "non-finite parameters were kept"


@pytest.mark.parametrize("engine_path", [True, False])
def test_predict_on_inputs_of_1e30_gives_finite_results_or_a_clear_error(engine_path):
    nodes = [fb.Linear(4, 4), fb.PairProduct(), fb.Linear(2, 3), fb.Softmax()]
    if not engine_path:  # a user's vector activation: predict runs node by node
        nodes.append(fb.VectorActivation(lambda z: z, lambda z: np.eye(len(z))))
    net = fb.Sequential(*nodes, dtype=np.float32, seed=0)
    from fastbp import engine

    assert (engine.compile_tape(net, False) is not None) == engine_path
    X = np.full((8, 4), 1e30)
    X[::2] *= -1
    try:
        P = net.predict(X)
    except (fb.TrainingError, ValueError, FloatingPointError) as e:
        assert str(e)
    else:
        assert np.isfinite(P).all(), "predict gave non-finite probabilities"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("engine", ["auto", False])
@pytest.mark.parametrize("value", [0.0, 1.0, -250.0])
def test_all_equal_rows_train_to_finite_equal_outputs(dtype, engine, value):
    X = np.full((130, 5), value)  # > 2 blocks of 64 rows: the blocked kernels
    y = np.arange(130) % 3
    net = fb.Sequential(fb.Linear(5, 8), fb.Tanh(), fb.Linear(8, 8), fb.ELU(),
                        fb.MaxPool1d(2), fb.Linear(4, 3), fb.Softmax(), dtype=dtype, seed=0)
    for batch in (None, 64):
        h = fb.fit(net, X, y, fb.KL(), fb.Adam(lr=0.01), batch_size=batch, epochs=3, tol=None,
                   progress=False, engine=engine)
        assert all(math.isfinite(v) for v in h.loss)
    P = net.predict(X)
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P, np.broadcast_to(P[0], P.shape), rtol=1e-6)
    # the best a network can do with identical rows: predict the class frequencies
    np.testing.assert_allclose(P[0], [44 / 130, 43 / 130, 43 / 130], atol=0.15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("head", ["kl", "bkl", "l2"])
def test_one_instance_batches_work_and_both_paths_agree(dtype, head):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 4))
    last, loss, d = {"kl": (fb.Softmax, fb.KL(), np.array([0, 1, 2, 1, 0])),
                     "bkl": (fb.Sigmoid, fb.BinaryKL(), rng.uniform(size=(5, 3))),
                     "l2": (fb.Identity, fb.L2(), rng.normal(size=(5, 3)))}[head]

    def make():
        return fb.Sequential(fb.Linear(4, 6), fb.GELU(),
                             fb.Product(fb.Linear(6, 4), fb.Sequential(fb.Linear(6, 4),
                                                                       fb.Sigmoid())),
                             fb.Linear(4, 3), last(), dtype=dtype, seed=1)

    results = []
    for engine in ("auto", False):
        for rows, batch in ((1, None), (1, 1), (5, 1)):
            net = make()
            h = fb.fit(net, X[:rows], d[:rows], loss, fb.SGD(lr=0.05, momentum=0.9),
                       batch_size=batch, epochs=3, tol=None, progress=False, engine=engine)
            assert all(math.isfinite(v) for v in h.loss) and np.isfinite(net.flat_params).all()
            assert net.predict(X[:1]).shape == (1, 3)
            results.append(net.flat_params.copy())
    for a, b in zip(results[:3], results[3:]):
        assert np.array_equal(a, b), "engine and per-node path differ on one-row batches"
    assert np.array_equal(results[0], results[1])  # one row: full batch == batch of 1


# ==============================================================================================
# 6c. NaN and inf in the data are refused, naming their position
# ==============================================================================================
BIG = np.random.default_rng(3).normal(size=(300_000, 7))  # 2.1M elements: several check blocks


@PROPS
@given(st.integers(0, BIG.shape[0] - 1), st.integers(0, BIG.shape[1] - 1),
       st.sampled_from([np.nan, np.inf, -np.inf]), st.sampled_from(["X", "d", "validation"]),
       st.sampled_from([np.float32, np.float64]))
def test_nan_or_inf_anywhere_is_refused_naming_its_position(row, col, bad, where, dtype):
    net = fb.Sequential(fb.Linear(7, 7), dtype=dtype, seed=0)
    before = net.flat_params.copy()
    X, d = BIG, BIG
    kw = {}
    if where == "validation":
        kw["validation"] = (BIG, BIG)
    arr = BIG.copy() if where != "validation" else BIG.copy()
    arr[row, col] = bad
    if where == "X":
        X = arr
    elif where == "d":
        d = arr
    else:
        kw["validation"] = (arr, BIG)
    name = {"X": "X", "d": "d", "validation": "validation X"}[where]
    what = "NaN" if np.isnan(bad) else "inf"
    with pytest.raises(ValueError, match=rf"^{name} contains {what} at row {row}, column {col}$"):
        fb.fit(net, X, d, fb.L2(), fb.SGD(lr=0.1), epochs=1, progress=False, **kw)
    assert np.array_equal(net.flat_params, before)


def test_nan_in_a_memmap_is_refused_naming_its_position(tmp_path):
    X = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(400_000, 4))
    X[:] = 1.0
    X[345_678, 3] = np.nan
    X.flush()
    X = np.load(tmp_path / "x.npy", mmap_mode="r")
    net = fb.Sequential(fb.Linear(4, 2), fb.Softmax(), dtype=np.float32, seed=0)
    with pytest.raises(ValueError, match=r"X contains NaN at row 345678, column 3"):
        fb.fit(net, X, np.zeros(400_000, np.int64), fb.KL(), fb.SGD(lr=0.1), epochs=1,
               progress=False)
