"""Types of the compiled metrics kernel (fastce._metrics)."""

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

TILE_SIZE: int
LOSS_ROW: int
WEIGHT_ROW: int
CONFIDENCE_ROW: int
ENTROPY_ROW: int
LSE_SQUARED_ROW: int
LOSS_SQUARED_ROW: int
LOSS_WEIGHT_ROW: int
WEIGHT_SQUARED_ROW: int
WEIGHTED_ENTROPY_ROW: int
BRIER_ROW: int
KL_ROW: int
REF_LOSS_ROW: int
REF_LOSS_WEIGHT_ROW: int
DIFF_SQUARED_ROW: int
DP_ROW: int
DP_SQUARED_ROW: int
AGREE_ROW: int
FIRST_BIN_ROW: int

class Counts(NamedTuple):
    samples: int
    bin_samples: NDArray[np.int64]
    bin_correct: NDArray[np.int64]
    rank_samples: NDArray[np.int64]

_Float = np.float32 | np.float64
# logits of float32, float64, float16 or bfloat16 (which has no NumPy scalar type to name)
_Logits = NDArray[Any]
_Index = np.int8 | np.int16 | np.int32 | np.int64 | np.uint8 | np.uint16 | np.uint32 | np.uint64

def openmp_enabled() -> bool: ...
def compile_args() -> str: ...
def simd_isa() -> str: ...
def evaluate_index(
    x: _Logits,
    target: NDArray[_Index],
    weight: NDArray[np.float64],
    weight_sum: float,
    smoothing: float,
    ignore_index: int,
    has_ignore: bool,
    bins: int,
    ranks: int,
    loss_out: NDArray[_Float] | None,
    pred_out: NDArray[np.int64] | None,
    rank_out: NDArray[np.int64] | None,
    conf_out: NDArray[_Float] | None,
    entropy_out: NDArray[_Float] | None,
    lse_out: NDArray[_Float] | None,
    logprob_out: NDArray[_Float] | None,
    brier_out: NDArray[_Float] | None,
    num_threads: int = ...,
    logit_scale: float = ...,
    softcap: float = ...,
    reference: NDArray[_Float] | None = ...,
    kl_out: NDArray[_Float] | None = ...,
) -> tuple[NDArray[np.float64], Counts]: ...
def group_fold(
    ids: NDArray[np.int64],
    segments: NDArray[np.int64],
    rank: NDArray[np.int64],
    hit_below: NDArray[np.int64],
    loss: NDArray[_Float],
    weight: NDArray[np.float64],
    logprob: NDArray[_Float],
    count: NDArray[np.int64],
    top1: NDArray[np.int64],
    correct: NDArray[np.int64],
    sums: NDArray[np.float64],
) -> None: ...
def column_sums(values: NDArray[np.float64], sums: NDArray[np.float64]) -> None: ...
def equal_mass_bins(
    confidence: NDArray[np.float64], correct: NDArray[np.uint8], bins: int
) -> tuple[
    float,
    NDArray[np.int64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
]: ...
