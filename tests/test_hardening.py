"""Hardening: the same answer every time, on any number of threads, from concurrent Python
threads and forked children; a read-only install; no copy of a large memory-mapped input.

The training runs happen in subprocesses (``sys.executable -c SCRIPT``), so that thread counts,
users, environment and memory figures are those of a fresh process, and so that a crash or a hang
of numba's threading layer fails one test instead of taking pytest down.

The fuzzed files and the numerical property tests are in ``tests/test_fuzz.py``.
"""

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numba
import pytest

import fastbp as fb

PKG = pathlib.Path(fb.__file__).resolve().parent


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_NUM_THREADS", "PYTHONDONTWRITEBYTECODE")}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_script(script, env=None, timeout=600, **kw):
    """Run ``script`` in a fresh interpreter; its last line of output is JSON."""
    try:
        res = subprocess.run([sys.executable, "-c", script], env=env or _env(),
                             capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the subprocess hung (no answer within {timeout} s); its output so far:\n"
                    f"{e.stdout}\n{e.stderr}")
    assert res.returncode == 0, f"exit code {res.returncode}\n{res.stdout[-3000:]}\n" \
                                f"{res.stderr[-5000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


# ==============================================================================================
# Shared by the scripts: a network and data large enough that, with 2 threads, the parallel
# kernels run (dense products above dense.PAR_MIN_WORK in >= 2 row blocks, elementwise ops of
# >= engine.PAR_MIN_WORK elements; checked in the script), with Tanh, ReLU, Sigmoid, a Product
# of two branches and Softmax+KL.
# ==============================================================================================
COMMON = r'''
import hashlib, json, os, sys
import numpy as np
import numba
import fastbp as fb
from fastbp.kernels import dense as KD
from fastbp import engine as E
from fastbp.kernels import engine as KE

T, D, H, K, BATCH = 800, 300, 300, 10, 400


def check_sizes_take_the_parallel_kernels():
    # If a threshold moves, these sizes must move with it, or the test would only ever run the
    # serial kernels and could not see a thread-count dependence.
    for rows in (BATCH, T):
        assert KD.dense_mode(rows, H, D) == KD.BLAS_MODE, "first layer is not parallel"
        assert KD.dense_mode(rows, H, H) == KD.BLAS_MODE, "branch layers are not parallel"
        assert rows * H >= KE.PAR_MIN_WORK, "elementwise ops are not parallel"


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, D)), rng.integers(0, K, size=T)


def make(dtype, seed=0):
    return fb.Sequential(
        fb.Linear(D, H), fb.Tanh(),
        fb.Product(fb.Sequential(fb.Linear(H, H), fb.ReLU()),
                   fb.Sequential(fb.Linear(H, H), fb.Sigmoid())),
        fb.Linear(H, K), fb.Softmax(), dtype=dtype, seed=seed)


def train(dtype, batch, engine, seed=0, epochs=2):
    X, y = data(seed)
    net = make(dtype, seed)
    if engine == "auto":
        assert E.compile_tape(net, True) is not None, "the engine cannot run the network"
    fb.fit(net, X, y, fb.KL(), fb.Adam(lr=1e-3), batch_size=batch, epochs=epochs, tol=None,
           shuffle=True, seed=7 + seed, progress=False, engine=engine)
    return net.flat_params


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
'''


# ==============================================================================================
# 1. Determinism: run to run, 1 and 2 threads, both dtypes, minibatch and full batch, both paths
# ==============================================================================================
DETERMINISM = COMMON + r'''
check_sizes_take_the_parallel_kernels()
fb.set_num_threads(int(os.environ["FASTBP_TEST_THREADS"]))
out = {"threads": fb.get_num_threads(), "layer": numba.threading_layer()}
for dtype in ("float32", "float64"):
    for batch in (BATCH, None):
        for engine in ("auto", False):
            params = train(np.dtype(dtype), batch, engine)
            assert np.isfinite(params).all()
            out[f"{dtype} batch={batch} engine={engine}"] = digest(params)
print(json.dumps(out))
'''


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_training_is_bit_identical_run_to_run_and_with_1_or_2_threads():
    """Three fresh processes: 1 thread twice, then 2. They share one pool size
    (``NUMBA_NUM_THREADS=2``, so one kernel cache) and set the thread count with
    ``fb.set_num_threads``; processes started with ``NUMBA_NUM_THREADS=1`` are compared with
    2 in tests/test_threads.py."""
    env = lambda n: _env(NUMBA_NUM_THREADS=2, FASTBP_TEST_THREADS=n)  # noqa: E731
    one = _run_script(DETERMINISM, env(1))
    again = _run_script(DETERMINISM, env(1))
    two = _run_script(DETERMINISM, env(2))
    assert (one.pop("threads"), again.pop("threads"), two.pop("threads")) == (1, 1, 2)
    print("threading layer:", two.pop("layer"), one.pop("layer"), again.pop("layer"))
    assert len(one) == 8
    assert one == again, "two runs with the same seed differ: " + \
        str(sorted(k for k in one if one[k] != again[k]))
    assert one == two, "1 and 2 threads differ: " + \
        str(sorted(k for k in one if one[k] != two[k]))
    # the engine and the per-node path agree at these (parallel) sizes too
    for k in one:
        if "engine=auto" in k:
            assert one[k] == one[k.replace("engine=auto", "engine=False")], k


# ==============================================================================================
# 2. Concurrency: two Python threads, each training its own network at the same time
# ==============================================================================================
CONCURRENCY = COMMON + r'''
import threading

check_sizes_take_the_parallel_kernels()
out = {}
for engine in ("auto", False):
    alone = {s: digest(train(np.float64, BATCH, engine, seed=s, epochs=3)) for s in (1, 2)}
    for rnd, counts in enumerate([(None, None), (None, None), (1, 2)]):
        got, errors = {}, []
        barrier = threading.Barrier(2)

        def work(seed, n):
            try:
                if n is not None:
                    fb.set_num_threads(n)  # numba's thread count is per Python thread
                barrier.wait()
                got[seed] = digest(train(np.float64, BATCH, engine, seed=seed, epochs=3))
            except BaseException as e:  # reported, not swallowed
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=work, args=(s, n)) for s, n in zip((1, 2), counts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a training thread hung"
        assert not errors, errors
        out[f"engine={engine} round {rnd}"] = {str(s): got[s] == alone[s] for s in (1, 2)}
print(json.dumps(out))
'''


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_two_python_threads_training_at_once_get_the_results_of_training_alone():
    out = _run_script(CONCURRENCY, _env(NUMBA_NUM_THREADS=2))
    assert len(out) == 6
    bad = {k: v for k, v in out.items() if not all(v.values())}
    assert not bad, f"concurrent training differs from training alone: {bad}"


# ==============================================================================================
# 3. Fork after the thread pool exists
# ==============================================================================================
FORK = COMMON + r'''
import multiprocessing as mp

def child(dtype, batch, engine):
    return digest(train(np.dtype(dtype), batch, engine, epochs=1))

cases = [("float64", BATCH, "auto"), ("float32", None, False), ("float64", BATCH, False)]
parent = {c: child(*c) for c in cases}   # the parent trains first: its thread pool is running
out = {}
with mp.get_context("fork").Pool(1) as pool:
    for c in cases:
        try:
            got = pool.apply_async(child, c).get(timeout=120)
            out[str(c)] = "equal" if got == parent[c] else "differs"
        except mp.TimeoutError:
            out[str(c)] = "hang"
            break
        except Exception as e:
            out[str(c)] = f"error {type(e).__name__}: {e}"
    pool.terminate()
print(json.dumps(out))
'''


@pytest.mark.skipif(sys.platform != "linux", reason="fork as the default start method: Linux")
def test_a_forked_child_trains_like_the_parent_or_says_use_spawn():
    out = _run_script(FORK, _env(NUMBA_NUM_THREADS=2), timeout=400)
    assert len(out) == 3, f"the forked child hung or the pool broke: {out}"
    for case, result in out.items():
        assert result != "hang", f"{case}: the forked child hung"
        if result.startswith("error"):
            assert "spawn" in result, f"{case}: unclear error in the forked child: {result}"
        else:
            assert result == "equal", f"{case}: the forked child trained differently"


# ==============================================================================================
# 4. Read-only install
# ==============================================================================================
READ_ONLY = r'''
import json, os, sys, tempfile
import numpy as np
res = {"uid": os.getuid(), "tmp": os.path.realpath(tempfile.gettempdir()),
       "home": os.path.expanduser("~"), "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR")}
import fastbp as fb
import fastbp._config as C
pkg = os.path.dirname(os.path.realpath(fb.__file__))
res.update(pkg=pkg, cache=C.CACHE_DIR and os.path.realpath(C.CACHE_DIR))
try:  # is the package folder really closed to this process?
    with open(os.path.join(pkg, "probe.txt"), "w"):
        pass
    res["probe"] = "written"
except OSError:
    res["probe"] = "refused"
X, d = fb.datasets.xor(64, seed=0)
net = fb.Sequential(fb.Linear(2, 6), fb.Tanh(), fb.Linear(6, 1), fb.Sigmoid(), seed=0)
h = fb.fit(net, X, d, fb.BinaryKL(), fb.Adam(lr=0.05), batch_size=16, epochs=3, tol=None,
           progress=False)
res["loss"] = h.loss[-1]
res["finite"] = bool(np.isfinite(net.flat_params).all())
print(json.dumps(res))
'''

NOBODY = 65534


def _drop_to_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _drop_dac_capabilities():
    """For root when user 65534 cannot run this interpreter: take CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH and CAP_FOWNER out of the bounding set before exec, so that the new
    process obeys file modes like any user (root owns the copy, whose modes are read-only)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _tree_state(root):
    """Every path under ``root`` with its size, mode and mtime."""
    out = {}
    for p in sorted(pathlib.Path(root).rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mode, st.st_mtime_ns)
    return out


def _make_read_only(root):
    for p in [*pathlib.Path(root).rglob("*"), pathlib.Path(root)]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def _make_writable(root):
    for p in [pathlib.Path(root), *pathlib.Path(root).rglob("*")]:
        with contextlib.suppress(OSError):
            p.chmod(0o755 if p.is_dir() else 0o644)


@contextlib.contextmanager
def _read_only_site():
    """A read-only copy of the package and a read-only home folder, at a fixed place in the
    temporary folder: numba keys its cache on the source path, so a fixed place (and copied
    modification times) lets later runs reuse the kernels compiled by the first."""
    import fcntl

    base = pathlib.Path(tempfile.gettempdir()) / f"fastbp-readonly-test-{os.getuid()}"
    base.mkdir(mode=0o755, exist_ok=True)
    base.chmod(0o755)
    with open(base / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once take turns
        site, home = base / "site", base / "home"
        for d in (site, home):
            if d.exists():
                _make_writable(d)
                shutil.rmtree(d)
        shutil.copytree(PKG, site / "fastbp",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        home.mkdir()
        _make_read_only(site)
        _make_read_only(home)
        try:
            yield base, site, home
        finally:
            _make_writable(site)
            _make_writable(home)


def _can_run_as_nobody(cwd):
    try:
        res = subprocess.run([sys.executable, "-c", "import numba, numpy, scipy, sklearn"],
                             preexec_fn=_drop_to_nobody, cwd=cwd, capture_output=True,
                             timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX file modes")
def test_import_and_fit_work_from_a_read_only_install():
    with _read_only_site() as (base, site, home):
        preexec = None
        if os.geteuid() == 0:
            # root ignores file modes: run as user 65534 if it can use this interpreter (the
            # copy and its folders are world-readable), else as root without the capabilities
            # that bypass file modes.
            preexec = _drop_to_nobody if _can_run_as_nobody(base) else _drop_dac_capabilities
        env = _env(PYTHONPATH=str(site), HOME=str(home))
        env.pop("NUMBA_CACHE_DIR", None)
        env.pop("XDG_CACHE_HOME", None)
        before = _tree_state(site)
        res = _run_script(READ_ONLY, env, timeout=900, cwd=str(base), preexec_fn=preexec)
        after = _tree_state(site)
    print("read-only install:", res)
    assert res["numba_cache_dir"] is None
    assert res["pkg"] == os.path.realpath(site / "fastbp"), "imported another copy of fastbp"
    assert res["probe"] == "refused", "the test could not make the package folder read-only"
    assert before == after, "something was written into the read-only package"
    assert res["finite"] and res["loss"] == res["loss"]
    # the kernel cache went to a writable place: the temporary folder (home is read-only)
    cache = res["cache"]
    assert cache is not None, "nowhere writable was found for the kernel cache"
    assert cache.startswith(res["tmp"] + os.sep), cache
    assert not cache.startswith(str(home)) and not cache.startswith(res["pkg"])


# ==============================================================================================
# 7. Memory: one epoch on a 2 GB float32 memmap
# ==============================================================================================
MEMMAP = r'''
import json, resource, sys, threading, time
import numpy as np
import fastbp as fb

path, T, D = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[k] = int(v.split()[0]) * 1024
    return out

X = np.memmap(path, dtype=np.float32, mode="r", shape=(T, D))
y = (np.arange(T) % 3).astype(np.int64)
net = fb.Sequential(fb.Linear(D, 16), fb.Tanh(), fb.Linear(16, 3), fb.Softmax(),
                    dtype=np.float32, seed=0)
# compile and warm up on a slice, so the figures below are those of the big fit
fb.fit(net, X[:512], y[:512], fb.KL(), fb.SGD(lr=0.01), batch_size=256, epochs=1,
       progress=False)
base = status()
peak = dict(base)
done = threading.Event()

def sample():  # the kernels release the GIL: sample the private (anonymous) memory meanwhile
    while not done.is_set():
        s = status()
        peak["RssAnon"] = max(peak["RssAnon"], s["RssAnon"])
        peak["VmRSS"] = max(peak["VmRSS"], s["VmRSS"])
        time.sleep(0.005)

th = threading.Thread(target=sample, daemon=True)
th.start()
t0 = time.perf_counter()
h = fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.01), batch_size=256, epochs=1, progress=False)
secs = time.perf_counter() - t0
done.set()
th.join()
end = status()
print(json.dumps({"seconds": secs, "loss": h.loss[-1], "base": base, "end": end,
                  "peak_sampled": peak,
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
'''


@pytest.mark.slow
def test_fit_on_a_2gb_memmap_does_not_copy_it(tmp_path):
    import numpy as np

    T, D = 1 << 22, 128  # 2**29 float32 = 2 GiB
    size = T * D * 4
    path = tmp_path / "big.f32"
    if shutil.disk_usage(tmp_path).free < 3 * size:
        pytest.skip("not enough disk space for the 2 GiB file")
    chunk = np.random.default_rng(0).standard_normal((1 << 16, D), dtype=np.float32)
    with open(path, "wb") as f:
        for k in range(T // chunk.shape[0]):
            f.write((chunk + np.float32(k % 7)).tobytes())
    assert path.stat().st_size == size
    proc = subprocess.run([sys.executable, "-c", MEMMAP, str(path), str(T), str(D)],
                          env=_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    print(f"\nmemmap fit: data {size / mib:.0f} MiB, one epoch at batch 256 in "
          f"{res['seconds']:.1f} s; peak RSS (ru_maxrss) {res['ru_maxrss'] / mib:.0f} MiB, "
          f"VmHWM {res['end']['VmHWM'] / mib:.0f} MiB; private (anonymous) memory "
          f"{res['base']['RssAnon'] / mib:.0f} MiB before the fit, peak "
          f"{res['peak_sampled']['RssAnon'] / mib:.0f} MiB during it (sampled every 5 ms), "
          f"{res['end']['RssAnon'] / mib:.0f} MiB after; file-backed RSS after "
          f"{res['end']['RssFile'] / mib:.0f} MiB")
    # What this measures: RSS (ru_maxrss, VmHWM) includes the memmap's file-backed pages, which
    # the kernel may map in up to the whole file while the data is read, and reclaims freely;
    # they are not a copy. A copy of the data (np.array, astype, a float64 conversion, a
    # contiguous copy) would be anonymous memory. So the assertion is on RssAnon: its peak
    # during the fit (sampled) and its value after, both far below the data size.
    assert res["peak_sampled"]["RssAnon"] < 0.25 * size
    assert res["end"]["RssAnon"] < 0.25 * size
    assert res["loss"] == res["loss"]


def test_cache_writers_with_stale_indexes_never_share_a_data_file(tmp_path):
    """Two processes saving different signatures of one kernel at once both see the index
    without the other's entry. numba's counter naming gives both ``<name>.1.nbc``: one overwrites
    the other's machine code under the other's key (a segfault on load, seen in this project).
    fastbp's cache names the file by the key: distinct keys, distinct files."""
    from numba.core import caching

    import fastbp._config as C

    folder = os.path.join(C.CACHE_DIR, "test-race", tmp_path.name)
    os.makedirs(folder)
    a = caching.IndexDataCacheFile(folder, "kernel-1.py311", "stamp")
    b = caching.IndexDataCacheFile(folder, "kernel-1.py311", "stamp")
    b._load_index = lambda: {}  # b read the index before a wrote to it
    a.save(("sig-a",), b"code for a")
    b.save(("sig-b",), b"code for b")
    data_files = sorted(f for f in os.listdir(folder) if f.endswith(".nbc"))
    assert len(data_files) == 2, data_files
    fresh = caching.IndexDataCacheFile(folder, "kernel-1.py311", "stamp")
    assert fresh.load(("sig-a",)) in (None, b"code for a")  # lost entry: recompiled, never b's
    assert fresh.load(("sig-b",)) == b"code for b"
    shutil.rmtree(folder)


CACHE_DIR_OF = r'''
import json
import fastbp._config as C
print(json.dumps(C.CACHE_DIR))
'''


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_processes_with_other_thread_counts_share_one_kernel_cache():
    """Compiled code reads the thread count at run time, so processes started with
    NUMBA_NUM_THREADS=1 (joblib's workers) and =2 use one cache folder instead of compiling
    their own. The crash once blamed on sharing was numba's unstarted thread pool (fastbp now
    starts it at import); tests/test_first_calls.py runs 1- and 2-thread processes on one
    fresh cache in many orders."""
    dirs = {n: _run_script(CACHE_DIR_OF, _env(NUMBA_NUM_THREADS=n)) for n in (1, 2)}
    assert dirs[1] and dirs[1] == dirs[2], dirs
