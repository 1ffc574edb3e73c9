"""fastbp.interop: scikit-learn and PyTorch networks to fastbp and back, outputs kept."""

import sys
import warnings

import numpy as np
import pytest
from sklearn import neural_network as skn

import fastbp as fb
from fastbp.interop import (
    from_sklearn,
    from_torch,
    load_state_dict,
    state_dict,
    to_sklearn,
    to_torch,
)
from fastbp.sklearn import MLPClassifier

#: the issue's bound for float32 round trips
F32_ATOL = 1e-6
F64_ATOL = 1e-12


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def _data(kind, n=80):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, 4))
    y = {"multiclass": np.arange(n) % 3, "binary": np.arange(n) % 2,
         "multilabel": (X[:, :3] > 0).astype(int), "regression": X[:, :2] ** 2}[kind]
    return X, y


def _outputs(mlp, X):
    if isinstance(mlp, skn.MLPRegressor):
        return mlp.predict(X).reshape(len(X), -1)
    P = mlp.predict_proba(X)
    return P[:, 1:] if mlp.n_outputs_ == 1 else P


# -- scikit-learn -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression"])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_sklearn_round_trip(kind, activation):
    X, y = _data(kind)
    cls = skn.MLPRegressor if kind == "regression" else skn.MLPClassifier
    mlp = _fit(cls(hidden_layer_sizes=(6, 5), activation=activation, max_iter=20,
                   random_state=0), X, y)
    net = from_sklearn(mlp)
    np.testing.assert_allclose(net.predict(X), _outputs(mlp, X), rtol=0, atol=F64_ATOL)
    net32 = from_sklearn(mlp, dtype=np.float32)
    np.testing.assert_allclose(net32.predict(X), _outputs(mlp, X), rtol=0, atol=F32_ATOL)

    back = to_sklearn(net32, classes=getattr(mlp, "classes_", None))
    assert type(back) is cls and back.activation == activation
    assert back.out_activation_ == mlp.out_activation_
    np.testing.assert_allclose(_outputs(back, X), _outputs(mlp, X), rtol=0, atol=F32_ATOL)
    if kind != "regression":
        np.testing.assert_array_equal(back.predict(X), mlp.predict(X))
    for p, q in zip(back.coefs_, mlp.coefs_):
        assert p.shape == q.shape


def test_fastbp_estimator_to_sklearn():
    X, y = _data("multiclass")
    y = np.array(["a", "b", "c"])[y]
    clf = _fit(MLPClassifier((8,), max_iter=20, random_state=0), X, y)
    mlp = to_sklearn(clf.network_, classes=clf.classes_)
    np.testing.assert_array_equal(mlp.predict(X), clf.predict(X))
    np.testing.assert_allclose(mlp.predict_proba(X), clf.predict_proba(X), atol=F64_ATOL)
    np.testing.assert_allclose(from_sklearn(mlp).predict(X), clf.predict_proba(X),
                               atol=F64_ATOL)


def test_two_way_softmax_becomes_one_logistic_output():
    X = np.random.default_rng(0).normal(size=(20, 3))
    net = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 2), fb.Softmax(), seed=0)
    mlp = to_sklearn(net)
    assert mlp.out_activation_ == "logistic" and mlp.n_outputs_ == 1
    np.testing.assert_allclose(mlp.predict_proba(X), net.predict(X), atol=F64_ATOL)


@pytest.mark.parametrize("net, match", [
    (fb.Sequential(fb.Linear(3, 4), fb.LeakyReLU(), fb.Linear(4, 1)), "no scikit-learn"),
    (fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 4), fb.ReLU(), fb.Linear(4, 1)),
     "one hidden activation"),
    (fb.Sequential(fb.Linear(3, 4), fb.Tanh()), "end with a Linear|ends in"),
])
def test_to_sklearn_refuses_what_sklearn_cannot_hold(net, match):
    with pytest.raises(ValueError, match=match):
        to_sklearn(net)


# -- the state dict layout, without PyTorch ---------------------------------------------------
def test_state_dict_round_trip_and_refusal():
    net = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Sequential(fb.Linear(4, 2, bias=False)),
                        fb.Softmax(), seed=0)
    sd = state_dict(net)
    assert list(sd) == ["0.weight", "0.bias", "2.weight"]
    other = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 2, bias=False),
                          fb.Softmax(), seed=1)
    load_state_dict(other, sd)
    np.testing.assert_array_equal(other.flat_params, net.flat_params)
    before = other.flat_params.copy()
    with pytest.raises(ValueError, match="shape"):
        load_state_dict(other, dict(sd, **{"2.weight": np.zeros((3, 4))}))
    with pytest.raises(ValueError, match="missing"):
        load_state_dict(other, {"0.weight": sd["0.weight"]})
    np.testing.assert_array_equal(other.flat_params, before)


class _Scale(fb.Node):
    """A user's node with a parameter of its own: y = s * x."""

    keeps_width = True

    def param_specs(self):
        return [("s", (2,))]

    def reset_parameters(self, rng):
        self.s[...] = rng.normal(size=2)

    def _apply(self, x, train):
        return x * self.s, x

    def _backprop(self, x, dy, need_dx=True):
        self.ds[...] = (dy * x).sum(axis=0)
        return dy * self.s


def _gated(seed):
    glu = fb.Product(fb.Sequential(fb.Linear(4, 3)),
                     fb.Sequential(fb.Sequential(fb.Linear(4, 3, bias=False)), fb.Sigmoid()))
    return fb.Sequential(glu, fb.Linear(3, 2), _Scale(), fb.Softmax(), seed=seed)


def test_state_dict_holds_every_parameter():
    net = _gated(0)
    sd = state_dict(net)
    assert list(sd) == ["0.a.0.weight", "0.a.0.bias", "0.b.0.weight", "1.weight", "1.bias",
                        "2.s"]
    assert sum(v.size for v in sd.values()) == net.flat_params.size
    np.testing.assert_array_equal(np.concatenate([v.ravel() for v in sd.values()]),
                                  net.flat_params)
    other = _gated(1)
    load_state_dict(other, sd)
    np.testing.assert_array_equal(other.flat_params, net.flat_params)
    before = other.flat_params.copy()
    with pytest.raises(ValueError, match="missing.*0.b.0.weight"):
        load_state_dict(other, {k: v for k, v in sd.items() if k != "0.b.0.weight"})
    np.testing.assert_array_equal(other.flat_params, before)


def test_to_torch_refuses_a_product_and_points_to_state_dict():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"Product has no PyTorch module.*state_dict\(net\)"):
        to_torch(_gated(0))


def test_from_torch_refuses_parameters_it_would_drop():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Scaled(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Linear(3, 2))
            self.scale = nn.Parameter(torch.ones(2))
            self.register_buffer("count", torch.zeros(1))

        def forward(self, x):
            return super().forward(x) * self.scale

    with pytest.raises(ValueError, match=r"leave out \['scale', 'count'\]"):
        from_torch(Scaled())


def test_missing_torch_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    net = fb.Sequential(fb.Linear(2, 2), seed=0)
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
        to_torch(net)


# -- PyTorch ----------------------------------------------------------------------------------
def _torch_net(torch, dtype):
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(),
        nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 8), nn.ELU(0.5),
        nn.Sequential(nn.Linear(8, 8, bias=False), nn.GELU()), nn.Linear(8, 8), nn.Softplus(),
        nn.Linear(8, 8), nn.RReLU(0.1, 0.3), nn.Identity(), nn.Linear(8, 4), nn.Softmax(dim=-1),
    ).to(dtype).eval()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_round_trip(dtype):
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, dtype)
    tnet = _torch_net(torch, tdt)
    X = np.random.default_rng(0).normal(size=(30, 5)).astype(dtype)
    with torch.no_grad():
        expected = tnet(torch.from_numpy(X)).numpy()
    net = from_torch(tnet)
    assert net.dtype == np.dtype(dtype)
    atol = F32_ATOL if dtype == "float32" else F64_ATOL
    np.testing.assert_allclose(net.predict(X), expected, rtol=0, atol=atol)

    back = to_torch(net).eval()
    with torch.no_grad():
        again = back(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(again, expected, rtol=0, atol=atol)
    sd = back.state_dict()
    assert list(sd) == list(state_dict(net))
    for k, v in state_dict(net).items():
        np.testing.assert_array_equal(sd[k].numpy(), v)


def test_torch_after_fastbp_training():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    tnet = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=1))
    X, y = _data("multiclass")
    X = X.astype(np.float32)
    net = from_torch(tnet)
    fb.fit(net, X, y, fb.KL(), fb.Adam(lr=0.01), batch_size=16, epochs=5, progress=False)
    back = to_torch(net)
    with torch.no_grad():
        out = back(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out, net.predict(X), rtol=0, atol=F32_ATOL)
    # and the trained weights load into the original module through its state dict
    tnet.load_state_dict(back.state_dict())
    with torch.no_grad():
        np.testing.assert_allclose(tnet(torch.from_numpy(X)).numpy(), out, atol=F32_ATOL)


def test_from_torch_refuses_unsupported_modules():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    with pytest.raises(ValueError, match="no fastbp node"):
        from_torch(nn.Sequential(nn.Linear(3, 3), nn.AlphaDropout(0.5)))
    with pytest.raises(ValueError, match="erf"):
        from_torch(nn.Sequential(nn.Linear(3, 3), nn.GELU(approximate="tanh")))
    with pytest.raises(TypeError, match="nn.Sequential"):
        from_torch(nn.Linear(3, 3))


def test_dropout_both_ways_same_outputs_in_evaluation(rng):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    tnet = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2)).double()
    net = from_torch(tnet)
    assert isinstance(net[2], fb.Dropout) and net[2].p == 0.3
    X = rng.normal(size=(6, 5))
    with torch.no_grad():
        np.testing.assert_allclose(net.eval().predict(X),
                                   tnet.eval()(torch.from_numpy(X)).numpy(), rtol=1e-12)
    back = to_torch(net)
    assert isinstance(back[2], nn.Dropout) and back[2].p == 0.3
    ones = np.ones((50, 5))
    assert not np.allclose(net.train().forward(ones), net.eval().predict(ones))  # it drops
