"""The command line: demo, train, bench, and one-line errors."""

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
