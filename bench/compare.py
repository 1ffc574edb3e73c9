"""Side-by-side: fastbp against PyTorch, JAX, NumPy and scikit-learn on the same work.

Every (round, workload, contender) runs in a fresh subprocess; contenders alternate
round-robin within each round, starting one further along each round, and the table shows
medians over rounds. Timed region: training (or the calls) only, after a warm-up that compiles.
Every child runs without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (a user's machine has neither;
on AVX-512 they pin OpenBLAS to its AVX2 kernels), and reports the OpenBLAS core types it
loaded; an sgemm child measures the machine's GEMM peak before and after the rounds.

    python bench/compare.py                       # 5 rounds, full sizes
    python bench/compare.py --quick               # 2 rounds, smaller sizes
    python bench/compare.py --only W2,W3a --contenders fastbp,torch --json out.json
    python bench/compare.py --keep-openblas-env   # children keep the OpenBLAS overrides
    python bench/compare.py --rounds 3 --repeat 2 # each run the fastest of two repeats

The implementations are in bench/contenders/<name>.py, one function per workload.
"""

import argparse
import ast
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = ["fastbp", "torch", "jax_jit", "jax_scan", "numpy", "sklearn"]
PEERS = CONTENDERS[1:]
MARK = "COMPARE-RESULT "
# Set on the project's machines for old OpenBLAS builds; unset in every child unless
# --keep-openblas-env: on AVX-512 they halve every GEMM (sgemm 2048^3: 226 GFLOP/s, 450 without).
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SGEMM_N = 2048  # the peak: np.dot of two SGEMM_N x SGEMM_N float32 matrices
SGEMM_REPEATS = 5  # best of, after one warm-up call
THREADS = min(2, os.cpu_count() or 1)  # as the contenders
# /proc/cpuinfo flags that decide which GEMM kernels a library can use; amx_* are added as found.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")

# id: (function in bench/contenders/<name>.py, description, full-size kwargs, --quick kwargs).
WORKLOADS = {
    "W1": ("w1", "tiny 2-16-16-1 sigmoid, BCE, f64, full batch", dict(steps=2000), dict(steps=500)),
    "W2": ("w2", "digits 64-64-10 tanh, bs 32", dict(epochs=20), dict(epochs=5)),
    "W3a": ("w3", "784-256-128-10 relu, bs 64, 1 epoch", dict(rows=60000, batch=64),
            dict(rows=10000, batch=64)),
    "W3b": ("w3", "784-256-128-10 relu, bs 256, 1 epoch", dict(rows=60000, batch=256),
            dict(rows=10000, batch=256)),
    "W4": ("w4", "wide 1024-4096-4096-10 relu, bs 512", dict(steps=10, batch=512),
           dict(steps=3, batch=512)),
    "W5": ("w5", "gated 784-256x256-10, bs 128, 1 epoch", dict(rows=60000, batch=128),
           dict(rows=10000, batch=128)),
    "W6a": ("w6a", "784-256-10 predict one row", dict(calls=10000), dict(calls=2000)),
    "W6b": ("w6b", "784-256-10 train_step one row", dict(calls=1000), dict(calls=300)),
}
W4_SIZES = [1024, 4096, 4096, 10]  # as in contenders/_common.py, kept here for the GFLOP/s line
# The dense products of each GEMM-bound workload, as in contenders/*.py: (n_in, n_out, whether
# its dy is computed; a layer reading the input has none), for the floor line.
_W3 = [(784, 256, False), (256, 128, True), (128, 10, True)]
PRODUCTS = {"W3a": _W3, "W3b": _W3, "W4": [(1024, 4096, False), (4096, 4096, True),
                                          (4096, 10, True)],
            "W5": [(784, 256, False), (784, 256, False), (256, 10, True)]}


def product_flops(workload, quick):
    """Floating-point operations of a GEMM-bound workload's products over its timed run:
    forward, dW and (where computed) dy, 2 n_in n_out each per row, over every row trained on
    (``random_rows`` keeps a whole number of batches)."""
    kw = kwargs_for(workload, quick)
    rows = kw["batch"] * kw["steps"] if "steps" in kw else kw["rows"] - kw["rows"] % kw["batch"]
    return rows * sum(2 * n_in * n_out * (3 if dy else 2) for n_in, n_out, dy in
                      PRODUCTS[workload])


def per_call(workload):
    return "calls" in WORKLOADS[workload][2]


def kwargs_for(workload, quick):
    return WORKLOADS[workload][3 if quick else 2]


def workloads_of(contender):
    """Workloads a contender implements: the functions its file defines (read, not imported)."""
    path = os.path.join(HERE, "contenders", contender + ".py")
    with open(path) as f:
        names = {n.name for n in ast.parse(f.read()).body if isinstance(n, ast.FunctionDef)}
    return {w for w, spec in WORKLOADS.items() if spec[0] in names}


# ---------------------------------------------------------------------------- child side


def library_owner(filepath, prefix=None):
    """The package shipping a shared library: numpy for .../site-packages/numpy.libs/lib.so."""
    parts = os.path.normpath(filepath or ".").split(os.sep)
    for i, part in enumerate(parts[:-2]):
        if part in ("site-packages", "dist-packages"):
            return parts[i + 1].removesuffix(".libs")
    return prefix or os.path.basename(filepath or "") or "?"


def openblas_in_use():
    """Every OpenBLAS loaded in this process: [{"lib", "architecture", "version", "filepath"}]."""
    try:
        from threadpoolctl import threadpool_info  # a dependency of fastbp and scikit-learn
    except ImportError:
        return []
    return [{"lib": library_owner(i.get("filepath"), i.get("prefix")),
             "architecture": i.get("architecture"), "version": i.get("version"),
             "filepath": i.get("filepath")}
            for i in threadpool_info() if i.get("internal_api") == "openblas"]


def report(work):
    """Runs work(out) on a new dict, then prints it as one result line: what work filled in
    (or "error") and the OpenBLAS libraries loaded by then."""
    out = {}
    try:
        work(out)
    except Exception as e:  # noqa: BLE001 - any failure becomes an "n/a" with a footnote
        out["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    out["openblas"] = openblas_in_use()  # after the workload: what it actually loaded
    print(MARK + json.dumps(out), flush=True)


def child(contender, workload, quick, repeat=1):
    """Runs one workload ``repeat`` times in this process, prints one result line:
    {"seconds": the fastest, "repeats": every time} or {"error": text}."""
    sys.path.insert(0, HERE)  # bench/contenders as the namespace package `contenders`
    sys.path.append(os.path.dirname(HERE))  # an uninstalled checkout's fastbp, last

    def work(out):
        module = importlib.import_module("contenders." + contender)
        if contender == "fastbp":
            import fastbp

            out["where"] = os.path.dirname(os.path.abspath(fastbp.__file__ or "."))
        run = getattr(module, WORKLOADS[workload][0])
        out["repeats"] = [run(**kwargs_for(workload, quick)) for _ in range(repeat)]
        out["seconds"] = min(out["repeats"])

    report(work)


def sgemm_child(n):
    """Times np.dot of two n x n float32 matrices on THREADS BLAS threads, prints GFLOP/s."""

    def work(out):
        import numpy as np
        from threadpoolctl import threadpool_limits

        A, B = np.random.default_rng(0).standard_normal((2, n, n), dtype=np.float32)
        C = np.empty((n, n), np.float32)
        with threadpool_limits(THREADS, user_api="blas"):
            np.dot(A, B, out=C)  # warm-up: starts the thread pool, touches the pages
            best = float("inf")
            for _ in range(SGEMM_REPEATS):
                t = time.perf_counter()
                np.dot(A, B, out=C)
                best = min(best, time.perf_counter() - t)
        out.update(n=n, threads=THREADS, seconds=best, gflops=2 * n**3 / best / 1e9)

    report(work)


# --------------------------------------------------------------------------- parent side


def child_env(keep_openblas_env=False, environ=None):
    """The environment of every child: a copy of environ (default os.environ) without
    OPENBLAS_OVERRIDES, unless kept. The parent's own environment is left as it is."""
    env = dict(os.environ if environ is None else environ)
    if not keep_openblas_env:
        for k in OPENBLAS_OVERRIDES:
            env.pop(k, None)
    return env


def run_one(contender, workload, quick, timeout, env, repeat=1):
    args = ["--child", contender, workload, "--repeat", str(repeat)] + \
        (["--quick"] if quick else [])
    return run_child(args, timeout, env)


def sgemm_peak(timeout, env, n=SGEMM_N):
    """{"gflops": ..., "openblas": [...]} or {"error": ...} from a fresh sgemm child."""
    return run_child(["--sgemm", str(n)], timeout, env)


def run_child(args, timeout, env):
    """Runs this script with args in a fresh process with environment env; its result line."""
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {p.returncode}: {tail[:300]}"}


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model_and_flags(text):
    """The model name and the CPU_FLAGS (then amx_*) present, from /proc/cpuinfo's text."""
    model, flags = None, set()
    for ln in text.splitlines():
        key, _, value = ln.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    amx = sorted(f for f in flags if f.startswith("amx_"))
    return model, [f for f in CPU_FLAGS if f in flags] + amx


def machine_info(keep_openblas_env=False):
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            model, flags = cpu_model_and_flags(f.read())
        cpu = model or cpu
    except OSError:
        pass
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    dists = ["fastbp", "numpy", "numba", "torch", "jax", "jaxlib", "scikit-learn", "scipy"]
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": cores,
        "usable_cores": usable,
        "python": platform.python_version(),
        "versions": {d: version(d) for d in dists},
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.endswith("_NUM_THREADS") or k.startswith("NUMBA_")},
        "openblas_overrides": {k: os.environ[k] for k in OPENBLAS_OVERRIDES if k in os.environ},
        "children_keep_overrides": keep_openblas_env,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def print_info(info):
    print(f"date     {info['date']}")
    print(f"cpu      {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable)")
    absent = [f for f in CPU_FLAGS if f not in info["cpu_flags"]]
    absent += [] if any(f.startswith("amx_") for f in info["cpu_flags"]) else ["amx_*"]
    print("flags    " + (" ".join(info["cpu_flags"]) or "(none found)")
          + (f" (not: {' '.join(absent)})" if absent else ""))
    print(f"python   {info['python']}   "
          + "  ".join(f"{d} {v}" for d, v in info["versions"].items()))
    if info["env"]:
        print("env      " + " ".join(f"{k}={v}" for k, v in info["env"].items()))
    overrides = " ".join(f"{k}={v}" for k, v in info["openblas_overrides"].items())
    if not overrides:
        print(f"blas env {', '.join(OPENBLAS_OVERRIDES)}: not set")
    elif info["children_keep_overrides"]:
        print(f"blas env {overrides}: kept in every child (--keep-openblas-env)")
    else:
        print(f"blas env {overrides}: unset in every child (--keep-openblas-env keeps them)")
    if info["loadavg"]:
        print("load     %.2f %.2f %.2f (1, 5, 15 min) before the runs" % info["loadavg"])


def fmt(x):
    return "%.3g" % x if x < 1000 else "%.0f" % x


def fmt_sgemm(result):
    if "gflops" not in result:
        return f"n/a ({result.get('error', 'no result')})"
    return f"{result['gflops']:.0f}"


def fmt_openblas(libs):
    """'numpy SkylakeX, scipy SkylakeX' from the dicts of openblas_in_use(), duplicates once."""
    names = dict.fromkeys(f"{b['lib']} {b['architecture']}" for b in libs)
    return ", ".join(names) or "none reported"


def openblas_of(runs, contenders):
    """Per contender, the OpenBLAS libraries its runs reported (each distinct one once)."""
    found = {}
    for (_, con), rs in runs.items():
        for r in rs:
            for b in r.get("openblas", []):
                found.setdefault(con, {})[b["lib"], b["architecture"], b["filepath"]] = b
    return {con: [found[con][k] for k in sorted(found.get(con, {}))] for con in contenders}


def print_header(sgemm, openblas):
    """The lines above the table: the sgemm peak before and after the rounds, OpenBLAS cores."""
    before, after = sgemm["before"], sgemm["after"]
    print(f"sgemm    np.dot {SGEMM_N}^3 float32, {THREADS} threads, best of {SGEMM_REPEATS}: "
          f"{fmt_sgemm(before)} GFLOP/s before the rounds, {fmt_sgemm(after)} after "
          f"(openblas: {fmt_openblas(before.get('openblas') or after.get('openblas') or [])})")
    width = max(map(len, openblas), default=0)
    for i, (con, libs) in enumerate(openblas.items()):
        print(f"{'openblas' if i == 0 else '':9}{con.ljust(width)}  {fmt_openblas(libs)}")
    print()


def sgemm_best(sgemm):
    rates = [r["gflops"] for r in sgemm.values() if "gflops" in r]
    return max(rates) if rates else None


def summarize(runs, workloads, contenders, quick):
    """Medians per (workload, contender): seconds, or microseconds per call for W6."""
    table = {}
    for w in workloads:
        scale = 1e6 / kwargs_for(w, quick)["calls"] if per_call(w) else 1.0
        for con in contenders:
            times = [r["seconds"] * scale for r in runs.get((w, con), []) if "seconds" in r]
            table[w, con] = statistics.median(times) if times else None
    return table


def print_table(table, runs, workloads, contenders, applies, quick, peak=None):
    notes = {}  # error text -> footnote number

    def cell(w, con):
        if w not in applies[con]:
            return "-"
        if table[w, con] is not None:
            return fmt(table[w, con])
        errors = [r["error"] for r in runs.get((w, con), []) if "error" in r]
        key = f"{con}: {errors[0] if errors else 'no result'}"
        notes.setdefault(key, len(notes) + 1)
        return f"n/a[{notes[key]}]"

    head = ["workload", "", "unit"] + contenders + ["fastbp/best peer"]
    rows = []
    for w in workloads:
        unit = "us/call" if per_call(w) else "s"
        row = [w, WORKLOADS[w][1], unit] + [cell(w, con) for con in contenders]
        peers = {p: table[w, p] for p in contenders if p != "fastbp" and table[w, p] is not None}
        fast = table.get((w, "fastbp"))
        if "fastbp" in contenders and fast is not None and peers:
            best = min(peers, key=peers.get)
            row.append(f"{fast / peers[best]:.2f} ({best})")
        else:
            row.append("n/a")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(v).ljust(n) if i < 3 else str(v).rjust(n)
                        for i, (v, n) in enumerate(zip(r, widths))))

    if "W4" in workloads:
        kw = kwargs_for("W4", quick)
        weights = sum(a * b for a, b in zip(W4_SIZES[:-1], W4_SIZES[1:]))
        flops = 6 * weights * kw["batch"] * kw["steps"]
        rates = []
        for con in contenders:
            if table.get(("W4", con)):
                rate = flops / table["W4", con] / 1e9
                share = f" ({100 * rate / peak:.0f}%)" if peak else ""
                rates.append(f"{con} {rate:.1f}{share}")
        of_peak = f"; % of the sgemm peak {peak:.0f}" if peak else ""
        print(f"\nW4 GFLOP/s (6 * weights * batch * steps / time{of_peak}): "
              + (", ".join(rates) or "n/a"))
    floors = []
    for w in workloads:
        peers = [table[w, p] for p in contenders if p != "fastbp" and table[w, p] is not None]
        if w in PRODUCTS and peak and peers:
            floor = product_flops(w, quick) / (peak * 1e9)
            floors.append(f"{w} {fmt(floor)} s = {floor / min(peers):.2f} of the best peer")
    if floors:
        print(f"\nfloor (the products' FLOPs at the sgemm peak {peak:.0f} GFLOP/s; no run on "
              "this BLAS is faster): " + ", ".join(floors))
    for text, n in notes.items():
        print(f"[{n}] {text}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds and smaller sizes")
    ap.add_argument("--rounds", type=int, help="rounds (default 5, or 2 with --quick)")
    ap.add_argument("--only", help="comma-separated workloads, e.g. W2,W3a")
    ap.add_argument("--contenders", help="comma-separated, from " + ",".join(CONTENDERS))
    ap.add_argument("--json", metavar="PATH", help="write all times and medians to PATH")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="times each run repeats its workload, keeping the fastest (default 1; "
                    "2 or 3 on a machine whose speed changes from second to second)")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="children keep " + " and ".join(OPENBLAS_OVERRIDES) + " (default: unset)")
    ap.add_argument("--child", nargs=2, metavar=("CONTENDER", "WORKLOAD"), help=argparse.SUPPRESS)
    ap.add_argument("--sgemm", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        return child(*args.child, args.quick, args.repeat)
    if args.sgemm:
        return sgemm_child(args.sgemm)

    workloads = args.only.split(",") if args.only else list(WORKLOADS)
    contenders = args.contenders.split(",") if args.contenders else list(CONTENDERS)
    for name, known in ((workloads, WORKLOADS), (contenders, CONTENDERS)):
        bad = [x for x in name if x not in known]
        if bad:
            ap.error(f"unknown {', '.join(bad)}; choose from {','.join(known)}")
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")
    rounds = args.rounds or (2 if args.quick else 5)
    timeout = args.timeout or (300 if args.quick else 900)
    applies = {con: workloads_of(con) for con in contenders}

    env = child_env(args.keep_openblas_env)
    info = machine_info(args.keep_openblas_env)
    print_info(info)
    repeats = f", the fastest of {args.repeat} repeats" if args.repeat > 1 else ""
    print(f"rounds   {rounds}{' (quick sizes)' if args.quick else ''}; each run a fresh process"
          f"{repeats}\n", flush=True)

    runs = {}
    sgemm = {"before": sgemm_peak(timeout, env)}
    print(f"sgemm peak before the rounds: {fmt_sgemm(sgemm['before'])} GFLOP/s",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for w in workloads:
            for con in order:
                if w in applies[con]:
                    result = run_one(con, w, args.quick, timeout, env, args.repeat)
                    runs.setdefault((w, con), []).append(result)
                    if con == "fastbp" and "where" in result:
                        info["fastbp_from"] = result["where"]
        print(f"round {r + 1}/{rounds} done ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)

    sgemm["after"] = sgemm_peak(timeout, env)

    table = summarize(runs, workloads, contenders, args.quick)
    openblas = openblas_of(runs, contenders)
    if "fastbp_from" in info:
        print(f"fastbp imported from {info['fastbp_from']}")
    print_header(sgemm, openblas)
    print_table(table, runs, workloads, contenders, applies, args.quick, sgemm_best(sgemm))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "machine": info, "rounds": rounds, "repeat": args.repeat, "quick": args.quick,
                "sgemm": {"n": SGEMM_N, "threads": THREADS, **sgemm},
                "openblas": openblas,
                "sizes": {w: kwargs_for(w, args.quick) for w in workloads},
                "units": {w: "us/call" if per_call(w) else "s" for w in workloads},
                "median": {w: {con: table[w, con] for con in contenders} for w in workloads},
                "runs": {f"{w} {con}": rs for (w, con), rs in runs.items()},
            }, f, indent=1)


if __name__ == "__main__":
    main()
