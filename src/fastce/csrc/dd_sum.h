/*
 * Double-double running sums: a pair (hi, lo) whose hi is the rounded sum and
 * lo gathers the rounding errors of hi's additions (Knuth's two-sum; the low
 * parts are added plainly).  The evaluation totals are such pairs, so that
 * any split of the samples into units, calls or batches rounds to the same
 * float64 sum in all but the rarest cases.
 */
#ifndef FASTCE_DD_SUM_H
#define FASTCE_DD_SUM_H

#if defined(__GNUC__) || defined(__clang__)
#define FASTCE_DD_INLINE static inline __attribute__((always_inline))
#else
#define FASTCE_DD_INLINE static inline
#endif

/* acc[0] + acc[1] += b */
FASTCE_DD_INLINE void fastce_dd_add(double *acc, double b) {
    double a = acc[0];
    double s = a + b;
    double bp = s - a;
    acc[1] += (a - (s - bp)) + (b - bp);
    acc[0] = s;
}

#endif /* FASTCE_DD_SUM_H */
