"""Weights in and out: scikit-learn MLPs and PyTorch ``nn.Sequential`` to fastbp and back.

fastbp's ``Linear.W`` has PyTorch's layout (out, in); scikit-learn's ``coefs_[i]`` is its
transpose (in, out). Every conversion copies the parameters (nothing is shared) and keeps the
forward pass exactly: the outputs of the two networks agree to rounding.

PyTorch is optional: :func:`from_torch` and :func:`to_torch` import it when called and raise an
``ImportError`` saying how to install it; :func:`state_dict` and :func:`load_state_dict` give
PyTorch's ``nn.Sequential`` layout ("0.weight", "0.bias", "2.weight", ...) as NumPy arrays
without it.

Examples
--------
>>> import numpy as np, fastbp as fb
>>> from fastbp.interop import state_dict
>>> net = fb.Sequential(fb.Linear(3, 4), fb.Tanh(), fb.Linear(4, 2), fb.Softmax(), seed=0)
>>> {k: v.shape for k, v in state_dict(net).items()}
{'0.weight': (4, 3), '0.bias': (4,), '2.weight': (2, 4), '2.bias': (2,)}
"""

import numpy as np

from .network import Sequential
from .nodes import (ELU, GELU, Dropout, Identity, LeakyReLU, Linear, ReLU, RReLU, Sigmoid,
                    Softplus, Tanh)
from .norm import BatchNorm1d, LayerNorm
from .vector import Softmax

__all__ = [
    "from_sklearn",
    "from_torch",
    "load_state_dict",
    "state_dict",
    "to_sklearn",
    "to_torch",
]

TORCH_HINT = "pip install torch==2.13.0"


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"PyTorch is needed for fastbp.interop.from_torch/to_torch and is not "
                          f"installed; install it with `{TORCH_HINT}`") from e
    return torch


def _flat_nodes(net):
    """The nodes of ``net`` with nested Sequentials spliced in."""
    out = []
    for node in net.nodes:
        out += _flat_nodes(node) if isinstance(node, Sequential) else [node]
    return out


def _float_dtype(dtype, default):
    """``dtype``, or ``default`` when None (float64 if ``default`` is not a float dtype)."""
    if dtype is None:
        dt = np.dtype(default)
        return dt if dt in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float64)
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _assemble(nodes, weights, dtype):
    """A Sequential of ``nodes`` with each Linear's (W, b) set from ``weights`` in order."""
    net = Sequential(*nodes, dtype=dtype)
    lins = [n for n in _flat_nodes(net) if isinstance(n, Linear)]
    for lin, (W, b) in zip(lins, weights):
        lin.W[...] = W
        if lin.bias:
            lin.b[...] = b
    return net


# -- scikit-learn -----------------------------------------------------------------------------
_SK_HIDDEN = {"identity": Identity, "logistic": Sigmoid, "tanh": Tanh,
              "relu": lambda: ReLU(grad_at_zero=0.0)}
_SK_OUT = {"softmax": Softmax, "logistic": Sigmoid, "identity": None}


def from_sklearn(mlp, dtype=None):
    """A fastbp network computing what a fitted scikit-learn MLP computes.

    Parameters
    ----------
    mlp : fitted ``MLPClassifier`` or ``MLPRegressor`` (scikit-learn's or fastbp's)
    dtype : float32, float64 or None
        None: the dtype of ``mlp.coefs_`` (float64 unless it was fitted on float32).

    Returns
    -------
    fastbp.Sequential
        ``Linear, act, ..., Linear, out`` with W = coefs_[i].T, b = intercepts_[i]; ``predict``
        gives ``mlp.predict_proba`` (classifiers; for binary, the positive class's column) or
        ``mlp.predict`` (regressors, as a column). ReLU gets scikit-learn's f'(0) = 0.

    Examples
    --------
    >>> import warnings, numpy as np
    >>> from sklearn.neural_network import MLPClassifier
    >>> from fastbp.interop import from_sklearn
    >>> X = np.random.default_rng(0).normal(size=(60, 4)); y = np.arange(60) % 3
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     mlp = MLPClassifier((8,), max_iter=5, random_state=0).fit(X, y)
    >>> net = from_sklearn(mlp)
    >>> bool(np.allclose(net.predict(X), mlp.predict_proba(X)))
    True
    """
    for attr in ("coefs_", "intercepts_", "out_activation_"):
        if not hasattr(mlp, attr):
            raise TypeError(f"from_sklearn needs a fitted MLPClassifier or MLPRegressor; "
                            f"{type(mlp).__name__} has no {attr}")
    act, out = str(mlp.activation).lower(), mlp.out_activation_
    if act not in _SK_HIDDEN:
        if getattr(mlp, "network_", None) is not None:  # fastbp's estimator, any activation
            net = mlp.network_
            return net.astype(net.dtype if dtype is None else dtype)
        raise ValueError(f"unknown hidden activation {mlp.activation!r}")
    if out not in _SK_OUT:
        raise ValueError(f"out_activation_ {out!r} has no fastbp node (supported: "
                         f"{', '.join(_SK_OUT)})")
    coefs, intercepts = list(mlp.coefs_), list(mlp.intercepts_)
    dt = _float_dtype(dtype, coefs[0].dtype)
    nodes = []
    for k, C in enumerate(coefs):
        nodes.append(Linear(C.shape[0], C.shape[1], init="zeros"))
        if k < len(coefs) - 1:
            nodes.append(_SK_HIDDEN[act]())
    if _SK_OUT[out] is not None:
        nodes.append(_SK_OUT[out]())
    return _assemble(nodes, [(np.asarray(C).T, b) for C, b in zip(coefs, intercepts)], dt)


_HIDDEN_NAMES = {Identity: "identity", Sigmoid: "logistic", Tanh: "tanh", ReLU: "relu"}


def _parse_mlp(net):
    """([(W, b)], hidden activation name, output kind) of a net scikit-learn can represent."""
    nodes = _flat_nodes(net)
    out = None
    if nodes and not isinstance(nodes[-1], Linear):
        out = nodes.pop()
        if type(out) not in (Softmax, Sigmoid, Identity):
            raise ValueError(f"scikit-learn's MLPs end in softmax, logistic or identity; this "
                             f"network ends in {out!r}")
    layers, acts, pending = [], [], None
    for node in nodes:
        if isinstance(node, Linear):
            if layers and pending is None:
                acts.append("identity")
            b = node.b if node.bias else np.zeros(node.n_out, node.W.dtype)
            layers.append((node.W, b))
            pending = None
        elif type(node) in _HIDDEN_NAMES and layers and pending is None:
            pending = _HIDDEN_NAMES[type(node)]
            acts.append(pending)
        else:
            raise ValueError(f"{node!r} has no scikit-learn equivalent: scikit-learn's MLPs "
                             f"are Linear layers with one of identity, logistic (Sigmoid), tanh, "
                             f"relu between them")
    if not layers or pending is not None:
        raise ValueError("scikit-learn's MLPs start and end with a Linear layer (then the "
                         "output activation)")
    if len(set(acts)) > 1:
        raise ValueError(f"scikit-learn's MLPs use one hidden activation; found {acts}")
    kind = "identity" if out is None or type(out) is Identity else \
        "softmax" if type(out) is Softmax else "logistic"
    return layers, (acts[0] if acts else "relu"), kind


def to_sklearn(net, classes=None, **params):
    """A fitted scikit-learn ``MLPClassifier`` or ``MLPRegressor`` computing what ``net`` does.

    Parameters
    ----------
    net : fastbp.Sequential
        ``Linear, act, Linear, act, ..., Linear`` then ``Softmax`` (multiclass classifier),
        ``Sigmoid`` (binary with one output, multilabel with several) or nothing / ``Identity``
        (regressor); one hidden activation among Identity, Sigmoid, Tanh, ReLU. A softmax over
        two outputs becomes scikit-learn's single logistic output (sigmoid(z1 - z0)).
    classes : array-like or None
        The class labels in output order (classifiers); default 0..n_outputs - 1.
    **params
        Constructor parameters for the scikit-learn estimator (e.g. ``solver``,
        ``warm_start=True`` to continue training from these weights).

    Returns
    -------
    sklearn.neural_network.MLPClassifier or MLPRegressor, fitted (``predict``, ``score``,
    ``predict_proba`` work; ``n_iter_`` is 0).
    """
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.preprocessing import LabelBinarizer

    if not isinstance(net, Sequential):
        raise TypeError(f"to_sklearn needs a fastbp.Sequential, got {type(net).__name__}")
    layers, act, kind = _parse_mlp(net)
    layers = [(np.array(W, dtype=np.float64), np.array(b, dtype=np.float64))
              for W, b in layers]
    n_out = layers[-1][0].shape[0]
    if kind == "identity":
        est = MLPRegressor(hidden_layer_sizes=[W.shape[0] for W, _ in layers[:-1]],
                           activation=act, **params)
    else:
        if kind == "softmax" and n_out == 2:
            (W, b) = layers[-1]
            layers[-1] = (W[1:] - W[:1], b[1:] - b[:1])
            kind, n_out = "logistic", 1
            binary = True
        else:
            binary = kind == "logistic" and n_out == 1
        default = np.arange(2 if binary else n_out)
        classes = default if classes is None else np.asarray(classes)
        if len(classes) != len(default):
            raise ValueError(f"classes has {len(classes)} labels but the network gives "
                             f"{len(default)} classes")
        est = MLPClassifier(hidden_layer_sizes=[W.shape[0] for W, _ in layers[:-1]],
                            activation=act, **params)
        lb = LabelBinarizer()
        if kind == "softmax" or binary:
            lb.fit(classes)
        else:  # multilabel: one indicator column per output
            lb.fit(np.eye(n_out, dtype=int))
        est._label_binarizer = lb
        est.classes_ = lb.classes_ if kind == "softmax" or binary else classes
    est.coefs_ = [W.T.copy() for W, _ in layers]
    est.intercepts_ = [b.copy() for _, b in layers]
    est.n_layers_ = len(layers) + 1
    est.n_outputs_ = n_out
    est.out_activation_ = kind
    est.n_features_in_ = layers[0][0].shape[1]
    est.n_iter_, est.t_ = 0, 0
    return est


# -- PyTorch ----------------------------------------------------------------------------------
def _torch_table(nn):
    """One row per activation, for both directions: (fastbp node class, torch module class,
    the node for a module, the module for a node). Linear layers carry parameters and are
    converted apart."""
    def gelu(m):
        if getattr(m, "approximate", "none") != "none":
            raise ValueError("GELU(approximate='tanh') has no fastbp node (fastbp's GELU is the "
                             "exact erf form)")
        return GELU()

    def softplus(m):
        if m.beta != 1:
            raise ValueError(f"Softplus(beta={m.beta}) has no fastbp node (beta must be 1)")
        return Softplus()

    def softmax(m):
        if m.dim not in (None, -1, 1):
            raise ValueError(f"Softmax(dim={m.dim}): fastbp's softmax is over each row (dim=-1)")
        return Softmax()

    return [(Identity, nn.Identity, lambda m: Identity(), lambda n: nn.Identity()),
            (ReLU, nn.ReLU, lambda m: ReLU(grad_at_zero=0.0), lambda n: nn.ReLU()),
            (Tanh, nn.Tanh, lambda m: Tanh(), lambda n: nn.Tanh()),
            (Sigmoid, nn.Sigmoid, lambda m: Sigmoid(), lambda n: nn.Sigmoid()),
            (LeakyReLU, nn.LeakyReLU, lambda m: LeakyReLU(m.negative_slope),
             lambda n: nn.LeakyReLU(n.slope)),
            (RReLU, nn.RReLU, lambda m: RReLU(m.lower, m.upper),
             lambda n: nn.RReLU(n.lower, n.upper)),
            (ELU, nn.ELU, lambda m: ELU(m.alpha), lambda n: nn.ELU(n.alpha)),
            (GELU, nn.GELU, gelu, lambda n: nn.GELU()),
            (Softplus, nn.Softplus, softplus, lambda n: nn.Softplus()),
            (Softmax, nn.Softmax, softmax, lambda n: nn.Softmax(dim=-1)),
            # the same rate; the masks are fastbp's own (seeded) or PyTorch's generator's
            (Dropout, nn.Dropout, lambda m: Dropout(m.p), lambda n: nn.Dropout(n.p))]


def _numpy(t):
    return None if t is None else t.detach().cpu().double().numpy()


def _norm_from_torch(nn, m):
    """(node, {attribute: values}) for a torch LayerNorm or BatchNorm1d module, or None for
    another module; raises ValueError for a form fastbp does not have."""
    if type(m) is nn.LayerNorm:
        shape = tuple(m.normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"{m!r}: fastbp's LayerNorm normalises one dimension; "
                             f"normalized_shape is {shape}")
        if m.elementwise_affine and m.bias is None:
            raise ValueError(f"{m!r}: LayerNorm(bias=False) has no fastbp node (fastbp's "
                             f"affine LayerNorm has a gain and a bias)")
        node = LayerNorm(shape[0], eps=m.eps, affine=m.elementwise_affine)
        values = {}
    elif type(m) is nn.BatchNorm1d:
        if not m.track_running_stats or m.running_mean is None:
            raise ValueError(f"{m!r}: fastbp's BatchNorm1d keeps running statistics "
                             f"(track_running_stats=True)")
        if m.momentum is None:
            raise ValueError(f"{m!r}: momentum=None (a cumulative average) has no fastbp "
                             f"form; give a momentum in [0, 1]")
        node = BatchNorm1d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine)
        values = {"running_mean": _numpy(m.running_mean), "running_var": _numpy(m.running_var)}
    else:
        return None
    if node.affine:
        values.update(g=_numpy(m.weight), b=_numpy(m.bias))
    return node, values


def _norm_to_torch(nn, node, tdt):
    """The torch module for a LayerNorm or BatchNorm1d node, with its parameters and running
    statistics copied."""
    torch = _torch()
    if type(node) is LayerNorm:
        m = nn.LayerNorm(node.n, eps=node.eps, elementwise_affine=node.affine, dtype=tdt)
    else:
        m = nn.BatchNorm1d(node.n, eps=node.eps, momentum=node.momentum, affine=node.affine,
                           dtype=tdt)
        with torch.no_grad():
            m.running_mean.copy_(torch.from_numpy(np.array(node.running_mean)))
            m.running_var.copy_(torch.from_numpy(np.array(node.running_var)))
    if node.affine:
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.array(node.g)))
            m.bias.copy_(torch.from_numpy(np.array(node.b)))
    return m


def from_torch(module, dtype=None):
    """A fastbp network from a PyTorch ``nn.Sequential`` of Linear layers and activations.

    Supported modules: ``Linear`` (with or without bias), ``Identity, ReLU, Tanh, Sigmoid,
    LeakyReLU, RReLU, ELU, GELU`` (exact), ``Softplus`` (beta 1), ``Softmax`` (last dim),
    ``LayerNorm`` (one normalised dimension, with or without elementwise affine),
    ``BatchNorm1d`` (tracking running statistics, a momentum; its running statistics are
    copied), and nested ``Sequential``. ReLU gets PyTorch's f'(0) = 0. The network's mode
    (``train``/``eval``) is fastbp's default, training, whatever the module's.

    Parameters
    ----------
    module : torch.nn.Sequential
    dtype : float32, float64 or None
        None: the dtype of the module's parameters.
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"from_torch needs a torch.nn.Sequential, got {type(module).__name__}")
    table = _torch_table(nn)
    nodes, weights, used, norms = [], [], set(), []

    def walk(seq):
        for m in seq:
            if isinstance(m, nn.Sequential):
                walk(m)
            elif type(m) is nn.Linear:
                nodes.append(Linear(m.in_features, m.out_features, bias=m.bias is not None,
                                    init="zeros"))
                b = None if m.bias is None else m.bias.detach().cpu().double().numpy()
                weights.append((m.weight.detach().cpu().double().numpy(), b))
                used.update(id(p) for p in m.parameters())
            elif (norm := _norm_from_torch(nn, m)) is not None:
                norms.append(norm)
                nodes.append(norm[0])
                used.update(id(p) for p in list(m.parameters()) + list(m.buffers()))
            else:
                for _, cls, make, _ in table:
                    if type(m) is cls:
                        nodes.append(make(m))
                        break
                else:
                    raise ValueError(f"{m!r} has no fastbp node; supported: Linear, "
                                     f"{', '.join(c.__name__ for _, c, _, _ in table)}, "
                                     f"LayerNorm, BatchNorm1d, Sequential")

    walk(module)
    # A Sequential subclass may hold parameters or buffers of its own: refuse, not drop them.
    left = [n for n, p in module.named_parameters() if id(p) not in used] + \
        [n for n, b in module.named_buffers() if id(b) not in used]
    if left:
        raise ValueError(f"from_torch would leave out {left}: only the parameters of "
                         f"nn.Linear, nn.LayerNorm and nn.BatchNorm1d layers (and the running "
                         f"statistics of nn.BatchNorm1d) have a place in a fastbp network")
    params = list(module.parameters())
    default = {torch.float32: np.float32, torch.float64: np.float64}.get(
        params[0].dtype if params else torch.float32, np.float32)
    net = _assemble(nodes, weights, _float_dtype(dtype, default))
    for node, values in norms:
        for attr, v in values.items():
            getattr(node, attr)[...] = v
    return net


def to_torch(net, dtype=None):
    """A PyTorch ``nn.Sequential`` computing what ``net`` does, in ``state_dict`` layout.

    One torch module per fastbp node (nested Sequentials spliced in), so the state dict keys
    are those of :func:`state_dict`: "0.weight", "0.bias", "2.weight", ... A ReLU becomes
    ``nn.ReLU`` whatever its ``grad_at_zero`` (the forward pass is the same).

    Parameters
    ----------
    net : fastbp.Sequential of Linear, scalar/softmax activation, LayerNorm and BatchNorm1d
        nodes (running statistics copied; the module is in PyTorch's default mode, training)
    dtype : torch dtype or None
        None: float32 or float64 from the network.
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(net, Sequential):
        raise TypeError(f"to_torch needs a fastbp.Sequential, got {type(net).__name__}")
    tdt = dtype if dtype is not None else \
        (torch.float32 if net.dtype == np.float32 else torch.float64)
    module_for = {node_cls: make for node_cls, _, _, make in _torch_table(nn)}
    mods = []
    for node in _flat_nodes(net):
        t = type(node)
        if t is Linear:
            m = nn.Linear(node.n_in, node.n_out, bias=node.bias, dtype=tdt)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.array(node.W)))
                if node.bias:
                    m.bias.copy_(torch.from_numpy(np.array(node.b)))
        elif t in module_for:
            m = module_for[t](node)
        elif t in (LayerNorm, BatchNorm1d):
            m = _norm_to_torch(nn, node, tdt)
        else:
            raise ValueError(f"{type(node).__name__} has no PyTorch module in fastbp.interop "
                             f"(to_torch builds an nn.Sequential of Linear layers and "
                             f"activations); state_dict(net) gives all its parameters by name")
        mods.append(m)
    return nn.Sequential(*mods)


# -- PyTorch's layout without PyTorch ---------------------------------------------------------
_TORCH_NAMES = {"W": "weight", "b": "bias", "g": "weight"}  # as nn.Linear, nn.LayerNorm and
# nn.BatchNorm1d name them


def _named_params(net, buffers=False):
    """(key, node, attribute) of every parameter of ``net``, in layer order.

    "k.weight", "k.bias" for the Linear at position k of the network with nested Sequentials
    spliced in (the module indices of ``to_torch``); a node's own other parameters keep their
    names ("k.alpha"); the branches of a ``Product`` at position k nest under "k.a." and "k.b."
    as submodules ``a`` and ``b`` would in PyTorch ("0.a.0.weight"). Raises rather than leave
    out a parameter of ``net.param_names``. With ``buffers``, each node's buffers (BatchNorm's
    "k.running_mean", "k.running_var") follow its parameters, as in PyTorch's state dicts."""
    out = []

    def walk(seq, prefix):
        nodes = _flat_nodes(seq) if isinstance(seq, Sequential) else [seq]
        for k, node in enumerate(nodes):
            for attr, _ in node.param_specs():
                name = _TORCH_NAMES.get(attr, attr) if isinstance(
                    node, (Linear, LayerNorm, BatchNorm1d)) else attr
                out.append((f"{prefix}{k}.{name}", node, attr))
            for attr, _ in node.buffer_specs() if buffers else ():
                out.append((f"{prefix}{k}.{attr}", node, attr))
            if not isinstance(node, Sequential):
                for c, child in zip("ab", node.children()):  # as Sequential.named_specs does
                    walk(child, f"{prefix}{k}.{c}.")

    walk(net, "")
    if buffers:
        return out
    named = {(id(node), attr) for _, node, attr in out}
    missed = [name for name, node, attr in net._views if (id(node), attr) not in named]
    if missed or len(named) != len(out):
        raise ValueError(f"the state dict layout cannot name the parameters {missed} of this "
                         f"network; use net.params with net.param_names instead")
    return out


def state_dict(net):
    """Every parameter as a dict in PyTorch's layout (NumPy copies).

    Keys "k.weight" (shape (out, in)) and "k.bias" for the Linear node at position k of the
    network with nested Sequentials spliced in, exactly the keys of ``to_torch(net)``. The two
    branches of a ``Product`` at position k nest under "k.a." and "k.b." ("0.a.0.weight"), as
    a PyTorch module holding them as submodules ``a`` and ``b`` names them; other nodes'
    parameters keep their attribute names ("k.alpha"). Nothing is left out: the dict holds
    ``net.flat_params.size`` numbers, followed, for a BatchNorm1d at position k, by its
    running statistics "k.running_mean" and "k.running_var" right after its parameters (as
    PyTorch orders them; PyTorch's "k.num_batches_tracked" has no fastbp counterpart).

    Examples
    --------
    >>> import fastbp as fb
    >>> from fastbp.interop import state_dict
    >>> glu = fb.Product(fb.Linear(3, 2), fb.Sequential(fb.Linear(3, 2), fb.Sigmoid()))
    >>> list(state_dict(fb.Sequential(glu, fb.Linear(2, 1), seed=0)))
    ['0.a.0.weight', '0.a.0.bias', '0.b.0.weight', '0.b.0.bias', '1.weight', '1.bias']
    """
    return {key: np.array(getattr(node, attr))
            for key, node, attr in _named_params(net, buffers=True)}


def load_state_dict(net, sd):
    """Copy parameters (and running statistics) from a state dict in :func:`state_dict`'s
    layout (tensors or arrays) into ``net``. A BatchNorm's "k.num_batches_tracked", which
    PyTorch's state dicts hold, is accepted and ignored.

    Checks every key and shape first; on any mismatch raises ``ValueError`` and changes nothing.
    """
    _named_params(net)  # every parameter has a name
    mine = {key: (node, attr) for key, node, attr in _named_params(net, buffers=True)}
    counters = {key.rsplit(".", 1)[0] + ".num_batches_tracked" for key, node, attr in
                _named_params(net, buffers=True) if attr == "running_mean"}
    given = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
             for k, v in dict(sd).items() if k not in counters}
    if set(given) != set(mine):
        raise ValueError(f"state dict keys differ: missing {sorted(set(mine) - set(given))}, "
                         f"unexpected {sorted(set(given) - set(mine))}")
    for k, v in given.items():
        node, attr = mine[k]
        if v.shape != getattr(node, attr).shape:
            raise ValueError(f"{k}: shape {v.shape}, the network has "
                             f"{getattr(node, attr).shape}")
        if v.dtype.kind not in "biuf" or not np.isfinite(v).all():
            raise ValueError(f"{k} contains NaN or inf or is not numeric (dtype {v.dtype})")
    for k, v in given.items():
        node, attr = mine[k]
        getattr(node, attr)[...] = v
    return net
