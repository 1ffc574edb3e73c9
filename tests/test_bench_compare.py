"""bench/compare.py's hygiene: children run without the OpenBLAS overrides, report the OpenBLAS
core types they loaded, and the machine info names the CPU's GEMM-relevant flags.

Cheap and independent of the peers (torch, JAX): the one subprocess test runs the sgemm child
on 64 x 64 matrices, NumPy and threadpoolctl only.
"""

import importlib.util
import os
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "compare.py"
spec = importlib.util.spec_from_file_location("bench_compare", PATH)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

# An AVX-only core type: never what OpenBLAS picks by itself on an AVX2 machine.
FORCED_CORE = "Sandybridge"

CPUINFO = """processor\t: 0
model name\t: Some CPU @ 2.0GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni amx_tile amx_int8
processor\t: 1
model name\t: Some CPU @ 2.0GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni amx_tile amx_int8
"""


def test_child_env_drops_both_overrides_and_leaves_the_parent_alone(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "1048576")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    env = compare.child_env()
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env
    assert env["OPENBLAS_NUM_THREADS"] == "1"  # only the two overrides go
    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"
    assert os.environ["OPENBLAS_L2_SIZE"] == "1048576"
    kept = compare.child_env(keep_openblas_env=True)
    assert (kept["OPENBLAS_CORETYPE"], kept["OPENBLAS_L2_SIZE"]) == ("Haswell", "1048576")


def test_child_env_of_an_explicit_environment():
    assert compare.child_env(environ={"OPENBLAS_CORETYPE": "Haswell", "A": "1"}) == {"A": "1"}


def test_children_run_on_the_detected_core_type(monkeypatch):
    if "avx2" not in compare.machine_info()["cpu_flags"]:
        pytest.skip(f"{FORCED_CORE} may be this CPU's own core type (no avx2 in /proc/cpuinfo)")
    monkeypatch.setenv("OPENBLAS_CORETYPE", FORCED_CORE)
    forced = compare.sgemm_peak(120, compare.child_env(keep_openblas_env=True), n=64)
    if "error" in forced or not forced["openblas"]:
        pytest.skip(f"no OpenBLAS reported by NumPy's child: {forced}")
    assert {b["architecture"] for b in forced["openblas"]} == {FORCED_CORE}
    clean = compare.sgemm_peak(120, compare.child_env(), n=64)
    assert clean["gflops"] > 0 and clean["threads"] == compare.THREADS
    archs = {b["architecture"] for b in clean["openblas"]}
    assert archs and FORCED_CORE not in archs
    assert {b["lib"] for b in clean["openblas"]} == {"numpy"}


@pytest.mark.parametrize("path, prefix, owner", [
    ("/v/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-32a4b2a6.so",
     "libscipy_openblas", "numpy"),
    ("/v/lib/python3.11/site-packages/scipy.libs/libscipy_openblas-6cdc3b4a.so",
     "libscipy_openblas", "scipy"),
    ("/usr/lib/python3/dist-packages/torch/lib/libopenblas.so.0", "libopenblas", "torch"),
    ("/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "libopenblas", "libopenblas"),
])
def test_library_owner(path, prefix, owner):
    assert compare.library_owner(path, prefix) == owner


def test_fmt_openblas_names_each_library_once():
    libs = [{"lib": "numpy", "architecture": "SkylakeX"},
            {"lib": "scipy", "architecture": "Haswell"},
            {"lib": "numpy", "architecture": "SkylakeX"}]
    assert compare.fmt_openblas(libs) == "numpy SkylakeX, scipy Haswell"
    assert compare.fmt_openblas([]) == "none reported"


def test_cpu_model_and_flags():
    model, flags = compare.cpu_model_and_flags(CPUINFO)
    assert model == "Some CPU @ 2.0GHz"
    assert flags == ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "amx_int8", "amx_tile"]  # avx512_bf16 absent; avx, avx512dq not relevant


def test_machine_info_records_flags_and_overrides(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    info = compare.machine_info()
    assert info["openblas_overrides"] == {"OPENBLAS_CORETYPE": "Haswell"}
    assert info["children_keep_overrides"] is False
    assert isinstance(info["cpu_flags"], list)


def test_product_flops_count_forward_dw_and_the_dy_computed():
    # W3b: 60000 rows in 234 whole batches of 256; 784x256 without dy, 256x128 and 128x10 with
    per_row = 2 * 784 * 256 * 2 + 2 * 256 * 128 * 3 + 2 * 128 * 10 * 3
    assert compare.product_flops("W3b", False) == 59904 * per_row
    assert compare.product_flops("W4", True) == 3 * 512 * (
        2 * 1024 * 4096 * 2 + 2 * 4096 * 4096 * 3 + 2 * 4096 * 10 * 3)


def test_the_floor_line_names_each_gemm_bound_workload(capsys):
    table = {("W3b", "fastbp"): 0.5, ("W3b", "numpy"): 0.4, ("W2", "fastbp"): 0.1,
             ("W2", "numpy"): 0.2}
    applies = {"fastbp": {"W3b", "W2"}, "numpy": {"W3b", "W2"}}
    compare.print_table(table, {}, ["W3b", "W2"], ["fastbp", "numpy"], applies, False, 200.0)
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("floor")][0]
    floor = compare.product_flops("W3b", False) / 200e9
    assert f"W3b {compare.fmt(floor)} s = {floor / 0.4:.2f} of the best peer" in line
    assert "W2" not in line  # not bound by its products


def test_a_child_repeats_its_workload_and_reports_the_fastest(monkeypatch, capsys):
    times = iter([0.5, 0.25, 0.75])
    fake = type("Contender", (), {"w2": staticmethod(lambda epochs: next(times))})
    monkeypatch.setattr(compare.importlib, "import_module", lambda name: fake)
    monkeypatch.setattr(compare, "openblas_in_use", lambda: [])
    monkeypatch.setattr(compare.sys, "path", list(compare.sys.path))  # the child extends it
    compare.child("numpy", "W2", True, repeat=3)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = compare.json.loads(line[len(compare.MARK):])
    assert result["repeats"] == [0.5, 0.25, 0.75] and result["seconds"] == 0.25
