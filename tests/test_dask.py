"""Many independent fits on a Dask cluster: scikit-learn's GridSearchCV over fastbp's estimators
with joblib's dask backend gives what ``n_jobs=1`` gives, and the estimators travel small."""

import logging
import pickle
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score

from fastbp.sklearn import MLPClassifier

distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")

GRID = {"hidden_layer_sizes": [(16,), (32,)], "alpha": [1e-4, 1e-2]}


def _data():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16, y[:600]


def _search(n_jobs):
    X, y = _data()
    est = MLPClassifier(max_iter=15, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GridSearchCV(est, GRID, cv=3, n_jobs=n_jobs).fit(X, y)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as c, \
            distributed.Client(c) as client:
        yield client


def test_grid_search_on_a_dask_cluster_equals_one_process(cluster):
    serial = _search(1)
    with joblib.parallel_backend("dask"):
        spread = _search(-1)
    assert spread.best_params_ == serial.best_params_
    np.testing.assert_array_equal(spread.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(spread.best_estimator_.network_.flat_params,
                                  serial.best_estimator_.network_.flat_params)
    # the work really ran on the workers (each holds the fastbp module it imported)
    ran = cluster.run(lambda: __import__("sys").modules.get("fastbp.sklearn") is not None)
    assert len(ran) == 2 and all(ran.values())


def test_cross_val_score_on_a_dask_cluster_equals_one_process(cluster):
    X, y = _data()
    est = MLPClassifier((16,), max_iter=10, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        serial = cross_val_score(est, X, y, cv=3, n_jobs=1)
        with joblib.parallel_backend("dask"):
            spread = cross_val_score(est, X, y, cv=3, n_jobs=-1)
    np.testing.assert_array_equal(spread, serial)


@pytest.mark.parametrize("activation", ["relu", "rrelu"])  # the engine, and node by node
def test_a_fitted_estimator_pickles_small(activation):
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier((32,), activation=activation, max_iter=3, random_state=0).fit(X, y)
        est.predict(X)  # builds and caches the engine's tape and workspaces
    blob = pickle.dumps(est)
    params = est.network_.flat_params.nbytes
    # the parameters (in the flat buffer and as the nodes' views), their gradients, Adam's two
    # moments, and small change: no compiled code, tapes or workspaces
    assert len(blob) < 5 * params + 32_000, (len(blob), params)
    for word in (b"numba", b"Dispatcher", b"Workspace", b"Tape"):
        assert word not in blob, word
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
