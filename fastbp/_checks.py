"""Validation at the boundary: shape, dtype and finiteness, with the offending value named."""

import math
import numbers
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_dtype(dtype):
    """The network dtype: float32 or float64, anything else a TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from e
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def as_float_array(x, name, dtype, ndim=2):
    """``x`` as a C-contiguous array of ``dtype`` with ``ndim`` dimensions (1-D is one row)."""
    if type(x) is np.ndarray and x.ndim == ndim and x.dtype == dtype and x.flags.c_contiguous:
        check_finite(x, name)  # the common case (a single-row predict spends 1 us here)
        return x
    a = as_numeric(x, name)
    if ndim == 2 and a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=dtype)
    check_finite(a, name)
    return a


def as_numeric(x, name):
    """``x`` as a NumPy array of bools, integers or reals. Pandas DataFrames and Series of
    numbers pass (nullable dtypes too); a scipy.sparse matrix, missing values (pandas NA) and
    non-numeric data raise, naming where."""
    sparse = sys.modules.get("scipy.sparse")  # not imported: x cannot be one of its matrices
    if sparse is not None and sparse.issparse(x):
        raise TypeError(f"{name} is a scipy.sparse matrix (shape {x.shape}); fastbp needs a "
                        f"dense array: pass {name.split()[-1]}.toarray()")
    if hasattr(x, "isna") and hasattr(x, "to_numpy"):  # a pandas DataFrame or Series
        x = _from_pandas(x, name)
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}{_first_odd(a)}")
    return a


def _from_pandas(x, name):
    missing = np.asarray(x.isna())
    if missing.any():
        pos = tuple(int(i) for i in np.argwhere(missing)[0])
        v = x.iat[pos if len(pos) > 1 else pos[0]]
        what = "pandas NA" if type(v).__name__ == "NAType" else \
            "NaN" if isinstance(v, float) and v != v else repr(v)
        raise ValueError(f"{name} holds missing values ({what}) at {_where(pos)}")
    dtypes = list(x.dtypes) if hasattr(x, "columns") else [x.dtype]
    numpy = [getattr(dt, "numpy_dtype", dt) for dt in dtypes]  # nullable Int64 -> int64
    for j, dt in enumerate(numpy):
        if not isinstance(dt, np.dtype) or dt.kind not in "biuf":
            col, values = (f"column {j} ({x.columns[j]!r})", x.iloc[:, j]) \
                if hasattr(x, "columns") else ("the Series", x)
            raise TypeError(f"{name} must hold real numbers; {col} has dtype {dtypes[j]}"
                            f"{_first_odd(np.asarray(values, dtype=object))}")
    return x.to_numpy(dtype=np.result_type(*numpy)) if numpy else x.to_numpy()


def _first_odd(a):
    """' (<value> at <where>)' for the first element of an object array that is not a real
    number, a hint when all are numbers, '' for other arrays."""
    if a.dtype.kind != "O":
        return ""
    for i, v in enumerate(a.ravel()):
        if not isinstance(v, numbers.Real):
            pos = tuple(int(k) for k in np.unravel_index(i, a.shape))
            return f" ({v!r} at {_where(pos)})"
    return " (of numbers: convert it with .astype(float))"


def _where(pos):
    """'row r, column c' for a position in a 2-D array, 'index i' otherwise."""
    if len(pos) == 2:
        return f"row {pos[0]}, column {pos[1]}"
    return f"index {pos[0] if len(pos) == 1 else pos}"


def all_finite(a):
    """No NaN or inf in the float array ``a``. For a large array a finite sum proves it without
    a temporary of its size; a sum that overflows (or meets NaN or inf) is settled element by
    element. For a small one the element test is as quick."""
    if a.size >= 4096:
        with np.errstate(all="ignore"):  # the sum's overflow or inf - inf is no news
            if math.isfinite(np.add.reduce(a, axis=None)):
                return True
    return bool(np.isfinite(a).all())


def check_finite(a, name, block=1 << 20, error=ValueError):
    """Refuse NaN and inf, naming the first position that holds one (raising ``error``). Checks
    ``block`` elements at a time, so a large (memory-mapped) array needs no temporary of its
    own size."""
    if a.dtype.kind != "f" or a.size == 0 or a.size <= block and all_finite(a):
        return  # the common case, without the blockwise search below
    rows = max(1, block // max(1, a[0].size)) if a.ndim > 1 else block
    bad = next((lo for lo in range(0, a.shape[0], rows)
                if not np.isfinite(a[lo:lo + rows]).all()), None)
    if bad is not None:
        pos = tuple(int(i) for i in np.argwhere(~np.isfinite(a[bad:bad + rows]))[0])
        pos = (pos[0] + bad,) + pos[1:]
        what = "NaN" if np.isnan(a[pos]) else "inf"
        raise error(f"{name} contains {what} at {_where(pos)}")


def in_range(labels, n):
    """Every one of the (non-empty) integer ``labels`` is in [0, n). A few are read as a
    Python list (0.5 us, where two NumPy reductions cost 5 us: a single-row step's labels)."""
    if labels.size <= 16:
        values = labels.ravel().tolist()
        return min(values) >= 0 and max(values) < n
    return labels.min() >= 0 and labels.max() < n


def check_width(a, name, width):
    if width is not None and a.shape[1] != width:
        raise ValueError(f"{name} has {a.shape[1]} columns but the network expects {width} "
                         f"(shape {a.shape})")


def check_rows(a, name, rows, other="X"):
    if a.shape[0] != rows:
        raise ValueError(f"Expected {other} batch_size ({rows}) to match {name} batch_size "
                         f"({a.shape[0]}).")


def positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return int(v)


def instance_of(obj, base, name):
    """``obj`` if it is an instance of ``base``. A class where an instance belongs (``fb.Adam``
    for ``fb.Adam()``, the classic slip) and anything else are a TypeError naming it."""
    if isinstance(obj, type):
        raise TypeError(f"{name}: pass fb.{obj.__name__}(...) (an instance), not the class "
                        f"fb.{obj.__name__}")
    if not isinstance(obj, base):
        raise TypeError(f"{name} must be a fastbp {base.__name__}, got {obj!r}")
    return obj


def writable(a, name):
    """Refuse a read-only array that training would update in place (a numba TypingError
    deep inside a kernel otherwise)."""
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only (shape {a.shape}, e.g. after setflags(write=False) "
                         f"or from a read-only memmap) and training updates it in place; train "
                         f"a writable copy: net = net.astype(net.dtype)")


def sample_weight(w, rows, name="sample_weight"):
    """Per-instance weights as float64 (None stays None): 1-D with one weight per row, finite,
    >= 0 and not all 0."""
    if w is None:
        return None
    w = as_numeric(w, name)
    if w.ndim == 2 and 1 in w.shape:
        w = w.ravel()
    if w.ndim != 1:
        raise ValueError(f"{name} must be 1-D, one weight per row, got shape {w.shape}")
    check_rows(w, name, rows)
    w = np.ascontiguousarray(w, dtype=np.float64)
    check_finite(w, name)
    if w.size and w.min() < 0:
        raise ValueError(f"{name} must be >= 0; index {int(np.argmin(w))} holds {w.min()}")
    if w.size and not w.sum() > 0:
        raise ValueError(f"{name} is 0 for every row: the weighted mean is undefined")
    return w
