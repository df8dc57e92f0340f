"""Helpers the test files share: the class axis PyTorch's rule gives, and
the memory layouts a case's arrays are laid out in."""

import numpy as np

# every layout arrange() makes
LAYOUTS = ("C", "F", "strided", "reversed", "byteswapped", "readonly")


def class_axis(ndim, axis):
    """The class axis of ``ndim``-d logits: ``axis``, or PyTorch's rule (1,
    or 0 for an unbatched row) for None."""
    return (1 if ndim >= 2 else 0) if axis is None else axis % ndim


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
