/* The AVX2 + FMA kernels for float, chosen at run time where the CPU has them. */
#include "kernels.h"
#ifdef FASTCE_X86_DISPATCH
#include "vec_avx2.h"
#define FASTCE_ISA avx2
#define FASTCE_PART_F64 0
#include "kernels_instantiate.h"
#ifdef __clang__
#pragma clang attribute pop
#endif
#endif
