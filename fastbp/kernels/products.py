"""Multiplicative nodes and max over subsets of inputs."""

from numba import prange

from .._config import PARALLEL, njit, serial_twin


@njit(**PARALLEL)
def elementwise_product_forward(a, b, y):
    """y[i] = a[i] b[i] over flat arrays (gating one path by another)."""
    for i in prange(a.shape[0]):
        y[i] = a[i] * b[i]


@njit(**PARALLEL)
def elementwise_product_backward(a, b, dy, da, db):
    """da[i] = dy[i] b[i], db[i] = dy[i] a[i]: each factor's gradient is the other factor."""
    for i in prange(a.shape[0]):
        da[i] = dy[i] * b[i]
        db[i] = dy[i] * a[i]


@njit(**PARALLEL)
def pair_product_forward(z, y):
    """y[t, i] = z[t, 2i] z[t, 2i+1] (the seed's y_i = z_{2i-1} z_{2i}, counted from 0)."""
    for t in prange(z.shape[0]):
        for i in range(y.shape[1]):
            y[t, i] = z[t, 2 * i] * z[t, 2 * i + 1]


@njit(**PARALLEL)
def pair_product_backward(z, dy, dz):
    """dz[t, 2i] = dy[t, i] z[t, 2i+1] and dz[t, 2i+1] = dy[t, i] z[t, 2i]."""
    for t in prange(z.shape[0]):
        for i in range(dy.shape[1]):
            dz[t, 2 * i] = dy[t, i] * z[t, 2 * i + 1]
            dz[t, 2 * i + 1] = dy[t, i] * z[t, 2 * i]


@njit(**PARALLEL)
def power_product_forward(z, alpha, y):
    """y[t, i] = prod_l z[t, l] ** alpha[l, i]."""
    for t in prange(z.shape[0]):
        for i in range(alpha.shape[1]):
            p = 1.0
            for l in range(alpha.shape[0]):
                p *= z[t, l] ** alpha[l, i]
            y[t, i] = p


@njit(**PARALLEL)
def power_product_backward(z, alpha, dy, dz, work):
    """dz[t, j] = sum_i dy[t, i] alpha[j, i] z_j^(alpha[j, i] - 1) prod_{l != j} z_l^alpha[l, i].

    The product over l != j is a prefix product times a suffix product (``work[t]`` holds the
    suffix), never y / z_j, so a zero input gives the exact derivative instead of 0/0.
    """
    D = alpha.shape[0]
    for t in prange(z.shape[0]):
        dz[t, :] = 0
        for i in range(alpha.shape[1]):
            s = 1.0
            for l in range(D - 1, -1, -1):
                work[t, l] = s
                s *= z[t, l] ** alpha[l, i]
            pre = 1.0
            for j in range(D):
                a = alpha[j, i]
                if a != 0:
                    dz[t, j] += dy[t, i] * a * z[t, j] ** (a - 1) * pre * work[t, j]
                pre *= z[t, j] ** a


@njit(**PARALLEL)
def max_forward(z, indptr, indices, y, arg):
    """y[t, j] = max of z[t, l] over l in indices[indptr[j]:indptr[j+1]]; arg keeps the first
    index attaining it (a NaN in the subset wins, so NaN propagates)."""
    for t in prange(z.shape[0]):
        for j in range(y.shape[1]):
            best = indices[indptr[j]]
            for k in range(indptr[j] + 1, indptr[j + 1]):
                l = indices[k]
                v = z[t, l]
                if v > z[t, best] or (v != v and z[t, best] == z[t, best]):
                    best = l
            arg[t, j] = best
            y[t, j] = z[t, best]


@njit(**PARALLEL)
def max_backward(dy, arg, dz):
    """dz[t, l] = sum of dy[t, j] over the outputs j whose argmax is l (the max's subgradient)."""
    for t in prange(dy.shape[0]):
        dz[t, :] = 0
        for j in range(dy.shape[1]):
            dz[t, arg[t, j]] += dy[t, j]


# The same kernels run serially, for ops too small to split (see _config.serial_twin).
elementwise_product_forward_serial = serial_twin(elementwise_product_forward)
elementwise_product_backward_serial = serial_twin(elementwise_product_backward)
pair_product_forward_serial = serial_twin(pair_product_forward)
pair_product_backward_serial = serial_twin(pair_product_backward)
power_product_forward_serial = serial_twin(power_product_forward)
power_product_backward_serial = serial_twin(power_product_backward)
max_forward_serial = serial_twin(max_forward)
max_backward_serial = serial_twin(max_backward)
