"""The plans of calls: ``_plan`` makes them after checking every argument
(and ``_kernels.common_plan`` makes the commonest call's without the checks
it passes by construction); ``_kernels.execute`` runs any of them."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt


class LogitTransform(NamedTuple):
    """The logits a loss sees, ``logit_scale * softcap * tanh(x / softcap)``
    (``logit_scale * x`` for ``softcap`` 0), and the z-loss coefficient."""

    logit_scale: float
    softcap: float
    z_loss: float


NO_TRANSFORM = LogitTransform(1.0, 0.0, 0.0)

# the kernel a plan runs
CROSS_ENTROPY_INDEX = "cross_entropy_index"
CROSS_ENTROPY_PROBS = "cross_entropy_probs"
NLL_LOSS = "nll_loss"
LOG_SOFTMAX = "log_softmax"
SOFTMAX = "softmax"
LOGSUMEXP = "logsumexp"

# plans are tuples (immutable, and made faster than a frozen dataclass); a
# plan without class weights shares this one
NO_CLASS_WEIGHTS = np.empty(0)
NO_CLASS_WEIGHTS.setflags(write=False)


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
    weight: npt.NDArray[np.float64] = NO_CLASS_WEIGHTS  # per class; empty: none
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
