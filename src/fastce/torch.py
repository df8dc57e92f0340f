"""A drop-in for PyTorch's cross-entropy on CPU tensors.

Swap ::

    loss = torch.nn.functional.cross_entropy(logits, target)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

for ::

    loss = fastce.torch.cross_entropy(logits, target)
    criterion = fastce.torch.CrossEntropyLoss(label_smoothing=0.1)

The signatures are torch's, and so are the results, gradients and errors.
On a CPU tensor the forward pass computes the loss and its gradient in one
fused call, reading the tensor's memory in place (no copy for any strides
NumPy can describe), and the backward pass only scales that gradient.
When no gradient is needed (``torch.no_grad()``, or logits that do not
require one) only the loss is computed.

``torch.compile`` and ``torch.func``: fastce's kernels are registered as
the operator ``torch.ops.fastce.cross_entropy`` (with its shape function,
gradient formula and batching rule), which a compiled graph calls without a
graph break and which ``torch.func.grad``, ``vjp``, ``jacrev`` and ``vmap``
(per-sample gradients) go through; ``torch.ops.fastce.linear_cross_entropy``
likewise for compiled graphs.

Under CPU autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``, or
float16), where torch casts half-precision logits to float32 and returns a
float32 loss, fastce returns the same float32 loss, computed from the
half-precision logits in place (no float32 copy of them); their gradient
has their dtype, as torch's has.

Every call fastce cannot serve goes to ``torch.nn.functional.cross_entropy``
(``linear_cross_entropy`` likewise), so its result and its errors are
torch's own; the logger ``"fastce.torch"`` records each such call and why at
DEBUG level (``logging.getLogger("fastce.torch").setLevel(logging.DEBUG)``
with a handler, or ``logging.basicConfig(level=logging.DEBUG)``), except the
calls ``torch.compile`` traces, which it does not run as Python:

- tensors off the CPU (CUDA, MPS, meta), sparse, quantized or nested ones,
  and tensor subclasses with ``__torch_function__``;
- ``torch.func`` transforms that differentiate fastce's gradient (nested
  ``grad``/``jacrev``, ``hessian``) or use forward mode (``jvp``,
  ``jacfwd``): fastce's gradient has no derivative of its own;
- logits of a dtype other than float32, float64, float16 and bfloat16
  (bfloat16 only where ``ml_dtypes`` is installed, which gives NumPy that
  dtype), class indices of a dtype torch rejects (it takes int64 and uint8),
  probabilities or a weight of another dtype than the logits (torch
  promotes or rejects them);
- a gradient wanted with respect to the target (soft targets that require
  grad) or the weight;
- the deprecated ``size_average=`` and ``reduce=`` arguments;
- anything fastce's own checks reject (an out-of-range class, mismatched
  shapes, a bad option): torch is called with the same arguments and raises
  its usual ``IndexError``, ``ValueError`` or ``RuntimeError``.

Differences from torch: float16 and bfloat16 logits are read in place and
computed in float32, block by block, and only the loss (outside autocast)
and the gradient are rounded (to nearest even) to the logits' dtype at the
end, where torch rounds intermediate steps too: fastce's results are
typically closer to the exact values than torch's, and not always torch's
bits.  A single class
gives fastce's ``RuntimeWarning``; the kernels use at most
``torch.get_num_threads()`` threads (and at most ``fastce.get_num_threads()``).
A second derivative is not supported: differentiating the gradient again
(after ``create_graph=True``) raises a ``RuntimeError`` saying so; use
torch's function there.

``linear_cross_entropy`` and ``LinearCrossEntropyLoss`` are the same kind of
drop-in for ``torch.nn.functional.linear_cross_entropy`` and
``torch.nn.LinearCrossEntropyLoss``: the loss of a linear head without the
logits, computed by :func:`fastce.linear_cross_entropy` for 1-d and 2-d
float32 and float64 CPU input (registered as the operator
``torch.ops.fastce.linear_cross_entropy``, which compiled graphs call), and
by torch for any other call, and under ``torch.func`` transforms.

This module imports torch: import it only where torch is installed.
"""

from __future__ import annotations

import logging
from typing import Any, cast, overload

import numpy as np
from numpy.typing import ArrayLike

try:
    import torch
except ImportError as err:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "fastce.torch is the PyTorch drop-in and needs torch: install it (the CPU build is "
        "enough), or use fastce's NumPy functions"
    ) from err

from . import functional as _functional
from . import linear as _linear
from ._config import get_num_threads as _fastce_threads
from ._plan_types import NO_TRANSFORM, LogitTransform
from ._validate import check_flag, check_logit_transform

# NumPy has no bfloat16 of its own: ml_dtypes gives it the one a bfloat16
# tensor's memory is viewed as; without it such tensors go to torch
_NUMPY_BFLOAT16: np.dtype | None
try:
    import ml_dtypes

    _NUMPY_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    _NUMPY_BFLOAT16 = None

__all__ = [
    "cross_entropy",
    "CrossEntropyLoss",
    "linear_cross_entropy",
    "LinearCrossEntropyLoss",
    "causal_lm_loss",
    "trainer_causal_lm_loss",
]

_torch_cross_entropy = torch.nn.functional.cross_entropy

_LOGIT_DTYPES = (torch.float32, torch.float64, torch.float16) + (
    (torch.bfloat16,) if _NUMPY_BFLOAT16 is not None else ()
)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int64, torch.uint8)  # the class-index dtypes torch accepts
_REDUCTIONS = ("none", "mean", "sum")

# why a call went to torch, at DEBUG level (see the module documentation)
_log = logging.getLogger("fastce.torch")


def _to_torch(function: str, reason: str) -> None:
    """Records that ``function``'s call is torch's, and why (not while
    torch.compile traces it: a logger call would break its graph)."""
    if not torch.compiler.is_compiling():
        _log.debug("%s: computed by torch: %s", function, reason)


def _declined(function: str, err: _Declined) -> None:
    _to_torch(function, f"fastce's checks rejected the call ({err.__cause__})")


class _Declined(Exception):
    """fastce's checks rejected the call: torch answers it instead."""


def _transforms_active() -> bool:
    check = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(check()) if check is not None else False


def _transform_reason() -> str | None:
    """Why the active torch.func transforms need torch's function, if they
    do: fastce's gradient has no derivative of its own and no forward mode."""
    if torch.compiler.is_compiling() or not _transforms_active():
        return None
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        kinds = [interpreter.key() for interpreter in retrieve_all_functorch_interpreters()]
    except (ImportError, AttributeError):  # a torch without these (private) helpers
        return "a torch.func transform is active"
    if TransformType.Jvp in kinds:
        return "a torch.func forward-mode transform (jvp, jacfwd, hessian) is active"
    if kinds.count(TransformType.Grad) > 1:
        return "nested torch.func gradient transforms (a second derivative) are active"
    return None


def _unplain(t: torch.Tensor) -> str | None:
    """What keeps a tensor from being read as NumPy memory, if anything."""
    if t.device.type != "cpu":
        return f"a tensor on {t.device}"
    if t.layout != torch.strided:
        return f"a {t.layout} tensor"
    if t.is_quantized:
        return "a quantized tensor"
    if t.is_nested:
        return "a nested tensor"
    # a traced graph hands the operator the negation's result
    if not torch.compiler.is_compiling() and t.is_neg():
        return "a lazily negated tensor"
    return None


def _common_reason(tensors: tuple[object, ...]) -> str | None:
    """Why fastce serves none of a call's ``tensors``, if it does not."""
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return "an argument that is not a tensor"
    if torch.overrides.has_torch_function(tensors):
        return "a tensor subclass with __torch_function__"
    reason = _transform_reason()
    if reason is not None:
        return reason
    for t in tensors:
        reason = _unplain(cast(torch.Tensor, t))
        if reason is not None:
            return reason
    return None


def _why_not_served(
    input: object,
    target: object,
    weight: object,
    size_average: bool | None,
    reduce: bool | None,
    reduction: str,
    grad_enabled: bool,
) -> str | None:
    """Why torch computes this call, or None when fastce does."""
    if size_average is not None or reduce is not None:
        return "the deprecated size_average= or reduce= argument"
    tensors = (input, target) if weight is None else (input, target, weight)
    reason = _common_reason(tensors)
    if reason is not None:
        return reason
    x, t = cast(torch.Tensor, input), cast(torch.Tensor, target)
    w = cast("torch.Tensor | None", weight)
    if x.dtype not in _LOGIT_DTYPES:
        if x.dtype == torch.bfloat16:
            return "bfloat16 logits without ml_dtypes installed"
        return f"logits of dtype {x.dtype}"
    if t.dtype not in _INDEX_DTYPES and t.dtype != x.dtype:
        # torch promotes mixed probabilities (float32 logits, float64 target)
        return f"a target of dtype {t.dtype} for {x.dtype} logits"
    if w is not None and w.dtype != x.dtype:
        return f"a weight of dtype {w.dtype} for {x.dtype} logits"
    if grad_enabled and t.requires_grad:
        return "a target that requires a gradient"
    if grad_enabled and w is not None and w.requires_grad:
        return "a weight that requires a gradient"
    if reduction not in _REDUCTIONS:
        return f"reduction={reduction!r}"
    return None


@overload
def _numpy(t: torch.Tensor) -> np.ndarray: ...
@overload
def _numpy(t: None) -> None: ...
@overload
def _numpy(t: torch.Tensor | None) -> np.ndarray | None: ...
def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """The tensor's memory as a NumPy array, without a copy."""
    if t is None:
        return None
    if t.dtype == torch.bfloat16 and _NUMPY_BFLOAT16 is not None:
        # torch will not hand NumPy a bfloat16 array: the same bytes, with the
        # same strides, as int16 and back as ml_dtypes' bfloat16
        return t.detach().view(torch.int16).numpy().view(_NUMPY_BFLOAT16)
    return t.detach().numpy()


def _loss_tensor(loss: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    result = torch.from_numpy(np.asarray(loss))
    return result if result.dtype == dtype else result.to(dtype)


def _thread_limit() -> int:
    return max(1, min(torch.get_num_threads(), _fastce_threads()))


def _class_dim(input: torch.Tensor) -> int:
    return 1 if input.dim() >= 2 else 0


def _loss_dtype(input: torch.Tensor) -> torch.dtype:
    """The dtype of the loss torch returns: float32 for half-precision logits
    under CPU autocast (cross-entropy is on autocast's float32 list), else the
    logits' dtype."""
    if input.dtype in _HALF_DTYPES and torch.is_autocast_enabled("cpu"):
        return torch.float32
    return input.dtype


# (loss, z_loss, lse, grad): the last three None where the call does not ask for them
_Outputs = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None", "torch.Tensor | None"]


def _kernel_outputs(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    transform: dict[str, Any] | None,
    want_grad: bool,
    loss_dtype: torch.dtype,
) -> _Outputs:
    """The loss from fastce's kernels, with the z-loss part and the per-sample
    log-sum-exps for a transformed call (``transform``: its softcap,
    temperature and z_loss) and the gradient (in the logits' dtype) when
    ``want_grad``; _Declined where fastce's checks reject the call."""
    # either function, called alike: typed as what both accept
    call: Any = _functional.cross_entropy_with_grad if want_grad else _functional.cross_entropy
    extras: dict[str, Any] = (
        {} if transform is None else dict(return_z_loss=True, return_lse=True, **transform)
    )
    if want_grad:
        extras["grad_output"] = 1.0
    try:
        # a gradient in memory the call allocates (laid out as the logits),
        # which the kernels know to be new
        results = call(
            _numpy(input),
            _numpy(target),
            _numpy(weight),
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            num_threads=_thread_limit(),
            **extras,
        )
    except (TypeError, ValueError, IndexError) as err:
        raise _Declined from err
    if not isinstance(results, tuple):
        results = (results,)
    grad = None
    if want_grad:
        grad = torch.from_numpy(results[1]).to(input.dtype)
        results = results[:1] + results[2:]
    values = [_loss_tensor(r, loss_dtype) for r in results]
    if transform is None:
        return values[0], None, None, grad
    return values[0], values[1], values[2], grad


def _torch_answer(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    transform: dict[str, Any] | None,
    want_grad: bool,
    loss_dtype: torch.dtype,
    declined: _Declined,
) -> _Outputs:
    """torch's answer, inside the operator, to a call fastce's checks reject:
    its own error, or where it accepts the call its loss; a gradient it cannot
    give there (an operator runs below autograd), and says so."""
    with torch.no_grad():
        if transform is None:
            loss = _torch_cross_entropy(
                input,
                target,
                weight,
                ignore_index=ignore_index,
                reduction=reduction,
                label_smoothing=label_smoothing,
            )
            z, lse = None, None
        else:
            checked = check_logit_transform(**transform)
            loss, z, lse = _torch_transformed(
                input, target, weight, ignore_index, reduction, label_smoothing, checked
            )
    if want_grad:
        raise RuntimeError(
            "fastce.torch.cross_entropy cannot differentiate this call inside a compiled graph "
            f"or a torch.func transform ({declined.__cause__}): use "
            "torch.nn.functional.cross_entropy there"
        ) from declined
    return (
        loss.to(loss_dtype),
        None if z is None else z.to(loss_dtype),
        None if lse is None else lse.to(loss_dtype),
        None,
    )


class _EagerCrossEntropy(torch.autograd.Function):
    """The loss and its gradient from one fused pass (and for a transformed
    call the z-loss part and the log-sum-exps, without a gradient); backward
    scales the gradient.  torch's older form of Function: the newer one
    (setup_context) costs about 20 us more per call."""

    @staticmethod
    def forward(
        ctx: Any,  # torch's FunctionCtx, given the attributes backward reads
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        transform: dict[str, Any] | None,
        loss_dtype: torch.dtype,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        loss, z, lse, grad = _kernel_outputs(
            input,
            target,
            weight,
            ignore_index,
            reduction,
            label_smoothing,
            transform,
            True,
            loss_dtype,
        )
        ctx.save_for_backward(grad)
        ctx.reduction = reduction
        ctx.class_dim = _class_dim(input)
        if z is None or lse is None:
            return loss
        ctx.mark_non_differentiable(z, lse)
        return loss, z, lse

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor, *unused: torch.Tensor) -> tuple[Any, ...]:
        grad = _scaled_grad(ctx.saved_tensors[0], grad_output, ctx.reduction, ctx.class_dim, True)
        if torch.is_grad_enabled():
            grad = _no_second_derivative(grad)
        return (grad,) + (None,) * 7


# ---- the registered operator: what torch.compile graphs and torch.func see --


@torch.library.custom_op("fastce::cross_entropy", mutates_args=())
def _cross_entropy_op(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    softcap: float | None,
    temperature: float,
    z_loss: float,
    transformed: bool,
    want_grad: bool,
    float32_loss: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, z_loss, lse, grad)`` of a cross-entropy call, as
    :func:`cross_entropy` computes it; ``z_loss`` and ``lse`` are empty unless
    ``transformed``, ``grad`` unless ``want_grad``.  A call fastce's checks
    reject gets torch's error, or its loss (see _torch_answer)."""
    transform = (
        dict(softcap=softcap, temperature=temperature, z_loss=z_loss) if transformed else None
    )
    # a lazily negated tensor has no memory NumPy can read (a no-op otherwise)
    input, target = input.resolve_neg(), target.resolve_neg()
    weight = None if weight is None else weight.resolve_neg()
    args = (input, target, weight, ignore_index, reduction, label_smoothing, transform, want_grad)
    loss_dtype = torch.float32 if float32_loss else input.dtype
    try:
        outputs = _kernel_outputs(*args, loss_dtype)
    except _Declined as err:
        outputs = _torch_answer(*args, loss_dtype, err)
    loss, z, lse, grad = outputs
    if grad is not None:
        grad = _laid_out_like(grad, input)
    # outputs must not alias: an empty tensor each
    return (
        loss,
        loss.new_empty(0) if z is None else z,
        loss.new_empty(0) if lse is None else lse,
        input.new_empty(0) if grad is None else grad,
    )


def _fake_grad(input: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(input)


def _laid_out_like(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``result`` in the layout the fake functions give a tensor shaped as
    ``like`` (``empty_like``'s), the one a graph was traced with: itself
    where it has it (as the kernels' results do for dense input), else a
    copy.  The layout is read off a meta tensor, which allocates nothing."""
    if result.stride() == torch.empty_like(like, device="meta").stride():
        return result
    return torch.empty_like(like).copy_(result)


@_cross_entropy_op.register_fake
def _cross_entropy_fake(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    softcap: float | None,
    temperature: float,
    z_loss: float,
    transformed: bool,
    want_grad: bool,
    float32_loss: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = torch.float32 if float32_loss else input.dtype
    class_dim = _class_dim(input)
    samples = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    loss_shape = samples if reduction == "none" else torch.Size()
    return (
        input.new_empty(loss_shape, dtype=dtype),
        input.new_empty(loss_shape if transformed else (0,), dtype=dtype),
        input.new_empty(samples if transformed else (0,), dtype=dtype),
        _fake_grad(input) if want_grad else input.new_empty(0),
    )


def _cross_entropy_vmap(
    info: Any, in_dims: tuple[int | None, ...], *args: Any
) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
    """The operator under ``torch.func.vmap``: one call per batch entry."""

    def entry(i: int) -> tuple[torch.Tensor, ...]:
        picked = [a if d is None else a.select(d, i) for a, d in zip(args, in_dims)]
        return tuple(_cross_entropy_op(*picked))

    entries = [entry(i) for i in range(info.batch_size)]
    return tuple(torch.stack(column) for column in zip(*entries)), (0, 0, 0, 0)


torch.library.register_vmap(_cross_entropy_op, _cross_entropy_vmap)


def _operator_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    ctx.save_for_backward(output[3])
    ctx.mark_non_differentiable(*output[1:])
    ctx.reduction = inputs[4]
    ctx.class_dim = _class_dim(inputs[0])
    ctx.with_grad = inputs[10]


def _operator_backward(
    ctx: Any, grad_output: torch.Tensor, *unused: torch.Tensor
) -> tuple[Any, ...]:
    if not ctx.with_grad:
        raise RuntimeError(
            "fastce.cross_entropy was called with want_grad=False: it has no gradient to give"
        )
    # no second derivative can reach here: fastce.torch's checks send nested
    # gradient transforms to torch, and a compiled graph has none
    grad = _scaled_grad(ctx.saved_tensors[0], grad_output, ctx.reduction, ctx.class_dim, False)
    return (grad,) + (None,) * 11


_cross_entropy_op.register_autograd(_operator_backward, setup_context=_operator_setup)


class _TransformableCrossEntropy(torch.autograd.Function):
    """The operator with its gradient, in the form of Function that torch.func
    transforms take (the operator's own autograd formula serves compiled
    graphs and eager autograd, not torch.func)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args: Any) -> tuple[torch.Tensor, ...]:
        return tuple(_cross_entropy_op(*args))

    setup_context = staticmethod(_operator_setup)
    backward = staticmethod(_operator_backward)


def _scaled_grad(
    grad: torch.Tensor, grad_output: torch.Tensor, reduction: str, class_dim: int, eager: bool
) -> torch.Tensor:
    """The gradient the forward pass saved, times ``grad_output`` (in eager
    mode, not for the exact 1 that ``loss.backward()`` passes: a graph being
    traced cannot read the value)."""
    with torch.no_grad():
        if reduction == "none":
            return (grad * grad_output.unsqueeze(class_dim)).to(grad.dtype)
        if eager and grad_output.item() == 1.0:
            return grad
        return (grad * grad_output).to(grad.dtype)


def _served(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    transform: dict[str, Any] | None,
    grad_enabled: bool,
    loss_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(loss, z_loss, lse)`` from fastce (the last two for a transformed
    call, all three in ``loss_dtype``), differentiable where the logits need
    a gradient: through the registered operator where torch.compile traces
    or a torch.func transform runs, else directly; _Declined where fastce's
    checks reject an eager call."""
    want_grad = grad_enabled and input.requires_grad
    if torch.compiler.is_compiling() or _transforms_active():
        options = transform or dict(softcap=None, temperature=1.0, z_loss=0.0)
        args = (
            input, target, weight, ignore_index, reduction, label_smoothing,
            options["softcap"], options["temperature"], options["z_loss"], transform is not None,
        )  # fmt: skip
        float32_loss = loss_dtype == torch.float32 and input.dtype != torch.float32
        if want_grad and not torch.compiler.is_compiling():
            # torch.autograd.Function.apply is untyped; it returns forward's tensors
            outputs = _TransformableCrossEntropy.apply(  # type: ignore[no-untyped-call]
                *args, True, float32_loss
            )
        else:
            outputs = _cross_entropy_op(*args, want_grad, float32_loss)
        if transform is None:
            return outputs[0], None, None
        return outputs[0], outputs[1], outputs[2]
    if want_grad:
        eager = _EagerCrossEntropy.apply(  # type: ignore[no-untyped-call]
            input, target, weight, ignore_index, reduction, label_smoothing, transform, loss_dtype
        )
        return (eager, None, None) if transform is None else tuple(eager)
    loss, z, lse, _ = _kernel_outputs(
        input,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        transform,
        False,
        loss_dtype,
    )
    return loss, z, lse


_SECOND_DERIVATIVE = (
    "fastce.torch.cross_entropy has no second derivative: where its gradient is "
    "differentiated again (create_graph=True), use torch.nn.functional.cross_entropy"
)


def _no_second_derivative(grad: torch.Tensor) -> torch.Tensor:
    """``grad``, made to raise a clear error if anything differentiates it."""
    delayed = getattr(torch._C._functions, "DelayedError", None)
    if delayed is None:
        raise RuntimeError(_SECOND_DERIVATIVE)
    grad = grad.detach().requires_grad_(True)
    # a private torch class, found at run time: untyped
    return cast(torch.Tensor, delayed(_SECOND_DERIVATIVE.encode(), 1)(grad))


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    return_lse: bool = False,
) -> Any:
    """``torch.nn.functional.cross_entropy``, computed by fastce on CPU tensors.

    Same signature, results, gradients and errors as torch's function; see
    the module's documentation for the calls torch computes itself.

    The keyword-only ``softcap``, ``temperature``, ``z_loss``,
    ``return_z_loss`` and ``return_lse`` are :func:`fastce.cross_entropy`'s:
    the loss of ``softcap * tanh(input / softcap) / temperature`` plus the
    z-loss, returned with the z-loss part and the per-sample log-sum-exps
    (both detached) when asked for.  Calls fastce does not serve compute the
    same expression with torch's operations (differentiable throughout).

    Examples
    --------
    >>> import torch, fastce.torch
    >>> logits = torch.tensor([[1.0, 2.0, 0.1]], requires_grad=True)
    >>> loss = fastce.torch.cross_entropy(logits, torch.tensor([1]))
    >>> round(loss.item(), 5)
    0.41703
    >>> loss.backward(); logits.grad
    tensor([[ 0.2424, -0.3410,  0.0986]])
    """
    grad_enabled = torch.is_grad_enabled()
    transform: dict[str, Any] | None = None
    flags = (False, False)
    if (
        softcap is not None
        or temperature != 1.0
        or z_loss != 0.0
        or return_z_loss is not False
        or return_lse is not False
    ):
        checked = check_logit_transform(softcap, temperature, z_loss)
        flags = check_flag(return_z_loss, "return_z_loss"), check_flag(return_lse, "return_lse")
        if checked != NO_TRANSFORM or any(flags):
            transform = dict(softcap=softcap, temperature=temperature, z_loss=z_loss)
    reason = _why_not_served(input, target, weight, size_average, reduce, reduction, grad_enabled)
    outputs = None
    if reason is None:
        try:
            outputs = _served(
                input,
                target,
                weight,
                ignore_index,
                reduction,
                label_smoothing,
                transform,
                grad_enabled,
                _loss_dtype(input),
            )
        except _Declined as err:
            _declined("cross_entropy", err)  # torch answers, or raises its own error, below
    else:
        _to_torch("cross_entropy", reason)
    if transform is None:
        if outputs is not None:
            return outputs[0]
        return _torch_cross_entropy(
            input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing
        )
    if outputs is None:
        outputs = _torch_transformed(
            input, target, weight, ignore_index, reduction, label_smoothing, checked
        )
    picked = (outputs[0],) + tuple(o for o, f in zip(outputs[1:], flags) if f)
    return picked if len(picked) > 1 else picked[0]


def _torch_transformed(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    transform: LogitTransform,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, z_loss, lse)`` of a transformed call in torch's operations,
    counted as fastce counts it (see :func:`fastce.cross_entropy`)."""
    y = input
    if transform.softcap:
        y = transform.softcap * torch.tanh(y / transform.softcap)
    if transform.logit_scale != 1.0:
        y = y * transform.logit_scale
    class_dim = 1 if y.dim() >= 2 else 0
    ce = _torch_cross_entropy(
        y,
        target,
        weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    lse = torch.logsumexp(y, dim=class_dim)
    if target.dtype.is_floating_point:
        sample_weight = torch.ones_like(lse)
        denominator = torch.tensor(float(lse.numel()), dtype=lse.dtype)
    else:
        counted = target != ignore_index
        safe = torch.where(counted, target, torch.zeros_like(target))
        w = torch.ones_like(lse) if weight is None else weight[safe]
        sample_weight = torch.where(counted, w, torch.zeros_like(w))
        denominator = sample_weight.sum()
    z_terms = torch.where(
        sample_weight != 0, transform.z_loss * sample_weight * lse * lse, torch.zeros_like(lse)
    )
    z_part = z_terms.detach()
    total = ce + z_terms
    if reduction == "mean":
        return total.sum() / denominator, z_part.sum() / denominator, lse.detach()
    if reduction == "sum":
        return total.sum(), z_part.sum(), lse.detach()
    return total, z_part, lse.detach()


# ---- causal language models ------------------------------------------------


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The causal-LM loss of Hugging Face transformers (``ForCausalLMLoss``),
    computed by fastce from the logits in place.

    Position ``t`` of ``logits`` (``(..., T, V)``) predicts label ``t + 1``:
    the labels are shifted by padding (the last position gets
    ``ignore_index``), never by slicing the logits, so the logits are read
    where they are, with no copy, no reshape and no float32 upcast of
    half-precision logits.  ``shift_labels``, when given, are the already
    shifted labels.  The loss is the mean over the labels that are not
    ``ignore_index``, or with ``num_items_in_batch`` (gradient accumulation)
    their sum divided by it.  It is float32, as transformers' is (it upcasts
    the logits), and the gradient has the logits' dtype.  Other keyword
    arguments (which transformers' models pass along) are ignored.

    Use it as a model's loss, or as a ``Trainer``'s (see
    :func:`trainer_causal_lm_loss`)::

        model.loss_function = fastce.torch.causal_lm_loss

    Examples
    --------
    >>> import torch, fastce.torch
    >>> logits = torch.randn(2, 5, 11)
    >>> labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    >>> loss = fastce.torch.causal_lm_loss(logits, labels)
    >>> want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11),
    ...                                          labels[:, 1:].reshape(-1))
    >>> torch.allclose(loss, want)
    True
    """
    if vocab_size is not None and logits.shape[-1] != vocab_size:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not end in vocab_size={vocab_size}"
        )
    if shift_labels is None:
        padded = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = padded[..., 1:]
    reduction = "mean" if num_items_in_batch is None else "sum"
    # the class axis where torch's rule looks for it (axis 1): a view, not a copy
    classes_at_1 = logits.movedim(-1, 1) if logits.dim() > 2 else logits
    loss = None
    if shift_labels.shape != classes_at_1.shape[:1] + classes_at_1.shape[2:]:
        reason: str | None = (
            f"labels of shape {tuple(shift_labels.shape)} for logits of shape {tuple(logits.shape)}"
        )
    else:
        grad_enabled = torch.is_grad_enabled()
        reason = _why_not_served(
            classes_at_1, shift_labels, None, None, None, reduction, grad_enabled
        )
    if reason is None:
        try:
            loss = _served(
                classes_at_1, shift_labels, None, ignore_index, reduction, 0.0, None,
                grad_enabled, torch.float32,
            )[0]  # fmt: skip
        except _Declined as err:
            _declined("causal_lm_loss", err)
    else:
        _to_torch("causal_lm_loss", reason)
    if loss is None:  # transformers' own computation, with its errors
        loss = _torch_cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=ignore_index,
            reduction=reduction,
        )
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def trainer_causal_lm_loss(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """:func:`causal_lm_loss` in the form of a transformers ``Trainer``'s
    ``compute_loss_func``::

        Trainer(..., compute_loss_func=fastce.torch.trainer_causal_lm_loss)
    """
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    return causal_lm_loss(logits, labels, num_items_in_batch=num_items_in_batch)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss``, computed by fastce on CPU tensors.

    A subclass of torch's module with the same constructor, attributes,
    ``state_dict`` and ``repr``; only ``forward`` differs, calling
    :func:`cross_entropy`.

    Examples
    --------
    >>> import torch, fastce.torch
    >>> criterion = fastce.torch.CrossEntropyLoss(label_smoothing=0.1)
    >>> round(criterion(torch.tensor([[1.0, 2.0, 0.1]]), torch.tensor([1])).item(), 6)
    0.513697
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )
        return loss


# ---- linear heads ----------------------------------------------------------

_torch_linear_cross_entropy = getattr(torch.nn.functional, "linear_cross_entropy", None)


def _why_linear_not_served(
    input: object,
    linear_weight: object,
    target: object,
    linear_bias: object,
    weight: object,
    reduction: str,
    grad_enabled: bool,
) -> str | None:
    """Why torch computes this linear cross-entropy, or None when fastce does."""
    # the operator has no batching rule, and its gradient no derivative
    if not torch.compiler.is_compiling() and _transforms_active():
        return "a torch.func transform is active over a linear cross-entropy"
    tensors = [input, linear_weight, target] + [t for t in (linear_bias, weight) if t is not None]
    reason = _common_reason(tuple(tensors))
    if reason is not None:
        return reason
    floats = cast("list[torch.Tensor]", [input, linear_weight, linear_bias, weight])
    x, t = cast(torch.Tensor, input), cast(torch.Tensor, target)
    # torch takes classes from axis 1 of the linear output: the last axis
    # only for 1-d and 2-d input, where fastce's rule agrees
    if x.dim() not in (1, 2):
        return f"{x.dim()}-d hidden states"
    if x.dtype not in (torch.float32, torch.float64):
        return f"hidden states of dtype {x.dtype}"
    if any(a is not None and a.dtype != x.dtype for a in floats):
        return "operands of different dtypes"
    if t.dtype not in _INDEX_DTYPES and t.dtype != x.dtype:
        return f"a target of dtype {t.dtype} for {x.dtype} hidden states"
    if grad_enabled and t.requires_grad:
        return "a target that requires a gradient"
    if grad_enabled and weight is not None and floats[3].requires_grad:
        return "a weight that requires a gradient"
    if reduction not in _REDUCTIONS:
        return f"reduction={reduction!r}"
    return None


# (loss, grad_input, grad_linear_weight, grad_linear_bias): the gradients None
# where the call does not ask for them (the bias's where there is none)
_LinearOutputs = tuple[
    torch.Tensor, "torch.Tensor | None", "torch.Tensor | None", "torch.Tensor | None"
]


def _linear_kernel_outputs(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    transform: dict[str, Any],
    want_grad: bool,
    grad_output: torch.Tensor | None = None,
) -> _LinearOutputs:
    """The loss of a linear head from fastce's blocked pass, with every
    gradient when ``want_grad`` (for ``grad_output``, the incoming per-sample
    gradient of ``reduction="none"``, when given); _Declined where fastce's
    checks reject the call."""
    args = (_numpy(input), _numpy(linear_weight), _numpy(target), _numpy(linear_bias))
    options: dict[str, Any] = dict(
        weight=_numpy(weight),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        num_threads=_thread_limit(),
        **transform,
    )
    try:
        if not want_grad:
            loss = _linear.linear_cross_entropy(*args, **options)
            return _loss_tensor(loss, input.dtype), None, None, None
        if grad_output is not None:
            options["grad_output"] = grad_output.detach().numpy()
        loss, gh, gw, gb = _linear.linear_cross_entropy_with_grad(*args, **options)
    except (TypeError, ValueError, IndexError) as err:
        raise _Declined from err
    return (
        _loss_tensor(loss, input.dtype),
        torch.from_numpy(gh),
        torch.from_numpy(gw),
        None if linear_bias is None else torch.from_numpy(gb),
    )


class _LinearCrossEntropyFunction(torch.autograd.Function):
    """The loss and every gradient from one blocked pass; backward scales the
    gradients (``"mean"``, ``"sum"``), or for ``"none"`` computes them again
    with the incoming per-sample gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        linear_weight: torch.Tensor,
        linear_bias: torch.Tensor | None,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        transform: dict[str, Any],
    ) -> torch.Tensor:
        args = (input, linear_weight, linear_bias, target, weight, ignore_index, reduction)
        ctx.call = args[5:] + (label_smoothing, transform)
        if reduction == "none":
            # the inputs are read again in backward: saved, so that torch
            # refuses to differentiate after they are modified in place
            ctx.save_for_backward(*args[:5])
            ctx.grads = None
            return _linear_kernel_outputs(*args, label_smoothing, transform, False)[0]
        loss, *ctx.grads = _linear_kernel_outputs(*args, label_smoothing, transform, True)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.grads is None:
            input, linear_weight, linear_bias, target, weight = ctx.saved_tensors
            index, reduction, label_smoothing, transform = ctx.call
            grads = list(
                _linear_kernel_outputs(
                    input, linear_weight, linear_bias, target, weight, index, reduction,
                    label_smoothing, transform, True, grad_output,
                )[1:]
            )  # fmt: skip
        else:
            grads = list(ctx.grads)
            scale = grad_output.item()
            if scale != 1.0:  # loss.backward() passes exactly 1
                grads = [None if g is None else g * scale for g in grads]
        if torch.is_grad_enabled():
            grads = [None if g is None else _no_second_derivative(g) for g in grads]
        return grads[0], grads[1], grads[2], None, None, None, None, None, None


@torch.library.custom_op("fastce::linear_cross_entropy", mutates_args=())
def _linear_op(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    softcap: float | None,
    temperature: float,
    z_loss: float,
    want_grad: bool,
    grad_output: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad_input, grad_linear_weight, grad_linear_bias)`` of a
    linear cross-entropy, as :func:`linear_cross_entropy` computes it; the
    gradients (for ``grad_output``, ``"none"``'s per-sample incoming gradient,
    when given) empty unless ``want_grad``, the bias's without a bias.  A call
    fastce's checks reject gets torch's error, or its loss."""
    transform = dict(softcap=softcap, temperature=temperature, z_loss=z_loss)
    args = (input, linear_weight, linear_bias, target, weight, ignore_index, reduction)
    try:
        outputs = _linear_kernel_outputs(*args, label_smoothing, transform, want_grad, grad_output)
    except _Declined as err:
        with torch.no_grad():
            loss = _torch_linear(*args, label_smoothing, None, check_logit_transform(**transform))
        if want_grad:
            raise RuntimeError(
                "fastce.torch.linear_cross_entropy cannot differentiate this call inside a "
                f"compiled graph ({err.__cause__}): use torch's function there"
            ) from err
        outputs = (loss, None, None, None)
    loss, grad_input, grad_weight, grad_bias = outputs

    def laid_out(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor:
        # outputs must not alias: an empty tensor each for the gradients not given
        if grad is None or like is None:
            return input.new_empty(0)
        return _laid_out_like(grad, like)

    return (
        loss,
        laid_out(grad_input, input),
        laid_out(grad_weight, linear_weight),
        laid_out(grad_bias, linear_bias),
    )


@_linear_op.register_fake
def _linear_fake(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    softcap: float | None,
    temperature: float,
    z_loss: float,
    want_grad: bool,
    grad_output: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    empty = input.new_empty(0)
    return (
        input.new_empty(target.shape if reduction == "none" else ()),
        torch.empty_like(input) if want_grad else empty.clone(),
        torch.empty_like(linear_weight) if want_grad else empty.clone(),
        torch.empty_like(linear_bias) if want_grad and linear_bias is not None else empty.clone(),
    )


def _linear_operator_setup(
    ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]
) -> None:
    ctx.reduction = inputs[6]
    ctx.has_bias = inputs[2] is not None
    if ctx.reduction == "none":  # backward runs the blocked pass again
        ctx.save_for_backward(*inputs[:5])
        ctx.call = inputs[5:11]
    else:
        ctx.save_for_backward(*output[1:])
    ctx.mark_non_differentiable(*output[1:])


def _linear_operator_backward(
    ctx: Any, grad_output: torch.Tensor, *unused: torch.Tensor
) -> tuple[Any, ...]:
    if ctx.reduction == "none":
        grads = list(_linear_op(*ctx.saved_tensors, *ctx.call, True, grad_output)[1:])
    else:
        grads = [g * grad_output for g in ctx.saved_tensors]
    return grads[0], grads[1], grads[2] if ctx.has_bias else None, *(None,) * 10


_linear_op.register_autograd(_linear_operator_backward, setup_context=_linear_operator_setup)


def _torch_linear(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    reduction: str,
    label_smoothing: float,
    options: object,
    transform: LogitTransform,
) -> torch.Tensor:
    """torch's linear cross-entropy, or with a transform its operations."""
    index = -100 if ignore_index is None else ignore_index
    if transform != NO_TRANSFORM or _torch_linear_cross_entropy is None:
        logits = torch.nn.functional.linear(input, linear_weight, linear_bias)
        return _torch_transformed(
            logits, target, weight, index, reduction, label_smoothing, transform
        )[0]
    return cast(
        torch.Tensor,
        _torch_linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=weight,
            reduction=reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            options=options,
        ),
    )


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: object = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """``torch.nn.functional.linear_cross_entropy``, computed by fastce on CPU
    tensors without holding the logits (see :func:`fastce.linear_cross_entropy`).

    ``softcap``, ``temperature`` and ``z_loss`` are fastce's logit transform
    and z-loss (see :func:`fastce.cross_entropy`); a call with them that
    fastce does not serve is computed with torch's operations on the full
    logits.

    Same signature as torch's; ``options`` (torch's chunking strategy) is
    accepted and ignored: fastce always works in blocks.  fastce serves 1-d
    and 2-d float32 and float64 input on CPU; every other call (and every
    call fastce's checks reject) goes to torch's function, which gives its
    own results and errors.  The forward pass computes the loss and all the
    gradients; backward only scales them (for ``reduction="none"`` it runs
    the blocked pass again with the per-sample gradient).

    Examples
    --------
    >>> import torch, fastce.torch
    >>> h = torch.randn(8, 4, requires_grad=True); W = torch.randn(10, 4, requires_grad=True)
    >>> t = torch.randint(0, 10, (8,))
    >>> loss = fastce.torch.linear_cross_entropy(h, W, t)
    >>> loss.backward()
    >>> torch.allclose(loss, torch.nn.functional.cross_entropy(h @ W.T, t))
    True
    """
    grad_enabled = torch.is_grad_enabled()
    index = -100 if ignore_index is None else ignore_index
    checked = check_logit_transform(softcap, temperature, z_loss)
    transform = (
        {}
        if checked == NO_TRANSFORM
        else dict(softcap=softcap, temperature=temperature, z_loss=z_loss)
    )
    reason = _why_linear_not_served(
        input, linear_weight, target, linear_bias, weight, reduction, grad_enabled
    )
    if reason is not None:
        _to_torch("linear_cross_entropy", reason)
        return _torch_linear(
            input, linear_weight, linear_bias, target, weight, ignore_index, reduction,
            label_smoothing, options, checked,
        )  # fmt: skip
    args = (input, linear_weight, linear_bias, target, weight, index, reduction, label_smoothing)
    needs_grad = grad_enabled and any(
        t is not None and t.requires_grad for t in (input, linear_weight, linear_bias)
    )
    if torch.compiler.is_compiling():
        outputs = _linear_op(
            *args, softcap, temperature, z_loss, needs_grad and reduction != "none", None
        )
        return cast(torch.Tensor, outputs[0])
    try:
        if needs_grad:
            return cast(
                torch.Tensor,
                _LinearCrossEntropyFunction.apply(  # type: ignore[no-untyped-call]
                    *args, transform
                ),
            )
        return _linear_kernel_outputs(*args, transform, False)[0]
    except _Declined as err:
        _declined("linear_cross_entropy", err)  # torch answers, or raises its own error
    return _torch_linear(
        input, linear_weight, linear_bias, target, weight, ignore_index, reduction,
        label_smoothing, options, checked,
    )  # fmt: skip


if hasattr(torch.nn, "LinearCrossEntropyLoss"):

    class LinearCrossEntropyLoss(torch.nn.LinearCrossEntropyLoss):
        """``torch.nn.LinearCrossEntropyLoss`` (torch 2.13 and later), computed
        by fastce: the same module, parameters and ``state_dict``; only
        ``forward`` differs, calling :func:`linear_cross_entropy`."""

        def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            linear_weight = self.linear.weight.reshape(
                (self.num_classes, *self.out_features, self.linear.in_features)
            )
            linear_bias = (
                self.linear.bias.reshape((self.num_classes, *self.out_features))
                if self.linear.bias is not None
                else None
            )
            return linear_cross_entropy(
                input,
                linear_weight,
                target,
                linear_bias=linear_bias,
                weight=self.weight,
                reduction=self.reduction,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
                options=self.options,
            )
