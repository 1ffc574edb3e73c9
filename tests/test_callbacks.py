"""fb.callbacks.BestCheckpoint: the file holds the network of the best epoch."""

import numpy as np
import pytest

import fastbp as fb


def _setup():
    X, d = fb.datasets.xor(300, seed=3)
    net = fb.Sequential(fb.Linear(2, 8), fb.Tanh(), fb.Linear(8, 1), fb.Sigmoid(), seed=1)
    return X, d, net


@pytest.mark.parametrize("monitor", ["val_loss", "loss", "val_accuracy", "accuracy"])
def test_the_file_holds_the_best_epochs_network(tmp_path, monitor):
    X, d, net = _setup()
    keep = fb.callbacks.BestCheckpoint(tmp_path / "best.npz", monitor=monitor)
    snapshots = []
    h = fb.fit(net, X[:200], d[:200], fb.BinaryKL(), fb.SGD(lr=2.0), batch_size=50, epochs=15,
               tol=None, validation=(X[200:], d[200:]), progress=False,
               callbacks=[lambda e, hist, n: snapshots.append(n.flat_params.copy()), keep])
    values = getattr(h, monitor)
    best = (max if monitor.endswith("accuracy") else min)(values)
    assert keep.best == best and keep.best_epoch == values.index(best)  # the first such epoch
    back = keep.load()
    assert np.array_equal(back.flat_params, snapshots[keep.best_epoch])
    assert repr(back) == repr(net)


def test_min_delta_and_errors(tmp_path):
    X, d, net = _setup()
    keep = fb.callbacks.BestCheckpoint(tmp_path / "b.npz", monitor="loss", min_delta=1e9)
    fb.fit(net, X, d, fb.BinaryKL(), fb.SGD(lr=0.5), epochs=3, tol=None, progress=False,
           callbacks=[keep])
    assert keep.best_epoch == 0  # nothing improves by 1e9 after the first epoch
    with pytest.raises(ValueError, match="monitors 'val_loss'.*pass validation"):
        fb.fit(net, X, d, fb.BinaryKL(), fb.SGD(lr=0.5), epochs=2, progress=False,
               callbacks=[fb.callbacks.BestCheckpoint(tmp_path / "c.npz")])
    with pytest.raises(ValueError, match="monitor must be one of"):
        fb.callbacks.BestCheckpoint(tmp_path / "c.npz", monitor="val_acc")
    with pytest.raises(FileNotFoundError, match="written nothing"):
        fb.callbacks.BestCheckpoint(tmp_path / "never.npz").load()
