"""Inverted dropout with masks from a counter-based generator: whether unit j of row r is kept at
training step t is a hash of (seed, t, r, j), so a mask needs no state, no storage between the
forward and the backward pass, and is the same for any number of threads, in the engine and
node by node, and after a resume from a checkpoint (which restores t).

The hash is SplitMix64's finaliser applied three times (to the seed and step, then the row,
then the unit); the top 53 bits of the result are a uniform u in [0, 1), and the unit is kept
when u >= p. Row r owns y[r] and dz[r].
"""

import numpy as np
from numba import prange

from .._config import INLINE, PARALLEL, SERIAL, njit, serial_twin

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO53 = 9007199254740992.0


@njit(**INLINE)
def _mix(x):
    """SplitMix64's finaliser: a bijection of uint64 that spreads every input bit."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(**SERIAL)
def row_key(seed, step, row):
    """The hash of (seed, step, row), from which each unit's draw is hashed."""
    return _mix(_mix(np.uint64(seed) + np.uint64(step) * _GOLDEN) ^ (np.uint64(row) * _M2))


@njit(**SERIAL)
def uniform(seed, step, row, unit):
    """The draw u in [0, 1) of unit ``unit`` of row ``row`` at step ``step``."""
    h = _mix(row_key(seed, step, row) + np.uint64(unit) * _GOLDEN)
    return float(h >> np.uint64(11)) / _TWO53


@njit(**SERIAL)
def _threshold(p):
    return np.uint64(p * _TWO53)


@njit(**PARALLEL)
def dropout(x, y, seed, step, p):
    """y = x m / (1 - p), m = 1 where the unit's draw u >= p, else 0 (NaN stays NaN, as
    x * 0 does), the scale in x's dtype. The forward pass (x the input) and the backward
    pass (x = dDiv/dy, y = dDiv/dz) are the same product with the same mask."""
    scale = np.empty(2, x.dtype)
    scale[0], scale[1] = 0, 1 / (1 - p)
    thr = _threshold(p)
    for r in prange(x.shape[0]):
        key = row_key(seed, step, r)
        for j in range(x.shape[1]):
            keep = (_mix(key + np.uint64(j) * _GOLDEN) >> np.uint64(11)) >= thr
            y[r, j] = x[r, j] * scale[1 if keep else 0]


# The same kernel runs serially, for ops too small to split (see _config.serial_twin).
dropout_serial = serial_twin(dropout)
