"""Fast exp, log, tanh, sigmoid, softplus, expm1 and log1p as pure arithmetic, for float32 and float64.

numba's ``np.exp``/``np.tanh`` call libm once per element (about 29 ns for float32 here) and so
never vectorise. The functions below use only +, -, *, /, comparisons with selects and integer
bit operations, so LLVM inlines them into a loop such as ``for i in range(n): y[i] = ftanh(z[i])``
and vectorises it (AVX2/AVX-512). Each public function works on float32 and float64 and returns
its argument's type; a float32 argument is computed in float32 only (a test checks the types).

Method: exp reduces ``x = n ln2 + r`` (ln2 split hi/lo so ``n * hi`` is exact, ``r`` carried as
``rh + rl``), evaluates a polynomial for ``expm1(r)`` and scales by ``2**n`` built from integer
bits in two halves, so overflow gives inf and underflow gives correctly scaled subnormals, then 0.
log extracts the exponent from the bits so the mantissa lies in [sqrt(1/2), sqrt(2)) and uses
``log(1+f) = 2 atanh(f / (2 + f))`` (the fdlibm scheme). tanh uses a polynomial below |x| = 0.55
and ``1 - 2 / (exp(2|x|) + 1)`` above. Polynomial coefficients were fitted with mpmath
(iteratively reweighted least squares on Chebyshev nodes, relative error): exp's polynomial is
within 6e-18 of ``(e^r - 1 - r) / r^2``, tanh's within 6e-17, log's within 5e-16 (float64).

Accuracy (max error against the exact value, in units in the last place of the result's type,
measured in ``tests/test_fastmath.py`` on dense sweeps; the bounds below are asserted there):
see ``MAX_ULP``. Special values: NaN gives NaN; exp(+-inf) = inf/0, tanh(+-inf) = +-1,
sigmoid(+-inf) = 1/0, softplus(-inf) = 0, expm1(-inf) = -1, log(0) = -inf, log(x < 0) = NaN;
-0.0 gives -0.0 where the function is odd (tanh, expm1, log1p). Results that are subnormal
(exp below about -708 in float64, -87.3 in float32; sigmoid and softplus far left) are computed
with gradual underflow, not flushed to zero; subnormal arguments are accepted too.

Do not pass these functions through ``inline='always'`` into a kernel with ``reassoc``
(``ARITH``): exp's rounding trick ``(t + 1.5*2**52) - 1.5*2**52`` and the hi/lo splits need
exact IEEE arithmetic. Called normally, LLVM inlines them with their own strict instructions.
"""

from fractions import Fraction

import numpy as np

from .._config import INLINE, SERIAL, by_dtype, njit


# Max error in ulp against the exact value, as measured by tests/test_fastmath.py (asserted).
MAX_ULP = {
    ("exp", "float64"): 1.0, ("exp", "float32"): 1.0,
    ("expm1", "float64"): 1.25, ("expm1", "float32"): 1.5,
    ("log", "float64"): 1.0, ("log", "float32"): 1.0,
    ("log1p", "float64"): 1.0, ("log1p", "float32"): 1.0,
    ("tanh", "float64"): 1.25, ("tanh", "float32"): 1.25,
    ("sigmoid", "float64"): 1.25, ("sigmoid", "float32"): 1.5,
    ("softplus", "float64"): 1.5, ("softplus", "float32"): 1.5,
}

# ln 2 to 52 digits; hi keeps 32 (float64) or 16 (float32) significant bits so that n * hi is
# exact for every exponent n these functions meet (|n| <= 1100, or 160 in float32).
_LN2 = Fraction("0.6931471805599453094172321214581765680755001343602553")
_LN2HI64 = Fraction(int(_LN2 * 2**32), 2**32)
_LN2HI32 = Fraction(int(_LN2 * 2**16), 2**16)

_F = np.float64
_LN2HI = _F(_LN2HI64)
_LN2LO = _F(_LN2 - _LN2HI64)
_INVLN2 = _F(1 / _LN2)
_SHIFT = _F(1.5 * 2.0**52)  # t = x + _SHIFT rounds x to an integer kept in t's low bits
_SHIFT_BITS = np.int64(_SHIFT.view(np.int64))
_SQRT_HALF_BITS = np.int64(_F(np.sqrt(0.5)).view(np.int64))
_TINY = _F(2.0**-54)  # below this, expm1(x) = log1p(x) = x after rounding
_MIN_NORMAL = _F(np.finfo(np.float64).tiny)
_2P54 = _F(2.0**54)
_INF = _F(np.inf)
_NAN = _F(np.nan)
_EXP_HI = _F(710.0)  # exp(710) overflows; clamping keeps the exponent arithmetic in range
_EXP_LO = _F(-746.0)  # exp(-746) < 2**-1075 rounds to 0
_EXPM1_LO = _F(-40.0)  # expm1(-40) = -1 after rounding
_TANH_SMALL = _F(0.55)
_TANH_BIG = _F(40.0)

_f = np.float32
_LN2HI_32 = _f(_LN2HI32)
_LN2LO_32 = _f(_LN2 - _LN2HI32)
_INVLN2_32 = _f(1 / _LN2)
_SHIFT_32 = _f(1.5 * 2.0**23)
_SHIFT_BITS_32 = np.int32(_SHIFT_32.view(np.int32))
_SQRT_HALF_BITS_32 = np.int32(_f(np.sqrt(0.5)).view(np.int32))
_TINY_32 = _f(2.0**-25)
_MIN_NORMAL_32 = _f(np.finfo(np.float32).tiny)
_2P25_32 = _f(2.0**25)
_INF_32 = _f(np.inf)
_NAN_32 = _f(np.nan)
_EXP_HI_32 = _f(89.0)
_EXP_LO_32 = _f(-104.0)
_EXPM1_LO_32 = _f(-18.0)
_TANH_SMALL_32 = _f(0.55)
_TANH_BIG_32 = _f(20.0)
_ZERO_32 = _f(0.0)
_HALF_32 = _f(0.5)
_ONE_32 = _f(1.0)
_TWO_32 = _f(2.0)

# Integer constants of the width the bit tricks use (numba types Python ints as int64).
_B64 = np.int64(1023)
_M64 = np.int64(52)
_B32 = np.int32(127)
_M32 = np.int32(23)
_I32_ONE = np.int32(1)

# Polynomials (see the module docstring for how they were fitted).
# expm1(r) = r + r^2 q(r) on |r| <= ln2/2: q coefficients, low order first.
_E64 = tuple(_F(c) for c in (
    0.5, 0.1666666666666667, 0.041666666666666616, 0.008333333333326167,
    0.0013888888888918035, 0.0001984126987472025, 2.4801587245579572e-05,
    2.7557255514973233e-06, 2.755734976175885e-07, 2.5105173314485527e-08,
    2.0889329943505986e-09))
_E32 = tuple(_f(c) for c in (
    0.5, 0.16666577756404877, 0.04166685417294502, 0.008363139815628529,
    0.0013901276979595423))
# tanh(x) = x + x^3 P(x^2) on |x| <= 0.55.
_T64 = tuple(_F(c) for c in (
    -0.3333333333333333, 0.13333333333332714, -0.053968253967434106, 0.021869488493673192,
    -0.008863234397992253, 0.0035921103813414046, -0.0014556618529810857,
    0.0005889361703379562, -0.00023463510303477694, 8.511374045980732e-05,
    -2.0603188341214473e-05))
_T32 = tuple(_f(c) for c in (
    -0.3333333134651184, 0.13333113491535187, -0.05390944704413414, 0.021309474483132362,
    -0.006610369775444269))
# log(1+f) = f - f^2/2 + s (f^2/2 + z L(z)), s = f / (2 + f), z = s^2, |s| <= 0.1716.
_L64 = tuple(_F(c) for c in (
    0.666666666666667, 0.3999999999989917, 0.2857142862610576, 0.22222211115889778,
    0.18182890365156218, 0.15331684128623355, 0.14616874296299573))
_L32 = tuple(_f(c) for c in (
    0.6666666865348816, 0.4000012278556824, 0.2855079770088196, 0.23330989480018616))

(_E64_0, _E64_1, _E64_2, _E64_3, _E64_4, _E64_5, _E64_6, _E64_7, _E64_8, _E64_9,
 _E64_10) = _E64
_E32_0, _E32_1, _E32_2, _E32_3, _E32_4 = _E32
(_T64_0, _T64_1, _T64_2, _T64_3, _T64_4, _T64_5, _T64_6, _T64_7, _T64_8, _T64_9,
 _T64_10) = _T64
_T32_0, _T32_1, _T32_2, _T32_3, _T32_4 = _T32
_L64_0, _L64_1, _L64_2, _L64_3, _L64_4, _L64_5, _L64_6 = _L64
_L32_0, _L32_1, _L32_2, _L32_3 = _L32


# ---------------------------------------------------------------------------------------------
# float64 leaves


@njit(**INLINE)
def _exp_parts64(x):
    """n, rh, lo with exp(x) = 2**n (1 + rh + lo), |rh| <= ln2/2, for clamped, non-NaN-safe x."""
    t = x * _INVLN2 + _SHIFT
    nf = t - _SHIFT
    n = np.float64(t).view(np.int64) - _SHIFT_BITS
    r = x - nf * _LN2HI  # exact: n * hi has spare bits and r is within a factor 2 of x
    rh = r - nf * _LN2LO
    rl = (r - rh) - nf * _LN2LO
    q = _E64_10
    q = q * rh + _E64_9
    q = q * rh + _E64_8
    q = q * rh + _E64_7
    q = q * rh + _E64_6
    q = q * rh + _E64_5
    q = q * rh + _E64_4
    q = q * rh + _E64_3
    q = q * rh + _E64_2
    q = q * rh + _E64_1
    q = q * rh + _E64_0
    # expm1(rh + rl) = expm1(rh) + rl e^rh; keep rl (1 + rh) to first order
    lo = rl + rh * (rl + rh * q)
    return n, rh, lo


@njit(**INLINE)
def _pow2_64(n):
    """2.0**n for -1022 <= n <= 1023, built from the exponent bits."""
    return np.int64((n + _B64) << _M64).view(np.float64)


@njit(**INLINE)
def _exp64(x):
    """exp(x) in float64."""
    x = _EXP_HI if x > _EXP_HI else x  # NaN fails both tests and stays NaN
    x = _EXP_LO if x < _EXP_LO else x
    n, rh, lo = _exp_parts64(x)
    s = 1.0 + rh
    t = (1.0 - s) + rh  # exact error of s (Fast2Sum, |rh| < 1)
    n1 = n >> 1  # two half scalings: 2**n alone leaves the normal range near the ends
    y = (s + (t + lo)) * _pow2_64(n1)
    return y * _pow2_64(n - n1)


@njit(**INLINE)
def _exp2_64(x):
    """exp(x) as hi + lo (lo about 2**-53 hi), for x <= 0 or x <= 80 (no overflow handling)."""
    x = _EXP_LO if x < _EXP_LO else x
    n, rh, lo = _exp_parts64(x)
    s = 1.0 + rh
    t = (1.0 - s) + rh
    v = t + lo
    h = s + v
    l = v - (h - s)  # exact error of h (Fast2Sum, |v| < |s|)
    n1 = n >> 1
    p1 = _pow2_64(n1)
    p2 = _pow2_64(n - n1)
    return (h * p1) * p2, (l * p1) * p2


@njit(**INLINE)
def _expm1_64(x):
    """exp(x) - 1 in float64, accurate near 0."""
    xc = _EXP_HI if x > _EXP_HI else x
    xc = _EXPM1_LO if xc < _EXPM1_LO else xc
    n, rh, lo = _exp_parts64(xc)
    # 2**n (1 + rh + lo) - 1 = c + d + sc lo with c = sc - 1, d = sc rh; n = 1024 is done as
    # 2 (2**1023 (...) - 1/2) so that sc stays finite.
    ex = n - 1023 if n > 1023 else n - n
    sc = _pow2_64(n - ex)
    fac = _pow2_64(ex)
    c = sc - _pow2_64(-ex)
    d = sc * rh
    s = c + d
    t = d - (s - c)  # exact error of s (Fast2Sum: |c| >= |d| or c = 0)
    y = fac * (s + (t + sc * lo))
    return x if abs(x) < _TINY else y  # keeps -0.0 and subnormals exact


@njit(**INLINE)
def _log_core64(x, k0, c):
    """log(x) + c for positive finite normal x, k0 added to the exponent (for pre-scaling)."""
    ix = np.float64(x).view(np.int64)
    tmp = ix - _SQRT_HALF_BITS
    k = tmp >> _M64  # x = 2**k z with z in [sqrt(1/2), sqrt(2))
    z = np.int64(ix - (k << _M64)).view(np.float64)
    f = z - 1.0  # exact
    kf = np.float64(k + k0)
    s = f / (2.0 + f)
    w = s * s
    R = _L64_6
    R = R * w + _L64_5
    R = R * w + _L64_4
    R = R * w + _L64_3
    R = R * w + _L64_2
    R = R * w + _L64_1
    R = R * w + _L64_0
    R = R * w
    hfsq = 0.5 * f * f
    return kf * _LN2HI - ((hfsq - (s * (hfsq + R) + (kf * _LN2LO + c))) - f)


@njit(**INLINE)
def _log64(x):
    """log(x) in float64."""
    sub = x < _MIN_NORMAL
    xs = x * _2P54 if sub else x
    k0 = np.int64(-54) if sub else np.int64(0)
    y = _log_core64(xs, k0, 0.0)
    y = x if not x < _INF else y  # +inf and NaN
    y = -_INF if x == 0.0 else y
    return _NAN if x < 0.0 else y


@njit(**INLINE)
def _log1p64(x):
    """log(1 + x) in float64, accurate near 0."""
    w = 1.0 + x
    c = (x - (w - 1.0)) / w  # log(1+x) = log(w) + err/w, err = 1 + x - w (exact)
    y = _log_core64(w, np.int64(0), c)
    y = x if abs(x) < _TINY else y
    y = x if not x < _INF else y
    y = -_INF if x == -1.0 else y
    return _NAN if x < -1.0 else y


@njit(**INLINE)
def _tanh64(x):
    """tanh(x) in float64."""
    ax = abs(x)
    z = x * x
    p = _T64_10
    p = p * z + _T64_9
    p = p * z + _T64_8
    p = p * z + _T64_7
    p = p * z + _T64_6
    p = p * z + _T64_5
    p = p * z + _T64_4
    p = p * z + _T64_3
    p = p * z + _T64_2
    p = p * z + _T64_1
    p = p * z + _T64_0
    small = x + x * z * p
    small = x if ax < _TINY else small  # keeps the sign of -0.0
    e, el = _exp2_64(_TANH_BIG if ax > _TANH_BIG else ax + ax)  # tanh = +-1 beyond 19.1
    d = e + 1.0
    dl = (1.0 - (d - e)) + el  # d + dl = e + el + 1 (Fast2Sum, e >= 1)
    q = 2.0 / d
    big = 1.0 - (q - q * (0.5 * q * dl))  # 1 - 2 / (d + dl) >= 0.5; exp(inf) = inf gives 1
    big = -big if x < 0.0 else big
    return small if ax < _TANH_SMALL else big


@njit(**INLINE)
def _sigmoid64(x):
    """1 / (1 + exp(-x)) in float64, as e / (1 + e) with e = exp(-|x|) <= 1 on the left."""
    e, el = _exp2_64(-abs(x))
    d = 1.0 + e
    dl = (e - (d - 1.0)) + el  # d + dl = 1 + e + el (Fast2Sum, e <= 1)
    pos = x >= 0.0
    y = 1.0 / d if pos else e / d
    # (num + numl) / (d + dl) = y + (numl - y dl) / d to first order; 1/d is about y or 1 - y
    numl = 0.0 if pos else el
    inv = y if pos else 1.0 - y
    return y + (numl - y * dl) * inv


@njit(**INLINE)
def _softplus64(x):
    """log(1 + exp(x)) in float64, as max(x, 0) + log1p(exp(-|x|))."""
    e, el = _exp2_64(-abs(x))
    w = 1.0 + e
    c = ((e - (w - 1.0)) + el) / w
    m = x if x > 0.0 else 0.0
    return m + _log_core64(w, np.int64(0), c)


# ---------------------------------------------------------------------------------------------
# float32 leaves: the same schemes with float32 constants and shorter polynomials


@njit(**INLINE)
def _exp_parts32(x):
    """n, rh, lo with exp(x) = 2**n (1 + rh + lo), float32."""
    t = x * _INVLN2_32 + _SHIFT_32
    nf = t - _SHIFT_32
    n = np.float32(t).view(np.int32) - _SHIFT_BITS_32
    r = x - nf * _LN2HI_32
    rh = r - nf * _LN2LO_32
    rl = (r - rh) - nf * _LN2LO_32
    q = _E32_4
    q = q * rh + _E32_3
    q = q * rh + _E32_2
    q = q * rh + _E32_1
    q = q * rh + _E32_0
    lo = rl + rh * (rl + rh * q)
    return n, rh, lo


@njit(**INLINE)
def _pow2_32(n):
    """2.0**n in float32 for -126 <= n <= 127."""
    return np.int32((n + _B32) << _M32).view(np.float32)


@njit(**INLINE)
def _exp32(x):
    """exp(x) in float32."""
    x = _EXP_HI_32 if x > _EXP_HI_32 else x
    x = _EXP_LO_32 if x < _EXP_LO_32 else x
    n, rh, lo = _exp_parts32(x)
    s = _ONE_32 + rh
    t = (_ONE_32 - s) + rh
    n1 = n >> _I32_ONE
    y = (s + (t + lo)) * _pow2_32(n1)
    return y * _pow2_32(n - n1)


@njit(**INLINE)
def _exp2_32(x):
    """exp(x) as hi + lo in float32, for x <= 40."""
    x = _EXP_LO_32 if x < _EXP_LO_32 else x
    n, rh, lo = _exp_parts32(x)
    s = _ONE_32 + rh
    t = (_ONE_32 - s) + rh
    v = t + lo
    h = s + v
    l = v - (h - s)
    n1 = n >> _I32_ONE
    p1 = _pow2_32(n1)
    p2 = _pow2_32(n - n1)
    return (h * p1) * p2, (l * p1) * p2


@njit(**INLINE)
def _expm1_32(x):
    """exp(x) - 1 in float32."""
    xc = _EXP_HI_32 if x > _EXP_HI_32 else x
    xc = _EXPM1_LO_32 if xc < _EXPM1_LO_32 else xc
    n, rh, lo = _exp_parts32(xc)
    ex = n - 127 if n > 127 else n - n
    sc = _pow2_32(n - ex)
    fac = _pow2_32(ex)
    c = sc - _pow2_32(-ex)
    d = sc * rh
    s = c + d
    t = d - (s - c)
    y = fac * (s + (t + sc * lo))
    return x if abs(x) < _TINY_32 else y


@njit(**INLINE)
def _log_core32(x, k0, c):
    """log(x) + c for positive finite normal float32 x."""
    ix = np.float32(x).view(np.int32)
    tmp = ix - _SQRT_HALF_BITS_32
    k = tmp >> _M32
    z = np.int32(ix - (k << _M32)).view(np.float32)
    f = z - _ONE_32
    kf = np.float32(k + k0)
    s = f / (_TWO_32 + f)
    w = s * s
    R = _L32_3
    R = R * w + _L32_2
    R = R * w + _L32_1
    R = R * w + _L32_0
    R = R * w
    hfsq = _HALF_32 * f * f
    return kf * _LN2HI_32 - ((hfsq - (s * (hfsq + R) + (kf * _LN2LO_32 + c))) - f)


@njit(**INLINE)
def _log32(x):
    """log(x) in float32."""
    sub = x < _MIN_NORMAL_32
    xs = x * _2P25_32 if sub else x
    k0 = np.int32(-25) if sub else np.int32(0)
    y = _log_core32(xs, k0, _ZERO_32)
    y = x if not x < _INF_32 else y
    y = -_INF_32 if x == _ZERO_32 else y
    return _NAN_32 if x < _ZERO_32 else y


@njit(**INLINE)
def _log1p32(x):
    """log(1 + x) in float32."""
    w = _ONE_32 + x
    c = (x - (w - _ONE_32)) / w
    y = _log_core32(w, np.int32(0), c)
    y = x if abs(x) < _TINY_32 else y
    y = x if not x < _INF_32 else y
    y = -_INF_32 if x == -_ONE_32 else y
    return _NAN_32 if x < -_ONE_32 else y


@njit(**INLINE)
def _tanh32(x):
    """tanh(x) in float32."""
    ax = abs(x)
    z = x * x
    p = _T32_4
    p = p * z + _T32_3
    p = p * z + _T32_2
    p = p * z + _T32_1
    p = p * z + _T32_0
    small = x + x * z * p
    small = x if ax < _TINY_32 else small
    e, el = _exp2_32(_TANH_BIG_32 if ax > _TANH_BIG_32 else ax + ax)
    d = e + _ONE_32
    dl = (_ONE_32 - (d - e)) + el
    q = _TWO_32 / d
    big = _ONE_32 - (q - q * (_HALF_32 * q * dl))
    big = -big if x < _ZERO_32 else big
    return small if ax < _TANH_SMALL_32 else big


@njit(**INLINE)
def _sigmoid32(x):
    """1 / (1 + exp(-x)) in float32."""
    e, el = _exp2_32(-abs(x))
    d = _ONE_32 + e
    dl = (e - (d - _ONE_32)) + el
    pos = x >= _ZERO_32
    y = _ONE_32 / d if pos else e / d
    numl = _ZERO_32 if pos else el
    inv = y if pos else _ONE_32 - y
    return y + (numl - y * dl) * inv


@njit(**INLINE)
def _softplus32(x):
    """log(1 + exp(x)) in float32."""
    e, el = _exp2_32(-abs(x))
    w = _ONE_32 + e
    c = ((e - (w - _ONE_32)) + el) / w
    m = x if x > _ZERO_32 else _ZERO_32
    return m + _log_core32(w, np.int32(0), c)


# ---------------------------------------------------------------------------------------------
# public scalar functions: float32 in, float32 out; anything else is computed in float64


@njit(**INLINE)
def fexp(x):
    """exp(x)."""
    return by_dtype(x, _exp32, _exp64)


@njit(**INLINE)
def fexpm1(x):
    """exp(x) - 1, accurate for small |x| (ELU)."""
    return by_dtype(x, _expm1_32, _expm1_64)


@njit(**INLINE)
def flog(x):
    """log(x); log(0) = -inf, log(x < 0) = NaN."""
    return by_dtype(x, _log32, _log64)


@njit(**INLINE)
def flog1p(x):
    """log(1 + x), accurate for small |x|."""
    return by_dtype(x, _log1p32, _log1p64)


@njit(**INLINE)
def ftanh(x):
    """tanh(x)."""
    return by_dtype(x, _tanh32, _tanh64)


@njit(**INLINE)
def fsigmoid(x):
    """1 / (1 + exp(-x)), without overflow for large |x|."""
    return by_dtype(x, _sigmoid32, _sigmoid64)


@njit(**INLINE)
def fsoftplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), without overflow."""
    return by_dtype(x, _softplus32, _softplus64)


flog1p_exp = fsoftplus


# ---------------------------------------------------------------------------------------------
# array kernels: contiguous x and out of the same shape and dtype


@njit(**SERIAL)
def exp_array(x, out):
    """out = exp(x), elementwise."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for i in range(xf.size):
        of[i] = fexp(xf[i])


@njit(**SERIAL)
def tanh_array(x, out):
    """out = tanh(x), elementwise."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for i in range(xf.size):
        of[i] = ftanh(xf[i])


@njit(**SERIAL)
def sigmoid_array(x, out):
    """out = 1 / (1 + exp(-x)), elementwise."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for i in range(xf.size):
        of[i] = fsigmoid(xf[i])
