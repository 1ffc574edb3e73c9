"""How much a 2-thread fit slows down when another process keeps one core busy.

Runs W2 and W3b (see compare.py) for each contender, each run in a fresh process, alternating
quiet and contended runs (a competing process spinning on one core), and prints the median
times and the slowdown ratio contended / quiet. fastbp's goal: at most about 2x (the competitor
takes one of two cores), where OpenMP-spinning code was measured 10-70x slower.

    python bench/contention.py [--rounds 3] [--contenders fastbp,torch] [--only W2,W3b]
"""

import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def busy():
    """A process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--contenders", default="fastbp,torch")
    ap.add_argument("--only", default="W2,W3b")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    contenders, workloads = args.contenders.split(","), args.only.split(",")
    times = {(c, w, m): [] for c in contenders for w in workloads for m in ("quiet", "busy")}
    for r in range(args.rounds):
        for w in workloads:
            for c in contenders:
                for mode in ("quiet", "busy"):
                    rival = busy() if mode == "busy" else None
                    try:
                        out = compare.run_one(c, w, False, args.timeout)
                    finally:
                        if rival is not None:
                            rival.kill()
                            rival.wait()
                    if "seconds" in out:
                        times[(c, w, mode)].append(out["seconds"])
                    else:
                        print(f"{c} {w} {mode}: {out.get('error')}", file=sys.stderr)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{'workload':<8} {'contender':<10} {'quiet s':>9} {'busy s':>9} {'slowdown':>9}")
    for w in workloads:
        for c in contenders:
            q, b = times[(c, w, "quiet")], times[(c, w, "busy")]
            if q and b:
                mq, mb = statistics.median(q), statistics.median(b)
                print(f"{w:<8} {c:<10} {mq:9.3f} {mb:9.3f} {mb / mq:8.2f}x")
            else:
                print(f"{w:<8} {c:<10} {'n/a':>9} {'n/a':>9}")


if __name__ == "__main__":
    main()
