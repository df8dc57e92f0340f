/*
 * The row and tile kernels, written once against a vector vocabulary (see
 * vec_names.h).  Each kernels_<isa>_<type>.c includes this file once (through
 * kernels_instantiate.h), with FASTCE_ISA, FASTCE_SFX and FASTCE_T defined
 * (FASTCE_F64 for double) and the ISA's vocabulary included; every kernel is
 * static to that file and reaches the rest of fastce through the table
 * kernels_fill.h fills.
 *
 * Tails are masked vectors, never scalar loops: lanes past the end are not
 * read, and are kept out of every sum and every store.
 */
#include <math.h>

#include "dd_sum.h"
#include "prefetch.h"

#define T FASTCE_T
#define V VOP(t)
#define M VOP(m)
#define L ((ptrdiff_t)VOP(lanes))

/* ---- the exponential on (-inf, 0], as exp_neg.h's scalar one ---------------- */

VINLINE V KNAME(vexp_poly)(V r) {
#ifdef FASTCE_F64
    V p = VOP(set1)(FASTCE_EXP_C11);
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C10));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C9));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C8));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C7));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C6));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C5));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C4));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C3));
    return VOP(fma)(p, r, VOP(set1)(FASTCE_EXP_C2));
#else
    V p = VOP(set1)(FASTCE_EXPF_C6);
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXPF_C5));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXPF_C4));
    p = VOP(fma)(p, r, VOP(set1)(FASTCE_EXPF_C3));
    return VOP(fma)(p, r, VOP(set1)(0.5f));
#endif
}

#ifdef FASTCE_F64
#define EXP_LO FASTCE_EXP_LO
#define EXP_SHIFTER FASTCE_EXP_SHIFTER
#define EXP_LOG2E FASTCE_EXP_LOG2E
#define EXP_LN2_HI FASTCE_EXP_LN2_HI
#define EXP_LN2_LO FASTCE_EXP_LN2_LO
#define EXP_LN2 FASTCE_EXP_LN2
#else
#define EXP_LO FASTCE_EXPF_LO
#define EXP_SHIFTER FASTCE_EXPF_SHIFTER
#define EXP_LOG2E FASTCE_EXPF_LOG2E
#define EXP_LN2_HI FASTCE_EXPF_LN2_HI
#define EXP_LN2_LO FASTCE_EXPF_LN2_LO
#define EXP_LN2 FASTCE_EXPF_LN2
#endif

/* exp(x), 0 below EXP_LO, NaN for NaN */
VINLINE V KNAME(vexp_neg)(V x) {
    const V lo = VOP(set1)(EXP_LO), shifter = VOP(set1)(EXP_SHIFTER);
    V xc = VOP(max)(lo, x); /* lo first: a NaN x stays NaN */
    V t = VOP(fma)(xc, VOP(set1)(EXP_LOG2E), shifter);
    V n = VOP(sub)(t, shifter);
    V r = VOP(fnma)(n, VOP(set1)(EXP_LN2_HI), xc);
    r = VOP(fnma)(n, VOP(set1)(EXP_LN2_LO), r);
    V p = VOP(add)(VOP(fma)(KNAME(vexp_poly)(r), VOP(mul)(r, r), r), VOP(set1)(1));
    return VOP(scale_pow2_unless)(VOP(lt)(x, lo), p, n, t);
}

/* exp(x) for sums: one-step range reduction and no flush below the clamp.
 * The reduction's error is relative to a term of about 2^n (n <= 0): n times
 * ln 2's rounding, a tenth of an ulp per unit of n in double and a fiftieth
 * in float, small beside the summation's own rounding; the unflushed terms
 * below the clamp are smaller than any ulp of the sum, which is at least 1.
 * NaN gives NaN. */
VINLINE V KNAME(vexp_neg_sum)(V x) {
    const V shifter = VOP(set1)(EXP_SHIFTER), one = VOP(set1)(1);
    V xc = VOP(max)(VOP(set1)(EXP_LO), x); /* lo first: a NaN x stays NaN */
    V t = VOP(fma)(xc, VOP(set1)(EXP_LOG2E), shifter);
    V n = VOP(sub)(t, shifter);
    V r = VOP(fnma)(n, VOP(set1)(EXP_LN2), xc);
    V p = VOP(fma)(KNAME(vexp_poly)(r), r, one);
    p = VOP(fma)(p, r, one); /* 1 + r (1 + r P(r)) */
    return VOP(ldexp_shifted)(p, t);
}

/* ---- rows -------------------------------------------------------------------- */

static T KNAME(row_max)(const T *x, ptrdiff_t n) {
    /* four accumulators keep both load ports busy; max(load, acc) keeps acc
     * for a NaN load, so NaN never becomes the maximum */
    const V none = VOP(set1)(-INFINITY);
    V a0 = none, a1 = none, a2 = none, a3 = none;
    ptrdiff_t c = 0;
    for (; c + 4 * L <= n; c += 4 * L) {
        a0 = VOP(max)(VOP(load)(x + c), a0);
        a1 = VOP(max)(VOP(load)(x + c + L), a1);
        a2 = VOP(max)(VOP(load)(x + c + 2 * L), a2);
        a3 = VOP(max)(VOP(load)(x + c + 3 * L), a3);
    }
    for (; c + L <= n; c += L) a0 = VOP(max)(VOP(load)(x + c), a0);
    if (c < n) a0 = VOP(max)(VOP(load_part_or)(x + c, VOP(first)(n - c), none), a0);
    return VOP(hmax)(VOP(max)(VOP(max)(a0, a1), VOP(max)(a2, a3)));
}

/* e = exp(d) added to acc, where d = x - m, for the lanes of in (all of them
 * with full).  With masked, the terms at the maximum (d == 0, exactly 1 each)
 * are counted in ties instead, so that the float lanes never add small terms
 * to 1; a vector without such terms gives the same bits either way. */
VINLINE V KNAME(add_terms)(V acc, V e, V d, M in, int full, int masked, int *ties) {
    if (masked) {
        M at_max = VOP(eq)(d, VOP(zero)());
        if (full) {
            *ties += VOP(count)(at_max);
            return VOP(add)(acc, VOP(drop)(at_max, e));
        }
        at_max = VOP(and_m)(in, at_max);
        *ties += VOP(count)(at_max);
        in = VOP(and_m)(in, VOP(not_m)(at_max));
    }
    return VOP(add)(acc, full ? e : VOP(keep)(in, e));
}

/* One vector of exp(d) added to acc, for the lanes of in, as add_terms */
VINLINE V KNAME(sumexp_step)(V acc, V d, M in, int masked, int *ties) {
    return KNAME(add_terms)(acc, KNAME(vexp_neg_sum)(d), d, in, 0, masked, ties);
}

/* d = x - m, or (x - m) * scale for a row seen through a logit scale
 * (scaled, a constant at each call site): d <= 0 either way for a positive
 * scale, and d == 0 exactly where x == m, so the ties stay exact */
VINLINE V KNAME(shifted)(V x, V vm, V vs, int scaled) {
    V d = VOP(sub)(x, vm);
    return scaled ? VOP(mul)(d, vs) : d;
}

/* sumexp_step for a whole vector */
VINLINE V KNAME(sumexp_full)(V acc, V d, int masked, int *ties) {
    return KNAME(add_terms)(acc, KNAME(vexp_neg_sum)(d), d, VOP(first)(L), 1, masked, ties);
}

/* The vector at c of the next row, for its look-ahead maximum: read from
 * nx, or with nh (float rows of half logits) converted from the bits at nh
 * and stored at nx first, for that row's own turn */
VINLINE V KNAME(ahead_load)(const T *nx, const uint16_t *nh, int bf16, ptrdiff_t c) {
#ifndef FASTCE_F64
    if (nh != NULL) {
        V v = bf16 ? VOP(load_bf16)(nh + c) : VOP(load_f16)(nh + c);
        VOP(store)((T *)nx + c, v);
        return v;
    }
#else
    (void)nh;
    (void)bf16;
#endif
    return VOP(load)(nx + c);
}

/* ahead_load of the count < L elements at c; the other lanes are -inf */
VINLINE V KNAME(ahead_load_part)(const T *nx, const uint16_t *nh, int bf16, ptrdiff_t c,
                                 ptrdiff_t count) {
#ifndef FASTCE_F64
    if (nh != NULL)
        for (ptrdiff_t k = c; k < c + count; k++)
            ((T *)nx)[k] = bf16 ? fastce_bf16_to_f32(nh[k]) : fastce_f16_to_f32(nh[k]);
#else
    (void)nh;
    (void)bf16;
#endif
    return VOP(load_part_or)(nx + c, VOP(first)(count), VOP(set1)(-INFINITY));
}

/* The len half values at nh converted into nx, as ahead_load converts them */
VINLINE void KNAME(convert_ahead)(const T *nx, const uint16_t *nh, int bf16, ptrdiff_t len) {
    ptrdiff_t c = 0;
    for (; c + L <= len; c += L) (void)KNAME(ahead_load)(nx, nh, bf16, c);
    if (c < len) (void)KNAME(ahead_load_part)(nx, nh, bf16, c, len - c);
}

/* The sum of exp(x - m) over a chunk of len <= FASTCE_CHUNK elements, while
 * the same loop takes the maximum of the next row's chunk nx (when nx is not
 * NULL): the sum is bound by the exponential's multiplies and the maximum by
 * loads, so the second comes almost free; so does py = (px - pm) - pl, a
 * waiting row's log_softmax (when px is not NULL).  Only a chunk that
 * reaches m pays for the tie masks (masked).  One sum accumulator: the
 * exponential's constants fill the registers. */
VINLINE double KNAME(chunk_sumexp)(const T *xs, ptrdiff_t len, T m, int masked, const T *nx,
                                   const uint16_t *nh, int bf16, T *next_max, const T *px, T *py,
                                   V pm, V pl, V vs, int scaled) {
    const V vm = VOP(set1)(m), none = VOP(set1)(-INFINITY);
    V acc = VOP(zero)(), n0 = none, n1 = none, n2 = none, n3 = none;
    int ties = 0;
    ptrdiff_t c = 0;
    /* four vectors a step, unless the vocabulary would spill the sum to the
     * stack (its store and reload would lengthen every step) */
    if (nx != NULL && VOP(sum_ahead_unroll) == 4) {
        for (; c + 4 * L <= len; c += 4 * L) {
            for (int u = 0; u < 4; u++)
                acc = KNAME(sumexp_full)(
                    acc, KNAME(shifted)(VOP(load)(xs + c + u * L), vm, vs, scaled), masked, &ties);
            n0 = VOP(max)(KNAME(ahead_load)(nx, nh, bf16, c), n0);
            n1 = VOP(max)(KNAME(ahead_load)(nx, nh, bf16, c + L), n1);
            n2 = VOP(max)(KNAME(ahead_load)(nx, nh, bf16, c + 2 * L), n2);
            n3 = VOP(max)(KNAME(ahead_load)(nx, nh, bf16, c + 3 * L), n3);
            if (px != NULL)
                for (int u = 0; u < 4; u++)
                    VOP(store)(py + c + u * L,
                               VOP(sub)(VOP(sub)(VOP(load)(px + c + u * L), pm), pl));
        }
    }
    for (; c + L <= len; c += L) {
        acc = KNAME(sumexp_full)(acc, KNAME(shifted)(VOP(load)(xs + c), vm, vs, scaled), masked,
                                 &ties);
        if (nx != NULL) n0 = VOP(max)(KNAME(ahead_load)(nx, nh, bf16, c), n0);
        if (px != NULL) VOP(store)(py + c, VOP(sub)(VOP(sub)(VOP(load)(px + c), pm), pl));
    }
    if (c < len) {
        M in = VOP(first)(len - c);
        acc = KNAME(sumexp_step)(acc, KNAME(shifted)(VOP(load_part)(xs + c, in), vm, vs, scaled),
                                 in, masked, &ties);
        if (nx != NULL) n0 = VOP(max)(KNAME(ahead_load_part)(nx, nh, bf16, c, len - c), n0);
        if (px != NULL)
            VOP(store_part)(py + c, in, VOP(sub)(VOP(sub)(VOP(load_part)(px + c, in), pm), pl));
    }
    if (nx != NULL) *next_max = VOP(hmax)(VOP(max)(VOP(max)(n0, n1), VOP(max)(n2, n3)));
    return (double)ties + VOP(hsum)(acc);
}

/* One vector v of a row whose maximum is m, at offset at of the row, for
 * evaluation, over the lanes of in (all with full); d = (x - m) * scale with
 * scaled.  With sum, exp(d) joins acc (and ties) as chunk_sumexp adds it,
 * sqn += exp(d)^2, and where exp(d) is above the exponential's floor (so a
 * -inf logit adds nothing, never NaN) en += exp(d) d, or with pair (v a
 * reference row's, vo the model's, and no sqn) en += exp(d) (v - vo); with
 * seek, *arg becomes the first index of m once a vector holds it; with
 * t >= 0, *rank counts the classes above the target's logit (vt) and those
 * equal to it before t. */
VINLINE void KNAME(eval_at)(V v, M in, int full, ptrdiff_t at, V vm, V vs, int scaled, int sum,
                            int masked, int seek, int pair, V vo, ptrdiff_t t, V vt, V *acc,
                            int *ties, V *en, V *sqn, ptrdiff_t *arg, ptrdiff_t *rank) {
    if (sum) {
        V d = KNAME(shifted)(v, vm, vs, scaled), ev = KNAME(vexp_neg_sum)(d);
        *acc = KNAME(add_terms)(*acc, ev, d, in, full, masked, ties);
        M live = VOP(gt)(d, VOP(set1)(EXP_LO));
        if (!full) {
            live = VOP(and_m)(in, live);
            ev = VOP(keep)(in, ev);
        }
        if (pair) {
            *en = VOP(add)(*en, VOP(keep)(live, VOP(mul)(ev, VOP(sub)(v, vo))));
        } else {
            *en = VOP(add)(*en, VOP(keep)(live, VOP(mul)(ev, d)));
            *sqn = VOP(fma)(ev, ev, *sqn);
        }
    }
    if (seek && *arg < 0) {
        M hit = VOP(eq)(v, vm);
        int first = VOP(first_set)(full ? hit : VOP(and_m)(in, hit));
        if (first >= 0) *arg = at + first;
    }
    if (t >= 0) {
        ptrdiff_t before = t - at; /* lanes before the target */
        /* a vector wholly before the target takes one compare, not three */
        M over = before >= L ? VOP(ge)(v, vt) : VOP(gt)(v, vt);
        if (before > 0 && before < L)
            over = VOP(or_m)(over, VOP(and_m)(VOP(eq)(v, vt), VOP(first)(before)));
        *rank += VOP(count)(full ? over : VOP(and_m)(in, over));
    }
}

/* eval_at over a chunk xs[0:len) starting at offset start of its row (with
 * pair, beside the model's os[0:len)); with sum, returns the chunk's sum of
 * exp(d) with the bits chunk_sumexp gives.  Meanwhile (nx not NULL) the
 * maximum of nx[0:len) goes to *next_max, converted from the half bits nh
 * first as ahead_load converts them, or without next_max the caches are
 * asked for nx[0:len). */
VINLINE double KNAME(chunk_eval)(const T *xs, ptrdiff_t len, ptrdiff_t start, const T *nx,
                                 const uint16_t *nh, int bf16, T *next_max, V vm, V vs, int scaled,
                                 int sum, int masked, int seek, int pair, const T *os, ptrdiff_t t,
                                 V vt, double *e, double *sq, ptrdiff_t *arg, ptrdiff_t *rank) {
    V acc = VOP(zero)(), en = VOP(zero)(), sqn = VOP(zero)(), vo = VOP(zero)();
    V nm = VOP(set1)(-INFINITY);
    int ties = 0;
    ptrdiff_t c = 0;
    for (; c + L <= len; c += L) {
        if (nx != NULL && next_max != NULL)
            nm = VOP(max)(KNAME(ahead_load)(nx, nh, bf16, c), nm);
        else if (nx != NULL)
            fastce_prefetch(nx + c);
        if (pair) vo = VOP(load)(os + c);
        KNAME(eval_at)(VOP(load)(xs + c), VOP(first)(L), 1, start + c, vm, vs, scaled, sum, masked,
                       seek, pair, vo, t, vt, &acc, &ties, &en, &sqn, arg, rank);
    }
    if (c < len) {
        M in = VOP(first)(len - c);
        if (nx != NULL && next_max != NULL)
            nm = VOP(max)(KNAME(ahead_load_part)(nx, nh, bf16, c, len - c), nm);
        if (pair) vo = VOP(load_part)(os + c, in);
        KNAME(eval_at)(VOP(load_part)(xs + c, in), in, 0, start + c, vm, vs, scaled, sum, masked,
                       seek, pair, vo, t, vt, &acc, &ties, &en, &sqn, arg, rank);
    }
    if (nx != NULL && next_max != NULL) *next_max = VOP(hmax)(nm);
    *e += VOP(hsum)(en);
    *sq += VOP(hsum)(sqn);
    return sum ? (double)ties + VOP(hsum)(acc) : 0.0;
}

/* What long_row_sum carries from one chunk of a row to the next: the maximum
 * so far, the sum of exp(d) below it, and whether a NaN was seen. */
typedef struct {
    T m;
    double s;
    int saw_nan;
} KNAME(long_row_t);
#define LONG_ROW KNAME(long_row_t)

VINLINE void KNAME(long_row_start)(LONG_ROW *row) {
    row->m = -INFINITY;
    row->s = 0.0;
    row->saw_nan = 0;
}

/* long_row_sum's work on one chunk xs[0:len) starting at offset start of its
 * row (see there; os the same chunk of the model's row, with pair; nx asked
 * of the caches) */
VINLINE void KNAME(long_row_chunk)(LONG_ROW *row, const T *xs, ptrdiff_t len, ptrdiff_t start,
                                   const T *nx, V vs, T scale, int scaled, int eval, int pair,
                                   const T *os, ptrdiff_t t, V vt, double *e, double *sq,
                                   ptrdiff_t *arg, ptrdiff_t *rank) {
    const V no_pending = VOP(zero)(); /* chunk_sumexp writes no waiting row here */
    T cm = KNAME(row_max)(xs, len);
    if (cm == -INFINITY) {
        /* only -inf (adds nothing) or NaN (must reach the result) */
        for (ptrdiff_t c = 0; c < len; c++)
            if (xs[c] != xs[c]) row->saw_nan = 1;
        if (eval)
            KNAME(chunk_eval)(xs, len, start, NULL, NULL, 0, NULL, vt, vs, scaled, 0, 0, 0, 0, NULL,
                              t, vt, e, sq, arg, rank);
        return;
    }
    if (cm > row->m) {
        if (row->s != 0.0) {
            double shift =
                scaled ? ((double)row->m - (double)cm) * scale : (double)row->m - (double)cm;
            double f = exp(shift);
            if (eval) {
                *e = pair ? f * *e : f * (*e + shift * row->s);
                *sq *= f * f;
            }
            row->s *= f;
        }
        row->m = cm;
        if (eval) *arg = -1;
    }
    const T m = row->m;
    const V vm = VOP(set1)(m);
    if (eval)
        row->s += cm < m ? KNAME(chunk_eval)(xs, len, start, nx, NULL, 0, NULL, vm, vs, scaled, 1,
                                             0, 0, pair, os, t, vt, e, sq, arg, rank)
                         : KNAME(chunk_eval)(xs, len, start, nx, NULL, 0, NULL, vm, vs, scaled, 1,
                                             1, 1, pair, os, t, vt, e, sq, arg, rank);
    else
        row->s += cm < m ? KNAME(chunk_sumexp)(xs, len, m, 0, NULL, NULL, 0, NULL, NULL, NULL,
                                               no_pending, no_pending, vs, scaled)
                         : KNAME(chunk_sumexp)(xs, len, m, 1, NULL, NULL, 0, NULL, NULL, NULL,
                                               no_pending, no_pending, vs, scaled);
}

/* The sum long_row_sum returns once every chunk is in, and the maximum */
VINLINE double KNAME(long_row_end)(const LONG_ROW *row, T *max_out) {
    *max_out = row->m;
    return isinf(row->m) || row->saw_nan ? NAN : row->s;
}

/* A row longer than a cached one, read once: a running maximum, one chunk
 * at a time, sets *max_out and returns the sum of exp(d), d = (x - max) *
 * scale with scaled (NaN for a NaN logit, a +inf one, or nothing above -inf).
 * With eval, chunk_eval takes each chunk instead of chunk_sumexp (the same
 * sum, to the bit), its terms rescaled as the maximum rises: exp(d + shift) =
 * f exp(d), so e becomes f (e + shift s) and sq f^2 sq (with pair, beside
 * the model's row other, e becomes f e); the first index of the maximum is
 * sought again in each chunk that raises it, and the rank (t >= 0) needs no
 * maximum.  With nh (float rows of half logits), each chunk of the next row
 * (next, as long) is converted from the half bits nh beside the same chunk
 * of this one, those bits asked for four chunks ahead. */
VINLINE double KNAME(long_row_sum)(const T *x, ptrdiff_t n, T *max_out, T scale, int scaled,
                                   int eval, int pair, const T *other, ptrdiff_t t, V vt, double *e,
                                   double *sq, ptrdiff_t *arg, ptrdiff_t *rank, const T *next,
                                   const uint16_t *nh, int bf16) {
    const V vs = VOP(set1)(scale);
    LONG_ROW row;
    KNAME(long_row_start)(&row);
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {
        ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;
        const T *xs = x + start;
        if (nh != NULL) {
            if (n - start > 4 * FASTCE_CHUNK)
                for (ptrdiff_t b = 0; b < FASTCE_CHUNK; b += 32)
                    fastce_prefetch(nh + start + 4 * FASTCE_CHUNK + b);
            KNAME(convert_ahead)(next + start, nh + start, bf16, len);
        }
        /* the chunk four ahead asked for while this one is computed: one
         * chunk's arithmetic is shorter than a read from memory (a prefetch
         * past the row never faults) */
        const T *nx = n - start > 4 * FASTCE_CHUNK ? xs + 4 * FASTCE_CHUNK : NULL;
        KNAME(long_row_chunk)(&row, xs, len, start, nx, vs, scale, scaled, eval, pair,
                              pair ? other + start : NULL, t, vt, e, sq, arg, rank);
    }
    return KNAME(long_row_end)(&row, max_out);
}

static void KNAME(row_pending)(fastce_ahead_t *ahead, ptrdiff_t n);

/* row_in_cache's sweep of a row whose chunk maxima are chunk_max and maximum
 * m (see there); with nh, next's values come converted from these half bits */
VINLINE double KNAME(in_cache_sweep)(const T *x, ptrdiff_t n, const T *chunk_max, T m,
                                     const T *next, const uint16_t *nh, int bf16,
                                     fastce_ahead_t *ahead, const T *px, T *py, V pm, V pl, V vs,
                                     int scaled) {
    double s = 0.0;
    ptrdiff_t k = 0;
    /* chunk maxima are never NaN, so a chunk below m has no tie; each call
     * site has constant flags, so each variant of the loop is compiled apart */
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK, k++) {
        ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;
        const T *nx = next != NULL ? next + start : NULL;
        const uint16_t *nhs = nh != NULL ? nh + start : NULL;
        T nm = 0;
        if (py != NULL) {
            const T *pxs = px + start;
            T *pys = py + start;
            s += chunk_max[k] < m ? KNAME(chunk_sumexp)(x + start, len, m, 0, nx, nhs, bf16, &nm,
                                                        pxs, pys, pm, pl, vs, scaled)
                                  : KNAME(chunk_sumexp)(x + start, len, m, 1, nx, nhs, bf16, &nm,
                                                        pxs, pys, pm, pl, vs, scaled);
        } else if (nx != NULL) {
            s += chunk_max[k] < m ? KNAME(chunk_sumexp)(x + start, len, m, 0, nx, nhs, bf16, &nm,
                                                        NULL, NULL, pm, pl, vs, scaled)
                                  : KNAME(chunk_sumexp)(x + start, len, m, 1, nx, nhs, bf16, &nm,
                                                        NULL, NULL, pm, pl, vs, scaled);
        } else {
            s += chunk_max[k] < m ? KNAME(chunk_sumexp)(x + start, len, m, 0, NULL, NULL, 0, NULL,
                                                        NULL, NULL, pm, pl, vs, scaled)
                                  : KNAME(chunk_sumexp)(x + start, len, m, 1, NULL, NULL, 0, NULL,
                                                        NULL, NULL, pm, pl, vs, scaled);
        }
        if (nx != NULL) ahead->chunk_max[k] = nm;
    }
    return s;
}

/* A row that fits in cache, read twice from it: its chunk maxima (from ahead
 * when the previous row left them there), then its sum of exp(x - max) (with
 * scaled, of exp((x - max) * scale), scale in vs), in the loop that leaves
 * next's chunk maxima in ahead (when next is not NULL; converting next from
 * ahead->next_half first when that is set) and writes the log_softmax of the
 * row waiting there, if any. */
VINLINE double KNAME(row_in_cache)(const T *x, ptrdiff_t n, T *max_out, const T *next,
                                   fastce_ahead_t *ahead, V vs, int scaled) {
    T chunk_max[FASTCE_ROW_IN_CACHE / FASTCE_CHUNK];
    T m = -INFINITY;
    ptrdiff_t k = 0;
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK, k++) {
        chunk_max[k] =
            ahead->valid
                ? (T)ahead->chunk_max[k]
                : KNAME(row_max)(x + start, n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK);
        m = chunk_max[k] > m ? chunk_max[k] : m;
    }
    ahead->valid = 0;
    *max_out = m;
    /* an infinite maximum, or nothing above -inf: NaN, as exp(x - max) gives */
    if (isinf(m) || (ahead->pending_y != NULL && ahead->pending_op != FASTCE_PENDING_SHIFT))
        KNAME(row_pending)(ahead, n);
    if (isinf(m)) return NAN;
    const T *px = (const T *)ahead->pending_x;
    T *py = (T *)ahead->pending_y;
    const V pm = VOP(set1)(py != NULL ? (T)ahead->pending_a : 0),
            pl = VOP(set1)(py != NULL ? (T)ahead->pending_b : 0);
    ahead->pending_y = NULL;
    double s;
    if (next != NULL && ahead->next_half != NULL) {
        s = KNAME(in_cache_sweep)(x, n, chunk_max, m, next, ahead->next_half, ahead->next_bf16,
                                  ahead, px, py, pm, pl, vs, scaled);
        ahead->next_half = NULL;
    } else {
        s = KNAME(in_cache_sweep)(x, n, chunk_max, m, next, NULL, 0, ahead, px, py, pm, pl, vs,
                                  scaled);
    }
    ahead->valid = next != NULL;
    return s;
}

/* Sets *max_out to the row maximum and returns the sum of exp(x - max) (with
 * scaled, of exp((x - max) * scale), for a positive scale); a NaN logit, a
 * +inf one, or a row with nothing above -inf gives NaN. */
VINLINE double KNAME(row_max_sumexp_of)(const T *x, ptrdiff_t n, T *max_out, T scale, int scaled) {
    const V vs = VOP(set1)(scale);
    if (n <= FASTCE_ROW_IN_CACHE) {
        fastce_ahead_t none;
        none.valid = 0;
        none.pending_y = NULL;
        none.next_half = NULL;
        return KNAME(row_in_cache)(x, n, max_out, NULL, &none, vs, scaled);
    }
    double e, sq;
    ptrdiff_t arg, rank;
    return KNAME(long_row_sum)(x, n, max_out, scale, scaled, 0, 0, NULL, -1, vs, &e, &sq, &arg,
                               &rank, NULL, NULL, 0);
}

/* row_max_sumexp_of, each variant compiled apart: the sum of exp((x - max) *
 * scale), where a scale of 1 costs nothing over none */
static double KNAME(row_max_sumexp)(const T *x, ptrdiff_t n, T *max_out, T scale) {
    if (scale == 1) return KNAME(row_max_sumexp_of)(x, n, max_out, 1, 0);
    return KNAME(row_max_sumexp_of)(x, n, max_out, scale, 1);
}

/* row_max_sumexp, with the look-ahead of row_in_cache for the rows that fit
 * in cache; the same bits as row_max_sumexp. */
static double KNAME(row_max_sumexp_ahead)(const T *x, ptrdiff_t n, T *max_out, const T *next,
                                          fastce_ahead_t *ahead, T scale) {
    if (n <= FASTCE_ROW_IN_CACHE) {
        if (scale == 1) return KNAME(row_in_cache)(x, n, max_out, next, ahead, VOP(zero)(), 0);
        return KNAME(row_in_cache)(x, n, max_out, next, ahead, VOP(set1)(scale), 1);
    }
    ahead->valid = 0;
    KNAME(row_pending)(ahead, n);
    if (next != NULL && ahead->next_half != NULL) {
        /* a long row of half logits: the next one converted beside it */
        const uint16_t *nh = ahead->next_half;
        const V no_target = VOP(zero)();
        double e, sq;
        ptrdiff_t arg, rank;
        ahead->next_half = NULL;
        if (scale == 1)
            return KNAME(long_row_sum)(x, n, max_out, 1, 0, 0, 0, NULL, -1, no_target, &e, &sq,
                                       &arg, &rank, next, nh, ahead->next_bf16);
        return KNAME(long_row_sum)(x, n, max_out, scale, 1, 0, 0, NULL, -1, no_target, &e, &sq,
                                   &arg, &rank, next, nh, ahead->next_bf16);
    }
    return KNAME(row_max_sumexp)(x, n, max_out, scale);
}

/* The roof the forward pass is measured against: a plain sum of exp(x). */
static double KNAME(sum_exp)(const T *x, ptrdiff_t n) {
    V a0 = VOP(zero)(), a1 = VOP(zero)();
    ptrdiff_t c = 0;
    for (; c + 2 * L <= n; c += 2 * L) {
        a0 = VOP(add)(a0, KNAME(vexp_neg_sum)(VOP(load)(x + c)));
        a1 = VOP(add)(a1, KNAME(vexp_neg_sum)(VOP(load)(x + c + L)));
    }
    for (; c < n; c += L) {
        M in = VOP(first)(n - c);
        a0 = VOP(add)(a0, VOP(keep)(in, KNAME(vexp_neg_sum)(VOP(load_part)(x + c, in))));
    }
    return VOP(hsum)(VOP(add)(a0, a1));
}

/* sum of (x - m): the smoothing term, without cancellation against a large m */
static double KNAME(row_sum_shifted)(const T *x, ptrdiff_t n, T m) {
    const V vm = VOP(set1)(m);
    double total = 0.0;
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {
        ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;
        const T *xs = x + start;
        V acc = VOP(zero)();
        ptrdiff_t c = 0;
        for (; c + L <= len; c += L) acc = VOP(add)(acc, VOP(sub)(VOP(load)(xs + c), vm));
        if (c < len) {
            M in = VOP(first)(len - c);
            acc = VOP(add)(acc, VOP(keep)(in, VOP(sub)(VOP(load_part)(xs + c, in), vm)));
        }
        double part = VOP(hsum)(acc);
        if (!isfinite(part)) {
            /* a difference, or the working precision's sum, overflowed (or a
             * logit is not finite): the chunk in float64, as every strided
             * and tiled layout computes it, so that no layout gives inf where
             * another gives the finite answer */
            part = 0.0;
            for (c = 0; c < len; c++) part += (double)xs[c] - (double)m;
        }
        total += part;
    }
    return total;
}

/* The elements of y to store plainly before its streamed vectors, which must
 * start at an address aligned to the vector's width: fewer than a vector, or
 * all n when no element of y is so aligned. */
VINLINE ptrdiff_t KNAME(stream_head)(const T *y, ptrdiff_t n) {
    const uintptr_t width = sizeof(T) * (uintptr_t)L, at = (uintptr_t)y;
    if (at % sizeof(T) != 0) return n;
    ptrdiff_t head = (ptrdiff_t)(((width - at % width) % width) / sizeof(T));
    return head < n ? head : n;
}

VINLINE V KNAME(scaled_exp_of)(V x, V vm, V vx, int scaled, V vs, V vo) {
    return VOP(sub)(VOP(mul)(vs, KNAME(vexp_neg)(KNAME(shifted)(x, vm, vx, scaled))), vo);
}

VINLINE void KNAME(row_scaled_exp_of)(const T *x, ptrdiff_t n, T m, T xscale, int scaled, T scale,
                                      T offset, T *y, int stream) {
    const V vm = VOP(set1)(m), vx = VOP(set1)(xscale), vs = VOP(set1)(scale),
            vo = VOP(set1)(offset);
    ptrdiff_t c = 0;
    if (stream) {
        c = KNAME(stream_head)(y, n);
        if (c > 0) {
            M in = VOP(first)(c);
            VOP(store_part)(y, in,
                            KNAME(scaled_exp_of)(VOP(load_part)(x, in), vm, vx, scaled, vs, vo));
        }
        for (; c + L <= n; c += L)
            VOP(stream)(y + c, KNAME(scaled_exp_of)(VOP(load)(x + c), vm, vx, scaled, vs, vo));
    } else {
        for (; c + L <= n; c += L)
            VOP(store)(y + c, KNAME(scaled_exp_of)(VOP(load)(x + c), vm, vx, scaled, vs, vo));
    }
    if (c < n) {
        M in = VOP(first)(n - c);
        VOP(store_part)(y + c, in,
                        KNAME(scaled_exp_of)(VOP(load_part)(x + c, in), vm, vx, scaled, vs, vo));
    }
}

/* y = scale * exp((x - m) * xscale) - offset, xscale positive; y may be x.
 * With stream, whole vectors go past the caches: for outputs far larger
 * than them, which would otherwise be read in before they are overwritten.
 * The caller orders them (stream_fence) before the output is read. */
static void KNAME(row_scaled_exp)(const T *x, ptrdiff_t n, T m, T xscale, T scale, T offset, T *y,
                                  int stream) {
    if (xscale == 1)
        KNAME(row_scaled_exp_of)(x, n, m, 1, 0, scale, offset, y, stream);
    else
        KNAME(row_scaled_exp_of)(x, n, m, xscale, 1, scale, offset, y, stream);
}

VINLINE void KNAME(row_scale)(T *y, ptrdiff_t n, T r) {
    const V vr = VOP(set1)(r);
    ptrdiff_t c = 0;
    for (; c + L <= n; c += L) VOP(store)(y + c, VOP(mul)(vr, VOP(load)(y + c)));
    if (c < n) {
        M in = VOP(first)(n - c);
        VOP(store_part)(y + c, in, VOP(mul)(vr, VOP(load_part)(y + c, in)));
    }
}

/* exp(x - m) of one chunk of row_softmax's row, stored in ys and summed: with
 * masked (a chunk that reaches m), the terms at the maximum are counted apart
 * as chunk_sumexp counts them; a chunk below m has none, and skips the masks.
 * The same loop takes the maximum of next's chunk nx (when not NULL; with
 * nh, converted from those half bits first, as ahead_load does) and scales a
 * waiting row's chunk py by pr (when not NULL). */
VINLINE double KNAME(chunk_softmax)(const T *xs, ptrdiff_t len, V vm, T *ys, int masked,
                                    const T *nx, const uint16_t *nh, int bf16, T *next_max, T *py,
                                    V pr) {
    const V none = VOP(set1)(-INFINITY);
    V acc = VOP(zero)(), nm = none;
    int ties = 0;
    ptrdiff_t c = 0;
    for (; c + L <= len; c += L) {
        V d = VOP(sub)(VOP(load)(xs + c), vm);
        V e = KNAME(vexp_neg)(d);
        VOP(store)(ys + c, e);
        if (masked) {
            M at_max = VOP(eq)(d, VOP(zero)());
            ties += VOP(count)(at_max);
            e = VOP(drop)(at_max, e);
        }
        acc = VOP(add)(acc, e);
        if (nx != NULL) nm = VOP(max)(KNAME(ahead_load)(nx, nh, bf16, c), nm);
        if (py != NULL) VOP(store)(py + c, VOP(mul)(pr, VOP(load)(py + c)));
    }
    if (c < len) {
        M in = VOP(first)(len - c);
        V d = VOP(sub)(VOP(load_part)(xs + c, in), vm);
        V e = KNAME(vexp_neg)(d);
        VOP(store_part)(ys + c, in, e);
        M at_max = VOP(and_m)(in, VOP(eq)(d, VOP(zero)()));
        ties += VOP(count)(at_max);
        acc = VOP(add)(acc, VOP(keep)(VOP(and_m)(in, VOP(not_m)(at_max)), e));
        if (nx != NULL) nm = VOP(max)(KNAME(ahead_load_part)(nx, nh, bf16, c, len - c), nm);
        if (py != NULL) VOP(store_part)(py + c, in, VOP(mul)(pr, VOP(load_part)(py + c, in)));
    }
    if (nx != NULL) *next_max = VOP(hmax)(nm);
    return (double)ties + VOP(hsum)(acc);
}

/* softmax of a row of at most FASTCE_ROW_IN_CACHE elements, each exponential
 * computed once: exp(x - m) is stored in y and summed (the terms at the
 * maximum counted apart, as row_max_sumexp does), then y is scaled by 1 / sum
 * while it is in cache.  The row's chunk maxima come from ahead when the
 * previous row left them there, and next's (another row, or NULL) are taken
 * in the loop that sums this one, as row_in_cache does.  With ahead, the
 * scaling waits there (FASTCE_PENDING_SCALE) and is done in the next row's
 * loop, or by row_pending; the row waiting there before is scaled in this
 * row's loop.  A NaN logit, or an infinite maximum, gives NaN everywhere; y
 * may be x. */
static void KNAME(row_softmax)(const T *x, ptrdiff_t n, T *y, const T *next,
                               fastce_ahead_t *ahead) {
    fastce_ahead_t own;
    fastce_ahead_t *state = ahead;
    if (state == NULL) {
        own.valid = 0;
        own.pending_y = NULL;
        own.next_half = NULL;
        state = &own;
    }
    if (state->pending_y != NULL && state->pending_op != FASTCE_PENDING_SCALE)
        KNAME(row_pending)(state, n);
    T *py = (T *)state->pending_y;
    const V pr = VOP(set1)(py != NULL ? (T)state->pending_a : 0);
    state->pending_y = NULL;
    T chunk_max[FASTCE_ROW_IN_CACHE / FASTCE_CHUNK];
    T m = -INFINITY;
    ptrdiff_t k = 0;
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK, k++) {
        chunk_max[k] =
            state->valid
                ? (T)state->chunk_max[k]
                : KNAME(row_max)(x + start, n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK);
        m = chunk_max[k] > m ? chunk_max[k] : m;
    }
    state->valid = 0;
    const V vm = VOP(set1)(m);
    const uint16_t *nh = next != NULL ? state->next_half : NULL;
    const int bf16 = state->next_bf16;
    double s = 0.0;
    k = 0;
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK, k++) {
        ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;
        const T *nx = next != NULL ? next + start : NULL;
        const uint16_t *nhs = nh != NULL ? nh + start : NULL;
        T *pys = py != NULL ? py + start : NULL;
        T nm = 0;
        /* a NaN chunk maximum compares false: that chunk keeps the masks */
        s += chunk_max[k] < m ? KNAME(chunk_softmax)(x + start, len, vm, y + start, 0, nx, nhs,
                                                     bf16, &nm, pys, pr)
                              : KNAME(chunk_softmax)(x + start, len, vm, y + start, 1, nx, nhs,
                                                     bf16, &nm, pys, pr);
        if (next != NULL) state->chunk_max[k] = nm;
    }
    if (nh != NULL) state->next_half = NULL;
    state->valid = next != NULL;
    T r = isinf(m) ? (T)NAN : (T)(1.0 / s);
    if (ahead == NULL) {
        KNAME(row_scale)(y, n, r);
        return;
    }
    ahead->pending_op = FASTCE_PENDING_SCALE;
    ahead->pending_x = y;
    ahead->pending_y = y;
    ahead->pending_a = r;
}

/* y = (x - m) - log_s; y may be x; stream as row_scaled_exp */
static void KNAME(row_shift)(const T *x, ptrdiff_t n, T m, T log_s, T *y, int stream) {
    const V vm = VOP(set1)(m), vl = VOP(set1)(log_s);
    ptrdiff_t c = 0;
    if (stream) {
        c = KNAME(stream_head)(y, n);
        if (c > 0) {
            M in = VOP(first)(c);
            VOP(store_part)(y, in, VOP(sub)(VOP(sub)(VOP(load_part)(x, in), vm), vl));
        }
        for (; c + L <= n; c += L) VOP(stream)(y + c, VOP(sub)(VOP(sub)(VOP(load)(x + c), vm), vl));
    } else {
        for (; c + L <= n; c += L) VOP(store)(y + c, VOP(sub)(VOP(sub)(VOP(load)(x + c), vm), vl));
    }
    if (c < n) {
        M in = VOP(first)(n - c);
        VOP(store_part)(y + c, in, VOP(sub)(VOP(sub)(VOP(load_part)(x + c, in), vm), vl));
    }
}

/* Writes the row waiting in ahead, if any (see fastce_ahead_t); n is its length. */
static void KNAME(row_pending)(fastce_ahead_t *ahead, ptrdiff_t n) {
    T *py = (T *)ahead->pending_y;
    if (py == NULL) return;
    ahead->pending_y = NULL;
    if (ahead->pending_op == FASTCE_PENDING_SHIFT)
        KNAME(row_shift)((const T *)ahead->pending_x, n, (T)ahead->pending_a, (T)ahead->pending_b,
                         py, 0);
    else
        KNAME(row_scale)(py, n, (T)ahead->pending_a);
}

/* exp(d) d from e = exp(d), 0 where e is 0: a -inf logit adds nothing, never NaN */
VINLINE V KNAME(entropy_term)(V e, V d) {
    return VOP(keep)(VOP(gt)(e, VOP(zero)()), VOP(mul)(e, d));
}

VINLINE double KNAME(row_eval_terms_of)(const T *x, ptrdiff_t n, const T *next,
                                        fastce_ahead_t *ahead, const uint16_t *nh, int bf16,
                                        T *max_out, T scale, int scaled, int pair, const T *other,
                                        ptrdiff_t t, T xt, double *e_out, double *sq_out,
                                        ptrdiff_t *arg_out, ptrdiff_t *rank_out) {
    const V vs = VOP(set1)(scale), vt = VOP(set1)(xt);
    ptrdiff_t arg = -1, rank = 0;
    double s = 0.0, e = 0.0, sq = 0.0;
    T m = -INFINITY;
    if (n > FASTCE_ROW_IN_CACHE) {
        if (ahead != NULL) ahead->valid = 0;
        s = KNAME(long_row_sum)(x, n, &m, scale, scaled, 1, pair, other, t, vt, &e, &sq, &arg,
                                &rank, next, nh, bf16);
        if (nh != NULL) ahead->next_half = NULL;
    } else {
        /* the maxima of its chunks first, as row_in_cache takes them (from
         * ahead when the row before left them there) */
        T chunk_max[FASTCE_ROW_IN_CACHE / FASTCE_CHUNK];
        ptrdiff_t k = 0;
        for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK, k++) {
            chunk_max[k] = ahead != NULL && ahead->valid
                               ? (T)ahead->chunk_max[k]
                               : KNAME(row_max)(x + start, n - start < FASTCE_CHUNK ? n - start
                                                                                    : FASTCE_CHUNK);
            m = chunk_max[k] > m ? chunk_max[k] : m;
        }
        if (ahead != NULL) ahead->valid = 0;
        const V vm = VOP(set1)(m);
        k = 0;
        for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK, k++) {
            ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;
            const T *nx = next != NULL ? next + start : NULL;
            const uint16_t *nhs = nh != NULL ? nh + start : NULL;
            const T *os = pair ? other + start : NULL;
            /* next's chunk maximum, with ahead; else next is only asked for */
            T nm = 0, *nmp = ahead != NULL ? &nm : NULL;
            if (isinf(m)) /* no sum, as below; the first index of m and the rank */
                KNAME(chunk_eval)(x + start, len, start, nx, nhs, bf16, nmp, vm, vs, scaled, 0, 0,
                                  1, 0, NULL, t, vt, &e, &sq, &arg, &rank);
            else /* only a chunk that reaches m holds ties and the first index of m */
                s +=
                    chunk_max[k] < m
                        ? KNAME(chunk_eval)(x + start, len, start, nx, nhs, bf16, nmp, vm, vs,
                                            scaled, 1, 0, 0, pair, os, t, vt, &e, &sq, &arg, &rank)
                        : KNAME(chunk_eval)(x + start, len, start, nx, nhs, bf16, nmp, vm, vs,
                                            scaled, 1, 1, 1, pair, os, t, vt, &e, &sq, &arg, &rank);
            if (ahead != NULL && nx != NULL) ahead->chunk_max[k] = nm;
        }
        if (ahead != NULL && next != NULL) {
            ahead->valid = 1;
            if (nh != NULL) ahead->next_half = NULL;
        }
        if (isinf(m)) s = NAN; /* as exp(x - max) gives */
    }
    *max_out = m;
    *e_out = e;
    *sq_out = sq;
    *arg_out = arg;
    *rank_out = rank;
    return s;
}

/* What evaluation needs from a row of n contiguous classes seen through a
 * positive logit scale (1: as it is): sets *max_out to its maximum m and
 * returns s = sum exp(d), d = (x - m) * scale, with the bits row_max_sumexp
 * gives (so the loss equals cross_entropy's); beside it e = sum exp(d) d,
 * sq = sum exp(d)^2, the first index of m (-1: none), and the target's rank,
 * the classes above the target's logit xt plus those equal to it before the
 * target t (t < 0: no rank), which no positive scale changes.  A row that
 * fits in cache is read once after its maxima, while the caches are asked for
 * the row next (NULL: none), or with ahead, as row_in_cache does, its maxima
 * come from there when the row before left them, and next's are left there
 * (next converted from ahead->next_half first when that is set); a longer
 * row is read once.
 *
 * With other (not NULL), x is a reference model's row (scale 1, t < 0) and
 * other the model's row: e = sum_c exp(x_c - m) (x_c - other_c) instead,
 * which gives KL(p_x || p_other) = e / s + lse(other) - lse(x), and no sq. */
static double KNAME(row_eval_terms)(const T *x, ptrdiff_t n, const T *next, fastce_ahead_t *ahead,
                                    const T *other, T *max_out, T scale, ptrdiff_t t, T xt,
                                    double *e_out, double *sq_out, ptrdiff_t *arg_out,
                                    ptrdiff_t *rank_out) {
    if (other != NULL)
        return KNAME(row_eval_terms_of)(x, n, next, ahead, NULL, 0, max_out, 1, 0, 1, other, -1, 0,
                                        e_out, sq_out, arg_out, rank_out);
    if (ahead != NULL && next != NULL && ahead->next_half != NULL) {
        if (scale == 1)
            return KNAME(row_eval_terms_of)(x, n, next, ahead, ahead->next_half, ahead->next_bf16,
                                            max_out, 1, 0, 0, NULL, t, xt, e_out, sq_out, arg_out,
                                            rank_out);
        return KNAME(row_eval_terms_of)(x, n, next, ahead, ahead->next_half, ahead->next_bf16,
                                        max_out, scale, 1, 0, NULL, t, xt, e_out, sq_out, arg_out,
                                        rank_out);
    }
    if (scale == 1)
        return KNAME(row_eval_terms_of)(x, n, next, ahead, NULL, 0, max_out, 1, 0, 0, NULL, t, xt,
                                        e_out, sq_out, arg_out, rank_out);
    return KNAME(row_eval_terms_of)(x, n, next, ahead, NULL, 0, max_out, scale, 1, 0, NULL, t, xt,
                                    e_out, sq_out, arg_out, rank_out);
}

/* A row longer than a cached one of the model (x, seen through a positive
 * scale) and the same row of a reference model (r), a chunk of each in turn,
 * so that the reference's cross terms read the model's chunk from the
 * caches rather than from memory: returns the model's sum and sets its
 * terms as row_eval_terms does for x, and *ref as row_eval_terms with other
 * = x gives the reference's, each to the bit. */
VINLINE double KNAME(long_pair_terms_of)(const T *x, const T *r, ptrdiff_t n, T *max_out, T scale,
                                         int scaled, ptrdiff_t t, T xt, double *e_out,
                                         double *sq_out, ptrdiff_t *arg_out, ptrdiff_t *rank_out,
                                         fastce_ref_row_t *ref) {
    const V vs = VOP(set1)(scale), vt = VOP(set1)(xt), unit = VOP(set1)(1), zero = VOP(zero)();
    LONG_ROW model_row, ref_row;
    KNAME(long_row_start)(&model_row);
    KNAME(long_row_start)(&ref_row);
    double e = 0.0, sq = 0.0, cross = 0.0, ref_sq = 0.0;
    ptrdiff_t arg = -1, rank = 0, ref_arg = -1, ref_rank = 0;
    for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {
        ptrdiff_t len = n - start < FASTCE_CHUNK ? n - start : FASTCE_CHUNK;
        int ahead = n - start > 4 * FASTCE_CHUNK; /* as long_row_sum asks */
        KNAME(long_row_chunk)(&model_row, x + start, len, start,
                              ahead ? x + start + 4 * FASTCE_CHUNK : NULL, vs, scale, scaled, 1, 0,
                              NULL, t, vt, &e, &sq, &arg, &rank);
        KNAME(long_row_chunk)(&ref_row, r + start, len, start,
                              ahead ? r + start + 4 * FASTCE_CHUNK : NULL, unit, 1, 0, 1, 1,
                              x + start, -1, zero, &cross, &ref_sq, &ref_arg, &ref_rank);
    }
    T ref_max;
    ref->sum = KNAME(long_row_end)(&ref_row, &ref_max);
    ref->max = (double)ref_max;
    ref->cross = cross;
    ref->arg = ref_arg;
    *e_out = e;
    *sq_out = sq;
    *arg_out = arg;
    *rank_out = rank;
    return KNAME(long_row_end)(&model_row, max_out);
}

/* long_pair_terms_of, a scale of 1 compiled apart */
static double KNAME(long_pair_terms)(const T *x, const T *r, ptrdiff_t n, T *max_out, T scale,
                                     ptrdiff_t t, T xt, double *e_out, double *sq_out,
                                     ptrdiff_t *arg_out, ptrdiff_t *rank_out,
                                     fastce_ref_row_t *ref) {
    if (scale == 1)
        return KNAME(long_pair_terms_of)(x, r, n, max_out, 1, 0, t, xt, e_out, sq_out, arg_out,
                                         rank_out, ref);
    return KNAME(long_pair_terms_of)(x, r, n, max_out, scale, 1, t, xt, e_out, sq_out, arg_out,
                                     rank_out, ref);
}

/* ---- tiles ------------------------------------------------------------------- */

/* Rows of at most a few classes into a tile: x[k * row_stride + c] for c < C
 * and k < n into tile[c * width + k].  Where the ISA's gathers are fast, each
 * class's lanes in one gather (the copy cost a quarter of the loss of
 * (65536, 10)); elsewhere, and for strides too long for the gather's 32-bit
 * offsets, each class's lanes read one at a time into a register, stored as
 * a vector: on Zen 3 the stores of one element at a time into the tile's
 * columns cost 1.4 ns an element, six times as much (0.22 ns).  The samples
 * past the last whole vector (a tile's, fewer than a vector) are copied an
 * element at a time: strided has no masked form. */
static void KNAME(gather_tile)(const T *x, ptrdiff_t row_stride, ptrdiff_t C, ptrdiff_t n, T *tile,
                               ptrdiff_t width) {
    if (!VOP(gathers_fast) || row_stride > INT32_MAX / L) {
        ptrdiff_t k = 0;
        for (; k + L <= n; k += L)
            for (ptrdiff_t c = 0; c < C; c++)
                VOP(store)(tile + c * width + k, VOP(strided)(x + k * row_stride + c, row_stride));
        for (; k < n; k++)
            for (ptrdiff_t c = 0; c < C; c++) tile[c * width + k] = x[k * row_stride + c];
        return;
    }
    for (ptrdiff_t c = 0; c < C; c++) {
        ptrdiff_t k = 0;
        for (; k + L <= n; k += L)
            VOP(store)(tile + c * width + k,
                       VOP(gather)(x + k * row_stride + c, row_stride, VOP(first)(L)));
        if (k < n) {
            M in = VOP(first)(n - k);
            VOP(store_part)(tile + c * width + k, in,
                            VOP(gather)(x + k * row_stride + c, row_stride, in));
        }
    }
}

/* A tile back into rows: tile[c * width + k] for c < C and k < n into
 * y[k * row_stride + c * yc].  Each class's lanes are loaded as a vector and
 * stored a lane at a time: on Zen 3 0.40 ns an element, against 1.49 ns for
 * loading and storing one element at a time, the rows written in order.  The
 * samples past the last whole vector as in gather_tile. */
static void KNAME(scatter_tile)(const T *tile, ptrdiff_t width, ptrdiff_t C, ptrdiff_t n, T *y,
                                ptrdiff_t row_stride, ptrdiff_t yc) {
    ptrdiff_t k = 0;
    for (; k + L <= n; k += L)
        for (ptrdiff_t c = 0; c < C; c++)
            VOP(store_strided)(y + k * row_stride + c * yc, row_stride,
                               VOP(load)(tile + c * width + k));
    for (; k < n; k++)
        for (ptrdiff_t c = 0; c < C; c++) y[k * row_stride + c * yc] = tile[c * width + k];
}

/* Whole vectors in the loop, the masked tail once after it: each tile kernel
 * is a per-vector step at offset k, over the lanes of in, full when in is all
 * of them (then loads and stores need no mask). */
VINLINE V KNAME(load_in)(const T *p, M in, int full) {
    return full ? VOP(load)(p) : VOP(load_part)(p, in);
}
VINLINE void KNAME(store_in)(T *p, M in, int full, V v) {
    if (full)
        VOP(store)(p, v);
    else
        VOP(store_part)(p, in, v);
}
#define FASTCE_TILE_LOOP(step, ...)                                           \
    do {                                                                      \
        ptrdiff_t k_ = 0;                                                     \
        for (; k_ + L <= n; k_ += L) step(k_, VOP(first)(L), 1, __VA_ARGS__); \
        if (k_ < n) step(k_, VOP(first)(n - k_), 0, __VA_ARGS__);             \
    } while (0)

VINLINE void KNAME(tile_max_at)(ptrdiff_t k, M in, int full, const T *x, T *m) {
    V v = VOP(max)(KNAME(load_in)(x + k, in, full), KNAME(load_in)(m + k, in, full));
    KNAME(store_in)(m + k, in, full, v);
}

/* m[k] = max(x[k], m[k]) */
static void KNAME(tile_max)(const T *x, ptrdiff_t n, T *m) {
    FASTCE_TILE_LOOP(KNAME(tile_max_at), x, m);
}

VINLINE void KNAME(tile_sumexp_at)(ptrdiff_t k, M in, int full, const T *x, const T *m, T *s,
                                   T *ties) {
    V d = VOP(sub)(KNAME(load_in)(x + k, in, full), KNAME(load_in)(m + k, in, full));
    M at_max = VOP(eq)(d, VOP(zero)());
    V e = VOP(drop)(at_max, KNAME(vexp_neg_sum)(d));
    KNAME(store_in)(s + k, in, full, VOP(add)(KNAME(load_in)(s + k, in, full), e));
    KNAME(store_in)(ties + k, in, full,
                    VOP(add)(KNAME(load_in)(ties + k, in, full), VOP(keep)(at_max, VOP(set1)(1))));
}

/* s[k] += exp(x[k] - m[k]) for the elements below their maximum; the ones
 * equal to it (exactly 1 each) are counted in ties */
static void KNAME(tile_sumexp)(const T *x, ptrdiff_t n, const T *m, T *s, T *ties) {
    FASTCE_TILE_LOOP(KNAME(tile_sumexp_at), x, m, s, ties);
}

VINLINE void KNAME(tile_scaled_exp_at)(ptrdiff_t k, M in, int full, const T *x, const T *m,
                                       const T *scale, T w, const T *offset, T *y) {
    V e =
        KNAME(vexp_neg)(VOP(sub)(KNAME(load_in)(x + k, in, full), KNAME(load_in)(m + k, in, full)));
    KNAME(store_in)(y + k, in, full,
                    VOP(sub)(VOP(mul)(KNAME(load_in)(scale + k, in, full), e),
                             VOP(mul)(VOP(set1)(w), KNAME(load_in)(offset + k, in, full))));
}

/* y[k] = scale[k] * exp(x[k] - m[k]) - w * offset[k] */
static void KNAME(tile_scaled_exp)(const T *x, ptrdiff_t n, const T *m, const T *scale, T w,
                                   const T *offset, T *y) {
    FASTCE_TILE_LOOP(KNAME(tile_scaled_exp_at), x, m, scale, w, offset, y);
}

/* A whole tile of n <= 64 samples of C classes, class c of sample k at
 * x[c * xc + k]: each sample's maximum m[k] and sum s[k] of exp(x - m), as
 * tile_max and tile_sumexp give them class by class (the terms below the
 * maximum summed FASTCE_CHUNK classes at a time in T, then in double; the
 * terms at it counted apart); NaN for an infinite maximum.  One call per
 * tile instead of two per class. */
static void KNAME(tile_stats)(const T *x, ptrdiff_t xc, ptrdiff_t C, ptrdiff_t n, T *m, double *s) {
    T part[64], ties[64];
    for (ptrdiff_t k = 0; k < n; k++) {
        m[k] = -INFINITY;
        s[k] = 0.0;
        ties[k] = 0;
    }
    for (ptrdiff_t c = 0; c < C; c++) KNAME(tile_max)(x + c * xc, n, m);
    for (ptrdiff_t start = 0; start < C; start += FASTCE_CHUNK) {
        ptrdiff_t end = C - start < FASTCE_CHUNK ? C : start + FASTCE_CHUNK;
        for (ptrdiff_t k = 0; k < n; k++) part[k] = 0;
        for (ptrdiff_t c = start; c < end; c++) KNAME(tile_sumexp)(x + c * xc, n, m, part, ties);
        for (ptrdiff_t k = 0; k < n; k++) s[k] += part[k];
    }
    for (ptrdiff_t k = 0; k < n; k++) s[k] = isinf(m[k]) ? (double)NAN : s[k] + ties[k];
}

/* tile_scaled_exp for every class of a tile: y[c * yc + k] = scale[k] *
 * exp(x[c * xc + k] - m[k]) - w[c] * offset[k], w[c] = weight[c] (1 when
 * weight is NULL).  One call per tile instead of one per class. */
static void KNAME(tile_scaled_exp_classes)(const T *x, ptrdiff_t xc, ptrdiff_t C, ptrdiff_t n,
                                           const T *m, const T *scale, const double *weight,
                                           const T *offset, T *y, ptrdiff_t yc) {
    for (ptrdiff_t c = 0; c < C; c++)
        KNAME(tile_scaled_exp)(x + c * xc, n, m, scale, weight ? (T)weight[c] : (T)1, offset,
                               y + c * yc);
}

VINLINE void KNAME(tile_shift_at)(ptrdiff_t k, M in, int full, const T *x, const T *m,
                                  const T *log_s, T *y) {
    V d = VOP(sub)(KNAME(load_in)(x + k, in, full), KNAME(load_in)(m + k, in, full));
    KNAME(store_in)(y + k, in, full, VOP(sub)(d, KNAME(load_in)(log_s + k, in, full)));
}

/* y[k] = (x[k] - m[k]) - log_s[k] */
static void KNAME(tile_shift)(const T *x, ptrdiff_t n, const T *m, const T *log_s, T *y) {
    FASTCE_TILE_LOOP(KNAME(tile_shift_at), x, m, log_s, y);
}

VINLINE void KNAME(tile_entropy_at)(ptrdiff_t k, M in, int full, const T *x, const T *m, T *e,
                                    T *sq) {
    V d = VOP(sub)(KNAME(load_in)(x + k, in, full), KNAME(load_in)(m + k, in, full));
    V ev = KNAME(vexp_neg)(d);
    KNAME(store_in)(e + k, in, full,
                    VOP(add)(KNAME(load_in)(e + k, in, full), KNAME(entropy_term)(ev, d)));
    KNAME(store_in)(sq + k, in, full, VOP(add)(KNAME(load_in)(sq + k, in, full), VOP(mul)(ev, ev)));
}

/* One class c of a tile of n contiguous samples, for evaluation:
 * e[k] += exp(x - m) (x - m); sq[k] += exp(x - m)^2; arg[k] the first class
 * equal to the maximum (-1: none yet); rank[k] counts the classes above the
 * target's logit xt[k] (t[k] the target class, -1 where ignored). */
static void KNAME(tile_rank_entropy)(const T *x, ptrdiff_t n, int64_t c, const T *m, const T *xt,
                                     const int64_t *t, T *e, T *sq, int64_t *arg, int64_t *rank) {
    FASTCE_TILE_LOOP(KNAME(tile_entropy_at), x, m, e, sq);
    /* integer lanes: a plain loop, which the compiler vectorises for this ISA */
    for (ptrdiff_t k = 0; k < n; k++) {
        T v = x[k];
        arg[k] = (arg[k] < 0) & (v == m[k]) ? c : arg[k];
        rank[k] += (v > xt[k]) | ((v == xt[k]) & (c < t[k]));
    }
}

#ifndef FASTCE_F64
/* the streamed stores so far before whatever follows: once per stretch of
 * rows rather than per row, since it waits for them to reach memory */
static void KNAME_ISA(stream_fence)(void) { VOP(stream_fence)(); }

/* n float16 (bf16 false) or bfloat16 values to float, exactly */
static void KNAME_ISA(half_to_f32)(const uint16_t *src, ptrdiff_t n, float *dst, int bf16) {
    ptrdiff_t k = 0;
    if (bf16) {
        for (; k + L <= n; k += L) VOP(store)(dst + k, VOP(load_bf16)(src + k));
        for (; k < n; k++) dst[k] = fastce_bf16_to_f32(src[k]);
    } else {
        for (; k + L <= n; k += L) VOP(store)(dst + k, VOP(load_f16)(src + k));
        for (; k < n; k++) dst[k] = fastce_f16_to_f32(src[k]);
    }
}

/* whether a class index of t[0:n] lies outside [0, C) without being
 * ignore_index, and in *counted how many are not ignore_index: a loop
 * without branches, which the compiler vectorises with each ISA's flags */
static int KNAME_ISA(count_targets)(const int64_t *t, ptrdiff_t n, int64_t C, int64_t ignore_index,
                                    ptrdiff_t *counted) {
    ptrdiff_t kept = 0;
    uint64_t outside = 0;
    for (ptrdiff_t k = 0; k < n; k++) {
        uint64_t counts = t[k] != ignore_index;
        kept += (ptrdiff_t)counts;
        outside |= counts & ((uint64_t)t[k] >= (uint64_t)C);
    }
    *counted = kept;
    return outside != 0;
}
#endif

/* ---- the logarithm ------------------------------------------------------------ */

#ifdef FASTCE_F64
#define LOG_MIN_NORMAL 0x1p-1022
#define LOG_SUBNORMAL_SCALE 0x1p54
#define LOG_SUBNORMAL_EXP 54.0
#define LN2_HI FASTCE_EXP_LN2_HI
#define LN2_LO FASTCE_EXP_LN2_LO
#else
#define LOG_MIN_NORMAL 0x1p-126f
#define LOG_SUBNORMAL_SCALE 0x1p25f
#define LOG_SUBNORMAL_EXP 25.0f
#define LN2_HI FASTCE_EXPF_LN2_HI
#define LN2_LO FASTCE_EXPF_LN2_LO
#endif

/* the terms of two_atanh: for |z| <= 0.1716, the logarithm's reduced range,
 * the first one left out (z^23 in double, z^13 in float) is below half an ulp
 * of the result */
#ifdef FASTCE_F64
#define ATANH_TERMS 10
#else
#define ATANH_TERMS 5
#endif

/* 2 atanh(z) = log((1 + z) / (1 - z)) = 2z + 2z z^2 P(z^2) for |z| <= 0.1716,
 * P's coefficients 1/3, 1/5, ..., 1/(2 ATANH_TERMS + 1).  P is evaluated by
 * Estrin's scheme (pairs of coefficients, then pairs of pairs, with z^2, z^4,
 * ...): the chain of dependent operations grows with log2 of the terms, not
 * with the terms, and it follows a division already. */
VINLINE V KNAME(two_atanh)(V z) {
    V z2 = VOP(mul)(z, z);
    V q[ATANH_TERMS];
    for (int j = 0; j < ATANH_TERMS; j++) q[j] = VOP(set1)((T)1 / (T)(2 * j + 3));
    V power = z2;
    for (int len = ATANH_TERMS; len > 1; len = (len + 1) / 2) {
        for (int i = 0; i < len / 2; i++) q[i] = VOP(fma)(q[2 * i + 1], power, q[2 * i]);
        if (len % 2) q[len / 2] = q[len - 1];
        power = VOP(mul)(power, power);
    }
    V two_z = VOP(add)(z, z);
    return VOP(fma)(two_z, VOP(mul)(z2, q[0]), two_z);
}

/* log(1 + e) for e in [0, 1]: 2 atanh(e / (2 + e)) up to sqrt(2) - 1, and
 * above it ln 2 + 2 atanh((e - 1) / (e + 3)), the logarithm of (1 + e) / 2,
 * so that |z| <= 0.1716 and the logarithm's shorter series serves: fewer
 * constants than the loop's registers hold.  NaN stays NaN. */
VINLINE V KNAME(vlog1p_unit)(V e) {
    const V one = VOP(set1)(1);
    M high = VOP(gt)(e, VOP(set1)(0.41421356237309503));
    V num = VOP(select)(high, VOP(sub)(e, one), e);
    V den = VOP(add)(e, VOP(select)(high, VOP(set1)(3), VOP(set1)(2)));
    V log_f = KNAME(two_atanh)(VOP(div)(num, den));
    V k = VOP(keep)(high, one);
    return VOP(fma)(k, VOP(set1)(LN2_HI), VOP(fma)(k, VOP(set1)(LN2_LO), log_f));
}

/* f in [sqrt(1/2), sqrt(2)) and its exponent: s = 2^exponent f, s normal */
VINLINE V KNAME(split_near_one)(V s, V *exponent) {
    V f = VOP(split_exp)(s, exponent);
    M big = VOP(gt)(f, VOP(set1)(1.4142135623730951));
    *exponent = VOP(add)(*exponent, VOP(keep)(big, VOP(set1)(1)));
    return VOP(select)(big, VOP(mul)(f, VOP(set1)(0.5)), f);
}

/* log(s) for s >= 0: s = 2^e f with f in [sqrt(1/2), sqrt(2)), log f =
 * 2 atanh((f - 1) / (f + 1)).  f - 1 is exact near 1, so a value just above
 * 1 (a sum of exponentials) keeps its relative accuracy.  Subnormal s is
 * scaled up first; 0 gives -inf; NaN and +inf are their own logarithm. */
VINLINE V KNAME(vlog)(V s) {
    const V one = VOP(set1)(1);
    M tiny = VOP(lt)(s, VOP(set1)(LOG_MIN_NORMAL));
    V exponent;
    V f = KNAME(split_near_one)(VOP(select)(tiny, VOP(mul)(s, VOP(set1)(LOG_SUBNORMAL_SCALE)), s),
                                &exponent);
    exponent = VOP(sub)(exponent, VOP(keep)(tiny, VOP(set1)(LOG_SUBNORMAL_EXP)));
    V log_f = KNAME(two_atanh)(VOP(div)(VOP(sub)(f, one), VOP(add)(f, one)));
    V r = VOP(fma)(exponent, VOP(set1)(LN2_HI), VOP(fma)(exponent, VOP(set1)(LN2_LO), log_f));
    r = VOP(select)(VOP(eq)(s, VOP(zero)()), VOP(set1)(-INFINITY), r);
    return VOP(select)(VOP(lt)(s, VOP(set1)(INFINITY)), r, s);
}

/* log(1 - p) for p in [0, 1] with one division and the logarithm's series
 * (|z| <= 0.1716) on all of it: below 1 - sqrt(1/2) it is 2 atanh(-p / (2 -
 * p)), accurate for tiny p; up to 1/2, -ln 2 + 2 atanh((1 - 2p) / (3 - 2p)),
 * the logarithm of 2 (1 - p), with 1 - 2p exact; from 1/2 up, 1 - p is exact
 * and its logarithm taken as vlog takes it.  1 gives -inf; NaN stays NaN. */
VINLINE V KNAME(vlog1m)(V p) {
    const V one = VOP(set1)(1), two_p = VOP(add)(p, p);
    M low = VOP(lt)(p, VOP(set1)(0.29289321881345248));
    M below_half = VOP(lt)(p, VOP(set1)(0.5));
    V u = VOP(sub)(one, p);
    V exponent;
    V f = KNAME(split_near_one)(u, &exponent);
    V num = VOP(select)(below_half, VOP(sub)(one, two_p), VOP(sub)(f, one));
    V den = VOP(select)(below_half, VOP(sub)(VOP(set1)(3), two_p), VOP(add)(f, one));
    exponent = VOP(select)(below_half, VOP(set1)(-1), exponent);
    num = VOP(select)(low, VOP(sub)(VOP(zero)(), p), num);
    den = VOP(select)(low, VOP(sub)(VOP(set1)(2), p), den);
    exponent = VOP(drop)(low, exponent);
    V log_f = KNAME(two_atanh)(VOP(div)(num, den));
    V r = VOP(fma)(exponent, VOP(set1)(LN2_HI), VOP(fma)(exponent, VOP(set1)(LN2_LO), log_f));
    r = VOP(select)(VOP(eq)(u, VOP(zero)()), VOP(set1)(-INFINITY), r);
    return VOP(select)(VOP(lt)(u, VOP(set1)(INFINITY)), r, u);
}

#ifdef FASTCE_F64
VINLINE void KNAME(tile_log_at)(ptrdiff_t k, M in, int full, const double *s, double *out) {
    /* 1 in the lanes past the end: a sum's domain */
    V v = full ? VOP(load)(s + k) : VOP(load_part_or)(s + k, in, VOP(set1)(1.0));
    KNAME(store_in)(out + k, in, full, KNAME(vlog)(v));
}

/* log of per-sample sums of exponentials (each at least 1, or NaN, or +inf) */
static void KNAME_ISA(tile_log)(const double *s, ptrdiff_t n, double *out) {
    FASTCE_TILE_LOOP(KNAME(tile_log_at), s, out);
}

VINLINE void KNAME(tile_exp_neg_at)(ptrdiff_t k, M in, int full, const double *x, double *out) {
    /* min(0, x) keeps a NaN x */
    V v = VOP(min)(VOP(zero)(), KNAME(load_in)(x + k, in, full));
    KNAME(store_in)(out + k, in, full, KNAME(vexp_neg)(v));
}

/* exp of per-sample log-probabilities (each at most 0, or NaN) */
static void KNAME_ISA(tile_exp_neg)(const double *x, ptrdiff_t n, double *out) {
    FASTCE_TILE_LOOP(KNAME(tile_exp_neg_at), x, out);
}

/* Adds, for each j < count, the n values terms[j * stride + k] to the
 * double-double pair acc[2 j], acc[2 j + 1]: a pair per lane takes the
 * values of its lane (a two-sum each, as fastce_dd_add), then the lanes
 * join the pair in lane order.  The order depends on n alone. */
static void KNAME_ISA(dd_add_columns)(const double *terms, ptrdiff_t stride, ptrdiff_t n,
                                      ptrdiff_t count, double *acc) {
    double hi_lanes[16], lo_lanes[16]; /* L of them, 8 at most */
    ptrdiff_t used = n < L ? n : L;
    for (ptrdiff_t j = 0; j < count; j++) {
        const double *col = terms + j * stride;
        V hi = VOP(zero)(), lo = VOP(zero)();
        for (ptrdiff_t k = 0; k < n; k += L) {
            V b = k + L <= n ? VOP(load)(col + k) : VOP(load_part)(col + k, VOP(first)(n - k));
            V s = VOP(add)(hi, b);
            V bp = VOP(sub)(s, hi);
            V err = VOP(add)(VOP(sub)(hi, VOP(sub)(s, bp)), VOP(sub)(b, bp));
            lo = VOP(add)(lo, err);
            hi = s;
        }
        VOP(store)(hi_lanes, hi);
        VOP(store)(lo_lanes, lo);
        for (ptrdiff_t l = 0; l < used; l++) {
            fastce_dd_add(acc + 2 * j, hi_lanes[l]);
            acc[2 * j + 1] += lo_lanes[l];
        }
    }
}
#endif

/* ---- binary cross-entropy, element by element ---------------------------------
 * n contiguous elements: x the logits (or p the probabilities), y the targets,
 * w the weights and pw the positive weights (NULL: 1 each).  loss_out (NULL:
 * not wanted) receives each element's loss; grad (NULL: not wanted) receives
 * g * go * dloss/dx, with go the per-element grad_output (NULL: 1 each).
 * Returns the sum of the losses, or 0 without want_loss (and loss_out NULL):
 * a gradient alone takes no logarithm.  y, w, pw and go are never written;
 * grad may be x. */

/* the lanes of in of element k of p, stored as kind says (half.h): a
 * constant at every call, so that each loop is compiled for its kinds */
VINLINE V KNAME(load_kind)(const void *p, ptrdiff_t k, M in, int full, int kind) {
#ifndef FASTCE_F64
    if (kind != FASTCE_AS_T) {
        const uint16_t *h = (const uint16_t *)p + k;
        if (full) return kind == FASTCE_AS_BF16 ? VOP(load_bf16)(h) : VOP(load_f16)(h);
        /* a tail: its bits copied, the lanes past it zero (and then masked) */
        uint16_t bits[VOP(lanes)] = {0};
        for (int c = 0; c < VOP(count)(in); c++) bits[c] = h[c];
        return kind == FASTCE_AS_BF16 ? VOP(load_bf16)(bits) : VOP(load_f16)(bits);
    }
#else
    (void)kind;
#endif
    return KNAME(load_in)((const T *)p + k, in, full);
}

/* bytes of an element stored as kind says */
#define FASTCE_KIND_BYTES(kind) ((kind) == FASTCE_AS_T ? (ptrdiff_t)sizeof(T) : 2)

/* the lanes of in from p, 1 where p is NULL */
VINLINE V KNAME(load_or_one)(const T *p, M in, int full) {
    return p == NULL ? VOP(set1)(1) : KNAME(load_in)(p, in, full);
}

/* loss = w ((1 - y) x + c softplus(-x)) with c = 1 + (pw - 1) y, written as
 * w (c log1p(e) + (x < 0 ? -pw y x : (1 - y) x)), e = exp(-|x|): two terms
 * of one sign, so a small loss keeps its relative accuracy.  Its derivative is
 * w (x < 0 ? c s - pw y : (1 - y) - c s), s = sigmoid(-|x|) = e / (1 + e).  A
 * logit of -inf gives NaN, +inf NaN or inf, as torch's formula does. */
VINLINE V KNAME(bce_logits_at)(ptrdiff_t k, M in, int full, const void *x, const void *y,
                               const T *w, const T *pw, T g, const T *go, T *loss_out, T *grad,
                               int want_loss, int x_kind, int y_kind) {
    const V one = VOP(set1)(1), zero = VOP(zero)();
    V xv = KNAME(load_kind)(x, k, in, full, x_kind), yv = KNAME(load_kind)(y, k, in, full, y_kind);
    V e = KNAME(vexp_neg)(VOP(sub)(zero, VOP(max)(xv, VOP(sub)(zero, xv)))); /* exp(-|x|) */
    V pw_y = pw == NULL ? yv : VOP(mul)(KNAME(load_in)(pw + k, in, full), yv);
    V c = VOP(add)(VOP(sub)(one, yv), pw_y);
    V one_minus_y = VOP(sub)(one, yv);
    M negative = VOP(lt)(xv, zero);
    V wv = KNAME(load_or_one)(w == NULL ? NULL : w + k, in, full);
    V loss = zero;
    if (want_loss) {
        V linear = VOP(mul)(VOP(select)(negative, VOP(sub)(zero, pw_y), one_minus_y), xv);
        loss = VOP(mul)(wv, VOP(fma)(c, KNAME(vlog1p_unit)(e), linear));
        loss = VOP(select)(VOP(eq)(xv, VOP(set1)(-INFINITY)), VOP(set1)(NAN), loss);
        if (loss_out != NULL) KNAME(store_in)(loss_out + k, in, full, loss);
    }
    if (grad != NULL) {
        V c_s = VOP(mul)(c, VOP(div)(e, VOP(add)(one, e)));
        V d = VOP(mul)(wv, VOP(select)(negative, VOP(sub)(c_s, pw_y), VOP(sub)(one_minus_y, c_s)));
        V gv = VOP(mul)(VOP(set1)(g), KNAME(load_or_one)(go == NULL ? NULL : go + k, in, full));
        KNAME(store_in)(grad + k, in, full, VOP(mul)(gv, d));
    }
    return full ? loss : VOP(keep)(in, loss);
}

/* loss = -w (y max(log p, -100) + (1 - y) max(log(1 - p), -100)), log(1 - p)
 * as log1p(-p) below 1/2; its derivative w (p - y) / max((1 - p) p, 1e-12),
 * as torch's. */
VINLINE V KNAME(bce_probs_at)(ptrdiff_t k, M in, int full, const void *p, const void *y, const T *w,
                              const T *pw, T g, const T *go, T *loss_out, T *grad, int want_loss,
                              int p_kind, int y_kind) {
    (void)pw;
    const V one = VOP(set1)(1), floor = VOP(set1)(-100);
    V pv = KNAME(load_kind)(p, k, in, full, p_kind), yv = KNAME(load_kind)(y, k, in, full, y_kind);
    V one_minus_p = VOP(sub)(one, pv);
    V wv = KNAME(load_or_one)(w == NULL ? NULL : w + k, in, full);
    V loss = VOP(zero)();
    if (want_loss) {
        V log_p = VOP(max)(KNAME(vlog)(pv), floor);
        V log_1mp = VOP(max)(KNAME(vlog1m)(pv), floor);
        loss = VOP(mul)(
            wv, VOP(sub)(VOP(zero)(), VOP(fma)(yv, log_p, VOP(mul)(VOP(sub)(one, yv), log_1mp))));
        if (loss_out != NULL) KNAME(store_in)(loss_out + k, in, full, loss);
    }
    if (grad != NULL) {
        V denominator = VOP(max)(VOP(mul)(one_minus_p, pv), VOP(set1)(1e-12));
        V d = VOP(div)(VOP(mul)(wv, VOP(sub)(pv, yv)), denominator);
        V gv = VOP(mul)(VOP(set1)(g), KNAME(load_or_one)(go == NULL ? NULL : go + k, in, full));
        KNAME(store_in)(grad + k, in, full, VOP(mul)(gv, d));
    }
    return full ? loss : VOP(keep)(in, loss);
}

/* The index of the first of n values outside [0, 1] (NaN included), -1 when
 * there is none: the check of probabilities and targets, at memory speed. */
static ptrdiff_t KNAME(first_outside_unit)(const T *x, ptrdiff_t n) {
    const V zero = VOP(zero)(), one = VOP(set1)(1);
    for (ptrdiff_t k = 0; k < n; k += L) {
        M in = VOP(first)(n - k);
        V v = k + L <= n ? VOP(load)(x + k) : VOP(load_part)(x + k, in);
        M outside =
            VOP(or_m)(VOP(or_m)(VOP(lt)(v, zero), VOP(gt)(v, one)), VOP(not_m)(VOP(eq)(v, v)));
        int at = VOP(first_set)(VOP(and_m)(in, outside));
        if (at >= 0) return k + at;
    }
    return -1;
}

/* ---- the logit transform: soft-cap and scale ----------------------------------- */

#ifdef FASTCE_F64
/* tanh(u) to about an ulp: a rational function below |u| = 0.625, where
 * 1 - e would cancel, and (1 - e) / (1 + e) with e = exp(-2|u|) above it
 * (Cephes' split), one division serving both forms; NaN stays NaN. */
VINLINE V KNAME(vtanh)(V u) {
    const V zero = VOP(zero)(), one = VOP(set1)(1);
    V a = VOP(max)(u, VOP(sub)(zero, u)); /* |u|; a NaN u gives NaN */
    M small = VOP(lt)(a, VOP(set1)(0.625));
    V e = KNAME(vexp_neg)(VOP(mul)(a, VOP(set1)(-2)));
    V s = VOP(mul)(a, a);
    V p = VOP(fma)(VOP(set1)(-9.64399179425052238628e-1), s, VOP(set1)(-9.92877231001918586564e1));
    p = VOP(fma)(p, s, VOP(set1)(-1.61468768441708447952e3));
    V q = VOP(add)(s, VOP(set1)(1.12811678491632931402e2));
    q = VOP(fma)(q, s, VOP(set1)(2.23548839060100448583e3));
    q = VOP(fma)(q, s, VOP(set1)(4.84406305325125486048e3));
    V d = VOP(div)(VOP(select)(small, VOP(mul)(VOP(mul)(a, s), p), VOP(sub)(one, e)),
                   VOP(select)(small, q, VOP(add)(one, e)));
    V t = VOP(select)(small, VOP(add)(a, d), d);
    return VOP(select)(VOP(lt)(u, zero), VOP(sub)(zero, t), t);
}
#else
/* tanh(u) within 6 ulp: u P(u^2) / Q(u^2), a rational minimax fit of
 * relative error 2.1e-8 on [-9, 9] (scripts/fit_tanh.py), u clamped there
 * (beyond it, +-(1 - 2^-24)); odd by construction.  Half the arithmetic of the
 * exponential's form, which the soft-cap paid per logit on top of the
 * loss's own exponential.  NaN stays NaN. */
VINLINE V KNAME(vtanh)(V u) {
    const V bound = VOP(set1)(9.0f);
    V uc = VOP(min)(bound, VOP(max)(VOP(sub)(VOP(zero)(), bound), u));
    V s = VOP(mul)(uc, uc);
    V p = VOP(fma)(VOP(set1)(1.335468625e-08f), s, VOP(set1)(2.060910811e-05f));
    V q = VOP(fma)(VOP(set1)(7.776570783e-07f), s, VOP(set1)(3.285637940e-04f));
    p = VOP(fma)(p, s, VOP(set1)(3.495590063e-03f));
    q = VOP(fma)(q, s, VOP(set1)(2.587698959e-02f));
    p = VOP(fma)(p, s, VOP(set1)(1.338102818e-01f));
    q = VOP(fma)(q, s, VOP(set1)(4.671434164e-01f));
    p = VOP(fma)(p, s, VOP(set1)(1));
    q = VOP(fma)(q, s, VOP(set1)(1));
    return VOP(div)(VOP(mul)(uc, p), q);
}
#endif

#ifndef TRANSFORM_PREFETCH
/* elements ahead of the transform's reads that it asks the caches for */
#define TRANSFORM_PREFETCH 512
#endif

VINLINE V KNAME(transform_at)(V x, V outer, V inner, int capped) {
    return capped ? VOP(mul)(outer, KNAME(vtanh)(VOP(mul)(inner, x))) : VOP(mul)(outer, x);
}

/* y = outer * tanh(inner * x), or outer * x when inner is 0: a soft-cap c
 * and a scale s are outer = s * c, inner = 1 / c.  y may be x. */
static void KNAME(transform)(const T *x, ptrdiff_t n, T outer, T inner, T *y) {
    const V vo = VOP(set1)(outer), vi = VOP(set1)(inner);
    ptrdiff_t k = 0;
    /* a loop per case, so that the soft-cap's constants stay in registers */
    if (inner != 0) {
        for (; k + L <= n; k += L) {
            /* the soft-cap's arithmetic leaves the hardware prefetchers behind */
            fastce_prefetch(x + k + TRANSFORM_PREFETCH);
            VOP(store)(y + k, KNAME(transform_at)(VOP(load)(x + k), vo, vi, 1));
        }
    } else {
        for (; k + L <= n; k += L)
            VOP(store)(y + k, KNAME(transform_at)(VOP(load)(x + k), vo, vi, 0));
    }
    if (k < n) {
        M in = VOP(first)(n - k);
        VOP(store_part)(y + k, in,
                        KNAME(transform_at)(VOP(load_part)(x + k, in), vo, vi, inner != 0));
    }
}

/* the transform's slope at one vector of transformed values y */
VINLINE V KNAME(transform_slope)(V y, V slope, V inv_outer, int capped) {
    if (!capped) return slope; /* a constant: y, infinite or not, is not read */
    V t = VOP(mul)(y, inv_outer);
    return VOP(mul)(slope, VOP(fnma)(t, t, VOP(set1)(1)));
}

/* g times the slope at y, of the elements k.. of the lanes in (all with full) */
VINLINE V KNAME(chained_at)(const T *g, const T *y, ptrdiff_t k, M in, int full, V slope,
                            V inv_outer, int capped) {
    V gk = KNAME(load_in)(g + k, in, full);
    V yk = KNAME(load_in)(y + k, in, full);
    V chained = VOP(mul)(gk, KNAME(transform_slope)(yk, slope, inv_outer, capped));
    return VOP(select)(VOP(eq)(gk, VOP(zero)()), gk, chained);
}

/* dst = g * dy/dx at each transformed value y (transform's outer and inner):
 * outer * inner * (1 - (y / outer)^2) for a soft-cap, outer without one.
 * A zero g stays zero: an ignored sample's gradient is 0 even where its
 * logit is NaN.  dst may be g; with stream (dst apart from g and y), whole
 * vectors go past the caches, as row_scaled_exp's. */
static void KNAME(transform_grad)(const T *y, ptrdiff_t n, T outer, T inner, const T *g, T *dst,
                                  int stream) {
    const int capped = inner != 0;
    const V vs = VOP(set1)(capped ? outer * inner : outer);
    const V vi = VOP(set1)(capped ? 1 / outer : 0);
    const M all = VOP(first)(L);
    ptrdiff_t k = 0;
    if (stream) {
        k = KNAME(stream_head)(dst, n);
        if (k > 0) {
            M in = VOP(first)(k);
            VOP(store_part)(dst, in, KNAME(chained_at)(g, y, 0, in, 0, vs, vi, capped));
        }
        for (; k + L <= n; k += L)
            VOP(stream)(dst + k, KNAME(chained_at)(g, y, k, all, 1, vs, vi, capped));
    } else {
        for (; k + L <= n; k += L)
            VOP(store)(dst + k, KNAME(chained_at)(g, y, k, all, 1, vs, vi, capped));
    }
    if (k < n) {
        M in = VOP(first)(n - k);
        VOP(store_part)(dst + k, in, KNAME(chained_at)(g, y, k, in, 0, vs, vi, capped));
    }
}

#ifndef ELEMENTWISE_PREFETCH
/* elements ahead of the binary losses' reads that they ask the caches for:
 * their arithmetic, as the soft-cap's, leaves the hardware prefetchers
 * behind (a loss alone over 2 x 32 MiB ran at half the speed it has in
 * cache, depending on how the arrays were aligned) */
#define ELEMENTWISE_PREFETCH 512
#endif

/* the sum in the working precision for FASTCE_CHUNK elements at a time, as
 * the row sums are, then in double; the loop is compiled for each constant
 * want (with or without the loss) and each pair of storage kinds.  Each
 * cache line is asked for once: a vector of half bits fills half a line. */
#define FASTCE_ELEMENTWISE_SUM(step, want, x_kind, y_kind)                                        \
    {                                                                                             \
        const char *x_bytes = (const char *)x, *y_bytes = (const char *)y;                        \
        const ptrdiff_t x_size = FASTCE_KIND_BYTES(x_kind), y_size = FASTCE_KIND_BYTES(y_kind);   \
        double total = 0.0;                                                                       \
        for (ptrdiff_t start = 0; start < n; start += FASTCE_CHUNK) {                             \
            ptrdiff_t end = n - start < FASTCE_CHUNK ? n : start + FASTCE_CHUNK;                  \
            V acc = VOP(zero)();                                                                  \
            ptrdiff_t k = start;                                                                  \
            for (; k + L <= end; k += L) {                                                        \
                if ((k * x_size) % 64 < L * x_size)                                               \
                    fastce_prefetch(x_bytes + (k + ELEMENTWISE_PREFETCH) * x_size);               \
                if ((k * y_size) % 64 < L * y_size)                                               \
                    fastce_prefetch(y_bytes + (k + ELEMENTWISE_PREFETCH) * y_size);               \
                acc = VOP(add)(acc, step(k, VOP(first)(L), 1, x, y, w, pw, g, go, loss_out, grad, \
                                         want, x_kind, y_kind));                                  \
            }                                                                                     \
            if (k < end)                                                                          \
                acc = VOP(add)(acc, step(k, VOP(first)(end - k), 0, x, y, w, pw, g, go, loss_out, \
                                         grad, want, x_kind, y_kind));                            \
            total += VOP(hsum)(acc);                                                              \
        }                                                                                         \
        return total;                                                                             \
    }

/* FASTCE_ELEMENTWISE_SUM with the loss when it is wanted (or stored), else without */
#define FASTCE_ELEMENTWISE(step, x_kind, y_kind)                                           \
    {                                                                                      \
        if (want_loss || loss_out != NULL) FASTCE_ELEMENTWISE_SUM(step, 1, x_kind, y_kind) \
        FASTCE_ELEMENTWISE_SUM(step, 0, x_kind, y_kind)                                    \
    }

static double KNAME(bce_logits)(const T *x, const T *y, const T *w, const T *pw, ptrdiff_t n, T g,
                                const T *go, T *loss_out, T *grad, int want_loss) {
    FASTCE_ELEMENTWISE(KNAME(bce_logits_at), FASTCE_AS_T, FASTCE_AS_T)
}

static double KNAME(bce_probs)(const T *x, const T *y, const T *w, ptrdiff_t n, T g, const T *go,
                               T *loss_out, T *grad, int want_loss) {
    const T *pw = NULL;
    FASTCE_ELEMENTWISE(KNAME(bce_probs_at), FASTCE_AS_T, FASTCE_AS_T)
}

#ifndef FASTCE_F64
/* The binary losses of half inputs x (bfloat16 with bf16, else float16),
 * converted as they are loaded, their targets y of the same half type with
 * y_half (else float): as bce_logits and bce_probs of the same values as
 * float32, to the bit, with no pass of their own over the inputs.
 * Everything else, results included, is float32. */
static double KNAME_ISA(bce_half)(int logits, const uint16_t *x, const void *y, int bf16,
                                  int y_half, const float *w, const float *pw, ptrdiff_t n, float g,
                                  const float *go, float *loss_out, float *grad, int want_loss) {
    if (logits) {
        if (bf16 && y_half) FASTCE_ELEMENTWISE(KNAME(bce_logits_at), FASTCE_AS_BF16, FASTCE_AS_BF16)
        if (bf16) FASTCE_ELEMENTWISE(KNAME(bce_logits_at), FASTCE_AS_BF16, FASTCE_AS_T)
        if (y_half) FASTCE_ELEMENTWISE(KNAME(bce_logits_at), FASTCE_AS_F16, FASTCE_AS_F16)
        FASTCE_ELEMENTWISE(KNAME(bce_logits_at), FASTCE_AS_F16, FASTCE_AS_T)
    }
    if (bf16 && y_half) FASTCE_ELEMENTWISE(KNAME(bce_probs_at), FASTCE_AS_BF16, FASTCE_AS_BF16)
    if (bf16) FASTCE_ELEMENTWISE(KNAME(bce_probs_at), FASTCE_AS_BF16, FASTCE_AS_T)
    if (y_half) FASTCE_ELEMENTWISE(KNAME(bce_probs_at), FASTCE_AS_F16, FASTCE_AS_F16)
    FASTCE_ELEMENTWISE(KNAME(bce_probs_at), FASTCE_AS_F16, FASTCE_AS_T)
}
#endif

#undef FASTCE_ELEMENTWISE
#undef FASTCE_KIND_BYTES
#undef FASTCE_ELEMENTWISE_SUM
#undef ATANH_TERMS
#undef LOG_MIN_NORMAL
#undef LOG_SUBNORMAL_SCALE
#undef LOG_SUBNORMAL_EXP
#undef LN2_HI
#undef LN2_LO
#undef FASTCE_TILE_LOOP
#undef EXP_LO
#undef EXP_SHIFTER
#undef EXP_LOG2E
#undef EXP_LN2_HI
#undef EXP_LN2_LO
#undef EXP_LN2
#undef T
#undef V
#undef M
#undef L
#undef LONG_ROW
