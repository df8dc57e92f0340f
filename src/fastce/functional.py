"""The public functions: documentation, then validate -> plan -> kernel."""

from __future__ import annotations

from typing import Any, Literal, SupportsIndex, TypeAlias, TypedDict, TypeVar, cast, overload

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

from . import _kernels
from ._validate import (
    TargetPlan,
    as_array,
    check_axis_option,
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
    check_weight_option,
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

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "nll_loss",
    "log_softmax",
    "softmax",
    "logsumexp",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_grad",
    "binary_cross_entropy_with_logits_with_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_grad",
    "binary_cross_entropy_with_grad",
    "CrossEntropyLoss",
]

# what the public functions return: float32 or float64 values (float64 for float64 input)
_FloatScalar: TypeAlias = np.floating[Any]
_FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]
_A = TypeVar("_A", bound=npt.NDArray[Any])


def _reduce(
    total: float,
    denominator: float,
    reduction: str,
    dtype: np.dtype[np.float32] | np.dtype[np.float64],
) -> _FloatScalar:
    # a float32 total past its range is inf, as reduction="none" stores it
    with np.errstate(over="ignore"):
        if reduction == "sum":
            return dtype.type(total)
        if denominator == 0:
            return dtype.type(np.nan)
        return dtype.type(total / denominator)


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
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    """The array a per-class result (a gradient, softmax, log_softmax) is
    returned in: ``out`` (checked), or a new array of ``dtype`` laid out as
    the logits ``x``; and its ``(outer, C, inner)`` view the kernel writes, a separate
    buffer (copied back by :func:`_copy_back`) when ``out``'s strides admit
    no such view.  Also returns the logits view to read, copied when ``out``
    overlaps it without being it."""
    if out is None:
        # C order costs less to allocate, and is what order="K" gives for it
        c_order = x.flags.c_contiguous
        result = np.empty(x.shape, dtype) if c_order else np.empty_like(x, dtype, order="K")
        view = writable_view(result, x3.shape)
        if view is None:
            result = np.empty(x.shape, dtype=dtype)
            view = result.reshape(x3.shape)
        return result, view, x3
    view = writable_view(out, x3.shape)
    if view is None or not view.flags.aligned:
        # written through a buffer, then copied into out
        view = np.empty(x3.shape, dtype=dtype)
    if np.may_share_memory(view, x3) and not _same_memory_layout(view, x3):
        x3 = x3.copy()
    return out, view, x3


def _copy_back(result: npt.NDArray[Any], view: npt.NDArray[Any]) -> None:
    """Copies what the kernel wrote into a buffer (see :func:`_class_output`)
    into the result; nothing when it wrote the result itself."""
    if not np.may_share_memory(view, result):
        result[...] = view.reshape(result.shape)


@overload
def _cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    axis: SupportsIndex | None,
    want_grad: Literal[False],
    grad_output: ArrayLike | None,
    out: _FloatArray | None,
    num_threads: int | None,
) -> tuple[_FloatScalar | _FloatArray, None]: ...
@overload
def _cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    axis: SupportsIndex | None,
    want_grad: Literal[True],
    grad_output: ArrayLike | None,
    out: _FloatArray | None,
    num_threads: int | None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]: ...
def _cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    axis: SupportsIndex | None,
    want_grad: bool,
    grad_output: ArrayLike | None,
    out: _FloatArray | None,
    num_threads: int | None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray | None]:
    """Shared body of the three cross-entropy functions: returns (loss, grad)."""
    threads = check_num_threads(num_threads)
    x = native_float_array(logits, "logits")
    logits_shape = x.shape
    axis = class_axis(axis, x.ndim)
    reduction = check_reduction(reduction)
    smoothing = check_label_smoothing(label_smoothing)
    ignore_value, has_ignore = check_ignore_index(ignore_index)
    n_classes = x.shape[axis]
    x3 = view3(x, axis)
    w = check_weight(weight, n_classes)
    plan: TargetPlan = check_target(target, x, axis, x3)
    loss_shape = plan.shape if plan.is_index else logits_shape[:axis] + logits_shape[axis + 1 :]
    dtype = result_dtype(x.dtype)
    go = check_grad_output(grad_output, reduction, loss_shape) if want_grad else None
    if want_grad and out is not None:
        check_out(out, logits_shape, dtype)
    outer, _, inner = x3.shape
    n_samples = outer * inner
    check_classes_present(n_samples, n_classes, axis, logits_shape, "logits", "cross-entropy")

    if plan.is_index:
        weight_sum = 0.0
        if n_samples:
            index2 = cast("npt.NDArray[Any]", plan.index2)  # set: plan.is_index
            weight_sum = check_targets_in_range(
                target, index2, n_classes, ignore_value, has_ignore, w
            )
        denominator = weight_sum if reduction == "mean" else 1.0
    else:
        denominator = float(n_samples) if reduction == "mean" else 1.0
    warn_single_class(n_classes)

    # every check has passed: from here on only outputs are written
    loss_arr = np.empty(loss_shape, dtype=dtype) if reduction == "none" else None
    grad: npt.NDArray[Any] | None
    grad3: npt.NDArray[Any] | None
    grad = grad3 = None
    if want_grad:
        grad, grad3, x3 = _class_output(out, x, x3, dtype)
    grad_buffer = grad3

    total = 0.0
    if n_samples:
        t2 = plan.index2
        p3 = plan.probs3
        loss2 = loss_arr.reshape(outer, inner) if loss_arr is not None else None
        go2: npt.NDArray[np.float64] | None = None
        if want_grad:
            go = cast("npt.NDArray[np.float64]", go)  # given: want_grad
            # a scalar stays one element: the kernels read a (1, 1) grad_output
            # at every sample
            go2 = go.reshape(outer, inner) if go.ndim else go.reshape(1, 1)
            # nothing the kernels read may change under the gradient they write
            t2, p3, go2, w = (
                _disjoint_aligned(t2, grad3),
                _disjoint_aligned(p3, grad3),
                _disjoint_aligned(go2, grad3),
                _disjoint_aligned(w, grad3),
            )
        if samples_closer_than_classes(x3):
            x3 = outer_as_inner(x3)
            t2 = outer_as_inner(t2)
            p3 = outer_as_inner(p3)
            loss2 = outer_as_inner(loss2)
            go2 = outer_as_inner(go2)
            grad3 = outer_as_inner(grad3)
        weight_total = float(w.sum()) if w.size else float(n_classes)

        grad_given = (
            out is not None and grad_buffer is not None and np.may_share_memory(grad_buffer, out)
        )
        if plan.is_index:
            total = _kernels.cross_entropy_index(
                x3,
                cast("npt.NDArray[Any]", t2),  # given: plan.is_index
                w,
                weight_total,
                smoothing,
                ignore_value,
                has_ignore,
                loss2,
                go2,
                denominator,
                grad3,
                threads,
                grad_given=grad_given,
            )
        else:
            total = _kernels.cross_entropy_probs(
                x3,
                cast("npt.NDArray[Any]", p3),  # given: not plan.is_index
                w,
                smoothing,
                loss2,
                go2,
                denominator,
                grad3,
                threads,
                grad_given=grad_given,
            )
    elif want_grad and grad3 is not None:
        grad3.fill(0)

    if want_grad:
        # set, as is grad_buffer: want_grad
        _copy_back(cast("npt.NDArray[Any]", grad), cast("npt.NDArray[Any]", grad_buffer))
    loss = (
        cast("npt.NDArray[Any]", loss_arr)  # set: reduction == "none"
        if reduction == "none"
        else _reduce(total, denominator, reduction, dtype)
    )
    return loss, grad


@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> _FloatScalar: ...
@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["none"],
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> _FloatArray: ...
@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> _FloatScalar | _FloatArray: ...
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> _FloatScalar | _FloatArray:
    """Softmax cross-entropy between logits and a target, as PyTorch computes it.

    Parameters
    ----------
    logits : array_like of float
        Unnormalised scores.  float32 and float64 are computed natively;
        float16 and bfloat16 (``ml_dtypes.bfloat16``) in float32, read block
        by block without a full-size float32 copy.
    target : array_like
        Class indices (an integer array with the logits' shape without the
        class axis) or class probabilities (a float array of the logits'
        shape).
    weight : array_like of shape (C,), optional
        A weight per class.
    ignore_index : int, default -100
        Class-index targets equal to it contribute nothing, and do not count
        in the ``"mean"`` denominator.  Unused for probability targets.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides the summed loss by the summed weights of the
        targets that are not ignored (by the number of samples for
        probability targets).
    label_smoothing : float in [0, 1], default 0.0
        Mixes the target with the uniform distribution over classes.
    axis : int, optional
        The class axis.  ``None`` means axis 1 for input of two or more
        dimensions and axis 0 for unbatched ``(C,)`` logits.
    num_threads : int, optional
        The most threads this call may use; by default the process-wide
        count (:func:`get_num_threads`).

    Returns
    -------
    loss : numpy scalar or ndarray
        A scalar for ``"mean"`` and ``"sum"``, the per-sample losses for
        ``"none"``; float64 for float64 logits, float32 otherwise.

    Raises
    ------
    TypeError
        Logits that are not floating, a bool target, or a float target of the
        class-index shape.
    ValueError
        Shapes that do not match, a bad option, or samples with zero classes.
    IndexError
        A class index outside ``[0, C)`` that is not ``ignore_index``.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> float(round(fastce.cross_entropy(np.array([1.0, 2.0, 0.1]), np.array(1)), 6))
    0.41703
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    >>> fastce.cross_entropy(logits, np.array([0, 2]), reduction="none").round(5)
    array([0.24131, 0.09492], dtype=float32)
    """
    if _plain_options(weight, ignore_index, reduction, label_smoothing, axis, num_threads):
        loss: _FloatScalar | _FloatArray | None = _kernels.cross_entropy_common(
            logits,
            target,
            reduction == "mean",
            ignore_index,
            0 if num_threads is None else num_threads,
        )
        if loss is not None:
            return loss
    loss, _ = _cross_entropy(
        logits,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        axis,
        False,
        None,
        None,
        num_threads,
    )
    return loss


def _plain_options(
    weight: object,
    ignore_index: object,
    reduction: object,
    label_smoothing: object,
    axis: object,
    num_threads: object,
) -> bool:
    """Whether the options are those :func:`_kernels.cross_entropy_common`
    serves, checked by exact type so that no user object's ``__eq__`` runs."""
    return (
        weight is None
        and (axis is None or (type(axis) is int and (axis == 1 or axis == -1)))
        and (num_threads is None or (type(num_threads) is int and 1 <= num_threads <= 1 << 16))
        and type(reduction) is str
        and (reduction == "mean" or reduction == "sum")
        and type(label_smoothing) is float
        and label_smoothing == 0.0
        and type(ignore_index) is int
        and -(1 << 63) <= ignore_index < 1 << 63
    )


def cross_entropy_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    grad_output: ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> _FloatArray:
    """Gradient of :func:`cross_entropy` with respect to the logits.

    Takes :func:`cross_entropy`'s arguments, and:

    Parameters
    ----------
    grad_output : float or array_like, default 1.0
        The gradient flowing into the loss: a scalar for ``"mean"`` and
        ``"sum"``, a scalar or an array of the per-sample loss's shape for
        ``"none"``.
    out : ndarray, optional
        Where to write the gradient: the logits' shape and the result dtype.
        ``out=logits`` overwrites the logits in place with no temporary.

    Returns
    -------
    grad : ndarray
        ``grad_output * (A * softmax(logits) - a)`` scaled as the reduction
        says, in the logits' shape (``out`` when given).

    Examples
    --------
    >>> import numpy as np, fastce
    >>> fastce.cross_entropy_grad(np.array([1.0, 2.0, 0.1]), np.array(1)).round(6)
    array([ 0.242433, -0.340999,  0.098566])
    """
    both = _common_with_grad(
        logits,
        target,
        weight,
        grad_output,
        ignore_index,
        reduction,
        label_smoothing,
        axis,
        out,
        num_threads,
    )
    if both is not None:
        return both[1]
    _, grad = _cross_entropy(
        logits,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        axis,
        True,
        grad_output,
        out,
        num_threads,
    )
    return grad


@overload
def cross_entropy_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    grad_output: ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar, _FloatArray]: ...
@overload
def cross_entropy_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    grad_output: ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: Literal["none"],
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatArray, _FloatArray]: ...
@overload
def cross_entropy_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    grad_output: ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]: ...
def cross_entropy_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    grad_output: ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]:
    """The loss and its gradient from one pass over the logits.

    Arguments as :func:`cross_entropy_grad`; returns ``(loss, grad)``, equal
    to what :func:`cross_entropy` and :func:`cross_entropy_grad` return.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> logits = np.array([[1.0, 2.0, 0.1]])
    >>> loss, grad = fastce.cross_entropy_with_grad(logits, np.array([1]), out=logits)
    >>> float(round(loss, 6)), grad is logits
    (0.41703, True)
    """
    both = _common_with_grad(
        logits,
        target,
        weight,
        grad_output,
        ignore_index,
        reduction,
        label_smoothing,
        axis,
        out,
        num_threads,
    )
    if both is not None:
        return both
    return _cross_entropy(
        logits,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        axis,
        True,
        grad_output,
        out,
        num_threads,
    )


def _common_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    grad_output: ArrayLike,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    axis: SupportsIndex | None,
    out: _FloatArray | None,
    num_threads: int | None,
) -> tuple[_FloatScalar, _FloatArray] | None:
    """``(loss, grad)`` from the fast path of the common call, or None."""
    if (
        type(grad_output) is not float
        or grad_output != 1.0
        or not _plain_options(weight, ignore_index, reduction, label_smoothing, axis, num_threads)
    ):
        return None
    return cast(
        "tuple[_FloatScalar, _FloatArray] | None",
        _kernels.cross_entropy_common(
            logits,
            target,
            reduction == "mean",
            ignore_index,
            0 if num_threads is None else num_threads,
            True,
            out,
        ),
    )


@overload
def nll_loss(
    log_probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> _FloatScalar: ...
@overload
def nll_loss(
    log_probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["none"],
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> _FloatArray: ...
@overload
def nll_loss(
    log_probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> _FloatScalar | _FloatArray: ...
def nll_loss(
    log_probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> _FloatScalar | _FloatArray:
    """Negative log-likelihood of class-index targets, as ``torch.nn.functional.nll_loss``.

    Parameters
    ----------
    log_probs : array_like of float
        Log-probabilities, for example from :func:`log_softmax`.
    target : array_like of int
        Class indices: the shape of ``log_probs`` without the class axis.
    weight, ignore_index, reduction, axis, num_threads
        As in :func:`cross_entropy`.

    Returns
    -------
    loss : numpy scalar or ndarray
        ``-weight[t] * log_probs[..., t, ...]`` per sample, reduced.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> lp = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
    >>> float(round(fastce.nll_loss(lp, np.array([1, 0])), 6))
    0.490415
    """
    if _plain_options(weight, ignore_index, reduction, 0.0, axis, num_threads):
        loss: _FloatScalar | None = _kernels.nll_loss_common(
            log_probs, target, reduction == "mean", ignore_index
        )
        if loss is not None:
            return loss
    threads = check_num_threads(num_threads)
    x = native_float_array(log_probs, "log_probs")
    axis = class_axis(axis, x.ndim, "log_probs")
    reduction = check_reduction(reduction)
    ignore_value, has_ignore = check_ignore_index(ignore_index)
    n_classes = x.shape[axis]
    x3 = view3(x, axis)
    w = check_weight(weight, n_classes)
    plan = check_target(target, x, axis, x3, allow_probs=False)
    outer, _, inner = x3.shape
    n_samples = outer * inner
    check_classes_present(n_samples, n_classes, axis, x.shape, "log_probs", "nll_loss")
    weight_sum = 0.0
    if n_samples:
        index2 = cast("npt.NDArray[Any]", plan.index2)  # set: allow_probs=False
        weight_sum = check_targets_in_range(target, index2, n_classes, ignore_value, has_ignore, w)
    dtype = result_dtype(x.dtype)
    loss_arr = np.empty(plan.shape, dtype=dtype) if reduction == "none" else None
    total = 0.0
    if n_samples:
        loss2 = loss_arr.reshape(outer, inner) if loss_arr is not None else None
        total = _kernels.nll_loss_kernel(
            x3, cast("npt.NDArray[Any]", plan.index2), w, ignore_value, has_ignore, loss2, threads
        )
    if reduction == "none":
        return cast("npt.NDArray[Any]", loss_arr)  # set: reduction == "none"
    return _reduce(total, weight_sum if reduction == "mean" else 1.0, reduction, dtype)


def _softmax_family(
    x: ArrayLike,
    axis: SupportsIndex,
    op: int,
    out: _FloatArray | None,
    num_threads: int | None,
) -> _FloatArray | _FloatScalar:
    threads = check_num_threads(num_threads)
    arr = native_float_array(x, "x")
    shape = arr.shape
    if arr.ndim == 0:
        arr = arr.reshape(1)
        normalize_axis(axis, 1, "x")
        axis = 0
    else:
        axis = normalize_axis(axis, arr.ndim, "x")
    dtype = result_dtype(arr.dtype)
    reduced_shape = shape[:axis] + shape[axis + 1 :] if len(shape) else ()
    if op != _kernels.LOGSUMEXP and out is not None:
        out = check_out(out, shape, dtype)
    x3 = view3(arr, axis)
    outer, n_classes, inner = x3.shape
    if outer * inner == 0 or n_classes == 0:
        if out is None:
            out_shape = reduced_shape if op == _kernels.LOGSUMEXP else shape
            result = np.empty(out_shape, dtype=dtype)
        else:
            result = out
        result.fill(-np.inf)  # nothing, or log(sum(exp([]))) = -inf
        return result[()] if result.ndim == 0 and out is None else result
    reduced2 = out3 = None
    if op == _kernels.LOGSUMEXP:
        result = np.empty(reduced_shape, dtype=dtype)
        reduced2 = result.reshape(outer, inner)
    else:
        logits = arr if arr.shape == shape else arr.reshape(shape)
        result, out3, x3 = _class_output(out, logits, x3, dtype)
    out_buffer = out3
    if samples_closer_than_classes(x3):
        x3 = outer_as_inner(x3)
        reduced2 = outer_as_inner(reduced2)
        out3 = outer_as_inner(out3)
    out_given = out is not None and np.may_share_memory(out_buffer, out)
    _kernels.softmax_family(x3, op, reduced2, out3, threads, out_given=out_given)
    if out_buffer is not None:
        _copy_back(result, out_buffer)
    return result[()] if result.ndim == 0 and out is None else result


def log_softmax(
    x: ArrayLike,
    axis: SupportsIndex = -1,
    out: _FloatArray | None = None,
    *,
    num_threads: int | None = None,
) -> _FloatArray | _FloatScalar:
    """Logarithm of the softmax along ``axis``, computed stably.

    Parameters
    ----------
    x : array_like of float
    axis : int, default -1
    out : ndarray, optional
        Of ``x``'s shape and the result dtype; may be ``x`` itself.
    num_threads : int, optional
        The most threads this call may use.

    Returns
    -------
    ndarray
        ``x - max - log(sum(exp(x - max)))``; float64 for float64 input,
        float32 otherwise.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> fastce.log_softmax(np.array([1.0, 2.0, 0.1])).round(6)
    array([-1.41703, -0.41703, -2.31703])
    """
    return _softmax_family(x, axis, _kernels.LOG_SOFTMAX, out, num_threads)


def softmax(
    x: ArrayLike,
    axis: SupportsIndex = -1,
    out: _FloatArray | None = None,
    *,
    num_threads: int | None = None,
) -> _FloatArray | _FloatScalar:
    """Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``.

    Parameters and returns as :func:`log_softmax`.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> fastce.softmax(np.array([1.0, 2.0, 0.1])).round(6)
    array([0.242433, 0.659001, 0.098566])
    """
    return _softmax_family(x, axis, _kernels.SOFTMAX, out, num_threads)


def logsumexp(
    x: ArrayLike, axis: SupportsIndex = -1, *, num_threads: int | None = None
) -> _FloatArray | _FloatScalar:
    """``log(sum(exp(x)))`` along ``axis``, computed stably.

    An infinite maximum is returned as it is, as ``torch.logsumexp`` does;
    an empty axis gives ``-inf``.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> float(round(fastce.logsumexp(np.array([1.0, 2.0, 0.1])), 6))
    2.41703
    """
    return _softmax_family(x, axis, _kernels.LOGSUMEXP, None, num_threads)


def _check_binary(
    x: ArrayLike, target: ArrayLike, name: str
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    x = native_float_array(x, name)
    y = as_array(target)
    if not is_float(y.dtype):
        raise TypeError(
            f"target must be a float array of probabilities in [0, 1]; got dtype {y.dtype}. "
            f"Convert labels with target.astype({name}.dtype)."
        )
    if y.shape != x.shape:
        raise ValueError(f"target must have the shape of {name}, {x.shape}; got {y.shape}")
    return x, y


def _broadcast_factor(
    factor: ArrayLike | None, shape: tuple[int, ...], name: str, hint: str
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


@overload
def _binary(
    x_in: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    pos_weight: ArrayLike | None,
    reduction: str,
    logits: bool,
    want_grad: Literal[False],
    grad_output: ArrayLike | None,
    out: _FloatArray | None,
    num_threads: int | None,
) -> tuple[_FloatScalar | _FloatArray, None]: ...
@overload
def _binary(
    x_in: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    pos_weight: ArrayLike | None,
    reduction: str,
    logits: bool,
    want_grad: Literal[True],
    grad_output: ArrayLike | None,
    out: _FloatArray | None,
    num_threads: int | None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]: ...
def _binary(
    x_in: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    pos_weight: ArrayLike | None,
    reduction: str,
    logits: bool,
    want_grad: bool,
    grad_output: ArrayLike | None,
    out: _FloatArray | None,
    num_threads: int | None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray | None]:
    """Shared body of the binary losses and their gradients: returns (loss, grad)."""
    name = "logits" if logits else "probs"
    threads = check_num_threads(num_threads)
    reduction = check_reduction(reduction)
    x, y = _check_binary(x_in, target, name)
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
    n = x.size
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

    # every check has passed: from here on only outputs are written
    loss_arr = np.empty(x.shape, dtype=dtype) if reduction == "none" else None
    grad: npt.NDArray[Any] | None
    grad_flat: npt.NDArray[Any] | None
    grad = grad_flat = None
    if want_grad:
        grad = out if out is not None else np.empty(x.shape, dtype=dtype)
        grad_flat = writable_view(grad, (n,))
        if grad_flat is None or not grad_flat.flags.c_contiguous:
            grad_flat = np.empty(n, dtype=dtype)  # written here, then copied into out
        elif np.may_share_memory(grad_flat, xf) and not _same_memory_layout(grad_flat, xf):
            xf = xf.copy()
    operands = [
        yf,
        _flat_operand(w, x.shape, dtype, row_len),
        _flat_operand(pw, x.shape, dtype, row_len),
    ]
    scale = 1.0
    go_flat: npt.NDArray[Any] | None = None
    if want_grad:
        go = cast("npt.NDArray[np.float64]", go)  # given: want_grad
        if go.ndim:
            go_flat = _flat_aligned(go, dtype)
        else:
            scale = float(go)
        if reduction == "mean" and n:
            scale /= n
        # nothing the kernel reads may change under the gradient it writes
        operands = [_disjoint_aligned(a, grad_flat) for a in operands]
        go_flat = _disjoint_aligned(go_flat, grad_flat)
    total = 0.0
    if n:
        y_op, w_op, pw_op = operands
        total = _kernels.binary_cross_entropy_kernel(
            xf,
            cast("npt.NDArray[Any]", y_op),  # yf, never None
            w_op,
            pw_op,
            row_len,
            logits,
            scale,
            go_flat,
            None if loss_arr is None else loss_arr.reshape(-1),
            grad_flat,
            threads,
        )
    if want_grad:
        # set, as is grad_flat: want_grad
        _copy_back(cast("npt.NDArray[Any]", grad), cast("npt.NDArray[Any]", grad_flat))
    loss = (
        cast("npt.NDArray[Any]", loss_arr)  # set: reduction == "none"
        if reduction == "none"
        else _reduce(total, float(n), reduction, dtype)
    )
    return loss, grad


@overload
def binary_cross_entropy_with_logits(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: Literal["mean", "sum"] = "mean",
    num_threads: int | None = None,
) -> _FloatScalar: ...
@overload
def binary_cross_entropy_with_logits(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: Literal["none"],
    num_threads: int | None = None,
) -> _FloatArray: ...
@overload
def binary_cross_entropy_with_logits(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
    num_threads: int | None = None,
) -> _FloatScalar | _FloatArray: ...
def binary_cross_entropy_with_logits(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
    num_threads: int | None = None,
) -> _FloatScalar | _FloatArray:
    """Binary cross-entropy of sigmoid(logits) against a probability target.

    ``loss = -weight * (pos_weight * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))``,
    computed without overflow as torch does.  ``weight`` broadcasts to the
    logits' shape and ``pos_weight`` along their last axis.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> float(round(fastce.binary_cross_entropy_with_logits(np.array([0.0, 2.0]),
    ...                                                     np.array([1.0, 0.0])), 6))
    1.410038
    """
    loss, _ = _binary(
        logits, target, weight, pos_weight, reduction, True, False, None, None, num_threads
    )
    return loss


def binary_cross_entropy_with_logits_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> _FloatArray:
    """Gradient of :func:`binary_cross_entropy_with_logits` with respect to the logits:
    ``grad_output * weight * ((1 + (pos_weight - 1) * y) * sigmoid(x) - pos_weight * y)``,
    divided by the element count for ``"mean"``.

    ``grad_output`` is a scalar, or for ``"none"`` also an array of the
    logits' shape; ``out`` (the logits' shape and result dtype) receives the
    gradient, ``out=logits`` in place.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> fastce.binary_cross_entropy_with_logits_grad(np.array([0.0, 2.0]),
    ...                                              np.array([1.0, 0.0])).round(6)
    array([-0.25    ,  0.440399])
    """
    _, grad = _binary(
        logits, target, weight, pos_weight, reduction, True, True, grad_output, out, num_threads
    )
    return grad


@overload
def binary_cross_entropy_with_logits_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: Literal["mean", "sum"] = "mean",
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar, _FloatArray]: ...
@overload
def binary_cross_entropy_with_logits_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: Literal["none"],
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatArray, _FloatArray]: ...
@overload
def binary_cross_entropy_with_logits_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]: ...
def binary_cross_entropy_with_logits_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]:
    """``(loss, grad)`` of :func:`binary_cross_entropy_with_logits` from one pass.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> loss, grad = fastce.binary_cross_entropy_with_logits_with_grad(
    ...     np.array([0.0, 2.0]), np.array([1.0, 0.0]))
    >>> float(round(loss, 6)), grad.round(6)
    (1.410038, array([-0.25    ,  0.440399]))
    """
    return _binary(
        logits, target, weight, pos_weight, reduction, True, True, grad_output, out, num_threads
    )


@overload
def binary_cross_entropy(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: Literal["mean", "sum"] = "mean",
    num_threads: int | None = None,
) -> _FloatScalar: ...
@overload
def binary_cross_entropy(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: Literal["none"],
    num_threads: int | None = None,
) -> _FloatArray: ...
@overload
def binary_cross_entropy(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: str = "mean",
    num_threads: int | None = None,
) -> _FloatScalar | _FloatArray: ...
def binary_cross_entropy(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: str = "mean",
    num_threads: int | None = None,
) -> _FloatScalar | _FloatArray:
    """Binary cross-entropy of probabilities, each log clamped at -100 as torch does.

    Raises ``ValueError`` when a probability or a target lies outside
    ``[0, 1]`` (NaN included), as torch does.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> float(round(fastce.binary_cross_entropy(np.array([0.8, 0.1]), np.array([1.0, 0.0])), 6))
    0.164252
    """
    loss, _ = _binary(probs, target, weight, None, reduction, False, False, None, None, num_threads)
    return loss


def binary_cross_entropy_grad(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: str = "mean",
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> _FloatArray:
    """Gradient of :func:`binary_cross_entropy` with respect to the probabilities,
    as torch computes it: ``grad_output * weight * (p - y) / max((1 - p) * p, 1e-12)``,
    divided by the element count for ``"mean"``.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> fastce.binary_cross_entropy_grad(np.array([0.8, 0.1]), np.array([1.0, 0.0])).round(6)
    array([-0.625   ,  0.555556])
    """
    _, grad = _binary(
        probs, target, weight, None, reduction, False, True, grad_output, out, num_threads
    )
    return grad


@overload
def binary_cross_entropy_with_grad(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: Literal["mean", "sum"] = "mean",
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar, _FloatArray]: ...
@overload
def binary_cross_entropy_with_grad(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: Literal["none"],
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatArray, _FloatArray]: ...
@overload
def binary_cross_entropy_with_grad(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: str = "mean",
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]: ...
def binary_cross_entropy_with_grad(
    probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    reduction: str = "mean",
    grad_output: ArrayLike = 1.0,
    out: _FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]:
    """``(loss, grad)`` of :func:`binary_cross_entropy` from one pass.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> loss, grad = fastce.binary_cross_entropy_with_grad(np.array([0.8, 0.1]),
    ...                                                    np.array([1.0, 0.0]))
    >>> float(round(loss, 6)), grad.round(6)
    (0.164252, array([-0.625   ,  0.555556]))
    """
    return _binary(
        probs, target, weight, None, reduction, False, True, grad_output, out, num_threads
    )


class _Options(TypedDict):
    """The keyword options :class:`CrossEntropyLoss` passes on with every call."""

    ignore_index: int
    reduction: str
    label_smoothing: float
    axis: int | None


class CrossEntropyLoss:
    """A cross-entropy criterion with fixed options, like ``torch.nn.CrossEntropyLoss``.

    ``criterion(logits, target)`` is ``cross_entropy(logits, target, **options)``;
    :meth:`grad` and :meth:`with_grad` give the gradient.  The options are
    checked when the criterion is made.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> criterion = fastce.CrossEntropyLoss(label_smoothing=0.1)
    >>> float(round(criterion(np.array([[1.0, 2.0, 0.1]]), np.array([1])), 6))
    0.513697
    """

    def __init__(
        self,
        weight: ArrayLike | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        axis: SupportsIndex | None = None,
    ) -> None:
        self.reduction = check_reduction(reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.weight = check_weight_option(weight)
        self.axis = check_axis_option(axis)

    def _options(self) -> _Options:
        return dict(
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            axis=self.axis,
        )

    def __call__(self, logits: ArrayLike, target: ArrayLike) -> _FloatScalar | _FloatArray:
        return cross_entropy(logits, target, self.weight, **self._options())

    forward = __call__

    def grad(
        self,
        logits: ArrayLike,
        target: ArrayLike,
        *,
        grad_output: ArrayLike = 1.0,
        out: _FloatArray | None = None,
    ) -> _FloatArray:
        """Gradient of the loss with respect to ``logits``."""
        return cross_entropy_grad(
            logits, target, self.weight, grad_output=grad_output, out=out, **self._options()
        )

    def with_grad(
        self,
        logits: ArrayLike,
        target: ArrayLike,
        *,
        grad_output: ArrayLike = 1.0,
        out: _FloatArray | None = None,
    ) -> tuple[_FloatScalar | _FloatArray, _FloatArray]:
        """``(loss, grad)`` from one pass."""
        return cross_entropy_with_grad(
            logits, target, self.weight, grad_output=grad_output, out=out, **self._options()
        )

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self._options().items()]
        if self.weight is not None:
            parts.insert(0, f"weight={self.weight!r}")
        return f"CrossEntropyLoss({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CrossEntropyLoss):
            return NotImplemented
        same_weight = (self.weight is None and other.weight is None) or (
            self.weight is not None
            and other.weight is not None
            and np.array_equal(self.weight, other.weight)
        )
        return same_weight and self._options() == other._options()

    __hash__ = None  # type: ignore[assignment]  # unhashable, as __eq__ compares options
