"""fb.gradcheck on every node kind, its report (skipped kinks included), and that it FAILS when a
gradient is wrong: a check that cannot fail checks nothing."""

import numpy as np
import pytest

import fastbp as fb
import reference as R
from conftest import (moments, moments_jacobian, scaled_by_tanh_sum,
                      scaled_by_tanh_sum_jacobian)


def _sandwich(*middle, width=5, out=3):
    """Linear(4, width) -> middle nodes -> Linear(?, out): parameters before and after the node."""
    net = fb.Sequential(fb.Linear(4, width), *middle, seed=0)
    net = fb.Sequential(fb.Linear(4, width), *middle, fb.Linear(net.n_out, out), seed=0)
    for p in net.params:
        if p.ndim == 1:
            p[...] = np.random.default_rng(1).normal(scale=0.5, size=p.shape)
    return net


KINDS = {
    "Linear": lambda: _sandwich(fb.Linear(5, 6)),
    "Identity": lambda: _sandwich(fb.Identity()),
    "Sigmoid": lambda: _sandwich(fb.Sigmoid()),
    "Tanh": lambda: _sandwich(fb.Tanh()),
    "ReLU": lambda: _sandwich(fb.ReLU()),
    "LeakyReLU": lambda: _sandwich(fb.LeakyReLU(0.1)),
    "RReLU": lambda: _sandwich(fb.RReLU()),
    "Softplus": lambda: _sandwich(fb.Softplus()),
    "ELU": lambda: _sandwich(fb.ELU(0.5)),
    "GELU": lambda: _sandwich(fb.GELU()),
    "Softmax": lambda: _sandwich(fb.Softmax()),
    "VectorActivation": lambda: _sandwich(
        fb.VectorActivation(scaled_by_tanh_sum, scaled_by_tanh_sum_jacobian)),
    "VectorActivation-n_out": lambda: _sandwich(
        fb.VectorActivation(moments, moments_jacobian, n_out=2)),
    "PairProduct": lambda: _sandwich(fb.PairProduct(), width=6),
    "PowerProduct": lambda: _sandwich(fb.Softplus(), fb.PowerProduct(
        [[0.5, 2.0, -1.0], [1.0, 0.0, 1.5], [2.0, 1.0, 0.0]]), width=3),
    "Product": lambda: _sandwich(fb.Product(fb.Sequential(fb.Linear(5, 4), fb.Tanh()),
                                            fb.Sequential(fb.Linear(5, 4), fb.Sigmoid()))),
    "MaxOver": lambda: _sandwich(fb.MaxOver([[0, 1], [2], [4, 3, 1]])),
    "MaxPool1d": lambda: _sandwich(fb.MaxPool1d(2, 1), width=7),
}

@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradcheck_every_node_kind(rng, kind):
    net = KINDS[kind]()
    X = rng.normal(size=(5, 4))
    report = fb.gradcheck(net, X, rng.normal(size=(5, 3)), fb.L2())
    assert set(report.errors) == set(net.param_names) | {"input"}
    assert report.ok, f"{kind}:\n{report!r}"
    assert report.worst < R.FD_TOL
    for name, p in zip(net.param_names, net.params):
        assert report.checked[name] + report.skipped[name] == p.size
    assert report.checked["input"] + report.skipped["input"] == X.size


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss,target", [
    (fb.KL(), "labels"), (fb.KL(), "probs"), (fb.BinaryKL(), "binary"), (fb.L2(), "real"),
    (fb.Poisson(), "counts")])
def test_gradcheck_through_each_loss(rng, loss, target, weighted):
    """Softmax + KL, Sigmoid + BinaryKL and Exp + Poisson go through the fused gradient:
    gradcheck it too, and the weighted loss."""
    last = {"binary": fb.Sigmoid(), "counts": fb.Exp()}.get(target, fb.Softmax())
    net = fb.Sequential(fb.Linear(4, 5), fb.Tanh(), fb.Linear(5, 3), last, seed=0)
    X = rng.normal(size=(6, 4))
    d = {"labels": rng.integers(0, 3, size=6),
         "probs": rng.dirichlet(np.ones(3), size=6),
         "binary": rng.uniform(size=(6, 3)),
         "real": rng.uniform(size=(6, 3)),
         "counts": rng.poisson(1.0, size=(6, 3)).astype(float)}[target]
    w = rng.uniform(0, 3, size=6) if weighted else None
    report = fb.gradcheck(net, X, d, loss, sample_weight=w)
    assert report.ok, repr(report)


def test_gradcheck_mixed_network(rng):
    """Several kinds chained, ending in the fused Softmax + KL. (The 27-node every-kind network
    has gradients down to 1e-7 there, where central differences in float64 carry a rounding
    error of about 1e-16 |Loss| / eps = 1e-10: it is checked against the reference instead.)"""
    net = fb.Sequential(
        fb.Linear(4, 8), fb.GELU(),
        fb.Product(fb.Sequential(fb.Linear(8, 6), fb.Tanh()), fb.Linear(8, 6)),
        fb.PairProduct(), fb.ELU(), fb.MaxPool1d(2, 1),
        fb.VectorActivation(scaled_by_tanh_sum, scaled_by_tanh_sum_jacobian),
        fb.Linear(2, 3), fb.Softmax(), seed=0)
    X = 2 * rng.normal(size=(6, 4))
    report = fb.gradcheck(net, X, np.array([0, 1, 2, 2, 1, 0]), fb.KL(), max_per_array=20)
    assert report.ok, repr(report)
    assert all(c <= 20 for c in report.checked.values())


def test_gradcheck_leaves_the_network_alone(rng):
    net = _sandwich(fb.RReLU()).astype(np.float32).train()
    before = net.flat_params.tobytes()
    report = fb.gradcheck(net, rng.normal(size=(3, 4)), rng.normal(size=(3, 3)), fb.L2())
    assert report.ok  # in float64 and in evaluation mode (RReLU's mean slope), on a copy
    assert net.flat_params.tobytes() == before
    assert net.dtype == np.float32 and net.training


# -- kinks: skipped and reported -------------------------------------------------------------
def test_gradcheck_skips_and_reports_kinks():
    """A ReLU input exactly at 0 and a max with a tie: perturbations across them are skipped
    (and counted), and what remains is checked."""
    net = fb.Sequential(fb.Linear(2, 2), fb.ReLU(), fb.Linear(2, 1), seed=0)
    net[0].W[...] = [[1.0, -1.0], [0.5, 0.25]]
    net[0].b[...] = [0.0, 0.1]
    X = np.array([[1.0, 1.0], [0.3, -0.7]])  # row 0: unit 0 has z = 0 exactly
    report = fb.gradcheck(net, X, np.array([[0.5], [-0.2]]), fb.L2())
    assert report.skipped["0.W"] >= 2 and report.skipped["0.b"] >= 1
    assert report.skipped["input"] >= 2
    assert report.checked["0.W"] >= 1 and report.checked["2.W"] == 2
    assert report.ok
    assert "skipped" in repr(report)

    tie = fb.Sequential(fb.Linear(2, 3), fb.MaxOver([[0, 1], [2]]), fb.Linear(2, 1), seed=0)
    tie[0].W[...] = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    tie[0].b[...] = 0
    report = fb.gradcheck(tie, np.array([[0.5, 0.2]]), np.array([[1.0]]), fb.L2())
    assert report.skipped["0.W"] >= 1 and report.ok


# -- gradcheck must fail on a wrong gradient -------------------------------------------------
def _wrong(method, factor):
    def patched(self, ctx, dy, need_dx=True):
        out = method(self, ctx, dy, need_dx)
        return None if out is None else out * factor
    return patched


@pytest.mark.parametrize("node_cls,kind", [
    (fb.Tanh, "Tanh"), (fb.ReLU, "ReLU"), (fb.Softmax, "Softmax"),
    (fb.PairProduct, "PairProduct"), (fb.MaxOver, "MaxOver"), (fb.Product, "Product"),
    (fb.VectorActivation, "VectorActivation"), (fb.PowerProduct, "PowerProduct")])
def test_gradcheck_fails_when_a_node_backward_is_off_by_one_percent(rng, monkeypatch,
                                                                    node_cls, kind):
    net = KINDS[kind]()
    X, d = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    assert fb.gradcheck(net, X, d, fb.L2()).ok
    monkeypatch.setattr(node_cls, "_backprop", _wrong(node_cls._backprop, 1.01))
    report = fb.gradcheck(net, X, d, fb.L2())
    assert not report.ok
    assert 0.005 < report.worst < 0.02, repr(report)
    assert "FAILED" in repr(report)
    # the first layer is below the wrong node: its gradients are wrong, the last layer's right
    last = net.param_names[-2]
    assert report.errors["0.W"] > report.tol and report.errors[last] <= report.tol


def test_gradcheck_fails_when_only_dW_is_wrong(rng, monkeypatch):
    """A wrong parameter gradient with a right dX is caught on that array alone."""
    method = fb.Linear._backprop

    def patched(self, y, dz, need_dx=True):
        dx = method(self, y, dz, need_dx)
        self.dW *= 1.01
        return dx

    net = KINDS["Tanh"]()
    X, d = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    monkeypatch.setattr(fb.Linear, "_backprop", patched)
    report = fb.gradcheck(net, X, d, fb.L2())
    assert not report.ok
    assert report.errors["0.W"] > report.tol and report.errors["2.W"] > report.tol
    assert report.errors["0.b"] <= report.tol and report.errors["input"] <= report.tol


def test_gradcheck_fails_when_the_fused_gradient_is_wrong(rng, monkeypatch):
    method = fb.KL.fused

    def patched(self, node, ctx, target):  # as a divergence written before sample weights
        out = method(self, node, ctx, target)
        return None if out is None else (out[0], out[1] * 1.01)

    net = fb.Sequential(fb.Linear(4, 3), fb.Softmax(), seed=0)
    X, labels = rng.normal(size=(5, 4)), rng.integers(0, 3, size=5)
    assert fb.gradcheck(net, X, labels, fb.KL()).ok
    monkeypatch.setattr(fb.KL, "fused", patched)
    assert not fb.gradcheck(net, X, labels, fb.KL()).ok


def test_gradcheck_fails_when_relu_uses_the_wrong_side(rng, monkeypatch):
    """A subgradient convention error away from the kink (f'(z) = 0 for some z > 0) is caught."""
    net = KINDS["ReLU"]()
    X, d = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    method = fb.ReLU._backprop

    def patched(self, ctx, dy, need_dx=True):
        dz = method(self, ctx, dy, need_dx)
        z = ctx[0]
        return np.where((z > 0) & (z < np.median(z[z > 0])), 0.0, dz)

    monkeypatch.setattr(fb.ReLU, "_backprop", patched)
    assert not fb.gradcheck(net, X, d, fb.L2()).ok
