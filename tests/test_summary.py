"""Describing and showing a network and its training: ``Sequential.summary``, ``repr``,
``History.plot``; and the scikit-learn adapter's hidden activations as scikit-learn takes them."""

import sys

import numpy as np
import pytest
from conftest import build_every_kind_net, every_kind_input

import fastbp as fb
from fastbp.sklearn import MLPClassifier, MLPRegressor


def small_net(dtype=np.float64):
    return fb.Sequential(fb.Linear(4, 8), fb.Tanh(), fb.Linear(8, 3), fb.Softmax(),
                         dtype=dtype, seed=0)


# -- summary -----------------------------------------------------------------------------------
def test_summary_counts_each_layer_and_the_total():
    s = small_net().summary()
    assert [r.name for r in s.rows] == ["0", "1", "2", "3"]
    assert [r.layer for r in s.rows] == ["Linear(4, 8)", "Tanh()", "Linear(8, 3)", "Softmax()"]
    assert [r.width for r in s.rows] == [8, 8, 3, 3]
    assert [r.params for r in s.rows] == [4 * 8 + 8, 0, 8 * 3 + 3, 0]
    assert s.total_params == 4 * 8 + 8 + 8 * 3 + 3
    text = str(s)
    assert repr(s) == text
    assert "4 inputs, 3 outputs, float64" in text
    assert text.endswith(f"total: {s.total_params} parameters, {8 * s.total_params} bytes")
    for r in s.rows:  # one line per node: its name, description, width and count
        assert any(line.split() == [r.name, *r.layer.split(), str(r.width), str(r.params)]
                   for line in text.splitlines()), (r, text)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_summary_of_a_nested_network_matches_the_network(dtype):
    net = build_every_kind_net(dtype)
    s = net.summary()
    # Every node once (the nodes of a Product's branches too), named as its parameters are.
    assert len(s.rows) == sum(not isinstance(n, fb.Sequential) for n in net.walk())
    assert {n.rpartition(".")[0] for n in net.param_names} <= {r.name for r in s.rows}
    top = [r for r in s.rows if r.depth == 0]
    assert len(top) == len(net)
    # Totals: the flat buffer; per node: its parameter arrays (sub-networks' included).
    assert s.total_params == net.flat_params.size == sum(r.params for r in top)
    for r in s.rows:
        mine = [p for name, p in zip(net.param_names, net.params)
                if name.startswith(r.name + ".")]
        assert r.params == sum(p.size for p in mine), r
    # Output widths: those of a forward pass, node by node.
    x = every_kind_input().astype(dtype)
    for r, node in zip(top, net.nodes):
        x = node._apply(x, False)[0]
        assert r.width == x.shape[1], r
    product = next(r for r in top if r.layer == "Product")
    inner = [r for r in s.rows if r.name.startswith(product.name + ".")]
    assert [r.name for r in inner] == [f"{product.name}.{c}.{k}" for c in "ab" for k in (0, 1)]
    assert all(r.depth == 1 for r in inner)
    text = str(s)
    assert f"{s.total_params * np.dtype(dtype).itemsize:,} bytes" in text
    assert "  Linear(9, 10)" in text  # nested rows indented under their node


def test_summary_with_unknown_widths():
    s = fb.Sequential(fb.PairProduct(), fb.Tanh(), seed=0).summary()
    assert [r.width for r in s.rows] == [None, None] and s.total_params == 0
    assert "? inputs, ? outputs" in str(s)


# -- repr --------------------------------------------------------------------------------------
NAMESPACE = {"np": np, **{k: getattr(fb, k) for k in fb.__all__}}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_repr_of_a_small_network_is_one_constructor_line(dtype):
    net = small_net(dtype)
    r = repr(net)
    assert "\n" not in r and r.startswith("Sequential(Linear(4, 8), Tanh(),")
    back = eval(r, NAMESPACE)  # a valid description: it builds the same architecture
    assert repr(back) == r and back.dtype == net.dtype
    assert [p.shape for p in back.params] == [p.shape for p in net.params]


def test_repr_of_a_long_nested_network_is_one_node_a_line():
    net = build_every_kind_net()
    lines = repr(net).splitlines()
    assert lines[0] == "Sequential(" and lines[-1] == "  Softmax())"
    assert len(lines) == len(net) + 1
    assert "  Product(Sequential(Linear(9, 10), Identity()), " \
           "Sequential(Linear(9, 10), Sigmoid()))," in lines
    assert "dtype" not in repr(net)  # float64, the default
    assert all(line.count("dtype=np.float32") == (2 if line.startswith("  Product(") else 0)
               for line in repr(build_every_kind_net(np.float32)).splitlines()[1:-1])


# -- History.plot ------------------------------------------------------------------------------
def history(accuracy=True):
    h = fb.History()
    h.loss, h.val_loss = [0.9, 0.5, 0.3], [1.0, 0.6, 0.45]
    if accuracy:
        h.accuracy, h.val_accuracy = [0.5, 0.8, 0.9], [0.4, 0.7, 0.85]
    return h


@pytest.fixture
def pyplot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def curves(axes):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in axes.lines}


def test_plot_draws_losses_and_accuracies(pyplot):
    h = history()
    ax = h.plot()
    assert curves(ax) == {"loss": ([1, 2, 3], h.loss), "val_loss": ([1, 2, 3], h.val_loss)}
    assert len(ax.figure.axes) == 2
    acc = ax.figure.axes[1]
    assert curves(acc) == {"accuracy": ([1, 2, 3], h.accuracy),
                           "val_accuracy": ([1, 2, 3], h.val_accuracy)}
    assert acc.get_ylim()[0] == 0 and ax.get_xlabel() == "epoch"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["loss", "val_loss", "accuracy", "val_accuracy"]
    colours = [line.get_color() for a in ax.figure.axes for line in a.lines]
    assert len(set(colours)) == 4


def test_plot_without_accuracy_on_a_given_axes(pyplot):
    fig, given = pyplot.subplots()
    h = history(accuracy=False)
    h.val_loss = []
    ax = h.plot(ax=given)
    assert ax is given and fig.axes == [given]
    assert curves(ax) == {"loss": ([1, 2, 3], h.loss)}


def test_plot_of_an_empty_history_raises(pyplot):
    with pytest.raises(ValueError, match="no epochs"):
        fb.History().plot()
    assert pyplot.get_fignums() == []


def test_plot_without_matplotlib_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "fastbp\[plot\]"'):
        history().plot()


# -- the scikit-learn adapter's hidden activation ---------------------------------------------
def sk_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 3)), np.arange(30) % 3


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_softmax_hidden_activation_is_refused_as_scikit_learn_does(Estimator):
    from sklearn.utils._param_validation import InvalidParameterError

    X, y = sk_data()
    est = Estimator(hidden_layer_sizes=(4,), activation="softmax", max_iter=5)
    with pytest.raises(InvalidParameterError,
                       match=rf"The 'activation' parameter of {Estimator.__name__} must be a "
                             r"str among \{.*'relu'.*\}\. Got 'softmax' instead") as err:
        est.fit(X, y)
    assert isinstance(err.value, ValueError)
    assert "softmax" not in str(err.value).partition("Got")[0]  # not offered as a choice
    assert not hasattr(est, "network_")  # refused before anything was built


def test_every_offered_hidden_activation_is_accepted_and_elementwise():
    from fastbp.nodes import _Scalar
    from fastbp.sklearn import _HIDDEN_ACTIVATIONS, _hidden_node

    for name in _HIDDEN_ACTIVATIONS + ("sigmoid", "Tanh"):  # (training: tests/test_sklearn.py)
        MLPClassifier((4,), activation=name)._check_params()
        assert isinstance(_hidden_node(name), _Scalar), name
