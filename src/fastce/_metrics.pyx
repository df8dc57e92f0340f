# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, autotestdict=False
"""Every evaluation metric of class-index targets from one pass over the logits.

The input is the ``(outer, C, inner)`` view of the core kernels; a *sample*
is one ``(o, i)`` pair and its row is ``x[o, :, i]``.  For each sample one
pass over its row computes

* the row maximum ``m``, its first index (the prediction, as
  ``numpy.argmax``) and ``s = sum_c exp(x_c - m)``, computed exactly as the
  core kernels compute them, so the loss is :func:`fastce.cross_entropy`'s to
  the last bit;
* ``sum_c exp(x_c - m) * (x_c - m)``, which gives the predictive entropy
  ``H = log(s) - that / s``;
* the target's rank: the number of classes with a strictly larger logit plus
  those with an equal logit at a lower index (top-k correct iff rank < k);
* the confidence ``max_c p_c = 1 / s``.

Rows are read chunk by chunk (``FASTCE_CHUNK`` classes, a few KiB), and the
maximum and the sums of a chunk are computed while it is in L1.  Label
smoothing needs one more read of the row, as in the core kernels.

Totals are accumulated per fixed work unit as compensated (double-double)
float64 sums and integer counts, and the units are combined in order, so the
result is identical for any thread count and, to float64 rounding, for any
way of splitting the samples into calls.  The Python layer validates
everything; these functions cannot fail.
"""

cimport cython
from cython.parallel cimport prange
from libc.math cimport log, INFINITY, NAN
from libc.stdint cimport int64_t, int32_t

import numpy as np

cdef extern from *:
    """
    #include "_simd.h"

    #ifndef FASTCE_COMPILE_ARGS
    #define FASTCE_COMPILE_ARGS ""
    #endif

    /* GNU OpenMP's thread team does not survive fork(): a child of a process
     * that has run a team would hang in its next parallel region, so such a
     * child runs every kernel on its own thread. */
    static int fastce_metrics_team_started = 0;
    static int fastce_metrics_forked_child = 0;
    #if defined(_OPENMP) && !defined(_WIN32)
    #include <pthread.h>
    static void fastce_metrics_after_fork_in_child(void) {
        if (fastce_metrics_team_started) fastce_metrics_forked_child = 1;
    }
    static void fastce_metrics_register_fork_handler(void) {
        pthread_atfork(NULL, NULL, fastce_metrics_after_fork_in_child);
    }
    #else
    static void fastce_metrics_register_fork_handler(void) {}
    #endif
    #ifdef _OPENMP
    #define FASTCE_METRICS_OPENMP 1
    #else
    #define FASTCE_METRICS_OPENMP 0
    #endif

    /* ---- one contiguous row: max, first argmax, sum of exp, entropy term, rank ----
     * t < 0: no target (the rank is not counted).  Returns s (NaN for a row
     * with a NaN logit or nothing above -inf, as the core kernels). */

    #define FASTCE_SCAN_ROW_BASE(T, SFX)                                                  \
    static double fastce_scan_row_##SFX##_base(const T *x, ptrdiff_t n, ptrdiff_t t,     \
                                              T xt, T *m_out, double *e_out,             \
                                              ptrdiff_t *arg_out, ptrdiff_t *rank_out) { \
        /* m and s exactly as the core kernels compute them */                            \
        double s = fastce_ops.row_max_sumexp_##SFX(x, n, m_out);                          \
        T m = *m_out;                                                                     \
        double e = 0.0;                                                                   \
        for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {                     \
            ptrdiff_t end = n - start < FASTCE_CHUNK ? n : start + FASTCE_CHUNK;          \
            T part = 0;                                                                   \
            FASTCE_SIMD_SUM(part)                                                         \
            for (ptrdiff_t c = start; c < end; c++) {                                     \
                T d = x[c] - m;                                                           \
                T v = fastce_exp_neg_##SFX(d);                                            \
                part += v > 0 ? v * d : 0;                                                \
            }                                                                             \
            e += (double)part;                                                            \
        }                                                                                 \
        ptrdiff_t arg = 0;                                                                \
        for (ptrdiff_t c = 0; c < n; c++)                                                 \
            if (x[c] == m) { arg = c; break; }                                            \
        ptrdiff_t rank = 0;                                                               \
        if (t >= 0) {                                                                     \
            FASTCE_SIMD_SUM(rank)                                                         \
            for (ptrdiff_t c = 0; c < t; c++) rank += x[c] >= xt;                         \
            FASTCE_SIMD_SUM(rank)                                                         \
            for (ptrdiff_t c = t + 1; c < n; c++) rank += x[c] > xt;                      \
        }                                                                                 \
        *e_out = e;                                                                       \
        *arg_out = arg;                                                                   \
        *rank_out = rank;                                                                 \
        return s;                                                                         \
    }                                                                                     \
                                                                                          \
    /* one class row of a tile of n contiguous samples: running maximum, its first        \
     * class, and the rank counts against the targets' logits xt (t[k] < 0: none) */      \
    static void fastce_tile_pass1_##SFX(const T *x, ptrdiff_t n, int64_t c, const T *xt,  \
                                        const int64_t *t, T *m, int64_t *arg,             \
                                        int64_t *rank) {                                  \
        for (ptrdiff_t k = 0; k < n; k++) {                                               \
            T v = x[k];                                                                   \
            int up = v > m[k];                                                            \
            m[k] = up ? v : m[k];                                                         \
            arg[k] = up ? c : arg[k];                                                     \
            rank[k] += (v > xt[k]) | ((v == xt[k]) & (c < t[k]));                         \
        }                                                                                 \
    }                                                                                     \
                                                                                          \
    /* s[k] += exp(x[k] - m[k]) as the core tile kernel adds it; e[k] the entropy term */ \
    static void fastce_tile_pass2_##SFX##_base(const T *x, ptrdiff_t n, const T *m,       \
                                               T *s, T *e) {                              \
        FASTCE_SIMD                                                                       \
        for (ptrdiff_t k = 0; k < n; k++) {                                               \
            T d = x[k] - m[k];                                                            \
            T v = fastce_exp_neg_##SFX(d);                                                \
            s[k] += v;                                                                    \
            e[k] += v > 0 ? v * d : 0;                                                    \
        }                                                                                 \
    }

    FASTCE_SCAN_ROW_BASE(float, f32)
    FASTCE_SCAN_ROW_BASE(double, f64)

    #ifdef FASTCE_X86_DISPATCH
    /* The AVX2 path folds everything into the core kernel's own loop: the
     * maximum, the exponentials and their sums are the same operations in the
     * same order as row_max_sumexp_avx2 (so s is identical), with the argmax,
     * the rank counts and the entropy term computed alongside. */
    #define FASTCE_SCAN_ROW_AVX2(T, SFX, V, VI, L, LO, VLOAD, VSTORE, VSET1, VADD, VSUB, VMUL,  \
                                 VFMA, VMAX, VCMP, VAND, VISUB, VEXP, VHMAX, VHSUM, VIHSUM)     \
    FASTCE_AVX2 static double fastce_scan_row_##SFX##_avx2(const T *x, ptrdiff_t n,             \
                                                          ptrdiff_t t, T xt, T *m_out,          \
                                                          double *e_out, ptrdiff_t *arg_out,    \
                                                          ptrdiff_t *rank_out) {                \
        T m = -INFINITY;                                                                        \
        double s = 0.0, e = 0.0;                                                                \
        int saw_nan = 0;                                                                        \
        ptrdiff_t arg = 0, rank = 0;                                                            \
        const V vt = VSET1(xt), zero = VSET1(0), lo = VSET1(LO);                                \
        /* per-lane counts of the classes ranked above the target: a true compare is -1 */      \
        VI above = _mm256_setzero_si256();                                                      \
        for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {                           \
            ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;                \
            const T *xs = x + start;                                                            \
            V acc = VSET1(-INFINITY);                                                           \
            T sm = -INFINITY;                                                                   \
            ptrdiff_t c = 0;                                                                    \
            if (t >= 0) {                                                                       \
                /* before the target an equal logit ranks above it, after it only a larger */  \
                ptrdiff_t before = t - start < 0 ? 0 : (t - start > len ? len : t - start);     \
                for (; c + L <= before; c += L) {                                               \
                    V v = VLOAD(xs + c);                                                        \
                    acc = VMAX(v, acc);                                                         \
                    above = VISUB(above, VCAST(VCMP(v, vt, _CMP_GE_OQ)));                       \
                }                                                                               \
                ptrdiff_t stop = c + L < len ? c + L : len;                                     \
                for (; c < stop; c++) {                                                         \
                    sm = xs[c] > sm ? xs[c] : sm;                                               \
                    rank += (xs[c] > xt) || (xs[c] == xt && start + c < t);                     \
                }                                                                               \
                for (; c + L <= len; c += L) {                                                  \
                    V v = VLOAD(xs + c);                                                        \
                    acc = VMAX(v, acc);                                                         \
                    above = VISUB(above, VCAST(VCMP(v, vt, _CMP_GT_OQ)));                       \
                }                                                                               \
            } else {                                                                            \
                for (; c + L <= len; c += L) acc = VMAX(VLOAD(xs + c), acc);                    \
            }                                                                                   \
            T cm = VHMAX(acc);                                                                  \
            cm = sm > cm ? sm : cm;                                                             \
            for (; c < len; c++) {                                                              \
                cm = xs[c] > cm ? xs[c] : cm;                                                   \
                if (t >= 0) rank += (xs[c] > xt) || (xs[c] == xt && start + c < t);             \
            }                                                                                   \
            if (cm == -INFINITY) {                                                              \
                for (ptrdiff_t k = 0; k < len; k++)                                             \
                    if (xs[k] != xs[k]) saw_nan = 1;                                            \
                continue;                                                                       \
            }                                                                                   \
            if (cm > m) {                                                                       \
                if (s != 0.0) {                                                                 \
                    double r = exp((double)m - (double)cm);                                     \
                    e = r * (e + ((double)m - (double)cm) * s);                                 \
                    s *= r;                                                                     \
                }                                                                               \
                m = cm;                                                                         \
                ptrdiff_t k = 0;                                                                \
                while (!(xs[k] == cm)) k++;                                                     \
                arg = start + k;                                                                \
            }                                                                                   \
            /* the core kernel's sum of exp, operation for operation; beside it the entropy   \
             * term exp(d) * d, with d clamped where exp(d) is 0 so that -inf gives 0 */        \
            V vm = VSET1(m), acc0 = zero, acc1 = zero, en0 = zero, en1 = zero;                  \
            c = 0;                                                                              \
            for (; c + 2 * L <= len; c += 2 * L) {                                              \
                V d0 = VSUB(VLOAD(xs + c), vm);                                                 \
                V d1 = VSUB(VLOAD(xs + c + L), vm);                                             \
                V e0 = VEXP(d0);                                                                \
                V e1 = VEXP(d1);                                                                \
                acc0 = VADD(acc0, e0);                                                          \
                acc1 = VADD(acc1, e1);                                                          \
                en0 = VFMA(e0, VMAX(d0, lo), en0);                                              \
                en1 = VFMA(e1, VMAX(d1, lo), en1);                                              \
            }                                                                                   \
            for (; c + L <= len; c += L) {                                                      \
                V d0 = VSUB(VLOAD(xs + c), vm);                                                 \
                V e0 = VEXP(d0);                                                                \
                acc0 = VADD(acc0, e0);                                                          \
                en0 = VFMA(e0, VMAX(d0, lo), en0);                                              \
            }                                                                                   \
            double part = VHSUM(VADD(acc0, acc1));                                              \
            double epart = VHSUM(VADD(en0, en1));                                               \
            for (; c < len; c++) {                                                              \
                T d = xs[c] - m;                                                                \
                T v = fastce_exp_neg_##SFX(d);                                                  \
                part += v;                                                                      \
                epart += v > 0 ? (double)(v * d) : 0.0;                                         \
            }                                                                                   \
            s += part;                                                                          \
            e += epart;                                                                         \
        }                                                                                       \
        if (m == -INFINITY || saw_nan) s = NAN;                                                 \
        *m_out = m;                                                                             \
        *e_out = e;                                                                             \
        *arg_out = arg;                                                                         \
        *rank_out = rank + VIHSUM(above);                                                       \
        return s;                                                                               \
    }                                                                                           \
                                                                                                \
    FASTCE_AVX2 static void fastce_tile_pass2_##SFX##_avx2(const T *x, ptrdiff_t n,             \
                                                           const T *m, T *s, T *e) {            \
        const V lo = VSET1(LO);                                                                 \
        ptrdiff_t k = 0;                                                                        \
        for (; k + L <= n; k += L) {                                                            \
            V d = VSUB(VLOAD(x + k), VLOAD(m + k));                                             \
            V v = VEXP(d);                                                                      \
            VSTORE(s + k, VADD(VLOAD(s + k), v));                                               \
            VSTORE(e + k, VFMA(v, VMAX(d, lo), VLOAD(e + k)));                                  \
        }                                                                                       \
        for (; k < n; k++) {                                                                    \
            T d = x[k] - m[k];                                                                  \
            T v = fastce_exp_neg_##SFX(d);                                                      \
            s[k] += v;                                                                          \
            e[k] += v > 0 ? v * d : 0;                                                          \
        }                                                                                       \
    }

    FASTCE_AVX2 static inline ptrdiff_t fastce_hsum_epi32(__m256i v) {
        __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0x4E));
        a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0xB1));
        return (ptrdiff_t)(uint32_t)_mm_cvtsi128_si32(a);
    }
    FASTCE_AVX2 static inline ptrdiff_t fastce_hsum_epi64(__m256i v) {
        __m128i a = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        a = _mm_add_epi64(a, _mm_unpackhi_epi64(a, a));
        return (ptrdiff_t)_mm_cvtsi128_si64(a);
    }

    #define VCAST(v) _Generic((v), __m256: _mm256_castps_si256, __m256d: _mm256_castpd_si256)(v)
    FASTCE_SCAN_ROW_AVX2(float, f32, __m256, __m256i, 8, -87.0f, _mm256_loadu_ps,
                         _mm256_storeu_ps, _mm256_set1_ps, _mm256_add_ps, _mm256_sub_ps,
                         _mm256_mul_ps, _mm256_fmadd_ps, _mm256_max_ps, _mm256_cmp_ps,
                         _mm256_and_ps, _mm256_sub_epi32, fastce_exp_neg_ps, fastce_hmax_ps,
                         fastce_hsum_ps, fastce_hsum_epi32)
    FASTCE_SCAN_ROW_AVX2(double, f64, __m256d, __m256i, 4, -708.0, _mm256_loadu_pd,
                         _mm256_storeu_pd, _mm256_set1_pd, _mm256_add_pd, _mm256_sub_pd,
                         _mm256_mul_pd, _mm256_fmadd_pd, _mm256_max_pd, _mm256_cmp_pd,
                         _mm256_and_pd, _mm256_sub_epi64, fastce_exp_neg_pd, fastce_hmax_pd,
                         fastce_hsum_pd, fastce_hsum_epi64)
    #undef VCAST
    #endif

    /* ---- dispatch, following the core primitives' choice ---- */
    typedef struct {
        double (*scan_row_f32)(const float *, ptrdiff_t, ptrdiff_t, float, float *, double *,
                               ptrdiff_t *, ptrdiff_t *);
        double (*scan_row_f64)(const double *, ptrdiff_t, ptrdiff_t, double, double *, double *,
                               ptrdiff_t *, ptrdiff_t *);
        void (*tile_pass2_f32)(const float *, ptrdiff_t, const float *, float *, float *);
        void (*tile_pass2_f64)(const double *, ptrdiff_t, const double *, double *, double *);
    } fastce_metrics_ops_t;

    static fastce_metrics_ops_t fastce_metrics_ops;

    static const char *fastce_metrics_init(const char *force) {
        const char *isa = fastce_simd_init(force);
        fastce_metrics_ops.scan_row_f32 = fastce_scan_row_f32_base;
        fastce_metrics_ops.scan_row_f64 = fastce_scan_row_f64_base;
        fastce_metrics_ops.tile_pass2_f32 = fastce_tile_pass2_f32_base;
        fastce_metrics_ops.tile_pass2_f64 = fastce_tile_pass2_f64_base;
    #ifdef FASTCE_X86_DISPATCH
        if (strcmp(isa, "baseline") != 0) {
            fastce_metrics_ops.scan_row_f32 = fastce_scan_row_f32_avx2;
            fastce_metrics_ops.scan_row_f64 = fastce_scan_row_f64_avx2;
            fastce_metrics_ops.tile_pass2_f32 = fastce_tile_pass2_f32_avx2;
            fastce_metrics_ops.tile_pass2_f64 = fastce_tile_pass2_f64_avx2;
        }
    #endif
        return isa;
    }
    """
    const char* FASTCE_COMPILE_ARGS
    int FASTCE_METRICS_OPENMP
    int FASTCE_CHUNK
    int fastce_metrics_team_started
    int fastce_metrics_forked_child
    void fastce_metrics_register_fork_handler() noexcept

    ctypedef struct fastce_metrics_ops_t:
        double (*scan_row_f32)(const float*, Py_ssize_t, Py_ssize_t, float, float*, double*,
                               Py_ssize_t*, Py_ssize_t*) noexcept nogil
        double (*scan_row_f64)(const double*, Py_ssize_t, Py_ssize_t, double, double*, double*,
                               Py_ssize_t*, Py_ssize_t*) noexcept nogil
        void (*tile_pass2_f32)(const float*, Py_ssize_t, const float*, float*, float*) noexcept nogil
        void (*tile_pass2_f64)(const double*, Py_ssize_t, const double*, double*, double*) noexcept nogil
    fastce_metrics_ops_t fastce_metrics_ops
    const char* fastce_metrics_init(const char* force) noexcept

    void fastce_tile_pass1_f32(const float*, Py_ssize_t, int64_t, const float*, const int64_t*,
                               float*, int64_t*, int64_t*) noexcept nogil
    void fastce_tile_pass1_f64(const double*, Py_ssize_t, int64_t, const double*, const int64_t*,
                               double*, int64_t*, int64_t*) noexcept nogil

    ctypedef struct fastce_ops_t:
        double (*row_sum_shifted_f32)(const float*, Py_ssize_t, float) noexcept nogil
        double (*row_sum_shifted_f64)(const double*, Py_ssize_t, double) noexcept nogil
        void (*tile_max_f32)(const float*, Py_ssize_t, float*) noexcept nogil
        void (*tile_max_f64)(const double*, Py_ssize_t, double*) noexcept nogil
        const char* isa
    fastce_ops_t fastce_ops
    float fastce_exp_neg_f32(float) noexcept nogil
    double fastce_exp_neg_f64(double) noexcept nogil


ctypedef fused floating:
    float
    double

ctypedef fused index_t:
    int32_t
    int64_t

# Samples per tile when the samples are the contiguous axis (the core
# kernels' TILE).
cdef enum:
    TILE = 64

# Below this many logits a call runs on the calling thread only.
cdef enum:
    SERIAL_BELOW = 1 << 15

# Work units per call at most, and the most memory their partials (kept
# until the end) may take: many bins or a long rank histogram mean fewer,
# larger units.
cdef enum:
    MAX_UNITS = 1024
    PARTIALS_BYTES = 1 << 25

# Layout of the float64 partials of one unit: double-double pairs (hi, lo).
cdef enum:
    F_LOSS = 0
    F_WEIGHT = 2
    F_CONF = 4
    F_ENTROPY = 6
    F_BINS = 8          # then one pair per bin: the bin's confidence sum

TILE_SIZE = TILE
N_FLOAT_TOTALS = 4      # loss, weight, confidence, entropy; then one per bin

fastce_metrics_register_fork_handler()


def openmp_enabled():
    """Whether the extension was compiled with OpenMP."""
    return bool(FASTCE_METRICS_OPENMP)


def compile_args():
    """The compiler flags the extension was built with."""
    return FASTCE_COMPILE_ARGS.decode()


def forked_child_serial():
    """Whether this process is a fork of one that ran a thread team from this
    module, and so runs its kernels serially."""
    return bool(fastce_metrics_forked_child)


def team_started():
    """Whether this module has started an OpenMP thread team."""
    return bool(fastce_metrics_team_started)


def simd_init(str force=""):
    """Choose the vector code path: the best the CPU has, or ``"baseline"``.
    Returns the name of the path chosen."""
    return fastce_metrics_init(force.encode()).decode()


def simd_isa():
    """The vector code path in use: ``"avx2+fma"`` or ``"baseline"``."""
    return fastce_ops.isa.decode()


simd_init()


# --------------------------------------------------------------------------
# Scalar helpers
# --------------------------------------------------------------------------

cdef inline floating exp_neg(floating v) noexcept nogil:
    if floating is float:
        return fastce_exp_neg_f32(v)
    else:
        return fastce_exp_neg_f64(v)


cdef inline void dd_add(double* acc, double b) noexcept nogil:
    """acc[0] + acc[1] += b, keeping the rounding error of the high part
    (Knuth's two-sum; the low parts are added plainly)."""
    cdef double a = acc[0]
    cdef double s = a + b
    cdef double bp = s - a
    acc[1] += (a - (s - bp)) + (b - bp)
    acc[0] = s


cdef inline Py_ssize_t unit_rows(Py_ssize_t n_rows, Py_ssize_t C,
                                 Py_ssize_t max_units) noexcept nogil:
    # the core kernels' block (16384 logits), grown so that there are at
    # most max_units units
    cdef Py_ssize_t r = 16384 // (C if C > 0 else 1)
    if r < 1:
        r = 1
    if (n_rows + r - 1) // r > max_units:
        r = (n_rows + max_units - 1) // max_units
    return r


cdef inline int thread_count(Py_ssize_t work_items, Py_ssize_t n_elements,
                             int requested) noexcept nogil:
    global fastce_metrics_team_started
    cdef int n = requested if requested > 0 else 1
    if n_elements < SERIAL_BELOW or work_items < 2 or fastce_metrics_forked_child:
        return 1
    if n > work_items:
        n = <int>work_items
    if n > 1:
        fastce_metrics_team_started = 1
    return n


# --------------------------------------------------------------------------
# One row, any stride
# --------------------------------------------------------------------------

cdef inline double scan_row(const floating* x, Py_ssize_t n, Py_ssize_t stride,
                            Py_ssize_t t, floating xt, floating* m_out, double* e_out,
                            Py_ssize_t* arg_out, Py_ssize_t* rank_out) noexcept nogil:
    """Statistics of one row (see the module docstring); ``t < 0`` skips the
    rank.  A strided row is walked as the core kernels walk it."""
    cdef floating v, d, ev, mx = -INFINITY
    cdef double s = 0.0, e = 0.0
    cdef Py_ssize_t c, arg = 0, rank = 0
    if stride == 1:
        if floating is float:
            return fastce_metrics_ops.scan_row_f32(x, n, t, xt, m_out, e_out, arg_out, rank_out)
        else:
            return fastce_metrics_ops.scan_row_f64(x, n, t, xt, m_out, e_out, arg_out, rank_out)
    for c in range(n):
        v = x[c * stride]
        if v > mx:
            mx = v
            arg = c
    for c in range(n):
        d = x[c * stride] - mx
        ev = exp_neg(d)
        s += ev
        if ev > 0:
            e += ev * d
    if t >= 0:
        for c in range(n):
            v = x[c * stride]
            if v > xt or (v == xt and c < t):
                rank += 1
    m_out[0] = mx
    e_out[0] = e
    arg_out[0] = arg
    rank_out[0] = rank
    return s


cdef inline Py_ssize_t first_nan(const floating* x, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        if x[c * stride] != x[c * stride]:
            return c
    return -1


cdef inline double weighted_shifted_sum(const floating* x, Py_ssize_t n, Py_ssize_t stride,
                                        floating m, const double* weight) noexcept nogil:
    """sum_c w[c] * (x[c] - m), a zero weight contributing nothing, as the
    core kernels compute it."""
    cdef double acc = 0.0
    cdef double wc
    cdef Py_ssize_t c
    if weight == NULL and stride == 1:
        if floating is float:
            return fastce_ops.row_sum_shifted_f32(x, n, m)
        else:
            return fastce_ops.row_sum_shifted_f64(x, n, m)
    for c in range(n):
        wc = 1.0 if weight == NULL else weight[c]
        if wc != 0.0:
            acc += wc * (<double>x[c * stride] - <double>m)
    return acc


# --------------------------------------------------------------------------
# Per-sample bookkeeping
# --------------------------------------------------------------------------

cdef struct Options:
    const double* weight    # NULL without class weights
    double weight_sum       # sum of the weights (C without weights)
    double smoothing
    int64_t ignore_index
    bint has_ignore
    Py_ssize_t bins
    Py_ssize_t ranks        # length of the rank histogram
    Py_ssize_t nf           # float64 partials per unit
    Py_ssize_t ni           # int64 partials per unit


cdef struct Outputs:
    # per-sample results, C-contiguous (outer, inner); NULL when not wanted
    double* loss
    int64_t* pred
    int64_t* rank
    double* conf
    double* entropy


cdef inline void record(double* fp, int64_t* ip, const Options* opt, double loss, double w,
                        double s, double e, Py_ssize_t rank, bint valid) noexcept nogil:
    """Adds one sample that is not ignored to a unit's partials."""
    cdef double conf = 1.0 / s
    cdef double ent = log(s) - e / s
    cdef Py_ssize_t b
    dd_add(fp + F_LOSS, loss)
    dd_add(fp + F_WEIGHT, w)
    dd_add(fp + F_CONF, conf)
    dd_add(fp + F_ENTROPY, ent)
    ip[0] += 1
    if conf == conf:
        b = <Py_ssize_t>(conf * opt.bins)
        if b >= opt.bins:
            b = opt.bins - 1
        if b < 0:
            b = 0
    else:
        b = 0       # a NaN confidence makes its bin, and the ECE, NaN
    dd_add(fp + F_BINS + 2 * b, conf)
    ip[1 + b] += 1
    if valid:
        if rank == 0:
            ip[1 + opt.bins + b] += 1
        if rank < opt.ranks:
            ip[1 + 2 * opt.bins + rank] += 1


cdef inline void write_sample(const Outputs* out, Py_ssize_t j, double loss, Py_ssize_t pred,
                              Py_ssize_t rank, double s, double e) noexcept nogil:
    out.loss[j] = loss
    out.pred[j] = pred
    out.rank[j] = rank
    out.conf[j] = 1.0 / s
    out.entropy[j] = log(s) - e / s


# --------------------------------------------------------------------------
# Row layout: one sample at a time along its class row
# --------------------------------------------------------------------------

cdef struct Layout:
    Py_ssize_t outer, C, inner
    Py_ssize_t xo, xc, xi       # element strides of the logits
    Py_ssize_t to, ti           # element strides of the targets
    int threads


cdef void row_unit(const floating* x, const index_t* t, const Layout* L, const Options* opt,
                   const Outputs* out, double* fp, int64_t* ip, Py_ssize_t unit,
                   Py_ssize_t per) noexcept nogil:
    cdef Py_ssize_t first = unit * per
    cdef Py_ssize_t last = first + per
    cdef Py_ssize_t j, o, i, tt, arg, rank, bad
    cdef Py_ssize_t C = L.C
    cdef int64_t target
    cdef bint ignored, valid
    cdef bint every = out.loss != NULL
    cdef const floating* xr
    cdef floating m, x_t
    cdef double s, e, eps = opt.smoothing, w_t, a_t, A, smooth_coef, loss
    if last > L.outer * L.inner:
        last = L.outer * L.inner
    for j in range(first, last):
        o = j // L.inner
        i = j - o * L.inner
        target = <int64_t>t[o * L.to + i * L.ti]
        ignored = opt.has_ignore and target == opt.ignore_index
        if ignored and not every:
            continue
        xr = x + o * L.xo + i * L.xi
        tt = -1 if ignored else <Py_ssize_t>target
        x_t = xr[tt * L.xc] if tt >= 0 else 0
        s = scan_row(xr, C, L.xc, tt, x_t, &m, &e, &arg, &rank)
        valid = s == s
        if not valid:
            # numpy.argmax's answer: the first NaN, if there is one
            bad = first_nan(xr, C, L.xc)
            if bad >= 0:
                arg = bad
            rank = C
        loss = 0.0
        w_t = 0.0
        if not ignored:
            w_t = 1.0 if opt.weight == NULL else opt.weight[target]
            a_t = (1.0 - eps) * w_t
            smooth_coef = eps / C
            A = a_t + smooth_coef * opt.weight_sum
            if A != 0.0:
                # the core kernels' formula, term by term
                loss = A * log(s)
                if a_t != 0.0:
                    loss -= a_t * (<double>x_t - <double>m)
                if eps != 0.0:
                    loss -= smooth_coef * weighted_shifted_sum(xr, C, L.xc, m, opt.weight)
            record(fp, ip, opt, loss, w_t, s, e, rank, valid)
        if every:
            write_sample(out, j, loss, arg, -1 if ignored else rank, s, e)


# --------------------------------------------------------------------------
# Tile layout: up to TILE neighbouring samples, contiguous or not
# --------------------------------------------------------------------------

cdef void tile_metrics(const floating* x, Py_ssize_t xc, Py_ssize_t xi, Py_ssize_t C,
                       Py_ssize_t n, const index_t* t, Py_ssize_t ti, const Options* opt,
                       const Outputs* out, Py_ssize_t j0, double* fp, int64_t* ip) noexcept nogil:
    """Samples ``0 <= k < n`` of a tile whose first sample has flat index ``j0``."""
    cdef floating m[TILE]
    cdef floating xt[TILE]
    cdef floating part[TILE]
    cdef floating epart[TILE]
    cdef double s[TILE]
    cdef double e[TILE]
    cdef double A[TILE]
    cdef double dot[TILE]
    cdef int64_t tgt[TILE]
    cdef int64_t arg[TILE]
    cdef int64_t rank[TILE]
    cdef Py_ssize_t c, k, start, end, bad
    cdef double eps = opt.smoothing
    cdef double smooth = eps / C
    cdef double wc, a, loss
    cdef floating v, d, ev
    cdef bint any_active = False, valid
    cdef bint every = out.loss != NULL
    cdef const floating* xrow

    for k in range(n):
        tgt[k] = <int64_t>t[k * ti]
        A[k] = 0.0
        dot[k] = 0.0
        if opt.has_ignore and tgt[k] == opt.ignore_index:
            tgt[k] = -1
        else:
            any_active = True
            wc = 1.0 if opt.weight == NULL else opt.weight[tgt[k]]
            A[k] = (1.0 - eps) * wc + smooth * opt.weight_sum
    if not any_active and not every:
        return

    # pass 1 over the classes: maximum, its first class, the targets' ranks
    for k in range(n):
        m[k] = -INFINITY
        arg[k] = 0
        rank[k] = 0
        xt[k] = x[tgt[k] * xc + k * xi] if tgt[k] >= 0 else 0
    for c in range(C):
        xrow = x + c * xc
        if xi == 1:
            if floating is float:
                fastce_tile_pass1_f32(xrow, n, c, xt, tgt, m, arg, rank)
            else:
                fastce_tile_pass1_f64(xrow, n, c, xt, tgt, m, arg, rank)
        else:
            for k in range(n):
                v = xrow[k * xi]
                if v > m[k]:
                    m[k] = v
                    arg[k] = c
                if v > xt[k] or (v == xt[k] and c < tgt[k]):
                    rank[k] += 1

    # pass 2: the sums of exp, in the core tile kernel's chunks of classes
    for k in range(n):
        s[k] = 0.0
        e[k] = 0.0
    start = 0
    while start < C:
        end = start + FASTCE_CHUNK
        if end > C:
            end = C
        for k in range(n):
            part[k] = 0
            epart[k] = 0
        for c in range(start, end):
            xrow = x + c * xc
            if xi == 1:
                if floating is float:
                    fastce_metrics_ops.tile_pass2_f32(xrow, n, m, part, epart)
                else:
                    fastce_metrics_ops.tile_pass2_f64(xrow, n, m, part, epart)
            else:
                for k in range(n):
                    d = xrow[k * xi] - m[k]
                    ev = exp_neg(d)
                    part[k] += ev
                    if ev > 0:
                        epart[k] += ev * d
        for k in range(n):
            s[k] += part[k]
            e[k] += epart[k]
        start = end

    # the loss, as the core tile kernel computes it
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
            wc = 1.0 if opt.weight == NULL else opt.weight[tgt[k]]
            a = (1.0 - eps) * wc
            if a != 0.0:
                dot[k] += a * (<double>xt[k] - <double>m[k])

    for k in range(n):
        valid = s[k] == s[k]
        if not valid:
            bad = first_nan(x + k * xi, C, xc)
            if bad >= 0:
                arg[k] = bad
            rank[k] = C
        loss = 0.0
        if tgt[k] >= 0:
            if A[k] != 0.0:
                loss = A[k] * log(s[k]) - dot[k]
            record(fp, ip, opt, loss, 1.0 if opt.weight == NULL else opt.weight[tgt[k]],
                   s[k], e[k], rank[k], valid)
        if every:
            write_sample(out, j0 + k, loss, arg[k], rank[k] if tgt[k] >= 0 else -1, s[k], e[k])


cdef void tile_unit(const floating* x, const index_t* t, const Layout* L, const Options* opt,
                    const Outputs* out, double* fp, int64_t* ip, Py_ssize_t unit,
                    Py_ssize_t per) noexcept nogil:
    """Tiles ``unit * per`` up to ``(unit + 1) * per`` in (outer, tile) order."""
    cdef Py_ssize_t tiles = (L.inner + TILE - 1) // TILE
    cdef Py_ssize_t q, o, i, n
    cdef Py_ssize_t last = (unit + 1) * per
    if last > L.outer * tiles:
        last = L.outer * tiles
    for q in range(unit * per, last):
        o = q // tiles
        i = (q - o * tiles) * TILE
        n = L.inner - i
        if n > TILE:
            n = TILE
        tile_metrics(x + o * L.xo + i * L.xi, L.xc, L.xi, L.C, n,
                     t + o * L.to + i * L.ti, L.ti, opt, out, o * L.inner + i, fp, ip)


cdef inline bint use_tiles(const Layout* L) noexcept nogil:
    # as the core kernels: tiles when neighbouring samples are closer in
    # memory than neighbouring classes
    cdef Py_ssize_t ac = L.xc if L.xc >= 0 else -L.xc
    cdef Py_ssize_t ai = L.xi if L.xi >= 0 else -L.xi
    return L.inner > 1 and ai < ac


cdef void run_units(const floating* x, const index_t* t, const Layout* L, const Options* opt,
                    const Outputs* out, double* fp, int64_t* ip, Py_ssize_t n_units,
                    Py_ssize_t per, bint tiled) noexcept nogil:
    cdef Py_ssize_t u
    cdef int nthreads = thread_count(n_units, L.outer * L.C * L.inner, L.threads)
    if nthreads == 1:
        for u in range(n_units):
            if tiled:
                tile_unit(x, t, L, opt, out, fp + u * opt.nf, ip + u * opt.ni, u, per)
            else:
                row_unit(x, t, L, opt, out, fp + u * opt.nf, ip + u * opt.ni, u, per)
    else:
        for u in prange(n_units, schedule="static", num_threads=nthreads):
            if tiled:
                tile_unit(x, t, L, opt, out, fp + u * opt.nf, ip + u * opt.ni, u, per)
            else:
                row_unit(x, t, L, opt, out, fp + u * opt.nf, ip + u * opt.ni, u, per)


def evaluate_index(const floating[:, :, :] x,
                   const index_t[:, :] target,
                   const double[::1] weight,
                   double weight_sum,
                   double smoothing,
                   int64_t ignore_index,
                   bint has_ignore,
                   Py_ssize_t bins,
                   Py_ssize_t ranks,
                   double[:, ::1] loss_out,
                   int64_t[:, ::1] pred_out,
                   int64_t[:, ::1] rank_out,
                   double[:, ::1] conf_out,
                   double[:, ::1] entropy_out,
                   int num_threads=1):
    """Every metric over an ``(outer, C, inner)`` view with class-index
    targets of shape ``(outer, inner)``.

    Returns ``(sums, counts)``: ``sums`` is a float64 array of shape
    ``(4 + bins, 2)`` holding double-double totals (high and low parts) of the
    loss, the targets' weights, the confidence, the entropy, then each
    confidence bin's confidence; ``counts`` is an int64 array holding the
    number of samples not ignored, the samples per bin, the top-1 correct
    samples per bin, and a histogram of the targets' ranks below ``ranks``.

    The per-sample arrays (all of them, or all None) receive the loss, the
    prediction, the target's rank (-1 where ignored), the confidence and the
    entropy.  The caller has validated everything: targets are in ``[0, C)``
    or equal ``ignore_index``, ``outer * inner > 0``, ``C > 0``, ``bins > 0``
    and ``0 < ranks <= C``.
    """
    cdef Layout L
    cdef Options opt
    cdef Outputs out
    cdef Py_ssize_t isz = sizeof(floating)
    cdef Py_ssize_t n_rows, per, n_units, tiles, u, f, max_units
    cdef bint tiled
    L.outer = x.shape[0]
    L.C = x.shape[1]
    L.inner = x.shape[2]
    L.xo = x.strides[0] // isz
    L.xc = x.strides[1] // isz
    L.xi = x.strides[2] // isz
    L.to = target.strides[0] // sizeof(index_t)
    L.ti = target.strides[1] // sizeof(index_t)
    L.threads = num_threads
    opt.weight = &weight[0] if weight.shape[0] > 0 else NULL
    opt.weight_sum = weight_sum
    opt.smoothing = smoothing
    opt.ignore_index = ignore_index
    opt.has_ignore = has_ignore
    opt.bins = bins
    opt.ranks = ranks
    opt.nf = 2 * (4 + bins)
    opt.ni = 1 + 2 * bins + ranks
    out.loss = out.conf = out.entropy = NULL
    out.pred = out.rank = NULL
    if loss_out is not None:
        out.loss = &loss_out[0, 0]
        out.pred = &pred_out[0, 0]
        out.rank = &rank_out[0, 0]
        out.conf = &conf_out[0, 0]
        out.entropy = &entropy_out[0, 0]

    # fixed by the problem and the options, never by the thread count
    max_units = PARTIALS_BYTES // (8 * (opt.nf + opt.ni))
    if max_units > MAX_UNITS:
        max_units = MAX_UNITS
    if max_units < 1:
        max_units = 1
    tiled = use_tiles(&L)
    if tiled:
        tiles = L.outer * ((L.inner + TILE - 1) // TILE)
        per = (tiles + max_units - 1) // max_units
        n_units = (tiles + per - 1) // per
    else:
        n_rows = L.outer * L.inner
        per = unit_rows(n_rows, L.C, max_units)
        n_units = (n_rows + per - 1) // per

    cdef double[:, ::1] fpart = np.zeros((n_units, opt.nf), dtype=np.float64)
    cdef int64_t[:, ::1] ipart = np.zeros((n_units, opt.ni), dtype=np.int64)
    sums_arr = np.zeros((4 + bins, 2), dtype=np.float64)
    cdef double[:, ::1] sums = sums_arr
    with nogil:
        run_units(&x[0, 0, 0], &target[0, 0], &L, &opt, &out, &fpart[0, 0], &ipart[0, 0],
                  n_units, per, tiled)
        # the units' totals, in unit order
        for u in range(n_units):
            for f in range(4 + bins):
                dd_add(&sums[f, 0], fpart[u, 2 * f])
                sums[f, 1] += fpart[u, 2 * f + 1]
    return sums_arr, np.asarray(ipart).sum(axis=0)
