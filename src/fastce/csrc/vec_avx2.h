/*
 * The AVX2 + FMA (and F16C) vocabulary: 256-bit vectors; a mask is a vector whose lanes
 * are all ones or all zeros, as the compare instructions give them.  Every
 * function after this header is compiled for AVX2 + FMA: include it only in a
 * file of its own (kernels_avx2_<type>.c), chosen at run time.
 */
#ifndef FASTCE_VEC_AVX2_H
#define FASTCE_VEC_AVX2_H

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)

#else
#pragma GCC target("avx2,fma,f16c")

#endif

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "vec_names.h"
#include "vec_x86_lanes.h"

/* ---- float, 8 lanes ---- */
typedef __m256 v_avx2_f32_t;
typedef __m256 v_avx2_f32_m;
/* 16 registers: four steps at once spill the sum (kernels_body.h's chunk_sumexp);
 * Zen 3's gathers took longer than the loads and stores of one element at a time */
enum { v_avx2_f32_lanes = 8, v_avx2_f32_sum_ahead_unroll = 1, v_avx2_f32_gathers_fast = 0 };

VINLINE __m256 v_avx2_f32_set1(float a) { return _mm256_set1_ps(a); }
VINLINE __m256 v_avx2_f32_zero(void) { return _mm256_setzero_ps(); }
VINLINE __m256 v_avx2_f32_load(const float *p) { return _mm256_loadu_ps(p); }
VINLINE void v_avx2_f32_store(float *p, __m256 a) { _mm256_storeu_ps(p, a); }
VINLINE void v_avx2_f32_stream(float *p, __m256 a) { _mm256_stream_ps(p, a); }
VINLINE void v_avx2_f32_stream_fence(void) { _mm_sfence(); }
VINLINE __m256 v_avx2_f32_first(ptrdiff_t n) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
VINLINE __m256 v_avx2_f32_load_part(const float *p, __m256 m) {
    return _mm256_maskload_ps(p, _mm256_castps_si256(m));
}
VINLINE __m256 v_avx2_f32_load_part_or(const float *p, __m256 m, __m256 fill) {
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, _mm256_castps_si256(m)), m);
}
VINLINE __m256 v_avx2_f32_gather(const float *p, ptrdiff_t stride, __m256 m) {
    __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                    _mm256_set1_epi32((int)stride));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, at, m, 4);
}
VINLINE __m256 v_avx2_f32_strided(const float *p, ptrdiff_t s) {
    return fastce_x86_load_lanes_f32(p, s);
}
VINLINE void v_avx2_f32_store_strided(float *p, ptrdiff_t s, __m256 a) {
    fastce_x86_store_lanes_f32(p, s, _mm256_castps256_ps128(a));
    fastce_x86_store_lanes_f32(p + 4 * s, s, _mm256_extractf128_ps(a, 1));
}
VINLINE void v_avx2_f32_store_part(float *p, __m256 m, __m256 a) {
    _mm256_maskstore_ps(p, _mm256_castps_si256(m), a);
}
VINLINE __m256 v_avx2_f32_add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
VINLINE __m256 v_avx2_f32_sub(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
VINLINE __m256 v_avx2_f32_mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
VINLINE __m256 v_avx2_f32_div(__m256 a, __m256 b) { return _mm256_div_ps(a, b); }
VINLINE __m256 v_avx2_f32_fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
VINLINE __m256 v_avx2_f32_fnma(__m256 a, __m256 b, __m256 c) { return _mm256_fnmadd_ps(a, b, c); }
VINLINE __m256 v_avx2_f32_max(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }
VINLINE __m256 v_avx2_f32_min(__m256 a, __m256 b) { return _mm256_min_ps(a, b); }
VINLINE __m256 v_avx2_f32_eq(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
VINLINE __m256 v_avx2_f32_gt(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
VINLINE __m256 v_avx2_f32_lt(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
VINLINE __m256 v_avx2_f32_ge(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
VINLINE __m256 v_avx2_f32_and_m(__m256 a, __m256 b) { return _mm256_and_ps(a, b); }
VINLINE __m256 v_avx2_f32_or_m(__m256 a, __m256 b) { return _mm256_or_ps(a, b); }
VINLINE __m256 v_avx2_f32_not_m(__m256 a) {
    return _mm256_xor_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
}
VINLINE __m256 v_avx2_f32_select(__m256 m, __m256 a, __m256 b) { return _mm256_blendv_ps(b, a, m); }
VINLINE __m256 v_avx2_f32_keep(__m256 m, __m256 a) { return _mm256_and_ps(m, a); }
VINLINE __m256 v_avx2_f32_drop(__m256 m, __m256 a) { return _mm256_andnot_ps(m, a); }
VINLINE int v_avx2_f32_count(__m256 m) {
    return __builtin_popcount((unsigned)_mm256_movemask_ps(m));
}
VINLINE int v_avx2_f32_first_set(__m256 m) {
    unsigned bits = (unsigned)_mm256_movemask_ps(m);
    return bits ? __builtin_ctz(bits) : -1;
}
VINLINE double v_avx2_f32_hsum(__m256 a) {
    __m256d wide = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                                 _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(wide), _mm256_extractf128_pd(wide, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
VINLINE float v_avx2_f32_hmax(__m256 a) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}
VINLINE __m256 v_avx2_f32_scale_pow2_unless(__m256 m, __m256 p, __m256 n, __m256 t) {
    (void)n;
    __m256i bits = _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127 - 0x4B400000));
    __m256 pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(bits, 23));
    return _mm256_andnot_ps(m, _mm256_mul_ps(p, pow2));
}
VINLINE __m256 v_avx2_f32_ldexp_shifted(__m256 p, __m256 t) {
    return _mm256_castsi256_ps(
        _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

VINLINE __m256 v_avx2_f32_split_exp(__m256 s, __m256 *e) {
    __m256i bits = _mm256_castps_si256(s);
    *e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
    return _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                        _mm256_castps_si256(_mm256_set1_ps(1.0f))));
}

VINLINE __m256 v_avx2_f32_load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
VINLINE __m256 v_avx2_f32_load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* ---- double, 4 lanes ---- */
typedef __m256d v_avx2_f64_t;
typedef __m256d v_avx2_f64_m;
enum { v_avx2_f64_lanes = 4, v_avx2_f64_sum_ahead_unroll = 1, v_avx2_f64_gathers_fast = 0 };

VINLINE __m256d v_avx2_f64_set1(double a) { return _mm256_set1_pd(a); }
VINLINE __m256d v_avx2_f64_zero(void) { return _mm256_setzero_pd(); }
VINLINE __m256d v_avx2_f64_load(const double *p) { return _mm256_loadu_pd(p); }
VINLINE void v_avx2_f64_store(double *p, __m256d a) { _mm256_storeu_pd(p, a); }
VINLINE void v_avx2_f64_stream(double *p, __m256d a) { _mm256_stream_pd(p, a); }
VINLINE void v_avx2_f64_stream_fence(void) { _mm_sfence(); }
VINLINE __m256d v_avx2_f64_first(ptrdiff_t n) {
    return _mm256_castsi256_pd(
        _mm256_cmpgt_epi64(_mm256_set1_epi64x(n < 4 ? n : 4), _mm256_setr_epi64x(0, 1, 2, 3)));
}
VINLINE __m256d v_avx2_f64_load_part(const double *p, __m256d m) {
    return _mm256_maskload_pd(p, _mm256_castpd_si256(m));
}
VINLINE __m256d v_avx2_f64_gather(const double *p, ptrdiff_t stride, __m256d m) {
    __m128i at = _mm_mullo_epi32(_mm_setr_epi32(0, 1, 2, 3), _mm_set1_epi32((int)stride));
    return _mm256_mask_i32gather_pd(_mm256_setzero_pd(), p, at, m, 8);
}
VINLINE __m256d v_avx2_f64_strided(const double *p, ptrdiff_t s) {
    return fastce_x86_load_lanes_f64(p, s);
}
VINLINE void v_avx2_f64_store_strided(double *p, ptrdiff_t s, __m256d a) {
    fastce_x86_store_lanes_f64(p, s, _mm256_castpd256_pd128(a));
    fastce_x86_store_lanes_f64(p + 2 * s, s, _mm256_extractf128_pd(a, 1));
}
VINLINE __m256d v_avx2_f64_load_part_or(const double *p, __m256d m, __m256d fill) {
    return _mm256_blendv_pd(fill, _mm256_maskload_pd(p, _mm256_castpd_si256(m)), m);
}
VINLINE void v_avx2_f64_store_part(double *p, __m256d m, __m256d a) {
    _mm256_maskstore_pd(p, _mm256_castpd_si256(m), a);
}
VINLINE __m256d v_avx2_f64_add(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
VINLINE __m256d v_avx2_f64_sub(__m256d a, __m256d b) { return _mm256_sub_pd(a, b); }
VINLINE __m256d v_avx2_f64_mul(__m256d a, __m256d b) { return _mm256_mul_pd(a, b); }
VINLINE __m256d v_avx2_f64_div(__m256d a, __m256d b) { return _mm256_div_pd(a, b); }
VINLINE __m256d v_avx2_f64_fma(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
VINLINE __m256d v_avx2_f64_fnma(__m256d a, __m256d b, __m256d c) {
    return _mm256_fnmadd_pd(a, b, c);
}
VINLINE __m256d v_avx2_f64_max(__m256d a, __m256d b) { return _mm256_max_pd(a, b); }
VINLINE __m256d v_avx2_f64_min(__m256d a, __m256d b) { return _mm256_min_pd(a, b); }
VINLINE __m256d v_avx2_f64_eq(__m256d a, __m256d b) { return _mm256_cmp_pd(a, b, _CMP_EQ_OQ); }
VINLINE __m256d v_avx2_f64_gt(__m256d a, __m256d b) { return _mm256_cmp_pd(a, b, _CMP_GT_OQ); }
VINLINE __m256d v_avx2_f64_lt(__m256d a, __m256d b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
VINLINE __m256d v_avx2_f64_ge(__m256d a, __m256d b) { return _mm256_cmp_pd(a, b, _CMP_GE_OQ); }
VINLINE __m256d v_avx2_f64_and_m(__m256d a, __m256d b) { return _mm256_and_pd(a, b); }
VINLINE __m256d v_avx2_f64_or_m(__m256d a, __m256d b) { return _mm256_or_pd(a, b); }
VINLINE __m256d v_avx2_f64_not_m(__m256d a) {
    return _mm256_xor_pd(a, _mm256_castsi256_pd(_mm256_set1_epi64x(-1)));
}
VINLINE __m256d v_avx2_f64_select(__m256d m, __m256d a, __m256d b) {
    return _mm256_blendv_pd(b, a, m);
}
VINLINE __m256d v_avx2_f64_keep(__m256d m, __m256d a) { return _mm256_and_pd(m, a); }
VINLINE __m256d v_avx2_f64_drop(__m256d m, __m256d a) { return _mm256_andnot_pd(m, a); }
VINLINE int v_avx2_f64_count(__m256d m) {
    return __builtin_popcount((unsigned)_mm256_movemask_pd(m));
}
VINLINE int v_avx2_f64_first_set(__m256d m) {
    unsigned bits = (unsigned)_mm256_movemask_pd(m);
    return bits ? __builtin_ctz(bits) : -1;
}
VINLINE double v_avx2_f64_hsum(__m256d a) {
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
VINLINE double v_avx2_f64_hmax(__m256d a) {
    __m128d h = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_max_sd(h, _mm_unpackhi_pd(h, h)));
}
VINLINE __m256d v_avx2_f64_scale_pow2_unless(__m256d m, __m256d p, __m256d n, __m256d t) {
    (void)n;
    __m256i bits =
        _mm256_add_epi64(_mm256_castpd_si256(t), _mm256_set1_epi64x(1023 - 0x4338000000000000LL));
    __m256d pow2 = _mm256_castsi256_pd(_mm256_slli_epi64(bits, 52));
    return _mm256_andnot_pd(m, _mm256_mul_pd(p, pow2));
}
VINLINE __m256d v_avx2_f64_ldexp_shifted(__m256d p, __m256d t) {
    return _mm256_castsi256_pd(
        _mm256_add_epi64(_mm256_castpd_si256(p), _mm256_slli_epi64(_mm256_castpd_si256(t), 52)));
}
VINLINE __m256d v_avx2_f64_split_exp(__m256d s, __m256d *e) {
    const __m256d two52 = _mm256_set1_pd(4503599627370496.0); /* 2^52 */
    __m256i bits = _mm256_castpd_si256(s);
    /* the biased exponent as the low bits of 2^52's mantissa, then as a double */
    *e = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(bits, 52),
                                                           _mm256_castpd_si256(two52))),
                       _mm256_set1_pd(4503599627370496.0 + 1023.0));
    return _mm256_castsi256_pd(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFLL)),
                        _mm256_castpd_si256(_mm256_set1_pd(1.0))));
}

#endif /* FASTCE_VEC_AVX2_H */
