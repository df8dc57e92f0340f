/* The one place that chooses the vector path. */
#include <string.h>

#include "dispatch.h"

const char *const fastce_simd_names[] = {
#ifdef FASTCE_X86_DISPATCH
    "avx512", "avx2",
#endif
    "baseline", 0};

static fastce_ops_t fastce_ops;

/* a table needs both element types' parts of its ISA (kernels_<isa>_<type>.c) */
#define FASTCE_FILL_BOTH_PARTS(isa) \
    (fastce_fill_ops_##isa##_f32(&fastce_ops), fastce_fill_ops_##isa##_f64(&fastce_ops))

int fastce_simd_available(const char *name) {
    if (strcmp(name, "baseline") == 0) return 1;
#ifdef FASTCE_X86_DISPATCH
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (strcmp(name, "avx2") == 0) return avx2;
    if (strcmp(name, "avx512") == 0)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("bmi2");
#endif
    return 0;
}

const fastce_ops_t *fastce_simd_select(const char *name) {
    if (name[0] == '\0') {
        for (int k = 0; fastce_simd_names[k] != 0; k++)
            if (fastce_simd_available(fastce_simd_names[k]))
                return fastce_simd_select(fastce_simd_names[k]);
    }
    if (!fastce_simd_available(name)) return 0;
    if (strcmp(name, "baseline") == 0) FASTCE_FILL_BOTH_PARTS(base);
#ifdef FASTCE_X86_DISPATCH
    if (strcmp(name, "avx2") == 0) FASTCE_FILL_BOTH_PARTS(avx2);
    if (strcmp(name, "avx512") == 0) FASTCE_FILL_BOTH_PARTS(avx512);
#endif
    for (int k = 0; fastce_simd_names[k] != 0; k++)
        if (strcmp(name, fastce_simd_names[k]) == 0) fastce_ops.isa = fastce_simd_names[k];
    return &fastce_ops;
}
