"""Types of the compiled kernels (fastce._kernels)."""

from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

LOG_SOFTMAX: int
SOFTMAX: int
LOGSUMEXP: int
STREAMED_OUT_BYTES: int
KEPT_RESULT_MIN_BYTES: int
KEPT_RESULT_DEFAULT_LIMIT: int
TILE_SIZE: int
# the C functions other extensions cimport (see _kernels.pxd), as capsules
__pyx_capi__: dict[str, object]

_Float = np.float32 | np.float64
# logits of float32, float64, float16 or bfloat16 (which has no NumPy scalar type to name)
_Logits = NDArray[Any]
_Index = np.int8 | np.int16 | np.int32 | np.int64 | np.uint8 | np.uint16 | np.uint32 | np.uint64

def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def thread_cap() -> int: ...
def compile_args() -> str: ...
def set_thread_limit(n: int) -> None: ...
def simd_init(path: str = ...) -> str: ...
def simd_paths() -> list[str]: ...
def simd_isa() -> str: ...
def tile_log(s: NDArray[np.float64]) -> NDArray[np.float64]: ...
def forked_child_serial() -> bool: ...
def block_rows(C: int) -> int: ...
def new_result(
    shape: tuple[int, ...], dtype: DTypeLike, like: NDArray[Any] | None = ...
) -> tuple[NDArray[Any], bool]: ...
def set_kept_result_limit(n_bytes: int) -> None: ...
def kept_result_bytes() -> tuple[int, int]: ...
def cross_entropy_index(
    x: _Logits,
    target: NDArray[_Index],
    weight: NDArray[np.float64],
    weight_sum: float,
    smoothing: float,
    ignore_index: int,
    has_ignore: bool,
    loss_out: NDArray[_Float] | None,
    grad_output: NDArray[np.float64] | None,
    denominator: float,
    grad: NDArray[_Float] | None,
    num_threads: int = ...,
    grad_written_before: bool = ...,
    logit_scale: float = ...,
    softcap: float = ...,
    z_loss: float = ...,
    lse_out: NDArray[_Float] | None = ...,
    z_out: NDArray[np.float64] | None = ...,
) -> float: ...
def cross_entropy_common(
    logits: object,
    target: object,
    mean: bool,
    ignore_index: int,
    num_threads: int = ...,
    want_grad: bool = ...,
    out: object = ...,
) -> Any: ...
def nll_loss_common(log_probs: object, target: object, mean: bool, ignore_index: int) -> Any: ...
def cross_entropy_probs(
    x: _Logits,
    probs: NDArray[_Float],
    weight: NDArray[np.float64],
    smoothing: float,
    loss_out: NDArray[_Float] | None,
    grad_output: NDArray[np.float64] | None,
    denominator: float,
    grad: NDArray[_Float] | None,
    num_threads: int = ...,
    grad_written_before: bool = ...,
    logit_scale: float = ...,
    softcap: float = ...,
    z_loss: float = ...,
    lse_out: NDArray[_Float] | None = ...,
    z_out: NDArray[np.float64] | None = ...,
) -> float: ...
def softmax_family(
    x: _Logits,
    op: int,
    reduced_out: NDArray[_Float] | None,
    out: NDArray[_Float] | None,
    num_threads: int = ...,
    out_written_before: bool = ...,
) -> None: ...
def nll_loss_kernel(
    log_probs: _Logits,
    target: NDArray[_Index],
    weight: NDArray[np.float64],
    ignore_index: int,
    has_ignore: bool,
    loss_out: NDArray[_Float] | None,
    num_threads: int = ...,
) -> float: ...
def check_targets(
    target: NDArray[_Index],
    C: int,
    ignore_index: int,
    has_ignore: bool,
    weight: NDArray[np.float64],
) -> tuple[int, int, float]: ...
def exp_sum_roof(x: NDArray[_Float], num_threads: int = ...) -> float: ...
def binary_cross_entropy_kernel(
    x: _Logits,
    y: NDArray[_Float],
    w: NDArray[_Float] | None,
    pw: NDArray[_Float] | None,
    row_len: int,
    logits: bool,
    g: float,
    grad_output: NDArray[_Float] | None,
    loss_out: NDArray[_Float] | None,
    grad: NDArray[_Float] | None,
    num_threads: int = ...,
    want_loss: bool = ...,
) -> float: ...
def first_outside_unit(x: _Logits, num_threads: int = ...) -> int: ...
