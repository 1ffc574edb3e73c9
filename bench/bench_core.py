"""asv suites for fastbp's hot paths, through the public API only.

Each ``setup`` builds its data from ``default_rng(0)`` and calls the timed function once, so
that numba has compiled before asv starts timing (compile time is in bench_compile.py).
A thread count above the machine's cores skips that parameter set.
"""

import os
import time

import numpy as np

import fastbp as fb

# The steady state: parallel kernels compile at the warm-up, not in a background helper while
# the timed runs start on their serial twins (FASTBP_COMPILE_PARALLEL, README).
os.environ.setdefault("FASTBP_COMPILE_PARALLEL", "now")


def mlp(sizes, dtype=np.float32, act=None):
    """Linear layers with ReLU (or act) between them and Softmax at the end."""
    act = act or fb.ReLU
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [fb.Linear(n_in, n_out), act()]
    return fb.Sequential(*layers[:-1], fb.Softmax(), dtype=dtype, seed=0)


def use_threads(threads):
    if threads > (os.cpu_count() or 1):
        raise NotImplementedError(f"{threads} threads on {os.cpu_count()} cores")
    fb.set_num_threads(threads)


def random_batch(rows, n_in, dtype=np.float32, classes=10):
    rng = np.random.default_rng(0)
    return rng.standard_normal((rows, n_in)).astype(dtype), rng.integers(0, classes, rows)


class MLP:
    """784-w-w-10 ReLU + Softmax, a batch of 256 rows; width, dtype and thread count vary."""

    params = ([64, 256, 1024], ["float32", "float64"], [1, 2])
    param_names = ["width", "dtype", "threads"]

    def setup(self, width, dtype, threads):
        use_threads(threads)
        self.X, self.d = random_batch(256, 784, dtype)
        self.x1 = self.X[:1]
        self.net = mlp([784, width, width, 10], dtype)
        self.loss, self.opt = fb.KL(), fb.SGD(lr=0.01)
        self.Y = self.net.forward(self.X)
        self.dY = self.loss.grad(self.Y, self.d)
        self.net.backward(self.dY)
        self.net.train_step(self.X, self.d, self.loss, self.opt)
        self.net.predict(self.x1)

    def time_forward(self, width, dtype, threads):
        self.net.forward(self.X)

    def time_backward(self, width, dtype, threads):
        self.net.backward(self.dY)

    def time_train_step(self, width, dtype, threads):
        self.net.train_step(self.X, self.d, self.loss, self.opt)

    def time_predict_one_row(self, width, dtype, threads):
        self.net.predict(self.x1)


class OneRow:
    """Per-call cost of the W6 network (784-256-10) on one row: the online / serving path."""

    params = [1, 2]
    param_names = ["threads"]

    def setup(self, threads):
        use_threads(threads)
        X, d = random_batch(1, 784)
        self.x, self.d = X, d
        self.net = mlp([784, 256, 10])
        self.loss, self.opt = fb.KL(), fb.SGD(lr=0.01)
        self.net.train_step(self.x, self.d, self.loss, self.opt)
        self.net.predict(self.x)

    def time_predict(self, threads):
        self.net.predict(self.x)

    def time_train_step(self, threads):
        self.net.train_step(self.x, self.d, self.loss, self.opt)


class FitDigits:
    """One epoch of W2: digits 64-64-10 tanh + softmax, minibatch 32, SGD lr 0.1."""

    params = [1, 2]
    param_names = ["threads"]

    def setup(self, threads):
        use_threads(threads)
        from sklearn.datasets import load_digits

        X, d = load_digits(return_X_y=True)
        self.X, self.d = (X / 16).astype(np.float32), d
        self.net = mlp([64, 64, 10], act=fb.Tanh)
        self.fit_epoch()

    def fit_epoch(self):
        fb.fit(self.net, self.X, self.d, loss=fb.KL(), optimizer=fb.SGD(lr=0.1), batch_size=32,
               epochs=1, tol=None, shuffle=False, progress=False)

    def time_fit_epoch(self, threads):
        self.fit_epoch()


class DenseGflops:
    """Achieved GFLOP/s of forward + backward through n_in-w-w-10 ReLU, 6 * weights * rows."""

    params = ([256, 1024, 2048], ["float32", "float64"], [1, 2])
    param_names = ["width", "dtype", "threads"]
    unit = "GFLOP/s"

    def setup(self, width, dtype, threads):
        use_threads(threads)
        sizes = [784, width, width, 10]
        self.X, self.d = random_batch(512, 784, dtype)
        self.net = mlp(sizes, dtype)
        self.dY = fb.KL().grad(self.net.forward(self.X), self.d)
        self.flops = 6 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * len(self.X)
        self.forward_backward()

    def forward_backward(self):
        self.net.forward(self.X)
        self.net.backward(self.dY)

    def track_gflops_forward_backward(self, width, dtype, threads):
        # asv does not warm track_ benchmarks; setup compiled, and the best of 5 drops noise
        best = np.inf
        for _ in range(5):
            t = time.perf_counter()
            self.forward_backward()
            best = min(best, time.perf_counter() - t)
        return self.flops / best / 1e9
