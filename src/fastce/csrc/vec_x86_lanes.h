/*
 * 256-bit registers read one lane at a time, and 128-bit ones stored one lane at
 * a time, stride elements apart: what both x86 vocabularies (vec_avx2.h,
 * vec_avx512.h) build strided and store_strided from.  Each includes this file
 * after its target pragma, in a file of its own.
 */
#ifndef FASTCE_VEC_X86_LANES_H
#define FASTCE_VEC_X86_LANES_H

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#include "vec_names.h"

VINLINE __m256 fastce_x86_load_lanes_f32(const float *p, ptrdiff_t s) {
    return _mm256_setr_ps(p[0], p[s], p[2 * s], p[3 * s], p[4 * s], p[5 * s], p[6 * s], p[7 * s]);
}
VINLINE __m256d fastce_x86_load_lanes_f64(const double *p, ptrdiff_t s) {
    return _mm256_setr_pd(p[0], p[s], p[2 * s], p[3 * s]);
}
VINLINE void fastce_x86_store_lanes_f32(float *p, ptrdiff_t s, __m128 q) {
    int lane1 = _mm_extract_ps(q, 1), lane2 = _mm_extract_ps(q, 2), lane3 = _mm_extract_ps(q, 3);
    _mm_store_ss(p, q);
    memcpy(p + s, &lane1, sizeof lane1);
    memcpy(p + 2 * s, &lane2, sizeof lane2);
    memcpy(p + 3 * s, &lane3, sizeof lane3);
}
VINLINE void fastce_x86_store_lanes_f64(double *p, ptrdiff_t s, __m128d q) {
    _mm_storel_pd(p, q);
    _mm_storeh_pd(p + s, q);
}

#endif /* FASTCE_VEC_X86_LANES_H */
