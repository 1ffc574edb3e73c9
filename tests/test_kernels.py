"""Every kernel of fastbp/kernels (numeric families), called directly on arrays, against the
loop-by-loop reference in tests/reference.py.

float64 results are compared with rtol 1e-12 (exactly where a kernel does one rounding per
element), float32 results with the float32 tolerance against the float64 reference evaluated on
the same float32-rounded inputs. Arrays are always C-contiguous float32/float64 so that the tests
reuse the signatures the library compiles anyway.
"""

import importlib
import math
import pkgutil
import types

import numba
import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import fastbp as fb
import fastbp.kernels
from fastbp import _config, nodes
import reference as R
from reference_training import sgd
from conftest import DTYPES
from fastbp.kernels import activations as KA
from fastbp.kernels import dense as KD
from fastbp.kernels import divergences as KDiv
from fastbp.kernels import dropout as KDr
from fastbp.kernels import optim as KO
from fastbp.kernels import products as KP
from fastbp.kernels import vector as KV

#: kernel modules whose kernels this file checks against the reference (the optimizers' and the
#: engine's kernels are tested with the optimizers, fastmath.py in tests/test_fastmath.py; the
#: finite check and the optimizers' serial twins at the end of this file; norm.py's kernels and
#: their twins in tests/test_norm.py)
NOT_HERE = {"fastmath", "optim", "engine", "norm"}

#: (T, D) shapes: one unit, one instance, widths that are no multiple of a vector width
SHAPES = [(1, 1), (1, 7), (5, 3), (4, 17), (3, 33)]

SCALAR_KINDS = {  # reference name: (kernel kind, parameter)
    "identity": (KA.IDENTITY, 0.0),
    "sigmoid": (KA.SIGMOID, 0.0),
    "tanh": (KA.TANH, 0.0),
    "relu": (KA.RELU, 1.0),
    "leaky_relu": (KA.LEAKY_RELU, 0.01),
    "softplus": (KA.SOFTPLUS, 0.0),
    "elu": (KA.ELU, 0.7),
    "gelu": (KA.GELU, 0.0),
    "exp": (KA.EXP, 0.0),
}


def _scalar_forward(kind, p, z, y):
    """The activation ``kind``'s forward kernel, as the nodes call it."""
    KA.FORWARD[kind](p, z, y)


def _scalar_backward(kind, p, z, y, dy, dz):
    KA.BACKWARD[kind](p, z, y, dy, dz)


# The per-kind kernels and their serial twins under one name each, for the twin test.
_ACTIVATIONS = types.SimpleNamespace(
    scalar_forward=_scalar_forward, scalar_backward=_scalar_backward,
    scalar_forward_serial=lambda kind, p, z, y: KA.FORWARD_SERIAL[kind](p, z, y),
    scalar_backward_serial=lambda kind, p, z, y, dy, dz: KA.BACKWARD_SERIAL[kind](p, z, y, dy,
                                                                                   dz))


def _data(rng, shape, dtype, zero_row=True, scale=1.0):
    """Normal data in ``dtype``, with row 1 (or row 0 of a one-row array: column 0) all zero."""
    a = (scale * rng.normal(size=shape)).astype(dtype)
    if zero_row and a.ndim == 2:
        if a.shape[0] > 1:
            a[1] = 0
        else:
            a[0, 0] = 0
    return a


def _up(a):
    """float64 copy of the exact values a float32/float64 array holds."""
    return np.asarray(a, dtype=np.float64)


# ==============================================================================================
# Coverage: every kernel in the numeric kernel modules is exercised by a test below
# ==============================================================================================
TESTED = {
    "dense": {"_axpy", "_affine_block", "dense_mode", "row_block", "unit_block",
              "by_units", "input_scratch", "dense_forward",
              "dense_backward_params", "dense_backward_input_parts",
              "dense_backward_input", "dense_forward_blas", "dense_backward_params_blas",
              "dense_backward_input_blas", "dense_forward_gemv", "dense_backward_input_gemv"},
    # FORWARD/BACKWARD hold elementwise_forward/backward made for each kind
    "activations": {"_gelu", "_dgelu", "elementwise_forward", "elementwise_backward",
                    *(f"_{n}" for n in ("identity", "sigmoid", "tanh", "relu", "leaky_relu",
                                        "softplus", "elu", "gelu_p", "exp")),
                    *(f"_d{n}" for n in ("identity", "sigmoid", "tanh", "relu", "leaky_relu",
                                         "softplus", "elu", "gelu_p", "exp")),
                    "rrelu_forward", "rrelu_backward"},
    "vector": {"softmax_row", "softmax_forward", "softmax_vjp", "jacobian_vjp"},
    "products": {"elementwise_product_forward", "elementwise_product_backward",
                 "pair_product_forward", "pair_product_backward", "power_product_forward",
                 "power_product_backward", "max_forward", "max_backward"},
    "dropout": {"_mix", "row_key", "uniform", "_threshold", "dropout"},  # tests/test_dropout.py
    "divergences": {"xlogx", "mean", "correct", "l2", "kl_probs", "kl_labels", "_softmax_lse",
                    "softmax_kl_probs", "softmax_kl_labels", "binary_kl", "sigmoid_binary_kl",
                    "poisson", "exp_poisson", "total", "weight_scale", "weighted_mean"},
}


def test_every_kernel_is_tested_here():
    """A new kernel in a numeric module must get a reference test (and be listed in TESTED);
    a serial twin (``<kernel>_serial``) must be in TWINS, checked against its kernel below."""
    for info in pkgutil.iter_modules(fastbp.kernels.__path__):
        if info.name in NOT_HERE:
            continue
        mod = importlib.import_module(f"fastbp.kernels.{info.name}")
        kernels = {n for n, v in vars(mod).items()
                   if isinstance(v, CPUDispatcher) and v.__module__ == mod.__name__}
        twins = {n for n in kernels if n.endswith("_serial")}
        tested = TESTED.get(info.name, set())
        assert kernels - twins == tested, (
            f"fastbp/kernels/{info.name}.py: untested {sorted(kernels - twins - tested)}, "
            f"listed but gone {sorted(tested - kernels)}")
        untwinned = {n[:-len("_serial")] for n in twins} - set(TWINS)
        assert not untwinned, f"fastbp/kernels/{info.name}.py: twins not checked {untwinned}"


# ==============================================================================================
# dense: z = y W^T + b and its backward pass
# ==============================================================================================
DENSE_SHAPES = [(1, 1, 1), (1, 33, 17), (5, 3, 7), (4, 17, 1), (9, 7, 33)]  # (T, D_in, D_out)
def _blas_forward(kernel):
    """A BLAS or GEMV forward kernel, called with (y, W, b, z) and a NaN-filled scratch."""
    return lambda y, W, b, z: kernel(y, W, b, z, _scratch_zT(z))


def _blas_backward(params_kernel, input_kernel):
    """dW, db from a BLAS params kernel and dy from `input_kernel`, called with
    (dz, y, W, dW, db, dy)."""
    return lambda dz, y, W, dW, db, dy: (params_kernel(dz, y, dW, db, _scratch_dzT(dz)),
                                         input_kernel(dz, W, dy))


DENSE_FORWARD = {  # kernel: call with (y, W, b, z); the GEMM and GEMV kernels on any rows
    "loop": lambda y, W, b, z: KD.dense_forward(y, W, b, z, _scratch_WT(W)),
    "blas": _blas_forward(KD.dense_forward_blas),
    "blas_serial": _blas_forward(KD.dense_forward_blas_serial),
    "gemv": _blas_forward(KD.dense_forward_gemv),
    "gemv_serial": _blas_forward(KD.dense_forward_gemv_serial),
    "affine": nodes.affine,
}
DENSE_BACKWARD = {  # kernel: call with (dz, y, W, dW, db, dy)
    "loop": lambda dz, y, W, dW, db, dy: (KD.dense_backward_params(dz, y, dW, db),
                                          KD.dense_backward_input(dz, W, dy)),
    "blas": _blas_backward(KD.dense_backward_params_blas, KD.dense_backward_input_blas),
    "blas_serial": _blas_backward(KD.dense_backward_params_blas_serial,
                                  KD.dense_backward_input_blas_serial),
    "gemv": _blas_backward(KD.dense_backward_params_blas, KD.dense_backward_input_gemv),
    "gemv_serial": _blas_backward(KD.dense_backward_params_blas_serial,
                                  KD.dense_backward_input_gemv_serial),
    "affine": lambda dz, y, W, dW, db, dy: nodes.affine_backward(dz, y, W, dW, db, dy, True),
}


def _scratch_WT(W):
    return np.full((W.shape[1], W.shape[0]), np.nan, W.dtype)


def _scratch_dzT(dz):
    return np.full((dz.shape[1], dz.shape[0]), np.nan, dz.dtype)


_scratch_zT = _scratch_dzT


def _scratch_input(dz, W):
    return np.full(nodes.input_scratch(dz.shape[0], W.shape[0], W.shape[1]), np.nan, dz.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,D_in,D_out", DENSE_SHAPES)
@pytest.mark.parametrize("kernel", sorted(DENSE_FORWARD))
def test_dense_forward(rng, kernel, dtype, T, D_in, D_out):
    y, W, b = _data(rng, (T, D_in), dtype), _data(rng, (D_out, D_in), dtype, False), \
        _data(rng, (D_out,), dtype)
    z = np.full((T, D_out), np.nan, dtype)
    DENSE_FORWARD[kernel](y, W, b, z)
    expected = R.linear_forward(_up(y), _up(W), _up(b))
    scale = R.linear_forward(np.abs(_up(y)), np.abs(_up(W)), np.abs(_up(b)))
    R.assert_close(z, expected, dtype, scale, what="z")
    if T > 1:  # the all-zero row gives exactly the bias
        np.testing.assert_array_equal(z[1], b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_by_units(rng, dtype):
    """Rows in one block, units in two (128 + 2) and work enough for the threads: the BLAS
    kernels compute z^T by blocks of units into the scratch; right against the reference, the
    bias exact on the zero row, and the same bits in the parallel kernel, its serial twin and
    the per-node choice."""
    T, D_in, D_out = 9, 8192, 130
    assert KD.by_units(T, D_out, D_in) and KD.unit_block(D_out) == 128
    y, W, b = _data(rng, (T, D_in), dtype), _data(rng, (D_out, D_in), dtype, False), \
        _data(rng, (D_out,), dtype)
    expected = R.linear_forward(_up(y), _up(W), _up(b))
    scale = R.linear_forward(np.abs(_up(y)), np.abs(_up(W)), np.abs(_up(b)))
    out = {}
    for kernel in ("blas", "blas_serial", "affine"):
        z = out[kernel] = np.full((T, D_out), np.nan, dtype)
        DENSE_FORWARD[kernel](y, W, b, z)
        R.assert_close(z, expected, dtype, scale, what=f"z ({kernel})")
        np.testing.assert_array_equal(z[1], b)
    assert out["blas"].tobytes() == out["blas_serial"].tobytes() == out["affine"].tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_input_by_units(rng, dtype):
    """Rows in one block, units in two (128 + 2) and work enough for the threads: dy is summed
    from the two parts dz[:, J] W[J]; right against the reference, the same bits from the
    kernel (scratch filled with NaN), from the per-node choice and on 1 or 2 threads."""
    T, D_in, D_out = 9, 8192, 130
    assert KD.by_units(T, D_out, D_in) and nodes.by_units(T, D_out, D_in)
    assert KD.dense_mode(T, D_out, D_in) == KD.BLAS_MODE
    assert nodes.input_scratch(T, D_out, D_in) == T * D_out + T * D_in
    assert nodes.input_scratch(200, D_out, D_in) == 64 * D_out + 64 * D_in  # up to 64 rows
    assert nodes.input_scratch(T, D_out, 100) == 1  # too little work: one GEMM
    assert not KD.by_units(128, D_out, D_in)  # two blocks of rows
    y, W, dz = _data(rng, (T, D_in), dtype), _data(rng, (D_out, D_in), dtype, False), \
        _data(rng, (T, D_out), dtype)
    e_dy, _, _ = R.linear_backward(_up(dz), _up(y), _up(W))
    m_dy, _, _ = R.linear_backward(np.abs(_up(dz)), np.abs(_up(y)), np.abs(_up(W)))
    out = []
    before = fb.get_num_threads()
    try:
        for threads in (1, 2):
            fb.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            dy = np.full((T, D_in), np.nan, dtype)
            KD.dense_backward_input_parts(dz, W, dy, _scratch_input(dz, W))
            out.append(dy)
    finally:
        fb.set_num_threads(before)
    dW, db = np.full((D_out, D_in), np.nan, dtype), np.full(D_out, np.nan, dtype)
    dy = np.full((T, D_in), np.nan, dtype)
    DENSE_BACKWARD["affine"](dz, y, W, dW, db, dy)
    out.append(dy)
    for dy in out:
        R.assert_close(dy, e_dy, dtype, m_dy, what="dy")
        np.testing.assert_array_equal(dy[1], 0)  # the zero row of dz
        assert dy.tobytes() == out[0].tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,D_in,D_out", DENSE_SHAPES)
@pytest.mark.parametrize("kernel", sorted(DENSE_BACKWARD))
def test_dense_backward(rng, kernel, dtype, T, D_in, D_out):
    y, W, dz = _data(rng, (T, D_in), dtype), _data(rng, (D_out, D_in), dtype, False), \
        _data(rng, (T, D_out), dtype)
    dW, db = np.full((D_out, D_in), np.nan, dtype), np.full(D_out, np.nan, dtype)
    dy = np.full((T, D_in), np.nan, dtype)
    DENSE_BACKWARD[kernel](dz, y, W, dW, db, dy)
    e_dy, e_dW, e_db = R.linear_backward(_up(dz), _up(y), _up(W))
    m_dy, m_dW, m_db = R.linear_backward(np.abs(_up(dz)), np.abs(_up(y)), np.abs(_up(W)))
    R.assert_close(dy, e_dy, dtype, m_dy, what="dy")
    R.assert_close(dW, e_dW, dtype, m_dW, what="dW")
    R.assert_close(db, e_db, dtype, m_db, what="db")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_overwrites_stale_gradients(rng, dtype):
    """Kernels fill their outputs; whatever the buffers held before does not leak in."""
    y, W, dz = _data(rng, (3, 7), dtype), _data(rng, (5, 7), dtype), _data(rng, (3, 5), dtype)
    for kernel in DENSE_BACKWARD.values():
        out = []
        for fill in (0, 7):
            dW, db, dy = np.full((5, 7), fill, dtype), np.full(5, fill, dtype), \
                np.full((3, 7), fill, dtype)
            kernel(dz, y, W, dW, db, dy)
            out.append((dW, db, dy))
        for a, b in zip(*out):
            np.testing.assert_array_equal(a, b)


@numba.njit(cache=False)
def _fastbp_dot(a, b, out):
    _config.dot(a, b, out)


@numba.njit(cache=False)
def _numba_dot(a, b, out):
    np.dot(a, b, out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dot_makes_the_blas_call_of_numbas_np_dot(rng, dtype):
    """``_config.dot``, the dense kernels' product, gives numba's np.dot's bits in every case
    np.dot dispatches on (GEMM; GEMV for one row or one column; a dot product for one by one;
    zeros for an empty inner or outer dimension), for C and F operands, matrix x vector and
    vector x matrix; and refuses what it does not handle."""
    def data(*shape):
        return rng.standard_normal(shape).astype(dtype)

    cases = []
    for m, k, n in [(7, 5, 3), (1, 5, 3), (7, 5, 1), (1, 5, 1), (7, 0, 3), (0, 5, 3),
                    (300, 64, 33)]:
        a, b = data(m, k), data(k, n)
        for a_ in (a, np.asfortranarray(a)):
            cases += [(a_, b, (m, n)), (a_, np.asfortranarray(b), (m, n))]
    for m, k in [(7, 5), (1, 5), (7, 1), (7, 0)]:
        A, v, u = data(m, k), data(k), data(m)
        for M in (A, np.asfortranarray(A)):
            cases += [(M, v, (m,)), (u, M, (k,))]
    for a, b, shape in cases:
        out1, out2 = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
        _fastbp_dot(a, b, out1)
        _numba_dot(a, b, out2)
        assert out1.tobytes() == out2.tobytes(), (a.shape, a.flags.f_contiguous, b.shape)
        R.assert_close(out1, _up(a) @ _up(b), dtype, np.abs(_up(a)) @ np.abs(_up(b)))
    with pytest.raises(numba.core.errors.TypingError, match="dot: unsupported arguments"):
        _fastbp_dot(np.ones((4, 4), dtype)[::2], np.ones((4, 4), dtype), np.ones((2, 4), dtype))
    with pytest.raises(numba.core.errors.TypingError, match="dot: unsupported arguments"):
        _fastbp_dot(np.ones((2, 4)), np.ones((4, 4), np.float32), np.ones((2, 4)))


def test_dense_mode_and_affine_use_the_kernel_of_the_mode(rng):
    """``dense_mode`` picks from the sizes alone; ``nodes.affine``/``affine_backward`` (the
    per-node path's choice) give exactly what the picked kernel gives (tiny: loops, small:
    BLAS blocks on one thread, larger: BLAS blocks over the threads)."""
    assert KD.dense_mode(1, 1, 1) == KD.LOOP_MODE
    assert KD.dense_mode(3, 10, 17) == KD.LOOP_MODE  # 510 multiply-adds
    assert KD.dense_mode(2, 16, 16) == KD.BLAS_SERIAL_MODE  # 2^9
    assert KD.dense_mode(1, 10, 256) == KD.BLAS_SERIAL_MODE  # one row of W6's output layer
    assert KD.dense_mode(8, 128, 64) == KD.BLAS_SERIAL_MODE  # 2^16: too little to split
    assert KD.PAR_MIN_WORK == 1 << 20
    assert KD.dense_mode(8, 256, 8192) == KD.BLAS_MODE  # 2^24 in four blocks of units
    assert KD.dense_mode(256, 256, 128) == KD.BLAS_MODE  # 2^23 in two blocks of rows
    assert KD.dense_mode(256, 128, 32) == KD.BLAS_MODE  # 2^20 in two blocks of rows
    assert KD.dense_mode(256, 64, 32) == KD.BLAS_SERIAL_MODE  # 2^19: too little to split
    assert KD.dense_mode(64, 64, 4096) == KD.BLAS_SERIAL_MODE  # 2^24 but one block
    assert KD.dense_mode(32, 64, 8192) == KD.BLAS_SERIAL_MODE  # 2^24 but one block
    # W3a's first layer: 64 rows make one block, 256 units two (forward by units)
    assert KD.dense_mode(64, 256, 784) == KD.BLAS_MODE and KD.by_units(64, 256, 784)
    assert not KD.by_units(128, 256, 784)  # two blocks of rows
    assert not KD.by_units(64, 64, 4096)  # one block of units
    assert KD.by_units(64, 128, 512)  # 2^22 (W3a's second layer is 2^21)
    assert not KD.by_units(64, 128, 64)  # 2^19: too little to split
    for (T, n_out, n_in), mode in [((3, 5, 7), "loop"), ((4, 32, 32), "gemv_serial"),
                                   ((3, 100, 300), "gemv_serial"), ((3, 2048, 4096), "gemv"),
                                   ((16, 64, 64), "blas_serial"), ((64, 512, 512), "blas")]:
        y, W, b = _data(rng, (T, n_in), np.float64), _data(rng, (n_out, n_in), np.float64), \
            _data(rng, (n_out,), np.float64)
        z1, z2 = np.empty((T, n_out)), np.empty((T, n_out))
        DENSE_FORWARD["affine"](y, W, b, z1)
        DENSE_FORWARD[mode](y, W, b, z2)
        assert z1.tobytes() == z2.tobytes(), mode
        dz = _data(rng, (T, n_out), np.float64)
        outs = []
        for k in ("affine", mode):
            dW, db, dy = np.empty((n_out, n_in)), np.empty(n_out), np.empty((T, n_in))
            DENSE_BACKWARD[k](dz, y, W, dW, db, dy)
            outs.append(dW.tobytes() + db.tobytes() + dy.tobytes())
        assert outs[0] == outs[1], mode
        # need_dy=False leaves dy alone
        dy = np.full((T, n_in), 7.0)
        nodes.affine_backward(dz, y, W, np.empty((n_out, n_in)), np.empty(n_out), dy, False)
        assert (dy == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 17, 33])
def test_axpy_and_affine_block(rng, dtype, n):
    x, out = _data(rng, (n,), dtype), _data(rng, (n,), dtype)
    expected = _up(out) + 0.75 * _up(x)
    KD._axpy(dtype(0.75), x, out)
    R.assert_close(out, expected, dtype, np.abs(_up(out)) + np.abs(0.75 * _up(x)), what="axpy")
    # one block of z = y W^T + b: rows 1..3, columns 0..n-1
    y, W, b = _data(rng, (4, 5), dtype), _data(rng, (n, 5), dtype), _data(rng, (n,), dtype)
    z = np.full((4, n), np.nan, dtype)
    KD._affine_block(y, np.ascontiguousarray(W.T), b, z, 1, 4, 0, n)
    assert np.isnan(z[0]).all()
    R.assert_close(z[1:], R.linear_forward(_up(y[1:]), _up(W), _up(b)), dtype,
                   R.linear_forward(np.abs(_up(y[1:])), np.abs(_up(W)), np.abs(_up(b))))


@pytest.mark.parametrize("kernel", sorted(DENSE_FORWARD))
def test_dense_propagates_nan(kernel):
    """No fastmath that drops NaN: a NaN input reaches its outputs."""
    y = np.array([[1.0, np.nan, 2.0]])
    W, b, z = np.ones((2, 3)), np.zeros(2), np.zeros((1, 2))
    DENSE_FORWARD[kernel](y, W, b, z)
    assert np.isnan(z).all()


# ==============================================================================================
# scalar activations
# ==============================================================================================
def _activation_input(rng, shape, dtype):
    z = _data(rng, shape, dtype, scale=2.5)
    flat = z.reshape(-1)
    specials = np.array([0.0, -0.0, 1e-300, -1e-300, 6.0, -6.0, 30.0, -30.0], dtype)
    k = min(flat.size, specials.size)
    flat[:k] = specials[:k]
    return z


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(SCALAR_KINDS))
def test_scalar_forward_backward(rng, dtype, shape, name):
    kind, p = SCALAR_KINDS[name]
    z = _activation_input(rng, shape, dtype)
    dy = _data(rng, shape, dtype)
    y = np.full(shape, np.nan, dtype)
    dz = np.full(shape, np.nan, dtype)
    _scalar_forward(kind, p, z.reshape(-1), y.reshape(-1))
    _scalar_backward(kind, p, z.reshape(-1), y.reshape(-1), dy.reshape(-1), dz.reshape(-1))
    zz = _up(z)
    # f and f' are sums of O(1 + |z|) terms (1 + erf, y + alpha, 1 - y^2): atol scaled to them
    R.assert_close(y, R.scalar_forward(name, zz, p), dtype, 1 + np.abs(zz), what=f"{name} y")
    R.assert_close(dz, R.scalar_backward(name, zz, _up(dy), p), dtype,
                   np.abs(_up(dy)) * (1 + np.abs(zz)), what=f"{name} dz")


@pytest.mark.parametrize("grad_at_zero", [1.0, 0.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_subgradient_at_zero(dtype, grad_at_zero):
    """The seed: f'(z) = 1 for z >= 0; ``grad_at_zero`` selects f'(0) (0 as in PyTorch)."""
    z = np.array([-1.0, 0.0, -0.0, 1.0], dtype)
    y, dz = np.empty_like(z), np.empty_like(z)
    _scalar_forward(KA.RELU, grad_at_zero, z, y)
    _scalar_backward(KA.RELU, grad_at_zero, z, y, np.ones_like(z), dz)
    np.testing.assert_array_equal(y, [0, 0, 0, 1])
    np.testing.assert_array_equal(dz, [0, grad_at_zero, grad_at_zero, 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_kink_uses_the_seed_convention(dtype):
    z = np.array([-2.0, 0.0, 3.0], dtype)
    y, dz = np.empty_like(z), np.empty_like(z)
    _scalar_forward(KA.LEAKY_RELU, 0.01, z, y)
    _scalar_backward(KA.LEAKY_RELU, 0.01, z, y, np.ones_like(z), dz)
    np.testing.assert_array_equal(dz, np.array([0.01, 1, 1], dtype))
    np.testing.assert_array_equal(y, np.array([-0.02, 0, 3], dtype))


def test_exp_overflows_as_exp_does():
    """Exp is the one activation whose value is unbounded: inf past log(max float), 0 far
    below, exactly as exp (Poisson's fused loss then reports the overflow)."""
    kind, p = SCALAR_KINDS["exp"]
    for dt, big in ((np.float64, 710.0), (np.float32, 89.0)):
        z = np.array([-1000.0, big, 1.0], dt)
        y = np.empty_like(z)
        _scalar_forward(kind, p, z, y)
        assert y[0] == 0 and y[1] == np.inf and abs(y[2] - math.e) <= 4 * np.finfo(dt).eps * math.e


@pytest.mark.parametrize("name", sorted(set(SCALAR_KINDS) - {"exp"}))
def test_scalar_extremes_are_finite(name):
    """|z| = 1000 overflows naive exp: every activation and derivative stays finite."""
    kind, p = SCALAR_KINDS[name]
    z = np.array([-1000.0, 1000.0, -745.0, 710.0])
    y, dz = np.empty_like(z), np.empty_like(z)
    _scalar_forward(kind, p, z, y)
    _scalar_backward(kind, p, z, y, np.ones_like(z), dz)
    assert np.isfinite(y).all() and np.isfinite(dz).all(), (y, dz)
    R.assert_close(y, R.scalar_forward(name, z, p), scale=1 + np.abs(z), what=f"{name} y")


@pytest.mark.parametrize("name", ["identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid"])
def test_scalar_forward_propagates_nan(name):
    """NaN stays NaN (no fastmath in these loops; ReLU does not map NaN to 0)."""
    kind, p = SCALAR_KINDS[name]
    z = np.array([np.nan, 1.0])
    y = np.empty_like(z)
    _scalar_forward(kind, p, z, y)
    assert np.isnan(y[0]) and not np.isnan(y[1])


@pytest.mark.parametrize("name", sorted(SCALAR_KINDS))
def test_scalar_leaves(name):
    """f and f' of each kind point by point, one element at a time (and ``sigmoid``,
    ``softplus``)."""
    kind, p = SCALAR_KINDS[name]
    f, df = R.SCALAR[name]
    for z in (-3.5, -0.25, 0.0, 0.75, 4.0):
        zz, y, dz = np.array([z]), np.empty(1), np.empty(1)
        _scalar_forward(kind, p, zz, y)
        _scalar_backward(kind, p, zz, y, np.ones(1), dz)
        R.assert_close(y[0], f(z, p), scale=1 + abs(z), what=f"{name} f({z})")
        R.assert_close(dz[0], df(z, p), scale=1 + abs(z), what=f"{name} f'({z})")
    for z in (-1000.0, -3.0, 0.0, 2.0, 1000.0):
        R.assert_close(KA.sigmoid(z), R.scalar_forward("sigmoid", np.array([z]))[0],
                       what="sigmoid")
        R.assert_close(KA.softplus(z), R.scalar_forward("softplus", np.array([z]))[0],
                       what="softplus")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 33)])
def test_rrelu_kernels(rng, dtype, shape):
    """Forward and backward with the same per-element slopes; one multiply each: exact."""
    z = _activation_input(rng, shape, dtype)
    a = rng.uniform(1 / 8, 1 / 3, size=shape).astype(dtype)
    dy = _data(rng, shape, dtype)
    y, dz = np.empty_like(z), np.empty_like(z)
    KA.rrelu_forward(z.reshape(-1), a.reshape(-1), y.reshape(-1))
    KA.rrelu_backward(z.reshape(-1), a.reshape(-1), dy.reshape(-1), dz.reshape(-1))
    np.testing.assert_array_equal(y, R.rrelu_forward(_up(z), _up(a)).astype(dtype))
    np.testing.assert_array_equal(dz, R.rrelu_backward(_up(z), _up(a), _up(dy)).astype(dtype))


# ==============================================================================================
# vector activations
# ==============================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_forward_and_vjp(rng, dtype, shape):
    z = _data(rng, shape, dtype, scale=3.0)
    dy = _data(rng, shape, dtype)
    y, dz = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
    KV.softmax_forward(z, y)
    KV.softmax_vjp(y, dy, dz)
    R.assert_close(y, R.softmax_forward(_up(z)), dtype, what="softmax y")
    # the reference multiplies by the explicit Jacobian J[j, i] = y_j (delta_ij - y_i)
    J = [R.softmax_jacobian(row) for row in _up(z)]
    expected = np.array([R.vjp(Jt, dyt) for Jt, dyt in zip(J, _up(dy))])
    scale = np.array([R.vjp(np.abs(Jt), np.abs(dyt)) for Jt, dyt in zip(J, _up(dy))])
    R.assert_close(dz, expected, dtype, scale, what="softmax dz")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_zero_row_is_uniform_and_large_logits_are_finite(dtype):
    z = np.array([[0.0] * 7, [1000.0, 0.0, -1000.0, 0, 0, 0, 0], [-1000.0] * 7], dtype)
    y = np.empty_like(z)
    KV.softmax_forward(z, y)
    np.testing.assert_array_equal(y[0], np.full(7, 1 / 7, dtype))
    np.testing.assert_array_equal(y[1], np.array([1, 0, 0, 0, 0, 0, 0], dtype))
    np.testing.assert_array_equal(y[2], np.full(7, 1 / 7, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,M,D", [(1, 1, 1), (5, 3, 7), (4, 2, 17), (2, 33, 3)])
def test_jacobian_vjp(rng, dtype, T, M, D):
    J = _data(rng, (T, M, D), dtype, False)
    dy = _data(rng, (T, M), dtype)
    dz = np.full((T, D), np.nan, dtype)
    KV.jacobian_vjp(J, dy, dz)
    expected = np.array([R.vjp(_up(J[t]), _up(dy[t])) for t in range(T)])
    scale = np.array([R.vjp(np.abs(_up(J[t])), np.abs(_up(dy[t]))) for t in range(T)])
    R.assert_close(dz, expected, dtype, scale, what="J^T dy")


# ==============================================================================================
# multiplicative nodes
# ==============================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 33])
def test_elementwise_product(rng, dtype, n):
    a, b, dy = _data(rng, (n,), dtype), _data(rng, (n,), dtype), _data(rng, (n,), dtype)
    y, da, db = np.empty_like(a), np.empty_like(a), np.empty_like(a)
    KP.elementwise_product_forward(a, b, y)
    KP.elementwise_product_backward(a, b, dy, da, db)
    np.testing.assert_array_equal(y, R.product_forward(_up(a), _up(b)).astype(dtype))
    np.testing.assert_array_equal(da, (_up(dy) * _up(b)).astype(dtype))
    np.testing.assert_array_equal(db, (_up(dy) * _up(a)).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,D", [(1, 2), (5, 6), (3, 34)])
def test_pair_product(rng, dtype, T, D):
    z, dy = _data(rng, (T, D), dtype), _data(rng, (T, D // 2), dtype)
    y, dz = np.full((T, D // 2), np.nan, dtype), np.full((T, D), np.nan, dtype)
    KP.pair_product_forward(z, y)
    KP.pair_product_backward(z, dy, dz)
    np.testing.assert_array_equal(y, R.pair_product_forward(_up(z)).astype(dtype))
    np.testing.assert_array_equal(dz, R.pair_product_backward(_up(z), _up(dy)).astype(dtype))


def _alpha_and_input(rng, kind, D, M, T, dtype):
    if kind == "integer":  # any sign, zeros in the input and in alpha allowed
        alpha = rng.integers(0, 3, size=(D, M)).astype(np.float64)
        z = _data(rng, (T, D), dtype)
    elif kind == "real":  # non-integer exponents need positive inputs
        alpha = rng.uniform(-1.5, 2.5, size=(D, M))
        z = rng.uniform(0.5, 2.0, size=(T, D)).astype(dtype)
    else:  # negative integer exponents, inputs away from 0
        alpha = rng.integers(-2, 3, size=(D, M)).astype(np.float64)
        z = (rng.choice([-1, 1], size=(T, D)) * rng.uniform(0.5, 2, size=(T, D))).astype(dtype)
    return np.ascontiguousarray(alpha, dtype=dtype), z


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["integer", "real", "negative"])
@pytest.mark.parametrize("T,D,M", [(1, 1, 1), (5, 3, 2), (4, 7, 3), (2, 17, 1)])
def test_power_product(rng, dtype, kind, T, D, M):
    alpha, z = _alpha_and_input(rng, kind, D, M, T, dtype)
    dy = _data(rng, (T, M), dtype)
    y, dz = np.full((T, M), np.nan, dtype), np.full((T, D), np.nan, dtype)
    work = np.empty((T, D), dtype)
    KP.power_product_forward(z, alpha, y)
    KP.power_product_backward(z, alpha, dy, dz, work)
    zz, aa = _up(z), _up(alpha)
    # a product of D powers: relative error grows with D, no cancellation
    R.assert_close(y, R.power_product_forward(zz, aa), dtype, np.abs(R.power_product_forward(zz, aa)) * D,
                   what="y")
    R.assert_close(dz, R.power_product_backward(zz, aa, _up(dy)), dtype,
                   R.power_product_backward(zz, aa, _up(dy), magnitude=True) * D, what="dz")


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_product_at_zero_inputs_is_exact(dtype):
    """y = z0 z1 and y = z0^2 z1 at z0 = 0: the derivative is exact, never 0/0."""
    alpha = np.array([[1.0, 2.0], [1.0, 1.0]], dtype)
    z = np.array([[0.0, 3.0], [0.0, 0.0]], dtype)
    dy = np.ones((2, 2), dtype)
    y, dz, work = np.empty((2, 2), dtype), np.empty((2, 2), dtype), np.empty((2, 2), dtype)
    KP.power_product_forward(z, alpha, y)
    KP.power_product_backward(z, alpha, dy, dz, work)
    np.testing.assert_array_equal(y, 0)
    # dy0/dz0 = z1 = 3, dy1/dz0 = 2 z0 z1 = 0; dy0/dz1 = z0 = 0, dy1/dz1 = z0^2 = 0
    np.testing.assert_array_equal(dz, np.array([[3.0, 0.0], [0.0, 0.0]], dtype))


# ==============================================================================================
# max over subsets
# ==============================================================================================
def _csr(subsets):
    indices = np.array([l for S in subsets for l in S], np.int64)
    indptr = np.zeros(len(subsets) + 1, np.int64)
    indptr[1:] = np.cumsum([len(S) for S in subsets])
    return indptr, indices


MAX_CASES = [  # (D, subsets)
    (1, [[0]]),
    (3, [[0, 1, 2]]),
    (7, [[0, 2], [1], [6, 0, 1], [3, 4, 5, 6], [2, 2]]),
    (17, R.pool_subsets(17, 3, 2)),
    (33, R.pool_subsets(33, 4, 4) + [list(range(33))]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("D,subsets", MAX_CASES)
def test_max_forward_backward(rng, dtype, D, subsets, ties):
    T = 4
    # with ties: values from a small set so that maxima repeat (row 1 all zeros: all tie)
    z = (rng.integers(-2, 3, size=(T, D)) if ties else rng.normal(size=(T, D))).astype(dtype)
    z[1] = 0
    M = len(subsets)
    dy = _data(rng, (T, M), dtype)
    indptr, indices = _csr(subsets)
    y, arg = np.full((T, M), np.nan, dtype), np.full((T, M), -1, np.int64)
    dz = np.full((T, D), np.nan, dtype)
    KP.max_forward(z, indptr, indices, y, arg)
    KP.max_backward(dy, arg, dz)
    e_y, e_arg = R.max_forward(_up(z), subsets)
    np.testing.assert_array_equal(arg, e_arg)
    np.testing.assert_array_equal(y, e_y.astype(dtype))
    # sums over j in order, in the kernel's dtype: compare with the reference in that dtype
    np.testing.assert_allclose(dz, R.max_backward(e_arg, _up(dy), D), rtol=R.tolerances(dtype)[0])


def test_max_ties_go_to_the_first_index():
    z = np.array([[5.0, 5.0, 1.0, 7.0, 7.0]])
    subsets = [[0, 1], [1, 0], [3, 4, 2], [4, 3]]
    indptr, indices = _csr(subsets)
    y, arg = np.empty((1, 4)), np.empty((1, 4), np.int64)
    KP.max_forward(z, indptr, indices, y, arg)
    np.testing.assert_array_equal(arg, [[0, 1, 3, 4]])
    dz = np.empty((1, 5))
    KP.max_backward(np.array([[1.0, 10.0, 100.0, 1000.0]]), arg, dz)
    np.testing.assert_array_equal(dz, [[1.0, 10.0, 0.0, 100.0, 1000.0]])


def test_max_propagates_nan():
    z = np.array([[1.0, np.nan, 3.0], [np.nan, 5.0, 2.0]])
    indptr, indices = _csr([[0, 1, 2]])
    y, arg = np.empty((2, 1)), np.empty((2, 1), np.int64)
    KP.max_forward(z, indptr, indices, y, arg)
    assert np.isnan(y).all()


# ==============================================================================================
# divergences
# ==============================================================================================
DIV_SHAPES = [(1, 1), (1, 3), (5, 7), (4, 17), (3, 33)]


def _probs(rng, shape, dtype, zeros=True):
    p = rng.uniform(0.05, 1, size=shape)
    if zeros and shape[1] > 1:
        p[:, 0] = 0  # d_i = 0 entries: 0 log 0 = 0
    return (p / p.sum(axis=1, keepdims=True)).astype(dtype)


def _run_div(kernel, Y, d, dtype):
    T = Y.shape[0]
    div, dY = np.full(T, np.nan), np.full(Y.shape, np.nan, dtype)
    kernel(Y, d, div, dY, 1.0 / T)
    return div, dY


def _check_div(div, dY, e_div, e_g, dtype, T, what):
    # per-instance sums of O(|term|) values; the gradient is one or two roundings per element
    R.assert_close(div, e_div, dtype, np.abs(e_div) + 1, what=f"{what} div")
    R.assert_close(dY, e_g / T, dtype, what=f"{what} dY")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DIV_SHAPES)
def test_l2_kernel(rng, dtype, shape):
    Y, d = _data(rng, shape, dtype), _data(rng, shape, dtype)
    d[0] = Y[0]  # a row with zero divergence
    div, dY = _run_div(KDiv.l2, Y, d, dtype)
    e_div, e_g = R.l2(_up(Y), _up(d))
    _check_div(div, dY, e_div, e_g, dtype, shape[0], "L2")
    assert div[0] == 0 and (dY[0] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DIV_SHAPES)
def test_kl_kernels(rng, dtype, shape):
    Y, d = _probs(rng, shape, dtype, zeros=False), _probs(rng, shape, dtype)
    div, dY = _run_div(KDiv.kl_probs, Y, d, dtype)
    e_div, e_g = R.kl(_up(Y), _up(d))
    _check_div(div, dY, e_div, e_g, dtype, shape[0], "KL probs")
    labels = rng.integers(0, shape[1], size=shape[0]).astype(np.int64)
    div, dY = _run_div(KDiv.kl_labels, Y, labels, dtype)
    e_div, e_g = R.kl(_up(Y), R.one_hot(labels, shape[1]))
    _check_div(div, dY, e_div, e_g, dtype, shape[0], "KL labels")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DIV_SHAPES)
def test_binary_kl_kernel(rng, dtype, shape):
    Y = rng.uniform(0.02, 0.98, size=shape).astype(dtype)
    d = rng.uniform(0, 1, size=shape).astype(dtype)
    d.reshape(-1)[:2] = [0, 1][: d.size]  # the end points 0 log 0
    div, dY = _run_div(KDiv.binary_kl, Y, d, dtype)
    e_div, e_g = R.binary_kl(_up(Y), _up(d))
    _check_div(div, dY, e_div, e_g, dtype, shape[0], "binary KL")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DIV_SHAPES)
def test_poisson_kernels(rng, dtype, shape):
    Y = rng.uniform(0.05, 4.0, size=shape).astype(dtype)
    d = rng.poisson(2.0, size=shape).astype(dtype)
    d.reshape(-1)[:1] = 0  # 0 log 0
    div, dY = _run_div(KDiv.poisson, Y, d, dtype)
    e_div, e_g = R.poisson(_up(Y), _up(d))
    _check_div(div, dY, e_div, e_g, dtype, shape[0], "Poisson")
    z = _data(rng, shape, dtype, scale=2.0)
    y = np.empty_like(z)
    _scalar_forward(KA.EXP, 0.0, z.reshape(-1), y.reshape(-1))
    T = shape[0]
    div, dz = np.full(T, np.nan), np.full(shape, np.nan, dtype)
    KDiv.exp_poisson(z, y, d, div, dz, 1.0 / T)
    e_div, e_g = R.exp_poisson_from_logits(_up(z), _up(d))
    scale = np.exp(_up(z)) + _up(d) * (1 + np.abs(_up(z)))
    R.assert_close(div, e_div, dtype, 1 + scale.sum(axis=1), what="div")
    R.assert_close(dz, e_g / T, dtype, (np.exp(_up(z)) + _up(d)) / T, what="dz")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 5, 33])
def test_weighted_mean_kernels(rng, dtype, T):
    w = rng.uniform(0, 3, size=T)
    w[0] = 0.0  # a row that does not count
    div, g = rng.uniform(0, 2, size=T), rng.normal(size=(T, 4))
    if T > 1:
        assert KDiv.total(w) == pytest.approx(math.fsum(w), rel=1e-15)
        scale = KDiv.weight_scale(KDiv.total(w))
        dY = (g * scale).astype(dtype)
        value = KDiv.weighted_mean(div, dY, w, scale)
        e_value, e_g = R.weighted_loss(div, g, w)
        assert value == pytest.approx(e_value, rel=1e-14)
        R.assert_close(dY, e_g, dtype, what="weighted rows")
    zero = np.zeros(T)
    assert KDiv.weight_scale(KDiv.total(zero)) == 0.0  # a batch of weight 0 adds nothing
    dY = g.astype(dtype)
    assert KDiv.weighted_mean(div, dY, zero, 0.0) == 0.0 and not dY.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DIV_SHAPES)
def test_fused_softmax_kl_kernels(rng, dtype, shape):
    z = _data(rng, shape, dtype, scale=3.0)
    y = np.empty_like(z)
    KV.softmax_forward(z, y)
    T = shape[0]
    d = _probs(rng, shape, dtype)
    div, dz = np.full(T, np.nan), np.full(shape, np.nan, dtype)
    KDiv.softmax_kl_probs(z, y, d, div, dz, 1.0 / T)
    e_div, e_g = R.softmax_kl_from_logits(_up(z), _up(d))
    R.assert_close(div, e_div, dtype, 1 + np.abs(e_div) + np.abs(_up(z)).max(axis=1), what="div")
    R.assert_close(dz, e_g / T, dtype, (R.softmax_forward(_up(z)) + _up(d)) / T, what="dz")
    labels = rng.integers(0, shape[1], size=T).astype(np.int64)
    KDiv.softmax_kl_labels(z, y, labels, div, dz, 1.0 / T)
    e_div, e_g = R.softmax_kl_from_logits(_up(z), R.one_hot(labels, shape[1]))
    R.assert_close(div, e_div, dtype, 1 + np.abs(e_div) + np.abs(_up(z)).max(axis=1), what="div")
    R.assert_close(dz, e_g / T, dtype, (R.softmax_forward(_up(z)) + 1) / T, what="dz")


def _softmax(z, y):
    KV.softmax_forward(z, y)


def _sigmoid(z, y):
    _scalar_forward(KA.SIGMOID, 0.0, z.reshape(-1), y.reshape(-1))


def _exp(z, y):
    _scalar_forward(KA.EXP, 0.0, z.reshape(-1), y.reshape(-1))


FUSED = {  # fused kernel: (its activation's forward, its target)
    "softmax_kl_probs": (_softmax, lambda rng, shape, dtype: _probs(rng, shape, dtype)),
    "softmax_kl_labels": (_softmax, lambda rng, shape, dtype:
                          rng.integers(0, shape[1], size=shape[0]).astype(np.int64)),
    "sigmoid_binary_kl": (_sigmoid, lambda rng, shape, dtype:
                          rng.uniform(0, 1, size=shape).astype(dtype)),
    "exp_poisson": (_exp, lambda rng, shape, dtype: rng.poisson(2.0, size=shape).astype(dtype)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DIV_SHAPES)
@pytest.mark.parametrize("kernel", sorted(FUSED))
def test_fused_kernels_write_the_activations_forward(rng, dtype, shape, kernel):
    """Each fused kernel writes its activation's output y from z in the bits of that
    activation's forward (a training step leaves the forward out), and div and dz as when given
    that y (as the per-node path gives it), whatever y held."""
    forward, make_target = FUSED[kernel]
    z = _data(rng, shape, dtype, scale=3.0)
    if kernel.startswith("softmax"):
        z[0, 0] = np.inf  # a row whose max is inf: a NaN softmax, log-sum-exp the max
    y = np.empty_like(z)
    forward(z, y)
    target = make_target(rng, shape, dtype)
    outs = []
    for y_in in (y.copy(), np.full_like(z, np.nan), np.zeros_like(z)):
        div, dz = np.full(shape[0], np.nan), np.full(shape, np.nan, dtype)
        getattr(KDiv, kernel)(z, y_in, target, div, dz, 0.25)
        assert y_in.tobytes() == y.tobytes()
        outs.append((div.tobytes(), dz.tobytes()))
    assert outs[1] == outs[0] and outs[2] == outs[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DIV_SHAPES)
def test_fused_sigmoid_binary_kl_kernel(rng, dtype, shape):
    z = _data(rng, shape, dtype, scale=3.0)
    y = np.empty_like(z)
    _scalar_forward(KA.SIGMOID, 0.0, z.reshape(-1), y.reshape(-1))
    d = rng.uniform(0, 1, size=shape).astype(dtype)
    d.reshape(-1)[:2] = [1, 0][: d.size]
    T = shape[0]
    div, dz = np.full(T, np.nan), np.full(shape, np.nan, dtype)
    KDiv.sigmoid_binary_kl(z, y, d, div, dz, 1.0 / T)
    e_div, e_g = R.sigmoid_binary_kl_from_logits(_up(z), _up(d))
    R.assert_close(div, e_div, dtype, 1 + np.abs(_up(z)).sum(axis=1), what="div")
    R.assert_close(dz, e_g / T, dtype, 1.0 / T, what="dz")


def test_fused_kernels_at_logits_of_1000():
    """The stable forms give the exact loss where softmax/sigmoid saturate to 0 and 1."""
    z = np.array([[1000.0, -1000.0]])
    y = np.empty_like(z)
    KV.softmax_forward(z, y)
    div, dz = np.empty(1), np.empty_like(z)
    KDiv.softmax_kl_labels(z, y, np.array([1], np.int64), div, dz, 1.0)
    assert div[0] == 2000.0
    np.testing.assert_array_equal(dz, [[1.0, -1.0]])
    KDiv.softmax_kl_probs(z, y, np.array([[0.5, 0.5]]), div, dz, 1.0)
    R.assert_close(div[0], 1000.0 + math.log(0.5))
    np.testing.assert_array_equal(dz, [[0.5, -0.5]])
    ys = np.empty_like(z)
    _scalar_forward(KA.SIGMOID, 0.0, z.reshape(-1), ys.reshape(-1))
    KDiv.sigmoid_binary_kl(z, ys, np.array([[0.0, 1.0]]), div, dz, 1.0)
    assert div[0] == 2000.0
    np.testing.assert_array_equal(dz, [[1.0, -1.0]])


def test_divergence_leaves():
    div = np.array([0.5, 1e-3, 2.25, 0.0, 7.0])
    R.assert_close(KDiv.mean(div), math.fsum(div) / 5)
    assert KDiv.mean(np.array([3.0])) == 3.0
    assert KDiv.xlogx(0.0) == 0.0 and KDiv.xlogx(1.0) == 0.0
    R.assert_close(KDiv.xlogx(0.25), 0.25 * math.log(0.25))
    def lse(z):  # log-sum-exp, with the softmax it writes checked against the reference
        z = np.array(z, np.float64)
        y = np.full_like(z, np.nan)
        out = KDiv._softmax_lse(z, y)
        if np.isfinite(z.max()):
            R.assert_close(y, R.softmax_forward(z[None])[0], what="softmax_row")
        return out
    R.assert_close(lse([1000.0, -1000.0]), 1000.0)
    R.assert_close(lse([0.0, 0.0, 0.0]), math.log(3))
    R.assert_close(lse([0.5, -1.0, 2.0]), R.logsumexp([0.5, -1.0, 2.0]))
    assert lse([-np.inf, -np.inf]) == -np.inf
    assert lse([np.inf, 1.0]) == np.inf
    m, s = KV.softmax_row(np.array([0.5, 2.0]), np.empty(2))
    assert m == 2.0
    R.assert_close(s, 1 + math.exp(-1.5))


# ==============================================================================================
# serial twins: the same source compiled without ``parallel`` gives the same bits
# ==============================================================================================
def _twin_args(name, rng, dtype):
    """(module, arguments, positions of the outputs) for a call of kernel ``name``."""
    T, D, M = 5, 7, 3
    f = lambda *shape: _data(rng, shape, dtype)  # noqa: E731
    e = lambda *shape: np.full(shape, np.nan, dtype)  # noqa: E731
    P = _probs(rng, (T, D), dtype)
    labels = rng.integers(0, D, size=T).astype(np.int64)
    subsets = [[0, 2], [1], [6, 0, 1]]
    indptr, indices = _csr(subsets)
    arg = np.zeros((T, M), np.int64)
    KP.max_forward(f(T, D), indptr, indices, e(T, M), arg)
    return {
        # 300 rows: two BLAS blocks of rows (192 + 108), 70 rows 64 + 6; 5: per-row GEMVs
        "dense_forward_blas": (KD, (f(300, D), f(M, D), f(M), e(300, M), e(M, 300)), (3,)),
        "dense_forward_gemv": (KD, (f(T, D), f(M, D), f(M), e(T, M), e(M, T)), (3,)),
        "dense_backward_params_blas": (KD, (f(70, M), f(70, D), e(M, D), e(M), e(M, 70)), (2, 3)),
        "dense_backward_input_blas": (KD, (f(70, M), f(M, D), e(70, D)), (2,)),
        "dense_backward_input_gemv": (KD, (f(T, M), f(M, D), e(T, D)), (2,)),
        # 64 rows in one block, 130 units in two (``by_units``): dy summed from two parts
        "dense_backward_input_parts": (KD, (f(64, 130), f(130, 300), e(64, 300),
                                            e(KD.input_scratch(64, 130, 300))), (2,)),
        "scalar_forward": (_ACTIVATIONS, (KA.GELU, 0.0, f(T * D), e(T * D)), (3,)),
        "scalar_backward": (_ACTIVATIONS, (KA.RELU, 1.0, f(T * D), f(T * D), f(T * D), e(T * D)), (5,)),
        "softmax_forward": (KV, (f(T, D), e(T, D)), (1,)),
        "softmax_vjp": (KV, (P, f(T, D), e(T, D)), (2,)),
        "elementwise_product_forward": (KP, (f(D), f(D), e(D)), (2,)),
        "elementwise_product_backward": (KP, (f(D), f(D), f(D), e(D), e(D)), (3, 4)),
        "pair_product_forward": (KP, (f(T, 2 * M), e(T, M)), (1,)),
        "pair_product_backward": (KP, (f(T, 2 * M), f(T, M), e(T, 2 * M)), (2,)),
        "power_product_forward": (KP, (f(T, D), np.ones((D, M), dtype), e(T, M)), (2,)),
        "power_product_backward": (KP, (f(T, D), np.ones((D, M), dtype), f(T, M), e(T, D),
                                        e(T, D)), (3,)),
        "max_forward": (KP, (f(T, D), indptr, indices, e(T, M), np.zeros((T, M), np.int64)),
                        (3, 4)),
        "max_backward": (KP, (f(T, M), arg, e(T, D)), (2,)),
        "l2": (KDiv, (f(T, D), f(T, D), np.empty(T), e(T, D), 0.2), (2, 3)),
        "kl_probs": (KDiv, (P, _probs(rng, (T, D), dtype), np.empty(T), e(T, D), 0.2), (2, 3)),
        "kl_labels": (KDiv, (P, labels, np.empty(T), e(T, D), 0.2), (2, 3)),
        "binary_kl": (KDiv, (P, P[::-1].copy(), np.empty(T), e(T, D), 0.2), (2, 3)),
        "softmax_kl_probs": (KDiv, (f(T, D), e(T, D), P, np.empty(T), e(T, D), 0.2),
                             (1, 3, 4)),
        "softmax_kl_labels": (KDiv, (f(T, D), e(T, D), labels, np.empty(T), e(T, D), 0.2),
                              (1, 3, 4)),
        "sigmoid_binary_kl": (KDiv, (f(T, D), e(T, D), P[::-1].copy(), np.empty(T), e(T, D),
                                     0.2), (1, 3, 4)),
        "poisson": (KDiv, (P, P[::-1].copy(), np.empty(T), e(T, D), 0.2), (2, 3)),
        "exp_poisson": (KDiv, (f(T, D), e(T, D), P[::-1].copy(), np.empty(T), e(T, D), 0.2),
                        (1, 3, 4)),
        "dropout": (KDr, (f(T, D), e(T, D), 7, 3, 0.4), (1,)),
    }[name]


TWINS = ["dense_forward_blas", "dense_forward_gemv", "dense_backward_params_blas",
         "dense_backward_input_blas", "dense_backward_input_gemv", "dense_backward_input_parts",
         "scalar_forward",
         "scalar_backward", "softmax_forward", "softmax_vjp", "elementwise_product_forward",
         "elementwise_product_backward", "pair_product_forward", "pair_product_backward",
         "power_product_forward", "power_product_backward", "max_forward", "max_backward", "l2",
         "kl_probs", "kl_labels", "binary_kl", "softmax_kl_probs", "softmax_kl_labels",
         "sigmoid_binary_kl", "poisson", "exp_poisson", "dropout"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TWINS)
def test_serial_twin_is_bit_identical(rng, dtype, name):
    mod, args, outs = _twin_args(name, rng, dtype)
    twin = getattr(mod, name + "_serial", None)
    if twin is None:
        pytest.skip(f"{name} has no serial twin")
    copy = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    getattr(mod, name)(*args)
    twin(*copy)
    for k in outs:
        assert args[k].tobytes() == copy[k].tobytes(), f"{name}: output {k} differs"


def _correct_reference(Y, labels=None, d=None):
    """Rows classified right, written out: first index of the largest output (ties to the
    first), against the label, the largest target, or for one output y >= 0.5 vs d >= 0.5."""
    n = 0
    for t in range(Y.shape[0]):
        if Y.shape[1] == 1 and labels is None:
            n += (Y[t, 0] >= 0.5) == (d[t, 0] >= 0.5)
            continue
        best = max(range(Y.shape[1]), key=lambda i: (Y[t, i], -i))
        want = labels[t] if labels is not None else max(range(d.shape[1]),
                                                          key=lambda i: (d[t, i], -i))
        n += best == want
    return n


@pytest.mark.parametrize("dtype", DTYPES)
def test_correct_counts_rows_classified_right(rng, dtype):
    Y = rng.random((40, 4)).astype(dtype)
    Y[:5] = 0.25  # all tied: argmax is the first index
    labels = rng.integers(0, 4, 40)
    labels[:3] = 0
    d = rng.dirichlet(np.ones(4), 40).astype(dtype)
    no_labels, no_d = np.zeros(0, np.int64), Y[:0]
    assert KDiv.correct(Y, labels, no_d) == _correct_reference(Y, labels=labels)
    assert KDiv.correct(Y, no_labels, d) == _correct_reference(Y, d=d)
    y1 = np.array([[0.5], [0.49], [0.9], [0.1]], dtype)
    d1 = np.array([[1.0], [1.0], [0.0], [0.0]], dtype)
    assert KDiv.correct(y1, no_labels, d1) == _correct_reference(y1, d=d1) == 2
    assert KDiv.correct(Y[:5], labels[:5], no_d) == 3  # ties go to index 0


def test_unit_block_halves_the_units_in_multiples_of_64():
    assert [KD.unit_block(n) for n in (1, 64, 128, 129, 256, 1000, 4096, 10000)] == \
        [64, 64, 64, 128, 128, 512, 2048, 2048]


def test_row_block_halves_the_rows_in_multiples_of_64():
    assert [KD.row_block(T) for T in (1, 64, 128, 129, 200, 300, 512, 4096)] == \
        [64, 64, 64, 128, 128, 192, 256, 256]


# ==============================================================================================
# optim: the finite checks that gate every update, the one-row SGD update, and the serial twins
# of the updates (the updates themselves are checked against the reference in
# tests/test_training.py)
# ==============================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["all_finite", "all_finite_serial"])
@pytest.mark.parametrize("n", [0, 1, 5, KO.FINITE_BLOCK - 1, KO.FINITE_BLOCK,
                               3 * KO.FINITE_BLOCK + 7])
def test_all_finite_finds_every_nan_and_inf(rng, dtype, kernel, n):
    check = getattr(KO, kernel)
    ok = np.zeros(max(1, -(-n // KO.FINITE_BLOCK)), np.bool_)
    a = _data(rng, n, dtype, scale=1e30)
    if n:
        a[0], a[-1] = np.finfo(dtype).max, -np.finfo(dtype).max  # the largest finite values
    assert check(a, ok)
    for pos in sorted({0, n // 2, max(0, n - 1), min(n - 1, KO.FINITE_BLOCK)}) if n else ():
        for bad in (np.nan, -np.nan, np.inf, -np.inf):
            b = a.copy()
            b[pos] = bad
            assert not check(b, ok), (pos, bad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_outer_finite_equals_numpys_test_of_the_outer_product(dtype):
    info = np.finfo(dtype)
    values = np.array([0.0, -0.0, 1.0, -3.0, info.tiny, info.max, -info.max, np.sqrt(info.max),
                       2 * np.sqrt(info.max), np.nan, np.inf, -np.inf], dtype)
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(400):
        a = rng.choice(values, size=rng.integers(1, 5)) * rng.uniform(0.5, 1, 1).astype(dtype)
        b = rng.choice(values, size=rng.integers(1, 5))
        with np.errstate(all="ignore"):
            want = bool(np.isfinite(np.outer(a, b)).all())
        assert KO.outer_finite(a, b) == want, (a, b)
        seen.add(want)
    assert seen == {True, False}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_one_row_sgd_equals_sgd_on_the_outer_product(dtype, weight_decay):
    """sgd_rank1 steps W exactly as the reference SGD on dW = 0 + dz y^T, as the dense kernels
    compute it for one row (zeros of either sign included)."""
    rng = np.random.default_rng(6)
    W = rng.normal(size=(7, 33)).astype(dtype)
    W[0, :3] = [0.0, -0.0, -0.0]
    dz, y = rng.normal(size=7).astype(dtype), rng.normal(size=33).astype(dtype)
    dz[1], y[[0, 1]] = -0.0, [0.0, -0.0]
    want = sgd(W.copy(), dtype(0) + np.outer(dz, y), {}, lr=dtype(0.1),
               weight_decay=dtype(weight_decay))
    KO.sgd_rank1(W, dz, y, 0.1, weight_decay)
    assert want.dtype == dtype and W.tobytes() == want.tobytes()

@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_serial_twins_are_bit_identical(rng, dtype):
    n = 1000
    for name, hyper in [("sgd_step", (0.1, 0.9, True, 0.01)), ("sgd_step", (0.1, 0.0, False, 0.0)),
                        ("adam_step", (0.01, 0.9, 0.999, 1e-8, 0.01, 3)),
                        ("rmsprop_step", (0.01, 0.9, 1e-8, 0.01, 0.5, True))]:
        p, g, s1, s2, s3 = (_data(rng, n, dtype) for _ in range(5))
        s2 = np.abs(s2)
        args = {"adam_step": (p, g, s1, s2), "rmsprop_step": (p, g, s2, s1, 0.01 * s3)}.get(
            name, (p, g, s1))
        copies = [a.copy() for a in args]
        getattr(KO, name)(*args, *hyper)
        getattr(KO, name + "_serial")(*copies, *hyper)
        for a, c in zip(args, copies):
            assert a.tobytes() == c.tobytes(), name
    g = _data(rng, 3 * KO.FINITE_BLOCK + 5, dtype)
    g2, partial = g.copy(), np.empty(4)
    assert KO.clip_by_norm(g, 0.5, partial) == KO.clip_by_norm_serial(g2, 0.5, partial.copy())
    assert g.tobytes() == g2.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_sigmoid_binary_kl_one_output_equals_the_general_loop(rng, dtype):
    """One output runs a loop of its own (it vectorises); the same bits as the loop over
    outputs, which a column of a two-output problem runs."""
    z = _data(rng, (37, 1), dtype, scale=3.0)
    d = (rng.uniform(0, 1, size=(37, 1)) > 0.5).astype(dtype)
    d[:3, 0] = [0.25, 1.0, 0.0]
    y = np.empty_like(z)
    _scalar_forward(KA.SIGMOID, 0.0, z.reshape(-1), y.reshape(-1))
    one = np.empty(37), np.empty_like(z)
    KDiv.sigmoid_binary_kl_serial(z, y, d, one[0], one[1], 0.5)
    # the same column next to one whose terms are exactly 0 (z = 1000, d = 1: softplus(-1000)
    # and both x log x are 0), so the loop over outputs sums the same term to the same bits
    z2 = np.hstack([z, np.full_like(z, 1000)])
    y2, d2 = np.hstack([y, np.ones_like(y)]), np.hstack([d, np.ones_like(d)])
    two = np.empty(37), np.empty_like(z2)
    KDiv.sigmoid_binary_kl_serial(z2, y2, d2, two[0], two[1], 0.5)
    assert one[0].tobytes() == two[0].tobytes()
    assert one[1][:, 0].tobytes() == two[1][:, 0].copy().tobytes()
    twin = np.empty(37), np.empty_like(z)
    KDiv.sigmoid_binary_kl(z, y, d, twin[0], twin[1], 0.5)
    assert one[0].tobytes() == twin[0].tobytes() and one[1].tobytes() == twin[1].tobytes()
