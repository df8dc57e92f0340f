"""How a call flows: its arguments are checked into a frozen plan, and one
``execute`` runs any plan on the kernels.

A ``plan_*`` function raises every error a call can raise; ``execute`` then
only allocates and writes outputs.  ``execute`` owns what every call needs
between the two: the result buffers and ``out=``, inputs the outputs
overlap, the transposition of sample-major views, the copy back from a
buffer into ``out``, and the reduction.
"""

from __future__ import annotations

from typing import Any, NamedTuple, SupportsIndex, TypeAlias, TypeVar, cast, overload

import numpy as np
import numpy.typing as npt

from . import _kernels
from ._validate import (
    NO_TRANSFORM,
    LogitTransform,
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
    outer_as_inner,
    result_dtype,
    samples_closer_than_classes,
    view3,
    warn_single_class,
    writable_view,
)

# what the public functions return: float32 or float64 values (float64 for float64 input)
FloatScalar: TypeAlias = np.floating[Any]
FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]
_A = TypeVar("_A", bound=npt.NDArray[Any])

# the kernel a plan runs
CROSS_ENTROPY_INDEX = "cross_entropy_index"
CROSS_ENTROPY_PROBS = "cross_entropy_probs"
NLL_LOSS = "nll_loss"
LOG_SOFTMAX = "log_softmax"
SOFTMAX = "softmax"
LOGSUMEXP = "logsumexp"
_SOFTMAX_OPS = {
    LOG_SOFTMAX: _kernels.LOG_SOFTMAX,
    SOFTMAX: _kernels.SOFTMAX,
    LOGSUMEXP: _kernels.LOGSUMEXP,
}


# plans are tuples (immutable, and made faster than a frozen dataclass); a
# plan without class weights shares this one
_NO_CLASS_WEIGHTS = np.empty(0)
_NO_CLASS_WEIGHTS.setflags(write=False)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class ClassPlan(NamedTuple):
    """A checked call of a function over a class axis: the cross-entropy
    family, ``nll_loss``, ``log_softmax``, ``softmax``, ``logsumexp``."""

    kernel: str
    x: npt.NDArray[Any]  # the logits, native, in the caller's shape
    x3: npt.NDArray[Any]  # their (outer, C, inner) view
    dtype: np.dtype[Any]  # of every float result
    reduction: str  # "mean", "sum", or "none" (a value per sample, or none at all)
    per_sample_shape: tuple[int, ...] | None  # the per-sample result's, if there is one
    denominator: float  # of the mean
    index2: npt.NDArray[Any] | None = None  # class indices, (outer, inner)
    probs3: npt.NDArray[Any] | None = None  # target probabilities, (outer, C, inner)
    weight: npt.NDArray[np.float64] = _NO_CLASS_WEIGHTS  # per class; empty: none
    smoothing: float = 0.0
    ignore_value: int = 0
    has_ignore: bool = False
    grad_output: npt.NDArray[np.float64] | None = None  # set when a gradient is asked for
    per_class: bool = False  # whether a per-class result (gradient, softmax) is written
    out: npt.NDArray[Any] | None = None  # where the caller wants it
    threads: int = 0
    transform: LogitTransform = NO_TRANSFORM  # what the loss sees of the logits
    lse_shape: tuple[int, ...] | None = None  # the per-sample log-sum-exp's, when wanted
    z_loss_shape: tuple[int, ...] | None = None  # the per-sample z-loss's, when wanted


class BinaryPlan(NamedTuple):
    """A checked call of the binary cross-entropies: flat operands."""

    logits: bool  # binary_cross_entropy_with_logits, else binary_cross_entropy
    x: npt.NDArray[Any]  # the input, native, in the caller's shape
    flat: npt.NDArray[Any]  # its contiguous aligned values
    operands: tuple[npt.NDArray[Any] | None, ...]  # target, weight, pos_weight: flat
    row_len: int  # the length of the last axis, which a per-column factor repeats along
    dtype: np.dtype[Any]
    reduction: str
    grad_output: npt.NDArray[np.float64] | None
    out: npt.NDArray[Any] | None
    threads: int
    want_loss: bool  # False for a gradient alone, which then takes no logarithm


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
        return _flat_aligned(a, dtype)
    return _flat_aligned(np.broadcast_to(a, shape), dtype)


def _flat_aligned(a: npt.NDArray[Any], dtype: np.dtype | None = None) -> npt.NDArray[Any]:
    """``a`` as a flat, contiguous and aligned array (of ``dtype``), copied only if need be."""
    return np.require(a, dtype=dtype, requirements=["C", "A"]).reshape(-1)


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
    xf = _flat_aligned(x)
    # an exact conversion, into a buffer of this call: checked below as it is
    yf = _flat_aligned(y, dtype)
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


# ---- execution -----------------------------------------------------------


def _reduce(total: float, denominator: float, reduction: str, dtype: np.dtype[Any]) -> FloatScalar:
    value = total if reduction == "sum" else total / denominator if denominator else np.nan
    if abs(value) <= _FLOAT32_MAX or dtype.itemsize == 8:
        return cast("FloatScalar", dtype.type(value))
    # a float32 total past its range is inf, as reduction="none" stores it
    with np.errstate(over="ignore"):
        return cast("FloatScalar", dtype.type(value))


def _same_memory_layout(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


@overload
def _disjoint_aligned(a: None, written: npt.NDArray[Any] | None) -> None: ...
@overload
def _disjoint_aligned(a: _A, written: npt.NDArray[Any] | None) -> _A: ...
def _disjoint_aligned(a: _A | None, written: npt.NDArray[Any] | None) -> _A | None:
    """``a`` if it is aligned and shares no memory with ``written``, else a
    copy of it: what a kernel may read while it writes ``written``."""
    if a is None or (a.flags.aligned and not np.may_share_memory(a, written)):
        return a
    return a.copy()


def _class_output(
    out: npt.NDArray[Any] | None, x: np.ndarray, x3: np.ndarray, dtype: np.dtype[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], bool, bool]:
    """The array a per-class result (a gradient, softmax, log_softmax) is
    returned in: ``out`` (checked), or a new array of ``dtype`` laid out as
    the logits ``x``; its ``(outer, C, inner)`` view the kernel writes; the
    logits view to read, copied when ``out`` overlaps it without being it;
    whether the view is a separate buffer, to be copied into ``out``
    afterwards because ``out``'s strides admit no such view; and whether the
    view's memory was written before (``out``, or a freed result's kept
    memory) rather than fresh pages."""
    if out is None:
        # C order costs less to allocate, and is what order="K" gives for it
        like = None if x.flags.c_contiguous else x
        result, written_before = _kernels.new_result(x.shape, dtype, like)
        view = writable_view(result, x3.shape)
        if view is None:
            result, written_before = _kernels.new_result(x.shape, dtype)
            view = result.reshape(x3.shape)
        return result, view, x3, False, written_before
    view = writable_view(out, x3.shape)
    buffered = view is None or not view.flags.aligned
    written_before = True
    if view is None or buffered:
        view, written_before = _kernels.new_result(x3.shape, dtype)
    if np.may_share_memory(view, x3) and not _same_memory_layout(view, x3):
        x3 = x3.copy()
    return out, view, x3, buffered, written_before


def execute(plan: ClassPlan | BinaryPlan) -> tuple[Any, Any, Any, Any]:
    """Runs ``plan``: returns ``(reduced, per_class, lse, z_loss)``, the loss
    (a scalar, or the per-sample array; the log-sum-exp), the per-class
    result (the gradient, softmax, log_softmax), and the cross-entropy's
    per-sample log-sum-exp and z-loss (reduced as the loss), each None where
    the call has none."""
    if isinstance(plan, BinaryPlan):
        return _execute_binary(plan)
    # read once: a tuple unpacks faster than its fields are looked up one by one
    (
        kernel,
        x,
        x3,
        dtype,
        reduction,
        per_sample_shape,
        denominator,
        index2,
        probs3,
        weight,
        smoothing,
        ignore_value,
        has_ignore,
        grad_output,
        wants_per_class,
        out,
        threads,
        transform,
        lse_shape,
        z_loss_shape,
    ) = plan
    outer, n_classes, inner = x3.shape
    per_sample = np.empty(per_sample_shape, dtype=dtype) if per_sample_shape is not None else None
    lse = np.empty(lse_shape, dtype=dtype) if lse_shape is not None else None
    # float64: summed into the reduced z-loss as the kernels sum the loss
    z_terms = np.zeros(z_loss_shape) if z_loss_shape is not None else None
    per_class = per_class3 = None
    buffered = written_before = False
    if wants_per_class:
        per_class, per_class3, x3, buffered, written_before = _class_output(out, x, x3, dtype)
    written = per_class3
    total = 0.0
    if outer * inner and n_classes:
        go2 = None
        per_sample2 = None if per_sample is None else per_sample.reshape(outer, inner)
        lse2 = None if lse is None else lse.reshape(outer, inner)
        z2 = None if z_terms is None else z_terms.reshape(outer, inner)
        if grad_output is not None:
            go = grad_output
            # a scalar stays one element: the kernels read a (1, 1) grad_output
            # at every sample
            go2 = go.reshape(outer, inner) if go.ndim else go.reshape(1, 1)
            # nothing the kernels read may change under the gradient they write
            index2, probs3, go2, weight = (
                _disjoint_aligned(index2, per_class3),
                _disjoint_aligned(probs3, per_class3),
                _disjoint_aligned(go2, per_class3),
                _disjoint_aligned(weight, per_class3),
            )
        # a gather reads one element per sample, in any layout; row kernels
        # compute sample-major views (class rows far apart) as tiles
        if kernel != NLL_LOSS and samples_closer_than_classes(x3):
            x3 = outer_as_inner(x3)
            index2 = outer_as_inner(index2)
            probs3 = outer_as_inner(probs3)
            per_sample2 = outer_as_inner(per_sample2)
            lse2 = outer_as_inner(lse2)
            z2 = outer_as_inner(z2)
            go2 = outer_as_inner(go2)
            per_class3 = outer_as_inner(per_class3)
        if kernel == CROSS_ENTROPY_INDEX:
            weight_total = float(weight.sum()) if weight.size else float(n_classes)
            total = _kernels.cross_entropy_index(
                x3,
                cast("npt.NDArray[Any]", index2),  # set: the plan of class indices
                weight,
                weight_total,
                smoothing,
                ignore_value,
                has_ignore,
                per_sample2,
                go2,
                denominator,
                per_class3,
                threads,
                written_before,
                *transform,
                lse2,
                z2,
            )
        elif kernel == CROSS_ENTROPY_PROBS:
            total = _kernels.cross_entropy_probs(
                x3,
                cast("npt.NDArray[Any]", probs3),  # set: the plan of probabilities
                weight,
                smoothing,
                per_sample2,
                go2,
                denominator,
                per_class3,
                threads,
                written_before,
                *transform,
                lse2,
                z2,
            )
        elif kernel == NLL_LOSS:
            total = _kernels.nll_loss_kernel(
                x3,
                cast("npt.NDArray[Any]", index2),  # set: nll_loss takes class indices
                weight,
                ignore_value,
                has_ignore,
                per_sample2,
                threads,
            )
        else:
            _kernels.softmax_family(
                x3,
                _SOFTMAX_OPS[kernel],
                per_sample2,
                per_class3,
                threads,
                out_written_before=written_before,
            )
    elif per_sample is not None and kernel == LOGSUMEXP:
        per_sample.fill(-np.inf)  # log(sum(exp([]))) of a sample without classes
    if buffered:
        # the kernel wrote a buffer: out's strides admit no (outer, C, inner) view
        out_array = cast("npt.NDArray[Any]", out)  # given: only out= is buffered
        out_array[...] = cast("npt.NDArray[Any]", written).reshape(out_array.shape)
    if kernel in _SOFTMAX_OPS:
        # a 0-d result is a scalar, as NumPy's reductions give, unless out= holds it
        result = per_sample if kernel == LOGSUMEXP else per_class
        assert result is not None
        if result.ndim == 0 and out is None:
            result = result[()]
        return (result, None, None, None) if kernel == LOGSUMEXP else (None, result, None, None)
    reduced = (
        per_sample if per_sample is not None else _reduce(total, denominator, reduction, dtype)
    )
    z_loss = None
    if z_terms is not None:
        z_loss = (
            z_terms.astype(dtype)
            if reduction == "none"
            else _reduce(float(z_terms.sum()), denominator, reduction, dtype)
        )
    return reduced, per_class, lse, z_loss


def _execute_binary(plan: BinaryPlan) -> tuple[Any, Any, Any, Any]:
    dtype = plan.dtype
    shape = plan.x.shape
    n = plan.x.size
    xf = plan.flat
    # a gradient alone has no per-element losses to return
    loss_arr = (
        _kernels.new_result(shape, dtype)[0]
        if plan.reduction == "none" and plan.want_loss
        else None
    )
    grad = grad_flat = None
    buffered = False
    operands = plan.operands
    scale = 1.0
    go_flat: npt.NDArray[Any] | None = None
    if plan.grad_output is not None:
        grad = plan.out if plan.out is not None else _kernels.new_result(shape, dtype)[0]
        grad_flat = writable_view(grad, (n,))
        buffered = grad_flat is None or not grad_flat.flags.c_contiguous
        if grad_flat is None or buffered:
            grad_flat = _kernels.new_result((n,), dtype)[0]  # written here, then copied into out
        elif np.may_share_memory(grad_flat, xf) and not _same_memory_layout(grad_flat, xf):
            xf = xf.copy()
        go = plan.grad_output
        if go.ndim:
            go_flat = _flat_aligned(go, dtype)
        else:
            scale = float(go)
        if plan.reduction == "mean" and n:
            scale /= n
        # nothing the kernel reads may change under the gradient it writes
        operands = tuple(_disjoint_aligned(a, grad_flat) for a in operands)
        go_flat = _disjoint_aligned(go_flat, grad_flat)
    total = 0.0
    if n:
        y_op, w_op, pw_op = operands
        total = _kernels.binary_cross_entropy_kernel(
            xf,
            cast("npt.NDArray[Any]", y_op),  # the target, never None
            w_op,
            pw_op,
            plan.row_len,
            plan.logits,
            scale,
            go_flat,
            None if loss_arr is None else loss_arr.reshape(-1),
            grad_flat,
            plan.threads,
            plan.want_loss,
        )
    if buffered:
        cast("npt.NDArray[Any]", grad)[...] = cast("npt.NDArray[Any]", grad_flat).reshape(shape)
    if not plan.want_loss:
        return None, grad, None, None
    loss = loss_arr if loss_arr is not None else _reduce(total, float(n), plan.reduction, dtype)
    return loss, grad, None, None
