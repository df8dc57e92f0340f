"""Cross-entropy of a linear head, ``cross_entropy(hidden @ linear_weight.T + linear_bias)``,
computed block by block so that the ``(N, V)`` logits never exist at once.

The rows with an ignored target are dropped first.  Then, where a block of
whole rows of logits fits in ``max_block_bytes`` (at least ``MIN_BLOCK_ROWS``
of them), each block is multiplied into one reused buffer, fastce's
cross-entropy kernel turns the buffer into its loss and, in place, its logit
gradient while it is fresh, and that gradient goes straight into the two
gradient products.  For larger vocabularies many rows at a time are walked
through slices of the output layer, so that each slice is read once per many
rows: a first walk adds up the log-sum-exp and the logits the loss reads, a
second makes each slice's logit gradient from the final log-sum-exp.

The products run on SciPy's BLAS (``gemm``) where SciPy is installed, else on
NumPy's (``matmul``): see ``Products``.  Either is limited to fastce's thread
count (``threadpoolctl``).  Nothing is approximated: every logit of every
counted row enters the loss and the gradients.
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
from ._kernels import execute
from ._plan import (
    FloatArray,
    FloatScalar,
    plan_cross_entropy,
)
from ._plan_types import CROSS_ENTROPY_INDEX, CROSS_ENTROPY_PROBS, ClassPlan, LogitTransform
from ._validate import as_array, check_float_dtype, check_logit_transform
from .functional import logsumexp

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]

# the logits of one block of rows, at most: a block is still at least one row
DEFAULT_BLOCK_BYTES = 32 << 20

_controller: Any = None


@contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """The BLAS the products run on limited to ``threads`` (fastce's count when 0)."""
    global _controller
    if _controller is None:
        # SciPy's BLAS loaded first, so that the controller finds it too
        _gemm_of(np.dtype(np.float32))
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
    """The products of a block of rows, all on one BLAS: SciPy's
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
        _written(out, self.gemm(1.0, w.T, h.T, beta=0.0, c=out.T, trans_a=True, overwrite_c=True))

    def hidden_grad(self, g: npt.NDArray[Any], w: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``g @ w``."""
        if self.gemm is None:
            return cast("npt.NDArray[Any]", g @ w)
        return cast("npt.NDArray[Any]", self.gemm(1.0, w.T, g.T).T)

    def add_product(self, into: npt.NDArray[Any], a: npt.NDArray[Any], b: npt.NDArray[Any]) -> None:
        """``into += a @ b``."""
        if self.gemm is not None:
            _written(into, self.gemm(1.0, b.T, a.T, beta=1.0, c=into.T, overwrite_c=True))
            return
        into += a @ b

    def add_weight_grad(
        self, into: npt.NDArray[Any], g: npt.NDArray[Any], h: npt.NDArray[Any]
    ) -> None:
        """``into += g.T @ h``."""
        if self.gemm is not None:
            result = self.gemm(1.0, h.T, g.T, beta=1.0, c=into.T, trans_b=True, overwrite_c=True)
            _written(into, result)
            return
        # slices of classes keep each product's temporary within the block bound
        for c0 in range(0, into.shape[0], self.class_step):
            c1 = min(into.shape[0], c0 + self.class_step)
            into[c0:c1] += g[:, c0:c1].T @ h


def _written(out: npt.NDArray[Any], result: npt.NDArray[Any]) -> None:
    """Makes sure ``out`` holds ``gemm``'s ``result``, the transpose of ``out``
    that it overwrote in place (a copy only if the wrapper could not)."""
    if not np.shares_memory(result, out):
        out[...] = result.T


def _gemm_of(dtype: np.dtype[Any]) -> Any:
    """SciPy's BLAS ``sgemm`` or ``dgemm`` for ``dtype``, or None without SciPy."""
    try:
        blas = importlib.import_module("scipy.linalg.blas")
    except ImportError:
        return None
    return blas.sgemm if dtype == np.float32 else blas.dgemm


class OutputLayer:
    """The output layer ``(V, H)`` as the products read it, in the computing
    dtype and C-ordered: the array itself when it already is, else each slice
    of classes converted when it is read, into one buffer of the largest
    slice read (float16 and bfloat16 layers are never converted whole)."""

    def __init__(self, weight: npt.NDArray[Any], dtype: np.dtype[Any]) -> None:
        self.weight = weight
        self.dtype = dtype
        self.in_place = weight.dtype == dtype and weight.flags.c_contiguous
        self._buffer = np.empty(0, dtype=dtype)

    def rows(self, c0: int, c1: int) -> npt.NDArray[Any]:
        """Classes ``c0 <= c < c1``; converted ones are valid until the next call."""
        if self.in_place:
            return self.weight[c0:c1]
        size = (c1 - c0) * self.weight.shape[1]
        if self._buffer.size < size:
            self._buffer = np.empty(size, dtype=self.dtype)
        out = self._buffer[:size].reshape(c1 - c0, self.weight.shape[1])
        out[...] = self.weight[c0:c1]
        return out


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

    def operands(self) -> tuple[npt.NDArray[Any], OutputLayer, npt.NDArray[Any] | None]:
        """The hidden states as ``(N, H)`` rows, the output layer as the
        products read it, and the bias in the computing dtype."""
        h2 = self.hidden.reshape(-1, self.n_features)
        b_c = None if self.bias is None else np.asarray(self.bias, dtype=self.dtype)
        return h2, OutputLayer(self.weight, self.dtype), b_c

    def block_logits(
        self,
        h2: npt.NDArray[Any],
        layer: OutputLayer,
        b_c: npt.NDArray[Any] | None,
        picked: npt.NDArray[np.intp],
        buffer: npt.NDArray[Any],
        products: Products,
        class_step: int,
    ) -> npt.NDArray[Any]:
        """Writes the logits of rows ``picked`` into the start of ``buffer``
        (an output layer not in place ``class_step`` classes at a time);
        returns those rows' hidden states in the computing dtype."""
        h_block = np.asarray(h2[picked], dtype=self.dtype)
        block = buffer[: len(picked)]
        if layer.in_place:
            products.logits(h_block, layer.weight, block)
        else:
            for c0 in range(0, self.n_classes, class_step):
                c1 = min(self.n_classes, c0 + class_step)
                np.matmul(h_block, layer.rows(c0, c1).T, out=block[:, c0:c1])
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


# fewer rows per block than this (a vocabulary too large for the block size)
# and the output layer is walked in slices of classes instead, many rows at
# a time: each slice is then read once per many rows, not once per few
MIN_BLOCK_ROWS = 256
# rows per block when the classes are walked in slices
CHUNK_ROWS = 2048
# the fewest classes in a slice
MIN_CHUNK_CLASSES = 512


class _Work(NamedTuple):
    """What a blocked pass reads and writes."""

    head: Head
    checked: ClassPlan  # cross_entropy's checks of the call
    h2: npt.NDArray[Any]  # hidden states, (N, H)
    layer: OutputLayer
    b_c: npt.NDArray[Any] | None
    index1: npt.NDArray[Any] | None  # class indices, (N,)
    probs2: npt.NDArray[Any] | None  # target probabilities, (N, V)
    row_go: npt.NDArray[np.float64] | None  # per-sample gradient scales, (N,)
    scalar_go: float | None  # or one scale for every sample
    loss_rows: npt.NDArray[Any] | None  # per-sample losses, for reduction="none"
    grad_h2: npt.NDArray[Any] | None  # (N, H)
    grad_w: npt.NDArray[Any] | None
    grad_b: npt.NDArray[Any] | None
    products: Products


def _by_row_blocks(work: _Work, rows: npt.NDArray[np.intp], block_bytes: int) -> float:
    """Blocks of whole rows: cross_entropy's kernel makes each block's loss
    and, in place of its logits, their gradient.  Returns the summed loss."""
    head, checked = work.head, work.checked
    dtype, n_classes = head.dtype, head.n_classes
    block_rows = block_rows_for(len(rows), n_classes, dtype, block_bytes)
    buffer = np.empty((block_rows, n_classes), dtype=dtype)
    want_grad = work.grad_w is not None
    total = 0.0
    for start in range(0, len(rows), block_rows):
        picked = rows[start : start + block_rows]
        n = len(picked)
        h_block = head.block_logits(
            work.h2, work.layer, work.b_c, picked, buffer, work.products, n_classes
        )
        block = buffer[:n]
        block_go = None
        if work.row_go is not None:
            block_go = work.row_go[picked]
        elif work.scalar_go is not None:
            # a scalar stays 0-d: the kernel reads it at every sample
            block_go = np.array(work.scalar_go)
        block_plan = checked._replace(
            kernel=CROSS_ENTROPY_PROBS if work.probs2 is not None else CROSS_ENTROPY_INDEX,
            x=block,
            x3=block.reshape(n, n_classes, 1),
            reduction="none" if work.loss_rows is not None else "sum",
            per_sample_shape=(n,) if work.loss_rows is not None else None,
            denominator=1.0,
            index2=None if work.index1 is None else work.index1[picked].reshape(n, 1),
            probs3=None if work.probs2 is None else work.probs2[picked].reshape(n, n_classes, 1),
            has_ignore=False,  # ignored rows were dropped
            grad_output=block_go,
            per_class=want_grad,
            out=block if want_grad else None,
        )
        block_loss, block_grad, _, _ = execute(block_plan)
        if work.loss_rows is not None:
            work.loss_rows[picked] = block_loss
        else:
            total += float(block_loss)
        if block_grad is None:
            continue
        # block_grad is the block buffer, overwritten with the logits' gradient
        assert work.grad_h2 is not None and work.grad_w is not None
        work.grad_h2[picked] = work.products.hidden_grad(block_grad, work.layer.weight)
        work.products.add_weight_grad(work.grad_w, block_grad, h_block)
        if work.grad_b is not None:
            np.add(work.grad_b, block_grad.sum(axis=0), out=work.grad_b)
    return total


def _by_class_chunks(work: _Work, rows: npt.NDArray[np.intp], block_bytes: int) -> float:
    """Blocks of many rows, walked in slices of classes: a first walk adds up
    each row's log-sum-exp and the logits its loss reads, a second (for the
    gradient) makes each slice's logits again and their gradient from the
    final log-sum-exp.  Returns the summed loss."""
    head, checked = work.head, work.checked
    dtype, n_classes, n_features = head.dtype, head.n_classes, head.n_features
    smoothing = checked.smoothing
    scale, cap, z_coefficient = checked.transform
    class_weight = checked.weight if checked.weight.size else None
    weight_total = float(class_weight.sum()) if class_weight is not None else float(n_classes)
    # the class weights as the slices are multiplied by them
    class_weight_c = None if class_weight is None else class_weight.astype(dtype)
    item = dtype.itemsize
    want_grad = work.grad_w is not None
    # a slice's logits, and where the loss or gradient needs one, a second
    # slice-sized buffer for a product with the targets
    spare_needed = work.probs2 is not None or (
        smoothing > 0 and want_grad and class_weight is not None
    )
    # and with a soft-cap, the transform's slope of a slice for its gradient
    slope_needed = bool(cap) and want_grad
    space = max(1, block_bytes // (1 + spare_needed + slope_needed))
    block_rows = max(1, min(len(rows), CHUNK_ROWS, space // (MIN_CHUNK_CLASSES * item)))
    step = max(1, min(n_classes, space // (block_rows * item)))
    if not work.layer.in_place:
        # a slice of the output layer is converted too: no larger than a logits slice's share
        step = max(1, min(step, space // (n_features * item)))
    logits_space = np.empty(block_rows * step, dtype=dtype)
    spare_space = np.empty(block_rows * step if spare_needed else 0, dtype=dtype)
    slope_space = np.empty(block_rows * step if slope_needed else 0, dtype=dtype)
    total = 0.0

    def chunk_logits(
        h_block: npt.NDArray[Any], w_slice: npt.NDArray[Any], c0: int, c1: int
    ) -> npt.NDArray[Any]:
        """A slice's logits, transformed as the kernels transform them."""
        out = logits_space[: len(h_block) * (c1 - c0)].reshape(len(h_block), c1 - c0)
        work.products.logits(h_block, w_slice, out)
        if work.b_c is not None:
            out += work.b_c[c0:c1]
        if cap:
            out /= cap
            np.tanh(out, out=out)
            out *= cap * scale
        elif scale != 1.0:
            out *= scale
        return out

    def chunk_slope(z: npt.NDArray[Any]) -> npt.NDArray[Any] | float:
        """The transform's derivative at a slice's transformed logits ``z``."""
        if not cap:
            return scale
        slope = slope_space[: z.size].reshape(z.shape)
        np.multiply(z, 1.0 / (cap * scale), out=slope)
        np.square(slope, out=slope)
        np.subtract(1.0, slope, out=slope)
        slope *= scale
        return slope

    def target_terms(y_block: npt.NDArray[Any], c0: int, c1: int) -> npt.NDArray[Any]:
        """``w_c * ((1 - eps) y + eps / C)`` of a slice, in the spare buffer."""
        n = len(y_block)
        u = spare_space[: n * (c1 - c0)].reshape(n, c1 - c0)
        np.multiply(y_block[:, c0:c1], 1.0 - smoothing, out=u)
        u += smoothing / n_classes
        if class_weight_c is not None:
            u *= class_weight_c[c0:c1]
        return u

    for start in range(0, len(rows), block_rows):
        picked = rows[start : start + block_rows]
        n = len(picked)
        h_block = np.asarray(work.h2[picked], dtype=dtype)
        y_block = None if work.probs2 is None else work.probs2[picked]
        t = None if work.index1 is None else work.index1[picked].astype(np.intp)
        lse = np.full(n, -np.inf)
        # the logits the loss reads besides the log-sum-exp: the target's
        # (class indices), and sum_c u_c z_c (probabilities, or smoothing)
        target_logit = np.zeros(n)
        weighted_sum = np.zeros(n)
        # whether a probability target has a coefficient that is not 0
        active = np.zeros(n, dtype=bool)
        for c0 in range(0, n_classes, step):
            c1 = min(n_classes, c0 + step)
            w_slice = work.layer.rows(c0, c1)
            z = chunk_logits(h_block, w_slice, c0, c1)
            lse = np.logaddexp(lse, logsumexp(z, axis=1, num_threads=checked.threads or None))
            if t is not None:
                inside = (t >= c0) & (t < c1)
                target_logit[inside] = z[inside, t[inside] - c0]
                if smoothing:
                    weighted_sum += (
                        z @ class_weight_c[c0:c1] if class_weight_c is not None else z.sum(axis=1)
                    )
            else:
                assert y_block is not None
                u = target_terms(y_block, c0, c1)
                weighted_sum += np.einsum("ij,ij->i", z, u)
                active |= np.any(u != 0, axis=1)
        if t is not None:
            w_t = class_weight[t] if class_weight is not None else np.ones(n)
            a_total = (1.0 - smoothing) * w_t + smoothing / n_classes * weight_total
            loss = (1.0 - smoothing) * w_t * (lse - target_logit)
            if smoothing:
                loss += smoothing / n_classes * (weight_total * lse - weighted_sum)
        else:
            assert y_block is not None
            weights = class_weight if class_weight is not None else np.ones(n_classes)
            a_total = (1.0 - smoothing) * (y_block @ weights) + smoothing / n_classes * (
                weight_total
            )
            loss = a_total * lse - weighted_sum
        if z_coefficient:
            # the z-loss, counted as the kernels count it, and its share of the softmax
            z_weight = z_coefficient * (w_t if t is not None else active.astype(np.float64))
            loss = loss + z_weight * lse * lse
            a_total = a_total + 2.0 * z_weight * lse
        if work.loss_rows is not None:
            work.loss_rows[picked] = loss
        else:
            total += float(loss.sum())
        if not want_grad:
            continue
        assert work.grad_h2 is not None and work.grad_w is not None
        g = work.row_go[picked] if work.row_go is not None else np.full(n, work.scalar_go)
        softmax_scale = (a_total * g).astype(dtype)[:, None]
        shift = lse.astype(dtype)[:, None]
        grad_h_block = np.zeros((n, n_features), dtype=dtype)
        for c0 in range(0, n_classes, step):
            c1 = min(n_classes, c0 + step)
            w_slice = work.layer.rows(c0, c1)
            z = chunk_logits(h_block, w_slice, c0, c1)
            slope = chunk_slope(z)
            # the gradient of the slice, in place of its logits:
            # g * (A * exp(z - lse) - a), times the transform's slope
            z -= shift
            np.exp(z, out=z)
            z *= softmax_scale
            if t is not None:
                if smoothing:
                    # the uniform part of the target, g * eps / C * w_c
                    spread = (smoothing / n_classes * g).astype(dtype)
                    if class_weight_c is None:
                        z -= spread[:, None]
                    else:
                        spare = spare_space[: n * (c1 - c0)].reshape(n, c1 - c0)
                        np.multiply.outer(spread, class_weight_c[c0:c1], out=spare)
                        z -= spare
                inside = (t >= c0) & (t < c1)
                z[inside, t[inside] - c0] -= ((1.0 - smoothing) * w_t * g)[inside].astype(dtype)
            else:
                assert y_block is not None
                u = target_terms(y_block, c0, c1)
                u *= g.astype(dtype)[:, None]
                z -= u
            if cap or scale != 1.0:
                z *= slope
            work.products.add_product(grad_h_block, z, w_slice)
            work.products.add_weight_grad(work.grad_w[c0:c1], z, h_block)
            if work.grad_b is not None:
                work.grad_b[c0:c1] += z.sum(axis=0)
        work.grad_h2[picked] = grad_h_block
    return total


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
    transform: LogitTransform,
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
        transform,
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
    h2, layer, b_c = head.operands()
    n_features = head.n_features
    loss_rows = np.zeros(n_samples, dtype=dtype) if reduction == "none" else None
    grad_h = grad_w = grad_b = None
    # each sample's share of the gradient: grad_output, over the mean's denominator
    row_go = scalar_go = None
    if go is not None:
        grad_h = np.zeros(sample_shape + (n_features,), dtype=dtype)
        grad_w = np.zeros((n_classes, n_features), dtype=dtype)
        grad_b = np.zeros(n_classes, dtype=dtype) if head.bias is not None else None
        scale = 1.0 / denominator if reduction == "mean" and denominator else 1.0
        if go.ndim:
            row_go = go.reshape(n_samples) * scale
        else:
            scalar_go = float(go) * scale
    # the gradient of the output layer is added block by block in slices of
    # classes, so that each product's temporary stays within the same bound
    class_step = max(1, block_bytes // max(1, n_features * dtype.itemsize))
    work = _Work(
        head=head,
        checked=checked,
        h2=h2,
        layer=layer,
        b_c=b_c,
        index1=index1,
        probs2=probs2,
        row_go=row_go,
        scalar_go=scalar_go,
        loss_rows=loss_rows,
        grad_h2=None if grad_h is None else grad_h.reshape(n_samples, n_features),
        grad_w=grad_w,
        grad_b=grad_b,
        products=Products(dtype, class_step),
    )
    with blas_threads(threads):
        # an output layer converted slice by slice is read in slices only
        if layer.in_place and block_rows_for(len(rows), n_classes, dtype, block_bytes) >= min(
            len(rows), MIN_BLOCK_ROWS
        ):
            total = _by_row_blocks(work, rows, block_bytes)
        else:
            total = _by_class_chunks(work, rows, block_bytes)
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
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
    softcap, temperature, z_loss
        As in :func:`fastce.cross_entropy`: the loss of the transformed
        logits, the z-loss included.

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
        check_logit_transform(softcap, temperature, z_loss),
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
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
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
        check_logit_transform(softcap, temperature, z_loss),
    )
    return loss, grad_h, grad_w, grad_b
