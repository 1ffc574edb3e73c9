"""The training loop: full-batch gradient descent as in the seed, minibatches, early stopping,
checkpoints that resume bit-identically, and a progress bar."""

import copy
import json
import math
import sys
import time
import warnings
from types import SimpleNamespace

import numpy as np

from . import _checks, distributed
from . import engine as E
from . import io
from .errors import TrainingError
from .kernels import divergences as KDiv
from .kernels import engine as KE
from .lbfgs import LBFGS, NON_FINITE
from .losses import KL, BinaryKL, Divergence, correct, correct_rows
from .network import not_finite
from .optim import Optimizer


class History:
    """Per-epoch records of a fit: ``loss`` (the mean of the batch losses, each row weighted
    once, or by its sample weight), ``val_loss``, ``accuracy`` and ``val_accuracy`` (for KL and
    BinaryKL), ``lr``, ``epoch_time``, and why training stopped (``stop_reason``).

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

    def plot(self, ax=None):
        """Draw ``loss`` and ``val_loss`` against the epoch, and ``accuracy`` and
        ``val_accuracy`` where recorded on a second y axis (at the right, 0 to 1).

        Needs matplotlib (``pip install "fastbp[plot]"``). ``ax``: the matplotlib Axes to draw
        on (default: a new figure). Returns the Axes of the losses; ``ax.figure.axes[1]`` holds
        the accuracies, ``ax.figure.savefig(path)`` writes the figure to a file.

        Examples
        --------
        >>> import fastbp as fb
        >>> X, d = fb.datasets.xor(200, seed=0)
        >>> net = fb.Sequential(fb.Linear(2, 8), fb.Tanh(), fb.Linear(8, 1), fb.Sigmoid(), seed=0)
        >>> h = fb.fit(net, X, d, fb.BinaryKL(), fb.Adam(lr=0.05), batch_size=32, epochs=20,
        ...            validation=(X, d), progress=False)
        >>> ax = h.plot()
        >>> [line.get_label() for axes in ax.figure.axes for line in axes.lines]
        ['loss', 'val_loss', 'accuracy', 'val_accuracy']
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError('History.plot needs matplotlib: pip install "fastbp[plot]"') \
                from None
        if not self.loss and not self.val_loss:
            raise ValueError("History.plot: the history holds no epochs")
        if ax is None:
            ax = plt.subplots(figsize=(6.4, 4))[1]
        acc = ax.twinx() if self.accuracy or self.val_accuracy else None
        lines = []
        for k, (axes, name, style) in enumerate(((ax, "loss", "-"), (ax, "val_loss", "--"),
                                                 (acc, "accuracy", "-"),
                                                 (acc, "val_accuracy", "--"))):
            values = getattr(self, name)
            if values:  # a colour per series: the twin axis would restart the colour cycle
                lines += axes.plot(range(1, len(values) + 1), values, style, color=f"C{k}",
                                   label=name)
        ax.set(xlabel="epoch", ylabel="loss (mean divergence)")
        if acc is not None:
            acc.set(ylabel="accuracy", ylim=(0, 1.02))
        ax.legend(handles=lines)
        return ax


def _classifies(loss, net):
    return isinstance(loss, KL) or (isinstance(loss, BinaryKL) and net.n_out == 1)


def accuracy_of(net, X, target, loss, weights=None):
    """Fraction of rows of X the network (in evaluation mode) classifies right: argmax for KL
    (first index on ties), y >= 0.5 for BinaryKL with one output; None for other losses. With
    ``weights``, the fraction of the rows' total weight."""
    if not _classifies(loss, net):
        return None
    return _accuracy(net.predict(X), target, weights)


def _accuracy(Y, target, weights=None):
    """``accuracy_of`` from the outputs Y."""
    if weights is None:
        return correct(Y, target) / Y.shape[0]
    return float(weights @ correct_rows(Y, target) / weights.sum())


def _validate(net, Xv, tv, loss, wv):
    """(validation loss, accuracy or None) from one forward pass in evaluation mode: the
    engine's where it runs the network (the kernels of ``predict``, in the bits of the node-by-
    node pass, whose kernels a fit through the engine would otherwise compile for this alone),
    else node by node."""
    out = E.evaluate(net, Xv, tv, loss, wv)
    if out is None:
        value, _, Y = net._loss_and_output(Xv, tv, loss, weights=wv)
    else:
        value, Y = out
    return value, (_accuracy(Y, tv, wv) if _classifies(loss, net) else None)


def train_step(net, X, target, loss, optimizer, weights=None):
    """One forward, backward and update on a prepared batch, node by node; refuses a
    non-finite step (``Sequential.train_step`` prepares the batch and may use the engine)."""
    return net._node_step(X, target, loss, optimizer, weights)


def _progress_bar(show, epochs, initial):
    if not show or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=initial, unit="epoch", leave=True, file=sys.stderr)


def fit(net, X, d, loss, optimizer, batch_size=None, epochs=100, tol=1e-6, shuffle=True,
        seed=0, validation=None, progress=True, callbacks=(), patience=None, min_delta=0.0,
        restore_best=True, checkpoint=None, checkpoint_every=1, resume=None, engine="auto",
        comm=None, deterministic=True, block_rows=64, sample_weight=None):
    """Train ``net`` by gradient descent on the mean divergence.

    Parameters
    ----------
    net : Sequential
    X : array (T, D_0)
    d : targets for ``loss`` (class indices or rows)
    loss : Divergence
    optimizer : SGD, Adam, RMSprop or LBFGS
        ``fb.LBFGS`` trains on the full batch (``batch_size`` None), each of its iterations an
        epoch of the history (with no learning rate: ``history.lr`` holds NaN, and no running
        ``accuracy``), without checkpoints or ``comm``.
    batch_size : int or None
        None: full batch, the seed's algorithm (the gradient averaged over all T instances, then
        one update per epoch). Otherwise minibatches; the last short batch is kept.
    epochs : int
        The most epochs to run.
    tol : float or None
        Stop when |Loss_k - Loss_{k-1}| < tol (the seed's convergence test); None never stops.
    shuffle, seed : reshuffle the instances every epoch with ``default_rng(seed)``.
    validation : (Xv, dv), (Xv, dv, wv) or None
        Evaluated after every epoch into ``history.val_loss`` (and ``val_accuracy``), weighted
        by the validation rows' weights ``wv`` if given.
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
    comm : mpi4py communicator or None
        Data-parallel training over MPI (see :mod:`fastbp.distributed`): every rank passes the
        same X and d (an array or a memory map), each global batch is shared out over the ranks
        in blocks of ``block_rows`` rows, and the gradient is summed over the ranks. Rank 0
        writes the checkpoints and shows the progress bar; every rank gets the same history.
    deterministic : bool
        With ``comm``: sum the blocks' gradients in one fixed order (a balanced tree over the
        blocks), so the parameters are bit-identical for any number of ranks (True), or add
        the ranks' sums with one ``Allreduce``, equal to rounding (False).
    block_rows : int
        With ``comm``: the rows per block of a global batch (at most ``batch_size /
        block_rows`` ranks share a batch in deterministic mode).
    sample_weight : array (T,) or None
        Per-instance weights w_t >= 0: each batch's loss is sum_t w_t Div_t / sum_t w_t over
        its rows (scikit-learn's normalisation; a weight of 2 counts as the row twice), and
        ``history.loss`` is the epoch's weighted mean. None: every row weighs 1.

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
    >>> bool(h.accuracy[-1] > 0.95)
    True
    """
    if isinstance(optimizer, LBFGS):
        refused = [name for name, v in (("batch_size", batch_size), ("checkpoint", checkpoint),
                                        ("resume", resume), ("comm", comm)) if v is not None]
        if refused:
            raise ValueError(f"fb.LBFGS trains on the full batch, without checkpoints or MPI: "
                             f"{', '.join(refused)} must be None")
        X, target, weights, _, epochs, Xv, tv, wv = _prepare(
            net, X, d, loss, optimizer, None, epochs, validation, patience, tol, sample_weight)
        return _fit_lbfgs(net, X, target, weights, loss, optimizer, epochs, tol,
                          None if validation is None else (Xv, tv, wv), callbacks, patience,
                          min_delta, restore_best)
    plan = None if comm is None else distributed.Plan(comm, deterministic, block_rows)

    def prepare():
        return _prepare(net, X, d, loss, optimizer, batch_size, epochs, validation, patience,
                        tol, sample_weight)

    X, target, weights, batch_size, epochs, Xv, tv, wv = prepare() if plan is None else \
        distributed.collectively(comm, prepare)
    T = X.shape[0]
    hint = loss.output_hint(net)
    if hint:
        warnings.warn(hint, stacklevel=2)

    use_engine = E.chooses(net, loss, target, optimizer, engine)
    if plan is not None:
        plan.use_engine = use_engine
        distributed.collectively(comm, lambda: distributed.same_shapes(comm, X, target))
        distributed.warn_oversubscription(comm)
        plan.start(net)
    rng = np.random.default_rng(seed)
    history, start = History(), 0
    best = (math.inf, None, None)  # (loss, parameters, buffers) of the best epoch
    if resume is not None:
        start, history, best = _resume(resume, net, optimizer, rng) if plan is None else \
            distributed.collectively(comm, lambda: _resume(resume, net, optimizer, rng))
    bar = _progress_bar(progress and (plan is None or plan.rank == 0), epochs, start)
    net.train()
    if use_engine and bar is None and validation is None and not callbacks and \
            checkpoint is None and patience is None and plan is None:
        _fit_compiled(net, X, target, loss, optimizer, batch_size, start, epochs, tol,
                      shuffle, rng, history, weights)
        return history
    classifies = _classifies(loss, net)

    def order_of(epoch):
        return rng.permutation(T) if shuffle and batch_size is not None else None

    def end_epoch(epoch, t0):
        nonlocal best
        if validation is not None:
            vl, vacc = _validate(net, Xv, tv, loss, wv)
            history.val_loss.append(vl)
            if vacc is not None:
                history.val_accuracy.append(vacc)
            if vl < best[0] - min_delta:
                best = (vl, net.flat_params.copy(), io.flat_buffers(net))
                history.best_epoch = epoch
        history.epoch_time.append(time.perf_counter() - t0)
        if bar is not None:
            post = {"loss": f"{history.loss[-1]:.4g}"}
            if history.val_loss:
                post["val"] = f"{history.val_loss[-1]:.4g}"
            post["samples/s"] = f"{T / history.epoch_time[-1]:.3g}"
            bar.set_postfix(post)
            bar.update(1)
        if checkpoint is not None and (epoch + 1) % checkpoint_every == 0 and \
                (plan is None or plan.rank == 0):
            _write_checkpoint(checkpoint, net, optimizer, rng, history, epoch + 1, best)
        return _should_stop(history, tol, patience, callbacks, epoch, net)

    try:
        epoch_loop(net, X, target, loss, optimizer, batch_size or T, range(start, epochs),
                   order_of, end_epoch, history, use_engine, classifies, plan=plan,
                   weights=weights)
    finally:
        if bar is not None:
            bar.close()
    if patience is not None and restore_best and best[1] is not None:
        _restore(net, best)
    return history


def _prepare(net, X, d, loss, optimizer, batch_size, epochs, validation, patience, tol,
             sample_weight=None):
    """``fit``'s checks and conversions, before anything changes: (X, target, weights, batch
    size, epochs, validation X, target and weights or None)."""
    _checks.instance_of(loss, Divergence, "loss")
    if not isinstance(optimizer, LBFGS):
        _checks.instance_of(optimizer, Optimizer, "optimizer")
    _checks.writable(net.flat_params, "net.flat_params")
    X = net._input(X)
    target = loss.target(d, X.shape[0], net.n_out, net.dtype)
    weights = _checks.sample_weight(sample_weight, X.shape[0])
    T = X.shape[0]
    if batch_size is not None:
        batch_size = min(_checks.positive_int(batch_size, "batch_size"), T)
    epochs = _checks.positive_int(epochs, "epochs")
    Xv = tv = wv = None
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) not in (2, 3):
            raise TypeError("validation must be (X, d) or (X, d, sample_weight)")
        Xv, dv, *wv = validation
        Xv = net._input(Xv, "validation X")
        tv = loss.target(dv, Xv.shape[0], net.n_out, net.dtype)
        wv = _checks.sample_weight(wv[0], Xv.shape[0], "validation sample_weight") if wv \
            else None
    if patience is not None and validation is None:
        raise ValueError("early stopping (patience) needs validation data")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be >= 0 or None, got {tol}")
    return X, target, weights, batch_size, epochs, Xv, tv, wv


def _fit_lbfgs(net, X, target, weights, loss, opt, epochs, tol, validation, callbacks, patience,
               min_delta, restore_best):
    """``fit`` with ``fb.LBFGS``: each iteration is an epoch of the history (its loss, the
    validation loss, the stopping rules and callbacks after it), at most ``epochs`` of them."""
    history, best = History(), (math.inf, None, None)
    net.train()
    run = copy.copy(opt)
    run.maxiter = min(opt.maxiter, epochs)
    t0 = time.perf_counter()

    def value_and_grad(p):
        net.flat_params[...] = p
        return net._loss_and_grad(X, target, loss, need_dx=False, weights=weights)[0], \
            net.flat_grads

    def after(it):
        nonlocal best, t0
        net.flat_params[...] = it.x
        history.loss.append(float(it.fun))
        history.lr.append(math.nan)  # a line search, no learning rate
        if validation is not None:
            Xv, tv, wv = validation
            vl, vacc = _validate(net, Xv, tv, loss, wv)
            history.val_loss.append(vl)
            if vacc is not None:
                history.val_accuracy.append(vacc)
            if history.val_loss[-1] < best[0] - min_delta:
                best = (history.val_loss[-1], net.flat_params.copy(), io.flat_buffers(net))
                history.best_epoch = it.nit - 1
        history.epoch_time.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if _should_stop(history, tol, patience, callbacks, it.nit - 1, net):
            raise StopIteration

    res = run.fit_flat(value_and_grad, net.flat_params, callback=after)
    if res.message.startswith(NON_FINITE):
        history.stop_reason = "non-finite"
        raise TrainingError(f"epoch {res.nit}: {not_finite(net, loss)} ({res.message})")
    if history.stop_reason is None:
        history.stop_reason = "converged" if res.status == 0 else \
            "epochs" if res.status == 1 else res.message
    if patience is not None and restore_best and best[1] is not None:
        _restore(net, best)
    return history


def _restore(net, best):
    """Put back the parameters (and running statistics) of the best epoch."""
    net.flat_params[...] = best[1]
    if best[2] is not None and best[2].size:
        io.set_buffers(net, best[2])


def _fit_compiled(net, X, target, loss, optimizer, batch_size, start, epochs, tol, shuffle,
                  rng, history, weights=None):
    """``fit`` when nothing needs Python between epochs: chunks of epochs in one compiled call
    each, with the same permutations, learning rates, stopping rule and numbers as the loop."""
    T, count = X.shape[0], _classifies(loss, net)
    weight = _weight(T, weights)
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
                            history.loss[-1] if history.loss else None, count, weights)
        seconds = (time.perf_counter() - t0) / len(outs)
        for k, (total, _, bad, right, _) in enumerate(outs):
            if bad >= 0:
                history.stop_reason = "non-finite"
                raise TrainingError(f"epoch {epoch + k}, step {int(bad)}: "
                                    f"{not_finite(net, loss)}")
            history.loss.append(total / weight)
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


def epoch_loop(net, X, target, loss, optimizer, batch, epochs, order_of, end_epoch, history,
               use_engine, count=False, before_step=None, plan=None, weights=None,
               by_rows=False):
    """The training loop of ``fit`` and of the scikit-learn estimators' SGD and Adam.

    For each epoch in ``epochs``: the optimizer's epoch is set, the rows are visited in
    ``order_of(epoch)`` (a permutation, or None: in order) in batches of ``batch``, each batch
    one step (``before_step(rows, weight)`` first, if given, with the batch's rows and weight:
    per-step hyper-parameters), then the epoch's mean loss, learning rate and (``count``)
    training accuracy are appended to ``history``, and ``end_epoch(epoch, t0)`` (t0: the
    epoch's start, ``time.perf_counter``) returns True to stop. Returns whether ``end_epoch``
    stopped the loop. A non-finite step raises ``TrainingError`` naming the epoch and step,
    with the last good parameters. With a ``distributed.Plan``, each step is shared out over
    its ranks.

    ``weights``: the rows' sample weights (None: 1 each). The epoch's loss is the mean of the
    batch losses weighted by the batches' weights (the weighted mean over the epoch's rows),
    or with ``by_rows`` by their rows (scikit-learn's estimators)."""
    T, weight = X.shape[0], _weight(X.shape[0], weights)
    for epoch in epochs:
        t0 = time.perf_counter()
        optimizer.set_epoch(epoch)
        order = order_of(epoch)
        if plan is not None:
            total, rows_total, right = plan.epoch(net, X, target, loss, optimizer, order, batch,
                                                  epoch, history, count, weights)
        else:
            total, rows_total, right = _run_epoch(net, X, target, loss, optimizer, order, batch,
                                                  epoch, history, use_engine, count,
                                                  before_step, weights)
        history.loss.append(rows_total / T if by_rows else total / weight)
        history.lr.append(optimizer.current_lr())
        if count:
            history.accuracy.append(right / T)
        stop = end_epoch(epoch, t0) if plan is None else \
            plan.any_rank(lambda: end_epoch(epoch, t0))
        if stop:
            if plan is not None:
                history.stop_reason = history.stop_reason or "another rank stopped"
            return True
    history.stop_reason = history.stop_reason or "epochs"
    return False


def _weight(T, weights):
    """The weight of an epoch: its rows, or the sum of their sample weights."""
    return float(T) if weights is None else KDiv.total(weights)


def _run_epoch(net, X, target, loss, optimizer, order, batch, epoch, history, use_engine,
               count=False, before_step=None, weights=None):
    """One epoch through the engine or node by node; returns (sum of batch loss * batch
    weight, sum of batch loss * rows, rows classified right while training, if ``count``).
    Without ``before_step`` the engine runs the whole epoch in one call, with it one call per
    step."""
    T = X.shape[0]
    order = np.arange(T) if use_engine and order is None else order
    if use_engine and before_step is None:
        total, _, bad, right, by_rows = E.run_epoch(net, X, target, loss, optimizer, order,
                                                    batch, count, weights)
        if bad >= 0:
            history.stop_reason = "non-finite"
            raise TrainingError(f"epoch {epoch}, step {bad}: {not_finite(net, loss)}")
        return total, by_rows, right
    total, by_rows, right = 0.0, 0.0, 0
    for step, lo in enumerate(range(0, T, batch)):
        rows = min(batch, T - lo)
        idx = slice(lo, lo + batch) if order is None else order[lo:lo + batch]
        wb = None if weights is None else weights[idx]
        if before_step is not None:
            before_step(rows, float(rows) if wb is None else KDiv.total(wb))
        if use_engine:
            value, _, bad, r, v_rows = E.run_epoch(net, X, target, loss, optimizer,
                                                   order[lo:lo + batch], rows, count, weights)
            if bad >= 0:
                history.stop_reason = "non-finite"
                raise TrainingError(f"epoch {epoch}, step {step}: {not_finite(net, loss)}")
            total, by_rows, right = total + value, by_rows + v_rows, right + r
            continue
        xb, tb = (X, target) if batch == T and order is None else (X[idx], target[idx])
        try:
            value = train_step(net, xb, tb, loss, optimizer, wb)
        except TrainingError as e:
            history.stop_reason = "non-finite"
            raise TrainingError(f"epoch {epoch}, step {step}: {e}") from None
        total += value * (xb.shape[0] if wb is None else KDiv.total(wb))
        by_rows += value * xb.shape[0]
        if count:
            right += correct(net._last_output, tb)
    return total, by_rows, right


def _should_stop(history, tol, patience, callbacks, epoch, net):
    if tol is not None and len(history.loss) > 1 and \
            KE.converged.py_func(history.loss[-2], history.loss[-1], tol):
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
    if best[2] is not None and best[2].size:
        arrays["best_buffers"] = best[2]
    io.save(net, path, **arrays)


STATE_MAX_BYTES = 1 << 28  # a checkpoint's training state, history included (64 Mi characters)


def _resume(path, net, optimizer, rng):
    """Continue from the checkpoint at ``path``: every part of it is read and checked first
    (architecture, arrays, optimizer state, history, random states, counters), then the
    parameters, optimizer and random states are set; a bad file raises CheckpointError and
    changes nothing. Returns (epoch, history, best)."""
    n, dtype = net.flat_params.size, net.dtype
    with io.Archive(path) as z:
        arch = z.json("architecture", io.ARCH_MAX_BYTES)
        mine = json.loads(json.dumps(io.architecture(net)))
        if not isinstance(arch, dict) or arch.get("root") != mine["root"] or \
                arch.get("dtype") != mine["dtype"] or arch.get("format") != io.FORMAT or \
                arch.get("version") != io.VERSION:
            raise io.CheckpointError(f"{path}: the checkpoint's architecture does not match "
                                     f"the network being trained")
        if "state" not in z:
            raise io.CheckpointError(f"{path}: a saved network, not a training checkpoint")
        state = z.json("state", STATE_MAX_BYTES, allow_constants=True)
        if not isinstance(state, dict):
            raise io.CheckpointError(f"{path}: the training state is not a JSON object")
        if state.get("optimizer") != type(optimizer).__name__:
            raise io.CheckpointError(f"{path}: written with {state.get('optimizer')!r}, "
                                     f"resumed with {type(optimizer).__name__}")
        params = z.finite_array("params", (n,), dtype)
        names = _optimizer_buffers(optimizer, dtype)
        saved = {m[4:] for m in z.names() if m.startswith("opt_")}
        if names is not None and saved != names:
            raise io.CheckpointError(f"{path}: optimizer state {sorted(saved)}, but "
                                     f"{type(optimizer).__name__} keeps {sorted(names)}")
        sd = {k: z.finite_array("opt_" + k, (n,), dtype) for k in sorted(saved)}
        best_params = z.finite_array("best_params", (n,), dtype) \
            if "best_params" in z else None
        buffers = io.read_buffers(z, net)
        n_buffers = 0 if buffers is None else buffers.size
        best_buffers = z.finite_array("best_buffers", (n_buffers,), dtype) \
            if "best_buffers" in z else None
    epoch = _counter(state, "epoch", 1, path)
    sd.update(t=_counter(state, "opt_t", 0, path), epoch=_counter(state, "opt_epoch", 0, path))
    history = _history_from(state.get("history"), epoch, path)
    best_loss = state.get("best_loss")
    if (best_loss is None) != (best_params is None) or best_loss is not None and \
            (type(best_loss) not in (int, float) or not math.isfinite(best_loss)):
        raise io.CheckpointError(f"{path}: best_loss {best_loss!r} and best_params "
                                 f"({'absent' if best_params is None else 'present'}) do not "
                                 f"go together")
    if (best_buffers is not None) != (best_params is not None and n_buffers > 0):
        raise io.CheckpointError(f"{path}: best_buffers are "
                                 f"{'present' if best_buffers is not None else 'absent'} with "
                                 f"best_params {'present' if best_params is not None else 'absent'}"
                                 f" and {n_buffers} buffer values")
    for key, gen in (("rng", rng), ("net_rng", net.rng)):
        _check_rng_state(state.get(key), gen, f"{path}: {key}")
    # Everything is checked: from here on nothing can fail half way.
    net.flat_params[...] = params
    if buffers is not None:
        io.set_buffers(net, buffers)
    optimizer.load_state_dict(sd, net)
    rng.bit_generator.state = state["rng"]
    net.rng.bit_generator.state = state["net_rng"]
    return epoch, history, (math.inf if best_loss is None else float(best_loss), best_params,
                            best_buffers)


def _optimizer_buffers(optimizer, dtype):
    """Names of the state arrays ``optimizer.step`` keeps, found by one step of a copy on one
    scratch parameter (None when that copy cannot step: a user's optimizer)."""
    probe = copy.copy(optimizer)
    probe.state = {}
    scratch = SimpleNamespace(flat_params=np.zeros(1, dtype), flat_grads=np.zeros(1, dtype))
    try:
        probe.step(scratch)
    except Exception:
        return None
    return {k for k, v in probe.state.items() if isinstance(v, np.ndarray)}


def _counter(state, key, low, path):
    v = state.get(key)
    if type(v) is not int or not low <= v < 1 << 53:
        raise io.CheckpointError(f"{path}: {key} must be an integer >= {low}, got {v!r}")
    return v


def _history_from(saved, epoch, path):
    """A History from its saved dict: only History's own fields; per-epoch lists of real
    numbers, no longer than ``epoch`` (``loss`` exactly that long); scalars None, str or int."""
    history = History()
    if not isinstance(saved, dict):
        raise io.CheckpointError(f"{path}: the history is not a JSON object")
    fields = vars(history)
    for k, v in saved.items():
        if k not in fields:
            raise io.CheckpointError(f"{path}: unknown history field {k!r}")
        if isinstance(fields[k], list):
            if not isinstance(v, list) or len(v) > epoch or \
                    any(type(x) not in (int, float) for x in v):
                raise io.CheckpointError(f"{path}: history.{k} must be a list of at most "
                                         f"{epoch} numbers")
            v = [float(x) for x in v]
        elif v is not None and type(v) not in (str, int) or type(v) is str and len(v) > 1000:
            raise io.CheckpointError(f"{path}: history.{k} = {v!r:.80} is not a short string "
                                     f"or an integer")
        setattr(history, k, v)
    if len(history.loss) != epoch:
        raise io.CheckpointError(f"{path}: the history holds {len(history.loss)} losses for "
                                 f"{epoch} epochs")
    if history.best_epoch is not None and not (type(history.best_epoch) is int and
                                               0 <= history.best_epoch < epoch):
        raise io.CheckpointError(f"{path}: best_epoch {history.best_epoch!r} is not one of "
                                 f"the {epoch} epochs")
    return history


def _check_rng_state(saved, gen, what):
    """Refuse a random state that ``gen``'s kind of bit generator would not take."""
    probe = type(gen.bit_generator)()
    try:
        probe.state = saved
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise io.CheckpointError(f"{what}: not a {type(probe).__name__} state "
                                 f"({type(e).__name__}: {e})") from e
