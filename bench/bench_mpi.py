"""Data-parallel scaling over MPI: training throughput of ``fit(comm=...)`` on W3b- and W4-sized
work, 2 ranks x 1 thread against 1 rank x 1 thread and 1 process x 2 threads, each case in
fresh processes, alternating, medians over rounds.

    python bench/bench_mpi.py                # W3b and W4, 3 rounds
    python bench/bench_mpi.py --only W3b --rounds 5 --steps 20

Needs ``pip install "fastbp[mpi]"`` (mpi4py and MPICH's mpiexec). Every process runs without
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, as a user's machine does. Prints rows per second for
each case and the ratios; with ``--json PATH`` writes them too.
"""

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
MARK = "BENCH-MPI "
WORK = {  # sizes, batch, float32, SGD
    "W3b": ([784, 256, 128, 10], 256),
    "W4": ([1024, 4096, 4096, 10], 512),
}
CASES = [  # (label, ranks, threads per rank, comm)
    ("1 process x 1 thread (no comm)", 1, 1, False),
    ("1 rank x 1 thread", 1, 1, True),
    ("2 ranks x 1 thread", 2, 1, True),
    ("1 process x 2 threads (no comm)", 1, 2, False),
]

CHILD = """
import sys, time, json
import numpy as np
import fastbp as fb
sizes, batch, steps, use_comm, det = json.loads(sys.argv[1])
comm = None
if use_comm:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
rng = np.random.default_rng(0)
X = rng.standard_normal((batch * steps, sizes[0])).astype(np.float32)
d = rng.integers(0, sizes[-1], batch * steps)
layers = []
for a, b in zip(sizes[:-1], sizes[1:]):
    layers += [fb.Linear(a, b), fb.ReLU()]
net = fb.Sequential(*layers[:-1], fb.Softmax(), dtype=np.float32, seed=0)
kw = dict(batch_size=batch, tol=None, progress=False, shuffle=False)
if comm is not None:
    kw.update(comm=comm, deterministic=det, block_rows=batch // 4 if det else 64)
fb.fit(net, X[:2 * batch], d[:2 * batch], fb.KL(), fb.SGD(lr=0.01), epochs=1, **kw)  # warm-up
if comm is not None:
    comm.Barrier()
t = time.perf_counter()
fb.fit(net, X, d, fb.KL(), fb.SGD(lr=0.01), epochs=1, **kw)
if comm is not None:
    comm.Barrier()
t = time.perf_counter() - t
if comm is None or comm.Get_rank() == 0:
    print("BENCH-MPI " + json.dumps({"rows_per_s": batch * steps / t}), flush=True)
"""


def run(sizes, batch, steps, ranks, threads, use_comm, det):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["NUMBA_NUM_THREADS"] = str(threads)
    env.setdefault("FASTBP_COMPILE_PARALLEL", "now")  # the steady state (README)
    cmd = [sys.executable, "-c", CHILD, json.dumps([sizes, batch, steps, use_comm, det])]
    if use_comm:
        mpiexec = shutil.which("mpiexec") or str(pathlib.Path(sys.executable).parent / "mpiexec")
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])["rows_per_s"]
    raise RuntimeError(f"{cmd[:4]}: exit {p.returncode}: {p.stderr[-800:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="W3b,W4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="steps per run (W3b 200, W4 6)")
    ap.add_argument("--modes", default="deterministic,allreduce")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}; {os.cpu_count()} cores")
    out = {"cpu": cpu, "results": {}}
    for w in args.only.split(","):
        sizes, batch = WORK[w]
        steps = args.steps or (200 if w == "W3b" else 6)
        for det in [m == "deterministic" for m in args.modes.split(",")]:
            rows = {label: [] for label, *_ in CASES}
            for r in range(args.rounds):
                order = CASES[r % len(CASES):] + CASES[:r % len(CASES)]
                for label, ranks, threads, use_comm in order:
                    if not use_comm and not det:
                        continue  # the no-comm cases do not depend on the mode
                    rows[label].append(run(sizes, batch, steps, ranks, threads, use_comm, det))
            med = {k: statistics.median(v) for k, v in rows.items() if v}
            base = med["1 rank x 1 thread"]
            mode = "deterministic" if det else "allreduce"
            print(f"\n{w} ({'-'.join(map(str, sizes))}, batch {batch}, {steps} steps), {mode}:")
            for label, v in med.items():
                print(f"  {label:34s} {v:10.0f} rows/s  x{v / base:.2f}")
            two = med["2 ranks x 1 thread"]
            if "1 process x 2 threads (no comm)" in med:
                print(f"  2 ranks x 1 thread / 1 process x 2 threads: "
                      f"x{two / med['1 process x 2 threads (no comm)']:.2f}")
            out["results"][f"{w} {mode}"] = med
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
