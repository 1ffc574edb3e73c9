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

The polynomials (``_horner``) contract each step to an FMA where the machine has one (flags
``INLINE_ARITH``): the functions are bound by their chains' latency, which this halves for the
polynomial, and the accuracy bounds hold (asserted). On a machine without FMA the steps round
twice, within the same bounds. The rest is
strict IEEE arithmetic: do not pass these functions through ``inline='always'`` into a kernel
with other floating-point flags (``ARITH``'s contraction, say): exp's rounding trick
``(t + 1.5*2**52) - 1.5*2**52`` and the hi/lo splits need it exact. Called normally, LLVM
inlines them with their own instructions' flags.
"""

from fractions import Fraction

import numpy as np

from .._config import INLINE, INLINE_ARITH, SERIAL, by_dtype, njit, specialise


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

_F, _f = np.float64, np.float32
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
# Each leaf below is written once, as a template over the dtype's constants (upper-case names,
# bound per dtype by ``_config.specialise``; numba compiles them as constants), and made twice:
# ``_exp64`` and ``_exp32``, say. The float32 constants are float32 and int32 throughout, so a
# float32 leaf computes in float32 only (a test checks its type map).
_C64 = dict(
    FT=_F, IT=np.int64, ZERO=_F(0.0), HALF=_F(0.5), ONE=_F(1.0), TWO=_F(2.0), I_ONE=np.int64(1),
    LN2HI=_F(_LN2HI64), LN2LO=_F(_LN2 - _LN2HI64), INVLN2=_F(1 / _LN2),
    SHIFT=_F(1.5 * 2.0**52),  # t = x + SHIFT rounds x to an integer kept in t's low bits
    SHIFT_BITS=np.int64(_F(1.5 * 2.0**52).view(np.int64)),
    SQRT_HALF_BITS=np.int64(_F(np.sqrt(0.5)).view(np.int64)),
    TINY=_F(2.0**-54),  # below this, expm1(x) = log1p(x) = x after rounding
    MIN_NORMAL=_F(np.finfo(np.float64).tiny), SCALE_UP=_F(2.0**54), SCALE_K=-54,
    INF=_F(np.inf), NAN=_F(np.nan),
    EXP_HI=_F(710.0),  # exp(710) overflows; clamping keeps the exponent arithmetic in range
    EXP_LO=_F(-746.0),  # exp(-746) < 2**-1075 rounds to 0
    EXPM1_LO=_F(-40.0),  # expm1(-40) = -1 after rounding
    TANH_SMALL=_F(0.55), TANH_BIG=_F(40.0),
    B=np.int64(1023), M=np.int64(52), EXP_MAX=1023,  # exponent bias, mantissa bits
    E=_E64, T=_T64, L=_L64)
_C32 = dict(
    FT=_f, IT=np.int32, ZERO=_f(0.0), HALF=_f(0.5), ONE=_f(1.0), TWO=_f(2.0), I_ONE=np.int32(1),
    LN2HI=_f(_LN2HI32), LN2LO=_f(_LN2 - _LN2HI32), INVLN2=_f(1 / _LN2),
    SHIFT=_f(1.5 * 2.0**23), SHIFT_BITS=np.int32(_f(1.5 * 2.0**23).view(np.int32)),
    SQRT_HALF_BITS=np.int32(_f(np.sqrt(0.5)).view(np.int32)),
    TINY=_f(2.0**-25), MIN_NORMAL=_f(np.finfo(np.float32).tiny), SCALE_UP=_f(2.0**25),
    SCALE_K=-25, INF=_f(np.inf), NAN=_f(np.nan),
    EXP_HI=_f(89.0), EXP_LO=_f(-104.0), EXPM1_LO=_f(-18.0), TANH_SMALL=_f(0.55),
    TANH_BIG=_f(20.0), B=np.int32(127), M=np.int32(23), EXP_MAX=127, E=_E32, T=_T32, L=_L32)
FT = IT = ZERO = HALF = ONE = TWO = I_ONE = LN2HI = LN2LO = INVLN2 = SHIFT = SHIFT_BITS = None
SQRT_HALF_BITS = TINY = MIN_NORMAL = SCALE_UP = SCALE_K = INF = NAN = EXP_HI = EXP_LO = None
EXPM1_LO = TANH_SMALL = TANH_BIG = B = M = EXP_MAX = E = T = L = None


# ---------------------------------------------------------------------------------------------
# leaf templates (callees first)


@njit(**INLINE_ARITH)
def _horner(x, P):
    """P[0] + x (P[1] + x (P[2] + ...)), by Horner's rule from the highest coefficient, each
    step one FMA where the machine has them (its own flags survive LLVM's inlining)."""
    q = P[len(P) - 1]
    for k in range(len(P) - 2, -1, -1):
        q = q * x + P[k]
    return q


@njit(**INLINE)
def _exp_parts(x):
    """n, rh, lo with exp(x) = 2**n (1 + rh + lo), |rh| <= ln2/2, for clamped, non-NaN-safe x."""
    t = x * INVLN2 + SHIFT
    nf = t - SHIFT
    n = FT(t).view(IT) - SHIFT_BITS
    r = x - nf * LN2HI  # exact: n * hi has spare bits and r is within a factor 2 of x
    rh = r - nf * LN2LO
    rl = (r - rh) - nf * LN2LO
    q = _horner(rh, E)
    # expm1(rh + rl) = expm1(rh) + rl e^rh; keep rl (1 + rh) to first order
    lo = rl + rh * (rl + rh * q)
    return n, rh, lo


@njit(**INLINE)
def _pow2(n):
    """2.0**n for n in the normal exponent range, built from the exponent bits."""
    return IT((n + B) << M).view(FT)


@njit(**INLINE)
def _exp(x):
    """exp(x)."""
    x = EXP_HI if x > EXP_HI else x  # NaN fails both tests and stays NaN
    x = EXP_LO if x < EXP_LO else x
    n, rh, lo = _exp_parts(x)
    s = ONE + rh
    t = (ONE - s) + rh  # exact error of s (Fast2Sum, |rh| < 1)
    n1 = n >> I_ONE  # two half scalings: 2**n alone leaves the normal range near the ends
    y = (s + (t + lo)) * _pow2(n1)
    return y * _pow2(n - n1)


@njit(**INLINE)
def _exp2(x):
    """exp(x) as hi + lo (lo about one ulp of hi), for x <= 0 or x <= 2 TANH_BIG (no overflow
    handling)."""
    x = EXP_LO if x < EXP_LO else x
    n, rh, lo = _exp_parts(x)
    s = ONE + rh
    t = (ONE - s) + rh
    v = t + lo
    h = s + v
    l = v - (h - s)  # exact error of h (Fast2Sum, |v| < |s|)
    n1 = n >> I_ONE
    p1 = _pow2(n1)
    p2 = _pow2(n - n1)
    return (h * p1) * p2, (l * p1) * p2


@njit(**INLINE)
def _expm1(x):
    """exp(x) - 1, accurate near 0."""
    xc = EXP_HI if x > EXP_HI else x
    xc = EXPM1_LO if xc < EXPM1_LO else xc
    n, rh, lo = _exp_parts(xc)
    # 2**n (1 + rh + lo) - 1 = c + d + sc lo with c = sc - 1, d = sc rh; n = EXP_MAX + 1 is
    # done as 2 (2**EXP_MAX (...) - 1/2) so that sc stays finite.
    ex = n - EXP_MAX if n > EXP_MAX else n - n
    sc = _pow2(n - ex)
    fac = _pow2(ex)
    c = sc - _pow2(-ex)
    d = sc * rh
    s = c + d
    t = d - (s - c)  # exact error of s (Fast2Sum: |c| >= |d| or c = 0)
    y = fac * (s + (t + sc * lo))
    return x if abs(x) < TINY else y  # keeps -0.0 and subnormals exact


@njit(**INLINE)
def _log_core(x, k0, c):
    """log(x) + c for positive finite normal x, k0 added to the exponent (for pre-scaling)."""
    ix = FT(x).view(IT)
    tmp = ix - SQRT_HALF_BITS
    k = tmp >> M  # x = 2**k z with z in [sqrt(1/2), sqrt(2))
    z = IT(ix - (k << M)).view(FT)
    f = z - ONE  # exact
    kf = FT(k + k0)
    s = f / (TWO + f)
    w = s * s
    R = _horner(w, L) * w
    hfsq = HALF * f * f
    return kf * LN2HI - ((hfsq - (s * (hfsq + R) + (kf * LN2LO + c))) - f)


@njit(**INLINE)
def _log(x):
    """log(x)."""
    sub = x < MIN_NORMAL
    xs = x * SCALE_UP if sub else x
    k0 = IT(SCALE_K) if sub else IT(0)
    y = _log_core(xs, k0, ZERO)
    y = x if not x < INF else y  # +inf and NaN
    y = -INF if x == ZERO else y
    return NAN if x < ZERO else y


@njit(**INLINE)
def _log1p(x):
    """log(1 + x), accurate near 0."""
    w = ONE + x
    c = (x - (w - ONE)) / w  # log(1+x) = log(w) + err/w, err = 1 + x - w (exact)
    y = _log_core(w, IT(0), c)
    y = x if abs(x) < TINY else y
    y = x if not x < INF else y
    y = -INF if x == -ONE else y
    return NAN if x < -ONE else y


@njit(**INLINE)
def _tanh(x):
    """tanh(x)."""
    ax = abs(x)
    z = x * x
    p = _horner(z, T)
    small = x + x * z * p
    small = x if ax < TINY else small  # keeps the sign of -0.0
    e, el = _exp2(TANH_BIG if ax > TANH_BIG else ax + ax)  # tanh = +-1 beyond TANH_BIG / 2
    d = e + ONE
    dl = (ONE - (d - e)) + el  # d + dl = e + el + 1 (Fast2Sum, e >= 1)
    q = TWO / d
    big = ONE - (q - q * (HALF * q * dl))  # 1 - 2 / (d + dl) >= 0.5; exp(inf) = inf gives 1
    big = -big if x < ZERO else big
    return small if ax < TANH_SMALL else big


@njit(**INLINE)
def _sigmoid(x):
    """1 / (1 + exp(-x)), as e / (1 + e) with e = exp(-|x|) <= 1 on the left."""
    e, el = _exp2(-abs(x))
    d = ONE + e
    dl = (e - (d - ONE)) + el  # d + dl = 1 + e + el (Fast2Sum, e <= 1)
    pos = x >= ZERO
    y = (ONE if pos else e) / d  # one division (a division on each side, then a select: 4%)
    # (num + numl) / (d + dl) = y + (numl - y dl) / d to first order; 1/d is about y or 1 - y
    numl = ZERO if pos else el
    inv = y if pos else ONE - y
    return y + (numl - y * dl) * inv


@njit(**INLINE)
def _softplus(x):
    """log(1 + exp(x)), as max(x, 0) + log1p(exp(-|x|))."""
    e, el = _exp2(-abs(x))
    w = ONE + e
    c = ((e - (w - ONE)) + el) / w
    m = x if x > ZERO else ZERO
    return m + _log_core(w, IT(0), c)


# Per dtype, its constants and its leaves (``_BOUND[64]["_exp"]`` is ``_exp64``); each
# template's callees are bound to the same dtype's leaves.
_TEMPLATES = (_exp_parts, _pow2, _exp, _exp2, _expm1, _log_core, _log, _log1p, _tanh, _sigmoid,
              _softplus)
_BOUND = {64: dict(_C64), 32: dict(_C32)}
for _bits, _bound in _BOUND.items():
    for _template in _TEMPLATES:
        _name = _template.py_func.__name__
        _leaf = _name + ("_" if _name[-1].isdigit() else "") + str(_bits)  # _pow2_32
        _bound[_name] = specialise(_template, _leaf, **_bound)
(_exp_parts64, _pow2_64, _exp64, _exp2_64, _expm1_64, _log_core64, _log64, _log1p64, _tanh64,
 _sigmoid64, _softplus64) = (_BOUND[64][t.py_func.__name__] for t in _TEMPLATES)
(_exp_parts32, _pow2_32, _exp32, _exp2_32, _expm1_32, _log_core32, _log32, _log1p32, _tanh32,
 _sigmoid32, _softplus32) = (_BOUND[32][t.py_func.__name__] for t in _TEMPLATES)


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
