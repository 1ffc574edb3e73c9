"""The command line: ``fastbp demo``, ``fastbp train``, ``fastbp predict``, ``fastbp bench``.

Every argument is checked before any training starts; every error is one line on standard
error and exit code 2, never a traceback."""

import argparse
import collections
import copy
import math
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from . import datasets
from ._checks import as_dtype, check_finite
from .io import load, read_npy
from .losses import KL, L2, BinaryKL
from .network import Sequential
from .nodes import Linear, Sigmoid, Tanh, activation
from .optim import SGD, Adam
from .training import fit
from .vector import Softmax

# The largest network ``parse_arch`` builds, counting parameters, gradients and two optimizer
# slots: larger is a typo (4-1000000000-3), not a network to train from the command line.
MAX_BYTES = 4 << 30
# A table read from a file: its values and, when its first row is a header, the column names.
Table = collections.namedtuple("Table", "data names path")


def parse_arch(text, dtype="float64", seed=0, max_bytes=MAX_BYTES):
    """A network from a short string: ``"64-32-10:tanh:softmax"`` is Linear(64, 32), Tanh,
    Linear(32, 10), Softmax (widths, hidden activation, output activation). Widths whose
    parameters, gradients and optimizer state would take more than ``max_bytes`` are refused
    before anything is allocated."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"architecture {text!r} must look like 64-32-10:tanh:softmax")
    try:
        widths = [int(w) for w in parts[0].split("-")]
    except ValueError:
        raise ValueError(f"architecture widths {parts[0]!r} must be integers joined by '-'") \
            from None
    if len(widths) < 2:
        raise ValueError(f"architecture {text!r} needs at least an input and an output width")
    if min(widths) < 1:
        raise ValueError(f"architecture {text!r}: width {min(widths)} must be at least 1")
    n_params = sum(a * b + b for a, b in zip(widths, widths[1:]))
    nbytes = 4 * n_params * as_dtype(dtype).itemsize
    if nbytes > max_bytes:
        raise ValueError(f"architecture {text!r}: width {max(widths)} makes {n_params:,} "
                         f"parameters, {nbytes / 2 ** 30:,.1f} GiB of {dtype} parameters, "
                         f"gradients and optimizer state; the command line builds at most "
                         f"{max_bytes / 2 ** 30:g} GiB")
    acts = [activation(parts[1]) for _ in widths[2:]] + [activation(parts[2])]
    nodes = []
    for a, b, act in zip(widths, widths[1:], acts):
        nodes += [Linear(a, b), act]
    return Sequential(*nodes, dtype=dtype, seed=seed)


def _loss_for(net, name):
    if name == "auto":
        last = net.nodes[-1]
        name = "kl" if isinstance(last, Softmax) else "binary_kl" \
            if isinstance(last, Sigmoid) else "l2"
    return {"kl": KL, "binary_kl": BinaryKL, "l2": L2}[name]()


def _optimizer(args):
    if args.optimizer == "adam":
        return Adam(lr=args.lr)
    return SGD(lr=args.lr, momentum=args.momentum)


# -- reading tables --------------------------------------------------------------------------
def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_header(path):
    """(names, lines to skip): the first row is a header when a field in it is not a number;
    (None, 0) otherwise. Blank lines and ``#`` comments before it are skipped, as loadtxt does."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for skip, line in enumerate(f, 1):
            fields = [s.strip() for s in line.split("#")[0].split(",")]
            if any(fields):
                break
        else:
            return None, 0
    if all(_is_number(s) or not s for s in fields):  # an empty field is a damaged row
        return None, 0
    return [s.strip("\"'") or f"column {k}" for k, s in enumerate(fields)], skip


def _read_table(path, min_cols):
    """A CSV (comma-separated, an optional header row) or ``.npy`` table, checked: 2-D,
    numeric, finite, at least ``min_cols`` columns."""
    names = None
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found")
    if path.endswith(".npy"):
        data = read_npy(path)
    else:
        names, skip = _csv_header(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file: said below, in one line
            try:
                data = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
    if data.size == 0:
        raise ValueError(f"{path}: no data")
    if data.ndim != 2 or data.shape[1] < min_cols:
        raise ValueError(f"{path}: need a 2-D table of at least {min_cols} columns, got shape "
                         f"{data.shape}")
    if data.dtype.kind not in "biuf":
        raise ValueError(f"{path}: data must be numeric, got dtype {data.dtype}")
    if names is not None and len(names) != data.shape[1]:
        raise ValueError(f"{path}: the header row has {len(names)} names but the rows have "
                         f"{data.shape[1]} columns")
    check_finite(data, path)
    return Table(data, names, path)


def _column(table, k):
    return f"column {k}" if table.names is None else f"column {k} ({table.names[k]!r})"


def _names_preview(names, most=8):
    return ", ".join(repr(n) for n in names[:most]) + (", ..." if len(names) > most else "")


def _target_index(table, spec):
    """The target's column from ``--target-col``: an index (negative counts from the end) or a
    header name."""
    n = table.data.shape[1]
    try:
        k = int(spec)
    except ValueError:
        if table.names is None:
            raise ValueError(f"--target-col {spec!r} is not a column number, and {table.path} "
                             f"has no header row to name columns") from None
        if table.names.count(spec) != 1:
            what = "names two columns of" if spec in table.names else "is not a column of"
            raise ValueError(f"--target-col {spec!r} {what} {table.path}; its columns are "
                             f"{_names_preview(table.names)}") from None
        return table.names.index(spec)
    if not -n <= k < n:
        raise ValueError(f"--target-col {k} is out of range: {table.path} has {n} columns, "
                         f"0 to {n - 1} (or -{n} to -1 counting from the end)")
    return k % n


# -- targets, standardisation, metrics -------------------------------------------------------
def _targets(d, loss, n_out, name):
    """(targets for ``loss``, task, class labels or None) from the target column ``d``.

    Labels 0..K-1 are used as they are; otherwise exactly as many distinct values as classes
    are mapped to 0..K-1 in sorted order (stored, so that ``predict`` maps them back)."""
    if not isinstance(loss, (KL, BinaryKL)):
        if n_out != 1:
            raise ValueError(f"--arch ends in {n_out} outputs, but the target {name} is one "
                             f"column: {loss.__class__.__name__} regression needs 1 output "
                             f"(end in softmax to classify)")
        return d, "regression", None
    if isinstance(loss, BinaryKL) and n_out != 1:
        raise ValueError(f"--arch ends in {n_out} outputs, but BinaryKL needs 1 (a sigmoid)")
    k = n_out if isinstance(loss, KL) else 2
    integral = np.all(d == np.round(d))
    if (isinstance(loss, BinaryKL) and np.all((d >= 0) & (d <= 1))) or \
            (integral and d.min() >= 0 and d.max() < k):
        classes = list(range(k))
    else:
        values = np.unique(d)
        if len(values) != k:
            raise ValueError(f"the target {name} has {len(values)} distinct values "
                             f"({', '.join(f'{v:g}' for v in values[:8])}"
                             f"{', ...' if len(values) > 8 else ''}) but {loss.__class__.__name__} "
                             f"with {n_out} output(s) needs {k} classes, or labels 0 to {k - 1}")
        classes = values.tolist()
        d = np.searchsorted(values, d).astype(np.float64)
    return (d.astype(np.int64) if isinstance(loss, KL) else d), "classification", classes


def _standardizer(X):
    """(mean, scale) of the columns of X: the standard deviation, 1 for a constant column.
    Computed on X divided by each column's largest magnitude, so that squares cannot
    overflow."""
    top = np.abs(X).max(axis=0)
    top[top == 0] = 1
    mean = top * (X / top).mean(axis=0)
    scale = top * (X / top).std(axis=0)
    scale[(X.max(axis=0) == X.min(axis=0)) | (scale == 0)] = 1
    return mean, scale


def _standardize(X, mean, scale, path):
    with np.errstate(over="ignore"):
        Z = (X - mean) / scale
    if not np.isfinite(Z).all():
        j = int(np.argwhere(~np.isfinite(Z))[0, 1])
        raise ValueError(f"{path}: standardising feature {j} overflows (values as large as "
                         f"{np.abs(X[:, j]).max():.3g}); rescale it or pass --no-standardize")
    return Z


def _report(net, h, Xte, dte, task):
    """The line after training: losses and test accuracy, or R^2 and RMSE for regression;
    a warning on standard error when the model does no better than a constant answer."""
    line = f"{h.epochs} epochs ({h.stop_reason}): training loss {h.loss[-1]:.6g}, " \
           f"test loss {h.val_loss[-1]:.6g}"
    note = None
    if task == "regression":
        err = net.predict(Xte)[:, 0] - dte
        rmse = float(np.sqrt(np.mean(err ** 2)))
        ss_tot = float(np.sum((dte - dte.mean()) ** 2))
        r2 = 1 - float(np.sum(err ** 2)) / ss_tot if ss_tot > 0 else float("nan")
        line += f", test R^2 {r2:.4f}, RMSE {rmse:.6g}"
        if r2 <= 0:
            note = f"test R^2 {r2:.4f}: no better than predicting the mean"
    elif h.val_accuracy:
        acc = h.val_accuracy[-1]
        line += f", test accuracy {100 * acc:.2f}%"
        if np.all(dte == np.round(dte)):
            majority = np.unique(dte, return_counts=True)[1].max() / len(dte)
            if acc <= majority:
                note = f"test accuracy {100 * acc:.2f}% is no better than always answering " \
                       f"the most common class ({100 * majority:.2f}%)"
    print(line)
    if note:
        print(f"fastbp: warning: {note}", file=sys.stderr)


def _check_writable(path, flag):
    """Refuse an output path that cannot be written, before any work: its folder is created if
    missing and a temporary file is made in it."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise ValueError(f"{flag} {path!r} is a folder; give a file name")
    folder = os.path.dirname(full)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fastbp-check-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path!r}: cannot write in {folder} ({e.strerror or e})") \
            from None


# -- subcommands -----------------------------------------------------------------------------
def _train_demo(name, net, X, d, loss, opt, epochs, batch_size):
    # Both demos classify (the "is it a 2" targets are 0/1 floats): stratified, as always.
    Xtr, Xte, dtr, dte = datasets.split(X, d, test_size=0.25, seed=0, stratify=True)
    # compile first (on a copy), so the time below is training's: batches of the same sizes as
    # training's, its last shorter one too, and the whole test set, since the sizes pick the
    # kernels (8 validation rows took loop kernels that 450 never use)
    t = time.perf_counter()
    n = 2 * batch_size + len(Xtr) % batch_size
    fit(copy.deepcopy(net), Xtr[:n], dtr[:n], loss, copy.deepcopy(opt), batch_size=batch_size,
        epochs=1, validation=(Xte, dte), progress=False)
    if time.perf_counter() - t > 2:
        print(f"  (compiled fastbp's kernels in {time.perf_counter() - t:.0f} s; they are cached "
              f"for the next run)")
    t = time.perf_counter()
    h = fit(net, Xtr, dtr, loss, opt, batch_size=batch_size, epochs=epochs, tol=None,
            validation=(Xte, dte), progress=True)
    secs = time.perf_counter() - t
    print(f"{name:<28} test accuracy {100 * h.val_accuracy[-1]:6.2f}%   "
          f"{secs:6.2f} s   {h.epochs * len(Xtr) / secs:10.0f} samples/s")
    return h


def demo(args):
    """The seed's two examples on the digits that ship with the install."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (checked now, not after training)
        except ImportError:
            raise ValueError('--plot needs matplotlib, which is not installed: '
                             'pip install "fastbp[plot]"') from None
        _check_writable(args.plot, "--plot")
    X, y = datasets.digits()
    print(f"digits: {X.shape[0]} images of 8x8 pixels, 25% held out for testing")
    net2 = Sequential(Linear(64, 32), Tanh(), Linear(32, 1), Sigmoid(), seed=0)
    h2 = _train_demo("'is it a 2' (sigmoid, KL)", net2, X, (y == 2).astype(float), BinaryKL(),
                     SGD(lr=0.1, momentum=0.9), args.epochs, 32)
    net10 = Sequential(Linear(64, 64), Tanh(), Linear(64, 10), Softmax(), seed=0)
    h10 = _train_demo("10 digits (softmax, KL)", net10, X, y, KL(),
                      SGD(lr=0.1, momentum=0.9), args.epochs, 32)
    if args.plot:
        _plot(args.plot, {"is it a 2": h2, "10 digits": h10})
        print(f"loss curves written to {args.plot}")


def _plot(path, histories):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.5))
    for ax, (name, h) in zip(np.atleast_1d(axes), histories.items()):
        ax.plot(h.loss, label="training loss")
        ax.plot(h.val_loss, label="validation loss")
        ax.set(title=name, xlabel="epoch", ylabel="mean divergence", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def train(args):
    """Train on a table, report test metrics, and save the model with its standardisation."""
    net = parse_arch(args.arch, dtype=args.dtype, seed=args.seed)
    loss = _loss_for(net, args.loss)
    opt = _optimizer(args)
    _check_writable(args.out, "--out")
    table = _read_table(args.data, min_cols=2)
    col = _target_index(table, args.target_col)
    X, d = np.delete(table.data, col, axis=1), table.data[:, col].astype(np.float64)
    if X.shape[1] != net.n_in:
        raise ValueError(f"--arch takes {net.n_in} inputs but {args.data} has {X.shape[1]} "
                         f"feature columns ({X.shape[1] + 1} columns less the target)")
    d, task, classes = _targets(d, loss, net.n_out, _column(table, col))
    stratify = task == "classification" and np.all(d == np.round(d))
    Xtr, Xte, dtr, dte = datasets.split(X, d, test_size=args.test_size, seed=args.seed,
                                        stratify=stratify)
    what = f"{len(classes)} classes" if classes else "regression"
    print(f"{args.data}: {X.shape[0]} rows, {X.shape[1]} features, target "
          f"{_column(table, col)} ({what}); {len(Xtr)} rows for training, {len(Xte)} for test")
    standardize = None
    if args.standardize:
        mean, scale = _standardizer(Xtr.astype(np.float64))
        Xtr, Xte = (_standardize(A, mean, scale, args.data) for A in (Xtr, Xte))
        standardize = {"mean": mean.tolist(), "scale": scale.tolist()}
    h = fit(net, Xtr, dtr, loss, opt, batch_size=args.batch_size, epochs=args.epochs,
            tol=args.tol, seed=args.seed, validation=(Xte, dte), progress=True)
    _report(net, h, Xte, dte, task)
    names = table.names
    net.meta = {"standardize": standardize, "task": task, "classes": classes,
                "columns": None if names is None else names[:col] + names[col + 1:],
                "target": {"index": col, "name": None if names is None else names[col]},
                "n_columns": table.data.shape[1]}
    net.save(args.out)
    print(f"saved to {args.out}")


def _features(net, meta, table):
    """The model's input from ``table``: its features, or all its columns less the target at
    the position it had in training; standardised as in training."""
    data, n = table.data, net.n_in
    target = (meta.get("target") or {}).get("index")
    if data.shape[1] != n and not (target is not None and data.shape[1] == n + 1 ==
                                   meta.get("n_columns")):
        with_target = f" (or {n + 1} with the target at column {target})" \
            if target is not None else ""
        raise ValueError(f"{table.path} has {data.shape[1]} columns but the model takes {n} "
                         f"features{with_target}")
    names = table.names
    if data.shape[1] == n + 1:
        data = np.delete(data, target, axis=1)
        names = None if names is None else names[:target] + names[target + 1:]
    expected = meta.get("columns")
    if names is not None and expected is not None and names != expected:
        j = next(j for j, (a, b) in enumerate(zip(names, expected)) if a != b)
        raise ValueError(f"{table.path}: feature {j} is {names[j]!r}, but the model was "
                         f"trained with {expected[j]!r} there")
    std = meta.get("standardize")
    if std:
        mean, scale = (np.asarray(std[k], dtype=np.float64) for k in ("mean", "scale"))
        if mean.shape != (n,) or scale.shape != (n,):
            raise ValueError(f"the model's standardisation has {mean.size} means and "
                             f"{scale.size} scales for {n} features")
        data = _standardize(data.astype(np.float64), mean, scale, table.path)
    return data


def _labels(net, meta, Y):
    """Class labels (argmax, or p >= 0.5 for one sigmoid output) or the values themselves."""
    last = net.nodes[-1]
    task = meta.get("task") or ("classification" if isinstance(last, Softmax) or
                                isinstance(last, Sigmoid) and net.n_out == 1 else "regression")
    if task == "regression":
        return [",".join(str(v) for v in row) for row in Y]
    index = (Y[:, 0] >= 0.5).astype(np.int64) if Y.shape[1] == 1 else Y.argmax(axis=1)
    classes = meta.get("classes") or list(range(max(2, Y.shape[1])))
    return [_label(classes[i]) for i in index]


def _label(c):
    """A class label as written in the table: 3 for 3.0, 0.5 as it is."""
    return str(int(c)) if isinstance(c, float) and c.is_integer() else str(c)


def predict(args):
    """Apply a model saved by fastbp train to a table: one prediction per row."""
    if args.out:
        _check_writable(args.out, "--out")
    net = load(args.model)
    meta = getattr(net, "meta", None)
    meta = meta if isinstance(meta, dict) else {}  # a network saved without train's record
    table = _read_table(args.data, min_cols=1)
    lines = _labels(net, meta, net.predict(_features(net, meta, table)))
    text = "".join(line + "\n" for line in lines)
    if not args.out:
        sys.stdout.write(text)
        return
    folder = os.path.dirname(os.path.abspath(args.out))
    fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"{len(lines)} predictions written to {args.out}")


def bench(args):
    """Per-step time of fastbp alone on the digits task (the comparison with PyTorch, JAX and
    NumPy is "python bench/compare.py" in a source checkout)."""
    X, y = datasets.digits()
    net = Sequential(Linear(64, 64), Tanh(), Linear(64, 10), Softmax(), seed=0)
    fit(net, X[:64], y[:64], KL(), SGD(lr=0.1), batch_size=32, epochs=1, progress=False)
    t = time.perf_counter()
    fit(net, X, y, KL(), SGD(lr=0.1), batch_size=32, epochs=args.epochs, tol=None,
        shuffle=False, progress=False)
    secs = time.perf_counter() - t
    steps = args.epochs * -(-len(X) // 32)
    print(f"64-64-10 tanh/softmax, batch 32: {1e6 * secs / steps:.1f} us/step, "
          f"{args.epochs * len(X) / secs:.0f} samples/s")


# -- argument parsing ------------------------------------------------------------------------
class _UsageError(Exception):
    """A bad command line, reported in one line like every other error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except "None" and "False", which the help text explains."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _number(kind, low, high=math.inf, low_ok=False):
    """An argparse type: a finite ``kind`` in (low, high), or [low, high) with ``low_ok``."""
    noun = "an integer" if kind is int else "a number"
    bound = (f">= {low}" if low_ok else f"> {low}") + (f" and < {high}" if high < math.inf
                                                         else "")

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
        if not (math.isfinite(v) and (low <= v if low_ok else low < v) and v < high):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return v

    return parse


def _parser():
    positive_int, positive = _number(int, 0), _number(float, 0)
    parser = _Parser(prog="fastbp", formatter_class=_Help,
                     description="Train networks by backpropagation from the command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, helptext):
        p = sub.add_parser(name, help=helptext, description=func.__doc__.split("\n\n")[0],
                           formatter_class=_Help)
        p.set_defaults(func=func)
        return p

    p = command("demo", demo, "train the seed's two examples on the shipped digits")
    p.add_argument("--epochs", type=positive_int, default=40, help="epochs per example")
    p.add_argument("--plot", metavar="PATH", help="write the loss curves as a PNG (needs "
                   'matplotlib: pip install "fastbp[plot]")')

    p = command("train", train, "train on a CSV or .npy table and save the model")
    p.add_argument("data", help="CSV (comma-separated numbers; a first row that is not all "
                   "numbers is a header of column names) or .npy file")
    p.add_argument("--arch", required=True, default=argparse.SUPPRESS,
                   help="widths, hidden and output activation, e.g. 30-16-2:tanh:softmax "
                        "(softmax: classes, KL; sigmoid: two classes, BinaryKL; identity: "
                        "regression, L2)")
    p.add_argument("--target-col", default="-1", metavar="COL",
                   help="the target's column: an index from 0 (negative counts from the end, "
                        "-1 is the last) or a header name")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=True,
                   help="scale each feature to mean 0 and standard deviation 1 (those of the "
                        "training rows; constant columns only shifted); stored in the model "
                        "and applied by predict")
    p.add_argument("--loss", choices=["auto", "kl", "binary_kl", "l2"], default="auto",
                   help="auto: from the output activation")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="optimizer")
    p.add_argument("--lr", type=positive, default=0.1, help="learning rate")
    p.add_argument("--momentum", type=_number(float, 0, 1, low_ok=True), default=0.9,
                   help="SGD momentum")
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per step")
    p.add_argument("--epochs", type=positive_int, default=50, help="the most epochs to run")
    p.add_argument("--tol", type=positive, default=None,
                   help="stop when the training loss changes by less between epochs (default: "
                        "run every epoch)")
    p.add_argument("--test-size", type=_number(float, 0, 1), default=0.2,
                   help="fraction of the rows held out for the test metrics")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="the network's float type")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the split "
                   "and the shuffling")
    p.add_argument("--out", default="model.npz", help="where to save the model (its folder is "
                   "created if missing)")

    p = command("predict", predict, "apply a model saved by train to a CSV or .npy table")
    p.add_argument("model", help="a model file written by fastbp train")
    p.add_argument("data", help="the features as in training (the target column may be "
                   "present, at its training position, and is then ignored)")
    p.add_argument("--out", metavar="PATH", help="write the predictions (one per line: class "
                   "labels, or values for regression) here instead of standard output")

    p = command("bench", bench, "time fastbp's training step on the digits")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs to time")
    return parser


def _fail(message):
    text = " ".join(str(message).split("\n"))  # one line, whatever the message holds
    print(f"fastbp: error: {text}", file=sys.stderr)
    return 2


def main(argv=None):
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help: argparse exits after printing it
        return e.code
    except _UsageError as e:
        return _fail(e)
    try:
        args.func(args)
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        return _fail(e)  # FloatingPointError: a fit that diverged (TrainingError)
    except MemoryError as e:
        return _fail(f"out of memory ({str(e) or 'no details'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
