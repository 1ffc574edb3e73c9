"""Textbook backprop in NumPy: the reference contender, written plainly with ``@``.

z_k = y_{k-1} W_k^T + b_k,  y_k = f(z_k);  with softmax + KL (or sigmoid + binary KL) at the
end, dz_N = (y_N - d) / T;  dW_k = dz_k^T y_{k-1},  db_k = sum_t dz_k,  dz_{k-1} = dz_k W_k * f'.
"""

import time

import numpy as np

from . import _common as c


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def relu(z):
    return np.maximum(z, 0)


# f and f' written in terms of z and y = f(z)
HIDDEN = {
    "sigmoid": (sigmoid, lambda z, y: y * (1 - y)),
    "tanh": (np.tanh, lambda z, y: 1 - y * y),
    "relu": (relu, lambda z, y: z > 0),
}


def kl(Y, D):
    return -(D * np.log(np.maximum(Y, 1e-30))).sum() / len(Y)


def binary_kl(Y, D):
    Y = np.clip(Y, 1e-15, 1 - 1e-15)
    return -(D * np.log(Y) + (1 - D) * np.log(1 - Y)).mean()


def forward(params, X, f, out):
    """Returns the lists z_1..z_N and y_0..y_N."""
    zs, ys = [], [X]
    for k, (W, b) in enumerate(params):
        z = ys[-1] @ W.T + b
        zs.append(z)
        ys.append(out(z) if k == len(params) - 1 else f(z))
    return zs, ys


def sgd_step(params, X, D, hidden, out, loss, lr):
    """One forward, backward and update on the batch X with targets D (one-hot or 0/1)."""
    f, df = HIDDEN[hidden]
    zs, ys = forward(params, X, f, out)
    dz = (ys[-1] - D) / len(X)
    for k in reversed(range(len(params))):
        W, b = params[k]
        dW = dz.T @ ys[k]
        db = dz.sum(axis=0)
        if k > 0:
            dz = (dz @ W) * df(zs[k - 1], ys[k])
        W -= lr * dW
        b -= lr * db
    return loss(ys[-1], D)


def train(params, X, D, batch, epochs, hidden, out, loss, lr):
    for _ in range(epochs):
        for i in range(0, len(X), batch):
            value = sgd_step(params, X[i : i + batch], D[i : i + batch], hidden, out, loss, lr)
    return value


def timed_train(params, X, D, batch, epochs, hidden, out=softmax, loss=kl, lr=0.1):
    train(params, X[:batch], D[:batch], batch, 1, hidden, out, loss, lr)  # warm-up
    t = time.perf_counter()
    train(params, X, D, batch, epochs, hidden, out, loss, lr)
    return time.perf_counter() - t


def w1(steps):
    X, D = c.xor_points()
    params = c.init(c.W1_SIZES, np.float64)
    return timed_train(params, X, D, len(X), steps, "sigmoid", sigmoid, binary_kl, lr=1.0)


def w2(epochs):
    X, d = c.digits(32)
    return timed_train(c.init(c.W2_SIZES), X, c.one_hot(d), 32, epochs, "tanh", lr=0.1)


def w3(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    return timed_train(c.init(c.W3_SIZES), X, c.one_hot(d), batch, 1, "relu", lr=0.1)


def w4(steps, batch):
    X, d = c.random_rows(batch * steps, 1024, batch)
    return timed_train(c.init(c.W4_SIZES), X, c.one_hot(d), batch, 1, "relu", lr=0.1)


def gated_step(params, X, D, lr):
    """h = relu(x W1^T + b1) * sigmoid(x W2^T + b2), y = softmax(h W3^T + b3)."""
    (W1, b1), (W2, b2), (W3, b3) = params
    z1 = X @ W1.T + b1
    z2 = X @ W2.T + b2
    r, s = relu(z1), sigmoid(z2)
    h = r * s
    Y = softmax(h @ W3.T + b3)
    dz3 = (Y - D) / len(X)
    dh = dz3 @ W3
    dz1 = dh * s * (z1 > 0)
    dz2 = dh * r * s * (1 - s)
    for W, b, dz, y in ((W3, b3, dz3, h), (W1, b1, dz1, X), (W2, b2, dz2, X)):
        W -= lr * (dz.T @ y)
        b -= lr * dz.sum(axis=0)
    return kl(Y, D)


def w5(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    D = c.one_hot(d)
    (value, output), (gate,) = c.init([784, 256, 10]), c.init([784, 256], seed=1)
    params = [value, gate, output]
    gated_step(params, X[:batch], D[:batch], 0.1)  # warm-up
    t = time.perf_counter()
    for i in range(0, len(X), batch):
        gated_step(params, X[i : i + batch], D[i : i + batch], 0.1)
    return time.perf_counter() - t


def w6a(calls):
    X, _ = c.random_rows(calls, 784, 1)
    params = c.init(c.W6_SIZES)
    f = HIDDEN["relu"][0]
    forward(params, X[:1], f, softmax)  # warm-up
    t = time.perf_counter()
    for i in range(calls):
        forward(params, X[i : i + 1], f, softmax)
    return time.perf_counter() - t


def w6b(calls):
    X, d = c.random_rows(calls, 784, 1)
    D = c.one_hot(d)
    params = c.init(c.W6_SIZES)
    sgd_step(params, X[:1], D[:1], "relu", softmax, kl, 0.01)  # warm-up
    t = time.perf_counter()
    for i in range(calls):
        sgd_step(params, X[i : i + 1], D[i : i + 1], "relu", softmax, kl, 0.01)
    return time.perf_counter() - t
