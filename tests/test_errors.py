"""Bad input raises ValueError or TypeError naming the problem (the actual shape, dtype, the
position of a NaN or inf, the label out of range), before any state changes: a failed call
leaves the parameters (and gradients) exactly as they were."""

import re

import numpy as np
import pytest

import fastbp as fb


def _net(dtype=np.float64):
    return fb.Sequential(fb.Linear(4, 5), fb.Tanh(), fb.Linear(5, 3), fb.Softmax(),
                         dtype=dtype, seed=0)


def _nan_at(shape, pos, value=np.nan):
    X = np.ones(shape)
    X[pos] = value
    return X


# id: (call(net), exception type, message pattern)
BAD_CALLS = {
    "X width": (lambda n: n.forward(np.ones((5, 3))), ValueError,
                r"X has 3 columns but the network expects 4 \(shape \(5, 3\)\)"),
    "X 1-D width": (lambda n: n.forward(np.ones(6)), ValueError,
                    r"6 columns.*expects 4.*\(1, 6\)"),
    "X 3-D": (lambda n: n.forward(np.ones((2, 2, 4))), ValueError, r"2-D.*\(2, 2, 4\)"),
    "X no rows": (lambda n: n.forward(np.ones((0, 4))), ValueError, r"no rows.*\(0, 4\)"),
    "X object": (lambda n: n.forward(np.array([[1, None, 2, 3]], dtype=object)), TypeError,
                 r"real numbers.*object"),
    "X complex": (lambda n: n.forward(np.ones((2, 4), complex)), TypeError, r"complex128"),
    "X str": (lambda n: n.forward(np.array([["a", "b", "c", "d"]])), TypeError, r"<U1"),
    "X NaN": (lambda n: n.forward(_nan_at((3, 4), (1, 2))), ValueError,
              r"X contains NaN at row 1, column 2"),
    "X inf": (lambda n: n.forward(_nan_at((3, 4), (2, 0), np.inf)), ValueError,
              r"X contains inf at row 2, column 0"),
    "X -inf": (lambda n: n.predict(_nan_at((1, 4), (0, 3), -np.inf)), ValueError,
               r"inf at row 0, column 3"),
    "predict width": (lambda n: n.predict(np.ones((2, 7))), ValueError,
                      r"7 columns.*expects 4.*\(2, 7\)"),
    "label too large": (lambda n: n.loss_and_grad(np.ones((3, 4)), np.array([0, 3, 1]), fb.KL()),
                        ValueError, r"Target 3 is out of bounds.*\[0, 2\]"),
    "label negative": (lambda n: n.loss_and_grad(np.ones((3, 4)), np.array([0, -1, 1]),
                                                 fb.KL()), ValueError, r"Target -1"),
    "label float": (lambda n: n.loss_and_grad(np.ones((3, 4)), np.array([0.0, 1, 1]), fb.KL()),
                    TypeError, r"integers.*float64"),
    "labels rows": (lambda n: n.loss_and_grad(np.ones((3, 4)), np.array([0, 1]), fb.KL()),
                    ValueError, r"\(3\).*\(2\)"),
    "d rows": (lambda n: n.loss_and_grad(np.ones((3, 4)), np.ones((2, 3)) / 3, fb.KL()),
               ValueError, r"\(3\).*\(2\)"),
    "d width": (lambda n: n.loss_and_grad(np.ones((3, 4)), np.ones((3, 2)), fb.L2()),
                ValueError, r"d has 2 columns but the output has 3 \(shape \(3, 2\)\)"),
    "d NaN": (lambda n: n.loss_and_grad(np.ones((2, 4)), _nan_at((2, 3), (1, 1)), fb.L2()),
              ValueError, r"d contains NaN at row 1, column 1"),
    "d str": (lambda n: n.loss_and_grad(np.ones((1, 4)), np.array([["a", "b", "c"]]), fb.L2()),
              TypeError, r"<U1"),
    "probs not summing to 1": (lambda n: n.loss_and_grad(np.ones((3, 4)), np.ones((3, 3)),
                                                         fb.KL()), ValueError, r"row 0 sums to 3"),
    "probs negative": (lambda n: n.loss_and_grad(np.ones((1, 4)), np.array([[1.5, -0.5, 0]]),
                                                 fb.KL()), ValueError, r">= 0.*-0.5"),
    "binary target": (lambda n: n.loss_and_grad(np.ones((3, 4)), 2 * np.ones((3, 3)),
                                                fb.BinaryKL()), ValueError, r"\[0, 1\].*2\.0"),
    "X NaN in loss_and_grad": (lambda n: n.loss_and_grad(_nan_at((2, 4), (0, 1)),
                                                         np.array([0, 1]), fb.KL()),
                               ValueError, r"NaN at row 0, column 1"),
    "train_step label": (lambda n: n.train_step(np.ones((3, 4)), np.array([0, 7, 1]), fb.KL(),
                                                fb.SGD(lr=0.1)), ValueError, r"Target 7"),
    "train_step X": (lambda n: n.train_step(_nan_at((3, 4), (2, 3)), np.array([0, 1, 1]),
                                            fb.KL(), fb.SGD(lr=0.1)), ValueError,
                     r"X contains NaN at row 2, column 3"),
    "dY shape": (lambda n: (n.forward(np.ones((3, 4))), n.backward(np.ones((2, 3)))),
                 ValueError, r"dY has shape \(2, 3\).*\(3, 3\)"),
    "dY NaN": (lambda n: (n.forward(np.ones((2, 4))), n.backward(_nan_at((2, 3), (1, 2)))),
               ValueError, r"dY contains NaN at row 1, column 2"),
    "dY dtype": (lambda n: (n.forward(np.ones((1, 4))), n.backward(np.ones((1, 3), complex))),
                 TypeError, r"complex"),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_raises_and_changes_nothing(case, dtype):
    call, exc, pattern = BAD_CALLS[case]
    net = _net(dtype)
    # gradients from an earlier good step: a failed call must not touch them either
    net.loss_and_grad(np.arange(8.0).reshape(2, 4) / 8, np.array([0, 2]), fb.KL())
    params, grads = net.flat_params.tobytes(), net.flat_grads.tobytes()
    with pytest.raises(exc, match=pattern):
        call(net)
    assert net.flat_params.tobytes() == params
    assert net.flat_grads.tobytes() == grads


def test_loss_called_directly_validates_too():
    Y = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"Target 5 is out of bounds"):
        fb.KL()(Y, np.array([0, 5]))
    with pytest.raises(ValueError, match=r"Y contains NaN at row 0, column 0"):
        fb.L2()(_nan_at((2, 3), (0, 0)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"Y must hold real numbers"):
        fb.L2().grad(np.array([["x"]]), np.zeros((1, 1)))


def test_backward_before_forward():
    """Not bad input but a wrong order of calls: a RuntimeError that says what to do."""
    net = _net()
    before = net.flat_grads.tobytes()
    with pytest.raises(RuntimeError, match="forward before backward"):
        net.backward(np.ones((1, 3)))
    assert net.flat_grads.tobytes() == before


# -- bad node configuration ------------------------------------------------------------------
BAD_CONFIGS = {
    "Linear zero": (lambda: fb.Linear(0, 3), ValueError, r"n_in must be >= 1, got 0"),
    "Linear float": (lambda: fb.Linear(2.5, 3), TypeError, r"n_in must be an int, got float"),
    "Linear bool": (lambda: fb.Linear(True, 3), TypeError, r"n_in must be an int, got bool"),
    "Linear init": (lambda: fb.Linear(2, 3, init="bogus"), ValueError, r"'bogus'"),
    "Linear init shape": (lambda: fb.Sequential(fb.Linear(2, 3, init=lambda rng, s: np.ones(2))),
                          ValueError, r"init returned shape \(2,\), expected \(3, 2\)"),
    "RReLU bounds": (lambda: fb.RReLU(0.5, 0.25), ValueError, r"0.5, 0.25"),
    "PowerProduct 1-D": (lambda: fb.PowerProduct([1.0, 2.0]), ValueError, r"shape \(2,\)"),
    "PowerProduct NaN": (lambda: fb.PowerProduct([[np.nan]]), ValueError, r"finite"),
    "PowerProduct width": (lambda: fb.Sequential(fb.Linear(2, 3), fb.PowerProduct(np.ones((2, 1)))),
                           ValueError, r"\(2, 1\) needs 2 inputs, receives 3"),
    "MaxOver none": (lambda: fb.MaxOver([]), ValueError, r"at least one subset"),
    "MaxOver empty": (lambda: fb.MaxOver([[0], []]), ValueError, r"subset 1 is empty"),
    "MaxOver negative": (lambda: fb.MaxOver([[0, -2]]), ValueError, r"negative index -2"),
    "MaxOver float": (lambda: fb.MaxOver([[0.5]]), TypeError, r"subset 0.*float64"),
    "MaxOver out of range": (lambda: fb.Sequential(fb.Linear(2, 3), fb.MaxOver([[0, 3]])),
                             ValueError, r"input 3 but receives only 3"),
    "MaxPool1d size": (lambda: fb.MaxPool1d(0), ValueError, r"size must be >= 1, got 0"),
    "MaxPool1d too wide": (lambda: fb.Sequential(fb.Linear(2, 3), fb.MaxPool1d(4)), ValueError,
                           r"at least 4 inputs, receives 3"),
    "PairProduct odd": (lambda: fb.Sequential(fb.Linear(2, 3), fb.PairProduct()), ValueError,
                        r"even input width, got 3"),
    "Product widths": (lambda: fb.Sequential(fb.Product(fb.Linear(4, 3), fb.Linear(4, 2))),
                       ValueError, r"equal output width, got 3 and 2"),
    "VectorActivation": (lambda: fb.VectorActivation(np.tanh, "jacobian"), TypeError,
                         r"callables"),
    "Sequential empty": (lambda: fb.Sequential(), ValueError, r"at least one node"),
    "Sequential non-node": (lambda: fb.Sequential(fb.Linear(2, 2), np.tanh), TypeError,
                            r"node 1 is not a fastbp node"),
    "Sequential widths": (lambda: fb.Sequential(fb.Linear(4, 3), fb.Linear(5, 2)), ValueError,
                          r"Linear\(5, 2\) expects 5 inputs but receives 3"),
    "dtype int": (lambda: fb.Sequential(fb.Linear(2, 2), dtype=np.int64), TypeError,
                  r"float32 or float64, got int64"),
    "dtype float16": (lambda: fb.Sequential(fb.Linear(2, 2), dtype="float16"), TypeError,
                      r"got float16"),
    "dtype nonsense": (lambda: fb.Sequential(fb.Linear(2, 2), dtype="nonsense"), TypeError,
                       r"'nonsense'"),
    "astype": (lambda: fb.Sequential(fb.Linear(2, 2)).astype(np.complex64), TypeError,
               r"complex64"),
    "threads": (lambda: fb.set_num_threads(0), ValueError, r"got 0"),
    "threads type": (lambda: fb.set_num_threads(1.5), TypeError, r"float"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configuration_raises(case):
    make, exc, pattern = BAD_CONFIGS[case]
    with pytest.raises(exc, match=pattern):
        make()


def test_pair_product_alone_refuses_odd_width():
    with pytest.raises(ValueError, match=re.escape("even input width, got shape (2, 3)")):
        fb.PairProduct().forward(np.ones((2, 3)))


@pytest.mark.parametrize("n", [10, 5000])  # the element test, and the sum first
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite_is_exact_and_quiet(n, dtype):
    import warnings

    from fastbp._checks import all_finite

    big = np.finfo(dtype).max
    cases = {"finite": np.ones(n, dtype), "overflowing sum": np.full(n, big, dtype),
             "nan": np.ones(n, dtype), "inf": np.ones(n, dtype), "inf - inf": np.ones(n, dtype)}
    cases["nan"][n // 2] = np.nan
    cases["inf"][-1] = np.inf
    cases["inf - inf"][:2] = [np.inf, -np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning reaches the user
        got = {k: all_finite(v) for k, v in cases.items()}
    assert got == {"finite": True, "overflowing sum": True, "nan": False, "inf": False,
                   "inf - inf": False}
