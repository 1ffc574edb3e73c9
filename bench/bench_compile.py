"""Compile time, a suite of its own: import fastbp and run a first fit in a fresh process.

"cold" points NUMBA_CACHE_DIR at a new, empty directory for every run, so every kernel the
first fit needs is compiled; "warm" reuses a directory that setup filled by running the same
script once, so the run loads cached machine code.
"""

import os
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
fb.fit(net, X, d, loss=fb.KL(), optimizer=fb.SGD(lr=0.1), batch_size=32, epochs=1, tol=None,
       shuffle=False, progress=False)
"""


def run(code, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


class Compile:
    params = ["cold", "warm"]
    param_names = ["cache"]
    number = 1
    repeat = 3
    warmup_time = 0
    timeout = 600

    def setup(self, cache):
        self.root = tempfile.mkdtemp(prefix="fastbp-bench-cache-")
        self.warm_dir = os.path.join(self.root, "warm")
        if cache == "warm":
            run(FIRST_FIT, self.warm_dir)

    def teardown(self, cache):
        shutil.rmtree(self.root, ignore_errors=True)

    def cache_dir(self, cache):
        if cache == "warm":
            return self.warm_dir
        return os.path.join(self.root, uuid.uuid4().hex)  # numba creates it, empty

    def time_import(self, cache):
        run(IMPORT, self.cache_dir(cache))

    def time_import_and_first_fit(self, cache):
        run(FIRST_FIT, self.cache_dir(cache))
