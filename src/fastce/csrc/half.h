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

VINLINE float fastce_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu;
    uint32_t mantissa = h & 0x3FFu;
    uint32_t bits;
    if (exponent == 0x1Fu) {
        bits = sign | 0x7F800000u | (mantissa << 13); /* inf, NaN (payload kept) */
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign; /* +-0 */
    } else {
        /* subnormal: mantissa * 2^-24, exact in float */
        float f = (float)mantissa * 5.9604644775390625e-08f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* How a kernel's input is stored: as the working type, or (float only) as
 * float16 or bfloat16 bits converted in the registers that compute with
 * them (the binary losses). */
enum { FASTCE_AS_T = 0, FASTCE_AS_F16 = 1, FASTCE_AS_BF16 = 2 };

#endif /* FASTCE_HALF_H */
