/* The AVX-512 kernels for float, chosen at run time where the CPU has them. */
#include "kernels.h"
#ifdef FASTCE_X86_DISPATCH
#include "vec_avx512.h"
#define FASTCE_ISA avx512
#define FASTCE_PART_F64 0
#include "kernels_instantiate.h"
#ifdef __clang__
#pragma clang attribute pop
#endif
#endif
