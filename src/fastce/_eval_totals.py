"""Exact streaming totals of the evaluation metrics (compensated float64 sums,
integer counts), their merge, and the result made from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _metrics
from ._eval_results import EvalResult, GroupResult, PairedResult, PerSample, Reliability

_BIN_ROWS = _metrics.FIRST_BIN_ROW  # the sums' rows before the per-bin ones


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


def ratio_or_nan(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


# z of a two-sided 95 % normal interval
_Z95 = 1.959963984540054

# the quantities of a group's double-double sums, in group_fold's order
_GROUP_LOSS, _GROUP_WEIGHT, _GROUP_LOGPROB = range(3)


def _dd_values(pairs: NDArray[np.float64]) -> NDArray[np.float64]:
    """``hi + lo`` of double-double pairs ``(..., 2)`` (``hi`` where not finite;
    the caller ignores the invalid operations of infinite pairs, as
    ``Totals.result`` does)."""
    hi, lo = pairs[..., 0], pairs[..., 1]
    return np.where(np.isfinite(hi), hi + lo, hi)


def _clustered_se(
    values: NDArray[np.float64], sizes: NDArray[np.float64], ratio: float | NDArray[np.float64]
) -> NDArray[np.float64]:
    """The standard error of the ratio ``sum(values) / sum(sizes)`` = ``ratio``
    over clusters (samples or groups): ``sqrt(G / (G - 1) * sum e**2) /
    sum(sizes)`` with residuals ``e = values - ratio * sizes`` over the ``G``
    clusters given; ``values`` of shape ``(G,)`` or ``(G, K)``, a ratio per
    column, gives one error per column."""
    g = values.shape[0]
    total = float(sizes.sum())
    ratio = np.asarray(ratio, dtype=np.float64)
    if g < 2 or not total:
        return np.full(ratio.shape, math.nan)
    # the caller's error state holds (Totals.result): an infinite loss gives NaN
    residual = values - ratio * (sizes if ratio.ndim == 0 else sizes[:, None])
    squares = np.add.reduce(residual * residual, axis=0)
    errors: NDArray[np.float64] = np.sqrt(g / (g - 1) * squares) / total
    return errors


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
        """Adds the tokens of a block (1-d arrays, ids among ``ids``): their
        ranks, losses, target weights (empty: each 1) and target
        log-probabilities.  A rank of -1 marks an ignored token, left out; a
        rank of ``n_classes`` a row without probabilities, never a hit."""
        if loss.dtype != logprob.dtype or loss.dtype not in (np.float32, np.float64):
            loss, logprob = loss.astype(np.float64), logprob.astype(np.float64)
        _metrics.group_fold(
            self.ids,
            np.ascontiguousarray(segments, dtype=np.int64),
            np.ascontiguousarray(rank, dtype=np.int64),
            np.array([min(k, n_classes) for k in self.topk], dtype=np.int64),
            np.ascontiguousarray(loss),
            np.ascontiguousarray(target_weight, dtype=np.float64),
            np.ascontiguousarray(logprob),
            self.count,
            self.top1,
            self.correct,
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
        """The per-group results; called within Totals.result's error state,
        where an empty group's 0 / 0 is its NaN, not a warning."""
        values = _dd_values(self.sums)
        loss_sum = values[:, _GROUP_LOSS]
        weight_sum = values[:, _GROUP_WEIGHT]
        counted = self.count > 0
        loss = np.where(counted, loss_sum / weight_sum, math.nan)
        perplexity = np.exp(loss)
        # every k at once, a column each (a count of 0 gives NaN)
        rates = np.ascontiguousarray((self.correct / self.count[:, None]).T)
        accuracy = dict(zip(self.topk, rates))
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
        gap, count, accuracy, confidence, lower, upper = _metrics.equal_mass_bins(
            conf, hit.view(np.uint8), bins
        )
        return ratio_or_nan(gap, conf.size), Reliability(count, accuracy, confidence, lower, upper)


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
        # one state for every exponential and division of the metrics: each
        # NaN or infinity they give is a metric's value, not a warning
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._result(per_sample, z_loss, temperatures)

    def _result(
        self, per_sample: PerSample | None, z_loss: float, temperatures: tuple[float, ...]
    ) -> EvalResult:
        n = self.samples
        # every sum as a float at once: hi + lo (hi where not finite)
        total = _dd_values(self.sums).tolist()
        loss_sum, weight_sum = total[_metrics.LOSS_ROW], total[_metrics.WEIGHT_ROW]
        bin_conf = np.array(total[_BIN_ROWS:])
        loss = ratio_or_nan(loss_sum, weight_sum)
        perplexity = float(np.exp(loss))
        bin_accuracy = self.bin_correct / self.bin_samples
        bin_confidence = bin_conf / self.bin_samples
        gaps = np.abs(self.bin_correct - bin_conf)
        mass = None if self.calibration is None else self.calibration.bins(len(bin_conf))
        accuracy = {k: ratio_or_nan(c, n) for k, c in zip(self.topk, self.correct.tolist())}
        group_totals = self.groups
        groups = None if group_totals is None else group_totals.result()
        if group_totals is None or groups is None:
            loss_se = self._loss_se(total, loss)
            accuracy_se = {k: _bernoulli_se(p, n) for k, p in accuracy.items()}
            macro_loss = macro_perplexity = math.nan
        else:
            # clustered by group: tokens of one group are not independent
            # the groups with tokens counted: all of them, usually, taken as views
            counted: NDArray[np.bool_] | slice = (
                slice(None) if groups.count.all() else groups.count > 0
            )
            sizes = groups.count[counted].astype(np.float64)
            loss_se = float(
                _clustered_se(groups.loss_sum[counted], groups.weight_sum[counted], loss)
            )
            hits = group_totals.correct[counted].astype(np.float64)
            errors = _clustered_se(hits, sizes, np.array(list(accuracy.values())))
            accuracy_se = dict(zip(accuracy, errors.tolist()))
            g = sizes.size
            macro_loss = float(groups.loss[counted].sum()) / g if g else math.nan
            macro_perplexity = float(groups.perplexity[counted].sum()) / g if g else math.nan
        interval = (float(np.exp(loss - _Z95 * loss_se)), float(np.exp(loss + _Z95 * loss_se)))
        return EvalResult(
            loss=loss,
            perplexity=perplexity,
            accuracy=accuracy,
            confidence=ratio_or_nan(total[_metrics.CONFIDENCE_ROW], n),
            entropy=ratio_or_nan(total[_metrics.ENTROPY_ROW], n),
            brier=ratio_or_nan(total[_metrics.BRIER_ROW], n),
            ece=ratio_or_nan(float(np.sum(gaps)), n),
            count=n,
            weight_sum=weight_sum,
            z_loss=z_loss * ratio_or_nan(total[_metrics.LSE_SQUARED_ROW], weight_sum)
            if z_loss
            else 0.0,
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
            paired=None if self.kl_samples is None else self._paired(total, loss, weight_sum),
            by_temperature={
                t: scan._result(None, z_loss, ()) for t, scan in zip(temperatures, self.scans)
            },
        )

    def _paired(self, total: list[float], loss: float, weight_sum: float) -> PairedResult:
        """The comparison with the reference, from the paired sums (``total``:
        every sum as a float)."""
        n = self.samples
        kl = np.concatenate([np.zeros(0), *(self.kl_samples or [])])
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
        ref_loss = ratio_or_nan(total[_metrics.REF_LOSS_ROW], weight_sum)
        dp_mean = ratio_or_nan(total[_metrics.DP_ROW], n)
        dp_squares = total[_metrics.DP_SQUARED_ROW] - n * dp_mean * dp_mean
        # the loss difference d = l - l_ref per sample: a ratio sum d / sum w
        ratio = loss - ref_loss
        diff_weight = total[_metrics.LOSS_WEIGHT_ROW] - total[_metrics.REF_LOSS_WEIGHT_ROW]
        squares = (
            total[_metrics.DIFF_SQUARED_ROW]
            - 2.0 * ratio * diff_weight
            + ratio * ratio * total[_metrics.WEIGHT_SQUARED_ROW]
        )
        reference_perplexity = float(np.exp(ref_loss))
        return PairedResult(
            kl=ratio_or_nan(total[_metrics.KL_ROW], n),
            kl_percentiles=percentiles,
            top1_agreement=ratio_or_nan(total[_metrics.AGREE_ROW], n),
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

    def _loss_se(self, total: list[float], loss: float) -> float:
        """The standard error of the mean loss ``sum l / sum w`` over
        independent samples, from the second moments: ``sum e**2`` with
        ``e = l - loss * w`` is ``sum l**2 - 2 loss sum l w + loss**2 sum w**2``."""
        squares = (
            total[_metrics.LOSS_SQUARED_ROW]
            - 2.0 * loss * total[_metrics.LOSS_WEIGHT_ROW]
            + loss * loss * total[_metrics.WEIGHT_SQUARED_ROW]
        )
        return self._ratio_se(squares, total[_metrics.WEIGHT_ROW])


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
    # the bins as groups: their counts, top-1 hits, top-k hits and summed confidences
    bin_totals = GroupTotals.of_ids(topk, np.arange(bins, dtype=np.int64))
    zeros = np.zeros(n)
    bin_totals.fold(b, rank, confidence.astype(np.float64), zeros, zeros, n_classes)
    totals.sums[_BIN_ROWS:] = bin_totals.sums[:, _GROUP_LOSS]
    totals.samples = n
    totals.bin_samples = bin_totals.count
    totals.bin_correct = bin_totals.top1
    totals.correct = bin_totals.correct.sum(axis=0)
    return totals
