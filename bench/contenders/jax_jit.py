"""JAX: one jitted SGD step (forward, grad, update), called from a Python loop over batches."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from . import _common as c


def logits(params, X, act):
    for W, b in params[:-1]:
        X = act(X @ W.T + b)
    W, b = params[-1]
    return X @ W.T + b


def kl(params, X, d, act):
    """Softmax + KL (cross-entropy) with class labels, through log-softmax."""
    logp = jax.nn.log_softmax(logits(params, X, act))
    return -jnp.mean(jnp.take_along_axis(logp, d[:, None], axis=1))


def binary_kl(params, X, d, act):
    """Sigmoid + binary KL from logits: softplus(z) - d z."""
    z = logits(params, X, act)
    return jnp.mean(jax.nn.softplus(z) - d * z)


def gated_kl(params, X, d, act=None):
    (W1, b1), (W2, b2), (W3, b3) = params
    h = jax.nn.relu(X @ W1.T + b1) * jax.nn.sigmoid(X @ W2.T + b2)
    return kl([(W3, b3)], h, d, None)


def sgd_step(loss, act, lr):
    """The uncompiled step: returns (new params, loss on the batch)."""

    def step(params, X, d):
        value, grads = jax.value_and_grad(loss)(params, X, d, act)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), value

    return step


def to_jax(params):
    return [(jnp.asarray(W), jnp.asarray(b)) for W, b in params]


def timed_train(params, X, d, batch, epochs, step):
    """Python loop over batches; the jitted step slices its batch out of the whole array."""

    @jax.jit
    def batch_step(params, X, d, i):
        Xb = jax.lax.dynamic_slice_in_dim(X, i * batch, batch)
        db = jax.lax.dynamic_slice_in_dim(d, i * batch, batch)
        return step(params, Xb, db)

    params, X, d = to_jax(params), jnp.asarray(X), jnp.asarray(d)
    jax.block_until_ready(batch_step(params, X, d, 0))  # warm-up: compiles
    t = time.perf_counter()
    for _ in range(epochs):
        for i in range(len(X) // batch):
            params, value = batch_step(params, X, d, i)
    jax.block_until_ready(params)
    return time.perf_counter() - t


def gated_params():
    (W1, b1), (W3, b3) = c.init([784, 256, 10])
    ((W2, b2),) = c.init([784, 256], seed=1)
    return [(W1, b1), (W2, b2), (W3, b3)]


def w1(steps):
    jax.config.update("jax_enable_x64", True)
    X, d = c.xor_points()
    step = sgd_step(binary_kl, jax.nn.sigmoid, 1.0)
    return timed_train(c.init(c.W1_SIZES, np.float64), X, d, len(X), steps, step)


def w2(epochs):
    X, d = c.digits(32)
    return timed_train(c.init(c.W2_SIZES), X, d, 32, epochs, sgd_step(kl, jnp.tanh, 0.1))


def w3(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    return timed_train(c.init(c.W3_SIZES), X, d, batch, 1, sgd_step(kl, jax.nn.relu, 0.1))


def w4(steps, batch):
    X, d = c.random_rows(batch * steps, 1024, batch)
    return timed_train(c.init(c.W4_SIZES), X, d, batch, 1, sgd_step(kl, jax.nn.relu, 0.1))


def w5(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    return timed_train(gated_params(), X, d, batch, 1, sgd_step(gated_kl, None, 0.1))


def w6a(calls):
    X, _ = c.random_rows(calls, 784, 1)
    params = to_jax(c.init(c.W6_SIZES))
    predict = jax.jit(lambda params, x: jax.nn.softmax(logits(params, x, jax.nn.relu)))
    np.asarray(predict(params, X[:1]))  # warm-up: compiles
    t = time.perf_counter()
    for i in range(calls):
        np.asarray(predict(params, X[i : i + 1]))
    return time.perf_counter() - t


def w6b(calls):
    X, d = c.random_rows(calls, 784, 1)
    params = to_jax(c.init(c.W6_SIZES))
    step = jax.jit(sgd_step(kl, jax.nn.relu, 0.01))
    jax.block_until_ready(step(params, X[:1], d[:1]))  # warm-up: compiles
    t = time.perf_counter()
    for i in range(calls):
        params, value = step(params, X[i : i + 1], d[i : i + 1])
        float(value)  # the caller gets the loss, as from fastbp's train_step
    return time.perf_counter() - t
