"""scikit-learn's MLPClassifier as plain minibatch SGD: no momentum, no L2, no shuffling,
no early stop (tol=0 and n_iter_no_change beyond max_iter). Only W1-W3 apply."""

import time
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from . import _common as c

warnings.simplefilter("ignore", ConvergenceWarning)


def sgd(hidden, activation, batch, lr, epochs):
    return MLPClassifier(
        hidden_layer_sizes=hidden, activation=activation, solver="sgd", alpha=0.0,
        batch_size=batch, learning_rate="constant", learning_rate_init=lr, momentum=0.0,
        nesterovs_momentum=False, max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1,
        shuffle=False, early_stopping=False, random_state=0)


def timed_fit(hidden, activation, X, d, batch, epochs, lr):
    sgd(hidden, activation, batch, lr, 1).fit(X[: 2 * batch], d[: 2 * batch])  # warm-up
    model = sgd(hidden, activation, batch, lr, epochs)
    t = time.perf_counter()
    model.fit(X, d)
    return time.perf_counter() - t


def w1(steps):
    """Two classes: a logistic output unit with log-loss, i.e. sigmoid + binary KL."""
    X, d = c.xor_points()
    return timed_fit((16, 16), "logistic", X, d.ravel(), len(X), steps, 1.0)


def w2(epochs):
    X, d = c.digits(32)
    return timed_fit((64,), "tanh", X, d, 32, epochs, 0.1)


def w3(rows, batch):
    X, d = c.random_rows(rows, 784, batch)
    return timed_fit((256, 128), "relu", X, d, batch, 1, 0.1)
