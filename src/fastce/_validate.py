"""Argument checking: every input becomes a kernel-ready view, or a clear error.

Nothing here writes to a caller's array; the public functions run a kernel
only after every check of this module has passed.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any, SupportsIndex, cast

import numpy as np
import numpy.typing as npt

from . import _kernels
from ._plan_types import NO_CLASS_WEIGHTS, LogitTransform

REDUCTIONS = ("none", "mean", "sum")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


def is_float(dtype: np.dtype) -> bool:
    """A floating dtype: NumPy's own, or ``ml_dtypes.bfloat16`` (JAX's), which
    NumPy sees as kind 'V'."""
    kind = dtype.kind
    # a dtype's name is computed in Python: asked only of a void kind
    return kind == "f" or (kind == "V" and dtype.name == "bfloat16")


def is_real(dtype: np.dtype) -> bool:
    """Integers or floats (bfloat16 included): what weights and factors may hold."""
    return dtype.kind in "iu" or is_float(dtype)


def result_dtype(dtype: np.dtype) -> np.dtype[np.float32] | np.dtype[np.float64]:
    """float16 and bfloat16 are computed (and returned) in float32."""
    return _FLOAT64 if dtype.itemsize == 8 else _FLOAT32


def as_array(x: object) -> npt.NDArray[Any]:
    """``x`` as a plain NumPy array, sharing its memory where it can: NumPy
    arrays as they are, subclasses (``np.matrix``, ``np.memmap``, ...) as a
    plain view of the same memory -- so that no subclass can change what an
    operator computes -- objects with ``__array__`` (torch CPU tensors, JAX
    CPU arrays) through it, other DLPack exporters through ``np.from_dlpack``.
    Masked arrays are refused: their mask would be silently ignored."""
    if isinstance(x, np.ndarray):
        if type(x) is np.ndarray:
            return x
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError(
                "masked arrays are not supported: fastce would read the masked values too. "
                "Pass a.filled(value), or leave the masked samples out (a class-index target "
                "can skip them with ignore_index)."
            )
        return x.view(np.ndarray)
    if type(x).__module__.startswith("torch") and hasattr(x, "requires_grad"):
        return torch_tensor_values(x)
    if (
        not hasattr(x, "__array__")
        and not hasattr(x, "__array_interface__")
        and hasattr(x, "__dlpack__")
    ):
        try:
            return np.from_dlpack(x)
        except (TypeError, ValueError, BufferError, RuntimeError):
            pass  # not on the CPU, or a dtype DLPack cannot carry: convert
    return np.asarray(x)


def torch_tensor_values(t: Any) -> npt.NDArray[Any]:
    """A CPU torch tensor's values as a NumPy array, without a copy where
    torch allows one: bfloat16 through ml_dtypes, a negated or conjugated
    view resolved first.  A tensor that requires grad is refused: these
    functions do not track gradients."""
    import torch

    if t.requires_grad:
        raise TypeError(
            "a tensor that requires grad was passed to one of fastce's NumPy functions, which "
            "do not track gradients: use fastce.torch.cross_entropy for autograd, or pass "
            "tensor.detach()"
        )
    if t.device.type != "cpu":
        raise TypeError(
            f"a tensor on {t.device} was passed: fastce computes on the CPU; pass tensor.cpu()"
        )
    if t.is_neg():
        t = t.resolve_neg()
    if t.is_conj():
        t = t.resolve_conj()
    if t.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(
                "a bfloat16 tensor needs ml_dtypes to be read by NumPy (pip install ml_dtypes), "
                "or pass tensor.float()"
            ) from None
        return cast("npt.NDArray[Any]", t.view(torch.int16).numpy().view(ml_dtypes.bfloat16))
    return cast("npt.NDArray[Any]", t.numpy())


def check_float_dtype(dtype: np.dtype[Any], name: str) -> None:
    """Logits are float16, bfloat16, float32 or float64, in any byte order."""
    if not is_float(dtype):
        raise TypeError(
            f"{name} must be a floating array (float16, bfloat16, float32 or float64); got dtype "
            f"{dtype}. Convert it first, e.g. {name}.astype(np.float32)."
        )
    if dtype.itemsize > 8:
        raise TypeError(
            f"{name} has dtype {dtype}, which fastce does not compute in; "
            f"convert it with {name}.astype(np.float64)."
        )


def native_float_array(x: object, name: str) -> npt.NDArray[Any]:
    """``x`` as a float16/bfloat16/32/64 array in native byte order and
    aligned, copied only where the kernels cannot read it as it is.  float16
    and bfloat16 (``ml_dtypes.bfloat16``) stay as they are: the kernels
    convert them to float32 a piece at a time, in the threads that compute."""
    arr = as_array(x)
    check_float_dtype(arr.dtype, name)
    if not arr.dtype.isnative or not arr.flags.aligned:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def class_axis(axis: SupportsIndex | None, ndim: int, name: str = "logits") -> int:
    """PyTorch's rule for ``axis=None``: 1 for batched input, else 0."""
    if ndim == 0:
        raise ValueError(
            f"{name} must have at least one dimension, the class axis; got a 0-d array. "
            f"Pass {name} of shape (C,) or (N, C)."
        )
    if axis is None:
        return 1 if ndim >= 2 else 0
    return normalize_axis(axis, ndim, name)


def normalize_axis(axis: SupportsIndex, ndim: int, name: str) -> int:
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis must be an integer, not {axis!r}")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer or None, not {type(axis).__name__}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis {axis} is out of range for {name} with {ndim} dimension(s); "
            f"use an axis in [{-ndim}, {ndim - 1}]."
        )
    return axis % ndim


def check_axis_option(axis: SupportsIndex | None) -> int | None:
    """An ``axis`` option given before the logits are seen: None or an
    integer (its range is checked against each input)."""
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis must be an integer or None, not {axis!r}")
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer or None, not {type(axis).__name__}") from None


def check_num_threads(num_threads: object) -> int:
    """The kernels' thread request: 0 for the process-wide default."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, (bool, np.bool_)) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be a positive integer or None; got {num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1; got {num_threads}")
    return int(min(num_threads, _kernels.MAX_THREAD_REQUEST))


def check_reduction(reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean' or 'sum'; got {reduction!r}")
    return reduction


def check_label_smoothing(label_smoothing: object) -> float:
    if isinstance(label_smoothing, (bool, np.bool_)):
        raise TypeError("label_smoothing must be a float in [0, 1], not a bool")
    # a number, as torch takes it: not a string that float() would parse
    if not isinstance(label_smoothing, (int, float, np.integer, np.floating)) and not (
        isinstance(label_smoothing, np.ndarray)
        and label_smoothing.ndim == 0
        and label_smoothing.dtype.kind in "iuf"
    ):
        raise TypeError(
            f"label_smoothing must be a float in [0, 1]; got {type(label_smoothing).__name__} "
            f"{label_smoothing!r}"
        )
    value = float(label_smoothing)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing!r}")
    return value


def _real_option(value: object, name: str, requirement: str) -> float:
    """A real number option, as check_label_smoothing takes one."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {requirement}, not a bool")
    if not isinstance(value, (int, float, np.integer, np.floating)) and not (
        isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"
    ):
        raise TypeError(f"{name} must be {requirement}; got {type(value).__name__} {value!r}")
    return float(value)


def check_logit_transform(softcap: object, temperature: object, z_loss: object) -> LogitTransform:
    """The checked ``softcap`` (None or > 0), ``temperature`` (> 0) and
    ``z_loss`` (>= 0), all finite."""
    cap = 0.0
    if softcap is not None:
        cap = _real_option(softcap, "softcap", "None or a positive number")
        if not (0.0 < cap < np.inf):
            raise ValueError(f"softcap must be None or a positive finite number; got {softcap!r}")
    t = _real_option(temperature, "temperature", "a positive number")
    if not (0.0 < t < np.inf) or not 1.0 / t < np.inf:
        raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")
    z = _real_option(z_loss, "z_loss", "a number >= 0")
    if not (0.0 <= z < np.inf):
        raise ValueError(f"z_loss must be a finite number >= 0; got {z_loss!r}")
    return LogitTransform(1.0 / t, cap, z)


def check_flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return bool(value)


def check_ignore_index(ignore_index: SupportsIndex) -> tuple[int, bool]:
    """Returns the value as an int64 and whether any target could equal it."""
    if isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError("ignore_index must be an integer, not a bool")
    try:
        value = operator.index(ignore_index)
    except TypeError:
        raise TypeError(
            f"ignore_index must be an integer; got {type(ignore_index).__name__}"
        ) from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        return 0, False
    return value, True


def check_weight(weight: object, n_classes: int, name: str = "weight") -> npt.NDArray[np.float64]:
    """Class weights as a contiguous float64 ``(C,)`` array (empty for None)."""
    if weight is None:
        return NO_CLASS_WEIGHTS
    w = as_array(weight)
    if not is_real(w.dtype):
        raise TypeError(f"{name} must hold real numbers; got dtype {w.dtype}")
    if w.shape != (n_classes,):
        raise ValueError(
            f"{name} must have shape ({n_classes},), one weight per class; got shape {w.shape}"
        )
    w = np.ascontiguousarray(w, dtype=np.float64)
    return w if w.flags.aligned else w.copy()


def check_weight_option(weight: object) -> npt.NDArray[np.float64] | None:
    """A ``weight`` option given before the logits are seen: None, or one
    real weight per class (the class count is checked against each input),
    as a float64 array."""
    if weight is None:
        return None
    w = as_array(weight)
    if w.ndim != 1:
        raise ValueError(f"weight must be a 1-d array of one weight per class; got shape {w.shape}")
    return check_weight(w, w.shape[0])


def view3(arr: np.ndarray, axis: int) -> np.ndarray:
    """``arr`` as ``(outer, C, inner)`` around ``axis``; a view wherever the
    strides allow one."""
    shape = arr.shape
    return arr.reshape(math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))


def check_out(
    out: object, shape: tuple[int, ...], dtype: np.dtype, name: str = "out"
) -> npt.NDArray[Any]:
    """``out`` as the result's buffer: a plain (or memory-mapped) NumPy array
    of the result's shape and dtype, writable, whose elements do not share
    memory with each other."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(out).__name__}")
    if type(out) is not np.ndarray and type(out) is not np.memmap:
        raise TypeError(
            f"{name} must be a plain NumPy array (np.ndarray, or np.memmap), whose operators "
            f"are NumPy's; got {type(out).__module__}.{type(out).__name__}. Pass "
            f"{name}.view(np.ndarray), or let the function allocate its result."
        )
    if out.dtype != dtype:
        raise TypeError(
            f"{name} must have dtype {dtype} (the result's dtype); got {out.dtype}. "
            f"Allocate it with np.empty({shape}, dtype=np.{dtype})."
        )
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only; pass a writable array")
    if overlaps_itself(out):
        raise ValueError(
            f"{name} has elements that share memory (strides {out.strides}): each element of "
            f"the result needs its own; pass a freshly allocated array"
        )
    return out


def overlaps_itself(a: np.ndarray) -> bool:
    """Whether two elements of ``a`` share a byte."""
    if a.size <= 1:
        return False
    dims = sorted((abs(s), n) for s, n in zip(a.strides, a.shape) if n > 1)
    reach = a.itemsize
    for stride, n in dims:
        if stride < reach:
            break
        reach = stride * (n - 1) + reach
    else:
        return False  # each axis steps over everything the smaller ones reach
    # strides that interleave without overlapping are possible: count the
    # distinct byte offsets of the elements' first bytes, and their spans
    offsets = np.zeros(1, dtype=np.int64)
    for stride, n in dims:
        offsets = (offsets[:, None] + stride * np.arange(n, dtype=np.int64)).ravel()
    offsets.sort()
    return bool(np.any(np.diff(offsets) < a.itemsize))


@dataclass
class TargetPlan:
    """A validated target: class indices ``index2`` of shape ``(outer, inner)``
    or probabilities ``probs3`` of the logits' ``(outer, C, inner)`` shape."""

    shape: tuple[int, ...]
    index2: np.ndarray | None = None
    probs3: np.ndarray | None = None

    @property
    def is_index(self) -> bool:
        return self.index2 is not None


def _shape_hint(
    t_shape: tuple[int, ...], expected: tuple[int, ...], logits_shape: tuple[int, ...], axis: int
) -> str:
    if t_shape == expected + (1,) or (len(t_shape) == len(expected) + 1 and 1 in t_shape):
        return " The target has an extra axis of length 1: squeeze it (target.squeeze(-1))."
    if t_shape == logits_shape:
        return (
            " An integer target shaped like the logits looks one-hot: pass class indices"
            f" (target.argmax(axis={axis})) or probabilities as a float array."
        )
    return ""


def check_target(
    target: object,
    logits: np.ndarray,
    axis: int,
    x3: np.ndarray,
    name: str = "target",
    allow_probs: bool = True,
) -> TargetPlan:
    t = as_array(target)
    expected = logits.shape[:axis] + logits.shape[axis + 1 :]
    kind = "f" if is_float(t.dtype) else t.dtype.kind
    if kind == "b":
        raise TypeError(
            f"{name} must hold class indices (an integer array of shape {expected})"
            + (f" or probabilities (a float array of shape {logits.shape})" if allow_probs else "")
            + "; got a bool array. Convert it with target.astype(np.int64)."
        )
    if kind == "f":
        if not allow_probs:
            raise TypeError(
                f"{name} must hold class indices, an integer array of shape {expected}; "
                f"got dtype {t.dtype}. Convert it with target.astype(np.int64)."
            )
        if t.shape != logits.shape:
            if t.shape == expected:
                raise TypeError(
                    f"{name} has the class-index shape {t.shape} but a float dtype "
                    f"({t.dtype}); class indices must be integers "
                    f"(target.astype(np.int64)), probabilities need the logits' shape "
                    f"{logits.shape}."
                )
            raise ValueError(
                f"probability {name} must have the logits' shape {logits.shape} "
                f"(class axis {axis}); got {t.shape}."
            )
        dtype = result_dtype(x3.dtype)
        probs = t.astype(dtype, copy=False)
        if not probs.dtype.isnative or not probs.flags.aligned:
            probs = probs.astype(dtype)
        return TargetPlan(shape=t.shape, probs3=view3(probs, axis))
    if kind not in "iu":
        raise TypeError(
            f"{name} must hold class indices (an integer array of shape {expected})"
            + (f" or probabilities (a float array of shape {logits.shape})" if allow_probs else "")
            + f"; got dtype {t.dtype}."
        )
    if t.shape != expected:
        raise ValueError(
            f"{name} of class indices must have shape {expected}, the logits' shape "
            f"{logits.shape} without the class axis {axis}; got {t.shape}."
            + _shape_hint(t.shape, expected, logits.shape, axis)
        )
    if t.dtype == np.uint64 and t.size and t.max() > _INT64_MAX:
        # the kernels compare targets as int64
        flat = int(np.argmax(t > _INT64_MAX))
        raise_out_of_range(t, flat, int(t.reshape(-1)[flat]), logits.shape[axis], name)
    if not t.dtype.isnative or not t.flags.aligned:
        t = t.astype(t.dtype.newbyteorder("="))
    outer, _, inner = x3.shape
    return TargetPlan(shape=expected, index2=t.reshape(outer, inner))


def check_segments(segments: object, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """``segments`` as int64 group ids of the target's ``shape``."""
    s = as_array(segments)
    if s.dtype.kind not in "iu":
        raise TypeError(
            f"segments must hold integer group ids (an array of the target's shape {shape}); "
            f"got dtype {s.dtype}."
        )
    if s.shape != shape:
        raise ValueError(
            f"segments must have the target's shape {shape}, one group id per token; got {s.shape}."
        )
    if s.dtype == np.uint64 and s.size and s.max() > _INT64_MAX:
        raise ValueError(f"segments ids must fit in int64; got {int(s.max())}, above {_INT64_MAX}.")
    return s.astype(np.int64, copy=False)


def check_classes_present(
    n_samples: int, n_classes: int, axis: int, shape: tuple[int, ...], name: str, what: str
) -> None:
    """Samples need at least one class: ``name`` (of ``shape``) has
    ``n_samples`` of them along every axis but ``axis``, which ``what``
    computes over."""
    if n_samples > 0 and n_classes == 0:
        raise ValueError(
            f"{name} have {n_samples} sample(s) but zero classes along axis {axis} "
            f"(shape {shape}); {what} needs at least one class."
        )


def check_targets_in_range(
    target: object,
    index2: npt.NDArray[Any],
    n_classes: int,
    ignore_index: int,
    has_ignore: bool,
    weight: npt.NDArray[np.float64],
) -> float:
    """Every class index of ``index2`` (``target``'s ``(outer, inner)`` view)
    is in ``[0, n_classes)`` or ``ignore_index``; returns the weight of the
    targets not ignored (their count without class weights)."""
    bad, value, weight_sum = _kernels.check_targets(
        index2, n_classes, ignore_index, has_ignore, weight
    )
    if bad >= 0:
        raise_out_of_range(np.asarray(target), bad, value, n_classes)
    return weight_sum


def raise_out_of_range(
    t: np.ndarray, flat: int, value: int, n_classes: int, name: str = "target"
) -> None:
    position = np.unravel_index(flat, t.shape) if t.ndim else ()
    where = f" at position {tuple(int(i) for i in position)}" if t.ndim else ""
    raise IndexError(
        f"Received a label value of {value}{where} which is outside the valid range of "
        f"[0, {n_classes}): every class index in {name} must lie in [0, {n_classes}) or "
        "equal ignore_index."
    )


def check_grad_output(
    grad_output: object, reduction: str, loss_shape: tuple[int, ...]
) -> npt.NDArray[np.float64]:
    """``grad_output`` as a float64 scalar (0-d) or an array of the loss's shape."""
    g = as_array(grad_output)
    if g.dtype.kind not in "fiu" or g.dtype.itemsize > 8:
        raise TypeError(f"grad_output must be a real number or array; got dtype {g.dtype}")
    if reduction == "none":
        if g.ndim != 0 and g.shape != loss_shape:
            raise ValueError(
                f"grad_output must be a scalar or have the per-sample loss's shape "
                f"{loss_shape} for reduction='none'; got {g.shape}"
            )
    elif g.ndim != 0:
        raise ValueError(
            f"grad_output must be a scalar for reduction={reduction!r}; got shape {g.shape}"
        )
    g = g.astype(np.float64, copy=False)
    return g if g.flags.aligned else g.copy()


def warn_single_class(n_classes: int) -> None:
    if n_classes == 1:
        warnings.warn(
            "cross-entropy over a single class is always exactly 0; the class axis "
            "probably holds something else (pass axis=..., or use "
            "binary_cross_entropy_with_logits for one logit per sample)",
            RuntimeWarning,
            stacklevel=4,
        )
