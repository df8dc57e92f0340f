/*
 * float16 and bfloat16 to float32, one value at a time: for the portable
 * vocabulary and for the tails of the vector conversions.  Both conversions
 * are exact.
 */
#ifndef FASTCE_HALF_H
#define FASTCE_HALF_H

#include <stdint.h>
#include <string.h>

#include "vec_names.h"

VINLINE float fastce_bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The exponent rebiased by an integer addition (twice for inf and NaN,
 * whose payload is kept); zero and subnormal values renormalised by one
 * float subtraction, exact.  No branch on the common path, whose loaded
 * value would otherwise decide which way to go. */
VINLINE float fastce_f16_to_f32(uint16_t h) {
    const uint32_t exponent_mask = 0x7C00u << 13;
    uint32_t bits = (uint32_t)(h & 0x7FFFu) << 13;
    uint32_t exponent = bits & exponent_mask;
    bits += (127u - 15u) << 23;
    bits += exponent == exponent_mask ? (128u - 16u) << 23 : 0u;
    float f;
    if (exponent == 0) {
        /* 2^-14 (1 + m 2^-10) - 2^-14 = m 2^-24 */
        bits += 1u << 23;
        memcpy(&f, &bits, sizeof f);
        f -= 6.103515625e-05f;
        memcpy(&bits, &f, sizeof bits);
    }
    bits |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* How a kernel's input is stored: as the working type, or (float only) as
 * float16 or bfloat16 bits converted in the registers that compute with
 * them (the binary losses). */
enum { FASTCE_AS_T = 0, FASTCE_AS_F16 = 1, FASTCE_AS_BF16 = 2 };

#endif /* FASTCE_HALF_H */
