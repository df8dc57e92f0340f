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

import threading
from collections.abc import Callable, Iterable
from typing import Any, Literal, SupportsIndex, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _metrics
from ._eval_plan import (
    EvalPlan,
    check_eval_options,
    plan_evaluation,
    plan_linear_evaluation,
    run_evaluation,
    run_linear_evaluation,
)
from ._eval_results import EvalResult, GroupResult, PerSample
from ._eval_totals import Totals, ratio_or_nan
from ._temperature import TemperatureFit, fit_temperature
from .linear import (
    DEFAULT_BLOCK_BYTES,
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
        return ratio_or_nan(self.loss_sum, self.weight_sum)

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
