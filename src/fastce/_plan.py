"""How a call flows: its arguments are checked into a frozen plan, and one
``execute`` runs any plan on the kernels.

A ``plan_*`` function raises every error a call can raise; ``execute`` then
only allocates and writes outputs.  ``execute`` owns what every call needs
between the two: the result buffers and ``out=``, inputs the outputs
overlap, the transposition of sample-major views, the copy back from a
buffer into ``out``, and the reduction.  The plans' types are in
``_plan_types``; ``execute`` is compiled (``_kernels.execute``), and the
commonest calls reach it with a plan ``_kernels.common_plan`` makes without
the checks they pass by construction.
"""

from __future__ import annotations

from typing import Any, SupportsIndex, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from . import _kernels
from ._kernels import flat_aligned
from ._plan_types import (
    CROSS_ENTROPY_INDEX,
    CROSS_ENTROPY_PROBS,
    LOGSUMEXP,
    NLL_LOSS,
    NO_TRANSFORM,
    BinaryPlan,
    ClassPlan,
    LogitTransform,
)
from ._validate import (
    as_array,
    check_classes_present,
    check_grad_output,
    check_ignore_index,
    check_label_smoothing,
    check_num_threads,
    check_out,
    check_reduction,
    check_target,
    check_targets_in_range,
    check_weight,
    class_axis,
    is_float,
    is_real,
    native_float_array,
    normalize_axis,
    result_dtype,
    view3,
    warn_single_class,
)

# what the public functions return: float32 or float64 values (float64 for float64 input)
FloatScalar: TypeAlias = np.floating[Any]
FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]


# ---- plans ---------------------------------------------------------------


def plan_cross_entropy(
    logits: object,
    target: object,
    weight: object,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    axis: SupportsIndex | None,
    want_grad: bool,
    grad_output: object,
    out: FloatArray | None,
    num_threads: int | None,
    transform: LogitTransform = NO_TRANSFORM,
    want_lse: bool = False,
    want_z_loss: bool = False,
) -> ClassPlan:
    """The plan of a cross-entropy call (and of its gradient with
    ``want_grad``, and of each sample's log-sum-exp and z-loss with
    ``want_lse`` and ``want_z_loss``) on the logits ``transform`` makes."""
    threads = check_num_threads(num_threads)
    x = native_float_array(logits, "logits")
    axis = class_axis(axis, x.ndim)
    reduction = check_reduction(reduction)
    smoothing = check_label_smoothing(label_smoothing)
    ignore_value, has_ignore = check_ignore_index(ignore_index)
    n_classes = x.shape[axis]
    x3 = view3(x, axis)
    w = check_weight(weight, n_classes)
    target_plan = check_target(target, x, axis, x3)
    loss_shape = target_plan.shape if target_plan.is_index else x.shape[:axis] + x.shape[axis + 1 :]
    dtype = result_dtype(x.dtype)
    go = check_grad_output(grad_output, reduction, loss_shape) if want_grad else None
    if want_grad and out is not None:
        check_out(out, x.shape, dtype)
    outer, _, inner = x3.shape
    n_samples = outer * inner
    check_classes_present(n_samples, n_classes, axis, x.shape, "logits", "cross-entropy")
    if target_plan.index2 is not None:
        weight_sum = 0.0
        if n_samples:
            weight_sum = check_targets_in_range(
                target, target_plan.index2, n_classes, ignore_value, has_ignore, w
            )
        denominator = weight_sum if reduction == "mean" else 1.0
    else:
        denominator = float(n_samples) if reduction == "mean" else 1.0
    warn_single_class(n_classes)
    return ClassPlan(
        kernel=CROSS_ENTROPY_INDEX if target_plan.is_index else CROSS_ENTROPY_PROBS,
        x=x,
        x3=x3,
        dtype=dtype,
        reduction=reduction,
        per_sample_shape=loss_shape if reduction == "none" else None,
        denominator=denominator,
        index2=target_plan.index2,
        probs3=target_plan.probs3,
        weight=w,
        smoothing=smoothing,
        ignore_value=ignore_value,
        has_ignore=has_ignore,
        grad_output=go,
        per_class=want_grad,
        out=out if want_grad else None,
        threads=threads,
        transform=transform,
        lse_shape=loss_shape if want_lse else None,
        z_loss_shape=loss_shape if want_z_loss else None,
    )


def plan_nll_loss(
    log_probs: object,
    target: object,
    weight: object,
    ignore_index: int,
    reduction: str,
    axis: SupportsIndex | None,
    num_threads: int | None,
) -> ClassPlan:
    """The plan of an ``nll_loss`` call."""
    threads = check_num_threads(num_threads)
    x = native_float_array(log_probs, "log_probs")
    axis = class_axis(axis, x.ndim, "log_probs")
    reduction = check_reduction(reduction)
    ignore_value, has_ignore = check_ignore_index(ignore_index)
    n_classes = x.shape[axis]
    x3 = view3(x, axis)
    w = check_weight(weight, n_classes)
    target_plan = check_target(target, x, axis, x3, allow_probs=False)
    index2 = cast("npt.NDArray[Any]", target_plan.index2)  # set: allow_probs=False
    outer, _, inner = x3.shape
    n_samples = outer * inner
    check_classes_present(n_samples, n_classes, axis, x.shape, "log_probs", "nll_loss")
    weight_sum = 0.0
    if n_samples:
        weight_sum = check_targets_in_range(target, index2, n_classes, ignore_value, has_ignore, w)
    return ClassPlan(
        kernel=NLL_LOSS,
        x=x,
        x3=x3,
        dtype=result_dtype(x.dtype),
        reduction=reduction,
        per_sample_shape=target_plan.shape if reduction == "none" else None,
        denominator=weight_sum if reduction == "mean" else 1.0,
        index2=index2,
        weight=w,
        ignore_value=ignore_value,
        has_ignore=has_ignore,
        threads=threads,
    )


def plan_softmax(
    x: object, axis: SupportsIndex, kernel: str, out: FloatArray | None, num_threads: int | None
) -> ClassPlan:
    """The plan of a ``log_softmax``, ``softmax`` or ``logsumexp`` call."""
    threads = check_num_threads(num_threads)
    arr = native_float_array(x, "x")
    shape = arr.shape
    if arr.ndim == 0:
        # one element: a class axis of one
        normalize_axis(axis, 1, "x")
        axis, x3 = 0, arr.reshape(1, 1, 1)
    else:
        axis = normalize_axis(axis, arr.ndim, "x")
        x3 = view3(arr, axis)
    dtype = result_dtype(arr.dtype)
    if kernel != LOGSUMEXP and out is not None:
        out = check_out(out, shape, dtype)
    return ClassPlan(
        kernel=kernel,
        x=arr,
        x3=x3,
        dtype=dtype,
        reduction="none",
        per_sample_shape=shape[:axis] + shape[axis + 1 :] if kernel == LOGSUMEXP else None,
        denominator=1.0,
        per_class=kernel != LOGSUMEXP,
        out=out if kernel != LOGSUMEXP else None,
        threads=threads,
    )


def _check_binary_target(x: npt.NDArray[Any], target: object, name: str) -> npt.NDArray[Any]:
    y = as_array(target)
    if not is_float(y.dtype):
        raise TypeError(
            f"target must be a float array of probabilities in [0, 1]; got dtype {y.dtype}. "
            f"Convert labels with target.astype({name}.dtype)."
        )
    if y.shape != x.shape:
        raise ValueError(f"target must have the shape of {name}, {x.shape}; got {y.shape}")
    return y


def _broadcast_factor(
    factor: object, shape: tuple[int, ...], name: str, hint: str
) -> npt.NDArray[Any] | None:
    if factor is None:
        return None
    f = as_array(factor)
    if not is_real(f.dtype):
        raise TypeError(f"{name} must hold real numbers; got dtype {f.dtype}")
    try:
        np.broadcast_shapes(f.shape, shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {f.shape} does not broadcast to the input's shape {shape}; {hint}"
        ) from None
    if np.broadcast_shapes(f.shape, shape) != shape:
        raise ValueError(f"{name} of shape {f.shape} would enlarge the input's shape {shape}")
    return f


def _check_unit_interval(flat: np.ndarray, name: str, hint: str, threads: int) -> None:
    """ValueError unless every element of the C-ordered ``flat`` lies in [0, 1]
    (NaN does not)."""
    bad = _kernels.first_outside_unit(flat, threads)
    if bad >= 0:
        raise ValueError(
            f"{name} must lie in [0, 1]; got {float(flat[bad])} at flat position {bad}. {hint}"
        )


def _flat_operand(
    a: npt.NDArray[Any] | None, shape: tuple[int, ...], dtype: np.dtype, row_len: int
) -> npt.NDArray[Any] | None:
    """A factor as the binary kernel reads it: None, one value per column
    (``row_len`` long) when it repeats along every axis but the last, or one
    per element; contiguous and of the computing dtype."""
    if a is None:
        return None
    a = a.reshape((1,) * (len(shape) - a.ndim) + a.shape)
    if len(shape) and all(n == 1 for n in a.shape[:-1]) and a.shape[-1] == row_len:
        return flat_aligned(a, dtype)
    return flat_aligned(np.broadcast_to(a, shape), dtype)


def plan_binary(
    x_in: object,
    target: object,
    weight: object,
    pos_weight: object,
    reduction: str,
    logits: bool,
    want_grad: bool,
    grad_output: object,
    out: FloatArray | None,
    num_threads: int | None,
    want_loss: bool = True,
) -> BinaryPlan:
    """The plan of a binary cross-entropy call, on logits or on probabilities."""
    name = "logits" if logits else "probs"
    threads = check_num_threads(num_threads)
    reduction = check_reduction(reduction)
    x = native_float_array(x_in, name)
    y = _check_binary_target(x, target, name)
    w = _broadcast_factor(weight, x.shape, "weight", "give one weight per element or per class")
    pw = None
    if logits:
        pw = _broadcast_factor(
            pos_weight, x.shape, "pos_weight", "give one positive weight per class (the last axis)"
        )
    dtype = result_dtype(x.dtype)
    go = check_grad_output(grad_output, reduction, x.shape) if want_grad else None
    if want_grad and out is not None:
        check_out(out, x.shape, dtype)
    row_len = x.shape[-1] if x.ndim else 1
    xf = flat_aligned(x)
    # targets of the half logits' own dtype are converted by the kernels, as
    # the logits are; others exactly, into a buffer of this call: checked
    # below as they are
    yf = flat_aligned(y, y.dtype if y.dtype == x.dtype else dtype)
    if not logits:
        _check_unit_interval(
            xf, "probs", "Pass logits to binary_cross_entropy_with_logits instead.", threads
        )
        _check_unit_interval(
            yf, "target", "binary_cross_entropy takes target probabilities.", threads
        )
    return BinaryPlan(
        logits=logits,
        x=x,
        flat=xf,
        operands=(
            yf,
            _flat_operand(w, x.shape, dtype, row_len),
            _flat_operand(pw, x.shape, dtype, row_len),
        ),
        row_len=row_len,
        dtype=dtype,
        reduction=reduction,
        grad_output=go,
        out=out if want_grad else None,
        threads=threads,
        want_loss=want_loss,
    )
