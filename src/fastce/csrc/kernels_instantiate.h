/* Everything one ISA provides, once its vocabulary is included and
 * FASTCE_ISA names it: kernels_body.h for float and double, then the
 * function that fills the table with them (kernels_fill.h). */
#include <math.h>

#include "exp_neg.h"
#include "half.h"
#include "kernels.h"

#define FASTCE_SFX f32
#define FASTCE_T float
#include "kernels_body.h"
#undef FASTCE_SFX
#undef FASTCE_T

#define FASTCE_SFX f64
#define FASTCE_T double
#define FASTCE_F64 1
#include "kernels_body.h"
#undef FASTCE_SFX
#undef FASTCE_T
#undef FASTCE_F64

#include "kernels_fill.h"
