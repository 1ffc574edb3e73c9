"""Each node class, forward and backward, against the reference and against central finite
differences (float64, eps 1e-6, max relative error < 1e-5)."""

import math

import numpy as np
import pytest

import fastbp as fb
import reference as R
from conftest import (DTYPES, moments, moments_jacobian, rrelu_slopes, scaled_by_tanh_sum,
                      scaled_by_tanh_sum_jacobian)


def _kink_free(X, gap=0.1):
    """X moved away from 0 (the kink of ReLU-like nodes) by at least ``gap``."""
    return np.where(X < 0, X - gap, X + gap)


def _distinct(rng, T, D):
    """Rows of a permutation of 0.1 * (0 .. D-1) plus small noise: every pair differs by > 0.05,
    so a finite-difference step never changes an argmax."""
    return np.stack([0.1 * rng.permutation(D) + 0.01 * rng.uniform(size=D) for _ in range(T)])


def _normal(rng, T, D):
    return rng.normal(size=(T, D))


def _positive(rng, T, D):
    return rng.uniform(0.5, 2.0, size=(T, D))


# id: (node factory, input width, input generator (rng, T, D) -> X, kinked: keep X off the kinks)
NODES = {
    "Linear": (lambda: fb.Linear(7, 17), 7, _normal, False),
    "Linear-1x1": (lambda: fb.Linear(1, 1), 1, _normal, False),
    "Linear-nobias": (lambda: fb.Linear(33, 3, bias=False), 33, _normal, False),
    "Identity": (fb.Identity, 7, _normal, False),
    "Sigmoid": (fb.Sigmoid, 7, _normal, False),
    "Tanh": (fb.Tanh, 17, _normal, False),
    "ReLU": (fb.ReLU, 7, _normal, True),
    "ReLU-0": (lambda: fb.ReLU(grad_at_zero=0.0), 3, _normal, True),
    "LeakyReLU": (lambda: fb.LeakyReLU(0.2), 7, _normal, True),
    "RReLU": (fb.RReLU, 7, _normal, True),
    "Softplus": (fb.Softplus, 7, _normal, False),
    "ELU": (lambda: fb.ELU(0.7), 7, _normal, True),
    "GELU": (fb.GELU, 7, _normal, False),
    "Exp": (fb.Exp, 7, _normal, False),
    "Softmax": (fb.Softmax, 7, _normal, False),
    "Softmax-1": (fb.Softmax, 1, _normal, False),
    "VectorActivation": (lambda: fb.VectorActivation(scaled_by_tanh_sum,
                                                     scaled_by_tanh_sum_jacobian), 7, _normal,
                         False),
    "VectorActivation-n_out": (lambda: fb.VectorActivation(moments, moments_jacobian, n_out=2),
                               17, _normal, False),
    "PairProduct": (fb.PairProduct, 10, _normal, False),
    "PairProduct-2": (fb.PairProduct, 2, _normal, False),
    "PowerProduct-int": (lambda: fb.PowerProduct([[1, 0], [2, 1], [0, 3]]), 3, _normal, False),
    "PowerProduct-real": (lambda: fb.PowerProduct([[0.5, -1.0, 1.0], [1.5, 2.0, 0.0],
                                                   [-0.25, 1.0, 1.0], [1.0, 0.5, 2.0]]),
                          4, _positive, False),
    "Product": (lambda: fb.Product(fb.Sequential(fb.Linear(7, 3), fb.Tanh()),
                                   fb.Sequential(fb.Linear(7, 3), fb.Sigmoid())), 7, _normal,
                False),
    "Product-1": (lambda: fb.Product(fb.Linear(1, 1), fb.Linear(1, 1)), 1, _normal, False),
    "MaxOver": (lambda: fb.MaxOver([[0, 2], [1], [6, 0, 1], [3, 4, 5, 6]]), 7, _distinct, True),
    "MaxPool1d": (lambda: fb.MaxPool1d(3, 2), 17, _distinct, True),
    "MaxPool1d-1": (lambda: fb.MaxPool1d(1), 3, _distinct, True),
    "Sequential": (lambda: fb.Sequential(fb.Linear(3, 3), fb.Tanh()), 3, _normal, False),
}


def _net(name, dtype=np.float64, seed=0):
    factory, D, gen, kinked = NODES[name]
    net = fb.Sequential(factory(), dtype=dtype, seed=seed)
    # zero weights would hide mistakes in dW; xavier initial weights are fine, biases not zero
    for p in net.params:
        if p.ndim == 1:
            p[...] = np.random.default_rng(seed + 1).normal(size=p.shape)
    return net, D, gen, kinked


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(NODES))
def test_node_against_reference(rng, name, dtype, T):
    net, D, gen, _ = _net(name, dtype)
    net.eval()
    X = gen(rng, T, D)
    if T > 1 and gen is _normal:
        X[1] = 0  # an all-zero row (ReLU exactly at its kink, softmax uniform, ...)
    X = X.astype(dtype)
    Y = net.forward(X)
    G = rng.normal(size=Y.shape).astype(dtype)
    dX = net.backward(G)
    layers = R.resolve_widths(R.describe(net), D)
    Yr, cache = R.net_forward(layers, X.astype(np.float64))
    dXr, grads_r = R.net_backward(layers, cache, G.astype(np.float64))
    assert Y.dtype == dtype and dX.dtype == dtype and Y.shape == Yr.shape
    mag = R.net_magnitude(layers, X.astype(np.float64))
    R.assert_close(Y, Yr, dtype, mag + np.abs(Yr), what=f"{name} Y")
    # gradients: scale by the largest value of the array (sums over units and rows cancel)
    R.assert_close(dX, dXr, dtype, np.abs(dXr).max() + 0 * dXr, what=f"{name} dX")
    assert len(net.grads) == len(grads_r)
    for pname, g, gr in zip(net.param_names, net.grads, grads_r):
        R.assert_close(g, gr, dtype, np.abs(gr).max() + 0 * gr, what=f"{name} {pname}")


def fd_errors(net, X, G):
    """(max rel. error of dX, of the flat gradient) of backward vs central differences of
    L = sum(G * net(X)), in evaluation mode."""
    net.eval()
    net.forward(X)
    dX = net.backward(G)
    grads = net.flat_grads.copy()

    def f():
        return math.fsum((G * net.predict(X)).ravel())

    num_X = R.fd_gradient(f, X)
    num_p = R.fd_gradient(f, net.flat_params)
    return R.max_rel_error(dX, num_X), R.max_rel_error(grads, num_p)


@pytest.mark.parametrize("name", sorted(NODES))
def test_node_against_finite_differences(rng, name):
    net, D, gen, kinked = _net(name)
    X = gen(rng, 4, D)
    if kinked and gen is _normal:
        X = _kink_free(X)
    G = rng.normal(size=net.predict(X).shape)
    err_x, err_p = fd_errors(net, X, G)
    assert err_x < R.FD_TOL, f"{name}: dX relative error {err_x:.2e}"
    assert err_p < R.FD_TOL, f"{name}: parameter gradient relative error {err_p:.2e}"


def test_linear_behind_kinked_nodes_away_from_kinks(rng):
    """A Linear before ReLU: pre-activations kept away from 0 so FD never crosses the kink."""
    net = fb.Sequential(fb.Linear(3, 4), fb.ReLU(), fb.Linear(4, 2), seed=0)
    net[0].b[...] = [0.9, -0.8, 0.7, -0.6]
    X = 0.1 * rng.normal(size=(5, 3))
    z = X @ net[0].W.T + net[0].b
    assert np.abs(z).min() > 1e-3
    err_x, err_p = fd_errors(net, X, rng.normal(size=(5, 2)))
    assert err_x < R.FD_TOL and err_p < R.FD_TOL


# -- the seed's conventions at the kinks -----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_gradient_at_zero_is_one_by_default(dtype):
    x = np.array([[-1.0, 0.0, 2.0]], dtype)
    net = fb.Sequential(fb.ReLU(), dtype=dtype)
    np.testing.assert_array_equal(net.forward(x), [[0, 0, 2]])
    np.testing.assert_array_equal(net.backward(np.ones((1, 3), dtype)), [[0, 1, 1]])
    net0 = fb.Sequential(fb.ReLU(grad_at_zero=0), dtype=dtype)
    net0.forward(x)
    np.testing.assert_array_equal(net0.backward(np.ones((1, 3), dtype)), [[0, 0, 1]])


def test_relu_at_zero_inside_a_network():
    """z exactly 0 after a Linear: dW of the first layer follows f'(0) (1 or 0)."""
    for g0, expect in ((1.0, 1.0), (0.0, 0.0)):
        net = fb.Sequential(fb.Linear(2, 1), fb.ReLU(grad_at_zero=g0), seed=0)
        net[0].W[...] = [[1.0, -1.0]]
        net[0].b[...] = 0
        X = np.array([[3.0, 3.0]])
        net.forward(X)
        net.backward(np.ones((1, 1)))
        np.testing.assert_array_equal(net[0].db, [expect])
        np.testing.assert_array_equal(net[0].dW, [[3 * expect, 3 * expect]])


def test_max_ties_go_to_the_first_index():
    m = fb.MaxOver([[0, 1], [1, 2, 3], [3, 1]])
    y = m.forward(np.array([[5.0, 5.0, 1.0, 7.0], [2.0, 2.0, 2.0, 2.0]]))
    np.testing.assert_array_equal(y, [[5, 7, 7], [2, 2, 2]])
    dz = m.backward(np.array([[1.0, 10.0, 100.0], [1.0, 10.0, 100.0]]))
    np.testing.assert_array_equal(dz, [[1, 0, 0, 110], [1, 10, 0, 100]])


def test_maxpool_windows(rng):
    p = fb.MaxPool1d(3, 2)
    assert fb.Sequential(p).infer(17) == 8
    X = rng.normal(size=(2, 17))
    expected = np.array([[row[j:j + 3].max() for j in range(0, 15, 2)] for row in X])
    np.testing.assert_array_equal(p.forward(X), expected)


# -- RReLU: random slopes in training, the mean slope in evaluation ---------------------------
def _rrelu_net(seed, dtype=np.float64):
    return fb.Sequential(fb.Linear(4, 33), fb.RReLU(), fb.Linear(33, 2), dtype=dtype, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rrelu_training_uses_the_drawn_slopes_forward_and_backward(rng, dtype):
    net = _rrelu_net(0, dtype).train()
    X = rng.normal(size=(5, 4)).astype(dtype)
    Y = net.forward(X)
    G = rng.normal(size=Y.shape).astype(dtype)
    dX = net.backward(G)
    slopes = rrelu_slopes(net)
    a = slopes[id(net[1])]
    assert a.shape == (5, 33) and a.dtype == dtype
    assert (a >= 1 / 8).all() and (a <= 1 / 3).all() and np.unique(a).size > 100
    layers = R.resolve_widths(R.describe(net, slopes), 4)
    Yr, cache = R.net_forward(layers, X.astype(np.float64))
    dXr, grads_r = R.net_backward(layers, cache, G.astype(np.float64))
    R.assert_close(Y, Yr, dtype, np.abs(Yr).max() + 0 * Yr, what="Y")
    R.assert_close(dX, dXr, dtype, np.abs(dXr).max() + 0 * dXr, what="dX")
    for g, gr in zip(net.grads, grads_r):
        R.assert_close(g, gr, dtype, np.abs(gr).max() + 0 * gr, what="grads")


def test_rrelu_same_seed_same_slopes(rng):
    X = rng.normal(size=(6, 4))
    a, b, c = _rrelu_net(7).train(), _rrelu_net(7).train(), _rrelu_net(8).train()
    Ya, Yb = a.forward(X), b.forward(X)
    np.testing.assert_array_equal(Ya, Yb)
    np.testing.assert_array_equal(rrelu_slopes(a)[id(a[1])], rrelu_slopes(b)[id(b[1])])
    # another seed draws other slopes (and other weights); the next batch draws fresh slopes
    c.flat_params[...] = a.flat_params
    assert not np.array_equal(c.forward(X), Ya)
    first = rrelu_slopes(a)[id(a[1])].copy()
    a.forward(X)
    assert not np.array_equal(rrelu_slopes(a)[id(a[1])], first)


def test_rrelu_eval_uses_the_mean_slope(rng):
    net = fb.Sequential(fb.RReLU(0.1, 0.3), seed=0).eval()
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(net.forward(x), [[-0.4, 0.0, 3.0]], rtol=1e-15)
    np.testing.assert_allclose(net.backward(np.ones((1, 3))), [[0.2, 1.0, 1.0]], rtol=1e-15)
    # predict is always evaluation mode, even for a network in training mode
    net.train()
    np.testing.assert_allclose(net.predict(x), [[-0.4, 0.0, 3.0]], rtol=1e-15)


# -- nodes used on their own -----------------------------------------------------------------
def test_node_alone_forward_backward(rng):
    x = rng.normal(size=(3, 5))
    for node, name in ((fb.Tanh(), "tanh"), (fb.Sigmoid(), "sigmoid"), (fb.GELU(), "gelu")):
        y = node.forward(x)
        R.assert_close(y, R.scalar_forward(name, x), scale=1 + np.abs(x), what=name)
        dz = node.backward(np.ones_like(x))
        R.assert_close(dz, R.scalar_derivative(name, x), scale=1 + np.abs(x), what=name)
    s = fb.Softmax()
    y = s.forward(x)
    R.assert_close(y, R.softmax_forward(x))
    R.assert_close(s.backward(np.ones_like(x)), np.zeros_like(x), scale=1.0)  # rows sum to 1


@pytest.mark.parametrize("node", [fb.Tanh(), fb.Softmax(), fb.PairProduct(),
                                  fb.MaxOver([[0]]), fb.RReLU()], ids=repr)
def test_node_backward_before_forward_raises(node):
    with pytest.raises(RuntimeError, match="forward"):
        node.backward(np.ones((1, 2)))


def test_vector_activation_checks_the_shapes_it_gets():
    bad = fb.VectorActivation(lambda z: z[:1], lambda z: np.eye(z.shape[0]))
    with pytest.raises(ValueError, match=r"f returned shape \(1,\) for row 0, expected \(3,\)"):
        bad.forward(np.ones((2, 3)))
    bad_j = fb.VectorActivation(lambda z: z, lambda z: np.eye(2))
    bad_j.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"jacobian returned shape \(2, 2\)"):
        bad_j.backward(np.ones((2, 3)))


def test_reprs():
    assert repr(fb.Linear(3, 2)) == "Linear(3, 2)"
    assert repr(fb.Linear(3, 2, bias=False)) == "Linear(3, 2, bias=False)"
    assert repr(fb.ReLU()) == "ReLU()"
    assert "grad_at_zero=0.0" in repr(fb.ReLU(grad_at_zero=0))
    assert repr(fb.LeakyReLU(0.2)) == "LeakyReLU(slope=0.2)"
    assert repr(fb.Tanh()) == "Tanh()"
    assert "MaxPool1d(size=3, stride=2)" == repr(fb.MaxPool1d(3, 2))
    assert "Product(" in repr(fb.Product(fb.Linear(2, 2), fb.Linear(2, 2)))
