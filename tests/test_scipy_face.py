"""fastce.scipy against scipy.special: random inputs over axes, dtypes and
layouts, the special values, the errors, and the reads without a copy."""

import doctest
import itertools
import sys
import warnings
import zlib

import numpy as np
import pytest

special = pytest.importorskip("scipy.special")

import fastce.scipy  # noqa: E402
from fastce.scipy import _ClassView  # noqa: E402

FUNCTIONS = ("logsumexp", "softmax", "log_softmax")
RTOL = {np.dtype(np.float16): 1e-3, np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def scipy_result(name, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return getattr(special, name)(*args, **kwargs)


def assert_same(actual, expected, rtol=None):
    """Same type (scalar or array), dtype, shape, and values to ``rtol``
    (NaN where SciPy has NaN, the same infinities)."""
    assert type(actual) is type(expected), (type(actual), type(expected))
    assert actual.dtype == expected.dtype
    assert np.shape(actual) == np.shape(expected)
    rtol = RTOL[np.dtype(expected.dtype)] if rtol is None else rtol
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 1e-2, equal_nan=True)


def layouts(x):
    """``x`` as C-ordered, Fortran-ordered, reversed, strided and transposed arrays."""
    yield "C", x
    yield "F", np.asfortranarray(x)
    yield "reversed", x[::-1]
    big = np.repeat(x, 2, axis=-1)
    yield "strided", big[..., ::2]
    yield "transposed", np.ascontiguousarray(x.T).T


def all_axes(ndim):
    yield None
    yield from range(-ndim, ndim)
    for r in range(2, ndim + 1):
        yield from itertools.combinations(range(ndim), r)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("shape", [(7,), (5, 6), (3, 4, 5), (2, 3, 1, 4)])
def test_random_against_scipy(name, dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    for layout, xl in layouts(x):
        for axis in all_axes(x.ndim):
            expected = scipy_result(name, xl, axis)
            if dtype == np.float16:
                # fastce rounds the float32 result once; SciPy computes in float16
                expected = scipy_result(name, xl.astype(np.float64), axis).astype(dtype)
            try:
                assert_same(getattr(fastce.scipy, name)(xl, axis=axis), expected)
            except AssertionError as e:
                raise AssertionError(f"{layout} layout, axis={axis}: {e}") from None


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32", "int64", "bool"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_integers_as_scipy(name, dtype):
    x = np.array([[3, 1, 0], [2, 2, 7]]).astype(dtype)
    if dtype == "bool" and name != "logsumexp":
        with pytest.raises(TypeError, match="booleans"):
            getattr(fastce.scipy, name)(x)
        return
    for axis in (None, 0, 1):
        expected = scipy_result(name, x, axis)
        if np.dtype(dtype).itemsize == 1 and name != "logsumexp":
            # SciPy subtracts the maximum in the integer dtype (uint8 wraps
            # around) and computes in float16; fastce rounds the exact result
            expected = scipy_result(name, x.astype(np.float64), axis).astype(np.float16)
        assert_same(getattr(fastce.scipy, name)(x, axis=axis), expected)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("value", [1000, 1.5, np.float32(-2.0), [1.0, 2.0], [[1, 2], [3, 4]]])
def test_scalars_and_lists(name, value):
    assert_same(getattr(fastce.scipy, name)(value), scipy_result(name, value))


SPECIAL_ROWS = [
    [np.inf, 1.0, 2.0],
    [np.inf, -np.inf, 0.0],
    [np.inf, np.inf, 0.0],
    [-np.inf, -np.inf, -np.inf],
    [np.nan, 1.0, 2.0],
    [np.inf, np.nan, 1.0],
    [-np.inf, 1.0, 1.0],
    [0.0, -40.0, -50.0],
    [1e10, 1e-10, -1e10],
]


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_special_values_as_scipy(name, dtype):
    x = np.array(SPECIAL_ROWS, dtype=dtype)
    for axis in (1, None):
        assert_same(getattr(fastce.scipy, name)(x, axis=axis), scipy_result(name, x, axis))
    # one special row among ordinary ones, and the class axis first
    assert_same(getattr(fastce.scipy, name)(x.T, axis=0), scipy_result(name, x.T, 0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logsumexp_sign_of_special_rows(dtype):
    x = np.array(SPECIAL_ROWS, dtype=dtype)
    r, s = fastce.scipy.logsumexp(x, axis=1, return_sign=True)
    r_ref, s_ref = scipy_result("logsumexp", x, axis=1, return_sign=True)
    assert_same(r, r_ref)
    np.testing.assert_array_equal(s, s_ref)
    assert s.dtype == s_ref.dtype


def test_logsumexp_near_zero_keeps_relative_precision():
    x = np.array([[0.0, -40.0], [0.0, -30.0], [-1e-9, -45.0]])
    np.testing.assert_allclose(
        fastce.scipy.logsumexp(x, axis=1), np.logaddexp(x[:, 0], x[:, 1]), rtol=1e-14
    )


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("return_sign", [False, True])
@pytest.mark.parametrize("b_shape", [(3, 4, 5), (5,), (4, 1), (1, 1, 1), (), (2, 1, 1, 1)], ids=str)
def test_logsumexp_weights_as_scipy(b_shape, keepdims, return_sign):
    rng = np.random.default_rng(len(b_shape))
    a = rng.standard_normal((3, 4, 5)) * 4
    b = rng.standard_normal(b_shape)
    b[b > 1.0] = 0.0  # zero weights
    for axis in all_axes(max(a.ndim, b.ndim)):
        kwargs = dict(axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
        r = fastce.scipy.logsumexp(a, **kwargs)
        ref = scipy_result("logsumexp", a, **kwargs)
        if return_sign:
            assert_same(r[0], ref[0], rtol=1e-9)
            np.testing.assert_array_equal(r[1], ref[1])
        else:
            assert_same(r, ref, rtol=1e-9)


@pytest.mark.parametrize(
    "a, b",
    [
        ([1.0, np.inf], [1, 0]),
        ([1.0, np.nan], [1, 0]),
        ([np.inf], [0]),
        ([np.inf], [-1.0]),
        ([1000.0, 1000.0], [1, -1]),
        ([1.0, 1.0], [1, -1]),
        ([2.0, 1.0, 3.0], [0, 0, 0]),
        ([np.inf, np.inf], [1, -1]),
        ([3.06409428, 0.37251854, 3.87471931], [1.88190708, 2.84174795, -3.85016884]),
    ],
)
def test_logsumexp_special_weights_as_scipy(a, b):
    for return_sign in (False, True):
        r = fastce.scipy.logsumexp(np.array(a), b=np.array(b), return_sign=return_sign)
        ref = scipy_result("logsumexp", np.array(a), b=np.array(b), return_sign=return_sign)
        if return_sign:
            assert_same(r[0], ref[0])
            np.testing.assert_array_equal(r[1], ref[1])
        else:
            assert_same(r, ref)


@pytest.mark.parametrize(
    "a_dtype, b",
    [
        (np.float32, 2.0),
        (np.float32, np.float64(2.0)),
        (np.float32, [2.0, 2.0, 2.0]),
        (np.float16, np.ones(3, np.int8)),
        (np.int32, np.ones(3, np.float32)),
    ],
)
def test_logsumexp_weight_dtypes_as_scipy(a_dtype, b):
    a = np.ones(3, dtype=a_dtype)
    assert_same(fastce.scipy.logsumexp(a, b=b), scipy_result("logsumexp", a, b=b))


def reduced_of(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    return tuple(ax % ndim for ax in ((axis,) if isinstance(axis, int) else axis))


@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3)])
def test_empty_as_scipy(shape):
    x = np.zeros(shape)
    for axis in all_axes(len(shape)):
        reduced = reduced_of(axis, len(shape))
        for keepdims in (False, True):
            r = fastce.scipy.logsumexp(x, axis=axis, keepdims=keepdims, return_sign=True)
            if len(reduced) > 1:
                # SciPy 1.17 raises IndexError here (it indexes a shape with a tuple of axes)
                expected = np.full(np.zeros(shape).sum(axis=axis, keepdims=keepdims).shape, -np.inf)
                assert_same(r[0], expected[()] if expected.ndim == 0 else expected)
                continue
            ref = scipy_result("logsumexp", x, axis=axis, keepdims=keepdims, return_sign=True)
            assert_same(r[0], ref[0])
            assert_same(r[1], ref[1])
        for name in ("softmax", "log_softmax"):
            if any(shape[ax] == 0 for ax in reduced):
                with pytest.raises(ValueError, match="zero elements"):
                    getattr(fastce.scipy, name)(x, axis=axis)
                with pytest.raises(ValueError):
                    scipy_result(name, x, axis)
            else:
                assert_same(getattr(fastce.scipy, name)(x, axis=axis), scipy_result(name, x, axis))


def test_zero_d_as_scipy():
    for value in (np.float32(3.0), np.float64(np.inf), np.float64(np.nan)):
        for name in FUNCTIONS:
            assert_same(getattr(fastce.scipy, name)(value), scipy_result(name, value))
        for keepdims in (False, True):
            r = fastce.scipy.logsumexp(value, axis=0, keepdims=keepdims)
            assert_same(r, scipy_result("logsumexp", value, axis=0, keepdims=keepdims))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_complex_goes_to_scipy(name):
    x = np.array([[1 + 1j, 2 - 1j], [0.5j, -1.0]])
    np.testing.assert_allclose(
        getattr(fastce.scipy, name)(x, axis=1), scipy_result(name, x, axis=1), rtol=1e-14
    )


@pytest.mark.parametrize("name", FUNCTIONS)
def test_complex_without_scipy_is_a_type_error(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.special", None)
    with pytest.raises(TypeError, match="needs SciPy"):
        getattr(fastce.scipy, name)(np.array([1 + 1j, 2.0]))
    # real input needs no SciPy
    assert np.isfinite(getattr(fastce.scipy, name)(np.array([1.0, 2.0]))).all()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bad_axes_raise_as_numpy(name):
    f = getattr(fastce.scipy, name)
    x = np.ones((2, 3))
    with pytest.raises(np.exceptions.AxisError):
        f(x, axis=2)
    with pytest.raises(np.exceptions.AxisError):
        f(x, axis=(0, -3))
    with pytest.raises(ValueError, match="duplicate value in 'axis'"):
        f(x, axis=(1, -1))
    with pytest.raises(TypeError, match="axis must be"):
        f(x, axis=1.0)
    with pytest.raises(TypeError, match="axis must be"):
        f(x, axis="0")
    with pytest.raises(TypeError, match="axis must be"):
        f(x, axis=[0, 1])  # NumPy's reductions take a tuple, not a list


@pytest.mark.parametrize("name", FUNCTIONS)
def test_non_numbers_raise(name):
    f = getattr(fastce.scipy, name)
    with pytest.raises(ValueError, match="strings"):
        f(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="real numbers"):
        f(np.array([1.0, 2.0], dtype=object))


def test_incompatible_weights_raise():
    with pytest.raises(ValueError, match="incompatible for broadcasting"):
        fastce.scipy.logsumexp(np.ones(3), b=np.ones(2))


def test_inputs_are_not_modified():
    a = np.array([[5.0, 4.0], [np.inf, 1.0]])
    b = np.array([[3.0, 0.0], [1.0, -2.0]])
    a0, b0 = a.copy(), b.copy()
    for name in FUNCTIONS:
        getattr(fastce.scipy, name)(a, axis=1)
    fastce.scipy.logsumexp(a, b=b, axis=1, return_sign=True)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize(
    "layout, axis",
    [
        ("C", None),
        ("C", 0),
        ("C", 1),
        ("C", (1, 2)),
        ("C", (0, 1)),
        ("F", None),
        ("F", (0, 1)),
        ("F", 2),
        ("reversed", 0),
        ("reversed", (1, 2)),
        ("transposed", (0, 1)),
        ("transposed", 2),
    ],
)
def test_reduced_axes_are_read_without_a_copy(layout, axis):
    x = dict(layouts(np.zeros((3, 4, 5))))[layout]
    reduced = tuple(range(3)) if axis is None else (axis,) if isinstance(axis, int) else axis
    view = _ClassView(x, reduced)
    assert np.shares_memory(view.x3, x)
    assert view.x3.shape[1] == np.prod([x.shape[ax] for ax in reduced])


def test_interleaved_axes_are_copied_and_still_right():
    # no (outer, C, inner) view of a C-ordered array has axes 0 and 2 as its classes
    x = np.random.default_rng(3).standard_normal((3, 4, 5))
    assert not np.shares_memory(_ClassView(x, (0, 2)).x3, x)
    for name in FUNCTIONS:
        assert_same(getattr(fastce.scipy, name)(x, axis=(0, 2)), scipy_result(name, x, (0, 2)))


def test_per_class_results_keep_the_layout():
    x = np.asfortranarray(np.random.default_rng(4).standard_normal((50, 40)))
    for name in ("softmax", "log_softmax"):
        r = getattr(fastce.scipy, name)(x, axis=0)
        assert r.flags.f_contiguous


def test_float16_is_rounded_once_from_float32():
    x = np.random.default_rng(5).standard_normal((40, 30)).astype(np.float16)
    exact = special.softmax(x.astype(np.float64), axis=1)
    r = fastce.scipy.softmax(x, axis=1)
    assert r.dtype == np.float16
    np.testing.assert_array_equal(
        r, special.softmax(x.astype(np.float32), axis=1).astype(np.float16)
    )
    assert np.abs(r - exact).max() <= np.abs(special.softmax(x, axis=1) - exact).max()


def test_docstring_examples_run():
    result = doctest.testmod(fastce.scipy, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
