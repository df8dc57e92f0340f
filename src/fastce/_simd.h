/*
 * Vectorised row and tile primitives of the fastce kernels, with runtime
 * dispatch on x86-64.
 *
 * Every primitive is written once, as a plain C loop over a bounded-range
 * exponential (exp_neg_*: exact enough for x <= 0, NaN in, NaN out), marked
 * with `omp simd` so the compiler vectorises it without -ffast-math: the only
 * reassociation allowed is the one the pragma names.  The same source is
 * compiled twice on x86-64, for the baseline ISA and for AVX2 + FMA, and
 * fastce_simd_init() picks the best the CPU has.  Other architectures get the
 * baseline build, which the compiler vectorises for its own vector unit.
 */
#ifndef FASTCE_SIMD_H
#define FASTCE_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FASTCE_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) || defined(_OPENMP_SIMD) || defined(__clang__) || defined(__GNUC__)
#define FASTCE_SIMD FASTCE_PRAGMA(omp simd)
#define FASTCE_SIMD_SUM(v) FASTCE_PRAGMA(omp simd reduction(+:v))
#define FASTCE_SIMD_MAX(v) FASTCE_PRAGMA(omp simd reduction(max:v))
#else
#define FASTCE_SIMD
#define FASTCE_SIMD_SUM(v)
#define FASTCE_SIMD_MAX(v)
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTCE_INLINE static inline __attribute__((always_inline))
#else
#define FASTCE_INLINE static inline
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FASTCE_X86_DISPATCH 1
#endif

/* Lanes of a chunk summed in the working precision before the chunk's total
 * joins a float64 sum: short enough that float32 lanes lose nothing that
 * matters, long enough to keep the vector unit busy. */
#define FASTCE_CHUNK 256

/* Rows up to this many elements (64 KiB of float32) are read twice, maximum
 * then sum, from cache; longer rows keep a running maximum instead. */
#define FASTCE_ROW_IN_CACHE 16384

/* exp(r) = 1 + r + r^2 Q(r) on |r| <= ln(2) / 2, Q of degree 9 fitted (Remez)
 * to the relative error: at most 9.8e-18, 0.09 ulp */
#define FASTCE_EXP_C2 0x1.0000000000005p-1
#define FASTCE_EXP_C3 0x1.5555555555557p-3
#define FASTCE_EXP_C4 0x1.55555555520afp-5
#define FASTCE_EXP_C5 0x1.11111111100dfp-7
#define FASTCE_EXP_C6 0x1.6c16c17f43a58p-10
#define FASTCE_EXP_C7 0x1.a01a01abe62ddp-13
#define FASTCE_EXP_C8 0x1.a019a66a75dd4p-16
#define FASTCE_EXP_C9 0x1.71de02375656cp-19
#define FASTCE_EXP_C10 0x1.28a2c0a7209fbp-22
#define FASTCE_EXP_C11 0x1.af4ddd84882fep-26
#define FASTCE_EXPF_C6 1.3905003434e-03f
#define FASTCE_EXPF_C5 8.3662457764e-03f
#define FASTCE_EXPF_C4 4.1666861624e-02f
#define FASTCE_EXPF_C3 1.6666544974e-01f

/* ---- exp on (-inf, 0] ------------------------------------------------------
 * exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2.  n is rounded
 * by adding 1.5 * 2^23 (2^52): the integer lands in the low mantissa bits,
 * which then become the exponent of 2^n.  Below the smallest normal result
 * the answer is 0 (subnormal results are flushed); NaN stays NaN. */

FASTCE_INLINE float fastce_exp_neg_f32(float x) {
    const float shifter = 12582912.0f; /* 1.5 * 2^23 */
    float xc = x < -87.0f ? -87.0f : x;
    float t = xc * 1.44269504088896341f + shifter;
    float n = t - shifter;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    /* 1 + r + r^2 Q(r), Q of degree 4 fitted (Remez) to the relative error
     * of exp on |r| <= ln(2) / 2: at most 8.4e-9, 0.07 ulp */
    float p = FASTCE_EXPF_C6;
    p = p * r + FASTCE_EXPF_C5;
    p = p * r + FASTCE_EXPF_C4;
    p = p * r + FASTCE_EXPF_C3;
    p = p * r + 0.5f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000 + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float e = p * scale;
    return x < -87.0f ? 0.0f : e;
}

FASTCE_INLINE double fastce_exp_neg_f64(double x) {
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52 */
    double xc = x < -708.0 ? -708.0 : x;
    double t = xc * 1.4426950408889634074 + shifter;
    double n = t - shifter;
    double r = xc - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    double p = FASTCE_EXP_C11;
    p = p * r + FASTCE_EXP_C10;
    p = p * r + FASTCE_EXP_C9;
    p = p * r + FASTCE_EXP_C8;
    p = p * r + FASTCE_EXP_C7;
    p = p * r + FASTCE_EXP_C6;
    p = p * r + FASTCE_EXP_C5;
    p = p * r + FASTCE_EXP_C4;
    p = p * r + FASTCE_EXP_C3;
    p = p * r + FASTCE_EXP_C2;
    p = p * r * r + r + 1.0;
    int64_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4338000000000000LL + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    double e = p * scale;
    return x < -708.0 ? 0.0 : e;
}

/* Chunk maxima of the next row, computed while the current one is summed
 * (row_max_sumexp_ahead); valid says whether they are there. */
typedef struct {
    int valid;
    double chunk_max[FASTCE_ROW_IN_CACHE / FASTCE_CHUNK];
} fastce_ahead_t;

/* ---- the primitives, for one element type and one target ------------------
 * Row primitives walk n contiguous classes of one sample; tile primitives
 * walk n contiguous samples of one class, updating per-sample state. */

#define FASTCE_DEFINE_OPS(T, SFX, ISA, ATTR)                                            \
                                                                                        \
ATTR static T row_max_##SFX##_##ISA(const T *x, ptrdiff_t n) {                          \
    T m = -INFINITY;                                                                    \
    FASTCE_SIMD_MAX(m)                                                                  \
    for (ptrdiff_t c = 0; c < n; c++) m = x[c] > m ? x[c] : m;                          \
    return m;                                                                           \
}                                                                                       \
                                                                                        \
/* Running maximum and sum of exp(x - max) over a row, in one pass over memory:  \
 * each chunk is read twice while it is in L1.  NaN logits reach the sum. */            \
ATTR static double row_max_sumexp_##SFX##_##ISA(const T *x, ptrdiff_t n, T *max_out) {  \
    T m = -INFINITY;                                                                    \
    double s = 0.0;                                                                     \
    int saw_nan = 0;                                                                    \
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {                       \
        ptrdiff_t end = n - start < FASTCE_CHUNK ? n : start + FASTCE_CHUNK;            \
        T cm = -INFINITY;                                                               \
        FASTCE_SIMD_MAX(cm)                                                             \
        for (ptrdiff_t c = start; c < end; c++) cm = x[c] > cm ? x[c] : cm;             \
        if (cm == -INFINITY) {                                                          \
            /* only -inf (adds nothing) or NaN (must reach the result) */               \
            for (ptrdiff_t c = start; c < end; c++)                                     \
                if (x[c] != x[c]) saw_nan = 1;                                          \
            continue;                                                                   \
        }                                                                               \
        if (cm > m) {                                                                   \
            if (s != 0.0) s *= exp((double)m - (double)cm);                             \
            m = cm;                                                                     \
        }                                                                               \
        T part = 0, ties = 0;                                                           \
        FASTCE_SIMD_SUM(part)                                                           \
        for (ptrdiff_t c = start; c < end; c++)                                         \
            part += x[c] == m ? (T)0 : fastce_exp_neg_##SFX(x[c] - m);                  \
        for (ptrdiff_t c = start; c < end; c++) ties += x[c] == m;                      \
        s += (double)ties + (double)part;                                               \
    }                                                                                   \
    if (isinf(m) || saw_nan) {                                                          \
        /* a NaN or +inf logit, or none above -inf: NaN, as exp(x - max) gives */       \
        s = NAN;                                                                        \
    }                                                                                   \
    *max_out = m;                                                                       \
    return s;                                                                           \
}                                                                                       \
                                                                                        \
/* The portable build does not look ahead: it takes the maxima itself. */        \
ATTR static double row_max_sumexp_ahead_##SFX##_##ISA(const T *x, ptrdiff_t n, T *max_out, \
                                                      const T *next, fastce_ahead_t *ahead) { \
    (void)next;                                                                         \
    ahead->valid = 0;                                                                   \
    return row_max_sumexp_##SFX##_##ISA(x, n, max_out);                                 \
}                                                                                       \
                                                                                        \
/* The roof the forward pass is measured against: a plain sum of exp(x). */     \
ATTR static double sum_exp_##SFX##_##ISA(const T *x, ptrdiff_t n) {                     \
    T s = 0;                                                                            \
    FASTCE_SIMD_SUM(s)                                                                  \
    for (ptrdiff_t c = 0; c < n; c++) s += fastce_exp_neg_##SFX(x[c]);                  \
    return (double)s;                                                                   \
}                                                                                       \
                                                                                        \
/* sum of (x - m): the smoothing term, without cancellation against a large m */  \
ATTR static double row_sum_shifted_##SFX##_##ISA(const T *x, ptrdiff_t n, T m) {        \
    double total = 0.0;                                                                 \
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {                       \
        ptrdiff_t end = n - start < FASTCE_CHUNK ? n : start + FASTCE_CHUNK;            \
        T part = 0;                                                                     \
        FASTCE_SIMD_SUM(part)                                                           \
        for (ptrdiff_t c = start; c < end; c++) part += x[c] - m;                       \
        total += (double)part;                                                          \
    }                                                                                   \
    return total;                                                                       \
}                                                                                       \
                                                                                        \
/* y = scale * exp(x - m) - offset */                                                   \
ATTR static void row_scaled_exp_##SFX##_##ISA(const T *x, ptrdiff_t n, T m, T scale,    \
                                              T offset, T *y) {                         \
    FASTCE_SIMD                                                                         \
    for (ptrdiff_t c = 0; c < n; c++) y[c] = scale * fastce_exp_neg_##SFX(x[c] - m) - offset; \
}                                                                                       \
                                                                                        \
/* y = (x - m) - log_s */                                                               \
ATTR static void row_shift_##SFX##_##ISA(const T *x, ptrdiff_t n, T m, T log_s, T *y) { \
    FASTCE_SIMD                                                                         \
    for (ptrdiff_t c = 0; c < n; c++) y[c] = (x[c] - m) - log_s;                        \
}                                                                                       \
                                                                                        \
ATTR static void tile_max_##SFX##_##ISA(const T *x, ptrdiff_t n, T *m) {                \
    FASTCE_SIMD                                                                         \
    for (ptrdiff_t k = 0; k < n; k++) m[k] = x[k] > m[k] ? x[k] : m[k];                 \
}                                                                                       \
                                                                                        \
ATTR static void tile_sumexp_##SFX##_##ISA(const T *x, ptrdiff_t n, const T *m, T *s,   \
                                           T *ties) {                                   \
    FASTCE_SIMD                                                                         \
    for (ptrdiff_t k = 0; k < n; k++) {                                                 \
        s[k] += x[k] == m[k] ? (T)0 : fastce_exp_neg_##SFX(x[k] - m[k]);                \
        ties[k] += x[k] == m[k];                                                        \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* y[k] = scale[k] * exp(x[k] - m[k]) - w * offset[k] */                                \
ATTR static void tile_scaled_exp_##SFX##_##ISA(const T *x, ptrdiff_t n, const T *m,     \
                                               const T *scale, T w, const T *offset,    \
                                               T *y) {                                  \
    FASTCE_SIMD                                                                         \
    for (ptrdiff_t k = 0; k < n; k++)                                                   \
        y[k] = scale[k] * fastce_exp_neg_##SFX(x[k] - m[k]) - w * offset[k];            \
}                                                                                       \
                                                                                        \
/* y[k] = (x[k] - m[k]) - log_s[k] */                                                   \
ATTR static void tile_shift_##SFX##_##ISA(const T *x, ptrdiff_t n, const T *m,          \
                                          const T *log_s, T *y) {                       \
    FASTCE_SIMD                                                                         \
    for (ptrdiff_t k = 0; k < n; k++) y[k] = (x[k] - m[k]) - log_s[k];                  \
}

#define FASTCE_NOATTR
FASTCE_DEFINE_OPS(float, f32, base, FASTCE_NOATTR)
FASTCE_DEFINE_OPS(double, f64, base, FASTCE_NOATTR)

/* ---- AVX2 + FMA: explicit vectors ------------------------------------------
 * The compiler does not vectorise the exponential's selects and bit casts
 * inside a reduction on its own, so this path spells the vectors out.  It
 * computes the same polynomial as the scalar exp_neg functions. */
#ifdef FASTCE_X86_DISPATCH
#include <immintrin.h>
#define FASTCE_AVX2 __attribute__((target("avx2,fma")))

FASTCE_AVX2 static inline __m256 fastce_exp_neg_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    const __m256 shifter = _mm256_set1_ps(12582912.0f);
    __m256 xc = _mm256_max_ps(lo, x); /* lo first: a NaN x stays NaN */
    __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), shifter);
    __m256 n = _mm256_sub_ps(t, shifter);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(FASTCE_EXPF_C6);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FASTCE_EXPF_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FASTCE_EXPF_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FASTCE_EXPF_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127 - 0x4B400000));
    __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(bits, 23)));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), e);
}

FASTCE_AVX2 static inline __m256d fastce_exp_neg_pd(__m256d x) {
    const __m256d lo = _mm256_set1_pd(-708.0);
    const __m256d shifter = _mm256_set1_pd(6755399441055744.0);
    __m256d xc = _mm256_max_pd(lo, x);
    __m256d t = _mm256_fmadd_pd(xc, _mm256_set1_pd(1.4426950408889634074), shifter);
    __m256d n = _mm256_sub_pd(t, shifter);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), xc);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
    __m256d p = _mm256_set1_pd(FASTCE_EXP_C11);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C10));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C9));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C8));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C7));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C6));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C5));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C4));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C3));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FASTCE_EXP_C2));
    p = _mm256_fmadd_pd(p, _mm256_mul_pd(r, r), r);
    p = _mm256_add_pd(p, _mm256_set1_pd(1.0));
    __m256i bits = _mm256_add_epi64(_mm256_castpd_si256(t),
                                    _mm256_set1_epi64x(1023 - 0x4338000000000000LL));
    __m256d e = _mm256_mul_pd(p, _mm256_castsi256_pd(_mm256_slli_epi64(bits, 52)));
    return _mm256_andnot_pd(_mm256_cmp_pd(x, lo, _CMP_LT_OQ), e);
}

/* Variants for sums of exponentials: one-step range reduction and no
 * flush to zero below the clamp.  Both errors are relative to terms of at
 * most exp(-87) (float) or exp(-708) (double) of the largest term, which is
 * 1, so no sum can see them; NaN still gives NaN. */
FASTCE_AVX2 static inline __m256 fastce_exp_neg_sum_ps(__m256 x) {
    const __m256 shifter = _mm256_set1_ps(12582912.0f);
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 xc = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), shifter);
    __m256 n = _mm256_sub_ps(t, shifter);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693147180559945309f), xc);
    __m256 p = _mm256_set1_ps(FASTCE_EXPF_C6);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FASTCE_EXPF_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FASTCE_EXPF_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FASTCE_EXPF_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, one);
    p = _mm256_fmadd_ps(p, r, one); /* 1 + r (1 + r P(r)) */
    /* times 2^n: n sits in t's low mantissa bits, and shifting them into the
     * exponent field leaves n << 23 (the rest of t's bits shift out) */
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p),
                                                _mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

FASTCE_AVX2 static inline __m256d fastce_exp_neg_sum_pd(__m256d x) {
    return fastce_exp_neg_pd(x);
}

FASTCE_AVX2 static inline float fastce_hmax_ps(__m256 v) {
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

FASTCE_AVX2 static inline double fastce_hmax_pd(__m256d v) {
    __m128d a = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    a = _mm_max_sd(a, _mm_unpackhi_pd(a, a));
    return _mm_cvtsd_f64(a);
}

FASTCE_AVX2 static inline double fastce_hsum_pd(__m256d v) {
    __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    a = _mm_add_sd(a, _mm_unpackhi_pd(a, a));
    return _mm_cvtsd_f64(a);
}

FASTCE_AVX2 static inline double fastce_hsum_ps(__m256 v) {
    __m256d wide = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                 _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    return fastce_hsum_pd(wide);
}

FASTCE_AVX2 static inline __m256 fastce_eqzero_ps(__m256 d) {
    return _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_EQ_OQ);
}
FASTCE_AVX2 static inline __m256d fastce_eqzero_pd(__m256d d) {
    return _mm256_cmp_pd(d, _mm256_setzero_pd(), _CMP_EQ_OQ);
}
FASTCE_AVX2 static inline int fastce_count_ps(__m256 mask) {
    return __builtin_popcount((unsigned)_mm256_movemask_ps(mask));
}
FASTCE_AVX2 static inline int fastce_count_pd(__m256d mask) {
    return __builtin_popcount((unsigned)_mm256_movemask_pd(mask));
}

/* One body for both element types: V is the vector type, L its lane count,
 * and the V* names below its operations. */
#define FASTCE_DEFINE_AVX2(T, SFX, V, L, VLOAD, VSTORE, VSET1, VADD, VSUB, VMUL, VFMA, VMAX,   \
                           VEXP, VEXPSUM, VHMAX, VHSUM, VEQZERO, VAND, VANDNOT, VCOUNT)         \
                                                                                                \
FASTCE_AVX2 static T row_max_##SFX##_avx2(const T *x, ptrdiff_t n) {                            \
    /* four accumulators keep both load ports busy; VMAX(load, acc) keeps acc \
     * for a NaN load, so NaN never becomes the maximum */                      \
    V acc0 = VSET1(-INFINITY), acc1 = acc0, acc2 = acc0, acc3 = acc0;                           \
    ptrdiff_t c = 0;                                                                            \
    for (; c + 4 * L <= n; c += 4 * L) {                                                        \
        acc0 = VMAX(VLOAD(x + c), acc0);                                                        \
        acc1 = VMAX(VLOAD(x + c + L), acc1);                                                    \
        acc2 = VMAX(VLOAD(x + c + 2 * L), acc2);                                                \
        acc3 = VMAX(VLOAD(x + c + 3 * L), acc3);                                                \
    }                                                                                           \
    for (; c + L <= n; c += L) acc0 = VMAX(VLOAD(x + c), acc0);                                 \
    V acc = VMAX(VMAX(acc0, acc1), VMAX(acc2, acc3));                                           \
    T m = VHMAX(acc);                                                                           \
    for (; c < n; c++) m = x[c] > m ? x[c] : m;                                                 \
    return m;                                                                                   \
}                                                                                               \
                                                                                                \
/* One vector of exp(d) added to acc, where d = x - m.  With masked, the     \
 * terms at the maximum (d == 0, exactly 1 each) are counted in ties instead, \
 * so that the float lanes never add small terms to 1; a vector without such \
 * terms gives the same bits either way. */                                   \
FASTCE_AVX2 static inline __attribute__((always_inline)) V                                     \
sumexp_step_##SFX##_avx2(V acc, V d, int masked, int *ties) {                                   \
    if (!masked) return VADD(acc, VEXPSUM(d));                                                  \
    V z = VEQZERO(d);                                                                           \
    *ties += VCOUNT(z);                                                                         \
    return VADD(acc, VANDNOT(z, VEXPSUM(d)));                                                   \
}                                                                                               \
                                                                                                \
/* Sum of exp(x - m) over a chunk whose maximum is chunk_max <= m; only a   \
 * chunk that reaches m pays for the tie masks.  One accumulator: the        \
 * exponential's constants fill the registers, and a second accumulator     \
 * would live on the stack. */                                                \
FASTCE_AVX2 static inline __attribute__((always_inline)) double                                \
chunk_sumexp_masked_##SFX##_avx2(const T *xs, ptrdiff_t len, T m, int masked) {                 \
    V vm = VSET1(m), acc = VSET1(0);                                                            \
    int ties = 0;                                                                               \
    ptrdiff_t c = 0;                                                                            \
    for (; c + L <= len; c += L)                                                                \
        acc = sumexp_step_##SFX##_avx2(acc, VSUB(VLOAD(xs + c), vm), masked, &ties);            \
    double part = VHSUM(acc);                                                                   \
    for (; c < len; c++) {                                                                      \
        if (masked && xs[c] == m) ties++;                                                       \
        else part += fastce_exp_neg_##SFX(xs[c] - m);                                           \
    }                                                                                           \
    return (double)ties + part;                                                                 \
}                                                                                               \
                                                                                                \
/* Chunk maxima for the tie test: NaN is never one (VMAX keeps acc). */                         \
FASTCE_AVX2 static inline double chunk_sumexp_of_##SFX##_avx2(const T *xs, ptrdiff_t len, T m, \
                                                              T chunk_max) {                    \
    return chunk_max < m ? chunk_sumexp_masked_##SFX##_avx2(xs, len, m, 0)                      \
                         : chunk_sumexp_masked_##SFX##_avx2(xs, len, m, 1);                     \
}                                                                                               \
                                                                                                \
/* A chunk's sum, as chunk_sumexp_masked computes it, while the same loop    \
 * takes the maximum of the next row's chunk, as row_max computes it: the sum \
 * is bound by the exponential's multiplies and the maximum by loads, so the  \
 * second comes almost free. */                                                \
FASTCE_AVX2 static inline __attribute__((always_inline)) double                                \
chunk_sumexp_ahead_##SFX##_avx2(const T *xs, ptrdiff_t len, T m, int masked, const T *nx,      \
                                T *next_max) {                                                  \
    V vm = VSET1(m), acc = VSET1(0);                                                            \
    V n0 = VSET1(-INFINITY), n1 = n0, n2 = n0, n3 = n0;                                         \
    int ties = 0;                                                                               \
    ptrdiff_t c = 0;                                                                            \
    for (; c + 4 * L <= len; c += 4 * L) {                                                      \
        for (int u = 0; u < 4; u++) {                                                           \
            acc = sumexp_step_##SFX##_avx2(acc, VSUB(VLOAD(xs + c + u * L), vm), masked, &ties); \
        }                                                                                       \
        n0 = VMAX(VLOAD(nx + c), n0);                                                           \
        n1 = VMAX(VLOAD(nx + c + L), n1);                                                       \
        n2 = VMAX(VLOAD(nx + c + 2 * L), n2);                                                   \
        n3 = VMAX(VLOAD(nx + c + 3 * L), n3);                                                   \
    }                                                                                           \
    for (; c + L <= len; c += L) {                                                              \
        acc = sumexp_step_##SFX##_avx2(acc, VSUB(VLOAD(xs + c), vm), masked, &ties);          \
        n0 = VMAX(VLOAD(nx + c), n0);                                                           \
    }                                                                                           \
    T nm = VHMAX(VMAX(VMAX(n0, n1), VMAX(n2, n3)));                                             \
    double part = VHSUM(acc);                                                                   \
    for (ptrdiff_t r = c; r < len; r++) {                                                       \
        if (masked && xs[r] == m) ties++;                                                       \
        else part += fastce_exp_neg_##SFX(xs[r] - m);                                           \
        nm = nx[r] > nm ? nx[r] : nm;                                                           \
    }                                                                                           \
    *next_max = nm;                                                                             \
    return (double)ties + part;                                                                 \
}                                                                                               \
                                                                                                \
/* A row that fits in cache, read twice from it: its chunk maxima (from     \
 * ahead when the previous row left them there), then its sum, in the loop  \
 * that leaves next's chunk maxima in ahead (when next is not NULL). */       \
FASTCE_AVX2 static inline __attribute__((always_inline)) double                                \
row_in_cache_##SFX##_avx2(const T *x, ptrdiff_t n, T *max_out, const T *next,                   \
                          fastce_ahead_t *ahead) {                                              \
    T chunk_max[FASTCE_ROW_IN_CACHE / FASTCE_CHUNK];                                            \
    T m = -INFINITY;                                                                            \
    ptrdiff_t k = 0;                                                                            \
    double s = 0.0;                                                                             \
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK, k++) {                          \
        chunk_max[k] = ahead->valid ? (T)ahead->chunk_max[k]                                    \
                                    : row_max_##SFX##_avx2(x + start, n - start < FASTCE_CHUNK  \
                                                           ? n - start : FASTCE_CHUNK);         \
        m = chunk_max[k] > m ? chunk_max[k] : m;                                                \
    }                                                                                           \
    ahead->valid = 0;                                                                           \
    *max_out = m;                                                                               \
    if (isinf(m)) return NAN; /* as exp(x - max) gives: see the base version */                 \
    k = 0;                                                                                      \
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK, k++) {                          \
        ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;                    \
        if (next != NULL) {                                                                     \
            T nm;                                                                               \
            s += chunk_max[k] < m                                                               \
                ? chunk_sumexp_ahead_##SFX##_avx2(x + start, len, m, 0, next + start, &nm)      \
                : chunk_sumexp_ahead_##SFX##_avx2(x + start, len, m, 1, next + start, &nm);     \
            ahead->chunk_max[k] = nm;                                                           \
        } else {                                                                                \
            s += chunk_sumexp_of_##SFX##_avx2(x + start, len, m, chunk_max[k]);                 \
        }                                                                                       \
    }                                                                                           \
    ahead->valid = next != NULL;                                                                \
    return s;                                                                                   \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static double row_max_sumexp_##SFX##_avx2(const T *x, ptrdiff_t n, T *max_out) {    \
    if (n <= FASTCE_ROW_IN_CACHE) {                                                             \
        fastce_ahead_t none;                                                                    \
        none.valid = 0;                                                                         \
        return row_in_cache_##SFX##_avx2(x, n, max_out, NULL, &none);                           \
    }                                                                                           \
    /* a long row: a running maximum, one chunk at a time, reads it once */                    \
    int saw_nan = 0;                                                                            \
    T m = -INFINITY;                                                                            \
    double s = 0.0;                                                                             \
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {                               \
        ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;                    \
        const T *xs = x + start;                                                                \
        T cm = row_max_##SFX##_avx2(xs, len);                                                   \
        if (cm == -INFINITY) {                                                                  \
            for (ptrdiff_t c = 0; c < len; c++)                                                 \
                if (xs[c] != xs[c]) saw_nan = 1;                                                \
            continue;                                                                           \
        }                                                                                       \
        if (cm > m) {                                                                           \
            if (s != 0.0) s *= exp((double)m - (double)cm);                                     \
            m = cm;                                                                             \
        }                                                                                       \
        s += chunk_sumexp_of_##SFX##_avx2(xs, len, m, cm);                                      \
    }                                                                                           \
    if (isinf(m) || saw_nan) s = NAN;                                                           \
    *max_out = m;                                                                               \
    return s;                                                                                   \
}                                                                                               \
                                                                                                \
/* row_max_sumexp, with the look-ahead of row_in_cache for the rows that fit \
 * in cache; the same bits as row_max_sumexp. */                               \
FASTCE_AVX2 static double row_max_sumexp_ahead_##SFX##_avx2(const T *x, ptrdiff_t n,            \
                                                             T *max_out, const T *next,         \
                                                             fastce_ahead_t *ahead) {           \
    if (n <= FASTCE_ROW_IN_CACHE) return row_in_cache_##SFX##_avx2(x, n, max_out, next, ahead); \
    ahead->valid = 0;                                                                           \
    return row_max_sumexp_##SFX##_avx2(x, n, max_out);                                          \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static double sum_exp_##SFX##_avx2(const T *x, ptrdiff_t n) {                      \
    V acc0 = VSET1(0), acc1 = VSET1(0);                                                         \
    ptrdiff_t c = 0;                                                                            \
    for (; c + 2 * L <= n; c += 2 * L) {                                                        \
        acc0 = VADD(acc0, VEXPSUM(VLOAD(x + c)));                                               \
        acc1 = VADD(acc1, VEXPSUM(VLOAD(x + c + L)));                                           \
    }                                                                                           \
    double s = VHSUM(VADD(acc0, acc1));                                                         \
    for (; c < n; c++) s += fastce_exp_neg_##SFX(x[c]);                                         \
    return s;                                                                                   \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static double row_sum_shifted_##SFX##_avx2(const T *x, ptrdiff_t n, T m) {          \
    double total = 0.0;                                                                         \
    V vm = VSET1(m);                                                                            \
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {                               \
        ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;                    \
        const T *xs = x + start;                                                                \
        V acc = VSET1(0);                                                                       \
        ptrdiff_t c = 0;                                                                        \
        for (; c + L <= len; c += L) acc = VADD(acc, VSUB(VLOAD(xs + c), vm));                  \
        double part = VHSUM(acc);                                                               \
        for (; c < len; c++) part += xs[c] - m;                                                 \
        total += part;                                                                          \
    }                                                                                           \
    return total;                                                                               \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static void row_scaled_exp_##SFX##_avx2(const T *x, ptrdiff_t n, T m, T scale,      \
                                                    T offset, T *y) {                           \
    V vm = VSET1(m), vs = VSET1(scale), vo = VSET1(offset);                                     \
    ptrdiff_t c = 0;                                                                            \
    for (; c + L <= n; c += L)                                                                  \
        VSTORE(y + c, VSUB(VMUL(vs, VEXP(VSUB(VLOAD(x + c), vm))), vo));                        \
    for (; c < n; c++) y[c] = scale * fastce_exp_neg_##SFX(x[c] - m) - offset;                  \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static void row_shift_##SFX##_avx2(const T *x, ptrdiff_t n, T m, T log_s, T *y) {   \
    V vm = VSET1(m), vl = VSET1(log_s);                                                         \
    ptrdiff_t c = 0;                                                                            \
    for (; c + L <= n; c += L) VSTORE(y + c, VSUB(VSUB(VLOAD(x + c), vm), vl));                 \
    for (; c < n; c++) y[c] = (x[c] - m) - log_s;                                               \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static void tile_max_##SFX##_avx2(const T *x, ptrdiff_t n, T *m) {                  \
    ptrdiff_t k = 0;                                                                            \
    for (; k + L <= n; k += L) VSTORE(m + k, VMAX(VLOAD(x + k), VLOAD(m + k)));                 \
    for (; k < n; k++) m[k] = x[k] > m[k] ? x[k] : m[k];                                        \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static void tile_sumexp_##SFX##_avx2(const T *x, ptrdiff_t n, const T *m, T *s,     \
                                                 T *ties) {                                     \
    V one = VSET1(1);                                                                           \
    ptrdiff_t k = 0;                                                                            \
    for (; k + L <= n; k += L) {                                                                \
        V d = VSUB(VLOAD(x + k), VLOAD(m + k)), z = VEQZERO(d);                                 \
        VSTORE(s + k, VADD(VLOAD(s + k), VANDNOT(z, VEXPSUM(d))));                              \
        VSTORE(ties + k, VADD(VLOAD(ties + k), VAND(z, one)));                                  \
    }                                                                                           \
    for (; k < n; k++) {                                                                        \
        if (x[k] == m[k]) ties[k] += 1;                                                         \
        else s[k] += fastce_exp_neg_##SFX(x[k] - m[k]);                                         \
    }                                                                                           \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static void tile_scaled_exp_##SFX##_avx2(const T *x, ptrdiff_t n, const T *m,       \
                                                     const T *scale, T w, const T *offset,      \
                                                     T *y) {                                    \
    V vw = VSET1(w);                                                                            \
    ptrdiff_t k = 0;                                                                            \
    for (; k + L <= n; k += L) {                                                                \
        V e = VEXP(VSUB(VLOAD(x + k), VLOAD(m + k)));                                           \
        VSTORE(y + k, VSUB(VMUL(VLOAD(scale + k), e), VMUL(vw, VLOAD(offset + k))));            \
    }                                                                                           \
    for (; k < n; k++)                                                                          \
        y[k] = scale[k] * fastce_exp_neg_##SFX(x[k] - m[k]) - w * offset[k];                    \
}                                                                                               \
                                                                                                \
FASTCE_AVX2 static void tile_shift_##SFX##_avx2(const T *x, ptrdiff_t n, const T *m,            \
                                                const T *log_s, T *y) {                         \
    ptrdiff_t k = 0;                                                                            \
    for (; k + L <= n; k += L)                                                                  \
        VSTORE(y + k, VSUB(VSUB(VLOAD(x + k), VLOAD(m + k)), VLOAD(log_s + k)));                \
    for (; k < n; k++) y[k] = (x[k] - m[k]) - log_s[k];                                         \
}

FASTCE_DEFINE_AVX2(float, f32, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
                   _mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_fmadd_ps, _mm256_max_ps,
                   fastce_exp_neg_ps, fastce_exp_neg_sum_ps, fastce_hmax_ps, fastce_hsum_ps,
                   fastce_eqzero_ps, _mm256_and_ps, _mm256_andnot_ps, fastce_count_ps)
FASTCE_DEFINE_AVX2(double, f64, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd,
                   _mm256_add_pd, _mm256_sub_pd, _mm256_mul_pd, _mm256_fmadd_pd, _mm256_max_pd,
                   fastce_exp_neg_pd, fastce_exp_neg_sum_pd, fastce_hmax_pd, fastce_hsum_pd,
                   fastce_eqzero_pd, _mm256_and_pd, _mm256_andnot_pd, fastce_count_pd)
#endif

/* ---- log of the per-sample sums of a tile ----------------------------------
 * Sums of exponentials are at least 1 (the maximum contributes exactly 1), or
 * NaN, or +inf: the domain the vector version handles. */

static void tile_log_base(const double *s, ptrdiff_t n, double *out) {
    for (ptrdiff_t k = 0; k < n; k++) out[k] = log(s[k]);
}

#ifdef FASTCE_X86_DISPATCH
/* log(s) for s >= 1: s = 2^e f with f in [sqrt(1/2), sqrt(2)), and
 * log f = 2 atanh(z), z = (f - 1) / (f + 1), |z| <= 0.1716, summed to z^21.
 * f - 1 is exact near 1, so a sum just above 1 keeps its relative accuracy. */
FASTCE_AVX2 static inline __m256d fastce_log_ge1_pd(__m256d s) {
    const __m256d one = _mm256_set1_pd(1.0);
    const __m256d two52 = _mm256_set1_pd(4503599627370496.0); /* 2^52 */
    __m256i bits = _mm256_castpd_si256(s);
    __m256d exponent = _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(bits, 52),
                                            _mm256_castpd_si256(two52))),
        _mm256_set1_pd(4503599627370496.0 + 1023.0));
    __m256d f = _mm256_castsi256_pd(_mm256_or_si256(
        _mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFLL)),
        _mm256_castpd_si256(one)));
    __m256d big = _mm256_cmp_pd(f, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    f = _mm256_blendv_pd(f, _mm256_mul_pd(f, _mm256_set1_pd(0.5)), big);
    exponent = _mm256_add_pd(exponent, _mm256_and_pd(big, one));
    __m256d z = _mm256_div_pd(_mm256_sub_pd(f, one), _mm256_add_pd(f, one));
    __m256d z2 = _mm256_mul_pd(z, z);
    __m256d p = _mm256_set1_pd(1.0 / 21.0);
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 19.0));
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 17.0));
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 15.0));
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 13.0));
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 11.0));
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 9.0));
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 7.0));
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 5.0));
    p = _mm256_fmadd_pd(p, z2, _mm256_set1_pd(1.0 / 3.0));
    p = _mm256_mul_pd(p, z2);
    __m256d two_z = _mm256_add_pd(z, z);
    __m256d log_f = _mm256_fmadd_pd(two_z, p, two_z);
    __m256d r = _mm256_fmadd_pd(exponent, _mm256_set1_pd(6.93147180369123816490e-01),
                                _mm256_fmadd_pd(exponent,
                                                _mm256_set1_pd(1.90821492927058770002e-10),
                                                log_f));
    /* NaN and +inf are their own logarithm */
    __m256d finite = _mm256_cmp_pd(s, _mm256_set1_pd(INFINITY), _CMP_LT_OQ);
    return _mm256_blendv_pd(s, r, finite);
}

FASTCE_AVX2 static void tile_log_avx2(const double *s, ptrdiff_t n, double *out) {
    ptrdiff_t k = 0;
    for (; k + 4 <= n; k += 4)
        _mm256_storeu_pd(out + k, fastce_log_ge1_pd(_mm256_loadu_pd(s + k)));
    for (; k < n; k++) out[k] = log(s[k]);
}
#endif

/* ---- dispatch --------------------------------------------------------------- */

#define FASTCE_OPS_FIELDS(T, SFX)                                                       \
    T (*row_max_##SFX)(const T *, ptrdiff_t);                                           \
    double (*row_max_sumexp_##SFX)(const T *, ptrdiff_t, T *);                          \
    double (*row_max_sumexp_ahead_##SFX)(const T *, ptrdiff_t, T *, const T *,          \
                                         fastce_ahead_t *);                             \
    double (*row_sum_shifted_##SFX)(const T *, ptrdiff_t, T);                           \
    double (*sum_exp_##SFX)(const T *, ptrdiff_t);                                      \
    void (*row_scaled_exp_##SFX)(const T *, ptrdiff_t, T, T, T, T *);                   \
    void (*row_shift_##SFX)(const T *, ptrdiff_t, T, T, T *);                           \
    void (*tile_max_##SFX)(const T *, ptrdiff_t, T *);                                  \
    void (*tile_sumexp_##SFX)(const T *, ptrdiff_t, const T *, T *, T *);               \
    void (*tile_scaled_exp_##SFX)(const T *, ptrdiff_t, const T *, const T *, T,        \
                                  const T *, T *);                                      \
    void (*tile_shift_##SFX)(const T *, ptrdiff_t, const T *, const T *, T *);

typedef struct {
    FASTCE_OPS_FIELDS(float, f32)
    FASTCE_OPS_FIELDS(double, f64)
    void (*tile_log)(const double *, ptrdiff_t, double *);
    const char *isa;
} fastce_ops_t;

#define FASTCE_FILL_OPS(ops, SFX, ISA)                                                  \
    ops.row_max_##SFX = row_max_##SFX##_##ISA;                                          \
    ops.row_max_sumexp_##SFX = row_max_sumexp_##SFX##_##ISA;                            \
    ops.row_max_sumexp_ahead_##SFX = row_max_sumexp_ahead_##SFX##_##ISA;                \
    ops.row_sum_shifted_##SFX = row_sum_shifted_##SFX##_##ISA;                          \
    ops.sum_exp_##SFX = sum_exp_##SFX##_##ISA;                                          \
    ops.row_scaled_exp_##SFX = row_scaled_exp_##SFX##_##ISA;                            \
    ops.row_shift_##SFX = row_shift_##SFX##_##ISA;                                      \
    ops.tile_max_##SFX = tile_max_##SFX##_##ISA;                                        \
    ops.tile_sumexp_##SFX = tile_sumexp_##SFX##_##ISA;                                  \
    ops.tile_scaled_exp_##SFX = tile_scaled_exp_##SFX##_##ISA;                          \
    ops.tile_shift_##SFX = tile_shift_##SFX##_##ISA;

static fastce_ops_t fastce_ops;

/* The table every kernel calls through.  In fastce._kernels it is the one
 * above, which fastce_simd_init fills; another extension that includes this
 * header (fastce._metrics) points it at fastce._kernels' table when it is
 * imported and never fills its own copy, so one choice of vector path serves
 * both extensions. */
static const fastce_ops_t *fastce_active_ops = &fastce_ops;

/* force: "" for the best the CPU has, "baseline" to ignore AVX2.  Only
 * fastce._kernels calls it; the extensions that share its table do not. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((unused))
#endif
static const char *fastce_simd_init(const char *force) {
    FASTCE_FILL_OPS(fastce_ops, f32, base)
    FASTCE_FILL_OPS(fastce_ops, f64, base)
    fastce_ops.tile_log = tile_log_base;
    fastce_ops.isa = "baseline";
#ifdef FASTCE_X86_DISPATCH
    __builtin_cpu_init();
    if (strcmp(force, "baseline") != 0 && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma")) {
        FASTCE_FILL_OPS(fastce_ops, f32, avx2)
        FASTCE_FILL_OPS(fastce_ops, f64, avx2)
        fastce_ops.tile_log = tile_log_avx2;
        fastce_ops.isa = "avx2+fma";
    }
#endif
    return fastce_ops.isa;
}

#endif /* FASTCE_SIMD_H */
