"""fastbp through its public API only (DESIGN.md): Sequential, fit, train_step, predict."""

import os
import time

import numpy as np

import fastbp as fb

from . import _common as c

fb.set_num_threads(min(2, os.cpu_count() or 1))

# The steady state: parallel kernels compile at the warm-up, not in a background helper while
# the timed runs start on their serial twins (FASTBP_COMPILE_PARALLEL, README).
os.environ.setdefault("FASTBP_COMPILE_PARALLEL", "now")


def mlp(sizes, act, out, dtype=np.float32):
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [fb.Linear(n_in, n_out), act()]
    return fb.Sequential(*layers[:-1], out(), dtype=dtype, seed=0)


def fit(net, X, d, loss, lr, batch, epochs):
    return fb.fit(net, X, d, loss=loss, optimizer=fb.SGD(lr=lr), batch_size=batch,
                  epochs=epochs, tol=None, shuffle=False, progress=False)


def timed_fit(net, X, d, loss, lr, batch, epochs):
    fit(net, X[: 2 * (batch or 32)], d[: 2 * (batch or 32)], loss, lr, batch, 1)  # warm-up
    t = time.perf_counter()
    fit(net, X, d, loss, lr, batch, epochs)
    return time.perf_counter() - t


def w1(steps):
    X, d = c.xor_points()  # d: (256, 1) float64 in {0, 1}
    net = mlp(c.W1_SIZES, fb.Sigmoid, fb.Sigmoid, np.float64)
    return timed_fit(net, X, d, fb.BinaryKL(), 1.0, None, steps)


def w2(epochs):
    X, d = c.digits(32)
    return timed_fit(mlp(c.W2_SIZES, fb.Tanh, fb.Softmax), X, d, fb.KL(), 0.1, 32, epochs)


def w3(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    return timed_fit(mlp(c.W3_SIZES, fb.ReLU, fb.Softmax), X, d, fb.KL(), 0.1, batch, 1)


def w4(steps, batch):
    X, d = c.random_rows(batch * steps, 1024, batch)
    return timed_fit(mlp(c.W4_SIZES, fb.ReLU, fb.Softmax), X, d, fb.KL(), 0.1, batch, 1)


def w5(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    a = fb.Sequential(fb.Linear(784, 256), fb.ReLU())
    b = fb.Sequential(fb.Linear(784, 256), fb.Sigmoid())
    net = fb.Sequential(fb.Product(a, b), fb.Linear(256, 10), fb.Softmax(),
                        dtype=np.float32, seed=0)
    return timed_fit(net, X, d, fb.KL(), 0.1, batch, 1)


def w6a(calls):
    X, _ = c.random_rows(calls, 784, 1)
    net = mlp(c.W6_SIZES, fb.ReLU, fb.Softmax)
    net.predict(X[:1])  # warm-up: compiles
    t = time.perf_counter()
    for i in range(calls):
        net.predict(X[i : i + 1])
    return time.perf_counter() - t


def w6b(calls):
    X, d = c.random_rows(calls, 784, 1)
    net = mlp(c.W6_SIZES, fb.ReLU, fb.Softmax)
    loss, opt = fb.KL(), fb.SGD(lr=0.01)
    net.train_step(X[:1], d[:1], loss, opt)  # warm-up: compiles
    t = time.perf_counter()
    for i in range(calls):
        net.train_step(X[i : i + 1], d[i : i + 1], loss, opt)
    return time.perf_counter() - t
