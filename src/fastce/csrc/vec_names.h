/*
 * How kernels_body.h names things.  A vocabulary header (vec_<isa>.h) defines,
 * for each element type, a vector type, a mask type and the operations below
 * under the names v_<isa>_<f32|f64>_<op>; the body file reaches them as
 * VOP(op) once FASTCE_ISA and FASTCE_SFX say which.
 *
 *   t, m, lanes            vector type, mask type, lane count
 *   sum_ahead_unroll       vectors a step of chunk_sumexp's loop that also reads the next
 *                          row takes: 4, or 1 where four would spill its sum to the stack
 *   gathers_fast           1 where gather beats strided
 *   set1 zero              broadcast, all zero
 *   load store             unaligned whole vectors
 *   stream(p, v)           a whole vector to p, aligned to the vector's width, past the
 *                          caches where the ISA can; stream_fence() orders such stores
 *                          before whatever follows
 *   first(k)               mask of the lanes below k (k > 0; all of them from k >= lanes)
 *   load_part(p, m)        the lanes of m from p, 0 elsewhere; never reads past them
 *   load_part_or(p, m, f)  the lanes of m from p, f's elsewhere
 *   store_part(p, m, v)    writes the lanes of m only
 *   gather(p, stride, m)   the lanes k of m from p[k * stride], 0 elsewhere; stride * lanes
 *                          below 2^31
 *   strided(p, stride)     every lane k from p[k * stride], read one at a time into the
 *                          register (any stride)
 *   store_strided(p, stride, v)  every lane k of v to p[k * stride], one at a time
 *   add sub mul div        lane-wise
 *   fma(a, b, c)           a * b + c, one rounding;  fnma(a, b, c): c - a * b
 *   max(a, b)              a > b ? a : b lane-wise: a NaN in a leaves b
 *   min(a, b)              a < b ? a : b lane-wise: a NaN in a leaves b
 *   eq gt lt ge            ordered, quiet compares into a mask
 *   and_m or_m not_m       mask logic
 *   select(m, a, b)        a where m, b elsewhere
 *   keep(m, a) drop(m, a)  a where m, 0 elsewhere; 0 where m, a elsewhere
 *   count(m) first_set(m)  lanes set; index of the first lane set (-1: none)
 *   hsum(v) hmax(v)        sum of the lanes in double; maximum of the lanes
 *   scale_pow2_unless(m, p, n, t)  p * 2^n, 0 where m; n an integer >= -bias + 1, as a
 *                          float and as t = n + 1.5 * 2^mant (n in t's low bits)
 *   ldexp_shifted(p, t)    p * 2^n by adding n to p's exponent field
 *   split_exp(s, &e)       s = f * 2^e, f in [1, 2), for finite normal s > 0
 *   load_f16(p) load_bf16(p)  (float only) a whole vector of float16 or bfloat16 values
 */
#ifndef FASTCE_VEC_NAMES_H
#define FASTCE_VEC_NAMES_H

#define FASTCE_PASTE5(a, b, c, d, e) a##b##c##d##e
#define FASTCE_NAME5(a, b, c, d, e) FASTCE_PASTE5(a, b, c, d, e)
/* a vocabulary operation of the current ISA and element type */
#define VOP(op) FASTCE_NAME5(v_, FASTCE_ISA, _, FASTCE_SFX, _##op)
/* a kernel of the current ISA and element type: fastce_<name>_<sfx>_<isa> */
#define KNAME(name) FASTCE_NAME5(fastce_##name, _, FASTCE_SFX, _, FASTCE_ISA)
/* an element-type-free kernel of the current ISA: fastce_<name>_<isa> */
#define KNAME_ISA(name) FASTCE_NAME5(fastce_, name, _, FASTCE_ISA, )

#if defined(__GNUC__) || defined(__clang__)
#define VINLINE static inline __attribute__((always_inline))
#else
#define VINLINE static inline
#endif

#endif /* FASTCE_VEC_NAMES_H */
