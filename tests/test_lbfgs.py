"""fb.LBFGS against SciPy's L-BFGS-B (iterates, counters, statuses, messages), its stopping
rules, its line search (the strong Wolfe conditions, and step by step against SciPy's port of
MINPACK-2's dcsrch), dtypes, bad input, NaN, and training a fastbp network through it.

Why the iterates are equal to rounding and not bit for bit: fastbp computes the direction
-H g by the two-loop recursion, L-BFGS-B by the compact form of B (Byrd, Nocedal and Schnabel
1994) solved through small m x m systems; the two are the same vector in exact arithmetic but
sum in different orders. Everything else (the first step, the line search's trial steps, the
rules for skipping a pair and for stopping) is computed as SciPy computes it, so the counters
agree exactly and the iterates to ~1e-13 relative on the convex problems below; on
non-convex ones the differences can grow with the iterations (rounding is amplified where
the Hessian is indefinite), which is why Rosenbrock is held to its final x."""

import math
import tracemalloc

import numpy as np
import pytest
import scipy.optimize as so

import fastbp as fb
from fastbp import lbfgs as L

# Iterates on the convex problems: rtol per entry, plus atol relative to the iterate's largest
# entry (an entry passing near zero has no meaningful relative error). Reached here: on the
# logistic regression (16 iterations) 1e-15 of max|x| (1e-12 per entry); on the quadratic of
# condition 100 (56-72 iterations, where differences grow with the iterations) 2e-11 of max|x|
# (4e-9 per entry, for entries 100 times smaller than the largest).
ITER_RTOL, ITER_ATOL = 1e-9, 1e-10


# -- problems ----------------------------------------------------------------------------------
def _logistic(seed=0, n=200, p=30, lam=1e-2):
    """L2-regularised logistic regression: strongly convex, p parameters."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = (X @ rng.normal(size=p) + rng.normal(size=n) > 0).astype(float)

    def fun(b):
        z = X @ b
        f = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * lam * (b @ b)
        g = X.T @ (1.0 / (1.0 + np.exp(-z)) - y) / n + lam * b
        return f, g
    return fun, p


def _quadratic(seed=1, p=40, cond=100.0):
    """0.5 x'Ax - b'x with A's eigenvalues spread over [1, cond]."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    A = (Q * np.geomspace(1.0, cond, p)) @ Q.T
    b = rng.normal(size=p)

    def fun(x):
        Ax = A @ x
        return 0.5 * (x @ Ax) - b @ x, Ax - b
    fun.solution = np.linalg.solve(A, b)
    return fun, p


def rosen(x):
    f = np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return f, g


SCIPY_NAMES = {"m": "maxcor"}  # every other option has the same name in SciPy


def both(fun, x0, **opts):
    """(scipy result, its iterates, fastbp result, its iterates, their values)."""
    xs, fs, xf, ff = [], [], [], []

    def keep_scipy(intermediate_result):
        xs.append(intermediate_result.x.copy())
        fs.append(float(intermediate_result.fun))

    def keep_fastbp(it):
        xf.append(it.x)
        ff.append(it.fun)
    options = {SCIPY_NAMES.get(k, k): v for k, v in opts.items()}
    rs = so.minimize(fun, x0, method="L-BFGS-B", jac=True, options=options,
                     callback=keep_scipy)
    rf = fb.LBFGS(**opts).minimize(fun, x0, callback=keep_fastbp)
    return rs, np.array(xs), rf, np.array(xf), (fs, ff)


def assert_same_run(rs, rf, exact_message=True):
    assert (rf.nit, rf.nfev, rf.status, rf.success) == \
        (rs.nit, rs.nfev, rs.status, rs.success), (rs, rf)
    if exact_message:
        assert rf.message == rs.message


def assert_iterates_equal(xs, xf):
    assert xs.shape == xf.shape
    for k, (a, b) in enumerate(zip(xs, xf)):
        np.testing.assert_allclose(b, a, rtol=ITER_RTOL, atol=ITER_ATOL * np.abs(a).max(),
                                   err_msg=f"iterate {k + 1}")


# -- against SciPy -----------------------------------------------------------------------------
CONVEX = {"logistic": _logistic, "quadratic": _quadratic}


@pytest.mark.parametrize("problem", sorted(CONVEX))
@pytest.mark.parametrize("opts", [{}, {"gtol": 1e-10}, {"m": 3}, {"m": 1, "gtol": 1e-8}])
def test_iterates_equal_scipys_on_convex_problems(problem, opts):
    fun, p = CONVEX[problem]()
    x0 = np.random.default_rng(5).normal(size=p)
    rs, xs, rf, xf, (fs, ff) = both(fun, x0, **opts)
    assert rs.nit >= 5  # a real run, not a first-step stop
    assert_same_run(rs, rf)
    assert_iterates_equal(xs, xf)
    np.testing.assert_allclose(ff, fs, rtol=1e-12, atol=1e-13 * np.abs(fs).max())
    np.testing.assert_allclose(rf.x, rs.x, rtol=ITER_RTOL, atol=ITER_ATOL * np.abs(rs.x).max())
    # the gradient at the end (A x - b near 0) magnifies x's differences by up to cond(A)
    np.testing.assert_allclose(rf.jac, rs.jac, rtol=0, atol=1e-6 * np.abs(rs.jac).max())
    assert rf.fun == pytest.approx(rs.fun, rel=1e-13)


def test_quadratic_reaches_its_solution():
    fun, p = _quadratic()
    gtol = 1e-6
    res = fb.LBFGS(gtol=gtol, ftol=0.0).minimize(fun, np.zeros(p))
    assert res.status == 0 and res.message == L.CONV_GRAD
    # |x - x*| <= |g|_2 / (the smallest eigenvalue, 1) <= sqrt(p) gtol
    np.testing.assert_allclose(res.x, fun.solution, rtol=0, atol=math.sqrt(p) * gtol)


@pytest.mark.parametrize("x0", [np.array([-1.2, 1.0]), np.full(6, -1.0),
                                np.linspace(-2.0, 2.0, 5)], ids=["2d", "6d", "5d"])
@pytest.mark.parametrize("opts", [{}, {"m": 3}, {"gtol": 1e-8}])
def test_rosenbrock_final_x_and_counts_as_scipys(x0, opts):
    rs, xs, rf, xf, _ = both(rosen, x0, **opts)
    assert rs.status == rf.status == 0
    np.testing.assert_allclose(rf.x, rs.x, atol=1e-6)
    np.testing.assert_allclose(rf.x, 1.0, atol=1e-3 if not opts else 1e-2)
    assert abs(rf.nit - rs.nit) <= 2 and abs(rf.nfev - rs.nfev) <= 4
    # The first iterates agree to rounding before any amplification can set in.
    assert_iterates_equal(xs[:5], xf[:5])


def test_a_large_flat_vector():
    """n = 200000 (a network's flat buffer): the same iterates as SciPy's."""
    rng = np.random.default_rng(2)
    n = 200_000
    h = rng.uniform(0.5, 20.0, n)
    c = rng.normal(size=n)

    def fun(x):
        r = x - c
        f = 0.5 * float(r @ (h * r)) + float(np.sum(np.log1p(r * r)))
        return f, h * r + 2 * r / (1 + r * r)
    rs, xs, rf, xf, _ = both(fun, np.zeros(n), maxiter=15)
    assert_same_run(rs, rf)
    assert_iterates_equal(xs, xf)


def test_memory_is_preallocated():
    """Peak memory of 30 iterations on n = 10^6: the history (2 m n float64), six work vectors
    and the result's x and jac; nothing of size n allocated per iteration (fun here allocates
    nothing of its own)."""
    n, m = 1_000_000, 5
    rng = np.random.default_rng(0)
    c, h = rng.normal(size=n), rng.uniform(1.0, 100.0, n)
    r, g = np.empty(n), np.empty(n)

    def fun(x):
        np.subtract(x, c, out=r)
        np.multiply(h, r, out=g)
        return 0.5 * float(r @ g), g
    x0 = np.zeros(n)
    tracemalloc.start()
    try:
        res = fb.LBFGS(m=m, maxiter=30).minimize(fun, x0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.nit == 30
    vectors = peak / (8 * n)
    assert vectors < 2 * m + 6 + 2 + 0.5, f"peak {vectors:.2f} float64 vectors of n"


# -- stopping rules ----------------------------------------------------------------------------
def test_maxiter():
    fun, p = _logistic()
    rs, xs, rf, xf, _ = both(fun, np.zeros(p), maxiter=4)
    assert rf.nit == 4 and rf.status == 1 and not rf.success
    assert rf.message == L.STOP_ITER == "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"
    assert_same_run(rs, rf)
    assert_iterates_equal(xs, xf)


def test_maxiter_is_checked_before_convergence_as_in_scipy():
    """An iteration that reaches maxiter and converges reports the limit (SciPy's order)."""
    fun, p = _logistic()
    full = fb.LBFGS().minimize(fun, np.zeros(p))
    assert full.status == 0
    rs, _, rf, _, _ = both(fun, np.zeros(p), maxiter=full.nit)
    assert rf.status == 1 and rf.message == L.STOP_ITER
    assert_same_run(rs, rf)


@pytest.mark.parametrize("maxfun", [3, 10, 30])
def test_maxfun_is_checked_after_each_iteration(maxfun):
    rs, _, rf, _, _ = both(rosen, np.full(6, -1.0), maxfun=maxfun)
    assert rf.status == 1 and rf.message == L.STOP_FUN
    assert rf.message == "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"
    assert rf.nfev > maxfun  # as SciPy: the limit stops the run after the iteration passing it
    assert_same_run(rs, rf)


def test_gtol():
    fun, p = _logistic()
    gtol = 1e-3
    rs, _, rf, xf, _ = both(fun, np.zeros(p), gtol=gtol)
    assert rf.message == L.CONV_GRAD == "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
    assert_same_run(rs, rf)
    norms = [np.abs(fun(x)[1]).max() for x in xf]
    assert norms[-1] <= gtol and min(norms[:-1]) > gtol  # it stops at the first such iterate
    assert np.abs(rf.jac).max() == norms[-1]


def test_gtol_met_at_x0_stops_before_any_iteration():
    fun, p = _quadratic()
    rs, _, rf, _, _ = both(fun, fun.solution, gtol=1e-6)
    assert (rf.nit, rf.nfev, rf.status, rf.message) == (0, 1, 0, L.CONV_GRAD)
    assert_same_run(rs, rf)
    assert np.array_equal(rf.x, fun.solution)


def test_ftol():
    fun, p = _logistic()
    ftol = 1e-4
    rs, _, rf, _, (fs, ff) = both(fun, np.zeros(p), ftol=ftol)
    assert rf.message == L.CONV_F == "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH"
    assert_same_run(rs, rf)
    f = [fun(np.zeros(p))[0]] + ff
    rel = [(a - b) / max(abs(a), abs(b), 1.0) for a, b in zip(f[:-1], f[1:])]
    assert rel[-1] <= ftol and min(rel[:-1]) > ftol
    assert np.abs(rf.jac).max() > 1e-5  # not the gradient rule


@pytest.mark.parametrize("x0", [np.array([-1.2, 1.0]), np.full(6, -1.0),
                                np.linspace(-2.0, 2.0, 5)], ids=["2d", "6d", "5d"])
@pytest.mark.parametrize("maxls", [1, 2, 3])
def test_few_line_search_steps_restart_and_stop_as_scipy(x0, maxls):
    """With maxls evaluations per line search, a failed search clears the memory and
    restarts along -g; along -g it is an abnormal stop (SciPy's "ABNORMAL: ", status 2)."""
    rs, xs, rf, xf, _ = both(rosen, x0, maxls=maxls)
    assert_same_run(rs, rf, exact_message=rs.status != 2)
    if rs.status == 2:
        assert rs.message == L.ABNORMAL and rf.message == L.ABNORMAL_LS
        assert rf.message.startswith(rs.message)
        np.testing.assert_allclose(rf.x, rs.x, rtol=1e-12)
    n = min(len(xs), 5)
    assert_iterates_equal(xs[:n], xf[:n])


def test_the_first_step_is_one_over_the_gradient_norm_then_one():
    fun, p = _quadratic()
    x0 = np.random.default_rng(3).normal(size=p)
    trials = []

    def spy(x):
        trials.append(x.copy())
        return fun(x)
    fb.LBFGS(maxiter=2).minimize(spy, x0)
    g0 = fun(x0)[1]
    np.testing.assert_allclose(trials[1] - x0, -g0 / np.linalg.norm(g0), rtol=1e-12)


def test_a_gradient_lost_in_rounding_is_an_abnormal_stop_as_in_scipy():
    """x = 1e20 and g = 1: the first direction (x - g) - x is 0 in float64, g'd = 0, and the
    line search is impossible (SciPy: "ABNORMAL: ", status 2)."""
    fun = lambda x: (float(np.sum(x)), np.ones_like(x))  # noqa: E731
    rs, _, rf, _, _ = both(fun, np.full(3, 1e20), gtol=0.0)
    assert_same_run(rs, rf, exact_message=False)
    assert (rf.status, rf.nit, rf.nfev) == (2, 0, 1) and rf.message == L.ABNORMAL_DESCENT
    assert np.array_equal(rf.x, np.full(3, 1e20))


def test_callback_stop_iteration_halts_as_in_scipy():
    fun, p = _logistic()

    def halt_at_3(nit):
        if nit == 3:
            raise StopIteration

    res = fb.LBFGS().minimize(fun, np.zeros(p), callback=lambda it: halt_at_3(it.nit))
    count = [0]

    def scipy_callback(intermediate_result):
        count[0] += 1
        halt_at_3(count[0])
    ref = so.minimize(fun, np.zeros(p), method="L-BFGS-B", jac=True, callback=scipy_callback)
    assert (res.status, res.success, res.message, res.nit) == (99, False, L.HALTED, 3)
    assert_same_run(ref, res)
    np.testing.assert_allclose(res.x, ref.x, rtol=ITER_RTOL, atol=ITER_ATOL)


# -- the line search ---------------------------------------------------------------------------
def _record(fun):
    evals = []

    def spy(x):
        f, g = fun(x)
        evals.append((x.copy(), f, np.array(g, dtype=float)))
        return f, g
    return spy, evals


def _wolfe_margins(fun, x0, opt):
    """For each iteration, (sufficient decrease slack, curvature slack): both >= 0 when the
    accepted point satisfies the strong Wolfe conditions."""
    xs = [np.array(x0, dtype=float)]
    opt.minimize(fun, x0, callback=lambda it: xs.append(it.x))
    out = []
    for a, b in zip(xs[:-1], xs[1:]):
        (fa, ga), (fb_, gb) = fun(a), fun(b)
        s = b - a
        slope0 = float(ga @ s)
        assert slope0 < 0  # a descent direction
        decrease = fa + opt.c1 * slope0 - fb_
        curvature = opt.c2 * abs(slope0) - abs(float(gb @ s))
        out.append((decrease, curvature, abs(slope0), abs(fa)))
    return out


@pytest.mark.parametrize("c1, c2", [(1e-3, 0.9), (1e-4, 0.1), (0.3, 0.5)])
@pytest.mark.parametrize("problem", ["logistic", "rosen"])
def test_accepted_steps_satisfy_the_strong_wolfe_conditions(problem, c1, c2):
    fun, x0 = (_logistic()[0], np.zeros(30)) if problem == "logistic" else \
        (rosen, np.full(6, -1.0))
    margins = _wolfe_margins(fun, x0, fb.LBFGS(c1=c1, c2=c2, gtol=1e-7))
    assert len(margins) >= 5
    for k, (decrease, curvature, slope, f) in enumerate(margins):
        # up to rounding in f (the decrease) and in g's (the curvature)
        assert decrease >= -1e-14 * max(f, 1.0), f"iteration {k + 1}: sufficient decrease"
        assert curvature >= -1e-12 * slope, f"iteration {k + 1}: curvature"


def test_a_smaller_c2_is_a_stronger_curvature_condition():
    """The test above can fail: with c2 = 0.9 some accepted steps violate c2 = 0.1."""
    margins = _wolfe_margins(rosen, np.full(6, -1.0), fb.LBFGS())
    violated = [k for k, (_, curvature, slope, _) in enumerate(margins)
                if curvature - 0.8 * slope < 0]  # |g's| > 0.1 |g0's|
    assert violated


def _dcsrch_reference():
    dc = pytest.importorskip("scipy.optimize._dcsrch")
    if not hasattr(dc, "DCSRCH") or not hasattr(dc.DCSRCH, "_iterate"):
        pytest.skip("SciPy's private dcsrch port changed")
    return dc.DCSRCH


@pytest.mark.parametrize("c1, c2, xtol", [(1e-3, 0.9, 0.1), (1e-4, 0.1, 0.1),
                                          (0.1, 0.2, 1e-3), (1e-3, 0.9, 0.5)])
@pytest.mark.parametrize("case", range(6))
def test_line_search_trials_equal_scipys_dcsrch(case, c1, c2, xtol):
    """Step by step against SciPy's Python port of MINPACK-2's dcsrch (the one L-BFGS-B's C
    code also implements): the same trial steps, bit for bit, and the same verdict."""
    DCSRCH = _dcsrch_reference()
    rng = np.random.default_rng(case)
    x = rng.normal(size=4) * 1.5
    d = -rosen(x)[1] * (1.0 if case % 2 else rng.uniform(0.01, 3.0))

    def phi(a):
        return float(rosen(x + a * d)[0])

    def dphi(a):
        return float(rosen(x + a * d)[1] @ d)
    stp = [1.0, 1e-3, 10.0][case % 3] / np.linalg.norm(d) if case < 3 else 1.0
    ref = DCSRCH(phi, dphi, c1, c2, xtol, 0.0, 1e10)
    ls = L._MoreThuente(c1, c2, xtol, stpmax=1e10)
    f, g = phi(0.0), dphi(0.0)
    ls.start(f, g, stp)
    ref_stp, rf, rg, task = ref._iterate(stp, f, g, b"START")
    assert ref_stp == stp and task[:2] == b"FG"
    for _ in range(40):
        f, g = phi(stp), dphi(stp)
        state, new = ls.next(stp, f, g)
        ref_stp, _, _, task = ref._iterate(stp, f, g, task)
        assert new == ref_stp
        assert (state == "fg") == (task[:2] == b"FG")
        assert (state == "converged") == (task[:4] == b"CONV")
        if state != "fg":
            break
        stp = new
    else:
        pytest.fail("no verdict in 40 trials")


# -- dtypes ------------------------------------------------------------------------------------
def test_float32_x0_runs_in_float64():
    """x0 in float32 is converted to float64 (as SciPy converts it): the run equals the one
    from the same values in float64, and fun sees float64."""
    fun, p = _logistic()
    x32 = np.random.default_rng(4).normal(size=p).astype(np.float32)
    dtypes = set()

    def spy(x):
        dtypes.add(x.dtype)
        return fun(x)
    r32 = fb.LBFGS().minimize(spy, x32)
    r64 = fb.LBFGS().minimize(fun, x32.astype(np.float64))
    assert dtypes == {np.dtype(np.float64)} and r32.x.dtype == np.float64
    assert np.array_equal(r32.x, r64.x) and (r32.nit, r32.nfev) == (r64.nit, r64.nfev)


def test_float32_gradients_are_taken_in_float64_as_scipy():
    fun, p = _logistic()

    def fun32(x):
        f, g = fun(x)
        return np.float32(f), g.astype(np.float32)
    rs, xs, rf, xf, _ = both(fun32, np.zeros(p))
    assert_same_run(rs, rf)
    assert rf.jac.dtype == np.float64
    n = min(len(xs), 6)
    for a, b in zip(xs[:n], xf[:n]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_fun_gets_a_read_only_view_and_results_are_copies():
    fun, p = _logistic()
    views = []

    def spy(x):
        views.append(x)
        assert not x.flags.writeable
        return fun(x)
    res = fb.LBFGS(maxiter=3).minimize(spy, np.zeros(p))
    with pytest.raises(ValueError):
        views[0][0] = 1.0
    assert not np.shares_memory(res.x, views[-1]) and res.x.flags.writeable


def test_int_x0_and_list_x0_are_accepted():
    fun, p = _quadratic()
    a = fb.LBFGS().minimize(fun, [0] * p)
    b = fb.LBFGS().minimize(fun, np.zeros(p))
    assert np.array_equal(a.x, b.x)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, text", [
    ({"m": 0}, ValueError, "m must be >= 1, got 0"),
    ({"m": 2.5}, TypeError, "m must be an int"),
    ({"maxiter": 0}, ValueError, "maxiter must be >= 1"),
    ({"maxfun": -1}, ValueError, "maxfun must be >= 1"),
    ({"maxls": 0}, ValueError, "maxls must be >= 1"),
    ({"gtol": -1e-5}, ValueError, "gtol must be >= 0.0, got -1e-05"),
    ({"gtol": "small"}, TypeError, "gtol must be a real number"),
    ({"ftol": math.nan}, ValueError, "ftol must be >= 0.0, got nan"),
    ({"c1": 0.0}, ValueError, "c1 must be > 0.0 and < 1.0"),
    ({"c2": 1.0}, ValueError, "c2 must be > 0.0 and < 1.0"),
    ({"c1": 0.5, "c2": 0.4}, ValueError, "c1 must be < c2"),
    ({"xtol": -0.1}, ValueError, "xtol must be >= 0.0"),
    ({"maxiter": True}, TypeError, "maxiter must be an int"),
])
def test_bad_constructor_arguments(kwargs, error, text):
    with pytest.raises(error, match=text.replace("(", r"\(").replace(".", r"\.")):
        fb.LBFGS(**kwargs)


def test_repr_shows_the_settings():
    r = repr(fb.LBFGS(m=5))
    assert r.startswith("LBFGS(m=5, maxiter=15000, maxfun=15000, gtol=1e-05,")
    assert eval(r, {"LBFGS": fb.LBFGS}).config() == fb.LBFGS(m=5).config()


@pytest.mark.parametrize("x0, error, text", [
    (np.zeros((2, 3)), ValueError, r"x0 must be a non-empty 1-D array .* got shape \(2, 3\)"),
    (np.zeros(0), ValueError, r"got shape \(0,\)"),
    (np.array([0.0, np.nan]), ValueError, "x0 contains NaN at index 1"),
    (np.array([np.inf, 0.0]), ValueError, "x0 contains inf at index 0"),
    (np.array([1j, 0]), TypeError, "x0 must hold real numbers"),
    (np.array(["a"]), TypeError, "x0 must hold real numbers"),
])
def test_bad_x0(x0, error, text):
    with pytest.raises(error, match=text):
        fb.LBFGS().minimize(rosen, x0)


def test_bad_fun_and_callback():
    with pytest.raises(TypeError, match="fun must be callable"):
        fb.LBFGS().minimize(None, np.zeros(2))
    with pytest.raises(TypeError, match="callback must be callable"):
        fb.LBFGS().minimize(rosen, np.zeros(2), callback=3)


@pytest.mark.parametrize("bad, text", [
    (lambda x: (0.0, np.zeros(3)), r"gradient of shape \(3,\) for x of shape \(2,\)"),
    (lambda x: (0.0, np.zeros((2, 1))), r"gradient of shape \(2, 1\) for x of shape \(2,\)"),
    (lambda x: (np.zeros(2), np.zeros(2)), r"real scalar value, got a value of shape \(2,\)"),
    (lambda x: ("one", np.zeros(2)), "real scalar value"),
    (lambda x: (0.0, np.array(["a", "b"])), "gradient of dtype <U1; it must be real"),
])
def test_fun_returning_the_wrong_thing(bad, text):
    with pytest.raises(ValueError, match=text):
        fb.LBFGS().minimize(bad, np.zeros(2))


def test_fun_returning_a_size_one_array_value_is_accepted():
    res = fb.LBFGS().minimize(lambda x: (np.array([x @ x]), 2 * x), np.ones(3))
    assert res.status == 0 and isinstance(res.fun, float)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("where", ["value", "gradient"])
def test_nan_or_inf_mid_run_stops_at_the_last_finite_point(bad, where):
    fun, p = _logistic()
    iterates = []
    calls = [0]

    def fragile(x):
        calls[0] += 1
        f, g = fun(x)
        if calls[0] > 6:
            if where == "value":
                f = bad
            else:
                g = g.copy()
                g[3] = bad
        return f, g
    res = fb.LBFGS().minimize(fragile, np.zeros(p), callback=lambda it: iterates.append(it))
    assert res.status == 2 and not res.success
    assert res.message.startswith(L.NON_FINITE)
    assert ("NaN" if math.isnan(bad) else "inf") in res.message
    assert np.isfinite(res.x).all() and math.isfinite(res.fun) and np.isfinite(res.jac).all()
    last = iterates[-1]
    assert np.array_equal(res.x, last.x) and res.fun == last.fun and res.nit == last.nit
    f, g = fun(res.x)
    assert res.fun == f and np.array_equal(res.jac, g)


def test_nan_at_x0_returns_x0():
    x0 = np.array([1.0, 2.0])
    res = fb.LBFGS().minimize(lambda x: (math.nan, np.zeros(2)), x0)
    assert (res.status, res.nit, res.nfev) == (2, 0, 1)
    assert res.message.startswith(L.NON_FINITE) and "X0" in res.message
    assert np.array_equal(res.x, x0)


# -- training a fastbp network -----------------------------------------------------------------
def _iris():
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def _sklearn_objective(net, X, target, loss, alpha):
    """The value_and_grad of fastbp.sklearn's _fit_lbfgs (mean divergence + alpha/(2n)
    ||W||^2 over the weight matrices), as HANDOFF.md's replacement keeps it."""
    n = X.shape[0]
    mask = np.zeros(net.flat_params.size, bool)
    o = 0
    for p, name in zip(net.params, net.param_names):
        if name.endswith(".W"):
            mask[o:o + p.size] = True
        o += p.size
    X = np.ascontiguousarray(X, dtype=net.dtype)

    def value_and_grad(p):
        net.flat_params[...] = p
        value = net.loss_and_grad(X, target, loss)
        W = p[mask]
        g = net.flat_grads.astype(np.float64)
        g[mask] += alpha * W / n
        return value + 0.5 * alpha * float(W @ W) / n, g
    return value_and_grad


def _net(dtype):
    return fb.Sequential(fb.Linear(4, 8), fb.Tanh(), fb.Linear(8, 3), fb.Softmax(),
                         dtype=dtype, seed=0)


@pytest.mark.parametrize("alpha", [1.0, 10.0])
def test_fit_flat_trains_a_network_as_scipy_does(alpha):
    """The replacement of fastbp.sklearn's _fit_lbfgs (HANDOFF.md), float64: the same loss to
    1e-8 and the same iterations as scipy's L-BFGS-B on the same value_and_grad. (A network's
    loss is not convex: with a weak penalty, rounding differences grow over the iterations and
    the two runs end at different points of a flat valley, which is why alpha >= 1 here.)"""
    X, y = _iris()
    net = _net(np.float64)
    p0 = net.flat_params.copy()
    vg = _sklearn_objective(net, X, y, fb.KL(), alpha)
    ref = so.minimize(vg, p0, method="L-BFGS-B", jac=True,
                      options={"maxfun": 15000, "maxiter": 200, "gtol": 1e-4})
    net.flat_params[...] = p0
    res = fb.LBFGS(maxfun=15000, maxiter=200, gtol=1e-4).fit_flat(vg, net.flat_params)
    assert res.status == ref.status == 0 and res.message == ref.message
    assert res.nit == ref.nit and res.nfev == ref.nfev
    assert res.fun == pytest.approx(ref.fun, rel=1e-8)
    assert np.array_equal(net.flat_params, res.x)
    assert vg(net.flat_params.copy())[0] == res.fun  # the network holds the solution
    assert res.fun < vg(p0)[0] / 2


def test_fit_flat_trains_a_float32_network():
    """float32: the gradient's rounding (1e-7) is amplified over the iterations; the runs
    agree to 1e-4 in loss, and flat_params keeps its dtype."""
    X, y = _iris()
    net = _net(np.float32)
    p0 = net.flat_params.copy()
    vg = _sklearn_objective(net, X, y, fb.KL(), 1.0)
    ref = so.minimize(vg, p0.astype(np.float64), method="L-BFGS-B", jac=True,
                      options={"maxiter": 200, "gtol": 1e-4})
    net.flat_params[...] = p0
    res = fb.LBFGS(maxiter=200, gtol=1e-4).fit_flat(vg, net.flat_params)
    assert res.status == ref.status == 0 and abs(res.nit - ref.nit) <= 5
    assert res.fun == pytest.approx(ref.fun, rel=1e-4)
    assert net.flat_params.dtype == np.float32
    np.testing.assert_array_equal(net.flat_params, res.x.astype(np.float32))


def test_fit_flat_keeps_the_last_finite_point_on_nan():
    X, y = _iris()
    net = _net(np.float64)
    vg = _sklearn_objective(net, X, y, fb.KL(), 1.0)
    calls = [0]

    def fragile(p):
        calls[0] += 1
        value, g = vg(p)
        return (math.nan if calls[0] > 8 else value), g
    res = fb.LBFGS().fit_flat(fragile, net.flat_params)
    assert res.status == 2 and res.message.startswith(L.NON_FINITE)
    assert np.isfinite(net.flat_params).all() and np.array_equal(net.flat_params, res.x)


def test_fit_flat_restores_the_parameters_if_value_and_grad_raises():
    X, y = _iris()
    net = _net(np.float64)
    p0 = net.flat_params.copy()
    vg = _sklearn_objective(net, X, y, fb.KL(), 1.0)
    calls = [0]

    def failing(p):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return vg(p)
    with pytest.raises(KeyboardInterrupt):
        fb.LBFGS().fit_flat(failing, net.flat_params)
    assert np.array_equal(net.flat_params, p0)


def test_fit_flat_bad_buffers():
    opt = fb.LBFGS()
    with pytest.raises(TypeError, match="flat_params must be a 1-D float32 or float64"):
        opt.fit_flat(rosen, [0.0, 1.0])
    with pytest.raises(TypeError, match=r"got ndarray\(2, 2\) float64"):
        opt.fit_flat(rosen, np.zeros((2, 2)))
    with pytest.raises(TypeError, match="int64"):
        opt.fit_flat(rosen, np.zeros(2, dtype=np.int64))
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="flat_params is read-only"):
        opt.fit_flat(rosen, ro)


# -- the estimators' solver='lbfgs' (fb.LBFGS) against their former SciPy path --------------------
def _fit_lbfgs_with_scipy(self, X, target, weights=None):
    """fastbp.sklearn._BaseMLP._fit_lbfgs as it was, on scipy.optimize's L-BFGS-B."""
    net, loss = self.network_, self._loss()
    n, scale = X.shape[0], self._scale()
    value_and_grad = _sklearn_objective(net, X, target, loss, self.alpha)
    X = np.ascontiguousarray(X, dtype=net.dtype)
    res = so.minimize(
        value_and_grad, net.flat_params.astype(np.float64), method="L-BFGS-B", jac=True,
        options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
    net.flat_params[...] = res.x
    self.n_iter_ = int(min(res.nit, self.max_iter))
    self.loss_ = net.loss_and_grad(X, target, loss) * scale + self._penalty() / n


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_the_estimators_fit_with_fb_lbfgs_as_with_scipy(kind, monkeypatch):
    """MLPClassifier / MLPRegressor(solver='lbfgs') on fb.LBFGS and on SciPy's L-BFGS-B: the
    same n_iter_ and loss_ (float64, smooth activations and a penalty strong enough that
    rounding differences do not grow into different end points in the loss's flat valleys:
    with alpha=1 the regressor's runs end 1e-5 apart in loss_, with ReLU also a few iterations
    apart; see test_fit_flat_trains_a_network_as_scipy_does)."""
    import fastbp.sklearn as fs
    X, y = _iris()
    if kind == "classifier":
        make = lambda: fs.MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs",  # noqa: E731
                                        alpha=1.0, max_iter=300, random_state=0)
        target = y
    else:
        make = lambda: fs.MLPRegressor(hidden_layer_sizes=(8,), solver="lbfgs",  # noqa: E731
                                       activation="tanh", alpha=10.0, max_iter=300,
                                       random_state=0)
        target = X[:, 0] * 0.5 + np.sin(X[:, 1])
        X = X[:, 1:]
    new = make().fit(X, target)
    monkeypatch.setattr(fs._BaseMLP, "_fit_lbfgs", _fit_lbfgs_with_scipy)
    ref = make().fit(X, target)
    assert new.n_iter_ == ref.n_iter_
    assert new.loss_ == pytest.approx(ref.loss_, rel=1e-8)
    np.testing.assert_allclose(new.predict(X), ref.predict(X), rtol=1e-6, atol=1e-8)


# -- fb.fit with fb.LBFGS ------------------------------------------------------------------------
def _xor_net(seed=0):
    return fb.Sequential(fb.Linear(2, 8), fb.Tanh(), fb.Linear(8, 1), fb.Sigmoid(), seed=seed)


def test_fit_with_lbfgs_runs_the_same_iterations_as_fit_flat():
    X, d = fb.datasets.xor(120, seed=1)
    w = np.random.default_rng(0).uniform(0, 2, size=120)
    a, b = _xor_net(), _xor_net()
    h = fb.fit(a, X, d, fb.BinaryKL(), fb.LBFGS(), epochs=25, tol=None, sample_weight=w,
               progress=False)

    def value_and_grad(p):
        b.flat_params[...] = p
        return b.loss_and_grad(X, d, fb.BinaryKL(), sample_weight=w), b.flat_grads

    losses = []
    res = fb.LBFGS(maxiter=25).fit_flat(value_and_grad, b.flat_params,
                                        callback=lambda it: losses.append(it.fun))
    assert np.array_equal(a.flat_params, b.flat_params)
    assert h.loss == losses and h.epochs == res.nit
    assert h.stop_reason == ("converged" if res.status == 0 else "epochs")
    assert all(np.isnan(h.lr))


def test_fit_with_lbfgs_validation_early_stopping_and_callbacks():
    X, d = fb.datasets.xor(200, seed=2)
    net = _xor_net()
    seen = []
    h = fb.fit(net, X[:150], d[:150], fb.BinaryKL(), fb.LBFGS(), epochs=200, tol=None,
               validation=(X[150:], d[150:]), patience=3, callbacks=[
                   lambda e, hist, n: seen.append(e) or False], progress=False)
    assert len(h.val_loss) == len(h.loss) == len(seen) and seen == list(range(len(seen)))
    assert h.stop_reason in ("early stopping", "converged")
    if h.stop_reason == "early stopping":
        assert net.loss_and_grad(X[150:], d[150:], fb.BinaryKL()) == \
            pytest.approx(min(h.val_loss), rel=1e-12)
    h = fb.fit(_xor_net(), X, d, fb.BinaryKL(), fb.LBFGS(), epochs=50, tol=None,
               callbacks=[lambda e, hist, n: e == 4], progress=False)
    assert h.epochs == 5 and h.stop_reason == "callback"


def test_fit_with_lbfgs_refuses_minibatches_and_checkpoints(tmp_path):
    X, d = fb.datasets.xor(50, seed=0)
    for kw in (dict(batch_size=10), dict(checkpoint=tmp_path / "c.npz")):
        with pytest.raises(ValueError, match="full batch.*must be None"):
            fb.fit(_xor_net(), X, d, fb.BinaryKL(), fb.LBFGS(), progress=False, **kw)


def test_fit_with_lbfgs_stops_on_overflow_with_finite_parameters():
    X, d = fb.datasets.xor(50, seed=0)
    net = fb.Sequential(fb.Linear(2, 4), fb.Linear(4, 1), fb.Exp(), seed=0)
    with pytest.raises(fb.TrainingError, match="not finite"):
        with np.errstate(all="ignore"):
            fb.fit(net, X * 1e3, d * 1e300, fb.Poisson(), fb.LBFGS(), epochs=50, tol=None,
                   progress=False)
    assert np.isfinite(net.flat_params).all()
