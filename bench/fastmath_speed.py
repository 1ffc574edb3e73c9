"""ns per element of fastbp's exp/tanh/sigmoid against numba's libm calls and NumPy.

Run: ``PYTHONPATH=. python bench/fastmath_speed.py [n]``. Each contender fills a preallocated
output for n = 1e6 elements; the contenders alternate within each round and the table shows the
median over rounds, so load from other processes hits them alike.
"""

import sys
import time

import numpy as np

from fastbp._config import SERIAL, njit
from fastbp.kernels.fastmath import exp_array, sigmoid_array, tanh_array


@njit(**SERIAL)
def numba_exp(x, out):
    """out = np.exp(x) in a numba loop (one libm call per element)."""
    for i in range(x.size):
        out[i] = np.exp(x[i])


@njit(**SERIAL)
def numba_tanh(x, out):
    """out = np.tanh(x) in a numba loop."""
    for i in range(x.size):
        out[i] = np.tanh(x[i])


@njit(**SERIAL)
def numba_sigmoid(x, out):
    """out = 1 / (1 + np.exp(-x)) in a numba loop."""
    one = x.dtype.type(1)
    for i in range(x.size):
        out[i] = one / (one + np.exp(-x[i]))


def numpy_sigmoid(x, out):
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)


CONTENDERS = {
    "exp": (exp_array, numba_exp, lambda x, out: np.exp(x, out=out)),
    "tanh": (tanh_array, numba_tanh, lambda x, out: np.tanh(x, out=out)),
    "sigmoid": (sigmoid_array, numba_sigmoid, numpy_sigmoid),
}


def timings(fns, x, rounds=15):
    out = np.empty_like(x)
    for f in fns:
        f(x, out)  # compile / warm up
    t = np.empty((rounds, len(fns)))
    for r in range(rounds):
        for j, f in enumerate(fns):
            t0 = time.perf_counter()
            f(x, out)
            t[r, j] = time.perf_counter() - t0
    return np.median(t, axis=0) / x.size * 1e9


def main(n=1_000_000):
    rng = np.random.default_rng(0)
    print(f"n = {n}, ns per element (median of 15 rounds)")
    print(f"{'function':9s} {'dtype':8s} {'fastbp':>8s} {'numba np.*':>11s} {'NumPy':>8s}"
          f" {'numba/fastbp':>13s} {'NumPy/fastbp':>13s}")
    for dtype in (np.float32, np.float64):
        x = rng.uniform(-10, 10, n).astype(dtype)
        for name, fns in CONTENDERS.items():
            ours, nb, npy = timings(fns, x)
            print(f"{name:9s} {np.dtype(dtype).name:8s} {ours:8.2f} {nb:11.2f} {npy:8.2f}"
                  f" {nb / ours:13.1f} {npy / ours:13.1f}")


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000)
