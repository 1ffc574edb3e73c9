"""Messages for the classic mistakes: each names the cause and the fix, before anything changes."""

import warnings

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

import fastbp as fb

N_ROWS, N_IN, N_OUT = 50, 4, 3


def _data():
    X = np.random.default_rng(0).normal(size=(N_ROWS, N_IN))
    return X, np.arange(N_ROWS) % N_OUT


def _net(*end):
    return fb.Sequential(fb.Linear(N_IN, 8), fb.Tanh(), fb.Linear(8, N_OUT), *end, seed=0)


def _fit(net, X, d, loss=None, opt=None, **kw):
    return fb.fit(net, X, d, fb.KL() if loss is None else loss,
                  fb.SGD(lr=0.1) if opt is None else opt, epochs=3, progress=False, **kw)


# -- KL without Softmax -----------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["auto", False])
def test_kl_without_softmax_names_the_likely_cause(engine):
    X, y = _data()
    net = _net()
    with pytest.warns(UserWarning, match=r"KL expects probability outputs: end the network "
                                         r"with fb\.Softmax\(\) \(it ends in Linear\)"):
        with pytest.raises(fb.TrainingError, match=r"not finite.*likely cause: KL expects "
                                                   r"probability outputs.*fb\.Softmax\(\)"):
            _fit(net, X, y, engine=engine)


def test_binary_kl_without_sigmoid_warns_and_the_right_ending_does_not():
    X, _ = _data()
    d = (X[:, 0] > 0).astype(float)
    net = fb.Sequential(fb.Linear(N_IN, 1), fb.Tanh(), seed=0)
    with pytest.warns(UserWarning, match=r"BinaryKL expects outputs in \(0, 1\): end the "
                                         r"network with fb\.Sigmoid\(\)"):
        with pytest.raises(fb.TrainingError):
            _fit(net, X, d, fb.BinaryKL(), engine=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(_net(fb.Softmax()), X, _data()[1], engine=False)
        _fit(fb.Sequential(fb.Linear(N_IN, 1), fb.Sigmoid(), seed=0), X, d, fb.BinaryKL(),
             engine=False)
        _fit(fb.Sequential(_net(), fb.Sequential(fb.Softmax()), seed=0), X, _data()[1],
             engine=False)  # a Softmax inside a nested Sequential ends the network too


# -- a class where an instance belongs --------------------------------------------------------
@pytest.mark.parametrize("loss, opt, name", [
    (fb.KL(), fb.Adam, "Adam"), (fb.KL(), fb.SGD, "SGD"), (fb.KL, fb.Adam(), "KL"),
])
def test_a_class_for_an_instance_says_so(loss, opt, name):
    X, y = _data()
    net = _net(fb.Softmax())
    before = net.flat_params.copy()
    with pytest.raises(TypeError, match=rf"pass fb\.{name}\(\.\.\.\) \(an instance\), not the "
                                        rf"class fb\.{name}"):
        fb.fit(net, X, y, loss, opt, epochs=2, progress=False)
    np.testing.assert_array_equal(net.flat_params, before)


def test_not_a_divergence_or_optimizer():
    X, y = _data()
    with pytest.raises(TypeError, match=r"optimizer must be a fastbp Optimizer, got 0\.1"):
        fb.fit(_net(fb.Softmax()), X, y, fb.KL(), 0.1, progress=False)


# -- labels as a column -----------------------------------------------------------------------
def test_label_column_suggests_ravel():
    X, y = _data()
    net = _net(fb.Softmax())
    with pytest.raises(ValueError, match=r"d has shape \(50, 1\).*3 outputs.*pass d\.ravel\(\)"):
        _fit(net, X, y.reshape(-1, 1))
    with pytest.raises(ValueError, match=r"pass d\.ravel\(\)"):
        fb.KL()(net.predict(X), y.reshape(-1, 1))
    # a one-output network keeps taking a column of targets
    assert fb.L2()(np.zeros((N_ROWS, 1)), np.ones((N_ROWS, 1))) == 0.5


# -- scipy.sparse and pandas ------------------------------------------------------------------
def test_sparse_input_says_toarray():
    sparse = pytest.importorskip("scipy.sparse")
    X, y = _data()
    net = _net(fb.Softmax())
    before = net.flat_params.copy()
    S = sparse.csr_matrix(X)
    for call in (lambda: net.forward(S), lambda: net.predict(S), lambda: _fit(net, S, y),
                 lambda: _fit(net, X, y, validation=(S, y))):
        with pytest.raises(TypeError, match=r"X is a scipy\.sparse matrix \(shape \(50, 4\)\)"
                                            r".*pass X\.toarray\(\)"):
            call()
    np.testing.assert_array_equal(net.flat_params, before)


def test_pandas_numbers_pass_nullable_dtypes_too():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    net = _net(fb.Softmax())
    df = pd.DataFrame(X, columns=list("abcd"))
    np.testing.assert_array_equal(net.predict(df), net.predict(X))
    X2 = np.column_stack([X[:, :3], np.arange(N_ROWS)])
    nullable = pd.DataFrame(X2, columns=list("abcd")).astype({"a": "Float64", "d": "Int64"})
    np.testing.assert_array_equal(net.predict(nullable), net.predict(X2))
    h1 = _fit(_net(fb.Softmax()), X, y, engine=False)
    h2 = _fit(_net(fb.Softmax()), df, pd.Series(y, dtype="Int64"), engine=False)
    assert h1.loss == h2.loss


def test_pandas_missing_values_are_named():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    net = _net(fb.Softmax())
    before = net.flat_params.copy()
    df = pd.DataFrame(X, columns=list("abcd")).astype("Float64")
    df.iloc[3, 2] = pd.NA
    with pytest.raises(ValueError, match=r"X holds missing values \(pandas NA\) at row 3, "
                                         r"column 2"):
        net.predict(df)
    with pytest.raises(ValueError, match=r"X holds missing values \(pandas NA\) at row 3, "
                                         r"column 2"):
        _fit(net, df, y)
    labels = pd.Series(y, dtype="Int64")
    labels[5] = pd.NA
    with pytest.raises(ValueError, match=r"d holds missing values \(pandas NA\) at index 5"):
        _fit(net, X, labels)
    np.testing.assert_array_equal(net.flat_params, before)


def test_pandas_text_column_is_named():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    df = pd.DataFrame(X, columns=list("abcd")).assign(c=["x"] * N_ROWS)
    with pytest.raises(TypeError, match=r"X must hold real numbers; column 2 \('c'\) has "
                                        r"dtype .*'x'"):
        _net(fb.Softmax()).predict(df)


def test_object_array_names_the_first_non_number():
    X = np.ones((2, N_IN), dtype=object)
    X[1, 2] = "seven"
    with pytest.raises(TypeError, match=r"real numbers, got dtype object \('seven' at row 1, "
                                        r"column 2\)"):
        _net().predict(X)


# -- read-only parameters ---------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["auto", False])
def test_read_only_parameters_are_refused_before_any_work(engine):
    X, y = _data()
    net = _net(fb.Softmax())
    net.flat_params.setflags(write=False)
    grads = net.flat_grads.copy()
    with pytest.raises(ValueError, match=r"net\.flat_params is read-only.*net\.astype"):
        _fit(net, X, y, opt=fb.Adam(), engine=engine)
    np.testing.assert_array_equal(net.flat_grads, grads)  # no forward or backward ran
    with pytest.raises(ValueError, match=r"net\.flat_params is read-only"):
        net.train_step(X, y, fb.KL(), fb.SGD(lr=0.1))
    copy = net.astype(net.dtype)
    _fit(copy, X, y, engine=engine)  # the suggested fix trains


# -- datasets.split ---------------------------------------------------------------------------
def test_split_does_not_stratify_a_regression_target():
    X = np.zeros((200, 2))
    r = np.random.default_rng(0).normal(size=200)
    Xtr, Xte, rtr, rte = fb.datasets.split(X, r, seed=0)
    expected = train_test_split(X, r, test_size=0.25, random_state=0)
    np.testing.assert_array_equal(rte, expected[3])
    # floats are never taken for labels, even 0/1; stratify=True still forces it
    d = (r > 0).astype(float)
    np.testing.assert_array_equal(fb.datasets.split(X, d, seed=0)[3],
                                  train_test_split(X, d, random_state=0)[3])
    np.testing.assert_array_equal(fb.datasets.split(X, d, seed=0, stratify=True)[3],
                                  train_test_split(X, d, random_state=0, stratify=d)[3])
    with pytest.raises(ValueError, match="least populated class"):
        fb.datasets.split(X, r, stratify=True)


@pytest.mark.parametrize("kind", ["int", "bool", "str", "column"])
def test_split_stratifies_class_labels_by_default(kind):
    X, y = fb.datasets.digits()
    y = {"int": y, "bool": y == 2, "str": np.array(list("abcdefghij"))[y],
         "column": y.reshape(-1, 1)}[kind]
    got = fb.datasets.split(X, y, seed=0)
    expected = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_split_of_integers_that_cannot_stratify_does_not_fail():
    X = np.zeros((20, 1))
    y = np.arange(20)  # every value once: integer counts, not classes
    np.testing.assert_array_equal(fb.datasets.split(X, y, seed=0)[3],
                                  train_test_split(X, y, test_size=0.25, random_state=0)[3])
    with pytest.raises(ValueError, match=r"stratify must be 'auto', True or False"):
        fb.datasets.split(X, y, stratify="yes")


def test_a_node_class_for_a_node_says_so():
    with pytest.raises(TypeError, match=r"node 1: pass fb.Tanh\(...\) \(an instance\)"):
        fb.Sequential(fb.Linear(2, 2), fb.Tanh)
