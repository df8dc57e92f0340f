"""Evaluation: every metric from one pass over the logits, with exact streaming totals.

:func:`evaluate` reads each row of logits once and returns the mean loss, the
perplexity, top-k accuracies, the mean confidence, the mean predictive
entropy and the expected calibration error.  :class:`Accumulator` computes
the same numbers batch by batch (``update``), combines totals computed
elsewhere (``merge``) and pickles, so a streamed or distributed evaluation
gives the numbers one big call gives.

Definitions, per sample ``n`` that is not ignored (``p = softmax(x[n])``,
``t`` its target class):

* **loss**: :func:`fastce.cross_entropy`'s per-sample loss (weights, label
  smoothing and all); the mean is ``sum loss / sum w[t]`` exactly as
  ``cross_entropy(..., reduction="mean")`` divides it, and the perplexity is
  ``exp(mean loss)``.
* **prediction**: the first index of the largest logit, as ``numpy.argmax``.
* **target rank**: the number of classes whose logit is larger than the
  target's, plus those with an equal logit at a lower index; so ties are
  broken towards the lower class index, as a stable sort in descending order
  would, and the target is **top-k correct** iff its rank is below ``k``
  (top-1 correct iff the prediction is the target).  scikit-learn's
  ``top_k_accuracy_score`` breaks ties the other way (towards the higher
  index); without ties the two agree.
* **confidence**: ``max_c p_c``; **entropy**: ``-sum_c p_c log p_c`` (nats);
  **Brier score**: ``sum_c (p_c - [c == t])^2`` (between 0 and 2).
* **ECE**: ``bins`` equal-width bins over ``[0, 1]`` (bin ``b`` holds
  confidences in ``[b / bins, (b + 1) / bins)``, the last one also 1.0);
  ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` with ``acc_b`` the bin's top-1
  accuracy and ``conf_b`` its mean confidence.

Standard errors (``loss_se``, ``accuracy_se``) are those of a ratio of sums,
``R = sum_i v_i / sum_i s_i`` with ``v`` the loss and ``s`` the target's
weight (or ``v`` a top-k hit and ``s = 1``): ``SE = sqrt(G / (G - 1) *
sum_g (V_g - R S_g)**2) / sum_g S_g`` over ``G`` independent clusters, which
are the samples (``V_g = v_i``; unweighted, this is the sample standard
deviation over ``sqrt(N)``) or, with ``segments``, the groups (``V_g`` and
``S_g`` summed over the group's counted tokens; groups with none are left
out), because the tokens of one document are correlated.  The perplexity's
95 % interval is ``exp(loss -/+ 1.959964 * loss_se)``.  Both come from
compensated totals (the samples' second moments, or the groups' sums), so
they too stream exactly.

**Groups** (``segments``): each token names its group; a group's tokens may
lie anywhere, in any batch.  Ignored tokens count in no group, but their ids
are listed (an empty group: no tokens, NaN mean loss and hit rates, not a
greedy match).  A group's ``log_likelihood`` is ``sum log p_t`` over its
counted tokens (neither weighted nor smoothed), its ``loss`` the summed loss
over the summed weight, ``greedy`` whether each counted token's target is
the top-1 class.  ``macro_loss`` is the mean of the non-empty groups' losses
and ``macro_perplexity`` the mean of their perplexities (as a per-document
perplexity is usually reported: not ``exp(macro_loss)``); ``loss`` and
``perplexity`` stay token-weighted.

**Beside those**, from the same read of the logits: a temperature scan
(``temperatures``: every metric at each temperature, each block evaluated
at each while it is in the caches), equal-mass calibration bins
(``equal_mass``: the samples in increasing confidence cut into ``bins`` of
equal counts, made from every sample's confidence when the result is asked
for), and a comparison with a reference model (``reference``: its logits'
rows read beside the model's).  :func:`fit_temperature` finds the
NLL-optimal temperature in a few reads.

Accuracy, confidence, entropy and ECE are unweighted means over the ``N``
samples that are not ignored; class weights and label smoothing change the
loss only.  A row whose probabilities are undefined (a NaN or ``+inf`` logit,
or no logit above ``-inf``) has a NaN loss, confidence and entropy (so the
means and the ECE are NaN, as the loss is) and is never counted correct.

Totals are float64 and compensated (each sum carries its rounding error), so
a streamed evaluation agrees with one call over the concatenated data to
float64 rounding, in practice to the last bit, however the batches are cut;
counts are exact integers.  The per-sample values are the core kernels', so
they share one limit with :func:`fastce.cross_entropy`: on the AVX2 path a
sample computed in a tile (rows of at most 32 classes, or samples along a
contiguous axis, such as Fortran-ordered logits) can differ in its last bit
with where its batch begins, and a streamed total by as much.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, SupportsIndex, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels, _metrics
from ._validate import (
    LogitTransform,
    as_array,
    check_axis_option,
    check_classes_present,
    check_flag,
    check_float_dtype,
    check_ignore_index,
    check_label_smoothing,
    check_logit_transform,
    check_num_threads,
    check_segments,
    check_target,
    check_targets_in_range,
    check_weight,
    check_weight_option,
    class_axis,
    native_float_array,
    outer_as_inner,
    result_dtype,
    samples_closer_than_classes,
    view3,
    warn_single_class,
)
from .linear import (
    DEFAULT_BLOCK_BYTES,
    Head,
    Products,
    blas_threads,
    block_rows_for,
    check_block_bytes,
    check_head,
)

__all__ = [
    "Accumulator",
    "EvalResult",
    "GroupResult",
    "PerSample",
    "TemperatureFit",
    "evaluate",
    "evaluate_linear",
    "fit_temperature",
]

# Logits per kernel call (counted in the result dtype) when an input is walked
# in blocks: a memory-mapped file is read block by block, and a byte-swapped
# input is converted one block at a time.
_BLOCK_BYTES = 1 << 26
# ... and with a temperature scan, which evaluates each block once per
# temperature: small enough that the later passes read it from the caches
_SCAN_BLOCK_BYTES = 1 << 22

_BIN_ROWS = _metrics.FIRST_BIN_ROW  # the sums' rows before the per-bin ones


def check_topk(topk: int | Iterable[int]) -> tuple[int, ...]:
    """``topk`` as a sorted tuple of distinct positive ints."""
    values = [topk] if isinstance(topk, (int, np.integer)) else topk
    try:
        values = list(values)
    except TypeError:
        raise ValueError(
            f"topk must be a positive integer or a sequence of them, e.g. topk=(1, 5); got {topk!r}"
        ) from None
    if not values:
        raise ValueError("topk must name at least one k, e.g. topk=(1, 5); got an empty sequence")
    out = []
    for k in values:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise ValueError(
                f"topk must hold positive integers, e.g. topk=(1, 5); got {k!r} in {topk!r}"
            )
        if k < 1:
            raise ValueError(f"topk values must be at least 1; got {int(k)} in {topk!r}")
        out.append(int(k))
    return tuple(sorted(set(out)))


def check_bins(bins: int) -> int:
    """The number of confidence bins of the ECE, a positive int."""
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)):
        raise ValueError(
            f"bins must be a positive integer, the number of equal-width confidence bins "
            f"of the calibration error (e.g. bins=15); got {bins!r}"
        )
    if bins < 1:
        raise ValueError(f"bins must be at least 1; got {int(bins)}")
    if bins > 1 << 20:
        raise ValueError(f"bins must be at most {1 << 20}; got {int(bins)}")
    return int(bins)


def check_temperatures(temperatures: Iterable[float] | None) -> tuple[float, ...]:
    """The temperatures of a scan: distinct positive finite numbers, in the
    order given (none: an empty tuple)."""
    if temperatures is None:
        return ()
    try:
        values = list(temperatures)
    except TypeError:
        raise ValueError(
            f"temperatures must be a sequence of positive numbers, e.g. temperatures=[0.5, 1, 2]; "
            f"got {temperatures!r}"
        ) from None
    out: list[float] = []
    for t in values:
        check_logit_transform(None, t, 0.0)  # a positive finite number, or a clear error
        if float(t) in out:
            raise ValueError(f"temperatures must be distinct; {t!r} is given twice")
        out.append(float(t))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class EvalOptions:
    """The options of an evaluation (``evaluate``, an :class:`Accumulator`,
    ``fastce.dask``), checked once by :func:`check_eval_options`."""

    weight: NDArray[np.float64] | None
    ignore_index: int
    # what the kernels compare targets with, and whether any target can equal it
    ignore: tuple[int, bool]
    label_smoothing: float
    axis: int | None
    topk: tuple[int, ...]
    bins: int
    num_threads: int | None
    threads: int  # what the kernels are asked for: 0 for the process-wide count
    transform: LogitTransform  # the soft-cap and temperature, and the z-loss coefficient
    temperatures: tuple[float, ...]  # of the scan: each block evaluated at each too
    equal_mass: bool  # also the ECE over equal-mass bins (keeps every confidence)
    # as given, for presentation and comparison
    softcap: float | None
    temperature: float
    z_loss: float


def check_eval_options(
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    topk: int | Iterable[int] = (1, 5),
    bins: int = 15,
    num_threads: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    temperatures: Iterable[float] | None = None,
    equal_mass: bool = False,
) -> EvalOptions:
    """Every option of an evaluation checked, before any logits are seen (the
    weights' length is checked against the logits' classes later)."""
    smoothing = check_label_smoothing(label_smoothing)
    ignore = check_ignore_index(ignore_index)
    checked_weight = check_weight_option(weight)
    checked_axis = check_axis_option(axis)
    checked_topk = check_topk(topk)
    checked_bins = check_bins(bins)
    threads = check_num_threads(num_threads)
    transform = check_logit_transform(softcap, temperature, z_loss)
    scan = check_temperatures(temperatures)
    return EvalOptions(
        weight=checked_weight,
        ignore_index=operator.index(ignore_index),
        ignore=ignore,
        label_smoothing=smoothing,
        axis=checked_axis,
        topk=checked_topk,
        bins=checked_bins,
        num_threads=num_threads,
        threads=threads,
        transform=transform,
        temperatures=scan,
        equal_mass=check_flag(equal_mass, "equal_mass"),
        softcap=softcap,
        temperature=temperature,
        z_loss=z_loss,
    )


@dataclass(frozen=True, eq=False)
class PerSample:
    """Per-sample results, each of the target's shape.

    ``loss`` is ``cross_entropy(..., reduction="none")`` (0 where ignored);
    ``prediction`` the argmax class; ``target_rank`` the target's rank (-1
    where ignored; top-k correct iff ``0 <= rank < k``); ``confidence`` the
    largest probability; ``entropy`` the predictive entropy; ``lse`` the
    log-sum-exp of the (transformed) logits; ``target_logprob`` the target's
    log-probability ``log p_t`` (0 where ignored; unweighted and unsmoothed,
    so it is ``-loss`` only without weights and label smoothing);
    ``brier`` the Brier score ``sum_c (p_c - [c == t])^2`` (0 where
    ignored); ``kl`` KL(reference || model) with a ``reference`` (else 0).
    The float arrays have the loss's dtype, the others are int64.
    """

    loss: NDArray[np.float32 | np.float64]
    prediction: NDArray[np.int64]
    target_rank: NDArray[np.int64]
    confidence: NDArray[np.float32 | np.float64]
    entropy: NDArray[np.float32 | np.float64]
    lse: NDArray[np.float32 | np.float64]
    target_logprob: NDArray[np.float32 | np.float64]
    brier: NDArray[np.float32 | np.float64]
    kl: NDArray[np.float32 | np.float64]


# the per-sample arrays the kernel writes, in its argument order
_KERNEL_OUTPUTS = (
    "loss",
    "prediction",
    "target_rank",
    "confidence",
    "entropy",
    "lse",
    "target_logprob",
    "brier",
)


@dataclass(frozen=True, eq=False)
class PairedResult:
    """What an evaluation against a reference model's logits adds, over the
    samples counted (see :func:`evaluate`'s ``reference``).

    Attributes
    ----------
    kl : float
        The mean KL(reference || model) of the samples' distributions (nats).
    kl_percentiles : dict of str to float
        Its ``"p50"``, ``"p90"``, ``"p99"`` and ``"max"`` over the samples.
    top1_agreement : float
        The share of samples whose most likely class is the same for both.
    target_prob_change, target_prob_change_sd : float
        The mean and standard deviation of ``p_t - p_ref,t``, the change in
        the target's probability.
    reference_loss, reference_perplexity : float
        The reference's mean loss (the same options) and its exponential.
    log_perplexity_ratio, log_perplexity_ratio_se : float
        ``log(perplexity / reference_perplexity)``, the difference of the
        mean losses, and its paired standard error (from each sample's loss
        difference).
    """

    kl: float
    kl_percentiles: dict[str, float]
    top1_agreement: float
    target_prob_change: float
    target_prob_change_sd: float
    reference_loss: float
    reference_perplexity: float
    log_perplexity_ratio: float
    log_perplexity_ratio_se: float


@dataclass(frozen=True, eq=False)
class GroupResult:
    """Per-group results of an evaluation with ``segments``: arrays keyed by
    ``ids``, the distinct segment ids in increasing order.

    Attributes
    ----------
    ids : ndarray of int64
        Every id that occurs in ``segments``, ignored tokens' ids included.
    count : ndarray of int64
        The group's tokens that are not ignored.
    weight_sum, loss_sum : ndarray of float64
        Their targets' class weights, their summed loss (as ``loss`` and
        ``weight_sum`` of :class:`EvalResult`, restricted to the group).
    log_likelihood : ndarray of float64
        The summed log-probability of the group's targets, ``sum log p_t``:
        neither weighted nor smoothed (what log-likelihood harnesses score).
    loss, perplexity : ndarray of float64
        The group's mean loss ``loss_sum / weight_sum`` and ``exp(loss)``
        (NaN for a group with no token counted).
    greedy : ndarray of bool
        Whether every counted token's target is the top-1 class (False for a
        group with no token counted).
    accuracy : dict of int to ndarray of float64
        Each group's top-k hit rate, per requested ``k`` (NaN when empty).
    """

    ids: NDArray[np.int64]
    count: NDArray[np.int64]
    weight_sum: NDArray[np.float64]
    loss_sum: NDArray[np.float64]
    log_likelihood: NDArray[np.float64]
    loss: NDArray[np.float64]
    perplexity: NDArray[np.float64]
    greedy: NDArray[np.bool_]
    accuracy: dict[int, NDArray[np.float64]]


@dataclass(frozen=True, eq=False)
class Reliability:
    """A reliability diagram's data: per confidence bin, its samples, their
    top-1 accuracy and mean confidence (NaN for an empty bin), and the bin's
    bounds (for equal-mass bins, the smallest and largest confidence in it)."""

    count: NDArray[np.int64]
    accuracy: NDArray[np.float64]
    confidence: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plotting a reliability diagram needs matplotlib: pip install matplotlib"
        ) from None
    return plt


@dataclass(frozen=True, eq=False)
class EvalResult:
    """What :func:`evaluate` and :meth:`Accumulator.result` return.

    Attributes
    ----------
    loss : float
        The mean cross-entropy, as ``cross_entropy(..., reduction="mean")``
        (nan without samples).
    perplexity : float
        ``exp(loss)``.
    accuracy : dict of int to float
        Top-k accuracy for each requested ``k``.
    confidence, entropy : float
        Mean largest probability, mean predictive entropy (nats).
    brier : float
        The mean Brier score, ``sum_c (p_c - [c == t])**2`` over the classes.
    ece : float
        Expected calibration error over ``bins`` equal-width bins.
    count : int
        Samples that are not ignored.
    weight_sum : float
        The sum of their targets' class weights (the mean's denominator).
    z_loss : float
        The mean z-loss, ``z_loss * w[t] * lse**2`` over the samples counted
        divided by ``weight_sum`` (0.0 with a ``z_loss`` coefficient of 0).
        It is reported apart: ``loss`` and ``perplexity`` never include it.
    loss_se : float
        The standard error of ``loss`` (NaN with fewer than two samples, or
        two groups when clustered); see ``fastce.metrics`` for the formula.
    accuracy_se : dict of int to float
        The standard error of each top-k accuracy.
    perplexity_interval : tuple of float
        The 95 % interval of the perplexity, ``exp(loss -/+ 1.96 loss_se)``.
    macro_loss, macro_perplexity : float
        With ``segments``: the mean over groups of each group's mean loss and
        of each group's perplexity (groups with no token counted left out);
        NaN without segments.  ``loss`` and ``perplexity`` stay the
        token-weighted (micro) figures.
    groups : GroupResult or None
        The per-group arrays, with ``segments``.
    paired : PairedResult or None
        With ``reference``: the comparison with the reference model.
    by_temperature : dict of float to EvalResult
        With ``temperatures``: the metrics of ``logits / T`` (soft-capped
        first) for each ``T``, from the same read of the logits; empty
        otherwise.
    bin_count, bin_accuracy, bin_confidence : ndarray
        The reliability diagram: samples, top-1 accuracy and mean confidence
        per bin (nan for an empty bin).
    ece_equal_mass : float
        With ``equal_mass=True``: the ECE over ``bins`` bins of (as near as
        possible) equal numbers of samples, taken in increasing confidence
        (ties in a fixed order); NaN otherwise.
    mass_bins : Reliability or None
        Those bins' reliability data, with ``equal_mass=True``.
    per_sample : PerSample or None
        Per-sample arrays, when asked for.
    """

    loss: float
    perplexity: float
    accuracy: dict[int, float]
    confidence: float
    entropy: float
    brier: float
    ece: float
    count: int
    weight_sum: float
    z_loss: float
    loss_se: float
    accuracy_se: dict[int, float]
    perplexity_interval: tuple[float, float]
    macro_loss: float
    macro_perplexity: float
    bin_count: NDArray[np.int64] = field(repr=False)
    bin_accuracy: NDArray[np.float64] = field(repr=False)
    bin_confidence: NDArray[np.float64] = field(repr=False)
    ece_equal_mass: float = field(default=math.nan, repr=False)
    mass_bins: Reliability | None = field(default=None, repr=False)
    per_sample: PerSample | None = field(default=None, repr=False)
    groups: GroupResult | None = field(default=None, repr=False)
    paired: PairedResult | None = field(default=None, repr=False)
    by_temperature: dict[float, EvalResult] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, float]:
        """The scalar results, with top-k accuracies as ``"top{k}"`` and
        standard errors as ``"<name>_se"``; the macro figures only with
        segments."""
        out = {"loss": self.loss, "loss_se": self.loss_se, "perplexity": self.perplexity}
        out.update(perplexity_low=self.perplexity_interval[0])
        out.update(perplexity_high=self.perplexity_interval[1])
        if self.groups is not None:
            out.update(macro_loss=self.macro_loss, macro_perplexity=self.macro_perplexity)
        for k, v in self.accuracy.items():
            out.update({f"top{k}": v, f"top{k}_se": self.accuracy_se[k]})
        if self.mass_bins is not None:
            out.update(ece_equal_mass=self.ece_equal_mass)
        out.update(
            confidence=self.confidence,
            entropy=self.entropy,
            brier=self.brier,
            ece=self.ece,
            count=self.count,
            weight_sum=self.weight_sum,
            z_loss=self.z_loss,
        )
        return out

    def reliability(self, equal_mass: bool = False) -> Reliability:
        """The reliability diagram's data, of the equal-width bins of ``ece``
        or (``equal_mass=True``, when evaluated so) of ``ece_equal_mass``."""
        if equal_mass:
            if self.mass_bins is None:
                raise ValueError(
                    "this result has no equal-mass bins: evaluate with equal_mass=True"
                )
            return self.mass_bins
        edges = np.linspace(0.0, 1.0, self.bin_count.size + 1)
        return Reliability(
            count=self.bin_count,
            accuracy=self.bin_accuracy,
            confidence=self.bin_confidence,
            lower=edges[:-1],
            upper=edges[1:],
        )

    def plot(self, ax: Any = None, *, equal_mass: bool = False) -> Any:
        """Draws the reliability diagram with matplotlib (``pip install
        ".[plot]"`` in fastce's checkout): each bin's accuracy as a bar over
        its confidence range, its mean confidence as a point, and the
        diagonal of perfect calibration.  Draws into ``ax`` (a new figure's
        axes by default) and returns it."""
        plt = _pyplot()
        r = self.reliability(equal_mass)
        if ax is None:
            _, ax = plt.subplots()
        filled = r.count > 0
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", label="perfect calibration")
        ax.bar(
            r.lower[filled],
            r.accuracy[filled],
            width=(r.upper - r.lower)[filled],
            align="edge",
            edgecolor="black",
            alpha=0.6,
            label="accuracy in bin",
        )
        ax.plot(r.confidence[filled], r.accuracy[filled], "o", color="C3", label="mean confidence")
        ece = self.ece_equal_mass if equal_mass else self.ece
        kind = "equal-mass" if equal_mass else "equal-width"
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (largest probability)")
        ax.set_ylabel("accuracy (top-1)")
        ax.set_title(f"Reliability diagram: {r.count.size} {kind} bins, ECE = {ece:.4f}")
        ax.legend(loc="lower right")
        return ax


def _dd_value(hi: float, lo: float) -> float:
    hi = float(hi)
    return hi + float(lo) if math.isfinite(hi) else hi


def _dd_fold(into: NDArray[np.float64], add: NDArray[np.float64]) -> None:
    """``into += add`` for arrays of double-double pairs ``(..., 2)``."""
    a = into[..., 0]
    b = add[..., 0]
    with np.errstate(invalid="ignore"):
        s = a + b
        bp = s - a
        err = (a - (s - bp)) + (b - bp)
        into[..., 1] += err + add[..., 1]
    into[..., 0] = s


def _bernoulli_se(p: float, n: int) -> float:
    """The standard error of a proportion ``p`` of ``n`` independent samples
    (the sample variance with ``n - 1``)."""
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 and p == p else math.nan


def _divide(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def _blocks(n: int, step: int, min_last: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(n)`` in steps of ``step``;
    a last block shorter than ``min_last`` joins the one before."""
    starts = list(range(0, n, step))
    if len(starts) > 1 and n - starts[-1] < min_last:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


# z of a two-sided 95 % normal interval
_Z95 = 1.959963984540054

# the quantities of a group's double-double sums, in group_sums' order
_GROUP_LOSS, _GROUP_WEIGHT, _GROUP_LOGPROB = range(3)


def _dd_values(pairs: NDArray[np.float64]) -> NDArray[np.float64]:
    """``hi + lo`` of double-double pairs ``(..., 2)`` (``hi`` where not finite)."""
    hi, lo = pairs[..., 0], pairs[..., 1]
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(hi), hi + lo, hi)


def _clustered_se(values: NDArray[np.float64], sizes: NDArray[np.float64], ratio: float) -> float:
    """The standard error of the ratio ``sum(values) / sum(sizes)`` = ``ratio``
    over clusters (samples or groups): ``sqrt(G / (G - 1) * sum e**2) /
    sum(sizes)`` with residuals ``e = values - ratio * sizes`` over the ``G``
    clusters given."""
    g = values.size
    total = float(sizes.sum())
    if g < 2 or not total:
        return math.nan
    with np.errstate(invalid="ignore", over="ignore"):
        residual = values - ratio * sizes
        return math.sqrt(g / (g - 1) * float(residual @ residual)) / total


@dataclass(eq=False)
class GroupTotals:
    """Exact per-group totals of an evaluation with segments, keyed by the
    sorted ids: tokens counted, top-1 and top-k hits (integers), and the
    double-double sums of the loss, the target's weight and its
    log-probability."""

    topk: tuple[int, ...]
    ids: NDArray[np.int64]
    count: NDArray[np.int64]
    top1: NDArray[np.int64]
    correct: NDArray[np.int64]  # (groups, len(topk))
    sums: NDArray[np.float64]  # (groups, 3, 2)

    @classmethod
    def of_ids(cls, topk: tuple[int, ...], ids: NDArray[np.int64]) -> GroupTotals:
        """Empty totals of the sorted distinct ``ids``."""
        g = ids.size
        return cls(
            topk=topk,
            ids=ids,
            count=np.zeros(g, dtype=np.int64),
            top1=np.zeros(g, dtype=np.int64),
            correct=np.zeros((g, len(topk)), dtype=np.int64),
            sums=np.zeros((g, 3, 2), dtype=np.float64),
        )

    def fold(
        self,
        segments: NDArray[np.int64],
        rank: NDArray[np.int64],
        loss: NDArray[Any],
        target_weight: NDArray[np.float64],
        logprob: NDArray[Any],
        n_classes: int,
    ) -> None:
        """Adds the counted tokens of a block (1-d arrays, ids among ``ids``):
        their ranks, losses, target weights and target log-probabilities.
        A rank of ``n_classes`` marks a row without probabilities, never a hit."""
        g = self.ids.size
        group = np.searchsorted(self.ids, segments)
        self.count += np.bincount(group, minlength=g)
        self.top1 += np.bincount(group[rank == 0], minlength=g)
        for j, k in enumerate(self.topk):
            self.correct[:, j] += np.bincount(group[rank < min(k, n_classes)], minlength=g)
        _metrics.group_sums(
            group,
            loss.astype(np.float64),
            np.ascontiguousarray(target_weight, dtype=np.float64),
            logprob.astype(np.float64),
            self.sums,
        )

    def on_ids(self, ids: NDArray[np.int64]) -> GroupTotals:
        """These totals laid out on ``ids``, a sorted superset of ``self.ids``."""
        out = GroupTotals.of_ids(self.topk, ids)
        at = np.searchsorted(ids, self.ids)
        out.count[at] = self.count
        out.top1[at] = self.top1
        out.correct[at] = self.correct
        out.sums[at] = self.sums
        return out

    def merge(self, other: GroupTotals) -> GroupTotals:
        """The totals of both, on the union of their ids."""
        ids = np.union1d(self.ids, other.ids)
        out = self.on_ids(ids) if ids.size != self.ids.size else self.copy()
        add = other.on_ids(ids) if ids.size != other.ids.size else other
        out.count += add.count
        out.top1 += add.top1
        out.correct += add.correct
        _dd_fold(out.sums, add.sums)
        return out

    def copy(self) -> GroupTotals:
        return GroupTotals(
            self.topk,
            self.ids.copy(),
            self.count.copy(),
            self.top1.copy(),
            self.correct.copy(),
            self.sums.copy(),
        )

    def result(self) -> GroupResult:
        values = _dd_values(self.sums)
        loss_sum = values[:, _GROUP_LOSS]
        weight_sum = values[:, _GROUP_WEIGHT]
        counted = self.count > 0
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            loss = np.where(counted, loss_sum / weight_sum, math.nan)
            perplexity = np.exp(loss)
            accuracy = {
                k: np.where(counted, self.correct[:, j] / self.count, math.nan)
                for j, k in enumerate(self.topk)
            }
        return GroupResult(
            ids=self.ids.copy(),
            count=self.count.copy(),
            weight_sum=weight_sum,
            loss_sum=loss_sum,
            log_likelihood=values[:, _GROUP_LOGPROB],
            loss=loss,
            perplexity=perplexity,
            greedy=counted & (self.top1 == self.count),
            accuracy=accuracy,
        )


def _confidence_order(conf: NDArray[np.float64], hit: NDArray[np.bool_]) -> NDArray[np.intp]:
    """The samples in increasing confidence, a miss before a hit of the same
    confidence (whatever order they came in), NaN last: one sort of an integer
    key, the bits of each confidence (never negative, so they order as the
    numbers do) then the hit, where sorting by both keys took five times as long.
    Samples equal in both keys are alike, so their order changes no sum."""
    canonical = np.where(np.isnan(conf), np.nan, conf + 0.0)  # one NaN; no -0.0
    key = (canonical.view(np.uint64) << np.uint64(1)) | hit.astype(np.uint64)
    return np.argsort(key)


@dataclass(eq=False)
class CalibrationSamples:
    """The confidence and top-1 hit of every counted sample, batch by batch,
    for equal-mass bins; they are sorted only when the bins are made, so any
    batches and merges give the same bins."""

    confidence: list[NDArray[np.float64]]
    correct: list[NDArray[np.bool_]]

    def add(self, confidence: NDArray[Any], correct: NDArray[np.bool_]) -> None:
        self.confidence.append(confidence.astype(np.float64))
        self.correct.append(correct)

    def copy(self) -> CalibrationSamples:
        return CalibrationSamples(list(self.confidence), list(self.correct))

    def bins(self, bins: int) -> tuple[float, Reliability]:
        """The ECE over ``bins`` equal-mass bins, and their reliability data:
        the samples in increasing confidence (a hit after a miss of the same
        confidence), bin ``b`` the ``[b N / bins, (b + 1) N / bins)``-th."""
        conf = np.concatenate([np.zeros(0), *self.confidence])
        hit = np.concatenate([np.zeros(0, dtype=bool), *self.correct])
        order = _confidence_order(conf, hit)
        conf, hit = conf[order], hit[order].astype(np.float64)
        n = conf.size
        ends = conf if n else np.full(1, math.nan)  # an empty bin's bounds are NaN anyway
        cut = np.arange(bins + 1) * n // bins
        conf_sums = np.concatenate([[0.0], np.cumsum(conf)])
        hit_sums = np.concatenate([[0.0], np.cumsum(hit)])
        count = np.diff(cut)
        conf_in = conf_sums[cut[1:]] - conf_sums[cut[:-1]]
        hits_in = hit_sums[cut[1:]] - hit_sums[cut[:-1]]
        filled = count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            reliability = Reliability(
                count=count.astype(np.int64),
                accuracy=np.where(filled, hits_in / count, math.nan),
                confidence=np.where(filled, conf_in / count, math.nan),
                lower=np.where(filled, ends[np.clip(cut[:-1], 0, ends.size - 1)], math.nan),
                upper=np.where(filled, ends[np.clip(cut[1:] - 1, 0, ends.size - 1)], math.nan),
            )
        ece = _divide(float(np.sum(np.abs(hits_in - conf_in))), n)
        return ece, reliability


@dataclass(eq=False)
class Totals:
    """The exact totals an evaluation's metrics are computed from: the
    kernel's compensated float64 sums (rows named by ``_metrics``'s ``*_ROW``
    constants, each a (value, error) pair), and integer counts."""

    topk: tuple[int, ...]
    sums: NDArray[np.float64]
    samples: int
    bin_samples: NDArray[np.int64]
    bin_correct: NDArray[np.int64]
    correct: NDArray[np.int64]  # per k of topk
    groups: GroupTotals | None = None  # with segments
    # the totals at each temperature of a scan, in the options' order
    scans: tuple[Totals, ...] = ()
    # with equal-mass bins: each counted sample's confidence and top-1 hit
    calibration: CalibrationSamples | None = None
    # against a reference: each counted sample's KL, batch by batch
    kl_samples: list[NDArray[np.float64]] | None = None

    @classmethod
    def empty(
        cls,
        topk: tuple[int, ...],
        bins: int,
        group_ids: NDArray[np.int64] | None = None,
        scans: int = 0,
        equal_mass: bool = False,
        paired: bool = False,
    ) -> Totals:
        """No samples yet; per-group totals of ``group_ids`` when given,
        ``scans`` totals of a temperature scan, and the samples of
        equal-mass bins when asked."""
        return cls(
            topk=topk,
            sums=np.zeros((_BIN_ROWS + bins, 2), dtype=np.float64),
            samples=0,
            bin_samples=np.zeros(bins, dtype=np.int64),
            bin_correct=np.zeros(bins, dtype=np.int64),
            correct=np.zeros(len(topk), dtype=np.int64),
            groups=None if group_ids is None else GroupTotals.of_ids(topk, group_ids),
            scans=tuple(cls.empty(topk, bins) for _ in range(scans)),
            calibration=CalibrationSamples([], []) if equal_mass else None,
            kl_samples=[] if paired else None,
        )

    def fold(self, sums: NDArray[np.float64], counts: _metrics.Counts) -> None:
        """Adds what one kernel call returned."""
        _dd_fold(self.sums, sums)
        self.samples += counts.samples
        self.bin_samples += counts.bin_samples
        self.bin_correct += counts.bin_correct
        ranks = len(counts.rank_samples)
        cumulative = np.cumsum(counts.rank_samples)
        # a k beyond the ranks counted is every sample: in Python ints, any k
        self.correct += cumulative[[min(k, ranks) - 1 for k in self.topk]]

    def merge(self, other: Totals) -> None:
        """Adds another evaluation's totals (of the same topk and bins)."""
        _dd_fold(self.sums, other.sums)
        self.samples += other.samples
        self.bin_samples += other.bin_samples
        self.bin_correct += other.bin_correct
        self.correct += other.correct
        if other.groups is not None:
            self.groups = (
                other.groups.copy() if self.groups is None else self.groups.merge(other.groups)
            )
        for mine, theirs in zip(self.scans, other.scans):
            mine.merge(theirs)
        if other.kl_samples is not None:
            self.kl_samples = (self.kl_samples or []) + other.kl_samples
        if self.calibration is not None and other.calibration is not None:
            self.calibration.confidence.extend(other.calibration.confidence)
            self.calibration.correct.extend(other.calibration.correct)

    def copy(self) -> Totals:
        return Totals(
            self.topk,
            self.sums.copy(),
            self.samples,
            self.bin_samples.copy(),
            self.bin_correct.copy(),
            self.correct.copy(),
            None if self.groups is None else self.groups.copy(),
            tuple(scan.copy() for scan in self.scans),
            None if self.calibration is None else self.calibration.copy(),
            None if self.kl_samples is None else list(self.kl_samples),
        )

    def sum_of(self, row: int) -> float:
        """One of the sums (``_metrics.LOSS_ROW``, ...) as a float."""
        return _dd_value(*self.sums[row])

    def result(
        self,
        per_sample: PerSample | None = None,
        z_loss: float = 0.0,
        temperatures: tuple[float, ...] = (),
    ) -> EvalResult:
        """The metrics these totals give, with the z-loss of coefficient
        ``z_loss``; ``temperatures`` name the scan's totals."""
        n = self.samples
        loss_sum, weight_sum, conf_sum, entropy_sum, lse_squared_sum = (
            self.sum_of(row)
            for row in (
                _metrics.LOSS_ROW,
                _metrics.WEIGHT_ROW,
                _metrics.CONFIDENCE_ROW,
                _metrics.ENTROPY_ROW,
                _metrics.LSE_SQUARED_ROW,
            )
        )
        hi, lo = self.sums[_BIN_ROWS:, 0], self.sums[_BIN_ROWS:, 1]
        with np.errstate(invalid="ignore"):
            bin_conf = np.where(np.isfinite(hi), hi + lo, hi)
        loss = _divide(loss_sum, weight_sum)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            perplexity = float(np.exp(loss))
            bin_accuracy = self.bin_correct / self.bin_samples
            bin_confidence = bin_conf / self.bin_samples
        gaps = np.abs(self.bin_correct - bin_conf)
        mass = None if self.calibration is None else self.calibration.bins(len(hi))
        accuracy = {k: _divide(c, n) for k, c in zip(self.topk, self.correct.tolist())}
        group_totals = self.groups
        groups = None if group_totals is None else group_totals.result()
        if group_totals is None or groups is None:
            loss_se = self._loss_se(loss)
            accuracy_se = {k: _bernoulli_se(p, n) for k, p in accuracy.items()}
            macro_loss = macro_perplexity = math.nan
        else:
            # clustered by group: tokens of one group are not independent
            counted = groups.count > 0
            sizes = groups.count[counted].astype(np.float64)
            loss_se = _clustered_se(groups.loss_sum[counted], groups.weight_sum[counted], loss)
            accuracy_se = {
                k: _clustered_se(group_totals.correct[counted, j].astype(np.float64), sizes, p)
                for j, (k, p) in enumerate(accuracy.items())
            }
            with np.errstate(invalid="ignore", over="ignore"):
                macro_loss = float(np.mean(groups.loss[counted])) if counted.any() else math.nan
                macro_perplexity = (
                    float(np.mean(groups.perplexity[counted])) if counted.any() else math.nan
                )
        with np.errstate(over="ignore", invalid="ignore"):
            interval = (
                float(np.exp(loss - _Z95 * loss_se)),
                float(np.exp(loss + _Z95 * loss_se)),
            )
        return EvalResult(
            loss=loss,
            perplexity=perplexity,
            accuracy=accuracy,
            confidence=_divide(conf_sum, n),
            entropy=_divide(entropy_sum, n),
            brier=_divide(self.sum_of(_metrics.BRIER_ROW), n),
            ece=_divide(float(np.sum(gaps)), n),
            count=n,
            weight_sum=weight_sum,
            z_loss=z_loss * _divide(lse_squared_sum, weight_sum) if z_loss else 0.0,
            loss_se=loss_se,
            accuracy_se=accuracy_se,
            perplexity_interval=interval,
            macro_loss=macro_loss,
            macro_perplexity=macro_perplexity,
            bin_count=self.bin_samples.copy(),
            bin_accuracy=bin_accuracy,
            bin_confidence=bin_confidence,
            ece_equal_mass=math.nan if mass is None else mass[0],
            mass_bins=None if mass is None else mass[1],
            per_sample=per_sample,
            groups=groups,
            paired=None if self.kl_samples is None else self._paired(loss, weight_sum),
            by_temperature={
                t: scan.result(None, z_loss) for t, scan in zip(temperatures, self.scans)
            },
        )

    def _paired(self, loss: float, weight_sum: float) -> PairedResult:
        """The comparison with the reference, from the paired sums."""
        n = self.samples
        kl = np.concatenate([np.zeros(0), *(self.kl_samples or [])])
        with np.errstate(invalid="ignore"):
            percentiles = (
                dict(
                    zip(
                        ("p50", "p90", "p99", "max"),
                        [*np.percentile(kl, [50, 90, 99]).tolist(), float(kl.max())],
                    )
                )
                if kl.size
                else dict.fromkeys(("p50", "p90", "p99", "max"), math.nan)
            )
        ref_loss = _divide(self.sum_of(_metrics.REF_LOSS_ROW), weight_sum)
        dp_mean = _divide(self.sum_of(_metrics.DP_ROW), n)
        dp_squares = self.sum_of(_metrics.DP_SQUARED_ROW) - n * dp_mean * dp_mean
        # the loss difference d = l - l_ref per sample: a ratio sum d / sum w
        ratio = loss - ref_loss
        diff_weight = self.sum_of(_metrics.LOSS_WEIGHT_ROW) - self.sum_of(
            _metrics.REF_LOSS_WEIGHT_ROW
        )
        squares = (
            self.sum_of(_metrics.DIFF_SQUARED_ROW)
            - 2.0 * ratio * diff_weight
            + ratio * ratio * self.sum_of(_metrics.WEIGHT_SQUARED_ROW)
        )
        with np.errstate(over="ignore"):
            reference_perplexity = float(np.exp(ref_loss))
        return PairedResult(
            kl=_divide(self.sum_of(_metrics.KL_ROW), n),
            kl_percentiles=percentiles,
            top1_agreement=_divide(self.sum_of(_metrics.AGREE_ROW), n),
            target_prob_change=dp_mean,
            target_prob_change_sd=math.sqrt(max(dp_squares, 0.0) / (n - 1)) if n > 1 else math.nan,
            reference_loss=ref_loss,
            reference_perplexity=reference_perplexity,
            log_perplexity_ratio=ratio,
            log_perplexity_ratio_se=self._ratio_se(squares, weight_sum),
        )

    def _ratio_se(self, squares: float, weight_sum: float) -> float:
        """The standard error of a ratio ``sum v / sum w`` over the samples
        counted, from ``sum e**2`` of the residuals ``e = v - ratio * w``."""
        n = self.samples
        if n < 2 or not weight_sum or squares != squares:
            return math.nan
        # rounding can take a zero spread just below zero
        return math.sqrt(n / (n - 1) * max(squares, 0.0)) / weight_sum

    def _loss_se(self, loss: float) -> float:
        """The standard error of the mean loss ``sum l / sum w`` over
        independent samples, from the second moments: ``sum e**2`` with
        ``e = l - loss * w`` is ``sum l**2 - 2 loss sum l w + loss**2 sum w**2``."""
        squares = (
            self.sum_of(_metrics.LOSS_SQUARED_ROW)
            - 2.0 * loss * self.sum_of(_metrics.LOSS_WEIGHT_ROW)
            + loss * loss * self.sum_of(_metrics.WEIGHT_SQUARED_ROW)
        )
        return self._ratio_se(squares, self.sum_of(_metrics.WEIGHT_ROW))


def totals_of_samples(
    topk: tuple[int, ...],
    bins: int,
    n_classes: int,
    loss: NDArray[np.float64],
    weight: NDArray[np.float64],
    confidence: NDArray[np.float64],
    entropy: NDArray[np.float64],
    lse: NDArray[np.float64],
    brier: NDArray[np.float64],
    rank: NDArray[np.int64],
) -> Totals:
    """The totals the kernel would make of the counted samples whose values
    these are (1-d arrays; a rank of ``n_classes`` marks a row without
    probabilities): for per-sample values computed elsewhere, such as from
    the shards of a vocabulary split across workers."""
    totals = Totals.empty(topk, bins)
    n = loss.size
    columns = np.zeros((n, _BIN_ROWS))
    for row, value in (
        (_metrics.LOSS_ROW, loss),
        (_metrics.WEIGHT_ROW, weight),
        (_metrics.CONFIDENCE_ROW, confidence),
        (_metrics.ENTROPY_ROW, entropy),
        (_metrics.LSE_SQUARED_ROW, weight * lse * lse),
        (_metrics.LOSS_SQUARED_ROW, loss * loss),
        (_metrics.LOSS_WEIGHT_ROW, loss * weight),
        (_metrics.WEIGHT_SQUARED_ROW, weight * weight),
        (_metrics.WEIGHTED_ENTROPY_ROW, weight * entropy),
        (_metrics.BRIER_ROW, brier),
    ):
        columns[:, row] = value
    _metrics.column_sums(columns, totals.sums)
    # the kernel's bins: conf * bins truncated, clamped; a NaN confidence in bin 0
    with np.errstate(invalid="ignore"):
        b = np.clip(np.nan_to_num(confidence * bins, nan=0.0), 0, bins - 1).astype(np.int64)
    bin_sums = np.zeros((bins, 3, 2))
    zeros = np.zeros(n)
    _metrics.group_sums(b, np.ascontiguousarray(confidence), zeros, zeros, bin_sums)
    totals.sums[_BIN_ROWS:] = bin_sums[:, 0]
    totals.samples = n
    totals.bin_samples = np.bincount(b, minlength=bins)
    totals.bin_correct = np.bincount(b[rank == 0], minlength=bins)
    totals.correct = np.array([np.sum(rank < min(k, n_classes)) for k in topk], dtype=np.int64)
    return totals


@dataclass(frozen=True, eq=False)
class EvalPlan:
    """A checked batch of an evaluation, as :func:`run_evaluation` reads it."""

    options: EvalOptions
    x3: NDArray[Any]  # the logits' (outer, C, inner) view, as given: converted block by block
    index2: NDArray[Any]  # class indices, (outer, inner)
    weight: NDArray[np.float64]  # per class; empty: none
    n_classes: int
    axis: int
    target_shape: tuple[int, ...]
    dtype: np.dtype[Any]  # of the per-sample float results
    segments2: NDArray[np.int64] | None = None  # group ids, (outer, inner)
    # a reference model's logits, (outer, C, inner) as given: converted block by block
    reference3: NDArray[Any] | None = None


def plan_evaluation(
    logits: object,
    target: object,
    options: EvalOptions,
    segments: object = None,
    reference: object = None,
) -> EvalPlan:
    """Checks one batch of an evaluation with ``options`` (and the group id of
    each token, ``segments``, and a reference model's logits, when given)."""
    arr = as_array(logits)
    # the logits' dtype is checked here; each block is converted on its own
    check_float_dtype(arr.dtype, "logits")
    axis = class_axis(options.axis, arr.ndim)
    n_classes = arr.shape[axis]
    x3 = view3(arr, axis)
    w = check_weight(options.weight, n_classes)
    target_plan = check_target(target, arr, axis, x3)
    if target_plan.index2 is None:
        expected = arr.shape[:axis] + arr.shape[axis + 1 :]
        raise TypeError(
            "evaluation needs class indices (an integer target of shape "
            f"{expected}); got probabilities of shape {target_plan.shape}. Accuracy and "
            f"calibration need a true class: pass target.argmax(axis={axis}), and use "
            "fastce.cross_entropy for the loss against probabilities."
        )
    outer, _, inner = x3.shape
    n_samples = outer * inner
    check_classes_present(n_samples, n_classes, axis, arr.shape, "logits", "cross-entropy")
    ignore_value, has_ignore = options.ignore
    if n_samples:
        check_targets_in_range(target, target_plan.index2, n_classes, ignore_value, has_ignore, w)
    segments2 = None
    if segments is not None:
        segments2 = check_segments(segments, target_plan.shape).reshape(outer, inner)
    reference3 = None
    if reference is not None:
        ref = as_array(reference)
        check_float_dtype(ref.dtype, "reference")
        if ref.shape != arr.shape:
            raise ValueError(
                f"reference logits must have the logits' shape {arr.shape}; got {ref.shape}"
            )
        reference3 = view3(ref, axis)
    warn_single_class(n_classes)
    return EvalPlan(
        options=options,
        x3=x3,
        index2=target_plan.index2,
        weight=w,
        n_classes=n_classes,
        axis=axis,
        target_shape=target_plan.shape,
        dtype=result_dtype(arr.dtype),
        segments2=segments2,
        reference3=reference3,
    )


def _per_sample_arrays(shape: tuple[int, ...], dtype: np.dtype[Any]) -> PerSample:
    """What an ignored sample keeps: loss 0, target rank -1."""
    return PerSample(
        loss=np.zeros(shape, dtype=dtype),
        prediction=np.zeros(shape, dtype=np.int64),
        target_rank=np.full(shape, -1, dtype=np.int64),
        confidence=np.zeros(shape, dtype=dtype),
        entropy=np.zeros(shape, dtype=dtype),
        lse=np.zeros(shape, dtype=dtype),
        target_logprob=np.zeros(shape, dtype=dtype),
        brier=np.zeros(shape, dtype=dtype),
        kl=np.zeros(shape, dtype=dtype),
    )


def _group_ids(segments: NDArray[np.int64] | None) -> NDArray[np.int64] | None:
    """The distinct ids of ``segments``, sorted."""
    if segments is None:
        return None
    flat = segments.reshape(-1)
    if flat.size and bool(np.all(flat[1:] >= flat[:-1])):
        # documents in order, the usual layout: no sort needed
        return flat[np.concatenate(([True], flat[1:] != flat[:-1]))]
    return np.unique(flat)


def _fold_groups(
    groups: GroupTotals,
    segments: NDArray[np.int64],
    target: NDArray[Any],
    rank: NDArray[np.int64],
    loss: NDArray[Any],
    logprob: NDArray[Any],
    weight: NDArray[np.float64],
    counted: NDArray[np.bool_] | slice,
    n_classes: int,
) -> None:
    """Adds a block's counted tokens (arrays of one shape; ``counted`` picks
    them from the flattened block) to their groups."""
    classes = target.reshape(-1)[counted]
    target_weight = weight[classes] if weight.size else np.ones(classes.shape)
    groups.fold(
        segments.reshape(-1)[counted],
        rank.reshape(-1)[counted],
        loss.reshape(-1)[counted],
        target_weight,
        logprob.reshape(-1)[counted],
        n_classes,
    )


def run_evaluation(plan: EvalPlan, per_sample: bool) -> tuple[Totals, PerSample | None]:
    """The totals of ``plan``'s batch, and its per-sample results when asked.
    Large inputs (a memory-mapped file, a byte-swapped array) are read in
    blocks, each converted on its own."""
    options = plan.options
    scan_scales = [1.0 / t for t in options.temperatures]
    totals = Totals.empty(
        options.topk,
        options.bins,
        _group_ids(plan.segments2),
        len(scan_scales),
        options.equal_mass,
        plan.reference3 is not None,
    )
    shape, dtype = plan.target_shape, plan.dtype
    outputs = _per_sample_arrays(shape, dtype) if per_sample else None
    x3, t2, seg2, ref3 = plan.x3, plan.index2, plan.segments2, plan.reference3
    outer, n_classes, inner = x3.shape
    if outer * inner == 0:
        return totals, outputs
    out2: list[NDArray[Any]] = []
    if outputs is not None:
        out2 = [getattr(outputs, name).reshape(outer, inner) for name in _KERNEL_OUTPUTS]
    kl2 = None if outputs is None else outputs.kl.reshape(outer, inner)
    if samples_closer_than_classes(x3):
        x3 = outer_as_inner(x3)
        t2 = outer_as_inner(t2)
        seg2 = outer_as_inner(seg2)
        ref3 = outer_as_inner(ref3)
        kl2 = outer_as_inner(kl2)
        out2 = [outer_as_inner(a) for a in out2]
    outer, _, inner = x3.shape
    w = plan.weight
    weight_sum = float(w.sum()) if w.size else float(n_classes)
    ranks = min(options.topk[-1], n_classes)
    ignore_value, has_ignore = options.ignore

    block_bytes = max(1, n_classes * dtype.itemsize)
    most = _SCAN_BLOCK_BYTES if scan_scales else _BLOCK_BYTES
    if outer > 1:
        step = max(1, most // (block_bytes * inner))
        if inner == 1:
            # whole blocks of the row kernel: rows of few classes are
            # computed in tiles laid from the start of each block
            per = _kernels.block_rows(n_classes)
            step = max(per, step // per * per)
        blocks = [(slice(a, b), slice(None)) for a, b in _blocks(outer, step)]
    else:
        # one outer slice: walk the samples along the inner axis in whole
        # tiles, never leaving a single sample (it would take the row kernel)
        tile = _metrics.TILE_SIZE
        step = max(tile, most // block_bytes // tile * tile)
        blocks = [(slice(None), slice(a, b)) for a, b in _blocks(inner, step, 2)]

    def block_totals(
        x_block: NDArray[Any],
        t_block: NDArray[Any],
        outs: list[NDArray[Any] | None],
        logit_scale: float,
        reference: NDArray[Any] | None = None,
        kl_out: NDArray[Any] | None = None,
    ) -> tuple[NDArray[np.float64], _metrics.Counts]:
        # the outputs named one by one: a starred list of them would leave
        # the type checker unable to place the argument after it
        loss_out, pred_out, rank_out, conf_out, entropy_out, lse_out, logprob_out, brier_out = outs
        return _metrics.evaluate_index(
            x_block,
            t_block,
            w,
            weight_sum,
            options.label_smoothing,
            ignore_value,
            has_ignore,
            options.bins,
            ranks,
            loss_out,
            pred_out,
            rank_out,
            conf_out,
            entropy_out,
            lse_out,
            logprob_out,
            brier_out,
            options.threads,
            logit_scale,
            options.transform.softcap,
            reference,
            kl_out,
        )

    for rows, cols in blocks:
        outs: list[NDArray[Any] | None] = [a[rows, cols] for a in out2] or [None] * len(
            _KERNEL_OUTPUTS
        )
        if (seg2 is not None or totals.calibration is not None) and not out2:
            # groups and equal-mass bins are made from the per-sample results
            block = _per_sample_arrays(t2[rows, cols].shape, dtype)
            outs = [getattr(block, name) for name in _KERNEL_OUTPUTS]
        x_block = native_float_array(x3[rows, :, cols], "logits")
        t_block = t2[rows, cols]
        ref_block = kl_block = None
        if ref3 is not None:
            # the reference's block, in the model's computing dtype
            ref_block = np.asarray(ref3[rows, :, cols], dtype=dtype)
            if not ref_block.dtype.isnative or not ref_block.flags.aligned:
                ref_block = ref_block.astype(dtype)
            kl_block = kl2[rows, cols] if kl2 is not None else np.zeros(t_block.shape, dtype)
        totals.fold(
            *block_totals(
                x_block, t_block, outs, options.transform.logit_scale, ref_block, kl_block
            )
        )
        # the block's samples that are not ignored, flattened, for what needs them
        needs_samples = (
            totals.kl_samples is not None or totals.calibration is not None or seg2 is not None
        )
        counted = (
            (t_block != ignore_value).reshape(-1) if has_ignore and needs_samples else slice(None)
        )
        if totals.kl_samples is not None and kl_block is not None:
            totals.kl_samples.append(kl_block.reshape(-1)[counted].astype(np.float64))
        for scan, scale in zip(totals.scans, scan_scales):
            # the block again, from the caches, at each temperature of the scan
            scan.fold(*block_totals(x_block, t_block, [None] * len(_KERNEL_OUTPUTS), scale))
        loss_out, rank_out, conf_out, logprob_out = outs[0], outs[2], outs[3], outs[6]
        if totals.calibration is not None:
            assert rank_out is not None and conf_out is not None
            totals.calibration.add(
                conf_out.reshape(-1)[counted], rank_out.reshape(-1)[counted] == 0
            )
        if totals.groups is not None and seg2 is not None:
            assert rank_out is not None and loss_out is not None and logprob_out is not None
            _fold_groups(
                totals.groups,
                seg2[rows, cols],
                t_block,
                rank_out,
                loss_out,
                logprob_out,
                plan.weight,
                counted,
                n_classes,
            )
    return totals, outputs


def plan_linear_evaluation(
    head: Head, target: object, options: EvalOptions, segments: object = None
) -> EvalPlan:
    """Checks one batch of an evaluation from a linear head: the target
    against the logits the head would give (classes on their last axis)."""
    return plan_evaluation(head.logits_shaped(), target, replace(options, axis=-1), segments)


def run_linear_evaluation(
    plan: EvalPlan, head: Head, per_sample: bool, block_bytes: int
) -> tuple[Totals, PerSample | None]:
    """:func:`run_evaluation` on the logits of ``head``, made a block of rows
    at a time into one buffer of at most ``block_bytes`` (at least a row).
    Rows of ignored targets are skipped unless per-sample results are asked
    for (they have a prediction, a confidence and an entropy)."""
    options = plan.options
    # every group is listed, even one whose tokens are all ignored (and skipped)
    totals = Totals.empty(
        options.topk,
        options.bins,
        _group_ids(plan.segments2),
        len(options.temperatures),
        options.equal_mass,
    )
    outputs = _per_sample_arrays(plan.target_shape, plan.dtype) if per_sample else None
    index1 = plan.index2.reshape(-1)
    segments1 = None if plan.segments2 is None else plan.segments2.reshape(-1)
    ignore_value, has_ignore = options.ignore
    if has_ignore and not per_sample:
        rows = np.flatnonzero(index1 != ignore_value)
    else:
        rows = np.arange(index1.size)
    if rows.size == 0:
        return totals, outputs
    h2, layer, b_c = head.operands()
    n_classes, dtype = head.n_classes, head.dtype
    block_rows = block_rows_for(rows.size, n_classes, dtype, block_bytes)
    # an output layer not in the computing dtype is converted a slice at a time
    class_step = max(1, block_bytes // (head.n_features * dtype.itemsize))
    buffer = np.empty((block_rows, n_classes), dtype=dtype)
    products = Products(dtype)
    with blas_threads(options.threads):
        for start in range(0, rows.size, block_rows):
            picked = rows[start : start + block_rows]
            n = picked.size
            head.block_logits(h2, layer, b_c, picked, buffer, products, class_step)
            block_plan = EvalPlan(
                options=options,
                x3=buffer[:n].reshape(n, n_classes, 1),
                index2=index1[picked].reshape(n, 1),
                weight=plan.weight,
                n_classes=n_classes,
                axis=1,
                target_shape=(n,),
                dtype=dtype,
                segments2=None if segments1 is None else segments1[picked].reshape(n, 1),
            )
            block_totals, block_outputs = run_evaluation(block_plan, per_sample)
            totals.merge(block_totals)
            if outputs is not None and block_outputs is not None:
                for name in PerSample.__dataclass_fields__:
                    getattr(outputs, name).reshape(-1)[picked] = getattr(block_outputs, name)
    return totals, outputs


class Accumulator:
    """Exact running totals of the evaluation metrics over batches.

    ``update(logits, target)`` adds a batch; ``merge(other)`` adds the totals
    of another accumulator (another worker, another shard); ``result()``
    gives what :func:`evaluate` over all the samples at once gives.  The
    options are :func:`fastce.cross_entropy`'s, fixed when the accumulator is
    made, plus the metrics' ``topk`` and ``bins``.  Accumulators pickle.

    An update applies completely or not at all: a batch that fails its
    checks, or an error or interrupt part way through a large batch, leaves
    the totals as they were.  Several threads may update, merge into and
    read one accumulator at once: each batch's totals are computed apart and
    folded in under a lock, so none is lost.  The class count is fixed by
    the first batch with a sample; an accumulator cannot be merged into
    itself (merge a copy to double it).

    Parameters
    ----------
    weight : array_like of shape (C,), optional
        A weight per class (the loss only).
    ignore_index : int, default -100
        Targets equal to it count in no metric.
    label_smoothing : float in [0, 1], default 0.0
        As in :func:`fastce.cross_entropy` (the loss only).
    axis : int, optional
        The class axis (``None``: PyTorch's rule).
    topk : int or sequence of int, default (1, 5)
        The ``k`` of the top-k accuracies.
    bins : int, default 15
        Equal-width confidence bins of the calibration error.
    num_threads : int, optional
        The most threads an update may use.
    softcap, temperature : float, optional
        The logit transform of :func:`fastce.cross_entropy`, applied in every
        metric (the probabilities, ranks, confidence and entropy are those
        of the transformed logits).
    z_loss : float, default 0.0
        The z-loss coefficient: its mean is reported as ``z_loss`` apart from
        the loss.
    temperatures : sequence of float, optional
        A temperature scan, as in :func:`evaluate`.
    equal_mass : bool, default False
        Also equal-mass calibration bins, as in :func:`evaluate`: the
        accumulator keeps every counted sample's confidence (9 bytes each).

    Batches may bring ``segments`` (groups merged by id across batches) and
    a ``reference`` model's logits; every batch of one accumulator has them
    or none has.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.standard_normal((1000, 10)); target = rng.integers(0, 10, 1000)
    >>> acc = fastce.Accumulator(topk=(1, 3))
    >>> for start in range(0, 1000, 300):          # batches of uneven size
    ...     acc.update(logits[start:start + 300], target[start:start + 300])
    >>> streamed = acc.result()
    >>> whole = fastce.evaluate(logits, target, topk=(1, 3))
    >>> streamed.loss == whole.loss, streamed.accuracy == whole.accuracy
    (True, True)
    >>> bool(np.isclose(streamed.loss, fastce.cross_entropy(logits, target), rtol=1e-12))
    True
    """

    def __init__(
        self,
        weight: ArrayLike | None = None,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        axis: SupportsIndex | None = None,
        topk: int | Iterable[int] = (1, 5),
        bins: int = 15,
        num_threads: int | None = None,
        softcap: float | None = None,
        temperature: float = 1.0,
        z_loss: float = 0.0,
        temperatures: Iterable[float] | None = None,
        equal_mass: bool = False,
    ) -> None:
        options = check_eval_options(
            weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            axis=axis,
            topk=topk,
            bins=bins,
            num_threads=num_threads,
            softcap=softcap,
            temperature=temperature,
            z_loss=z_loss,
            temperatures=temperatures,
            equal_mass=equal_mass,
        )
        self._options = options
        self.label_smoothing: float = options.label_smoothing
        self.ignore_index: int = options.ignore_index
        self.weight: NDArray[np.float64] | None = options.weight
        self.axis: int | None = options.axis
        self.topk: tuple[int, ...] = options.topk
        self.bins: int = options.bins
        self.num_threads: int | None = options.num_threads
        # updates and merges from several threads fold their totals one at a time
        self._lock: threading.Lock = threading.Lock()
        self.reset()

    # ---- state -------------------------------------------------------------

    def reset(self) -> None:
        """Forget every sample seen."""
        with self._lock:
            self.n_classes: int | None = None
            # whether the batches have segments, and a reference; None before the first one
            self.grouped: bool | None = None
            self.paired: bool | None = None
            self._totals = Totals.empty(
                self.topk,
                self.bins,
                scans=len(self._options.temperatures),
                equal_mass=self._options.equal_mass,
            )

    def _check_classes(self, n_classes: int, axis: int) -> None:
        if self.n_classes is not None and n_classes != self.n_classes:
            raise ValueError(
                f"logits have {n_classes} classes along axis {axis} but earlier batches had "
                f"{self.n_classes}; every batch of one evaluation needs the same classes."
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Samples seen that are not ignored."""
        return self._totals.samples

    @property
    def weight_sum(self) -> float:
        """The sum of their targets' class weights."""
        return self._totals.sum_of(_metrics.WEIGHT_ROW)

    @property
    def loss_sum(self) -> float:
        """The summed loss so far (``cross_entropy(..., reduction="sum")``)."""
        return self._totals.sum_of(_metrics.LOSS_ROW)

    @property
    def loss(self) -> float:
        """The mean loss so far (``cross_entropy(..., reduction="mean")``)."""
        return _divide(self.loss_sum, self.weight_sum)

    def _config(self) -> tuple[Any, ...]:
        return (
            self.topk,
            self.bins,
            self.ignore_index,
            self.label_smoothing,
            self.axis,
            self._options.transform,
            self._options.temperatures,
            self._options.equal_mass,
        )

    def _same_weight(self, other: Accumulator) -> bool:
        if self.weight is None or other.weight is None:
            return self.weight is None and other.weight is None
        return self.weight.shape == other.weight.shape and np.array_equal(self.weight, other.weight)

    # ---- the three operations --------------------------------------------

    @overload
    def update(
        self,
        logits: ArrayLike,
        target: ArrayLike,
        *,
        segments: ArrayLike | None = ...,
        reference: ArrayLike | None = ...,
        per_sample: Literal[False] = ...,
    ) -> None: ...
    @overload
    def update(
        self,
        logits: ArrayLike,
        target: ArrayLike,
        *,
        segments: ArrayLike | None = ...,
        reference: ArrayLike | None = ...,
        per_sample: Literal[True],
    ) -> PerSample: ...
    @overload
    def update(
        self,
        logits: ArrayLike,
        target: ArrayLike,
        *,
        segments: ArrayLike | None = ...,
        reference: ArrayLike | None = ...,
        per_sample: bool = ...,
    ) -> PerSample | None: ...
    def update(
        self,
        logits: ArrayLike,
        target: ArrayLike,
        *,
        segments: ArrayLike | None = None,
        reference: ArrayLike | None = None,
        per_sample: bool = False,
    ) -> PerSample | None:
        """Add a batch.

        ``logits`` and ``target`` are what :func:`fastce.cross_entropy` takes
        with class-index targets; the class count must not change between
        batches.  ``segments`` gives each token's group id (see
        :func:`evaluate`): a group may continue in later batches, and either
        every batch of an accumulator has segments or none has, and the same
        for ``reference``, the batch's logits from a reference model.  Large
        inputs (a memory-mapped file, say) are read in blocks without a full
        copy.  Returns a :class:`PerSample` of this batch when ``per_sample``
        is true, else None.
        """
        plan = plan_evaluation(logits, target, self._options, segments, reference)
        return self._add_batch(plan, lambda: run_evaluation(plan, per_sample))

    def update_linear(
        self,
        hidden: ArrayLike,
        linear_weight: ArrayLike,
        target: ArrayLike,
        linear_bias: ArrayLike | None = None,
        *,
        segments: ArrayLike | None = None,
        per_sample: bool = False,
        max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> PerSample | None:
        """Add a batch given as hidden states and a linear head: the logits
        ``hidden @ linear_weight.T + linear_bias`` (classes on their last
        axis), made block by block as :func:`evaluate_linear` makes them."""
        head = check_head(hidden, linear_weight, linear_bias)
        block_bytes = check_block_bytes(max_block_bytes)
        plan = plan_linear_evaluation(head, target, self._options, segments)
        return self._add_batch(
            plan, lambda: run_linear_evaluation(plan, head, per_sample, block_bytes)
        )

    def _add_batch(
        self, plan: EvalPlan, run: Callable[[], tuple[Totals, PerSample | None]]
    ) -> PerSample | None:
        """Folds in the totals ``run`` computes for the checked batch ``plan``."""
        outer, _, inner = plan.x3.shape
        grouped = plan.segments2 is not None
        paired = plan.reference3 is not None
        if outer * inner == 0:
            # an empty batch fixes nothing, not even the class count
            return run()[1]
        self._check_classes(plan.n_classes, plan.axis)
        self._check_kind(grouped, paired)
        # the batch's totals are made apart and added at the end, so that an
        # update applies completely or not at all
        totals, outputs = run()
        with self._lock:
            self._check_classes(plan.n_classes, plan.axis)
            self._check_kind(grouped, paired)
            self.n_classes = plan.n_classes
            self.grouped, self.paired = grouped, paired
            self._totals.merge(totals)
        return outputs

    def _check_kind(self, grouped: bool, paired: bool) -> None:
        if self.grouped is not None and grouped != self.grouped:
            raise ValueError(
                "every batch of one evaluation needs segments, or none does: earlier batches "
                + ("had segments and this one has none" if self.grouped else "had no segments")
                + " (the groups' totals and clustered errors would miss tokens)"
            )
        if self.paired is not None and paired != self.paired:
            raise ValueError(
                "every batch of one evaluation needs a reference, or none does: earlier batches "
                + ("had one and this one has none" if self.paired else "had none")
            )

    def merge(self, other: Accumulator) -> Accumulator:
        """Add the totals of ``other`` (made with the same options); returns self."""
        if not isinstance(other, Accumulator):
            raise TypeError(f"can only merge another Accumulator, not {type(other).__name__}")
        if self._config() != other._config() or not self._same_weight(other):
            raise ValueError(
                "cannot merge accumulators made with different options: "
                f"{self._describe()} vs {other._describe()}"
            )
        if other is self:
            raise ValueError(
                "cannot merge an accumulator into itself (its totals would be counted twice); "
                "merge a copy (copy.deepcopy(acc)) if doubling is what you want"
            )
        # both locks, always in the same order, so that two merges cannot wait on each other
        first, second = sorted((self, other), key=id)
        with first._lock, second._lock:
            if None not in (self.grouped, other.grouped) and self.grouped != other.grouped:
                raise ValueError(
                    "cannot merge an accumulator of batches with segments and one without"
                )
            if None not in (self.paired, other.paired) and self.paired != other.paired:
                raise ValueError(
                    "cannot merge an accumulator of batches with a reference and one without"
                )
            if other.n_classes is not None:
                if self.n_classes is not None and other.n_classes != self.n_classes:
                    raise ValueError(
                        f"cannot merge accumulators of {self.n_classes} and "
                        f"{other.n_classes} classes"
                    )
                self.n_classes = other.n_classes
            if other.grouped is not None:
                self.grouped = other.grouped
            if other.paired is not None:
                self.paired = other.paired
            self._totals.merge(other._totals)
        return self

    def result(self, per_sample: PerSample | None = None) -> EvalResult:
        """The metrics over every sample seen (nan where there are none)."""
        with self._lock:
            # one consistent set of totals, whatever other threads add meanwhile
            totals = self._totals.copy()
        return totals.result(per_sample, self._options.transform.z_loss, self._options.temperatures)

    # ---- presentation ----------------------------------------------------

    def _describe(self) -> str:
        parts = [
            f"topk={self.topk}",
            f"bins={self.bins}",
            f"ignore_index={self.ignore_index}",
            f"label_smoothing={self.label_smoothing}",
            f"axis={self.axis}",
        ]
        options = self._options
        if options.softcap is not None:
            parts.append(f"softcap={options.softcap!r}")
        if options.temperature != 1.0:
            parts.append(f"temperature={options.temperature!r}")
        if options.z_loss != 0.0:
            parts.append(f"z_loss={options.z_loss!r}")
        if options.temperatures:
            parts.append(f"temperatures={list(options.temperatures)!r}")
        if options.equal_mass:
            parts.append("equal_mass=True")
        if self.weight is not None:
            parts.insert(0, f"weight={np.asarray(self.weight).tolist()!r}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"Accumulator({self._describe()}; count={self.count}, loss={self.loss:.6g})"


def evaluate(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    topk: int | Iterable[int] = (1, 5),
    bins: int = 15,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    segments: ArrayLike | None = None,
    reference: ArrayLike | None = None,
    per_sample: bool = False,
    num_threads: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    temperatures: Iterable[float] | None = None,
    equal_mass: bool = False,
) -> EvalResult:
    """Loss, perplexity, top-k accuracy, confidence, entropy and calibration
    error from one pass over the logits, with standard errors, and per-group
    scores when ``segments`` are given.

    Parameters
    ----------
    logits, target, weight, ignore_index, label_smoothing, axis, num_threads
        As in :func:`fastce.cross_entropy`, with class-index targets.
        ``logits`` may be a memory-mapped array larger than memory: it is
        read in blocks, never copied whole.
    topk : int or sequence of int, default (1, 5)
        The ``k`` of the top-k accuracies (``k`` above the class count gives
        1.0 for every row with defined probabilities).
    bins : int, default 15
        Equal-width confidence bins over ``[0, 1]`` for the calibration error.
    segments : array of int, optional
        A group id per token (the target's shape), e.g. the document or the
        continuation each token belongs to, in a packed batch several per
        row.  Gives ``.groups`` (:class:`GroupResult`: per group its summed
        log-likelihood, tokens, mean loss, greedy match and top-k hit rates),
        the macro (mean over groups) loss and perplexity, and standard errors
        clustered by group.  Ignored tokens count in no group; a group whose
        tokens are all ignored is listed, empty.
    reference : array, optional
        Another model's logits of the same shape (a quantised, distilled or
        draft model's reference), read beside the logits a block at a time
        and computed in their dtype.  Gives ``.paired``
        (:class:`PairedResult`): KL(reference || model) with percentiles,
        top-1 agreement, the change in the target's probability, and the
        log perplexity ratio with its paired standard error, over the
        samples counted.  Its logits are taken as they are (no soft-cap or
        temperature).
    per_sample : bool, default False
        Also return per-sample arrays (:class:`PerSample`) in ``.per_sample``.
    softcap, temperature : float, optional
        The logit transform of :func:`fastce.cross_entropy`
        (``softcap * tanh(logits / softcap) / temperature``), applied inside
        the kernels to every metric: the loss, the probabilities behind the
        confidence, entropy and calibration, and the ranks.
    z_loss : float, default 0.0
        Reports the mean z-loss (``z_loss * w[t] * lse**2``) as ``.z_loss``;
        the loss and perplexity stay the cross-entropy's alone.
    temperatures : sequence of float, optional
        A temperature scan: ``.by_temperature[T]`` holds every metric (NLL,
        ECE, Brier, accuracy, ...) of ``logits / T`` (after the soft-cap,
        in place of ``temperature``) for each ``T``.  The logits are read
        once: each block of a few MiB is evaluated at every temperature
        while it is in the caches.
    equal_mass : bool, default False
        Also the ECE over ``bins`` equal-mass bins (``.ece_equal_mass``,
        ``.mass_bins``), which needs every sample's confidence: 9 bytes per
        sample, kept by an :class:`Accumulator` until its result.

    Returns
    -------
    EvalResult
        See the module documentation (``fastce.metrics``) for the definitions
        and the tie rule: a target's rank counts the classes with a larger
        logit and those with an equal logit at a lower index.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`fastce.cross_entropy` for bad inputs; ``ValueError`` for a
        bad ``topk`` or ``bins``; ``TypeError`` for probability targets.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3], [1.0, 1.0, 3.0]])
    >>> r = fastce.evaluate(logits, np.array([0, 0, 2]), topk=(1, 2), bins=10)
    >>> round(r.loss, 6), r.accuracy, r.count
    (0.958875, {1: 0.6666666666666666, 2: 1.0}, 3)
    >>> r = fastce.evaluate(logits, np.array([0, 0, 2]), per_sample=True)
    >>> r.per_sample.prediction, r.per_sample.target_rank
    (array([0, 1, 2]), array([0, 1, 0]))
    """
    options = check_eval_options(
        weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        axis=axis,
        topk=topk,
        bins=bins,
        num_threads=num_threads,
        softcap=softcap,
        temperature=temperature,
        z_loss=z_loss,
        temperatures=temperatures,
        equal_mass=equal_mass,
    )
    plan = plan_evaluation(logits, target, options, segments, reference)
    totals, outputs = run_evaluation(plan, per_sample)
    return totals.result(outputs, options.transform.z_loss, options.temperatures)


def evaluate_linear(
    hidden: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    linear_bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    *,
    topk: int | Iterable[int] = (1, 5),
    bins: int = 15,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    segments: ArrayLike | None = None,
    per_sample: bool = False,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    num_threads: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    temperatures: Iterable[float] | None = None,
    equal_mass: bool = False,
) -> EvalResult:
    """:func:`evaluate` of the logits ``hidden @ linear_weight.T + linear_bias``
    without holding them: each block of rows is multiplied into one buffer of
    at most ``max_block_bytes`` and evaluated there.

    The arguments are :func:`fastce.linear_cross_entropy`'s (the classes are
    the linear output's last axis) and :func:`evaluate`'s options; every
    metric equals :func:`evaluate` on the full logits.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> rng = np.random.default_rng(0)
    >>> h = rng.standard_normal((500, 8)); W = rng.standard_normal((40, 8))
    >>> t = rng.integers(0, 40, 500)
    >>> r = fastce.evaluate_linear(h, W, t, max_block_bytes=40 * 8 * 64)
    >>> whole = fastce.evaluate(h @ W.T, t)
    >>> bool(np.isclose(r.loss, whole.loss, rtol=1e-12)), r.accuracy == whole.accuracy
    (True, True)
    """
    options = check_eval_options(
        weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        topk=topk,
        bins=bins,
        num_threads=num_threads,
        softcap=softcap,
        temperature=temperature,
        z_loss=z_loss,
        temperatures=temperatures,
        equal_mass=equal_mass,
    )
    head = check_head(hidden, linear_weight, linear_bias)
    block_bytes = check_block_bytes(max_block_bytes)
    plan = plan_linear_evaluation(head, target, options, segments)
    totals, outputs = run_linear_evaluation(plan, head, per_sample, block_bytes)
    return totals.result(outputs, options.transform.z_loss, options.temperatures)


@dataclass(frozen=True)
class TemperatureFit:
    """What :func:`fit_temperature` returns: the NLL-optimal ``temperature``,
    the mean loss at it and at temperature 1, and how many times the logits
    were read."""

    temperature: float
    loss: float
    loss_at_one: float
    passes: int


# the temperatures fit_temperature searches, and the steps of its bracketing
_TEMPERATURE_LIMITS = (1e-4, 1e4)
_BRACKET_STEP = math.log(4.0)


def _find_root(
    g: Callable[[float], float],
    a: float,
    b: float,
    ga: float,
    gb: float,
    xtol: float,
    gtol: float,
) -> float:
    """A root of ``g`` between ``a`` and ``b``, where ``g`` has opposite signs,
    to ``xtol``, or a point where ``|g| <= gtol``: Brent's method (secant and
    inverse quadratic steps, bisection where they would leave the bracket or
    stall), one call of ``g`` a step."""
    prev, cur, g_prev, g_cur = a, b, ga, gb
    far, g_far = a, ga  # the bracket's other end
    step = prev_step = cur - prev
    for _ in range(200):
        if g_prev != 0.0 and (g_prev > 0) != (g_cur > 0):
            far, g_far = prev, g_prev
            step = prev_step = cur - prev
        if abs(g_far) < abs(g_cur):
            # the end with the smaller value becomes the current estimate
            prev, cur, far = cur, far, cur
            g_prev, g_cur, g_far = g_cur, g_far, g_cur
        delta = 0.5 * (xtol + 4e-16 * abs(cur))
        bisect = 0.5 * (far - cur)
        if abs(g_cur) <= gtol or abs(bisect) < delta:
            return cur
        if abs(prev_step) > delta and abs(g_cur) < abs(g_prev):
            if prev == far:  # secant
                trial = -g_cur * (cur - prev) / (g_cur - g_prev)
            else:  # inverse quadratic through the three points
                d_prev = (g_prev - g_cur) / (prev - cur)
                d_far = (g_far - g_cur) / (far - cur)
                trial = (
                    -g_cur * (g_far * d_far - g_prev * d_prev) / (d_far * d_prev * (g_far - g_prev))
                )
            if 2.0 * abs(trial) < min(abs(prev_step), 3.0 * abs(bisect) - delta):
                prev_step, step = step, trial
            else:
                prev_step = step = bisect
        else:
            prev_step = step = bisect
        prev, g_prev = cur, g_cur
        cur += step if abs(step) > delta else math.copysign(delta, bisect)
        g_cur = g(cur)
    return cur


def fit_temperature(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    softcap: float | None = None,
    num_threads: int | None = None,
    xtol: float = 1e-10,
) -> TemperatureFit:
    """The temperature ``T`` that minimises the mean loss of ``logits / T``
    (temperature scaling, the usual calibration of a classifier's
    probabilities), found in a few passes over the logits.

    The mean loss is ``cross_entropy(logits, target, weight, ...,
    temperature=T)`` with every option of :func:`fastce.cross_entropy` for
    class-index targets (and a ``softcap`` applied before the temperature).
    In ``s = 1 / T`` it is convex, with the exact derivative
    ``sum_n (loss_n - A_n H_n) / (s W)``: ``H_n`` the entropy of sample
    ``n``'s probabilities, ``A_n`` its loss coefficients' sum (``w[t]``
    without label smoothing), ``W`` the weight sum.  Each evaluation of that
    derivative is one read of the logits (a memory map is read in blocks);
    its root is bracketed by steps of a factor 4 from ``T = 1`` and then
    found by Brent's method to ``xtol`` in ``log T``.

    Raises ``ValueError`` when the loss keeps falling as ``T`` leaves
    ``[1e-4, 1e4]`` (every target already the only likely class, or the
    logits carry no information about the targets) or is NaN, besides
    :func:`evaluate`'s errors.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> rng = np.random.default_rng(0)
    >>> target = rng.integers(0, 10, 5000)
    >>> logits = rng.standard_normal((5000, 10)) + 2.0 * np.eye(10)[target]
    >>> fit = fastce.fit_temperature(logits, target)
    >>> round(fit.temperature, 4), fit.loss < fit.loss_at_one
    (0.4944, True)
    >>> sharp = fastce.fit_temperature(3.0 * logits, target)  # 3x too confident
    >>> round(sharp.temperature / fit.temperature, 8)
    3.0
    """
    options = check_eval_options(
        weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        axis=axis,
        topk=1,
        bins=1,
        num_threads=num_threads,
        softcap=softcap,
    )
    if not isinstance(xtol, (int, float)) or not 0.0 < xtol < 1.0:
        raise ValueError(f"xtol must be a number in (0, 1); got {xtol!r}")
    plan = plan_evaluation(logits, target, options)
    w = plan.weight
    # A_n = (1 - eps) w[t] + eps / C * sum_c w[c]
    smoothing_share = options.label_smoothing / plan.n_classes
    class_weight_sum = float(w.sum()) if w.size else float(plan.n_classes)
    seen: dict[float, tuple[float, float]] = {}

    def slope(log_scale: float) -> float:
        """The sign-carrying part of the loss's derivative in ``s = exp(log_scale)``,
        relative to the size of its terms; records the mean loss too."""
        transform = options.transform._replace(logit_scale=math.exp(log_scale))
        scaled = replace(plan, options=replace(options, transform=transform))
        totals, _ = run_evaluation(scaled, False)
        weight_sum = totals.sum_of(_metrics.WEIGHT_ROW)
        loss_sum = totals.sum_of(_metrics.LOSS_ROW)
        entropy_part = (1.0 - options.label_smoothing) * totals.sum_of(
            _metrics.WEIGHTED_ENTROPY_ROW
        ) + smoothing_share * class_weight_sum * totals.sum_of(_metrics.ENTROPY_ROW)
        if loss_sum == 0.0 and entropy_part == 0.0 and weight_sum:
            # every probability rounds to 0 or 1: the loss can only fall further
            raise_unbounded(_BRACKET_STEP)
        value = _divide(loss_sum - entropy_part, abs(loss_sum) + abs(entropy_part))
        seen[log_scale] = (value, _divide(loss_sum, weight_sum))
        if not math.isfinite(value):
            raise ValueError(
                "the loss or its derivative is not finite at temperature "
                f"{math.exp(-log_scale):.6g} (NaN or infinite logits, or no sample counted); "
                "fit_temperature needs finite logits and at least one target not ignored"
            )
        return value

    def raise_unbounded(step: float) -> None:
        raise ValueError(
            "the loss has no minimum at a temperature in "
            + f"[{_TEMPERATURE_LIMITS[0]:g}, {_TEMPERATURE_LIMITS[1]:g}]: it keeps falling as "
            + ("the temperature goes up: " if step < 0 else "the temperature goes down: ")
            + (
                "the logits tell nothing about the targets"
                if step < 0
                else "every target is already the most likely class"
            )
        )

    lo_limit, hi_limit = (-math.log(t) for t in reversed(_TEMPERATURE_LIMITS))
    a, ga = 0.0, slope(0.0)
    # the derivative rises with s: step s down while it is positive, up while negative
    step = -_BRACKET_STEP if ga > 0 else _BRACKET_STEP
    b, gb = a, ga
    while (gb > 0) == (ga > 0) and gb != 0.0:
        a, ga = b, gb
        b = a + step
        if not lo_limit <= b <= hi_limit:
            raise_unbounded(step)
        gb = slope(b)
    # the derivative's own rounding: logits scaled in float32 cannot resolve it further
    gtol = 1e-12 if plan.dtype.itemsize == 8 else 1e-7
    root = b if gb == 0.0 else _find_root(slope, a, b, ga, gb, xtol, gtol)
    if root not in seen:
        slope(root)
    return TemperatureFit(
        temperature=math.exp(-root),
        loss=seen[root][1],
        loss_at_one=seen[0.0][1],
        passes=len(seen),
    )
