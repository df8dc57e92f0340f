/*
 * The bounded-range exponential every fastce kernel uses, as a scalar
 * function (for strided loops) and as the constants the vector versions in
 * kernels_body.h share with it.
 *
 * exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2, for x <= 0.
 * n is rounded by adding 1.5 * 2^23 (2^52): the integer lands in the low
 * mantissa bits, which then become the exponent of 2^n.  Below the smallest
 * normal result the answer is 0 (subnormal results are flushed); NaN stays NaN.
 */
#ifndef FASTCE_EXP_NEG_H
#define FASTCE_EXP_NEG_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define FASTCE_INLINE static inline __attribute__((always_inline))
#else
#define FASTCE_INLINE static inline
#endif

/* exp(r) = 1 + r + r^2 Q(r) on |r| <= ln(2) / 2.  float: Q of degree 4, fitted
 * (Remez) to the relative error, at most 8.4e-9 (0.07 ulp); double: degree 9,
 * at most 9.8e-18 (0.09 ulp). */
#define FASTCE_EXPF_C6 1.3905003434e-03f
#define FASTCE_EXPF_C5 8.3662457764e-03f
#define FASTCE_EXPF_C4 4.1666861624e-02f
#define FASTCE_EXPF_C3 1.6666544974e-01f
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

/* the clamp below which the result is 0, the rounding shifter, and ln 2 split
 * in a high part exact in a product with n and a low part */
#define FASTCE_EXPF_LO -87.0f
#define FASTCE_EXPF_SHIFTER 12582912.0f /* 1.5 * 2^23 */
#define FASTCE_EXPF_LOG2E 1.44269504088896341f
#define FASTCE_EXPF_LN2_HI 0.693359375f
#define FASTCE_EXPF_LN2_LO -2.12194440e-4f
#define FASTCE_EXPF_LN2 0.693147180559945309f
#define FASTCE_EXP_LO -708.0
#define FASTCE_EXP_SHIFTER 6755399441055744.0 /* 1.5 * 2^52 */
#define FASTCE_EXP_LOG2E 1.4426950408889634074
#define FASTCE_EXP_LN2_HI 6.93147180369123816490e-01
#define FASTCE_EXP_LN2_LO 1.90821492927058770002e-10
#define FASTCE_EXP_LN2 0.6931471805599453094

FASTCE_INLINE float fastce_exp_neg_f32(float x) {
    float xc = x < FASTCE_EXPF_LO ? FASTCE_EXPF_LO : x;
    float t = xc * FASTCE_EXPF_LOG2E + FASTCE_EXPF_SHIFTER;
    float n = t - FASTCE_EXPF_SHIFTER;
    float r = xc - n * FASTCE_EXPF_LN2_HI;
    r = r - n * FASTCE_EXPF_LN2_LO;
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
    return x < FASTCE_EXPF_LO ? 0.0f : e;
}

FASTCE_INLINE double fastce_exp_neg_f64(double x) {
    double xc = x < FASTCE_EXP_LO ? FASTCE_EXP_LO : x;
    double t = xc * FASTCE_EXP_LOG2E + FASTCE_EXP_SHIFTER;
    double n = t - FASTCE_EXP_SHIFTER;
    double r = xc - n * FASTCE_EXP_LN2_HI;
    r = r - n * FASTCE_EXP_LN2_LO;
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
    return x < FASTCE_EXP_LO ? 0.0 : e;
}

#endif /* FASTCE_EXP_NEG_H */
