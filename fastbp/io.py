"""Save and load networks (and training checkpoints) as ``.npz``: arrays plus the architecture
as JSON. Nothing is ever unpickled or executed from a file: node types come from a fixed table,
object arrays are refused, only regular files are opened, only the members the format defines
are read, and every member's header is checked against the size the architecture declares
before anything is allocated."""

import errno
import io
import json
import math
import os
import secrets
import stat
import time
import zipfile

import numpy as np

from . import _checks
from .nodes import Node

FORMAT = "fastbp"
VERSION = 1

ARCH_MAX_BYTES = 1 << 26   # the architecture member (stored as UTF-32: 16 Mi characters)
META_MAX_CHARS = 1 << 20   # the most characters ``net.meta`` may take as JSON
INT_MAX_DIGITS = 40        # integers in a file's JSON (a 128-bit generator state has 39)
WIDTH_MAX = 1 << 53        # integers in a node's configuration (exact in float64)
STALE_SECONDS = 600        # a save's temporary file this old is a leftover of a killed save
_META_DEPTH = 32


class CheckpointError(ValueError):
    """A file that is not a valid fastbp checkpoint (corrupt, truncated, foreign)."""


def _node_types():
    """fastbp's node classes that a file names with their configuration."""
    return {name: cls for name, cls in Node.builtin.items() if hasattr(cls, "config")}


# ==============================================================================================
# Architecture and meta
# ==============================================================================================
def architecture(net):
    """The network's architecture as plain JSON-ready data, ``net.meta`` included."""
    Sequential, Product = Node.builtin["Sequential"], Node.builtin["Product"]

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
            "root": describe(net), "meta": check_meta(getattr(net, "meta", None) or {})}


def check_meta(meta, where="net.meta"):
    """``meta`` if it is a dict of JSON values (str keys; None, bool, int, finite float, str,
    list, dict) of at most ``META_MAX_CHARS`` characters as JSON; otherwise TypeError or
    ValueError naming the offending key."""
    def walk(v, at, depth):
        if depth > _META_DEPTH:
            raise ValueError(f"{at} is nested deeper than {_META_DEPTH} levels")
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise TypeError(f"{at} has a key {k!r} of type {type(k).__name__}; JSON "
                                    f"keys are strings")
                walk(x, f"{at}[{k!r}]", depth + 1)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{at}[{i}]", depth + 1)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"{at} is {v}; JSON holds finite numbers only")
        elif isinstance(v, int) and not isinstance(v, bool):
            if abs(v) >= 1 << 63:
                raise ValueError(f"{at} = {v} does not fit 64 bits")
        elif v is not None and not isinstance(v, (str, bool)):
            raise TypeError(f"{at} is a {type(v).__name__}; meta holds JSON types only "
                            f"(dict, list, str, int, float, bool, None)")

    if not isinstance(meta, dict):
        raise TypeError(f"{where} must be a dict, got {type(meta).__name__}")
    walk(meta, where, 0)
    size = len(json.dumps(meta))
    if size > META_MAX_CHARS:
        raise ValueError(f"{where} takes {size} characters as JSON; at most {META_MAX_CHARS}")
    return meta


def _check_config_ints(v, where):
    """Refuse integers beyond ``WIDTH_MAX`` and non-finite numbers anywhere in a node's
    configuration: no width, size or index is so large that sizing it overflows."""
    if isinstance(v, dict):
        for k, x in v.items():
            _check_config_ints(x, f"{where}.{k}")
    elif isinstance(v, list):
        for x in v:
            _check_config_ints(x, where)
    elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > WIDTH_MAX:
        raise CheckpointError(f"{where} = {v} is beyond {WIDTH_MAX}")


def _declare(arch):
    """The node tree of ``arch`` as ("leaf", node) / (kind, [subtrees]), its leaves
    constructed and nothing assembled (no widths inferred, nothing allocated), and the number
    of parameters it declares."""
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise CheckpointError("not a fastbp architecture (no 'format': 'fastbp')")
    if arch.get("version") != VERSION:
        raise CheckpointError(f"unsupported fastbp file version {arch.get('version')!r}")
    types = _node_types()

    def parse(d, depth=0):
        if depth > 64 or not isinstance(d, dict):
            raise CheckpointError("malformed architecture")
        kind = d.get("type")
        if kind == "Sequential":
            nodes = d.get("nodes")
            if not isinstance(nodes, list):
                raise CheckpointError("malformed architecture: Sequential without a node list")
            return kind, [parse(n, depth + 1) for n in nodes]
        if kind == "Product":
            return kind, [parse(d.get("a"), depth + 1), parse(d.get("b"), depth + 1)]
        if not isinstance(kind, str) or kind not in types:
            raise CheckpointError(f"unknown node type {kind!r} in architecture")
        cfg = d.get("config", {})
        if not isinstance(cfg, dict):
            raise CheckpointError(f"malformed config for {kind}")
        _check_config_ints(cfg, kind)
        return "leaf", types[kind](**cfg)

    def leaves(tree):
        kind, part = tree
        return [part] if kind == "leaf" else [n for sub in part for n in leaves(sub)]

    try:
        tree = parse(arch.get("root"))
        if tree[0] != "Sequential":
            raise CheckpointError("architecture root is not a Sequential")
        # Only leaves own parameters, sized by their configuration alone: exact integers.
        need = sum(math.prod(shape) for node in leaves(tree) for _, shape in node.param_specs())
    except CheckpointError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"invalid architecture: {type(e).__name__}: {e}") from e
    return tree, need


def _assemble(tree, arch, path=None):
    """The network of a tree from ``_declare``, its parameters freshly initialised."""
    Sequential, Product = Node.builtin["Sequential"], Node.builtin["Product"]

    def make(t):
        kind, part = t
        if kind == "leaf":
            return part
        if kind == "Product":
            return Product(*[make(s) for s in part])
        return Sequential(*[make(s) for s in part], _bind=False)

    where = f"{path}: " if path is not None else ""
    try:
        meta = check_meta(arch.get("meta", {}), "the file's meta")
        net = Sequential(*make(tree).nodes, dtype=arch.get("dtype", "float64"))
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"{where}invalid architecture: {type(e).__name__}: {e}") from e
    net.meta = json.loads(json.dumps(meta))  # a copy of its own
    return net


def buffer_specs(net):
    """(node, attribute, shape) of every buffer of ``net`` (the nodes' ``buffer_specs``: state
    that is not trained, such as BatchNorm's running statistics), depth first in layer order:
    the layout of a file's ``buffers`` member."""
    out = []

    def walk(node):
        out.extend((node, attr, tuple(shape)) for attr, shape in node.buffer_specs())
        for child in node.children():
            walk(child)

    walk(net)
    return out


def flat_buffers(net):
    """Every buffer of ``net`` raveled into one array of its dtype (empty where it has none)."""
    parts = [np.ravel(getattr(node, attr)) for node, attr, _ in buffer_specs(net)]
    return np.concatenate(parts).astype(net.dtype) if parts else np.zeros(0, net.dtype)


def set_buffers(net, flat):
    """Copy ``flat`` (laid out as :func:`flat_buffers`) into the buffers of ``net``, in place."""
    o = 0
    for node, attr, shape in buffer_specs(net):
        n = math.prod(shape)
        getattr(node, attr)[...] = np.reshape(flat[o:o + n], shape)
        o += n


def read_buffers(z, net):
    """The ``buffers`` member of an open :class:`Archive` for ``net``: exactly the size its
    buffers take, of its dtype, finite (None where the network has no buffers)."""
    need = sum(math.prod(shape) for *_, shape in buffer_specs(net))
    return z.finite_array("buffers", (need,), net.dtype) if need else None


def build(arch, n_params=None):
    """A network from :func:`architecture`'s output (parameters freshly initialised). With
    ``n_params``, the architecture must hold exactly that many parameters, checked before any
    parameter is allocated (a small file cannot make ``load`` allocate a huge network)."""
    tree, need = _declare(arch)
    if n_params is not None and need != n_params:
        raise CheckpointError(f"the architecture has {need} parameters but the file holds "
                              f"{n_params}")
    return _assemble(tree, arch)


def _arch_dtype(arch, path):
    try:
        return _checks.as_dtype(arch.get("dtype", "float64"))
    except TypeError as e:
        raise CheckpointError(f"{path}: {e}") from e


# ==============================================================================================
# Reading
# ==============================================================================================
def _kind_of(mode):
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path):
    """``path`` opened for reading in binary, if it is a regular file (after symlinks):
    FileNotFoundError if it does not exist, CheckpointError naming what it is otherwise. It is
    opened without blocking, so a FIFO is refused rather than waited on."""
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # FileNotFoundError and PermissionError name the path
    except IsADirectoryError:  # Windows cannot open folders at all
        raise CheckpointError(f"{path} is a directory, not a fastbp file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            real = os.path.realpath(path)
            shown = path if real == os.path.abspath(path) else f"{path} (-> {real})"
            raise CheckpointError(f"{shown} is {_kind_of(st.st_mode)}, not a regular file; "
                                  f"refused")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _parse_int(text):
    if len(text.lstrip("-")) > INT_MAX_DIGITS:
        raise CheckpointError(f"an integer of {len(text)} digits; at most {INT_MAX_DIGITS}")
    return int(text)


def _parse_float(text):
    v = float(text)
    if not math.isfinite(v):
        raise CheckpointError(f"the number {text[:40]} overflows")
    return v


def _refuse_constant(name):
    raise CheckpointError(f"{name} in JSON; fastbp files hold finite numbers only")


def parse_json(text, what, allow_constants=False):
    """``text`` parsed as JSON with every integer bounded to ``INT_MAX_DIGITS`` digits (before
    conversion) and, unless ``allow_constants``, no NaN, Infinity or overflowing number."""
    extra = {} if allow_constants else dict(parse_float=_parse_float,
                                            parse_constant=_refuse_constant)
    try:
        return json.loads(text, parse_int=_parse_int, **extra)
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from e
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{what} is not valid JSON ({type(e).__name__})") from e


def _header(f, size, what):
    """(shape, dtype, claimed bytes) of the .npy header at the start of ``f``, a member of
    ``size`` bytes; object arrays and claims beyond the bytes after the header are refused."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise CheckpointError(f"{what}: unknown .npy format version {version}")
    if dtype.hasobject:
        raise CheckpointError(f"{what} is an object array; refused")
    claimed = math.prod(shape) * dtype.itemsize
    available = size - f.tell()
    if claimed > available:
        raise CheckpointError(f"{what} claims {claimed} bytes but holds {available}")
    return shape, dtype, claimed


class Archive:
    """An ``.npz`` opened for reading one member at a time; members nobody asks for are never
    read. Use as a context manager.

    Examples
    --------
    >>> import os, tempfile, fastbp as fb
    >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
    >>> fb.Sequential(fb.Linear(3, 2), seed=0).save(path)
    >>> with fb.io.Archive(path) as z:
    ...     z.array("params", max_bytes=64, shape=(8,)).shape
    (8,)
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        f = open_regular(self.path)
        try:
            self._zip = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            f.close()
            raise CheckpointError(f"{self.path}: not a fastbp checkpoint ({e})") from e
        self._file = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._zip.close()
        self._file.close()

    def __contains__(self, name):
        return name in self.names()

    def names(self):
        """Names of the archive's ``.npy`` members, without the suffix."""
        return {n[:-4] for n in self._zip.namelist() if n.endswith(".npy")}

    def array(self, name, max_bytes, shape=None, dtype=None):
        """Member ``name``: its header must claim at most ``max_bytes`` (and exactly ``shape``
        and ``dtype`` when given) and no more than the member holds, all checked before the
        array is allocated."""
        what = f"{self.path}: {name}"
        try:
            info = self._zip.getinfo(name + ".npy")
        except KeyError:
            raise CheckpointError(f"{self.path}: not a fastbp checkpoint (no {name!r})") from None
        try:
            with self._zip.open(info) as f:
                # The header is parsed from at most 64 KiB read here: a header that claims a
                # length of gigabytes is refused, not read into memory.
                got_shape, got_dtype, claimed = _header(io.BytesIO(f.read(1 << 16)),
                                                        info.file_size, what)
            if shape is not None and tuple(got_shape) != tuple(shape) or \
                    dtype is not None and got_dtype != np.dtype(dtype):
                raise CheckpointError(f"{what} has shape {got_shape} and dtype {got_dtype}; "
                                      f"the architecture declares {tuple(shape or got_shape)} "
                                      f"and {np.dtype(dtype or got_dtype)}")
            if claimed > max_bytes:
                raise CheckpointError(f"{what} claims {claimed} bytes; at most {max_bytes}")
            with self._zip.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except CheckpointError:
            raise
        except Exception as e:  # zlib, header and size errors of a damaged member
            raise CheckpointError(f"{self.path}: damaged member {name!r} ({e})") from e

    def json(self, name, max_bytes, allow_constants=False):
        """Member ``name``, a JSON text stored as a 0-d string array, parsed (see
        :func:`parse_json`)."""
        a = self.array(name, max_bytes)
        if a.dtype.kind != "U" or a.ndim != 0:
            raise CheckpointError(f"{self.path}: {name} is not a JSON string (dtype "
                                  f"{a.dtype}, shape {a.shape})")
        return parse_json(str(a), f"{self.path}: {name}", allow_constants)

    def finite_array(self, name, shape, dtype):
        """Member ``name`` of exactly ``shape`` and ``dtype``, with no NaN or inf."""
        dtype = np.dtype(dtype)
        a = self.array(name, math.prod(shape) * dtype.itemsize, shape, dtype)
        _checks.check_finite(a, f"{self.path}: {name}", error=CheckpointError)
        return a


def read_npy(path, max_bytes=1 << 34):
    """One array from an ``.npy`` file: a regular file, no pickles, no object arrays, no header
    that claims more data than the file holds."""
    with open_regular(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            _, _, claimed = _header(io.BytesIO(f.read(1 << 16)), size, str(path))
            if claimed > max_bytes:
                raise CheckpointError(f"{path} claims {claimed} bytes; at most {max_bytes}")
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        except (CheckpointError, OSError, MemoryError):
            raise
        except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, TokenError
            raise CheckpointError(f"{path}: not a readable .npy file ({type(e).__name__}: "
                                  f"{e})") from e


def read_network(z):
    """(network, architecture) from an open :class:`Archive`: the architecture first, then
    ``params`` bounded by the size it declares, then the network allocated."""
    arch = z.json("architecture", ARCH_MAX_BYTES)
    try:
        tree, need = _declare(arch)
    except CheckpointError as e:
        raise CheckpointError(f"{z.path}: {e}") from e
    params = z.finite_array("params", (need,), _arch_dtype(arch, z.path))
    net = _assemble(tree, arch, z.path)  # buffers are sized by the configuration: small
    buffers = read_buffers(z, net)
    net.flat_params[...] = params
    if buffers is not None:
        set_buffers(net, buffers)
    return net, arch


def load(path):
    """A network from a file written by ``net.save`` (with ``net.meta`` as saved).

    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError) for anything
    else that is not a valid fastbp file: not a regular file, damaged, foreign or hostile.

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(3, 2), fb.Sigmoid(), seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
    >>> net.save(path)
    >>> np.array_equal(fb.load(path).flat_params, net.flat_params)
    True
    """
    with Archive(path) as z:
        return read_network(z)[0]


# ==============================================================================================
# Writing
# ==============================================================================================
def _temp_prefix(base):
    return f".fastbp-{base[:100]}-"


def _is_temp_of(name, base):
    """Whether ``name`` is a temporary file of a save to ``base`` (or of fastbp 0.1's saves,
    named ``.fastbp-XXXXXXXX.tmp`` by ``tempfile``)."""
    if not (name.startswith(".fastbp-") and name.endswith(".tmp")):
        return False
    prefix = _temp_prefix(base)
    tag = name[len(prefix):-4] if name.startswith(prefix) else None
    if tag is not None and len(tag) == 8 and all(c in "0123456789abcdef" for c in tag):
        return True
    old = name[len(".fastbp-"):-4]
    return len(old) == 8 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in old)


def _remove_stale_temps(folder, base):
    """Remove what killed saves to ``base`` left behind (older than ``STALE_SECONDS``: a save
    in progress writes to its file and keeps it fresh)."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if _is_temp_of(entry.name, base) and entry.is_file(follow_symlinks=False) and \
                    now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS:
                os.unlink(entry.path)
        except OSError:
            pass  # another process removed or renamed it first


def _named(e, path, doing):
    """``e`` again, naming ``path`` (the file asked for) instead of a temporary file."""
    if e.errno is None:
        return type(e)(f"{doing} {path}: {e}")
    return OSError(e.errno, f"{doing} {path}: {e.strerror}", path)  # the same subclass


def write_npz(path, arrays):
    """Write ``arrays`` atomically: a temporary file ``.fastbp-<name>-<tag>.tmp`` in the same
    folder, created as any file is (its mode honours the umask), then a rename. The temporary
    file is removed on any exception, KeyboardInterrupt included; those of killed saves to the
    same name are removed once stale. OSErrors name ``path``."""
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"cannot save to {path}: it is a directory", path)
    _remove_stale_temps(folder, base)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    tmp = None
    try:
        while tmp is None:
            name = os.path.join(folder, f"{_temp_prefix(base)}{secrets.token_hex(4)}.tmp")
            try:
                fd = os.open(name, flags, 0o666)
                tmp = name
            except FileExistsError:
                continue
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise _named(e, path, "cannot save to") from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def save(net, path, **extra):
    """Write ``net`` (architecture, ``net.meta``, parameters and, where its nodes have them,
    buffers such as running statistics) to ``path``; ``extra`` arrays ride along. Parameters
    or buffers holding NaN or inf are refused (ValueError): ``load`` would refuse the file."""
    arch = json.dumps(architecture(net), allow_nan=False)
    _checks.check_finite(net.flat_params, "the network's parameters")
    arrays = {"architecture": np.array(arch), "params": net.flat_params}
    if buffer_specs(net):
        arrays["buffers"] = flat_buffers(net)
        _checks.check_finite(arrays["buffers"], "the network's buffers (running statistics)")
    arrays.update(extra)
    write_npz(path, arrays)
