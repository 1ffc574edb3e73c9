"""A scikit-learn grid search over fastbp's MLPClassifier with ``n_jobs=1`` and ``n_jobs=2``.

joblib's workers are fresh processes started with ``NUMBA_NUM_THREADS=1``: they import fastbp
and load its compiled kernels from the cache that the parent's thread count also uses. Each
search runs in a fresh process of its own (as a user's script does), the two alternating
``--repeats`` times after one warm-up of each; prints median wall seconds and the ratio.

    python bench/bench_search.py [--repeats 3] [--estimator fastbp|sklearn] [--max-iter 30]

``--estimator sklearn`` runs the same search over scikit-learn's own MLPClassifier, to show
what joblib's worker start-up costs any estimator.
"""

import argparse
import statistics
import subprocess
import sys
import time

SEARCH = r'''
import sys, warnings
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
if sys.argv[2] == "fastbp":
    from fastbp.sklearn import MLPClassifier
else:
    from sklearn.neural_network import MLPClassifier
warnings.simplefilter("ignore", ConvergenceWarning)
X, y = load_digits(return_X_y=True)
grid = {"hidden_layer_sizes": [(32,), (64,)], "alpha": [1e-4, 1e-3]}
search = GridSearchCV(MLPClassifier(max_iter=int(sys.argv[3]), random_state=0), grid, cv=3,
                      n_jobs=int(sys.argv[1])).fit(X / 16, y)
print(search.best_params_, round(search.best_score_, 4))
'''


def run(n_jobs, estimator, max_iter):
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", SEARCH, str(n_jobs), estimator, str(max_iter)],
                         capture_output=True, text=True, check=True)
    return time.perf_counter() - t, out.stdout.strip()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--estimator", default="fastbp", choices=["fastbp", "sklearn"])
    ap.add_argument("--max-iter", type=int, default=30)
    args = ap.parse_args(argv)
    for n in (1, 2):  # warm the kernel cache for both
        run(n, args.estimator, args.max_iter)
    times = {1: [], 2: []}
    for _ in range(args.repeats):
        for n in (1, 2):
            sec, result = run(n, args.estimator, args.max_iter)
            times[n].append(sec)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"{args.estimator}: n_jobs=1: {one:.2f} s  n_jobs=2: {two:.2f} s  "
          f"ratio n_jobs=2 / n_jobs=1: {two / one:.2f}  (best: {result})")


if __name__ == "__main__":
    main()
