"""Plain NumPy references for training: the seed's full-batch algorithm written instance by
instance, and the optimizers' update rules written out."""

import math

import numpy as np


def seed_forward(Ws, bs, fs, x):
    """One instance: y_0 = x; z_k = W_k y_{k-1} + b_k; y_k = f_k(z_k). Returns all ys and zs."""
    ys, zs = [x], []
    for W, b, f in zip(Ws, bs, fs):
        z = W @ ys[-1] + b
        zs.append(z)
        ys.append(f[0](z))
    return ys, zs


def seed_gradient_descent(Ws, bs, fs, X, d, div_grad, eta, steps):
    """The seed's 'Training by BackProp': for each step, accumulate dDiv/dW over all T instances
    (forward and backward pass per instance), then W <- W - eta / T * dLoss/dW."""
    Ws, bs = [W.copy() for W in Ws], [b.copy() for b in bs]
    for _ in range(steps):
        gW = [np.zeros_like(W) for W in Ws]
        gb = [np.zeros_like(b) for b in bs]
        for t in range(X.shape[0]):
            ys, zs = seed_forward(Ws, bs, fs, X[t])
            dy = div_grad(ys[-1], d[t])
            for k in range(len(Ws) - 1, -1, -1):
                dz = fs[k][1](zs[k], ys[k + 1], dy)
                gW[k] += np.outer(dz, ys[k])
                gb[k] += dz
                dy = Ws[k].T @ dz
        T = X.shape[0]
        for k in range(len(Ws)):
            Ws[k] -= eta / T * gW[k]
            bs[k] -= eta / T * gb[k]
    return Ws, bs


def sgd(p, g, state, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """PyTorch's SGD, written out."""
    g = g + weight_decay * p
    if momentum:
        v = state.get("v", np.zeros_like(p))
        v = momentum * v + g
        state["v"] = v
        g = g + momentum * v if nesterov else v
    return p - lr * g


def adam(p, g, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """AdamW, written out."""
    t = state.get("t", 0) + 1
    m = beta1 * state.get("m", np.zeros_like(p)) + (1 - beta1) * g
    v = beta2 * state.get("v", np.zeros_like(p)) + (1 - beta2) * g * g
    state.update(t=t, m=m, v=v)
    p = p - lr * weight_decay * p
    return p - lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)


def rmsprop(p, g, state, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False):
    """PyTorch's RMSprop, written out."""
    g = g + weight_decay * p
    v = alpha * state.get("v", np.zeros_like(p)) + (1 - alpha) * g * g
    state["v"] = v
    avg = v
    if centered:
        a = alpha * state.get("a", np.zeros_like(p)) + (1 - alpha) * g
        state["a"] = a
        avg = v - a * a
    step = g / (np.sqrt(avg) + eps)
    if momentum:
        b = momentum * state.get("b", np.zeros_like(p)) + step
        state["b"] = b
        step = b
    return p - lr * step


def clip_by_norm(g, max_norm):
    """PyTorch's clip_grad_norm_ on one flat gradient: g * min(1, max_norm / (||g|| + 1e-6))."""
    norm = math.sqrt(math.fsum(float(x) * float(x) for x in g))
    return g * min(1.0, max_norm / (norm + 1e-6)), norm
