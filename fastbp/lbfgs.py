"""Limited-memory BFGS for full-batch training, on a flat parameter vector.

``LBFGS.minimize(fun, x0)`` minimises a smooth function of one flat vector as SciPy's
``minimize(method="L-BFGS-B", jac=True)`` does on a problem without bounds: the same first
step, the same line search (Moré and Thuente's, as MINPACK-2's ``dcsrch``, which L-BFGS-B
calls), the same rules for skipping a curvature pair and for restarting, and the same stopping
rules, counters, statuses and messages. The direction is the two-loop recursion's -H g with
H0 = (s'y / y'y) I for the newest pair, which is, for a problem without bounds, the direction
that L-BFGS-B's compact form of B yields; it differs only by rounding.

The arithmetic on vectors of length n (the flat parameter buffer: up to millions of elements)
is done by the BLAS that fastbp runs on one thread (SciPy's: ``ddot``, ``daxpy``, ``dnrm2``)
and NumPy ufuncs with ``out=``, in float64, into buffers allocated once per ``minimize``:
the history (2 m n floats) and six vectors of n.

This module sits in the "nodes" layer: it knows nothing of networks. ``fit_flat`` trains one
through any ``value_and_grad(p) -> (loss, gradient)``, e.g. built on ``net.loss_and_grad``.
"""

import math
from collections import namedtuple

import numpy as np

from . import _checks

_EPS = float(np.finfo(np.float64).eps)

# The messages of SciPy's L-BFGS-B (its status word, a colon, its task message).
CONV_GRAD = "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
CONV_F = "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH"
STOP_ITER = "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"
STOP_FUN = "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"
# SciPy's abnormal termination reads "ABNORMAL: " and nothing more; fastbp says why.
ABNORMAL = "ABNORMAL: "
ABNORMAL_LS = ABNORMAL + ("LINE SEARCH FAILED: NO STEP ALONG THE STEEPEST DESCENT "
                          "DIRECTION SATISFIED THE WOLFE CONDITIONS WITHIN MAXLS EVALUATIONS")
ABNORMAL_DESCENT = ABNORMAL + "LINE SEARCH IMPOSSIBLE: THE DIRECTIONAL DERIVATIVE IS >= 0"
NON_FINITE = ABNORMAL + "NON-FINITE"  # every message about NaN or inf begins so
HALTED = "`callback` raised `StopIteration`."  # SciPy's minimize says so, with status 99

LBFGSResult = namedtuple("LBFGSResult", "x fun jac nit nfev status success message")
LBFGSResult.__doc__ = """What ``LBFGS.minimize`` returns, with the fields of SciPy's result.

x : the solution (float64, a new array); fun, jac : the value and gradient at x;
nit : iterations; nfev : evaluations of fun; status : 0 converged, 1 ``maxiter`` or ``maxfun``
reached, 2 abnormal (line search failed, or NaN/inf met: then x is the last finite point),
99 halted by the callback; success : status == 0; message : SciPy's text for the status."""

Iterate = namedtuple("Iterate", "x fun nit nfev")
Iterate.__doc__ = """What the callback receives after each iteration: x (a copy), fun, nit,
nfev."""


def _real(v, name, low, low_ok=True, high=None):
    """``v`` as a float in [low, high) (or (low, high) if not ``low_ok``), else a ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    v = float(v)
    bad = not math.isfinite(v) or v < low or (v == low and not low_ok) or \
        (high is not None and v >= high)
    if bad:
        span = f"{'>=' if low_ok else '>'} {low}" + ("" if high is None else f" and < {high}")
        raise ValueError(f"{name} must be {span}, got {v}")
    return v


class _MoreThuente:
    """The line search of Moré and Thuente (ACM TOMS 20, 1994), as MINPACK-2's ``dcsrch``.

    It looks for a step ``stp`` that satisfies the strong Wolfe conditions on
    phi(stp) = f(x + stp d):

        phi(stp) <= phi(0) + c1 stp phi'(0)      (sufficient decrease)
        |phi'(stp)| <= c2 |phi'(0)|               (curvature)

    keeping an interval [stx, sty] known to contain such a step and choosing each trial by
    safeguarded cubic or quadratic interpolation (``_trial_step``). ``start`` takes phi(0),
    phi'(0) and a first trial; ``next(stp, f, g)`` takes phi and phi' at the trial ``stp`` and
    returns ("fg", next trial), ("converged", stp) or ("warning: ...", stp) when rounding or the
    tolerances leave nothing better: that step is accepted as ``dcsrch``'s caller does.
    """

    XTRAPL, XTRAPU = 1.1, 4.0  # the step grows by these factors while nothing is bracketed

    def __init__(self, c1, c2, xtol, stpmax, stpmin=0.0):
        self.c1, self.c2, self.xtol = c1, c2, xtol
        self.stpmin, self.stpmax = stpmin, stpmax

    def start(self, f0, g0, stp):
        self.f0, self.g0, self.gtest = f0, g0, self.c1 * g0
        self.brackt, self.stage = False, 1
        self.width = self.stpmax - self.stpmin
        self.width1 = self.width / 0.5
        # (stx, fx, gx): the best step so far; (sty, fy, gy): the interval's other end.
        self.stx, self.fx, self.gx = 0.0, f0, g0
        self.sty, self.fy, self.gy = 0.0, f0, g0
        self.stmin, self.stmax = 0.0, stp + self.XTRAPU * stp

    def next(self, stp, f, g):
        ftest = self.f0 + stp * self.gtest
        if self.stage == 1 and f <= ftest and g >= 0.0:
            self.stage = 2  # psi(stp) <= 0 and phi'(stp) >= 0: now phi itself is minimised
        # The same tests as dcsrch, in its order: a later one overrides an earlier one.
        verdict = None
        if self.brackt and (stp <= self.stmin or stp >= self.stmax):
            verdict = "warning: rounding errors prevent progress"
        if self.brackt and self.stmax - self.stmin <= self.xtol * self.stmax:
            verdict = "warning: xtol test satisfied"
        if stp == self.stpmax and f <= ftest and g <= self.gtest:
            verdict = "warning: stp = stpmax"
        if stp == self.stpmin and (f > ftest or g >= self.gtest):
            verdict = "warning: stp = stpmin"
        if f <= ftest and abs(g) <= self.c2 * (-self.g0):
            verdict = "converged"
        if verdict is not None:
            return verdict, stp

        if self.stage == 1 and f <= self.fx and f > ftest:
            # A lower value but not a sufficient decrease: interpolate the modified function
            # psi(a) = phi(a) - phi(0) - c1 a phi'(0), whose derivatives differ by gtest.
            gt = self.gtest
            stx, fxm, gxm, sty, fym, gym, stp, self.brackt = _trial_step(
                self.stx, self.fx - self.stx * gt, self.gx - gt,
                self.sty, self.fy - self.sty * gt, self.gy - gt,
                stp, f - stp * gt, g - gt, self.brackt, self.stmin, self.stmax)
            self.stx, self.sty = stx, sty
            self.fx, self.fy = fxm + stx * gt, fym + sty * gt
            self.gx, self.gy = gxm + gt, gym + gt
        else:
            (self.stx, self.fx, self.gx, self.sty, self.fy, self.gy, stp,
             self.brackt) = _trial_step(self.stx, self.fx, self.gx, self.sty, self.fy, self.gy,
                                        stp, f, g, self.brackt, self.stmin, self.stmax)

        if self.brackt:
            if abs(self.sty - self.stx) >= 0.66 * self.width1:
                stp = self.stx + 0.5 * (self.sty - self.stx)  # too slow a shrink: bisect
            self.width1, self.width = self.width, abs(self.sty - self.stx)
            self.stmin, self.stmax = min(self.stx, self.sty), max(self.stx, self.sty)
        else:
            self.stmin = stp + self.XTRAPL * (stp - self.stx)
            self.stmax = stp + self.XTRAPU * (stp - self.stx)
        stp = min(max(stp, self.stpmin), self.stpmax)
        if self.brackt and (stp <= self.stmin or stp >= self.stmax
                            or self.stmax - self.stmin <= self.xtol * self.stmax):
            stp = self.stx  # no progress possible: the best step so far is the last trial
        return "fg", stp


def _cubic_min(a, fa, da, b, fb, db, flip):
    """theta and gamma of the cubic that interpolates (a, fa, da) and (b, fb, db): its
    minimiser is at a ratio (gamma - da + theta) / (2 gamma - da + db) of the way from a to b
    (Moré-Thuente's form, scaled by s against overflow); gamma is negated when ``flip``."""
    theta = 3.0 * (fa - fb) / (b - a) + da + db
    s = max(abs(theta), abs(da), abs(db))
    gamma = s * math.sqrt((theta / s) ** 2 - (da / s) * (db / s))
    return theta, (-gamma if flip else gamma)


def _trial_step(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """One safeguarded step of Moré-Thuente (MINPACK-2's dcstep): the next trial step and the
    updated interval. (stx, fx, dx) is the best point, (sty, fy, dy) the interval's other end,
    (stp, fp, dp) the last trial; returns (stx, fx, dx, sty, fy, dy, next trial, brackt)."""
    sgnd = dp * (dx / abs(dx))
    if fp > fx:
        # A higher value: a minimiser is bracketed. Take the cubic step if it is closer to stx
        # than the quadratic one, else their mean.
        theta, gamma = _cubic_min(stx, fx, dx, stp, fp, dp, stp < stx)
        p = (gamma - dx) + theta
        q = ((gamma - dx) + gamma) + dp
        stpc = stx + (p / q) * (stp - stx)
        stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
        stpf = stpc if abs(stpc - stx) < abs(stpq - stx) else stpc + (stpq - stpc) / 2.0
        brackt = True
    elif sgnd < 0.0:
        # A lower value and derivatives of opposite signs: bracketed. The cubic step if it is
        # farther from stp than the secant step, else the secant step.
        theta, gamma = _cubic_min(stx, fx, dx, stp, fp, dp, stp > stx)
        p = (gamma - dp) + theta
        q = ((gamma - dp) + gamma) + dx
        stpc = stp + (p / q) * (stx - stp)
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
        brackt = True
    elif abs(dp) < abs(dx):
        # A lower value, derivatives of one sign, |derivative| decreasing. The cubic step only
        # if the cubic tends to infinity in the step's direction or its minimum lies beyond
        # stp; otherwise the secant step.
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        s = max(abs(theta), abs(dx), abs(dp))
        gamma = s * math.sqrt(max(0.0, (theta / s) ** 2 - (dx / s) * (dp / s)))
        if stp > stx:
            gamma = -gamma
        p = (gamma - dp) + theta
        q = (gamma + (dx - dp)) + gamma
        r = p / q
        if r < 0.0 and gamma != 0.0:
            stpc = stp + r * (stx - stp)
        else:
            stpc = stpmax if stp > stx else stpmin
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        if brackt:
            stpf = stpc if abs(stpc - stp) < abs(stpq - stp) else stpq
            limit = stp + 0.66 * (sty - stp)  # stay well inside the bracket
            stpf = min(limit, stpf) if stp > stx else max(limit, stpf)
        else:
            stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
            stpf = max(stpmin, min(stpmax, stpf))
    elif brackt:
        # A lower value, derivatives of one sign, |derivative| not decreasing, bracketed: the
        # cubic step through stp and sty.
        theta, gamma = _cubic_min(sty, fy, dy, stp, fp, dp, stp > sty)
        p = (gamma - dp) + theta
        q = ((gamma - dp) + gamma) + dy
        stpf = stp + (p / q) * (sty - stp)
    else:
        stpf = stpmax if stp > stx else stpmin  # not bracketed: extrapolate to a limit

    if fp > fx:
        sty, fy, dy = stp, fp, dp
    else:
        if sgnd < 0.0:
            sty, fy, dy = stx, fx, dx
        stx, fx, dx = stp, fp, dp
    return stx, fx, dx, sty, fy, dy, stpf, brackt


blas = None  # scipy.linalg.blas, imported by the first run (``import scipy.linalg``: 0.2 s)


def _import_blas():
    global blas
    if blas is None:
        from scipy.linalg import blas as module
        blas = module


class _Memory:
    """The last ``m`` curvature pairs (s, y) in rows of two preallocated (m, n) arrays, used as
    a ring; ``direction(g, out)`` writes -H g by the two-loop recursion."""

    def __init__(self, m, n):
        self.S = np.empty((m, n))
        self.Y = np.empty((m, n))
        self.rho = np.empty(m)
        self.alpha = np.empty(m)
        self.m, self.count, self.newest, self.gamma = m, 0, -1, 1.0

    def clear(self):
        self.count, self.newest, self.gamma = 0, -1, 1.0

    def push(self, d, stp, y, sy, yy):
        """Store s = stp d and y, with s'y = ``sy`` and y'y = ``yy``."""
        k = (self.newest + 1) % self.m
        np.multiply(d, stp, out=self.S[k])
        np.copyto(self.Y[k], y)
        self.rho[k] = 1.0 / sy
        self.gamma = sy / yy  # H0 = gamma I, from the newest pair
        self.newest, self.count = k, min(self.count + 1, self.m)

    def direction(self, g, out):
        """out = -H g (Nocedal and Wright, Algorithm 7.4)."""
        np.copyto(out, g)
        order = [(self.newest - i) % self.m for i in range(self.count)]  # newest first
        for k in order:
            a = self.rho[k] * blas.ddot(self.S[k], out)
            self.alpha[k] = a
            blas.daxpy(self.Y[k], out, a=-a)
        blas.dscal(self.gamma, out)
        for k in reversed(order):
            b = self.rho[k] * blas.ddot(self.Y[k], out)
            blas.daxpy(self.S[k], out, a=self.alpha[k] - b)
        np.negative(out, out=out)


class LBFGS:
    """Limited-memory BFGS with a strong-Wolfe line search, as SciPy's L-BFGS-B without bounds.

    Minimises a smooth function of a flat vector (a network's ``flat_params``) given its value
    and gradient. Iterates, evaluation counts, statuses and messages follow
    ``scipy.optimize.minimize(fun, x0, method="L-BFGS-B", jac=True, options=...)`` with the
    same parameters: on a convex problem its iterates equal SciPy's to rounding (the direction
    is computed by the two-loop recursion, SciPy's by the compact form; they differ in the
    order of the sums).

    Parameters
    ----------
    m : int
        Number of curvature pairs kept (SciPy's ``maxcor``).
    maxiter : int
        Stop after this many iterations (status 1).
    maxfun : int
        Stop after an iteration that brings the evaluations of ``fun`` above ``maxfun``
        (status 1). As in SciPy it is checked once per iteration, so a line search can
        overrun it by up to ``maxls`` evaluations.
    gtol : float
        Converged when max_i |g_i| <= gtol (the projected gradient's inf-norm; with no bounds,
        the gradient's).
    ftol : float
        Converged when (f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol. SciPy's default
        factr * eps = 1e7 * 2.22e-16.
    c1, c2 : float
        The line search's sufficient-decrease and curvature constants, 0 < c1 < c2 < 1
        (L-BFGS-B's fixed ftol = 1e-3 and gtol = 0.9 of ``dcsrch``).
    xtol : float
        The line search stops (accepting its best step) when the bracket is narrower than
        ``xtol`` times its right end.
    maxls : int
        Evaluations per line search; when they run out, the memory is cleared and the
        iteration restarts along -g; along -g it stops (status 2).

    Notes
    -----
    Computations are in float64 whatever the dtype of ``x0`` (a float32 ``x0`` is converted,
    as SciPy converts it); ``fun`` receives a float64 vector and may return a float32
    gradient. ``fun`` receives a read-only view of the solver's buffer, valid during the call:
    copy it to keep it. NaN or inf in a value or gradient stops the run with status 2, a
    message beginning with ``"ABNORMAL: NON-FINITE"``, and the last finite point and its value
    and gradient (never NaN parameters). What differs from SciPy by design: that NaN rule
    (SciPy continues with NaN), the text after ``"ABNORMAL: "``, and that ``fun`` is given a
    read-only view rather than a copy.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> def rosen(x):
    ...     f = np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    ...     g = np.zeros_like(x)
    ...     g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    ...     g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    ...     return f, g
    >>> res = fb.LBFGS(gtol=1e-8, ftol=0.0).minimize(rosen, np.array([-1.2, 1.0, 0.5]))
    >>> res.status, res.message
    (0, 'CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL')
    >>> np.round(res.x, 4)
    array([1., 1., 1.])
    """

    def __init__(self, m=10, maxiter=15000, maxfun=15000, gtol=1e-5,
                 ftol=1e7 * _EPS, c1=1e-3, c2=0.9, xtol=0.1, maxls=20):
        self.m = _checks.positive_int(m, "m")
        self.maxiter = _checks.positive_int(maxiter, "maxiter")
        self.maxfun = _checks.positive_int(maxfun, "maxfun")
        self.maxls = _checks.positive_int(maxls, "maxls")
        self.gtol = _real(gtol, "gtol", 0.0)
        self.ftol = _real(ftol, "ftol", 0.0)
        self.c1 = _real(c1, "c1", 0.0, low_ok=False, high=1.0)
        self.c2 = _real(c2, "c2", 0.0, low_ok=False, high=1.0)
        if not self.c1 < self.c2:
            raise ValueError(f"c1 must be < c2 (the Wolfe conditions need 0 < c1 < c2 < 1), "
                             f"got c1={self.c1}, c2={self.c2}")
        self.xtol = _real(xtol, "xtol", 0.0)

    def config(self):
        return dict(m=self.m, maxiter=self.maxiter, maxfun=self.maxfun, gtol=self.gtol,
                    ftol=self.ftol, c1=self.c1, c2=self.c2, xtol=self.xtol, maxls=self.maxls)

    def __repr__(self):
        return "LBFGS(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    def minimize(self, fun, x0, callback=None):
        """Minimise ``fun`` from ``x0``.

        Parameters
        ----------
        fun : callable
            ``fun(x) -> (value, gradient)``: a real number and an array of x's shape (n,).
        x0 : array_like of shape (n,)
            The starting point: finite reals, 1-D (a network's ``flat_params``).
        callback : callable, optional
            Called after each iteration as ``callback(Iterate(x, fun, nit, nfev))``, as SciPy
            calls a callback whose parameter is named ``intermediate_result``. Raising
            ``StopIteration`` stops the run (status 99, as SciPy).

        Returns
        -------
        LBFGSResult
            x, fun, jac, nit, nfev, status, success, message.

        Examples
        --------
        >>> import numpy as np, fastbp as fb
        >>> A = np.array([[3.0, 1.0], [1.0, 2.0]]); b = np.array([1.0, -1.0])
        >>> res = fb.LBFGS(gtol=1e-10).minimize(lambda x: (0.5 * x @ A @ x - b @ x, A @ x - b),
        ...                                     np.zeros(2))
        >>> bool(np.allclose(res.x, np.linalg.solve(A, b))), res.success
        (True, True)
        """
        if not callable(fun):
            raise TypeError(f"fun must be callable (x -> (value, gradient)), got {fun!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {callback!r}")
        x0 = _checks.as_numeric(x0, "x0")
        if x0.ndim != 1 or x0.size == 0:
            raise ValueError(f"x0 must be a non-empty 1-D array (a flat parameter vector), "
                             f"got shape {x0.shape}")
        _checks.check_finite(x0, "x0")
        return _Run(self, fun, x0, callback).result

    def fit_flat(self, value_and_grad, flat_params, callback=None):
        """Minimise ``value_and_grad`` from ``flat_params`` and write the result into it.

        ``flat_params`` (float32 or float64, 1-D, writable: a network's ``flat_params``) is the
        starting point; on return it holds ``result.x`` (cast to its dtype), the last finite
        point on a NaN stop, and its starting values if ``value_and_grad`` raised.
        ``value_and_grad(p)`` returns the loss and its gradient at p, typically by writing p
        into the network and calling ``net.loss_and_grad``.

        Examples
        --------
        >>> import numpy as np, fastbp as fb
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(60, 4)); d = rng.integers(0, 3, size=60)
        >>> net = fb.Sequential(fb.Linear(4, 3), fb.Softmax(), seed=0)
        >>> loss = fb.KL()
        >>> def value_and_grad(p):
        ...     net.flat_params[...] = p
        ...     return net.loss_and_grad(X, d, loss), net.flat_grads
        >>> before = net.loss_and_grad(X, d, loss)
        >>> res = fb.LBFGS(maxiter=50).fit_flat(value_and_grad, net.flat_params)
        >>> bool(np.array_equal(net.flat_params, res.x)), bool(res.fun < before)
        (True, True)
        """
        if not isinstance(flat_params, np.ndarray) or flat_params.ndim != 1 or \
                flat_params.dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"flat_params must be a 1-D float32 or float64 NumPy array (a "
                            f"network's flat_params), got {type(flat_params).__name__}"
                            f"{getattr(flat_params, 'shape', '')}"
                            f" {getattr(flat_params, 'dtype', '')}")
        _checks.writable(flat_params, "flat_params")
        x0 = flat_params.copy()
        try:
            res = self.minimize(value_and_grad, x0, callback)
        except BaseException:
            flat_params[...] = x0  # value_and_grad may have left a trial point there
            raise
        flat_params[...] = res.x
        return res


class _Run:
    """One ``minimize``: its buffers, counters and the loop of L-BFGS-B's ``mainlb``."""

    def __init__(self, opt, fun, x0, callback):
        _import_blas()
        n = x0.size
        self.opt, self.fun, self.callback, self.n = opt, fun, callback, n
        self.x = np.array(x0, dtype=np.float64)  # the current point, then each trial
        self.g = np.empty(n)                      # the gradient at x
        self.t = np.empty(n)                      # the line search's start (the last iterate)
        self.r = np.empty(n)                      # its gradient, then y = g - r
        self.d = np.empty(n)                      # the search direction
        self.last = np.empty(n)                   # the point fun was last evaluated at
        self.view = self.x.view()
        self.view.flags.writeable = False
        self.memory = _Memory(opt.m, n)
        self.search = _MoreThuente(opt.c1, opt.c2, opt.xtol, stpmax=1e10)
        self.nfev, self.nit, self.cached = 0, 0, False
        # L-BFGS-B tests against factr * epsmch with factr = ftol / eps, as SciPy passes it.
        self.tol = (opt.ftol / _EPS) * _EPS
        self.result = self._run()

    # -- evaluations ---------------------------------------------------------------------
    def _evaluate(self):
        """f and g at self.x into self.f, self.g; False if either is not finite. SciPy
        evaluates again only at a point that differs from the last one (and counts only
        those), and so does this."""
        if self.cached and np.array_equal(self.x, self.last):
            return True
        value, grad = self.fun(self.view)
        self.nfev += 1
        np.copyto(self.last, self.x)
        self.cached = True
        value = np.asarray(value)
        if value.size != 1 or value.dtype.kind not in "biuf":
            raise ValueError(f"fun must return (value, gradient) with a real scalar value, got "
                             f"a value of shape {value.shape} and dtype {value.dtype}")
        grad = np.asarray(grad)
        if grad.shape != (self.n,):
            raise ValueError(f"fun returned a gradient of shape {grad.shape} for x of shape "
                             f"({self.n},)")
        if grad.dtype.kind not in "biuf":
            raise ValueError(f"fun returned a gradient of dtype {grad.dtype}; it must be real")
        self.f = float(value.reshape(()))
        np.copyto(self.g, grad, casting="unsafe")
        return math.isfinite(self.f) and _checks.all_finite(self.g)

    def _pgnorm(self):
        return abs(float(self.g[blas.idamax(self.g)]))

    # -- the result ----------------------------------------------------------------------
    def _done(self, status, message):
        return LBFGSResult(self.x.copy(), self.f, self.g.copy(), self.nit, self.nfev, status,
                           status == 0, message)

    def _stopped(self, message):
        """An abnormal stop: SciPy's status 1 if a limit is reached as well, else 2."""
        limit = self.nfev > self.opt.maxfun or self.nit >= self.opt.maxiter
        return self._done(1 if limit else 2, message)

    def _non_finite(self, where):
        what = "NaN" if math.isnan(self.f) or np.isnan(self.g).any() else "inf"
        return f"{NON_FINITE} VALUE OR GRADIENT ({what}) {where}"

    # -- the loop ------------------------------------------------------------------------
    def _run(self):
        opt, mem = self.opt, self.memory
        if not self._evaluate():
            return self._stopped(self._non_finite("AT X0; X0 RETURNED"))
        if self._pgnorm() <= opt.gtol:
            return self._done(0, CONV_GRAD)
        while True:
            if mem.count:
                mem.direction(self.g, self.d)
            else:
                # L-BFGS-B's Cauchy point with B = I: z = x - g, d = z - x (rounded so).
                np.subtract(self.x, self.g, out=self.d)
                np.subtract(self.d, self.x, out=self.d)
            accepted = self._line_search()
            if accepted is not True:
                if accepted.startswith(NON_FINITE):
                    return self._stopped(accepted)
                if mem.count == 0:
                    return self._stopped(accepted)
                mem.clear()  # as L-BFGS-B: forget the pairs, restart along -g
                continue
            self.nit += 1
            pgnorm = self._pgnorm()
            if self.callback is not None:
                try:
                    self.callback(Iterate(self.x.copy(), self.f, self.nit, self.nfev))
                except StopIteration:
                    return self._done(99, HALTED)
            # SciPy checks the limits before the convergence tests of the same iteration.
            if self.nit >= opt.maxiter:
                return self._done(1, STOP_ITER)
            if self.nfev > opt.maxfun:
                return self._done(1, STOP_FUN)
            if pgnorm <= opt.gtol:
                return self._done(0, CONV_GRAD)
            if self.fold - self.f <= self.tol * max(abs(self.fold), abs(self.f), 1.0):
                return self._done(0, CONV_F)
            self._update_memory()

    def _line_search(self):
        """Moves self.x along self.d to a point the line search accepts: True, or why not
        (then x, f and g are those at the line search's start)."""
        opt, x, d = self.opt, self.x, self.d
        dnorm = blas.dnrm2(d)
        # (d = 0 only if g vanishes next to x in rounding; g'd = 0 below then ends the run)
        first = 1.0 / dnorm if dnorm > 0.0 else math.inf
        stp = min(first, self.search.stpmax) if self.nit == 0 else 1.0
        np.copyto(self.t, x)
        np.copyto(self.r, self.g)
        self.fold = self.f
        self.gd = self.gdold = blas.ddot(self.g, d)
        if self.gdold >= 0.0:
            return ABNORMAL_DESCENT
        self.search.start(self.f, self.gdold, stp)
        for _ in range(opt.maxls):
            if stp == 1.0:
                np.add(self.t, d, out=x)
            else:
                np.multiply(d, stp, out=x)
                np.add(x, self.t, out=x)
            finite = self._evaluate()
            if not finite:
                why = self._non_finite("AT A TRIAL POINT; THE LAST FINITE POINT RETURNED")
                self._restore()
                return why
            self.gd = blas.ddot(self.g, d)
            state, next_stp = self.search.next(stp, self.f, self.gd)
            if state != "fg":
                self.stp = stp
                return True
            stp = next_stp
        self._restore()
        return ABNORMAL_LS

    def _restore(self):
        np.copyto(self.x, self.t)
        np.copyto(self.g, self.r)
        self.f = self.fold
        self.cached = False  # f and g are no longer those at self.last

    def _update_memory(self):
        """Store the pair (s, y) = (stp d, g - g_old) unless s'y <= eps (-g_old's), the test
        of L-BFGS-B (which computes s'y as stp (g'd - g_old'd))."""
        stp, y = self.stp, self.r
        np.subtract(self.g, self.r, out=y)
        yy = blas.dnrm2(y) ** 2
        sy = self.gd - self.gdold if stp == 1.0 else (self.gd - self.gdold) * stp
        if sy <= _EPS * (-self.gdold * (1.0 if stp == 1.0 else stp)):
            return
        self.memory.push(self.d, stp, y, sy, yy)
