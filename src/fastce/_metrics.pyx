# cython: language_level=3
"""Every evaluation metric of class-index targets from one read of the logits.

The input is the ``(outer, C, inner)`` view of the core kernels; a *sample*
is one ``(o, i)`` pair and its row is ``x[o, :, i]``.  The samples go through
the core's own walk (see _kernels.pxd), which lays them out as it does for
:func:`fastce.cross_entropy` -- rows, transposed tiles of rows of few
classes, or tiles of neighbouring samples, float16 and bfloat16 converted the
same way -- and through the core's own code: each sample's maximum ``m`` and
``s = sum_c exp(x_c - m)`` (the row kernel's sum, tile_stats), the log of
``s`` and the loss from them (index_row_loss, tile_index_terms).  So each
per-sample loss is :func:`fastce.cross_entropy`'s to the last bit, on every
vector path, by construction.  This module supplies only the bodies for rows
and tiles.

Beside the sum, in the same sweep of a row (one more sweep of a tile, which
is then in cache), it computes what the loss does not need:

* the prediction, the first index of the maximum (as ``numpy.argmax``);
* ``sum_c exp(x_c - m) * (x_c - m)``, which gives the predictive entropy
  ``H = log(s) - that / s``;
* ``sum_c exp(x_c - m)^2``, which gives ``sum_c p_c^2`` and so the Brier
  score ``sum_c p_c^2 - 2 p_t + 1``;
* the target's rank: the number of classes with a strictly larger logit plus
  those with an equal logit at a lower index (top-k correct iff rank < k);
* the confidence ``max_c p_c = 1 / s``.

Totals are accumulated per work unit of the walk (whole blocks, grouped so
that there are at most MAX_UNITS) as compensated (double-double) float64 sums
and integer counts: each sample's terms wait beside those of up to TILE
others and are added a vector at a time (a double-double pair per lane, the
lanes then joining the unit's pair in order).  The units are combined in
order, so the result is
identical for any thread count and, to float64 rounding, for any way of
splitting the samples into calls.  The Python layer validates everything;
these functions cannot fail.
"""

from libc.math cimport NAN, fabs, isinf, log
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

cimport numpy as cnp
cimport fastce._kernels as core
from fastce._kernels cimport (
    Body, CEOptions, FASTCE_CHUNK, FASTCE_ROW_IN_CACHE, Piece, TILE, Targets, Walk,
    fastce_active_ops,
    floating,
    any_nonzero, exp_neg, index_coefficient, index_row_loss, make_body, row_logsumexp, row_stats,
    sample_loss,
    simd_ops, target_at, targets_from, tile_index_terms, tile_stats, tile_targets, walk_from,
    walk_plan, walk_run, walk_transform,
)

from typing import NamedTuple

import numpy as np

cdef extern from "csrc/build_info.h":
    const char* FASTCE_COMPILE_ARGS
    int FASTCE_OPENMP


# The vector primitives are fastce._kernels' own table: this extension never
# chooses a path of its own (see _kernels.pxd).
core.fastce_active_ops = simd_ops()

# Work units per call at most, and the most memory their partials (kept
# until the end) may take: many bins or a long rank histogram mean fewer,
# larger units.
cdef enum:
    MAX_UNITS = 1024
    PARTIALS_BYTES = 1 << 25

# Layout of the float64 sums: rows of double-double pairs (hi, lo), one per
# quantity, then one per confidence bin (the bin's confidence sum); a unit's
# partials hold the same rows flattened.
cdef enum:
    SUM_LOSS = 0
    SUM_WEIGHT = 1
    SUM_CONFIDENCE = 2
    SUM_ENTROPY = 3
    SUM_LSE_SQUARED = 4     # w * lse^2, the z-loss without its coefficient
    # the second moments behind the loss's standard error
    SUM_LOSS_SQUARED = 5
    SUM_LOSS_WEIGHT = 6
    SUM_WEIGHT_SQUARED = 7
    # w * entropy: with the entropy, the temperature derivative of the loss
    SUM_WEIGHTED_ENTROPY = 8
    SUM_BRIER = 9           # sum_c (p_c - [c == t])^2
    # against a reference model: KL(reference || model), the reference's loss
    # and the paired moments of the loss difference, the change in the
    # target's probability, and top-1 agreement
    SUM_KL = 10
    SUM_REF_LOSS = 11
    SUM_REF_LOSS_WEIGHT = 12
    SUM_DIFF_SQUARED = 13
    SUM_DP = 14
    SUM_DP_SQUARED = 15
    SUM_AGREE = 16
    SUM_BINS = 17

# Layout of the integer counts: the samples counted, then per bin its samples,
# then per bin its correct ones, then the samples of each target rank below
# ``ranks``.
cdef enum:
    COUNT_SAMPLES = 0
    COUNT_BINS = 1


cdef inline Py_ssize_t count_correct_at(Py_ssize_t bins) noexcept nogil:
    return COUNT_BINS + bins


cdef inline Py_ssize_t count_ranks_at(Py_ssize_t bins) noexcept nogil:
    return COUNT_BINS + 2 * bins


TILE_SIZE = TILE
# the rows of the sums evaluate_index returns, by name
LOSS_ROW, WEIGHT_ROW = SUM_LOSS, SUM_WEIGHT
CONFIDENCE_ROW, ENTROPY_ROW = SUM_CONFIDENCE, SUM_ENTROPY
LSE_SQUARED_ROW = SUM_LSE_SQUARED
LOSS_SQUARED_ROW, LOSS_WEIGHT_ROW = SUM_LOSS_SQUARED, SUM_LOSS_WEIGHT
WEIGHT_SQUARED_ROW = SUM_WEIGHT_SQUARED
WEIGHTED_ENTROPY_ROW = SUM_WEIGHTED_ENTROPY
BRIER_ROW = SUM_BRIER
KL_ROW, REF_LOSS_ROW, REF_LOSS_WEIGHT_ROW = SUM_KL, SUM_REF_LOSS, SUM_REF_LOSS_WEIGHT
DIFF_SQUARED_ROW, DP_ROW, DP_SQUARED_ROW, AGREE_ROW = (
    SUM_DIFF_SQUARED, SUM_DP, SUM_DP_SQUARED, SUM_AGREE)
FIRST_BIN_ROW = SUM_BINS


def openmp_enabled():
    """Whether the extension was compiled with OpenMP."""
    return bool(FASTCE_OPENMP)


def compile_args():
    """The compiler flags the extension was built with."""
    return FASTCE_COMPILE_ARGS.decode()


def simd_isa():
    """The vector code path in use, the core kernels' (``fastce._kernels.simd_init``
    chooses it for both extensions)."""
    return fastce_active_ops.isa.decode()


# --------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------

cdef struct Options:
    CEOptions ce            # the loss's options, as the core kernels take them
    Py_ssize_t bins
    Py_ssize_t ranks        # length of the rank histogram
    Py_ssize_t nf           # float64 partials per unit
    Py_ssize_t ni           # int64 partials per unit


cdef struct Outputs:
    # per-sample arrays of shape (outer, inner), NULL when not wanted, and
    # their byte strides; loss, confidence, entropy, log-sum-exp, the
    # target's log-probability and the Brier score have the logits' dtype
    char* loss
    char* pred
    char* rank
    char* conf
    char* entropy
    char* lse
    char* logprob
    char* brier
    Py_ssize_t[2] loss_s
    Py_ssize_t[2] pred_s
    Py_ssize_t[2] rank_s
    Py_ssize_t[2] conf_s
    Py_ssize_t[2] entropy_s
    Py_ssize_t[2] lse_s
    Py_ssize_t[2] logprob_s
    Py_ssize_t[2] brier_s


cdef extern from "csrc/dd_sum.h":
    # acc[0] + acc[1] += b, keeping the rounding error of the high part
    void dd_add "fastce_dd_add"(double* acc, double b) noexcept nogil


cdef enum:
    # the sums of every counted sample's terms: the sums' rows 0 .. N_TERMS - 1
    N_TERMS = SUM_BRIER + 1


cdef struct Terms:
    # the terms of up to TILE counted samples, a column of TILE per sum row,
    # added to a unit's partials together (flush_terms)
    double v[N_TERMS * TILE]
    Py_ssize_t n


cdef inline void flush_terms(Terms* terms, double* fp) noexcept nogil:
    """Adds the terms waiting in ``terms`` to the partials ``fp``."""
    if terms.n > 0:
        fastce_active_ops.dd_add_columns(terms.v, TILE, terms.n, N_TERMS, fp)
        terms.n = 0


cdef inline void record(Terms* terms, double* fp, int64_t* ip, const Options* opt, double loss,
                        double w, double s, double log_s, double e, double lse, double brier,
                        Py_ssize_t rank, bint valid) noexcept nogil:
    """Adds one sample that is not ignored to a unit's partials: its terms
    wait in ``terms`` (flushed when full, and by the caller at the end)."""
    cdef double conf = 1.0 / s
    cdef double ent = log_s - e / s
    cdef Py_ssize_t b
    cdef double* v = terms.v + terms.n
    v[SUM_LOSS * TILE] = loss
    v[SUM_WEIGHT * TILE] = w
    v[SUM_LSE_SQUARED * TILE] = w * lse * lse
    v[SUM_LOSS_SQUARED * TILE] = loss * loss
    v[SUM_LOSS_WEIGHT * TILE] = loss * w
    v[SUM_WEIGHT_SQUARED * TILE] = w * w
    v[SUM_CONFIDENCE * TILE] = conf
    v[SUM_ENTROPY * TILE] = ent
    v[SUM_WEIGHTED_ENTROPY * TILE] = w * ent
    v[SUM_BRIER * TILE] = brier
    terms.n += 1
    if terms.n == TILE:
        flush_terms(terms, fp)
    ip[COUNT_SAMPLES] += 1
    if conf == conf:
        b = <Py_ssize_t>(conf * opt.bins)
        if b >= opt.bins:
            b = opt.bins - 1
        if b < 0:
            b = 0
    else:
        b = 0       # a NaN confidence makes its bin, and the ECE, NaN
    dd_add(fp + 2 * (SUM_BINS + b), conf)
    ip[COUNT_BINS + b] += 1
    if valid:
        if rank == 0:
            ip[count_correct_at(opt.bins) + b] += 1
        if rank < opt.ranks:
            ip[count_ranks_at(opt.bins) + rank] += 1


cdef inline char* at(char* base, const Py_ssize_t* strides, Py_ssize_t o,
                     Py_ssize_t i) noexcept nogil:
    return base + o * strides[0] + i * strides[1]


cdef inline void write_sample(const Outputs* out, Py_ssize_t o, Py_ssize_t i, floating loss,
                              Py_ssize_t pred, Py_ssize_t rank, double s, double log_s,
                              double e, double lse, double logprob,
                              double brier) noexcept nogil:
    (<floating*>at(out.loss, out.loss_s, o, i))[0] = loss
    if out.pred != NULL:
        (<int64_t*>at(out.pred, out.pred_s, o, i))[0] = pred
    if out.rank != NULL:
        (<int64_t*>at(out.rank, out.rank_s, o, i))[0] = rank
    if out.conf != NULL:
        (<floating*>at(out.conf, out.conf_s, o, i))[0] = <floating>(1.0 / s)
    if out.entropy != NULL:
        (<floating*>at(out.entropy, out.entropy_s, o, i))[0] = <floating>(log_s - e / s)
    if out.lse != NULL:
        (<floating*>at(out.lse, out.lse_s, o, i))[0] = <floating>lse
    if out.logprob != NULL:
        (<floating*>at(out.logprob, out.logprob_s, o, i))[0] = <floating>logprob
    if out.brier != NULL:
        (<floating*>at(out.brier, out.brier_s, o, i))[0] = <floating>brier


cdef inline Py_ssize_t first_nan(const floating* x, Py_ssize_t n,
                                 Py_ssize_t stride) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        if x[c * stride] != x[c * stride]:
            return c
    return -1


cdef inline double target_logprob(const floating* xr, Py_ssize_t xc, int64_t target, double m,
                                  double log_s, double lse, double scale) noexcept nogil:
    """log p_t = x_t * scale - lse, from the shifted logit where the maximum
    is finite (as the loss takes it)."""
    cdef double x_t = xr[target * xc]
    if isinf(m):
        return x_t * scale - lse
    return (x_t - m) * scale - log_s


cdef inline double sample_logprob(const floating* xr, Py_ssize_t C, Py_ssize_t xc,
                                  int64_t target, double m, double log_s, double scale,
                                  double* lse) noexcept nogil:
    """The target's log-probability (0 where ``target < 0``, ignored), and
    the row's log-sum-exp in ``lse``."""
    lse[0] = row_logsumexp(xr, xc, C, <floating>m, log_s, scale)
    return target_logprob(xr, xc, target, m, log_s, lse[0], scale) if target >= 0 else 0.0


cdef struct Reference:
    # a reference model's logits, the model's (outer, C, inner) view's shape,
    # of the model's computing dtype; data NULL: none
    const char* data
    Py_ssize_t so, sc, si   # byte strides
    # each sample's KL(reference || model), of the logits' dtype (NULL: not wanted)
    char* kl
    Py_ssize_t[2] kl_s


cdef struct RefRow:
    # a reference model's row as its pair takes it: its sweep, the log of its
    # sum, its log-sum-exp and its target's log-probability
    core.fastce_ref_row_t sweep
    double log_s
    double lse
    double logprob


cdef inline void sweep_reference(const floating* xr, Py_ssize_t C, Py_ssize_t xc,
                                 const Reference* ref, Py_ssize_t o, Py_ssize_t i,
                                 int64_t target, const floating* ref_next,
                                 core.fastce_ahead_t* ref_ahead, bint swept,
                                 RefRow* row) noexcept nogil:
    """The reference's row of a counted sample, beside the model's row
    ``xr``: its statistics as the model's (row_stats), the cross terms
    ``sum_c p_ref,c (r_c - x_c)`` of KL(p_ref || p) and its first maximum,
    from one sweep of a contiguous row, which takes the chunk maxima of the
    reference's next row ``ref_next`` (NULL: none) into ``ref_ahead``, and
    the row's own from there when the row before left them, as the model's
    rows do; then what pair_sample reads of it.  With ``swept``,
    ``row.sweep`` already holds the sweep (long_pair_terms made it)."""
    cdef const floating* rr = <const floating*>(ref.data + o * ref.so + i * ref.si)
    cdef Py_ssize_t rc = ref.sc // sizeof(floating)
    cdef floating m_r
    cdef double sq_unused, ev, d
    cdef Py_ssize_t c, rank_unused
    cdef core.fastce_ref_row_t* sweep = &row.sweep
    if not swept:
        sweep.cross = 0.0
        sweep.arg = -1
        if rc == 1 and xc == 1:
            if floating is float:
                sweep.sum = fastce_active_ops.row_eval_terms_f32(
                    rr, C, ref_next, ref_ahead, xr, &m_r, 1, -1, 0, &sweep.cross, &sq_unused,
                    &sweep.arg, &rank_unused)
            else:
                sweep.sum = fastce_active_ops.row_eval_terms_f64(
                    rr, C, ref_next, ref_ahead, xr, &m_r, 1, -1, 0, &sweep.cross, &sq_unused,
                    &sweep.arg, &rank_unused)
        else:
            sweep.sum = row_stats(rr, C, rc, &m_r, 1)
            for c in range(C):
                d = rr[c * rc] - m_r
                ev = exp_neg(<floating>d)
                if ev > 0:
                    sweep.cross += ev * (<double>rr[c * rc] - <double>xr[c * xc])
                if sweep.arg < 0 and rr[c * rc] == m_r:
                    sweep.arg = c
        sweep.max = m_r
    m_r = <floating>sweep.max
    row.log_s = log(sweep.sum)
    row.lse = row_logsumexp(rr, rc, C, m_r, row.log_s, 1.0)
    row.logprob = target_logprob(rr, rc, target, m_r, row.log_s, row.lse, 1.0)


cdef inline void pair_sample(const floating* rr, Py_ssize_t rc, Py_ssize_t C,
                             const Options* opt, const Reference* ref, Py_ssize_t o,
                             Py_ssize_t i, int64_t target, double loss, double lse, double p_t,
                             Py_ssize_t arg, bint valid, double* fp, const RefRow* row,
                             double p_ref) noexcept nogil:
    """Adds what a counted sample gives against the reference's row ``rr``
    (swept by sweep_reference; ``p_ref`` the exp of its target's
    log-probability): KL(p_ref || p) = cross / s_ref + lse - lse_ref, the
    reference's loss (index_row_loss), the change in the target's
    probability and top-1 agreement."""
    cdef double s_r = row.sweep.sum
    cdef double a_t, A, ref_loss = 0.0, kl, dp, w
    cdef bint active
    kl = row.sweep.cross / s_r + lse - row.lse
    A = index_coefficient(&opt.ce, target, C, &a_t, &active)
    if active:
        ref_loss = index_row_loss(rr, rc, C, target, <floating>row.sweep.max, row.log_s, A, a_t,
                                  &opt.ce, 1.0)
    dp = p_t - p_ref
    w = 1.0 if opt.ce.weight == NULL else opt.ce.weight[target]
    dd_add(fp + 2 * SUM_KL, kl)
    dd_add(fp + 2 * SUM_REF_LOSS, ref_loss)
    dd_add(fp + 2 * SUM_REF_LOSS_WEIGHT, ref_loss * w)
    dd_add(fp + 2 * SUM_DIFF_SQUARED, (loss - ref_loss) * (loss - ref_loss))
    dd_add(fp + 2 * SUM_DP, dp)
    dd_add(fp + 2 * SUM_DP_SQUARED, dp * dp)
    # rows without probabilities never agree
    dd_add(fp + 2 * SUM_AGREE, 1.0 if valid and s_r == s_r and arg == row.sweep.arg else 0.0)
    if ref.kl != NULL:
        (<floating*>at(ref.kl, ref.kl_s, o, i))[0] = <floating>kl


cdef inline void finish_sample(const floating* xr, Py_ssize_t C, Py_ssize_t xc,
                               const Options* opt, const Outputs* out, const Reference* ref,
                               Py_ssize_t o, Py_ssize_t i, int64_t target, double loss,
                               double s, double log_s, double e, double sq, double lse,
                               double logprob, double p_t, Py_ssize_t arg, Py_ssize_t rank,
                               Terms* terms, double* fp, int64_t* ip, const RefRow* ref_row,
                               double p_ref) noexcept nogil:
    """Records (and writes) one sample from its row's sums (``s`` of the
    exponentials, ``log_s`` its log, ``e`` and ``sq`` as row_eval_terms gives
    them), its log-sum-exp ``lse``, and its target's log-probability
    ``logprob`` and probability ``p_t``; ``target < 0`` where it is ignored.
    Its terms wait in ``terms``.  With a reference, ``ref_row`` and
    ``p_ref``: as pair_sample takes them."""
    cdef bint valid = s == s
    # Brier: sum_c p_c^2 - 2 p_t + 1
    cdef double brier = sq / (s * s) - 2.0 * p_t + 1.0 if target >= 0 else 0.0
    cdef Py_ssize_t bad
    if not valid:
        # numpy.argmax's answer: the first NaN, if there is one
        bad = first_nan(xr, C, xc)
        if bad >= 0:
            arg = bad
        rank = C        # never correct
    if arg < 0:
        arg = 0
    if target >= 0:
        record(terms, fp, ip, opt, loss,
               1.0 if opt.ce.weight == NULL else opt.ce.weight[target], s, log_s, e, lse, brier,
               rank, valid)
        if ref.data != NULL:
            pair_sample(<const floating*>(ref.data + o * ref.so + i * ref.si),
                        ref.sc // sizeof(floating), C, opt, ref, o, i, target, loss, lse, p_t,
                        arg, valid, fp, ref_row, p_ref)
    if out.loss != NULL:
        write_sample(out, o, i, <floating>loss, arg, rank if target >= 0 else -1, s, log_s, e,
                     lse, logprob, brier)


# --------------------------------------------------------------------------
# Rows, one at a time
# --------------------------------------------------------------------------

cdef inline double row_eval_terms(const floating* x, Py_ssize_t n, const floating* next,
                                  core.fastce_ahead_t* ahead, floating* m, floating scale,
                                  Py_ssize_t t, floating xt, double* e_out, double* sq_out,
                                  Py_ssize_t* arg_out, Py_ssize_t* rank_out) noexcept nogil:
    """What evaluation reads from one contiguous row seen through the logit
    scale ``scale``: its maximum and sum of exponentials as ``row_stats``
    gives them (returned), and the terms beside them (see the module
    docstring); ``t < 0`` skips the rank.  Meanwhile it takes the chunk
    maxima of ``next`` (NULL: none) into ``ahead``, as the cross-entropy
    rows do, and the row's own from there when the row before left them.
    The bodies read every class (whole_rows), so the walk hands them rows
    whose classes are not contiguous as copies."""
    if floating is float:
        return fastce_active_ops.row_eval_terms_f32(x, n, next, ahead, NULL, m, scale, t, xt,
                                                    e_out, sq_out, arg_out, rank_out)
    else:
        return fastce_active_ops.row_eval_terms_f64(x, n, next, ahead, NULL, m, scale, t, xt,
                                                    e_out, sq_out, arg_out, rank_out)


cdef inline double long_pair_terms(const floating* x, const floating* r, Py_ssize_t n,
                                   floating* m, floating scale, Py_ssize_t t, floating xt,
                                   double* e_out, double* sq_out, Py_ssize_t* arg_out,
                                   Py_ssize_t* rank_out,
                                   core.fastce_ref_row_t* ref) noexcept nogil:
    """row_eval_terms of a long contiguous row ``x`` (``t >= 0``) and, in
    ``ref``, what pair_sample sweeps of the reference's row ``r``, both from
    one read of each row, to the bit."""
    if floating is float:
        return fastce_active_ops.long_pair_terms_f32(x, r, n, m, scale, t, xt, e_out, sq_out,
                                                     arg_out, rank_out, ref)
    else:
        return fastce_active_ops.long_pair_terms_f64(x, r, n, m, scale, t, xt, e_out, sq_out,
                                                     arg_out, rank_out, ref)


cdef struct MetricsCall:
    Options opt
    Outputs out
    Reference ref
    Targets t
    double* fp              # per unit: nf float64 totals (double-double pairs)
    int64_t* ip             # per unit: ni counts


cdef struct Sample:
    # what a sample is recorded from once the probabilities of its batch (a
    # tile, or up to TILE rows) are in (finish_samples)
    Py_ssize_t k            # its place in the piece: its row is x + k * p.xs
    Py_ssize_t o, i, target, arg, rank
    double loss, s, log_s, e, sq, lse, logprob
    RefRow ref              # with a reference, a counted sample's


cdef void finish_samples(const MetricsCall* call, const Piece* p, const floating* x,
                         Sample* rows, Py_ssize_t n, Terms* terms, double* fp,
                         int64_t* ip) noexcept nogil:
    """Records the ``n`` samples of the piece ``p`` waiting in ``rows``,
    their targets' probabilities (and their references') taken together."""
    cdef double logprob[TILE]
    cdef double p_t[TILE]
    cdef double ref_logprob[TILE]
    cdef double p_ref[TILE]
    cdef Py_ssize_t k
    cdef bint paired = call.ref.data != NULL
    cdef Sample* r
    for k in range(n):
        logprob[k] = rows[k].logprob
        ref_logprob[k] = rows[k].ref.logprob if paired and rows[k].target >= 0 else 0.0
    fastce_active_ops.tile_exp_neg(logprob, n, p_t)
    if paired:
        fastce_active_ops.tile_exp_neg(ref_logprob, n, p_ref)
    for k in range(n):
        r = &rows[k]
        finish_sample(x + r.k * p.xs, p.C, p.xc, &call.opt, &call.out, &call.ref, r.o, r.i,
                      r.target, r.loss, r.s, r.log_s, r.e, r.sq, r.lse, r.logprob, p_t[k],
                      r.arg, r.rank, terms, fp, ip, &r.ref, p_ref[k] if paired else 0.0)


cdef void metrics_rows(const void* call_, const Piece* p, const floating* x, floating* unused,
                       double* total) noexcept nogil:
    """A piece of rows, each as the core's row body computes its loss, and
    recorded a batch of rows at a time (finish_samples)."""
    cdef const MetricsCall* call = <const MetricsCall*>call_
    cdef const Options* opt = &call.opt
    cdef double* fp = call.fp + p.unit * opt.nf
    cdef int64_t* ip = call.ip + p.unit * opt.ni
    cdef Py_ssize_t k, o, i, tt, arg, rank, waiting = 0
    cdef Py_ssize_t C = p.C, xc = p.xc
    cdef int64_t target
    cdef bint ignored, active
    cdef bint every = call.out.loss != NULL
    cdef const floating* xr
    cdef floating m, x_t, scale = <floating>p.logit_scale
    # the scale the vector kernels multiply by, in every term
    cdef double dscale = <double>scale
    cdef double s, log_s, e, sq, A, a_t, loss
    cdef Terms terms
    cdef Sample rows[TILE]
    cdef Sample* r
    cdef bint swept
    # contiguous rows take their maxima while the previous row is summed
    cdef core.fastce_ahead_t* look_ahead = p.ahead if p.xc == 1 else NULL
    # so do a reference's contiguous rows, within the piece (sweep_reference
    # reads ahead only where both rows are contiguous)
    cdef core.fastce_ahead_t ref_ahead
    cdef const floating* ref_next
    ref_ahead.valid = 0
    ref_ahead.pending_y = NULL
    ref_ahead.next_half = NULL
    terms.n = 0
    for k in range(p.n):
        o = p.o + k * p.o_step
        i = p.i + k * p.i_step
        target = target_at(&call.t, o, i)
        ignored = opt.ce.has_ignore and target == opt.ce.ignore_index
        if ignored and not every:
            # the maxima the row before left are this row's, not the next one's
            if look_ahead != NULL:
                look_ahead.valid = 0
            ref_ahead.valid = 0
            continue
        xr = x + k * p.xs
        tt = -1 if ignored else <Py_ssize_t>target
        x_t = xr[tt * xc] if tt >= 0 else 0
        r = &rows[waiting]
        swept = False
        if (call.ref.data != NULL and tt >= 0 and C > FASTCE_ROW_IN_CACHE and xc == 1
                and call.ref.sc == sizeof(floating)
                and (look_ahead == NULL or look_ahead.next_half == NULL)):
            # a long row and its reference's, a chunk of each in turn: read
            # apart, the model's row would come from memory twice
            s = long_pair_terms(xr, <const floating*>(call.ref.data + o * call.ref.so
                                                      + i * call.ref.si),
                                C, &m, scale, tt, x_t, &e, &sq, &arg, &rank, &r.ref.sweep)
            swept = True
            # neither row leaves chunk maxima for the next, as a long row's sweep does not
            if look_ahead != NULL:
                look_ahead.valid = 0
            ref_ahead.valid = 0
        else:
            s = row_eval_terms(xr, C,
                               x + (k + 1) * p.xs if k + 1 < p.n else <const floating*>p.after,
                               look_ahead, &m, scale, tt, x_t, &e, &sq, &arg, &rank)
        # the loss, as ce_index_row computes it
        A = index_coefficient(&opt.ce, target, C, &a_t, &active)
        log_s = log(s)
        loss = 0.0 if not active else index_row_loss(xr, xc, C, target, m, log_s, A, a_t,
                                                     &opt.ce, dscale)
        r.k, r.o, r.i, r.target, r.arg, r.rank = k, o, i, tt, arg, rank
        r.loss, r.s, r.log_s, r.e, r.sq = loss, s, log_s, e, sq
        r.logprob = sample_logprob(xr, C, xc, tt, m, log_s, dscale, &r.lse)
        if call.ref.data != NULL and tt >= 0:
            # the reference's next row, read ahead while this row's is summed
            ref_next = NULL
            if k + 1 < p.n:
                ref_next = <const floating*>(call.ref.data + (o + p.o_step) * call.ref.so
                                             + (i + p.i_step) * call.ref.si)
            sweep_reference(xr, C, xc, &call.ref, o, i, tt, ref_next, &ref_ahead, swept, &r.ref)
        else:
            ref_ahead.valid = 0  # no pair: the maxima left there are this row's
        waiting += 1
        if waiting == TILE:
            finish_samples(call, p, x, rows, waiting, &terms, fp, ip)
            waiting = 0
    finish_samples(call, p, x, rows, waiting, &terms, fp, ip)
    flush_terms(&terms, fp)


# --------------------------------------------------------------------------
# Tiles: up to TILE samples at once, neighbouring or transposed rows
# --------------------------------------------------------------------------

cdef inline void tile_rank_entropy(const floating* x, Py_ssize_t xi, Py_ssize_t n,
                                   Py_ssize_t c, const floating* m, const floating* xt,
                                   const int64_t* tgt, floating* e, floating* sq, int64_t* arg,
                                   int64_t* rank, const Options* opt) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating v, d, ev
    if xi == 1:
        if floating is float:
            fastce_active_ops.tile_rank_entropy_f32(x, n, c, m, xt, tgt, e, sq, arg, rank)
        else:
            fastce_active_ops.tile_rank_entropy_f64(x, n, c, m, xt, tgt, e, sq, arg, rank)
        return
    for k in range(n):
        v = x[k * xi]
        d = v - m[k]
        ev = exp_neg(d)
        sq[k] += ev * ev
        if ev > 0:
            e[k] += ev * d
        if arg[k] < 0 and v == m[k]:
            arg[k] = c
        if v > xt[k] or (v == xt[k] and c < tgt[k]):
            rank[k] += 1


cdef void metrics_tile(const void* call_, const Piece* p, const floating* x, floating* unused,
                       double* total) noexcept nogil:
    """The samples of a tile, as the core's tile body computes their losses."""
    cdef const MetricsCall* call = <const MetricsCall*>call_
    cdef const Options* opt = &call.opt
    cdef double* fp = call.fp + p.unit * opt.nf
    cdef int64_t* ip = call.ip + p.unit * opt.ni
    cdef floating m[TILE]
    cdef floating x_t[TILE]
    cdef floating epart[TILE]
    cdef floating sqpart[TILE]
    cdef double s[TILE]
    cdef double log_s[TILE]
    cdef double A[TILE]
    cdef bint active[TILE]
    cdef double dot[TILE]
    cdef double e[TILE]
    cdef double sq[TILE]
    cdef int64_t tgt[TILE]
    cdef int64_t arg[TILE]
    cdef int64_t rank[TILE]
    cdef Sample samples[TILE]
    cdef Sample* r
    cdef Terms terms
    cdef Py_ssize_t c, k, start, end
    cdef Py_ssize_t n = p.n, C = p.C, xc = p.xc, xi = p.xs

    # the loss, as ce_tile computes it
    if not tile_targets(&call.t, p, &opt.ce, tgt, A, active) and call.out.loss == NULL:
        return
    tile_stats(x, xc, xi, C, n, m, s)
    tile_index_terms(x, xc, xi, C, n, tgt, &opt.ce, m, x_t, dot)
    fastce_active_ops.tile_log(s, n, log_s)

    # the rest, from the tile in cache, in chunks of classes as tile_stats
    for k in range(n):
        e[k] = 0.0
        sq[k] = 0.0
        arg[k] = -1
        rank[k] = 0
        if tgt[k] < 0:
            x_t[k] = 0
    start = 0
    while start < C:
        end = start + FASTCE_CHUNK
        if end > C:
            end = C
        for k in range(n):
            epart[k] = 0
            sqpart[k] = 0
        for c in range(start, end):
            tile_rank_entropy(x + c * xc, xi, n, c, m, x_t, tgt, epart, sqpart, arg, rank, opt)
        for k in range(n):
            e[k] += epart[k]
            sq[k] += sqpart[k]
        start = end

    for k in range(n):
        r = &samples[k]
        r.k, r.o, r.i, r.target, r.arg, r.rank = k, p.o + k * p.o_step, p.i + k * p.i_step, \
            tgt[k], arg[k], rank[k]
        r.loss = sample_loss(active[k], A[k], log_s[k], dot[k])
        r.s, r.log_s, r.e, r.sq = s[k], log_s[k], e[k], sq[k]
        r.logprob = sample_logprob(x + k * xi, C, xc, tgt[k], m[k], log_s[k], 1.0, &r.lse)
    terms.n = 0
    finish_samples(call, p, x, samples, n, &terms, fp, ip)
    flush_terms(&terms, fp)


cdef Body METRICS_BODY = make_body(
    metrics_rows[float], metrics_rows[double], metrics_tile[float], metrics_tile[double], NULL,
    rows_scale=True, whole_rows=True, reads_ahead=True)
# with a reference, rows only: the reference's row is read beside each model row (the
# model's, transformed, from the walk's buffer: the pair's terms read its values)
cdef Body PAIRED_BODY = make_body(metrics_rows[float], metrics_rows[double], NULL, NULL, NULL,
                                  rows_scale=False, whole_rows=True, reads_ahead=True)


cdef void set_output(char** ptr, Py_ssize_t* strides, object a) except *:
    # None leaves the pointer NULL: that output is not written
    if a is None:
        return
    cdef cnp.ndarray arr = a
    ptr[0] = <char*>cnp.PyArray_DATA(arr)
    strides[0] = cnp.PyArray_STRIDE(arr, 0)
    strides[1] = cnp.PyArray_STRIDE(arr, 1)


class Counts(NamedTuple):
    """The integer totals of an evaluation: the samples counted, and per
    confidence bin its samples and its correct ones, and the samples of each
    target rank below the ranks asked for."""
    samples: int
    bin_samples: np.ndarray
    bin_correct: np.ndarray
    rank_samples: np.ndarray


def evaluate_index(object x,
                   object target,
                   const double[::1] weight,
                   double weight_sum,
                   double smoothing,
                   int64_t ignore_index,
                   bint has_ignore,
                   Py_ssize_t bins,
                   Py_ssize_t ranks,
                   object loss_out,
                   object pred_out,
                   object rank_out,
                   object conf_out,
                   object entropy_out,
                   object lse_out,
                   object logprob_out,
                   object brier_out,
                   int num_threads=0,
                   double logit_scale=1.0,
                   double softcap=0.0,
                   object reference=None,
                   object kl_out=None):
    """Every metric over an ``(outer, C, inner)`` view (float32, float64,
    float16 or bfloat16) with class-index targets of shape ``(outer, inner)``.

    The logits are seen through the transform ``logit_scale * softcap *
    tanh(x / softcap)`` (``logit_scale * x`` for ``softcap`` 0).

    Returns ``(sums, counts)``: ``sums`` is a float64 array of shape
    ``(FIRST_BIN_ROW + bins, 2)`` holding double-double totals (high and low
    parts) of the loss, the targets' weights, the confidence, the entropy,
    the weighted squared log-sum-exp (``w[t] * lse^2``), ``loss^2``,
    ``loss * w[t]``, ``w[t]^2``, ``w[t] * entropy`` and the Brier score
    ``sum_c (p_c - [c == t])^2``, then each confidence bin's confidence;
    ``counts`` is an int64 array holding the number of samples not ignored,
    the samples per bin, the top-1 correct samples per bin, and a histogram
    of the targets' ranks below ``ranks``.

    The per-sample arrays (None for any not wanted, all None without
    ``loss_out``; any strides, shape ``(outer, inner)``; loss, confidence,
    entropy and log-sum-exp of the result dtype, prediction and rank int64)
    receive the loss, the
    prediction, the target's rank (-1 where ignored), the confidence, the
    entropy, the log-sum-exp, and the target's log-probability and Brier
    score (0 where ignored).
    With ``reference`` (the model's ``(outer, C, inner)`` shape, any strides,
    float32 for float32, float16 or bfloat16 logits, else float64) the paired
    sums are made too, and ``kl_out`` (shape ``(outer, inner)``, the result
    dtype, or None) receives each counted sample's KL(reference || model).
    ``num_threads`` 0 uses the process-wide count.  The caller has validated
    everything: targets are in ``[0, C)`` or equal ``ignore_index``,
    ``outer * inner > 0``, ``C > 0``, ``bins > 0`` and ``0 < ranks <= C``.
    """
    cdef Walk w
    cdef MetricsCall call
    cdef Options* opt = &call.opt
    cdef Py_ssize_t u, f, max_units
    walk_from(&w, x)
    walk_transform(&w, logit_scale, softcap)
    w.threads = num_threads
    w.flush_subnormals = True
    targets_from(&call.t, target)
    opt.ce.weight = &weight[0] if weight.shape[0] > 0 else NULL
    opt.ce.weight_sum = weight_sum
    opt.ce.any_weight = any_nonzero(opt.ce.weight, weight.shape[0])
    opt.ce.smoothing = smoothing
    opt.ce.ignore_index = ignore_index
    opt.ce.has_ignore = has_ignore
    opt.ce.denominator = 1.0
    opt.ce.z_loss = 0.0
    opt.bins = bins
    opt.ranks = ranks
    opt.nf = 2 * (SUM_BINS + bins)
    opt.ni = count_ranks_at(bins) + ranks
    call.out.loss = call.out.pred = call.out.rank = call.out.conf = call.out.entropy = NULL
    call.out.lse = call.out.logprob = call.out.brier = NULL
    call.ref.data = NULL
    call.ref.kl = NULL
    cdef cnp.ndarray ref_arr
    cdef const Body* body = &METRICS_BODY
    if reference is not None:
        ref_arr = reference
        call.ref.data = <const char*>cnp.PyArray_DATA(ref_arr)
        call.ref.so = cnp.PyArray_STRIDE(ref_arr, 0)
        call.ref.sc = cnp.PyArray_STRIDE(ref_arr, 1)
        call.ref.si = cnp.PyArray_STRIDE(ref_arr, 2)
        body = &PAIRED_BODY
        if kl_out is not None:
            set_output(&call.ref.kl, call.ref.kl_s, kl_out)
    if loss_out is not None:
        set_output(&call.out.loss, call.out.loss_s, loss_out)
        set_output(&call.out.pred, call.out.pred_s, pred_out)
        set_output(&call.out.rank, call.out.rank_s, rank_out)
        set_output(&call.out.conf, call.out.conf_s, conf_out)
        set_output(&call.out.entropy, call.out.entropy_s, entropy_out)
        set_output(&call.out.lse, call.out.lse_s, lse_out)
        set_output(&call.out.logprob, call.out.logprob_s, logprob_out)
        set_output(&call.out.brier, call.out.brier_s, brier_out)

    # many bins or a long rank histogram mean fewer, larger units
    max_units = PARTIALS_BYTES // (8 * (opt.nf + opt.ni))
    if max_units > MAX_UNITS:
        max_units = MAX_UNITS
    if max_units < 1:
        max_units = 1
    walk_plan(&w, body, True, 0, max_units)

    cdef double[:, ::1] fpart = np.zeros((w.n_units, opt.nf), dtype=np.float64)
    cdef int64_t[:, ::1] ipart = np.zeros((w.n_units, opt.ni), dtype=np.int64)
    cdef double[::1] unit_totals = np.empty(w.n_units, dtype=np.float64)
    call.fp = &fpart[0, 0]
    call.ip = &ipart[0, 0]
    walk_run(&w, body, &call, &unit_totals[0])
    sums_arr = np.zeros((SUM_BINS + bins, 2), dtype=np.float64)
    cdef double[:, ::1] sums = sums_arr
    with nogil:
        # the units' totals, in unit order
        for u in range(w.n_units):
            for f in range(SUM_BINS + bins):
                dd_add(&sums[f, 0], fpart[u, 2 * f])
                sums[f, 1] += fpart[u, 2 * f + 1]
    counts = np.asarray(ipart).sum(axis=0)
    return sums_arr, Counts(
        samples=int(counts[COUNT_SAMPLES]),
        bin_samples=counts[COUNT_BINS:COUNT_BINS + bins],
        bin_correct=counts[count_correct_at(bins):count_correct_at(bins) + bins],
        rank_samples=counts[count_ranks_at(bins):count_ranks_at(bins) + ranks])


cdef inline void store_group(Py_ssize_t g, int64_t group_count, int64_t group_top1,
                             const double* acc, int64_t[::1] count, int64_t[::1] top1,
                             double[:, :, ::1] sums) noexcept nogil:
    count[g] = group_count
    top1[g] = group_top1
    cdef Py_ssize_t q
    for q in range(3):
        sums[g, q, 0] = acc[2 * q]
        sums[g, q, 1] = acc[2 * q + 1]


def group_fold(const int64_t[::1] ids,
               const int64_t[::1] segments,
               const int64_t[::1] rank,
               const int64_t[::1] hit_below,
               const floating[::1] loss,
               const double[::1] weight,
               const floating[::1] logprob,
               int64_t[::1] count,
               int64_t[::1] top1,
               int64_t[:, ::1] correct,
               double[:, :, ::1] sums):
    """Adds the counted samples (a rank of at least 0; an ignored sample's
    is -1) to the totals of their groups, ``g`` the position of the sample's
    segment among the sorted ``ids``, in sample order: one to ``count[g]``,
    a top-1 hit (rank 0) to ``top1[g]``, a rank below ``hit_below[j]`` to
    ``correct[g, j]``, and the loss, target weight (1 where ``weight`` is
    empty) and target log-probability to the double-double ``sums[g, q]``
    for the three quantities ``q`` in that order.  The caller has checked
    that the arrays have one length (``weight`` that or none) and the totals
    one row per id."""
    cdef Py_ssize_t n, g = -1, j, q, lo, hi, mid, missing = -1
    cdef Py_ssize_t n_ids = ids.shape[0]
    cdef bint weighted = weight.shape[0] > 0
    cdef int64_t r, v, group_count = 0, group_top1 = 0
    # the current group's totals, in registers while its tokens run (a chain
    # through memory would cost a store and a load per token); the same
    # additions in the same order as into ``sums``, so the same bits
    cdef double acc[6]
    with nogil:
        for n in range(segments.shape[0]):
            r = rank[n]
            if r < 0:
                continue
            v = segments[n]
            if g < 0 or ids[g] != v:
                # not the previous token's group: a binary search (documents
                # usually come in order, a group's tokens together)
                if g >= 0:
                    store_group(g, group_count, group_top1, acc, count, top1, sums)
                lo, hi = 0, n_ids
                while lo < hi:
                    mid = (lo + hi) // 2
                    if ids[mid] < v:
                        lo = mid + 1
                    else:
                        hi = mid
                if lo >= n_ids or ids[lo] != v:
                    g = -1
                    missing = n
                    break
                g = lo
                group_count, group_top1 = count[g], top1[g]
                for q in range(3):
                    acc[2 * q] = sums[g, q, 0]
                    acc[2 * q + 1] = sums[g, q, 1]
            group_count += 1
            if r == 0:
                group_top1 += 1
            for j in range(hit_below.shape[0]):
                if r < hit_below[j]:
                    correct[g, j] += 1
            dd_add(&acc[0], <double>loss[n])
            dd_add(&acc[2], weight[n] if weighted else 1.0)
            dd_add(&acc[4], <double>logprob[n])
        if g >= 0:
            store_group(g, group_count, group_top1, acc, count, top1, sums)
    if missing >= 0:
        raise ValueError(f"internal: segment {segments[missing]} is not among the group ids")


def column_sums(const double[:, ::1] values, double[:, ::1] sums):
    """Adds each column of ``values`` to its row of double-double totals
    ``sums`` (``sums[j]`` the (high, low) pair of column ``j``), in row
    order.  The caller has checked the shapes."""
    cdef Py_ssize_t n, j
    with nogil:
        for n in range(values.shape[0]):
            for j in range(values.shape[1]):
                dd_add(&sums[j, 0], values[n, j])


def equal_mass_bins(const double[::1] confidence, const uint8_t[::1] correct, Py_ssize_t bins):
    """Equal-mass bins of samples' confidences and top-1 hits (0 or 1): the
    samples in increasing confidence, a miss before a hit of the same
    confidence, NaN last, bin ``b`` the ``[b N / bins, (b + 1) N / bins)``-th.
    Returns the sum over the bins of ``|hits - summed confidence|``, and per
    bin its samples, their accuracy and mean confidence and its smallest and
    largest confidence (NaN for an empty bin).

    One sort of an integer key orders them: a confidence's bits (never
    negative, so they order as the numbers do) then the hit, from which both
    come back; sorting by both keys took five times as long, and the bins'
    sums as NumPy calls on the sorted arrays most of the time of an
    evaluation's equal-mass bins."""
    cdef Py_ssize_t n = confidence.shape[0], k, b, lo, hi
    cdef double c, conf_sum, gap = 0.0
    cdef uint64_t bits
    cdef int64_t hits
    key = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] keys = key
    for k in range(n):
        c = confidence[k]
        c = NAN if c != c else c + 0.0  # one NaN; no -0.0
        memcpy(&bits, &c, sizeof(double))
        keys[k] = (bits << 1) | (correct[k] != 0)
    key.sort()
    count = np.empty(bins, dtype=np.int64)
    accuracy = np.empty(bins)
    mean_confidence = np.empty(bins)
    lower = np.empty(bins)
    upper = np.empty(bins)
    cdef int64_t[::1] count_v = count
    cdef double[::1] accuracy_v = accuracy, mean_v = mean_confidence
    cdef double[::1] lower_v = lower, upper_v = upper
    for b in range(bins):
        lo = b * n // bins
        hi = (b + 1) * n // bins
        conf_sum = 0.0
        hits = 0
        for k in range(lo, hi):
            bits = keys[k]
            hits += <int64_t>(bits & 1)
            bits >>= 1
            memcpy(&c, &bits, sizeof(double))
            conf_sum += c
        count_v[b] = hi - lo
        if hi > lo:
            accuracy_v[b] = <double>hits / (hi - lo)
            mean_v[b] = conf_sum / (hi - lo)
            bits = keys[lo] >> 1
            memcpy(&lower_v[b], &bits, sizeof(double))
            bits = keys[hi - 1] >> 1
            memcpy(&upper_v[b], &bits, sizeof(double))
        else:
            accuracy_v[b] = mean_v[b] = lower_v[b] = upper_v[b] = NAN
        gap += fabs(<double>hits - conf_sum)
    return gap, count, accuracy, mean_confidence, lower, upper
