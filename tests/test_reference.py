"""Every fast function against its float64 NumPy twin in ``fastce.reference``.

One generator of inputs (shapes, class axes, dtypes, memory layouts, options)
drives the comparisons, bottleneck-style; closed-form values, edge cases,
``out=`` buffers and the promise that inputs are never modified follow.
"""

import itertools
import warnings

import numpy as np
import pytest
from cases import LAYOUTS, arrange, class_axis, loss_shape, make_case
from numpy.testing import assert_allclose, assert_array_equal

import fastce
from fastce import reference as ref

FLOATS = (np.float32, np.float64)
INDEX_DTYPES = (np.int64, np.int32, np.uint8)
REDUCTIONS = ("none", "sum", "mean")

# logits shape, the ``axis`` argument (None: PyTorch's rule)
GEOMETRIES = (
    ((7,), None),  # unbatched: (C,) logits, 0-d target
    ((13, 5), None),
    ((13, 5), 1),
    ((13, 5), -1),
    ((5, 13), 0),  # class axis first
    ((4, 6, 3, 2), None),  # (N, C, H, W)
    ((2, 3, 11), -1),  # (B, T, V), class axis last
    ((2, 11, 3), -2),  # class axis in the middle
    ((3, 4, 0), None),  # K-dim with no positions: no samples
    ((0, 6), None),  # no samples
    ((0, 0), None),  # no samples and no classes
)

# options for the cross-entropy family
OPTIONS = (
    {},
    {"weight": True},
    {"ignore_index": -100},
    {"ignore_index": 3},
    {"ignore_index": -1, "weight": True},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.3, "weight": True, "ignore_index": -100},
    {"specials": True},
    {"prob": True},
    {"prob": True, "weight": True, "label_smoothing": 0.2},
)


# --------------------------------------------------------------------------
# helpers


def result_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def tolerances(dtype):
    if np.dtype(dtype) == np.float64:
        return 1e-10, 1e-12
    return 1e-5, 1e-6


def assert_matches(fast, slow, dtype, msg=""):
    """``fast`` equals the float64 ``slow`` to the tolerance of ``dtype``:
    ``rtol`` plus an ``atol`` scaled by the largest finite magnitude."""
    fast = np.asarray(fast)
    slow = np.asarray(slow)
    assert fast.shape == slow.shape, f"shape {fast.shape} != {slow.shape}: {msg}"
    rtol, atol = tolerances(dtype)
    finite = np.abs(slow[np.isfinite(slow)])
    scale = float(finite.max()) if finite.size else 0.0
    assert_allclose(
        fast.astype(np.float64),
        slow,
        rtol=rtol,
        atol=atol * (scale if scale > 0 else 1.0),
        equal_nan=True,
        err_msg=msg,
    )


def assert_scalar_result(value, dtype, msg=""):
    assert isinstance(value, np.floating), f"{type(value)} is not a NumPy scalar: {msg}"
    assert np.ndim(value) == 0, msg
    assert value.dtype == result_dtype(dtype), f"{value.dtype}: {msg}"


def assert_array_result(value, dtype, shape, msg=""):
    assert isinstance(value, np.ndarray), f"{type(value)} is not an array: {msg}"
    assert value.dtype == result_dtype(dtype), f"{value.dtype}: {msg}"
    assert value.shape == shape, f"{value.shape} != {shape}: {msg}"


def snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unmodified(before, after, msg=""):
    for b, a in zip(before, after):
        if b is None:
            continue
        a = np.asarray(a)
        assert a.dtype == b.dtype, msg
        assert_array_equal(a, b, err_msg="input modified: " + msg)


def ce_cases(dtype, reduction):
    """Yield ``(description, logits, target, weight, kwargs, grad_output)``."""
    rng = np.random.default_rng(12345)
    for (shape, axis), option, layout, index_dtype in itertools.product(
        GEOMETRIES, OPTIONS, LAYOUTS, INDEX_DTYPES
    ):
        if option.get("prob") and index_dtype is not np.int64:
            continue
        case = make_case(rng, shape, axis, dtype, option, index_dtype, scale=3.0)
        if case is None:
            continue
        logits, target, weight, kwargs = case
        if reduction == "none":
            lshape = loss_shape(shape, axis)
            go = rng.standard_normal(lshape) if rng.random() < 0.7 else 0.5
        else:
            go = 1.0 if rng.random() < 0.5 else -0.75
        desc = (
            f"shape={shape} axis={axis} option={option} layout={layout} "
            f"target={np.dtype(target.dtype).name}"
        )
        logits = arrange(logits, layout)
        target = arrange(target, layout)
        if weight is not None:
            weight = arrange(weight, layout)
        yield desc, logits, target, weight, kwargs, go


# --------------------------------------------------------------------------
# closed-form values


WORKED_LOGITS = [1.0, 2.0, 0.1]
WORKED_LOSS = 0.417030
WORKED_GRAD = [0.242433, -0.340999, 0.098566]


@pytest.mark.parametrize("module", [fastce, ref], ids=["fast", "reference"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_worked_example(module, dtype):
    x = np.array(WORKED_LOGITS, dtype=dtype)
    assert_allclose(float(module.cross_entropy(x, np.array(1))), WORKED_LOSS, atol=1e-6)
    assert_allclose(module.cross_entropy_grad(x, np.array(1)), WORKED_GRAD, atol=1e-6)
    loss, grad = module.cross_entropy_with_grad(x, np.array(1))
    assert_allclose(float(loss), WORKED_LOSS, atol=1e-6)
    assert_allclose(grad, WORKED_GRAD, atol=1e-6)
    assert_allclose(float(module.logsumexp(x)), 2.417030, atol=1e-6)
    # batched, every reduction
    xb = np.array([WORKED_LOGITS, WORKED_LOGITS], dtype=dtype)
    t = np.array([1, 1])
    assert_allclose(module.cross_entropy(xb, t, reduction="none"), [WORKED_LOSS] * 2, atol=1e-6)
    assert_allclose(float(module.cross_entropy(xb, t, reduction="sum")), 2 * WORKED_LOSS, atol=1e-6)
    assert_allclose(float(module.cross_entropy(xb, t)), WORKED_LOSS, atol=1e-6)
    assert_allclose(module.cross_entropy_grad(xb, t), np.array([WORKED_GRAD] * 2) / 2, atol=1e-6)
    assert_allclose(module.softmax(x), np.array(WORKED_GRAD) + [0, 1, 0], atol=1e-6)


@pytest.mark.parametrize("module", [fastce, ref], ids=["fast", "reference"])
def test_closed_form_smoothing_and_weights(module):
    x = np.array([[1.0, 2.0, 0.1]])
    logp = x - np.log(np.exp(x).sum())
    eps, w = 0.3, np.array([0.5, 2.0, 1.5])
    # a = (1 - eps) * w[t] * onehot + eps / C * w
    a = (1 - eps) * w[1] * np.array([0, 1, 0]) + eps / 3 * w
    expected = -(a * logp).sum()
    got = module.cross_entropy(x, np.array([1]), w, label_smoothing=eps, reduction="sum")
    assert_allclose(float(got), expected, rtol=1e-12)
    got = module.cross_entropy(x, np.array([1]), w, label_smoothing=eps)
    assert_allclose(float(got), expected / w[1], rtol=1e-12)
    grad = module.cross_entropy_grad(x, np.array([1]), w, label_smoothing=eps, reduction="sum")
    assert_allclose(grad[0], a.sum() * np.exp(logp[0]) - a, rtol=1e-12)
    # probability target: a = w * ((1 - eps) * y + eps / C); "mean" divides by N
    y = np.array([[0.2, 0.5, 0.3]])
    a = w * ((1 - eps) * y + eps / 3)
    got = module.cross_entropy(np.vstack([x, x]), np.vstack([y, y]), w, label_smoothing=eps)
    assert_allclose(float(got), -(a * logp).sum(), rtol=1e-12)


@pytest.mark.parametrize("module", [fastce, ref], ids=["fast", "reference"])
def test_closed_form_binary(module):
    x = np.array([0.0, 2.0, -3.0])
    y = np.array([1.0, 0.0, 0.25])
    sig = 1 / (1 + np.exp(-x))
    expected = -(y * np.log(sig) + (1 - y) * np.log(1 - sig))
    assert_allclose(
        module.binary_cross_entropy_with_logits(x, y, reduction="none"), expected, rtol=1e-12
    )
    pw = np.array([3.0])
    expected_pw = -(pw * y * np.log(sig) + (1 - y) * np.log(1 - sig))
    got = module.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none")
    assert_allclose(got, expected_pw, rtol=1e-12)
    assert_allclose(float(module.binary_cross_entropy(sig, y)), expected.mean(), rtol=1e-12)
    # the log is clamped at -100
    got = module.binary_cross_entropy(np.array([0.0, 1.0]), np.array([1.0, 0.0]), reduction="none")
    assert_array_equal(got, [100.0, 100.0])


def test_reference_matches_scipy():
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 9)) * 5
    for axis in (0, 1, -1):
        assert_allclose(ref.logsumexp(x, axis=axis), special.logsumexp(x, axis=axis), rtol=1e-13)
        assert_allclose(
            ref.log_softmax(x, axis=axis), special.log_softmax(x, axis=axis), rtol=1e-12, atol=1e-13
        )
        assert_allclose(
            ref.softmax(x, axis=axis), special.softmax(x, axis=axis), rtol=1e-12, atol=1e-15
        )


# --------------------------------------------------------------------------
# the generator: cross-entropy family


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("func", ["cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad"])
def test_cross_entropy_family_matches_reference(func, dtype, reduction):
    n = 0
    for desc, logits, target, weight, kwargs, go in ce_cases(dtype, reduction):
        before = snapshot(logits, target, weight, go)
        msg = f"{func} {np.dtype(dtype).name} {reduction} {desc}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if func == "cross_entropy":
                got_loss = fastce.cross_entropy(
                    logits, target, weight, reduction=reduction, **kwargs
                )
                got_grad = None
            elif func == "cross_entropy_grad":
                got_loss = None
                got_grad = fastce.cross_entropy_grad(
                    logits, target, weight, reduction=reduction, grad_output=go, **kwargs
                )
            else:
                got_loss, got_grad = fastce.cross_entropy_with_grad(
                    logits, target, weight, reduction=reduction, grad_output=go, **kwargs
                )
        assert_unmodified(before, [logits, target, weight, go], msg)
        want_loss, want_grad = ref.cross_entropy_with_grad(
            logits, target, weight, reduction=reduction, grad_output=go, **kwargs
        )
        if got_loss is not None:
            if reduction == "none":
                assert_array_result(got_loss, dtype, want_loss.shape, msg)
            else:
                assert_scalar_result(got_loss, dtype, msg)
            assert_matches(got_loss, want_loss, dtype, msg)
        if got_grad is not None:
            assert_array_result(got_grad, dtype, logits.shape, msg)
            assert_matches(got_grad, want_grad, dtype, msg)
        n += 1
    assert n > 1000


# bigger rows and planes: row blocks split between threads, and the kernel that
# vectorises across inner positions (class axis not last, inner > 1)
LARGER_GEOMETRIES = (
    ((5000, 7), None),
    ((257, 3, 5), None),
    ((3, 700, 33), 1),
    ((33, 700), 0),
    ((5, 3, 2000), -1),
    ((2, 9, 4000), 1),
    ((64, 1, 9), None),
)


@pytest.mark.parametrize("shape, axis", LARGER_GEOMETRIES, ids=str)
def test_larger_geometries_match_reference(shape, axis):
    rng = np.random.default_rng(21)
    options = (
        {},
        {"ignore_index": -100},
        {"label_smoothing": 0.2, "weight": True},
        {"prob": True},
        {"prob": True, "weight": True, "label_smoothing": 0.1},
    )
    for dtype, option, reduction, scale in itertools.product(
        FLOATS, options, REDUCTIONS, (3.0, 1e4)
    ):
        logits, target, weight, kwargs = make_case(rng, shape, axis, dtype, option, scale=scale)
        go = rng.standard_normal(loss_shape(shape, axis)) if reduction == "none" else 1.0
        msg = f"{np.dtype(dtype).name} {option} {reduction} scale={scale}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            loss, grad = fastce.cross_entropy_with_grad(
                logits, target, weight, reduction=reduction, grad_output=go, **kwargs
            )
        want_loss, want_grad = ref.cross_entropy_with_grad(
            logits, target, weight, reduction=reduction, grad_output=go, **kwargs
        )
        assert_matches(loss, want_loss, dtype, msg)
        assert_matches(grad, want_grad, dtype, msg)
    for dtype in (np.float16, np.float32, np.float64):
        x = (rng.standard_normal(shape) * 4).astype(dtype)
        for func, ax in itertools.product(
            ("log_softmax", "softmax", "logsumexp"), range(len(shape))
        ):
            assert_matches(
                getattr(fastce, func)(x, axis=ax),
                getattr(ref, func)(x, axis=ax),
                dtype,
                f"{func} {np.dtype(dtype).name} axis={ax}",
            )


@pytest.mark.parametrize("dtype", FLOATS)
def test_cross_entropy_loss_class_matches_reference(dtype):
    rng = np.random.default_rng(3)
    for (shape, axis), option, reduction in itertools.product(GEOMETRIES[:8], OPTIONS, REDUCTIONS):
        logits, target, weight, kwargs = make_case(rng, shape, axis, dtype, option, scale=3.0)
        kw = {
            "ignore_index": kwargs.get("ignore_index", -100),
            "label_smoothing": kwargs.get("label_smoothing", 0.0),
            "axis": axis,
        }
        criterion = fastce.CrossEntropyLoss(weight, reduction=reduction, **kw)
        msg = f"{shape} {axis} {option} {reduction}"
        assert_matches(
            criterion(logits, target),
            ref.cross_entropy(logits, target, weight, reduction=reduction, **kw),
            dtype,
            msg,
        )


@pytest.mark.parametrize("dtype", FLOATS)
def test_nll_loss_matches_reference(dtype):
    rng = np.random.default_rng(4)
    n = 0
    for (shape, axis), option, layout, index_dtype, reduction in itertools.product(
        GEOMETRIES, OPTIONS[:5], LAYOUTS, INDEX_DTYPES, REDUCTIONS
    ):
        case = make_case(rng, shape, axis, dtype, option, index_dtype, scale=3.0)
        if case is None:
            continue
        logits, target, weight, kwargs = case
        log_probs = ref.log_softmax(logits, axis=class_axis(logits.ndim, axis)).astype(dtype)
        log_probs, target = arrange(log_probs, layout), arrange(target, layout)
        before = snapshot(log_probs, target, weight)
        msg = (
            f"{np.dtype(dtype).name} {shape} {axis} {option} {layout} "
            f"{np.dtype(index_dtype).name} {reduction}"
        )
        got = fastce.nll_loss(log_probs, target, weight, reduction=reduction, **kwargs)
        assert_unmodified(before, [log_probs, target, weight], msg)
        want = ref.nll_loss(log_probs, target, weight, reduction=reduction, **kwargs)
        if reduction == "none":
            assert_array_result(got, dtype, want.shape, msg)
        else:
            assert_scalar_result(got, dtype, msg)
        assert_matches(got, want, dtype, msg)
        n += 1
    assert n > 500


# --------------------------------------------------------------------------
# the generator: softmax family


SOFTMAX_SHAPES = ((7,), (5, 9), (3, 4, 5), (2, 3, 4, 5), (0, 5), (4, 1))


def softmax_inputs(dtype):
    rng = np.random.default_rng(7)
    for shape, specials, layout in itertools.product(SOFTMAX_SHAPES, (False, True), LAYOUTS):
        x = rng.standard_normal(shape) * 4
        if specials and x.size >= 8:
            flat = x.reshape(-1)
            flat[:8] = [np.nan, 1.0, np.inf, -np.inf, -np.inf, -np.inf, np.inf, 2.0]
            rng.shuffle(flat)
            x = flat.reshape(shape)
        x = arrange(x.astype(dtype), layout)
        for axis in range(-x.ndim, x.ndim):
            yield f"shape={shape} specials={specials} layout={layout} axis={axis}", x, axis


@pytest.mark.parametrize("dtype", (np.float16, np.float32, np.float64))
@pytest.mark.parametrize("func", ["log_softmax", "softmax", "logsumexp"])
def test_softmax_family_matches_reference(func, dtype):
    fast, slow = getattr(fastce, func), getattr(ref, func)
    n = 0
    for desc, x, axis in softmax_inputs(dtype):
        before = snapshot(x)
        got = fast(x, axis=axis)
        assert_unmodified(before, [x], desc)
        want = slow(x, axis=axis)
        if np.ndim(want) == 0 and isinstance(got, np.floating):
            # a full reduction may return a NumPy scalar, as np.sum does
            assert got.dtype == result_dtype(dtype), f"{func} {desc}"
        else:
            assert_array_result(got, dtype, want.shape, f"{func} {desc}")
        assert_matches(got, want, dtype, f"{func} {desc}")
        n += 1
    assert n > 100


@pytest.mark.parametrize("func", ["log_softmax", "softmax", "logsumexp"])
def test_softmax_family_default_axis_is_last(func):
    x = np.random.default_rng(0).standard_normal((3, 4, 5))
    assert_matches(getattr(fastce, func)(x), getattr(ref, func)(x, axis=-1), np.float64)
    assert_matches(getattr(ref, func)(x), getattr(ref, func)(x, axis=2), np.float64)


@pytest.mark.parametrize("func", ["log_softmax", "softmax", "logsumexp"])
def test_softmax_family_special_rows(func):
    inf, nan = np.inf, np.nan
    x = np.array([[inf, 1.0], [-inf, -inf], [-inf, 1.0], [nan, 1.0], [inf, inf], [inf, -inf]])
    expected = {
        "logsumexp": [inf, -inf, 1.0, nan, inf, inf],
        "log_softmax": [[nan, nan], [nan, nan], [-inf, 0.0], [nan, nan], [nan, nan], [nan, nan]],
        "softmax": [[nan, nan], [nan, nan], [0.0, 1.0], [nan, nan], [nan, nan], [nan, nan]],
    }[func]
    for module in (fastce, ref):
        assert_array_equal(getattr(module, func)(x, axis=1), expected)
        assert_array_equal(getattr(module, func)(x.astype(np.float32), axis=1), expected)


# --------------------------------------------------------------------------
# the generator: binary cross-entropy


def binary_cases(dtype):
    rng = np.random.default_rng(11)
    for shape, layout in itertools.product(((6,), (4, 5), (2, 3, 4), (0, 3)), LAYOUTS):
        weights = [None, rng.uniform(0.1, 2, shape[-1:]), rng.uniform(0.1, 2, shape)]
        if len(shape) >= 2:
            weights.append(rng.uniform(0.1, 2, (shape[0],) + (1,) * (len(shape) - 1)))
        pos_weights = [None, rng.uniform(0.1, 3, shape[-1:]), np.array([2.5])]
        for weight, pos_weight in itertools.product(weights, pos_weights):
            x = rng.standard_normal(shape) * 4
            if x.size >= 2:
                x.reshape(-1)[:2] = [800.0, -800.0]
            y = rng.random(shape)
            if y.size >= 2:
                y.reshape(-1)[:2] = [0.0, 1.0]
            p = rng.random(shape)
            if p.size >= 3:
                p.reshape(-1)[:3] = [0.0, 1.0, 1e-50]
            desc = (
                f"shape={shape} layout={layout} weight={None if weight is None else weight.shape} "
                f"pos_weight={None if pos_weight is None else pos_weight.shape}"
            )
            arr = [arrange(a.astype(dtype), layout) for a in (x, y, p)]
            w = None if weight is None else arrange(weight, layout)
            yield desc, arr[0], arr[1], arr[2], w, pos_weight


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_binary_cross_entropy_with_logits_matches_reference(dtype, reduction):
    n = 0
    for desc, x, y, _, w, pw in binary_cases(dtype):
        before = snapshot(x, y, w, pw)
        got = fastce.binary_cross_entropy_with_logits(x, y, w, pos_weight=pw, reduction=reduction)
        assert_unmodified(before, [x, y, w, pw], desc)
        want = ref.binary_cross_entropy_with_logits(x, y, w, pos_weight=pw, reduction=reduction)
        if reduction == "none":
            assert_array_result(got, dtype, x.shape, desc)
        else:
            assert_scalar_result(got, dtype, desc)
        assert_matches(got, want, dtype, desc)
        n += 1
    assert n > 100


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_binary_cross_entropy_matches_reference(dtype, reduction):
    n = 0
    for desc, _, y, p, w, pw in binary_cases(dtype):
        if pw is not None:
            continue
        before = snapshot(p, y, w)
        got = fastce.binary_cross_entropy(p, y, w, reduction=reduction)
        assert_unmodified(before, [p, y, w], desc)
        want = ref.binary_cross_entropy(p, y, w, reduction=reduction)
        if reduction == "none":
            assert_array_result(got, dtype, p.shape, desc)
        else:
            assert_scalar_result(got, dtype, desc)
        assert_matches(got, want, dtype, desc)
        n += 1
    assert n > 30


# --------------------------------------------------------------------------
# dtypes of the results


@pytest.mark.parametrize("dtype", (np.float16, np.float32, np.float64))
def test_result_dtypes(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4)).astype(dtype)
    t = rng.integers(0, 4, 6)
    out_dtype = result_dtype(dtype)
    for reduction in ("mean", "sum"):
        assert_scalar_result(fastce.cross_entropy(x, t, reduction=reduction), dtype)
        loss, grad = fastce.cross_entropy_with_grad(x, t, reduction=reduction)
        assert_scalar_result(loss, dtype)
        assert_array_result(grad, dtype, x.shape)
        assert_scalar_result(fastce.nll_loss(x, t, reduction=reduction), dtype)
        y = rng.random((6, 4)).astype(dtype)
        assert_scalar_result(
            fastce.binary_cross_entropy_with_logits(x, y, reduction=reduction), dtype
        )
        assert_scalar_result(fastce.binary_cross_entropy(y, y, reduction=reduction), dtype)
    assert_array_result(fastce.cross_entropy(x, t, reduction="none"), dtype, (6,))
    assert_array_result(fastce.cross_entropy_grad(x, t), dtype, (6, 4))
    assert_array_result(fastce.log_softmax(x), dtype, (6, 4))
    assert_array_result(fastce.softmax(x), dtype, (6, 4))
    assert_array_result(fastce.logsumexp(x), dtype, (6,))
    assert np.dtype(out_dtype) == fastce.cross_entropy(x, t).dtype
    # float16 is computed in float32: it matches the reference to float32 accuracy
    assert_matches(
        fastce.cross_entropy(x, t, reduction="none"),
        ref.cross_entropy(x, t, reduction="none"),
        np.float32,
    )


def test_unbatched_results():
    x = np.array(WORKED_LOGITS)
    none = fastce.cross_entropy(x, np.array(1), reduction="none")
    assert isinstance(none, np.ndarray) and none.shape == ()
    assert_scalar_result(fastce.cross_entropy(x, np.array(1)), np.float64)
    assert fastce.cross_entropy_grad(x, np.array(1)).shape == (3,)


def test_lists_are_accepted():
    got = fastce.cross_entropy([[1.0, 2.0, 0.1]], [1])
    assert_allclose(float(got), WORKED_LOSS, atol=1e-6)
    assert_scalar_result(got, np.float64)


# --------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_and_inf_logits(dtype):
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [nan, 1.0, 2.0],  # NaN logit
            [inf, 1.0, 2.0],  # +inf logit
            [1.0, -inf, 2.0],  # -inf at the target (target 1)
            [1.0, -inf, 2.0],  # -inf at a non-target class (target 0)
            [1.0, 2.0, 3.0],
        ],
        dtype=dtype,
    )
    t = np.array([1, 0, 1, 0, 2])
    for module in (fastce, ref):
        loss, grad = module.cross_entropy_with_grad(x, t, reduction="none", grad_output=1.0)
        loss, grad = np.asarray(loss), np.asarray(grad)
        assert np.isnan(loss[0]) and np.isnan(loss[1])
        assert loss[2] == inf
        assert np.isfinite(loss[3]) and np.isfinite(loss[4])
        assert np.isnan(grad[0]).all() and np.isnan(grad[1]).all()
        assert grad[3, 1] == 0.0
        assert np.isfinite(grad[2:]).all()
        # -inf at the target: the gradient is p - onehot, with p = 0 at the target
        assert_allclose(
            grad[2],
            [np.exp(1) / (np.exp(1) + np.exp(2)), -1.0, np.exp(2) / (np.exp(1) + np.exp(2))],
            rtol=1e-6,
        )
        assert np.isnan(module.cross_entropy(x, t))
        assert module.cross_entropy(x[2:], t[2:]) == inf
        assert np.isfinite(module.cross_entropy(x[3:], t[3:]))


@pytest.mark.parametrize("dtype", FLOATS)
def test_ignored_samples_contribute_nothing(dtype):
    x = np.array(
        [[np.nan, np.inf, -np.inf], [1.0, 2.0, 0.1], [np.nan, np.nan, np.nan]], dtype=dtype
    )
    t = np.array([-100, 1, -100])
    for module in (fastce, ref):
        loss = np.asarray(module.cross_entropy(x, t, reduction="none"))
        assert loss[0] == 0.0 and loss[2] == 0.0
        assert_allclose(loss[1], WORKED_LOSS, atol=1e-6)
        assert_allclose(float(module.cross_entropy(x, t)), WORKED_LOSS, atol=1e-6)
        assert_allclose(float(module.cross_entropy(x, t, reduction="sum")), WORKED_LOSS, atol=1e-6)
        grad = module.cross_entropy_grad(x, t, label_smoothing=0.1)
        assert_array_equal(grad[[0, 2]], 0.0)
        assert np.isfinite(grad[1]).all()
    # a custom ignore_index, inside the class range
    t3 = np.array([2, 1, 2])
    got = fastce.cross_entropy_with_grad(x, t3, ignore_index=2)
    assert_allclose(float(got[0]), WORKED_LOSS, atol=1e-6)
    assert_array_equal(got[1][[0, 2]], 0.0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_no_samples(dtype):
    for shape, tshape in (((0, 5), (0,)), ((0, 0), (0,)), ((3, 4, 0), (3, 0))):
        x = np.zeros(shape, dtype)
        t = np.zeros(tshape, np.int64)
        for module in (fastce, ref):
            assert np.isnan(module.cross_entropy(x, t))
            assert module.cross_entropy(x, t, reduction="sum") == 0.0
            assert np.asarray(module.cross_entropy(x, t, reduction="none")).shape == tshape
            loss, grad = module.cross_entropy_with_grad(x, t)
            assert np.isnan(loss)
            assert grad.shape == shape
            y = np.zeros(shape, dtype)
            assert np.isnan(module.cross_entropy(x, y))
            assert module.cross_entropy(x, y, reduction="sum") == 0.0
        assert_scalar_result(fastce.cross_entropy(x, t), dtype)
        assert_scalar_result(fastce.cross_entropy(x, t, reduction="sum"), dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_sample_ignored(dtype):
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(dtype)
    t = np.full(4, -100)
    for module in (fastce, ref):
        loss, grad = module.cross_entropy_with_grad(x, t, label_smoothing=0.2)
        assert np.isnan(loss)
        assert_array_equal(grad, np.zeros((4, 3)))
        assert module.cross_entropy(x, t, reduction="sum") == 0.0
        assert_array_equal(module.cross_entropy(x, t, reduction="none"), np.zeros(4))


@pytest.mark.parametrize("dtype", FLOATS)
def test_zero_weight_denominator(dtype):
    """ "mean" whose targets all have weight 0: NaN, as torch; the gradient is 0 for
    samples whose coefficients are all 0 and NaN where smoothing makes them not."""
    x = np.random.default_rng(13).standard_normal((3, 4)).astype(dtype)
    t = np.zeros(3, np.int64)
    w = np.array([0.0, 1.0, 1.0, 1.0])
    for module in (fastce, ref):
        loss, grad = module.cross_entropy_with_grad(x, t, w)
        assert np.isnan(loss)
        assert_array_equal(grad, np.zeros((3, 4)))
        loss, grad = module.cross_entropy_with_grad(x, t, w, label_smoothing=0.1)
        assert np.isnan(loss)
        assert np.isnan(grad).all()
        assert module.cross_entropy(x, t, w, reduction="sum") == 0.0


@pytest.mark.parametrize("dtype", FLOATS)
def test_single_class_is_zero_and_warns(dtype):
    x = np.array([[3.0], [-2.0], [0.5]], dtype=dtype)
    t = np.zeros(3, np.int64)
    with pytest.warns(RuntimeWarning):
        loss = fastce.cross_entropy(x, t, reduction="none")
    assert_array_equal(loss, np.zeros(3))
    with pytest.warns(RuntimeWarning):
        assert fastce.cross_entropy(x, t) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_array_equal(fastce.cross_entropy_grad(x, t), np.zeros((3, 1)))
        loss, grad = fastce.cross_entropy_with_grad(x, t, reduction="sum")
    assert loss == 0.0
    assert_array_equal(grad, np.zeros((3, 1)))
    assert_array_equal(ref.cross_entropy(x, t, reduction="none"), np.zeros(3))


def test_memmapped_input(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    t = rng.integers(0, 7, 50)
    path = tmp_path / "logits.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    del mm
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    assert_matches(fastce.cross_entropy(ro, t), ref.cross_entropy(x, t), np.float32)
    assert_matches(fastce.cross_entropy_grad(ro, t), ref.cross_entropy_grad(x, t), np.float32)
    assert_matches(fastce.log_softmax(ro), ref.log_softmax(x), np.float32)
    assert_array_equal(np.asarray(ro), x)


# --------------------------------------------------------------------------
# out= buffers


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("func", ["cross_entropy_grad", "cross_entropy_with_grad"])
def test_gradient_out_buffer(func, dtype):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 5)).astype(dtype)
    t = rng.integers(0, 5, 8)
    want = ref.cross_entropy_grad(x, t, label_smoothing=0.1)
    out = np.full_like(x, 7.0)
    before = snapshot(x, t)
    res = getattr(fastce, func)(x, t, label_smoothing=0.1, out=out)
    grad = res[1] if func == "cross_entropy_with_grad" else res
    assert np.shares_memory(grad, out)
    assert_matches(out, want, dtype)
    assert_unmodified(before, [x, t])
    if func == "cross_entropy_with_grad":
        assert_matches(res[0], ref.cross_entropy(x, t, label_smoothing=0.1), dtype)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "reversed"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("func", ["cross_entropy_grad", "cross_entropy_with_grad"])
@pytest.mark.parametrize("axis", [None, -1, 0])
def test_gradient_out_is_logits_in_place(func, dtype, axis, layout):
    rng = np.random.default_rng(10)
    x = arrange(rng.standard_normal((6, 5, 4)).astype(dtype), layout)
    t = rng.integers(0, x.shape[class_axis(3, axis)], loss_shape(x.shape, axis))
    want_loss, want_grad = ref.cross_entropy_with_grad(x, t, reduction="sum", axis=axis)
    res = getattr(fastce, func)(x, t, reduction="sum", axis=axis, out=x)
    grad = res[1] if func == "cross_entropy_with_grad" else res
    assert np.shares_memory(grad, x)
    assert_matches(x, want_grad, dtype)
    if func == "cross_entropy_with_grad":
        assert_matches(res[0], want_loss, dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("func", ["log_softmax", "softmax"])
def test_softmax_out_buffer(func, dtype):
    x = np.random.default_rng(11).standard_normal((4, 6)).astype(dtype)
    for axis in (0, 1, -1):
        out = np.empty_like(x)
        res = getattr(fastce, func)(x, axis=axis, out=out)
        assert np.shares_memory(res, out)
        assert_matches(out, getattr(ref, func)(x, axis=axis), dtype)
        in_place = x.copy()
        res = getattr(fastce, func)(in_place, axis=axis, out=in_place)
        assert np.shares_memory(res, in_place)
        assert_matches(in_place, getattr(ref, func)(x, axis=axis), dtype)


def test_rejected_out_is_untouched():
    x = np.random.default_rng(12).standard_normal((4, 3))
    sentinel = np.full((4, 3), 5.0)
    out = sentinel.copy()
    with pytest.raises(IndexError):
        fastce.cross_entropy_grad(x, np.array([0, 1, 3, 0]), out=out)
    assert_array_equal(out, sentinel)
    logits = x.copy()
    with pytest.raises(IndexError):
        fastce.cross_entropy_with_grad(logits, np.array([0, 1, 2, 7]), out=logits)
    assert_array_equal(logits, x)
    with pytest.raises((TypeError, ValueError)):
        fastce.cross_entropy_grad(x, np.array([0, 1, 2, 0]), out=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError):
        fastce.cross_entropy_grad(x, np.array([0, 1, 2, 0]), out=np.empty((3, 4)))
    frozen = sentinel.copy()
    frozen.setflags(write=False)
    with pytest.raises(ValueError):
        fastce.cross_entropy_grad(x, np.array([0, 1, 2, 0]), out=frozen)
    assert_array_equal(frozen, sentinel)


# --------------------------------------------------------------------------
# one big case


@pytest.fixture(scope="module")
def big_case():
    rng = np.random.default_rng(2024)
    n, c = 4096, 50000
    x = rng.random((n, c), dtype=np.float32)
    x *= 8.0
    x -= 4.0
    t = rng.integers(0, c, n).astype(np.int64)
    t[::17] = -100
    return x, t


def test_big_float32_mean(big_case):
    x, t = big_case
    checksum = float(x[::97, ::89].sum(dtype=np.float64))
    loss, grad = fastce.cross_entropy_with_grad(x, t)
    assert float(x[::97, ::89].sum(dtype=np.float64)) == checksum
    assert_scalar_result(loss, np.float32)
    assert_array_result(grad, np.float32, x.shape)
    count = int((t != -100).sum())
    # every sample's loss: logsumexp(x[n]) - x[n, t[n]], ignored samples 0
    total = 0.0
    kept = t != -100
    for start in range(0, x.shape[0], 512):
        sl = slice(start, start + 512)
        lse = ref.logsumexp(x[sl], axis=1)
        rows = np.arange(lse.size)[kept[sl]]
        total += float(np.sum(lse[rows] - x[sl][rows, t[sl][rows]].astype(np.float64)))
    assert_allclose(float(loss), total / count, rtol=1e-5)
    assert_allclose(float(fastce.cross_entropy(x, t, reduction="sum")), total, rtol=1e-5)
    # the gradient of every 8th row, and of the last rows
    for rows in (np.s_[::8], np.s_[-100:]):
        _, ref_grad = ref.cross_entropy_with_grad(
            x[rows], t[rows], reduction="none", grad_output=1.0 / count
        )
        assert_matches(grad[rows], ref_grad, np.float32, f"rows {rows}")
