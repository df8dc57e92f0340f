# cython: language_level=3
"""Softmax cross-entropy kernels over an ``(outer, C, inner)`` view.

Every public function reduces its input to a three-dimensional strided view:
``outer`` positions before the class axis, ``C`` classes, ``inner`` positions
after it.  A *sample* is one ``(o, i)`` pair; its row is ``x[o, :, i]``.

One walk (``walk_plan``, ``walk_run``) serves every kernel.  It cuts the
samples into fixed blocks -- of rows walked along their classes when the
class stride is the smallest one, of rows of few contiguous classes
transposed into tiles, or tiles of up to ``TILE`` neighbouring samples walked
class by class (channels-first data such as ``(N, C, H, W)``) -- and hands
each piece to the kernel's body for rows or for tiles (``Body``).  float16
and bfloat16 logits are converted to float32 by the thread that computes the
piece, into a buffer of its own, in the same parallel region; rows whose
classes are not contiguous (a reversed or strided class axis) are copied so
the same way, for the vector kernels; a logit transform (soft-cap, scale) is
computed the same way, and the walk multiplies
the piece's per-class output by the transform's derivative afterwards.  A
logit scale alone (a temperature) costs no such pass on float32 and float64
rows: the row bodies that can (``Body.rows_scale``) take it as
``Piece.logit_scale`` and compute exp((x - max) * scale) as they read the
logits, and the chain rule in the same loop.

Reductions over samples are computed per fixed block into float64 totals,
then added in block order, so totals do not depend on the number of threads.
Blocks are handed to the threads as they become free (a dynamic schedule):
on a busy machine a thread the OS deschedules holds up only the block it is
in, and which thread computes a block never changes its bits.  The Python
layer validates everything into a plan, and ``execute_class_plan`` (at the
end of this file) runs a plan on the kernels; they cannot fail, and only
raise for an internal mistake or memory they cannot get.  For the commonest
call, ``common_plan`` makes the plan the checks would make, without them: it
declines (returns None) any call whose arguments do not pass them by
construction, which then takes the checking path.
"""

from cpython.exc cimport PyErr_CheckSignals
from cpython.pycapsule cimport PyCapsule_New
from cython.parallel cimport prange, threadid
from libc.math cimport log, isinf, INFINITY, NAN
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t, uint16_t

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from "csrc/denormals.h":
    ctypedef unsigned int fastce_fp_mode_t
    fastce_fp_mode_t fastce_flush_denormals() noexcept nogil
    void fastce_restore_fp_mode(fastce_fp_mode_t mode) noexcept nogil

cdef extern from "csrc/threads.h":
    const char* FASTCE_COMPILE_ARGS
    int FASTCE_OPENMP
    int fastce_thread_limit
    int fastce_thread_cap
    int fastce_team_started
    int fastce_forked_child
    void fastce_register_fork_handler() noexcept
    int fastce_openmp_thread_limit() noexcept
    int fastce_allowed_threads(int requested) noexcept nogil

# The fused types, TILE, SMALL_C, CEOptions and the row and tile statistics
# are declared in _kernels.pxd, shared with the evaluation kernels.

# Below this many logits a call runs on the calling thread only: starting a
# team costs more than it saves.
cdef enum:
    SERIAL_BELOW = 1 << 15

# Unit totals of a call with at most this many units live on the stack.
cdef enum:
    FEW_TOTALS = 64

cdef enum:
    OP_LOG_SOFTMAX = 0
    OP_SOFTMAX = 1
    OP_LOGSUMEXP = 2

TILE_SIZE = TILE


def openmp_enabled():
    """Whether the extension was compiled with OpenMP."""
    return bool(FASTCE_OPENMP)


def max_threads():
    """The number of threads a parallel kernel would use now."""
    return fastce_allowed_threads(0)


def thread_cap():
    """The most threads any call starts (see threads.h)."""
    return fastce_thread_cap


def _usable_cores():
    import os
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Four threads per usable core at most, and never more than OpenMP allows.
fastce_thread_cap = max(1, min(4 * _usable_cores(), fastce_openmp_thread_limit()))


fastce_register_fork_handler()


def forked_child_serial():
    """Whether this process was made by fork(), and so runs every kernel
    serially (its parent may have run an OpenMP team, fastce's or another
    library's, which the child cannot use)."""
    return bool(fastce_forked_child)


cdef enum:
    THREAD_REQUEST_LIMIT = 1 << 16
# the most threads one call may ask for: a larger request is taken as this many
MAX_THREAD_REQUEST = THREAD_REQUEST_LIMIT


def set_thread_limit(int n):
    """Use at most ``n`` threads; 0 restores OpenMP's own maximum."""
    global fastce_thread_limit
    fastce_thread_limit = n if n > 0 else 0


def compile_args():
    """The compiler flags the extension was built with."""
    return FASTCE_COMPILE_ARGS.decode()


# --------------------------------------------------------------------------
# Memory of large results, kept for the next when NumPy frees them
# --------------------------------------------------------------------------

cdef extern from "csrc/result_pool.h":
    ctypedef struct PyDataMem_Handler:
        pass
    PyDataMem_Handler fastce_result_handler
    size_t FASTCE_POOL_MIN_BYTES
    size_t FASTCE_POOL_DEFAULT_LIMIT
    int fastce_result_pool_init() except -1
    void fastce_result_pool_set_limit(size_t n_bytes) noexcept
    size_t fastce_result_pool_limit() noexcept
    size_t fastce_result_pool_held() noexcept
    int fastce_result_pool_took_kept() noexcept

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

fastce_result_pool_init()
cdef object RESULT_HANDLER = PyCapsule_New(<void*>&fastce_result_handler, "mem_handler", NULL)

# results of fewer bytes are allocated as NumPy allocates any array
KEPT_RESULT_MIN_BYTES = FASTCE_POOL_MIN_BYTES
KEPT_RESULT_DEFAULT_LIMIT = FASTCE_POOL_DEFAULT_LIMIT


cdef object new_array(int ndim, const cnp.npy_intp* dims, object dtype, object like,
                      bint* kept):
    """``new_result``'s work on a shape of ``ndim`` extents; ``kept``: whether
    the memory is a freed result's."""
    cdef Py_ssize_t n_bytes = (<cnp.dtype>dtype).itemsize
    cdef int d
    cdef object previous
    for d in range(ndim):
        n_bytes *= dims[d]
    kept[0] = False
    if n_bytes < <Py_ssize_t>FASTCE_POOL_MIN_BYTES:
        return empty_array(ndim, dims, dtype, like)
    previous = PyDataMem_SetHandler(RESULT_HANDLER)
    try:
        result = empty_array(ndim, dims, dtype, like)
    finally:
        PyDataMem_SetHandler(previous)
    kept[0] = fastce_result_pool_took_kept() != 0
    return result


cdef inline object empty_array(int ndim, const cnp.npy_intp* dims, object dtype, object like):
    if like is None:
        return cnp.PyArray_EMPTY(ndim, <cnp.npy_intp*>dims, (<cnp.dtype>dtype).type_num, 0)
    return np.empty_like(like, dtype, order="K")


cpdef new_result(object shape, object dtype, object like=None):
    """A new array for a per-class or per-element result: ``np.empty(shape,
    dtype)``, or laid out as ``like`` (``np.empty_like``, order "K") when
    given; and whether its memory is a freed result's, so written before and
    out of the caches, rather than pages the operating system zeroes as they
    are first touched.  A result of at least ``KEPT_RESULT_MIN_BYTES`` takes
    its memory from, and gives it back to, the kept blocks."""
    cdef cnp.npy_intp dims[32]  # NumPy's most dimensions (NPY_MAXDIMS) is 32 or 64
    cdef bint kept
    cdef int ndim = 0
    if like is not None:
        shape = like.shape
    for extent in shape:
        if ndim == 32:
            raise ValueError("internal: a result of more than 32 dimensions")
        dims[ndim] = extent
        ndim += 1
    result = new_array(ndim, dims, np.dtype(dtype), like, &kept)
    return result, kept


def set_kept_result_limit(size_t n_bytes):
    """Keep at most ``n_bytes`` of freed results; what is over is freed now."""
    fastce_result_pool_set_limit(n_bytes)


def kept_result_bytes():
    """(bytes of freed results held now, the most that may be held)."""
    return fastce_result_pool_held(), fastce_result_pool_limit()


# --------------------------------------------------------------------------
# Row and tile primitives: vectorised where the data are contiguous
# --------------------------------------------------------------------------

cdef extern from "csrc/dispatch.h":
    # fastce_ops_t, fastce_active_ops and the exponentials: see _kernels.pxd
    const char* const* fastce_simd_names
    int fastce_simd_available(const char* name) noexcept
    const fastce_ops_t* fastce_simd_select(const char* name) noexcept


cdef const fastce_ops_t* simd_ops() noexcept nogil:
    """The table of the vector path in use, for the extensions that share it."""
    return fastce_active_ops


def simd_paths():
    """The vector code paths this build has and this CPU can run, best first."""
    cdef Py_ssize_t k = 0
    paths = []
    while fastce_simd_names[k] != NULL:
        if fastce_simd_available(fastce_simd_names[k]):
            paths.append(fastce_simd_names[k].decode())
        k += 1
    return paths


def simd_init(str path=""):
    """Choose the vector code path: ``""`` for the best the CPU has, or one of
    :func:`simd_paths`.  Returns the name of the path chosen; an unknown path,
    or one this CPU cannot run, raises ``ValueError`` and changes nothing."""
    global fastce_active_ops
    cdef const fastce_ops_t* ops = fastce_simd_select(path.encode())
    if ops == NULL:
        raise ValueError(
            f"vector path {path!r} is not available here: this build and CPU have "
            f"{', '.join(simd_paths())} (set FASTCE_SIMD to one of them, or leave it empty "
            f"for the best)")
    fastce_active_ops = ops
    return ops.isa.decode()


def tile_log(const double[::1] s):
    """log of sums of exponentials (each at least 1, or NaN, or +inf) by the
    vector path in use: exposed so that tests can hold it to libm's log."""
    out = np.empty(s.shape[0], dtype=np.float64)
    cdef double[::1] out_view = out
    if s.shape[0]:
        fastce_active_ops.tile_log(&s[0], s.shape[0], &out_view[0])
    return out


def simd_isa():
    """The vector code path in use: one of :func:`simd_paths`."""
    return fastce_active_ops.isa.decode()


import os as _os
# FASTCE_SIMD=baseline (or avx2, avx512) forces a path, to compare them
simd_init(_os.environ.get("FASTCE_SIMD", "").strip())


cdef inline void row_scaled_exp(const floating* x, Py_ssize_t xc, Py_ssize_t n, floating m,
                                floating xscale, floating scale, floating offset,
                                floating* y, Py_ssize_t yc, bint stream) noexcept nogil:
    """y = scale * exp((x - m) * xscale) - offset, ``xscale`` positive (1:
    exp(x - m)); ``y`` may be ``x``; ``stream``: a contiguous ``y`` is
    stored past the caches."""
    cdef Py_ssize_t c
    if xc == 1 and yc == 1:
        if floating is float:
            fastce_active_ops.row_scaled_exp_f32(x, n, m, xscale, scale, offset, y, stream)
        else:
            fastce_active_ops.row_scaled_exp_f64(x, n, m, xscale, scale, offset, y, stream)
        return
    for c in range(n):
        y[c * yc] = scale * exp_neg(scaled_shift(x[c * xc], m, xscale)) - offset


cdef inline void row_shift(const floating* x, Py_ssize_t xc, Py_ssize_t n, floating m,
                           floating log_s, floating* y, Py_ssize_t yc, bint stream) noexcept nogil:
    """y = (x - m) - log_s; ``y`` may be ``x``; ``stream`` as row_scaled_exp."""
    cdef Py_ssize_t c
    if xc == 1 and yc == 1:
        if floating is float:
            fastce_active_ops.row_shift_f32(x, n, m, log_s, y, stream)
        else:
            fastce_active_ops.row_shift_f64(x, n, m, log_s, y, stream)
        return
    for c in range(n):
        y[c * yc] = (x[c * xc] - m) - log_s


cdef inline void tile_scaled_exp(const floating* x, Py_ssize_t xi, Py_ssize_t n, const floating* m,
                                 const floating* scale, floating w, const floating* offset,
                                 floating* y, Py_ssize_t yi) noexcept nogil:
    """y[k] = scale[k] * exp(x[k] - m[k]) - w * offset[k]"""
    cdef Py_ssize_t k
    if xi == 1 and yi == 1:
        if floating is float:
            fastce_active_ops.tile_scaled_exp_f32(x, n, m, scale, w, offset, y)
        else:
            fastce_active_ops.tile_scaled_exp_f64(x, n, m, scale, w, offset, y)
        return
    for k in range(n):
        y[k * yi] = scale[k] * exp_neg(x[k * xi] - m[k]) - w * offset[k]


cdef inline void tile_shift(const floating* x, Py_ssize_t xi, Py_ssize_t n, const floating* m,
                            const floating* log_s, floating* y, Py_ssize_t yi) noexcept nogil:
    cdef Py_ssize_t k
    if xi == 1 and yi == 1:
        if floating is float:
            fastce_active_ops.tile_shift_f32(x, n, m, log_s, y)
        else:
            fastce_active_ops.tile_shift_f64(x, n, m, log_s, y)
        return
    for k in range(n):
        y[k * yi] = (x[k * xi] - m[k]) - log_s[k]


cdef inline void shift_for_logsumexp(floating* m) noexcept nogil:
    # As torch.logsumexp: an infinite maximum is not subtracted, so that
    # logsumexp([inf, 1]) is inf and logsumexp([-inf, -inf]) is -inf.
    if isinf(m[0]):
        m[0] = 0


cdef int thread_count(Py_ssize_t work_items, Py_ssize_t n_elements, int requested) noexcept nogil:
    """The threads a call of ``work_items`` units over ``n_elements`` logits
    uses (``requested``, or the process-wide count for 0, within the cap of
    threads.h); records that a
    team starts, so that a forked child computes serially.  Every kernel of
    both extensions asks here."""
    global fastce_team_started
    cdef int n = fastce_allowed_threads(requested)
    if n_elements < SERIAL_BELOW or work_items < 2:
        return 1
    if n > work_items:
        n = <int>work_items
    if n > 1:
        fastce_team_started = 1
    return n if n > 0 else 1


def block_rows(Py_ssize_t C):
    """Samples per work unit of the row kernels for ``C`` classes.  A caller
    that splits rows of few classes into several calls cuts at multiples of
    it, so that each row is computed as it would be in one call."""
    return rows_per_block(C)


# --------------------------------------------------------------------------
# The walk: how every kernel's samples are cut, converted and shared out
# --------------------------------------------------------------------------

cdef inline bint tiles_pay_off(Py_ssize_t inner, Py_ssize_t xc, Py_ssize_t xi) noexcept nogil:
    # Tiles pay off when neighbouring samples are closer in memory than
    # neighbouring classes.
    cdef Py_ssize_t ac = xc if xc >= 0 else -xc
    cdef Py_ssize_t ai = xi if xi >= 0 else -xi
    return inner > 1 and ai < ac


cdef inline bint small_c_rows(Py_ssize_t C, Py_ssize_t inner, Py_ssize_t xc) noexcept nogil:
    # Rows of a few contiguous classes are too short for the vector unit:
    # TILE of them are transposed into a buffer and computed as one tile,
    # with the samples in the vector lanes.
    return C <= SMALL_C and inner == 1 and xc == 1


cdef inline Py_ssize_t rows_per_block(Py_ssize_t C) noexcept nogil:
    # Fixed by the problem only, never by the thread count: the block
    # totals are what make totals reproducible.  Transposed small-C rows
    # are tiled from the start of each block, so the block also fixes which
    # vector lane each row is computed in.
    return rows_within(BLOCK_LOGITS, C)


cdef inline Py_ssize_t units_per_grab(Py_ssize_t n_units, Py_ssize_t n_logits,
                                      Py_ssize_t stretch, int nthreads) noexcept nogil:
    # A thread takes a run of neighbouring units from the dynamic schedule:
    # at least BLOCK_LOGITS logits (units smaller than that, tiles of a few
    # classes, would each cost an update of the schedule's shared counter),
    # and a quarter of a thread's share of the stretch, so that each thread
    # streams through long stretches of memory and the prefetchers keep up;
    # the last runs still balance the threads.  The units, and so the bits,
    # stay the same.
    cdef Py_ssize_t per_unit = n_logits // n_units if n_units > 0 else 1
    cdef Py_ssize_t k = BLOCK_LOGITS // per_unit if per_unit > 0 else 1
    cdef Py_ssize_t share = stretch // (4 * nthreads)
    if share > k:
        k = share
    return k if k > 1 else 1


cdef enum:
    # logits between two checks for a signal (Ctrl-C): a few milliseconds
    SIGNAL_CHECK_LOGITS = 1 << 25
    # logits (or targets) fewer than this are computed holding the GIL: a few
    # microseconds, less than other threads would wait for it to be taken back
    RELEASE_GIL_LOGITS = 1 << 15

cdef enum:
    # a per-class output of at least this many bytes is stored past the
    # caches: it would not stay in them, and a plain store first reads each
    # line of it in
    STREAM_OUTPUT_BYTES = 32 << 20

# the smallest out= the kernels stream, for the tests
STREAMED_OUT_BYTES = STREAM_OUTPUT_BYTES

cdef enum:
    # float32 elements of a thread's buffer for a tile of half logits: a tile
    # of many classes is converted a few samples (a multiple of HALF_LANES)
    # at a time.  Each sample's bits do not depend on its tile's width.
    HALF_TILE_ELEMENTS = 1 << 18
    HALF_LANES = 16
    # float32 elements of half rows converted at once (whole rows, at least one)
    HALF_ROW_ELEMENTS = 1 << 12
    # the floats of two cache lines: where each thread's buffer starts
    BUFFER_ALIGN_FLOATS = 32
    # the head of a thread's buffer for half_rows_ahead: which row of the
    # logits its rows hold converted (-1: none) and where, as two int64
    HALF_HEAD_FLOATS = 32


cdef inline Py_ssize_t half_tile_width(Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t width = HALF_TILE_ELEMENTS // (C if C > 0 else 1)
    if width >= TILE:
        return TILE
    width = width // HALF_LANES * HALF_LANES
    return width if width > HALF_LANES else HALF_LANES


cdef extern from "numpy/arrayobject.h":
    # not among the type numbers numpy's declarations name
    int NPY_HALF_TYPE "NPY_HALF"
    int NPY_USERDEF_TYPE "NPY_USERDEF"


cdef inline Py_ssize_t element_size(int dtype) noexcept nogil:
    if dtype == DT_F64:
        return 8
    return 4 if dtype == DT_F32 else 2


# the type number NumPy gave bfloat16 in this process, once an array of it is seen
cdef int bfloat16_typenum = -1


cdef bint is_bfloat16(cnp.ndarray a):
    """Whether ``a`` holds bfloat16 (ml_dtypes' registered type), without
    asking its dtype's name on every call: a fraction of a microsecond that
    nll_loss's short calls would feel."""
    global bfloat16_typenum
    cdef int typenum = cnp.PyArray_TYPE(a)
    if typenum == bfloat16_typenum:
        return True
    if typenum >= NPY_USERDEF_TYPE and cnp.PyArray_ITEMSIZE(a) == 2 \
            and a.dtype.name == "bfloat16":
        bfloat16_typenum = typenum
        return True
    return False


cdef void walk_from(Walk* w, object x) except *:
    """A walk over the logits ``x``, an aligned (outer, C, inner) array of
    float32, float64, float16 or bfloat16, with no per-class output."""
    cdef cnp.ndarray a = x
    cdef int typenum = cnp.PyArray_TYPE(a)
    cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(a), d
    if typenum == cnp.NPY_FLOAT:
        w.dtype = DT_F32
    elif typenum == cnp.NPY_DOUBLE:
        w.dtype = DT_F64
    elif typenum == NPY_HALF_TYPE:
        w.dtype = DT_F16
    elif is_bfloat16(a):
        w.dtype = DT_BF16
    else:
        raise TypeError(f"internal: the kernels cannot read logits of dtype {a.dtype}")
    if cnp.PyArray_NDIM(a) != 3 or not cnp.PyArray_ISALIGNED(a):
        raise ValueError("internal: the kernels read an aligned (outer, C, inner) view")
    for d in range(3):
        if cnp.PyArray_STRIDE(a, d) % isz:
            raise ValueError("internal: the logits' strides are not whole elements")
    walk_init(w, <const char*>cnp.PyArray_DATA(a), w.dtype, cnp.PyArray_DIM(a, 0),
              cnp.PyArray_DIM(a, 1), cnp.PyArray_DIM(a, 2), cnp.PyArray_STRIDE(a, 0) // isz,
              cnp.PyArray_STRIDE(a, 1) // isz, cnp.PyArray_STRIDE(a, 2) // isz)


cdef inline void walk_init(Walk* w, const char* x, int dtype, Py_ssize_t outer, Py_ssize_t C,
                           Py_ssize_t inner, Py_ssize_t xo, Py_ssize_t xc,
                           Py_ssize_t xi) noexcept nogil:
    """A walk over the logits at ``x``, an (outer, C, inner) view with these
    element strides, with no per-class output, no transform and the default
    thread count: every field walk_plan reads, set in this one place."""
    w.x = x
    w.dtype = dtype
    w.outer, w.C, w.inner = outer, C, inner
    w.xo, w.xc, w.xi = xo, xc, xi
    w.y = NULL
    w.yo = w.yc = w.yi = 0
    w.stream_y = False
    w.transform = False
    w.t_outer, w.t_inner = 1.0, 0.0
    w.threads = 0
    w.work = outer * C * inner
    w.flush_subnormals = False


cdef void walk_transform(Walk* w, double logit_scale, double softcap) noexcept:
    """Sets the walk's logit transform: ``logit_scale * softcap * tanh(x /
    softcap)``, or ``logit_scale * x`` when ``softcap`` is 0; none when both
    leave the logits as they are."""
    w.transform = softcap != 0.0 or logit_scale != 1.0
    w.t_outer = logit_scale * softcap if softcap != 0.0 else logit_scale
    w.t_inner = 1.0 / softcap if softcap != 0.0 else 0.0


cdef inline int result_typenum(const Walk* w) noexcept:
    return cnp.NPY_DOUBLE if w.dtype == DT_F64 else cnp.NPY_FLOAT


cdef char* array_data(object a, int ndim, int typenum, Py_ssize_t* strides) except? NULL:
    """The data of ``a`` (NULL for None), an aligned ``ndim``-dimensional
    array of NumPy type ``typenum``, and its element strides."""
    cdef Py_ssize_t isz, d
    if a is None:
        for d in range(ndim):
            strides[d] = 0
        return NULL
    cdef cnp.ndarray arr = a
    if cnp.PyArray_NDIM(arr) != ndim or cnp.PyArray_TYPE(arr) != typenum \
            or not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"internal: an aligned {ndim}-d array of NumPy type {typenum} was "
                         f"expected, not {arr.ndim}-d {arr.dtype}")
    isz = cnp.PyArray_ITEMSIZE(arr)
    for d in range(ndim):
        strides[d] = cnp.PyArray_STRIDE(arr, d) // isz
    return <char*>cnp.PyArray_DATA(arr)


cdef void walk_output(Walk* w, object y, bint written_before) except *:
    """Sets the walk's per-class output: ``y`` (or None), the logits' shape,
    of their result dtype; ``written_before``: memory written before (the
    caller's out=, or a freed result's kept memory) rather than fresh pages."""
    cdef Py_ssize_t s[3]
    walk_output_at(w, array_data(y, 3, result_typenum(w), s), s, written_before)


cdef inline void walk_output_at(Walk* w, char* y, const Py_ssize_t* strides,
                                bint written_before) noexcept nogil:
    """walk_output's work on ``y`` (NULL: none) and its three element strides."""
    w.y = y
    if y != NULL:
        w.yo, w.yc, w.yi = strides[0], strides[1], strides[2]
        w.stream_y = streams_output(w, written_before)


cdef inline bint streams_output(const Walk* w, bint written_before) noexcept nogil:
    """Whether the walk's per-class output (``written_before`` as walk_output's) is
    stored past the caches.  Only memory written before gains: the pages of a
    new allocation arrive zeroed and in cache, and a streamed store would
    first have to evict each line."""
    return written_before and w.work * (8 if w.dtype == DT_F64 else 4) >= STREAM_OUTPUT_BYTES


cdef void targets_from(Targets* t, object target) except *:
    """Class-index targets: ``target``, an aligned 2-d integer array (or None)."""
    t.data = NULL
    t.so = t.si = 0
    t.kind = T_INT64
    if target is None:
        return
    cdef cnp.ndarray a = target
    cdef int typenum = cnp.PyArray_TYPE(a)
    if cnp.PyArray_NDIM(a) != 2 or not cnp.PyArray_ISALIGNED(a):
        raise ValueError("internal: targets are read as an aligned (outer, inner) array")
    if not cnp.PyTypeNum_ISINTEGER(typenum):
        raise TypeError(f"internal: targets of dtype {a.dtype} are not class indices")
    cdef Py_ssize_t size = cnp.PyArray_ITEMSIZE(a)
    cdef bint signed = cnp.PyTypeNum_ISSIGNED(typenum)
    if size == 8:
        t.kind = T_INT64 if signed else T_UINT64
    elif size == 4:
        t.kind = T_INT32 if signed else T_UINT32
    elif size == 2:
        t.kind = T_INT16 if signed else T_UINT16
    else:
        t.kind = T_INT8 if signed else T_UINT8
    t.data = <const char*>cnp.PyArray_DATA(a)
    t.so = cnp.PyArray_STRIDE(a, 0)
    t.si = cnp.PyArray_STRIDE(a, 1)


cdef void walk_plan(Walk* w, const Body* body, bint gather, Py_ssize_t block_rows,
                    Py_ssize_t max_units) noexcept nogil:
    """Chooses how the walk cuts its samples: tiles when the body has them
    and they pay off, else blocks of ``block_rows`` rows (0: rows_per_block),
    transposed into tiles when ``gather`` and the rows have few contiguous
    classes; then groups the blocks into at most ``max_units`` work units
    (0: one block each).  Fixed by the problem, never by the thread count."""
    cdef Py_ssize_t per
    if body.tile_f32 != NULL and tiles_pay_off(w.inner, w.xc, w.xi):
        w.shape = WALK_TILES
        w.block_rows = 0
        w.n_blocks = w.outer * ((w.inner + TILE - 1) // TILE)
    else:
        if body.tile_f32 != NULL and gather and small_c_rows(w.C, w.inner, w.xc):
            w.shape = WALK_SMALL_C
            block_rows = 0      # the lanes are fixed from the start of each block
        else:
            w.shape = WALK_ROWS
        w.block_rows = block_rows if block_rows > 0 else rows_per_block(w.C)
        w.n_blocks = (w.outer * w.inner + w.block_rows - 1) // w.block_rows
    per = 1
    if max_units > 0 and w.n_blocks > max_units:
        per = (w.n_blocks + max_units - 1) // max_units
    w.blocks_per_unit = per
    w.n_units = (w.n_blocks + per - 1) // per


cdef inline bint scale_in_rows(const Walk* w, const Body* body) noexcept nogil:
    """Whether the row bodies apply the walk's transform themselves, as they
    read the logits: a logit scale alone, for a body that can.  float32 and
    float64 rows are then read as they are, half rows only converted: no
    transformed copy, which would cost a pass of its own."""
    return w.transform and w.t_inner == 0.0 and body.rows_scale


cdef inline bint rows_buffered(const Walk* w, const Body* body) noexcept nogil:
    """Whether rows pass through the thread's buffer before the body reads
    them: half rows for a body that reads float32 and float64 only
    (converted), rows under a transform the body does not apply
    (transformed), and rows whose classes are not contiguous for a body that
    reads every class (copied, for the vector kernels: read class by class,
    such a row cost 10-15 times as much)."""
    cdef bint half = w.dtype == DT_F16 or w.dtype == DT_BF16
    return ((half and body.rows_half == NULL)
            or (w.transform and not scale_in_rows(w, body))
            or (w.xc != 1 and body.whole_rows))


cdef inline bint converts_ahead(const Walk* w, const Body* body) noexcept nogil:
    """Whether half rows are converted one at a time, each by the loop of
    the body that sums the row before it (half_rows_ahead): rows of
    contiguous classes, for a body that reads ahead (Body.reads_ahead) and
    has no half rows of its own, under no transform the walk computes."""
    return ((w.dtype == DT_F16 or w.dtype == DT_BF16) and body.reads_ahead
            and body.rows_half == NULL and w.shape == WALK_ROWS and w.xc == 1
            and not (w.transform and not scale_in_rows(w, body)))


cdef Py_ssize_t buffer_elements(const Walk* w, const Body* body) noexcept nogil:
    """float32 elements of each thread's buffer, for half logits converted
    to float32, transformed logits and strided rows copied (a float64 takes
    two)."""
    cdef bint half = w.dtype == DT_F16 or w.dtype == DT_BF16
    cdef Py_ssize_t n = 0
    if w.shape == WALK_TILES:
        if half or w.transform:
            n = w.C * half_tile_width(w.C)
    elif w.shape == WALK_SMALL_C:
        # transformed in the tile itself; half rows converted first
        n = TILE * SMALL_C if half else 0
    elif half and body.rows_half != NULL:
        n = 0  # the body reads the half bits as they are
    elif converts_ahead(w, body):
        n = HALF_HEAD_FLOATS + half_row_slots(w.C) * w.C
    elif rows_buffered(w, body):
        n = w.C * rows_held(w) * (2 if stages_output(w, body) else 1)
    return 2 * n if w.dtype == DT_F64 else n


cdef inline Py_ssize_t rows_held(const Walk* w) noexcept nogil:
    """Rows a thread's buffer holds for buffered_rows: a few at a time, and
    the row after them, read ahead."""
    return half_rows_at_once(w.C) + 1 if half_rows_at_once(w.C) < w.block_rows else w.block_rows


cdef inline bint stages_output(const Walk* w, const Body* body) noexcept nogil:
    """Whether buffered rows under a transform the body does not apply have
    the body write its output into the thread's buffer too, from which the
    chain rule streams it past the caches: written in place, an output to be
    streamed would be read in from memory first."""
    return w.stream_y and w.transform and not scale_in_rows(w, body) and w.yc == 1


cdef int walk_run(const Walk* w, const Body* body, const void* call, double* totals) except -1:
    """Runs ``body`` over every unit of a planned walk, each unit's total
    into ``totals[unit]``; float16 and bfloat16 logits are converted to
    float32, and transformed logits computed, by each thread, a piece at a
    time, into its own buffer.  A long
    walk goes in stretches of about SIGNAL_CHECK_LOGITS logits and checks for
    signals between them: Ctrl-C stops it with KeyboardInterrupt (the units
    not yet computed are left as they are)."""
    cdef int nthreads = thread_count(w.n_units, w.work, w.threads)
    cdef Py_ssize_t per_thread = buffer_elements(w, body)
    cdef Py_ssize_t per_unit = w.work // w.n_units if w.n_units > 0 else 1
    cdef Py_ssize_t stretch = SIGNAL_CHECK_LOGITS // (per_unit if per_unit > 0 else 1)
    cdef Py_ssize_t start, end, t
    cdef void* allocated = NULL
    cdef float* buffers = NULL
    if stretch < 1:
        stretch = 1
    if per_thread:
        # each thread's buffer on cache lines of its own, and a line pair
        # apart from the next: two threads writing one line (or one the
        # adjacent-line prefetcher pairs) would pass it back and forth
        per_thread = ((per_thread + 2 * BUFFER_ALIGN_FLOATS - 1)
                      // BUFFER_ALIGN_FLOATS * BUFFER_ALIGN_FLOATS)
        allocated = malloc((nthreads * per_thread + BUFFER_ALIGN_FLOATS) * sizeof(float))
        if allocated == NULL:
            raise MemoryError(f"cannot allocate {nthreads} logit buffers of "
                              f"{per_thread * 4} bytes")
        buffers = <float*>allocated + aligned_offset(allocated)
        if converts_ahead(w, body):
            for t in range(nthreads):
                (<int64_t*>(buffers + t * per_thread))[0] = -1
    try:
        start = 0
        while start < w.n_units:
            end = start + stretch if w.n_units - start > stretch else w.n_units
            if w.work < RELEASE_GIL_LOGITS:
                walk_units(w, body, call, totals, start, end, nthreads, buffers, per_thread)
            else:
                with nogil:
                    walk_units(w, body, call, totals, start, end, nthreads, buffers,
                               per_thread)
            start = end
            if start < w.n_units and PyErr_CheckSignals() < 0:
                return -1
    finally:
        free(allocated)
    return 0


cdef inline Py_ssize_t aligned_offset(const void* p) noexcept nogil:
    """The floats from ``p`` (float-aligned) to the next BUFFER_ALIGN_FLOATS boundary."""
    cdef size_t at = (<size_t>p // sizeof(float)) % BUFFER_ALIGN_FLOATS
    return <Py_ssize_t>((BUFFER_ALIGN_FLOATS - at) % BUFFER_ALIGN_FLOATS)


cdef void walk_units(const Walk* w, const Body* body, const void* call, double* totals,
                     Py_ssize_t start, Py_ssize_t end, int nthreads, float* buffers,
                     Py_ssize_t per_thread) noexcept nogil:
    cdef Py_ssize_t u
    if nthreads == 1:
        for u in range(start, end):
            totals[u] = walk_unit(w, body, call, u, buffers)
    else:
        for u in prange(start, end, schedule="dynamic", num_threads=nthreads,
                        chunksize=units_per_grab(w.n_units, w.work, end - start, nthreads)):
            totals[u] = walk_unit(w, body, call, u,
                                  buffers + threadid() * per_thread if per_thread else NULL)


cdef double walk_unit(const Walk* w, const Body* body, const void* call, Py_ssize_t unit,
                      float* buffer) noexcept nogil:
    cdef double total = 0.0
    cdef Py_ssize_t b, o, i, n, first, last, tiles
    cdef Py_ssize_t end = (unit + 1) * w.blocks_per_unit
    cdef fastce_fp_mode_t caller_mode = 0
    if w.flush_subnormals:
        caller_mode = fastce_flush_denormals()
    if end > w.n_blocks:
        end = w.n_blocks
    for b in range(unit * w.blocks_per_unit, end):
        if w.shape == WALK_TILES:
            tiles = (w.inner + TILE - 1) // TILE
            o = b // tiles
            i = (b - o * tiles) * TILE
            n = w.inner - i if w.inner - i < TILE else TILE
            walk_tile(w, body, call, unit, o, i, n, buffer, &total)
            continue
        first = b * w.block_rows
        last = first + w.block_rows
        if last > w.outer * w.inner:
            last = w.outer * w.inner
        if w.shape == WALK_SMALL_C:
            walk_small_c(w, body, call, unit, first, last, buffer, &total)
        else:
            walk_rows(w, body, call, unit, first, last, buffer, &total)
    if w.stream_y:
        fastce_active_ops.stream_fence()
    if w.flush_subnormals:
        fastce_restore_fp_mode(caller_mode)
    return total


cdef void walk_rows(const Walk* w, const Body* body, const void* call, Py_ssize_t unit,
                    Py_ssize_t first, Py_ssize_t last, float* buffer,
                    double* total) noexcept nogil:
    """Samples ``first <= j < last``, as pieces of rows one stride apart:
    the whole range when ``inner == 1``, else up to the end of each outer
    position."""
    cdef Piece p
    cdef Py_ssize_t j = first
    cdef Py_ssize_t isz = element_size(w.dtype), ysz = 8 if w.dtype == DT_F64 else 4
    cdef const char* x
    cdef char* y
    cdef fastce_ahead_t ahead
    cdef bint scaled_rows = scale_in_rows(w, body), buffered = rows_buffered(w, body)
    cdef bint converting = converts_ahead(w, body)
    p.C = w.C
    p.xc = w.xc
    p.yc = w.yc
    p.unit = unit
    p.bf16 = w.dtype == DT_BF16
    p.stream_y = w.stream_y
    p.after = NULL
    p.keeps_pending = False
    p.ahead = &ahead
    ahead.pending_y = NULL
    ahead.next_half = NULL
    p.logit_scale = w.t_outer if scaled_rows else 1.0
    while j < last:
        ahead.valid = 0
        if w.inner == 1:
            p.o, p.i, p.o_step, p.i_step = j, 0, 1, 0
            p.n = last - j
            p.xs, p.ys = w.xo, w.yo
        else:
            p.o = j // w.inner
            p.i = j - p.o * w.inner
            p.o_step, p.i_step = 0, 1
            p.n = last - j if last - j < w.inner - p.i else w.inner - p.i
            p.xs, p.ys = w.xi, w.yi
        x = w.x + isz * (p.o * w.xo + p.i * w.xi)
        y = NULL if w.y == NULL else w.y + ysz * (p.o * w.yo + p.i * w.yi)
        if converting:
            half_rows_ahead(w, body, call, &p, <const uint16_t*>x, <float*>y, buffer, total)
        elif buffered:
            buffered_rows(w, body, call, &p, x, y, buffer, total)
        elif w.dtype == DT_F32:
            body.rows_f32(call, &p, <const float*>x, <float*>y, total)
        elif w.dtype == DT_F64:
            body.rows_f64(call, &p, <const double*>x, <double*>y, total)
        else:
            body.rows_half(call, &p, <const uint16_t*>x, <float*>y, total)
        j += p.n


cdef void half_rows_ahead(const Walk* w, const Body* body, const void* call, const Piece* p,
                          const uint16_t* x, float* y, float* buffer,
                          double* total) noexcept nogil:
    """A piece of half rows, one at a time, through a few rows of the
    thread's buffer (half_row_slots): the body's loop over a row converts
    the next row into another one as it reads the row
    (fastce_ahead_t.next_half), so that its bits come from memory while the
    exponentials run, not in a loop of their own.  A row the body did not
    convert is converted here; a row's output may wait for the next row's
    loop, and the piece's last for its end.  Rows one stride apart (inner
    == 1) carry on past the piece: its last row converts the row after it,
    which the thread's next piece starts from when it is that row's (the
    buffer's head says which row it holds, see HALF_HEAD_FLOATS); pieces of
    one row, as long rows are cut, then convert no row apart."""
    cdef Piece q = p[0]
    cdef Py_ssize_t k, C = p.C, slots = half_row_slots(C)
    cdef int64_t* held = <int64_t*>buffer
    cdef float* rows = buffer + HALF_HEAD_FLOATS
    cdef float* row
    cdef float* following
    cdef Py_ssize_t at = 0          # the buffer row of the piece's first row
    cdef bint carries = w.inner == 1, has_next
    q.n = 1
    q.xc, q.xs = 1, C
    q.ahead.next_bf16 = p.bf16
    # a row's output may wait for the next row's loop (fastce_ahead_t): its
    # buffer row is not the one that loop converts into (see half_row_slots)
    q.keeps_pending = True
    if carries and held[0] == p.o:
        at = held[1]
    else:
        fastce_active_ops.half_to_f32(x, C, rows, p.bf16)
    held[0] = -1
    for k in range(p.n):
        row = rows + ((at + k) % slots) * C
        following = rows + ((at + k + 1) % slots) * C
        has_next = k + 1 < p.n or (carries and p.o + k + 1 < w.outer)
        q.o = p.o + k * p.o_step
        q.i = p.i + k * p.i_step
        q.ahead.next_half = x + (k + 1) * p.xs if has_next else NULL
        q.after = following if has_next else NULL
        body.rows_f32(call, &q, row, NULL if y == NULL else y + k * p.ys, total)
        if q.ahead.next_half != NULL:
            fastce_active_ops.half_to_f32(q.ahead.next_half, C, following, p.bf16)
            q.ahead.next_half = NULL
            # maxima taken from the row before it was converted are not its own
            q.ahead.valid = 0
        if has_next and k + 1 == p.n:
            held[0] = p.o + p.n
            held[1] = (at + p.n) % slots
    fastce_active_ops.row_pending_f32(q.ahead, C)


cdef inline Py_ssize_t half_row_slots(Py_ssize_t C) noexcept nogil:
    """Rows of half_rows_ahead's buffer: the row computed, the next one
    converted, and for rows that fit in cache the row before, whose output
    may be written in the loop over the row computed."""
    return 3 if C <= FASTCE_ROW_IN_CACHE else 2


cdef void buffered_rows(const Walk* w, const Body* body, const void* call, const Piece* p,
                        const char* x, char* y, float* buffer, double* total) noexcept nogil:
    """A piece of rows, a few at a time computed into the thread's buffer
    as contiguous rows (half rows converted to float32, then transformed
    when the walk has a transform the bodies do not apply; float32 and
    float64 rows transformed, or copied), small enough to be read back from
    the first-level cache; the output rows then take the transform's
    derivative (in place, or from the buffer as they are streamed: see
    stages_output)."""
    cdef Piece q = p[0]
    cdef bint transform_here = w.transform and not scale_in_rows(w, body)
    cdef bint staged = stages_output(w, body)
    cdef Py_ssize_t start = 0, step = half_rows_at_once(p.C), converted
    cdef Py_ssize_t ysz = 8 if w.dtype == DT_F64 else 4
    cdef char* yrows
    # the staged output rows follow the logit rows in the buffer
    cdef float* stage32 = buffer + rows_held(w) * p.C
    cdef double* stage64 = <double*>buffer + rows_held(w) * p.C
    q.xc, q.xs = 1, p.C
    if transform_here:
        # the output takes the transform's derivative after the body wrote it:
        # streamed by the body, it would be read back from memory
        q.stream_y = False
    if staged:
        q.yc, q.ys = 1, p.C
    while start < p.n:
        q.n = p.n - start if p.n - start < step else step
        q.o = p.o + start * p.o_step
        q.i = p.i + start * p.i_step
        # one row more when there is one and converting it costs little: the
        # last row's body reads it ahead (a transformed row would be computed twice)
        converted = q.n + 1 if start + q.n < p.n and not transform_here else q.n
        yrows = NULL if y == NULL else y + ysz * start * p.ys
        if w.dtype == DT_F64:
            if transform_here:
                transform_rows(w, <const double*>x + start * p.xs, p.xs, p.xc, converted, p.C,
                               <double*>buffer, p.C)
            else:
                copy_rows(<const double*>x + start * p.xs, p.xs, p.xc, converted, p.C,
                          <double*>buffer, p.C)
            q.after = <double*>buffer + q.n * p.C if converted > q.n else NULL
            body.rows_f64(call, &q, <double*>buffer, stage64 if staged else <double*>yrows, total)
            if staged:
                transform_grad_streamed(w, <double*>buffer, q.n, p.C, stage64, <double*>yrows,
                                        p.ys)
            elif yrows != NULL and transform_here:
                transform_grad_rows(w, <double*>buffer, p.C, q.n, p.C, <double*>yrows, p.ys, p.yc)
            start += q.n
            continue
        if w.dtype == DT_F32 and transform_here:
            transform_rows(w, <const float*>x + start * p.xs, p.xs, p.xc, converted, p.C,
                           buffer, p.C)
        elif w.dtype == DT_F32:
            copy_rows(<const float*>x + start * p.xs, p.xs, p.xc, converted, p.C, buffer, p.C)
        else:
            rows_to_f32(<const uint16_t*>x + start * p.xs, p.xs, p.xc, converted, p.C, p.bf16,
                        buffer)
            if transform_here:
                transform_values(w, buffer, converted * p.C, buffer)
        q.after = buffer + q.n * p.C if converted > q.n else NULL
        body.rows_f32(call, &q, buffer, stage32 if staged else <float*>yrows, total)
        if staged:
            transform_grad_streamed(w, buffer, q.n, p.C, stage32, <float*>yrows, p.ys)
        elif yrows != NULL and transform_here:
            transform_grad_rows(w, buffer, p.C, q.n, p.C, <float*>yrows, p.ys, p.yc)
        start += q.n


cdef inline void transform_values(const Walk* w, const floating* x, Py_ssize_t n,
                                  floating* y) noexcept nogil:
    """The walk's transform of ``n`` contiguous values (``y`` may be ``x``)."""
    if floating is float:
        fastce_active_ops.transform_f32(x, n, <float>w.t_outer, <float>w.t_inner, y)
    else:
        fastce_active_ops.transform_f64(x, n, w.t_outer, w.t_inner, y)


cdef void copy_rows(const floating* x, Py_ssize_t xs, Py_ssize_t xc, Py_ssize_t n,
                    Py_ssize_t C, floating* out, Py_ssize_t os) noexcept nogil:
    """``n`` rows of ``C`` values, ``xs`` apart and ``xc`` between classes, as
    contiguous rows of ``out``, ``os`` apart."""
    cdef Py_ssize_t k, c
    cdef const floating* row
    for k in range(n):
        row = x + k * xs
        if xc == -1:
            # a reversed class axis, the usual strided row: one backward sweep
            for c in range(C):
                out[k * os + c] = row[-c]
        else:
            for c in range(C):
                out[k * os + c] = row[c * xc]


cdef void transform_rows(const Walk* w, const floating* x, Py_ssize_t xs, Py_ssize_t xc,
                         Py_ssize_t n, Py_ssize_t C, floating* out,
                         Py_ssize_t os) noexcept nogil:
    """``n`` rows of ``C`` values, ``xs`` apart, transformed into the
    contiguous rows of ``out``, ``os`` apart (``out`` may be ``x`` itself
    when its rows are contiguous and as far apart)."""
    cdef Py_ssize_t k
    if xc == 1 and xs == C and os == C:
        transform_values(w, x, n * C, out)
        return
    for k in range(n):
        if xc == 1:
            transform_values(w, x + k * xs, C, out + k * os)
        else:
            copy_rows(x + k * xs, xs, xc, 1, C, out + k * os, os)
            transform_values(w, out + k * os, C, out + k * os)


cdef inline void chain_rule(const Walk* w, floating* g, floating t) noexcept nogil:
    """Multiplies ``g`` by the transform's derivative where it took the value
    ``t``, as transform_grad does (a zero ``g`` stays zero)."""
    cdef floating u
    if g[0] == 0:
        return
    if w.t_inner == 0.0:
        g[0] *= <floating>w.t_outer
        return
    u = t * <floating>(1.0 / w.t_outer)
    g[0] *= <floating>(w.t_outer * w.t_inner) * (1 - u * u)


cdef void transform_grad_rows(const Walk* w, const floating* t, Py_ssize_t ts, Py_ssize_t n,
                              Py_ssize_t C, floating* g, Py_ssize_t gs,
                              Py_ssize_t gc) noexcept nogil:
    """Multiplies ``n`` output rows of ``C`` values (``gs`` apart, value
    stride ``gc``) by the transform's derivative at the transformed values
    ``t`` (contiguous rows, ``ts`` apart): the chain rule from the
    transformed logits to the logits."""
    cdef Py_ssize_t k, c
    for k in range(n):
        if gc == 1:
            chain_row(w, t + k * ts, C, g + k * gs, g + k * gs, False)
        else:
            for c in range(C):
                chain_rule(w, &g[k * gs + c * gc], t[k * ts + c])


cdef void transform_grad_streamed(const Walk* w, const floating* t, Py_ssize_t n, Py_ssize_t C,
                                  const floating* g, floating* out,
                                  Py_ssize_t os) noexcept nogil:
    """transform_grad_rows of ``n`` contiguous rows ``g`` (``t``'s layout),
    stored past the caches into the rows of ``out``, ``os`` apart."""
    cdef Py_ssize_t k
    for k in range(n):
        chain_row(w, t + k * C, C, g + k * C, out + k * os, True)


cdef inline void chain_row(const Walk* w, const floating* t, Py_ssize_t C, const floating* g,
                           floating* out, bint stream) noexcept nogil:
    if floating is float:
        fastce_active_ops.transform_grad_f32(t, C, <float>w.t_outer, <float>w.t_inner, g, out,
                                             stream)
    else:
        fastce_active_ops.transform_grad_f64(t, C, w.t_outer, w.t_inner, g, out, stream)


cdef inline Py_ssize_t half_rows_at_once(Py_ssize_t C) noexcept nogil:
    return rows_within(HALF_ROW_ELEMENTS, C)


cdef inline Py_ssize_t rows_within(Py_ssize_t elements, Py_ssize_t C) noexcept nogil:
    """Whole rows of ``C`` elements in ``elements``, at least one."""
    cdef Py_ssize_t rows = elements // (C if C > 0 else 1)
    return rows if rows > 1 else 1


cdef void rows_to_f32(const uint16_t* x, Py_ssize_t xs, Py_ssize_t xc, Py_ssize_t n,
                      Py_ssize_t C, bint bf16, float* out) noexcept nogil:
    """``n`` half rows, ``xs`` apart, as contiguous float32 rows."""
    cdef Py_ssize_t k, c
    if xc == 1 and xs == C:
        fastce_active_ops.half_to_f32(x, n * C, out, bf16)
    elif xc == 1:
        for k in range(n):
            fastce_active_ops.half_to_f32(x + k * xs, C, out + k * C, bf16)
    else:
        for k in range(n):
            for c in range(C):
                out[k * C + c] = half_value(x[k * xs + c * xc], bf16)


cdef inline float half_value(uint16_t bits, bint bf16) noexcept nogil:
    return fastce_bf16_to_f32(bits) if bf16 else fastce_f16_to_f32(bits)


cdef void walk_tile(const Walk* w, const Body* body, const void* call, Py_ssize_t unit,
                    Py_ssize_t o, Py_ssize_t i, Py_ssize_t n, float* buffer,
                    double* total) noexcept nogil:
    """The ``n`` samples ``(o, i)`` onwards, neighbours along the inner axis."""
    cdef Piece p
    cdef Py_ssize_t isz = element_size(w.dtype), ysz = 8 if w.dtype == DT_F64 else 4
    cdef Py_ssize_t start, width, c, k
    cdef const char* x = w.x + isz * (o * w.xo + i * w.xi)
    cdef char* y = NULL if w.y == NULL else w.y + ysz * (o * w.yo + i * w.yi)
    cdef const uint16_t* src
    cdef float* out32
    cdef double* out64
    p.C = w.C
    p.o, p.i, p.o_step, p.i_step = o, i, 0, 1
    p.unit = unit
    p.bf16 = w.dtype == DT_BF16
    p.stream_y = False
    p.after = NULL
    p.keeps_pending = False
    p.ahead = NULL
    p.logit_scale = 1.0
    p.yc, p.ys = w.yc, w.yi
    if (w.dtype == DT_F32 or w.dtype == DT_F64) and not w.transform:
        p.n, p.xc, p.xs = n, w.xc, w.xi
        if w.dtype == DT_F32:
            body.tile_f32(call, &p, <const float*>x, <float*>y, total)
        else:
            body.tile_f64(call, &p, <const double*>x, <double*>y, total)
        return
    # a few samples at a time into the thread's buffer, class by class
    width = half_tile_width(w.C)
    start = 0
    while start < n:
        p.n = n - start if n - start < width else width
        p.i = i + start
        p.xc, p.xs = p.n, 1
        if w.dtype == DT_F64:
            transform_rows(w, <const double*>x + start * w.xi, w.xc, w.xi, w.C, p.n,
                           <double*>buffer, p.n)
            out64 = NULL if y == NULL else <double*>y + start * w.yi
            body.tile_f64(call, &p, <double*>buffer, out64, total)
            if out64 != NULL:
                transform_grad_tile(w, <double*>buffer, w.C, p.n, out64, w.yc, w.yi)
            start += p.n
            continue
        if w.dtype == DT_F32:
            transform_rows(w, <const float*>x + start * w.xi, w.xc, w.xi, w.C, p.n, buffer,
                           p.n)
        else:
            src = <const uint16_t*>x + start * w.xi
            for c in range(w.C):
                if w.xi == 1:
                    fastce_active_ops.half_to_f32(src + c * w.xc, p.n, buffer + c * p.n,
                                                  p.bf16)
                else:
                    for k in range(p.n):
                        buffer[c * p.n + k] = half_value(src[c * w.xc + k * w.xi], p.bf16)
            if w.transform:
                transform_values(w, buffer, w.C * p.n, buffer)
        out32 = NULL if y == NULL else <float*>y + start * w.yi
        body.tile_f32(call, &p, buffer, out32, total)
        if out32 != NULL and w.transform:
            transform_grad_tile(w, buffer, w.C, p.n, out32, w.yc, w.yi)
        start += p.n


cdef void transform_grad_tile(const Walk* w, const floating* t, Py_ssize_t C, Py_ssize_t n,
                              floating* g, Py_ssize_t gc, Py_ssize_t gi) noexcept nogil:
    """transform_grad_rows for a tile: ``t`` holds class ``c`` of sample
    ``k`` at ``t[c * n + k]``, the output at ``g[c * gc + k * gi]``."""
    cdef Py_ssize_t c, k
    if gi == 1:
        transform_grad_rows(w, t, n, C, n, g, gc, 1)
        return
    for c in range(C):
        for k in range(n):
            chain_rule(w, &g[c * gc + k * gi], t[c * n + k])


cdef inline void gather_rows(const floating* x, Py_ssize_t row_stride, Py_ssize_t C,
                             Py_ssize_t n, floating* buf) noexcept nogil:
    """Rows ``x[k * row_stride : + C]`` for ``k < n`` into ``buf[c * TILE + k]``."""
    if floating is float:
        fastce_active_ops.gather_tile_f32(x, row_stride, C, n, buf, TILE)
    else:
        fastce_active_ops.gather_tile_f64(x, row_stride, C, n, buf, TILE)


cdef inline void scatter_rows(const floating* buf, Py_ssize_t C, Py_ssize_t n,
                              floating* y, Py_ssize_t row_stride, Py_ssize_t yc) noexcept nogil:
    """``buf[c * TILE + k]`` back into ``y[k * row_stride + c * yc]``."""
    if floating is float:
        fastce_active_ops.scatter_tile_f32(buf, TILE, C, n, y, row_stride, yc)
    else:
        fastce_active_ops.scatter_tile_f64(buf, TILE, C, n, y, row_stride, yc)


cdef void walk_small_c(const Walk* w, const Body* body, const void* call, Py_ssize_t unit,
                       Py_ssize_t first, Py_ssize_t last, float* buffer,
                       double* total) noexcept nogil:
    """Rows ``first <= j < last`` of at most SMALL_C contiguous classes
    (``inner == 1``), TILE at a time transposed into a tile and back."""
    # the tiles start on a pair of cache lines: as the stack happened to lay
    # them out, AVX2's loads of a tile's columns could straddle two lines, and
    # a gradient of (65536, 10) took 10 % longer
    cdef float tiles[6 * TILE * SMALL_C + BUFFER_ALIGN_FLOATS]  # two float, two double tiles
    cdef float* x32 = tiles + aligned_offset(tiles)
    cdef float* y32 = x32 + TILE * SMALL_C
    cdef double* x64 = <double*>(y32 + TILE * SMALL_C)
    cdef double* y64 = x64 + TILE * SMALL_C
    cdef Piece p
    cdef Py_ssize_t j = first, k, c
    cdef Py_ssize_t isz = element_size(w.dtype)
    cdef const char* x
    p.C = w.C
    p.xc, p.xs, p.yc, p.ys = TILE, 1, TILE, 1
    p.i, p.o_step, p.i_step = 0, 1, 0
    p.unit = unit
    p.bf16 = w.dtype == DT_BF16
    p.stream_y = False
    p.after = NULL
    p.keeps_pending = False
    p.ahead = NULL
    p.logit_scale = 1.0
    while j < last:
        p.n = last - j if last - j < TILE else TILE
        p.o = j
        x = w.x + isz * j * w.xo
        if w.dtype == DT_F64:
            gather_rows(<const double*>x, w.xo, w.C, p.n, x64)
            if w.transform:
                transform_rows(w, x64, TILE, 1, w.C, p.n, x64, TILE)
            body.tile_f64(call, &p, x64, NULL if w.y == NULL else y64, total)
            if w.y != NULL:
                if w.transform:
                    transform_grad_rows(w, x64, TILE, w.C, p.n, y64, TILE, 1)
                scatter_rows(y64, w.C, p.n, <double*>w.y + j * w.yo, w.yo, w.yc)
        else:
            if w.dtype == DT_F32:
                gather_rows(<const float*>x, w.xo, w.C, p.n, x32)
            elif w.xo == w.C:
                fastce_active_ops.half_to_f32(<const uint16_t*>x, p.n * w.C, buffer, p.bf16)
                gather_rows(<const float*>buffer, w.C, w.C, p.n, x32)
            else:
                for k in range(p.n):
                    for c in range(w.C):
                        x32[c * TILE + k] = half_value((<const uint16_t*>x)[k * w.xo + c],
                                                       p.bf16)
            if w.transform:
                transform_rows(w, x32, TILE, 1, w.C, p.n, x32, TILE)
            body.tile_f32(call, &p, x32, NULL if w.y == NULL else y32, total)
            if w.y != NULL:
                if w.transform:
                    transform_grad_rows(w, x32, TILE, w.C, p.n, y32, TILE, 1)
                scatter_rows(y32, w.C, p.n, <float*>w.y + j * w.yo, w.yo, w.yc)
        j += p.n


cdef double ordered_sum(const double* totals, Py_ssize_t n) noexcept nogil:
    cdef double total = 0.0
    cdef Py_ssize_t u
    for u in range(n):
        total += totals[u]
    return total


cdef double* block_totals(Py_ssize_t n_units, double* few) except NULL:
    """Room for a call's unit totals: ``few`` (FEW_TOTALS of them, on the
    caller's stack) when they fit, for small calls an allocation would cost as
    much as the arithmetic; else memory the caller frees when it is not ``few``."""
    if n_units <= FEW_TOTALS:
        return few
    cdef double* totals = <double*>malloc(n_units * sizeof(double))
    if totals == NULL:
        raise MemoryError(f"cannot allocate {n_units} unit totals")
    return totals


cdef double walk_total(Walk* w, const Body* body, const void* call, bint gather,
                       Py_ssize_t block_rows) except? -1.0:
    """Plans and runs a walk of one-block units; returns the sum of their
    totals, added in unit order."""
    cdef double few[FEW_TOTALS]
    cdef double* totals
    cdef double total
    walk_plan(w, body, gather, block_rows, 0)
    totals = block_totals(w.n_units, few)
    try:
        walk_run(w, body, call, totals)
        total = ordered_sum(totals, w.n_units)
    finally:
        if totals != few:
            free(totals)
    return total


# --------------------------------------------------------------------------
# Cross-entropy of one sample, row layout
# --------------------------------------------------------------------------

cdef inline double ce_index_row(const floating* x, Py_ssize_t xc, Py_ssize_t C,
                                int64_t target, const CEOptions* opt,
                                floating* grad, Py_ssize_t yc, double g, bint stream,
                                const floating* next, fastce_ahead_t* ahead,
                                floating* lse_out, double* z_out, double sc) noexcept nogil:
    """Loss of one sample with a class-index target (its z-loss included),
    the row seen through the positive logit scale ``sc`` (1: as it is);
    writes its gradient row (with respect to the logits as they are) scaled
    by ``g`` when ``grad`` is not NULL (``stream``: as row_scaled_exp), its
    log-sum-exp to ``lse_out`` and its z-loss to ``z_out`` when those are
    not NULL.  With ``ahead`` (contiguous rows only), the row's maxima come
    from there when the previous row left them, and ``next``'s (another
    row, or NULL) are left there."""
    cdef Py_ssize_t c
    cdef double eps = opt.smoothing
    cdef double a_t, A, s, loss, lse, wz, z_term = 0.0, smooth_coef = eps / C
    cdef floating m, scale_f, x_t, fsc = <floating>sc

    cdef bint active
    sc = <double>fsc  # the scale the vector kernels multiply by, in every term
    A = index_coefficient(opt, target, C, &a_t, &active)
    if not active:
        # every coefficient is zero: nothing contributes, not even NaN logits
        if grad != NULL:
            for c in range(C):
                grad[c * yc] = 0
        if lse_out != NULL:
            s = row_stats_ahead(x, C, xc, &m, next, ahead, fsc)
            lse_out[0] = <floating>row_logsumexp(x, xc, C, m, log(s), sc)
        elif ahead != NULL:
            ahead.valid = 0
        if z_out != NULL:
            z_out[0] = 0.0
        return 0.0

    s = row_stats_ahead(x, C, xc, &m, next, ahead, fsc)
    x_t = x[target * xc]  # kept: with out=logits the gradient pass overwrites it
    loss = index_row_loss(x, xc, C, target, m, log(s), A, a_t, opt, sc)
    if lse_out != NULL or opt.z_loss != 0.0:
        lse = row_logsumexp(x, xc, C, m, log(s), sc)
        if lse_out != NULL:
            lse_out[0] = <floating>lse
        if opt.z_loss != 0.0:
            wz = opt.z_loss * (1.0 if opt.weight == NULL else opt.weight[target])
            z_term = wz * lse * lse
            loss += z_term
            # d(wz lse^2) = 2 wz lse softmax: one more coefficient on the softmax
            A += 2.0 * wz * lse
    if z_out != NULL:
        z_out[0] = z_term

    if grad != NULL:
        # the chain rule through the scale: g * sc on every term
        g *= sc
        scale_f = <floating>(g * A / s)
        if eps == 0.0 or opt.weight == NULL:
            # no smoothing, no offset: an infinite g must not meet a 0 coefficient
            row_scaled_exp(x, xc, C, m, fsc, scale_f,
                           <floating>(g * smooth_coef) if eps != 0.0 else 0, grad, yc, stream)
        else:
            for c in range(C):
                grad[c * yc] = (scale_f * exp_neg(scaled_shift(x[c * xc], m, fsc))
                                - <floating>(g * smooth_coef * opt.weight[c]))
        # the target's element once more in float64: p_t - 1 cancels
        grad[target * yc] = <floating>(
            g * A / s * <double>exp_neg(scaled_shift(x_t, m, fsc))
            - g * (a_t + smooth_coef * (1.0 if opt.weight == NULL else opt.weight[target])))
    return loss


cdef inline double ce_prob_row(const floating* x, Py_ssize_t xc, Py_ssize_t C,
                               const floating* p, Py_ssize_t pc, const CEOptions* opt,
                               floating* grad, Py_ssize_t yc, double g,
                               floating* lse_out, double* z_out, double sc) noexcept nogil:
    """Loss of one sample with a probability target row ``p``; otherwise as
    ce_index_row."""
    cdef Py_ssize_t c
    cdef double eps = opt.smoothing
    cdef double smooth = eps / C
    cdef double s, A = 0.0, dot = 0.0, a, wc, gp, lse = 0.0, loss, z_term = 0.0
    cdef bint any_coefficient = False
    cdef floating m, fsc = <floating>sc

    sc = <double>fsc  # the scale the vector kernels multiply by, in every term
    s = row_stats(x, C, xc, &m, fsc)
    if lse_out != NULL or opt.z_loss != 0.0:
        lse = row_logsumexp(x, xc, C, m, log(s), sc)
        if lse_out != NULL:
            lse_out[0] = <floating>lse
    for c in range(C):
        wc = 1.0 if opt.weight == NULL else opt.weight[c]
        a = wc * ((1.0 - eps) * <double>p[c * pc] + smooth)
        A += a
        if a != 0.0:
            any_coefficient = True
            dot += a * ((<double>x[c * xc] - <double>m) * sc)
    if not any_coefficient:
        # nothing contributes, not even NaN logits; signed coefficients that
        # sum to 0 still do
        if grad != NULL:
            for c in range(C):
                grad[c * yc] = 0
        if z_out != NULL:
            z_out[0] = 0.0
        return 0.0
    loss = A * log(s) - dot
    if opt.z_loss != 0.0:
        z_term = opt.z_loss * lse * lse
        loss += z_term
        A += 2.0 * opt.z_loss * lse
    if z_out != NULL:
        z_out[0] = z_term
    if grad != NULL:
        g *= sc  # the chain rule through the scale
        gp = g * A / s
        for c in range(C):
            wc = 1.0 if opt.weight == NULL else opt.weight[c]
            a = wc * ((1.0 - eps) * <double>p[c * pc] + smooth)
            grad[c * yc] = <floating>(gp * exp_neg(scaled_shift(x[c * xc], m, fsc)) - g * a)
    return loss


# --------------------------------------------------------------------------
# Cross-entropy: the bodies
# --------------------------------------------------------------------------

cdef struct CECall:
    CEOptions opt
    Targets t               # class indices; t.data NULL for probability targets
    const char* p           # probability targets (the logits' result dtype)
    Py_ssize_t po, pc, pi
    char* loss              # per-sample losses (or NULL)
    Py_ssize_t lo, li
    char* lse               # per-sample log-sum-exp of the logits the body sees (or NULL)
    Py_ssize_t so, si
    double* z_terms         # per-sample z-loss, included in the loss (or NULL)
    Py_ssize_t zo, zi
    const double* gout      # grad_output (NULL without a gradient)
    Py_ssize_t go, gi


cdef inline Py_ssize_t sample_step(const Piece* p, Py_ssize_t so, Py_ssize_t si) noexcept nogil:
    """The distance between neighbouring samples of a piece in a per-sample array."""
    return p.o_step * so + p.i_step * si


cdef void ce_rows(const void* call_, const Piece* p, const floating* x, floating* y,
                  double* total) noexcept nogil:
    cdef const CECall* call = <const CECall*>call_
    cdef const floating* probs = <const floating*>call.p
    cdef floating* loss_out = <floating*>call.loss
    cdef floating* lse_out = <floating*>call.lse
    cdef floating* grow = NULL
    cdef floating* lse_k = NULL
    cdef double* z_k = NULL
    cdef const floating* next_row
    cdef Py_ssize_t k
    cdef double g = 0.0, loss
    cdef int64_t target
    # contiguous rows take their maxima while the previous row is summed
    cdef fastce_ahead_t* look_ahead = p.ahead if p.xc == 1 else NULL
    for k in range(p.n):
        if y != NULL:
            g = call.gout[sample_offset(p, k, call.go, call.gi)] / call.opt.denominator
            grow = y + k * p.ys
        if lse_out != NULL:
            lse_k = lse_out + sample_offset(p, k, call.so, call.si)
        if call.z_terms != NULL:
            z_k = call.z_terms + sample_offset(p, k, call.zo, call.zi)
        if call.t.data != NULL:
            target = target_at(&call.t, p.o + k * p.o_step, p.i + k * p.i_step)
            next_row = x + (k + 1) * p.xs if k + 1 < p.n else <const floating*>p.after
            loss = ce_index_row(x + k * p.xs, p.xc, p.C, target, &call.opt, grow, p.yc, g,
                                p.stream_y, next_row, look_ahead, lse_k, z_k, p.logit_scale)
        else:
            loss = ce_prob_row(x + k * p.xs, p.xc, p.C,
                               probs + sample_offset(p, k, call.po, call.pi), call.pc,
                               &call.opt, grow, p.yc, g, lse_k, z_k, p.logit_scale)
        if loss_out != NULL:
            loss_out[sample_offset(p, k, call.lo, call.li)] = <floating>loss
        total[0] += loss


cdef void ce_tile(const void* call_, const Piece* p, const floating* x, floating* grad,
                  double* total) noexcept nogil:
    """The ``p.n <= TILE`` samples of a tile, class by class."""
    cdef const CECall* call = <const CECall*>call_
    cdef const CEOptions* opt = &call.opt
    cdef floating m[TILE]
    cdef floating scale[TILE]
    cdef floating offset[TILE]
    cdef double s[TILE]
    cdef double A[TILE]
    cdef double dot[TILE]
    cdef double gk[TILE]
    cdef floating x_t[TILE]
    cdef floating e_t[TILE]          # exp(x_t - m), for the targets' gradient
    cdef floating unit[TILE]
    cdef floating nothing[TILE]
    cdef double log_s[TILE]
    cdef int64_t tgt[TILE]
    # whether any of the sample's coefficients is not 0: a sample without one
    # contributes exactly nothing
    cdef bint active[TILE]
    cdef Py_ssize_t c, k, n = p.n, C = p.C
    cdef Py_ssize_t xc = p.xc, xi = p.xs, yc = p.yc, yi = p.ys
    cdef double eps = opt.smoothing
    cdef double smooth = eps / C
    cdef double wc, a, loss, g, lse, wz, z_term
    cdef bint any_zero = False
    cdef const floating* xrow
    cdef floating* yrow
    cdef bint index = call.t.data != NULL
    cdef const floating* probs = NULL
    cdef Py_ssize_t pk = 0, pc = call.pc
    cdef floating* loss_out = NULL
    cdef floating* lse_out = NULL
    cdef double* z_out = NULL
    cdef const double* gout = NULL
    if not index:
        probs = <const floating*>call.p + sample_offset(p, 0, call.po, call.pi)
        pk = sample_step(p, call.po, call.pi)
    if call.loss != NULL:
        loss_out = <floating*>call.loss + sample_offset(p, 0, call.lo, call.li)
    if call.lse != NULL:
        lse_out = <floating*>call.lse + sample_offset(p, 0, call.so, call.si)
    if call.z_terms != NULL:
        z_out = call.z_terms + sample_offset(p, 0, call.zo, call.zi)
    if grad != NULL:
        gout = call.gout + sample_offset(p, 0, call.go, call.gi)

    tile_stats(x, xc, xi, C, n, m, s)
    if index:
        tile_targets(&call.t, p, opt, tgt, A, active)
        tile_index_terms(x, xc, xi, C, n, tgt, opt, m, x_t, dot)
    else:
        for k in range(n):
            dot[k] = 0.0
            A[k] = 0.0
            active[k] = False
        for c in range(C):
            wc = 1.0 if opt.weight == NULL else opt.weight[c]
            xrow = x + c * xc
            for k in range(n):
                a = wc * ((1.0 - eps) * <double>probs[c * pc + k * pk] + smooth)
                A[k] += a
                if a != 0.0:
                    active[k] = True
                    dot[k] += a * (<double>xrow[k * xi] - <double>m[k])

    fastce_active_ops.tile_log(s, n, log_s)
    # the running total in a register: through memory, every sample's addition
    # would wait for the store of the one before (the same additions, in order)
    cdef double running_total = total[0]
    # read once: the stores below could alias the options, as far as the compiler knows
    cdef bint wants_lse = lse_out != NULL or opt.z_loss != 0.0
    for k in range(n):
        loss = sample_loss(active[k], A[k], log_s[k], dot[k])
        z_term = 0.0
        if wants_lse:
            lse = row_logsumexp(x + k * xi, xc, C, m[k], log_s[k], 1.0)
            if lse_out != NULL:
                lse_out[k * sample_step(p, call.so, call.si)] = <floating>lse
            if opt.z_loss != 0.0 and active[k]:
                wz = opt.z_loss * (1.0 if not index or opt.weight == NULL
                                   else opt.weight[tgt[k]])
                z_term = wz * lse * lse
                loss += z_term
                A[k] += 2.0 * wz * lse  # as in ce_index_row
        if z_out != NULL:
            z_out[k * sample_step(p, call.zo, call.zi)] = z_term
        any_zero = any_zero or not active[k]
        running_total += loss
        if loss_out != NULL:
            loss_out[k * sample_step(p, call.lo, call.li)] = <floating>loss
    total[0] = running_total

    if grad == NULL:
        return
    for k in range(n):
        g = gout[k * sample_step(p, call.go, call.gi)] / opt.denominator
        gk[k] = g if active[k] else 0.0
        scale[k] = <floating>(g * A[k] / s[k] if active[k] else 0.0)
        offset[k] = <floating>(gk[k] * smooth) if eps != 0.0 else 0
    if index and xi == 1 and yi == 1:
        if floating is float:
            fastce_active_ops.tile_scaled_exp_classes_f32(x, xc, C, n, m, scale, opt.weight,
                                                          offset, grad, yc)
        else:
            fastce_active_ops.tile_scaled_exp_classes_f64(x, xc, C, n, m, scale, opt.weight,
                                                          offset, grad, yc)
    else:
        for c in range(C):
            xrow = x + c * xc
            yrow = grad + c * yc
            wc = 1.0 if opt.weight == NULL else opt.weight[c]
            if index:
                tile_scaled_exp(xrow, xi, n, m, scale, <floating>wc, offset, yrow, yi)
            else:
                for k in range(n):
                    a = wc * ((1.0 - eps) * <double>probs[c * pc + k * pk] + smooth)
                    yrow[k * yi] = <floating>(scale[k] * exp_neg(xrow[k * xi] - m[k])
                                              - gk[k] * a)
    if any_zero:
        # samples with no coefficient get exactly zero, whatever their logits
        for c in range(C):
            yrow = grad + c * yc
            for k in range(n):
                if not active[k]:
                    yrow[k * yi] = 0
    if index:
        # the targets' elements once more in float64: p_t - 1 cancels; their
        # exp(x_t - m) a vector at a time (the rest of x_t is not read again)
        for k in range(n):
            unit[k] = 1
            nothing[k] = 0
            if not (tgt[k] >= 0 and active[k]):
                x_t[k] = m[k]
        tile_scaled_exp(x_t, 1, n, m, unit, 0, nothing, e_t, 1)
        for k in range(n):
            if tgt[k] >= 0 and active[k]:
                wc = 1.0 if opt.weight == NULL else opt.weight[tgt[k]]
                c = tgt[k]
                grad[c * yc + k * yi] = <floating>(
                    gk[k] * A[k] / s[k] * <double>e_t[k]
                    - gk[k] * ((1.0 - eps) * wc + smooth * wc))


cdef Body CE_BODY = make_body(
    ce_rows[float], ce_rows[double], ce_tile[float], ce_tile[double], NULL, rows_scale=True,
    whole_rows=True, reads_ahead=True)


# --------------------------------------------------------------------------
# Cross-entropy: the entry points
# --------------------------------------------------------------------------

cdef void ce_options(CEOptions* opt, object weight, double weight_sum,
                     double smoothing, int64_t ignore_index, bint has_ignore,
                     double denominator, double z_loss=0.0) except *:
    """``weight``: a contiguous float64 array of a weight per class, empty for none."""
    cdef cnp.ndarray w = weight
    if cnp.PyArray_NDIM(w) != 1 or cnp.PyArray_TYPE(w) != cnp.NPY_DOUBLE \
            or not cnp.PyArray_ISCARRAY_RO(w):
        raise ValueError("internal: class weights are read as a contiguous float64 vector")
    cdef Py_ssize_t n = cnp.PyArray_DIM(w, 0)
    opt.weight = <const double*>cnp.PyArray_DATA(w) if n > 0 else NULL
    opt.weight_sum = weight_sum
    opt.any_weight = any_nonzero(opt.weight, n)
    opt.smoothing = smoothing
    opt.ignore_index = ignore_index
    opt.has_ignore = has_ignore
    opt.denominator = denominator
    opt.z_loss = z_loss


cdef inline void ce_call_init(CECall* call) noexcept nogil:
    """No probability targets and no per-sample output or gradient: the
    fields an entry point does not set itself."""
    call.p = NULL
    call.po = call.pc = call.pi = 0
    call.loss = call.lse = NULL
    call.z_terms = NULL
    call.lo = call.li = call.so = call.si = call.zo = call.zi = 0
    call.gout = NULL
    call.go = call.gi = 0


cdef void ce_outputs(Walk* w, CECall* call, object loss_out, object lse_out, object z_out,
                     object grad_output, object grad, bint grad_written_before) except *:
    """The per-sample losses, log-sum-exps and (float64) z-losses (or None),
    and the gradient (or None, given as walk_output's) with its grad_output:
    an (outer, inner) array, or a 0-d one (or (1, 1)) for one value read at
    every sample."""
    cdef Py_ssize_t s[2]
    cdef int rt = result_typenum(w)
    call.loss = array_data(loss_out, 2, rt, s)
    call.lo, call.li = s[0], s[1]
    call.lse = array_data(lse_out, 2, rt, s)
    call.so, call.si = s[0], s[1]
    call.z_terms = <double*>array_data(z_out, 2, cnp.NPY_DOUBLE, s)
    call.zo, call.zi = s[0], s[1]
    walk_output(w, grad, grad_written_before)
    call.gout = NULL
    call.go = call.gi = 0
    cdef cnp.ndarray go
    if w.y != NULL:
        w.flush_subnormals = True
        go = grad_output
        if cnp.PyArray_NDIM(go) == 0:
            call.gout = <const double*>array_data(go, 0, cnp.NPY_DOUBLE, s)
            return  # one value for every sample: go = gi = 0
        call.gout = <const double*>array_data(go, 2, cnp.NPY_DOUBLE, s)
        call.go, call.gi = s[0], s[1]
        if cnp.PyArray_DIM(go, 0) == 1 and cnp.PyArray_DIM(go, 1) == 1:
            call.go = call.gi = 0  # one value for every sample


cdef double cross_entropy_index(object x, object target, object weight, double weight_sum,
                                double smoothing, int64_t ignore_index, bint has_ignore,
                                object loss_out, object grad_output, double denominator,
                                object grad, int num_threads, bint grad_written_before,
                                double logit_scale, double softcap, double z_loss,
                                object lse_out, object z_out) except *:
    """Cross-entropy with class-index targets over an ``(outer, C, inner)``
    view ``x`` (float32, float64, float16 or bfloat16); returns the float64
    sum of the per-sample losses.

    ``target`` has shape ``(outer, inner)``, any integer dtype.  ``loss_out``
    (or None) receives the per-sample losses; ``grad`` (or None) receives
    ``grad_output / denominator`` times the gradient; both have the result
    dtype (float32 for half logits); ``grad_written_before`` says it is memory the
    caller handed in (out=).  ``weight`` is empty when there are no
    class weights.  The logits the loss sees are ``logit_scale * softcap *
    tanh(x / softcap)`` (``logit_scale * x`` for ``softcap`` 0), and the
    gradient is with respect to ``x``; each sample's loss includes its z-loss
    ``z_loss * w[t] * lse^2``; ``lse_out`` (or None, the shape of
    ``loss_out``) receives ``lse``, the log-sum-exp of the transformed logits,
    and ``z_out`` (or None, float64) each sample's z-loss.
    The caller has validated everything: targets are in ``[0, C)`` or equal
    ``ignore_index``, shapes agree, and ``outer * inner > 0`` with ``C > 0``.
    """
    cdef Walk w
    cdef CECall call
    walk_from(&w, x)
    walk_transform(&w, logit_scale, softcap)
    w.threads = num_threads
    targets_from(&call.t, target)
    ce_call_init(&call)
    ce_options(&call.opt, weight, weight_sum, smoothing, ignore_index, has_ignore, denominator,
               z_loss)
    ce_outputs(&w, &call, loss_out, lse_out, z_out, grad_output, grad, grad_written_before)
    return walk_total(&w, &CE_BODY, &call, True, 0)


cdef double cross_entropy_probs(object x, object probs, object weight, double smoothing,
                                object loss_out, object grad_output, double denominator,
                                object grad, int num_threads, bint grad_written_before,
                                double logit_scale, double softcap, double z_loss,
                                object lse_out, object z_out) except *:
    """Cross-entropy with probability targets ``probs`` (the shape of ``x``,
    the result dtype); otherwise as :func:`cross_entropy_index`, the z-loss
    of every sample being ``z_loss * lse^2``."""
    cdef Walk w
    cdef CECall call
    cdef Py_ssize_t s[3]
    walk_from(&w, x)
    walk_transform(&w, logit_scale, softcap)
    w.threads = num_threads
    targets_from(&call.t, None)
    ce_call_init(&call)
    call.p = array_data(probs, 3, result_typenum(&w), s)
    call.po, call.pc, call.pi = s[0], s[1], s[2]
    ce_options(&call.opt, weight, 0.0, smoothing, 0, False, denominator, z_loss)
    ce_outputs(&w, &call, loss_out, lse_out, z_out, grad_output, grad, grad_written_before)
    # rows of few classes stay rows: their probabilities would need the same transposition
    return walk_total(&w, &CE_BODY, &call, False, 0)


_float32 = np.float32
_float64 = np.float64


cdef int stored_dtype(cnp.ndarray x):
    """The walk's dtype of a float32, float64, float16 or bfloat16 array; -1
    for any other."""
    cdef int xtype = cnp.PyArray_TYPE(x)
    if xtype == cnp.NPY_FLOAT:
        return DT_F32
    if xtype == cnp.NPY_DOUBLE:
        return DT_F64
    if xtype == NPY_HALF_TYPE:
        return DT_F16
    if is_bfloat16(x):
        return DT_BF16
    return -1


# --------------------------------------------------------------------------
# log_softmax, softmax, logsumexp
# --------------------------------------------------------------------------

cdef inline void softmax_row(const floating* x, Py_ssize_t xc, Py_ssize_t C, int op,
                             floating* y, Py_ssize_t yc, bint stream, const floating* next,
                             fastce_ahead_t* ahead) noexcept nogil:
    """One row of ``op``; for logsumexp ``y`` is the single output element.
    ``stream``, and ``ahead`` (contiguous rows only), as ce_index_row."""
    if op == OP_SOFTMAX and xc == 1 and yc == 1 and C <= FASTCE_ROW_IN_CACHE:
        if floating is float:
            fastce_active_ops.row_softmax_f32(x, C, y, next, ahead)
        else:
            fastce_active_ops.row_softmax_f64(x, C, y, next, ahead)
        return
    cdef floating m
    cdef double s
    s = row_stats_ahead(x, C, xc, &m, next, ahead, 1)
    if op == OP_LOGSUMEXP:
        y[0] = <floating>row_logsumexp(x, xc, C, m, log(s), 1.0)
    elif op == OP_LOG_SOFTMAX:
        row_shift(x, xc, C, m, <floating>log(s), y, yc, stream)
    else:
        row_scaled_exp(x, xc, C, m, 1, <floating>(1.0 / s), 0, y, yc, stream)


cdef inline void softmax_tile(const floating* x, Py_ssize_t xc, Py_ssize_t xi, Py_ssize_t C,
                              Py_ssize_t n, int op,
                              floating* y, Py_ssize_t yc, Py_ssize_t yi) noexcept nogil:
    """``n <= TILE`` neighbouring samples; for logsumexp ``y`` steps by ``yi``."""
    cdef floating m[TILE]
    cdef floating per_sample[TILE]
    cdef floating zero[TILE]
    cdef double s[TILE]
    cdef double log_s[TILE]
    cdef Py_ssize_t c, k
    tile_stats(x, xc, xi, C, n, m, s)
    if op != OP_SOFTMAX:
        fastce_active_ops.tile_log(s, n, log_s)
    if op == OP_LOGSUMEXP:
        for k in range(n):
            y[k * yi] = <floating>row_logsumexp(x + k * xi, xc, C, m[k], log_s[k], 1.0)
        return
    for k in range(n):
        zero[k] = 0
        per_sample[k] = <floating>(log_s[k] if op == OP_LOG_SOFTMAX else 1.0 / s[k])
    for c in range(C):
        if op == OP_LOG_SOFTMAX:
            tile_shift(x + c * xc, xi, n, m, per_sample, y + c * yc, yi)
        else:
            tile_scaled_exp(x + c * xc, xi, n, m, per_sample, 0, zero, y + c * yc, yi)


cdef struct SoftmaxCall:
    int op
    char* reduced           # logsumexp's per-sample results
    Py_ssize_t ro, ri


cdef void softmax_rows(const void* call_, const Piece* p, const floating* x, floating* y,
                       double* total) noexcept nogil:
    cdef const SoftmaxCall* call = <const SoftmaxCall*>call_
    cdef Py_ssize_t k
    # contiguous rows take their maxima while the previous row is summed
    cdef fastce_ahead_t* look_ahead = p.ahead if p.xc == 1 else NULL
    cdef const floating* next_row
    cdef floating m
    cdef double s
    if (call.op == OP_LOG_SOFTMAX and look_ahead != NULL and p.yc == 1 and not p.stream_y
            and p.C <= FASTCE_ROW_IN_CACHE):
        # each row's log_softmax is written while the next row is summed
        for k in range(p.n):
            next_row = x + (k + 1) * p.xs if k + 1 < p.n else <const floating*>p.after
            s = row_stats_ahead(x + k * p.xs, p.C, 1, &m, next_row, look_ahead, 1)
            look_ahead.pending_op = FASTCE_PENDING_SHIFT
            look_ahead.pending_x = x + k * p.xs
            look_ahead.pending_y = y + k * p.ys
            look_ahead.pending_a = m
            look_ahead.pending_b = <floating>log(s)
    else:
        for k in range(p.n):
            next_row = x + (k + 1) * p.xs if k + 1 < p.n else <const floating*>p.after
            if call.op == OP_LOGSUMEXP:
                softmax_row(x + k * p.xs, p.xc, p.C, call.op,
                            <floating*>call.reduced + sample_offset(p, k, call.ro, call.ri), 0,
                            False, next_row, look_ahead)
            else:
                softmax_row(x + k * p.xs, p.xc, p.C, call.op, y + k * p.ys, p.yc, p.stream_y,
                            next_row, look_ahead)
    # the last row may still wait: the look-ahead state outlives this call,
    # the rows of a buffer the walk refills may not
    if look_ahead != NULL and not p.keeps_pending:
        if floating is float:
            fastce_active_ops.row_pending_f32(look_ahead, p.C)
        else:
            fastce_active_ops.row_pending_f64(look_ahead, p.C)


cdef void softmax_tile_body(const void* call_, const Piece* p, const floating* x, floating* y,
                            double* total) noexcept nogil:
    cdef const SoftmaxCall* call = <const SoftmaxCall*>call_
    if call.op == OP_LOGSUMEXP:
        softmax_tile(x, p.xc, p.xs, p.C, p.n, call.op,
                     <floating*>call.reduced + sample_offset(p, 0, call.ro, call.ri), 0,
                     sample_step(p, call.ro, call.ri))
    else:
        softmax_tile(x, p.xc, p.xs, p.C, p.n, call.op, y, p.yc, p.ys)


cdef Body SOFTMAX_BODY = make_body(
    softmax_rows[float], softmax_rows[double], softmax_tile_body[float],
    softmax_tile_body[double], NULL, rows_scale=False, whole_rows=True, reads_ahead=True)


cdef void softmax_family(object x, int op, object reduced_out, object out, int num_threads,
                         bint out_written_before) except *:
    """``op`` (LOG_SOFTMAX, SOFTMAX or LOGSUMEXP) over the class axis of an
    ``(outer, C, inner)`` view (float32, float64, float16 or bfloat16).
    log_softmax and softmax write ``out`` (the shape of ``x``, the result
    dtype; it may be ``x`` itself; ``out_written_before``: as walk_output's);
    logsumexp writes ``reduced_out`` of shape ``(outer, inner)``.  The caller
    guarantees ``C > 0`` and at least one sample."""
    cdef Walk w
    cdef SoftmaxCall call
    cdef Py_ssize_t s[2]
    walk_from(&w, x)
    w.threads = num_threads
    call.op = op
    if op == OP_LOGSUMEXP:
        call.reduced = array_data(reduced_out, 2, result_typenum(&w), s)
        call.ro, call.ri = s[0], s[1]
    else:
        call.reduced = NULL
        walk_output(&w, out, out_written_before)
    walk_total(&w, &SOFTMAX_BODY, &call, True, 0)


# --------------------------------------------------------------------------
# nll_loss and target checks
# --------------------------------------------------------------------------

# the element types nll_loss reads as they are: float16 and bfloat16 included,
# one element per sample
ctypedef fused stored_t:
    float
    double
    uint16_t


cdef enum:
    # samples per block of nll_loss, which reads one logit of each
    NLL_BLOCK = 16384


cdef struct NllCall:
    CEOptions opt
    Targets t
    char* loss
    Py_ssize_t lo, li


cdef enum:
    # how many samples ahead nll_plain_sum asks for the element it will read
    NLL_PREFETCH = 32
    # the interleaved sums of nll_rows (the code spells out four)
    NLL_LANES = 4

cdef extern from "csrc/prefetch.h":
    void fastce_prefetch(const void* p) noexcept nogil


cdef inline double nll_plain_term(const stored_t* x, Py_ssize_t xs, Py_ssize_t xc,
                                  Py_ssize_t C, const char* t, Py_ssize_t step, Py_ssize_t k,
                                  Py_ssize_t n, int64_t ignore_index, bint has_ignore,
                                  bint bf16) noexcept nogil:
    """Sample ``k``'s loss for nll_plain_sum, the element NLL_PREFETCH
    samples later asked for first."""
    cdef Py_ssize_t later = k + NLL_PREFETCH
    cdef int64_t target
    if later < n:
        target = (<const int64_t*>(t + later * step))[0]
        if 0 <= target < C:
            fastce_prefetch(x + later * xs + target * xc)
    target = (<const int64_t*>(t + k * step))[0]
    if has_ignore and target == ignore_index:
        return 0.0
    if stored_t is uint16_t:
        return -<double>half_value(x[k * xs + target * xc], bf16)
    else:
        return -<double>x[k * xs + target * xc]


cdef double nll_plain_sum(const NllCall* call, const Piece* p, const stored_t* x,
                          double total) noexcept nogil:
    """``total`` plus nll_rows's losses of the piece without class weights, int64
    targets and no per-sample output, added as nll_rows adds them: the loop of
    the commonest call.  The rows lie far apart, so each read would wait on
    memory: the element NLL_PREFETCH samples later is asked for first."""
    cdef const char* t = call.t.data + p.o * call.t.so + p.i * call.t.si
    cdef Py_ssize_t step = p.o_step * call.t.so + p.i_step * call.t.si
    cdef Py_ssize_t k = 0, n = p.n, xs = p.xs, xc = p.xc, C = p.C
    cdef int64_t ignore_index = call.opt.ignore_index
    cdef bint has_ignore = call.opt.has_ignore, bf16 = p.bf16
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    while k + NLL_LANES <= n:
        s0 += nll_plain_term(x, xs, xc, C, t, step, k, n, ignore_index, has_ignore, bf16)
        s1 += nll_plain_term(x, xs, xc, C, t, step, k + 1, n, ignore_index, has_ignore, bf16)
        s2 += nll_plain_term(x, xs, xc, C, t, step, k + 2, n, ignore_index, has_ignore, bf16)
        s3 += nll_plain_term(x, xs, xc, C, t, step, k + 3, n, ignore_index, has_ignore, bf16)
        k += NLL_LANES
    if k < n:
        s0 += nll_plain_term(x, xs, xc, C, t, step, k, n, ignore_index, has_ignore, bf16)
    if k + 1 < n:
        s1 += nll_plain_term(x, xs, xc, C, t, step, k + 1, n, ignore_index, has_ignore, bf16)
    if k + 2 < n:
        s2 += nll_plain_term(x, xs, xc, C, t, step, k + 2, n, ignore_index, has_ignore, bf16)
    return total + ((s0 + s1) + (s2 + s3))


cdef void nll_rows(const void* call_, const Piece* p, const stored_t* x, floating* unused,
                   double* total) noexcept nogil:
    """The losses of a piece, summed in NLL_LANES interleaved sums (sample
    ``k`` in sum ``k % NLL_LANES``), added to ``total`` at the piece's end:
    one float64 chain waited four cycles on every sample."""
    cdef const NllCall* call = <const NllCall*>call_
    cdef floating* loss_out = <floating*>call.loss
    cdef Py_ssize_t k
    cdef int64_t target
    cdef double w, v, loss
    cdef double lanes[NLL_LANES]
    if call.t.kind == T_INT64 and call.opt.weight == NULL and loss_out == NULL:
        total[0] = nll_plain_sum(call, p, x, total[0])
        return
    lanes[0] = lanes[1] = lanes[2] = lanes[3] = 0.0
    for k in range(p.n):
        target = target_at(&call.t, p.o + k * p.o_step, p.i + k * p.i_step)
        loss = 0.0
        if not (call.opt.has_ignore and target == call.opt.ignore_index):
            w = 1.0 if call.opt.weight == NULL else call.opt.weight[target]
            if w != 0.0:
                if stored_t is uint16_t:
                    v = half_value(x[k * p.xs + target * p.xc], p.bf16)
                else:
                    v = x[k * p.xs + target * p.xc]
                loss = -w * v
        if loss_out != NULL:
            loss_out[sample_offset(p, k, call.lo, call.li)] = <floating>loss
        lanes[k % NLL_LANES] += loss
    total[0] += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])


cdef Body NLL_BODY = make_body(
    nll_rows[float, float], nll_rows[double, double], NULL, NULL, nll_rows[uint16_t, float])


cdef double nll_loss_kernel(object log_probs, object target, object weight,
                            int64_t ignore_index, bint has_ignore, object loss_out,
                            int num_threads) except *:
    """The negative log-likelihood gathered at validated class indices of an
    ``(outer, C, inner)`` view (any of the four float dtypes); returns the
    float64 sum over samples and fills ``loss_out`` (the result dtype) when
    given."""
    cdef Walk w
    cdef NllCall call
    cdef Py_ssize_t s[2]
    walk_from(&w, log_probs)
    w.threads = num_threads
    w.work = w.outer * w.inner * 8      # one logit and one target per sample
    targets_from(&call.t, target)
    ce_options(&call.opt, weight, 0.0, 0.0, ignore_index, has_ignore, 1.0)
    call.loss = array_data(loss_out, 2, result_typenum(&w), s)
    call.lo, call.li = s[0], s[1]
    return walk_total(&w, &NLL_BODY, &call, False, NLL_BLOCK)


cdef Py_ssize_t scan_targets(const Targets* t, Py_ssize_t outer, Py_ssize_t inner, Py_ssize_t C,
                             int64_t ignore_index, bint has_ignore, const double* weight,
                             int64_t* value, double* weight_sum) noexcept nogil:
    """The flat position of the first target outside ``[0, C)`` that is not
    ``ignore_index`` (-1 when there is none), its value in ``value``, and in
    ``weight_sum`` the summed weights (1 each without weights, NULL) of the
    targets that are not ignored."""
    cdef Py_ssize_t o, i
    cdef Py_ssize_t counted = 0  # without weights: an integer count, not a float64 chain
    cdef int64_t v
    cdef double total = 0.0
    for o in range(outer):
        for i in range(inner):
            v = target_at(t, o, i)
            if has_ignore and v == ignore_index:
                continue
            if v < 0 or v >= C:
                value[0] = v
                weight_sum[0] = total if weight != NULL else <double>counted
                return o * inner + i
            if weight != NULL:
                total += weight[v]
            else:
                counted += 1
    value[0] = 0
    weight_sum[0] = total if weight != NULL else <double>counted
    return -1


def check_targets(object target, Py_ssize_t C, int64_t ignore_index, bint has_ignore,
                  const double[::1] weight):
    """One pass over class-index targets, an ``(outer, inner)`` array of any
    integer dtype.

    Returns ``(bad, value, weight_sum)``: ``bad`` is the flat C-order position
    of the first target outside ``[0, C)`` that is not ``ignore_index`` (-1
    when there is none) and ``value`` its value; ``weight_sum`` is the sum of
    the class weights (1 without weights) of the targets that are not ignored,
    the denominator of the ``"mean"`` reduction.
    """
    cdef Targets t
    cdef Py_ssize_t bad
    cdef int64_t value
    cdef double total
    targets_from(&t, target)
    cdef Py_ssize_t outer = target.shape[0], inner = target.shape[1]
    with nogil:
        bad = scan_targets(&t, outer, inner, C, ignore_index, has_ignore,
                           &weight[0] if weight.shape[0] > 0 else NULL, &value, &total)
    return bad, value, total


# --------------------------------------------------------------------------
# Binary cross-entropy, element by element
# --------------------------------------------------------------------------

cdef struct BinaryCall:
    # flat arrays of the walk's elements, of the result dtype (NULL: absent)
    const char* y           # targets (of the half logits' own dtype with y_half)
    const char* w           # weights: one per element, or per column
    const char* pw          # positive-class weights (with logits): the same
    const char* go          # grad_output, one per element
    char* loss
    char* grad
    bint logits             # with logits; probabilities otherwise
    bint want_loss          # the losses' sum (a gradient alone takes no logarithm)
    bint w_per_col
    bint pw_per_col
    bint y_half             # half logits' targets, of their dtype: converted as they are
    double g                # the gradient's scale


cdef inline double binary_piece(int dtype, bint y_half, const char* x, const char* y,
                                const char* w, const char* pw, Py_ssize_t n, double g,
                                const char* go, char* loss_out, char* grad, bint logits,
                                bint want_loss) noexcept nogil:
    """The losses of ``n`` elements of the logits' ``dtype`` (their targets
    of that dtype with ``y_half``, else of the result's), the result's
    other arrays."""
    if dtype == DT_F32:
        if logits:
            return fastce_active_ops.bce_logits_f32(
                <const float*>x, <const float*>y, <const float*>w, <const float*>pw, n,
                <float>g, <const float*>go, <float*>loss_out, <float*>grad, want_loss)
        return fastce_active_ops.bce_probs_f32(
            <const float*>x, <const float*>y, <const float*>w, n, <float>g, <const float*>go,
            <float*>loss_out, <float*>grad, want_loss)
    if dtype == DT_F64:
        if logits:
            return fastce_active_ops.bce_logits_f64(
                <const double*>x, <const double*>y, <const double*>w, <const double*>pw, n, g,
                <const double*>go, <double*>loss_out, <double*>grad, want_loss)
        return fastce_active_ops.bce_probs_f64(
            <const double*>x, <const double*>y, <const double*>w, n, g, <const double*>go,
            <double*>loss_out, <double*>grad, want_loss)
    return fastce_active_ops.bce_half(
        logits, <const uint16_t*>x, y, dtype == DT_BF16, y_half, <const float*>w,
        <const float*>pw, n, <float>g, <const float*>go, <float*>loss_out, <float*>grad,
        want_loss)


cdef void binary_rows(const void* call_, const Piece* p, const floating* x, floating* unused,
                      double* total) noexcept nogil:
    """Rows of ``p.C`` elements (one each when no factor repeats per column),
    contiguous from element ``p.o * p.C`` on."""
    binary_span(<const BinaryCall*>call_, p, DT_F32 if floating is float else DT_F64,
                <const char*>x, total)


cdef void binary_rows_half(const void* call_, const Piece* p, const uint16_t* x, float* unused,
                           double* total) noexcept nogil:
    """binary_rows of half logits, converted in the kernels' registers (and
    targets of their dtype, y_half, too): the bits of float32 inputs."""
    binary_span(<const BinaryCall*>call_, p, DT_BF16 if p.bf16 else DT_F16, <const char*>x,
                total)


cdef void binary_span(const BinaryCall* call, const Piece* p, int dtype, const char* x,
                      double* total) noexcept nogil:
    """binary_rows of logits of ``dtype`` at ``x``."""
    cdef Py_ssize_t k, e, e0 = p.o * p.C
    cdef Py_ssize_t xsz = element_size(dtype), rsz = 8 if dtype == DT_F64 else 4
    cdef Py_ssize_t ysz = xsz if call.y_half else rsz
    cdef bint per_col = call.w_per_col or call.pw_per_col
    cdef const char* wk = call.w
    cdef const char* pwk = call.pw
    cdef const char* gok = call.go
    for k in range(1 if not per_col else p.n):
        e = e0 + k * p.C
        if call.w != NULL and not call.w_per_col:
            wk = call.w + e * rsz
        if call.pw != NULL and not call.pw_per_col:
            pwk = call.pw + e * rsz
        if call.go != NULL:
            gok = call.go + e * rsz
        total[0] += binary_piece(
            dtype, call.y_half, x + k * p.xs * xsz, call.y + e * ysz, wk, pwk,
            p.C if per_col else p.n * p.C, call.g, gok,
            NULL if call.loss == NULL else call.loss + e * rsz,
            NULL if call.grad == NULL else call.grad + e * rsz, call.logits, call.want_loss)


cdef Body BINARY_BODY = make_body(binary_rows[float], binary_rows[double], NULL, NULL,
                                  binary_rows_half)


cdef void flat_walk(Walk* w, object x, Py_ssize_t row_len) except *:
    """A walk over ``x``, contiguous, as rows of ``row_len`` elements (1: each
    element its own row)."""
    cdef Py_ssize_t n = x.shape[0]
    walk_from(&w[0], x.reshape(n // row_len, row_len, 1))
    if w.xc != 1 or w.xo != row_len:
        raise ValueError("internal: the binary kernels read contiguous elements")


cdef double binary_cross_entropy_kernel(object x, object y, object w, object pw,
                                        Py_ssize_t row_len, bint logits, double g,
                                        object grad_output, object loss_out, object grad,
                                        int num_threads, bint want_loss) except *:
    """Binary cross-entropy of ``n >= 1`` contiguous elements ``x`` (float32,
    float64, float16 or bfloat16): with logits or probabilities (``logits``
    False); returns the float64 sum of the losses.  ``y`` holds the targets;
    ``w`` and ``pw`` (None: 1 each) hold one factor per element, or per column
    of rows of ``row_len`` elements when they are ``row_len`` long; ``pw``
    only with logits.  ``loss_out`` (or None) receives each loss, ``grad``
    (or None; it may be ``x``) ``g`` times ``grad_output`` (None: 1 each)
    times the derivative.  Every array but ``x`` is flat, of the result
    dtype.  Without ``want_loss`` (and ``loss_out``) the sum is 0: a gradient
    alone skips the logarithms.  The caller has validated everything,
    probabilities and targets included."""
    cdef Walk walk
    cdef BinaryCall call
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t s[1]
    cdef int rt
    call.w_per_col = w is not None and w.shape[0] != n
    call.pw_per_col = pw is not None and pw.shape[0] != n
    flat_walk(&walk, x, row_len if call.w_per_col or call.pw_per_col else 1)
    walk.threads = num_threads
    walk.flush_subnormals = grad is not None
    rt = result_typenum(&walk)
    call.y_half = (walk.dtype == DT_F16 or walk.dtype == DT_BF16) and y.dtype == x.dtype
    call.y = array_data(y, 1, cnp.PyArray_TYPE(<cnp.ndarray>y) if call.y_half else rt, s)
    call.w = array_data(w, 1, rt, s)
    call.pw = array_data(pw, 1, rt, s)
    call.go = array_data(grad_output, 1, rt, s)
    call.loss = array_data(loss_out, 1, rt, s)
    call.grad = array_data(grad, 1, rt, s)
    call.logits = logits
    call.want_loss = want_loss
    call.g = g
    return walk_total(&walk, &BINARY_BODY, &call, False, 0)


cdef struct FirstOutsideCall:
    Py_ssize_t* found       # per unit: the first position outside [0, 1], or -1


cdef void first_outside_rows(const void* call_, const Piece* p, const floating* x,
                             floating* unused, double* total) noexcept nogil:
    cdef const FirstOutsideCall* call = <const FirstOutsideCall*>call_
    cdef Py_ssize_t k
    if floating is float:
        k = fastce_active_ops.first_outside_unit_f32(x, p.n)
    else:
        k = fastce_active_ops.first_outside_unit_f64(x, p.n)
    if k >= 0 and call.found[p.unit] < 0:
        call.found[p.unit] = p.o + k


cdef Body FIRST_OUTSIDE_BODY = make_body(
    first_outside_rows[float], first_outside_rows[double], NULL, NULL, NULL)


def first_outside_unit(object x, int num_threads=0):
    """The flat index of the first value of ``x`` (contiguous, any of the four
    float dtypes) outside [0, 1] (NaN included), or -1: the kernels' check of
    probabilities and targets."""
    cdef Walk w
    cdef FirstOutsideCall call
    cdef Py_ssize_t u
    if x.shape[0] == 0:
        return -1
    flat_walk(&w, x, 1)
    w.threads = num_threads
    walk_plan(&w, &FIRST_OUTSIDE_BODY, False, 0, 0)
    found = np.full(w.n_units, -1, dtype=np.intp)
    cdef Py_ssize_t[::1] found_view = found
    cdef double[::1] totals = np.empty(w.n_units, dtype=np.float64)
    call.found = &found_view[0]
    walk_run(&w, &FIRST_OUTSIDE_BODY, &call, &totals[0])
    for u in range(w.n_units):
        if found_view[u] >= 0:
            return found_view[u]
    return -1


# --------------------------------------------------------------------------
# The roof: what a pass that only sums exponentials costs
# --------------------------------------------------------------------------

cdef void roof_rows(const void* call, const Piece* p, const floating* x, floating* unused,
                    double* total) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(p.n):
        if floating is float:
            total[0] += fastce_active_ops.sum_exp_f32(x + k * p.xs, p.C)
        else:
            total[0] += fastce_active_ops.sum_exp_f64(x + k * p.xs, p.C)


cdef Body ROOF_BODY = make_body(roof_rows[float], roof_rows[double], NULL, NULL, NULL)


def exp_sum_roof(object x, int num_threads=0):
    """Sum of exp(x) over every element of a C-contiguous 2-d float32 or
    float64 array, with the same vector code, walk and threads as the
    kernels: the speed a forward pass is measured against.  Values must stay
    below 88 (float32)."""
    cdef Walk w
    if x.shape[0] == 0 or x.shape[1] == 0:
        return 0.0
    walk_from(&w, x[:, :, None])
    w.threads = num_threads
    if w.xc != 1 or w.dtype == DT_F16 or w.dtype == DT_BF16:
        raise ValueError("internal: the roof reads C-contiguous float32 or float64 rows")
    return walk_total(&w, &ROOF_BODY, NULL, False, 0)


# --------------------------------------------------------------------------
# Running a plan
# --------------------------------------------------------------------------

cdef extern from "Python.h":
    object PyImport_ImportModule(const char* name)

# the plans' types and constants (not this module's names)
cdef object PLAN_TYPES = PyImport_ImportModule("fastce._plan_types")
cdef object CLASS_PLAN = PLAN_TYPES.ClassPlan
cdef object BINARY_PLAN = PLAN_TYPES.BinaryPlan
cdef object NO_CLASS_WEIGHTS = PLAN_TYPES.NO_CLASS_WEIGHTS
cdef object NO_TRANSFORM = PLAN_TYPES.NO_TRANSFORM

cdef enum PlanKernel:
    K_CE_INDEX, K_CE_PROBS, K_NLL, K_LOG_SOFTMAX, K_SOFTMAX, K_LOGSUMEXP

# a plan's kernel names, in PlanKernel's order
cdef tuple KERNEL_NAMES = (
    PLAN_TYPES.CROSS_ENTROPY_INDEX, PLAN_TYPES.CROSS_ENTROPY_PROBS, PLAN_TYPES.NLL_LOSS,
    PLAN_TYPES.LOG_SOFTMAX, PLAN_TYPES.SOFTMAX, PLAN_TYPES.LOGSUMEXP)


cdef int plan_kernel(object name) except -1:
    """The PlanKernel a plan's kernel name stands for."""
    cdef int k
    for k in range(6):
        if KERNEL_NAMES[k] is name:
            return k
    for k in range(6):
        if KERNEL_NAMES[k] == name:
            return k
    raise ValueError(f"internal: no kernel is called {name!r}")


cdef double FLOAT32_MAX = np.finfo(np.float32).max
cdef object FLOAT32_DTYPE = np.dtype(np.float32)
cdef object FLOAT64_DTYPE = np.dtype(np.float64)
cdef extern from "Python.h":
    ctypedef object (*tuple_new_t)(void* subtype, object args, void* kwargs)
    ctypedef struct TupleType "PyTypeObject":
        tuple_new_t tp_new
    TupleType PyTuple_Type

# grad_output=1, as check_grad_output gives it; never written
cdef object ONE = np.ones(())
ONE.setflags(write=False)


cdef extern from "numpy/arrayobject.h":
    # a NumPy scalar of ``descr`` holding the value at ``data``
    object PyArray_Scalar(void* data, cnp.dtype descr, object base)


cpdef reduce_total(double total, double denominator, str reduction, object dtype):
    """The reduced loss, a NumPy scalar of ``dtype``: ``total`` for "sum",
    else ``total / denominator`` (NaN for a zero denominator); a float32 total
    past its range is inf, as ``reduction="none"`` stores it."""
    cdef double value
    cdef float narrow
    if reduction == "sum":
        value = total
    elif denominator != 0.0:
        value = total / denominator
    else:
        value = NAN
    if dtype is FLOAT64_DTYPE or dtype.itemsize == 8:
        return PyArray_Scalar(&value, <cnp.dtype>FLOAT64_DTYPE, None)
    if -FLOAT32_MAX <= value <= FLOAT32_MAX or value != value:
        narrow = <float>value
    else:
        narrow = INFINITY if value > 0 else -INFINITY
    return PyArray_Scalar(&narrow, <cnp.dtype>FLOAT32_DTYPE, None)


cpdef writable_view(out, shape):
    """``out`` reshaped without a copy, or None when its strides forbid it."""
    if cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out):
        return out.reshape(shape)  # always a view of C-ordered memory
    try:
        return out.reshape(shape, copy=False)
    except ValueError:
        return None


cdef bint byte_ranges_meet(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether the byte ranges two arrays' elements span intersect: False
    proves they share no memory (``np.may_share_memory``'s test)."""
    cdef char* lo[2]
    cdef char* hi[2]
    cdef cnp.ndarray arr
    cdef int k, d
    cdef Py_ssize_t extent
    for k in range(2):
        arr = a if k == 0 else b
        lo[k] = hi[k] = <char*>cnp.PyArray_DATA(arr)
        for d in range(cnp.PyArray_NDIM(arr)):
            extent = cnp.PyArray_DIM(arr, d)
            if extent == 0:
                return False  # no elements
            if cnp.PyArray_STRIDE(arr, d) > 0:
                hi[k] += cnp.PyArray_STRIDE(arr, d) * (extent - 1)
            else:
                lo[k] += cnp.PyArray_STRIDE(arr, d) * (extent - 1)
        hi[k] += cnp.PyArray_ITEMSIZE(arr)
    return lo[0] < hi[1] and lo[1] < hi[0]


cpdef bint same_memory_layout(a, b) except -1:
    """Whether two arrays are the same elements: shape, strides and start."""
    cdef cnp.ndarray x = a, y = b
    cdef int d
    if cnp.PyArray_NDIM(x) != cnp.PyArray_NDIM(y) or cnp.PyArray_DATA(x) != cnp.PyArray_DATA(y):
        return False
    for d in range(cnp.PyArray_NDIM(x)):
        if cnp.PyArray_DIM(x, d) != cnp.PyArray_DIM(y, d) \
                or cnp.PyArray_STRIDE(x, d) != cnp.PyArray_STRIDE(y, d):
            return False
    return True


cpdef disjoint_aligned(a, written):
    """``a`` if it is aligned and shares no memory with ``written``, else a
    copy of it: what a kernel may read while it writes ``written``."""
    if a is None or written is None:
        return a
    if cnp.PyArray_ISALIGNED(<cnp.ndarray>a) and not byte_ranges_meet(a, written):
        return a
    return a.copy()


cpdef bint samples_closer_than_classes(x3) except -1:
    """True when one class row's elements lie further apart than neighbouring
    samples (Fortran-ordered ``(N, C)``): the kernels then read the samples
    as the contiguous inner positions of a single outer slice, through
    :func:`outer_as_inner`."""
    cdef cnp.ndarray a = x3
    return cnp.PyArray_DIM(a, 2) == 1 and cnp.PyArray_DIM(a, 0) > 1 \
        and abs(cnp.PyArray_STRIDE(a, 0)) < abs(cnp.PyArray_STRIDE(a, 1))


cpdef outer_as_inner(a):
    """An ``(outer, C, 1)`` array as ``(1, C, outer)``, or an ``(outer, 1)``
    per-sample array as ``(1, outer)``: the same memory, its axes reversed
    (None stays None)."""
    return None if a is None else a.T


cdef object as_2d(object a, Py_ssize_t rows, Py_ssize_t columns):
    """``a.reshape(rows, columns)``."""
    cdef cnp.npy_intp extents[2]
    cdef cnp.PyArray_Dims shape
    extents[0], extents[1] = rows, columns
    shape.ptr, shape.len = extents, 2
    return cnp.PyArray_Newshape(a, &shape, cnp.NPY_CORDER)


cdef object view_shaped_as(object a, object shaped):
    """``a`` viewed in the shape of the array ``shaped``, or None when its
    strides forbid it (as ``writable_view``)."""
    cdef cnp.PyArray_Dims shape
    if cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a):
        shape.ptr = cnp.PyArray_DIMS(<cnp.ndarray>shaped)
        shape.len = cnp.PyArray_NDIM(<cnp.ndarray>shaped)
        return cnp.PyArray_Newshape(a, &shape, cnp.NPY_CORDER)  # a view of C-ordered memory
    return writable_view(a, shaped.shape)


cdef tuple class_output(object out, object x, object x3, object dtype):
    """The array a per-class result (a gradient, softmax, log_softmax) is
    returned in: ``out`` (checked), or a new array of ``dtype`` laid out as
    the logits ``x``; its ``(outer, C, inner)`` view the kernel writes; the
    logits view to read, copied when ``out`` overlaps it without being it;
    whether the view is a separate buffer, to be copied into ``out``
    afterwards because ``out``'s strides admit no such view; and whether the
    view's memory was written before (``out``, or a freed result's kept
    memory) rather than fresh pages."""
    cdef cnp.ndarray a = x, a3 = x3
    cdef bint buffered, written_before
    if out is None:
        # C order costs less to allocate, and is what order="K" gives for it
        like = None if cnp.PyArray_IS_C_CONTIGUOUS(a) else x
        result = new_array(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), dtype, like,
                           &written_before)
        view = view_shaped_as(result, x3)
        if view is None:
            result = new_array(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), dtype, None,
                               &written_before)
            view = view_shaped_as(result, x3)
        return result, view, x3, False, written_before
    view = view_shaped_as(out, x3)
    buffered = view is None or not cnp.PyArray_ISALIGNED(<cnp.ndarray>view)
    written_before = True
    if buffered:
        view = new_array(3, cnp.PyArray_DIMS(a3), dtype, None, &written_before)
    if byte_ranges_meet(view, x3) and not same_memory_layout(view, x3):
        x3 = x3.copy()
    return out, view, x3, buffered, written_before


def execute(plan):
    """Runs a plan (``ClassPlan`` or ``BinaryPlan``): returns ``(reduced,
    per_class, lse, z_loss)``, the loss (a scalar, or the per-sample or
    per-element array; the log-sum-exp), the per-class or per-element result
    (the gradient, softmax, log_softmax), and the cross-entropy's per-sample
    log-sum-exp and z-loss (reduced as the loss), each None where the call has
    none.  It owns what every call needs between its checks and the kernels:
    the result buffers and ``out=``, inputs the outputs overlap, the
    transposition of sample-major views, the copy back from a buffer into
    ``out``, and the reduction."""
    if type(plan) is CLASS_PLAN:
        return execute_class_plan(<tuple>plan)
    if type(plan) is BINARY_PLAN:
        return execute_binary_plan(plan)
    raise TypeError(f"internal: a plan was expected, not {type(plan).__name__}")


cdef tuple execute_class_plan(tuple p):
    kernel = p[0]
    x = p[1]
    x3 = p[2]
    dtype = p[3]
    reduction = p[4]
    per_sample_shape = p[5]
    cdef double denominator = p[6]
    index2 = p[7]
    probs3 = p[8]
    weight = p[9]
    cdef double smoothing = p[10]
    cdef int64_t ignore_value = p[11]
    cdef bint has_ignore = p[12]
    grad_output = p[13]
    cdef bint wants_per_class = p[14]
    out = p[15]
    cdef int threads = p[16]
    cdef tuple transform = <tuple>p[17]
    lse_shape = p[18]
    z_loss_shape = p[19]
    cdef cnp.ndarray a3 = x3
    cdef Py_ssize_t outer = cnp.PyArray_DIM(a3, 0), n_classes = cnp.PyArray_DIM(a3, 1)
    cdef Py_ssize_t inner = cnp.PyArray_DIM(a3, 2)
    cdef int k = plan_kernel(kernel)
    cdef bint softmax_op = k == K_LOG_SOFTMAX or k == K_SOFTMAX or k == K_LOGSUMEXP
    cdef bint buffered = False, written_before = False
    cdef double total = 0.0, weight_total
    per_sample = np.empty(per_sample_shape, dtype) if per_sample_shape is not None else None
    lse = np.empty(lse_shape, dtype) if lse_shape is not None else None
    # float64: summed into the reduced z-loss as the kernels sum the loss
    z_terms = np.zeros(z_loss_shape) if z_loss_shape is not None else None
    per_class = per_class3 = None
    if wants_per_class:
        per_class, per_class3, x3, buffered, written_before = class_output(out, x, x3, dtype)
    written = per_class3
    if outer * inner and n_classes:
        go2 = None
        per_sample2 = None if per_sample is None else as_2d(per_sample, outer, inner)
        lse2 = None if lse is None else as_2d(lse, outer, inner)
        z2 = None if z_terms is None else as_2d(z_terms, outer, inner)
        if grad_output is not None:
            # a scalar stays one element, which the kernels read at every sample
            go2 = as_2d(grad_output, outer, inner) if cnp.PyArray_NDIM(<cnp.ndarray>grad_output) \
                else grad_output
            # nothing the kernels read may change under the gradient they write
            index2 = disjoint_aligned(index2, per_class3)
            probs3 = disjoint_aligned(probs3, per_class3)
            go2 = disjoint_aligned(go2, per_class3)
            weight = disjoint_aligned(weight, per_class3)
        # a gather reads one element per sample, in any layout; row kernels
        # compute sample-major views (class rows far apart) as tiles
        if k != K_NLL and samples_closer_than_classes(x3):
            x3 = outer_as_inner(x3)
            index2 = outer_as_inner(index2)
            probs3 = outer_as_inner(probs3)
            per_sample2 = outer_as_inner(per_sample2)
            lse2 = outer_as_inner(lse2)
            z2 = outer_as_inner(z2)
            go2 = outer_as_inner(go2)
            per_class3 = outer_as_inner(per_class3)
        if k == K_CE_INDEX:
            weight_total = weight.sum() if cnp.PyArray_DIM(<cnp.ndarray>weight, 0) \
                else <double>n_classes
            total = cross_entropy_index(
                x3, index2, weight, weight_total, smoothing, ignore_value, has_ignore,
                per_sample2, go2, denominator, per_class3, threads, written_before,
                transform[0], transform[1], transform[2], lse2, z2)
        elif k == K_CE_PROBS:
            total = cross_entropy_probs(
                x3, probs3, weight, smoothing, per_sample2, go2, denominator, per_class3,
                threads, written_before, transform[0], transform[1], transform[2], lse2, z2)
        elif k == K_NLL:
            total = nll_loss_kernel(x3, index2, weight, ignore_value, has_ignore, per_sample2,
                                    threads)
        elif softmax_op:
            softmax_family(
                x3,
                OP_LOG_SOFTMAX if k == K_LOG_SOFTMAX
                else OP_SOFTMAX if k == K_SOFTMAX else OP_LOGSUMEXP,
                per_sample2, per_class3, threads, written_before)
    elif per_sample is not None and k == K_LOGSUMEXP:
        per_sample.fill(-np.inf)  # log(sum(exp([]))) of a sample without classes
    if buffered:
        # the kernel wrote a buffer: out's strides admit no (outer, C, inner) view
        out[...] = written.reshape(out.shape)
    if softmax_op:
        # a 0-d result is a scalar, as NumPy's reductions give, unless out= holds it
        result = per_sample if k == K_LOGSUMEXP else per_class
        if result.ndim == 0 and out is None:
            result = result[()]
        return (result, None, None, None) if k == K_LOGSUMEXP \
            else (None, result, None, None)
    reduced = per_sample if per_sample is not None \
        else reduce_total(total, denominator, reduction, dtype)
    z_loss = None
    if z_terms is not None:
        z_loss = z_terms.astype(dtype) if reduction == "none" \
            else reduce_total(z_terms.sum(), denominator, reduction, dtype)
    return reduced, per_class, lse, z_loss


cpdef flat_aligned(a, dtype=None):
    """``a`` as a flat, contiguous and aligned array (of ``dtype``), copied
    only if need be."""
    return np.require(a, dtype=dtype, requirements=["C", "A"]).reshape(-1)


cdef tuple execute_binary_plan(plan):
    dtype = plan.dtype
    shape = plan.x.shape
    cdef Py_ssize_t n = plan.x.size
    cdef bint buffered = False
    cdef double scale = 1.0, total = 0.0
    xf = plan.flat
    # a gradient alone has no per-element losses to return
    loss_arr = new_result(shape, dtype)[0] if plan.reduction == "none" and plan.want_loss \
        else None
    grad = grad_flat = go_flat = None
    operands = plan.operands
    if plan.grad_output is not None:
        grad = plan.out if plan.out is not None else new_result(shape, dtype)[0]
        grad_flat = writable_view(grad, (n,))
        buffered = grad_flat is None or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>grad_flat)
        if buffered:
            grad_flat = new_result((n,), dtype)[0]  # written here, then copied into out
        elif byte_ranges_meet(grad_flat, xf) and not same_memory_layout(grad_flat, xf):
            xf = xf.copy()
        go = plan.grad_output
        if go.ndim:
            go_flat = flat_aligned(go, dtype)
        else:
            scale = go
        if plan.reduction == "mean" and n:
            scale /= n
        # nothing the kernel reads may change under the gradient it writes
        operands = tuple([disjoint_aligned(a, grad_flat) for a in operands])
        go_flat = disjoint_aligned(go_flat, grad_flat)
    if n:
        y_op, w_op, pw_op = operands
        total = binary_cross_entropy_kernel(
            xf, y_op, w_op, pw_op, plan.row_len, plan.logits, scale, go_flat,
            None if loss_arr is None else loss_arr.reshape(-1), grad_flat, plan.threads,
            plan.want_loss)
    if buffered:
        grad[...] = grad_flat.reshape(shape)
    if not plan.want_loss:
        return None, grad, None, None
    loss = loss_arr if loss_arr is not None else reduce_total(total, n, plan.reduction, dtype)
    return loss, grad, None, None


cdef bint common_pair(object x, object t):
    """Whether ``x`` and ``t`` are the commonest call's arrays: a C-ordered,
    aligned ``(N, C)`` float32, float64, float16 or bfloat16 array with ``N
    >= 1`` and ``C >= 2``, and an ``(N,)`` int64 one."""
    if type(x) is not np.ndarray or type(t) is not np.ndarray:
        return False
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != 2 or cnp.PyArray_NDIM(<cnp.ndarray>t) != 1:
        return False
    if stored_dtype(<cnp.ndarray>x) < 0 or cnp.PyArray_TYPE(<cnp.ndarray>t) != cnp.NPY_INT64 \
            or not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>x) \
            or not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>t):
        return False
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    return n > 0 and cnp.PyArray_DIM(<cnp.ndarray>x, 1) >= 2 \
        and cnp.PyArray_DIM(<cnp.ndarray>t, 0) == n


cdef bint common_out(object out, object x, object dtype):
    """Whether ``out`` takes the common call's gradient as ``check_out``
    would accept it: a plain NumPy array of the logits' shape and the
    result's dtype, writable and C-ordered (so no two elements share memory);
    how it overlaps the inputs is ``execute_class_plan``'s concern."""
    if type(out) is not np.ndarray:
        return False
    cdef cnp.ndarray o = <cnp.ndarray>out
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int typenum = (<cnp.dtype>dtype).type_num
    return cnp.PyArray_NDIM(o) == 2 and cnp.PyArray_DIM(o, 0) == cnp.PyArray_DIM(a, 0) \
        and cnp.PyArray_DIM(o, 1) == cnp.PyArray_DIM(a, 1) and cnp.PyArray_TYPE(o) == typenum \
        and cnp.PyArray_ISCARRAY(o)


cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object value, int* overflow) except? -1


cdef bint plain_options(object weight, object ignore_index, object reduction,
                        object label_smoothing, object axis, object num_threads,
                        object softcap, object temperature, object z_loss,
                        object grad_output) except -1:
    """Whether the options are the commonest call's: no class weights, an int64
    ``ignore_index``, ``reduction`` "mean" or "sum", no smoothing, the class
    axis 1 (or the default), ``num_threads`` None or in ``[1, MAX_THREAD_REQUEST]``, no
    logit transform or z-loss, and ``grad_output`` None (no gradient) or 1.0.
    Checked by exact type, so that no user object's ``__eq__`` runs."""
    cdef int overflow
    if weight is not None or softcap is not None:
        return False
    if type(reduction) is not str or not (reduction == "mean" or reduction == "sum"):
        return False
    if type(label_smoothing) is not float or <double>label_smoothing != 0.0:
        return False
    if type(temperature) is not float or <double>temperature != 1.0:
        return False
    if type(z_loss) is not float or <double>z_loss != 0.0:
        return False
    if grad_output is not None and (type(grad_output) is not float
                                    or <double>grad_output != 1.0):
        return False
    if axis is not None and not (type(axis) is int and (axis == 1 or axis == -1)):
        return False
    cdef long long threads
    if num_threads is not None:
        if type(num_threads) is not int:
            return False
        threads = PyLong_AsLongLongAndOverflow(num_threads, &overflow)
        if overflow or not 1 <= threads <= THREAD_REQUEST_LIMIT:
            return False
    if type(ignore_index) is not int:
        return False
    PyLong_AsLongLongAndOverflow(ignore_index, &overflow)
    return overflow == 0


def common_plan(str kernel, object logits, object target, object weight, object ignore_index,
                object reduction, object label_smoothing, object axis, object num_threads,
                object softcap, object temperature, object z_loss, object grad_output,
                object out):
    """The plan that ``plan_cross_entropy`` (``kernel`` CROSS_ENTROPY_INDEX) or
    ``plan_nll_loss`` (NLL_LOSS) would make of the commonest call, made
    without their checks, which its arguments pass by construction; None for
    any other call, which then takes the checking path (and raises its
    errors).  ``grad_output`` None asks for the loss alone; a gradient's plan
    writes ``out`` (or a new array).

    The commonest call: the options ``plain_options`` accepts, arrays
    ``common_pair`` accepts, every target in ``[0, C)`` or equal to
    ``ignore_index``, and for a gradient an ``out`` (or None) ``common_out``
    accepts."""
    if not plain_options(weight, ignore_index, reduction, label_smoothing, axis, num_threads,
                         softcap, temperature, z_loss, grad_output):
        return None
    if not common_pair(logits, target):
        return None
    cdef bint want_grad = grad_output is not None
    cdef bint mean = reduction == "mean"
    cdef int64_t ignore_value = ignore_index
    cdef int threads = 0 if num_threads is None else num_threads
    cdef cnp.ndarray x = <cnp.ndarray>logits
    cdef cnp.ndarray t = <cnp.ndarray>target
    cdef Py_ssize_t n = cnp.PyArray_DIM(x, 0), n_classes = cnp.PyArray_DIM(x, 1)
    dtype = FLOAT64_DTYPE if cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE else FLOAT32_DTYPE
    if want_grad and out is not None and not common_out(out, x, dtype):
        return None
    cdef const int64_t* tp = <const int64_t*>cnp.PyArray_DATA(t)
    cdef Py_ssize_t counted
    cdef bint bad
    if n < RELEASE_GIL_LOGITS:
        bad = fastce_active_ops.count_targets(tp, n, n_classes, ignore_value, &counted)
    else:
        with nogil:
            bad = fastce_active_ops.count_targets(tp, n, n_classes, ignore_value, &counted)
    if bad:
        return None
    cdef cnp.npy_intp extents[3]
    cdef cnp.PyArray_Dims shape
    extents[0], extents[1], extents[2] = n, n_classes, 1
    shape.ptr, shape.len = extents, 3
    x3 = cnp.PyArray_Newshape(x, &shape, cnp.NPY_CORDER)
    extents[1] = 1
    shape.len = 2
    index2 = cnp.PyArray_Newshape(t, &shape, cnp.NPY_CORDER)
    # tuple.__new__(ClassPlan, fields), without the lookups of a Python-level call
    return PyTuple_Type.tp_new(<void*>CLASS_PLAN, ((
        kernel, x, x3, dtype, "mean" if mean else "sum", None,
        <double>counted if mean else 1.0, index2, None, NO_CLASS_WEIGHTS, 0.0, ignore_index,
        True, ONE if want_grad else None, want_grad, out if want_grad else None, threads,
        NO_TRANSFORM, None, None),), NULL)
