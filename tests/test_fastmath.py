"""Accuracy, special values, types and vectorisation of fastbp.kernels.fastmath.

Errors are measured in units in the last place (ulp) of the result's type against a reference
computed in x87 long double (64-bit mantissa, 11 more bits than float64), so an error of 0.5
means correctly rounded. ``python tests/test_fastmath.py`` prints the measured maxima.
"""

import re

import llvmlite.binding
import numpy as np
import pytest
from numba import float32, float64, int32, int64

from fastbp._config import SERIAL, njit
from fastbp.kernels import fastmath as fm

LD = np.longdouble
HAVE_LD = np.finfo(LD).nmant >= 63
FUNCS = ("exp", "expm1", "log", "log1p", "tanh", "sigmoid", "softplus")
SCALAR = {"exp": fm.fexp, "expm1": fm.fexpm1, "log": fm.flog, "log1p": fm.flog1p,
          "tanh": fm.ftanh, "sigmoid": fm.fsigmoid, "softplus": fm.fsoftplus}


# Not cached: numba's cache of a caller does not notice edits to fastmath.py (the callee is
# compiled into the caller), so a cached _apply could test stale code.
@njit(**dict(SERIAL, cache=False))
def _apply(code, x, out):
    """out = f(x) for the function numbered code in FUNCS."""
    if code == 0:
        for i in range(x.size):
            out[i] = fm.fexp(x[i])
    elif code == 1:
        for i in range(x.size):
            out[i] = fm.fexpm1(x[i])
    elif code == 2:
        for i in range(x.size):
            out[i] = fm.flog(x[i])
    elif code == 3:
        for i in range(x.size):
            out[i] = fm.flog1p(x[i])
    elif code == 4:
        for i in range(x.size):
            out[i] = fm.ftanh(x[i])
    elif code == 5:
        for i in range(x.size):
            out[i] = fm.fsigmoid(x[i])
    else:
        for i in range(x.size):
            out[i] = fm.fsoftplus(x[i])


def apply(name, x):
    out = np.empty_like(x)
    _apply(FUNCS.index(name), x, out)
    return out


def reference(name, x):
    """The function in long double for float64 x, in float64 for float32 x."""
    x = x.astype(LD if x.dtype == np.float64 else np.float64)
    with np.errstate(all="ignore"):
        if name == "exp":
            return np.exp(x)
        if name == "expm1":
            return np.expm1(x)
        if name == "log":
            return np.log(x)
        if name == "log1p":
            return np.log1p(x)
        if name == "tanh":
            return np.tanh(x)
        if name == "sigmoid":
            return 1 / (1 + np.exp(-x))
        return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def ulp_error(y, ref):
    """|y - ref| in ulp of ref in y's type (subnormal spacing below the normal range)."""
    fi = np.finfo(y.dtype)
    _, e = np.frexp(ref)
    ulp = np.ldexp(ref.dtype.type(1), np.maximum(e - fi.nmant - 1, fi.minexp - fi.nmant))
    with np.errstate(all="ignore"):
        return np.abs(y.astype(ref.dtype) - ref) / ulp


def domain(name, dtype, n):
    """Dense sweeps over the whole useful range of name in dtype."""
    rng = np.random.default_rng(0)
    big = 800.0 if dtype == np.float64 else 110.0
    lo, hi = np.log10(np.finfo(dtype).smallest_subnormal), np.log10(np.finfo(dtype).max)
    mags = 10.0 ** rng.uniform(lo, hi, n)
    pieces = [np.linspace(-big, big, n), rng.uniform(-big, big, n), mags, -mags,
              np.linspace(-2, 2, n), 10.0 ** rng.uniform(-10, 0, n)]
    if name in ("log", "log1p"):
        pieces += [1 + rng.uniform(-0.5, 0.5, n), -1 + 10.0 ** rng.uniform(-15, 0, n)]
    if dtype == np.float32:
        # every 331st float32 bit pattern, both signs: all binades, all mantissa regions
        bits = np.arange(0, 0x7F800000, 331, dtype=np.uint32)
        pieces += [bits.view(np.float32), -bits.view(np.float32)]
    x = np.concatenate([np.asarray(p, dtype=dtype) for p in pieces])
    if name == "log":
        x = np.abs(x)
    if name == "log1p":
        x = x[x > -1]
    return x


def max_ulp(name, dtype, n=400_000):
    x = domain(name, dtype, n)
    y = apply(name, x)
    ref = reference(name, x)
    with np.errstate(all="ignore"):
        finite = np.isfinite(ref.astype(dtype))  # overflow is checked in test_special_values
    assert np.array_equal(np.isfinite(y[finite]), np.ones(finite.sum(), bool)), name
    err = ulp_error(y[finite], ref[finite])
    i = int(np.argmax(err))
    return float(err[i]), x[finite][i]


@pytest.mark.skipif(not HAVE_LD, reason="needs x87 80-bit long double for the reference")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", FUNCS)
def test_max_ulp(name, dtype):
    err, at = max_ulp(name, dtype)
    bound = fm.MAX_ULP[(name, np.dtype(dtype).name)]
    assert err <= bound, f"{name} {np.dtype(dtype).name}: {err:.3f} ulp at x = {at!r}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_against_numpy(dtype):
    """Without long double: against NumPy's exp/tanh within a few of its own ulp."""
    x = np.linspace(-80, 80, 200_001).astype(dtype)
    for name, ref in (("exp", np.exp), ("tanh", np.tanh)):
        y, r = apply(name, x), ref(x)
        assert np.all(np.abs(y - r) <= 3 * np.spacing(np.abs(r))), name


def test_mpmath_spot_check():
    mp = pytest.importorskip("mpmath")
    mp.mp.prec = 120
    exact = {"exp": mp.exp, "expm1": mp.expm1, "log": mp.log, "log1p": mp.log1p,
             "tanh": mp.tanh, "sigmoid": lambda v: 1 / (1 + mp.exp(-v)),
             "softplus": lambda v: mp.log1p(mp.exp(v))}
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-700, 700, 300), rng.uniform(-3, 3, 300),
                        10.0 ** rng.uniform(-300, 2, 300)])
    for name in FUNCS:
        xs = np.abs(x) if name == "log" else x[x > -1] if name == "log1p" else x
        y = apply(name, xs)
        for v, yv in zip(xs, y):
            ref = exact[name](mp.mpf(float(v)))
            if abs(ref) > np.finfo(np.float64).max:
                continue
            ulp = np.spacing(abs(float(ref)))
            err = abs(mp.mpf(float(yv)) - ref) / ulp
            assert err <= fm.MAX_ULP[(name, "float64")] + 0.1, (name, v)


INF, NAN = np.inf, np.nan
SPECIAL = {
    # name: [(x, expected)], checked in float64 and float32
    "exp": [(INF, INF), (-INF, 0.0), (0.0, 1.0), (-0.0, 1.0), (1000.0, INF), (-1000.0, 0.0)],
    "expm1": [(INF, INF), (-INF, -1.0), (0.0, 0.0), (-0.0, -0.0), (1000.0, INF),
              (-1000.0, -1.0), (1e-30, 1e-30)],
    "log": [(INF, INF), (0.0, -INF), (-0.0, -INF), (1.0, 0.0), (-1.0, NAN), (-INF, NAN)],
    "log1p": [(INF, INF), (-1.0, -INF), (-2.0, NAN), (0.0, 0.0), (-0.0, -0.0), (1e-30, 1e-30)],
    "tanh": [(INF, 1.0), (-INF, -1.0), (0.0, 0.0), (-0.0, -0.0), (50.0, 1.0), (-50.0, -1.0),
             (1e-30, 1e-30)],
    "sigmoid": [(INF, 1.0), (-INF, 0.0), (0.0, 0.5), (-0.0, 0.5), (1000.0, 1.0), (-1e4, 0.0)],
    "softplus": [(INF, INF), (-INF, 0.0), (1000.0, 1000.0), (-1e4, 0.0)],
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", FUNCS)
def test_special_values(name, dtype):
    cases = SPECIAL[name] + [(NAN, NAN), (-NAN, NAN)]
    x = np.array([c[0] for c in cases], dtype=dtype)
    want = np.array([c[1] for c in cases], dtype=dtype)
    for y in (apply(name, x), np.array([SCALAR[name](v) for v in x], dtype=dtype)):
        np.testing.assert_array_equal(y, want)  # NaN matches NaN
        np.testing.assert_array_equal(np.signbit(y[want == 0]), np.signbit(want[want == 0]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_overflow_and_subnormal(dtype):
    fi = np.finfo(dtype)
    top = np.log(fi.max)  # exp overflows just above, stays finite just below
    x = np.array([np.nextafter(top, 0, dtype=dtype), np.nextafter(top, 2 * top, dtype=dtype)],
                 dtype=dtype)
    y = apply("exp", x)
    assert np.isfinite(y[0]) and y[1] == np.inf
    # gradual underflow: exp, sigmoid and softplus give subnormals, not flush to zero
    sub = np.array([np.log(float(fi.smallest_normal)) - 3], dtype=dtype)
    for name in ("exp", "sigmoid", "softplus"):
        y = apply(name, sub)[0]
        assert 0 < y < fi.smallest_normal, name
        assert ulp_error(np.array([y]), reference(name, sub))[0] <= 1.0, name
    # subnormal arguments
    s = np.array([fi.smallest_subnormal, fi.smallest_normal / 3], dtype=dtype)
    np.testing.assert_array_equal(apply("tanh", s), s)
    np.testing.assert_array_equal(apply("expm1", s), s)
    assert np.all(ulp_error(apply("log", s), reference("log", s)) <= 1.0)


@pytest.mark.parametrize("dtype", [float32, float64])
def test_result_types(dtype):
    """Each public function returns its argument's float type."""
    for name, f in SCALAR.items():
        f(np.dtype(str(dtype)).type(0.5))
        assert f.overloads[(dtype,)].signature.return_type == dtype, name


def test_float32_leaves_stay_float32():
    """No float64 value anywhere in the float32 leaves (no silent promotion)."""
    leaves = [n for n in dir(fm) if n.startswith("_") and n.endswith("32")
              and hasattr(getattr(fm, n), "py_func")]
    assert len(leaves) >= 10
    args = {"_pow2_32": (int64,), "_log_core32": (float32, int32, float32)}
    for name in leaves:
        # a fresh uncached compile: code loaded from numba's cache carries no type map
        fresh = njit(**dict(SERIAL, cache=False))(getattr(fm, name).py_func)
        sig = args.get(name, (float32,))
        fresh.compile(sig)
        cres = fresh.overloads[sig]
        types = {str(t) for t in cres.type_annotation.typemap.values()}
        assert not any("float64" in t for t in types), (name, sorted(types))


@pytest.mark.parametrize("kernel", ["exp_array", "tanh_array", "sigmoid_array"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_kernels_vectorise(kernel, dtype):
    f = getattr(fm, kernel)
    x = np.linspace(-20, 20, 1001).astype(dtype)
    out = np.empty_like(x)
    f(x, out)
    np.testing.assert_array_equal(out, apply(kernel[:-6], x))
    f(x.reshape(7, 143), out.reshape(7, 143))  # any C-contiguous shape
    np.testing.assert_array_equal(out, apply(kernel[:-6], x))
    # numba returns no assembly for code loaded from its cache: compile a fresh copy
    fresh = njit(**dict(SERIAL, cache=False))(f.py_func)
    fresh(x, out)
    asm = fresh.inspect_asm(fresh.signatures[0])
    suffix = "ps" if dtype == np.float32 else "pd"
    # packed arithmetic on 256- or 512-bit registers, and no call into libm
    packed = re.findall(rf"\bv(?:mul|add|sub|div){suffix}\s+[^\n]*%[yz]mm", asm)
    assert len(packed) >= 10, f"{kernel} {dtype}: loop not vectorised"
    assert not re.search(r"\b(exp|expf|tanh|tanhf|log|logf)\b", asm)
    if "fma" in llvmlite.binding.get_host_cpu_features().flatten():
        fmas = re.findall(rf"\bvfn?m(?:add|sub)\d+{suffix}\s+[^\n]*%[yz]mm", asm)
        assert len(fmas) >= 4, f"{kernel} {dtype}: the polynomial's steps are not FMAs"


def test_callable_from_fastmath_kernel():
    """Inside a kernel compiled with reassoc/contract the functions keep their accuracy."""
    from fastbp._config import ARITH

    @njit(**dict(ARITH, cache=False))
    def k(x, out):
        for i in range(x.size):
            out[i] = fm.ftanh(x[i]) + fm.fexp(x[i])

    x = np.linspace(-30, 30, 10_001)
    out = np.empty_like(x)
    k(x, out)
    want = apply("tanh", x) + apply("exp", x)
    np.testing.assert_array_equal(out, want)


if __name__ == "__main__":
    for name in FUNCS:
        for dtype in (np.float64, np.float32):
            err, at = max_ulp(name, dtype)
            print(f"{name:9s} {np.dtype(dtype).name:8s} max {err:.3f} ulp at x = {at!r}")
