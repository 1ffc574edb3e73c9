"""Divergences: values (means over instances) and gradients (with the 1/T) against the
reference; the fused Softmax+KL and Sigmoid+BinaryKL paths against the general path; logits of
+-1000 through the fused path."""

import math

import numpy as np
import pytest

import fastbp as fb
import reference as R
from conftest import DTYPES

SHAPES = [(1, 1), (1, 3), (5, 7), (4, 17), (3, 33)]
#: the fused and the general path agree to this, relative to each array's largest element
FUSED_TOL = 1e-10


def _probs(rng, shape, zeros=True):
    p = rng.uniform(0.05, 1, size=shape)
    if zeros and shape[1] > 1:
        p[:, -1] = 0
    return p / p.sum(axis=1, keepdims=True)


def _check(loss, Y, d, d_ref, ref, dtype):
    T = Y.shape[0]
    value, grad = loss(Y, d), loss.grad(Y, d)
    div, g = ref(np.asarray(Y, np.float64), d_ref)
    assert isinstance(value, float) and grad.dtype == dtype and grad.shape == Y.shape
    rtol = R.tolerances(dtype)[0]
    assert abs(value - math.fsum(div) / T) <= rtol * (1 + abs(value)), (value, div)
    R.assert_close(grad, g / T, dtype, what=f"{loss!r} grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_l2(rng, dtype, shape):
    Y, d = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    _check(fb.L2(), Y, d, np.asarray(d, np.float64), R.l2, dtype)


def test_l2_one_output_takes_1d_targets(rng):
    Y, d = rng.normal(size=(4, 1)), rng.normal(size=4)
    assert fb.L2()(Y, d) == fb.L2()(Y, d.reshape(4, 1))
    assert fb.L2()(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])) == 2.5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kl_with_labels_and_with_probability_rows(rng, dtype, shape):
    Y = _probs(rng, shape, zeros=False).astype(dtype)
    labels = rng.integers(0, shape[1], size=shape[0])
    _check(fb.KL(), Y, labels, R.one_hot(labels, shape[1]), R.kl, dtype)
    d = _probs(rng, shape)
    _check(fb.KL(), Y, d, np.asarray(d.astype(dtype), np.float64), R.kl, dtype)
    # with one-hot rows KL is the cross-entropy -log y_c, the same as with labels
    assert fb.KL()(Y, labels) == pytest.approx(fb.KL()(Y, R.one_hot(labels, shape[1])),
                                               rel=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_binary_kl(rng, dtype, shape):
    Y = rng.uniform(0.02, 0.98, size=shape).astype(dtype)
    d = rng.uniform(0, 1, size=shape)
    d.reshape(-1)[0] = 1.0
    d.reshape(-1)[-1] = 0.0
    _check(fb.BinaryKL(), Y, d, np.asarray(d.astype(dtype), np.float64), R.binary_kl, dtype)


def test_loss_values_by_hand():
    assert fb.KL()(np.array([[0.5, 0.25, 0.25]]), np.array([0])) == pytest.approx(math.log(2))
    assert fb.BinaryKL()(np.array([[0.5]]), np.array([1.0])) == pytest.approx(math.log(2))
    # the mean over instances
    Y = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert fb.KL()(Y, np.array([0, 1])) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)


# -- fused vs general path -------------------------------------------------------------------
def _both_paths(net, X, d, loss):
    """(value, flat grads, dX) through loss_and_grad (fused where the network ends in the
    matching activation) and through forward, loss, loss.grad, backward (the general path)."""
    v_fused = net.loss_and_grad(X, d, loss)
    g_fused = net.flat_grads.copy()
    Y = net.forward(X)
    v_general = loss(Y, d)
    dX = net.backward(loss.grad(Y, d))
    return (v_fused, g_fused), (v_general, net.flat_grads.copy(), dX)


def _assert_agree(a, b, tol=FUSED_TOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    assert np.abs(a - b).max() <= tol * scale, np.abs(a - b).max() / scale


@pytest.mark.parametrize("K", [1, 3, 17])
@pytest.mark.parametrize("target", ["labels", "probs"])
def test_fused_softmax_kl_agrees_with_the_general_path(rng, K, target):
    net = fb.Sequential(fb.Linear(7, 5), fb.Tanh(), fb.Linear(5, K), fb.Softmax(), seed=0)
    X = rng.normal(size=(6, 7))
    X[1] = 0
    d = rng.integers(0, K, size=6) if target == "labels" else _probs(rng, (6, K))
    assert fb.KL().fused(net[-1], (np.zeros((1, K)), np.ones((1, K)) / K),
                         fb.KL().target(d[:1], 1, K, np.float64)) is not None
    (vf, gf), (vg, gg, _) = _both_paths(net, X, d, fb.KL())
    assert abs(vf - vg) <= FUSED_TOL * abs(vf) + 1e-15
    if K > 1:
        _assert_agree(gf, gg)
    else:
        assert not gf.any() and not gg.any()  # a softmax of one output is constant


@pytest.mark.parametrize("K", [1, 3])
def test_fused_sigmoid_binary_kl_agrees_with_the_general_path(rng, K):
    net = fb.Sequential(fb.Linear(7, 5), fb.ReLU(), fb.Linear(5, K), fb.Sigmoid(), seed=0)
    X = rng.normal(size=(6, 7))
    d = rng.uniform(0, 1, size=(6, K))
    d[0] = 1
    d[1] = 0
    (vf, gf), (vg, gg, _) = _both_paths(net, X, d, fb.BinaryKL())
    assert abs(vf - vg) <= FUSED_TOL * abs(vf)
    _assert_agree(gf, gg)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_poisson(rng, dtype, shape):
    Y = rng.uniform(0.05, 5.0, size=shape).astype(dtype)
    d = rng.poisson(1.5, size=shape).astype(float)
    d.reshape(-1)[0] = 0.0
    _check(fb.Poisson(), Y, d, np.asarray(d.astype(dtype), np.float64), R.poisson, dtype)


def test_poisson_refuses_negative_targets():
    with pytest.raises(ValueError, match="Poisson targets must be >= 0, found -1"):
        fb.Poisson()(np.ones((2, 1)), np.array([[1.0], [-1.0]]))


@pytest.mark.parametrize("K", [1, 3])
def test_fused_exp_poisson_agrees_with_the_general_path(rng, K):
    net = fb.Sequential(fb.Linear(7, 5), fb.Tanh(), fb.Linear(5, K), fb.Exp(), seed=0)
    X = rng.normal(size=(6, 7))
    d = rng.poisson(1.0, size=(6, K)).astype(float)
    (vf, gf), (vg, gg, _) = _both_paths(net, X, d, fb.Poisson())
    assert abs(vf - vg) <= FUSED_TOL * abs(vf)
    _assert_agree(gf, gg)


@pytest.mark.parametrize("loss, make_d", [
    (fb.L2(), lambda rng, T, K: rng.normal(size=(T, K))),
    (fb.KL(), lambda rng, T, K: rng.integers(0, K, size=T)),
    (fb.KL(), lambda rng, T, K: _probs(rng, (T, K))),
    (fb.BinaryKL(), lambda rng, T, K: rng.uniform(size=(T, K))),
    (fb.Poisson(), lambda rng, T, K: rng.poisson(1.0, size=(T, K)).astype(float)),
])
def test_weighted_loss_against_the_reference(rng, loss, make_d):
    """Weighted value and gradient, general path: sum_t w_t Div_t / sum_t w_t."""
    T, K = 7, 3
    Y = _probs(rng, (T, K), zeros=False) if not isinstance(loss, fb.L2) else \
        rng.normal(size=(T, K))
    d = make_d(rng, T, K)
    w = rng.uniform(0, 3, size=T)
    w[2] = 0
    target = loss.target(d, T, K, np.float64)
    ref = {fb.L2: R.l2, fb.KL: R.kl, fb.BinaryKL: R.binary_kl, fb.Poisson: R.poisson}[type(loss)]
    div, g = ref(Y, R.one_hot(target, K) if target.ndim == 1 else target)
    e_value, e_grad = R.weighted_loss(div, g, w)
    assert loss(Y, d, sample_weight=w) == pytest.approx(e_value, rel=1e-13)
    R.assert_close(loss.grad(Y, d, sample_weight=w), e_grad, np.float64)
    # weights that are all equal give the unweighted loss
    assert loss(Y, d, sample_weight=np.full(T, 2.5)) == pytest.approx(loss(Y, d), rel=1e-14)


def test_fused_paths_against_the_reference(rng):
    """The fused loss and gradient are the reference's divergence of the network's output."""
    net = fb.Sequential(fb.Linear(3, 4), fb.Softmax(), seed=0)
    X, labels = rng.normal(size=(5, 3)), rng.integers(0, 4, size=5)
    value = net.loss_and_grad(X, labels, fb.KL())
    layers = R.reference_layers(net)
    Y, cache = R.net_forward(layers, X)
    div, g = R.kl(Y, R.one_hot(labels, 4))
    _, grads = R.net_backward(layers, cache, g / 5)
    assert abs(value - math.fsum(div) / 5) <= 1e-12 * value
    for a, b in zip(net.grads, grads):
        R.assert_close(a, b, scale=np.abs(b).max() + 0 * b)


def _saturated(kind):
    """A network whose logits are exactly (1000, -1000, 0) (or (1000, -1000)) for x = 1."""
    K = 3 if kind == "softmax" else 2
    act = fb.Softmax() if kind == "softmax" else fb.Sigmoid()
    net = fb.Sequential(fb.Linear(1, K), act, seed=0)
    net[0].W[:, 0] = [1000.0, -1000.0, 0.0][:K]
    net[0].b[...] = 0
    return net, np.array([[1.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_of_1000_give_finite_loss_and_gradient_softmax_kl(dtype):
    net, X = _saturated("softmax")
    net = net.astype(dtype)
    value = net.loss_and_grad(X, np.array([1]), fb.KL())  # the class with logit -1000
    assert value == pytest.approx(2000.0, rel=1e-7)
    assert np.isfinite(net.flat_grads).all()
    # dLoss/dz = y - onehot = (1, -1, 0); dW = dz x, db = dz
    np.testing.assert_allclose(net[0].db, [1.0, -1.0, 0.0], atol=1e-30)
    np.testing.assert_allclose(net[0].dW[:, 0], [1.0, -1.0, 0.0], atol=1e-30)
    value = net.loss_and_grad(X, np.array([[0.5, 0.25, 0.25]]), fb.KL())
    assert np.isfinite(value) and np.isfinite(net.flat_grads).all()
    # log y = z - logsumexp(z) = z - 1000: KL = sum d (log d - z + 1000)
    expected = 0.5 * math.log(0.5) + 0.5 * math.log(0.25) + 0.25 * 2000 + 0.25 * 1000
    assert value == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_of_1000_give_finite_loss_and_gradient_sigmoid_binary_kl(dtype):
    net, X = _saturated("sigmoid")
    net = net.astype(dtype)
    value = net.loss_and_grad(X, np.array([[0.0, 1.0]]), fb.BinaryKL())
    assert value == pytest.approx(2000.0, rel=1e-7)
    np.testing.assert_allclose(net[0].db, [1.0, -1.0], atol=1e-30)
    value = net.loss_and_grad(X, np.array([[1.0, 0.0]]), fb.BinaryKL())  # the right answers
    assert value == 0.0 and np.isfinite(net.flat_grads).all()
    value = net.loss_and_grad(X, np.array([[0.5, 0.5]]), fb.BinaryKL())
    assert value == pytest.approx(2 * (500 + math.log(0.5)), rel=1e-6)  # 0.5 of -log(1 - y) = 1000
    assert np.isfinite(net.flat_grads).all()


def test_grad_carries_one_over_T(rng):
    Y, d = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    np.testing.assert_allclose(fb.L2().grad(Y, d), (Y - d) / 8, rtol=1e-15)
    assert repr(fb.L2()) == "L2()" and repr(fb.KL()) == "KL()"
