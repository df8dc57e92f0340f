"""Cross-entropy of a linear head, ``cross_entropy(hidden @ linear_weight.T + linear_bias)``,
computed block by block so that the ``(N, V)`` logits never exist at once.

Each block of rows (the rows with an ignored target dropped first) is
multiplied by the whole output layer into one reused buffer of at most
``max_block_bytes``; fastce's cross-entropy kernel then turns the buffer into
its loss and, in place, its logit gradient while it is fresh, and that
gradient goes straight into the two gradient products.  The products
run on SciPy's BLAS (``gemm``) where SciPy is installed, else on NumPy's
(``matmul``): see ``Products``.  Either is limited to fastce's thread
count (``threadpoolctl``).  Nothing is
approximated: every logit of every counted row enters the loss and the
gradients.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple, cast, overload

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

from ._config import get_num_threads
from ._plan import (
    CROSS_ENTROPY_INDEX,
    CROSS_ENTROPY_PROBS,
    ClassPlan,
    FloatArray,
    FloatScalar,
    execute,
    plan_cross_entropy,
)
from ._validate import as_array, check_float_dtype

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]

# the logits of one block of rows, at most: a block is still at least one row
DEFAULT_BLOCK_BYTES = 32 << 20

_controller: Any = None


@contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """The BLAS behind NumPy limited to ``threads`` (fastce's count when 0)."""
    global _controller
    if _controller is None:
        # imported by name: it ships no types, which users' type checkers would report
        _controller = importlib.import_module("threadpoolctl").ThreadpoolController()
    with _controller.limit(limits=threads or get_num_threads(), user_api="blas"):
        yield


def _float_operand(a: object, name: str) -> npt.NDArray[Any]:
    arr = as_array(a)
    check_float_dtype(arr.dtype, name)
    return arr


def check_block_bytes(max_block_bytes: object) -> int:
    if isinstance(max_block_bytes, bool) or not isinstance(max_block_bytes, (int, np.integer)):
        raise TypeError(
            f"max_block_bytes must be a positive integer (bytes); got {max_block_bytes!r}"
        )
    if max_block_bytes < 1:
        raise ValueError(f"max_block_bytes must be positive; got {int(max_block_bytes)}")
    return int(max_block_bytes)


class Products:
    """The three products of a block of rows, all on one BLAS: SciPy's
    ``gemm`` where SciPy is installed, NumPy's ``matmul`` otherwise.  Mixing
    the two would run two BLAS thread pools, each spinning while the other
    works (measured: 1.5x slower).  SciPy's ``gemm`` also adds a product into
    its output (beta = 1), which NumPy's matmul cannot; the arrays are passed
    as the Fortran-ordered transposes of C-ordered ones, so nothing is copied."""

    def __init__(self, dtype: np.dtype[Any], class_step: int = 1 << 30) -> None:
        self.gemm = _gemm_of(dtype)
        # classes per product of add_weight_grad's NumPy path
        self.class_step = class_step

    def logits(self, h: npt.NDArray[Any], w: npt.NDArray[Any], out: npt.NDArray[Any]) -> None:
        """``out = h @ w.T``."""
        if self.gemm is None:
            np.matmul(h, w.T, out=out)
            return
        result = self.gemm(1.0, w.T, h.T, beta=0.0, c=out.T, trans_a=True, overwrite_c=True)
        if not np.shares_memory(result, out):
            out[...] = result.T

    def hidden_grad(self, g: npt.NDArray[Any], w: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``g @ w``."""
        if self.gemm is None:
            return cast("npt.NDArray[Any]", g @ w)
        return cast("npt.NDArray[Any]", self.gemm(1.0, w.T, g.T).T)

    def add_weight_grad(
        self, into: npt.NDArray[Any], g: npt.NDArray[Any], h: npt.NDArray[Any]
    ) -> None:
        """``into += g.T @ h``."""
        if self.gemm is not None:
            result = self.gemm(1.0, h.T, g.T, beta=1.0, c=into.T, trans_b=True, overwrite_c=True)
            if not np.shares_memory(result, into):
                into[...] = result.T
            return
        # slices of classes keep each product's temporary within the block bound
        for c0 in range(0, into.shape[0], self.class_step):
            c1 = min(into.shape[0], c0 + self.class_step)
            into[c0:c1] += g[:, c0:c1].T @ h


def _gemm_of(dtype: np.dtype[Any]) -> Any:
    """SciPy's BLAS ``sgemm`` or ``dgemm`` for ``dtype``, or None without SciPy."""
    try:
        blas = importlib.import_module("scipy.linalg.blas")
    except ImportError:
        return None
    return blas.sgemm if dtype == np.float32 else blas.dgemm


class Head(NamedTuple):
    """A checked linear head: hidden states ``(..., H)``, the output layer
    ``(V, H)`` and its bias, and the dtype the logits are computed in."""

    hidden: npt.NDArray[Any]
    weight: npt.NDArray[Any]
    bias: npt.NDArray[Any] | None
    dtype: np.dtype[Any]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return cast("tuple[int, ...]", self.hidden.shape[:-1])

    @property
    def n_features(self) -> int:
        return int(self.hidden.shape[-1])

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits_shaped(self) -> npt.NDArray[Any]:
        """An array of the logits' shape and dtype, without memory: what the
        checks of the target look at."""
        return np.broadcast_to(np.zeros((), self.dtype), self.sample_shape + (self.n_classes,))

    def operands(self) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any] | None]:
        """The hidden states as ``(N, H)`` rows, and the output layer and bias
        in the computing dtype (copied only when they are not in it)."""
        h2 = self.hidden.reshape(-1, self.n_features)
        w_c = np.ascontiguousarray(self.weight, dtype=self.dtype)
        b_c = None if self.bias is None else np.asarray(self.bias, dtype=self.dtype)
        return h2, w_c, b_c

    def block_logits(
        self,
        h2: npt.NDArray[Any],
        w_c: npt.NDArray[Any],
        b_c: npt.NDArray[Any] | None,
        picked: npt.NDArray[np.intp],
        buffer: npt.NDArray[Any],
        products: Products,
    ) -> npt.NDArray[Any]:
        """Writes the logits of rows ``picked`` into the start of ``buffer``;
        returns those rows' hidden states in the computing dtype."""
        h_block = np.asarray(h2[picked], dtype=self.dtype)
        block = buffer[: len(picked)]
        products.logits(h_block, w_c, block)
        if b_c is not None:
            block += b_c
        return h_block


def check_head(hidden: object, linear_weight: object, linear_bias: object) -> Head:
    """The head's operands checked: floats, ``(V, H)`` weights for ``(..., H)``
    hidden states, a ``(V,)`` bias; computed in float64 if any is float64,
    else in float32."""
    h = _float_operand(hidden, "hidden")
    w_lin = _float_operand(linear_weight, "linear_weight")
    if h.ndim == 0:
        raise ValueError("hidden must have at least one dimension, the features; got a 0-d array")
    n_features = h.shape[-1]
    if w_lin.ndim != 2 or w_lin.shape[1] != n_features:
        raise ValueError(
            f"linear_weight must have shape (V, {n_features}) (torch.nn.Linear's layout: one "
            f"row of {n_features} features per class); got {w_lin.shape}"
        )
    n_classes = w_lin.shape[0]
    bias = None
    if linear_bias is not None:
        bias = _float_operand(linear_bias, "linear_bias")
        if bias.shape != (n_classes,):
            raise ValueError(
                f"linear_bias must have shape ({n_classes},), one per class; got {bias.shape}"
            )
    operands = [h, w_lin] + ([bias] if bias is not None else [])
    dtype = np.dtype(np.float64 if any(a.dtype.itemsize == 8 for a in operands) else np.float32)
    return Head(h, w_lin, bias, dtype)


def block_rows_for(n_rows: int, n_classes: int, dtype: np.dtype[Any], block_bytes: int) -> int:
    """Rows per block: as many as ``block_bytes`` of logits hold, at least one."""
    return max(1, min(n_rows, block_bytes // max(1, n_classes * dtype.itemsize)))


def _linear(
    hidden: object,
    linear_weight: object,
    target: object,
    linear_bias: object,
    weight: object,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    want_grad: bool,
    grad_output: object,
    max_block_bytes: object,
    num_threads: int | None,
) -> tuple[Any, Any, Any, Any]:
    """Shared body: ``(loss, grad_hidden, grad_weight, grad_bias)``, the
    gradients None without ``want_grad``."""
    head = check_head(hidden, linear_weight, linear_bias)
    block_bytes = check_block_bytes(max_block_bytes)
    # every other check is cross_entropy's, on an array of the logits' shape
    # and dtype that has no memory
    checked = plan_cross_entropy(
        head.logits_shaped(),
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        -1,
        want_grad,
        grad_output,
        None,
        num_threads,
    )
    reduction, threads, denominator = checked.reduction, checked.threads, checked.denominator
    dtype, sample_shape, n_classes = head.dtype, head.sample_shape, head.n_classes
    n_samples = math.prod(sample_shape)
    go = checked.grad_output
    probs2 = None if checked.probs3 is None else checked.probs3.reshape(n_samples, n_classes)
    index1 = None if checked.index2 is None else checked.index2.reshape(n_samples)
    if index1 is not None and checked.has_ignore:
        rows = np.flatnonzero(index1 != checked.ignore_value)
    else:
        rows = np.arange(n_samples)

    # every check has passed: from here on only outputs are written
    h2, w_c, b_c = head.operands()
    n_features = head.n_features
    loss_rows = np.zeros(n_samples, dtype=dtype) if reduction == "none" else None
    grad_h = grad_w = grad_b = None
    go1: npt.NDArray[np.float64] | None = None
    go_per_sample = go is not None and go.ndim > 0
    if want_grad:
        assert go is not None
        grad_h = np.zeros(sample_shape + (n_features,), dtype=dtype)
        grad_w = np.zeros((n_classes, n_features), dtype=dtype)
        grad_b = np.zeros(n_classes, dtype=dtype) if head.bias is not None else None
        scale = 1.0 / denominator if reduction == "mean" and denominator else 1.0
        go1 = (
            go.reshape(n_samples) * scale
            if go.ndim
            else np.full(1, float(go) * scale, dtype=np.float64)
        )
    block_rows = block_rows_for(len(rows), n_classes, dtype, block_bytes)
    # the gradient of the output layer is added block by block in slices of
    # classes, so that each product's temporary stays within the same bound
    class_step = max(1, block_bytes // max(1, n_features * dtype.itemsize))
    buffer = np.empty((block_rows, n_classes), dtype=dtype)
    products = Products(dtype, class_step)
    total = 0.0
    with blas_threads(threads):
        for start in range(0, len(rows), block_rows):
            picked = rows[start : start + block_rows]
            n = len(picked)
            h_block = head.block_logits(h2, w_c, b_c, picked, buffer, products)
            block = buffer[:n]
            block_go = None
            if go1 is not None:
                # a scalar stays 0-d: the kernel reads it at every sample
                block_go = go1[picked] if go_per_sample else go1.reshape(())
            block_plan = ClassPlan(
                kernel=CROSS_ENTROPY_PROBS if probs2 is not None else CROSS_ENTROPY_INDEX,
                x=block,
                x3=block.reshape(n, n_classes, 1),
                dtype=dtype,
                reduction="none" if reduction == "none" else "sum",
                per_sample_shape=(n,) if reduction == "none" else None,
                denominator=1.0,
                index2=None if index1 is None else index1[picked].reshape(n, 1),
                probs3=None if probs2 is None else probs2[picked].reshape(n, n_classes, 1),
                weight=checked.weight,
                smoothing=checked.smoothing,
                has_ignore=False,  # ignored rows were dropped
                grad_output=block_go,
                per_class=want_grad,
                out=block if want_grad else None,
                threads=threads,
            )
            block_loss, block_grad = execute(block_plan)
            if loss_rows is not None:
                loss_rows[picked] = block_loss
            else:
                total += float(block_loss)
            if block_grad is None:
                continue
            # block_grad is the block buffer, overwritten with the logits' gradient
            assert grad_h is not None and grad_w is not None
            grad_h.reshape(n_samples, n_features)[picked] = products.hidden_grad(block_grad, w_c)
            products.add_weight_grad(grad_w, block_grad, h_block)
            if grad_b is not None:
                grad_b += block_grad.sum(axis=0)
    if loss_rows is not None:
        loss: Any = loss_rows.reshape(sample_shape)
    else:
        value = total
        if reduction == "mean":
            value = total / denominator if denominator else math.nan
        with np.errstate(over="ignore"):
            loss = dtype.type(value)
    return loss, grad_h, grad_w, grad_b


@overload
def linear_cross_entropy(
    hidden: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    linear_bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
    label_smoothing: float = 0.0,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    num_threads: int | None = None,
) -> FloatScalar: ...
@overload
def linear_cross_entropy(
    hidden: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    linear_bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["none"],
    label_smoothing: float = 0.0,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    num_threads: int | None = None,
) -> FloatArray: ...
@overload
def linear_cross_entropy(
    hidden: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    linear_bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    num_threads: int | None = None,
) -> FloatScalar | FloatArray: ...
def linear_cross_entropy(
    hidden: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    linear_bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    num_threads: int | None = None,
) -> FloatScalar | FloatArray:
    """Cross-entropy of the logits ``hidden @ linear_weight.T + linear_bias``
    without holding them: the loss of a language model's output layer.

    Parameters
    ----------
    hidden : array_like of float, shape (..., H)
        Hidden states: each row of ``H`` features is one sample.
    linear_weight : array_like of float, shape (V, H)
        The output layer, in ``torch.nn.Linear``'s layout (one row per class).
    target : array_like
        Class indices of shape ``hidden.shape[:-1]``, or probabilities of
        shape ``hidden.shape[:-1] + (V,)``.
    linear_bias : array_like of float, shape (V,), optional
    weight : array_like of shape (V,), optional
        A weight per class, as in :func:`fastce.cross_entropy`.
    ignore_index, reduction, label_smoothing, num_threads
        As in :func:`fastce.cross_entropy`.  Rows whose target is
        ``ignore_index`` are dropped before any product.
    max_block_bytes : int, default 32 MiB
        The most logits (in bytes) that exist at once: a block of rows times
        the vocabulary, at least one row.

    Returns
    -------
    loss : numpy scalar or ndarray
        What ``cross_entropy(hidden @ linear_weight.T + linear_bias, target,
        weight, axis=-1, ...)`` returns: computed in float64 when any of the
        operands is float64, in float32 otherwise (float16 and bfloat16
        operands included).

    Notes
    -----
    The classes are the last axis of the linear output, as for a language
    model's head: ``hidden`` of shape ``(B, T, H)`` with targets ``(B, T)``.
    (``torch.nn.functional.linear_cross_entropy`` follows ``cross_entropy``'s
    rule instead, class axis 1, which is the same for 2-d ``hidden``.)

    Examples
    --------
    >>> import numpy as np, fastce
    >>> rng = np.random.default_rng(0)
    >>> h = rng.standard_normal((6, 4)); W = rng.standard_normal((10, 4))
    >>> t = np.array([1, 3, -100, 9, 0, 2])
    >>> loss = fastce.linear_cross_entropy(h, W, t)
    >>> bool(np.isclose(loss, fastce.cross_entropy(h @ W.T, t), rtol=1e-12))
    True
    """
    loss: FloatScalar | FloatArray = _linear(
        hidden,
        linear_weight,
        target,
        linear_bias,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        False,
        None,
        max_block_bytes,
        num_threads,
    )[0]
    return loss


def linear_cross_entropy_with_grad(
    hidden: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    linear_bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    *,
    grad_output: ArrayLike = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    num_threads: int | None = None,
) -> tuple[FloatScalar | FloatArray, FloatArray, FloatArray, FloatArray | None]:
    """The loss of :func:`linear_cross_entropy` and its gradients, in one pass.

    Takes :func:`linear_cross_entropy`'s arguments and ``grad_output`` (as in
    :func:`fastce.cross_entropy_grad`); returns ``(loss, grad_hidden,
    grad_linear_weight, grad_linear_bias)``, the last None without a bias.
    Each block's logit gradient is made in place of its logits and fed to
    the two products at once: the logits are computed once, not again for
    the backward pass.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> rng = np.random.default_rng(0)
    >>> h = rng.standard_normal((6, 4)); W = rng.standard_normal((10, 4)); b = np.zeros(10)
    >>> t = np.array([1, 3, -100, 9, 0, 2])
    >>> loss, gh, gW, gb = fastce.linear_cross_entropy_with_grad(h, W, t, b)
    >>> g = fastce.cross_entropy_grad(h @ W.T + b, t)
    >>> bool(np.allclose(gh, g @ W) and np.allclose(gW, g.T @ h) and np.allclose(gb, g.sum(0)))
    True
    """
    loss, grad_h, grad_w, grad_b = _linear(
        hidden,
        linear_weight,
        target,
        linear_bias,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        True,
        grad_output,
        max_block_bytes,
        num_threads,
    )
    return loss, grad_h, grad_w, grad_b
