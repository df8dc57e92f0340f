"""Property-based fuzzing of every public function: malformed input never crashes.

Each example is a call to one public function built from random shapes (0-d
to 5-d, zero-length axes), dtypes (every NumPy kind, both byte orders,
objects), memory layouts (Fortran order, negative, zero and overlapping
strides, misaligned and read-only buffers, lists, torch tensors), values
(NaN, +-inf, +-3e38, subnormals), targets (out of range, negative, huge,
``ignore_index``), weights, ``out=`` buffers and options.  A case starts
valid; a random set of *faults* then breaks it in ways whose error type
SPEC's table fixes.  The call must then

* succeed when no fault was applied, with the reference's value (to a
  tolerance scaled by the magnitudes involved), the result dtype and shape,
  ``out`` returned when given, and no warning but the single-class one;
* raise one of the faults' error types otherwise, writing nothing: every
  input and ``out`` keep their bytes;
* never modify an input (except ``out=logits``), and never crash.

Valid calls also come from the suite's one case generator (``cases.make_case``,
in every layout ``cases.arrange`` makes, with logit transforms), which must
give the reference's value.

The default run is short.  ``python tests/fuzz_long.py`` runs the same
properties for many more examples (``FASTCE_FUZZ_EXAMPLES`` sets the count
per test; ``FASTCE_FUZZ_LOG`` names a file that receives every case just
before it runs, so a crash leaves its input behind).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from cases import arrange, make_case  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastce  # noqa: E402
from fastce import _kernels  # noqa: E402
from fastce import reference as ref  # noqa: E402

try:  # torch tensors are one more kind of input, when torch is installed
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

EXAMPLES = int(os.environ.get("FASTCE_FUZZ_EXAMPLES", "300"))
LOG_PATH = os.environ.get("FASTCE_FUZZ_LOG")

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)

SPEC_ERRORS = (TypeError, ValueError, IndexError)

# --------------------------------------------------------------------------
# dtypes

FLOAT_DTYPES = [np.dtype(f"{order}{code}") for code in ("f2", "f4", "f8") for order in "<>"]
INT_DTYPES = [
    np.dtype(f"{order}{code}")
    for code in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
    for order in "<>"
]
# every kind of dtype that is not float16/32/64: all must be refused as logits
NON_FLOAT_DTYPES = [
    np.dtype(bool),
    np.dtype("i1"),
    np.dtype("<i4"),
    np.dtype(">i8"),
    np.dtype("u1"),
    np.dtype(">u8"),
    np.dtype("<c8"),
    np.dtype(">c16"),
    np.dtype(np.longdouble),
    np.dtype(object),
    np.dtype("U3"),
    np.dtype("S3"),
    np.dtype("V8"),
    np.dtype([("a", "<f4"), ("b", "<f4")]),
    np.dtype("M8[ns]"),
    np.dtype(">m8[s]"),
]
# dtypes a class-index target may not have
NON_INDEX_TARGET_DTYPES = [
    np.dtype("<c8"),
    np.dtype(object),
    np.dtype("U2"),
    np.dtype("S2"),
    np.dtype("M8[D]"),
    np.dtype("m8[ns]"),
    np.dtype("V4"),
]
# dtypes ``weight``, ``pos_weight`` and ``grad_output`` may not have
NON_REAL_DTYPES = [
    np.dtype(bool),
    np.dtype("<c16"),
    np.dtype(object),
    np.dtype("U4"),
    np.dtype("M8[s]"),
]

# values every float array may be seeded with
SPECIALS = np.array(
    [
        np.nan,
        np.inf,
        -np.inf,
        3e38,
        -3e38,
        1e-45,
        -1e-45,
        1e-310,
        -1e-310,
        0.0,
        -0.0,
        1e4,
        -1e4,
        88.7,
        -103.9,
        1.0,
        6e4,
        -7e2,
    ]
)


def result_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype).itemsize == 8 else np.dtype(np.float32)


def index_dtype_range(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


# --------------------------------------------------------------------------
# building arrays: valid NumPy operations only, then a layout


def cast(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` in ``dtype`` (overflow to inf is intended, not reported)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(values).astype(dtype)


def finite_cast(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` in ``dtype`` with what overflowed replaced by 0.5: targets
    hold finite garbage, not infinities (an infinite target makes ``0 * inf``
    in every formula, the reference's included)."""
    a = cast(values, dtype)
    return np.where(np.isinf(a), a.dtype.type(0.5), a) if a.dtype.kind == "f" else a


def non_float_array(shape, dtype: np.dtype, rng) -> np.ndarray:
    """An array of ``shape`` and a dtype of any kind, built without errors."""
    n = int(np.prod(shape, dtype=np.int64))
    small = rng.integers(0, 3, size=n)
    if dtype.kind in "biuf":
        flat = small.astype(dtype)
    elif dtype.kind == "c":
        flat = (small + 1j * small).astype(dtype)
    elif dtype.kind == "O":
        flat = np.empty(n, dtype=object)
        flat[:] = [float(v) for v in small]
    elif dtype.kind == "U":
        flat = small.astype(str).astype(dtype)
    elif dtype.kind == "S":
        flat = small.astype(str).astype("S").astype(dtype)
    elif dtype.kind in "Mm":
        flat = small.astype(np.int64).view(dtype.newbyteorder("=")).astype(dtype)
    else:  # void and structured
        flat = np.zeros(n, dtype=dtype)
    return flat.reshape(shape)


LAYOUTS = (
    "C",
    "C",
    "F",
    "reversed",
    "strided",
    "permuted",
    "misaligned",
    "readonly",
    "broadcast",
    "overlap",
    "list",
    "torch",
)


def float_values(shape, rng, special_rate: float, scale: float) -> np.ndarray:
    x = np.asarray(rng.standard_normal(shape) * scale)
    if special_rate and x.size:
        mask = rng.random(shape) < special_rate
        x[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
    return x


def as_array(a) -> np.ndarray:
    """What fastce sees: ``numpy.asarray`` of the argument."""
    return np.asarray(a)


def is_array_like(a) -> bool:
    return isinstance(a, np.ndarray) or (torch is not None and isinstance(a, torch.Tensor))


def self_overlapping(a) -> bool:
    """Whether two elements of ``a`` share memory (zero or overlapping strides)."""
    if not isinstance(a, np.ndarray) or a.size <= 1:
        return False
    span = sum((s - 1) * abs(st_) for s, st_ in zip(a.shape, a.strides)) + a.itemsize
    return span < a.size * a.itemsize or any(
        st_ == 0 and s > 1 for s, st_ in zip(a.shape, a.strides)
    )


# --------------------------------------------------------------------------
# a case and its checks


@dataclass
class Case:
    """One call: what to call, what it must raise or return, and what it may touch."""

    name: str
    call: Callable[[], Any]
    args: dict
    errors: tuple = ()  # empty: the call must succeed
    expect: Callable[[], Any] | None = None  # the reference result, for valid calls
    check: Callable[[Any, Any], None] | None = None
    writes: tuple = ()  # arrays a successful call may write (out, or logits)
    warns_single_class: bool = False
    faults: tuple = ()

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))

    def __repr__(self):
        lines = [
            f"{self.name}  faults={list(self.faults)}  errors={[e.__name__ for e in self.errors]}"
        ]
        for key, value in self.args.items():
            lines.append(f"    {key} = {describe(value)}")
        return "\n".join(lines)


def describe(value) -> str:
    if isinstance(value, np.ndarray):
        with np.printoptions(threshold=40, edgeitems=3, precision=4):
            text = np.array2string(value, separator=", ") if value.dtype.kind != "V" else "..."
        return (
            f"ndarray(dtype={value.dtype.str}, shape={value.shape}, strides={value.strides}, "
            f"aligned={value.flags.aligned}, writeable={value.flags.writeable}) {text}"
        )
    if torch is not None and isinstance(value, torch.Tensor):
        return f"torch.tensor(dtype={value.dtype}, shape={tuple(value.shape)})"
    if isinstance(value, list):
        return f"list {np.asarray(value).shape}"
    return repr(value)


def snapshot(value):
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    if torch is not None and isinstance(value, torch.Tensor):
        return np.array(value.numpy(), copy=True)
    return None


def unchanged(value, before) -> bool:
    if isinstance(value, np.ndarray):
        return (
            value.tobytes() == before.tobytes()
            if value.dtype.kind != "O"
            else bool(np.all(value == before))
        )
    if torch is not None and isinstance(value, torch.Tensor):
        return value.numpy().tobytes() == before.tobytes()
    return True


def run_case(case: Case) -> None:
    if LOG_PATH:
        with open(LOG_PATH, "w") as log:
            log.write(repr(case) + "\n")
    watched = [(k, v, snapshot(v)) for k, v in case.args.items() if is_array_like(v)]
    expected = None
    if not case.errors:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = case.expect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = case.call()
        except SPEC_ERRORS as exc:
            if not case.errors:
                raise AssertionError(f"a valid call raised {exc!r}") from exc
            assert isinstance(exc, case.errors), (
                f"raised {type(exc).__name__} ({exc}); SPEC says "
                f"{[e.__name__ for e in case.errors]}"
            )
            assert str(exc), "an error without a message"
            for key, value, before in watched:
                assert unchanged(value, before), f"a failing call wrote to {key}"
            for w in caught:
                assert issubclass(w.category, RuntimeWarning) and "single class" in str(
                    w.message
                ), f"unexpected warning {w.category.__name__}: {w.message}"
            return
    if case.errors:
        raise AssertionError(f"expected {[e.__name__ for e in case.errors]}; the call returned")
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    single = [m for m in messages if m.startswith("RuntimeWarning") and "single class" in m]
    assert len(single) == len(messages), f"unexpected warnings: {messages}"
    assert bool(single) == case.warns_single_class, f"single-class warning: {messages}"
    case.check(result, expected)
    for key, value, before in watched:
        if not any(value is w for w in case.writes):
            assert unchanged(value, before), f"the call modified its input {key}"


# --------------------------------------------------------------------------
# comparisons with the reference


def eps_for(dtype) -> float:
    return 1e-10 if np.dtype(dtype) == np.float64 else 3e-5


def assert_close(got, want, bound, dtype, what):
    """``got`` equals ``want`` (the float64 reference, rounded to ``dtype``)
    within ``bound``; NaN where the reference has NaN, the same infinities."""
    got = np.asarray(got, dtype=np.float64)
    with np.errstate(all="ignore"):
        want = np.asarray(want, dtype=np.float64).astype(dtype).astype(np.float64)
    bound = np.nan_to_num(np.broadcast_to(np.asarray(bound, dtype=np.float64), want.shape), nan=0.0)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_got, nan_want), (
        f"{what}: NaN where the reference has none, or the other way round:\n"
        f"got  {got[nan_got != nan_want][:5]}\nwant {want[nan_got != nan_want][:5]}"
    )
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: infinities differ"
    finite = np.isfinite(want)
    tiny = np.finfo(dtype).tiny * 4
    with np.errstate(all="ignore"):
        err = np.abs(got - want)
        ok = (got == want) | (err <= bound + tiny) | ~finite
        # within 1% of the largest float32, a float32 result may overflow: x - max(x)
        # overflows there when a row spans more than float32's range, as in PyTorch
        ok |= (
            (np.dtype(dtype) == np.float32)
            & np.isinf(got)
            & (np.sign(got) == np.sign(want))
            & (np.abs(want) >= np.finfo(np.float32).max / 100)
        )
    assert ok.all(), (
        f"{what}: |got - want| too large: got {got[~ok][:5]} want {want[~ok][:5]} "
        f"bound {bound[~ok][:5]}"
    )


def assert_result_array(value, dtype, shape, what):
    assert isinstance(value, np.ndarray), f"{what}: {type(value).__name__}, not an ndarray"
    assert value.dtype == dtype, f"{what}: dtype {value.dtype}, not {dtype}"
    assert value.shape == shape, f"{what}: shape {value.shape}, not {shape}"


def assert_result_loss(value, dtype, reduction, shape, what):
    if reduction == "none" and shape == () and isinstance(value, np.floating):
        value = np.asarray(value)  # one element: a 0-d array or a NumPy scalar
    if reduction == "none":
        assert_result_array(value, dtype, shape, what)
    else:
        assert isinstance(value, np.floating) and not isinstance(value, np.ndarray), (
            f"{what}: {type(value).__name__}, not a NumPy scalar"
        )
        assert value.dtype == dtype, f"{what}: dtype {value.dtype}, not {dtype}"


def row_magnitude(x64: np.ndarray) -> np.ndarray:
    """Per sample (class axis last): the largest finite |logit|, plus log C + 1."""
    if x64.shape[-1] == 0:
        return np.ones(x64.shape[:-1])
    finite = np.where(np.isfinite(x64), np.abs(x64), 0.0)
    return finite.max(axis=-1) + math.log(x64.shape[-1]) + 1.0


# --------------------------------------------------------------------------
# strategy pieces


@st.composite
def shapes(draw, min_ndim=0, max_ndim=5):
    """Small shapes with zero-length axes, and now and then one big enough
    (over 2**15 elements) for the kernels to start a thread team."""
    if draw(st.integers(0, 9)) == 0:
        shape = draw(
            st.sampled_from(
                [
                    (8193, 5),
                    (5, 7000),
                    (3, 4, 3000),
                    (2, 3, 70, 80),
                    (40000,),
                    (2, 20000),
                    (1, 33000),
                    (70, 3, 2, 90),
                    (16500, 2),
                    (3, 2, 2, 2, 1500),
                ]
            )
        )
        if min_ndim <= len(shape) <= max_ndim:
            return shape
    ndim = draw(st.integers(min_ndim, max_ndim))
    return tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))


class ArrayRng:
    """A NumPy generator whose draws with a ``size`` are always arrays, 0-d
    included (``default_rng().random(())`` is a Python float)."""

    def __init__(self, seed):
        self._gen = np.random.default_rng(seed)

    def _call(self, method, *args, size=None, **kwargs):
        value = getattr(self._gen, method)(*args, size=size, **kwargs)
        return value if size is None else np.asarray(value)

    def random(self, size=None):
        return self._call("random", size=size)

    def standard_normal(self, size=None):
        return self._call("standard_normal", size=size)

    def uniform(self, low, high, size=None):
        return self._call("uniform", low, high, size=size)

    def integers(self, low, high=None, size=None, dtype=np.int64):
        return self._call("integers", low, high, size=size, dtype=dtype)

    def choice(self, a, size=None):
        return self._call("choice", a, size=size)

    def permutation(self, n):
        return self._gen.permutation(n)


@st.composite
def rngs(draw):
    return ArrayRng(draw(st.integers(0, 2**32 - 1)))


special_rates = st.sampled_from([0.0, 0.0, 0.05, 0.3, 1.0])
value_scales = st.sampled_from([1.0, 1.0, 4.0, 30.0, 1e4])


@st.composite
def float_input(draw, shape, rng, dtypes=FLOAT_DTYPES, layouts=LAYOUTS):
    """A float array (or list, or tensor) of ``shape`` in any valid float dtype
    and layout, seeded with special values."""
    dtype = draw(st.sampled_from(dtypes))
    values = float_values(shape, rng, draw(special_rates), draw(value_scales))
    return arrange(cast(values, dtype), draw(st.sampled_from(layouts)), rng)


def bad_dtype_array(draw, shape, rng, dtypes, layouts=("C", "F", "reversed", "readonly")):
    dtype = draw(st.sampled_from(dtypes))
    return arrange(non_float_array(shape, dtype, rng), draw(st.sampled_from(layouts)), rng)


integers_like = st.sampled_from([int, np.int64, np.int32, np.int8, np.uint8, np.intp])


def as_int(draw, value: int):
    """``value`` as a Python int or a NumPy integer that holds it."""
    kind = draw(integers_like)
    if kind is int:
        return value
    lo, hi = index_dtype_range(kind)
    return kind(value) if lo <= value <= hi else value


@st.composite
def faults(draw, available):
    """A random set of faults; half of the examples have none."""
    if draw(st.booleans()):
        return frozenset()
    return frozenset(draw(st.lists(st.sampled_from(sorted(available)), min_size=1, max_size=2)))


def bad_axis(draw, ndim):
    return as_int(draw, draw(st.sampled_from([ndim, ndim + 1, -ndim - 1, 64, -1000, 2**40])))


bad_axis_types = st.sampled_from([1.0, "1", True, np.bool_(False), [1], (0,), 1.5])
bad_reductions = st.sampled_from(
    ["Mean", "avg", "", None, 1, b"mean", "elementwise_mean", ("mean",)]
)
bad_smoothing_values = st.sampled_from(
    [-0.1, 1.5, float("nan"), float("inf"), -1e-300, 2, np.float32(-0.5), 1 + 1e-12]
)
bad_smoothing_types = st.sampled_from([None, "abc", True, 1j, [0.1], object()])
bad_ignore_types = st.sampled_from([None, 1.0, "x", True, np.bool_(True), -100.0, [1]])
bad_thread_values = st.sampled_from([0, -1, -(2**40), np.int64(0)])
bad_thread_types = st.sampled_from([1.5, True, "2", None.__class__, [2], np.float64(2.0)])
good_threads = st.sampled_from([None, None, 1, 2, 3, np.int64(2), np.uint8(1), 1 << 20])


def wrong_shape(draw, shape, avoid=()):
    """A shape different from ``shape`` (and from every shape in ``avoid``)."""
    for _ in range(20):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            new = shape + (draw(st.integers(1, 3)),)
        elif kind == 1 and shape:
            new = shape[:-1]
        elif kind == 2 and shape:
            i = draw(st.integers(0, len(shape) - 1))
            new = shape[:i] + (shape[i] + draw(st.integers(1, 3)),) + shape[i + 1 :]
        else:
            new = (draw(st.integers(0, 3)),) + shape
        if new != shape and new not in avoid:
            return new
    return shape + (2, 2)


def out_buffer(draw, shape, dtype, rng):
    """A writable ``out`` of ``shape`` and ``dtype`` in any writable layout
    whose elements each have their own memory."""
    layout = draw(
        st.sampled_from(list(["C", "F", "reversed", "strided", "permuted", "misaligned"]))
    )
    return arrange(cast(float_values(shape, rng, 0.0, 1.0), dtype), layout, rng)


def overlapping_out(draw, shape, dtype, rng):
    """A writable ``out`` of ``shape`` (at least two elements) and ``dtype``
    whose elements share memory: one axis, or more, steps by 0."""
    if int(np.prod(shape, dtype=np.int64)) < 2:
        shape = (2,)
    long_axes = [k for k, n in enumerate(shape) if n > 1]
    zero = draw(st.sampled_from(long_axes))
    steps = [0 if k == zero else int(rng.integers(0, 2)) for k in range(len(shape))]
    n = 1 + sum((size - 1) * k for size, k in zip(shape, steps))
    flat = cast(float_values((n,), rng, 0.0, 1.0), dtype)
    return np.lib.stride_tricks.as_strided(
        flat, shape, tuple(k * flat.itemsize for k in steps), writeable=True
    )


def alias_into_out(draw, shape, dtype, array):
    """A fresh ``out`` of ``shape`` and ``dtype``, and a copy of ``array``
    stored inside out's memory (at a random, aligned place)."""
    n_out = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros((n_out + array.nbytes) // 8 + 1, dtype=np.float64).view(np.uint8)
    out = raw[:n_out].view(dtype).reshape(shape)
    start = draw(st.integers(0, n_out // array.itemsize)) * array.itemsize
    inside = raw[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    inside[...] = array
    return out, inside


# --------------------------------------------------------------------------
# cross-entropy: the three functions and the criterion

CE_FUNCS = (
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "CrossEntropyLoss",
    "CrossEntropyLoss.grad",
    "CrossEntropyLoss.with_grad",
)
CE_FAULTS = {
    "logits_dtype": (TypeError,),
    "logits_0d": (ValueError,),
    "axis_range": (ValueError,),
    "axis_type": (TypeError,),
    "reduction": (ValueError,),
    "smoothing_value": (ValueError,),
    "smoothing_type": (TypeError,),
    "ignore_type": (TypeError,),
    "zero_classes": (ValueError,),
    "weight_shape": (ValueError,),
    "weight_dtype": (TypeError,),
    "target_bool": (TypeError,),
    "target_dtype": (TypeError,),
    "target_float_index_shape": (TypeError,),
    "target_shape": (ValueError,),
    "target_range": (IndexError,),
    "grad_output_shape": (ValueError,),
    "grad_output_dtype": (TypeError,),
    "out_shape": (ValueError,),
    "out_dtype": (TypeError,),
    "out_readonly": (ValueError,),
    "out_overlap": (ValueError,),
    "out_type": (TypeError,),
    "threads_value": (ValueError,),
    "threads_type": (TypeError,),
    "transform_value": (ValueError,),
    "transform_type": (TypeError,),
}
# the logit transforms a valid call draws from (mostly none), and bad ones
GOOD_TRANSFORMS = [
    {},
    {},
    {},
    {"softcap": 1.0},
    {"softcap": 30.0},
    {"temperature": 2.0},
    {"z_loss": 1e-4},
    {"z_loss": 0.1},
    {"softcap": 5.0, "temperature": 1.5, "z_loss": 1e-2},
]
BAD_TRANSFORM_VALUES = [
    {"softcap": 0.0},
    {"softcap": -2.0},
    {"softcap": math.inf},
    {"temperature": 0.0},
    {"temperature": -1.0},
    {"temperature": math.nan},
    {"z_loss": -0.5},
    {"z_loss": math.inf},
]
BAD_TRANSFORM_TYPES = [
    {"softcap": "2"},
    {"softcap": True},
    {"temperature": [1.0]},
    {"z_loss": None},
]
GRAD_ONLY = {
    "grad_output_shape",
    "grad_output_dtype",
    "out_shape",
    "out_dtype",
    "out_readonly",
    "out_overlap",
    "out_type",
}
CRITERION_NONE = {"threads_value", "threads_type"}


def moved(a: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(a, axis, -1)


@st.composite
def index_target(draw, shape, n_classes, ignore_index, rng, fault_range):
    """Class indices in ``[0, C)`` with some equal to ``ignore_index``, in an
    integer dtype that holds them; with ``fault_range`` one of them is out of
    range."""
    n = int(np.prod(shape, dtype=np.int64))
    usable = [d for d in INT_DTYPES if index_dtype_range(d)[1] >= max(n_classes - 1, 0)]
    dtype = draw(st.sampled_from(usable))
    lo, hi = index_dtype_range(dtype)
    values = (
        rng.integers(0, max(n_classes, 1), size=n) if n_classes else np.zeros(n, dtype=np.int64)
    )
    ignore = None
    try:
        ignore = int(ignore_index)
    except (TypeError, ValueError):
        pass
    if ignore is not None and lo <= ignore <= hi and n and draw(st.booleans()):
        values[rng.random(n) < draw(st.sampled_from([0.2, 0.5, 1.0]))] = ignore
    if fault_range and n:
        bad = [
            v
            for v in (
                n_classes,
                n_classes + 1,
                -1,
                -2,
                -(2**31),
                2**31,
                2**63 - 1,
                -(2**63),
                2**64 - 1,
                255,
                65535,
            )
            if not 0 <= v < n_classes and v != ignore and lo <= v <= hi
        ]
        if not bad:
            dtype = np.dtype(np.int64)
            bad = [n_classes + 5]
        values = values.astype(dtype)
        values[int(rng.integers(0, n))] = draw(st.sampled_from(bad))
    t = values.astype(dtype).reshape(shape)
    return arrange(t, draw(st.sampled_from(LAYOUTS)), rng)


def has_out_of_range(target, n_classes, ignore_index) -> bool:
    t = as_array(target)
    if t.dtype.kind not in "iu" or t.size == 0:
        return False
    try:
        ignore = int(ignore_index)
    except (TypeError, ValueError):
        ignore = None
    values = [int(v) for v in np.unique(t)]
    return any(not 0 <= v < n_classes and v != ignore for v in values)


@st.composite
def prob_target(draw, shape, rng):
    """A float target of the logits' shape: rows of probabilities, or any values."""
    kind = draw(st.sampled_from(["simplex", "simplex", "uniform", "wild", "zeros", "onehot"]))
    if kind == "simplex":
        v = rng.random(shape) ** 3
        if len(shape):
            v = v / np.maximum(v.sum(axis=-1, keepdims=True), 1e-300)
    elif kind == "uniform":
        v = rng.uniform(-1.0, 2.0, shape)
    elif kind == "wild":
        # garbage, NaN included, but summing well inside float32's range: the
        # gradient's per-sample scale is A = sum(target), held in the working
        # precision by the tile kernel
        v = np.clip(float_values(shape, rng, 0.3, 3.0), -1e4, 1e4)
    elif kind == "zeros":
        v = np.zeros(shape)
    else:
        v = (rng.random(shape) < 0.3).astype(np.float64)
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    return arrange(finite_cast(v, dtype), draw(st.sampled_from(LAYOUTS)), rng)


@st.composite
def weights(draw, n_classes, rng):
    kind = draw(st.sampled_from(["none", "none", "positive", "with_zeros", "ints", "signed"]))
    if kind == "none":
        return None
    if kind == "positive":
        v = rng.uniform(0.1, 3.0, n_classes)
    elif kind == "with_zeros":
        v = rng.uniform(0.0, 2.0, n_classes) * (rng.random(n_classes) < 0.6)
    elif kind == "ints":
        v = rng.integers(0, 4, n_classes)
    else:
        v = rng.uniform(-1.0, 3.0, n_classes)
    dtype = (
        draw(st.sampled_from(FLOAT_DTYPES + INT_DTYPES))
        if kind == "ints"
        else draw(st.sampled_from(FLOAT_DTYPES))
    )
    return arrange(cast(v, dtype), draw(st.sampled_from(list(LAYOUTS))), rng)


def ce_expectation(
    logits,
    target,
    weight,
    ignore_index,
    reduction,
    smoothing,
    axis,
    grad_output,
    want_loss,
    want_grad,
    transform,
):
    """Reference (loss, grad) and error bounds for a valid cross-entropy call."""
    x = as_array(logits)
    dtype = result_dtype(x.dtype)
    ax = (1 if x.ndim >= 2 else 0) if axis is None else int(axis) % x.ndim
    t = as_array(target)
    if t.dtype.kind == "f":  # probabilities are read in the logits' working precision
        t = cast(t, dtype)
    loss, grad = ref.cross_entropy_with_grad(
        x,
        t,
        None if weight is None else as_array(weight),
        grad_output=grad_output,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=smoothing,
        axis=ax,
        **transform,
    )
    # magnitudes: sum_c |a[n, c]| and the largest |logit| the loss sees, of each sample
    x64 = moved(x.astype(np.float64), ax)
    if transform.get("softcap"):
        x64 = transform["softcap"] * np.tanh(x64 / transform["softcap"])
    x64 = x64 / transform.get("temperature", 1.0)
    z = transform.get("z_loss", 0.0)
    n_classes = x64.shape[-1]
    w_signed = np.ones(n_classes) if weight is None else as_array(weight).astype(np.float64)
    w = np.abs(w_signed)
    eps = float(smoothing)
    smooth = eps / max(n_classes, 1)
    if t.dtype.kind == "f":
        y = moved(t.astype(np.float64), ax)
        amag = np.nansum(w * (abs(1 - eps) * np.abs(y) + smooth), axis=-1)
        denominator = float(np.prod(y.shape[:-1]))
    else:
        ti = t.astype(np.int64)
        ignored = (
            ti == ignore_index
            if isinstance(ignore_index, (int, np.integer)) and -(2**63) <= int(ignore_index) < 2**63
            else np.zeros(ti.shape, bool)
        )
        safe = np.where(ignored, 0, ti)
        wt = w[safe] if n_classes else np.zeros(ti.shape)
        amag = np.where(ignored, 0.0, abs(1 - eps) * wt + smooth * w.sum())
        denominator = float(np.sum(np.where(ignored, 0.0, w_signed[safe] if n_classes else 0.0)))
        # the z-loss's coefficient on the softmax, 2 z w[t] lse
        amag = amag + np.where(ignored, 0.0, 2 * z * wt * row_magnitude(x64))
    if t.dtype.kind == "f":
        amag = amag + 2 * z * row_magnitude(x64)
    per_sample = amag * row_magnitude(x64)
    e = eps_for(dtype)
    if reduction == "none":
        loss_bound = e * (np.abs(loss) + per_sample)
    elif reduction == "sum":
        loss_bound = e * (abs(loss) + per_sample.sum())
    else:
        loss_bound = e * (abs(loss) + per_sample.sum() / abs(denominator)) if denominator else 0.0
    go = np.broadcast_to(
        np.asarray(grad_output, dtype=np.float64), per_sample.shape if reduction == "none" else ()
    )
    scale = np.abs(go) / (abs(denominator) if reduction == "mean" and denominator else 1.0)
    grad_bound = None
    if want_grad:
        grad_bound = e * (
            np.abs(grad)
            + 2
            * np.moveaxis(
                (np.broadcast_to(scale, per_sample.shape) * amag * row_magnitude(x64))[..., None],
                -1,
                ax,
            )
        )
    return dict(
        loss=loss,
        grad=grad,
        loss_bound=loss_bound,
        grad_bound=grad_bound,
        dtype=dtype,
        loss_shape=np.shape(loss),
    )


@st.composite
def ce_cases(draw):
    name = draw(st.sampled_from(CE_FUNCS))
    want_grad = name != "cross_entropy" and name != "CrossEntropyLoss"
    want_loss = name not in ("cross_entropy_grad", "CrossEntropyLoss.grad")
    criterion = name.startswith("CrossEntropyLoss")
    available = (
        set(CE_FAULTS)
        - (set() if want_grad else GRAD_ONLY)
        - (CRITERION_NONE if criterion else set())
    )
    bad = set(draw(faults(available)))
    rng = draw(rngs())

    shape = draw(shapes(min_ndim=1))
    if "logits_0d" in bad:
        shape = ()
    ndim = len(shape)
    if ndim:
        axis = None if draw(st.booleans()) else as_int(draw, draw(st.integers(-ndim, ndim - 1)))
        ax = (1 if ndim >= 2 else 0) if axis is None else int(axis) % ndim
    else:
        axis, ax = None, 0
    if "zero_classes" in bad:
        samples = shape[:ax] + shape[ax + 1 :]
        if ndim == 0 or any(s == 0 for s in samples):
            bad.discard("zero_classes")
        else:
            shape = shape[:ax] + (0,) + shape[ax + 1 :]
    n_classes = shape[ax] if ndim else 0
    index_shape = shape[:ax] + shape[ax + 1 :] if ndim else ()
    n_samples = int(np.prod(index_shape, dtype=np.int64)) if ndim else 0
    if n_classes == 0 and n_samples > 0:
        bad.add("zero_classes")  # a (0,) row, or C == 0 drawn by chance

    if "logits_dtype" in bad:
        logits = bad_dtype_array(draw, shape, rng, NON_FLOAT_DTYPES)
    else:
        logits = draw(float_input(shape, rng))

    # options
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    if "reduction" in bad:
        reduction = draw(bad_reductions)
    smoothing = draw(
        st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, np.float32(0.25), 0, 1, np.float16(0.3)])
    )
    if "smoothing_value" in bad:
        smoothing = draw(bad_smoothing_values)
    if "smoothing_type" in bad:
        smoothing = draw(bad_smoothing_types)
    ignore_index = as_int(
        draw, draw(st.sampled_from([-100, -100, -1, 0, 1, 2, 2**63 - 1, -(2**63), 2**70, -(2**70)]))
    )
    if "ignore_type" in bad:
        ignore_index = draw(bad_ignore_types)
    if "axis_range" in bad and ndim:
        axis = bad_axis(draw, ndim)
    elif "axis_range" in bad:
        bad.discard("axis_range")
    if "axis_type" in bad:
        axis = draw(bad_axis_types)
    threads = draw(good_threads)
    if "threads_value" in bad:
        threads = draw(bad_thread_values)
    if "threads_type" in bad:
        threads = draw(bad_thread_types)
    transform = dict(draw(st.sampled_from(GOOD_TRANSFORMS)))
    if "transform_value" in bad:
        transform.update(draw(st.sampled_from(BAD_TRANSFORM_VALUES)))
    if "transform_type" in bad:
        transform.update(draw(st.sampled_from(BAD_TRANSFORM_TYPES)))

    # target
    probs = draw(st.booleans()) and ndim > 0
    if "target_bool" in bad:
        target = arrange(rng.random(index_shape) < 0.5, draw(st.sampled_from(LAYOUTS)), rng)
    elif "target_dtype" in bad:
        target = bad_dtype_array(draw, index_shape, rng, NON_INDEX_TARGET_DTYPES)
    elif "target_float_index_shape" in bad and index_shape != shape:
        target = draw(float_input(index_shape, rng))
    elif "target_shape" in bad:
        if probs:
            wrong = wrong_shape(draw, shape, avoid=(index_shape,))
            target = draw(float_input(wrong, rng))
        else:
            wrong = wrong_shape(draw, index_shape)
            target = arrange(rng.integers(0, max(n_classes, 1), wrong), "C", rng)
    elif probs:
        target = draw(prob_target(shape, rng))
    else:
        target = draw(
            index_target(
                index_shape, n_classes, ignore_index, rng, "target_range" in bad and n_classes > 0
            )
        )
        if "target_range" in bad and (n_samples == 0 or n_classes == 0):
            bad.discard("target_range")
    if "target_float_index_shape" in bad and index_shape == shape:
        bad.discard("target_float_index_shape")
    if "target_range" in bad and not has_out_of_range(target, n_classes, ignore_index):
        bad.discard("target_range")  # a layout (zero strides) dropped the bad value
    if "target_range" in bad and probs:
        bad.discard("target_range")

    weight = draw(weights(n_classes, rng))
    if "weight_shape" in bad:
        wshape = wrong_shape(draw, (n_classes,))
        weight = rng.uniform(0.5, 2.0, wshape)
    if "weight_dtype" in bad:
        weight = bad_dtype_array(draw, (n_classes,), rng, NON_REAL_DTYPES)

    loss_shape = index_shape
    grad_output = 1.0
    out = None
    if want_grad:
        if reduction == "none" and draw(st.booleans()):
            # finite: an infinite upstream gradient is not a question this asks
            values = rng.standard_normal(loss_shape) * draw(st.sampled_from([1.0, 4.0]))
            grad_output = arrange(
                cast(values, draw(st.sampled_from(FLOAT_DTYPES[2:]))),
                draw(
                    st.sampled_from(
                        list(["C", "F", "reversed", "broadcast", "misaligned", "list", "readonly"])
                    )
                ),
                rng,
            )
        else:
            grad_output = draw(
                st.sampled_from(
                    [1.0, 0.0, -2.5, 3, np.float32(0.5), np.array(2.0), np.int64(-1), float("nan")]
                )
            )
        if "grad_output_shape" in bad:
            # any shape but the loss's, and but () (a scalar is always allowed)
            gshape = wrong_shape(draw, loss_shape if reduction == "none" else (), avoid=((),))
            grad_output = rng.uniform(-1, 1, gshape)
        if "grad_output_dtype" in bad:
            grad_output = bad_dtype_array(
                draw,
                loss_shape if reduction == "none" else (),
                rng,
                NON_REAL_DTYPES + [np.dtype(np.longdouble)],
            )
        x_dtype = (
            result_dtype(as_array(logits).dtype)
            if "logits_dtype" not in bad
            else np.dtype(np.float64)
        )
        out_kind = draw(st.sampled_from(["none", "none", "fresh", "logits"]))
        if (
            out_kind == "logits"
            and isinstance(logits, np.ndarray)
            and logits.dtype == x_dtype
            and logits.flags.writeable
            and "logits_dtype" not in bad
        ):
            out = logits
        elif out_kind != "none":
            out = out_buffer(draw, shape, x_dtype, rng)
        aliased = None
        if not bad and draw(st.integers(0, 5)) == 0:
            choices = [
                k
                for k, v in (("target", target), ("weight", weight), ("grad_output", grad_output))
                if isinstance(v, np.ndarray) and v.size
            ]
            if choices:
                aliased = draw(st.sampled_from(choices))
                out, inside = alias_into_out(
                    draw,
                    shape,
                    x_dtype,
                    {"target": target, "weight": weight, "grad_output": grad_output}[aliased],
                )
                if aliased == "target":
                    target = inside
                elif aliased == "weight":
                    weight = inside
                else:
                    grad_output = inside
        if "out_shape" in bad:
            out = np.zeros(wrong_shape(draw, shape), dtype=x_dtype)
        if "out_dtype" in bad:
            other = draw(
                st.sampled_from(
                    [
                        np.dtype(np.float16),
                        np.dtype(">f8"),
                        np.dtype(">f4"),
                        np.dtype(np.int64),
                        np.dtype(np.complex128),
                        np.float32 if x_dtype == np.float64 else np.float64,
                    ]
                )
            )
            out = np.zeros(shape, dtype=other)
        if "out_overlap" in bad:
            out = overlapping_out(draw, shape, np.dtype(x_dtype), rng)
        if "out_readonly" in bad:
            out = np.zeros(shape, dtype=x_dtype)
            if draw(st.booleans()):
                out = np.broadcast_to(np.zeros((), dtype=x_dtype), shape)
            else:
                out.flags.writeable = False
        if "out_type" in bad:
            out = draw(st.sampled_from(["list", "torch", "memoryview", "scalar"]))
            zeros = np.zeros(shape, dtype=x_dtype)
            out = {
                "list": zeros.tolist(),
                "memoryview": memoryview(zeros) if zeros.ndim else zeros.tolist(),
                "scalar": 0.0,
                "torch": torch.from_numpy(zeros) if torch is not None else zeros.tolist(),
            }[out]

    errors = tuple(sorted({e for f in bad for e in CE_FAULTS[f]}, key=lambda e: e.__name__))
    kwargs = dict(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=smoothing,
        axis=axis,
        **transform,
    )
    grad_kwargs = dict(grad_output=grad_output, out=out) if want_grad else {}

    if criterion:
        method = name.partition(".")[2]

        def call():
            crit = fastce.CrossEntropyLoss(weight, **kwargs)
            f = getattr(crit, method) if method else crit
            return f(logits, target, **grad_kwargs)
    else:
        func = getattr(fastce, name)

        def call():
            return func(logits, target, weight, **kwargs, **grad_kwargs, num_threads=threads)

    def expect():
        return ce_expectation(
            logits,
            target,
            weight,
            ignore_index,
            reduction,
            smoothing,
            axis,
            grad_output,
            want_loss,
            want_grad,
            transform,
        )

    def check(result, e):
        dtype = e["dtype"]
        if want_grad and want_loss:
            loss, grad = result
        elif want_grad:
            loss, grad = None, result
        else:
            loss, grad = result, None
        if loss is not None:
            assert_result_loss(loss, dtype, reduction, e["loss_shape"], "loss")
            assert_close(loss, e["loss"], e["loss_bound"], dtype, "loss")
        if grad is not None:
            if out is not None:
                assert grad is out, "the gradient is not returned in out"
            assert_result_array(grad, dtype, shape, "grad")
            if self_overlapping(out):  # an out whose elements share memory holds no answer
                return
            assert_close(grad, e["grad"], e["grad_bound"], dtype, "grad")

    args = dict(
        logits=logits,
        target=target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=smoothing,
        axis=axis,
        **transform,
    )
    if want_grad:
        args.update(grad_output=grad_output, out=out)
    if not criterion:
        args["num_threads"] = threads
    writes = (out,) if out is not None else ()
    if want_grad and aliased is not None:
        writes += ({"target": target, "weight": weight, "grad_output": grad_output}[aliased],)
    return Case(
        name=name,
        call=call,
        args=args,
        errors=errors,
        expect=expect,
        check=check,
        writes=writes,
        warns_single_class=n_classes == 1 and not errors,
        faults=tuple(sorted(bad)),
    )


# the options of the suite's shared case generator (cases.make_case)
SHARED_OPTIONS = [
    {},
    {"weight": True},
    {"ignore_index": -100},
    {"ignore_index": 0, "weight": True},
    {"label_smoothing": 0.2, "weight": True, "ignore_index": -100},
    {"prob": True},
    {"prob": True, "label_smoothing": 0.1, "weight": True},
    {"specials": True},
    {"specials": True, "ignore_index": -100, "weight": True},
]


@st.composite
def shared_ce_cases(draw):
    """Valid cross-entropy calls drawn from the suite's one case generator,
    ``cases.make_case``: any shape, class axis, dtype, target dtype, option,
    memory layout and logit transform.  Each must give the reference's value
    (ce_cases covers the malformed calls)."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    axis = None if draw(st.booleans()) else draw(st.integers(-ndim, ndim - 1))
    ax = (1 if ndim >= 2 else 0) if axis is None else axis % ndim
    shape = shape[:ax] + (draw(st.integers(1, 40)),) + shape[ax + 1 :]
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    option = draw(st.sampled_from(SHARED_OPTIONS))
    index_dtype = draw(st.sampled_from([np.int64, np.int32, np.int16, np.uint8]))
    seed = draw(st.integers(0, 2**32 - 1))
    case = make_case(
        np.random.default_rng(seed),
        shape,
        axis,
        dtype,
        option,
        index_dtype,
        scale=draw(st.sampled_from([1.0, 2.0, 30.0])),
    )
    hypothesis.assume(case is not None)
    logits_layout = draw(st.sampled_from(LAYOUTS))
    target_layout = draw(st.sampled_from(LAYOUTS))
    rng = np.random.default_rng(seed + 1)
    logits = arrange(case.logits, logits_layout, rng)
    target = arrange(case.target, target_layout, rng)
    transform = draw(st.sampled_from(GOOD_TRANSFORMS))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    kwargs = dict(case.kwargs, reduction=reduction, **transform)
    ignore_index = kwargs.get("ignore_index", -100)
    smoothing = kwargs.get("label_smoothing", 0.0)
    n_classes = shape[ax]

    def call():
        return fastce.cross_entropy_with_grad(logits, target, case.weight, **kwargs)

    def expect():
        return ce_expectation(
            logits,
            target,
            case.weight,
            ignore_index,
            reduction,
            smoothing,
            axis,
            1.0,
            True,
            True,
            transform,
        )

    def check(result, e):
        loss, grad = result
        assert_result_loss(loss, e["dtype"], reduction, e["loss_shape"], "loss")
        assert_close(loss, e["loss"], e["loss_bound"], e["dtype"], "loss")
        assert_result_array(grad, e["dtype"], shape, "grad")
        assert_close(grad, e["grad"], e["grad_bound"], e["dtype"], "grad")

    return Case(
        name="cross_entropy_with_grad (shared generator)",
        call=call,
        args=dict(logits=logits, target=target, weight=case.weight, **kwargs),
        expect=expect,
        check=check,
        warns_single_class=n_classes == 1,
    )


# --------------------------------------------------------------------------
# nll_loss

NLL_FAULTS = {
    k: CE_FAULTS[k]
    for k in (
        "logits_dtype",
        "logits_0d",
        "axis_range",
        "axis_type",
        "reduction",
        "ignore_type",
        "zero_classes",
        "weight_shape",
        "weight_dtype",
        "target_bool",
        "target_dtype",
        "target_shape",
        "target_range",
        "threads_value",
        "threads_type",
    )
}
NLL_FAULTS["target_float"] = (TypeError,)


@st.composite
def nll_cases(draw):
    bad = set(draw(faults(set(NLL_FAULTS))))
    rng = draw(rngs())
    shape = () if "logits_0d" in bad else draw(shapes(min_ndim=1))
    ndim = len(shape)
    axis = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1))) if ndim else None
    ax = ((1 if ndim >= 2 else 0) if axis is None else axis % ndim) if ndim else 0
    if "zero_classes" in bad:
        if ndim == 0 or any(s == 0 for s in shape[:ax] + shape[ax + 1 :]):
            bad.discard("zero_classes")
        else:
            shape = shape[:ax] + (0,) + shape[ax + 1 :]
    n_classes = shape[ax] if ndim else 0
    index_shape = shape[:ax] + shape[ax + 1 :] if ndim else ()
    n_samples = int(np.prod(index_shape, dtype=np.int64)) if ndim else 0
    if n_classes == 0 and n_samples > 0:
        bad.add("zero_classes")
    if "logits_dtype" in bad:
        log_probs = bad_dtype_array(draw, shape, rng, NON_FLOAT_DTYPES)
    else:
        log_probs = draw(float_input(shape, rng))
    reduction = (
        draw(bad_reductions)
        if "reduction" in bad
        else draw(st.sampled_from(["mean", "sum", "none"]))
    )
    ignore_index = (
        draw(bad_ignore_types)
        if "ignore_type" in bad
        else as_int(draw, draw(st.sampled_from([-100, -1, 0, 1, 2**63 - 1, 2**64])))
    )
    if "axis_range" in bad:
        if ndim:
            axis = bad_axis(draw, ndim)
        else:
            bad.discard("axis_range")
    if "axis_type" in bad:
        axis = draw(bad_axis_types)
    threads = draw(good_threads)
    if "threads_value" in bad:
        threads = draw(bad_thread_values)
    if "threads_type" in bad:
        threads = draw(bad_thread_types)
    if "target_bool" in bad:
        target = rng.random(index_shape) < 0.5
    elif "target_dtype" in bad:
        target = bad_dtype_array(draw, index_shape, rng, NON_INDEX_TARGET_DTYPES)
    elif "target_float" in bad:
        target = draw(float_input(draw(st.sampled_from([index_shape, shape])), rng))
    elif "target_shape" in bad:
        target = rng.integers(0, max(n_classes, 1), wrong_shape(draw, index_shape))
    else:
        fault_range = "target_range" in bad and n_samples > 0 and n_classes > 0
        if "target_range" in bad and not fault_range:
            bad.discard("target_range")
        target = draw(index_target(index_shape, n_classes, ignore_index, rng, fault_range))
        if fault_range and not has_out_of_range(target, n_classes, ignore_index):
            bad.discard("target_range")
    weight = draw(weights(n_classes, rng))
    if "weight_shape" in bad:
        weight = rng.uniform(0.5, 2.0, wrong_shape(draw, (n_classes,)))
    if "weight_dtype" in bad:
        weight = bad_dtype_array(draw, (n_classes,), rng, NON_REAL_DTYPES)
    errors = tuple(sorted({e for f in bad for e in NLL_FAULTS[f]}, key=lambda e: e.__name__))

    def call():
        return fastce.nll_loss(
            log_probs,
            target,
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            axis=axis,
            num_threads=threads,
        )

    def expect():
        x = as_array(log_probs)
        t = as_array(target)
        w = None if weight is None else as_array(weight)
        loss = ref.nll_loss(x, t, w, ignore_index=ignore_index, reduction=reduction, axis=ax)
        # |loss[n]| bounds the error of each sample; the mean divides by the signed weights
        per = np.abs(
            ref.nll_loss(
                x,
                t,
                None if w is None else np.abs(w),
                ignore_index=ignore_index,
                reduction="none",
                axis=ax,
            )
        )
        ti = t.astype(np.int64)
        ignored = (
            ti == ignore_index
            if -(2**63) <= int(ignore_index) < 2**63
            else np.zeros(ti.shape, bool)
        )
        wv = np.ones(n_classes) if w is None else w.astype(np.float64)
        den = (
            float(np.sum(np.where(ignored, 0.0, wv[np.where(ignored, 0, ti)])))
            if n_classes
            else 0.0
        )
        total = np.nansum(np.where(np.isinf(per), 0, per))
        e = eps_for(result_dtype(x.dtype))
        bound = {"none": e * per, "sum": e * total, "mean": e * total / abs(den) if den else 0.0}[
            reduction
        ]
        return loss, bound, result_dtype(x.dtype)

    def check(result, e):
        loss, bound, dtype = e
        assert_result_loss(result, dtype, reduction, index_shape, "loss")
        assert_close(result, loss, bound, dtype, "nll_loss")

    return Case(
        name="nll_loss",
        call=call,
        errors=errors,
        expect=expect,
        check=check,
        args=dict(
            log_probs=log_probs,
            target=target,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            axis=axis,
            num_threads=threads,
        ),
        faults=tuple(sorted(bad)),
    )


# --------------------------------------------------------------------------
# log_softmax, softmax, logsumexp

SOFTMAX_FAULTS = {
    k: CE_FAULTS[k]
    for k in (
        "logits_dtype",
        "axis_range",
        "axis_type",
        "out_shape",
        "out_dtype",
        "out_readonly",
        "out_overlap",
        "out_type",
        "threads_value",
        "threads_type",
    )
}


@st.composite
def softmax_cases(draw):
    name = draw(st.sampled_from(["log_softmax", "softmax", "logsumexp"]))
    available = set(SOFTMAX_FAULTS)
    if name == "logsumexp":
        available -= {"out_shape", "out_dtype", "out_readonly", "out_overlap", "out_type"}
    bad = set(draw(faults(available)))
    rng = draw(rngs())
    shape = draw(shapes(min_ndim=0))
    ndim = max(len(shape), 1)
    axis = as_int(draw, draw(st.integers(-ndim, ndim - 1))) if draw(st.booleans()) else -1
    if "axis_range" in bad:
        axis = bad_axis(draw, ndim)
    if "axis_type" in bad:
        axis = draw(st.sampled_from([None, 1.0, "0", True, [0]]))
    x = (
        bad_dtype_array(draw, shape, rng, NON_FLOAT_DTYPES)
        if "logits_dtype" in bad
        else draw(float_input(shape, rng))
    )
    dtype = result_dtype(as_array(x).dtype) if "logits_dtype" not in bad else np.dtype("f8")
    threads = draw(good_threads)
    if "threads_value" in bad:
        threads = draw(bad_thread_values)
    if "threads_type" in bad:
        threads = draw(bad_thread_types)
    out = None
    if name != "logsumexp":
        kind = draw(st.sampled_from(["none", "fresh", "x"]))
        if kind == "x" and isinstance(x, np.ndarray) and x.dtype == dtype and x.flags.writeable:
            out = x
        elif kind != "none":
            out = out_buffer(draw, shape, dtype, rng)
        if "out_shape" in bad:
            out = np.zeros(wrong_shape(draw, shape), dtype=dtype)
        if "out_dtype" in bad:
            out = np.zeros(
                shape,
                dtype=draw(
                    st.sampled_from(
                        [
                            np.float16,
                            ">f4",
                            ">f8",
                            np.int32,
                            np.float32 if dtype == np.float64 else np.float64,
                        ]
                    )
                ),
            )
        if "out_overlap" in bad:
            out = overlapping_out(draw, shape, np.dtype(dtype), rng)
        if "out_readonly" in bad:
            out = np.zeros(shape, dtype=dtype)
            out.flags.writeable = False
        if "out_type" in bad:
            out = np.zeros(shape, dtype=dtype).tolist() if shape else 0.0
    errors = tuple(sorted({e for f in bad for e in SOFTMAX_FAULTS[f]}, key=lambda e: e.__name__))
    func = getattr(fastce, name)

    def call():
        if name == "logsumexp":
            return func(x, axis, num_threads=threads)
        return func(x, axis, out, num_threads=threads)

    def expect():
        a = as_array(x)
        ax = int(axis) % ndim
        want = getattr(ref, name)(a, ax)
        a64 = a.astype(np.float64).reshape(shape if shape else (1,))
        mag = row_magnitude(moved(a64, ax))
        e = eps_for(dtype)
        if name == "logsumexp":
            return want, e * (np.abs(want) + mag.reshape(np.shape(want)))
        mag = np.broadcast_to(np.expand_dims(mag, ax), a64.shape).reshape(np.shape(want))
        if name == "log_softmax":
            return want, e * (np.abs(want) + mag)
        return want, e * np.abs(want) * mag

    def check(result, e):
        want, bound = e
        want_shape = (
            shape
            if name != "logsumexp"
            else (shape[: int(axis) % ndim] + shape[int(axis) % ndim + 1 :] if shape else ())
        )
        if out is not None:
            assert result is out, "the result is not returned in out"
        if want_shape == () and name == "logsumexp" or shape == () and out is None:
            assert isinstance(result, (np.floating, np.ndarray)), type(result)
            assert result.dtype == dtype
            assert np.shape(result) == ()
        else:
            assert_result_array(result, dtype, want_shape, name)
        if self_overlapping(out):
            return
        assert_close(result, want, bound, dtype, name)

    return Case(
        name=name,
        call=call,
        errors=errors,
        expect=expect,
        check=check,
        args=dict(x=x, axis=axis, out=out, num_threads=threads),
        writes=(out,) if out is not None else (),
        faults=tuple(sorted(bad)),
    )


# --------------------------------------------------------------------------
# binary cross-entropy

BCE_FAULTS = {
    "logits_dtype": (TypeError,),
    "target_dtype": (TypeError,),
    "target_shape": (ValueError,),
    "weight_dtype": (TypeError,),
    "weight_shape": (ValueError,),
    "pos_weight_dtype": (TypeError,),
    "pos_weight_shape": (ValueError,),
    "reduction": (ValueError,),
    "probs_range": (ValueError,),
    # binary_cross_entropy's targets outside [0, 1], as torch refuses them; drawn, not chosen
    "target_range": (ValueError,),
}


def factor_shape(draw, shape, last_only=False):
    """A shape that broadcasts to ``shape`` without enlarging it."""
    if not shape:
        return ()
    if last_only:
        return draw(st.sampled_from([(shape[-1],), (1,), ()]))
    k = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - k :]
    return tuple(1 if draw(st.integers(0, 3)) == 0 else s for s in tail)


def bad_factor_shape(draw, shape):
    """A shape that does not broadcast to ``shape``, or would enlarge it."""
    options = [shape + (2,), (3,) + shape]
    if shape:
        options.append(shape[:-1] + (shape[-1] + 1,))
    new = draw(st.sampled_from(options))
    try:
        if np.broadcast_shapes(new, shape) == shape:
            new = shape + (2,)
    except ValueError:
        pass
    return new


@st.composite
def bce_cases(draw):
    name = draw(st.sampled_from(["binary_cross_entropy_with_logits", "binary_cross_entropy"]))
    available = set(BCE_FAULTS) - {"target_range"}
    if name == "binary_cross_entropy":
        available -= {"pos_weight_dtype", "pos_weight_shape"}
    else:
        available -= {"probs_range"}
    bad = set(draw(faults(available)))
    rng = draw(rngs())
    shape = draw(shapes(min_ndim=0))
    if name == "binary_cross_entropy":
        if "logits_dtype" in bad:
            x = bad_dtype_array(draw, shape, rng, NON_FLOAT_DTYPES)
        else:
            kind = draw(st.sampled_from(["uniform", "edges", "subnormal"]))
            v = rng.random(shape)
            if kind == "edges" and v.size:
                v[rng.random(shape) < 0.5] = rng.choice([0.0, 1.0, 1e-45, 1 - 1e-7, 1e-310])
            if kind == "subnormal":
                v = v * 1e-300
            if "probs_range" in bad:
                if v.size:
                    v.reshape(-1)[int(rng.integers(0, v.size))] = draw(
                        st.sampled_from([-1e-3, 1.5, np.nan, np.inf, -np.inf, -1e-300, 3e38])
                    )
                else:
                    bad.discard("probs_range")
            x = arrange(
                cast(v, draw(st.sampled_from(FLOAT_DTYPES))), draw(st.sampled_from(LAYOUTS)), rng
            )
            if "probs_range" in bad and not np.any(~((as_array(x) >= 0) & (as_array(x) <= 1))):
                bad.discard("probs_range")  # float16 or a layout lost the bad value
    else:
        x = (
            bad_dtype_array(draw, shape, rng, NON_FLOAT_DTYPES)
            if "logits_dtype" in bad
            else draw(float_input(shape, rng))
        )
    if "target_dtype" in bad:
        target = bad_dtype_array(
            draw,
            shape,
            rng,
            [
                np.dtype(bool),
                np.dtype("i1"),
                np.dtype(">i8"),
                np.dtype("u2"),
                np.dtype("<c8"),
                np.dtype(object),
                np.dtype("U3"),
                np.dtype("M8[ns]"),
            ],
        )
    elif "target_shape" in bad:
        target = rng.random(wrong_shape(draw, shape))
    else:
        y = rng.random(shape)
        if draw(st.booleans()):
            y = np.round(y)
        if draw(st.integers(0, 4)) == 0:
            y = float_values(shape, rng, 0.2, 2.0)
        target = arrange(
            finite_cast(y, draw(st.sampled_from(FLOAT_DTYPES))), draw(st.sampled_from(LAYOUTS)), rng
        )
        if name == "binary_cross_entropy":
            t = as_array(target).astype(np.float64)
            if not np.all((t >= 0) & (t <= 1)):
                bad.add("target_range")

    def factor(kind_bad_dtype, kind_bad_shape, last_only):
        if kind_bad_dtype in bad:
            return bad_dtype_array(draw, factor_shape(draw, shape, last_only), rng, NON_REAL_DTYPES)
        if kind_bad_shape in bad:
            return rng.uniform(0.5, 2, bad_factor_shape(draw, shape))
        if draw(st.booleans()):
            return None
        fshape = factor_shape(draw, shape, last_only)
        v = rng.uniform(0.0, 3.0, fshape)
        dtype = draw(st.sampled_from(FLOAT_DTYPES + [np.dtype("i8"), np.dtype("u1")]))
        return arrange(cast(v, dtype), draw(st.sampled_from(LAYOUTS)), rng)

    weight = factor("weight_dtype", "weight_shape", False)
    pos_weight = (
        factor("pos_weight_dtype", "pos_weight_shape", True)
        if name == "binary_cross_entropy_with_logits"
        else None
    )
    reduction = (
        draw(bad_reductions)
        if "reduction" in bad
        else draw(st.sampled_from(["mean", "sum", "none"]))
    )
    errors = tuple(sorted({e for f in bad for e in BCE_FAULTS[f]}, key=lambda e: e.__name__))
    func = getattr(fastce, name)

    def call():
        if name == "binary_cross_entropy":
            return func(x, target, weight, reduction=reduction)
        return func(x, target, weight, pos_weight=pos_weight, reduction=reduction)

    def expect():
        a = as_array(x)
        dtype = result_dtype(a.dtype)
        w = None if weight is None else as_array(weight)
        if name == "binary_cross_entropy":
            want = ref.binary_cross_entropy(a, as_array(target), w, reduction=reduction)
            per = np.abs(
                ref.binary_cross_entropy(
                    a, as_array(target), None if w is None else np.abs(w), reduction="none"
                )
            )
            per = per + 100.0 * (1.0 if w is None else np.abs(w.astype(np.float64)))
        else:
            pw = None if pos_weight is None else as_array(pos_weight)
            want = ref.binary_cross_entropy_with_logits(
                a, as_array(target), w, pos_weight=pw, reduction=reduction
            )
            y = np.abs(as_array(target).astype(np.float64))
            x64 = np.abs(a.astype(np.float64))
            ww = 1.0 if w is None else np.abs(w.astype(np.float64))
            pp = 1.0 if pw is None else np.abs(pw.astype(np.float64))
            unweighted = (1 + y) * x64 + (1 + (pp + 1) * y) * (x64 + 1)
            per = np.broadcast_to(ww * unweighted, shape)
        # terms past the dtype's range overflow in the dtype, as in torch: such an
        # element's loss (and any reduction over it) may be inf or NaN
        with np.errstate(invalid="ignore"):
            overflow = ~(np.asarray(per) < np.finfo(dtype).max / 100)
            if name != "binary_cross_entropy":
                # a zero weight does not stop a term from overflowing before it multiplies
                overflow = overflow | ~(unweighted < np.finfo(dtype).max / 100)
        per = np.where(np.isfinite(per), per, 0.0)
        e = eps_for(dtype)
        n = max(int(np.prod(shape, dtype=np.int64)), 1)
        bound = {
            "none": e * (np.abs(want) + per),
            "sum": e * (abs(want) + per.sum()),
            "mean": e * (abs(want) + per.sum() / n),
        }[reduction]
        return want, bound, dtype, np.broadcast_to(overflow, shape)

    def check(result, e):
        want, bound, dtype, overflow = e
        assert_result_loss(result, dtype, reduction, shape, name)
        if overflow.any():
            if reduction != "none":
                return
            with np.errstate(all="ignore"):
                result = np.where(overflow, np.asarray(want).astype(dtype), result)
        assert_close(result, want, bound, dtype, name)

    args = dict(x=x, target=target, weight=weight, reduction=reduction)
    if name != "binary_cross_entropy":
        args["pos_weight"] = pos_weight
    return Case(
        name=name,
        call=call,
        errors=errors,
        expect=expect,
        check=check,
        args=args,
        faults=tuple(sorted(bad)),
    )


# --------------------------------------------------------------------------
# the properties


@FUZZ
@given(case=ce_cases())
def test_cross_entropy_family_returns_the_reference_or_a_spec_error(case):
    run_case(case)


@FUZZ
@given(case=shared_ce_cases())
def test_cases_of_the_shared_generator_return_the_reference(case):
    run_case(case)


@FUZZ
@given(case=nll_cases())
def test_nll_loss_returns_the_reference_or_a_spec_error(case):
    run_case(case)


@FUZZ
@given(case=softmax_cases())
def test_softmax_family_returns_the_reference_or_a_spec_error(case):
    run_case(case)


@FUZZ
@given(case=bce_cases())
def test_binary_cross_entropy_returns_the_reference_or_a_spec_error(case):
    run_case(case)


@FUZZ
@given(
    n=st.one_of(
        st.none(),
        st.integers(-3, 70000),
        st.floats(allow_nan=True),
        st.booleans(),
        st.text(max_size=3),
        st.sampled_from([np.int64(2), np.uint8(0)]),
    )
)
def test_set_num_threads_takes_a_count_or_raises(n):
    before = fastce.get_num_threads()
    try:
        try:
            fastce.set_num_threads(n)
        except SPEC_ERRORS:
            ok = n is None or (
                isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1
            )
            assert not ok, f"set_num_threads({n!r}) refused a valid count"
            assert fastce.get_num_threads() == before, "a failing call changed the count"
            return
        if n is None:
            assert fastce.get_num_threads() == before
        else:
            assert isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1
            # within the cap of four threads per usable core
            assert fastce.get_num_threads() == min(int(n), _kernels.thread_cap())
    finally:
        fastce.set_num_threads(None)


def test_the_long_runner_counts_examples_in_both_statistics_formats():
    # a format it cannot read must not report a run of no examples as a pass
    from fuzz_long import count_examples

    old = "tests/test_fuzz.py::test_a:\n  - 120 passing examples, 0 failing examples, 3 invalid\n"
    new = (
        "tests/test_fuzz.py::test_b:\n  - during generate phase (0.26 seconds):\n"
        "    - 300 passing, 0 failing, and 0 invalid test cases\n"
    )
    assert count_examples(old + new) == {"test_a": 120, "test_b": 300}
