/*
 * What the Cython kernels see of the vector layer: the table (kernels.h), the
 * scalar exponential for strided loops (exp_neg.h), and the one place that
 * chooses an ISA at run time (dispatch.c).
 */
#ifndef FASTCE_DISPATCH_H
#define FASTCE_DISPATCH_H

#include "exp_neg.h"
#include "kernels.h"

/* The ISAs in order of preference, NULL-terminated: "avx512", "avx2", "baseline". */
extern const char *const fastce_simd_names[];

/* Whether this CPU (and its operating system) can run the named ISA. */
int fastce_simd_available(const char *name);

/* Fills the one table with the named ISA's kernels ("" for the best the CPU
 * has) and returns it; NULL, with the table unchanged, for an unknown name or
 * one the CPU cannot run.  The table keeps its address, so a pointer to it
 * held by another extension follows every choice. */
const fastce_ops_t *fastce_simd_select(const char *name);

/* The table every kernel calls through.  fastce._kernels points it at the
 * table fastce_simd_select fills; another extension that includes this header
 * (fastce._metrics) points its own copy at the same table when imported. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((unused))
#endif
static const fastce_ops_t *fastce_active_ops = 0;

#endif /* FASTCE_DISPATCH_H */
