"""``scipy.special``'s ``logsumexp``, ``softmax`` and ``log_softmax`` on fastce's kernels.

The signatures, defaults and results are SciPy's (1.17): ``axis=None`` means
the whole array, an axis may be a tuple of axes, ``logsumexp`` takes
``b=`` weights (zero, negative, broadcast), ``keepdims`` and
``return_sign``; integer and array-like input is converted as SciPy converts
it, and the result dtypes are SciPy's.  Swap the import and keep the call::

    from fastce.scipy import logsumexp, softmax, log_softmax  # was scipy.special

The axes a call reduces over become one class axis of an ``(outer, C,
inner)`` view of the input, made by a reshape without a copy wherever the
memory allows (any axes of a C- or Fortran-ordered array; a copy only for
reduced axes that its strides interleave with the others), and one kernel
pass computes the result.

Where the results differ from SciPy's:

* float16 input is computed in float32 and rounded once at the end, so its
  results are nearer the exact values than SciPy's float16 arithmetic (the
  dtype is SciPy's: float16).
* Complex and ``longdouble`` input, which the kernels do not compute, is
  passed to SciPy itself when SciPy is installed; without SciPy it raises
  ``TypeError``.
* Arrays of other array-API libraries are read through NumPy (CPU torch
  tensors, JAX CPU arrays) and the result is a NumPy array; SciPy returns an
  array of the input's library and device.
"""

from __future__ import annotations

import importlib
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, SupportsIndex, cast

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

from . import functional as _functional
from ._kernels import writable_view
from ._validate import as_array

__all__ = ["logsumexp", "softmax", "log_softmax"]

_Axis = SupportsIndex | Sequence[SupportsIndex] | None
_Array = npt.NDArray[Any]


# ---- inputs ------------------------------------------------------------------


def _kernel_dtype(dtype: np.dtype[Any]) -> bool:
    """float16, float32 and float64: what the kernels compute (float16 in float32)."""
    return dtype.kind == "f" and dtype.itemsize <= 8


def _refuse_unconvertible(arr: _Array, name: str) -> None:
    """The errors NumPy's arithmetic gives SciPy for input that holds no numbers."""
    if arr.dtype.kind in "US":
        raise ValueError(
            f"{name} holds strings (dtype {arr.dtype}); convert them to numbers first, "
            f"e.g. np.asarray({name}, dtype=float)"
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers; got dtype {arr.dtype}. Convert it first, "
            f"e.g. {name}.astype(np.float64)"
        )


def _scipy_function(name: str, dtype: np.dtype[Any]) -> Callable[..., Any]:
    """SciPy's own function, for input that fastce's kernels do not compute."""
    try:
        special = importlib.import_module("scipy.special")
    except ImportError:
        raise TypeError(
            f"fastce computes float16, float32 and float64 (integers as float64); {dtype} input "
            f"needs SciPy (pip install scipy), to which fastce.scipy.{name} passes it"
        ) from None
    return cast("Callable[..., Any]", getattr(special, name))


def _needs_scipy(*arrays: _Array | None) -> bool:
    """Complex or extended-precision input, which the kernels do not compute."""
    return any(
        a is not None and a.dtype.kind in "fc" and not _kernel_dtype(a.dtype) for a in arrays
    )


def _reduced_axes(axis: _Axis, ndim: int) -> tuple[int, ...]:
    """SciPy's ``axis``: None for every axis, an integer, or a tuple of them,
    normalised and sorted; NumPy's errors for a bad one."""
    if axis is None:
        return tuple(range(ndim))
    # a tuple, as NumPy's reductions take it (a list is refused there too)
    items = axis if isinstance(axis, tuple) else (axis,)
    axes = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise TypeError(f"axis must be an integer or a tuple of integers, not {item!r}")
        try:
            value = operator.index(item)
        except TypeError:
            raise TypeError(
                f"axis must be None, an integer or a tuple of integers; got "
                f"{type(item).__name__} {item!r}"
            ) from None
        if not -ndim <= value < ndim:
            raise np.exceptions.AxisError(value, ndim)
        axes.append(value % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"duplicate value in 'axis': {axis!r}")
    return tuple(sorted(axes))


# ---- the class view ----------------------------------------------------------


class _ClassView:
    """``x`` seen as ``(outer, C, inner)`` with the reduced axes merged into
    the class axis ``C``, and the way back to the caller's axes.

    The axes are taken in the order of their strides (size-one axes go where
    they fit), so that the reduced axes are adjacent in memory and the
    reshape needs no copy; when the strides interleave reduced and kept
    axes, or cannot be merged, the input is copied with the reduced axes
    last."""

    def __init__(self, x: _Array, reduced: tuple[int, ...]) -> None:
        ndim = x.ndim
        kept = [ax for ax in range(ndim) if ax not in reduced]
        found = self._memory_order(x, reduced, kept)
        x3 = None if found is None else self._view3(x.transpose(found), found, reduced)
        order = tuple(kept) + reduced if found is None or x3 is None else found
        if x3 is None:
            xt = np.ascontiguousarray(x.transpose(order))
            x3 = xt.reshape(math.prod(xt.shape[: len(kept)]), -1, 1)
        self.x3 = x3
        self.order = order
        self.shape = x.shape
        # the kept axes in the order the kernel's (outer, inner) result holds them
        self.kept_order = tuple(ax for ax in order if ax not in reduced)
        self.kept = tuple(kept)

    @staticmethod
    def _memory_order(
        x: _Array, reduced: tuple[int, ...], kept: list[int]
    ) -> tuple[int, ...] | None:
        """An order of the axes, outermost first in memory, in which the
        reduced axes are adjacent; None if the strides interleave them."""
        big = sorted(
            (ax for ax in range(x.ndim) if x.shape[ax] > 1),
            key=lambda ax: -abs(x.strides[ax]),
        )
        positions = [i for i, ax in enumerate(big) if ax in reduced]
        if positions and positions[-1] - positions[0] + 1 != len(positions):
            return None
        first = positions[0] if positions else len(big)
        before = [ax for ax in big[:first] if ax not in reduced]
        after = [ax for ax in big[first:] if ax not in reduced]
        # size-one axes: the kept ones lead, the reduced ones join the class axis
        ones_kept = [ax for ax in kept if x.shape[ax] <= 1]
        ones_reduced = [ax for ax in reduced if x.shape[ax] <= 1]
        block = [ax for ax in big if ax in reduced] + ones_reduced
        return tuple(ones_kept + before + block + after)

    @staticmethod
    def _view3(xt: _Array, order: tuple[int, ...], reduced: tuple[int, ...]) -> _Array | None:
        """``xt`` (the axes in ``order``) as ``(outer, C, inner)``, or None if
        that needs a copy."""
        where = [i for i, ax in enumerate(order) if ax in reduced]
        lo, hi = (where[0], where[-1] + 1) if where else (len(order), len(order))
        shape = xt.shape
        return writable_view(
            xt, (math.prod(shape[:lo]), math.prod(shape[lo:hi]), math.prod(shape[hi:]))
        )

    def kept_result(self, r2: _Array) -> _Array:
        """A kernel's ``(outer, inner)`` result as an array of the kept axes,
        in the caller's order."""
        shape = tuple(self.shape[ax] for ax in self.kept_order)
        r = r2.reshape(shape)
        return r.transpose([self.kept_order.index(ax) for ax in self.kept])

    def per_class_buffer(self, dtype: np.dtype[Any]) -> tuple[_Array, _Array]:
        """A new array of the caller's shape and ``dtype`` for a per-class
        result, and its ``(outer, C, inner)`` view for the kernel to write."""
        buffer = np.empty(tuple(self.shape[ax] for ax in self.order), dtype=dtype)
        return self.per_class_result(buffer.reshape(self.x3.shape)), buffer.reshape(self.x3.shape)

    def per_class_result(self, result3: _Array) -> _Array:
        """The caller's view of a C-ordered ``(outer, C, inner)`` per-class result."""
        transposed = result3.reshape(tuple(self.shape[ax] for ax in self.order))
        return transposed.transpose(np.argsort(self.order))


# ---- logsumexp ---------------------------------------------------------------


def logsumexp(
    a: ArrayLike,
    axis: _Axis = None,
    b: ArrayLike | None = None,
    keepdims: bool = False,
    return_sign: bool = False,
) -> Any:
    """``log(sum(b * exp(a)))`` over ``axis``, as ``scipy.special.logsumexp``.

    Parameters
    ----------
    a : array_like
        Input; integers and bools are computed in float64.
    axis : None, int or tuple of ints, default None
        The axes summed over; None sums every element.
    b : array_like, optional
        Factors of ``exp(a)``, broadcast against ``a``; they may be zero (an
        element of weight zero adds nothing, even where ``a`` is infinite or
        NaN) or negative.
    keepdims : bool, default False
        Keep the reduced axes, of length one.
    return_sign : bool, default False
        Return ``(log(abs(s)), sign(s))`` of the sum ``s``; without it a
        negative sum gives NaN.

    Returns
    -------
    res : ndarray or scalar
        Of SciPy's dtype: that of ``a`` and ``b`` promoted, float64 for
        integers.  A 0-d result is a NumPy scalar.
    sgn : ndarray or scalar
        With ``return_sign``: +1, 0 or -1, NaN where ``res`` is NaN.

    Notes
    -----
    Complex and ``longdouble`` input is passed to SciPy's own function when
    SciPy is installed, and raises ``TypeError`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from fastce.scipy import logsumexp
    >>> float(round(logsumexp(np.arange(10)), 6))
    9.45863
    >>> logsumexp([1, 2], b=[1, -1], return_sign=True)
    (np.float64(1.5413248546129181), np.float64(-1.0))
    """
    a_arr = as_array(a)
    b_arr = None if b is None else as_array(b)
    if _needs_scipy(a_arr, b_arr):
        both = a_arr.dtype if b_arr is None else np.result_type(a_arr.dtype, b_arr.dtype)
        lse = _scipy_function("logsumexp", both)
        return lse(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
    _refuse_unconvertible(a_arr, "a")
    dtype = _promoted(a, a_arr, b, b_arr)
    if a_arr.ndim == 0:
        a_arr = a_arr.reshape(1)
    if b_arr is not None:
        try:
            shape = np.broadcast_shapes(a_arr.shape, b_arr.shape)
        except ValueError:
            raise ValueError(
                f"Array shapes are incompatible for broadcasting: a has shape {a_arr.shape}, "
                f"b has shape {b_arr.shape}"
            ) from None
        if len(shape) > a_arr.ndim:
            a_arr = a_arr.reshape((1,) * (len(shape) - a_arr.ndim) + a_arr.shape)
    else:
        shape = a_arr.shape
    reduced = _reduced_axes(axis, len(shape))
    sgn: _Array | None
    if math.prod(shape) == 0:
        kept_shape = tuple(1 if ax in reduced else n for ax, n in enumerate(shape))
        out = np.full(kept_shape, -np.inf, dtype=dtype)
        sgn = np.sign(out)
    elif b_arr is None:
        out, sgn = _logsumexp(a_arr, reduced, dtype, return_sign)
    else:
        out, sgn = _weighted_logsumexp(a_arr, b_arr, shape, reduced, dtype)
        if not return_sign:
            out[sgn < 0] = np.nan
    if not keepdims:
        out = out.reshape(tuple(n for ax, n in enumerate(out.shape) if ax not in reduced))
        sgn = sgn.reshape(out.shape) if sgn is not None else None
    if return_sign:
        assert sgn is not None  # computed: return_sign
        return _scalar_if_0d(out), _scalar_if_0d(sgn)
    return _scalar_if_0d(out)


def _promoted(a: object, a_arr: _Array, b: object, b_arr: _Array | None) -> np.dtype[Any]:
    """SciPy's result dtype: ``a`` and ``b`` promoted as NumPy promotes them (a
    Python scalar ``b`` is weak), integers and bools to float64."""
    if b_arr is None:
        dtype = a_arr.dtype
    else:
        _refuse_unconvertible(b_arr, "b")
        weak_b: Any = b if isinstance(b, (int, float)) and not isinstance(b, bool) else b_arr.dtype
        weak_a: Any = a if isinstance(a, (int, float)) and not isinstance(a, bool) else a_arr.dtype
        dtype = np.result_type(weak_a, weak_b)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _computable(x: _Array) -> _Array:
    """``x`` in a dtype the kernels read: float16/32/64 as they are, other
    real numbers in float64."""
    return x if _kernel_dtype(x.dtype) else x.astype(np.float64)


def _logsumexp(
    a: _Array, reduced: tuple[int, ...], dtype: np.dtype[Any], return_sign: bool
) -> tuple[_Array, _Array | None]:
    """The unweighted log-sum-exp over ``reduced`` with the reduced axes kept
    (of length one), and its sign when asked for."""
    view = _ClassView(_computable(a), reduced)
    lse = np.asarray(_functional.logsumexp(view.x3, axis=1))
    _refine_near_zero(view.x3, lse)
    out = _keepdims(view.kept_result(lse), reduced, dtype)
    sgn = None
    if return_sign:
        # the sign of the sum of exponentials: 0 for a sum of nothing but
        # exp(-inf), NaN beside a NaN
        with np.errstate(invalid="ignore"):
            sgn = np.where(out == -np.inf, 0.0, 1.0).astype(dtype)
        sgn[np.isnan(out)] = np.nan
    return out, sgn


# below it, a log-sum-exp loses the relative precision of its last bits in
# max + log(sum), whose sum includes exp(0) = 1 for the maximum
_NEAR_ZERO = 2.0**-4


def _refine_near_zero(x3: _Array, lse: _Array) -> None:
    """Recomputes the log-sum-exps ``lse`` (``(outer, inner)``) of the rows of
    ``x3`` whose value is near zero, as SciPy does (gh-18295):
    ``max + log(k) + log1p(s / k)`` with ``s`` the sum over the elements
    below the maximum and ``k`` the count of maxima.  The kernel's
    ``max + log(sum)`` is exact to the float's precision in absolute terms,
    which near zero is no relative precision at all."""
    with np.errstate(invalid="ignore"):
        near = np.nonzero(np.abs(lse) < _NEAR_ZERO)
    if not near[0].size:
        return
    rows = x3[near[0], :, near[1]].astype(lse.dtype)
    peak = rows.max(axis=1, keepdims=True)
    is_peak = rows == peak
    count = is_peak.sum(axis=1)
    below = np.exp(rows - peak, where=~is_peak, out=np.zeros_like(rows)).sum(axis=1)
    lse[near] = np.log1p(below / count) + np.log(count) + peak[:, 0]


def _keepdims(r: _Array, reduced: tuple[int, ...], dtype: np.dtype[Any]) -> _Array:
    """A kept-axes result with the reduced axes as length-one axes, as a new
    C-ordered array of ``dtype``."""
    return np.ascontiguousarray(np.expand_dims(r, reduced), dtype=dtype)


def _weighted_logsumexp(
    a: _Array, b: _Array, shape: tuple[int, ...], reduced: tuple[int, ...], dtype: np.dtype[Any]
) -> tuple[_Array, _Array]:
    """``log(abs(s))`` and ``sign(s)`` of ``s = sum(b * exp(a))``: the positive
    and the negative terms are each a log-sum-exp of ``a + log(abs(b))``,
    combined as ``hi + log1p(-exp(lo - hi))``.  A sum that is not finite
    this way is computed directly, as SciPy computes it."""
    compute = np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b_c = b.astype(compute, copy=False)
        log_b = np.log(np.abs(b_c))
        shifted = np.add(a, log_b, dtype=compute)
        zero = b_c == 0
        if zero.any():
            # a zero weight adds nothing, even beside an infinite or NaN a
            shifted[np.broadcast_to(zero, shape)] = -np.inf
        negative = np.broadcast_to(b_c < 0, shape)
        if negative.any():
            lse_pos = _logsumexp(np.where(negative, -np.inf, shifted), reduced, compute, False)[0]
            lse_neg = _logsumexp(np.where(negative, shifted, -np.inf), reduced, compute, False)[0]
            hi = np.maximum(lse_pos, lse_neg)
            lo = np.minimum(lse_pos, lse_neg)
            out = hi + np.log1p(-np.exp(lo - hi))
            sgn = np.sign(lse_pos - lse_neg)
        else:
            out = _logsumexp(shifted, reduced, compute, False)[0]
            sgn = np.ones_like(out)
        bad = ~np.isfinite(out)
        if bad.any():
            _direct(a, b, shape, reduced, bad, out, sgn)
    return out.astype(dtype, copy=False), sgn.astype(dtype, copy=False)


def _direct(
    a: _Array,
    b: _Array,
    shape: tuple[int, ...],
    reduced: tuple[int, ...],
    bad: _Array,
    out: _Array,
    sgn: _Array,
) -> None:
    """``log(abs(s))`` and ``sign(s)`` of ``s = sum(b * exp(a))`` computed
    term by term at the positions ``bad``: SciPy's answer where the stable
    computation is not finite (an infinite or NaN term, a sum of zero)."""
    # a leading axis of one, so that a sum over every axis still has a kept one
    kept = [0] + [ax + 1 for ax in range(len(shape)) if ax not in reduced]
    summed = [ax + 1 for ax in reduced]
    full = (1,) + shape
    positions = np.nonzero(bad.reshape(tuple(full[ax] for ax in kept)))
    destination = list(range(len(kept), len(full)))
    a_rows = np.moveaxis(np.broadcast_to(a, shape)[None], summed, destination)[positions]
    b_rows = np.moveaxis(np.broadcast_to(b, shape)[None], summed, destination)[positions]
    n = a_rows.shape[0]
    terms = b_rows.reshape(n, -1) * np.exp(a_rows.reshape(n, -1).astype(out.dtype))
    s = terms.sum(axis=1)
    out[bad] = np.log(np.abs(s))
    sgn[bad] = np.sign(s)


def _scalar_if_0d(r: _Array) -> Any:
    return r[()] if r.ndim == 0 else r


# ---- softmax and log_softmax -------------------------------------------------


def softmax(x: ArrayLike, axis: _Axis = None) -> Any:
    """``exp(x) / sum(exp(x))`` over ``axis``, as ``scipy.special.softmax``.

    Parameters
    ----------
    x : array_like
        Input; integers are computed as NumPy's ``exp`` takes them (int8 and
        uint8 in float16, int16 in float32, wider in float64).
    axis : None, int or tuple of ints, default None
        The axes the softmax is taken over (together); None means the whole
        array.

    Returns
    -------
    ndarray or scalar
        The input's shape (a scalar for 0-d input), summing to one over
        ``axis``; SciPy's dtype.

    Notes
    -----
    Complex and ``longdouble`` input is passed to SciPy's own function when
    SciPy is installed, and raises ``TypeError`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from fastce.scipy import softmax
    >>> x = np.arange(6.0).reshape(2, 3)
    >>> float(softmax(x).sum())  # over the whole array, as SciPy's default
    1.0
    >>> softmax(x, axis=1).round(4)
    array([[0.09  , 0.2447, 0.6652],
           [0.09  , 0.2447, 0.6652]])
    """
    return _per_class(x, axis, "softmax")


def log_softmax(x: ArrayLike, axis: _Axis = None) -> Any:
    """``log(softmax(x))`` over ``axis``, computed stably, as
    ``scipy.special.log_softmax``.

    Parameters and returns as :func:`softmax`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastce.scipy import log_softmax
    >>> log_softmax(np.array([1000.0, 1.0]))
    array([   0., -999.])
    """
    return _per_class(x, axis, "log_softmax")


def _per_class(x: ArrayLike, axis: _Axis, name: str) -> Any:
    arr = as_array(x)
    if _needs_scipy(arr):
        return _scipy_function(name, arr.dtype)(x, axis=axis)
    if arr.dtype.kind == "b":
        raise TypeError(
            f"{name} of booleans is not defined (SciPy's subtraction refuses them); "
            f"convert them first, e.g. x.astype(np.float64)"
        )
    _refuse_unconvertible(arr, "x")
    # NumPy's exp of integers: the narrowest float that holds them
    dtype = arr.dtype if arr.dtype.kind == "f" else np.result_type(arr.dtype, np.float16)
    zero_d = arr.ndim == 0
    reduced = _reduced_axes(axis, arr.ndim)
    if zero_d:
        arr = arr.reshape(1)
        reduced = (0,)
    if math.prod(arr.shape[ax] for ax in reduced) == 0:
        raise ValueError(
            f"{name} over zero elements: the reduced axes {reduced} of shape {arr.shape} are "
            f"empty (SciPy raises: zero-size array to reduction operation maximum which has "
            f"no identity)"
        )
    # float16 is read as it is and computed in float32
    computed = np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    view = _ClassView(arr if _kernel_dtype(arr.dtype) else arr.astype(computed), reduced)
    kernel = _functional.softmax if name == "softmax" else _functional.log_softmax
    if view.x3.size and view.x3.flags.c_contiguous:
        # the kernel's own result, C-ordered as the view: memory it knows to be
        # new, which it writes through the caches (a fresh out= it would stream)
        result3 = cast(_Array, kernel(view.x3, axis=1))
        result = view.per_class_result(result3)
    else:
        result, result3 = view.per_class_buffer(computed)
        if result.size:
            kernel(view.x3, axis=1, out=result3)
    if result.size and name == "log_softmax":
        _log_softmax_infinite_rows(view.x3, result3)
    if result.dtype != dtype:
        result = result.astype(dtype)
    return result[0] if zero_d else result


def _log_softmax_infinite_rows(x3: _Array, out3: _Array) -> None:
    """SciPy's log_softmax of a row whose maximum is +inf: NaN at the +inf
    elements, -inf at the others (x - inf).  The kernel gives such a row NaN
    throughout, as torch does, and a row without NaN in its first element
    has none anywhere, so only those rows are read again."""
    first = out3[:, 0, :]
    suspects = np.nonzero(np.isnan(first))
    if not suspects[0].size:
        return
    rows = x3[suspects[0], :, suspects[1]]  # (k, C)
    fix = np.isposinf(rows).any(axis=1) & ~np.isnan(rows).any(axis=1)
    if not fix.any():
        return
    fixed = np.where(np.isposinf(rows[fix]), np.nan, -np.inf)
    out3[suspects[0][fix], :, suspects[1][fix]] = fixed
