"""Callbacks for ``fb.fit`` (and the estimators' ``callbacks=``): callables
``cb(epoch, history, net)`` run after every epoch; one that returns True stops training."""

import math

from . import io


class BestCheckpoint:
    """Keep the best network on disk: after every epoch whose ``monitor`` value improves on
    the best so far (by more than ``min_delta``), write the network to ``path`` (atomically,
    as ``Sequential.save``; load it back with ``fb.load(path)`` or ``.load()``).

    ``monitor`` is a per-epoch record of the History: "val_loss" (the default; needs
    ``validation``), "loss", "val_accuracy" or "accuracy". ``mode`` "min", "max" or "auto"
    (max for accuracies, min otherwise). It never stops training. After a fit, ``best`` holds
    the best value and ``best_epoch`` its epoch (None before the first improvement).

    Examples
    --------
    >>> import os, tempfile, fastbp as fb
    >>> X, d = fb.datasets.xor(200, seed=0)
    >>> net = fb.Sequential(fb.Linear(2, 8), fb.Tanh(), fb.Linear(8, 1), fb.Sigmoid(), seed=0)
    >>> keep = fb.callbacks.BestCheckpoint(os.path.join(tempfile.mkdtemp(), "best.npz"))
    >>> h = fb.fit(net, X[:150], d[:150], fb.BinaryKL(), fb.Adam(lr=0.05), batch_size=32,
    ...            epochs=20, validation=(X[150:], d[150:]), callbacks=[keep], progress=False)
    >>> keep.best == min(h.val_loss), keep.best_epoch == h.val_loss.index(keep.best)
    (True, True)
    >>> keep.load().predict(X).shape
    (200, 1)
    """

    MONITORS = ("val_loss", "loss", "val_accuracy", "accuracy")

    def __init__(self, path, monitor="val_loss", mode="auto", min_delta=0.0):
        if monitor not in self.MONITORS:
            raise ValueError(f"monitor must be one of {self.MONITORS}, got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.path, self.monitor = path, monitor
        self.mode = ("max" if monitor.endswith("accuracy") else "min") if mode == "auto" else mode
        self.min_delta = float(min_delta)
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.best, self.best_epoch = None, None

    def __call__(self, epoch, history, net):
        values = getattr(history, self.monitor)
        if not values:
            raise ValueError(f"BestCheckpoint monitors {self.monitor!r}, which this fit does not "
                             f"record" + (" (pass validation=...)" if
                                          self.monitor.startswith("val") else ""))
        value = values[-1]
        sign = 1.0 if self.mode == "min" else -1.0
        if math.isfinite(value) and (self.best is None or
                                     sign * (self.best - value) > self.min_delta):
            io.save(net, self.path)
            self.best, self.best_epoch = value, epoch
        return False

    def load(self):
        """The best network written so far."""
        if self.best is None:
            raise FileNotFoundError(f"BestCheckpoint has written nothing to {self.path} yet")
        return io.load(self.path)

    def __repr__(self):
        return f"BestCheckpoint({str(self.path)!r}, monitor={self.monitor!r}, mode={self.mode!r})"
