# What the core kernels (fastce._kernels) share with the evaluation kernels
# (fastce._metrics).  _kernels.pyx reads this file as its own declarations;
# _metrics.pyx cimports from it.  Three things are shared, each with one
# source of truth:
#
# * the vector kernels of csrc/ (kernels.h), always called through
#   ``fastce_active_ops``.  fastce._kernels fills the table (simd_init) and
#   exports it (``simd_ops``); an extension that cimports this file points
#   its own ``fastce_active_ops`` at that table when it is imported, so the
#   two extensions always run the same vector path;
# * the thread rule (``thread_count``), defined in fastce._kernels only: it is
#   also where a thread team is recorded as started, the state the fork
#   handler reads, so a forked child computes serially whichever extension
#   started the team;
# * the per-sample statistics of the row and tile kernels (maximum and sum of
#   exponentials), the layout decisions (rows, transposed small-C rows or
#   tiles) and the class-index loss computed from those statistics: the
#   evaluation computes its loss with the core's own code, to the last bit.

from libc.math cimport isinf, INFINITY, NAN
from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t,
                          uint64_t)


cdef extern from "csrc/dispatch.h":
    # chunk maxima of the next row, computed while a row is summed
    ctypedef struct fastce_ahead_t:
        int valid
    ctypedef struct fastce_ops_t:
        double (*row_max_sumexp_f32)(const float*, Py_ssize_t, float*) noexcept nogil
        double (*row_max_sumexp_f64)(const double*, Py_ssize_t, double*) noexcept nogil
        double (*row_max_sumexp_ahead_f32)(const float*, Py_ssize_t, float*, const float*,
                                           fastce_ahead_t*) noexcept nogil
        double (*row_max_sumexp_ahead_f64)(const double*, Py_ssize_t, double*, const double*,
                                           fastce_ahead_t*) noexcept nogil
        double (*row_sum_shifted_f32)(const float*, Py_ssize_t, float) noexcept nogil
        double (*row_sum_shifted_f64)(const double*, Py_ssize_t, double) noexcept nogil
        double (*sum_exp_f32)(const float*, Py_ssize_t) noexcept nogil
        double (*sum_exp_f64)(const double*, Py_ssize_t) noexcept nogil
        void (*row_scaled_exp_f32)(const float*, Py_ssize_t, float, float, float, float*) noexcept nogil
        void (*row_scaled_exp_f64)(const double*, Py_ssize_t, double, double, double, double*) noexcept nogil
        void (*row_shift_f32)(const float*, Py_ssize_t, float, float, float*) noexcept nogil
        void (*row_shift_f64)(const double*, Py_ssize_t, double, double, double*) noexcept nogil
        void (*row_softmax_f32)(const float*, Py_ssize_t, float*) noexcept nogil
        void (*row_softmax_f64)(const double*, Py_ssize_t, double*) noexcept nogil
        void (*row_extras_f32)(const float*, Py_ssize_t, float, Py_ssize_t, float, double*,
                               Py_ssize_t*, Py_ssize_t*) noexcept nogil
        void (*row_extras_f64)(const double*, Py_ssize_t, double, Py_ssize_t, double, double*,
                               Py_ssize_t*, Py_ssize_t*) noexcept nogil
        void (*tile_max_f32)(const float*, Py_ssize_t, float*) noexcept nogil
        void (*tile_max_f64)(const double*, Py_ssize_t, double*) noexcept nogil
        void (*tile_sumexp_f32)(const float*, Py_ssize_t, const float*, float*, float*) noexcept nogil
        void (*tile_sumexp_f64)(const double*, Py_ssize_t, const double*, double*, double*) noexcept nogil
        void (*tile_scaled_exp_f32)(const float*, Py_ssize_t, const float*, const float*, float,
                                    const float*, float*) noexcept nogil
        void (*tile_scaled_exp_f64)(const double*, Py_ssize_t, const double*, const double*, double,
                                    const double*, double*) noexcept nogil
        void (*tile_shift_f32)(const float*, Py_ssize_t, const float*, const float*, float*) noexcept nogil
        void (*tile_shift_f64)(const double*, Py_ssize_t, const double*, const double*, double*) noexcept nogil
        void (*tile_extras_f32)(const float*, Py_ssize_t, int64_t, const float*, const float*,
                                const int64_t*, float*, int64_t*, int64_t*) noexcept nogil
        void (*tile_extras_f64)(const double*, Py_ssize_t, int64_t, const double*, const double*,
                                const int64_t*, double*, int64_t*, int64_t*) noexcept nogil
        double (*bce_logits_f32)(const float*, const float*, const float*, const float*, Py_ssize_t,
                                 float, const float*, float*, float*) noexcept nogil
        double (*bce_logits_f64)(const double*, const double*, const double*, const double*,
                                 Py_ssize_t, double, const double*, double*, double*) noexcept nogil
        double (*bce_probs_f32)(const float*, const float*, const float*, Py_ssize_t, float,
                                const float*, float*, float*) noexcept nogil
        double (*bce_probs_f64)(const double*, const double*, const double*, Py_ssize_t, double,
                                const double*, double*, double*) noexcept nogil
        Py_ssize_t (*first_outside_unit_f32)(const float*, Py_ssize_t) noexcept nogil
        Py_ssize_t (*first_outside_unit_f64)(const double*, Py_ssize_t) noexcept nogil
        void (*tile_log)(const double*, Py_ssize_t, double*) noexcept nogil
        void (*half_to_f32)(const uint16_t*, Py_ssize_t, float*, int) noexcept nogil
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

# every integer dtype a target may have, read as it is
ctypedef fused index_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t

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
    bint want_loss_array
    bint want_grad


# ---- defined in _kernels.pyx, exported to the extensions that cimport this ----

cdef const fastce_ops_t* simd_ops() noexcept nogil
cdef int thread_count(Py_ssize_t work_items, Py_ssize_t n_elements, int requested) noexcept nogil


# ---- layout decisions ----------------------------------------------------------

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
    # partials are what make totals reproducible.  Transposed small-C rows
    # are tiled from the start of each block, so the block also fixes which
    # vector lane each row is computed in.
    cdef Py_ssize_t r = BLOCK_LOGITS // (C if C > 0 else 1)
    return r if r > 0 else 1


cdef inline Py_ssize_t units_per_grab(Py_ssize_t n_units, Py_ssize_t n_logits) noexcept nogil:
    # A thread takes about BLOCK_LOGITS logits at a time from the dynamic
    # schedule: units smaller than that (tiles of a few classes) would each
    # cost an update of the schedule's shared counter.  The units, and so the
    # bits, stay the same.
    cdef Py_ssize_t per_unit = n_logits // n_units if n_units > 0 else 1
    cdef Py_ssize_t k = BLOCK_LOGITS // per_unit if per_unit > 0 else 1
    return k if k > 1 else 1


# ---- the row and tile statistics -----------------------------------------------

cdef inline floating exp_neg(floating v) noexcept nogil:
    """exp(v) for v <= 0 (or NaN), the same function on every code path."""
    if floating is float:
        return fastce_exp_neg_f32(v)
    else:
        return fastce_exp_neg_f64(v)


cdef inline double row_stats(const floating* x, Py_ssize_t n, Py_ssize_t stride,
                             floating* m) noexcept nogil:
    """Sets ``m`` to the row maximum and returns the sum of exp(x - m); a NaN
    logit, or a row with nothing above -inf, gives NaN."""
    cdef floating v, mx = -INFINITY
    cdef double s = 0.0
    cdef Py_ssize_t c
    if stride == 1:
        if floating is float:
            return fastce_active_ops.row_max_sumexp_f32(x, n, m)
        else:
            return fastce_active_ops.row_max_sumexp_f64(x, n, m)
    for c in range(n):
        v = x[c * stride]
        mx = v if v > mx else mx
    for c in range(n):
        s += exp_neg(x[c * stride] - mx)
    m[0] = mx
    return s


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


cdef inline void tile_max(const floating* x, Py_ssize_t xi, Py_ssize_t n, floating* m) noexcept nogil:
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


cdef inline void gather_rows(const floating* x, Py_ssize_t row_stride, Py_ssize_t C,
                             Py_ssize_t n, floating* buf) noexcept nogil:
    """Rows ``x[k * row_stride : + C]`` for ``k < n`` into ``buf[c * TILE + k]``."""
    cdef Py_ssize_t k, c
    cdef const floating* row
    for k in range(n):
        row = x + k * row_stride
        for c in range(C):
            buf[c * TILE + k] = row[c]


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
                                  double a_t, const CEOptions* opt) noexcept nogil:
    """The loss of one row whose maximum is ``m`` and whose log-sum of
    exp(x - m) is ``log_s``, for an active sample (see index_coefficient)."""
    cdef double loss = A * log_s
    if a_t != 0.0:
        loss -= a_t * (<double>x[target * xc] - <double>m)
    if opt.smoothing != 0.0:
        loss -= opt.smoothing / C * row_weighted_shifted_sum(x, C, xc, m, opt.weight)
    return loss


cdef inline bint tile_targets(const index_t* t, Py_ssize_t ti, Py_ssize_t n, Py_ssize_t C,
                              const CEOptions* opt, int64_t* tgt, double* A,
                              bint* active) noexcept nogil:
    """The class-index targets of a tile: ``tgt[k]`` the class (-1 where
    ignored), ``A[k]`` its coefficient sum (0 where ignored) and
    ``active[k]`` whether it has a coefficient that is not 0.  Returns
    whether any sample is not ignored."""
    cdef Py_ssize_t k
    cdef double a_t
    cdef bint any_active = False
    for k in range(n):
        tgt[k] = <int64_t>t[k * ti]
        A[k] = index_coefficient(opt, tgt[k], C, &a_t, &active[k])
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
    for k in range(n):
        dot[k] = 0.0
    if eps != 0.0:
        for c in range(C):
            wc = 1.0 if opt.weight == NULL else opt.weight[c]
            if wc == 0.0:
                continue
            xrow = x + c * xc
            for k in range(n):
                if tgt[k] >= 0:
                    dot[k] += smooth * wc * (<double>xrow[k * xi] - <double>m[k])
    for k in range(n):
        if tgt[k] >= 0:
            x_t[k] = x[tgt[k] * xc + k * xi]
            wc = 1.0 if opt.weight == NULL else opt.weight[tgt[k]]
            a = (1.0 - eps) * wc
            if a != 0.0:
                dot[k] += a * (<double>x_t[k] - <double>m[k])


cdef inline double sample_loss(bint active, double A, double log_s, double dot) noexcept nogil:
    """``A * log_s - dot``; exactly 0 when every coefficient is 0 (the
    sample is not active), whatever the logits (NaN included)."""
    return A * log_s - dot if active else 0.0
