"""The command line: demo, train, predict, bench, and one-line errors."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp as fb
from fastbp.cli import main, parse_arch


def test_parse_arch():
    net = parse_arch("64-32-10:tanh:softmax")
    assert [type(n).__name__ for n in net] == ["Linear", "Tanh", "Linear", "Softmax"]
    assert (net[0].n_in, net[0].n_out, net[2].n_out) == (64, 32, 10)


@pytest.mark.parametrize("text", ["64-32", "64:tanh:softmax", "a-b:tanh:softmax",
                                  "4-2:tanh:nonsense"])
def test_bad_arch_strings(text):
    with pytest.raises(ValueError):
        parse_arch(text)


def test_train_csv_and_load_checkpoint(tmp_path, capsys):
    X, y = fb.datasets.digits()
    csv = tmp_path / "d.csv"
    np.savetxt(csv, np.column_stack([X[:400], y[:400]]), delimiter=",")
    out = tmp_path / "m.npz"
    assert main(["train", str(csv), "--arch", "64-16-10:relu:softmax", "--epochs", "5",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "saved to" in text
    assert fb.load(out).n_out == 10


@pytest.mark.parametrize("argv, msg", [
    (["train", "/nonexistent.csv", "--arch", "2-2:tanh:softmax"], "not found"),
    (["train", "{npy}", "--arch", "9-2:tanh:softmax"], "columns"),
    (["train", "{npy}", "--arch", "3-2:tanh:bogus"], "unknown activation"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, msg):
    npy = tmp_path / "t.npy"
    np.save(npy, np.column_stack([np.ones((10, 3)), np.arange(10) % 2]))
    argv = [a.format(npy=npy) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_demo_runs(capsys, tmp_path):
    assert main(["demo", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("test accuracy") == 2


def test_bench_runs(capsys):
    assert main(["bench", "--epochs", "1"]) == 0
    assert "us/step" in capsys.readouterr().out


# -- train and predict on real tables (fastbp issue 9, item 11) -------------------------------
ARCH3 = "4-8-3:tanh:softmax"


def _write_csv(path, table, header=None):
    np.savetxt(path, table, delimiter=",", header="" if header is None else ",".join(header),
               comments="")
    return str(path)


def _blobs(n=150, seed=0, labels=(0, 1, 2)):
    """Three separable clusters in 4 features of very different scales (units of 1e-3 to
    1e3), with a constant fifth column before the label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 4)) + 4 * np.eye(3, 4)[y]
    X *= np.array([1e-3, 1.0, 10.0, 1e3])
    return X, np.asarray(labels, dtype=float)[y]


def _no_training(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(fb, "fit", boom)


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.startswith("fastbp: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def _accuracy(text):
    return float(re.search(r"test accuracy ([0-9.]+)%", text).group(1)) / 100


def test_train_standardises_with_the_training_rows_and_stores_it(tmp_path, capsys):
    X, y = _blobs()
    X = np.column_stack([X, np.full(len(X), 7.0)])  # a constant column: shifted, not scaled
    csv = _write_csv(tmp_path / "b.csv", np.column_stack([X, y]))
    out = tmp_path / "m.npz"
    assert main(["train", csv, "--arch", "5-8-3:tanh:softmax", "--epochs", "2", "--test-size",
                 "0.25", "--seed", "3", "--out", str(out)]) == 0
    Xtr = fb.datasets.split(X, y.astype(int), test_size=0.25, seed=3)[0]
    std = fb.load(out).meta["standardize"]
    np.testing.assert_allclose(std["mean"], Xtr.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std["scale"][:4], Xtr[:, :4].std(axis=0), rtol=1e-12)
    assert std["scale"][4] == 1.0


def test_standardisation_rescues_the_unscaled_breast_cancer_set(tmp_path, capsys):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    csv = _write_csv(tmp_path / "bc.csv", np.column_stack([data.data, data.target]))
    argv = ["train", csv, "--arch", "30-16-2:tanh:softmax", "--epochs", "20",
            "--out", str(tmp_path / "m.npz")]
    assert main(argv) == 0
    assert _accuracy(capsys.readouterr().out) > 0.9


def test_a_model_no_better_than_the_majority_class_is_warned_about(tmp_path, capsys):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()  # unscaled and barely trained: every tanh unit saturates
    csv = _write_csv(tmp_path / "bc.csv", np.column_stack([data.data, data.target]))
    assert main(["train", csv, "--arch", "30-16-2:tanh:softmax", "--epochs", "1", "--lr",
                 "1e-9", "--no-standardize", "--out", str(tmp_path / "m.npz")]) == 0
    out, err = capsys.readouterr()
    assert _accuracy(out) <= max(data.target.mean(), 1 - data.target.mean())
    assert "no better than always answering the most common class" in err


def test_no_standardize_stores_none_and_predict_uses_the_raw_features(tmp_path, capsys):
    X, y = _blobs()
    csv = _write_csv(tmp_path / "b.csv", np.column_stack([X, y]))
    out = tmp_path / "m.npz"
    assert main(["train", csv, "--arch", ARCH3, "--epochs", "2", "--no-standardize",
                 "--out", str(out)]) == 0
    net = fb.load(out)
    assert net.meta["standardize"] is None
    capsys.readouterr()
    assert main(["predict", str(out), _write_csv(tmp_path / "x.csv", X)]) == 0
    got = capsys.readouterr().out.split()
    assert got == [str(k) for k in net.predict(X).argmax(axis=1)]


def test_header_row_is_detected_and_target_col_may_name_a_column(tmp_path, capsys):
    X, y = _blobs()
    names = ["alcohol", "ash", "hue", "proline", "kind"]
    csv = _write_csv(tmp_path / "h.csv", np.column_stack([y, X]), header=[names[-1]] + names[:-1])
    out = tmp_path / "m.npz"
    assert main(["train", csv, "--arch", ARCH3, "--epochs", "3", "--target-col", "kind",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{len(X)} rows" in text and "'kind'" in text  # the header is not a row
    meta = fb.load(out).meta
    assert meta["columns"] == names[:-1] and meta["target"]["index"] == 0
    assert main(["train", csv, "--arch", ARCH3, "--epochs", "1", "--target-col", "kindd",
                 "--out", str(out)]) == 2
    _one_line_error(capsys, "'kindd'", "'alcohol'")


def test_a_numeric_first_row_is_data_and_names_need_a_header(tmp_path, capsys):
    X, y = _blobs(n=30)
    csv = _write_csv(tmp_path / "n.csv", np.column_stack([X, y]))
    assert main(["train", csv, "--arch", ARCH3, "--epochs", "1", "--target-col", "label",
                 "--out", str(tmp_path / "m.npz")]) == 2
    _one_line_error(capsys, "'label'", "no header")


def test_a_header_with_the_wrong_number_of_names_is_refused(tmp_path, capsys):
    X, y = _blobs(n=30)
    csv = _write_csv(tmp_path / "h.csv", np.column_stack([X, y]), header=["a", "b", "c"])
    assert main(["train", csv, "--arch", ARCH3, "--out", str(tmp_path / "m.npz")]) == 2
    _one_line_error(capsys, "3 names", "5 columns")


@pytest.mark.parametrize("col", ["7", "5", "-6"])
def test_target_col_out_of_range_is_refused(tmp_path, capsys, monkeypatch, col):
    _no_training(monkeypatch)
    X, y = _blobs(n=30)
    csv = _write_csv(tmp_path / "t.csv", np.column_stack([X, y]))
    assert main(["train", csv, "--arch", ARCH3, "--target-col", col,
                 "--out", str(tmp_path / "m.npz")]) == 2
    _one_line_error(capsys, f"--target-col {col}", "5 columns")


def test_negative_target_col_counts_from_the_end(tmp_path):
    X, y = _blobs(n=60)
    csv = _write_csv(tmp_path / "t.csv", np.column_stack([y, X]))
    out = tmp_path / "m.npz"
    assert main(["train", csv, "--arch", ARCH3, "--epochs", "1", "--target-col", "-5",
                 "--out", str(out)]) == 0
    assert fb.load(out).meta["target"]["index"] == 0


@pytest.mark.parametrize("arch, words", [
    ("4-1000000000-3:tanh:softmax", ["1000000000", "GiB"]),
    ("4-60000-60000-3:tanh:softmax", ["60000", "GiB"]),
    ("4-0-3:tanh:softmax", ["width 0"]),
])
def test_absurd_widths_are_refused_before_allocating(tmp_path, capsys, monkeypatch, arch,
                                                     words):
    import tracemalloc

    _no_training(monkeypatch)
    X, y = _blobs(n=30)
    csv = _write_csv(tmp_path / "t.csv", np.column_stack([X, y]))
    tracemalloc.start()
    try:
        code = main(["train", csv, "--arch", arch, "--out", str(tmp_path / "m.npz")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and peak < 16 << 20
    _one_line_error(capsys, *words)


def test_an_unwritable_out_is_refused_before_training(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    X, y = _blobs(n=30)
    csv = _write_csv(tmp_path / "t.csv", np.column_stack([X, y]))
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "m.npz"
    assert main(["train", csv, "--arch", ARCH3, "--out", str(out)]) == 2
    _one_line_error(capsys, "--out", str(out))
    assert main(["train", csv, "--arch", ARCH3, "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "is a folder")


def test_the_out_folder_is_created(tmp_path):
    X, y = _blobs(n=30)
    csv = _write_csv(tmp_path / "t.csv", np.column_stack([X, y]))
    out = tmp_path / "runs" / "one" / "m.npz"
    assert main(["train", csv, "--arch", ARCH3, "--epochs", "1", "--out", str(out)]) == 0
    assert fb.load(out).n_in == 4


def test_demo_plot_without_matplotlib_fails_before_training(capsys, monkeypatch, tmp_path):
    _no_training(monkeypatch)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    assert main(["demo", "--epochs", "1", "--plot", str(tmp_path / "c.png")]) == 2
    _one_line_error(capsys, 'pip install "fastbp[plot]"')


@pytest.mark.parametrize("option, value", [
    ("--epochs", "0"), ("--batch-size", "-1"), ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"),
    ("--momentum", "1"), ("--test-size", "1.5"), ("--test-size", "0"), ("--tol", "-1"),
    ("--epochs", "two"),
])
def test_non_positive_numbers_are_refused_before_training(tmp_path, capsys, monkeypatch,
                                                          option, value):
    _no_training(monkeypatch)
    X, y = _blobs(n=30)
    csv = _write_csv(tmp_path / "t.csv", np.column_stack([X, y]))
    assert main(["train", csv, "--arch", ARCH3, option, value,
                 "--out", str(tmp_path / "m.npz")]) == 2
    _one_line_error(capsys, option, value)


@pytest.mark.parametrize("argv", [["train"], ["train", "x.csv"], ["nonsense"], [],
                                  ["predict", "m.npz"], ["demo", "--epochs"]])
def test_usage_errors_are_one_line_with_code_2(capsys, argv):
    assert main(argv) == 2
    _one_line_error(capsys, "--help")


@pytest.mark.parametrize("command, defaults", [
    ("demo", ["(default: 40)"]),
    ("train", ["(default: -1)", "(default: True)", "(default: auto)", "(default: sgd)",
               "(default: 0.1)", "(default: 0.9)", "(default: 32)", "(default: 50)",
               "(default: 0.2)", "(default: float64)", "(default: 0)", "(default: model.npz)"]),
    ("predict", []),
    ("bench", ["(default: 20)"]),
])
def test_help_of_every_subcommand_shows_its_defaults(capsys, command, defaults):
    from fastbp.cli import _parser

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # the help wraps lines
    for d in defaults:
        assert d in text, d
    sub = next(a for a in _parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:  # every option with a default has it in the help
        if action.default not in (None, False, "==SUPPRESS==") and action.option_strings:
            assert f"(default: {action.default})" in text, action.option_strings


def test_predict_gives_the_class_labels_of_the_training_file(tmp_path, capsys):
    X, y = _blobs(labels=(1, 2, 5))  # not 0..K-1: mapped to output units and back
    names = ["a", "b", "c", "d", "label"]
    csv = _write_csv(tmp_path / "t.csv", np.column_stack([X, y]), header=names)
    out = tmp_path / "m.npz"
    assert main(["train", csv, "--arch", ARCH3, "--epochs", "30", "--out", str(out)]) == 0
    assert fb.load(out).meta["classes"] == [1.0, 2.0, 5.0]
    capsys.readouterr()
    features = _write_csv(tmp_path / "x.csv", X, header=names[:-1])
    assert main(["predict", str(out), features]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == len(X) and set(printed) <= {"1", "2", "5"}
    assert np.mean(np.array(printed, dtype=float) == y) > 0.9
    preds = tmp_path / "p" / "preds.csv"  # the table with its target column gives the same
    assert main(["predict", str(out), csv, "--out", str(preds)]) == 0
    assert preds.read_text().split() == printed


def test_predict_regression_prints_values_and_train_reports_r2_and_rmse(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4)) * np.array([1e-2, 1.0, 1e2, 1e4])
    d = X @ np.array([50.0, 1.0, -0.02, 1e-4]) + 0.1 * rng.normal(size=200)
    csv = _write_csv(tmp_path / "r.csv", np.column_stack([X, d]))
    out = tmp_path / "m.npz"
    assert main(["train", csv, "--arch", "4-8-1:tanh:identity", "--epochs", "40", "--optimizer",
                 "adam", "--lr", "0.01", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    r2, rmse = (float(v) for v in re.search(r"test R\^2 (\S+), RMSE (\S+)", text).groups())
    net = fb.load(out)
    std = net.meta["standardize"]
    _, Xte, _, dte = fb.datasets.split(X, d, test_size=0.2, seed=0, stratify=False)
    P = net.predict((Xte - std["mean"]) / std["scale"])[:, 0]
    assert rmse == pytest.approx(np.sqrt(np.mean((P - dte) ** 2)), rel=1e-5)
    assert r2 == pytest.approx(1 - np.sum((P - dte) ** 2) / np.sum((dte - dte.mean()) ** 2),
                               abs=1e-4)
    assert r2 > 0.5
    assert main(["predict", str(out), _write_csv(tmp_path / "x.csv", Xte)]) == 0
    np.testing.assert_allclose(np.array(capsys.readouterr().out.split(), dtype=float), P,
                               rtol=1e-12)


@pytest.mark.parametrize("columns", [2, 6])
def test_predict_refuses_a_wrong_column_count(tmp_path, capsys, columns):
    X, y = _blobs(n=30)
    out = tmp_path / "m.npz"
    assert main(["train", _write_csv(tmp_path / "t.csv", np.column_stack([X, y])), "--arch",
                 ARCH3, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    data = _write_csv(tmp_path / "x.csv", np.ones((3, columns)))
    assert main(["predict", str(out), data]) == 2
    _one_line_error(capsys, f"{columns} columns", "4 features")


def test_predict_refuses_columns_named_differently_from_training(tmp_path, capsys):
    X, y = _blobs(n=30)
    out = tmp_path / "m.npz"
    csv = _write_csv(tmp_path / "t.csv", np.column_stack([X, y]), header=list("abcdy"))
    assert main(["train", csv, "--arch", ARCH3, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    data = _write_csv(tmp_path / "x.csv", X, header=list("abdc"))
    assert main(["predict", str(out), data]) == 2
    _one_line_error(capsys, "'d'", "'c'")


def test_the_console_entry_exits_2_with_one_line(tmp_path):
    exe = Path(sys.executable).with_name("fastbp")
    if not exe.exists():
        pytest.skip("the console script is not installed next to this Python")
    csv = _write_csv(tmp_path / "t.csv", np.ones((4, 5)))
    r = subprocess.run([str(exe), "train", csv, "--arch", "4-1000000000-3:tanh:softmax"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "1000000000" in r.stderr, r.stderr
