"""Small datasets that ship with the install (no downloads)."""

import gzip
import importlib.util
import math
import numbers
import os

import numpy as np


def digits():
    """The 8x8 handwritten digits that ship inside scikit-learn (1797 images, 10 classes).

    Returns
    -------
    X : float64 array (1797, 64), pixel intensities scaled to [0, 1]
    y : int64 array (1797,), the digit 0..9

    Examples
    --------
    >>> import fastbp as fb
    >>> X, y = fb.datasets.digits()
    >>> X.shape, float(X.max()), sorted(set(y.tolist())) == list(range(10))
    ((1797, 64), 1.0, True)
    """
    data = _digits_file()
    if data is None:  # not where scikit-learn keeps it: let scikit-learn read it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        data = np.column_stack([bunch.data, bunch.target])
    return data[:, :-1] / 16.0, data[:, -1].astype(np.int64)


def _digits_file():
    """scikit-learn's ``digits.csv.gz`` (pixels, then the digit, per row), read without
    importing scikit-learn (1.5 s here; the file takes 30 ms), or None."""
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec is not None else None
    for root in roots or []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            if data.shape == (1797, 65):
                return data
    return None


def is_it_a_2():
    """The seed's binary task on the digits: d = 1 for a 2, 0 for any other digit.

    Returns X (1797, 64) in [0, 1] and d (1797,) float64 of 0s and 1s.
    """
    X, y = digits()
    return X, (y == 2).astype(np.float64)


def xor(n=256, noise=0.1, seed=0):
    """Points around the four corners of [-1, 1]^2 labelled by XOR of their signs.

    Returns X (n, 2) and d (n,) float64 of 0s and 1s.
    """
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 2, size=(n, 2))
    X = (2 * corners - 1) + noise * rng.normal(size=(n, 2))
    return X, (corners[:, 0] ^ corners[:, 1]).astype(np.float64)


def spirals(n=300, classes=2, noise=0.2, turns=1.5, seed=0):
    """Interleaved spiral arms, one per class.

    Returns X (n, 2) and y (n,) int64 class labels.
    """
    if classes < 2:
        raise ValueError(f"spirals needs at least 2 classes, got {classes}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    r = rng.uniform(0.1, 1.0, size=n)
    theta = 2 * np.pi * (turns * r + y / classes) + noise * rng.normal(size=n)
    X = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return X, y.astype(np.int64)


def split(X, y, test_size=0.25, seed=0, stratify="auto"):
    """Shuffle and split into (X_train, X_test, y_train, y_test), stratified for class labels.

    Parameters
    ----------
    X, y : arrays with one row per instance
    test_size : float (a fraction) or int (a count), as scikit-learn's ``train_test_split``
    seed : int
    stratify : "auto", True or False
        Keep the class proportions in both parts. "auto" stratifies class labels: a 1-D ``y``
        (or one column) of bools, integers or strings in which every class has at least two
        members and there are no more classes than rows in either part. Float targets
        (regression, or 0/1 written as floats) are split without. True always stratifies
        (scikit-learn raises for a class too small), False never.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> X, y = fb.datasets.digits()
    >>> Xtr, Xte, ytr, yte = fb.datasets.split(X, y, test_size=0.25, seed=0)
    >>> len(Xtr) + len(Xte) == len(X)
    True
    >>> r = np.random.default_rng(0).normal(size=len(X))   # a regression target
    >>> [len(part) for part in fb.datasets.split(X, r, seed=0)[2:]]
    [1347, 450]
    """
    from sklearn.model_selection import train_test_split

    if isinstance(stratify, str) and stratify == "auto":
        stratify = _are_labels(y, test_size)
    elif not isinstance(stratify, (bool, np.bool_)):
        raise ValueError(f"stratify must be 'auto', True or False, got {stratify!r}")
    return train_test_split(X, y, test_size=test_size, random_state=seed,
                            stratify=y if stratify else None)


def _are_labels(y, test_size):
    """Whether ``split`` stratifies ``y`` by default (see its ``stratify``)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or y.size == 0 or y.dtype.kind not in "biuUSO" or \
            y.dtype.kind == "O" and not all(isinstance(v, str) for v in y):
        return False
    n = y.size
    if test_size is None:
        test_size = 0.25
    n_test = int(test_size) if isinstance(test_size, numbers.Integral) else \
        math.ceil(float(test_size) * n)
    counts = np.unique(y, return_counts=True)[1]
    return bool(counts.min() >= 2 and counts.size <= min(n_test, n - n_test))
