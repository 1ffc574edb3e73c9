"""Fresh processes on one fresh kernel cache, in orders of first calls that users make: no cache
history may crash fastbp or change its numbers, and processes with other thread counts share the
cache instead of compiling their own.

The crash this guards against (numba issues #8578, #9938): a serial cached kernel calling a
parallel one, compiled in a process that loaded the parallel one from the cache, was saved
without the hook that starts numba's thread pool; a later process whose first call was that
kernel (``predict`` of a loaded model) ran parallel code on a pool never started and segfaulted.
"""

import json
import os
import pathlib
import pickle
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastbp as fb
from fastbp.sklearn import MLPClassifier


# Each call: build what it needs, run it, print the output's values as JSON (exact: repr).
SCRIPT = r'''
import json, pickle, sys
import numpy as np
import fastbp as fb
call, dtype, path = sys.argv[1], np.dtype(sys.argv[2]), sys.argv[3]
S = fb.Sequential
X = np.linspace(-1, 1, 24).reshape(6, 4)

def every_kind():
    return S(fb.Linear(4, 8), fb.Tanh(), fb.PairProduct(), fb.PowerProduct(np.ones((4, 4))),
             fb.Product(S(fb.Linear(4, 4), _bind=False), S(fb.Linear(4, 4), _bind=False)),
             fb.MaxOver([[0, 1], [2, 3]]), fb.Linear(2, 3), fb.Softmax(), dtype=dtype, seed=0)

def small():
    return S(fb.Linear(4, 3), fb.Softmax(), dtype=dtype, seed=0)

d = np.array([0, 1, 2, 0, 1, 2])
if call == "forward":
    Y = every_kind().forward(X)
elif call == "predict":
    Y = small().predict(X)
elif call == "predict_every_kind":
    Y = every_kind().predict(X)
elif call == "fit":
    net = small()
    fb.fit(net, X, d, fb.KL(), fb.SGD(lr=0.1), batch_size=2, epochs=3, progress=False)
    Y = net.flat_params
elif call == "train_step":
    net = small()
    net.train_step(X, d, fb.KL(), fb.Adam(lr=0.01))
    Y = net.flat_params
elif call == "load_predict":
    Y = fb.load(path).predict(X)
elif call == "sklearn_predict":
    with open(path, "rb") as f:
        Y = pickle.load(f).predict_proba(X)
print(json.dumps([repr(float(v)) for v in np.ravel(Y)]))
'''

# The order of the report first (forward caches leaf kernels, predict compiles the
# engine, predict again loads it), then every other entry point as a process's first call, and
# processes started with one thread in between (joblib's workers run so).
ORDER = [("forward", 2), ("predict", 2), ("predict", 2), ("load_predict", 2),
         ("sklearn_predict", 2), ("fit", 1), ("predict_every_kind", 2), ("train_step", 2),
         ("load_predict", 1), ("fit", 2), ("sklearn_predict", 1), ("train_step", 1)]


def _expected(call, dtype, path):
    """The same call in this process (its own, warm cache)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, call, dtype, str(path)],
                         capture_output=True, text=True, timeout=600, env=_env(2, None))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def _env(threads, cache):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS",)}
    env.update(NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS="1")
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    return env


def _cache_files(cache):
    return sorted(str(p.relative_to(cache)) for p in pathlib.Path(cache).rglob("*")
                  if p.suffix in (".nbi", ".nbc"))


@pytest.mark.slow
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_any_order_of_first_calls_on_one_fresh_cache(tmp_path, dtype):
    net = fb.Sequential(fb.Linear(4, 3), fb.Softmax(), dtype=np.dtype(dtype), seed=0)
    model = tmp_path / "model.npz"
    net.save(model)
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=20, random_state=0,
                        dtype=np.dtype(dtype))
    rng = np.random.default_rng(0)
    clf.fit(rng.normal(size=(30, 4)), rng.integers(0, 3, 30))
    est = tmp_path / "est.pkl"
    est.write_bytes(pickle.dumps(clf))
    paths = {"load_predict": model, "sklearn_predict": est}
    cache = tmp_path / "cache"
    expected = {}
    for call, threads in ORDER:
        path = paths.get(call, "")
        if call not in expected:
            expected[call] = _expected(call, dtype, path)
        res = subprocess.run([sys.executable, "-c", SCRIPT, call, dtype, str(path)],
                             capture_output=True, text=True, timeout=600,
                             env=_env(threads, cache))
        assert res.returncode == 0, (f"{call} with {threads} thread(s) after "
                                     f"{ORDER[:ORDER.index((call, threads))]}: exit "
                                     f"{res.returncode}\n{res.stderr[-3000:]}")
        assert json.loads(res.stdout.splitlines()[-1]) == expected[call], (call, threads)
    # One cache folder for every thread count; a warm 1-thread process compiles nothing new.
    folders = [p.name for p in pathlib.Path(cache).iterdir() if p.name.startswith("kernels-")]
    assert len(folders) == 1, folders
    before = _cache_files(cache)
    for call in ("fit", "predict_every_kind", "train_step", "sklearn_predict"):
        res = subprocess.run([sys.executable, "-c", SCRIPT, call, dtype, str(paths.get(call, ""))],
                             capture_output=True, text=True, timeout=600, env=_env(1, cache))
        assert res.returncode == 0, res.stderr[-3000:]
    assert _cache_files(cache) == before, "a 1-thread process recompiled kernels"
