"""Save and load networks (and training checkpoints) as ``.npz``: arrays plus the architecture
as JSON. Nothing is ever unpickled or executed from a file: node types come from a fixed table,
object arrays are refused, and every array's header is checked against its size in the archive
before anything is allocated."""

import io
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "fastbp"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a valid fastbp checkpoint (corrupt, truncated, foreign)."""


def _node_types():
    from . import nodes, products, vector

    table = {}
    for mod in (nodes, products, vector):
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, type) and hasattr(obj, "config") and not name.startswith("_"):
                table[name] = obj
    return table


def architecture(net):
    """The network's architecture as plain JSON-ready data."""
    from .network import Sequential
    from .products import Product

    def describe(node):
        if isinstance(node, Sequential):
            return {"type": "Sequential", "nodes": [describe(n) for n in node.nodes]}
        if isinstance(node, Product):
            return {"type": "Product", "a": describe(node.a), "b": describe(node.b)}
        if not hasattr(node, "config") or type(node).__name__ not in _node_types():
            raise TypeError(f"{node!r} cannot be saved: only fastbp's built-in nodes have a "
                            f"file format (user functions are code, and files hold no code)")
        return {"type": type(node).__name__, "config": node.config()}

    return {"format": FORMAT, "version": VERSION, "dtype": net.dtype.name,
            "root": describe(net)}


def build(arch, n_params=None):
    """A network from :func:`architecture`'s output (parameters freshly initialised). With
    ``n_params``, the architecture must hold exactly that many parameters, checked before any
    parameter is allocated (a small file cannot make ``load`` allocate a huge network)."""
    from .network import Sequential
    from .products import Product

    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise CheckpointError("not a fastbp architecture (no 'format': 'fastbp')")
    if arch.get("version") != VERSION:
        raise CheckpointError(f"unsupported fastbp file version {arch.get('version')!r}")
    types = _node_types()

    def make(d, depth=0):
        if depth > 64 or not isinstance(d, dict):
            raise CheckpointError("malformed architecture")
        kind = d.get("type")
        if kind == "Sequential":
            return Sequential(*[make(n, depth + 1) for n in d.get("nodes", [])], _bind=False)
        if kind == "Product":
            return Product(make(d.get("a"), depth + 1), make(d.get("b"), depth + 1))
        if kind not in types:
            raise CheckpointError(f"unknown node type {kind!r} in architecture")
        cfg = d.get("config", {})
        if not isinstance(cfg, dict):
            raise CheckpointError(f"malformed config for {kind}")
        return types[kind](**cfg)

    try:
        root = make(arch.get("root"))
        if not isinstance(root, Sequential):
            raise CheckpointError("architecture root is not a Sequential")
        if n_params is not None:
            need = sum(int(np.prod(shape, dtype=np.float64)) for *_, shape in root.named_specs())
            if need != n_params:
                raise CheckpointError(f"the architecture has {need} parameters but the file "
                                      f"holds {n_params}")
        return Sequential(*root.nodes, dtype=arch.get("dtype", "float64"))
    except CheckpointError:
        raise
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"invalid architecture: {type(e).__name__}: {e}") from e


def write_npz(path, arrays):
    """Write ``arrays`` atomically: a temporary file in the same folder, then a rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _checked_header(f, size, what, max_bytes):
    """Read an .npy header from ``f`` (of ``size`` bytes in all) and refuse object arrays and
    claimed sizes beyond the bytes after the header (so nothing huge is allocated for a small,
    lying file)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise CheckpointError(f"{what}: unknown .npy format version {version}")
    if dtype.hasobject:
        raise CheckpointError(f"{what} is an object array; refused")
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    available = size - f.tell()
    if claimed > available or claimed > max_bytes:
        raise CheckpointError(f"{what} claims {claimed} bytes but holds {available}")


def read_npy(path, max_bytes=1 << 34):
    """One array from an ``.npy`` file: no pickles, no object arrays, no header that claims
    more data than the file holds."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # The header is parsed from at most 64 KiB read here: a header that claims a
            # length of gigabytes is refused, not read into memory.
            _checked_header(io.BytesIO(f.read(1 << 16)), size, str(path), max_bytes)
        return np.load(path, allow_pickle=False)
    except CheckpointError:
        raise
    except (OSError, MemoryError):
        raise
    except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, TokenError
        raise CheckpointError(f"{path}: not a readable .npy file ({type(e).__name__}: "
                              f"{e})") from e


def read_npz(path, max_bytes=1 << 34):
    """Every array in an ``.npz`` file, refusing pickles, object arrays, and headers that claim
    more data than the archive holds."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a fastbp checkpoint ({e})") from e
    out = {}
    with zf:
        for info in zf.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise CheckpointError(f"{path}: unexpected member {name!r}")
            try:
                with zf.open(info) as f:
                    _checked_header(io.BytesIO(f.read(1 << 16)), info.file_size,
                                    f"{path}: {name}", max_bytes)
                with zf.open(info) as f:
                    out[name[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
            except CheckpointError:
                raise
            except Exception as e:  # zlib, header and size errors of a damaged member
                raise CheckpointError(f"{path}: damaged member {name!r} ({e})") from e
    return out


def save(net, path, **extra):
    """Write ``net`` (architecture and parameters) to ``path``; ``extra`` arrays ride along."""
    arrays = {"architecture": np.array(json.dumps(architecture(net))),
              "params": net.flat_params}
    arrays.update(extra)
    write_npz(path, arrays)


def load(path):
    """A network from a file written by ``net.save``.

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(3, 2), fb.Sigmoid(), seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
    >>> net.save(path)
    >>> np.array_equal(fb.load(path).flat_params, net.flat_params)
    True
    """
    arrays = read_npz(path)
    net, _ = _from_arrays(arrays, path)
    return net


def _from_arrays(arrays, path):
    if "architecture" not in arrays or "params" not in arrays:
        raise CheckpointError(f"{path}: not a fastbp checkpoint (no architecture/params)")
    arch_arr = arrays["architecture"]
    if arch_arr.dtype.kind != "U" or arch_arr.ndim != 0:
        raise CheckpointError(f"{path}: architecture is not a JSON string")
    try:
        arch = json.loads(str(arch_arr))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: architecture is not valid JSON "
                              f"({type(e).__name__})") from e
    params = arrays["params"]
    if params.ndim != 1:
        raise CheckpointError(f"{path}: params must be 1-D, got shape {params.shape}")
    net = build(arch, n_params=params.size)
    if params.shape != net.flat_params.shape or params.dtype != net.dtype:
        raise CheckpointError(f"{path}: params of shape {params.shape} and dtype "
                              f"{params.dtype} do not fit the architecture "
                              f"({net.flat_params.shape}, {net.dtype})")
    net.flat_params[...] = params
    return net, arch
