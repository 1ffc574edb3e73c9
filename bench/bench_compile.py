"""Compile time, a suite of its own: import fastbp and run a first fit in a fresh process.

"cold" points NUMBA_CACHE_DIR at a new, empty directory for every run, so every kernel the
first fit needs is compiled; "warm" reuses a directory that setup filled by running the same
script once, so the run loads cached machine code.

Every case runs as on a user's machine after ``pip install fastbp``: pip writes the package's
bytecode (.pyc) at install time, so setup does the same (``compileall``) and the children run
without ``PYTHONDONTWRITEBYTECODE`` (set on these machines; with it an editable checkout compiles
its 30 modules' source again in every process, 0.05 s of a warm first fit measured here).

Run as a script for the engine issue's cold-start table (seconds, each case in a fresh
process, ``--rounds`` rounds, medians): ``python bench/bench_compile.py``.
"""

import argparse
import compileall
import os
import statistics
import time
import shutil
import subprocess
import sys
import tempfile
import uuid

IMPORT = "import fastbp"

FIRST_FIT = """
import numpy as np
import fastbp as fb

rng = np.random.default_rng(0)
X = rng.standard_normal((256, 64)).astype(np.float32)
d = rng.integers(0, 10, 256)
net = fb.Sequential(fb.Linear(64, 64), fb.Tanh(), fb.Linear(64, 10), fb.Softmax(),
                    dtype=np.float32, seed=0)
fb.fit(net, X, d, loss=fb.KL(), optimizer=fb.SGD(lr=0.1), batch_size=32, epochs=3, tol=None,
       progress=False)
"""


NEW_ARCHITECTURE = FIRST_FIT.replace("fb.Linear(64, 64), fb.Tanh(), fb.Linear(64, 10)",
                                     "fb.Linear(64, 48), fb.Tanh(), fb.Linear(48, 10)")

SKLEARN_DIGITS = """
from sklearn.datasets import load_digits
from fastbp.sklearn import MLPClassifier

X, y = load_digits(return_X_y=True)
MLPClassifier(max_iter=20, random_state=0).fit(X / 16, y)
"""

DEMO = "from fastbp.cli import main; main(['demo'])"


def child_env(cache_dir):
    """The environment of a timed child: this one with ``cache_dir`` as numba's cache,
    without PYTHONDONTWRITEBYTECODE (see the module's docstring) and with fastbp's default
    for parallel kernels (compiled in the background: the suites of steady speed set
    FASTBP_COMPILE_PARALLEL=now)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "FASTBP_COMPILE_PARALLEL")}
    return dict(env, NUMBA_CACHE_DIR=cache_dir)


def install_bytecode():
    """Write fastbp's .pyc files, as ``pip install`` does; returns the package's directory."""
    import fastbp

    root = os.path.dirname(fastbp.__file__)
    compileall.compile_dir(root, quiet=1)
    return root


def run(code, cache_dir, capture_output=False):
    """Run ``code`` in a fresh process, in a process group of its own, and return when it
    ends; ``settle`` waits for the helpers it left compiling parallel kernels in the
    background (``fastbp._config.compile_later``), which belong to that group."""
    out = subprocess.DEVNULL if capture_output else None
    child = subprocess.Popen([sys.executable, "-c", code], env=child_env(cache_dir),
                             stdout=out, stderr=out, start_new_session=True)
    _groups.append(child.pid)
    if child.wait():
        raise subprocess.CalledProcessError(child.returncode, code)


def settle(timeout=600):
    """Wait until the helpers of every process ``run`` started have ended, so that none runs
    beside the next timed case (a user's next fit would share the cores with them), or
    for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _groups and time.monotonic() < deadline:
        try:
            os.killpg(_groups[-1], 0)
            time.sleep(0.1)
        except ProcessLookupError:
            _groups.pop()
    _groups.clear()


_groups = []


class Compile:
    params = ["cold", "warm"]
    param_names = ["cache"]
    number = 1
    repeat = 3
    warmup_time = 0
    timeout = 600

    def setup(self, cache):
        install_bytecode()
        self.root = tempfile.mkdtemp(prefix="fastbp-bench-cache-")
        self.warm_dir = os.path.join(self.root, "warm")
        if cache == "warm":
            run(FIRST_FIT, self.warm_dir)

    def teardown(self, cache):
        settle()
        shutil.rmtree(self.root, ignore_errors=True)

    def cache_dir(self, cache):
        if cache == "warm":
            return self.warm_dir
        return os.path.join(self.root, uuid.uuid4().hex)  # numba creates it, empty

    def time_import(self, cache):
        run(IMPORT, self.cache_dir(cache))

    def time_import_and_first_fit(self, cache):
        run(FIRST_FIT, self.cache_dir(cache))

    def time_new_architecture(self, cache):
        # warm: the cache holds the kernels of FIRST_FIT's 64-64-10 net, not of this 64-48-10
        run(NEW_ARCHITECTURE, self.cache_dir(cache))

    def time_sklearn_first_fit(self, cache):
        run(SKLEARN_DIGITS, self.cache_dir(cache))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cases = [  # (name, code, cache: "cold", "warm" (the same code ran before) or "others")
        ("import", IMPORT, "warm"),
        ("import + first fit, 64-64-10 tanh float32, 3 epochs, empty cache", FIRST_FIT, "cold"),
        ("import + first fit, warm cache", FIRST_FIT, "warm"),
        ("new architecture (64-48-10), cache warm from 64-64-10", NEW_ARCHITECTURE, "others"),
        ("MLPClassifier().fit on the digits, empty cache", SKLEARN_DIGITS, "cold"),
        ("fastbp demo, empty cache", DEMO, "cold"),
    ]
    print(f"fastbp {install_bytecode()} (bytecode written, as pip install does)")
    from compare import cpu_model_and_flags  # beside this script

    with open("/proc/cpuinfo") as f:
        model, flags = cpu_model_and_flags(f.read())
    print(f"cpu {model}, {os.cpu_count()} cores; flags {' '.join(flags)}")
    times = {name: [] for name, _, _ in cases}
    with tempfile.TemporaryDirectory(prefix="fastbp-bench-cache-") as root:
        for r in range(args.rounds):
            for name, code, cache in cases:
                d = os.path.join(root, uuid.uuid4().hex)
                if cache != "cold":
                    run(FIRST_FIT if cache == "others" else code, d)
                    settle()
                t = time.perf_counter()
                run(code, d, capture_output=True)
                times[name].append(time.perf_counter() - t)
                settle()
                shutil.rmtree(d, ignore_errors=True)
    print(f"{'case':60s} {'median s':>9s}  runs")
    for name, ts in times.items():
        print(f"{name:60s} {statistics.median(ts):9.2f}  " + " ".join(f"{t:.2f}" for t in ts))


if __name__ == "__main__":
    main()
