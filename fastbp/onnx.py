"""Export to ONNX: a :class:`fastbp.Sequential` or a fitted estimator as an ``onnx.ModelProto``.

The exported graph computes what ``predict`` computes (evaluation mode: RReLU with its mean
slope), in the network's dtype. ONNX and onnxruntime are optional: install them with
``pip install "fastbp[onnx]"``.

Each node kind has one emitter in :data:`EMITTERS`, a table from node class to a function
``emit(node, g, x, where) -> y`` that appends the node's ONNX operators to the graph builder
``g`` (a :class:`GraphBuilder`), reading the tensor named ``x`` and returning the name of its
output; ``where`` is the node's position as in ``Sequential.param_names`` ("2", "1.a.0"). A new
node kind adds one entry. Lookup is by exact class: a subclass (which may compute otherwise)
needs an entry of its own.

Examples
--------
>>> import numpy as np, fastbp as fb
>>> from fastbp.onnx import to_onnx
>>> net = fb.Sequential(fb.Linear(4, 8), fb.Tanh(), fb.Linear(8, 3), fb.Softmax(), seed=0)
>>> model = to_onnx(net)
>>> [n.op_type for n in model.graph.node]
['Gemm', 'Tanh', 'Gemm', 'Softmax']
"""

import functools
from numbers import Integral

import numpy as np
import scipy.special
from numpy.polynomial import chebyshev
from sklearn.utils.validation import check_is_fitted

from .network import Sequential
from .nodes import (ELU, GELU, Dropout, Exp, Identity, LeakyReLU, Linear, ReLU, RReLU, Sigmoid,
                    Softplus, Tanh)
from .norm import BatchNorm1d, LayerNorm
from .products import MaxOver, MaxPool1d, PairProduct, PowerProduct, Product
from .sklearn import MLPClassifier, MLPRegressor
from .vector import Softmax

__all__ = ["DEFAULT_OPSET", "EMITTERS", "GraphBuilder", "to_onnx"]

ONNX_HINT = 'pip install "fastbp[onnx]"'
#: the default ONNX opset: onnxruntime >= 1.13 runs it
DEFAULT_OPSET = 17
#: the lowest opset the emitters support (Unsqueeze's and Slice's axes as inputs)
MIN_OPSET = 13
_SQRT_HALF = 0.7071067811865476


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"the onnx package is needed for fastbp.onnx and is not installed; "
                          f"install it with `{ONNX_HINT}`") from e
    return onnx


class GraphBuilder:
    """The ONNX graph being built: its operators, constants (initializers) and the width of
    each tensor, in one float dtype. Emitters (see :data:`EMITTERS`) call its methods.

    Attributes
    ----------
    dtype : numpy dtype
        float32 or float64, the network's; constants from :meth:`const` have it.
    opset : int
        The target opset of the default domain.
    widths : dict
        Tensor name -> its number of columns (None: not known).
    """

    def __init__(self, onnx, dtype, opset):
        self.onnx, self.dtype, self.opset = onnx, np.dtype(dtype), opset
        self.nodes, self.inits, self.widths, self.domains = [], [], {}, {"": opset}
        self._taken = set()

    def fresh(self, base):
        """A tensor or node name not used yet, made from ``base``."""
        name, k = base, 1
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name

    def const(self, value, name, dtype=None):
        """An initializer holding ``value`` (in the graph's dtype unless ``dtype``); its name."""
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.fresh(name)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, inputs, where, n_out=1, domain="", **attrs):
        """Append operator ``op_type`` reading ``inputs``; the name of its output (a list of
        names for ``n_out > 1``). ``where`` (the node's position) prefixes the names."""
        prefix = f"{where}/{op_type}" if where else op_type
        outs = [self.fresh(prefix if n_out == 1 else f"{prefix}:{k}") for k in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs,
                                                     name=self.fresh(prefix), domain=domain,
                                                     **attrs))
        return outs[0] if n_out == 1 else outs

    def reduce(self, op_type, x, axes, where, keepdims=0):
        """A reduction (ReduceMax, ReduceProd, ...) over ``axes``: an attribute before opset
        18, an input from 18 on."""
        if self.opset >= 18:
            return self.op(op_type, [x, self.const(axes, f"{where}/axes", np.int64)], where,
                           keepdims=keepdims)
        return self.op(op_type, [x], where, axes=list(axes), keepdims=keepdims)

    def where_negative(self, z, negative, where):
        """y = ``negative`` where z < 0, else z (NaN stays NaN, as fastbp's ``not z < 0``)."""
        return self.op("Where", [self.op("Less", [z, self.const(0.0, f"{where}/zero")], where),
                                 negative, z], where)

    def output(self, y, name):
        """Give tensor y the graph output's ``name`` (reserved before any operator): rename
        the output of the operator just appended, if it made y, else append an Identity."""
        last = self.nodes[-1] if self.nodes else None
        if last is not None and list(last.output) == [y]:
            last.output[0] = name
            return name
        self.nodes.append(self.onnx.helper.make_node("Identity", [y], [name],
                                                     name=self.fresh(f"{name}/Identity")))
        return name

    def emit(self, node, x, where):
        """Append ``node`` reading tensor x; the name of its output. Raises ValueError naming
        the node and its position where :data:`EMITTERS` has no entry for its class."""
        emitter = EMITTERS.get(type(node))
        if emitter is None:
            kinds = ", ".join(sorted({c.__name__ for c in EMITTERS}))
            raise ValueError(f"node {where or '(the model)'} ({node!r}) has no ONNX export: "
                             f"fastbp.onnx exports {kinds}; a node of another class needs an "
                             f"entry in fastbp.onnx.EMITTERS")
        width = node.infer(self.widths.get(x))
        y = emitter(node, self, x, where)
        self.widths[y] = width
        return y


# -- the emitters: node class -> emit(node, g, x, where) -> output name ------------------------
def _sequential(net, g, x, where):
    for k, node in enumerate(net.nodes):
        x = g.emit(node, x, f"{where}.{k}" if where else str(k))
    return x


def _linear(node, g, x, where):
    # z = y W^T + b: Gemm with transB keeps W in fastbp's (and PyTorch's) (out, in) layout.
    inputs = [x, g.const(node.W, f"{where}.W")]
    if node.bias:
        inputs.append(g.const(node.b, f"{where}.b"))
    return g.op("Gemm", inputs, where, transB=1)


def _unary(op_type):
    def emit(node, g, x, where):
        return g.op(op_type, [x], where)
    emit.__name__ = f"_{op_type.lower()}"
    return emit


def _leaky(slope, g, x, where):
    # onnxruntime lacks float64 LeakyRelu at some opsets (and its alpha is a float32 attribute):
    # float64 multiplies by the slope as a double constant.
    if g.dtype == np.float32:
        return g.op("LeakyRelu", [x], where, alpha=slope)
    return g.where_negative(x, g.op("Mul", [x, g.const(slope, f"{where}/slope")], where), where)


def _leaky_relu(node, g, x, where):
    return _leaky(node.slope, g, x, where)


def _rrelu(node, g, x, where):
    return _leaky(node._p(), g, x, where)  # evaluation: the mean slope (lower + upper) / 2


def _expm1(g, z, where):
    """exp(z) - 1 accurate for small |z| (Kahan's: (u - 1) z / log u, u = exp z)."""
    u = g.op("Exp", [z], where)
    one = g.const(1.0, f"{where}/one")
    um1 = g.op("Sub", [u, one], where)
    ratio = g.op("Div", [g.op("Mul", [um1, z], where), g.op("Log", [u], where)], where)
    ratio = g.op("Where", [g.op("Equal", [um1, g.const(-1.0, f"{where}/minus_one")], where),
                           um1, ratio], where)
    return g.op("Where", [g.op("Equal", [u, one], where), z, ratio], where)


def _log1p(g, u, where):
    """log(1 + u) accurate for small u (Goldberg's: log(w) u / (w - 1), w = 1 + u)."""
    one = g.const(1.0, f"{where}/one")
    w = g.op("Add", [u, one], where)
    ratio = g.op("Div", [g.op("Mul", [g.op("Log", [w], where), u], where),
                         g.op("Sub", [w, one], where)], where)
    return g.op("Where", [g.op("Equal", [w, one], where), u, ratio], where)


def _elu(node, g, x, where):
    # onnxruntime has Elu for float32 only: float64 builds it from Exp and Log.
    if g.dtype == np.float32:
        return g.op("Elu", [x], where, alpha=node.alpha)
    neg = g.op("Mul", [_expm1(g, x, where), g.const(node.alpha, f"{where}/alpha")], where)
    return g.where_negative(x, neg, where)


def _softplus(node, g, x, where):
    # onnxruntime has Softplus for float32 only: float64 builds the stable form
    # max(z, 0) + log1p(exp(-|z|)), fastbp's.
    if g.dtype == np.float32:
        return g.op("Softplus", [x], where)
    e = g.op("Exp", [g.op("Neg", [g.op("Abs", [x], where)], where)], where)
    return g.op("Add", [g.op("Relu", [x], where), _log1p(g, e, where)], where)


@functools.lru_cache(maxsize=None)
def _erfc_series():
    """Chebyshev coefficients of P with erfc(a) = t exp(-a^2 + P(u)) for a >= 0, t = 2 / (2 + a),
    u = 2 t - 1 (Numerical Recipes' form), interpolated from scipy's erfcx: degree 28 gives
    erf = 1 - erfc within 2e-15."""
    def p(u):
        t = (u + 1) / 2
        return np.log(scipy.special.erfcx(2 / t - 2) / t)
    return chebyshev.chebinterpolate(p, 28)


def _erf(g, s, where):
    """erf(s) from Exp and arithmetic (onnxruntime has Erf in float32 only): sign(s) (1 - erfc
    |s|), erfc by :func:`_erfc_series` with Clenshaw's recurrence."""
    c = _erfc_series()
    a = g.op("Abs", [s], where)
    two = g.const(2.0, f"{where}/two")
    t = g.op("Div", [two, g.op("Add", [two, a], where)], where)
    u = g.op("Div", [g.op("Sub", [two, a], where), g.op("Add", [two, a], where)], where)
    u2 = g.op("Mul", [u, two], where)
    b1, b2 = g.const(c[-1], f"{where}/c"), None
    for ck in c[-2:0:-1]:  # b_k = 2 u b_{k+1} - b_{k+2} + c_k
        b0 = g.op("Add", [g.op("Mul", [u2, b1], where), g.const(ck, f"{where}/c")], where)
        b1, b2 = (g.op("Sub", [b0, b2], where) if b2 is not None else b0), b1
    series = g.op("Add", [g.op("Sub", [g.op("Mul", [u, b1], where), b2], where),
                          g.const(c[0], f"{where}/c")], where)
    exponent = g.op("Sub", [series, g.op("Mul", [a, a], where)], where)
    erfc = g.op("Mul", [t, g.op("Exp", [exponent], where)], where)
    one = g.const(1.0, f"{where}/one")
    positive = g.op("Sub", [one, erfc], where)
    negative = g.op("Less", [s, g.const(0.0, f"{where}/zero")], where)
    return g.op("Where", [negative, g.op("Sub", [erfc, one], where), positive], where)


def _gelu(node, g, x, where):
    """0.5 z (1 + erf(z / sqrt 2)), the exact form: Gelu from opset 20, else from Erf.
    onnxruntime has Erf and Gelu for float32 only: float64 builds erf from Exp (``_erf``)."""
    if g.dtype == np.float32 and g.opset >= 20:
        return g.op("Gelu", [x], where)
    s = g.op("Mul", [x, g.const(_SQRT_HALF, f"{where}/sqrt_half")], where)
    erf = g.op("Erf", [s], where) if g.dtype == np.float32 else _erf(g, s, where)
    half_z = g.op("Mul", [x, g.const(0.5, f"{where}/half")], where)
    return g.op("Mul", [half_z, g.op("Add", [erf, g.const(1.0, f"{where}/one")], where)], where)


def _softmax(node, g, x, where):
    return g.op("Softmax", [x], where, axis=1)


def _product(node, g, x, where):
    a = g.emit(node.a, x, f"{where}.a")
    b = g.emit(node.b, x, f"{where}.b")
    return g.op("Mul", [a, b], where)


def _pair_product(node, g, x, where):
    # y_i = z_{2i} z_{2i+1}: the even and the odd columns, multiplied
    big = np.iinfo(np.int64).max
    axes, step = g.const([1], f"{where}/axes", np.int64), g.const([2], f"{where}/step", np.int64)
    end = g.const([big], f"{where}/end", np.int64)
    even = g.op("Slice", [x, g.const([0], f"{where}/even", np.int64), end, axes, step], where)
    odd = g.op("Slice", [x, g.const([1], f"{where}/odd", np.int64), end, axes, step], where)
    return g.op("Mul", [even, odd], where)


def _power_product(node, g, x, where):
    """y[t, i] = prod_l z[t, l] ** alpha[l, i] as fastbp computes it: Pow of z (N, D, 1) by
    alpha (D, M), then the product over l. Pow follows the C library's pow, as fastbp's
    kernel does, so negative inputs with integer exponents and zeros keep fastbp's values
    (exp(log z @ alpha) would not)."""
    z3 = g.op("Unsqueeze", [x, g.const([2], f"{where}/axis2", np.int64)], where)
    powers = g.op("Pow", [z3, g.const(node.alpha, f"{where}.alpha")], where)
    return g.reduce("ReduceProd", powers, [1], where)


def _max_over(node, g, x, where):
    """y_j = max of z over subsets[j]: one Gather of an (M, k) index table, k the largest
    subset, shorter subsets padded with their own first index (which leaves their max as it
    is), then ReduceMax over the last axis."""
    k = max(s.size for s in node.subsets)
    table = np.array([np.concatenate([s, np.full(k - s.size, s[0])]) for s in node.subsets],
                     np.int64)
    picked = g.op("Gather", [x, g.const(table, f"{where}.subsets", np.int64)], where, axis=1)
    return g.reduce("ReduceMax", picked, [2], where)


def _max_pool(node, g, x, where):
    # its windows depend on the input width, which the graph then fixes
    if g.widths.get(x) is None:
        raise ValueError(f"node {where} ({node!r}) needs a known input width to export: put a "
                         f"Linear before it")
    return _max_over(node, g, x, where)


def _layer_norm(node, g, x, where):
    # as the kernel: d = x - mean, y = d / sqrt(mean(d^2) + eps) (then gain and bias)
    d = g.op("Sub", [x, g.reduce("ReduceMean", x, [1], where, keepdims=1)], where)
    var = g.reduce("ReduceMean", g.op("Mul", [d, d], where), [1], where, keepdims=1)
    y = g.op("Div", [d, g.op("Sqrt", [g.op("Add", [var, g.const(node.eps, f"{where}.eps")],
                                           where)], where)], where)
    return _affine(node, g, y, where)


def _batch_norm(node, g, x, where):
    # evaluation: the running statistics
    d = g.op("Sub", [x, g.const(node.running_mean, f"{where}.running_mean")], where)
    y = g.op("Div", [d, g.const(np.sqrt(node.running_var.astype(np.float64) + node.eps),
                                f"{where}.running_std")], where)
    return _affine(node, g, y, where)


def _affine(node, g, y, where):
    if not node.affine:
        return y
    y = g.op("Mul", [y, g.const(node.g, f"{where}.g")], where)
    return g.op("Add", [y, g.const(node.b, f"{where}.b")], where)


#: Node class -> emitter ``emit(node, g, x, where) -> output name`` (see the module docstring).
#: Lookup is by exact class; a new node kind adds one entry here.
EMITTERS = {
    Sequential: _sequential,
    Linear: _linear,
    Identity: _unary("Identity"),
    Sigmoid: _unary("Sigmoid"),
    Tanh: _unary("Tanh"),
    ReLU: _unary("Relu"),  # ReLU's grad_at_zero changes only the backward pass
    LeakyReLU: _leaky_relu,
    RReLU: _rrelu,
    ELU: _elu,
    Softplus: _softplus,
    GELU: _gelu,
    Exp: _unary("Exp"),
    Dropout: _unary("Identity"),  # evaluation: the identity
    LayerNorm: _layer_norm,
    BatchNorm1d: _batch_norm,
    Softmax: _softmax,
    Product: _product,
    PairProduct: _pair_product,
    PowerProduct: _power_product,
    MaxOver: _max_over,
    MaxPool1d: _max_pool,
}


# -- models: inputs, outputs, the ModelProto ---------------------------------------------------
def _opset(opset, onnx):
    top = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, top)
    if isinstance(opset, bool) or not isinstance(opset, Integral) or \
            not MIN_OPSET <= opset <= top:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {top} (the installed "
                         f"onnx's newest), got {opset!r}")
    return int(opset)


def _tensor(onnx, name, dtype, shape):
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return onnx.helper.make_tensor_value_info(name, elem, shape)


def _zipmap_type(onnx, labels):
    # seq(map(int64 or string, float)): what ZipMap gives and skl2onnx declares
    key = onnx.TensorProto.STRING if labels.dtype == object else onnx.TensorProto.INT64
    value = onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)
    return onnx.helper.make_sequence_type_proto(onnx.helper.make_map_type_proto(key, value))


def _class_labels(classes):
    """``classes_`` as ONNX holds labels: int64 (integers, booleans and integral floats, as
    skl2onnx) or strings (an object array of str)."""
    c = np.asarray(classes)
    if c.dtype.kind in "iub":
        return c.astype(np.int64)
    if c.dtype.kind == "f" and np.all(c == np.round(c)):
        return c.astype(np.int64)
    if c.dtype.kind in "US" or (c.dtype.kind == "O" and all(isinstance(v, str) for v in c)):
        return np.array([str(v) for v in c], dtype=object)
    raise ValueError(f"classes_ of dtype {c.dtype} ({c[:3].tolist()}...) have no ONNX label "
                     f"type: labels must be integers or strings")


#: a classifier's outputs (label, probabilities) with and without ZipMap, skl2onnx's names
_CLASSIFIER_OUTPUTS = {True: ("output_label", "output_probability"),
                       False: ("label", "probabilities")}


def _classifier(est, g, x, zipmap):
    """Labels and probabilities as skl2onnx gives them for scikit-learn's MLPClassifier."""
    onnx = g.onnx
    y = g.emit(est.network_, x, "")
    multilabel = est._label_binarizer.y_type_.startswith("multilabel")
    labels = np.arange(est.n_outputs_, dtype=np.int64) if multilabel else \
        _class_labels(est.classes_)
    if not multilabel and len(labels) < 2:
        raise ValueError(f"a classifier fitted on one class ({est.classes_}) has no ONNX export")
    if multilabel:  # scikit-learn's LabelBinarizer: label l is on where p_l > 0.5
        probs = y
        on = g.op("Greater", [y, g.const(0.5, "threshold")], "label")
        label = g.op("Cast", [on], "label", to=onnx.TensorProto.INT64)
        label_shape = ["N", est.n_outputs_]
    else:
        if est.n_outputs_ == 1:  # binary: one sigmoid output p gives the columns (1 - p, p)
            q = g.op("Sub", [g.const(1.0, "one"), y], "binary")
            probs = g.op("Concat", [q, y], "binary", axis=1)
        else:
            probs = y
        index = g.op("ArgMax", [probs], "label", axis=1, keepdims=0)
        label = g.op("Gather", [g.const(labels, "classes", labels.dtype), index], "label",
                     axis=0)
        label_shape = ["N"]
    names = _CLASSIFIER_OUTPUTS[zipmap]
    g.output(label, names[0])
    elem = onnx.TensorProto.STRING if labels.dtype == object else onnx.TensorProto.INT64
    outputs = [onnx.helper.make_tensor_value_info(names[0], elem, label_shape)]
    if zipmap:  # ZipMap takes float32 only: a float64 network's probabilities are cast
        if g.dtype != np.float32:
            probs = g.op("Cast", [probs], "zipmap", to=onnx.TensorProto.FLOAT)
        key = "classlabels_strings" if labels.dtype == object else "classlabels_int64s"
        g.nodes.append(onnx.helper.make_node("ZipMap", [probs], [names[1]], name="ZipMap",
                                             domain="ai.onnx.ml", **{key: labels.tolist()}))
        g.domains["ai.onnx.ml"] = 1
        outputs.append(onnx.helper.make_value_info(names[1], _zipmap_type(onnx, labels)))
    else:
        g.output(probs, names[1])
        outputs.append(_tensor(onnx, names[1], g.dtype, ["N", len(labels)]))
    return outputs


def _regressor(est, g, x):
    """Output "variable" of shape (N, n_outputs), as skl2onnx names it."""
    g.output(g.emit(est.network_, x, ""), "variable")
    return [_tensor(g.onnx, "variable", g.dtype, ["N", est.n_outputs_])]


def _options(options):
    options = {} if options is None else dict(options)
    unknown = set(options) - {"zipmap"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; fastbp.onnx knows 'zipmap'")
    zipmap = options.get("zipmap", True)
    if zipmap not in (True, False):
        raise ValueError(f"options['zipmap'] must be True or False, got {zipmap!r}")
    return bool(zipmap)


def to_onnx(model, path=None, opset=None, name=None, options=None):
    """An ONNX model computing what ``model`` predicts, in the model's dtype.

    Parameters
    ----------
    model : fastbp.Sequential, or a fitted fastbp.sklearn.MLPClassifier or MLPRegressor
        A network of built-in nodes (any nesting, products and max included; see
        :data:`EMITTERS`). A network exports its ``predict`` (evaluation mode) with input
        "input" of shape (N, n_in) and output "output" of shape (N, n_out), N symbolic.
        An estimator exports as skl2onnx exports scikit-learn's MLP: input "X"; a classifier
        gives "output_label" (int64 or string labels; (N,) or for multilabel (N, n_labels)
        of 0/1) and "output_probability" (ZipMap: a list of {class: probability} dicts, in
        float32), or with ``options={"zipmap": False}`` "label" and "probabilities"
        (N, n_classes) in the network's dtype (a binary classifier's two columns 1 - p, p);
        a regressor gives "variable" of shape (N, n_outputs).
    path : str or path-like, optional
        Also write the model there (``onnx.save``).
    opset : int, optional
        The target opset of the default domain, from 13 to the installed onnx's newest
        (default :data:`DEFAULT_OPSET`; 20 and above use the Gelu operator).
    name : str, optional
        The graph's name (default: the model's class name).
    options : dict, optional
        ``{"zipmap": False}`` for a classifier's probabilities as a tensor (skl2onnx's option).

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ImportError
        Without onnx (``pip install "fastbp[onnx]"``).
    ValueError
        For a node without an emitter, naming it and its position ("1.a.0").

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> import onnxruntime as ort
    >>> from fastbp.onnx import to_onnx
    >>> net = fb.Sequential(fb.Linear(4, 8), fb.GELU(), fb.Linear(8, 2), seed=0,
    ...                     dtype=np.float32)
    >>> session = ort.InferenceSession(to_onnx(net).SerializeToString())
    >>> X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    >>> Y, = session.run(None, {"input": X})
    >>> bool(np.allclose(Y, net.predict(X), atol=1e-5))
    True
    """
    onnx = _onnx()
    opset = _opset(opset, onnx)
    if isinstance(model, Sequential):
        net, kind, zipmap = model, "network", False
        if options:
            raise ValueError("options apply to classifiers only")
    elif isinstance(model, (MLPClassifier, MLPRegressor)):
        check_is_fitted(model)
        net = model.network_
        kind = "classifier" if isinstance(model, MLPClassifier) else "regressor"
        zipmap = _options(options) if kind == "classifier" else False
        if kind == "regressor" and options:
            raise ValueError("options apply to classifiers only")
    else:
        raise TypeError(f"to_onnx exports a fastbp.Sequential or a fitted "
                        f"fastbp.sklearn.MLPClassifier/MLPRegressor, got {type(model).__name__}"
                        f" (scikit-learn's own estimators: skl2onnx)")
    g = GraphBuilder(onnx, net.dtype, opset)
    x = "input" if kind == "network" else "X"
    for reserved in (x, "output", "variable", *_CLASSIFIER_OUTPUTS[True],
                     *_CLASSIFIER_OUTPUTS[False]):
        g.fresh(reserved)
    g.widths[x] = net.n_in
    inputs = [_tensor(onnx, x, net.dtype, ["N", net.n_in])]
    if kind == "network":
        g.output(g.emit(net, x, ""), "output")
        outputs = [_tensor(onnx, "output", net.dtype, ["N", net.infer(net.n_in)])]
    elif kind == "classifier":
        outputs = _classifier(model, g, x, zipmap)
    else:
        outputs = _regressor(model, g, x)
    graph = onnx.helper.make_graph(g.nodes, name or type(model).__name__, inputs, outputs,
                                   g.inits)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in g.domains.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="fastbp",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    proto.doc_string = " ".join(repr(net).split())
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, path)
    return proto
