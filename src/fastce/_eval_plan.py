"""An evaluation call from validation to kernel: options checked once into
:class:`EvalOptions`, a batch into an :class:`EvalPlan`, and one
:func:`run_evaluation` that walks it block by block through the kernel."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, SupportsIndex

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels, _metrics
from ._eval_results import KERNEL_OUTPUTS, PerSample
from ._eval_totals import GroupTotals, Totals
from ._kernels import outer_as_inner, samples_closer_than_classes
from ._plan_types import LogitTransform
from ._validate import (
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
    result_dtype,
    view3,
    warn_single_class,
)
from .linear import (
    Head,
    Products,
    blas_threads,
    block_rows_for,
)

# Logits per kernel call (counted in the result dtype) when an input is walked
# in blocks: a memory-mapped file is read block by block, and a byte-swapped
# input is converted one block at a time.  A temperature scan evaluates each
# block once per temperature from the same blocks: its sweeps are bound by
# their exponentials, which hide a read from memory, and smaller blocks for
# the caches' sake only added calls (a scan of one temperature took 10-30 %
# longer with 4 MiB blocks).
_BLOCK_BYTES = 1 << 26


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


def _blocks(n: int, step: int, min_last: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(n)`` in steps of ``step``;
    a last block shorter than ``min_last`` joins the one before."""
    starts = list(range(0, n, step))
    if len(starts) > 1 and n - starts[-1] < min_last:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


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


def _per_sample_array(name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> NDArray[Any]:
    """The per-sample array ``name`` as an ignored sample keeps it: target
    rank -1, the rest 0; prediction and rank int64, the rest ``dtype``."""
    if name == "target_rank":
        return np.full(shape, -1, dtype=np.int64)
    return np.zeros(shape, dtype=np.int64 if name == "prediction" else dtype)


def _per_sample_arrays(shape: tuple[int, ...], dtype: np.dtype[Any]) -> PerSample:
    return PerSample(
        **{field.name: _per_sample_array(field.name, shape, dtype) for field in fields(PerSample)}
    )


def _kernel_outputs(
    shape: tuple[int, ...], dtype: np.dtype[Any], wanted: set[str]
) -> list[NDArray[Any] | None]:
    """The kernel's per-sample arrays (KERNEL_OUTPUTS) named in ``wanted``;
    None for the others, which the kernel then leaves unwritten."""
    return [
        _per_sample_array(name, shape, dtype) if name in wanted else None for name in KERNEL_OUTPUTS
    ]


def _group_ids(segments: NDArray[np.int64] | None) -> NDArray[np.int64] | None:
    """The distinct ids of ``segments``, sorted."""
    if segments is None:
        return None
    flat = segments.reshape(-1)
    if flat.size and (flat[1:] >= flat[:-1]).all():
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
    n_classes: int,
) -> None:
    """Adds a block's tokens (arrays of one shape) to their groups; the
    ignored ones, of rank -1, are left out by the fold."""
    # an ignored target may lie outside the classes: clipped, its weight is never read
    target_weight = np.take(weight, target.reshape(-1), mode="clip") if weight.size else weight
    groups.fold(
        segments.reshape(-1),
        rank.reshape(-1),
        loss.reshape(-1),
        target_weight,
        logprob.reshape(-1),
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
        out2 = [getattr(outputs, name).reshape(outer, inner) for name in KERNEL_OUTPUTS]
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
    if outer > 1:
        step = max(1, _BLOCK_BYTES // (block_bytes * inner))
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
        step = max(tile, _BLOCK_BYTES // block_bytes // tile * tile)
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
            KERNEL_OUTPUTS
        )
        if (seg2 is not None or totals.calibration is not None) and not out2:
            # groups and equal-mass bins are made from some per-sample results
            wanted = {"loss", "target_rank"}
            wanted |= {"target_logprob"} if seg2 is not None else set()
            wanted |= {"confidence"} if totals.calibration is not None else set()
            outs = _kernel_outputs(t2[rows, cols].shape, dtype, wanted)
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
        needs_samples = totals.kl_samples is not None or totals.calibration is not None
        counted: NDArray[np.bool_] | slice = slice(None)
        if has_ignore and needs_samples:
            not_ignored = (t_block != ignore_value).reshape(-1)
            if not not_ignored.all():  # else a slice, which takes views, not copies
                counted = not_ignored
        if totals.kl_samples is not None and kl_block is not None:
            totals.kl_samples.append(kl_block.reshape(-1)[counted].astype(np.float64))
        for scan, scale in zip(totals.scans, scan_scales):
            # the block again at each temperature of the scan
            scan.fold(*block_totals(x_block, t_block, [None] * len(KERNEL_OUTPUTS), scale))
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
