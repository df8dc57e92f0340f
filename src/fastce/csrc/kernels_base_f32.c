/* The portable kernels for float, for every CPU. */
#include "vec_base.h"
#define FASTCE_ISA base
#define FASTCE_PART_F64 0
#include "kernels_instantiate.h"
