"""Helpers the test files share: the class axis PyTorch's rule gives, the
memory layouts a case's arrays are laid out in, and the one generator of
cross-entropy cases (logits, target, weight, options) the reference, gradient,
metrics and torch tests draw from."""

from typing import NamedTuple

import numpy as np

# every layout arrange() makes
LAYOUTS = ("C", "F", "strided", "reversed", "byteswapped", "readonly")


def class_axis(ndim, axis):
    """The class axis of ``ndim``-d logits: ``axis``, or PyTorch's rule (1,
    or 0 for an unbatched row) for None."""
    return (1 if ndim >= 2 else 0) if axis is None else axis % ndim


def loss_shape(shape, axis):
    """The per-sample loss's shape: ``shape`` without its class axis."""
    ax = class_axis(len(shape), axis)
    return tuple(shape[:ax]) + tuple(shape[ax + 1 :])


class Case(NamedTuple):
    logits: np.ndarray
    target: np.ndarray
    weight: np.ndarray | None
    kwargs: dict  # the options to pass: axis, ignore_index, label_smoothing


def make_case(rng, shape, axis, dtype=np.float64, option=(), index_dtype=np.int64, scale=2.0):
    """A cross-entropy case of ``shape`` with class axis ``axis``, or None when
    ``option`` cannot be expressed in ``index_dtype`` (a negative ignore_index
    in an unsigned type).  ``option`` (a dict) may ask for:

    - ``weight``: a weight per class, in [0.1, 2);
    - ``prob``: probability targets (of the logits' shape) instead of class indices;
    - ``ignore_index``: passed on, and about 30 % of the targets set to it
      (one sample always stays counted);
    - ``label_smoothing``: passed on;
    - ``specials``: a NaN, a +inf and two -inf among the logits.
    """
    option = dict(option)
    ax = class_axis(len(shape), axis)
    n_classes = shape[ax]
    tshape = loss_shape(shape, axis)
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    kwargs = {"axis": axis}
    if "label_smoothing" in option:
        kwargs["label_smoothing"] = option["label_smoothing"]
    weight = rng.uniform(0.1, 2.0, n_classes) if option.get("weight") else None
    if option.get("specials") and logits.size:
        flat = logits.reshape(-1)
        idx = rng.choice(flat.size, size=min(4, flat.size), replace=False)
        flat[idx] = np.array([np.nan, np.inf, -np.inf, -np.inf], dtype)[: idx.size]
        logits = flat.reshape(shape)
    if option.get("prob"):
        target = rng.random(shape)
        if n_classes:
            target /= target.sum(axis=ax, keepdims=True)
        return Case(logits, target.astype(dtype), weight, kwargs)
    ignore = option.get("ignore_index")
    if ignore is not None and ignore < 0 and np.dtype(index_dtype).kind == "u":
        return None
    target = np.asarray(rng.integers(0, max(n_classes, 1), size=tshape))
    if ignore is not None:
        kwargs["ignore_index"] = ignore
        target = np.asarray(np.where(rng.random(tshape) < 0.3, ignore, target))
        if target.size and (target == ignore).all():
            target.reshape(-1)[-1] = (ignore + 1) % n_classes
    return Case(logits, target.astype(index_dtype), weight, kwargs)


def arrange(a, layout):
    """The values of ``a`` in one of LAYOUTS: C or Fortran order, every
    other element of a larger array, negative strides, the other byte
    order, or read-only."""
    a = np.asarray(a)
    if layout == "C" or a.ndim == 0 and layout in ("F", "strided", "reversed"):
        return np.array(a, order="C")
    if layout == "F":
        return np.array(a, order="F")
    if layout == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "reversed":
        return np.flip(np.flip(a).copy())
    if layout == "byteswapped":
        return a.astype(a.dtype.newbyteorder())
    if layout == "readonly":
        b = a.copy()
        b.setflags(write=False)
        return b
    raise AssertionError(layout)
