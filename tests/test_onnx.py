"""fastbp.onnx: exported networks and estimators run in onnxruntime and give fastbp's outputs."""

import sys
import warnings

import numpy as np
import pytest

import fastbp as fb

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fastbp.onnx import EMITTERS, to_onnx  # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

#: the issue's bound for float32; float64 is held much tighter
TOL = {np.float32: 1e-5, np.float64: 1e-12}
#: fastbp's public node classes that cannot be exported, and why
NOT_EXPORTABLE = {"VectorActivation": "a user's function and Jacobian"}

DTYPES = (np.float32, np.float64)


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _check(net, X, tol=None, opset=None):
    """Export net, run it in onnxruntime on X, compare with net.predict."""
    X = np.ascontiguousarray(X, dtype=net.dtype)
    Y, = _run(to_onnx(net, opset=opset), {"input": X})
    P = net.predict(X)
    assert Y.dtype == P.dtype and Y.shape == P.shape
    tol = TOL[net.dtype.type] if tol is None else tol
    np.testing.assert_allclose(Y, P, rtol=tol, atol=tol)
    return Y


def _activations():
    return [fb.Identity(), fb.Sigmoid(), fb.Tanh(), fb.ReLU(), fb.ReLU(grad_at_zero=0.0),
            fb.LeakyReLU(), fb.LeakyReLU(0.3), fb.RReLU(), fb.RReLU(0.1, 0.7), fb.ELU(),
            fb.ELU(0.3), fb.Softplus(), fb.GELU(), fb.Softmax()]


# Inputs that reach every branch: large of both signs (softplus, sigmoid saturate), small
# (expm1, log1p), zeros (the kinks).
EDGE = np.array([-60.0, -20.0, -3.0, -1.0, -1e-3, -1e-9, 0.0, 1e-9, 1e-3, 0.5, 2.0, 30.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("node", _activations(), ids=repr)
def test_activation_after_linear(node, dtype, rng):
    net = fb.Sequential(fb.Linear(5, 7), node, dtype=dtype, seed=1)
    _check(net, 3 * rng.normal(size=(11, 5)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("node", _activations(), ids=repr)
def test_activation_alone_on_edge_values(node, dtype):
    # an activation-only network has no fixed width: the ONNX input is (N, ?)
    net = fb.Sequential(node, dtype=dtype)
    model = to_onnx(net)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and not dims[1].dim_param and not dims[1].dim_value
    _check(net, np.stack([EDGE, -EDGE[::-1]]))


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_on_a_fine_grid(dtype, opset):
    # float64 builds erf from Exp (onnxruntime has Erf in float32 only): as exact as fastbp's
    z = np.concatenate([np.linspace(-40, 40, 4000), np.geomspace(1e-300, 10, 500),
                        -np.geomspace(1e-300, 10, 500)])
    net = fb.Sequential(fb.GELU(), dtype=dtype)
    _check(net, z.reshape(-1, 10), opset=opset)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias, dtype, rng):
    net = fb.Sequential(fb.Linear(6, 4, bias=bias, init="torch"), dtype=dtype, seed=2)
    model = to_onnx(net)
    assert [n.op_type for n in model.graph.node] == ["Gemm"]
    assert len(model.graph.node[0].input) == (3 if bias else 2)
    _check(net, rng.normal(size=(9, 6)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_product(dtype, rng):
    glu = fb.Product(fb.Sequential(fb.Linear(4, 6)),
                     fb.Sequential(fb.Linear(4, 6), fb.Sigmoid()))
    net = fb.Sequential(glu, fb.Tanh(), fb.Linear(6, 3), fb.Softmax(), dtype=dtype, seed=3)
    model = to_onnx(net)
    assert "Mul" in [n.op_type for n in model.graph.node]
    _check(net, rng.normal(size=(8, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nested_products_and_sequentials(dtype, rng):
    # a Product inside a branch of a Product, a single node as a branch, nested Sequentials
    inner = fb.Product(fb.Linear(3, 4), fb.Sequential(fb.Linear(3, 4), fb.GELU()))
    outer = fb.Product(fb.Sequential(fb.Linear(5, 3), fb.Tanh(), inner),
                       fb.Sequential(fb.Sequential(fb.Linear(5, 4)), fb.Sigmoid()))
    net = fb.Sequential(fb.Sequential(outer, fb.ELU()), fb.Linear(4, 2), dtype=dtype, seed=4)
    model = to_onnx(net)
    inits = {i.name for i in model.graph.initializer}
    assert set(net.param_names) <= inits  # parameters keep fastbp's names
    _check(net, rng.normal(size=(7, 5)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_product(dtype, rng):
    net = fb.Sequential(fb.Linear(3, 8), fb.PairProduct(), dtype=dtype, seed=5)
    _check(net, rng.normal(size=(6, 3)))
    _check(fb.Sequential(fb.PairProduct(), dtype=dtype), EDGE.reshape(2, 6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_product_with_signs_and_zeros(dtype):
    # integer exponents (negative ones too) on negative inputs and zeros: fastbp's values,
    # which exp(log(z) @ alpha) would not give
    alpha = np.array([[1.0, 2.0, 0.0, 3.0], [1.0, 0.0, 3.0, -1.0], [0.0, 1.0, 2.0, 0.0]])
    z = np.array([[-2.0, 3.0, 0.0], [-1.5, -0.5, 2.0], [0.0, 1.0, -3.0], [0.7, -1.1, 0.0]])
    net = fb.Sequential(fb.PowerProduct(alpha), dtype=dtype)
    Y = _check(net, z)
    assert Y[0, 0] < 0 and Y[0, 3] < 0 and Y[1, 3] > 0  # the signs of powers of negatives


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_product_fractional_exponents(dtype, rng):
    alpha = rng.uniform(-1.5, 2.5, size=(4, 3))
    net = fb.Sequential(fb.Linear(5, 4), fb.Softplus(), fb.PowerProduct(alpha), fb.Linear(3, 2),
                        dtype=dtype, seed=6)
    _check(net, rng.normal(size=(9, 5)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("node", [fb.MaxOver([[0, 1], [1, 2, 3, 6], [4], [6, 0]]),
                                  fb.MaxPool1d(2), fb.MaxPool1d(3, stride=2)], ids=repr)
def test_max(node, dtype, rng):
    net = fb.Sequential(fb.Linear(4, 7), node, dtype=dtype, seed=7)
    _check(net, rng.normal(size=(10, 4)))
    ties = np.array([[1.0, 1.0, -2.0, 5.0, 5.0, 0.0, 0.0], [-1.0] * 7])
    _check(fb.Sequential(fb.Linear(7, 7, init="zeros"), node, dtype=dtype), ties)
    net = fb.Sequential(node, dtype=dtype)  # the width from the MaxOver's indices, or none
    if isinstance(node, fb.MaxPool1d):
        with pytest.raises(ValueError, match="node 0 .*MaxPool1d.*known input width"):
            to_onnx(net)
    else:
        _check(net, ties)


def _every_node(dtype):
    """One network holding every exportable node kind."""
    net = fb.Sequential(
        fb.Linear(6, 8), fb.Sigmoid(), fb.Linear(8, 8, bias=False), fb.Tanh(),
        fb.Product(fb.Sequential(fb.Linear(8, 8), fb.ReLU()),
                   fb.Sequential(fb.Linear(8, 8), fb.LeakyReLU(0.2))),
        fb.Sequential(fb.Linear(8, 8), fb.RReLU(), fb.Linear(8, 8), fb.ELU(0.5)),
        fb.Linear(8, 8), fb.GELU(), fb.Identity(), fb.MaxPool1d(2),
        fb.Linear(4, 6), fb.Softplus(), fb.PowerProduct(np.full((6, 4), 0.5)),
        fb.Linear(4, 6), fb.PairProduct(), fb.MaxOver([[0, 1], [1, 2], [0, 2]]),
        fb.Linear(3, 3), fb.Exp(), fb.Dropout(0.5), fb.Linear(3, 5), fb.LayerNorm(5),
        fb.BatchNorm1d(5), fb.Linear(5, 3), fb.LayerNorm(3, affine=False), fb.Softmax(),
        dtype=dtype, seed=8)
    rng = np.random.default_rng(3)
    for node in net.walk():  # statistics and gains other than their initial 0 and 1
        if isinstance(node, fb.BatchNorm1d):
            node.running_mean[...] = rng.normal(size=node.n)
            node.running_var[...] = rng.uniform(0.5, 2.0, size=node.n)
        if isinstance(node, (fb.BatchNorm1d, fb.LayerNorm)) and node.affine:
            node.g[...] = rng.uniform(0.5, 2.0, size=node.n)
            node.b[...] = rng.normal(size=node.n)
    return net


@pytest.mark.parametrize("opset", [13, 17, 18, 20, 21])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_node_in_one_network_and_opsets(dtype, opset, rng):
    net = _every_node(dtype)
    kinds = {type(n) for n in net.walk()}
    assert kinds == set(EMITTERS)  # the network holds every exportable kind
    model = to_onnx(net, opset=opset)
    ops = {n.op_type for n in model.graph.node}
    assert ("Gelu" in ops) == (opset >= 20 and dtype == np.float32)
    assert model.opset_import[0].version == opset
    _check(net, rng.normal(size=(12, 6)), opset=opset)


def test_every_public_node_kind_exports_or_is_listed():
    # a new node kind adds its entry to fastbp.onnx.EMITTERS (or here, saying why not)
    names = {c.__name__ for c in EMITTERS}
    missing = sorted(set(fb.Node.builtin) - names - set(NOT_EXPORTABLE))
    assert not missing, f"add ONNX emitters for {missing} to fastbp.onnx.EMITTERS"


@pytest.mark.parametrize("dtype", DTYPES)
def test_symbolic_batch_and_training_mode(dtype, rng):
    net = fb.Sequential(fb.Linear(3, 5), fb.RReLU(), fb.Linear(5, 2), dtype=dtype, seed=9)
    net.train()  # the export is predict's evaluation mode whatever the network's mode
    model = to_onnx(net)
    x, y = model.graph.input[0], model.graph.output[0]
    assert (x.name, y.name) == ("input", "output")
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["N", 3]
    assert [d.dim_param or d.dim_value for d in y.type.tensor_type.shape.dim] == ["N", 2]
    assert x.type.tensor_type.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for rows in (1, 17):
        _check(net, rng.normal(size=(rows, 3)))


def test_save_and_reload(tmp_path, rng):
    net = _every_node(np.float32)
    path = tmp_path / "net.onnx"
    model = to_onnx(net, path=path, name="every node")
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.graph.name == "every node" and loaded.producer_name == "fastbp"
    X = rng.normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(loaded, {"input": X})[0], _run(model, {"input": X})[0])
    np.testing.assert_allclose(_run(loaded, {"input": X})[0], net.predict(X), rtol=1e-5,
                               atol=1e-5)


# -- errors ------------------------------------------------------------------------------------
def _square(z):
    return z * z


def _square_jacobian(z):
    return np.diag(2 * z)


class MyTanh(fb.Tanh):
    """A user's subclass: it may compute otherwise, so it needs an emitter of its own."""


def test_unsupported_nodes_are_named_with_their_position():
    va = fb.VectorActivation(_square, _square_jacobian)
    net = fb.Sequential(fb.Linear(3, 3), fb.Product(fb.Sequential(fb.Linear(3, 2), va),
                                                    fb.Linear(3, 2)), seed=0)
    with pytest.raises(ValueError, match=r"node 1\.a\.1 \(VectorActivation\(_square\)\) has no "
                                         r"ONNX export.*fastbp\.onnx\.EMITTERS"):
        to_onnx(net)
    with pytest.raises(ValueError, match=r"node 2 \(MyTanh\(\)\)"):
        to_onnx(fb.Sequential(fb.Linear(3, 3), fb.Tanh(), MyTanh(), seed=0))


def test_bad_arguments(rng):
    net = fb.Sequential(fb.Linear(2, 2), seed=0)
    with pytest.raises(TypeError, match="fastbp.Sequential or a fitted"):
        to_onnx(fb.Tanh())
    top = onnx.defs.onnx_opset_version()
    for opset in (12, top + 1, 17.0, True):
        with pytest.raises(ValueError, match=f"opset must be an integer from 13 to {top}"):
            to_onnx(net, opset=opset)
    with pytest.raises(ValueError, match="options apply to classifiers only"):
        to_onnx(net, options={"zipmap": False})
    clf = _fit(MLPClassifier((3,), max_iter=5, random_state=0), rng.normal(size=(20, 2)),
               np.arange(20) % 2)
    with pytest.raises(ValueError, match="unknown options"):
        to_onnx(clf, options={"nocl": True})
    with pytest.raises(ValueError, match="zipmap.*True or False"):
        to_onnx(clf, options={"zipmap": "columns"})
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        to_onnx(MLPClassifier())


def test_without_onnx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "fastbp\[onnx\]"'):
        to_onnx(fb.Sequential(fb.Linear(2, 2), seed=0))


# -- estimators --------------------------------------------------------------------------------
def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def _targets(X):
    n = X.shape[0]
    return {"multiclass": np.arange(n) % 3, "binary": np.arange(n) % 2,
            "binary_5_7": 5 + 2 * (X[:, 0] > 0), "strings": np.array(["ant", "bee", "cat",
                                                                       "dog"])[np.arange(n) % 4],
            "multilabel": (X[:, :3] > 0).astype(int),
            "integral_floats": (np.arange(n) % 3).astype(float)}


def _unzip(maps, classes):
    assert isinstance(maps, list) and all(list(m) == list(classes) for m in maps)
    return np.array([[m[c] for c in classes] for m in maps])


@pytest.mark.parametrize("zipmap", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["multiclass", "binary", "binary_5_7", "strings", "multilabel",
                                  "integral_floats"])
def test_classifier(kind, dtype, zipmap, rng):
    X = rng.normal(size=(60, 4)).astype(dtype)
    y = _targets(X)[kind]
    clf = _fit(MLPClassifier((6,), activation="tanh", max_iter=40, random_state=0), X, y)
    assert clf.network_.dtype == dtype
    model = to_onnx(clf, options={"zipmap": zipmap})
    assert model.graph.input[0].name == "X"
    names = ["output_label", "output_probability"] if zipmap else ["label", "probabilities"]
    assert [o.name for o in model.graph.output] == names
    label, proba = _run(model, {"X": X})
    expected = clf.predict(X)
    assert label.shape == expected.shape
    if kind == "strings":
        assert label.dtype == object
    else:
        assert label.dtype == np.int64
    np.testing.assert_array_equal(label, expected)
    classes = list(range(3)) if kind == "multilabel" else clf.classes_.tolist()
    if zipmap:  # float32 maps, whatever the network's dtype (ZipMap's only type)
        proba, tol = _unzip(proba, classes), 1e-6 if dtype == np.float32 else 1e-7
    else:
        assert proba.dtype == dtype
        tol = TOL[dtype]
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_outputs, loss", [(1, "squared_error"), (2, "squared_error"),
                                             (1, "poisson")])
def test_regressor(n_outputs, loss, dtype, rng):
    X = rng.normal(size=(50, 3)).astype(dtype)
    y = X[:, 0] ** 2 if n_outputs == 1 else np.stack([X[:, 0] ** 2, X[:, 1] - X[:, 2]], 1)
    reg = _fit(MLPRegressor(hidden_layer_sizes=(8,), activation="gelu", max_iter=40, loss=loss,
                            random_state=0), X, y)
    model = to_onnx(reg)
    assert [o.name for o in model.graph.output] == ["variable"]
    variable, = _run(model, {"X": X})
    assert variable.shape == (50, n_outputs) and variable.dtype == dtype
    np.testing.assert_allclose(variable.reshape(reg.predict(X).shape), reg.predict(X),
                               rtol=TOL[dtype], atol=TOL[dtype])


def _signature(model):
    """(name, type) of each graph output, the type as ONNX prints it."""
    return [(o.name, onnx.helper.printable_type(o.type).split(",")[0]) for o in
            model.graph.output]


@pytest.mark.parametrize("zipmap", [True, False])
@pytest.mark.parametrize("kind", ["multiclass", "binary", "strings"])
def test_outputs_as_skl2onnx_gives_them_for_sklearn(kind, zipmap, rng):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = _targets(X)[kind]
    options = {"zipmap": zipmap}
    ours = to_onnx(_fit(MLPClassifier((5,), max_iter=20, random_state=0), X, y),
                   options=options)
    sk = _fit(SkMLPClassifier((5,), max_iter=20, random_state=0), X, y)
    theirs = skl2onnx.to_onnx(sk, X[:1], options={id(sk): options})
    assert _signature(ours) == _signature(theirs)
    assert [i.name for i in ours.graph.input] == [i.name for i in theirs.graph.input]
    if zipmap:  # the maps' key and value types
        assert ours.graph.output[1].type == theirs.graph.output[1].type
    a, b = _run(ours, {"X": X}), _run(theirs, {"X": X})
    assert [type(v) for v in a] == [type(v) for v in b]
    assert a[0].dtype == b[0].dtype


def test_regressor_outputs_as_skl2onnx(rng):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPRegressor as SkMLPRegressor
    X = rng.normal(size=(40, 3)).astype(np.float32)
    ours = to_onnx(_fit(MLPRegressor(hidden_layer_sizes=(5,), max_iter=20), X, X[:, 0]))
    theirs = skl2onnx.to_onnx(_fit(SkMLPRegressor(hidden_layer_sizes=(5,), max_iter=20), X,
                                   X[:, 0]), X[:1])
    assert _signature(ours) == _signature(theirs)
    assert _run(ours, {"X": X})[0].shape == _run(theirs, {"X": X})[0].shape == (40, 1)


def test_classifier_labels_without_onnx_type(rng):
    X = rng.normal(size=(20, 2))
    clf = _fit(MLPClassifier((3,), max_iter=5, random_state=0), X, np.arange(20) % 2)
    clf.classes_ = np.array([0.5, 1.5])  # as if fitted on non-integral float labels
    with pytest.raises(ValueError, match="classes_ of dtype float64.*integers or strings"):
        to_onnx(clf)
