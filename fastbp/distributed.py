"""Data-parallel training over MPI: ``fit(net, X, d, ..., comm=comm)``.

Every rank passes the same X and d (an array, or a memory map of one file in the network's
dtype: each rank checks it once for NaN and inf, then reads only the rows it trains on). All
ranks draw the same permutation, so every global minibatch of ``batch_size`` rows is the same
on every rank count. Its rows are cut into blocks of ``block_rows`` consecutive positions,
and the blocks are shared out in order: rank r computes blocks ``[n r / size, n (r + 1) /
size)``, or with a power of two of ranks the r-th subtree of the order the deterministic mode
sums in (``Plan.blocks``). A rank computes each of its blocks' mean gradient with the same
kernels as a single process (the compiled engine where it runs the network, as ``fit`` does,
else node by node), and weights it by the block's share of the batch.

- ``deterministic=True``: the block gradients are summed in one fixed order, a balanced tree
  over the blocks (``tree_sum``), so the result does not depend on the number of ranks (or
  threads): parameters are bit-identical for any number of ranks (tested with 1, 2, 3 and 4).
  With a power of two of ranks, each rank's blocks are a subtree: it sums them, and the
  ranks combine their sums pairwise (one gradient sent and received per doubling of the
  ranks). Other rank counts gather every block and sum the same tree. At most ``blocks``
  ranks share a batch.
- ``deterministic=False``: each rank computes the gradient of all its blocks' rows in one call
  and one ``Allreduce`` adds the ranks' (MPI does not fix the order of that sum: equal to
  rounding, not bit for bit). It moves one gradient per rank per step.

Every rank then checks the same total gradient and takes the same optimizer step, so the
parameters stay identical on all ranks without being sent again (they are broadcast from rank 0
once, at the start). An error on one rank (a bad input, an exception in a step) is announced to
all ranks at the next exchange, and every rank raises it: none is left waiting. mpi4py is needed
only by the caller (``pip install "fastbp[mpi]"``); this module calls the communicator's methods.
"""

import os
import warnings

import numpy as np

from . import _checks, _config, engine
from .errors import TrainingError
from .kernels import divergences as KDiv
from .losses import correct
from .network import not_finite


def collectively(comm, fn):
    """``fn()`` on every rank; if it raised on any rank, every rank raises that rank's error
    (the lowest such rank's, its rank named), so no rank waits for one that failed."""
    try:
        out, err = fn(), None
    except Exception as e:  # noqa: BLE001 - passed on to every rank
        out, err = None, e
    _raise_any(comm, comm.allgather(_announce(err)), err)
    return out


def _announce(err):
    return None if err is None else (type(err), str(err))


def _raise_any(comm, announced, err):
    """Raise the lowest rank's error of ``announced`` (one entry per rank) on every rank."""
    first = next(((r, e) for r, e in enumerate(announced) if e is not None), None)
    if first is None:
        return
    rank, (kind, msg) = first
    if err is not None and rank == comm.Get_rank():
        raise err
    try:
        e = kind(f"rank {rank}: {msg}")
    except Exception:  # noqa: BLE001 - an exception type that takes other arguments
        e = RuntimeError(f"rank {rank}: {kind.__name__}: {msg}")
    raise e


def check_comm(comm):
    """``comm`` if it looks like an mpi4py communicator; TypeError otherwise."""
    needed = ("Get_rank", "Get_size", "allgather", "Allgatherv", "Allreduce", "Bcast",
              "Sendrecv")
    missing = [m for m in needed if not hasattr(comm, m)]
    if missing:
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD); "
                        f"{type(comm).__name__} has no {', '.join(missing)}")
    return comm


def same_shapes(comm, X, target):
    """Refuse (ValueError) a run in which the ranks were given data of different shapes."""
    mine = (X.shape, target.shape, X.dtype.str)
    shapes = comm.allgather(mine)
    odd = [r for r, s in enumerate(shapes) if s != shapes[0]]
    if odd:
        raise ValueError(f"every rank must pass the same X and d (all rows, or a memory map of "
                         f"one file); rank 0 has X {shapes[0][0]} and d {shapes[0][1]}, rank "
                         f"{odd[0]} has X {shapes[odd[0]][0]} and d {shapes[odd[0]][1]}")


def warn_oversubscription(comm):
    """Warn when the ranks on this node times fastbp's threads exceed the node's cores."""
    try:
        from mpi4py import MPI

        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        ranks = local.Get_size()
        local.Free()
    except Exception:  # noqa: BLE001 - not mpi4py, or no shared-memory split: cannot tell
        return
    threads, cores = _config.get_num_threads(), os.cpu_count() or 1
    if ranks * threads > cores and comm.Get_rank() == 0:
        warnings.warn(f"{ranks} ranks x {threads} threads on a node with {cores} cores: the "
                      f"ranks will wait for each other's threads; set NUMBA_NUM_THREADS or "
                      f"fb.set_num_threads to {max(1, cores // ranks)}", stacklevel=3)


class Plan:
    """How a run shares its global batches: the communicator, the summation mode and the rows
    per block."""

    def __init__(self, comm, deterministic=True, block_rows=64):
        self.comm = check_comm(comm)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.deterministic = bool(deterministic)
        if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or \
                block_rows < 1:
            raise ValueError(f"block_rows must be a positive int, got {block_rows!r}")
        self.block_rows = int(block_rows)
        self.use_engine = False  # set by fit: blocks through the compiled engine
        self._buffers = {}

    def any_rank(self, fn):
        """``fn()`` on every rank (an epoch's end: validation, callbacks, checkpoint); True on
        every rank if it returned true on any, and any rank's error raised on every rank, so
        the ranks stop together."""
        try:
            out, err = bool(fn()), None
        except Exception as e:  # noqa: BLE001 - announced to every rank
            out, err = False, e
        parts = self.comm.allgather((out, _announce(err)))
        _raise_any(self.comm, [a for _, a in parts], err)
        return any(o for o, _ in parts)

    def start(self, net):
        """Every rank starts from rank 0's parameters. A node whose rows depend on each other
        in training (BatchNorm1d's batch statistics) is refused, on every rank alike: blocks
        of a batch would each normalise by their own statistics, another computation than the
        batch's (fastbp has no synchronised batch normalisation)."""
        coupled = [node for node in net.walk() if node.couples_rows]
        if coupled:
            raise ValueError(f"{coupled[0]!r} normalises over the batch, which data-parallel "
                             f"training splits into blocks; use LayerNorm, or train without "
                             f"comm")
        self.comm.Bcast(net.flat_params, root=0)

    def epoch(self, net, X, target, loss, optimizer, order, batch, epoch, history, count,
              weights=None):
        """One epoch of global batches (rows ``order``, or in order if None); returns (sum of
        batch loss * batch weight, sum of batch loss * rows, rows classified right while
        training if ``count``); ``weights``: the rows' sample weights or None."""
        T = X.shape[0]
        total, by_rows, right = 0.0, 0.0, 0
        for step, lo in enumerate(range(0, T, batch)):
            hi = min(lo + batch, T)
            rows = np.arange(lo, hi) if order is None else order[lo:hi]
            try:
                value, r = self.step(net, X, target, loss, optimizer, rows, count, weights)
            except TrainingError as e:
                history.stop_reason = "non-finite"
                raise TrainingError(f"epoch {epoch}, step {step}: {e}") from None
            total += value * (hi - lo if weights is None else KDiv.total(weights[rows]))
            by_rows += value * (hi - lo)
            right += r
        return total, by_rows, right

    def step(self, net, X, target, loss, optimizer, rows, count, weights=None):
        """One optimizer step on the global batch ``rows``; returns (its mean loss, rows right).
        Each block's gradient counts by the block's share of the batch's weight (its rows, or
        with ``weights`` the sum of their sample weights): the engine computes that share
        directly, into the block's place; node by node it is the block's mean times its
        share."""
        B, P = rows.shape[0], net.flat_params.size
        weight = float(B) if weights is None else KDiv.total(weights[rows])
        n = -(-B // self.block_rows)
        b0, b1 = self.blocks(n, self.rank)
        # deterministic: each of this rank's blocks apart; else all its rows in one call
        spans = [(j * self.block_rows, (j + 1) * self.block_rows) for j in range(b0, b1)] \
            if self.deterministic else [(b0 * self.block_rows, b1 * self.block_rows)]
        every = self._buffer(("blocks", n, P, net.dtype.str), (n, P), net.dtype) \
            if self.deterministic else None
        g = net.flat_grads
        # this rank's blocks' shares of the loss, then rows right and whether it failed
        mine, err = np.zeros(len(spans) + 2), None
        try:
            for k, (lo, hi) in enumerate(spans):
                idx = rows[lo:hi]
                dest = every[b0 + k] if self.deterministic else g
                if idx.shape[0] == 0:
                    dest[...] = 0
                    continue
                if self.use_engine:
                    mine[k], r, _ = engine.gradient(net, X, target, loss, optimizer, idx, count,
                                                    weights, norm=weight, grads=dest)
                else:
                    wb = None if weights is None else weights[idx]
                    tb = target[idx]
                    # a built-in divergence computes the block's share as the engine does
                    norm = weight if loss.built_in() else None
                    v, _ = net._loss_and_grad(np.ascontiguousarray(X[idx], net.dtype), tb,
                                              loss, need_dx=False, weights=wb,
                                              train=net.step_mode(optimizer), norm=norm)
                    r = correct(net._last_output, tb) if count else 0
                    share = 1.0 if norm else (idx.shape[0] if wb is None else
                                              KDiv.total(wb)) / weight
                    if dest is not g or share != 1:
                        np.multiply(g, net.dtype.type(share), out=dest)
                    mine[k] = v * share
                mine[-2] += r
        except Exception as e:  # noqa: BLE001 - announced to every rank below
            err = e
        mine[-1] = err is not None
        parts = self._exchange(mine, n)
        if any(p[-1] for p in parts):  # some rank failed: every rank raises the first error
            _raise_any(self.comm, self.comm.allgather(_announce(err)), err)
        value = 0.0
        for p in parts:  # block order: rank by rank, each rank's blocks in order
            for x in p[:-2]:
                value += x
        if self.deterministic:
            self._tree_total(every, n, b0, b1, net.dtype, g)
        elif self.size > 1:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, g)
        if not (np.isfinite(value) and _checks.all_finite(g)):
            raise TrainingError(not_finite(net, loss))
        optimizer.step(net)
        return value, int(sum(p[-2] for p in parts))

    def _tree_total(self, every, n, b0, b1, dtype, out):
        """The sum of the n block gradients ``every`` (this rank's, rows b0 to b1, filled) by
        ``tree_sum``'s fixed order, the same on every rank and for every rank count, into
        ``out``. With a power of two of ranks (``pairwise``) this rank sums its own blocks, a
        subtree, and the ranks add their sums pairwise, rank r with r ^ 2^l at level l (a + b
        == b + a exactly, so both of a pair get the same bits), each level one exchange of one
        gradient. Otherwise every block goes to every rank (one ``Allgatherv``) and each sums
        them all. Sums in place in ``every``, the last sum into ``out`` (a copy of the total
        into ``out`` was one more pass over the gradient: 84 MB per W4 step)."""
        if self.size == 1:
            return tree_sum(every, 0, n, out)
        from mpi4py import MPI

        kind = MPI.FLOAT if dtype == np.float32 else MPI.DOUBLE
        if not pairwise(n, self.size):
            P = every.shape[1]
            counts = [(self.blocks(n, r)[1] - self.blocks(n, r)[0]) * P
                      for r in range(self.size)]
            self.comm.Allgatherv(MPI.IN_PLACE, [every, counts, list(np.cumsum(
                [0] + counts[:-1])), kind])
            return tree_sum(every, 0, n, out)
        acc = tree_sum(every, b0, b1)
        other = self._buffer(("other", every.shape[1], dtype.str), (every.shape[1],), dtype)
        step = 1
        while step < self.size:
            partner = self.rank ^ step
            self.comm.Sendrecv([acc, kind], dest=partner, recvbuf=[other, kind], source=partner)
            acc = np.add(acc, other, out=out if 2 * step >= self.size else acc)
            step *= 2
        return acc

    def _exchange(self, mine, n):
        """Every rank's ``mine`` (its blocks' loss shares, rows right, failed), by rank: one
        float64 Allgatherv of a few numbers (no pickling)."""
        if self.size == 1:
            return [mine]
        from mpi4py import MPI

        counts = [self.blocks(n, r)[1] - self.blocks(n, r)[0] + 2 if self.deterministic else 3
                  for r in range(self.size)]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out = np.empty(int(sum(counts)))
        self.comm.Allgatherv([mine, MPI.DOUBLE], [out, counts, list(starts), MPI.DOUBLE])
        return [out[a:a + c] for a, c in zip(starts, counts)]

    def _buffer(self, key, shape, dtype):
        """A buffer kept from step to step (a new one each step costs its page faults: 336 MB
        of them per W4 step)."""
        if key not in self._buffers:
            if len(self._buffers) >= 6:  # blocks and a partner's sum, full and last batches
                self._buffers.clear()
            self._buffers[key] = np.empty(shape, dtype)
        return self._buffers[key]

    def blocks(self, n, rank):
        """The blocks ``[first, end)`` of n that ``rank`` computes: with a power of two of
        ranks, the subtree of ``tree_sum``'s order found by halving [0, n) as it does (the
        lower half to the lower ranks); else ``[n rank / size, n (rank + 1) / size)``."""
        if self.size & (self.size - 1):
            return n * rank // self.size, n * (rank + 1) // self.size
        lo, hi, group = 0, n, self.size
        while group > 1:
            group //= 2
            mid = lo + (hi - lo) // 2
            lo, hi = (lo, mid) if rank & group == 0 else (mid, hi)
        return lo, hi


def tree_sum(every, lo, hi, out=None):
    """The sum of rows ``lo`` to ``hi`` of ``every`` in a fixed order: the sum of the first
    (hi - lo) // 2 rows plus the sum of the others, each summed so in turn (a balanced binary
    tree). Computed in place: returns row lo, which then holds the sum; or, with ``out``, the
    last sum goes into ``out`` (returned) instead."""
    if hi - lo == 1:
        if out is None:
            return every[lo]
        out[...] = every[lo]
        return out
    mid = lo + (hi - lo) // 2
    a, b = tree_sum(every, lo, mid), tree_sum(every, mid, hi)
    return np.add(a, b, out=a if out is None else out)


def pairwise(n, size):
    """Whether ``size`` ranks sum n blocks by ``tree_sum``'s order pairwise: size a power of
    two (``Plan.blocks`` then gives each rank a subtree) and a block for every rank."""
    return size & (size - 1) == 0 and n >= size
