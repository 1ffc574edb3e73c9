"""Results do not depend on the number of threads, and every kernel takes its numba flags from
fastbp._config.

Forward outputs, dX, parameter gradients and losses of a network using every node kind are
compared bit for bit between processes started with NUMBA_NUM_THREADS=1 and =2 (and within one
process through fb.set_num_threads), in float32 and float64.
"""

import ast
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numba
import numpy as np
import pytest
from llvmlite import binding

import fastbp as fb
import fastbp._config as C
from conftest import build_every_kind_net, every_kind_input

TESTS = pathlib.Path(__file__).resolve().parent
KERNELS = pathlib.Path(fb.__file__).resolve().parent / "kernels"


def fingerprints():
    """sha256 of the bytes of every output of a few passes, per dtype (also run as a script)."""
    out = {"threads": fb.get_num_threads()}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        rng = np.random.default_rng(5)
        parts = {}
        # every node kind, in training mode (RReLU's slopes come from the seeded generator)
        net = build_every_kind_net(dtype, seed=3).train()
        X = every_kind_input(37).astype(dtype)
        Y = net.forward(X)
        dX = net.backward(rng.normal(size=Y.shape).astype(dtype))
        parts["every-kind forward"] = Y
        parts["every-kind dX"] = dX
        parts["every-kind grads"] = net.flat_grads
        value = net.loss_and_grad(X, rng.integers(0, 5, size=37), fb.KL())
        parts["every-kind loss"] = np.array([value])
        parts["every-kind loss grads"] = net.flat_grads
        parts["every-kind predict"] = net.predict(X)
        # a wider MLP, so that every parallel loop has work to split
        mlp = fb.Sequential(fb.Linear(33, 129), fb.ReLU(), fb.Linear(129, 17), fb.Sigmoid(),
                            dtype=dtype, seed=4)
        X = rng.normal(size=(64, 33)).astype(dtype)
        value = mlp.loss_and_grad(X, rng.uniform(size=(64, 17)), fb.BinaryKL())
        parts["mlp loss"] = np.array([value])
        parts["mlp grads"] = mlp.flat_grads
        parts["mlp predict"] = mlp.predict(X)
        # rows in one block and 130 units in two: the forward GEMM split by units, dy summed
        # from two parts
        wide = fb.Sequential(fb.Linear(5, 1100), fb.Tanh(), fb.Linear(1100, 130), fb.Tanh(),
                             fb.Linear(130, 3), dtype=dtype, seed=6)
        assert fb.kernels.dense.by_units(60, 130, 1100)
        X = rng.normal(size=(60, 5)).astype(dtype)
        value = wide.loss_and_grad(X, rng.normal(size=(60, 3)), fb.L2())
        parts["wide loss"] = np.array([value])
        parts["wide grads"] = wide.flat_grads
        parts["wide predict"] = wide.predict(X)
        # under 2^23 multiply-adds, over dense.PAR_MIN_WORK: split by units on the threads too
        mid = fb.Sequential(fb.Linear(300, 130), fb.Tanh(), fb.Linear(130, 3), dtype=dtype,
                            seed=7)
        assert fb.kernels.dense.by_units(64, 130, 300) and 64 * 130 * 300 < 1 << 23
        X = rng.normal(size=(64, 300)).astype(dtype)
        value = mid.loss_and_grad(X, rng.normal(size=(64, 3)), fb.L2())
        parts["mid loss"] = np.array([value])
        parts["mid grads"] = mid.flat_grads
        parts["mid predict"] = mid.predict(X)
        for k, v in parts.items():
            out[f"{name} {k}"] = hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
    return out


def _run(threads, **more):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", **more)
    code = (f"import sys, json; sys.path.insert(0, {str(TESTS)!r}); "
            f"import test_threads; print(json.dumps(test_threads.fingerprints()))")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600, cwd=str(TESTS))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_bit_identical_with_1_and_2_threads_in_subprocesses():
    one, two = _run(1), _run(2)
    assert one.pop("threads") == 1 and two.pop("threads") == 2
    assert len(one) == 30
    differ = sorted(k for k in one if one[k] != two[k])
    assert not differ, f"results depend on the thread count: {differ}"


WIDE = (numba.config.CPU_FEATURES or "").endswith(",-prefer-256-bit")


@pytest.mark.skipif(not WIDE, reason="fastbp leaves LLVM's vector width alone on this CPU")
def test_bit_identical_with_256_and_512_bit_vectors():
    """On CPUs where fastbp lets LLVM use 512-bit vectors (``_config._prefer_wide_vectors``),
    every result has the same bits as with LLVM's own 256-bit preference."""
    narrow = _run(2, NUMBA_CPU_FEATURES=binding.get_host_cpu_features().flatten())
    wide = _run(2)
    differ = sorted(k for k in wide if wide[k] != narrow[k])
    assert not differ, f"results depend on the vector width: {differ}"


def test_wide_vectors_only_where_fastbp_chose_them():
    """With AVX-512 VBMI2 and no NUMBA_CPU_NAME or NUMBA_CPU_FEATURES of the user's, fastbp's
    loops compile to 512-bit vectors (zmm registers); a user's NUMBA_CPU_FEATURES is kept."""
    vbmi2 = bool(binding.get_host_cpu_features().get("avx512vbmi2"))
    user = os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME")
    assert WIDE == (vbmi2 and not user)
    code = "import fastbp, numba; print(numba.config.CPU_FEATURES)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, NUMBA_CPU_FEATURES="+sse2"), timeout=120)
    assert res.stdout.split() == ["+sse2"], res.stderr[-2000:]
    if WIDE:  # a loop like the kernels', compiled here (a cached kernel keeps no assembly)
        axpy = numba.njit(**dict(C.SERIAL, cache=False))(_axpy)
        axpy(np.zeros(64, np.float32), np.zeros(64, np.float32), np.float32(0.5))
        assert "zmm" in axpy.inspect_asm(axpy.signatures[0])


def _axpy(y, x, a):
    for i in range(y.size):
        y[i] += a * x[i]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_bit_identical_with_set_num_threads():
    before = fb.get_num_threads()
    try:
        fb.set_num_threads(1)
        one = fingerprints()
        fb.set_num_threads(2)
        two = fingerprints()
    finally:
        fb.set_num_threads(before)
    assert one.pop("threads") == 1 and two.pop("threads") == 2
    assert one == two


def test_set_num_threads_round_trip():
    before = fb.get_num_threads()
    try:
        fb.set_num_threads(1)
        assert fb.get_num_threads() == 1 == numba.get_num_threads()
    finally:
        fb.set_num_threads(before)
    assert fb.get_num_threads() == before


# ==============================================================================================
# Every @njit in fastbp/kernels takes its flags from fastbp._config
# ==============================================================================================
FLAG_SETS = {n for n, v in vars(C).items() if n.isupper() and isinstance(v, dict)}
JIT_NAMES = {"njit", "jit", "generated_jit", "vectorize", "guvectorize", "cfunc", "stencil",
             "overload", "jit_module"}
KERNEL_FILES = sorted(p.name for p in KERNELS.glob("*.py") if p.name != "__init__.py")
PENDING = {}  # module: why it does not comply yet (strict: the mark must go once it does)


def _params(files):
    return [pytest.param(f, marks=pytest.mark.xfail(reason=PENDING[f], strict=True))
            if f in PENDING else f for f in files]


def _config_imports(tree):
    """Names the module imports from fastbp._config (``from .._config import ...``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("_config", "fastbp._config") \
                and (node.level == 2 or node.module == "fastbp._config"):
            names |= {a.asname or a.name for a in node.names}
    return names


def test_flag_sets_exist():
    assert {"SERIAL", "PARALLEL", "ARITH", "INLINE", "OP"} <= FLAG_SETS
    assert KERNEL_FILES, "no kernel modules found"


def flag_problems(source, fname="<source>"):
    """What breaks the rule in a kernel module's source: every decorator is ``@njit(**NAME)``
    with ``njit`` and NAME imported from fastbp._config; numba's jit decorators are never
    imported or used directly; the module holds kernels only (no classes, every function
    jitted)."""
    tree = ast.parse(source, filename=fname)
    from_config = _config_imports(tree)
    problems = [] if "njit" in from_config else ["njit is not imported from .._config"]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "numba" or a.name.startswith("numba."):
                    problems.append(f"line {node.lineno}: `import {a.name}` (use .._config.njit)")
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] == "numba":
            bad = {a.name for a in node.names} & JIT_NAMES
            if bad:
                problems.append(f"line {node.lineno}: imports {sorted(bad)} from {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr in JIT_NAMES:
            problems.append(f"line {node.lineno}: uses .{node.attr}")
        elif isinstance(node, ast.ClassDef):
            problems.append(f"line {node.lineno}: class {node.name} in a kernel module")
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        if not node.decorator_list:
            problems.append(f"{node.name}: not a kernel (no @njit)")
        for dec in node.decorator_list:
            ok = (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name)
                  and dec.func.id == "njit" and not dec.args and len(dec.keywords) == 1
                  and dec.keywords[0].arg is None
                  and isinstance(dec.keywords[0].value, ast.Name)
                  and dec.keywords[0].value.id in from_config & FLAG_SETS)
            if not ok:
                problems.append(f"{node.name}: decorator `@{ast.unparse(dec)}` is not "
                                f"njit(**<flag set from fastbp._config>)")
    return problems


@pytest.mark.parametrize("fname", _params(KERNEL_FILES))
def test_every_njit_takes_its_flags_from_config(fname):
    problems = flag_problems((KERNELS / fname).read_text(), fname)
    assert not problems, f"{fname}:\n" + "\n".join(problems)


GOOD = """
from numba import prange
from .._config import PARALLEL, SERIAL, njit

@njit(**SERIAL)
def leaf(x):
    return x

@njit(**PARALLEL)
def kernel(x, out):
    for i in prange(x.shape[0]):
        out[i] = leaf(x[i])
"""


@pytest.mark.parametrize("bad", [
    GOOD.replace("@njit(**SERIAL)", "@njit(cache=True)"),
    GOOD.replace("@njit(**SERIAL)", "@njit(**dict(SERIAL, fastmath=True))"),
    GOOD.replace("@njit(**SERIAL)", "@njit(**LOCAL)").replace("from numba", "LOCAL = {}\nfrom numba"),
    GOOD.replace("from numba import prange", "from numba import njit, prange"),
    GOOD.replace("from numba import prange", "import numba\nfrom numba import prange"),
    GOOD.replace("@njit(**SERIAL)", "@numba.njit(**SERIAL)"),
    GOOD.replace("from .._config import PARALLEL, SERIAL, njit",
                 "from .._config import PARALLEL, SERIAL\nfrom numba import njit"),
    GOOD + "\ndef helper(x):\n    return x\n",
    GOOD + "\nclass K:\n    pass\n",
])
def test_the_flag_check_can_fail(bad):
    assert not flag_problems(GOOD)
    assert flag_problems(bad)


@pytest.mark.parametrize("fname", _params(KERNEL_FILES))
def test_compiled_kernels_carry_a_config_flag_set(fname):
    """Runtime check of the same: each dispatcher's options are one of _config's flag sets."""
    import importlib

    from numba.core.registry import CPUDispatcher

    mod = importlib.import_module(f"fastbp.kernels.{fname[:-3]}")
    sets = [dict(getattr(C, n)) for n in FLAG_SETS]
    found = 0
    for name, disp in vars(mod).items():
        if not isinstance(disp, CPUDispatcher) or disp.__module__ != mod.__name__:
            continue
        found += 1
        opts = {k: v for k, v in disp.targetoptions.items() if k not in ("nopython", "boundscheck")}
        want = [{k: v for k, v in s.items() if k != "cache"} for s in sets]
        assert opts in want, f"{fname}:{name} compiled with {opts}"
        i = want.index(opts)
        if sets[i].get("cache"):
            assert type(disp._cache).__name__ != "NullCache", f"{name}: cache not enabled"
    assert found, f"{fname}: no kernels found"
