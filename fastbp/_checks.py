"""Validation at the boundary: shape, dtype and finiteness, with the offending value named."""

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
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if ndim == 2 and a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=dtype)
    check_finite(a, name)
    return a


def check_finite(a, name, block=1 << 20, error=ValueError):
    """Refuse NaN and inf, naming the first position that holds one (raising ``error``). Checks
    ``block`` elements at a time, so a large (memory-mapped) array needs no temporary of its
    own size."""
    if a.dtype.kind != "f" or a.size == 0 or a.size <= block and np.isfinite(a).all():
        return  # the common case, without the blockwise search below
    rows = max(1, block // max(1, a[0].size)) if a.ndim > 1 else block
    bad = next((lo for lo in range(0, a.shape[0], rows)
                if not np.isfinite(a[lo:lo + rows]).all()), None)
    if bad is not None:
        pos = tuple(int(i) for i in np.argwhere(~np.isfinite(a[bad:bad + rows]))[0])
        pos = (pos[0] + bad,) + pos[1:]
        what = "NaN" if np.isnan(a[pos]) else "inf"
        where = f"row {pos[0]}, column {pos[1]}" if len(pos) == 2 else \
            f"index {pos[0] if len(pos) == 1 else pos}"
        raise error(f"{name} contains {what} at {where}")


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
