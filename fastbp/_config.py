"""The one place for numba flags, the numba cache location and the thread count.

Every ``@njit`` in :mod:`fastbp.kernels` takes its options from here (a test checks it):

- ``SERIAL``: cached, no Python objects, NumPy error model (1/0 gives inf, not an exception).
- ``PARALLEL``: the same with ``parallel=True``; kernels use ``prange`` over the index that owns
  each write, so results do not depend on the number of threads.
- ``ARITH``: for pure arithmetic leaves (dot products, axpy). It allows reassociation and FMA
  contraction, which lets LLVM vectorise reductions, but keeps NaN and inf semantics
  (no ``nnan``/``ninf``/``afn``): a NaN in the data still propagates to the result.
"""

import os
import tempfile

# Where the package directory is read-only and numba's user-cache fallback is not writable either,
# ``cache=True`` fails at import ("no locator available"). Point numba at a writable cache first.
# This must run before numba is imported.
if "NUMBA_CACHE_DIR" not in os.environ:
    _pkg = os.path.dirname(os.path.abspath(__file__))
    if not os.access(os.path.join(_pkg, "kernels"), os.W_OK):
        _home = os.path.join(os.path.expanduser("~"), ".cache", "fastbp-numba")
        try:
            os.makedirs(_home, exist_ok=True)
            _ok = os.access(_home, os.W_OK)
        except OSError:
            _ok = False
        os.environ["NUMBA_CACHE_DIR"] = _home if _ok else os.path.join(
            tempfile.gettempdir(), "fastbp-numba-%d" % os.getuid())

import numba  # noqa: E402

_FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})

SERIAL = dict(cache=True, nogil=True, error_model="numpy")
PARALLEL = dict(SERIAL, parallel=True)
ARITH = dict(SERIAL, fastmath=set(_FASTMATH))
ARITH_PARALLEL = dict(PARALLEL, fastmath=set(_FASTMATH))


def njit(**flags):
    """``numba.njit`` with one of the flag sets above; the only decorator kernels use."""
    return numba.njit(**flags)


def set_num_threads(n):
    """Set the number of threads for fastbp's kernels and for BLAS together.

    Parameters
    ----------
    n : int
        Between 1 and the number of cores numba found (``numba.config.NUMBA_NUM_THREADS``).

    Examples
    --------
    >>> import fastbp as fb
    >>> fb.set_num_threads(1)
    >>> fb.get_num_threads()
    1
    """
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    n = int(n)
    top = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= top:
        raise ValueError(f"number of threads must be between 1 and {top}, got {n}")
    numba.set_num_threads(n)
    _limit_blas(n)


def get_num_threads():
    """The number of threads fastbp's parallel kernels use."""
    return numba.get_num_threads()


def _limit_blas(n):
    # numba's OpenMP threads next to OpenBLAS threads oversubscribe the cores (a matmul was
    # measured 40x slower); BLAS calls happen between parallel kernels, so they get the same n.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    threadpool_limits(n, user_api="blas")
