"""The one place for numba flags, the numba cache location and the thread count.

Every ``@njit`` in :mod:`fastbp.kernels` takes its options from here (a test checks it):

- ``SERIAL``: cached, no Python objects, NumPy error model (1/0 gives inf, not an exception),
  and ``fastmath=False`` stated explicitly: numba lets a callee inherit any flag it leaves
  unset from the first caller that compiles it, so an ``ARITH`` caller would otherwise compile
  a strict helper with reassociation (which breaks, e.g., exp's rounding trick). No C-function
  wrapper: numba makes one for every function, for passing it as a first-class function value,
  which fastbp never does (the engine's op kernels are ``cfunc``s of their own); leaving them
  out cut a first fit's compiling by 1.6 s of 16.
- ``INLINE``: ``SERIAL`` plus LLVM ``alwaysinline``, for the small scalar functions of
  :mod:`fastbp.kernels.fastmath` that sit in vectorised loops (a loop with a call in it does
  not vectorise; LLVM inlining keeps the callee's own strict floating-point flags, where
  numba's ``inline='always'`` would recompile it with the caller's: measured, it also made
  compiling slower, 19.5 s against 16). They keep their CPython wrapper: without it a call
  from Python crashes the process instead of raising.
- ``GLUE``: ``SERIAL`` inlined in numba's own IR, for the engine's few-line helpers that make
  arrays from addresses: they are typed inside each caller and never compiled on their own
  (called with constant arguments, each value was a specialisation of its own: 0.12-0.2 s
  of compiling each, ten of them in a first fit). No floating-point arithmetic in them.
- ``PARALLEL``: the same with ``parallel=True``; kernels use ``prange`` over the index that owns
  each write, so results do not depend on the number of threads.
- ``OP``: the engine's op functions: ``njit(**OP)`` only marks them; ``op_kernel`` compiles
  each as a C function for one dtype and leaf kernel, with ``SERIAL``'s options.
- ``ARITH``: for pure arithmetic leaves (dot products, axpy): FMA contraction only. No
  reassociation: with it LLVM may sum the same dot product in a different order in each
  context it compiles it in (measured: a kernel and its serial twin disagreed in the last
  bit), so results would depend on the compiler rather than the source. Kernels vectorise
  across independent outputs instead (axpy over a contiguous row). NaN and inf propagate.
- ``INLINE_ARITH``: ``ARITH`` plus LLVM ``alwaysinline``: the polynomials of
  :mod:`fastbp.kernels.fastmath`, whose Horner steps fuse into FMAs inside their strict
  callers. The transcendentals are bound by their chains' latency, not by the number of
  instructions: the float64 sigmoid took 6.8 ns per element with a multiply and an add per
  step, 4.8-5.5 with FMAs (float32: 3.5 -> 2.7), and its accuracy bounds still hold.

Compiled kernels are cached in ``CACHE_DIR`` (see ``_cache_dir``), and ``serial_twin`` makes
the one-thread copy of a parallel kernel that the engine uses for small ops.
"""

import atexit
import contextlib
import ctypes
import gc
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from importlib import metadata

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import caching, cgutils, sigutils
from numba.core.ccallback import CFunc
from numba.core.registry import cpu_target
from numba.extending import intrinsic, overload
from threadpoolctl import ThreadpoolController

_HERE = pathlib.Path(__file__).resolve().parent


def _load_scipy_blas():
    """Load ``scipy.linalg.cython_blas``, the OpenBLAS whose functions numba's np.dot calls
    (numba imports the module by that name at its first product).

    Imported by name, it first imports the whole ``scipy.linalg`` package: 0.2 s, a quarter of
    ``import fastbp`` here, mostly SciPy's array-API layer. Loaded from its file under its
    name, 3 ms. A later ``import scipy.linalg`` runs the package as usual and finds the module
    loaded; ``_BlasAttribute`` then sets the package's attribute, as importing the submodule
    after the package would. Anything unexpected: the ordinary import.
    """
    name = "scipy.linalg.cython_blas"
    if name not in sys.modules and "scipy.linalg" not in sys.modules:
        try:
            roots = importlib.util.find_spec("scipy").submodule_search_locations
            spec = importlib.machinery.PathFinder.find_spec(
                name, [os.path.join(r, "linalg") for r in roots])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            sys.meta_path.insert(0, _BlasAttribute())
            return
        except Exception:
            sys.modules.pop(name, None)
    importlib.import_module(name)


class _BlasAttribute:
    """A one-time import hook: when ``scipy.linalg`` is imported after ``_load_scipy_blas``,
    set its ``cython_blas`` attribute once the package has run."""

    def find_spec(self, name, path, target=None):
        if name != "scipy.linalg":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                module.cython_blas = sys.modules["scipy.linalg.cython_blas"]

            spec.loader.exec_module = exec_module
        return spec


_load_scipy_blas()


def _cache_dir():
    """Where fastbp's compiled kernels are cached: a folder named by a hash of every kernel
    source file, the numba version, the Python environment, numba's thread count and threading
    layer. numba checks only a function's own file, while its cached code holds the callees
    from other files; a change anywhere in the kernels (an edit, an upgrade) must therefore
    invalidate all of them. The base is ``NUMBA_CACHE_DIR`` if set, else ``~/.cache/fastbp``,
    else the temporary folder (a read-only home).

    The thread count is not in the key: compiled code reads it at run time, and processes with
    any ``NUMBA_NUM_THREADS`` (joblib's workers run with 1) share one cache. The crash that once
    seemed to need it was numba's missing thread-pool start (see ``_start_thread_pool``)."""
    # The environment too: two virtual environments never share compiled code.
    h = hashlib.sha256(f"{numba.__version__} {sys.prefix} {numba.config.THREADING_LAYER}"
                       .encode())
    for f in sorted([_HERE / "_config.py", *(_HERE / "kernels").glob("*.py")]):
        h.update(f.name.encode() + f.read_bytes())
    name = "kernels-" + h.hexdigest()[:16]
    bases = [os.environ.get("NUMBA_CACHE_DIR"), os.path.join(os.path.expanduser("~"), ".cache",
             "fastbp"), os.path.join(tempfile.gettempdir(), f"fastbp-{os.getuid()}")]
    for base in filter(None, bases):
        try:
            os.makedirs(os.path.join(base, name), exist_ok=True)
            if os.access(os.path.join(base, name), os.W_OK):
                return os.path.join(base, name)
        except OSError:
            continue
    return None  # nowhere writable: compile in memory only


def _race_free_cache_files():
    """Name each cached overload's data file by a hash of its key, in fastbp's cache folder.

    numba names a new data file ``<function>.<n>.nbc`` with the first n its index does not use
    yet, and writes the index before the data. Two processes compiling different signatures of
    one kernel at once (test runs, pool workers) pick the same n: one overwrites the other's
    file, and the index then maps a signature to another signature's machine code. Loading
    it crashed the process (measured: a segfault on every later run). With the name taken from
    the key, different signatures never share a file; the data is written before the index
    refers to it; at worst a concurrent index write drops an entry, which recompiles.
    """
    save = caching.IndexDataCacheFile.save

    def save_keyed(self, key, data):
        if CACHE_DIR is None or not os.path.abspath(self._cache_path).startswith(CACHE_DIR):
            return save(self, key, data)
        name = self._data_name_pattern.replace("{number:d}", hashlib.sha256(
            pickle.dumps(key, protocol=4)).hexdigest()[:24])
        self._save_data(name, data)
        overloads = self._load_index()
        overloads[key] = name
        self._save_index(overloads)

    caching.IndexDataCacheFile.save = save_keyed


_race_free_cache_files()


def _prefer_tbb():
    """Use numba's TBB threading layer where the ``tbb`` package is installed.

    Measured here (784-256-128-10, batch 256, one epoch, 2 threads, other jobs on the machine):
    OpenMP 2.6 s, TBB 0.23 s; with one more busy process, 4.0 s against 0.41 s. OpenMP's static
    schedule ends every parallel loop at a barrier that waits for a thread the scheduler has
    not run yet; TBB's work stealing lets the running thread take the work. TBB is also the
    layer numba documents as safe for concurrent Python threads and for fork. PyPI's wheel
    puts ``libtbb.so.12`` where the loader does not look, so it is loaded here by path first.
    A user's ``NUMBA_THREADING_LAYER`` is respected.
    """
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    try:
        files = metadata.files("tbb") or []
        libs = [f for f in files if f.name.startswith("libtbb.so.12")]
        if not libs:
            return
        ctypes.CDLL(str(libs[0].locate()), mode=ctypes.RTLD_GLOBAL)
    except (OSError, metadata.PackageNotFoundError):
        return
    numba.config.THREADING_LAYER = "tbb"


_prefer_tbb()


def _prefer_wide_vectors():
    """Let LLVM vectorise fastbp's loops 512 bits wide on CPUs with AVX-512 from Ice Lake and
    Zen 4 on (those with VBMI2).

    LLVM's tuning for these CPUs prefers 256-bit vectors (``prefer-256-bit``), for the clock
    penalty of wide instructions on Skylake-X, which the later cores do not pay. Measured
    side by side on a 2-core AVX-512 Xeon (``bench/compare.py``, fastbp alone, 2 x 3 rounds):
    W1 (16-wide loop kernels) 0.090-0.095 -> 0.073-0.076 s, W2 0.022 -> 0.020 s, the one-row
    SGD update of a 784x256 W 22.5 -> 18.1 us; W3a, W3b and W5, bound by their BLAS products,
    unchanged. The results do not change: no kernel reassociates, so each element's operations
    are the same at any vector width (tests/test_threads.py compares the bits).

    numba's setting is process-wide: the user's own ``@njit`` code compiled after ``import
    fastbp`` gets it too. A user's ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` is respected,
    and nothing changes once numba has set up its code generator (it keeps the features it
    started with; numba's cache keys each kernel by them).
    """
    if numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None:
        return
    if "_toplevel_target_context" in cpu_target.__dict__:
        return
    features = llvm.get_host_cpu_features()
    if features.get("avx512vbmi2"):
        numba.config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"


_prefer_wide_vectors()


def _start_thread_pool():
    """Start numba's thread pool now, before any kernel runs.

    numba starts its pool from a hook that a compiled function registers when it is loaded
    from the cache, but a serial function that calls a parallel one is cached without its
    callee's hook when the callee itself came from the cache during the compile (numba issues
    #8578 and #9938, fix proposed in PR #9950, not in numba 0.68). A later process that loads
    only such a function runs parallel code on a pool that was never started: a segfault on the
    first ``predict`` of a fresh process. Starting the pool at import costs about 8 ms and
    makes every cache history safe. ``numba.get_num_threads`` is the public call that starts it.
    """
    numba.get_num_threads()


_start_thread_pool()
CACHE_DIR = _cache_dir()


def _single_threaded_blas():
    """Run the BLAS that numba calls (SciPy's OpenBLAS) on one thread.

    OpenBLAS's results depend on its thread count (measured: 7 of 22 shapes differed between 1
    and 2 threads), and its threads next to numba's oversubscribe the cores. fastbp's BLAS
    kernels instead make one GEMM call per fixed block and spread the blocks over numba's
    threads. NumPy's own OpenBLAS, a separate library, is left as it is.
    """
    libs = [c for c in ThreadpoolController().lib_controllers
            if c.internal_api == "openblas" and "scipy" in os.path.basename(
                os.path.dirname(c.filepath))]
    for lib in libs:
        lib.set_num_threads(1)


_single_threaded_blas()


@contextlib.contextmanager
def _kernel_cache():
    # numba picks a function's cache folder when the dispatcher is made; point it at ours for
    # fastbp's kernels only, and leave the user's own numba setting as it was.
    old = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = CACHE_DIR or ""
    try:
        yield
    finally:
        numba.config.CACHE_DIR = old


_FASTMATH = frozenset({"contract"})

SERIAL = dict(cache=True, nogil=True, error_model="numpy", fastmath=False, no_cfunc_wrapper=True)
INLINE = dict(SERIAL, forceinline=True)
PARALLEL = dict(SERIAL, parallel=True)
GLUE = dict(SERIAL, inline="always")
OP = dict(SERIAL, op=True)
ARITH = dict(SERIAL, fastmath=set(_FASTMATH))
INLINE_ARITH = dict(ARITH, forceinline=True)


def njit(**flags):
    """``numba.njit`` with one of the flag sets above; the only decorator kernels use."""
    if CACHE_DIR is None:
        flags = dict(flags, cache=False)

    def decorate(fn):
        if flags.pop("op", False):  # an op function: compiled per use by op_kernel
            fn.op_flags = {k: v for k, v in flags.items() if k != "nogil"}
            return fn
        with _kernel_cache():
            dispatcher = numba.njit(**flags)(fn)
        _named[f"{fn.__module__}.{fn.__qualname__}"] = dispatcher
        return dispatcher

    return decorate


OP_SIGNATURE = "void(int64, int64, int64)"


def op_kernel(fn, dtype, **consts):
    """The op function ``fn(ctx, op, rows)`` (marked ``@njit(**OP)``) for ``dtype``, to be
    compiled as a C function with its flags, for the engine to call by its address (see
    :mod:`fastbp.kernels.engine`): a copy of ``fn`` in which the global names DT and
    ``consts`` have the values given (numba compiles globals as constants: a leaf kernel, a
    flag, and drops branches on them before it types anything). The copy is named after the
    values, so numba's cache keeps each apart. Nothing is compiled until its ``address`` is
    asked for, or ``compile_ops`` compiles a program's kernels together; then once per process
    for each argument tuple. NumPy scalars among ``consts`` become Python's (an np.False_
    equals False as a key, and would otherwise leave its kernel unnamed to the compile helpers
    whenever it came first: ``OpKernel.spec``)."""
    consts = {k: v.item() if isinstance(v, np.generic) else v for k, v in consts.items()}
    key = (fn, dtype, tuple(consts.items()))
    if key not in _op_kernels:
        _op_kernels[key] = OpKernel(fn, dtype, consts)
    return _op_kernels[key]


_op_kernels = {}


class OpKernel:
    """One op function compiled, or loaded from the cache, on first use (see ``op_kernel``)."""

    __slots__ = ("fn", "dtype", "consts", "_cfunc")

    def __init__(self, fn, dtype, consts):
        self.fn, self.dtype, self.consts, self._cfunc = fn, dtype, consts, None

    def _make(self):
        consts = dict(DT=self.dtype, **self.consts)
        name = "__".join([self.fn.__name__] +
                         [getattr(v, "__name__", str(v)) for v in consts.values()])
        copy = types.FunctionType(self.fn.__code__, dict(self.fn.__globals__, **consts), name)
        copy.__qualname__, copy.__module__ = name, self.fn.__module__
        with _kernel_cache():
            cfunc = CFunc(copy, sigutils.normalize_signature(OP_SIGNATURE), locals={},
                          options={k: v for k, v in self.fn.op_flags.items()
                                   if k not in ("cache", "no_cfunc_wrapper")})
            if CACHE_DIR is not None:
                cfunc.enable_caching()
        return cfunc

    @property
    def compiled(self):
        return self._cfunc is not None

    @property
    def address(self):
        """The C function's address (compiling it, or loading it from the cache, first)."""
        if self._cfunc is None:
            cfunc = self._make()
            cfunc.compile()
            self._cfunc = cfunc
        return self._cfunc.address

    def cached(self):
        """Whether the cache holds this kernel's machine code (True where that is unknown)."""
        try:
            cfunc = self._make()
            index = cfunc._cache._cache_file._load_index()
            return cfunc._cache._index_key(
                cfunc._sig, cfunc._targetdescr.target_context.codegen()) in index
        except Exception:  # numba's cache internals changed: compile in this process
            return True

    def serial(self):
        """The same op with each parallel leaf kernel among its constants replaced by its serial
        twin (``serial_twin``: the same bits); itself if it has none."""
        consts = {k: _twins.get(v, v) if isinstance(v, numba.core.registry.CPUDispatcher)
                  else v for k, v in self.consts.items()}
        return self if consts == self.consts else op_kernel(self.fn, self.dtype, **consts)

    def spec(self):
        """The kernel as names a fresh process resolves to the same objects (None if some
        constant cannot be named): see ``compile_ops``."""
        if getattr(sys.modules.get(self.fn.__module__), self.fn.__name__, None) is not self.fn:
            return None
        consts = {}
        for k, v in self.consts.items():
            if isinstance(v, numba.core.registry.CPUDispatcher):
                name = f"{v.py_func.__module__}.{v.py_func.__qualname__}"
                if _named.get(name) is not v:
                    return None
                consts[k] = {"kernel": name}
            elif isinstance(v, (bool, int, float, str)):
                consts[k] = {"value": v}
            else:
                return None
        return {"module": self.fn.__module__, "fn": self.fn.__name__,
                "dtype": np.dtype(self.dtype).name, "consts": consts}


_named = {}  # every dispatcher ``njit`` made, by module and qualified name (``OpKernel.spec``)


def _compile_jobs():
    """How many processes compile a program's missing kernels at once: FASTBP_COMPILE_JOBS if
    set, else fastbp's thread count (``get_num_threads``: a joblib worker or an MPI rank run
    with one thread compiles alone, and so does not crowd the cores the others use), at most
    the cores this process may run on. One in a frozen application, whose executable is not
    a Python that could run the helper."""
    value = os.environ.get("FASTBP_COMPILE_JOBS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"FASTBP_COMPILE_JOBS must be an integer, got {value!r}") from None
    if getattr(sys, "frozen", False):
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, get_num_threads())


def compile_ops(kernels):
    """Compile (or load from the cache) the op kernels ``kernels``; those the cache lacks in up
    to ``FASTBP_COMPILE_JOBS`` processes at once (default: one per thread, see
    ``_compile_jobs``).

    numba compiles one function at a time in a process (its compiler holds a lock, and most of
    the work is Python), and a program's kernels are independent C functions: 11 for a
    64-64-10 tanh network, 14.4 s of its 16.8-s first fit. Fresh processes
    (``python -m fastbp._compile``) and this one go down the list of missing kernels, each
    compiling the next that no other has claimed (a file created exclusively), into the kernel
    cache; this process then loads the others' from it. A helper that fails or runs over its
    time leaves its kernels to this process, which compiles them itself (and raises any
    error). The machine code is the same whichever process compiles it."""
    todo = [k for k in dict.fromkeys(kernels) if not k.compiled]
    with _sharing:
        started = [s for s in _shared if any(k in s.kernels for k in todo)]
        for shared in started:  # by ``prefetch_ops``
            shared.finish()
        if not started and len(todo) > 1:
            _Shared.start(todo).finish()
    for k in todo:
        k.address


def runnable(kernel):
    """The op kernel to run for ``kernel`` now, and the one compiled meanwhile (or None).

    A parallel loop costs 0.7-3 s of compiling whatever its body (docs/DESIGN-NOTES.md), more
    than the threads save in a short fit: the first ``MLPClassifier().fit`` on the digits spent
    5.5 of its 22 s of compiles on two parallel dense kernels. So an op whose kernel has
    parallel leaves that are neither compiled in this process nor in the cache runs on their
    serial twins (the same source with ``range`` for ``prange``: the same bits), and a helper
    process compiles the parallel kernel into the cache at low priority (``compile_later``)
    for later calls (``compiled_later``) and processes. With one thread the parallel kernel
    would gain nothing, and no helper starts. It compiles here and now where helpers may not
    start (``FASTBP_COMPILE_JOBS=1``, no cache, a frozen application), where the kernel
    cannot be named to another process, or with ``FASTBP_COMPILE_PARALLEL=now``."""
    if kernel.compiled:
        return kernel, None
    twin = kernel.serial()
    if twin is kernel:
        return kernel, None
    setting = os.environ.get("FASTBP_COMPILE_PARALLEL", "background")
    if setting not in ("background", "now"):
        raise ValueError(f"FASTBP_COMPILE_PARALLEL must be 'background' or 'now', "
                         f"got {setting!r}")
    if setting == "now":
        return kernel, None
    with _sharing:
        if kernel in _later:
            return twin, kernel
    if kernel.cached():
        return kernel, None
    if get_num_threads() < 2:
        return twin, None
    if CACHE_DIR is None or not sys.executable or getattr(sys, "frozen", False) or \
            os.environ.get("FASTBP_COMPILE_JOBS", "").strip() == "1" or kernel.spec() is None:
        return kernel, None
    return twin, kernel


def compile_later(kernels):
    """Start one helper process compiling those of the op kernels ``kernels`` that no earlier
    call gave it into the cache, at the lowest priority (``nice`` 19: it takes what the
    caller's threads leave), and return at once. The helper outlives this process if it must:
    what it compiles serves every later process too."""
    with _sharing:
        todo = [k for k in dict.fromkeys(kernels) if k not in _later]
        if not todo:
            return
        job = {"cache_dir": CACHE_DIR, "config": _compiler_config(), "background": True,
               "claims": tempfile.mkdtemp(prefix=".later-", dir=CACHE_DIR),
               "kernels": [[i, k.spec()] for i, k in enumerate(todo)]}
        helper = _start_helper(job)
        for k in todo:
            _later[k] = helper


def compiled_later(kernel):
    """Whether the helper that ``compile_later`` started for ``kernel`` has ended (its work
    is in the cache, if it could do it: see ``OpKernel.cached``)."""
    with _sharing:
        helper = _later.get(kernel)
        return helper is None or helper.poll() is not None


_later = {}  # op kernel: the helper process compiling it (None: it could not start)


def prefetch_ops(kernels):
    """Start compiling those of the op kernels ``kernels`` that the cache lacks in other
    processes, and return at once: ``compile_ops`` finishes the job, in this process too.
    The first fit of a process calls it before compiling its other functions."""
    with _sharing:
        _Shared.start([k for k in dict.fromkeys(kernels) if not k.compiled])


class _Shared:
    """The kernels of one compile shared with helper processes (see ``compile_ops``)."""

    def __init__(self, kernels, helpers):
        self.kernels = kernels
        self.claims = tempfile.mkdtemp(prefix=".claims-", dir=CACHE_DIR)
        job = {"cache_dir": CACHE_DIR, "config": _compiler_config(), "claims": self.claims,
               "kernels": [[i, s] for i, s in enumerate(k.spec() for k in kernels)
                           if s is not None]}
        self.procs = [p for p in (_start_helper(job) for _ in range(helpers)) if p is not None]
        _shared.append(self)

    @classmethod
    def start(cls, kernels):
        """Start helpers on those of ``kernels`` the cache lacks (if there are some and more
        than one process may compile); returns the compile, or a no-op's."""
        jobs = min(_compile_jobs(), len(kernels))
        if jobs < 2 or CACHE_DIR is None or not sys.executable:
            return _NO_SHARE
        missing = [k for k in kernels if not k.cached()]
        if len(missing) < 2:
            return _NO_SHARE
        return cls(missing, min(jobs, len(missing)) - 1)

    def finish(self):
        """Compile the kernels no helper has claimed, then wait for the helpers."""
        try:
            for i, k in enumerate(self.kernels):
                if _claim(self.claims, i):
                    k.address
            for proc in self.procs:
                try:
                    proc.wait(timeout=600)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            shutil.rmtree(self.claims, ignore_errors=True)
            _shared.remove(self)


class _NoShare:
    def finish(self):
        pass


_NO_SHARE = _NoShare()
_shared = []  # compiles started and not finished
_sharing = threading.RLock()


@atexit.register
def _freeze_at_exit():
    """At exit, move every object into the garbage collector's permanent generation
    (``gc.freeze``), so that the interpreter's last collections skip the objects numba made
    (its typing and lowering registries, the loaded kernels' LLVM handles), which the OS frees
    with the process anyway. Measured on a 2-core Zen 4 (2026-12-03, 10 runs alternating,
    medians): ``import fastbp`` 0.449 -> 0.388 s, import + first fit on a warm cache
    0.829 -> 0.604 s, as fast as ending with ``os._exit``. Objects still in reference cycles at
    exit are then not collected (Python does not promise that; their ``__del__`` does not run):
    ``FASTBP_GC_AT_EXIT=1`` keeps Python's last collections. Registered at import, so handlers
    registered later (``atexit`` runs them last-in, first-out) run before it."""
    if os.environ.get("FASTBP_GC_AT_EXIT", "0") in ("", "0"):
        gc.freeze()


@atexit.register
def _abandon_shared():
    """At exit, stop the helpers of compiles nothing finished (a first fit that found NaN in
    X after starting them, say) and remove their claims."""
    for shared in list(_shared):
        for proc in shared.procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(shared.claims, ignore_errors=True)


def _claim(claims, i):
    """Whether this process is the first to claim kernel ``i`` of a shared compile."""
    try:
        os.close(os.open(os.path.join(claims, str(i)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False
    except OSError:  # the folder is gone: the parent has finished
        return False


def _helper_env():
    """A compile helper's environment: this process's module path, so that it imports the same
    fastbp (a different one has another CACHE_DIR, and compile_specs then does nothing), and
    the CPU features this process's numba compiles for (``_prefer_wide_vectors`` leaves a
    process alone whose numba had compiled before fastbp was imported)."""
    return dict(os.environ, FASTBP_COMPILE_JOBS="1", NUMBA_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                NUMBA_CPU_FEATURES=_cpu_features())


def _cpu_features():
    """The CPU features numba compiles for (its setting, else the host's, as numba takes)."""
    return numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()


def _start_helper(job):
    """A fresh process compiling the kernels of ``job`` into the cache (None if it cannot
    start)."""
    try:
        helper = subprocess.Popen([sys.executable, "-m", "fastbp._compile"], env=_helper_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        helper.stdin.write(json.dumps(job).encode())
        helper.stdin.close()
    except OSError:
        return None
    return helper


def compile_specs(job):
    """Compile the kernels of a parent's shared compile (see ``compile_ops``) that no other
    process has claimed, into the cache; nothing if this process's cache or numba settings are
    others (numba's cache key does not hold, e.g., bounds checking)."""
    if job.get("background"):
        with contextlib.suppress(OSError):
            os.nice(19)
    try:
        if job["cache_dir"] != CACHE_DIR or job["config"] != _compiler_config():
            return
        for i, spec in job["kernels"]:
            if _claim(job["claims"], i):
                from_spec(spec).address
    finally:
        if job.get("background"):  # its claims are its own (``compile_later``)
            shutil.rmtree(job["claims"], ignore_errors=True)


def _compiler_config():
    """numba's settings that change compiled code, as text (the CPU features as compiled for)."""
    return dict({name: repr(getattr(numba.config, name, None)) for name in
                 ("BOUNDSCHECK", "OPT", "DEBUGINFO_DEFAULT", "CPU_NAME", "THREADING_LAYER")},
                CPU_FEATURES=_cpu_features())


def from_spec(spec):
    """The op kernel that ``OpKernel.spec`` named."""
    consts = {}
    for k, v in spec["consts"].items():
        if "kernel" in v:
            importlib.import_module(v["kernel"].rsplit(".", 1)[0])
            consts[k] = _named[v["kernel"]]
        else:
            consts[k] = v["value"]
    fn = getattr(importlib.import_module(spec["module"]), spec["fn"])
    return op_kernel(fn, np.dtype(spec["dtype"]).type, **consts)



@intrinsic
def call_op(typingctx, fn, ctx, op, rows):
    """Call the op kernel at address ``fn`` (an int64) with (ctx, op, rows), in compiled code."""
    sig = numba.types.void(fn, ctx, op, rows)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(64)] * 3)
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), args[1:])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def dot(typingctx, a, b, out):
    """``np.dot(a, b, out)`` for contiguous arrays (C or F) of one dtype, a matrix times a
    matrix or a vector, or a vector times a matrix, whose shapes the caller has made to agree:
    the BLAS call numba's np.dot makes (GEMM, GEMV where a side has one row or column, a dot
    product for one by one), so the same bits, without its argument checks, each compiled as a
    function of its own per call site's types (0.1-0.35 s of compiling per kernel, measured on a
    Zen 4). Every dimension must be below 2**31 (BLAS's int), which numba's np.dot checks and
    this does not: fastbp's blocks and layers are far smaller."""
    arrays = (a, b, out)
    if not all(isinstance(x, numba.types.Array) and x.layout in "CF" for x in arrays) \
            or len({x.dtype for x in arrays}) != 1 or out.layout != "C" \
            or (a.ndim, b.ndim, out.ndim) not in ((2, 2, 2), (2, 1, 1), (1, 2, 1)):
        raise numba.core.errors.TypingError(f"dot: unsupported arguments {arrays}")

    def codegen(context, builder, signature, args):
        # numba imported its linalg module when it set up its target, before any codegen
        linalg = sys.modules["numba.np.linalg"]
        linalg.ensure_blas()
        x, y, o = (context.make_array(t)(context, builder, v) for t, v in zip(arrays, args))
        xs, ys = cgutils.unpack_tuple(builder, x.shape), cgutils.unpack_tuple(builder, y.shape)
        nbytes = builder.mul(o.itemsize, o.nitems)
        dt = a.dtype

        def equals(v, n):
            return builder.icmp_signed("==", v, context.get_constant(numba.types.intp, n))

        if a.ndim == 1 or b.ndim == 1:  # numba's dot_3_vm
            if a.ndim == 1:  # vector x matrix: y^T x
                mty, ms, md, vd, n, lda, trans = b, ys, y.data, x.data, xs[0], ys[1], \
                    b.layout == "F"
            else:
                mty, ms, md, vd, n, lda, trans = a, xs, x.data, y.data, ys[0], xs[0], \
                    a.layout == "C"
            with builder.if_else(builder.or_(equals(n, 0), equals(lda, 0)), likely=False) \
                    as (empty, full):
                with empty:
                    cgutils.memset(builder, o.data, nbytes, 0)
                with full:
                    linalg.call_xxgemv(context, builder, trans, mty, ms, md, vd, o.data)
            return context.get_dummy_value()
        (m, k), n = xs, ys[1]  # numba's dot_3_mm
        with builder.if_else(builder.or_(equals(k, 0), builder.or_(equals(m, 0), equals(n, 0))),
                             likely=False) as (empty, full):
            with empty:
                cgutils.memset(builder, o.data, nbytes, 0)
            with full:
                with builder.if_else(equals(n, 1)) as (column, matrix):
                    with column:
                        with builder.if_else(equals(m, 1)) as (one, rows):
                            with one:
                                linalg.call_xxdot(context, builder, False, dt, k, x.data,
                                                  y.data, o.data)
                            with rows:
                                linalg.call_xxgemv(context, builder, a.layout == out.layout, a,
                                                   xs, x.data, y.data, o.data)
                    with matrix:
                        with builder.if_else(equals(m, 1)) as (row, general):
                            with row:
                                linalg.call_xxgemv(context, builder, b.layout != out.layout, b,
                                                   ys, y.data, x.data, o.data)
                            with general:
                                linalg.call_xxgemm(context, builder, a, xs, x.data, b, ys,
                                                   y.data, out,
                                                   cgutils.unpack_tuple(builder, o.shape),
                                                   o.data)
        return context.get_dummy_value()

    return numba.types.void(a, b, out), codegen


@intrinsic
def pointer(typingctx, addr, offset, dt):
    """A pointer to element ``offset`` of the ``dt`` buffer at address ``addr`` (an int64), for
    ``numba.carray``, in compiled code."""
    sig = numba.types.CPointer(dt.dtype)(addr, offset, dt)

    def codegen(context, builder, signature, args):
        p = builder.inttoptr(args[0], context.get_value_type(signature.return_type))
        return builder.gep(p, [args[1]])

    return sig, codegen


def by_dtype(x, f32, f64):
    """f32(x) for a float32 x (a scalar or an array), else f64 of x (a scalar as float64), in
    compiled code. Chosen while typing, so only the function for x's dtype is compiled (a
    branch on the dtype in a function's body compiles both: 1.5 s instead of 0.7 for ftanh)."""
    raise NotImplementedError("by_dtype runs in compiled code only")


@overload(by_dtype, jit_options={k: v for k, v in INLINE.items() if k != "cache"})
def _by_dtype(x, f32, f64):
    if x == numba.types.float32 or getattr(x, "dtype", None) == numba.types.float32:
        return lambda x, f32, f64: f32(x)
    if isinstance(x, numba.types.Array):
        return lambda x, f32, f64: f64(x)
    return lambda x, f32, f64: f64(np.float64(x))


def in_python(kernel):
    """``kernel`` (a dispatcher) as a plain Python function, calling its compiled callees as
    plain Python too: for rules on a few integers that Python code asks (``dense_mode``),
    where compiling them for Python's calls cost 0.6 s of a first fit and running them takes
    microseconds. The compiled kernels keep calling the dispatcher: the same source."""
    if kernel not in _in_python:
        fn = kernel.py_func
        names = {k: in_python(v) for k, v in fn.__globals__.items()
                 if isinstance(v, numba.core.registry.CPUDispatcher) and k in fn.__code__.co_names}
        _in_python[kernel] = types.FunctionType(fn.__code__, dict(fn.__globals__, **names),
                                                fn.__name__, fn.__defaults__, fn.__closure__)
    return _in_python[kernel]


_in_python = {}


def specialise(kernel, name, **consts):
    """``kernel`` (a dispatcher) compiled once more as ``name``, with the global names
    ``consts`` bound to the values given (numba compiles globals as constants: an activation
    function, say). Nothing is compiled until the first call."""
    fn = kernel.py_func
    copy = types.FunctionType(fn.__code__, dict(fn.__globals__, **consts), name,
                              fn.__defaults__, fn.__closure__)
    copy.__qualname__, copy.__module__ = name, fn.__module__
    flags = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}
    return njit(cache=SERIAL["cache"], **flags)(copy)  # targetoptions do not hold ``cache``


def serial_twin(kernel):
    """``kernel`` (a parallel kernel) compiled once more without ``parallel``: its ``prange``
    runs as ``range`` on the calling thread. The source is the same, so every output element is
    computed by the same arithmetic; the engine calls the twin where an op is too small to be
    worth waking other threads. It gets its own name, so numba's cache keeps the two apart."""
    fn = kernel.py_func
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    twin.__module__ = fn.__module__
    flags = {k: v for k, v in kernel.targetoptions.items() if k not in ("parallel", "nopython")}
    _twins[kernel] = njit(cache=SERIAL["cache"], **flags)(twin)
    return _twins[kernel]


_twins = {}


def serial_twin_of(kernel):
    """The serial twin made for ``kernel`` by ``serial_twin``."""
    return _twins[kernel]


def set_num_threads(n):
    """Set the number of threads for fastbp's kernels. BLAS calls run one per thread inside
    them (each single-threaded), so fastbp never uses more than ``n`` threads in all.

    Parameters
    ----------
    n : int
        Between 1 and the number of cores numba found (``numba.config.NUMBA_NUM_THREADS``).

    Examples
    --------
    >>> import fastbp as fb
    >>> fb.set_num_threads(1)
    >>> fb.get_num_threads()
    1
    """
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    n = int(n)
    top = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= top:
        raise ValueError(f"number of threads must be between 1 and {top}, got {n}")
    global _num_threads
    _num_threads = n
    numba.set_num_threads(n)
    _applied.n = n


def get_num_threads():
    """The number of threads fastbp's parallel kernels use."""
    return numba.get_num_threads() if _num_threads is None else _num_threads


# numba's thread count belongs to each Python thread; fastbp's (set_num_threads) to the process.
# Entry points (forward, backward, predict, train_step, fit, an optimizer's step) apply it to
# the calling thread, remembering per thread what they applied so the common call costs one
# attribute read.
_num_threads = None
_applied = threading.local()


def use_num_threads():
    """Apply ``set_num_threads``'s count to the calling Python thread, if one was set."""
    if _num_threads is not None and getattr(_applied, "n", None) != _num_threads:
        numba.set_num_threads(_num_threads)
        _applied.n = _num_threads
