"""Data-parallel training over MPI (fastbp.distributed): runs of tests/mpi_job.py under
``mpiexec`` with 1, 2 and 3 ranks, each bounded in time."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec") or str(pathlib.Path(sys.executable).parent / "mpiexec")
if not os.path.exists(MPIEXEC):
    pytest.skip("no mpiexec (pip install mpich)", allow_module_level=True)

JOB = pathlib.Path(__file__).resolve().parent / "mpi_job.py"
ROOT = JOB.parent.parent


def run(tmp_path, ranks, timeout=120, threads=1, name="run", **cfg):
    """Every rank's status (a dict) and rank 0's parameters and losses (or None)."""
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(cfg))
    out = tmp_path / name
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    p = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(JOB), str(config),
                        str(out)], env=env, capture_output=True, text=True, timeout=timeout)
    statuses = []
    for r in range(ranks):
        f = pathlib.Path(f"{out}.rank{r}.json")
        statuses.append(json.loads(f.read_text()) if f.exists() else None)
    npz = pathlib.Path(f"{out}.npz")
    result = dict(np.load(npz)) if npz.exists() else None
    return p, statuses, result


def test_tree_sum_is_the_balanced_tree_over_the_blocks():
    from fastbp.distributed import tree_sum

    def reference(rows):  # written out: the first half's sum plus the second half's
        if len(rows) == 1:
            return rows[0].copy()
        return reference(rows[:len(rows) // 2]) + reference(rows[len(rows) // 2:])

    rng = np.random.default_rng(0)
    for n in range(1, 10):
        every = (rng.standard_normal((n, 257)) * 10.0 ** rng.integers(-3, 4, (n, 1))).astype(
            np.float32)
        want = reference(list(every))
        out = np.full(257, np.nan, np.float32)  # the total into ``out``, the same bits
        assert tree_sum(every.copy(), 0, n, out) is out and out.tobytes() == want.tobytes(), n
        got = tree_sum(every, 0, n)
        assert got.tobytes() == want.tobytes(), n
    every = (rng.standard_normal((7, 257)) * 10.0 ** rng.integers(-3, 4, (7, 1))).astype(
        np.float32)
    seq = every[0].copy()
    for row in every[1:]:
        seq += row
    assert tree_sum(every.copy(), 0, 7).tobytes() != seq.tobytes()  # another order than in turn


def test_pairwise_sums_of_the_ranks_blocks_give_the_tree_sum():
    """With a power of two of ranks each rank's blocks are a subtree: its sum, combined
    pairwise (rank r with r ^ 2^l at level l, as ``Plan._tree_total`` does), is bit for bit
    the tree sum of all blocks; other rank counts take blocks in contiguous runs."""
    from fastbp.distributed import Plan, pairwise, tree_sum

    rng = np.random.default_rng(1)
    for size in (1, 2, 4, 8):
        plan = Plan.__new__(Plan)  # blocks() needs only the size
        plan.size = size
        for n in range(size, 40):
            spans = [plan.blocks(n, r) for r in range(size)]
            assert spans[0][0] == 0 and spans[-1][1] == n and all(
                a[1] == b[0] < b[1] for a, b in zip(spans, spans[1:])), (n, size, spans)
            every = (rng.standard_normal((n, 33)) * 10.0 ** rng.integers(-3, 4, (n, 1))
                     ).astype(np.float32)
            want = tree_sum(every.copy(), 0, n)
            acc = [tree_sum(every.copy(), lo, hi).copy() for lo, hi in spans]
            step = 1
            while step < size:
                acc = [acc[r] + acc[r ^ step] for r in range(size)]
                step *= 2
            assert pairwise(n, size)
            assert all(a.tobytes() == want.tobytes() for a in acc), (n, size)
        assert not pairwise(size - 1, size) or size == 1
    plan.size = 3
    assert not pairwise(9, 3) and [plan.blocks(9, r) for r in range(3)] == [(0, 3), (3, 6),
                                                                            (6, 9)]


def test_deterministic_parameters_are_bit_identical_for_1_2_3_and_4_ranks(tmp_path):
    runs = {n: run(tmp_path, n, name=f"det{n}") for n in (1, 2, 3, 4)}
    for n, (p, statuses, result) in runs.items():
        assert p.returncode == 0, p.stderr[-2000:]
        assert all(s["ok"] for s in statuses), statuses
        assert all(s["loss"] == statuses[0]["loss"] for s in statuses)  # one history
    one = runs[1][2]
    for n in (2, 3, 4):
        np.testing.assert_array_equal(runs[n][2]["params"], one["params"])
        np.testing.assert_array_equal(runs[n][2]["loss"], one["loss"])


def test_the_engine_and_node_by_node_give_the_same_bits(tmp_path):
    _, _, compiled = run(tmp_path, 2, name="compiled")
    _, _, nodes = run(tmp_path, 2, name="nodes", engine=False)
    np.testing.assert_array_equal(compiled["params"], nodes["params"])


@pytest.mark.parametrize("cfg", [dict(weighted=True), dict(dropout=0.3),
                                 dict(weighted=True, dropout=0.3, engine=False)],
                         ids=["weighted", "dropout", "both-node-by-node"])
def test_sample_weights_and_dropout_are_bit_identical_for_1_and_2_ranks(tmp_path, cfg):
    """Each block's weighted share of the batch, and dropout masks keyed by the step and the
    block's rows: the same bits on any number of ranks."""
    _, _, one = run(tmp_path, 1, name="one", **cfg)
    p, statuses, two = run(tmp_path, 2, name="two", **cfg)
    assert p.returncode == 0 and all(s["ok"] for s in statuses), p.stderr[-2000:]
    np.testing.assert_array_equal(two["params"], one["params"])
    np.testing.assert_array_equal(two["loss"], one["loss"])
    _, _, plain = run(tmp_path, 1, name="plain")
    assert not np.array_equal(plain["params"], one["params"])  # they change the training


def test_results_do_not_depend_on_threads_per_rank(tmp_path):
    _, _, a = run(tmp_path, 1, threads=2, name="t2")
    _, _, b = run(tmp_path, 2, threads=1, name="t1")
    np.testing.assert_array_equal(a["params"], b["params"])


def test_allreduce_mode_agrees_to_rounding(tmp_path):
    _, _, det = run(tmp_path, 1, name="det", epochs=1, adam=True)
    p, statuses, fast = run(tmp_path, 2, name="fast", epochs=1, adam=True, det=False)
    assert p.returncode == 0 and all(s["ok"] for s in statuses), p.stderr[-2000:]
    scale = np.abs(det["params"]).max()
    np.testing.assert_allclose(fast["params"], det["params"], rtol=1e-6, atol=1e-6 * scale)
    assert fast["params"].dtype == np.float32


def test_equals_one_process_on_the_same_batches_to_rounding(tmp_path):
    import fastbp as fb

    sys.path.insert(0, str(JOB.parent))
    import mpi_job

    _, _, dist = run(tmp_path, 2, name="dist", adam=True)
    X, d = mpi_job.data()
    net = mpi_job.net(fb)
    fb.fit(net, X, d, fb.KL(), fb.Adam(lr=0.01), batch_size=64, epochs=2, tol=None,
           progress=False, seed=3)
    np.testing.assert_allclose(dist["params"], net.flat_params, rtol=2e-5, atol=2e-6)


def test_a_bad_shard_on_one_rank_stops_every_rank_with_its_error(tmp_path):
    p, statuses, _ = run(tmp_path, 2, timeout=90, name="nan", fault="nan")
    assert p.returncode == 0, p.stderr[-2000:]
    assert [s["ok"] for s in statuses] == [False, False]
    assert all(s["error"] == "ValueError" for s in statuses), statuses
    assert "NaN" in statuses[1]["message"]
    assert statuses[0]["message"].startswith("rank 1: ") and "NaN" in statuses[0]["message"]


def test_divergence_stops_every_rank_with_the_same_training_error(tmp_path):
    p, statuses, _ = run(tmp_path, 2, timeout=90, name="div", lr=3e38, epochs=3)
    assert p.returncode == 0, p.stderr[-2000:]
    assert all(not s["ok"] and s["error"] == "TrainingError" for s in statuses), statuses
    assert statuses[0]["message"] == statuses[1]["message"]
    assert "not finite" in statuses[0]["message"]


def test_an_epoch_end_on_one_rank_decides_for_all(tmp_path):
    # a callback that raises on rank 1 only: every rank raises it
    p, statuses, _ = run(tmp_path, 2, timeout=90, name="raises", fault="callback_raises")
    assert p.returncode == 0, p.stderr[-2000:]
    assert [s["error"] for s in statuses] == ["ZeroDivisionError"] * 2, statuses
    assert statuses[0]["message"].startswith("rank 1: ")
    # a callback that stops on rank 0 only: every rank stops after the same epoch
    p, statuses, _ = run(tmp_path, 2, timeout=90, name="stops", fault="callback_stops",
                         epochs=5)
    assert p.returncode == 0 and all(s["ok"] for s in statuses), (p.stderr[-2000:], statuses)
    assert [len(s["loss"]) for s in statuses] == [2, 2]


def test_a_killed_rank_ends_the_job_within_seconds(tmp_path):
    p, statuses, _ = run(tmp_path, 2, timeout=60, name="kill", fault="kill", epochs=50)
    assert p.returncode != 0
    assert statuses[1] is None  # the killed rank wrote nothing


def test_resume_with_another_number_of_ranks_is_bit_identical(tmp_path):
    ck = str(tmp_path / "ck.npz")
    _, _, straight = run(tmp_path, 1, name="straight", epochs=4)
    p, _, _ = run(tmp_path, 2, name="first", epochs=2, checkpoint=ck)
    assert p.returncode == 0, p.stderr[-2000:]
    p, statuses, resumed = run(tmp_path, 3, name="second", epochs=4, resume=ck, checkpoint=ck)
    assert p.returncode == 0 and all(s["ok"] for s in statuses), (p.stderr[-2000:], statuses)
    np.testing.assert_array_equal(resumed["params"], straight["params"])
    np.testing.assert_array_equal(resumed["loss"], straight["loss"])
