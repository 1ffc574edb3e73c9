"""The one place for numba flags, the numba cache location and the thread count.

Every ``@njit`` in :mod:`fastbp.kernels` takes its options from here (a test checks it):

- ``SERIAL``: cached, no Python objects, NumPy error model (1/0 gives inf, not an exception),
  and ``fastmath=False`` stated explicitly: numba lets a callee inherit any flag it leaves
  unset from the first caller that compiles it, so an ``ARITH`` caller would otherwise compile
  a strict helper with reassociation (which breaks, e.g., exp's rounding trick).
- ``INLINE``: ``SERIAL`` plus LLVM ``alwaysinline``, for the small scalar functions of
  :mod:`fastbp.kernels.fastmath` that sit in vectorised loops (a loop with a call in it does
  not vectorise; LLVM inlining keeps the callee's own strict floating-point flags, where
  numba's ``inline='always'`` would recompile it with the caller's).
- ``PARALLEL``: the same with ``parallel=True``; kernels use ``prange`` over the index that owns
  each write, so results do not depend on the number of threads.
- ``ARITH``: for pure arithmetic leaves (dot products, axpy): FMA contraction only. No
  reassociation: with it LLVM may sum the same dot product in a different order in each
  context it compiles it in (measured: a kernel and its serial twin disagreed in the last
  bit), so results would depend on the compiler rather than the source. Reductions get their
  vector width from explicit independent accumulators instead. NaN and inf propagate.
"""

import os
import tempfile
import types

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

_FASTMATH = frozenset({"contract"})

SERIAL = dict(cache=True, nogil=True, error_model="numpy", fastmath=False)
INLINE = dict(SERIAL, forceinline=True)
PARALLEL = dict(SERIAL, parallel=True)
ARITH = dict(SERIAL, fastmath=set(_FASTMATH))
ARITH_PARALLEL = dict(PARALLEL, fastmath=set(_FASTMATH))


def njit(**flags):
    """``numba.njit`` with one of the flag sets above; the only decorator kernels use."""
    return numba.njit(**flags)


def serial_twin(kernel):
    """``kernel`` (a parallel kernel) compiled once more without ``parallel``: its ``prange``
    runs as ``range`` on the calling thread. The source is the same, so every output element is
    computed by the same arithmetic; the engine calls the twin where an op is too small to be
    worth waking other threads. It gets its own name, so numba's cache keeps the two apart."""
    fn = kernel.py_func
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    twin.__module__ = fn.__module__
    flags = {k: v for k, v in kernel.targetoptions.items() if k not in ("parallel", "nopython")}
    return numba.njit(cache=SERIAL["cache"], **flags)(twin)


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
