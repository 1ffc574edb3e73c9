"""scikit-learn's MLPClassifier against fastbp.sklearn.MLPClassifier on the digits.

Same data split, same hyper-parameters (scikit-learn's defaults unless given), the two fits timed
in alternation ``--repeats`` times; prints the median fit seconds, the speed ratio, epochs run and
both test accuracies. Both run with the same number of threads (``--threads``: numba's and
BLAS's for fastbp, BLAS's for scikit-learn).

    python bench/bench_sklearn.py [--repeats 5] [--threads 1] [--max-iter 200] [--hidden 100]
                                  [--solver adam] [--dtype float64]
"""

import argparse
import os
import statistics
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkMLP
from threadpoolctl import threadpool_limits

import fastbp as fb
from fastbp.sklearn import MLPClassifier as FbMLP

# The steady state: parallel kernels compile at the warm-up, not in a background helper while
# the timed runs start on their serial twins (FASTBP_COMPILE_PARALLEL, README).
os.environ.setdefault("FASTBP_COMPILE_PARALLEL", "now")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--hidden", type=int, nargs="+", default=[100])
    ap.add_argument("--solver", default="adam")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                    help="fastbp's dtype (a fastbp extra; scikit-learn computes in the dtype "
                         "of X, float64 here)")
    args = ap.parse_args(argv)

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, random_state=0,
                                          stratify=y)
    params = dict(hidden_layer_sizes=tuple(args.hidden), solver=args.solver,
                  max_iter=args.max_iter, random_state=args.seed)
    contenders = {"scikit-learn": lambda: SkMLP(**params),
                  "fastbp": lambda: FbMLP(**params, n_threads=args.threads, dtype=args.dtype)}
    fb.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        contenders["fastbp"]().set_params(max_iter=2).fit(Xtr, ytr)  # compile or load cache

    times = {k: [] for k in contenders}
    result = {}
    with threadpool_limits(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(args.repeats):
            for name, make in contenders.items():
                est = make()
                t0 = time.perf_counter()
                est.fit(Xtr, ytr)
                times[name].append(time.perf_counter() - t0)
                result[name] = (est.score(Xte, yte), est.n_iter_)

    print(f"digits: {len(Xtr)} train / {len(Xte)} test rows, {params}, "
          f"{args.threads} thread(s), fastbp dtype {args.dtype}, "
          f"{args.repeats} alternating fits each")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in contenders:
        acc, n_iter = result[name]
        print(f"  {name:13s} median fit {med[name]:7.3f} s  ({n_iter} epochs, "
              f"{1e3 * med[name] / n_iter:6.2f} ms/epoch)  test accuracy {acc:.4f}")
    ratio = med["scikit-learn"] / med["fastbp"]
    print(f"  speed ratio (scikit-learn / fastbp): {ratio:.1f}x;  accuracy difference "
          f"{100 * (result['fastbp'][0] - result['scikit-learn'][0]):+.2f} points")
    return med, result


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
