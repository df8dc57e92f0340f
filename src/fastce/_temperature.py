"""The NLL-optimal temperature of a model's logits, found in a few reads."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import SupportsIndex

from numpy.typing import ArrayLike

from . import _metrics
from ._eval_plan import check_eval_options, plan_evaluation, run_evaluation
from ._eval_totals import ratio_or_nan


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
        value = ratio_or_nan(loss_sum - entropy_part, abs(loss_sum) + abs(entropy_part))
        seen[log_scale] = (value, ratio_or_nan(loss_sum, weight_sum))
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
