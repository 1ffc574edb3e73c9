"""Plain NumPy references for fastbp, written loop by loop as in the seed (lecture 5).

Nothing here calls fastbp: every function takes arrays and computes the seed's equations one
unit at a time, in float64, with exactly rounded sums (``math.fsum``), so any difference from a
kernel is the kernel's rounding. ``describe`` only *reads* a fastbp network's parameters and
configuration to turn it into the layer descriptions that ``net_forward``/``net_backward`` run.

Notation (the seed's): layer input y (y^(k-1)), pre-activation z, output y^(k); W[j, i] is the
seed's w_ij (input unit i to output unit j); the backward pass carries dDiv/dz, dDiv/dy.

The second half holds the comparison helpers and tolerances that the tests share.
"""

import math

import numpy as np

# -- tolerances (module constants; see ``assert_close``) ---------------------------------------
#: float64 kernel vs the exactly rounded float64 reference: relative part, and an absolute part
#: that multiplies the magnitude of the summed terms (sum of |term|) where cancellation makes a
#: relative error meaningless. Bounds of the form n * 2^-53 * sum|term| stay far below both.
RTOL64 = 1e-12
ATOL64 = 1e-12
#: float32 kernel vs the float64 reference evaluated on the same (float32-rounded) inputs.
RTOL32 = 2e-5
ATOL32 = 2e-5
#: a whole float32 network vs the float64 reference: rounding compounds over the layers.
NET_RTOL32 = 2e-4
NET_ATOL32 = 2e-4
#: central finite differences (float64): step and the largest elementwise relative error
#: (UMAP's test suite uses the same pair).
FD_EPS = 1e-6
FD_TOL = 1e-5
#: relative errors are taken against max(|a|, |n|, FD_FLOOR * max|gradient of the array|).
FD_FLOOR = 1e-3


# ==============================================================================================
# Affine layer: z_j = sum_i w_ij y_i + b_j  (b_j is the seed's w_0j on the constant y_0 = 1)
# ==============================================================================================
def linear_forward(y, W, b=None):
    """z[t, j] = sum_{i=0}^{D} w_ij y_i with w_0j = b_j and y_0 = 1, for every row t."""
    T, D_in = y.shape
    D_out = W.shape[0]
    z = np.zeros((T, D_out))
    for t in range(T):
        for j in range(D_out):
            terms = [0.0 if b is None else float(b[j])]  # w_0j y_0, y_0 = 1
            for i in range(D_in):
                terms.append(float(W[j, i]) * float(y[t, i]))
            z[t, j] = math.fsum(terms)
    return z


def linear_backward(dz, y, W):
    """The seed's backward step through z = W y + b, summed over the rows of the batch:

    dDiv/dy_i = sum_j w_ij dDiv/dz_j,  dDiv/dw_ij = y_i dDiv/dz_j,  dDiv/db_j = dDiv/dz_j.
    Returns (dy, dW, db).
    """
    T, D_in = y.shape
    D_out = W.shape[0]
    dy = np.zeros((T, D_in))
    for t in range(T):
        for i in range(D_in):
            dy[t, i] = math.fsum(float(W[j, i]) * float(dz[t, j]) for j in range(D_out))
    dW = np.zeros((D_out, D_in))
    db = np.zeros(D_out)
    for j in range(D_out):
        for i in range(D_in):
            dW[j, i] = math.fsum(float(y[t, i]) * float(dz[t, j]) for t in range(T))
        db[j] = math.fsum(float(dz[t, j]) for t in range(T))
    return dy, dW, db


# ==============================================================================================
# Scalar activations y_i = f(z_i), dDiv/dz_i = f'(z_i) dDiv/dy_i
# ==============================================================================================
def _sigmoid(z):
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def _softplus(z):
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _normal_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


SCALAR = {
    # name: (f(z, p), f'(z, p)); p is the activation's one parameter
    "identity": (lambda z, p: z, lambda z, p: 1.0),
    "sigmoid": (lambda z, p: _sigmoid(z), lambda z, p: _sigmoid(z) * (1 - _sigmoid(z))),
    "tanh": (lambda z, p: math.tanh(z), lambda z, p: 1 - math.tanh(z) ** 2),
    # the seed's subgradient: f'(z) = 1 for z >= 0, unless another value at 0 is chosen
    "relu": (lambda z, p: max(z, 0.0),
             lambda z, p: 0.0 if z < 0 else (p if z == 0 else 1.0)),
    "leaky_relu": (lambda z, p: z if z >= 0 else p * z, lambda z, p: 1.0 if z >= 0 else p),
    "softplus": (lambda z, p: _softplus(z), lambda z, p: _sigmoid(z)),
    "elu": (lambda z, p: z if z >= 0 else p * math.expm1(z),
            lambda z, p: 1.0 if z >= 0 else p * math.exp(z)),
    "gelu": (lambda z, p: z * _normal_cdf(z),
             lambda z, p: _normal_cdf(z) + z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)),
    "exp": (lambda z, p: math.exp(z), lambda z, p: math.exp(z)),
}


def scalar_forward(name, z, p=0.0):
    """y_i = f(z_i), element by element."""
    f = SCALAR[name][0]
    y = np.zeros(z.shape)
    for idx in np.ndindex(z.shape):
        y[idx] = f(float(z[idx]), p)
    return y


def scalar_derivative(name, z, p=0.0):
    """f'(z_i), element by element (the diagonal of the Jacobian)."""
    df = SCALAR[name][1]
    out = np.zeros(z.shape)
    for idx in np.ndindex(z.shape):
        out[idx] = df(float(z[idx]), p)
    return out


def scalar_backward(name, z, dy, p=0.0):
    """dDiv/dz_i = f'(z_i) dDiv/dy_i."""
    return scalar_derivative(name, z, p) * dy


def rrelu_forward(z, a):
    """Randomized leaky ReLU with given per-element slopes a: y = z (z >= 0), a z (z < 0)."""
    y = np.zeros(z.shape)
    for idx in np.ndindex(z.shape):
        y[idx] = z[idx] if z[idx] >= 0 else a[idx] * z[idx]
    return y


def rrelu_backward(z, a, dy):
    dz = np.zeros(z.shape)
    for idx in np.ndindex(z.shape):
        dz[idx] = dy[idx] * (1.0 if z[idx] >= 0 else a[idx])
    return dz


# ==============================================================================================
# Vector activations: y = f(z) per row; dDiv/dz_i = sum_j dDiv/dy_j dy_j/dz_i (explicit Jacobian)
# ==============================================================================================
def softmax_row(z):
    """y_i = exp(z_i) / sum_j exp(z_j) (the max is subtracted first: the same value, no overflow)."""
    m = max(float(v) for v in z)
    e = [math.exp(float(v) - m) for v in z]
    s = math.fsum(e)
    return np.array([v / s for v in e])


def softmax_forward(z):
    return np.array([softmax_row(row) for row in z]).reshape(z.shape)


def softmax_jacobian(z):
    """The seed's J[j, i] = dy_j/dz_i = y_j (delta_ij - y_i) for one row z."""
    y = softmax_row(z)
    D = len(y)
    J = np.zeros((D, D))
    for j in range(D):
        for i in range(D):
            J[j, i] = y[j] * ((1.0 if i == j else 0.0) - y[i])
    return J


def vjp(J, dy):
    """dDiv/dz_i = sum_j dDiv/dy_j J[j, i], for one row (J of shape (M, D), dy of shape (M,))."""
    M, D = J.shape
    return np.array([math.fsum(float(dy[j]) * float(J[j, i]) for j in range(M))
                     for i in range(D)])


def vector_backward(jacobian, z, dy):
    """Row by row: build the explicit Jacobian J_y(z[t]) and multiply, dz[t] = dy[t] J."""
    return np.array([vjp(jacobian(z[t]), dy[t]) for t in range(z.shape[0])]).reshape(z.shape)


def softmax_backward(z, dy):
    return vector_backward(softmax_jacobian, z, dy)


# ==============================================================================================
# Multiplicative nodes (the seed's special case 2)
# ==============================================================================================
def pair_product_forward(z):
    """y_i = z_{2i-1} z_{2i} (counted from 1; from 0: z[2i] z[2i+1])."""
    T, D = z.shape
    y = np.zeros((T, D // 2))
    for t in range(T):
        for i in range(D // 2):
            y[t, i] = z[t, 2 * i] * z[t, 2 * i + 1]
    return y


def pair_product_backward(z, dy):
    """dDiv/dz_{2i-1} = z_{2i} dDiv/dy_i and dDiv/dz_{2i} = z_{2i-1} dDiv/dy_i."""
    dz = np.zeros(z.shape)
    for t in range(z.shape[0]):
        for i in range(dy.shape[1]):
            dz[t, 2 * i] = z[t, 2 * i + 1] * dy[t, i]
            dz[t, 2 * i + 1] = z[t, 2 * i] * dy[t, i]
    return dz


def power_product_forward(z, alpha):
    """y_i = prod_l z_l ** alpha_li."""
    T, D = z.shape
    M = alpha.shape[1]
    y = np.zeros((T, M))
    for t in range(T):
        for i in range(M):
            p = 1.0
            for l in range(D):
                p *= float(z[t, l]) ** float(alpha[l, i])
            y[t, i] = p
    return y


def power_product_jacobian_entry(z, alpha, i, j):
    """dy_i/dz_j = alpha_ji z_j^(alpha_ji - 1) prod_{l != j} z_l^alpha_li (the seed's formula).

    With alpha_ji = 0 the factor z_j^0 = 1 does not depend on z_j: the entry is 0 (the formula
    would give 0 * z_j^-1, a NaN at z_j = 0)."""
    a = float(alpha[j, i])
    if a == 0:
        return 0.0
    p = a * float(z[j]) ** (a - 1)
    for l in range(len(z)):
        if l != j:
            p *= float(z[l]) ** float(alpha[l, i])
    return p


def power_product_backward(z, alpha, dy, magnitude=False):
    """dDiv/dz_j = sum_i dDiv/dy_i dy_i/dz_j; with ``magnitude`` the sum of |terms| instead."""
    T, D = z.shape
    M = alpha.shape[1]
    dz = np.zeros((T, D))
    for t in range(T):
        for j in range(D):
            terms = [float(dy[t, i]) * power_product_jacobian_entry(z[t], alpha, i, j)
                     for i in range(M)]
            dz[t, j] = math.fsum(abs(v) for v in terms) if magnitude else math.fsum(terms)
    return dz


def product_forward(a, b):
    """y = a * b elementwise (the outputs of two sub-networks)."""
    return np.asarray(a, float) * np.asarray(b, float)


# ==============================================================================================
# Max over subsets: y_j = max_{l in S_j} z_l; subgradient 1 at the first index attaining it
# ==============================================================================================
def max_forward(z, subsets):
    """Returns (y, arg): arg[t, j] is the first index of subsets[j] (in its given order) where
    z attains the maximum."""
    T = z.shape[0]
    M = len(subsets)
    y = np.zeros((T, M))
    arg = np.zeros((T, M), dtype=np.int64)
    for t in range(T):
        for j, S in enumerate(subsets):
            best = S[0]
            for l in S[1:]:
                if z[t, l] > z[t, best]:  # strictly greater: ties keep the earlier index
                    best = l
            y[t, j] = z[t, best]
            arg[t, j] = best
    return y, arg


def max_backward(arg, dy, D):
    """dDiv/dz_l = sum over outputs j whose argmax is l of dDiv/dy_j; 0 for the rest."""
    T, M = dy.shape
    dz = np.zeros((T, D))
    for t in range(T):
        for j in range(M):
            dz[t, arg[t, j]] += dy[t, j]  # in order of j, as a plain sum
    return dz


def pool_subsets(D, size, stride):
    """The windows of MaxPool1d: [j s, j s + size) for j = 0 .. (D - size) // s."""
    return [list(range(j * stride, j * stride + size)) for j in range((D - size) // stride + 1)]


# ==============================================================================================
# Divergences, per instance; the loss is their mean and its gradient carries 1/T
# ==============================================================================================
def _xlogx(x):
    return 0.0 if x == 0 else x * math.log(x)


def l2(Y, d):
    """Div = 1/2 sum_i (y_i - d_i)^2, dDiv/dy_i = y_i - d_i. Returns (div per row, dDiv/dY)."""
    T, K = Y.shape
    div = np.array([0.5 * math.fsum((float(Y[t, i]) - float(d[t, i])) ** 2 for i in range(K))
                    for t in range(T)])
    return div, np.asarray(Y, float) - np.asarray(d, float)


def kl(Y, d):
    """Div = sum_i d_i log(d_i / y_i), dDiv/dy_i = -d_i / y_i; d as probability rows."""
    T, K = Y.shape
    div = np.zeros(T)
    g = np.zeros((T, K))
    for t in range(T):
        terms = []
        for i in range(K):
            if d[t, i] != 0:
                terms.append(_xlogx(float(d[t, i])) - float(d[t, i]) * math.log(float(Y[t, i])))
                g[t, i] = -float(d[t, i]) / float(Y[t, i])
        div[t] = math.fsum(terms)
    return div, g


def one_hot(labels, K):
    d = np.zeros((len(labels), K))
    for t, c in enumerate(labels):
        d[t, c] = 1.0
    return d


def binary_kl(Y, d):
    """Div = sum_k d log(d / y) + (1 - d) log((1 - d) / (1 - y)), dDiv/dy = (y - d) / (y (1 - y))."""
    T, K = Y.shape
    div = np.zeros(T)
    g = np.zeros((T, K))
    for t in range(T):
        terms = []
        for k in range(K):
            y, dd = float(Y[t, k]), float(d[t, k])
            terms.append(_xlogx(dd) - dd * math.log(y) + _xlogx(1 - dd) - (1 - dd) * math.log(1 - y))
            g[t, k] = -dd / y + (1 - dd) / (1 - y)
        div[t] = math.fsum(terms)
    return div, g


def logsumexp(z):
    m = max(float(v) for v in z)
    return m + math.log(math.fsum(math.exp(float(v) - m) for v in z))


def softmax_kl_from_logits(z, d):
    """KL(d || softmax(z)) with log y_i = z_i - logsumexp(z); dDiv/dz = y - d."""
    T, K = z.shape
    div = np.zeros(T)
    for t in range(T):
        lse = logsumexp(z[t])
        div[t] = math.fsum(_xlogx(float(d[t, i])) - float(d[t, i]) * (float(z[t, i]) - lse)
                           for i in range(K) if d[t, i] != 0)
    return div, softmax_forward(z) - d


def sigmoid_binary_kl_from_logits(z, d):
    """Binary KL of sigmoid(z) with log s(z) = -softplus(-z), log(1 - s(z)) = -softplus(z)."""
    T, K = z.shape
    div = np.zeros(T)
    for t in range(T):
        div[t] = math.fsum(_xlogx(float(d[t, k])) + _xlogx(1 - float(d[t, k]))
                           + float(d[t, k]) * _softplus(-float(z[t, k]))
                           + (1 - float(d[t, k])) * _softplus(float(z[t, k]))
                           for k in range(K))
    return div, scalar_forward("sigmoid", z) - d


def poisson(Y, d):
    """Half the Poisson deviance, Div = sum_k d log(d / y) - d + y (0 log 0 = 0);
    dDiv/dy = 1 - d / y."""
    T, K = Y.shape
    div = np.array([math.fsum(_xlogx(float(d[t, k])) - float(d[t, k]) * math.log(float(Y[t, k]))
                              - float(d[t, k]) + float(Y[t, k]) for k in range(K))
                    for t in range(T)])
    return div, 1 - np.asarray(d, float) / np.asarray(Y, float)


def exp_poisson_from_logits(z, d):
    """Half the Poisson deviance of y = exp(z) with log y = z; dDiv/dz = y - d."""
    T, K = z.shape
    div = np.array([math.fsum(_xlogx(float(d[t, k])) - float(d[t, k]) * float(z[t, k])
                              - float(d[t, k]) + math.exp(float(z[t, k])) for k in range(K))
                    for t in range(T)])
    return div, np.exp(np.asarray(z, float)) - d


def weighted_loss(div, g, w):
    """The weighted mean sum_t w_t div_t / sum_t w_t and its gradient rows w_t g_t / sum w,
    from per-row divergences ``div`` and their gradients ``g`` (unscaled)."""
    w = np.asarray(w, float)
    W = math.fsum(w)
    return math.fsum(w * div) / W, g * (w / W)[:, None]


# ==============================================================================================
# A whole network over a list of layer descriptions
# ==============================================================================================
# ("linear", W, b)            z = W y + b (b None: no bias)
# ("scalar", name, p)         y = f(z) elementwise
# ("rrelu", a)                leaky ReLU with the given per-element slopes a (T, D)
# ("softmax",)                softmax per row
# ("vector", f, jacobian[, M]) a user's vector activation, per row (M outputs)
# ("pair",)                   y_i = z_{2i-1} z_{2i}
# ("power", alpha)            y_i = prod_l z_l ** alpha_li
# ("max", subsets)            y_j = max over subsets[j]
# ("product", layers_a, layers_b)   y = net_a(x) * net_b(x)

def net_forward(layers, X):
    """The seed's forward pass. Returns (Y, cache): cache[k] holds what layer k's backward needs."""
    y = np.asarray(X, dtype=np.float64)
    cache = []
    for layer in layers:
        kind = layer[0]
        if kind == "linear":
            out, keep = linear_forward(y, layer[1], layer[2]), y
        elif kind == "scalar":
            out, keep = scalar_forward(layer[1], y, layer[2]), y
        elif kind == "rrelu":
            out, keep = rrelu_forward(y, layer[1]), y
        elif kind == "softmax":
            out, keep = softmax_forward(y), y
        elif kind == "vector":
            out, keep = np.array([np.asarray(layer[1](row.copy()), float) for row in y]), y
        elif kind == "pair":
            out, keep = pair_product_forward(y), y
        elif kind == "power":
            out, keep = power_product_forward(y, layer[1]), y
        elif kind == "max":
            out, arg = max_forward(y, layer[1])
            keep = (arg, y.shape[1])
        elif kind == "product":
            ya, ca = net_forward(layer[1], y)
            yb, cb = net_forward(layer[2], y)
            out, keep = product_forward(ya, yb), (ya, yb, ca, cb)
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
        cache.append(keep)
        y = out
    return y, cache


def net_backward(layers, cache, dY):
    """The seed's backward pass from dDiv/dY. Returns (dDiv/dX, grads) with grads in layer
    order, W then b for each linear layer (b left out where the layer has none)."""
    dy = np.asarray(dY, dtype=np.float64)
    grads_rev = []
    for layer, keep in zip(reversed(layers), reversed(cache)):
        kind = layer[0]
        if kind == "linear":
            dy, dW, db = linear_backward(dy, keep, layer[1])
            grads_rev.append([dW] if layer[2] is None else [dW, db])
        elif kind == "scalar":
            dy = scalar_backward(layer[1], keep, dy, layer[2])
        elif kind == "rrelu":
            dy = rrelu_backward(keep, layer[1], dy)
        elif kind == "softmax":
            dy = softmax_backward(keep, dy)
        elif kind == "vector":
            dy = vector_backward(layer[2], keep, dy)
        elif kind == "pair":
            dy = pair_product_backward(keep, dy)
        elif kind == "power":
            dy = power_product_backward(keep, layer[1], dy)
        elif kind == "max":
            dy = max_backward(keep[0], dy, keep[1])
        elif kind == "product":
            ya, yb, ca, cb = keep
            dxa, ga = net_backward(layer[1], ca, dy * yb)  # d(a b)/da = b
            dxb, gb = net_backward(layer[2], cb, dy * ya)  # d(a b)/db = a
            dy = dxa + dxb  # x influences y through both branches: the sum over paths
            grads_rev.append(ga + gb)
    grads = [g for part in reversed(grads_rev) for g in part]
    return dy, grads


def net_magnitude(layers, X):
    """A scale for comparing a whole network's outputs: the forward pass of |W|, |b| on |X|
    through the same layers (so cancellations inside sums do not make the scale small)."""
    mag = []
    for layer in layers:
        if layer[0] == "linear":
            b = None if layer[2] is None else np.abs(layer[2])
            mag.append(("linear", np.abs(layer[1]), b))
        else:
            mag.append(layer)
    return np.abs(net_forward(mag, np.abs(X))[0])


# -- reading a fastbp network into layer descriptions (reads attributes only) -----------------
_SCALAR_NAMES = {"Identity": "identity", "Sigmoid": "sigmoid", "Tanh": "tanh",
                 "Softplus": "softplus", "GELU": "gelu", "Exp": "exp"}


def describe(net, rrelu_slopes=None):
    """Layer descriptions of a fastbp Sequential, from its parameters and configuration.

    ``rrelu_slopes`` maps a node's id to the slopes it drew in training; RReLU nodes not in it
    use their evaluation slope (lower + upper) / 2.
    """
    rrelu_slopes = rrelu_slopes or {}
    layers = []
    for node in net.nodes:
        name = type(node).__name__
        if name == "Linear":
            b = np.array(node.b, np.float64) if node.bias else None
            layers.append(("linear", np.array(node.W, np.float64), b))
        elif name in _SCALAR_NAMES:
            layers.append(("scalar", _SCALAR_NAMES[name], 0.0))
        elif name == "ReLU":
            layers.append(("scalar", "relu", node.grad_at_zero))
        elif name == "LeakyReLU":
            layers.append(("scalar", "leaky_relu", node.slope))
        elif name == "ELU":
            layers.append(("scalar", "elu", node.alpha))
        elif name == "RReLU":
            if id(node) in rrelu_slopes:
                layers.append(("rrelu", np.asarray(rrelu_slopes[id(node)], np.float64)))
            else:
                layers.append(("scalar", "leaky_relu", (node.lower + node.upper) / 2))
        elif name == "Softmax":
            layers.append(("softmax",))
        elif name == "VectorActivation":
            layers.append(("vector", node.f, node.jacobian, node.n_out))
        elif name == "PairProduct":
            layers.append(("pair",))
        elif name == "PowerProduct":
            layers.append(("power", np.array(node.alpha, np.float64)))
        elif name == "MaxPool1d":
            layers.append(("maxpool", node.size, node.stride))
        elif name == "MaxOver":
            layers.append(("max", [list(map(int, s)) for s in node.subsets]))
        elif name == "Product":
            layers.append(("product", describe(node.a, rrelu_slopes),
                           describe(node.b, rrelu_slopes)))
        elif name == "Sequential":
            layers.extend(describe(node, rrelu_slopes))
        else:
            raise TypeError(f"no reference for {name}")
    return layers


def reference_layers(net, rrelu_slopes=None):
    """``describe(net)`` with every width resolved for the network's input width."""
    return resolve_widths(describe(net, rrelu_slopes), net.n_in)


def resolve_widths(layers, D):
    """Replace ("maxpool", size, stride) by ("max", windows) once the input width D is known."""
    out = []
    for layer in layers:
        if layer[0] == "maxpool":
            layer = ("max", pool_subsets(D, layer[1], layer[2]))
        elif layer[0] == "product":
            layer = ("product", resolve_widths(layer[1], D), resolve_widths(layer[2], D))
        out.append(layer)
        D = _width_after(layer, D)
    return out


def _width_after(layer, D):
    kind = layer[0]
    if kind == "linear":
        return layer[1].shape[0]
    if kind == "pair":
        return D // 2
    if kind == "power":
        return layer[1].shape[1]
    if kind == "max":
        return len(layer[1])
    if kind == "product":
        w = D
        for sub in layer[1]:
            w = _width_after(sub, w)
        return w
    if kind == "vector" and len(layer) > 3 and layer[3] is not None:
        return layer[3]
    return D


# ==============================================================================================
# Comparison helpers shared by the tests
# ==============================================================================================
def tolerances(dtype, network=False):
    """(rtol, atol) for results computed in ``dtype`` against the float64 reference."""
    if np.dtype(dtype) == np.float64:
        return RTOL64, ATOL64
    return (NET_RTOL32, NET_ATOL32) if network else (RTOL32, ATOL32)


def assert_close(actual, expected, dtype=np.float64, scale=None, network=False, what=""):
    """|actual - expected| <= rtol |expected| + atol scale, elementwise.

    ``scale`` is the magnitude of the terms summed into each element (default |expected|, i.e.
    a purely relative test); exact zeros in ``expected`` with a zero scale must be exact.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    rtol, atol = tolerances(dtype, network)
    scale = np.abs(expected) if scale is None else np.asarray(scale, dtype=np.float64)
    bound = rtol * np.abs(expected) + atol * scale
    err = np.abs(actual - expected)
    bad = ~(err <= bound)
    if bad.any():
        k = np.argwhere(bad)[0]
        k = tuple(int(v) for v in k)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ; first at {k}: "
            f"actual {actual[k]!r}, expected {expected[k]!r}, error {err[k]:.3e} > bound "
            f"{bound[k]:.3e} (rtol {rtol:g}, atol {atol:g} x scale {np.broadcast_to(scale, err.shape)[k]:.3e})")


def fd_gradient(f, x, eps=FD_EPS):
    """Central differences (f(x + eps e_i) - f(x - eps e_i)) / 2 eps for every element of the
    float64 array ``x`` (perturbed in place and restored)."""
    flat = x.reshape(-1)
    g = np.zeros(flat.size)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g.reshape(x.shape)


def max_rel_error(analytic, numeric):
    """The largest elementwise |a - n| / max(|a|, |n|, FD_FLOOR max|a|, 1e-12)."""
    a = np.asarray(analytic, np.float64).reshape(-1)
    n = np.asarray(numeric, np.float64).reshape(-1)
    if a.size == 0:
        return 0.0
    floor = max(FD_FLOOR * max(np.abs(a).max(), np.abs(n).max()), 1e-12)
    return float((np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)).max())
