"""The documentation runs: every python block of README.md on its own, and the pytest
configuration that runs the docstrings' Examples as doctests with the tests."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme_blocks(language):
    """(first line number, code) of every ```language block of README.md."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) == language]


PYTHON_BLOCKS = readme_blocks("python")


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 5, PYTHON_BLOCKS


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS,
                         ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS])
def test_readme_python_block_runs_on_its_own(line, code, tmp_path, monkeypatch):
    # Each block in a fresh namespace, as a user pastes it into a new session, in an empty
    # folder (blocks write files); with the epochs and sizes the README shows.
    for optional in ("torch", "onnxruntime"):
        if re.search(rf"^import {optional}", code, re.M):
            pytest.importorskip(optional)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{README}:{line}", "exec"), {"__name__": "__readme__"})


def _commands(lines):
    return [c.strip() for line in lines if not line.lstrip().startswith("#")
            for c in line.split("&&")]


def test_readme_test_command_is_what_ci_runs():
    readme = [c for _, block in readme_blocks("bash") for c in _commands(block.splitlines())
              if "pytest" in c]
    assert readme == ["python -m pytest -q -n 2"]  # pyproject adds the doctests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert readme[0] in _commands(ci)


# Collect as `python -m pytest -q` does (from pyproject's testpaths and addopts; tests/ left out,
# for time), with the optional dependencies not installed.
_COLLECT = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("torch", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider",
                      "--ignore-glob=tests/*"]))
"""


def test_plain_pytest_collects_the_doctests_without_optional_dependencies():
    run = subprocess.run([sys.executable, "-c", _COLLECT], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    items = run.stdout.splitlines()
    for item in ("fastbp/nodes.py::fastbp.nodes.ReLU", "fastbp/training.py::fastbp.training.fit",
                 "fastbp/network.py::fastbp.network.Sequential.summary",
                 "fastbp/training.py::fastbp.training.History.plot"):
        assert item in items, run.stdout
    assert not any(item.startswith("fastbp/__main__.py") for item in items)
