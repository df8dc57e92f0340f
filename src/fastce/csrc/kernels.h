/*
 * The table of vectorised row and tile kernels: what every ISA provides and
 * every Cython kernel calls through.  Each kernels_<isa>_<type>.c instantiates
 * kernels_body.h for one element type against its ISA's vocabulary
 * (vec_<isa>.h) and fills that type's part of a table (kernels_fill.h),
 * through kernels_instantiate.h; dispatch.c chooses an ISA at run time.
 *
 * Row kernels walk n contiguous classes of one sample; tile kernels walk n
 * contiguous samples of one class, updating per-sample state.
 */
#ifndef FASTCE_KERNELS_H
#define FASTCE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Lanes of a chunk summed in the working precision before the chunk's total
 * joins a float64 sum: short enough that float32 lanes lose nothing that
 * matters, long enough to keep the vector unit busy. */
#define FASTCE_CHUNK 256

/* Rows up to this many elements (64 KiB of float32) are read twice, maximum
 * then sum, from cache; longer rows keep a running maximum instead. */
#define FASTCE_ROW_IN_CACHE 16384

/* What a row body leaves for the next row of as many elements
 * (row_max_sumexp_ahead, row_softmax): the chunk maxima of that row,
 * computed while the current one is summed (valid says whether they are
 * there); and a row whose output is still to be written (pending_y not
 * NULL), written in the loop that sums the next row, whose exponentials
 * leave the load and store ports idle:
 *   FASTCE_PENDING_SHIFT  pending_y = (pending_x - pending_a) - pending_b
 *                         (log_softmax; written by row_max_sumexp_ahead)
 *   FASTCE_PENDING_SCALE  pending_y = pending_y * pending_a
 *                         (softmax; written by row_softmax)
 * Either kernel first writes a row of the other kind as it is; row_pending
 * writes whatever still waits. */
enum { FASTCE_PENDING_SHIFT = 1, FASTCE_PENDING_SCALE = 2 };
typedef struct {
    int valid;
    double chunk_max[FASTCE_ROW_IN_CACHE / FASTCE_CHUNK];
    int pending_op;
    const void *pending_x;
    void *pending_y;
    double pending_a, pending_b;
    /* float rows of half logits: the next row's bits, converted into the
     * next row by the loop that takes its chunk maxima (then set to NULL),
     * so that they arrive from memory while this row's exponentials run;
     * still set after the row's kernel, the row is not yet converted */
    const uint16_t *next_half;
    int next_bf16;
} fastce_ahead_t;

/* A reference model's row as its pair takes it (row_eval_terms with other,
 * long_pair_terms): its maximum, its sum of exp(r - max), the cross terms
 * sum exp(r - max) (r - x) against the model's row x, and the first index of
 * its maximum (-1: none). */
typedef struct {
    double max;
    double sum;
    double cross;
    ptrdiff_t arg;
} fastce_ref_row_t;

#define FASTCE_KERNEL_FIELDS(T, SFX)                                                              \
    T (*row_max_##SFX)(const T *, ptrdiff_t);                                                     \
    double (*row_max_sumexp_##SFX)(const T *, ptrdiff_t, T *, T);                                 \
    double (*row_max_sumexp_ahead_##SFX)(const T *, ptrdiff_t, T *, const T *, fastce_ahead_t *,  \
                                         T);                                                      \
    double (*row_sum_shifted_##SFX)(const T *, ptrdiff_t, T);                                     \
    double (*sum_exp_##SFX)(const T *, ptrdiff_t);                                                \
    void (*row_scaled_exp_##SFX)(const T *, ptrdiff_t, T, T, T, T, T *, int);                     \
    void (*row_shift_##SFX)(const T *, ptrdiff_t, T, T, T *, int);                                \
    void (*row_softmax_##SFX)(const T *, ptrdiff_t, T *, const T *, fastce_ahead_t *);            \
    void (*row_pending_##SFX)(fastce_ahead_t *, ptrdiff_t);                                       \
    double (*row_eval_terms_##SFX)(const T *, ptrdiff_t, const T *, fastce_ahead_t *, const T *,  \
                                   T *, T, ptrdiff_t, T, double *, double *, ptrdiff_t *,         \
                                   ptrdiff_t *);                                                  \
    double (*long_pair_terms_##SFX)(const T *, const T *, ptrdiff_t, T *, T, ptrdiff_t, T,        \
                                    double *, double *, ptrdiff_t *, ptrdiff_t *,                 \
                                    fastce_ref_row_t *);                                          \
    void (*gather_tile_##SFX)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, T *, ptrdiff_t);        \
    void (*scatter_tile_##SFX)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, T *, ptrdiff_t,        \
                               ptrdiff_t);                                                        \
    void (*tile_max_##SFX)(const T *, ptrdiff_t, T *);                                            \
    void (*tile_sumexp_##SFX)(const T *, ptrdiff_t, const T *, T *, T *);                         \
    void (*tile_scaled_exp_##SFX)(const T *, ptrdiff_t, const T *, const T *, T, const T *, T *); \
    void (*tile_shift_##SFX)(const T *, ptrdiff_t, const T *, const T *, T *);                    \
    void (*tile_stats_##SFX)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, T *, double *);          \
    void (*tile_scaled_exp_classes_##SFX)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T *,  \
                                          const T *, const double *, const T *, T *, ptrdiff_t);  \
    void (*tile_rank_entropy_##SFX)(const T *, ptrdiff_t, int64_t, const T *, const T *,          \
                                    const int64_t *, T *, T *, int64_t *, int64_t *);             \
    double (*bce_logits_##SFX)(const T *, const T *, const T *, const T *, ptrdiff_t, T,          \
                               const T *, T *, T *, int);                                         \
    double (*bce_probs_##SFX)(const T *, const T *, const T *, ptrdiff_t, T, const T *, T *, T *, \
                              int);                                                               \
    ptrdiff_t (*first_outside_unit_##SFX)(const T *, ptrdiff_t);                                  \
    void (*transform_##SFX)(const T *, ptrdiff_t, T, T, T *);                                     \
    void (*transform_grad_##SFX)(const T *, ptrdiff_t, T, T, const T *, T *, int);

typedef struct {
    FASTCE_KERNEL_FIELDS(float, f32)
    FASTCE_KERNEL_FIELDS(double, f64)
    /* log of per-sample sums of exponentials: each at least 1, or NaN, or +inf */
    void (*tile_log)(const double *, ptrdiff_t, double *);
    /* exp of per-sample log-probabilities: each at most 0, or NaN */
    void (*tile_exp_neg)(const double *, ptrdiff_t, double *);
    /* n values of each of count columns (stride apart) into as many
     * double-double pairs */
    void (*dd_add_columns)(const double *, ptrdiff_t, ptrdiff_t, ptrdiff_t, double *);
    /* orders the streamed stores of row_scaled_exp and row_shift */
    void (*stream_fence)(void);
    /* float16 (last argument 0) or bfloat16 (1) values to float32 */
    void (*half_to_f32)(const uint16_t *, ptrdiff_t, float *, int);
    /* the binary losses (with logits: first argument 1) of float16 or
     * bfloat16 (third argument 1) inputs, their targets of the same type
     * (fourth argument 1) or float32; the rest as bce_logits_f32 */
    double (*bce_half)(int, const uint16_t *, const void *, int, int, const float *, const float *,
                       ptrdiff_t, float, const float *, float *, float *, int);
    /* whether an int64 class index lies outside [0, C) without being the
     * ignored value, and how many are not that value */
    int (*count_targets)(const int64_t *, ptrdiff_t, int64_t, int64_t, ptrdiff_t *);
    const char *isa;
} fastce_ops_t;

/* Fill one element type's part of a table with one ISA's kernels
 * (kernels_<isa>_<type>.c); a table needs both parts. */
void fastce_fill_ops_base_f32(fastce_ops_t *ops);
void fastce_fill_ops_base_f64(fastce_ops_t *ops);
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FASTCE_X86_DISPATCH 1
void fastce_fill_ops_avx2_f32(fastce_ops_t *ops);
void fastce_fill_ops_avx2_f64(fastce_ops_t *ops);
void fastce_fill_ops_avx512_f32(fastce_ops_t *ops);
void fastce_fill_ops_avx512_f64(fastce_ops_t *ops);
#endif

#endif /* FASTCE_KERNELS_H */
