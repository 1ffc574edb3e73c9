"""Compiling a first fit's kernels in helper processes (``_config.compile_ops``): the numbers do
not depend on which process compiled a kernel, helpers that fail leave their kernels to the
parent, and every kernel the engine builds can be named to a fresh process."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastbp as fb
from fastbp import _config
from fastbp import engine as E

# A first fit in a fresh process; prints a hash of the parameters, how many op kernels the
# process loaded from the cache (the helpers' work) and how many it has.
FIT = r'''
import hashlib, json, subprocess, sys
import numpy as np
import fastbp as fb
from fastbp import _config
if sys.argv[1] == "failing":  # every helper dies at once
    _config._start_helper = lambda job: subprocess.Popen([sys.executable, "-c", "exit(3)"])
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 8)).astype(np.float32)
d = rng.integers(0, 3, 64)
net = fb.Sequential(fb.Linear(8, 6), fb.Tanh(), fb.Linear(6, 3), fb.Softmax(),
                    dtype=np.float32, seed=0)
fb.fit(net, X, d, loss=fb.KL(), optimizer=fb.SGD(lr=0.1), batch_size=16, epochs=2, tol=None,
       progress=False)
kernels = [k for k in _config._op_kernels.values() if k.compiled]
print(json.dumps([hashlib.sha256(net.flat_params.tobytes()).hexdigest(),
                  sum(k._cfunc.cache_hits for k in kernels), len(kernels)]))
'''


def _first_fit(cache, jobs, mode="plain"):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), FASTBP_COMPILE_JOBS=str(jobs))
    out = subprocess.run([sys.executable, "-c", FIT, mode], capture_output=True, text=True,
                         timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    claims = [p for p in pathlib.Path(cache).rglob(".claims-*")]
    assert not claims, f"claim folders left behind: {claims}"
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """The first fit compiled by one process."""
    return _first_fit(tmp_path_factory.mktemp("alone"), 1)


@pytest.mark.slow
def test_helpers_compile_part_of_a_cold_first_fit_and_change_no_bit(tmp_path, alone):
    shared = _first_fit(tmp_path / "shared", 2)
    assert alone[1] == 0, "one process compiled everything itself"
    assert shared[1] >= 1, "no helper compiled a kernel of the first fit"
    assert shared[2] == alone[2] >= 8
    assert shared[0] == alone[0], "parameters differ with kernels compiled by a helper"


@pytest.mark.slow
def test_failing_helpers_leave_their_kernels_to_the_parent(tmp_path, alone):
    failing = _first_fit(tmp_path / "failing", 2, "failing")
    assert failing[1] == 0
    assert failing[0] == alone[0]


NETS = {
    "tanh-softmax": lambda: fb.Sequential(fb.Linear(4, 8), fb.Tanh(), fb.Linear(8, 3),
                                          fb.Softmax(), seed=0),
    "every kind": lambda: fb.Sequential(
        fb.Linear(4, 8), fb.ReLU(), fb.PairProduct(), fb.PowerProduct(np.ones((4, 4))),
        fb.Product(fb.Sequential(fb.Linear(4, 4), _bind=False),
                   fb.Sequential(fb.Linear(4, 4), _bind=False)),
        fb.MaxOver([[0, 1], [2, 3]]), fb.Linear(2, 3), fb.Sigmoid(), seed=0),
    "norm and dropout": lambda: fb.Sequential(fb.Linear(4, 16), fb.LayerNorm(16),
                                              fb.Dropout(0.5), fb.ELU(0.5), fb.Linear(16, 3),
                                              fb.Softmax(), dtype=np.float32, seed=0),
}


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("rows", [1, 256])
@pytest.mark.parametrize("optimizer", [fb.SGD(lr=0.1), fb.Adam(lr=0.01, clip_norm=1.0)])
def test_every_engine_kernel_is_named_to_a_fresh_process(name, rows, optimizer):
    net = NETS[name]()
    loss = fb.KL() if isinstance(net.nodes[-1], fb.Softmax) else fb.L2()
    target = np.zeros(rows, np.int64) if isinstance(loss, fb.KL) else np.zeros((rows, 3))
    tape, loss_code, (code, hyper, _) = E.check_supported(net, loss, target, optimizer)
    calls, _ = tape.step_kernels(rows, *E.training_step(tape, loss_code, code, hyper,
                                                         target.ndim == 1, True, False))
    kernels = [k for k, _ in calls] + [k for k, _ in tape._forward_kernels(net.dtype.type, rows)]
    assert len(kernels) >= 5
    for k in kernels:
        spec = k.spec()
        assert spec is not None, (k.fn.__name__, k.consts)
        assert _config.from_spec(json.loads(json.dumps(spec))) is k


def test_compile_jobs_follow_the_setting_the_threads_and_the_executable(monkeypatch):
    monkeypatch.setenv("FASTBP_COMPILE_JOBS", "two")
    with pytest.raises(ValueError, match="FASTBP_COMPILE_JOBS must be an integer, got 'two'"):
        _config._compile_jobs()
    monkeypatch.setenv("FASTBP_COMPILE_JOBS", "0")
    assert _config._compile_jobs() == 1
    monkeypatch.delenv("FASTBP_COMPILE_JOBS")
    assert _config._compile_jobs() == min(len(os.sched_getaffinity(0)), fb.get_num_threads())
    threads = fb.get_num_threads()
    try:
        fb.set_num_threads(1)  # a joblib worker's or an MPI rank's budget
        assert _config._compile_jobs() == 1
    finally:
        fb.set_num_threads(threads)
    monkeypatch.setattr(sys, "frozen", True, raising=False)  # PyInstaller and the like
    assert _config._compile_jobs() == 1


def test_a_helper_with_other_numba_settings_compiles_nothing(tmp_path):
    job = {"cache_dir": _config.CACHE_DIR, "config": dict(_config._compiler_config(),
                                                          BOUNDSCHECK="'other'"),
           "claims": str(tmp_path), "kernels": [[0, {"module": "nowhere"}]]}
    _config.compile_specs(job)  # would fail to import "nowhere" if it tried
    assert not list(tmp_path.iterdir())


HELPER_CONFIG = r'''
import json, subprocess, sys
import numba
numba.njit(lambda: 1)()  # numba sets up its code generator before fastbp is imported
import fastbp._config as C
code = "import json, fastbp._config as C; print(json.dumps(C._compiler_config()))"
child = subprocess.run([sys.executable, "-c", code], env=C._helper_env(), capture_output=True,
                       text=True, timeout=120, check=True)
print(json.dumps([C._compiler_config(), json.loads(child.stdout)]))
'''


def test_compile_helpers_compile_for_the_parents_cpu_features():
    """A helper compiles only where its numba settings are its parent's. A parent whose numba
    compiled before ``import fastbp`` keeps LLVM's vector width (``_prefer_wide_vectors``), and
    its helpers, fresh processes, are told its CPU features rather than choosing their own."""
    out = subprocess.run([sys.executable, "-c", HELPER_CONFIG], capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items()
                                           if k not in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME")})
    assert out.returncode == 0, out.stderr[-3000:]
    parent, helper = json.loads(out.stdout.strip().splitlines()[-1])
    assert parent == helper


def test_claims_go_to_one_process_each(tmp_path):
    assert _config._claim(str(tmp_path), 3)
    assert not _config._claim(str(tmp_path), 3)
    assert _config._claim(str(tmp_path), 4)
    assert not _config._claim(str(tmp_path / "gone"), 0)



NAN_STEP = r'''
import sys
import numpy as np
import fastbp as fb
from fastbp import _config
X = np.ones((4, 8), np.float32)
X[1, 2] = np.nan
net = fb.Sequential(fb.Linear(8, 6), fb.Tanh(), fb.Linear(6, 3), fb.Softmax(),
                    dtype=np.float32, seed=0)
try:
    net.train_step(X, np.array([0, 1, 2, 0]), fb.KL(), fb.SGD(lr=0.1))
except ValueError as e:
    print("refused:", e, file=sys.stderr)
assert _config._shared, "the first step started no helpers"
'''


def test_helpers_of_an_abandoned_compile_stop_at_exit(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTBP_COMPILE_JOBS="2")
    out = subprocess.run([sys.executable, "-c", NAN_STEP], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "NaN" in out.stderr
    assert not list(tmp_path.rglob(".claims-*"))


# A fit whose two first layers run on the threads, twice, in a fresh process; prints the
# parameters' hashes after each fit and what ran: the number of op kernels compiled later
# (``_config.compile_later``), whether their programs' rows held the serial twins during the
# first fit, and whether the second fit ran the parallel kernels, loaded from the cache.
LATER = r'''
import hashlib, json, time
import numpy as np
import fastbp as fb
from fastbp import _config
rng = np.random.default_rng(0)
X = rng.standard_normal((160, 300))
d = rng.integers(0, 10, 160)
net = fb.Sequential(fb.Linear(300, 128), fb.Tanh(), fb.Linear(128, 128), fb.Tanh(),
                    fb.Linear(128, 10), fb.Softmax(), seed=0)
def fit():
    fb.fit(net, X, d, loss=fb.KL(), optimizer=fb.SGD(lr=0.1, momentum=0.9), batch_size=64,
           epochs=2, tol=None, progress=False)
    return hashlib.sha256(net.flat_params.tobytes()).hexdigest()
first = fit()
ws = net._tapes[(True, id(net.flat_params))].workspace(64)
later = dict(_config._later)
twins = all(calls[row, 0] == k.serial().address for calls, row, k in ws.later)
deadline = time.time() + 600
while not all(_config.compiled_later(k) for k in later) and time.time() < deadline:
    time.sleep(0.2)
second = fit()
loaded = all(k.compiled and k._cfunc.cache_hits == 1 for k in later) and not ws.later
print(json.dumps([first, second, len(later), len(ws.later), twins, loaded]))
'''


@pytest.mark.slow
def test_parallel_kernels_compile_in_the_background_and_change_no_bit(tmp_path):
    """With an empty cache, ops that would run on the threads run on their serial twins while
    a helper compiles their parallel kernels into the cache; the next call runs those, and
    every parameter has the bits of compiling them at once."""
    runs = {}
    for mode in ("background", "now"):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / mode), NUMBA_NUM_THREADS="2",
                   FASTBP_COMPILE_PARALLEL=mode, FASTBP_COMPILE_JOBS="2")
        out = subprocess.run([sys.executable, "-c", LATER], capture_output=True, text=True,
                             timeout=1200, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[mode] = json.loads(out.stdout.splitlines()[-1])
    first, second, n_later, pending, twins, loaded = runs["background"]
    assert n_later >= 3, "the dense forward and both backwards are compiled later"
    assert twins and loaded and pending == 0
    assert runs["now"][2:4] == [0, 0]
    assert [first, second] == runs["now"][:2]
    assert not list(tmp_path.rglob(".later-*")), "a helper left its claims behind"


def test_what_runs_while_a_parallel_kernel_is_missing(monkeypatch):
    KD = fb.kernels.dense
    par = _config.op_kernel(fb.kernels.engine.linear_forward, np.float64,
                            KERNEL=KD.dense_forward_blas, BLAS=True)
    twin = par.serial()
    assert twin.consts["KERNEL"] is KD.dense_forward_blas_serial and twin.serial() is twin
    monkeypatch.setattr(_config.OpKernel, "compiled", False)
    monkeypatch.setattr(_config.OpKernel, "cached", lambda self: False)
    started = []
    monkeypatch.setattr(_config, "_start_helper", lambda job: started.append(job))
    monkeypatch.setenv("FASTBP_COMPILE_PARALLEL", "background")
    monkeypatch.delenv("FASTBP_COMPILE_JOBS", raising=False)
    assert _config.runnable(twin) == (twin, None)
    threads = fb.get_num_threads()
    try:
        fb.set_num_threads(1)  # nothing to gain from the threads: no helper
        assert _config.runnable(par) == (twin, None)
    finally:
        fb.set_num_threads(threads)
    if threads >= 2:
        assert _config.runnable(par) == (twin, par)
        monkeypatch.setenv("FASTBP_COMPILE_JOBS", "1")  # no processes may start
        assert _config.runnable(par) == (par, None)
    monkeypatch.setenv("FASTBP_COMPILE_PARALLEL", "now")
    assert _config.runnable(par) == (par, None)
    monkeypatch.setenv("FASTBP_COMPILE_PARALLEL", "later")
    with pytest.raises(ValueError, match="FASTBP_COMPILE_PARALLEL must be 'background' or "
                                         "'now', got 'later'"):
        _config.runnable(par)
    assert not started
