"""The training loop: full-batch gradient descent as in the seed, minibatches, early stopping,
checkpoints that resume bit-identically, and a progress bar."""

import json
import math
import sys
import time

import numpy as np

from . import _checks, io
from .kernels import divergences as KDiv
from .losses import KL, BinaryKL


class TrainingError(FloatingPointError):
    """NaN or inf appeared during training; the parameters are those of the last good step."""


class History:
    """Per-epoch records of a fit: ``loss`` (the mean of the batch losses, each row weighted
    once), ``val_loss``, ``accuracy`` and ``val_accuracy`` (for KL and BinaryKL), ``lr``,
    ``epoch_time``, and why training stopped (``stop_reason``).

    ``accuracy`` is the running training accuracy, as Keras reports it: the fraction of rows
    classified right by the network of the step that trained on them (no second pass over the
    training data); ``val_accuracy`` is measured after the epoch."""

    def __init__(self):
        self.loss, self.val_loss, self.accuracy, self.val_accuracy = [], [], [], []
        self.epoch_time, self.lr = [], []
        self.stop_reason, self.best_epoch = None, None

    @property
    def epochs(self):
        return len(self.loss)

    def as_dict(self):
        return {k: v for k, v in vars(self).items()}

    def __repr__(self):
        last = f", loss={self.loss[-1]:.6g}" if self.loss else ""
        val = f", val_loss={self.val_loss[-1]:.6g}" if self.val_loss else ""
        return f"History(epochs={self.epochs}{last}{val}, stop_reason={self.stop_reason!r})"


def _classifies(loss, net):
    return isinstance(loss, KL) or (isinstance(loss, BinaryKL) and net.n_out == 1)


def _correct(Y, target):
    """Rows of Y classified right (see ``kernels.divergences.correct``)."""
    labels = target if target.ndim == 1 else np.zeros(0, np.int64)
    d = target if target.ndim == 2 else Y[:0]
    return KDiv.correct(Y, labels, d)


def accuracy_of(net, X, target, loss):
    """Fraction of rows of X the network (in evaluation mode) classifies right: argmax for KL
    (first index on ties), y >= 0.5 for BinaryKL with one output; None for other losses."""
    if not _classifies(loss, net):
        return None
    return _correct(net.predict(X), target) / X.shape[0]


def train_step(net, X, target, loss, optimizer):
    """One forward, backward and update on a prepared batch; refuses a non-finite step."""
    value, _ = net._loss_and_grad(X, target, loss, need_dx=False)
    if not math.isfinite(value) or not np.isfinite(net.flat_grads).all():
        raise TrainingError("the loss or a gradient is not finite; parameters are those of "
                            "the last good step")
    optimizer.step(net)
    return value


def _progress_bar(show, epochs, initial):
    if not show or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=initial, unit="epoch", leave=True, file=sys.stderr)


def fit(net, X, d, loss, optimizer, batch_size=None, epochs=100, tol=1e-6, shuffle=True,
        seed=0, validation=None, progress=True, callbacks=(), patience=None, min_delta=0.0,
        restore_best=True, checkpoint=None, checkpoint_every=1, resume=None, engine="auto"):
    """Train ``net`` by gradient descent on the mean divergence.

    Parameters
    ----------
    net : Sequential
    X : array (T, D_0)
    d : targets for ``loss`` (class indices or rows)
    loss : Divergence
    optimizer : SGD or Adam
    batch_size : int or None
        None: full batch, the seed's algorithm (the gradient averaged over all T instances, then
        one update per epoch). Otherwise minibatches; the last short batch is kept.
    epochs : int
        The most epochs to run.
    tol : float or None
        Stop when |Loss_k - Loss_{k-1}| < tol (the seed's convergence test); None never stops.
    shuffle, seed : reshuffle the instances every epoch with ``default_rng(seed)``.
    validation : (Xv, dv) or None
        Evaluated after every epoch into ``history.val_loss`` (and ``val_accuracy``).
    progress : bool
        A progress bar on standard error when it is a terminal.
    callbacks : iterable of callables ``cb(epoch, history, net)``; one returning True stops.
    patience : int or None
        Early stopping: stop after ``patience`` epochs without a validation loss better than
        the best by ``min_delta``; with ``restore_best`` the best parameters are put back.
    checkpoint : path or None
        Write a checkpoint (network, optimizer state, random states, history) every
        ``checkpoint_every`` epochs.
    resume : path or None
        Continue from a checkpoint written by ``fit``: the result is bit-identical to a run
        that was never interrupted.
    engine : "auto", True or False
        Run whole epochs in compiled code (networks of built-in nodes, built-in divergences and
        optimizers); "auto" uses it whenever it can, False forces the per-node Python path.
        Both give bit-identical results.

    Returns
    -------
    History

    Raises
    ------
    ValueError, TypeError
        For bad data, before anything changes.
    TrainingError
        When the loss or a gradient becomes NaN or inf; it names the epoch and step, and the
        network keeps the parameters of the last good step.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> X, d = fb.datasets.xor(200, seed=0)
    >>> net = fb.Sequential(fb.Linear(2, 8), fb.Tanh(), fb.Linear(8, 1), fb.Sigmoid(), seed=0)
    >>> h = fb.fit(net, X, d, fb.BinaryKL(), fb.Adam(lr=0.05), batch_size=32, epochs=100,
    ...            progress=False)
    >>> h.accuracy[-1] > 0.95
    True
    """
    X = net._input(X)
    target = loss.target(d, X.shape[0], net.n_out, net.dtype)
    T = X.shape[0]
    if batch_size is not None:
        batch_size = min(_checks.positive_int(batch_size, "batch_size"), T)
    epochs = _checks.positive_int(epochs, "epochs")
    if validation is not None:
        Xv, dv = validation
        Xv = net._input(Xv, "validation X")
        tv = loss.target(dv, Xv.shape[0], net.n_out, net.dtype)
    if patience is not None and validation is None:
        raise ValueError("early stopping (patience) needs validation data")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be >= 0 or None, got {tol}")

    use_engine = _engine_for(net, loss, target, optimizer, engine)
    rng = np.random.default_rng(seed)
    history, start = History(), 0
    best = (math.inf, None)
    if resume is not None:
        start, history, best = _resume(resume, net, optimizer, rng)
    bar = _progress_bar(progress, epochs, start)
    net.train()
    if use_engine and bar is None and validation is None and not callbacks and \
            checkpoint is None and patience is None:
        _fit_compiled(net, X, target, loss, optimizer, batch_size, start, epochs, tol,
                      shuffle, rng, history)
        return history
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            optimizer.set_epoch(epoch)
            order = rng.permutation(T) if shuffle and batch_size is not None else None
            total, right = _run_epoch(net, X, target, loss, optimizer, order,
                                      batch_size or T, epoch, history, use_engine,
                                      _classifies(loss, net))
            history.loss.append(total / T)
            history.lr.append(optimizer.current_lr())
            if _classifies(loss, net):
                history.accuracy.append(right / T)
            if validation is not None:
                vl = net._loss_value(Xv, tv, loss)[0]
                history.val_loss.append(vl)
                vacc = accuracy_of(net, Xv, tv, loss)
                if vacc is not None:
                    history.val_accuracy.append(vacc)
                if vl < best[0] - min_delta:
                    best = (vl, net.flat_params.copy())
                    history.best_epoch = epoch
            history.epoch_time.append(time.perf_counter() - t0)
            if bar is not None:
                post = {"loss": f"{history.loss[-1]:.4g}"}
                if history.val_loss:
                    post["val"] = f"{history.val_loss[-1]:.4g}"
                post["samples/s"] = f"{T / history.epoch_time[-1]:.3g}"
                bar.set_postfix(post)
                bar.update(1)
            if checkpoint is not None and (epoch + 1) % checkpoint_every == 0:
                _write_checkpoint(checkpoint, net, optimizer, rng, history, epoch + 1, best)
            if _should_stop(history, tol, patience, callbacks, epoch, net):
                break
        else:
            history.stop_reason = history.stop_reason or "epochs"
    finally:
        if bar is not None:
            bar.close()
    if patience is not None and restore_best and best[1] is not None:
        net.flat_params[...] = best[1]
    return history


def _fit_compiled(net, X, target, loss, optimizer, batch_size, start, epochs, tol, shuffle,
                  rng, history):
    """``fit`` when nothing needs Python between epochs: chunks of epochs in one compiled call
    each, with the same permutations, learning rates, stopping rule and numbers as the loop."""
    from . import engine as E

    T, count = X.shape[0], _classifies(loss, net)
    epoch = start
    while epoch < epochs:
        n = min(epochs - epoch, max(1, (1 << 20) // T))  # bounds the permutations' memory
        if shuffle and batch_size is not None:
            orders = np.stack([rng.permutation(T) for _ in range(n)])
        else:
            orders = np.arange(T)[None, :]
        lrs = []
        for e in range(epoch, epoch + n):
            optimizer.set_epoch(e)
            lrs.append(optimizer.current_lr())
        t0 = time.perf_counter()
        outs = E.run_epochs(net, X, target, loss, optimizer, orders, batch_size or T, lrs, tol,
                            history.loss[-1] if history.loss else None, count)
        seconds = (time.perf_counter() - t0) / len(outs)
        for k, (total, _, bad, right) in enumerate(outs):
            if bad >= 0:
                history.stop_reason = "non-finite"
                raise TrainingError(f"epoch {epoch + k}, step {int(bad)}: the loss or a "
                                    f"gradient is not finite; parameters are those of the last "
                                    f"good step")
            history.loss.append(total / T)
            history.lr.append(lrs[k])
            history.epoch_time.append(seconds)
            if count:
                history.accuracy.append(right / T)
        optimizer.set_epoch(epoch + len(outs) - 1)
        epoch += len(outs)
        if len(outs) < n or _should_stop(history, tol, None, (), epoch - 1, net):
            history.stop_reason = "converged"
            return
    history.stop_reason = "epochs"


def _engine_for(net, loss, target, optimizer, engine):
    if engine is False:
        return False
    from . import engine as E

    try:
        if E.compile_tape(net, True) is None:
            raise E.Unsupported("the network holds a node the engine cannot run")
        E.loss_kind(net, loss, target)
        E.optimizer_args(optimizer, net)
    except E.Unsupported:
        if engine is True:
            raise
        return False
    return True


def _run_epoch(net, X, target, loss, optimizer, order, batch, epoch, history, use_engine,
               count=False):
    """One epoch through the engine or node by node; returns (sum of batch loss * rows, rows
    classified right while training, if ``count``)."""
    T = X.shape[0]
    if use_engine:
        from . import engine as E

        total, _, bad, right = E.run_epoch(net, X, target, loss, optimizer,
                                           np.arange(T) if order is None else order, batch,
                                           count)
        if bad >= 0:
            history.stop_reason = "non-finite"
            raise TrainingError(f"epoch {epoch}, step {bad}: the loss or a gradient is not "
                                f"finite; parameters are those of the last good step")
        return total, right
    total, right = 0.0, 0
    for step, lo in enumerate(range(0, T, batch)):
        idx = slice(lo, lo + batch) if order is None else order[lo:lo + batch]
        xb, tb = (X, target) if batch == T and order is None else (X[idx], target[idx])
        try:
            value = train_step(net, xb, tb, loss, optimizer)
        except TrainingError as e:
            history.stop_reason = "non-finite"
            raise TrainingError(f"epoch {epoch}, step {step}: {e}") from None
        total += value * xb.shape[0]
        if count:
            right += _correct(net._last_output, tb)
    return total, right


def _should_stop(history, tol, patience, callbacks, epoch, net):
    if tol is not None and len(history.loss) > 1 and \
            abs(history.loss[-1] - history.loss[-2]) < tol:
        history.stop_reason = "converged"
        return True
    if patience is not None and history.best_epoch is not None and \
            epoch - history.best_epoch >= patience:
        history.stop_reason = "early stopping"
        return True
    for cb in callbacks:
        if cb(epoch, history, net):
            history.stop_reason = "callback"
            return True
    return False


def _write_checkpoint(path, net, optimizer, rng, history, epoch, best):
    state = {"epoch": epoch, "rng": rng.bit_generator.state,
             "net_rng": net.rng.bit_generator.state, "history": history.as_dict(),
             "best_loss": best[0] if math.isfinite(best[0]) else None,
             "optimizer": type(optimizer).__name__, "opt_t": optimizer.t,
             "opt_epoch": optimizer.epoch}
    arrays = {"state": np.array(json.dumps(state))}
    for k, v in optimizer.state_dict().items():
        if isinstance(v, np.ndarray):
            arrays["opt_" + k] = v
    if best[1] is not None:
        arrays["best_params"] = best[1]
    io.save(net, path, **arrays)


def _resume(path, net, optimizer, rng):
    arrays = io.read_npz(path)
    saved, arch = io._from_arrays(arrays, path)
    if arch["root"] != io.architecture(net)["root"] or saved.dtype != net.dtype:
        raise io.CheckpointError(f"{path}: the checkpoint's architecture does not match the "
                                 f"network being trained")
    if "state" not in arrays:
        raise io.CheckpointError(f"{path}: a saved network, not a training checkpoint")
    state = json.loads(str(arrays["state"]))
    if state["optimizer"] != type(optimizer).__name__:
        raise io.CheckpointError(f"{path}: written with {state['optimizer']}, resumed with "
                                 f"{type(optimizer).__name__}")
    net.flat_params[...] = saved.flat_params
    sd = {k[4:]: v for k, v in arrays.items() if k.startswith("opt_")}
    sd.update(t=state["opt_t"], epoch=state["opt_epoch"])
    optimizer.load_state_dict(sd, net)
    rng.bit_generator.state = state["rng"]
    net.rng.bit_generator.state = state["net_rng"]
    history = History()
    for k, v in state["history"].items():
        setattr(history, k, v)
    best_loss = state["best_loss"] if state["best_loss"] is not None else math.inf
    return state["epoch"], history, (best_loss, arrays.get("best_params"))
