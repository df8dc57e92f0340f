"""Helpers the test files share: the class axis PyTorch's rule gives, the
memory layouts a case's arrays are laid out in, and the one generator of
cross-entropy cases (logits, target, weight, options) the reference, gradient,
metrics, torch and fuzz tests draw from."""

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


def arrange(a, layout, rng=None):
    """The values of ``a`` in a memory layout: C or Fortran order; every
    other element (``rng``: every k-th) of a larger array (``strided``); all
    axes (``rng``: some) walked backwards (``reversed``); the other byte order;
    read-only; axes permuted in memory; one byte off alignment; and for the
    fuzzer, a list, a torch tensor, and layouts that change the values:
    ``broadcast`` (zero strides) and ``overlap`` (elements sharing memory),
    which is why a reference is always computed from the array this returns."""
    a = np.array(a, order="C")  # np.ascontiguousarray would make 0-d arrays 1-d
    if layout == "C" or (
        a.ndim == 0 and layout not in ("list", "readonly", "misaligned", "byteswapped")
    ):
        return a
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "reversed":
        flips = tuple(
            slice(None, None, -1) if rng is None or rng.random() < 0.6 else slice(None)
            for _ in range(a.ndim)
        )
        return np.array(a[flips], order="C")[flips]
    if layout == "strided":
        steps = [2 if rng is None else int(rng.integers(1, 4)) for _ in range(a.ndim)]
        big = np.zeros(tuple(s * k + 1 for s, k in zip(a.shape, steps)), dtype=a.dtype)
        view = big[tuple(slice(1, None, k) for k in steps)][tuple(slice(0, s) for s in a.shape)]
        view[...] = a
        return view
    if layout == "byteswapped":
        return a.astype(a.dtype.newbyteorder())
    if layout == "readonly":
        a.setflags(write=False)
        return a
    if layout == "permuted":
        perm = np.arange(a.ndim)[::-1] if rng is None else rng.permutation(a.ndim)
        inverse = np.argsort(perm)
        return np.array(a.transpose(perm), order="C").transpose(inverse)
    if layout == "misaligned":
        if a.dtype.itemsize == 1 or a.dtype.kind == "O":
            return a
        raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
        view = raw[1:].view(a.dtype).reshape(a.shape)
        view[...] = a
        return view
    if layout == "broadcast":
        axes = [i for i, s in enumerate(a.shape) if s > 1]
        if not axes:
            return a
        axis = axes[0] if rng is None else int(rng.choice(axes))
        return np.broadcast_to(a.take([0], axis=axis), a.shape)
    if layout == "overlap":
        if a.size == 0 or a.dtype.kind == "O":
            return a
        steps = [1 if rng is None else int(rng.integers(0, 3)) for _ in range(a.ndim)]
        n = 1 + sum((s - 1) * k for s, k in zip(a.shape, steps))
        flat = np.resize(a.reshape(-1), n)
        strides = tuple(k * a.dtype.itemsize for k in steps)
        return np.lib.stride_tricks.as_strided(flat, a.shape, strides, writeable=False)
    if layout == "list":
        # an empty array's tolist() forgets its shape
        if not 0 < a.size <= 64 or a.dtype not in (np.float64, np.int64):
            return a
        return a.tolist()
    if layout == "torch":
        try:
            import torch
        except ImportError:
            return a
        if a.dtype not in TORCH_DTYPES:
            return a
        return torch.from_numpy(a.copy())
    raise AssertionError(layout)


# what torch.from_numpy takes
TORCH_DTYPES = tuple(
    np.dtype(d)
    for d in (
        np.float16,
        np.float32,
        np.float64,
        np.int32,
        np.int64,
        np.uint8,
        np.int8,
        np.int16,
        np.bool_,
    )
)
