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

#endif /* FASTCE_VEC_BASE_H */
