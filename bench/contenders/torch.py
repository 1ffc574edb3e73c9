"""PyTorch eager on 2 threads: nn.Linear layers, logits + the fused, stable loss, torch.optim.SGD."""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _common as c

torch.set_num_threads(2)


def mlp(sizes, act, dtype=np.float32):
    """Linear layers with act between them, ending in logits; weights from _common.init."""
    layers = []
    for W, b in c.init(sizes, dtype):
        layers += [linear(W, b), act()]
    return nn.Sequential(*layers[:-1])


def linear(W, b):
    lin = nn.Linear(W.shape[1], W.shape[0], dtype=torch.from_numpy(W).dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
    return lin


def train(model, X, d, batch, epochs, lr, loss=F.cross_entropy):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, len(X), batch):
            opt.zero_grad()
            value = loss(model(X[i : i + batch]), d[i : i + batch])
            value.backward()
            opt.step()
    return value


def timed_train(model, X, d, batch, epochs, lr, loss=F.cross_entropy):
    X, d = torch.from_numpy(X), torch.from_numpy(d)
    train(model, X[:batch], d[:batch], batch, 1, lr, loss)  # warm-up
    t = time.perf_counter()
    train(model, X, d, batch, epochs, lr, loss)
    return time.perf_counter() - t


def w1(steps):
    X, d = c.xor_points()
    model = mlp(c.W1_SIZES, nn.Sigmoid, np.float64)
    return timed_train(model, X, d, len(X), steps, 1.0, F.binary_cross_entropy_with_logits)


def w2(epochs):
    X, d = c.digits(32)
    return timed_train(mlp(c.W2_SIZES, nn.Tanh), X, d, 32, epochs, 0.1)


def w3(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    return timed_train(mlp(c.W3_SIZES, nn.ReLU), X, d, batch, 1, 0.1)


def w4(steps, batch):
    X, d = c.random_rows(batch * steps, 1024, batch)
    return timed_train(mlp(c.W4_SIZES, nn.ReLU), X, d, batch, 1, 0.1)


class Gated(nn.Module):
    """h = relu(W1 x + b1) * sigmoid(W2 x + b2), logits = W3 h + b3."""

    def __init__(self):
        super().__init__()
        (W1, b1), (W3, b3) = c.init([784, 256, 10])
        ((W2, b2),) = c.init([784, 256], seed=1)
        self.value, self.gate, self.out = linear(W1, b1), linear(W2, b2), linear(W3, b3)

    def forward(self, x):
        return self.out(torch.relu(self.value(x)) * torch.sigmoid(self.gate(x)))


def w5(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    return timed_train(Gated(), X, d, batch, 1, 0.1)


def w6a(calls):
    X, _ = c.random_rows(calls, 784, 1)
    model = mlp(c.W6_SIZES, nn.ReLU).eval()
    with torch.inference_mode():
        model(torch.from_numpy(X[:1])).softmax(1).numpy()  # warm-up
        t = time.perf_counter()
        for i in range(calls):
            model(torch.from_numpy(X[i : i + 1])).softmax(1).numpy()
        return time.perf_counter() - t


def w6b(calls):
    X, d = c.random_rows(calls, 784, 1)
    X, d = torch.from_numpy(X), torch.from_numpy(d)
    model = mlp(c.W6_SIZES, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_step(x, y):
        opt.zero_grad()
        value = F.cross_entropy(model(x), y)
        value.backward()
        opt.step()
        return value.item()

    train_step(X[:1], d[:1])  # warm-up
    t = time.perf_counter()
    for i in range(calls):
        train_step(X[i : i + 1], d[i : i + 1])
    return time.perf_counter() - t
