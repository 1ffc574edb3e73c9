"""Python threads sharing one network: concurrent predict and predict_proba give the results of
predicting alone, predict during training leaves training unchanged, and ``set_num_threads``
holds for every Python thread (numba's own count is per thread)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

import fastbp as fb
from fastbp.sklearn import MLPClassifier

CALLS = 200


def _net(dtype=np.float64):
    return fb.Sequential(fb.Linear(64, 128), fb.Tanh(), fb.Linear(128, 64), fb.ReLU(),
                         fb.Linear(64, 10), fb.Softmax(), dtype=dtype, seed=0)


def _inputs(n, rows):
    rng = np.random.default_rng(1)
    # Different row counts too: a thread whose workspace grows must not move another's.
    return [rng.normal(size=(rows + k % 3, 64)) for k in range(n)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_concurrent_predicts_on_one_network_equal_predicting_alone(dtype):
    net = _net(dtype)
    Xs = _inputs(CALLS, 48)
    alone = [net.predict(X) for X in Xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(net.predict, Xs))
    wrong = sum(not np.array_equal(a, b) for a, b in zip(alone, got))
    assert wrong == 0, f"{wrong} of {CALLS} concurrent predictions differ from predicting alone"


def test_concurrent_sklearn_predict_and_predict_proba():
    X, y = fb.datasets.digits()
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=5, random_state=0).fit(X, y)
    chunks = np.array_split(X, 60)
    labels = [clf.predict(c) for c in chunks]
    probs = [clf.predict_proba(c) for c in chunks]
    with ThreadPoolExecutor(4) as pool:
        got_labels = list(pool.map(clf.predict, chunks))
        got_probs = list(pool.map(clf.predict_proba, chunks))
    assert all(np.array_equal(a, b) for a, b in zip(labels, got_labels))
    assert all(np.array_equal(a, b) for a, b in zip(probs, got_probs))


@pytest.mark.parametrize("engine", ["auto", False])
def test_predict_during_training_leaves_training_unchanged(engine):
    X, y = fb.datasets.digits()
    X = X.astype(np.float64)

    def train(net):
        fb.fit(net, X, y, fb.KL(), fb.SGD(lr=0.05, momentum=0.9), batch_size=32, epochs=4,
               seed=0, progress=False, engine=engine)
        return net.flat_params.copy()

    alone = train(_net())
    net = _net()
    stop, errors, calls = threading.Event(), [], [0]

    def serve():
        while not stop.is_set():
            try:
                P = net.predict(X[:40])
                assert P.shape == (40, 10) and np.allclose(P.sum(axis=1), 1)
                calls[0] += 1
            except BaseException as e:  # reported below, not swallowed
                errors.append(repr(e))
                return

    server = threading.Thread(target=serve)
    server.start()
    try:
        trained = train(net)
    finally:
        stop.set()
        server.join(60)
    assert not errors, errors
    assert calls[0] > 0
    assert np.array_equal(trained, alone), "predicting during training changed training"


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_set_num_threads_holds_for_every_python_thread():
    before = fb.get_num_threads()
    seen = {}

    def work():
        _net().predict(np.ones((1, 64)))  # an entry point applies fastbp's count
        seen["numba"] = numba.get_num_threads()
        seen["fastbp"] = fb.get_num_threads()

    try:
        fb.set_num_threads(1)
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        fb.set_num_threads(before)
    assert seen == {"numba": 1, "fastbp": 1}
