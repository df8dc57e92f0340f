"""The public functions: each is its documentation, a plan (``_plan.plan_*``,
which checks the arguments) and ``_plan.execute``; the commonest calls
have it made first without the checks, which they pass by construction
(``_kernels.common_plan``), and run by the same ``execute``."""

from __future__ import annotations

from typing import Literal, SupportsIndex, TypedDict, overload

import numpy as np
from numpy.typing import ArrayLike

from ._kernels import common_plan, execute
from ._plan import FloatArray as _FloatArray
from ._plan import FloatScalar as _FloatScalar
from ._plan import (
    plan_binary,
    plan_cross_entropy,
    plan_nll_loss,
    plan_softmax,
)
from ._plan_types import (
    CROSS_ENTROPY_INDEX,
    LOG_SOFTMAX,
    LOGSUMEXP,
    NLL_LOSS,
    SOFTMAX,
)
from ._validate import (
    check_axis_option,
    check_flag,
    check_ignore_index,
    check_label_smoothing,
    check_logit_transform,
    check_reduction,
    check_weight_option,
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
) -> _FloatScalar | _FloatArray: ...
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> _FloatScalar | _FloatArray | tuple[_FloatScalar | _FloatArray, ...]: ...
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> _FloatScalar | _FloatArray | tuple[_FloatScalar | _FloatArray, ...]:
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
    softcap : float > 0, optional
        Soft-caps the logits to ``softcap * tanh(logits / softcap)`` (as
        Gemma 2 does) before the softmax.
    temperature : float > 0, default 1.0
        Divides the (soft-capped) logits: the loss sees
        ``softcap * tanh(logits / softcap) / temperature``, or
        ``logits / temperature`` without a soft-cap.  A logit scale ``s``
        is ``temperature = 1 / s``.  The transform is applied inside the
        kernels, never to a copy of the logits, and every gradient is with
        respect to the logits themselves.
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * lse**2`` to each sample's loss, where ``lse`` is the
        log-sum-exp of its (transformed) logits (PaLM's auxiliary loss).  It
        is counted as the sample's cross-entropy is: weighted by the target
        class's weight, not at all for an ignored target, and divided by the
        same ``"mean"`` denominator.
    return_z_loss : bool, default False
        Also return the z-loss part of the loss, reduced as the loss is, so
        that the cross-entropy alone (``loss - z_loss``) can be logged.
    return_lse : bool, default False
        Also return each sample's log-sum-exp of the transformed logits (the
        loss's per-sample shape, for every sample, ignored ones included).

    Returns
    -------
    loss : numpy scalar or ndarray
        A scalar for ``"mean"`` and ``"sum"``, the per-sample losses for
        ``"none"``; float64 for float64 logits, float32 otherwise.  It
        includes the z-loss.  With ``return_z_loss`` or ``return_lse``, a
        tuple: ``(loss, z_loss)``, ``(loss, lse)`` or ``(loss, z_loss, lse)``.

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
    >>> loss, z = fastce.cross_entropy(logits, np.array([0, 2]), softcap=2.0, z_loss=1e-2,
    ...                                return_z_loss=True)
    >>> print(round(float(loss), 5), round(float(z), 5))
    0.36443 0.03976
    """
    plan = None
    if return_z_loss is False and return_lse is False:
        plan = common_plan(
            CROSS_ENTROPY_INDEX,
            logits,
            target,
            weight,
            ignore_index,
            reduction,
            label_smoothing,
            axis,
            num_threads,
            softcap,
            temperature,
            z_loss,
            None,
            None,
        )
    if plan is None:
        plan = plan_cross_entropy(
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
            check_logit_transform(softcap, temperature, z_loss),
            check_flag(return_lse, "return_lse"),
            check_flag(return_z_loss, "return_z_loss"),
        )
    loss, _, lse, z_loss_part = execute(plan)
    if lse is None and z_loss_part is None:
        only_loss: _FloatScalar | _FloatArray = loss
        return only_loss
    return _with_extras((loss,), z_loss_part, lse)


def _with_extras(
    head: tuple[_FloatScalar | _FloatArray, ...],
    z_loss_part: _FloatScalar | _FloatArray | None,
    lse: _FloatArray | None,
) -> tuple[_FloatScalar | _FloatArray, ...]:
    """``head`` followed by the z-loss and the log-sum-exps the plan asked for."""
    return head + tuple(extra for extra in (z_loss_part, lse) if extra is not None)


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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
) -> _FloatArray:
    """Gradient of :func:`cross_entropy` with respect to the logits.

    Takes :func:`cross_entropy`'s arguments (``softcap``, ``temperature``
    and ``z_loss`` too: the gradient goes through them to the logits), and:

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
    # the same pass as the loss's: the gradient is what cross_entropy_with_grad returns
    return cross_entropy_with_grad(
        logits,
        target,
        weight,
        grad_output=grad_output,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        axis=axis,
        out=out,
        num_threads=num_threads,
        softcap=softcap,
        temperature=temperature,
        z_loss=z_loss,
    )[1]


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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
) -> tuple[_FloatScalar | _FloatArray, _FloatArray]: ...
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> tuple[_FloatScalar | _FloatArray, ...]: ...
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> tuple[_FloatScalar | _FloatArray, ...]:
    """The loss and its gradient from one pass over the logits.

    Arguments as :func:`cross_entropy_grad`; returns ``(loss, grad)``, equal
    to what :func:`cross_entropy` and :func:`cross_entropy_grad` return,
    followed by the z-loss and the log-sum-exps when ``return_z_loss`` and
    ``return_lse`` ask for them (as :func:`cross_entropy`).

    Examples
    --------
    >>> import numpy as np, fastce
    >>> logits = np.array([[1.0, 2.0, 0.1]])
    >>> loss, grad = fastce.cross_entropy_with_grad(logits, np.array([1]), out=logits)
    >>> float(round(loss, 6)), grad is logits
    (0.41703, True)
    """
    plan = None
    if return_z_loss is False and return_lse is False:
        plan = common_plan(
            CROSS_ENTROPY_INDEX,
            logits,
            target,
            weight,
            ignore_index,
            reduction,
            label_smoothing,
            axis,
            num_threads,
            softcap,
            temperature,
            z_loss,
            grad_output,
            out,
        )
    if plan is None:
        plan = plan_cross_entropy(
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
            check_logit_transform(softcap, temperature, z_loss),
            check_flag(return_lse, "return_lse"),
            check_flag(return_z_loss, "return_z_loss"),
        )
    loss, grad, lse, z_loss_part = execute(plan)
    if lse is None and z_loss_part is None:
        return loss, grad
    return _with_extras((loss, grad), z_loss_part, lse)


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
    plan = common_plan(
        NLL_LOSS,
        log_probs,
        target,
        weight,
        ignore_index,
        reduction,
        0.0,
        axis,
        num_threads,
        None,
        1.0,
        0.0,
        None,
        None,
    )
    if plan is None:
        plan = plan_nll_loss(log_probs, target, weight, ignore_index, reduction, axis, num_threads)
    result: _FloatScalar | _FloatArray = execute(plan)[0]
    return result


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
    result: _FloatArray | _FloatScalar = execute(
        plan_softmax(x, axis, LOG_SOFTMAX, out, num_threads)
    )[1]
    return result


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
    result: _FloatArray | _FloatScalar = execute(plan_softmax(x, axis, SOFTMAX, out, num_threads))[
        1
    ]
    return result


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
    result: _FloatArray | _FloatScalar = execute(
        plan_softmax(x, axis, LOGSUMEXP, None, num_threads)
    )[0]
    return result


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
    loss: _FloatScalar | _FloatArray = execute(
        plan_binary(
            logits, target, weight, pos_weight, reduction, True, False, None, None, num_threads
        )
    )[0]
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
    grad: _FloatArray = execute(
        plan_binary(
            logits,
            target,
            weight,
            pos_weight,
            reduction,
            True,
            True,
            grad_output,
            out,
            num_threads,
            want_loss=False,
        )
    )[1]
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
    loss: _FloatScalar | _FloatArray
    grad: _FloatArray
    loss, grad, _, _ = execute(
        plan_binary(
            logits, target, weight, pos_weight, reduction, True, True, grad_output, out, num_threads
        )
    )
    return loss, grad


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
    loss: _FloatScalar | _FloatArray = execute(
        plan_binary(probs, target, weight, None, reduction, False, False, None, None, num_threads)
    )[0]
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
    grad: _FloatArray = execute(
        plan_binary(
            probs,
            target,
            weight,
            None,
            reduction,
            False,
            True,
            grad_output,
            out,
            num_threads,
            want_loss=False,
        )
    )[1]
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
    loss: _FloatScalar | _FloatArray
    grad: _FloatArray
    loss, grad, _, _ = execute(
        plan_binary(
            probs, target, weight, None, reduction, False, True, grad_output, out, num_threads
        )
    )
    return loss, grad


class _Options(TypedDict):
    """The keyword options :class:`CrossEntropyLoss` passes on with every call."""

    ignore_index: int
    reduction: str
    label_smoothing: float
    axis: int | None
    softcap: float | None
    temperature: float
    z_loss: float


class CrossEntropyLoss:
    """A cross-entropy criterion with fixed options, like ``torch.nn.CrossEntropyLoss``.

    ``criterion(logits, target)`` is ``cross_entropy(logits, target, **options)``;
    :meth:`grad` and :meth:`with_grad` give the gradient.  The options
    (``softcap``, ``temperature`` and ``z_loss`` too) are checked when the
    criterion is made.

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
        *,
        softcap: float | None = None,
        temperature: float = 1.0,
        z_loss: float = 0.0,
    ) -> None:
        self.reduction = check_reduction(reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.weight = check_weight_option(weight)
        self.axis = check_axis_option(axis)
        check_logit_transform(softcap, temperature, z_loss)
        self.softcap = softcap
        self.temperature = temperature
        self.z_loss = z_loss

    def _options(self) -> _Options:
        return dict(
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            axis=self.axis,
            softcap=self.softcap,
            temperature=self.temperature,
            z_loss=self.z_loss,
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
        loss, grad = cross_entropy_with_grad(
            logits, target, self.weight, grad_output=grad_output, out=out, **self._options()
        )
        return loss, grad

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
