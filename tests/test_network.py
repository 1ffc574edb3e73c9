"""Sequential: the seed's forward and backward passes over a whole network, against the
reference; predict, loss_and_grad, params/grads and the flat buffers, indexing, repr, modes,
astype; the bias as the weight w_0j on y_0 = 1; Product sub-networks."""

import math

import numpy as np
import pytest

import fastbp as fb
import reference as R
from conftest import DTYPES, build_every_kind_net, every_kind_input, rrelu_slopes


def _reference_pass(net, X, G, slopes=None):
    layers = R.reference_layers(net, slopes)
    Yr, cache = R.net_forward(layers, np.asarray(X, np.float64))
    dXr, grads_r = R.net_backward(layers, cache, np.asarray(G, np.float64))
    return layers, Yr, dXr, grads_r


def _assert_pass(net, X, Y, dX, G, slopes=None, dtype=np.float64):
    layers, Yr, dXr, grads_r = _reference_pass(net, X, G, slopes)
    R.assert_close(Y, Yr, dtype, R.net_magnitude(layers, np.asarray(X, np.float64)),
                   network=True, what="Y")
    R.assert_close(dX, dXr, dtype, np.abs(dXr).max() + 0 * dXr, network=True, what="dX")
    assert [g.shape for g in net.grads] == [g.shape for g in grads_r]
    for name, g, gr in zip(net.param_names, net.grads, grads_r):
        R.assert_close(g, gr, dtype, np.abs(gr).max() + 0 * gr, network=True, what=name)


# -- forward and backward against the reference ----------------------------------------------
@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kind_network_against_reference(dtype, T):
    net = build_every_kind_net(dtype).eval()
    X = every_kind_input(T).astype(dtype)
    Y = net.forward(X)
    G = np.random.default_rng(3).normal(size=Y.shape).astype(dtype)
    dX = net.backward(G)
    assert Y.shape == (T, 5) and dX.shape == X.shape and Y.dtype == dX.dtype == dtype
    _assert_pass(net, X, Y, dX, G, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kind_network_in_training_mode(dtype):
    """RReLU draws slopes in training; the backward pass uses the very same slopes."""
    net = build_every_kind_net(dtype).train()
    X = every_kind_input(6).astype(dtype)
    Y = net.forward(X)
    G = np.random.default_rng(4).normal(size=Y.shape).astype(dtype)
    dX = net.backward(G)
    slopes = rrelu_slopes(net)
    assert len(slopes) == 1
    _assert_pass(net, X, Y, dX, G, slopes, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", [(1, 1), (3, 7, 1), (33, 17, 3), (7, 33, 33, 2)])
def test_mlp_against_reference(rng, dtype, widths):
    nodes = []
    for a, b in zip(widths[:-1], widths[1:]):
        nodes += [fb.Linear(a, b, init="torch"), fb.Tanh()]
    net = fb.Sequential(*nodes[:-1], dtype=dtype, seed=1)
    X = rng.normal(size=(5, widths[0])).astype(dtype)
    X[2] = 0
    Y = net.forward(X)
    G = rng.normal(size=Y.shape).astype(dtype)
    _assert_pass(net, X, Y, net.backward(G), G, dtype=dtype)


def test_one_row_input_is_one_instance(rng):
    net = fb.Sequential(fb.Linear(3, 2), fb.Sigmoid(), seed=0)
    x = rng.normal(size=3)
    np.testing.assert_array_equal(net.forward(x), net.forward(x.reshape(1, 3)))
    Xi = np.array([[1, 2, 3]])  # integers are converted to the network's dtype
    np.testing.assert_array_equal(net.forward(Xi), net.forward(Xi.astype(np.float64)))


# -- the bias is the weight w_0j on the constant input y_0 = 1 -------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_is_a_weight_on_a_constant_one(rng, dtype):
    """z_j = sum_{i=0}^{D} w_ij y_i with w_0j = b_j and y_0 = 1 (the seed's extended notation):
    a biased layer equals a bias-free layer one input wider fed a column of ones, and the
    gradient of w_0j is the gradient of b_j."""
    D, M, T = 7, 3, 5
    biased = fb.Sequential(fb.Linear(D, M), fb.Tanh(), fb.Linear(M, 2), dtype=dtype, seed=0)
    biased[0].b[...] = rng.normal(size=M)
    extended = fb.Sequential(fb.Linear(D + 1, M, bias=False), fb.Tanh(), fb.Linear(M, 2),
                             dtype=dtype, seed=0)
    extended[0].W[:, 0] = biased[0].b
    extended[0].W[:, 1:] = biased[0].W
    extended[2].W[...], extended[2].b[...] = biased[2].W, biased[2].b
    X = rng.normal(size=(T, D)).astype(dtype)
    X1 = np.hstack([np.ones((T, 1), dtype), X])  # y_0 = 1
    G = rng.normal(size=(T, 2)).astype(dtype)
    Y, Y1 = biased.forward(X), extended.forward(X1)
    dX, dX1 = biased.backward(G), extended.backward(G)
    rtol = R.tolerances(dtype)[0]
    np.testing.assert_allclose(Y1, Y, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dX1[:, 1:], dX, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(extended[0].dW[:, 0], biased[0].db, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(extended[0].dW[:, 1:], biased[0].dW, rtol=rtol, atol=rtol)
    # and the reference's loop over i = 0..D says the same
    z = R.linear_forward(np.asarray(X, np.float64), biased[0].W, biased[0].b)
    z1 = R.linear_forward(np.asarray(X1, np.float64), extended[0].W)
    np.testing.assert_allclose(z1, z, rtol=1e-15, atol=1e-15)


# -- predict, loss_and_grad ------------------------------------------------------------------
def test_predict_is_forward_in_eval_mode_and_keeps_nothing(rng):
    net = build_every_kind_net().train()
    X1, X2 = every_kind_input(5, 1), every_kind_input(3, 2)
    P = net.predict(X1)
    assert net.training  # predict does not switch the mode
    np.testing.assert_allclose(P, build_every_kind_net().eval().forward(X1), rtol=1e-14,
                               atol=1e-16)
    Y = net.forward(X1)
    G = rng.normal(size=Y.shape)
    slopes = {k: v.copy() for k, v in rrelu_slopes(net).items()}
    net.predict(X2)  # between forward and backward: backward still uses X1's pass
    dX = net.backward(G)
    assert dX.shape == X1.shape
    _assert_pass(net, X1, Y, dX, G, slopes)


def test_predict_one_row(rng):
    net = fb.Sequential(fb.Linear(4, 3), fb.Softmax(), seed=0)
    x = rng.normal(size=4)
    np.testing.assert_allclose(net.predict(x), net.forward(x.reshape(1, -1)), rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_and_grad_against_reference(rng, dtype):
    net = build_every_kind_net(dtype).eval()
    X = every_kind_input(6).astype(dtype)
    labels = np.array([0, 4, 2, 2, 1, 3])
    value = net.loss_and_grad(X, labels, fb.KL())
    layers, _, _, _ = _reference_pass(net, X, np.zeros((6, 5)))
    Yr, cache = R.net_forward(layers, np.asarray(X, np.float64))
    div, g = R.kl(Yr, R.one_hot(labels, 5))
    dXr, grads_r = R.net_backward(layers, cache, g / 6)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert isinstance(value, float)
    assert abs(value - math.fsum(div) / 6) <= rtol * abs(value)
    for name, gr_, gr in zip(net.param_names, net.grads, grads_r):
        R.assert_close(gr_, gr, dtype, np.abs(gr).max() + 0 * gr, network=True, what=name)


def test_loss_and_grad_equals_forward_loss_backward(rng):
    """loss_and_grad is forward + the loss + backward of loss.grad (L2: no fused path)."""
    net = fb.Sequential(fb.Linear(3, 7), fb.ELU(), fb.Linear(7, 2), seed=2)
    X, d = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    value = net.loss_and_grad(X, d, fb.L2())
    g1 = net.flat_grads.copy()
    Y = net.forward(X)
    assert value == fb.L2()(Y, d)
    net.backward(fb.L2().grad(Y, d))
    np.testing.assert_array_equal(net.flat_grads, g1)


# -- parameters, gradients, flat buffers, indexing, repr -------------------------------------
def test_params_and_grads_are_views_into_the_flat_buffers():
    net = build_every_kind_net()
    specs = [(n, p.shape) for n, p in zip(net.param_names, net.params)]
    assert specs[:2] == [("0.W", (17, 7)), ("0.b", (17,))]
    assert ("6.W", (9, 9)) in specs and "6.b" not in net.param_names  # Linear(bias=False)
    assert ("17.a.0.W", (10, 9)) in specs and ("17.b.0.b", (10,)) in specs  # Product branches
    sizes = [p.size for p in net.params]
    assert net.flat_params.size == net.flat_grads.size == sum(sizes)
    for buf in (net.flat_params, net.flat_grads):
        assert buf.flags.c_contiguous and buf.ndim == 1 and buf.dtype == np.float64
    o = 0
    for p, g in zip(net.params, net.grads):
        assert p.shape == g.shape
        assert np.shares_memory(p, net.flat_params) and np.shares_memory(g, net.flat_grads)
        np.testing.assert_array_equal(p.reshape(-1), net.flat_params[o:o + p.size])
        o += p.size
    # layer attributes are the same views
    assert net[0].W is net.params[0] and net[0].dW is net.grads[0]
    net.flat_params[0] = 123.0
    assert net[0].W[0, 0] == 123.0


def test_backward_overwrites_gradients(rng):
    net = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 2), seed=0)
    X, G = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    assert not net.flat_grads.any()
    net.forward(X)
    net.backward(G)
    first = net.flat_grads.copy()
    net.forward(X)
    net.backward(G)
    np.testing.assert_array_equal(net.flat_grads, first)  # set, not accumulated


def test_changing_flat_params_changes_the_output(rng):
    net = fb.Sequential(fb.Linear(3, 2), seed=0)
    X = rng.normal(size=(4, 3))
    net.flat_params[...] = 0
    np.testing.assert_array_equal(net.forward(X), 0)


def test_seed_fixes_the_initial_parameters():
    a, b, c = (fb.Sequential(fb.Linear(5, 4), fb.Tanh(), fb.Linear(4, 3), seed=s)
               for s in (3, 3, 4))
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, c.flat_params)


def test_indexing_len_iter_and_repr():
    nodes = [fb.Linear(4, 3), fb.ReLU(), fb.Linear(3, 2), fb.Softmax()]
    net = fb.Sequential(*nodes, dtype=np.float32, seed=0)
    assert len(net) == 4 and list(net) == nodes
    assert net[0] is nodes[0] and net[-1] is nodes[-1]
    assert fb.Sequential(nodes[:2]).nodes == nodes[:2]  # a list works as well
    r = repr(net)
    for part in ("Sequential(", "Linear(4, 3)", "ReLU()", "Linear(3, 2)", "Softmax()",
                 "float32"):
        assert part in r
    nested = repr(fb.Sequential(fb.Product(fb.Linear(2, 2), fb.Linear(2, 2)), seed=0))
    assert nested.count("Linear(2, 2)") == 2


def test_train_and_eval_modes_reach_nested_nodes():
    net = build_every_kind_net()
    assert net.eval() is net
    assert all(not n.training for n in net.walk())
    assert net.train() is net
    assert all(n.training for n in net.walk())
    product = net[17]
    assert all(n.training for n in product.a.walk())


# -- astype ----------------------------------------------------------------------------------
def test_astype_float32_and_back(rng):
    net = build_every_kind_net(np.float64).eval()
    before = net.flat_params.tobytes()
    n32 = net.astype(np.float32)
    assert n32 is not net and n32.dtype == np.float32 and net.dtype == np.float64
    assert n32.flat_params.dtype == np.float32 and n32.flat_grads.dtype == np.float32
    assert all(p.dtype == np.float32 for p in n32.params)
    assert not np.shares_memory(n32.flat_params, net.flat_params)
    np.testing.assert_array_equal(n32.flat_params, net.flat_params.astype(np.float32))
    assert net.flat_params.tobytes() == before
    X = every_kind_input(4)
    Y64, Y32 = net.forward(X), n32.eval().forward(X)
    assert Y32.dtype == np.float32
    R.assert_close(Y32, Y64, np.float32, np.abs(Y64).max() + 0 * Y64, network=True)
    # nested parameters are rebound to the new buffer too
    n32[17].a[0].W[0, 0] = 5.0
    assert net[17].a[0].W[0, 0] != 5.0
    back = n32.astype(np.float64)
    np.testing.assert_array_equal(back.flat_params, n32.flat_params.astype(np.float64))


# -- Product sub-networks --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_product_is_the_elementwise_product_of_its_branches(rng, dtype):
    """Gating as in a GLU: y = a(x) * b(x); each branch's gradients follow the other factor."""
    glu = fb.Product(fb.Sequential(fb.Linear(5, 3)),
                     fb.Sequential(fb.Linear(5, 3), fb.Sigmoid()))
    net = fb.Sequential(glu, fb.Linear(3, 2), dtype=dtype, seed=0)
    assert net.param_names == ["0.a.0.W", "0.a.0.b", "0.b.0.W", "0.b.0.b", "1.W", "1.b"]
    a = fb.Sequential(fb.Linear(5, 3), dtype=dtype)
    b = fb.Sequential(fb.Linear(5, 3), fb.Sigmoid(), dtype=dtype)
    a.flat_params[...] = net.flat_params[:18]
    b.flat_params[...] = net.flat_params[18:36]
    X = rng.normal(size=(4, 5)).astype(dtype)
    Ya, Yb = a.forward(X), b.forward(X)
    np.testing.assert_array_equal(glu.forward(X), Ya * Yb)
    G = rng.normal(size=(4, 2)).astype(dtype)
    Y = net.forward(X)
    dX = net.backward(G)
    _assert_pass(net, X, Y, dX, G, dtype=dtype)
    # x reaches y along both branches: dX is the sum of the two branches' dX
    dH = G @ net[1].W.astype(np.float64)
    dXa = a.backward((dH * Yb).astype(dtype))
    dXb = b.backward((dH * Ya).astype(dtype))
    R.assert_close(dX, dXa + dXb, dtype, np.abs(dXa) + np.abs(dXb), network=True)


def test_nested_sequential_as_a_node(rng):
    inner = fb.Sequential(fb.Linear(3, 4), fb.Tanh())
    net = fb.Sequential(inner, fb.Linear(4, 2), seed=0)
    assert net.param_names == ["0.0.W", "0.0.b", "1.W", "1.b"]
    X, G = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    Y = net.forward(X)
    _assert_pass(net, X, Y, net.backward(G), G)
