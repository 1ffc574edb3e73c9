"""The command line: ``fastbp demo``, ``fastbp train``, ``fastbp bench``."""

import argparse
import copy
import sys
import time
import warnings

import numpy as np


def parse_arch(text, dtype="float64", seed=0):
    """A network from a short string: ``"64-32-10:tanh:softmax"`` is Linear(64, 32), Tanh,
    Linear(32, 10), Softmax (widths, hidden activation, output activation)."""
    from . import Linear, Sequential
    from .nodes import activation

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
    nodes = []
    for k, (a, b) in enumerate(zip(widths, widths[1:])):
        nodes.append(Linear(a, b))
        nodes.append(activation(parts[1] if k < len(widths) - 2 else parts[2]))
    return Sequential(*nodes, dtype=dtype, seed=seed)


def _loss_for(net, name):
    from . import KL, L2, BinaryKL, Sigmoid, Softmax

    if name == "auto":
        last = net.nodes[-1]
        name = "kl" if isinstance(last, Softmax) else "binary_kl" \
            if isinstance(last, Sigmoid) else "l2"
    return {"kl": KL, "binary_kl": BinaryKL, "l2": L2}[name]()


def _optimizer(args):
    from . import SGD, Adam

    if args.optimizer == "adam":
        return Adam(lr=args.lr)
    return SGD(lr=args.lr, momentum=args.momentum)


def _read_data(path, target_col):
    if path.endswith(".npy"):
        from .io import read_npy

        data = read_npy(path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file: said below, in one line
            data = np.loadtxt(path, delimiter=",", ndmin=2)
    if data.size == 0:
        raise ValueError(f"{path}: no data")
    if data.ndim != 2 or data.shape[1] < 2:
        raise ValueError(f"{path}: need a 2-D table with features and a target column, "
                         f"got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise ValueError(f"{path}: data must be numeric, got dtype {data.dtype}")
    from ._checks import check_finite

    check_finite(data, path)
    col = target_col % data.shape[1]
    X = np.delete(data, col, axis=1)
    return X, data[:, col]


def _train_demo(name, net, X, d, loss, opt, epochs, batch_size):
    from . import datasets, fit

    Xtr, Xte, dtr, dte = datasets.split(X, d, test_size=0.25, seed=0)
    t = time.perf_counter()  # compile first (on a copy), so the time below is training's
    fit(copy.deepcopy(net), Xtr[:64], dtr[:64], loss, copy.deepcopy(opt), batch_size=32,
        epochs=1, validation=(Xte[:8], dte[:8]), progress=False)
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
    from . import SGD, BinaryKL, KL, Linear, Sequential, Sigmoid, Softmax, Tanh, datasets

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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'fastbp[plot]'") from None
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.5))
    for ax, (name, h) in zip(np.atleast_1d(axes), histories.items()):
        ax.plot(h.loss, label="training loss")
        ax.plot(h.val_loss, label="validation loss")
        ax.set(title=name, xlabel="epoch", ylabel="mean divergence", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def train(args):
    from . import datasets, fit

    X, d = _read_data(args.data, args.target_col)
    net = parse_arch(args.arch, dtype=args.dtype, seed=args.seed)
    loss = _loss_for(net, args.loss)
    if loss.__class__.__name__ == "KL":
        if not np.all(d == np.round(d)):
            raise ValueError("the target column must hold integer class labels for KL")
        d = d.astype(np.int64)
    Xtr, Xte, dtr, dte = datasets.split(X, d, test_size=args.test_size, seed=args.seed,
                                        stratify=loss.__class__.__name__ == "KL")
    h = fit(net, Xtr, dtr, loss, _optimizer(args), batch_size=args.batch_size,
            epochs=args.epochs, tol=args.tol, seed=args.seed, validation=(Xte, dte),
            progress=True)
    extra = f", test accuracy {100 * h.val_accuracy[-1]:.2f}%" if h.val_accuracy else ""
    print(f"{h.epochs} epochs ({h.stop_reason}): training loss {h.loss[-1]:.6g}, "
          f"test loss {h.val_loss[-1]:.6g}{extra}")
    net.save(args.out)
    print(f"saved to {args.out}")


def bench(args):
    """Per-step time of fastbp alone on the digits task (the comparison with PyTorch, JAX and
    NumPy is ``python bench/compare.py`` in a source checkout)."""
    from . import SGD, KL, Linear, Sequential, Softmax, Tanh, datasets, fit

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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train the seed's two examples on the shipped digits")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--plot", metavar="PATH", help="write the loss curves as a PNG")
    p.set_defaults(func=demo)
    p = sub.add_parser("train", help="train on a CSV or .npy table and save a checkpoint")
    p.add_argument("data", help="CSV (comma-separated, numeric) or .npy file")
    p.add_argument("--arch", required=True, help="e.g. 64-32-10:tanh:softmax")
    p.add_argument("--target-col", type=int, default=-1)
    p.add_argument("--loss", choices=["auto", "kl", "binary_kl", "l2"], default="auto")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--test-size", type=float, default=0.2)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="model.npz")
    p.set_defaults(func=train)
    p = sub.add_parser("bench", help="time fastbp's training step on the digits")
    p.add_argument("--epochs", type=int, default=20)
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, OSError, FloatingPointError) as e:  # FloatingPointError:
        print(f"fastbp: error: {e}", file=sys.stderr)  # a fit that diverged (TrainingError)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
