/*
 * The portable vocabulary (vec_base_impl.h, for float and double): what the
 * compiler vectorises for the architecture's default vector unit (SSE2 on
 * x86-64, NEON on aarch64).  Any C compiler builds it; it is the path of every
 * CPU without a vocabulary of its own.
 */
#ifndef FASTCE_VEC_BASE_H
#define FASTCE_VEC_BASE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "half.h"
#include "vec_names.h"

/* one 16-byte register of each type: SSE2's and NEON's width */
#define FASTCE_BASE_T float
#define FASTCE_BASE_SFX f32
#define FASTCE_BASE_BITS int32
#define FASTCE_BASE_LANES 4
#define FASTCE_BASE_MANT 23
#define FASTCE_BASE_SHIFTER_BITS 0x4B400000
#define FASTCE_BASE_BIAS 127
#include "vec_base_impl.h"

#define FASTCE_BASE_T double
#define FASTCE_BASE_SFX f64
#define FASTCE_BASE_BITS int64
#define FASTCE_BASE_LANES 2
#define FASTCE_BASE_MANT 52
#define FASTCE_BASE_SHIFTER_BITS 0x4338000000000000LL
#define FASTCE_BASE_BIAS 1023
#include "vec_base_impl.h"

VINLINE v_base_f32_t v_base_f32_load_f16(const uint16_t *p) {
    v_base_f32_t r = v_base_f32_zero();
    for (int k = 0; k < v_base_f32_lanes; k++) ((float *)&r)[k] = fastce_f16_to_f32(p[k]);
    return r;
}
VINLINE v_base_f32_t v_base_f32_load_bf16(const uint16_t *p) {
    v_base_f32_t r = v_base_f32_zero();
    for (int k = 0; k < v_base_f32_lanes; k++) ((float *)&r)[k] = fastce_bf16_to_f32(p[k]);
    return r;
}

#endif /* FASTCE_VEC_BASE_H */
