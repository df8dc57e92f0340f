/* The portable kernels for double, for every CPU. */
#include "vec_base.h"
#define FASTCE_ISA base
#define FASTCE_PART_F64 1
#include "kernels_instantiate.h"
