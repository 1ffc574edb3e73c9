"""Affine layer z = y W^T + b and its backward pass (seed notation), three ways.

- Loop kernels (``dense_forward``, ``dense_backward_params``, ``dense_backward_input``), for
  tiny products where a BLAS call costs more than the work: every output element is a running
  sum in a fixed order of its terms, z[t, j] = b[j] + y[t, 0] W[0, j]^T + y[t, 1] W[1, j]^T + ...,
  computed as axpy over the contiguous output row, which LLVM vectorises without reordering any
  sum. They run on the calling thread.
- BLAS kernels (``*_blas``, and ``*_gemv`` for fewer than FEW rows): one single-threaded GEMM
  or GEMV per fixed block of outputs (``row_block(T)`` rows, or units: ``unit_block(n_out)``
  for a forward of one block of rows and for dW, ``UNIT_BLOCK`` for a few rows; dy of one
  block of rows is summed from parts over the same blocks of units), blocks spread over
  numba's threads. OpenBLAS gives
  different bits with different thread counts (measured on 7 of 22 shapes), so it runs on one
  thread (see ``_config``) and the blocks, fixed by the sizes alone, carry the parallelism.
- ``dense_mode`` picks one from the sizes alone, so the per-node path and the engine always pick
  the same kernel and give the same numbers. Measured here, BLAS wins from about 512
  multiply-adds up (2-10x at most sizes, 4x for one row of 784x256); the loops only for tiny
  products.
"""

from numba import prange

# Copies and sums are written as loops over elements: numba's slice assignment between arrays
# (``z[t, :] += b``) compiles its broadcasting and error messages into every kernel, 3.5-4 s of
# compiling where the loop takes 0.2 s (measured), for the same arithmetic.

from .._config import ARITH, GLUE, PARALLEL, SERIAL, dot, njit, serial_twin

LOOP_MODE, BLAS_SERIAL_MODE, BLAS_MODE = 0, 1, 2
BLAS_MIN_WORK = 1 << 9  # multiply-adds from which a BLAS call beats the loop kernels (measured:
# from 1x16x16 forward, 1x10x64 backward; 1x256x10 forward took 7.1 us in loops, 0.9 in BLAS)
PAR_MIN_WORK = 1 << 20  # multiply-adds from which spreading blocks over threads pays. Measured
# on a 2-core Zen 4 EPYC (2026-12-02, float32, best of 15 x 2): 1-2M multiply-adds 1.1-2.8x
# faster on two threads (32x256x128, 64x128x128, 16x784x128, 64x256x128, 128x128x128; forward,
# dW and dy), W3a's step 15% faster (its 64x256x128 layer: forward 62 -> 34 us, backward 128 ->
# 80). It was 1 << 23, from a 2-core Zen3 (2026-12-02: 256x256x128 1.5-2x faster on two threads,
# 64x128x256 1.1x slower) and a Xeon (2026-12-01: 256x128x256 1.4x faster on one thread)
# (docs/DESIGN-NOTES.md). Only which kernel runs depends on it, never a result's bits beyond
# the split of ``by_units``, which is fixed by the sizes like every other split.
ROWS, COLS = 8, 512  # loop kernels' output block: 8 rows share each loaded row of W^T
UNIT_BLOCK = 64  # BLAS kernels' block of units of z for fewer than FEW rows
FEW = 8


@njit(**GLUE)
def row_block(T):
    """Rows per BLAS block: half the rows, rounded up to a multiple of 64, from 64 to 256 (two
    blocks for two threads where the batch allows; 256-row GEMMs ran W4 at 174 GFLOP/s against
    141 for 64-row ones). It depends on T alone, so results do not depend on the thread count."""
    return min(256, max(64, -(-(-(-T // 2)) // 64) * 64))


@njit(**SERIAL)
def dense_mode(T, n_out, n_in):
    """The kernels for a (T, n_in) x (n_in, n_out) product: loops, or BLAS blocks on one thread
    or spread over the threads."""
    work = T * n_out * n_in
    if work < BLAS_MIN_WORK:
        return LOOP_MODE
    unit_blocks = -(-n_out // UNIT_BLOCK)
    blocks = max(-(-T // row_block(T)) if T >= FEW else T * unit_blocks, unit_blocks)
    return BLAS_MODE if work >= PAR_MIN_WORK and blocks >= 2 else BLAS_SERIAL_MODE


@njit(**ARITH)
def _axpy(alpha, x, out):
    """out += alpha * x."""
    for i in range(x.shape[0]):
        out[i] += alpha * x[i]


@njit(**ARITH)
def _affine_block(y, WT, b, z, t0, t1, j0, j1):
    """z[t0:t1, j0:j1] = b[j0:j1] + sum_i y[t, i] WT[i, j0:j1], i in increasing order."""
    for t in range(t0, t1):
        for j in range(j0, j1):
            z[t, j] = b[j]
    for i in range(y.shape[1]):
        w = WT[i, j0:j1]
        for t in range(t0, t1):
            _axpy(y[t, i], w, z[t, j0:j1])


@njit(**ARITH)
def dense_forward(y, W, b, z, WT):
    """z[t, j] = b[j] + sum_i W[j, i] y[t, i], i in increasing order; WT receives W^T."""
    for i in range(W.shape[1]):
        for j in range(W.shape[0]):
            WT[i, j] = W[j, i]
    nt, nj = -(-y.shape[0] // ROWS), -(-W.shape[0] // COLS)
    for blk in range(nt * nj):
        t0, j0 = (blk // nj) * ROWS, (blk % nj) * COLS
        _affine_block(y, WT, b, z, t0, min(t0 + ROWS, y.shape[0]), j0, min(j0 + COLS, W.shape[0]))


@njit(**ARITH)
def dense_backward_params(dz, y, dW, db):
    """dW[j, i] = sum_t dz[t, j] y[t, i] and db[j] = sum_t dz[t, j], t in increasing order."""
    for j in range(dW.shape[0]):
        dW[j, :] = 0
        s = dz.dtype.type(0)
        for t in range(dz.shape[0]):
            _axpy(dz[t, j], y[t], dW[j])
            s += dz[t, j]
        db[j] = s


@njit(**ARITH)
def dense_backward_input(dz, W, dy):
    """dy[t, i] = sum_j dz[t, j] W[j, i], j in increasing order."""
    nc = -(-W.shape[1] // COLS)
    for blk in range(dz.shape[0] * nc):
        t, i0 = blk // nc, (blk % nc) * COLS
        i1 = min(i0 + COLS, W.shape[1])
        dy[t, i0:i1] = 0
        for j in range(W.shape[0]):
            _axpy(dz[t, j], W[j, i0:i1], dy[t, i0:i1])


@njit(**GLUE)
def by_units(T, n_out, n_in):
    """Whether a (T, n_in) x (n_in, n_out) layer's forward (``dense_forward_blas``) and dy
    (``dense_backward_input_parts``) are split by blocks of ``unit_block(n_out)`` units: where
    the rows make one block but the units two or more, and the work is enough for the threads
    (sizes alone, as ``dense_mode``; such a product is always in ``BLAS_MODE``)."""
    return T >= FEW and -(-T // row_block(T)) < 2 and -(-n_out // unit_block(n_out)) >= 2 \
        and T * n_out * n_in >= PAR_MIN_WORK


@njit(**PARALLEL)
def dense_forward_blas(y, W, b, z, S):
    """z = y W^T + b by GEMM on blocks of ``row_block(T)`` rows, or (``by_units``) on
    blocks of ``unit_block(n_out)`` units, each into its own part of the scratch S (n_out x T
    elements), then adding b while writing it into z. Each block owns its part of z (one GEMM
    call site for both splits: each call site costs 0.1-0.2 s of compiling). For FEW
    rows or more (``dense_forward_gemv`` below; either is right for any T, the choice picks
    the faster and fixes the bits)."""
    T, n_out = z.shape
    units = by_units(T, n_out, y.shape[1])
    rb, ub = (T, unit_block(n_out)) if units else (row_block(T), n_out)
    nr, nu = -(-T // rb), -(-n_out // ub)
    flat = S.reshape(S.size)
    for k in prange(nr * nu):
        lo, hi = (k // nu) * rb, min(T, (k // nu + 1) * rb)
        j0, j1 = (k % nu) * ub, min(n_out, (k % nu + 1) * ub)
        out = flat[j0 * T:j1 * T].reshape((T, j1 - j0)) if units else z[lo:hi]
        dot(y[lo:hi], W[j0:j1].T, out)
        if units:
            for t in range(T):
                for j in range(j0, j1):
                    z[t, j] = out[t, j - j0] + b[j]
        else:  # in place (reading ``out`` here, an alias of z, would not vectorise)
            for t in range(lo, hi):
                for j in range(n_out):
                    z[t, j] += b[j]


@njit(**PARALLEL)
def dense_forward_gemv(y, W, b, z, S):
    """z = y W^T + b by GEMV on blocks of UNIT_BLOCK units of each row, for fewer than FEW
    rows (S unused: the signature of ``dense_forward_blas``). A kernel of its own, chosen by
    the rows in Python, so that batched networks do not compile it (as one kernel with
    ``dense_forward_blas`` it made that kernel's compile 0.2-0.5 s longer serially and 0.8-1.1 s
    in parallel, measured on a Zen 4)."""
    T, n_out = z.shape
    nj = -(-n_out // UNIT_BLOCK)
    for k in prange(T * nj):
        t, j0 = k // nj, (k % nj) * UNIT_BLOCK
        j1 = min(n_out, j0 + UNIT_BLOCK)
        dot(W[j0:j1], y[t], z[t, j0:j1])
        for j in range(j0, j1):
            z[t, j] += b[j]


@njit(**GLUE)
def unit_block(n_out):
    """Units per GEMM block of dW = dz^T y: half the units rounded up to a multiple of 64, from
    64 to 2048 (two blocks for two threads where the units allow). Every block packs all of y
    once: 4096 units x 512 rows ran at 54 GFLOP/s in blocks of 64 and 145 in blocks of 2048.
    It depends on n_out alone, so results do not depend on the thread count."""
    return min(2048, max(64, -(-(-(-n_out // 2)) // 64) * 64))


@njit(**PARALLEL)
def dense_backward_params_blas(dz, y, dW, db, dzT):
    """dW = dz^T y by GEMM on blocks of ``unit_block(n_out)`` units (rows of dW), from
    dzT = dz^T; db[j] = sum_t dz[t, j] in increasing t. Each block writes its own rows of
    dzT, db and dW, in one parallel loop: two (the copy over units, then the GEMMs) took
    1.85 s to compile against 1.48 (float32, a fresh process, Zen 4; numba compiles each
    parallel loop as a function of its own), and ran no faster."""
    n_out = dW.shape[0]
    ub = unit_block(n_out)
    for k in prange(-(-n_out // ub)):
        j0, j1 = k * ub, min(n_out, (k + 1) * ub)
        for j in range(j0, j1):
            s = dz.dtype.type(0)
            for t in range(dz.shape[0]):
                dzT[j, t] = dz[t, j]
                s += dz[t, j]
            db[j] = s
        dot(dzT[j0:j1], y, dW[j0:j1])


@njit(**GLUE)
def input_scratch(T, n_out, n_in):
    """Elements of scratch ``dense_backward_input_parts`` needs for any batch of up to T rows
    (at least one). Only batches of one block of rows, up to ``row_block(1)``, use it, and
    their need grows with their rows."""
    t = min(T, row_block(1))
    if not by_units(t, n_out, n_in):
        return 1
    return t * n_out + (-(-n_out // unit_block(n_out)) - 1) * t * n_in


@njit(**PARALLEL)
def dense_backward_input_blas(dz, W, dy):
    """dy = dz W by GEMM on blocks of ``row_block(T)`` rows, for FEW rows or more (as
    ``dense_forward_blas``)."""
    T = dz.shape[0]
    rb = row_block(T)
    for k in prange(-(-T // rb)):
        lo, hi = k * rb, min(T, (k + 1) * rb)
        dot(dz[lo:hi], W, dy[lo:hi])


@njit(**PARALLEL)
def dense_backward_input_gemv(dz, W, dy):
    """dy = dz W by GEMV per row, for fewer than FEW rows (as ``dense_forward_gemv``)."""
    for t in prange(dz.shape[0]):
        dot(dz[t], W, dy[t])


@njit(**PARALLEL)
def dense_backward_input_parts(dz, W, dy, S):
    """dy = dz W where ``by_units``: the sum, in order, of the parts dz[:, J] W[J] over
    blocks J of ``unit_block(n_out)`` units, over the threads. Each block copies its columns of
    dz into the scratch S (at least ``input_scratch`` elements) and multiplies them into dy
    (the first block) or into its own part of S, added to dy after. A kernel of its own, chosen
    by the sizes in Python, so that networks without such layers do not compile it (folded
    into ``dense_backward_input_blas`` it made that kernel's compile 0.5-1.3 s longer)."""
    T = dz.shape[0]
    n_out, n_in = W.shape
    ub = unit_block(n_out)
    nu = -(-n_out // ub)
    for k in prange(nu):
        j0, j1 = k * ub, min(n_out, (k + 1) * ub)
        a = S[T * j0:T * j1].reshape((T, j1 - j0))
        for t in range(T):
            for j in range(j0, j1):
                a[t, j - j0] = dz[t, j]
        out = dy if k == 0 else \
            S[T * n_out + (k - 1) * T * n_in:T * n_out + k * T * n_in].reshape((T, n_in))
        dot(a, W[j0:j1], out)
    for k in range(1, nu):  # on the calling thread: T x n_in additions, a few % of the GEMMs
        p = S[T * n_out + (k - 1) * T * n_in:]
        for t in range(T):
            for i in range(n_in):
                dy[t, i] += p[t * n_in + i]


# The same kernels run serially, for ops too small to split, and while a parallel kernel is
# compiled in the background (see _config.serial_twin and _config.runnable).
dense_forward_blas_serial = serial_twin(dense_forward_blas)
dense_forward_gemv_serial = serial_twin(dense_forward_gemv)
dense_backward_params_blas_serial = serial_twin(dense_backward_params_blas)
dense_backward_input_blas_serial = serial_twin(dense_backward_input_blas)
dense_backward_input_gemv_serial = serial_twin(dense_backward_input_gemv)
dense_backward_input_parts_serial = serial_twin(dense_backward_input_parts)

