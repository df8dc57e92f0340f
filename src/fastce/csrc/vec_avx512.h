/*
 * The AVX-512 vocabulary (F, VL, BW, DQ): 512-bit vectors and the mask
 * registers, so a tail is one masked load or store and a masked select costs
 * nothing.  Every function after this header is compiled for AVX-512: include
 * it only in a file of its own (kernels_avx512_<type>.c), chosen at run time.
 */
#ifndef FASTCE_VEC_AVX512_H
#define FASTCE_VEC_AVX512_H

#if defined(__clang__)
#pragma clang attribute push(                                                           \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2,popcnt"))), \
    apply_to = function)
#else
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2,popcnt")
#endif

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "vec_names.h"
#include "vec_x86_lanes.h"

/* ---- float, 16 lanes ---- */
typedef __m512 v_avx512_f32_t;
typedef __mmask16 v_avx512_f32_m;
enum { v_avx512_f32_lanes = 16, v_avx512_f32_sum_ahead_unroll = 4, v_avx512_f32_gathers_fast = 1 };

VINLINE __m512 v_avx512_f32_set1(float a) { return _mm512_set1_ps(a); }
VINLINE __m512 v_avx512_f32_zero(void) { return _mm512_setzero_ps(); }
VINLINE __m512 v_avx512_f32_load(const float *p) { return _mm512_loadu_ps(p); }
VINLINE void v_avx512_f32_store(float *p, __m512 a) { _mm512_storeu_ps(p, a); }
VINLINE void v_avx512_f32_stream(float *p, __m512 a) { _mm512_stream_ps(p, a); }
VINLINE void v_avx512_f32_stream_fence(void) { _mm_sfence(); }
VINLINE __mmask16 v_avx512_f32_first(ptrdiff_t n) {
    return (__mmask16)_bzhi_u32(0xFFFFu, (unsigned)(n < 16 ? n : 16));
}
VINLINE __m512 v_avx512_f32_load_part(const float *p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p);
}
VINLINE __m512 v_avx512_f32_load_part_or(const float *p, __mmask16 m, __m512 fill) {
    return _mm512_mask_loadu_ps(fill, m, p);
}
VINLINE __m512 v_avx512_f32_gather(const float *p, ptrdiff_t stride, __mmask16 m) {
    __m512i at =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32((int)stride));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, at, p, 4);
}
VINLINE __m512 v_avx512_f32_strided(const float *p, ptrdiff_t s) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(fastce_x86_load_lanes_f32(p, s)),
                              fastce_x86_load_lanes_f32(p + 8 * s, s), 1);
}
VINLINE void v_avx512_f32_store_strided(float *p, ptrdiff_t s, __m512 a) {
    fastce_x86_store_lanes_f32(p, s, _mm512_castps512_ps128(a));
    fastce_x86_store_lanes_f32(p + 4 * s, s, _mm512_extractf32x4_ps(a, 1));
    fastce_x86_store_lanes_f32(p + 8 * s, s, _mm512_extractf32x4_ps(a, 2));
    fastce_x86_store_lanes_f32(p + 12 * s, s, _mm512_extractf32x4_ps(a, 3));
}
VINLINE void v_avx512_f32_store_part(float *p, __mmask16 m, __m512 a) {
    _mm512_mask_storeu_ps(p, m, a);
}
VINLINE __m512 v_avx512_f32_add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
VINLINE __m512 v_avx512_f32_sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
VINLINE __m512 v_avx512_f32_mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
VINLINE __m512 v_avx512_f32_div(__m512 a, __m512 b) { return _mm512_div_ps(a, b); }
VINLINE __m512 v_avx512_f32_fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
VINLINE __m512 v_avx512_f32_fnma(__m512 a, __m512 b, __m512 c) { return _mm512_fnmadd_ps(a, b, c); }
VINLINE __m512 v_avx512_f32_max(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }
VINLINE __m512 v_avx512_f32_min(__m512 a, __m512 b) { return _mm512_min_ps(a, b); }
VINLINE __mmask16 v_avx512_f32_eq(__m512 a, __m512 b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ);
}
VINLINE __mmask16 v_avx512_f32_gt(__m512 a, __m512 b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ);
}
VINLINE __mmask16 v_avx512_f32_lt(__m512 a, __m512 b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ);
}
VINLINE __mmask16 v_avx512_f32_ge(__m512 a, __m512 b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ);
}
VINLINE __mmask16 v_avx512_f32_and_m(__mmask16 a, __mmask16 b) { return a & b; }
VINLINE __mmask16 v_avx512_f32_or_m(__mmask16 a, __mmask16 b) { return a | b; }
VINLINE __mmask16 v_avx512_f32_not_m(__mmask16 a) { return (__mmask16)~a; }
VINLINE __m512 v_avx512_f32_select(__mmask16 m, __m512 a, __m512 b) {
    return _mm512_mask_blend_ps(m, b, a);
}
VINLINE __m512 v_avx512_f32_keep(__mmask16 m, __m512 a) { return _mm512_maskz_mov_ps(m, a); }
VINLINE __m512 v_avx512_f32_drop(__mmask16 m, __m512 a) {
    return _mm512_maskz_mov_ps((__mmask16)~m, a);
}
VINLINE int v_avx512_f32_count(__mmask16 m) { return __builtin_popcount((unsigned)m); }
VINLINE int v_avx512_f32_first_set(__mmask16 m) { return m ? __builtin_ctz((unsigned)m) : -1; }
VINLINE double v_avx512_f32_hsum(__m512 a) {
    __m512d wide = _mm512_add_pd(
        _mm512_cvtps_pd(_mm512_castps512_ps256(a)),
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1))));
    __m256d h4 = _mm256_add_pd(_mm512_castpd512_pd256(wide), _mm512_extractf64x4_pd(wide, 1));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(h4), _mm256_extractf128_pd(h4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
VINLINE float v_avx512_f32_hmax(__m512 a) {
    __m256 h8 = _mm256_max_ps(_mm512_castps512_ps256(a),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}
/* one instruction, where building 2^n from t's bits and multiplying takes
 * three and the zeroing a fourth; the product is the same */
VINLINE __m512 v_avx512_f32_scale_pow2_unless(__mmask16 m, __m512 p, __m512 n, __m512 t) {
    (void)t;
    return _mm512_maskz_scalef_ps((__mmask16)~m, p, n);
}
VINLINE __m512 v_avx512_f32_ldexp_shifted(__m512 p, __m512 t) {
    return _mm512_castsi512_ps(
        _mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_castps_si512(t), 23)));
}

VINLINE __m512 v_avx512_f32_split_exp(__m512 s, __m512 *e) {
    *e = _mm512_getexp_ps(s);
    return _mm512_getmant_ps(s, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
}

VINLINE __m512 v_avx512_f32_load_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
VINLINE __m512 v_avx512_f32_load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* ---- double, 8 lanes ---- */
typedef __m512d v_avx512_f64_t;
typedef __mmask8 v_avx512_f64_m;
enum { v_avx512_f64_lanes = 8, v_avx512_f64_sum_ahead_unroll = 4, v_avx512_f64_gathers_fast = 1 };

VINLINE __m512d v_avx512_f64_set1(double a) { return _mm512_set1_pd(a); }
VINLINE __m512d v_avx512_f64_zero(void) { return _mm512_setzero_pd(); }
VINLINE __m512d v_avx512_f64_load(const double *p) { return _mm512_loadu_pd(p); }
VINLINE void v_avx512_f64_store(double *p, __m512d a) { _mm512_storeu_pd(p, a); }
VINLINE void v_avx512_f64_stream(double *p, __m512d a) { _mm512_stream_pd(p, a); }
VINLINE void v_avx512_f64_stream_fence(void) { _mm_sfence(); }
VINLINE __mmask8 v_avx512_f64_first(ptrdiff_t n) {
    return (__mmask8)_bzhi_u32(0xFFu, (unsigned)(n < 8 ? n : 8));
}
VINLINE __m512d v_avx512_f64_load_part(const double *p, __mmask8 m) {
    return _mm512_maskz_loadu_pd(m, p);
}
VINLINE __m512d v_avx512_f64_gather(const double *p, ptrdiff_t stride, __mmask8 m) {
    __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                    _mm256_set1_epi32((int)stride));
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m, at, p, 8);
}
VINLINE __m512d v_avx512_f64_strided(const double *p, ptrdiff_t s) {
    return _mm512_insertf64x4(_mm512_castpd256_pd512(fastce_x86_load_lanes_f64(p, s)),
                              fastce_x86_load_lanes_f64(p + 4 * s, s), 1);
}
VINLINE void v_avx512_f64_store_strided(double *p, ptrdiff_t s, __m512d a) {
    fastce_x86_store_lanes_f64(p, s, _mm512_castpd512_pd128(a));
    fastce_x86_store_lanes_f64(p + 2 * s, s, _mm512_extractf64x2_pd(a, 1));
    fastce_x86_store_lanes_f64(p + 4 * s, s, _mm512_extractf64x2_pd(a, 2));
    fastce_x86_store_lanes_f64(p + 6 * s, s, _mm512_extractf64x2_pd(a, 3));
}
VINLINE __m512d v_avx512_f64_load_part_or(const double *p, __mmask8 m, __m512d fill) {
    return _mm512_mask_loadu_pd(fill, m, p);
}
VINLINE void v_avx512_f64_store_part(double *p, __mmask8 m, __m512d a) {
    _mm512_mask_storeu_pd(p, m, a);
}
VINLINE __m512d v_avx512_f64_add(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }
VINLINE __m512d v_avx512_f64_sub(__m512d a, __m512d b) { return _mm512_sub_pd(a, b); }
VINLINE __m512d v_avx512_f64_mul(__m512d a, __m512d b) { return _mm512_mul_pd(a, b); }
VINLINE __m512d v_avx512_f64_div(__m512d a, __m512d b) { return _mm512_div_pd(a, b); }
VINLINE __m512d v_avx512_f64_fma(__m512d a, __m512d b, __m512d c) {
    return _mm512_fmadd_pd(a, b, c);
}
VINLINE __m512d v_avx512_f64_fnma(__m512d a, __m512d b, __m512d c) {
    return _mm512_fnmadd_pd(a, b, c);
}
VINLINE __m512d v_avx512_f64_max(__m512d a, __m512d b) { return _mm512_max_pd(a, b); }
VINLINE __m512d v_avx512_f64_min(__m512d a, __m512d b) { return _mm512_min_pd(a, b); }
VINLINE __mmask8 v_avx512_f64_eq(__m512d a, __m512d b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ);
}
VINLINE __mmask8 v_avx512_f64_gt(__m512d a, __m512d b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ);
}
VINLINE __mmask8 v_avx512_f64_lt(__m512d a, __m512d b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ);
}
VINLINE __mmask8 v_avx512_f64_ge(__m512d a, __m512d b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_GE_OQ);
}
VINLINE __mmask8 v_avx512_f64_and_m(__mmask8 a, __mmask8 b) { return a & b; }
VINLINE __mmask8 v_avx512_f64_or_m(__mmask8 a, __mmask8 b) { return a | b; }
VINLINE __mmask8 v_avx512_f64_not_m(__mmask8 a) { return (__mmask8)~a; }
VINLINE __m512d v_avx512_f64_select(__mmask8 m, __m512d a, __m512d b) {
    return _mm512_mask_blend_pd(m, b, a);
}
VINLINE __m512d v_avx512_f64_keep(__mmask8 m, __m512d a) { return _mm512_maskz_mov_pd(m, a); }
VINLINE __m512d v_avx512_f64_drop(__mmask8 m, __m512d a) {
    return _mm512_maskz_mov_pd((__mmask8)~m, a);
}
VINLINE int v_avx512_f64_count(__mmask8 m) { return __builtin_popcount((unsigned)m); }
VINLINE int v_avx512_f64_first_set(__mmask8 m) { return m ? __builtin_ctz((unsigned)m) : -1; }
VINLINE double v_avx512_f64_hsum(__m512d a) {
    __m256d h4 = _mm256_add_pd(_mm512_castpd512_pd256(a), _mm512_extractf64x4_pd(a, 1));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(h4), _mm256_extractf128_pd(h4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
VINLINE double v_avx512_f64_hmax(__m512d a) {
    __m256d h4 = _mm256_max_pd(_mm512_castpd512_pd256(a), _mm512_extractf64x4_pd(a, 1));
    __m128d h = _mm_max_pd(_mm256_castpd256_pd128(h4), _mm256_extractf128_pd(h4, 1));
    return _mm_cvtsd_f64(_mm_max_sd(h, _mm_unpackhi_pd(h, h)));
}
VINLINE __m512d v_avx512_f64_scale_pow2_unless(__mmask8 m, __m512d p, __m512d n, __m512d t) {
    (void)t;
    return _mm512_maskz_scalef_pd((__mmask8)~m, p, n);
}
VINLINE __m512d v_avx512_f64_ldexp_shifted(__m512d p, __m512d t) {
    return _mm512_castsi512_pd(
        _mm512_add_epi64(_mm512_castpd_si512(p), _mm512_slli_epi64(_mm512_castpd_si512(t), 52)));
}
VINLINE __m512d v_avx512_f64_split_exp(__m512d s, __m512d *e) {
    /* the instructions made for it: exponent and mantissa in [1, 2) */
    *e = _mm512_getexp_pd(s);
    return _mm512_getmant_pd(s, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
}

#endif /* FASTCE_VEC_AVX512_H */
