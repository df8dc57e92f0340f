"""What an evaluation returns: the result, per-sample, group, paired and
reliability objects, and the reliability diagram."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


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
KERNEL_OUTPUTS = (
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
