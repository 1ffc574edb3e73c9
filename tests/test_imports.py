"""fastbp's modules import only downward: the import graph is acyclic, every module sits in a
layer (docs/ARCHITECTURE.md), no module imports one of a higher layer, and no function hides an
import of fastbp (or of anything but the few heavy or optional libraries named below)."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "fastbp"

# Bottom to top; a module may import its own layer and the layers below (docs/ARCHITECTURE.md).
LAYERS = [
    ("foundations", {"fastbp.errors", "fastbp._checks", "fastbp._config", "fastbp._compile",
                     "fastbp.datasets", "fastbp.gradcheck", "fastbp.kernels", "fastbp.kernels.*"}),
    ("nodes", {"fastbp.nodes", "fastbp.vector", "fastbp.norm", "fastbp.losses", "fastbp.optim",
               "fastbp.lbfgs"}),
    ("engine", {"fastbp.engine"}),
    ("network", {"fastbp.io", "fastbp.network"}),
    ("composite nodes", {"fastbp.products"}),
    ("training", {"fastbp.callbacks", "fastbp.distributed", "fastbp.training"}),
    ("adapters", {"fastbp.sklearn", "fastbp.interop", "fastbp.cli", "fastbp.__main__",
                  "fastbp", "fastbp.onnx"}),
]

# Imported inside the functions that need them: optional (matplotlib, torch) or costly to
# import and needed by few calls (tqdm.auto: 0.11 s, for a progress bar on a terminal;
# scikit-learn's datasets and model selection for the bundled data and the converters).
DEFERRED = {"matplotlib", "torch", "tqdm", "sklearn", "onnx", "mpi4py", "dask", "distributed"}
# And scipy.linalg (0.2 s; L-BFGS's BLAS, imported by its first run; see test below).
DEFERRED_MODULES = {"scipy.linalg"}


def _modules():
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = f.with_suffix("").relative_to(ROOT.parent).parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


MODULES = _modules()


def _targets(module, node):
    """The fastbp modules an import statement in ``module`` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "fastbp"]
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else \
            module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] +
                        ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "fastbp":
        return []
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    # ``from . import io`` loads the module io; ``from . import fit`` reaches into the package.
    return subs if len(subs) == len(node.names) else subs + [base]


def _imports():
    """(module, imported fastbp module, line, inside a function) for every import."""
    rows = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef,
                                                                ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, node):
                    rows.append((module, target, node.lineno, id(node) in inner))
    return rows


def _layer(module):
    for k, (_, members) in enumerate(LAYERS):
        if module in members or any(m.endswith(".*") and module.startswith(m[:-1])
                                    for m in members):
            return k
    return None


def _cycle(edges):
    """A cycle of the graph ``edges`` (module -> set of modules) as a list, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_import_graph_is_acyclic():
    edges = {}
    for module, target, _, _ in _imports():
        if target != module:
            edges.setdefault(module, set()).add(target)
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}}) is None


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if _layer(m) is None]
    assert not missing, f"place these modules in LAYERS (and docs/ARCHITECTURE.md): {missing}"


def test_modules_import_only_downward():
    up = [f"{m}:{line} imports {t} ({LAYERS[_layer(t)][0]} is above {LAYERS[_layer(m)][0]})"
          for m, t, line, _ in _imports()
          if t != m and None not in (_layer(t), _layer(m)) and _layer(t) > _layer(m)]
    assert not up, "\n".join(up)


def test_no_function_imports_fastbp():
    hidden = [f"{m}:{line} imports {t}" for m, t, line, inner in _imports() if inner]
    assert not hidden, "imports inside functions hide the graph:\n" + "\n".join(hidden)


def test_functions_import_only_optional_or_costly_libraries():
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(f):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module]
                else:
                    continue
                found += [f"{module}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] not in DEFERRED and n not in DEFERRED_MODULES]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from . import io", ["fastbp.io"]),
    ("from . import fit", ["fastbp"]),
    ("from .kernels import engine as KE", ["fastbp.kernels.engine"]),
    ("from .nodes import Node", ["fastbp.nodes"]),
    ("import numpy as np", []),
])
def test_targets_of_an_import(source, expected):
    assert _targets("fastbp.network", ast.parse(source).body[0]) == expected


def test_import_loads_scipys_blas_without_scipy_linalg():
    """numba's np.dot needs scipy.linalg.cython_blas; ``import fastbp`` loads it from its file,
    without the 0.2 s of the scipy.linalg package, which a later import still gets whole."""
    code = ("import sys, fastbp\n"
            "assert 'scipy.linalg' not in sys.modules, 'scipy.linalg imported'\n"
            "blas = sys.modules['scipy.linalg.cython_blas']\n"
            "import scipy.linalg\n"
            "assert scipy.linalg.cython_blas is blas and scipy.linalg.solve\n"
            "import scipy.linalg.cython_blas as again\n"
            "assert again is blas and 'sgemm' in blas.__pyx_capi__\n"
            "import numpy as np\n"
            "net = fastbp.Sequential(fastbp.Linear(64, 64), seed=0)\n"
            "X = np.ones((32, 64))\n"
            "assert np.allclose(net.predict(X), X @ net[0].W.T + net[0].b)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# An object in a reference cycle, left for the interpreter's last collections at exit.
CYCLE_AT_EXIT = r'''
import gc, os
import fastbp
gc.disable()
class Cycle:
    def __del__(self, write=os.write):
        write(1, b"collected")
c = Cycle()
c.me = c
del c
'''


@pytest.mark.parametrize("setting, collected", [(None, False), ("0", False), ("1", True)])
def test_exit_skips_the_last_collections_unless_asked(setting, collected):
    """fastbp freezes the garbage collector at exit (``_config._freeze_at_exit``: 0.1-0.2 s
    off every process's exit); ``FASTBP_GC_AT_EXIT=1`` keeps Python's last collections, which
    collect the cycle and run its ``__del__``."""
    env = {k: v for k, v in os.environ.items() if k != "FASTBP_GC_AT_EXIT"}
    if setting is not None:
        env["FASTBP_GC_AT_EXIT"] = setting
    out = subprocess.run([sys.executable, "-c", CYCLE_AT_EXIT], capture_output=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (out.stdout == b"collected") is collected, out.stdout
