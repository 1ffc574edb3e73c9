"""JAX: a whole epoch (for W1: all steps) compiled as one lax.scan over the batches."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from . import _common as c
from .jax_jit import binary_kl, gated_kl, gated_params, kl, sgd_step, to_jax


def timed_train(params, X, d, batch, epochs, step):
    """X, d reshaped to (batches, batch, ...) before timing; the Python loop runs over epochs."""

    @jax.jit
    def epoch(params, Xs, ds):
        return jax.lax.scan(lambda p, xd: step(p, *xd), params, (Xs, ds))

    nb = len(X) // batch
    Xs = jnp.asarray(X).reshape(nb, batch, *X.shape[1:])
    ds = jnp.asarray(d).reshape(nb, batch, *d.shape[1:])
    params = to_jax(params)
    epoch = epoch.lower(params, Xs, ds).compile()
    jax.block_until_ready(epoch(params, Xs, ds))  # warm-up: one run (params are not changed)
    t = time.perf_counter()
    for _ in range(epochs):
        params, values = epoch(params, Xs, ds)
    jax.block_until_ready(params)
    return time.perf_counter() - t


def w1(steps):
    """Full batch: one scan of all the steps (an epoch here is a single step)."""
    jax.config.update("jax_enable_x64", True)
    X, d = c.xor_points()
    step = sgd_step(binary_kl, jax.nn.sigmoid, 1.0)

    @jax.jit
    def run(params, X, d):
        return jax.lax.scan(lambda p, _: step(p, X, d), params, None, length=steps)

    params = to_jax(c.init(c.W1_SIZES, np.float64))
    X, d = jnp.asarray(X), jnp.asarray(d)
    run = run.lower(params, X, d).compile()
    jax.block_until_ready(run(params, X, d))  # warm-up: one run (params are not changed)
    t = time.perf_counter()
    params, values = run(params, X, d)
    jax.block_until_ready(params)
    return time.perf_counter() - t


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
