"""Data and starting weights shared by the contenders.

Every run draws from ``np.random.default_rng(0)``. Row counts are cut to a whole number of
minibatches, so that every contender runs exactly the same steps.
"""

import numpy as np


def xor_points(n=256):
    """W1: n points in [-1, 1]^2, label 1 where the two coordinates differ in sign; d is (n, 1)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1.0, 1.0, size=(n, 2))
    d = ((X[:, 0] > 0) != (X[:, 1] > 0)).astype(np.float64)
    return X, d[:, None]


def digits(batch):
    """W2: scikit-learn's digits / 16 as float32, int64 labels."""
    from sklearn.datasets import load_digits

    X, d = load_digits(return_X_y=True)
    return whole_batches((X / 16).astype(np.float32), d.astype(np.int64), batch)


def random_rows(n, n_in, batch, classes=10):
    """W3-W6: standard normal float32 rows with random labels 0..classes-1."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, n_in), dtype=np.float32)
    d = rng.integers(0, classes, n)
    return whole_batches(X, d, batch)


def whole_batches(X, d, batch):
    n = len(X) - len(X) % batch
    return X[:n], d[:n]


def one_hot(d, classes=10, dtype=np.float32):
    D = np.zeros((len(d), classes), dtype)
    D[np.arange(len(d)), d] = 1
    return D


def init(sizes, dtype=np.float32, seed=0):
    """Glorot-uniform W of shape (out, in) and zero b for each layer: a list of [W, b]."""
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        a = np.sqrt(6.0 / (n_in + n_out))
        params.append([rng.uniform(-a, a, (n_out, n_in)).astype(dtype), np.zeros(n_out, dtype)])
    return params


def w4_flops(sizes, batch, steps):
    """The standard count for dense training: 6 * weights * rows * steps."""
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 6 * weights * batch * steps


# Shapes of the workloads, shared so that every contender builds the same networks.
W1_SIZES = [2, 16, 16, 1]
W2_SIZES = [64, 64, 10]
W3_SIZES = [784, 256, 128, 10]
W4_SIZES = [1024, 4096, 4096, 10]
W6_SIZES = [784, 256, 10]
