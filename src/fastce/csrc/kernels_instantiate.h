/* Everything one ISA provides for one element type, once its vocabulary is
 * included, FASTCE_ISA names it and FASTCE_PART_F64 says which type (0:
 * float, 1: double): kernels_body.h for that type, then the function that
 * fills its part of the table (kernels_fill.h).  Each (ISA, type) is a file
 * of its own, kernels_<isa>_<type>.c, so that a build compiles them side by
 * side. */
#include <math.h>

#include "exp_neg.h"
#include "half.h"
#include "kernels.h"

#if FASTCE_PART_F64
#define FASTCE_SFX f64
#define FASTCE_T double
#define FASTCE_F64 1
#else
#define FASTCE_SFX f32
#define FASTCE_T float
#endif
#include "kernels_body.h"

#include "kernels_fill.h"
#undef FASTCE_SFX
#undef FASTCE_T
#undef FASTCE_F64
