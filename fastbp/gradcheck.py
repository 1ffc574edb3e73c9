"""Gradient check by central finite differences in float64."""

import numpy as np

from . import _checks


class GradcheckReport:
    """Worst relative error per parameter array and for the input, and what was skipped.

    The relative error of an element is |analytic - numeric| / max(|analytic|, |numeric|,
    floor), where floor is the larger of 1e-3 times the array's largest |gradient| and
    noise / tol, with noise = 10 * 2.2e-16 * max(1, |loss|) / eps the rounding error of a central
    difference: a gradient that is exactly zero is not failed for the noise of its estimate.
    """

    def __init__(self, errors, skipped, checked, tol):
        self.errors, self.skipped, self.checked, self.tol = errors, skipped, checked, tol

    @property
    def worst(self):
        return max(self.errors.values()) if self.errors else 0.0

    @property
    def ok(self):
        return self.worst <= self.tol

    def __repr__(self):
        rows = [f"{'array':<12} {'worst rel. error':>17} {'checked':>8} {'skipped':>8}"]
        for name, err in self.errors.items():
            rows.append(f"{name:<12} {err:17.2e} {self.checked[name]:8d} "
                        f"{self.skipped[name]:8d}")
        rows.append(f"{'ok' if self.ok else 'FAILED'} (tol {self.tol:g})")
        return "\n".join(rows)


def _rel_errors(a, n, noise_floor):
    floor = max(1e-3 * max(np.abs(a).max(initial=0), np.abs(n).max(initial=0)), noise_floor,
                1e-300)
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)


def gradcheck(net, X, d, loss, eps=1e-6, tol=1e-5, max_per_array=None, seed=0,
              sample_weight=None):
    """Compare the backward pass with central differences (f(x+eps) - f(x-eps)) / 2 eps.

    The network is copied to float64 and run in evaluation mode (so RReLU is deterministic).
    Perturbations that move an input across a kink (ReLU at 0, a change of argmax in a max)
    are skipped and counted, since there the derivative is a subgradient convention.

    Parameters
    ----------
    net : Sequential
    X, d : the batch and its targets.
    loss : Divergence
    eps : float
        The finite-difference step.
    tol : float
        ``report.ok`` is True when every worst relative error is at most ``tol``.
    max_per_array : int, optional
        Check at most this many randomly chosen elements per array (all by default).
    sample_weight : array (T,), optional
        Check the gradient of the weighted loss sum_t w_t Div_t / sum_t w_t.

    Returns
    -------
    GradcheckReport

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 2), fb.Softmax(), seed=0)
    >>> X = np.random.default_rng(0).normal(size=(5, 3))
    >>> fb.gradcheck(net, X, np.array([0, 1, 1, 0, 1]), fb.KL()).ok
    True
    """
    net = net.astype(np.float64).eval()
    X = net._input(X)
    target = loss.target(d, X.shape[0], net.n_out, np.float64)
    weights = _checks.sample_weight(sample_weight, X.shape[0])
    base, rows = central_differences(net, X, target, loss, eps, max_per_array=max_per_array,
                                     rng=np.random.default_rng(seed), weights=weights)
    noise_floor = 10 * np.finfo(np.float64).eps * max(1.0, abs(base)) / eps / tol
    errors, skipped, checked = {}, {}, {}
    for name, analytic, idx, numeric, n_skip in rows:
        errs = _rel_errors(analytic[idx], numeric, noise_floor)
        errors[name] = float(errs.max()) if errs.size else 0.0
        skipped[name], checked[name] = n_skip, idx.size
    return GradcheckReport(errors, skipped, checked, tol)


def central_differences(net, X, target, loss, eps, names=None, max_per_array=None, rng=None,
                        weights=None):
    """The loss of a float64 network in evaluation mode on (X, target), and for each array
    (the parameters by ``net.param_names``, then "input"): (name, analytic gradient (flat),
    indices checked, their central differences (f(x+eps) - f(x-eps)) / 2 eps, number skipped
    because a perturbation crossed a kink). Arrays not in ``names`` (all by default) get no
    differences; with ``max_per_array``, ``rng`` draws the indices of larger arrays. The loss
    is weighted by ``weights`` (sample weights as ``_checks.sample_weight`` gives them)."""
    _, dX = net._loss_and_grad(X, target, loss, need_dx=True, train=False, weights=weights)
    base, base_ctx = net._loss_value(X, target, loss, weights=weights)
    base_kinks = net.kinks(base_ctx)

    def f():
        value, ctxs = net._loss_value(X, target, loss, weights=weights)
        k = net.kinks(ctxs)
        return value, (k is not None and not np.array_equal(k, base_kinks))

    arrays = [(name, p, g.copy()) for name, p, g in zip(net.param_names, net.params, net.grads)]
    arrays.append(("input", X, dX))
    rows = []
    for name, p, g in arrays:
        flat, gflat = p.reshape(-1), g.reshape(-1)
        idx = np.arange(flat.size if names is None or name in names else 0)
        if max_per_array is not None and idx.size > max_per_array:
            idx = np.sort(rng.choice(flat.size, max_per_array, replace=False))
        kept, num, n_skip = [], [], 0
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            fp, kp = f()
            flat[i] = old - eps
            fm, km = f()
            flat[i] = old
            if kp or km:
                n_skip += 1
                continue
            kept.append(i)
            num.append((fp - fm) / (2 * eps))
        rows.append((name, gflat, np.array(kept, np.int64), np.array(num), n_skip))
    return base, rows
