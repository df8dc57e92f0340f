"""The slow, obvious float64 NumPy twin of every public ``fastce`` function.

Each function here has the signature of its fast counterpart and computes the
formulas of the contract (SPEC, "The mathematics") literally, in float64, with
the class axis moved last.  It is written to be read and checked by eye, not to
be fast; the test-suite compares every fast path against it.

What it does not do:

* validate its arguments beyond what is needed to compute (the fast API
  validates and raises clear errors; here a bad call simply fails or gives
  garbage);
* cast its results: everything is returned in float64 (a NumPy ``float64``
  scalar for ``"mean"``/``"sum"``, an array for ``"none"``);
* honour ``out=``: the argument is accepted so that calls can be shared with the
  fast API, and ignored.

Conventions shared with the fast implementation:

* ``logsumexp`` shifts by the row maximum only when it is finite, as
  ``torch.logsumexp`` does, so ``logsumexp([inf, 1]) == inf`` and
  ``logsumexp([-inf, -inf]) == -inf``; ``log_softmax``/``softmax`` give NaN for
  a row holding ``+inf`` and for an all ``-inf`` row, as PyTorch.
* In ``cross_entropy`` a zero coefficient ``a[n, c]`` contributes nothing to the
  loss (like ``scipy.special.xlogy``), and a sample whose coefficients are all
  zero (an ignored sample) has a zero loss and a zero gradient, even when its
  logits are NaN.
* ``"mean"`` over zero samples, or with every sample ignored, is NaN and its
  gradient is all zeros; ``"sum"`` over zero samples is 0.  A ``"mean"`` whose
  denominator is 0 only because the targets' weights are 0 is NaN too, and so is
  the gradient of every sample with a nonzero coefficient (label smoothing).

Example
-------
>>> import numpy as np
>>> from fastce import reference
>>> round(float(reference.cross_entropy(np.array([1.0, 2.0, 0.1]), np.array(1))), 6)
0.41703
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias, TypedDict, cast, overload

import numpy as np
import numpy.typing as npt

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
    "evaluate",
    "Evaluation",
]


# --------------------------------------------------------------------------
# helpers

_Array: TypeAlias = npt.NDArray[np.float64]
# per-sample losses ("none"): an array, or a float64 scalar for an unbatched (C,) input
_Losses: TypeAlias = npt.NDArray[np.float64] | np.float64


def _as_float64(x: npt.ArrayLike) -> _Array:
    return np.asarray(x).astype(np.float64)


def _class_axis(ndim: int, axis: int | None) -> int:
    """The class axis as a non-negative int (``None``: 1 if ndim >= 2 else 0)."""
    if axis is None:
        axis = 1 if ndim >= 2 else 0
    return axis % ndim if ndim else 0


def _log_softmax_last(x: _Array) -> _Array:
    """log_softmax along the last axis of a float64 array, shifted by the max."""
    if x.shape[-1] == 0:
        return x.copy()
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        shifted = x - np.max(x, axis=-1, keepdims=True)
        return cast(_Array, shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True)))


def _xlogy(a: _Array, logp: _Array) -> _Array:
    """``a * logp`` with the rule that a zero ``a`` contributes exactly 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(a == 0, 0.0, a * logp)


def _is_probability_target(target: npt.NDArray[Any]) -> bool:
    return np.issubdtype(target.dtype, np.floating)


def _coefficients(
    x_last: _Array,
    target: npt.NDArray[Any],
    weight: npt.ArrayLike | None,
    ignore_index: int,
    label_smoothing: float,
    axis: int,
) -> tuple[_Array, float]:
    """The per-class coefficients ``a[..., c]`` (class axis last) and the
    ``"mean"`` denominator, straight from SPEC.

    Returns ``(a, denominator)``.
    """
    n_classes = x_last.shape[-1]
    eps = float(label_smoothing)
    if weight is None:
        w = np.ones(n_classes)
    else:
        w = _as_float64(weight)
    smooth = eps / n_classes if n_classes else 0.0

    if _is_probability_target(target):
        y = np.moveaxis(_as_float64(target), axis, -1)
        a = w * ((1.0 - eps) * y + smooth)
        denominator = float(np.prod(y.shape[:-1]))  # the number of samples
        return a, denominator

    t = np.asarray(target).astype(np.int64)
    ignored = t == ignore_index
    t_safe = np.where(ignored, 0, t)
    if n_classes:
        w_target = w[t_safe]
    else:
        w_target = np.zeros(t.shape)
    onehot = np.arange(n_classes) == t_safe[..., None]
    a = (1.0 - eps) * w_target[..., None] * onehot + smooth * w
    a = np.where(ignored[..., None], 0.0, a)
    denominator = float(np.sum(w_target[~ignored]))
    return a, denominator


class _Transform(TypedDict):
    """The logit transform and z-loss options of the cross-entropy family."""

    softcap: float | None
    temperature: float
    z_loss: float


_NO_TRANSFORM: _Transform = {"softcap": None, "temperature": 1.0, "z_loss": 0.0}


class _CrossEntropyTerms(TypedDict):
    """What cross-entropy computes per sample, class axis last."""

    logp: _Array  # log_softmax of the transformed logits
    slope: _Array  # d(transformed logits) / d(logits)
    a: _Array  # the coefficients
    loss: _Losses  # the cross-entropy plus the z-loss
    lse: _Losses  # log-sum-exp of the transformed logits
    z_weight: _Losses  # z_loss times the sample's weight (0 for an inactive sample)
    denominator: float
    axis: int


def _per_sample(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None,
    ignore_index: int,
    label_smoothing: float,
    axis: int | None,
    transform: _Transform = _NO_TRANSFORM,
) -> _CrossEntropyTerms:
    """Cross-entropy's per-sample terms, on the logits
    ``softcap * tanh(x / softcap) / temperature`` (``x / temperature``
    without a soft-cap), with ``z_loss * w[t] * lse**2`` added to the loss
    (``z_loss * lse**2`` for probability targets) of every sample that has a
    nonzero coefficient."""
    x = _as_float64(logits)
    axis = _class_axis(x.ndim, axis)
    x_last = np.moveaxis(x, axis, -1)
    cap, temperature = transform["softcap"], float(transform["temperature"])
    if cap is None:
        y = x_last / temperature
        slope = np.full(x_last.shape, 1.0 / temperature)
    else:
        tanh = np.tanh(x_last / cap)
        y = cap * tanh / temperature
        slope = (1.0 - tanh * tanh) / temperature
    logp = _log_softmax_last(y)
    lse = logsumexp(y)
    tgt = np.asarray(target)
    a, denominator = _coefficients(y, tgt, weight, ignore_index, label_smoothing, axis)
    active = np.any(a != 0, axis=-1)
    if _is_probability_target(tgt):
        sample_weight = np.ones(active.shape)
    else:
        w = np.ones(y.shape[-1]) if weight is None else _as_float64(weight)
        t = tgt.astype(np.int64)
        sample_weight = np.where(t == ignore_index, 0.0, w[np.where(t == ignore_index, 0, t)])
    z_weight = np.where(active, transform["z_loss"] * sample_weight, 0.0)
    with np.errstate(invalid="ignore"):
        z_part = np.where(z_weight != 0, z_weight * lse * lse, 0.0)
    loss: _Losses = 0.0 - np.sum(_xlogy(a, logp), axis=-1) + z_part
    return {
        "logp": logp,
        "slope": slope,
        "a": a,
        "loss": loss,
        "lse": lse,
        "z_weight": z_weight,
        "denominator": denominator,
        "axis": axis,
    }


def _extras(
    terms: _CrossEntropyTerms, reduction: str, return_z_loss: bool, return_lse: bool
) -> tuple[_Losses, ...]:
    """The z-loss (reduced as the loss) and the log-sum-exps, where asked for."""
    extras: tuple[_Losses, ...] = ()
    if return_z_loss:
        with np.errstate(invalid="ignore"):
            z_part = np.where(
                terms["z_weight"] != 0, terms["z_weight"] * terms["lse"] * terms["lse"], 0.0
            )
        extras += (_reduce(z_part, terms["denominator"], reduction),)
    if return_lse:
        extras += (terms["lse"],)
    return extras


def _reduce(loss: _Losses, denominator: float, reduction: str) -> _Losses:
    if reduction == "none":
        return loss
    total = np.sum(loss)
    if reduction == "sum":
        return np.float64(total)
    if denominator == 0:  # "mean" over no sample, or with every sample ignored
        return np.float64(np.nan)
    return np.float64(total / denominator)


def _scale(loss: _Losses, denominator: float, reduction: str, grad_output: npt.ArrayLike) -> _Array:
    """``g[n]``: the reduction's scale times ``grad_output``, loss-shaped."""
    go = _as_float64(grad_output)
    if reduction == "none":
        return np.broadcast_to(go, loss.shape)
    if reduction == "sum":
        return np.full(loss.shape, float(go))
    if denominator == 0:
        # "mean" of nothing: NaN, which a sample with all-zero coefficients
        # (an ignored one) then turns into a zero gradient
        return np.full(loss.shape, np.nan)
    return np.full(loss.shape, float(go) / denominator)


# --------------------------------------------------------------------------
# cross-entropy


@overload
def cross_entropy(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
    label_smoothing: float = 0.0,
    axis: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
) -> np.float64: ...
@overload
def cross_entropy(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str,
    label_smoothing: float = 0.0,
    axis: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
) -> _Losses: ...
@overload
def cross_entropy(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> _Losses | tuple[_Losses, ...]: ...
def cross_entropy(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> _Losses | tuple[_Losses, ...]:
    """Softmax cross-entropy: ``loss[n] = -sum_c a[n, c] * logp[n, c]``, reduced;
    on transformed logits, plus the z-loss, as :func:`_per_sample` says."""
    terms = _per_sample(
        logits,
        target,
        weight,
        ignore_index,
        label_smoothing,
        axis,
        {"softcap": softcap, "temperature": temperature, "z_loss": z_loss},
    )
    loss = _reduce(terms["loss"], terms["denominator"], reduction)
    extras = _extras(terms, reduction, return_z_loss, return_lse)
    return (loss, *extras) if extras else loss


@overload
def cross_entropy_with_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    grad_output: npt.ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
    label_smoothing: float = 0.0,
    axis: int | None = None,
    out: npt.NDArray[Any] | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
) -> tuple[np.float64, _Array]: ...
@overload
def cross_entropy_with_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    grad_output: npt.ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: str,
    label_smoothing: float = 0.0,
    axis: int | None = None,
    out: npt.NDArray[Any] | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: Literal[False] = False,
    return_lse: Literal[False] = False,
) -> tuple[_Losses, _Array]: ...
@overload
def cross_entropy_with_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    grad_output: npt.ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: int | None = None,
    out: npt.NDArray[Any] | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> tuple[_Losses, ...]: ...
def cross_entropy_with_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    grad_output: npt.ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: int | None = None,
    out: npt.NDArray[Any] | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> tuple[_Losses, ...]:
    """``(loss, grad)`` with ``grad[n, c] = g[n] * (A[n] * p[n, c] - a[n, c])``,
    where the z-loss adds ``2 * z_loss * w[t] * lse[n]`` to ``A[n]`` and a
    transform multiplies by its derivative; then the extras of
    :func:`cross_entropy`.

    Samples whose coefficients are all zero (ignored samples) get a zero gradient.
    ``out`` is ignored.
    """
    terms = _per_sample(
        logits,
        target,
        weight,
        ignore_index,
        label_smoothing,
        axis,
        {"softcap": softcap, "temperature": temperature, "z_loss": z_loss},
    )
    a, loss, denominator = terms["a"], terms["loss"], terms["denominator"]
    g = _scale(loss, denominator, reduction, grad_output)[..., None]
    A = np.sum(a, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        A = (
            A
            + np.where(terms["z_weight"] != 0, 2.0 * terms["z_weight"] * terms["lse"], 0.0)[
                ..., None
            ]
        )
        p = np.exp(terms["logp"])
        grad = g * (A * p - a) * terms["slope"]
    # a sample with no coefficient at all contributes nothing, even with NaN
    # logits; coefficients that cancel (A == 0) still contribute
    grad = np.where(np.any(a != 0, axis=-1, keepdims=True), grad, 0.0)
    extras = _extras(terms, reduction, return_z_loss, return_lse)
    return (_reduce(loss, denominator, reduction), np.moveaxis(grad, -1, terms["axis"]), *extras)


def cross_entropy_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    grad_output: npt.ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: int | None = None,
    out: npt.NDArray[Any] | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
) -> _Array:
    """The gradient of :func:`cross_entropy` with respect to the logits."""
    return cross_entropy_with_grad(
        logits,
        target,
        weight,
        grad_output=grad_output,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        axis=axis,
        softcap=softcap,
        temperature=temperature,
        z_loss=z_loss,
    )[1]


@overload
def nll_loss(
    log_probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
    axis: int | None = None,
) -> np.float64: ...
@overload
def nll_loss(
    log_probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str,
    axis: int | None = None,
) -> _Losses: ...
def nll_loss(
    log_probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    axis: int | None = None,
) -> _Losses:
    """Negative log-likelihood of class indices: ``loss[n] = -w[t] * log_probs[n, t]``."""
    x = _as_float64(log_probs)
    axis = _class_axis(x.ndim, axis)
    x_last = np.moveaxis(x, axis, -1)
    a, denominator = _coefficients(x_last, np.asarray(target), weight, ignore_index, 0.0, axis)
    loss: _Losses = 0.0 - np.sum(_xlogy(a, x_last), axis=-1)
    return _reduce(loss, denominator, reduction)


class CrossEntropyLoss:
    """The callable twin of ``fastce.CrossEntropyLoss``."""

    def __init__(
        self,
        weight: npt.ArrayLike | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        axis: int | None = None,
    ) -> None:
        self.weight = weight
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.axis = axis

    def __call__(self, logits: npt.ArrayLike, target: npt.ArrayLike) -> _Losses:
        return cross_entropy(
            logits,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            axis=self.axis,
        )


# --------------------------------------------------------------------------
# softmax family


def log_softmax(
    x: npt.ArrayLike, axis: int = -1, out: npt.NDArray[Any] | None = None
) -> _Array | np.float64:
    """``x - max - log(sum(exp(x - max)))`` along ``axis``; ``out`` is ignored."""
    x = _as_float64(x)
    if x.ndim == 0:
        # the one element of a 1-d float64 array: a float64 scalar
        return cast(np.float64, _log_softmax_last(x[None])[0])
    return np.moveaxis(_log_softmax_last(np.moveaxis(x, axis, -1)), -1, axis)


def softmax(
    x: npt.ArrayLike, axis: int = -1, out: npt.NDArray[Any] | None = None
) -> _Array | np.float64:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``; ``out`` is ignored."""
    x = _as_float64(x)
    if x.ndim == 0:
        # softmax of a 1-d input is an array, whose one element is a float64 scalar
        return cast(np.float64, cast(_Array, softmax(x[None]))[0])
    x_last = np.moveaxis(x, axis, -1)
    if x_last.shape[-1] == 0:
        return x.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(x_last - np.max(x_last, axis=-1, keepdims=True))
        p: _Array = e / np.sum(e, axis=-1, keepdims=True)
    return np.moveaxis(p, -1, axis)


def logsumexp(x: npt.ArrayLike, axis: int = -1) -> _Array:
    """``log(sum(exp(x)))`` along ``axis``, shifted by the max only when it is
    finite (so ``+inf`` in a row gives ``+inf`` and an all ``-inf`` row ``-inf``);
    an empty row gives ``-inf``."""
    x = _as_float64(x)
    if x.ndim == 0:
        return logsumexp(x[None])
    x_last = np.moveaxis(x, axis, -1)
    if x_last.shape[-1] == 0:
        return np.full(x_last.shape[:-1], -np.inf)
    m = np.max(x_last, axis=-1, keepdims=True)
    shift = np.where(np.isinf(m), 0.0, m)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        s: _Array = np.log(np.sum(np.exp(x_last - shift), axis=-1, keepdims=True)) + shift
    return s[..., 0]


# --------------------------------------------------------------------------
# binary cross-entropy


def _reduce_elementwise(loss: _Array, reduction: str) -> _Array | np.float64:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.float64(np.sum(loss))
    if loss.size == 0:
        return np.float64(np.nan)
    return np.float64(np.mean(loss))


@overload
def binary_cross_entropy_with_logits(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> np.float64: ...
@overload
def binary_cross_entropy_with_logits(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: Literal["none"],
) -> _Array: ...
@overload
def binary_cross_entropy_with_logits(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: str,
) -> _Array | np.float64: ...
def binary_cross_entropy_with_logits(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: str = "mean",
) -> _Array | np.float64:
    """``(1 - y) * x + c * softplus(-x)`` times ``weight``, ``c = 1 + (pw - 1) * y``,
    ``pos_weight`` broadcasting against the last axis; summed as
    ``c * log1p(exp(-|x|)) + (x < 0 ? -pw * y * x : (1 - y) * x)``, two terms of
    one sign, so that a small loss is not lost to cancellation.  A logit of
    -inf gives NaN, as torch's formula does."""
    x = _as_float64(logits)
    y = _as_float64(target)
    pw = 1.0 if pos_weight is None else _as_float64(pos_weight)
    with np.errstate(invalid="ignore", over="ignore"):
        c = 1.0 + (pw - 1.0) * y
        linear = np.where(x < 0, -pw * y * x, (1.0 - y) * x)
        loss = c * np.log1p(np.exp(-np.abs(x))) + linear
        loss = np.where(x == -np.inf, np.nan, loss)
        if weight is not None:
            loss = loss * _as_float64(weight)
    return _reduce_elementwise(np.broadcast_to(loss, x.shape), reduction)


@overload
def binary_cross_entropy(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: Literal["mean", "sum"] = "mean",
) -> np.float64: ...
@overload
def binary_cross_entropy(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: Literal["none"],
) -> _Array: ...
@overload
def binary_cross_entropy(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: str,
) -> _Array | np.float64: ...
def binary_cross_entropy(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: str = "mean",
) -> _Array | np.float64:
    """``-w * (y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))``."""
    p = _as_float64(probs)
    y = _as_float64(target)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.maximum(np.log(p), -100.0)
        log_1mp = np.maximum(np.log(1.0 - p), -100.0)
        loss = -(y * log_p + (1.0 - y) * log_1mp)
        if weight is not None:
            loss = loss * _as_float64(weight)
    return _reduce_elementwise(np.broadcast_to(loss, p.shape), reduction)


def _elementwise_grad_scale(
    grad_output: npt.ArrayLike, reduction: str, shape: tuple[int, ...]
) -> _Array:
    """``grad_output`` spread over the elements, divided by their count for "mean"."""
    g = np.broadcast_to(_as_float64(grad_output), shape)
    n = int(np.prod(shape))
    return g / n if reduction == "mean" and n else g


def binary_cross_entropy_with_logits_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: str = "mean",
    grad_output: npt.ArrayLike = 1.0,
) -> _Array:
    """``grad_output * w * ((1 + (pw - 1) * y) * sigmoid(x) - pw * y)``."""
    x = _as_float64(logits)
    y = _as_float64(target)
    pw = 1.0 if pos_weight is None else _as_float64(pos_weight)
    with np.errstate(invalid="ignore", over="ignore"):
        sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x))
        grad = (1.0 + (pw - 1.0) * y) * sigmoid - pw * y
        if weight is not None:
            grad = grad * _as_float64(weight)
        grad = grad * _elementwise_grad_scale(grad_output, reduction, x.shape)
    return np.broadcast_to(grad, x.shape).copy()


@overload
def binary_cross_entropy_with_logits_with_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: Literal["mean", "sum"] = "mean",
    grad_output: npt.ArrayLike = 1.0,
) -> tuple[np.float64, _Array]: ...
@overload
def binary_cross_entropy_with_logits_with_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: Literal["none"],
    grad_output: npt.ArrayLike = 1.0,
) -> tuple[_Array, _Array]: ...
@overload
def binary_cross_entropy_with_logits_with_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: str,
    grad_output: npt.ArrayLike = 1.0,
) -> tuple[_Array | np.float64, _Array]: ...
def binary_cross_entropy_with_logits_with_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    pos_weight: npt.ArrayLike | None = None,
    reduction: str = "mean",
    grad_output: npt.ArrayLike = 1.0,
) -> tuple[_Array | np.float64, _Array]:
    return (
        binary_cross_entropy_with_logits(
            logits, target, weight, pos_weight=pos_weight, reduction=reduction
        ),
        binary_cross_entropy_with_logits_grad(
            logits,
            target,
            weight,
            pos_weight=pos_weight,
            reduction=reduction,
            grad_output=grad_output,
        ),
    )


def binary_cross_entropy_grad(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: str = "mean",
    grad_output: npt.ArrayLike = 1.0,
) -> _Array:
    """``grad_output * w * (p - y) / max((1 - p) * p, 1e-12)``, as torch's."""
    p = _as_float64(probs)
    y = _as_float64(target)
    grad = (p - y) / np.maximum((1.0 - p) * p, 1e-12)
    if weight is not None:
        grad = grad * _as_float64(weight)
    grad = grad * _elementwise_grad_scale(grad_output, reduction, p.shape)
    return np.broadcast_to(grad, p.shape).copy()


@overload
def binary_cross_entropy_with_grad(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: Literal["mean", "sum"] = "mean",
    grad_output: npt.ArrayLike = 1.0,
) -> tuple[np.float64, _Array]: ...
@overload
def binary_cross_entropy_with_grad(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: Literal["none"],
    grad_output: npt.ArrayLike = 1.0,
) -> tuple[_Array, _Array]: ...
@overload
def binary_cross_entropy_with_grad(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: str,
    grad_output: npt.ArrayLike = 1.0,
) -> tuple[_Array | np.float64, _Array]: ...
def binary_cross_entropy_with_grad(
    probs: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    reduction: str = "mean",
    grad_output: npt.ArrayLike = 1.0,
) -> tuple[_Array | np.float64, _Array]:
    return (
        binary_cross_entropy(probs, target, weight, reduction=reduction),
        binary_cross_entropy_grad(
            probs, target, weight, reduction=reduction, grad_output=grad_output
        ),
    )


# --------------------------------------------------------------------------
# evaluation


class Evaluation(TypedDict):
    """What :func:`evaluate` computes: ``fastce.evaluate``'s totals, and its
    per-sample values over every sample (ignored ones included), flattened in
    the order of the logits with the class axis removed."""

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
    per_loss: _Array
    pred: npt.NDArray[np.int64]
    rank: npt.NDArray[np.int64]
    conf: _Array
    ent: _Array
    lse: _Array
    target_logprob: _Array  # log p_t, 0 where ignored
    sample_brier: _Array  # sum_c (p_c - [c == t])^2, 0 where ignored
    loss_se: float
    accuracy_se: dict[int, float]
    # with segments (else None / NaN): clustered errors above, and per group
    groups: Groups | None
    macro_loss: float
    macro_perplexity: float
    # with a reference model's logits (else None): what PairedResult holds, and each
    # sample's KL(reference || model) (0 where ignored)
    paired: dict[str, Any] | None
    kl: _Array


class Groups(TypedDict):
    """Per-group totals of :func:`evaluate` with segments, keyed by ``ids``."""

    ids: npt.NDArray[np.int64]
    count: npt.NDArray[np.int64]
    weight_sum: _Array
    loss_sum: _Array
    log_likelihood: _Array
    loss: _Array
    greedy: npt.NDArray[np.bool_]
    accuracy: dict[int, _Array]


def _ratio_se(values: _Array, sizes: _Array) -> float:
    """Standard error of ``sum(values) / sum(sizes)`` over independent
    clusters, written out: ``sqrt(G / (G - 1) * sum((v - r s)**2)) / sum(s)``."""
    g = len(values)
    if g < 2 or sizes.sum() == 0:
        return np.nan
    r = values.sum() / sizes.sum()
    return float(np.sqrt(g / (g - 1) * np.sum((values - r * sizes) ** 2)) / sizes.sum())


def evaluate(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    *,
    topk: tuple[int, ...] = (1, 5),
    bins: int = 15,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    axis: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    segments: npt.ArrayLike | None = None,
    reference: npt.ArrayLike | None = None,
) -> Evaluation:
    """Every metric of ``fastce.evaluate``, computed literally in float64
    with the class axis last: a sample's rank is the number of classes whose
    logit beats its target's (ties to the lower class index), its prediction
    the first class at the maximum, its confidence the largest probability;
    a row whose probabilities are not defined (NaN, or +inf and -inf only)
    counts as wrong with NaN confidence and entropy; calibration error is
    over ``bins`` equal-width confidence bins.  Every metric is of the
    transformed logits ``softcap * tanh(logits / softcap) / temperature``;
    the z-loss is ``z_loss * w[t] * lse**2`` over the weight sum.

    With ``reference``, its logits (untransformed) are compared with the
    model's over the samples counted: KL(p_ref || p) = sum p_ref (log p_ref -
    log p), written out.

    Standard errors treat the samples as independent clusters of one, or,
    with ``segments``, the groups as the clusters; a group's loss is its
    summed loss over its summed target weight."""
    x = np.asarray(logits, dtype=np.float64)
    if softcap is not None:
        x = softcap * np.tanh(x / softcap)
    x = x / temperature
    logits = x
    t = np.asarray(target).astype(np.int64)
    ax = (1 if x.ndim >= 2 else 0) if axis is None else axis % x.ndim
    x = np.moveaxis(x, ax, -1).reshape(-1, x.shape[ax])
    t = t.reshape(-1)
    n_rows, C = x.shape
    keep = t != ignore_index
    with np.errstate(all="ignore"):

        def sample_losses(of: npt.ArrayLike) -> _Array:
            return np.asarray(
                cross_entropy(
                    np.asarray(of, np.float64),
                    target,
                    weight,
                    ignore_index=ignore_index,
                    reduction="none",
                    label_smoothing=label_smoothing,
                    axis=axis,
                )
            ).reshape(-1)

        losses = sample_losses(logits)
        p = np.asarray(softmax(x, axis=-1))
        valid = np.asarray(~np.isnan(p).any(axis=-1))
        conf = p.max(axis=-1, initial=-np.inf) if C else np.zeros(n_rows)
        conf = np.where(valid, conf, np.nan)
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        entropy = np.where(valid, -plogp.sum(axis=-1), np.nan)
        pred = np.array([np.argmax(row) for row in x], dtype=np.int64)
        onehot = np.zeros_like(p)
        onehot[np.flatnonzero(keep), t[keep]] = 1.0
        brier = np.sum((p - onehot) ** 2, axis=-1)
        rank = np.full(n_rows, -1, dtype=np.int64)
        for n in np.flatnonzero(keep):
            row, tn = x[n], t[n]
            rank[n] = (row > row[tn]).sum() + (row[:tn] == row[tn]).sum() if valid[n] else C
        w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
        weight_sum = float(w[t[keep]].sum())
        lse = logsumexp(x, axis=-1)
        z_total = float(np.sum(w[t[keep]] * lse[keep] ** 2))
        loss = float(losses[keep].sum() / weight_sum) if weight_sum else np.nan
        N = int(keep.sum())
        r, c, ok = rank[keep], conf[keep], valid[keep]
        accuracy = {k: float(((r < k) & ok).sum() / N) if N else np.nan for k in topk}
        logprob = np.zeros(n_rows)
        logprob[keep] = x[keep, t[keep]] - lse[keep]
        hits = {k: ((r < k) & ok).astype(np.float64) for k in topk}
        w_kept = w[t[keep]]
        groups: Groups | None = None
        macro_loss = macro_perplexity = np.nan
        if segments is None:
            loss_se = _ratio_se(losses[keep], w_kept)
            accuracy_se = {k: _ratio_se(hits[k], np.ones(N)) for k in topk}
        else:
            seg_all = np.asarray(segments).astype(np.int64).reshape(-1)
            ids = np.unique(seg_all)
            seg = seg_all[keep]
            members = [seg == g for g in ids]
            count = np.array([m.sum() for m in members], dtype=np.int64)
            g_weight = np.array([w_kept[m].sum() for m in members])
            g_loss = np.array([losses[keep][m].sum() for m in members])
            g_hits = {k: np.array([hits[k][m].sum() for m in members]) for k in topk}
            top1 = np.array([((r == 0) & ok)[m].sum() for m in members])
            filled = count > 0
            mean = np.where(filled, g_loss / np.where(filled, g_weight, 1.0), np.nan)
            groups = Groups(
                ids=ids,
                count=count,
                weight_sum=g_weight,
                loss_sum=g_loss,
                log_likelihood=np.array([logprob[keep][m].sum() for m in members]),
                loss=mean,
                greedy=filled & (top1 == count),
                accuracy={
                    k: np.where(filled, g_hits[k] / np.maximum(count, 1), np.nan) for k in topk
                },
            )
            if filled.any():
                macro_loss = float(mean[filled].mean())
                macro_perplexity = float(np.exp(mean[filled]).mean())
            loss_se = _ratio_se(g_loss[filled], g_weight[filled])
            accuracy_se = {
                k: _ratio_se(g_hits[k][filled], count[filled].astype(np.float64)) for k in topk
            }
        b = np.clip(np.floor(np.nan_to_num(c, nan=0.0) * bins).astype(np.int64), 0, bins - 1)
        correct = (r == 0) & ok
        gaps = [abs(correct[b == i].sum() - c[b == i].sum()) for i in range(bins)]
        paired = None
        kl_all = np.zeros(n_rows)
        if reference is not None:
            r = np.moveaxis(np.asarray(reference, dtype=np.float64), ax, -1).reshape(-1, C)
            log_pr = np.asarray(log_softmax(r, axis=-1))
            log_px = np.asarray(log_softmax(x, axis=-1))
            pr = np.exp(log_pr)
            terms = np.where(pr > 0, pr * (log_pr - log_px), 0.0)
            kl_all = np.where(keep, terms.sum(axis=-1), 0.0)
            kl = kl_all[keep]
            ref_losses = sample_losses(reference)[keep]
            rows = np.flatnonzero(keep)
            ref_valid = np.asarray(~np.isnan(pr).any(axis=-1))[keep]
            dp = np.exp(log_px[rows, t[keep]]) - pr[rows, t[keep]]
            agree = np.array([np.argmax(a) == np.argmax(b) for a, b in zip(x[keep], r[keep])])
            ref_loss = float(ref_losses.sum() / weight_sum) if weight_sum else np.nan
            paired = {
                "kl": float(kl.mean()) if N else np.nan,
                "kl_percentiles": dict(
                    zip(("p50", "p90", "p99", "max"), np.percentile(kl, [50, 90, 99, 100]))
                )
                if N
                else {},
                "top1_agreement": float((agree & ok & ref_valid).mean()) if N else np.nan,
                "target_prob_change": float(dp.mean()) if N else np.nan,
                "target_prob_change_sd": float(dp.std(ddof=1)) if N > 1 else np.nan,
                "reference_loss": ref_loss,
                "log_perplexity_ratio": loss - ref_loss,
                "log_perplexity_ratio_se": _ratio_se(losses[keep] - ref_losses, w_kept),
            }
        return Evaluation(
            loss=loss,
            perplexity=float(np.exp(loss)),
            accuracy=accuracy,
            confidence=float(c.mean()) if N else np.nan,
            entropy=float(entropy[keep].mean()) if N else np.nan,
            brier=float(brier[keep].mean()) if N else np.nan,
            ece=float(sum(gaps) / N) if N else np.nan,
            count=N,
            weight_sum=weight_sum,
            z_loss=z_loss * (z_total / weight_sum if weight_sum else np.nan) if z_loss else 0.0,
            per_loss=losses,
            pred=pred,
            rank=rank,
            conf=conf,
            ent=entropy,
            lse=lse,
            target_logprob=logprob,
            sample_brier=np.where(keep, brier, 0.0),
            loss_se=loss_se,
            accuracy_se=accuracy_se,
            groups=groups,
            macro_loss=macro_loss,
            macro_perplexity=macro_perplexity,
            paired=paired,
            kl=kl_all,
        )
