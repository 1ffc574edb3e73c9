"""Shared fixtures: seeded generators and a network that uses every node kind.

Plain helpers live here too (imported by ``tests/test_threads.py``'s subprocess script, which
puts this directory on ``sys.path``); the references and tolerances are in ``reference.py``.
"""

import contextlib
import os
import signal

import numpy as np
import pytest

import fastbp as fb

# Parallel kernels compile when first needed, as before ``_config.runnable``: the tests of thread
# counts run them, and no test leaves helpers compiling behind it. The serial twins that run
# meanwhile by default give the same bits (tests/test_compile.py tests that default).
os.environ.setdefault("FASTBP_COMPILE_PARALLEL", "now")

DTYPES = (np.float32, np.float64)


@pytest.fixture
def rng():
    return np.random.default_rng(20220205)


# -- user vector activations (module-level so that copies of a network keep them) -------------
def scaled_by_tanh_sum(z):
    """y_m = z_m tanh(sum_d z_d): every output depends on every input."""
    return z * np.tanh(z.sum())


def scaled_by_tanh_sum_jacobian(z):
    """J[m, d] = delta_md tanh(s) + z_m (1 - tanh(s)^2), s = sum z."""
    s = np.tanh(z.sum())
    return np.diag(np.full(z.shape[0], s)) + np.outer(z, np.full(z.shape[0], 1 - s * s))


def moments(z):
    """Two outputs from D inputs: y = (sum z^2 / 2, sum z^3 / 3)."""
    return np.array([np.sum(z * z) / 2, np.sum(z ** 3) / 3])


def moments_jacobian(z):
    return np.stack([z, z * z])


POWER_ALPHA = np.array([[1.0, 0.0, 2.0],
                        [0.0, 1.0, 1.0],
                        [1.0, 1.0, 0.0]])


def build_every_kind_net(dtype=np.float64, seed=0):
    """A network with every built-in node kind: Linear (with and without bias), each scalar
    activation, Softmax, VectorActivation (square and D -> M), PairProduct, PowerProduct,
    Product of two sub-networks, MaxOver, MaxPool1d."""
    return fb.Sequential(
        fb.Linear(7, 17), fb.Sigmoid(),
        fb.Linear(17, 9), fb.Tanh(),
        fb.Linear(9, 9), fb.ReLU(),
        fb.Linear(9, 9, bias=False), fb.LeakyReLU(0.1),
        fb.Linear(9, 9), fb.RReLU(),
        fb.Linear(9, 9), fb.Softplus(),
        fb.Linear(9, 9), fb.ELU(0.7),
        fb.Linear(9, 9), fb.GELU(),
        fb.VectorActivation(scaled_by_tanh_sum, scaled_by_tanh_sum_jacobian),
        fb.Product(fb.Sequential(fb.Linear(9, 10), fb.Identity()),
                   fb.Sequential(fb.Linear(9, 10), fb.Sigmoid())),
        fb.PairProduct(),                           # 10 -> 5
        fb.MaxPool1d(2, 1),                         # 5 -> 4
        fb.MaxOver([[0, 2], [1], [3, 0, 1]]),       # 4 -> 3
        fb.Linear(3, 3, init="torch"),
        fb.PowerProduct(POWER_ALPHA),               # 3 -> 3
        fb.Linear(3, 4), fb.Tanh(),
        fb.VectorActivation(moments, moments_jacobian, n_out=2),  # 4 -> 2
        fb.Linear(2, 5), fb.Softmax(),
        dtype=dtype, seed=seed)


def every_kind_input(T=6, seed=1):
    """Input rows for ``build_every_kind_net``, one of them all zeros."""
    X = np.random.default_rng(seed).normal(size=(T, 7))
    X[min(2, T - 1)] = 0.0
    return X


@pytest.fixture
def every_kind_net():
    return build_every_kind_net


def rrelu_slopes(net, ctxs=None):
    """{id(node): slopes} for every RReLU of ``net`` that drew slopes in its last forward."""
    ctxs = net._ctx if ctxs is None else ctxs
    out = {}
    for node, ctx in zip(net.nodes, ctxs):
        name = type(node).__name__
        if name == "RReLU" and len(ctx) == 3:
            out[id(node)] = ctx[2]
        elif name == "Product":
            out.update(rrelu_slopes(node.a, ctx[0]))
            out.update(rrelu_slopes(node.b, ctx[1]))
        elif name == "Sequential":
            out.update(rrelu_slopes(node, ctx))
    return out


@contextlib.contextmanager
def time_limit(seconds):
    """Fail (rather than hang) when the body runs longer than ``seconds``."""
    def alarm(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
