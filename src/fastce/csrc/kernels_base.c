/* The portable kernels, for every CPU. */
#include "vec_base.h"
#define FASTCE_ISA base
#include "kernels_instantiate.h"
