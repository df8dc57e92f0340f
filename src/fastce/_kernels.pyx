# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, autotestdict=False
"""Softmax cross-entropy kernels over an ``(outer, C, inner)`` view.

Every public function reduces its input to a three-dimensional strided view:
``outer`` positions before the class axis, ``C`` classes, ``inner`` positions
after it.  A *sample* is one ``(o, i)`` pair; its row is ``x[o, :, i]``.

Two loop shapes serve every case:

* the row kernel walks one sample at a time along its class row; it is used
  when the class stride is the smallest one (``inner == 1`` for C-ordered
  data);
* the tile kernel walks a tile of up to ``TILE`` neighbouring samples at once
  with the tile's positions in the innermost loop; it is used when the inner
  positions are contiguous (channels-first data such as ``(N, C, H, W)``).

Reductions over samples are computed per fixed-size block into float64
partials, then added in block order, so totals do not depend on the number of
threads.  Blocks are handed to the threads as they become free (a dynamic
schedule): on a busy machine a thread the OS deschedules holds up only the
block it is in, and which thread computes a block never changes its bits.  The Python layer validates everything; these functions cannot fail.
"""

cimport cython
from cython.parallel cimport prange
from libc.math cimport exp, log, isinf, INFINITY, NAN
from libc.stdlib cimport malloc, free
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    """
    #ifndef FASTCE_COMPILE_ARGS
    #define FASTCE_COMPILE_ARGS ""
    #endif
    /* 0: follow OpenMP's own maximum (OMP_NUM_THREADS, threadpoolctl) */
    static int fastce_thread_limit = 0;
    /* GNU OpenMP's thread team does not survive fork(): a child of a process
     * that has run a team would hang in its next parallel region.  The team
     * may be another library's (torch shares the same runtime), which fastce
     * cannot see, so every forked child runs every kernel on its own thread.
     * fastce_team_started says whether fastce itself had run one. */
    static int fastce_team_started = 0;
    static int fastce_forked_child = 0;
    #if defined(_OPENMP) && !defined(_WIN32)
    #include <pthread.h>
    static void fastce_after_fork_in_child(void) {
        fastce_forked_child = 1;
    }
    static void fastce_register_fork_handler(void) {
        pthread_atfork(NULL, NULL, fastce_after_fork_in_child);
    }
    #else
    static void fastce_register_fork_handler(void) {}
    #endif
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTCE_OPENMP 1
    static int fastce_max_threads(void) {
        if (fastce_forked_child) return 1;
        return fastce_thread_limit > 0 ? fastce_thread_limit : omp_get_max_threads();
    }
    #else
    #define FASTCE_OPENMP 0
    static int fastce_max_threads(void) { return 1; }
    #endif
    """
    const char* FASTCE_COMPILE_ARGS
    int FASTCE_OPENMP
    int fastce_thread_limit
    int fastce_team_started
    int fastce_forked_child
    void fastce_register_fork_handler() noexcept
    int fastce_max_threads() noexcept nogil

# The fused types, TILE, SMALL_C, CEOptions and the row and tile statistics
# are declared in _kernels.pxd, shared with the evaluation kernels.

# Below this many logits a call runs on the calling thread only: starting a
# team costs more than it saves.
cdef enum:
    SERIAL_BELOW = 1 << 15

# Block totals of a call with at most this many blocks live on the stack.
cdef enum:
    FEW_PARTIALS = 64

cdef enum:
    OP_LOG_SOFTMAX = 0
    OP_SOFTMAX = 1
    OP_LOGSUMEXP = 2

LOG_SOFTMAX = OP_LOG_SOFTMAX
SOFTMAX = OP_SOFTMAX
LOGSUMEXP = OP_LOGSUMEXP
TILE_SIZE = TILE


def openmp_enabled():
    """Whether the extension was compiled with OpenMP."""
    return bool(FASTCE_OPENMP)


def max_threads():
    """The number of threads a parallel kernel would use now."""
    return fastce_max_threads()


fastce_register_fork_handler()


def forked_child_serial():
    """Whether this process was made by fork(), and so runs every kernel
    serially (its parent may have run an OpenMP team, fastce's or another
    library's, which the child cannot use)."""
    return bool(fastce_forked_child)


def set_thread_limit(int n):
    """Use at most ``n`` threads; 0 restores OpenMP's own maximum."""
    global fastce_thread_limit
    fastce_thread_limit = n if n > 0 else 0


def compile_args():
    """The compiler flags the extension was built with."""
    return FASTCE_COMPILE_ARGS.decode()


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
                                floating scale, floating offset,
                                floating* y, Py_ssize_t yc) noexcept nogil:
    """y = scale * exp(x - m) - offset; ``y`` may be ``x``."""
    cdef Py_ssize_t c
    if xc == 1 and yc == 1:
        if floating is float:
            fastce_active_ops.row_scaled_exp_f32(x, n, m, scale, offset, y)
        else:
            fastce_active_ops.row_scaled_exp_f64(x, n, m, scale, offset, y)
        return
    for c in range(n):
        y[c * yc] = scale * exp_neg(x[c * xc] - m) - offset


cdef inline void row_shift(const floating* x, Py_ssize_t xc, Py_ssize_t n, floating m,
                           floating log_s, floating* y, Py_ssize_t yc) noexcept nogil:
    """y = (x - m) - log_s; ``y`` may be ``x``."""
    cdef Py_ssize_t c
    if xc == 1 and yc == 1:
        if floating is float:
            fastce_active_ops.row_shift_f32(x, n, m, log_s, y)
        else:
            fastce_active_ops.row_shift_f64(x, n, m, log_s, y)
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


# --------------------------------------------------------------------------
# Layout of one call
# --------------------------------------------------------------------------

cdef struct Layout:
    Py_ssize_t outer
    Py_ssize_t C
    Py_ssize_t inner
    # element strides of the logits (x), of the per-class output (y, the
    # gradient or the softmax), of probability targets (p), and of the
    # per-sample arrays: targets (t), per-sample output (l), grad_output (g)
    Py_ssize_t xo, xc, xi
    Py_ssize_t yo, yc, yi
    Py_ssize_t po, pc, pi
    Py_ssize_t to, ti
    Py_ssize_t lo, li
    Py_ssize_t go, gi
    int threads             # requested thread count, 0 for the default


cdef inline Py_ssize_t elem_stride(Py_ssize_t byte_stride, Py_ssize_t itemsize) noexcept nogil:
    return byte_stride // itemsize


cdef inline bint use_tile_kernel(Layout* L) noexcept nogil:
    return tiles_pay_off(L.inner, L.xc, L.xi)


cdef int thread_count(Py_ssize_t work_items, Py_ssize_t n_elements, int requested) noexcept nogil:
    """The threads a call of ``work_items`` units over ``n_elements`` logits
    uses (``requested``, or the process-wide count for 0); records that a
    team starts, so that a forked child computes serially.  Every kernel of
    both extensions asks here."""
    global fastce_team_started
    cdef int n = requested if requested > 0 else fastce_max_threads()
    if n_elements < SERIAL_BELOW or work_items < 2 or fastce_forked_child:
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
# Cross-entropy of one sample, row layout
# --------------------------------------------------------------------------

cdef inline double ce_index_row(const floating* x, Py_ssize_t xc, Py_ssize_t C,
                                int64_t target, const CEOptions* opt,
                                floating* grad, Py_ssize_t yc, double g,
                                const floating* next, fastce_ahead_t* ahead) noexcept nogil:
    """Loss of one sample with a class-index target; writes its gradient row
    scaled by ``g`` when ``grad`` is not NULL.  With ``ahead`` (contiguous
    rows only), the row's maxima come from there when the previous row left
    them, and ``next``'s (another row, or NULL) are left there."""
    cdef Py_ssize_t c
    cdef double eps = opt.smoothing
    cdef double a_t, A, s, loss, smooth_coef = eps / C
    cdef floating m, scale_f, x_t

    cdef bint active
    A = index_coefficient(opt, target, C, &a_t, &active)
    if not active:
        # every coefficient is zero: nothing contributes, not even NaN logits
        if grad != NULL:
            for c in range(C):
                grad[c * yc] = 0
        if ahead != NULL:
            ahead.valid = 0
        return 0.0

    if ahead == NULL:
        s = row_stats(x, C, xc, &m)
    elif floating is float:
        s = fastce_active_ops.row_max_sumexp_ahead_f32(x, C, &m, next, ahead)
    else:
        s = fastce_active_ops.row_max_sumexp_ahead_f64(x, C, &m, next, ahead)
    x_t = x[target * xc]  # kept: with out=logits the gradient pass overwrites it
    loss = index_row_loss(x, xc, C, target, m, log(s), A, a_t, opt)

    if grad != NULL:
        scale_f = <floating>(g * A / s)
        if eps == 0.0 or opt.weight == NULL:
            row_scaled_exp(x, xc, C, m, scale_f, <floating>(g * smooth_coef), grad, yc)
        else:
            for c in range(C):
                grad[c * yc] = (scale_f * exp_neg(x[c * xc] - m)
                                - <floating>(g * smooth_coef * opt.weight[c]))
        # the target's element once more in float64: p_t - 1 cancels
        grad[target * yc] = <floating>(
            g * A / s * <double>exp_neg(x_t - m)
            - g * (a_t + smooth_coef * (1.0 if opt.weight == NULL else opt.weight[target])))
    return loss


cdef inline double ce_prob_row(const floating* x, Py_ssize_t xc, Py_ssize_t C,
                               const floating* p, Py_ssize_t pc, const CEOptions* opt,
                               floating* grad, Py_ssize_t yc, double g) noexcept nogil:
    """Loss of one sample with a probability target row ``p``."""
    cdef Py_ssize_t c
    cdef double eps = opt.smoothing
    cdef double smooth = eps / C
    cdef double s, A = 0.0, dot = 0.0, a, wc, gp
    cdef bint any_coefficient = False
    cdef floating m

    s = row_stats(x, C, xc, &m)
    for c in range(C):
        wc = 1.0 if opt.weight == NULL else opt.weight[c]
        a = wc * ((1.0 - eps) * <double>p[c * pc] + smooth)
        A += a
        if a != 0.0:
            any_coefficient = True
            dot += a * (<double>x[c * xc] - <double>m)
    if not any_coefficient:
        # nothing contributes, not even NaN logits; signed coefficients that
        # sum to 0 still do
        if grad != NULL:
            for c in range(C):
                grad[c * yc] = 0
        return 0.0
    if grad != NULL:
        gp = g * A / s
        for c in range(C):
            wc = 1.0 if opt.weight == NULL else opt.weight[c]
            a = wc * ((1.0 - eps) * <double>p[c * pc] + smooth)
            grad[c * yc] = <floating>(gp * exp_neg(x[c * xc] - m) - g * a)
    return A * log(s) - dot


# --------------------------------------------------------------------------
# Cross-entropy, tile layout: TILE neighbouring samples at once
# --------------------------------------------------------------------------

cdef inline double ce_tile(const floating* x, Py_ssize_t xc, Py_ssize_t xi, Py_ssize_t C,
                           Py_ssize_t n,
                           const index_t* t, Py_ssize_t ti,
                           const floating* p, Py_ssize_t pc, Py_ssize_t pi,
                           const CEOptions* opt,
                           floating* loss_out, Py_ssize_t li,
                           const double* gout, Py_ssize_t gi,
                           floating* grad, Py_ssize_t yc, Py_ssize_t yi) noexcept nogil:
    """Samples ``0 <= k < n`` of a tile; ``t`` is NULL for probability
    targets, ``p`` NULL for class indices.  Returns the sum of their losses."""
    cdef floating m[TILE]
    cdef floating scale[TILE]
    cdef floating offset[TILE]
    cdef double s[TILE]
    cdef double A[TILE]
    cdef double dot[TILE]
    cdef double gk[TILE]
    cdef floating x_t[TILE]
    cdef double log_s[TILE]
    cdef int64_t tgt[TILE]
    # whether any of the sample's coefficients is not 0: a sample without one
    # contributes exactly nothing
    cdef bint active[TILE]
    cdef Py_ssize_t c, k
    cdef double eps = opt.smoothing
    cdef double smooth = eps / C
    cdef double wc, a, total = 0.0, loss, g
    cdef bint any_zero = False
    cdef const floating* xrow
    cdef floating* yrow

    tile_stats(x, xc, xi, C, n, m, s)
    if t != NULL:
        tile_targets(t, ti, n, C, opt, tgt, A, active)
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
                a = wc * ((1.0 - eps) * <double>p[c * pc + k * pi] + smooth)
                A[k] += a
                if a != 0.0:
                    active[k] = True
                    dot[k] += a * (<double>xrow[k * xi] - <double>m[k])

    fastce_active_ops.tile_log(s, n, log_s)
    for k in range(n):
        loss = sample_loss(active[k], A[k], log_s[k], dot[k])
        any_zero = any_zero or not active[k]
        total += loss
        if loss_out != NULL:
            loss_out[k * li] = <floating>loss

    if grad == NULL:
        return total
    for k in range(n):
        g = gout[k * gi] / opt.denominator
        gk[k] = g if active[k] else 0.0
        scale[k] = <floating>(g * A[k] / s[k] if active[k] else 0.0)
        offset[k] = <floating>(gk[k] * smooth)
    for c in range(C):
        xrow = x + c * xc
        yrow = grad + c * yc
        if t != NULL:
            wc = 1.0 if opt.weight == NULL else opt.weight[c]
            tile_scaled_exp(xrow, xi, n, m, scale, <floating>wc, offset, yrow, yi)
        else:
            wc = 1.0 if opt.weight == NULL else opt.weight[c]
            for k in range(n):
                a = wc * ((1.0 - eps) * <double>p[c * pc + k * pi] + smooth)
                yrow[k * yi] = <floating>(scale[k] * exp_neg(xrow[k * xi] - m[k]) - gk[k] * a)
    if any_zero:
        # samples with no coefficient get exactly zero, whatever their logits
        for c in range(C):
            yrow = grad + c * yc
            for k in range(n):
                if not active[k]:
                    yrow[k * yi] = 0
    if t != NULL:
        # the targets' elements once more in float64: p_t - 1 cancels
        for k in range(n):
            if tgt[k] >= 0 and active[k]:
                wc = 1.0 if opt.weight == NULL else opt.weight[tgt[k]]
                c = tgt[k]
                grad[c * yc + k * yi] = <floating>(
                    gk[k] * A[k] / s[k] * <double>exp_neg(x_t[k] - m[k])
                    - gk[k] * ((1.0 - eps) * wc + smooth * wc))
    return total


# --------------------------------------------------------------------------
# Cross-entropy drivers
# --------------------------------------------------------------------------

cdef inline bint use_small_c_tiles(Layout* L) noexcept nogil:
    return small_c_rows(L.C, L.inner, L.xc)


cdef inline void scatter_rows(const floating* buf, Py_ssize_t C, Py_ssize_t n,
                              floating* y, Py_ssize_t row_stride, Py_ssize_t yc) noexcept nogil:
    cdef Py_ssize_t k, c
    cdef floating* row
    for k in range(n):
        row = y + k * row_stride
        for c in range(C):
            row[c * yc] = buf[c * TILE + k]


cdef double ce_small_c_rows(const floating* x, const index_t* t, Layout* L,
                            const CEOptions* opt, floating* loss_out, const double* gout,
                            floating* grad, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Rows ``first <= j < last`` (``inner == 1``) through the tile kernel."""
    cdef floating xbuf[TILE * SMALL_C]
    cdef floating gbuf[TILE * SMALL_C]
    cdef Py_ssize_t j = first, n
    cdef double total = 0.0
    while j < last:
        n = last - j
        if n > TILE:
            n = TILE
        gather_rows(x + j * L.xo, L.xo, L.C, n, xbuf)
        total += ce_tile(
            xbuf, TILE, 1, L.C, n, t + j * L.to, L.to, <const floating*>NULL, 0, 0, opt,
            (loss_out + j * L.lo) if loss_out != NULL else NULL, L.lo,
            (gout + j * L.go) if gout != NULL else NULL, L.go,
            gbuf if grad != NULL else NULL, TILE, 1)
        if grad != NULL:
            scatter_rows(gbuf, L.C, n, grad + j * L.yo, L.yo, L.yc)
        j += n
    return total


cdef double ce_block(const floating* x, const index_t* t, const floating* p,
                     Layout* L, const CEOptions* opt,
                     floating* loss_out, const double* gout, floating* grad,
                     Py_ssize_t unit, bint tiled) noexcept nogil:
    """The losses of work unit ``unit`` (a block of rows, or one tile),
    summed in a fixed order."""
    cdef Py_ssize_t per, first, last, n, o, i, j, tiles
    cdef double total = 0.0, g, loss
    cdef int64_t target
    cdef floating* grow = NULL
    cdef const floating* prow = NULL

    if tiled:
        tiles = (L.inner + TILE - 1) // TILE
        o = unit // tiles
        i = (unit % tiles) * TILE
        n = L.inner - i
        if n > TILE:
            n = TILE
        return ce_tile(
            x + o * L.xo + i * L.xi, L.xc, L.xi, L.C, n,
            (t + o * L.to + i * L.ti) if t != NULL else NULL, L.ti,
            (p + o * L.po + i * L.pi) if p != NULL else NULL, L.pc, L.pi,
            opt,
            (loss_out + o * L.lo + i * L.li) if loss_out != NULL else NULL, L.li,
            (gout + o * L.go + i * L.gi) if gout != NULL else NULL, L.gi,
            (grad + o * L.yo + i * L.yi) if grad != NULL else NULL, L.yc, L.yi)

    per = rows_per_block(L.C)
    first = unit * per
    last = first + per
    if last > L.outer * L.inner:
        last = L.outer * L.inner
    if t != NULL and use_small_c_tiles(L):
        return ce_small_c_rows(x, t, L, opt, loss_out, gout, grad, first, last)
    # contiguous rows take their maxima while the previous row is summed
    cdef fastce_ahead_t ahead
    cdef fastce_ahead_t* look_ahead = &ahead if L.xc == 1 else NULL
    cdef const floating* next_row
    ahead.valid = 0
    for j in range(first, last):
        o = j // L.inner
        i = j - o * L.inner
        g = 0.0
        if grad != NULL:
            g = gout[o * L.go + i * L.gi] / opt.denominator
            grow = grad + o * L.yo + i * L.yi
        if t != NULL:
            target = <int64_t>t[o * L.to + i * L.ti]
            next_row = NULL
            if j + 1 < last:
                next_row = x + ((j + 1) // L.inner) * L.xo + ((j + 1) % L.inner) * L.xi
            loss = ce_index_row(x + o * L.xo + i * L.xi, L.xc, L.C, target, opt, grow, L.yc, g,
                                next_row, look_ahead)
        else:
            prow = p + o * L.po + i * L.pi
            loss = ce_prob_row(x + o * L.xo + i * L.xi, L.xc, L.C, prow, L.pc, opt, grow, L.yc, g)
        if loss_out != NULL:
            loss_out[o * L.lo + i * L.li] = <floating>loss
        total += loss
    return total


cdef void ce_run(const floating* x, const index_t* t, const floating* p,
                 Layout* L, const CEOptions* opt,
                 floating* loss_out, const double* gout, floating* grad,
                 double* partials, Py_ssize_t n_units, bint tiled) noexcept nogil:
    cdef Py_ssize_t u
    cdef int nthreads = thread_count(n_units, L.outer * L.C * L.inner, L.threads)
    if nthreads == 1:
        for u in range(n_units):
            partials[u] = ce_block(x, t, p, L, opt, loss_out, gout, grad, u, tiled)
    else:
        for u in prange(n_units, schedule="dynamic", num_threads=nthreads,
                        chunksize=units_per_grab(n_units, L.outer * L.C * L.inner)):
            partials[u] = ce_block(x, t, p, L, opt, loss_out, gout, grad, u, tiled)


cdef Py_ssize_t unit_count(Layout* L, bint tiled) noexcept nogil:
    if tiled:
        return L.outer * ((L.inner + TILE - 1) // TILE)
    cdef Py_ssize_t per = rows_per_block(L.C)
    return (L.outer * L.inner + per - 1) // per


cdef double ordered_sum(const double* partials, Py_ssize_t n) noexcept nogil:
    cdef double total = 0.0
    cdef Py_ssize_t u
    for u in range(n):
        total += partials[u]
    return total


cdef double* block_totals(Py_ssize_t n_units, double* few) except NULL:
    """Room for a call's block totals: ``few`` (FEW_PARTIALS of them, on the
    caller's stack) when they fit, for small calls an allocation would cost as
    much as the arithmetic; else memory the caller frees when it is not ``few``."""
    if n_units <= FEW_PARTIALS:
        return few
    cdef double* partials = <double*>malloc(n_units * sizeof(double))
    if partials == NULL:
        raise MemoryError(f"cannot allocate {n_units} block totals")
    return partials


cdef double ce_launch(const floating* x, const index_t* t, const floating* p,
                      Layout* L, const double[::1] weight, double weight_sum,
                      double smoothing, int64_t ignore_index, bint has_ignore,
                      floating* lp, const double* gp, double denominator, floating* yp):
    cdef CEOptions opt
    cdef bint tiled = use_tile_kernel(L)
    cdef Py_ssize_t n_units = unit_count(L, tiled)
    cdef double few_partials[FEW_PARTIALS]
    cdef double* partials = block_totals(n_units, few_partials)
    cdef double total
    opt.weight = &weight[0] if weight.shape[0] > 0 else NULL
    opt.weight_sum = weight_sum
    opt.any_weight = any_nonzero(opt.weight, weight.shape[0])
    opt.smoothing = smoothing
    opt.ignore_index = ignore_index
    opt.has_ignore = has_ignore
    opt.denominator = denominator
    with nogil:
        ce_run(x, t, p, L, &opt, lp, gp, yp, partials, n_units, tiled)
        total = ordered_sum(partials, n_units)
    if partials != few_partials:
        free(partials)
    return total


cdef void layout_from(Layout* L, Py_ssize_t[3] shape, Py_ssize_t[3] xstrides) noexcept:
    L.outer = shape[0]
    L.C = shape[1]
    L.inner = shape[2]
    L.xo = xstrides[0]
    L.xc = xstrides[1]
    L.xi = xstrides[2]
    L.to = L.ti = L.po = L.pc = L.pi = L.lo = L.li = L.go = L.gi = 0
    L.yo = L.yc = L.yi = 0
    L.threads = 0


def cross_entropy_index(const floating[:, :, :] x,
                        const index_t[:, :] target,
                        const double[::1] weight,
                        double weight_sum,
                        double smoothing,
                        int64_t ignore_index,
                        bint has_ignore,
                        floating[:, :] loss_out,
                        const double[:, :] grad_output,
                        double denominator,
                        floating[:, :, :] grad,
                        int num_threads=0):
    """Cross-entropy with class-index targets over an ``(outer, C, inner)``
    view; returns the float64 sum of the per-sample losses.

    ``target`` has shape ``(outer, inner)``.  ``loss_out`` (or None) receives
    the per-sample losses; ``grad`` (or None) receives
    ``grad_output / denominator`` times the gradient.  ``weight`` is empty
    when there are no class weights.  The caller has validated everything:
    targets are in ``[0, C)`` or equal ``ignore_index``, shapes agree, and
    ``outer * inner > 0`` with ``C > 0``.
    """
    cdef Layout L
    cdef Py_ssize_t isz = sizeof(floating)
    cdef floating* lp = NULL
    cdef floating* yp = NULL
    cdef const double* gp = NULL
    layout_from(&L, [x.shape[0], x.shape[1], x.shape[2]],
                [x.strides[0] // isz, x.strides[1] // isz, x.strides[2] // isz])
    L.threads = num_threads
    L.to = target.strides[0] // sizeof(index_t)
    L.ti = target.strides[1] // sizeof(index_t)
    if loss_out is not None:
        lp = &loss_out[0, 0]
        L.lo = loss_out.strides[0] // isz
        L.li = loss_out.strides[1] // isz
    if grad is not None:
        yp = &grad[0, 0, 0]
        L.yo = grad.strides[0] // isz
        L.yc = grad.strides[1] // isz
        L.yi = grad.strides[2] // isz
        gp = &grad_output[0, 0]
        L.go = grad_output.strides[0] // sizeof(double)
        L.gi = grad_output.strides[1] // sizeof(double)
        if grad_output.shape[0] == 1 and grad_output.shape[1] == 1:
            L.go = L.gi = 0  # one value for every sample
    return ce_launch(&x[0, 0, 0], &target[0, 0], <const floating*>NULL, &L, weight,
                     weight_sum, smoothing, ignore_index, has_ignore,
                     lp, gp, denominator, yp)


def cross_entropy_probs(const floating[:, :, :] x,
                        const floating[:, :, :] probs,
                        const double[::1] weight,
                        double smoothing,
                        floating[:, :] loss_out,
                        const double[:, :] grad_output,
                        double denominator,
                        floating[:, :, :] grad,
                        int num_threads=0):
    """Cross-entropy with probability targets ``probs`` (the shape of ``x``);
    otherwise as :func:`cross_entropy_index`."""
    cdef Layout L
    cdef Py_ssize_t isz = sizeof(floating)
    cdef floating* lp = NULL
    cdef floating* yp = NULL
    cdef const double* gp = NULL
    layout_from(&L, [x.shape[0], x.shape[1], x.shape[2]],
                [x.strides[0] // isz, x.strides[1] // isz, x.strides[2] // isz])
    L.threads = num_threads
    L.po = probs.strides[0] // isz
    L.pc = probs.strides[1] // isz
    L.pi = probs.strides[2] // isz
    if loss_out is not None:
        lp = &loss_out[0, 0]
        L.lo = loss_out.strides[0] // isz
        L.li = loss_out.strides[1] // isz
    if grad is not None:
        yp = &grad[0, 0, 0]
        L.yo = grad.strides[0] // isz
        L.yc = grad.strides[1] // isz
        L.yi = grad.strides[2] // isz
        gp = &grad_output[0, 0]
        L.go = grad_output.strides[0] // sizeof(double)
        L.gi = grad_output.strides[1] // sizeof(double)
        if grad_output.shape[0] == 1 and grad_output.shape[1] == 1:
            L.go = L.gi = 0  # one value for every sample
    return ce_launch(&x[0, 0, 0], <const int64_t*>NULL, &probs[0, 0, 0], &L, weight,
                     0.0, smoothing, 0, False, lp, gp, denominator, yp)


# The commonest call, cross_entropy(x, t) (or with its gradient) with x a
# C-ordered (N, C) float32 or float64 array and t int64 class indices, costs
# less than torch's own dispatch only if it skips the general validation.  This lane recognises that
# call itself and runs it through the same launch (so the bits are the same);
# it declines everything else, and bad targets, by returning None, and the
# Python layer then validates and reports as usual.

cdef double[::1] NO_CLASS_WEIGHTS = np.empty(0, dtype=np.float64)
_float32 = np.float32
_float64 = np.float64


cdef inline bint apart(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether two contiguous arrays share no byte."""
    cdef char* a0 = <char*>cnp.PyArray_DATA(a)
    cdef char* b0 = <char*>cnp.PyArray_DATA(b)
    return a0 + cnp.PyArray_NBYTES(a) <= b0 or b0 + cnp.PyArray_NBYTES(b) <= a0


cdef bint common_pair(object x, object t):
    """Whether ``x`` and ``t`` are the common call's arrays: a C-ordered,
    aligned ``(N, C)`` float32/float64 array with ``N >= 1`` and ``C >= 2``,
    and an ``(N,)`` int64 one."""
    if type(x) is not np.ndarray or type(t) is not np.ndarray:
        return False
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != 2 or cnp.PyArray_NDIM(<cnp.ndarray>t) != 1:
        return False
    cdef int xtype = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if (xtype != cnp.NPY_FLOAT and xtype != cnp.NPY_DOUBLE) \
            or cnp.PyArray_TYPE(<cnp.ndarray>t) != cnp.NPY_INT64 \
            or not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>x) \
            or not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>t):
        return False
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    return n > 0 and cnp.PyArray_DIM(<cnp.ndarray>x, 1) >= 2 \
        and cnp.PyArray_DIM(<cnp.ndarray>t, 0) == n


def cross_entropy_common(object logits, object target, bint mean, int64_t ignore_index,
                         int num_threads=0, bint want_grad=False, object out=None):
    """The result of ``cross_entropy(logits, target, ignore_index=...)`` with
    ``reduction="mean"`` (or ``"sum"``), no weights and no smoothing: the
    loss as a NumPy scalar, or with ``want_grad`` ``(loss, grad)`` for
    ``grad_output=1``, the gradient written to ``out`` (logits' shape and
    dtype, C-ordered, the logits themselves or apart from both inputs) or to
    a new array.  None when the arrays are not both aligned, C-ordered and
    native (an ``(N, C)`` float32/float64 array with ``N >= 1``, ``C >= 2``
    and an ``(N,)`` int64 array of targets in ``[0, C)`` or equal to
    ``ignore_index``), or ``out`` is not such an array."""
    if not common_pair(logits, target):
        return None
    cdef cnp.ndarray x = <cnp.ndarray>logits
    cdef cnp.ndarray t = <cnp.ndarray>target
    cdef cnp.ndarray grad
    cdef int xtype = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t n = cnp.PyArray_DIM(x, 0), n_classes = cnp.PyArray_DIM(x, 1)
    if want_grad and out is not None:
        if type(out) is not np.ndarray:
            return None
        grad = <cnp.ndarray>out
        if cnp.PyArray_TYPE(grad) != xtype or cnp.PyArray_NDIM(grad) != 2 \
                or cnp.PyArray_DIM(grad, 0) != n or cnp.PyArray_DIM(grad, 1) != n_classes \
                or not cnp.PyArray_ISCARRAY(grad) or not apart(grad, t) \
                or not (cnp.PyArray_DATA(grad) == cnp.PyArray_DATA(x) or apart(grad, x)):
            return None
    cdef const int64_t* tp = <const int64_t*>cnp.PyArray_DATA(t)
    cdef int64_t bad_value
    cdef double counted
    cdef Py_ssize_t bad
    with nogil:
        bad = scan_targets(tp, 0, 1, 1, n, n_classes, ignore_index, True, <const double*>NULL,
                           &bad_value, &counted)
    if bad >= 0:
        return None
    if want_grad and out is None:
        grad = np.empty((n, n_classes), dtype=_float32 if xtype == cnp.NPY_FLOAT else _float64)
    cdef double denominator = counted if mean else 1.0
    cdef double grad_output = 1.0
    cdef const double* gp = &grad_output if want_grad else NULL
    cdef void* yp = cnp.PyArray_DATA(grad) if want_grad else NULL
    cdef Layout L
    # the strides NumPy gives the (N, C, 1) views of C-ordered (N, C) arrays
    layout_from(&L, [n, n_classes, 1], [n_classes, 1, 1])
    L.threads = num_threads
    L.to = 1
    L.ti = 1
    if want_grad:
        L.yo = n_classes
        L.yc = 1
        L.yi = 1
    cdef double total
    if xtype == cnp.NPY_FLOAT:
        total = ce_launch(<const float*>cnp.PyArray_DATA(x), tp, <const float*>NULL, &L,
                          NO_CLASS_WEIGHTS, <double>n_classes, 0.0, ignore_index, True,
                          <float*>NULL, gp, denominator, <float*>yp)
    else:
        total = ce_launch(<const double*>cnp.PyArray_DATA(x), tp, <const double*>NULL, &L,
                          NO_CLASS_WEIGHTS, <double>n_classes, 0.0, ignore_index, True,
                          <double*>NULL, gp, denominator, <double*>yp)
    if mean:
        total = total / denominator if counted else NAN
    loss = _float32(<float>total) if xtype == cnp.NPY_FLOAT else _float64(total)
    return (loss, grad) if want_grad else loss


# --------------------------------------------------------------------------
# log_softmax, softmax, logsumexp
# --------------------------------------------------------------------------

cdef inline double logsumexp_unshifted(const floating* x, Py_ssize_t xc, Py_ssize_t C) noexcept nogil:
    # log(sum(exp(x))) for a row whose maximum is infinite: inf for +inf, -inf
    # for a row of -inf, NaN with a NaN
    cdef double s = 0.0
    cdef Py_ssize_t c
    for c in range(C):
        s += exp(<double>x[c * xc])
    return log(s)


cdef inline void softmax_row(const floating* x, Py_ssize_t xc, Py_ssize_t C, int op,
                             floating* y, Py_ssize_t yc) noexcept nogil:
    """One row of ``op``; for logsumexp ``y`` is the single output element."""
    if op == OP_SOFTMAX and xc == 1 and yc == 1 and C <= FASTCE_ROW_IN_CACHE:
        if floating is float:
            fastce_active_ops.row_softmax_f32(x, C, y)
        else:
            fastce_active_ops.row_softmax_f64(x, C, y)
        return
    cdef floating m
    cdef double s = row_stats(x, C, xc, &m)
    if op == OP_LOGSUMEXP:
        if isinf(m):
            y[0] = <floating>logsumexp_unshifted(x, xc, C)
        else:
            y[0] = <floating>(<double>m + log(s))
    elif op == OP_LOG_SOFTMAX:
        row_shift(x, xc, C, m, <floating>log(s), y, yc)
    else:
        row_scaled_exp(x, xc, C, m, <floating>(1.0 / s), 0, y, yc)


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
            if isinf(m[k]):
                y[k * yi] = <floating>logsumexp_unshifted(x + k * xi, xc, C)
            else:
                y[k * yi] = <floating>(<double>m[k] + log_s[k])
        return
    for k in range(n):
        zero[k] = 0
        per_sample[k] = <floating>(log_s[k] if op == OP_LOG_SOFTMAX else 1.0 / s[k])
    for c in range(C):
        if op == OP_LOG_SOFTMAX:
            tile_shift(x + c * xc, xi, n, m, per_sample, y + c * yc, yi)
        else:
            tile_scaled_exp(x + c * xc, xi, n, m, per_sample, 0, zero, y + c * yc, yi)


cdef void softmax_small_c_rows(const floating* x, Layout* L, int op, floating* y,
                               Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Rows ``first <= j < last`` (``inner == 1``) through the tile kernel."""
    cdef floating xbuf[TILE * SMALL_C]
    cdef floating ybuf[TILE * SMALL_C]
    cdef Py_ssize_t j = first, n
    while j < last:
        n = last - j
        if n > TILE:
            n = TILE
        gather_rows(x + j * L.xo, L.xo, L.C, n, xbuf)
        if op == OP_LOGSUMEXP:
            softmax_tile(xbuf, TILE, 1, L.C, n, op, y + j * L.lo, 0, L.lo)
        else:
            softmax_tile(xbuf, TILE, 1, L.C, n, op, ybuf, TILE, 1)
            scatter_rows(ybuf, L.C, n, y + j * L.yo, L.yo, L.yc)
        j += n


cdef void softmax_block(const floating* x, Layout* L, int op, floating* y,
                        Py_ssize_t unit, bint tiled) noexcept nogil:
    cdef Py_ssize_t per, first, last, o, i, j, n, tiles
    if tiled:
        tiles = (L.inner + TILE - 1) // TILE
        o = unit // tiles
        i = (unit % tiles) * TILE
        n = L.inner - i
        if n > TILE:
            n = TILE
        if op == OP_LOGSUMEXP:
            softmax_tile(x + o * L.xo + i * L.xi, L.xc, L.xi, L.C, n, op,
                         y + o * L.lo + i * L.li, 0, L.li)
        else:
            softmax_tile(x + o * L.xo + i * L.xi, L.xc, L.xi, L.C, n, op,
                         y + o * L.yo + i * L.yi, L.yc, L.yi)
        return
    per = rows_per_block(L.C)
    first = unit * per
    last = first + per
    if last > L.outer * L.inner:
        last = L.outer * L.inner
    if use_small_c_tiles(L):
        softmax_small_c_rows(x, L, op, y, first, last)
        return
    for j in range(first, last):
        o = j // L.inner
        i = j - o * L.inner
        if op == OP_LOGSUMEXP:
            softmax_row(x + o * L.xo + i * L.xi, L.xc, L.C, op, y + o * L.lo + i * L.li, 0)
        else:
            softmax_row(x + o * L.xo + i * L.xi, L.xc, L.C, op, y + o * L.yo + i * L.yi, L.yc)


def softmax_family(const floating[:, :, :] x, int op, floating[:, :] reduced_out,
                   floating[:, :, :] out, int num_threads=0):
    """``op`` (LOG_SOFTMAX, SOFTMAX or LOGSUMEXP) over the class axis of an
    ``(outer, C, inner)`` view.  log_softmax and softmax write ``out`` (the
    shape of ``x``; it may be ``x`` itself); logsumexp writes ``reduced_out``
    of shape ``(outer, inner)``.  The caller guarantees ``C > 0`` and at least
    one sample."""
    cdef Layout L
    cdef Py_ssize_t isz = sizeof(floating)
    cdef floating* y
    cdef bint tiled
    cdef Py_ssize_t n_units, u
    cdef int nthreads
    layout_from(&L, [x.shape[0], x.shape[1], x.shape[2]],
                [x.strides[0] // isz, x.strides[1] // isz, x.strides[2] // isz])
    L.threads = num_threads
    if op == OP_LOGSUMEXP:
        y = &reduced_out[0, 0]
        L.lo = reduced_out.strides[0] // isz
        L.li = reduced_out.strides[1] // isz
    else:
        y = &out[0, 0, 0]
        L.yo = out.strides[0] // isz
        L.yc = out.strides[1] // isz
        L.yi = out.strides[2] // isz
    tiled = use_tile_kernel(&L)
    n_units = unit_count(&L, tiled)
    nthreads = thread_count(n_units, L.outer * L.C * L.inner, L.threads)
    with nogil:
        if nthreads == 1:
            for u in range(n_units):
                softmax_block(&x[0, 0, 0], &L, op, y, u, tiled)
        else:
            for u in prange(n_units, schedule="dynamic", num_threads=nthreads,
                            chunksize=units_per_grab(n_units, L.outer * L.C * L.inner)):
                softmax_block(&x[0, 0, 0], &L, op, y, u, tiled)


# --------------------------------------------------------------------------
# nll_loss and target checks
# --------------------------------------------------------------------------

cdef double nll_block(const floating* lp, const index_t* t, Layout* L, const CEOptions* opt,
                      floating* loss_out, Py_ssize_t unit) noexcept nogil:
    cdef Py_ssize_t per = 16384
    cdef Py_ssize_t first = unit * per
    cdef Py_ssize_t last = first + per
    cdef Py_ssize_t j, o, i
    cdef int64_t target
    cdef double w, loss, total = 0.0
    if last > L.outer * L.inner:
        last = L.outer * L.inner
    # (o, i) steps along with j: no division per sample
    o = first // L.inner
    i = first - o * L.inner
    for j in range(first, last):
        target = <int64_t>t[o * L.to + i * L.ti]
        loss = 0.0
        if not (opt.has_ignore and target == opt.ignore_index):
            w = 1.0 if opt.weight == NULL else opt.weight[target]
            if w != 0.0:
                loss = -w * <double>lp[o * L.xo + target * L.xc + i * L.xi]
        if loss_out != NULL:
            loss_out[o * L.lo + i * L.li] = <floating>loss
        total += loss
        i += 1
        if i == L.inner:
            i = 0
            o += 1
    return total


def nll_loss_kernel(const floating[:, :, :] log_probs,
                    const index_t[:, :] target,
                    const double[::1] weight,
                    int64_t ignore_index,
                    bint has_ignore,
                    floating[:, :] loss_out,
                    int num_threads=0):
    """The negative log-likelihood gathered at validated class indices;
    returns the float64 sum over samples and fills ``loss_out`` when given."""
    cdef Layout L
    cdef CEOptions opt
    cdef Py_ssize_t isz = sizeof(floating)
    cdef floating* lo = NULL
    cdef Py_ssize_t n_units, u, n = log_probs.shape[0] * log_probs.shape[2]
    cdef int nthreads
    cdef double total
    layout_from(&L, [log_probs.shape[0], log_probs.shape[1], log_probs.shape[2]],
                [log_probs.strides[0] // isz, log_probs.strides[1] // isz,
                 log_probs.strides[2] // isz])
    L.threads = num_threads
    L.to = target.strides[0] // sizeof(index_t)
    L.ti = target.strides[1] // sizeof(index_t)
    if loss_out is not None:
        lo = &loss_out[0, 0]
        L.lo = loss_out.strides[0] // isz
        L.li = loss_out.strides[1] // isz
    opt.weight = &weight[0] if weight.shape[0] > 0 else NULL
    opt.ignore_index = ignore_index
    opt.has_ignore = has_ignore
    n_units = (n + 16383) // 16384
    cdef double[::1] partials = np.empty(n_units, dtype=np.float64)
    nthreads = thread_count(n_units, n * 8, L.threads)
    with nogil:
        if nthreads == 1:
            for u in range(n_units):
                partials[u] = nll_block(&log_probs[0, 0, 0], &target[0, 0], &L, &opt, lo, u)
        else:
            for u in prange(n_units, schedule="dynamic", num_threads=nthreads):
                partials[u] = nll_block(&log_probs[0, 0, 0], &target[0, 0], &L, &opt, lo, u)
        total = ordered_sum(&partials[0], n_units)
    return total


cdef enum:
    # samples the nll_loss lane computes on the calling thread; more go to the kernel
    NLL_COMMON_MAX = 1 << 16
    # how many rows ahead the lane asks for the element it will read
    NLL_PREFETCH = 16

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define fastce_prefetch(p) __builtin_prefetch(p)
    #else
    #define fastce_prefetch(p) ((void)(p))
    #endif
    """
    void fastce_prefetch(const void* p) noexcept nogil


cdef double nll_common_sum(const floating* lp, const int64_t* t, Py_ssize_t n, Py_ssize_t C,
                           int64_t ignore_index, Py_ssize_t* counted) noexcept nogil:
    """nll_block's sum over the rows of a C-ordered (n, C) array without
    weights, block by block as nll_loss_kernel adds them, with the target
    check in the same pass: -1 in ``counted`` at a target outside [0, C)."""
    cdef Py_ssize_t j, k = 0
    cdef int64_t v
    cdef double block, total = 0.0
    cdef Py_ssize_t start = 0, end
    while start < n:
        end = start + 16384 if n - start > 16384 else n
        block = 0.0
        for j in range(start, end):
            if j + NLL_PREFETCH < n:
                # the rows are far apart: ask for a later row's element early
                v = t[j + NLL_PREFETCH]
                if 0 <= v < C:
                    fastce_prefetch(lp + (j + NLL_PREFETCH) * C + v)
            v = t[j]
            if v == ignore_index:
                block += 0.0
                continue
            if v < 0 or v >= C:
                counted[0] = -1
                return 0.0
            block += -<double>lp[j * C + v]
            k += 1
        total += block
        start = end
    counted[0] = k
    return total


def nll_loss_common(object log_probs, object target, bint mean, int64_t ignore_index):
    """``nll_loss(log_probs, target, ignore_index=...)`` with ``reduction="mean"``
    (or ``"sum"``) and no weights, as a NumPy scalar, for the common call's
    arrays (see :func:`cross_entropy_common`) of at most NLL_COMMON_MAX rows
    whose targets are valid; None otherwise, and the caller takes the
    general path (which also reports bad targets)."""
    if not common_pair(log_probs, target):
        return None
    cdef cnp.ndarray x = <cnp.ndarray>log_probs
    cdef cnp.ndarray t = <cnp.ndarray>target
    cdef Py_ssize_t n = cnp.PyArray_DIM(x, 0), n_classes = cnp.PyArray_DIM(x, 1)
    if n > NLL_COMMON_MAX:
        return None
    cdef const int64_t* tp = <const int64_t*>cnp.PyArray_DATA(t)
    cdef Py_ssize_t counted
    cdef double total
    cdef bint single = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT
    with nogil:
        if single:
            total = nll_common_sum(<const float*>cnp.PyArray_DATA(x), tp, n, n_classes,
                                   ignore_index, &counted)
        else:
            total = nll_common_sum(<const double*>cnp.PyArray_DATA(x), tp, n, n_classes,
                                   ignore_index, &counted)
    if counted < 0:
        return None
    if mean:
        total = total / counted if counted else NAN
    return _float32(<float>total) if single else _float64(total)


cdef Py_ssize_t scan_targets(const index_t* t, Py_ssize_t to, Py_ssize_t ti, Py_ssize_t outer,
                             Py_ssize_t inner, Py_ssize_t C, int64_t ignore_index,
                             bint has_ignore, const double* weight, int64_t* value,
                             double* weight_sum) noexcept nogil:
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
            v = <int64_t>t[o * to + i * ti]
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


def check_targets(const index_t[:, :] target, Py_ssize_t C, int64_t ignore_index,
                  bint has_ignore, const double[::1] weight):
    """One pass over class-index targets.

    Returns ``(bad, value, weight_sum)``: ``bad`` is the flat C-order position
    of the first target outside ``[0, C)`` that is not ``ignore_index`` (-1
    when there is none) and ``value`` its value; ``weight_sum`` is the sum of
    the class weights (1 without weights) of the targets that are not ignored,
    the denominator of the ``"mean"`` reduction.
    """
    cdef Py_ssize_t bad
    cdef int64_t value
    cdef double total
    with nogil:
        bad = scan_targets(&target[0, 0], target.strides[0] // sizeof(index_t),
                           target.strides[1] // sizeof(index_t), target.shape[0],
                           target.shape[1], C, ignore_index, has_ignore,
                           &weight[0] if weight.shape[0] > 0 else NULL, &value, &total)
    return bad, value, total


# --------------------------------------------------------------------------
# Binary cross-entropy, element by element
# --------------------------------------------------------------------------

cdef struct BinaryCall:
    Py_ssize_t n            # elements
    Py_ssize_t row_len      # the last axis, along which per-column factors repeat
    bint logits             # with logits; probabilities otherwise
    bint w_per_col          # w holds one weight per column (else one per element)
    bint pw_per_col
    double g                # the gradient's scale


cdef inline double binary_piece(const floating* x, const floating* y, const floating* w,
                                const floating* pw, Py_ssize_t n, floating g, const floating* go,
                                floating* loss_out, floating* grad, bint logits) noexcept nogil:
    if floating is float:
        if logits:
            return fastce_active_ops.bce_logits_f32(x, y, w, pw, n, g, go, loss_out, grad)
        return fastce_active_ops.bce_probs_f32(x, y, w, n, g, go, loss_out, grad)
    else:
        if logits:
            return fastce_active_ops.bce_logits_f64(x, y, w, pw, n, g, go, loss_out, grad)
        return fastce_active_ops.bce_probs_f64(x, y, w, n, g, go, loss_out, grad)


cdef double binary_block(const floating* x, const floating* y, const floating* w,
                         const floating* pw, const floating* go, floating* loss_out,
                         floating* grad, const BinaryCall* call, Py_ssize_t unit) noexcept nogil:
    """Elements ``[unit * BLOCK_LOGITS, ...)``, cut where a row ends when a
    factor repeats per column, so that each piece reads its factors in step."""
    cdef Py_ssize_t i = unit * BLOCK_LOGITS
    cdef Py_ssize_t end = i + BLOCK_LOGITS
    cdef Py_ssize_t c0, length
    cdef double total = 0.0
    if end > call.n:
        end = call.n
    while i < end:
        length = end - i
        c0 = i % call.row_len
        if (call.w_per_col or call.pw_per_col) and call.row_len - c0 < length:
            length = call.row_len - c0
        total += binary_piece(
            x + i, y + i,
            NULL if w == NULL else (w + (c0 if call.w_per_col else i)),
            NULL if pw == NULL else (pw + (c0 if call.pw_per_col else i)),
            length, <floating>call.g, NULL if go == NULL else go + i,
            NULL if loss_out == NULL else loss_out + i, NULL if grad == NULL else grad + i,
            call.logits)
        i += length
    return total


cdef inline const floating* optional_data(const floating[::1] a) noexcept:
    return &a[0] if a is not None else NULL


def binary_cross_entropy_kernel(const floating[::1] x, const floating[::1] y,
                                const floating[::1] w, const floating[::1] pw,
                                Py_ssize_t row_len, bint logits, double g,
                                const floating[::1] grad_output, floating[::1] loss_out,
                                floating[::1] grad, int num_threads=0):
    """Binary cross-entropy of ``n >= 1`` contiguous elements: with logits
    ``x`` or probabilities (``logits`` False); returns the float64 sum of the
    losses.  ``y`` holds the targets; ``w`` and ``pw`` (None: 1 each) hold one
    factor per element, or per column of rows of ``row_len`` elements when
    they are ``row_len`` long; ``pw`` only with logits.  ``loss_out`` (or
    None) receives each loss, ``grad`` (or None; it may be ``x``) ``g`` times
    ``grad_output`` (None: 1 each) times the derivative.  The caller has
    validated everything, probabilities and targets included."""
    cdef BinaryCall call
    call.n = x.shape[0]
    call.row_len = row_len
    call.logits = logits
    call.w_per_col = w is not None and w.shape[0] != call.n
    call.pw_per_col = pw is not None and pw.shape[0] != call.n
    call.g = g
    cdef const floating* wp = optional_data(w)
    cdef const floating* pwp = optional_data(pw)
    cdef const floating* gop = optional_data(grad_output)
    cdef floating* lp = &loss_out[0] if loss_out is not None else NULL
    cdef floating* yp = &grad[0] if grad is not None else NULL
    cdef Py_ssize_t n_units = (call.n + BLOCK_LOGITS - 1) // BLOCK_LOGITS, u
    cdef double few_partials[FEW_PARTIALS]
    cdef double* partials = block_totals(n_units, few_partials)
    cdef double total
    cdef int nthreads = thread_count(n_units, call.n, num_threads)
    with nogil:
        if nthreads == 1:
            for u in range(n_units):
                partials[u] = binary_block(&x[0], &y[0], wp, pwp, gop, lp, yp, &call, u)
        else:
            for u in prange(n_units, schedule="dynamic", num_threads=nthreads):
                partials[u] = binary_block(&x[0], &y[0], wp, pwp, gop, lp, yp, &call, u)
        total = ordered_sum(partials, n_units)
    if partials != few_partials:
        free(partials)
    return total


def first_outside_unit(const floating[::1] x, int num_threads=0):
    """The flat index of the first value of ``x`` outside [0, 1] (NaN
    included), or -1: the kernels' check of probabilities and targets."""
    cdef Py_ssize_t n = x.shape[0], u, found = -1
    cdef Py_ssize_t n_units = (n + BLOCK_LOGITS - 1) // BLOCK_LOGITS
    cdef Py_ssize_t few[FEW_PARTIALS]
    cdef Py_ssize_t* per_unit = few
    cdef int nthreads = thread_count(n_units, n, num_threads)
    if n == 0:
        return -1
    if n_units > FEW_PARTIALS:
        per_unit = <Py_ssize_t*>malloc(n_units * sizeof(Py_ssize_t))
        if per_unit == NULL:
            raise MemoryError(f"cannot allocate {n_units} block results")
    with nogil:
        if nthreads == 1:
            for u in range(n_units):
                per_unit[u] = first_outside_block(&x[0], n, u)
        else:
            for u in prange(n_units, schedule="dynamic", num_threads=nthreads):
                per_unit[u] = first_outside_block(&x[0], n, u)
        for u in range(n_units):
            if per_unit[u] >= 0:
                found = u * BLOCK_LOGITS + per_unit[u]
                break
    if per_unit != few:
        free(per_unit)
    return found


cdef inline Py_ssize_t first_outside_block(const floating* x, Py_ssize_t n,
                                           Py_ssize_t unit) noexcept nogil:
    cdef Py_ssize_t start = unit * BLOCK_LOGITS
    cdef Py_ssize_t length = BLOCK_LOGITS if start + BLOCK_LOGITS <= n else n - start
    if floating is float:
        return fastce_active_ops.first_outside_unit_f32(x + start, length)
    else:
        return fastce_active_ops.first_outside_unit_f64(x + start, length)


# --------------------------------------------------------------------------
# float16 and bfloat16, read as float32
# --------------------------------------------------------------------------

def half_to_float32(const uint16_t[::1] src, float[::1] dst, bint bfloat16, int num_threads=0):
    """``src``'s float16 (or bfloat16) values, as raw bits, to float32 in
    ``dst`` (as long), exactly, with the vector path's conversion
    instructions and the kernels' threads."""
    cdef Py_ssize_t n = src.shape[0], u
    cdef Py_ssize_t n_units = (n + BLOCK_LOGITS - 1) // BLOCK_LOGITS
    cdef int nthreads = thread_count(n_units, n, num_threads)
    if n == 0:
        return
    with nogil:
        if nthreads == 1:
            fastce_active_ops.half_to_f32(&src[0], n, &dst[0], bfloat16)
        else:
            for u in prange(n_units, schedule="dynamic", num_threads=nthreads):
                fastce_active_ops.half_to_f32(
                    &src[u * BLOCK_LOGITS],
                    BLOCK_LOGITS if (u + 1) * BLOCK_LOGITS <= n else n - u * BLOCK_LOGITS,
                    &dst[u * BLOCK_LOGITS], bfloat16)


# --------------------------------------------------------------------------
# The roof: what a pass that only sums exponentials costs
# --------------------------------------------------------------------------

def exp_sum_roof(const floating[:, ::1] x, int num_threads=0):
    """Sum of exp(x) over every element of a C-contiguous 2-d array, with the
    same vector code, blocks and threads as the kernels: the speed a forward
    pass is measured against.  Values must stay below 88 (float32)."""
    cdef Py_ssize_t rows = x.shape[0], C = x.shape[1], u
    cdef Py_ssize_t per = rows_per_block(C)
    cdef Py_ssize_t n_units = (rows + per - 1) // per
    cdef double[::1] partials = np.zeros(max(n_units, 1), dtype=np.float64)
    cdef int nthreads = thread_count(n_units, rows * C, num_threads)
    if rows == 0 or C == 0:
        return 0.0
    with nogil:
        if nthreads == 1:
            for u in range(n_units):
                partials[u] = roof_block(&x[0, 0], C, rows, per, u)
        else:
            for u in prange(n_units, schedule="dynamic", num_threads=nthreads):
                partials[u] = roof_block(&x[0, 0], C, rows, per, u)
    return ordered_sum(&partials[0], n_units)


cdef double roof_block(const floating* x, Py_ssize_t C, Py_ssize_t rows, Py_ssize_t per,
                       Py_ssize_t unit) noexcept nogil:
    cdef Py_ssize_t j, last = (unit + 1) * per
    cdef double total = 0.0
    if last > rows:
        last = rows
    for j in range(unit * per, last):
        if floating is float:
            total += fastce_active_ops.sum_exp_f32(x + j * C, C)
        else:
            total += fastce_active_ops.sum_exp_f64(x + j * C, C)
    return total
