# What the core kernels (fastce._kernels) share with the evaluation kernels
# (fastce._metrics).  _kernels.pyx reads this file as its own declarations;
# _metrics.pyx cimports from it.  Four things are shared, each with one
# source of truth:
#
# * the vector kernels of csrc/ (kernels.h), always called through
#   ``fastce_active_ops``.  fastce._kernels fills the table (simd_init) and
#   exports it (``simd_ops``); an extension that cimports this file points
#   its own ``fastce_active_ops`` at that table when it is imported, so the
#   two extensions always run the same vector path;
# * the walk (``walk_plan``, ``walk_run``), defined in fastce._kernels only:
#   the one code that cuts a call's samples into work units and pieces (runs
#   of rows, tiles of neighbouring samples, rows of few classes transposed
#   into tiles), converts float16 and bfloat16 logits, hands the units to the
#   threads and keeps each unit's total.  A kernel supplies only its bodies:
#   what to compute over a piece of rows and over a tile (``Body``);
# * the thread rule (``thread_count``), also where a thread team is recorded
#   as started, the state the fork handler reads, so a forked child computes
#   serially whichever extension started the team;
# * the per-sample statistics of the row and tile bodies (maximum and sum of
#   exponentials) and the class-index loss computed from those statistics:
#   the evaluation computes its loss with the core's own code, to the last bit.

from libc.math cimport exp, isinf, log, INFINITY, NAN
from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t,
                          uint64_t)


cdef extern from "csrc/dispatch.h":
    # what a row body leaves for the next row (see kernels.h)
    ctypedef struct fastce_ahead_t:
        int valid
        int pending_op
        const void* pending_x
        void* pending_y
        double pending_a, pending_b
        const uint16_t* next_half
        int next_bf16
    # a reference model's row, as its pair takes it (see kernels.h)
    ctypedef struct fastce_ref_row_t:
        double max
        double sum
        double cross
        Py_ssize_t arg
    enum:
        FASTCE_PENDING_SHIFT
    ctypedef struct fastce_ops_t:
        double (*row_max_sumexp_f32)(const float*, Py_ssize_t, float*, float) noexcept nogil
        double (*row_max_sumexp_f64)(const double*, Py_ssize_t, double*, double) noexcept nogil
        double (*row_max_sumexp_ahead_f32)(const float*, Py_ssize_t, float*, const float*,
                                           fastce_ahead_t*, float) noexcept nogil
        double (*row_max_sumexp_ahead_f64)(const double*, Py_ssize_t, double*, const double*,
                                           fastce_ahead_t*, double) noexcept nogil
        double (*row_sum_shifted_f32)(const float*, Py_ssize_t, float) noexcept nogil
        double (*row_sum_shifted_f64)(const double*, Py_ssize_t, double) noexcept nogil
        double (*sum_exp_f32)(const float*, Py_ssize_t) noexcept nogil
        double (*sum_exp_f64)(const double*, Py_ssize_t) noexcept nogil
        void (*row_scaled_exp_f32)(const float*, Py_ssize_t, float, float, float, float,
                                   float*, int) noexcept nogil
        void (*row_scaled_exp_f64)(const double*, Py_ssize_t, double, double, double, double,
                                   double*, int) noexcept nogil
        void (*row_shift_f32)(const float*, Py_ssize_t, float, float, float*, int) noexcept nogil
        void (*row_shift_f64)(const double*, Py_ssize_t, double, double, double*,
                              int) noexcept nogil
        void (*row_softmax_f32)(const float*, Py_ssize_t, float*, const float*,
                                fastce_ahead_t*) noexcept nogil
        void (*row_pending_f32)(fastce_ahead_t*, Py_ssize_t) noexcept nogil
        void (*row_pending_f64)(fastce_ahead_t*, Py_ssize_t) noexcept nogil
        void (*row_softmax_f64)(const double*, Py_ssize_t, double*, const double*,
                                fastce_ahead_t*) noexcept nogil
        double (*row_eval_terms_f32)(const float*, Py_ssize_t, const float*, fastce_ahead_t*,
                                     const float*, float*, float, Py_ssize_t, float, double*,
                                     double*, Py_ssize_t*, Py_ssize_t*) noexcept nogil
        double (*row_eval_terms_f64)(const double*, Py_ssize_t, const double*, fastce_ahead_t*,
                                     const double*, double*, double, Py_ssize_t, double, double*,
                                     double*, Py_ssize_t*, Py_ssize_t*) noexcept nogil
        double (*long_pair_terms_f32)(const float*, const float*, Py_ssize_t, float*, float,
                                      Py_ssize_t, float, double*, double*, Py_ssize_t*,
                                      Py_ssize_t*, fastce_ref_row_t*) noexcept nogil
        double (*long_pair_terms_f64)(const double*, const double*, Py_ssize_t, double*, double,
                                      Py_ssize_t, double, double*, double*, Py_ssize_t*,
                                      Py_ssize_t*, fastce_ref_row_t*) noexcept nogil
        void (*gather_tile_f32)(const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, float*,
                                Py_ssize_t) noexcept nogil
        void (*gather_tile_f64)(const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, double*,
                                Py_ssize_t) noexcept nogil
        void (*scatter_tile_f32)(const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, float*,
                                 Py_ssize_t, Py_ssize_t) noexcept nogil
        void (*scatter_tile_f64)(const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, double*,
                                 Py_ssize_t, Py_ssize_t) noexcept nogil
        void (*tile_max_f32)(const float*, Py_ssize_t, float*) noexcept nogil
        void (*tile_max_f64)(const double*, Py_ssize_t, double*) noexcept nogil
        void (*tile_sumexp_f32)(const float*, Py_ssize_t, const float*, float*,
                                float*) noexcept nogil
        void (*tile_sumexp_f64)(const double*, Py_ssize_t, const double*, double*,
                                double*) noexcept nogil
        void (*tile_scaled_exp_f32)(const float*, Py_ssize_t, const float*, const float*, float,
                                    const float*, float*) noexcept nogil
        void (*tile_scaled_exp_f64)(const double*, Py_ssize_t, const double*, const double*, double,
                                    const double*, double*) noexcept nogil
        void (*tile_shift_f32)(const float*, Py_ssize_t, const float*, const float*,
                               float*) noexcept nogil
        void (*tile_shift_f64)(const double*, Py_ssize_t, const double*, const double*,
                               double*) noexcept nogil
        void (*tile_stats_f32)(const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, float*,
                               double*) noexcept nogil
        void (*tile_stats_f64)(const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, double*,
                               double*) noexcept nogil
        void (*tile_scaled_exp_classes_f32)(const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                            const float*, const float*, const double*,
                                            const float*, float*, Py_ssize_t) noexcept nogil
        void (*tile_scaled_exp_classes_f64)(const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                            const double*, const double*, const double*,
                                            const double*, double*, Py_ssize_t) noexcept nogil
        void (*tile_rank_entropy_f32)(const float*, Py_ssize_t, int64_t, const float*,
                                      const float*, const int64_t*, float*, float*, int64_t*,
                                      int64_t*) noexcept nogil
        void (*tile_rank_entropy_f64)(const double*, Py_ssize_t, int64_t, const double*,
                                      const double*, const int64_t*, double*, double*,
                                      int64_t*, int64_t*) noexcept nogil
        double (*bce_logits_f32)(const float*, const float*, const float*, const float*, Py_ssize_t,
                                 float, const float*, float*, float*, int) noexcept nogil
        double (*bce_logits_f64)(const double*, const double*, const double*, const double*,
                                 Py_ssize_t, double, const double*, double*, double*,
                                 int) noexcept nogil
        double (*bce_probs_f32)(const float*, const float*, const float*, Py_ssize_t, float,
                                const float*, float*, float*, int) noexcept nogil
        double (*bce_probs_f64)(const double*, const double*, const double*, Py_ssize_t, double,
                                const double*, double*, double*, int) noexcept nogil
        Py_ssize_t (*first_outside_unit_f32)(const float*, Py_ssize_t) noexcept nogil
        Py_ssize_t (*first_outside_unit_f64)(const double*, Py_ssize_t) noexcept nogil
        void (*transform_f32)(const float*, Py_ssize_t, float, float, float*) noexcept nogil
        void (*transform_f64)(const double*, Py_ssize_t, double, double, double*) noexcept nogil
        void (*transform_grad_f32)(const float*, Py_ssize_t, float, float, const float*, float*,
                                   int) noexcept nogil
        void (*transform_grad_f64)(const double*, Py_ssize_t, double, double, const double*,
                                   double*, int) noexcept nogil
        void (*tile_log)(const double*, Py_ssize_t, double*) noexcept nogil
        void (*tile_exp_neg)(const double*, Py_ssize_t, double*) noexcept nogil
        void (*dd_add_columns)(const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                               double*) noexcept nogil
        void (*stream_fence)() noexcept nogil
        void (*half_to_f32)(const uint16_t*, Py_ssize_t, float*, int) noexcept nogil
        double (*bce_half)(int, const uint16_t*, const void*, int, int, const float*,
                           const float*, Py_ssize_t, float, const float*, float*, float*,
                           int) noexcept nogil
        int (*count_targets)(const int64_t*, Py_ssize_t, int64_t, int64_t,
                             Py_ssize_t*) noexcept nogil
        const char* isa
    # the table every kernel calls through (see above)
    const fastce_ops_t* fastce_active_ops
    float fastce_exp_neg_f32(float) noexcept nogil
    double fastce_exp_neg_f64(double) noexcept nogil
    int FASTCE_CHUNK
    int FASTCE_ROW_IN_CACHE


ctypedef fused floating:
    float
    double

cdef extern from "csrc/half.h":
    float fastce_f16_to_f32(uint16_t) noexcept nogil
    float fastce_bf16_to_f32(uint16_t) noexcept nogil

# Samples per tile in the tile kernel, and the stack arrays sized by it.
cdef enum:
    TILE = 64

# Rows of at most this many contiguous classes are computed in transposed
# tiles (see small_c_rows).
cdef enum:
    SMALL_C = 32

# Logits per work unit of the row kernels (see rows_per_block).
cdef enum:
    BLOCK_LOGITS = 16384


cdef struct CEOptions:
    const double* weight    # NULL when there are no class weights
    double weight_sum       # sum of the weights (C when there are none)
    bint any_weight         # some class weight is not 0 (True when there are none)
    double smoothing
    int64_t ignore_index
    bint has_ignore
    double denominator      # g[n] = grad_output[n] / denominator
    double z_loss           # coefficient of the z-loss, z * w[t] * logsumexp(x)^2 (0: none)


# ---- class-index targets of any integer dtype, read as they are ----------------

cdef enum:
    # how a target array stores its values (Targets.kind)
    T_INT8, T_INT16, T_INT32, T_INT64, T_UINT8, T_UINT16, T_UINT32, T_UINT64


cdef struct Targets:
    const char* data        # NULL: none (probability targets)
    int kind
    Py_ssize_t so, si       # byte strides along outer and inner


cdef inline int64_t target_at(const Targets* t, Py_ssize_t o, Py_ssize_t i) noexcept nogil:
    cdef const char* v = t.data + o * t.so + i * t.si
    if t.kind == T_INT64:
        return (<const int64_t*>v)[0]
    if t.kind == T_INT32:
        return (<const int32_t*>v)[0]
    if t.kind == T_INT16:
        return (<const int16_t*>v)[0]
    if t.kind == T_INT8:
        return (<const int8_t*>v)[0]
    if t.kind == T_UINT8:
        return (<const uint8_t*>v)[0]
    if t.kind == T_UINT16:
        return (<const uint16_t*>v)[0]
    if t.kind == T_UINT32:
        return (<const uint32_t*>v)[0]
    # uint64 beyond int64's range reads negative: out of range either way
    return <int64_t>(<const uint64_t*>v)[0]


# ---- the walk: one code for every layout ------------------------------------------

cdef enum:
    # the logits' element type (Walk.dtype); float16 and bfloat16 are
    # computed in float32
    DT_F32, DT_F64, DT_F16, DT_BF16

cdef enum:
    # how a walk cuts its samples (Walk.shape)
    WALK_ROWS           # blocks of rows, each walked along its classes
    WALK_SMALL_C        # blocks of rows of few contiguous classes, transposed into tiles
    WALK_TILES          # tiles of up to TILE neighbouring samples, walked class by class


cdef struct Piece:
    # what a body computes: ``n`` samples of ``C`` classes, sample ``k``'s
    # class ``c`` at ``x[k * xs + c * xc]`` and its per-class output at
    # ``y[k * ys + c * yc]``; sample ``k`` is ``(o + k * o_step, i + k * i_step)``
    # of the call's (outer, inner) grid, where its per-sample values live
    Py_ssize_t n, C
    Py_ssize_t xc, xs
    Py_ssize_t yc, ys
    Py_ssize_t o, i, o_step, i_step
    Py_ssize_t unit         # the work unit the piece belongs to
    bint bf16               # half bodies: bfloat16 rather than float16
    bint stream_y           # contiguous output rows stored past the caches
    # rows of one class stride: the row after the last one when it is there
    # to be read (else NULL), and the state a row body leaves for the next
    # row (NULL: the body keeps its own), so that a piece cut in several
    # keeps computing the next row's maxima while it sums a row
    const void* after
    fastce_ahead_t* ahead
    # the rows stay where they are after the body returns, so that a row
    # body may leave the last row's output waiting in ahead (the walk
    # writes it at the end of the piece); else it writes it before returning
    bint keeps_pending
    # the logit scale a row body applies itself, to the logits as they are
    # (Body.rows_scale; the walk then computes no transformed copy), else 1
    double logit_scale


cdef inline Py_ssize_t sample_offset(const Piece* p, Py_ssize_t k, Py_ssize_t so,
                                     Py_ssize_t si) noexcept nogil:
    """Where sample ``k`` of a piece is in a per-sample array of strides ``so``, ``si``."""
    return (p.o + k * p.o_step) * so + (p.i + k * p.i_step) * si


ctypedef void (*body_f32)(const void* call, const Piece* p, const float* x, float* y,
                          double* total) noexcept nogil
ctypedef void (*body_f64)(const void* call, const Piece* p, const double* x, double* y,
                          double* total) noexcept nogil
ctypedef void (*body_half)(const void* call, const Piece* p, const uint16_t* x, float* y,
                           double* total) noexcept nogil


cdef struct Body:
    # what a kernel computes over a piece; each adds its samples' values to
    # ``total`` in sample order, the unit's total
    body_f32 rows_f32       # a piece of rows, walked one row at a time
    body_f64 rows_f64
    body_f32 tile_f32       # a tile, walked class by class; NULL: rows only
    body_f64 tile_f64
    body_half rows_half     # half rows read as they are; NULL: converted first
    bint rows_scale         # the row bodies apply a logit scale (Piece.logit_scale)
    # the row bodies read every class of a row: rows whose classes are not
    # contiguous are copied so, into the thread's buffer, before they are read
    bint whole_rows
    # the row bodies read the next row (Piece.after) while they sum a row, and
    # convert it there from half bits (fastce_ahead_t.next_half): half rows
    # go to them one at a time, each converted by the loop before it
    bint reads_ahead


cdef inline Body make_body(body_f32 rows_f32, body_f64 rows_f64, body_f32 tile_f32,
                           body_f64 tile_f64, body_half rows_half,
                           bint rows_scale=False, bint whole_rows=False,
                           bint reads_ahead=False) noexcept:
    cdef Body b
    b.rows_f32, b.rows_f64, b.tile_f32, b.tile_f64 = rows_f32, rows_f64, tile_f32, tile_f64
    b.rows_half = rows_half
    b.rows_scale = rows_scale
    b.whole_rows = whole_rows
    b.reads_ahead = reads_ahead
    return b


cdef struct Walk:
    # the logits: an (outer, C, inner) view, element strides
    const char* x
    int dtype
    Py_ssize_t outer, C, inner
    Py_ssize_t xo, xc, xi
    # the per-class output (NULL: none), float32 for half logits
    char* y
    Py_ssize_t yo, yc, yi
    bint stream_y           # y is far larger than the caches (walk_output)
    # the logit transform: without it (transform False) the bodies see the
    # logits; with it, t_outer * tanh(t_inner * x), or t_outer * x when
    # t_inner is 0, computed into each thread's buffer a piece at a time,
    # and the per-class output is multiplied by the transform's derivative
    bint transform
    double t_outer, t_inner
    int threads             # requested thread count, 0 for the default
    Py_ssize_t work         # elements the call reads, for the thread rule
    # the units flush subnormal results to zero (see csrc/denormals.h): where
    # a gradient or evaluate's terms are computed, whose tiny products of
    # probabilities are no output's own value
    bint flush_subnormals
    # set by walk_plan
    int shape
    Py_ssize_t block_rows   # samples per block of the row shapes
    Py_ssize_t n_blocks     # blocks: of rows, or tiles
    Py_ssize_t blocks_per_unit
    Py_ssize_t n_units


# ---- defined in _kernels.pyx, exported to the extensions that cimport this ----

cdef const fastce_ops_t* simd_ops() noexcept nogil
cdef int thread_count(Py_ssize_t work_items, Py_ssize_t n_elements, int requested) noexcept nogil
cdef void walk_from(Walk* w, object x) except *
cdef void walk_transform(Walk* w, double logit_scale, double softcap) noexcept
cdef void walk_plan(Walk* w, const Body* body, bint gather, Py_ssize_t block_rows,
                    Py_ssize_t max_units) noexcept nogil
cdef int walk_run(const Walk* w, const Body* body, const void* call, double* totals) except -1
cdef void targets_from(Targets* t, object target) except *


# ---- the row and tile statistics -----------------------------------------------

cdef inline floating exp_neg(floating v) noexcept nogil:
    """exp(v) for v <= 0 (or NaN), the same function on every code path."""
    if floating is float:
        return fastce_exp_neg_f32(v)
    else:
        return fastce_exp_neg_f64(v)


cdef inline floating scaled_shift(floating x, floating m, floating scale) noexcept nogil:
    """(x - m) * scale, as the vector kernels compute it (no multiply by 1)."""
    return x - m if scale == 1 else (x - m) * scale


cdef inline double row_stats(const floating* x, Py_ssize_t n, Py_ssize_t stride,
                             floating* m, floating scale) noexcept nogil:
    """Sets ``m`` to the row maximum and returns the sum of exp((x - m) *
    scale), the row seen through a positive logit scale (1: as it is); a NaN
    logit, or a row with nothing above -inf, gives NaN."""
    cdef floating v, mx = -INFINITY
    cdef double s = 0.0
    cdef Py_ssize_t c
    if stride == 1:
        if floating is float:
            return fastce_active_ops.row_max_sumexp_f32(x, n, m, scale)
        else:
            return fastce_active_ops.row_max_sumexp_f64(x, n, m, scale)
    for c in range(n):
        v = x[c * stride]
        mx = v if v > mx else mx
    for c in range(n):
        s += exp_neg(scaled_shift(x[c * stride], mx, scale))
    m[0] = mx
    return s


cdef inline double row_stats_ahead(const floating* x, Py_ssize_t n, Py_ssize_t stride,
                                   floating* m, const floating* next,
                                   fastce_ahead_t* ahead, floating scale) noexcept nogil:
    """row_stats, to the bit; with ``ahead`` (contiguous rows only) the row's
    maxima come from there when the previous row left them, and ``next``'s
    (another row, or NULL) are left there while this row is summed."""
    if ahead == NULL:
        return row_stats(x, n, stride, m, scale)
    if floating is float:
        return fastce_active_ops.row_max_sumexp_ahead_f32(x, n, m, next, ahead, scale)
    else:
        return fastce_active_ops.row_max_sumexp_ahead_f64(x, n, m, next, ahead, scale)


cdef inline double logsumexp_unshifted(const floating* x, Py_ssize_t xc, Py_ssize_t C,
                                       double scale) noexcept nogil:
    # log(sum(exp(x * scale))) for a row whose maximum is infinite: inf for
    # +inf, -inf for a row of -inf, NaN with a NaN
    cdef double s = 0.0
    cdef Py_ssize_t c
    for c in range(C):
        s += exp(<double>x[c * xc] * scale)
    return log(s)


cdef inline double row_logsumexp(const floating* x, Py_ssize_t xc, Py_ssize_t C, floating m,
                                 double log_s, double scale) noexcept nogil:
    """log(sum(exp(x * scale))) of a row from its maximum and the log of its
    sum of exp((x - m) * scale), for a positive logit scale (1: the row as
    it is)."""
    if isinf(m):
        return logsumexp_unshifted(x, xc, C, scale)
    return <double>m * scale + log_s


cdef inline double row_weighted_shifted_sum(const floating* x, Py_ssize_t n, Py_ssize_t stride,
                                            floating m, const double* weight) noexcept nogil:
    """sum_c w[c] * (x[c] - m), where a zero weight contributes nothing even
    against a -inf logit."""
    cdef double acc = 0.0
    cdef double wc
    cdef Py_ssize_t c
    if weight == NULL and stride == 1:
        if floating is float:
            return fastce_active_ops.row_sum_shifted_f32(x, n, m)
        else:
            return fastce_active_ops.row_sum_shifted_f64(x, n, m)
    for c in range(n):
        wc = 1.0 if weight == NULL else weight[c]
        if wc != 0.0:
            acc += wc * (<double>x[c * stride] - <double>m)
    return acc


cdef inline void tile_max(const floating* x, Py_ssize_t xi, Py_ssize_t n,
                          floating* m) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating v
    if xi == 1:
        if floating is float:
            fastce_active_ops.tile_max_f32(x, n, m)
        else:
            fastce_active_ops.tile_max_f64(x, n, m)
        return
    for k in range(n):
        v = x[k * xi]
        m[k] = v if v > m[k] else m[k]


cdef inline void tile_sumexp(const floating* x, Py_ssize_t xi, Py_ssize_t n, const floating* m,
                             floating* s, floating* ties) noexcept nogil:
    """s[k] += exp(x[k] - m[k]) for the elements below their maximum; the
    ones equal to it (exactly 1 each) are counted in ``ties``."""
    cdef Py_ssize_t k
    if xi == 1:
        if floating is float:
            fastce_active_ops.tile_sumexp_f32(x, n, m, s, ties)
        else:
            fastce_active_ops.tile_sumexp_f64(x, n, m, s, ties)
        return
    for k in range(n):
        if x[k * xi] == m[k]:
            ties[k] += 1
        else:
            s[k] += exp_neg(x[k * xi] - m[k])


cdef inline void tile_stats(const floating* x, Py_ssize_t xc, Py_ssize_t xi, Py_ssize_t C,
                            Py_ssize_t n, floating* m, double* s) noexcept nogil:
    """Per-sample maximum and sum of exp(x - m) over the classes of a tile of
    ``n <= TILE`` samples.  The terms below the maximum are summed in the
    working precision for FASTCE_CHUNK classes at a time, then join float64
    totals; the terms at the maximum, exactly 1 each, are counted apart so
    that small terms are never rounded against them."""
    cdef floating part[TILE]
    cdef floating ties[TILE]
    cdef Py_ssize_t c, k, start, end
    if xi == 1:
        if floating is float:
            fastce_active_ops.tile_stats_f32(x, xc, C, n, m, s)
        else:
            fastce_active_ops.tile_stats_f64(x, xc, C, n, m, s)
        return
    for k in range(n):
        m[k] = -INFINITY
        s[k] = 0.0
        ties[k] = 0
    for c in range(C):
        tile_max(x + c * xc, xi, n, m)
    start = 0
    while start < C:
        end = start + FASTCE_CHUNK
        if end > C:
            end = C
        for k in range(n):
            part[k] = 0
        for c in range(start, end):
            tile_sumexp(x + c * xc, xi, n, m, part, ties)
        for k in range(n):
            s[k] += part[k]
        start = end
    for k in range(n):
        # an infinite maximum (a +inf logit, or a row of -inf) gives NaN, as
        # exp(x - max) does
        s[k] = <double>NAN if isinf(m[k]) else s[k] + ties[k]


# ---- the loss of a class-index sample from its statistics ------------------------

cdef inline bint any_nonzero(const double* weight, Py_ssize_t n) noexcept nogil:
    """Whether some class weight is not 0 (True for no weights, NULL)."""
    cdef Py_ssize_t c
    if weight == NULL:
        return True
    for c in range(n):
        if weight[c] != 0.0:
            return True
    return False


cdef inline double index_coefficient(const CEOptions* opt, int64_t target, Py_ssize_t C,
                                     double* a_t, bint* active) noexcept nogil:
    """``A = sum_c a[c]`` for a class-index target, 0 where it is ignored;
    ``a_t`` receives the target's own term ``(1 - eps) * w[t]``, ``active``
    whether any ``a[c]`` is not 0.  Signed weights can make A 0 for an
    active sample, which still contributes; an inactive one contributes
    nothing, not even NaN."""
    cdef double w_t
    a_t[0] = 0.0
    active[0] = False
    if opt.has_ignore and target == opt.ignore_index:
        return 0.0
    w_t = 1.0 if opt.weight == NULL else opt.weight[target]
    a_t[0] = (1.0 - opt.smoothing) * w_t
    # a[t] = w[t] (1 - eps + eps / C) and a[c] = w[c] eps / C elsewhere
    active[0] = w_t != 0.0 or (opt.smoothing != 0.0 and opt.any_weight)
    return a_t[0] + opt.smoothing / C * opt.weight_sum


cdef inline double index_row_loss(const floating* x, Py_ssize_t xc, Py_ssize_t C,
                                  int64_t target, floating m, double log_s, double A,
                                  double a_t, const CEOptions* opt, double scale) noexcept nogil:
    """The loss of one row seen through a positive logit ``scale``, whose
    maximum is ``m`` and whose log-sum of exp((x - m) * scale) is ``log_s``,
    for an active sample (see index_coefficient)."""
    cdef double loss = A * log_s
    if a_t != 0.0:
        loss -= a_t * ((<double>x[target * xc] - <double>m) * scale)
    if opt.smoothing != 0.0:
        loss -= opt.smoothing / C * (row_weighted_shifted_sum(x, C, xc, m, opt.weight) * scale)
    return loss


cdef inline bint tile_targets(const Targets* t, const Piece* p, const CEOptions* opt,
                              int64_t* tgt, double* A, bint* active) noexcept nogil:
    """The class-index targets of a tile: ``tgt[k]`` the class (-1 where
    ignored), ``A[k]`` its coefficient sum (0 where ignored) and
    ``active[k]`` whether it has a coefficient that is not 0.  Returns
    whether any sample is not ignored."""
    cdef Py_ssize_t k, step
    cdef double a_t, A_counted
    cdef bint any_active = False, ignored, counted_active
    cdef const char* v
    if t.kind == T_INT64 and opt.weight == NULL:
        # the commonest targets: without class weights every counted sample
        # has the coefficients of any class that is not the ignored one
        A_counted = index_coefficient(opt, 1 if opt.ignore_index == 0 else 0, p.C, &a_t,
                                      &counted_active)
        v = t.data + p.o * t.so + p.i * t.si
        step = p.o_step * t.so + p.i_step * t.si
        for k in range(p.n):
            tgt[k] = (<const int64_t*>(v + k * step))[0]
            ignored = opt.has_ignore and tgt[k] == opt.ignore_index
            tgt[k] = -1 if ignored else tgt[k]
            A[k] = 0.0 if ignored else A_counted
            active[k] = counted_active and not ignored
            any_active = any_active or not ignored
        return any_active
    for k in range(p.n):
        tgt[k] = target_at(t, p.o + k * p.o_step, p.i + k * p.i_step)
        A[k] = index_coefficient(opt, tgt[k], p.C, &a_t, &active[k])
        if opt.has_ignore and tgt[k] == opt.ignore_index:
            tgt[k] = -1
        else:
            any_active = True
    return any_active


cdef inline void tile_index_terms(const floating* x, Py_ssize_t xc, Py_ssize_t xi, Py_ssize_t C,
                                  Py_ssize_t n, const int64_t* tgt, const CEOptions* opt,
                                  const floating* m, floating* x_t, double* dot) noexcept nogil:
    """``dot[k] = sum_c a[k, c] * (x[k, c] - m[k])`` for the class-index
    targets of a tile (0 where ignored), and ``x_t[k]`` the target's logit
    (set where not ignored)."""
    cdef Py_ssize_t c, k
    cdef double eps = opt.smoothing
    cdef double smooth = eps / C
    cdef double wc, a
    cdef const floating* xrow
    # read once: the stores below could alias the options, as far as the compiler knows
    cdef const double* weight = opt.weight
    for k in range(n):
        dot[k] = 0.0
    if eps != 0.0:
        for c in range(C):
            wc = 1.0 if weight == NULL else weight[c]
            if wc == 0.0:
                continue
            xrow = x + c * xc
            for k in range(n):
                if tgt[k] >= 0:
                    dot[k] += smooth * wc * (<double>xrow[k * xi] - <double>m[k])
    for k in range(n):
        if tgt[k] >= 0:
            x_t[k] = x[tgt[k] * xc + k * xi]
            wc = 1.0 if weight == NULL else weight[tgt[k]]
            a = (1.0 - eps) * wc
            if a != 0.0:
                dot[k] += a * (<double>x_t[k] - <double>m[k])


cdef inline double sample_loss(bint active, double A, double log_s, double dot) noexcept nogil:
    """``A * log_s - dot``; exactly 0 when every coefficient is 0 (the
    sample is not active), whatever the logits (NaN included)."""
    return A * log_s - dot if active else 0.0
