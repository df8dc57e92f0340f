"""The commonest call -- ``cross_entropy(x, t)``, its gradients and
``nll_loss(x, t)`` on C-ordered 2-d logits and int64 targets -- has its plan
made without the checks (``_kernels.common_plan``): that plan must be the one
the checking path makes, and every other call (every bad one included) must
be left to the checking path."""

import warnings

import numpy as np
import pytest

import fastce
from fastce import _kernels
from fastce._kernels import execute
from fastce._plan import plan_cross_entropy, plan_nll_loss
from fastce._plan_types import CROSS_ENTROPY_INDEX, NLL_LOSS

DEFAULTS = {
    "weight": None,
    "ignore_index": -100,
    "reduction": "mean",
    "label_smoothing": 0.0,
    "axis": None,
    "num_threads": None,
}


def common(kernel, x, t, grad_output=None, out=None, **options):
    """``_kernels.common_plan`` of a call, as the public functions ask for it."""
    o = {**DEFAULTS, **options}
    return _kernels.common_plan(
        kernel,
        x,
        t,
        o["weight"],
        o["ignore_index"],
        o["reduction"],
        o["label_smoothing"],
        o["axis"],
        o["num_threads"],
        o.get("softcap"),
        o.get("temperature", 1.0),
        o.get("z_loss", 0.0),
        grad_output,
        out,
    )


def checked_plan(kernel, x, t, want_grad=False, out=None, **options):
    """The plan the checking path makes of the same call."""
    o = {**DEFAULTS, **options}
    if kernel == NLL_LOSS:
        return plan_nll_loss(
            x, t, o["weight"], o["ignore_index"], o["reduction"], o["axis"], o["num_threads"]
        )
    return plan_cross_entropy(
        x,
        t,
        o["weight"],
        o["ignore_index"],
        o["reduction"],
        o["label_smoothing"],
        o["axis"],
        want_grad,
        1.0 if want_grad else None,
        out,
        o["num_threads"],
    )


def same_field(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        # the same elements of the same memory (or, for grad_output, the same value)
        return (
            type(a) is type(b)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and (
                (
                    a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                    and a.strides == b.strides
                )
                or a.tobytes() == b.tobytes()
            )
        )
    return type(a) is type(b) and a == b


def assert_same_plan(fast, checked):
    assert type(fast) is type(checked)
    differ = [f for f, a, b in zip(checked._fields, fast, checked) if not same_field(a, b)]
    assert not differ, f"the plans differ in {differ}"


def bits(value):
    return np.asarray(value).tobytes()


def half_dtypes():
    dtypes = [np.float16]
    try:
        import ml_dtypes

        dtypes.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return dtypes


DTYPES = [np.float32, np.float64, *half_dtypes()]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1, 2), (32, 10), (257, 33), (3000, 40), (64, 5000)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kernel", [CROSS_ENTROPY_INDEX, NLL_LOSS])
def test_the_plan_is_the_checking_paths(kernel, dtype, shape, reduction):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::5] = -100
    fast = common(kernel, x, t, reduction=reduction)
    assert fast is not None
    assert_same_plan(fast, checked_plan(kernel, x, t, reduction=reduction))
    public = fastce.cross_entropy if kernel == CROSS_ENTROPY_INDEX else fastce.nll_loss
    got = public(x, t, reduction=reduction)
    assert got.dtype == fast.dtype and np.ndim(got) == 0
    assert bits(got) == bits(execute(checked_plan(kernel, x, t, reduction=reduction))[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1, 2), (32, 10), (3000, 40)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_gradients_plan_is_the_checking_paths(dtype, shape, reduction):
    rng = np.random.default_rng(sum(shape) + 1)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::5] = -100
    result_dtype = np.float64 if dtype == np.float64 else np.float32
    for out in (None, np.full(shape, np.nan, dtype=result_dtype)):
        fast = common(CROSS_ENTROPY_INDEX, x, t, 1.0, out, reduction=reduction)
        assert fast is not None
        checked = checked_plan(CROSS_ENTROPY_INDEX, x, t, True, out, reduction=reduction)
        assert_same_plan(fast, checked)
    want_loss, want_grad, _, _ = execute(checked)
    loss, grad = fastce.cross_entropy_with_grad(x, t, reduction=reduction)
    assert bits(loss) == bits(want_loss) and bits(grad) == bits(want_grad)
    assert grad.dtype == result_dtype and grad.shape == shape and grad.flags.c_contiguous
    out = np.full(shape, np.nan, dtype=result_dtype)
    loss, grad = fastce.cross_entropy_with_grad(x, t, reduction=reduction, out=out)
    assert grad is out and bits(grad) == bits(want_grad) and bits(loss) == bits(want_loss)
    assert bits(fastce.cross_entropy_grad(x, t, reduction=reduction)) == bits(want_grad)
    if dtype == result_dtype:
        in_place = x.copy()
        loss, grad = fastce.cross_entropy_with_grad(in_place, t, reduction=reduction, out=in_place)
        assert grad is in_place and bits(grad) == bits(want_grad)


@pytest.mark.parametrize("threads", [None, 1, 2, 3, _kernels.MAX_THREAD_REQUEST])
def test_a_thread_request_is_in_the_plan(threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 50)).astype(np.float32)
    t = rng.integers(0, 50, 5000)
    fast = common(CROSS_ENTROPY_INDEX, x, t, num_threads=threads)
    assert_same_plan(fast, checked_plan(CROSS_ENTROPY_INDEX, x, t, num_threads=threads))
    assert bits(fastce.cross_entropy(x, t, num_threads=threads)) == bits(execute(fast)[0])


def test_other_ignore_index_and_all_ignored():
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=np.float32)
    t = np.array([2, 7])
    for kernel in (CROSS_ENTROPY_INDEX, NLL_LOSS):
        fast = common(kernel, x, t, ignore_index=7)
        assert_same_plan(fast, checked_plan(kernel, x, t, ignore_index=7))
    everything_ignored = np.array([-100, -100])
    assert np.isnan(fastce.cross_entropy(x, everything_ignored))
    assert fastce.cross_entropy(x, everything_ignored, reduction="sum") == 0.0
    assert np.isnan(fastce.nll_loss(x, everything_ignored))
    loss, grad = fastce.cross_entropy_with_grad(x, everything_ignored)
    assert np.isnan(loss) and not grad.any()


def test_non_finite_logits():
    x = np.array([[np.inf, 0.0], [np.nan, 1.0], [-np.inf, 0.0], [3e38, 3e38]], dtype=np.float32)
    t = np.array([1, 0, 0, 1])
    for row in range(4):
        xr, tr = x[row : row + 1], t[row : row + 1]
        got = fastce.cross_entropy(xr, tr, reduction="sum")
        want = execute(checked_plan(CROSS_ENTROPY_INDEX, xr, tr, reduction="sum"))[0]
        assert bits(got) == bits(want)


def test_a_float32_total_past_its_range_is_inf_without_warning():
    x = np.zeros((1 << 16, 2), dtype=np.float32)
    x[:, 0] = 3e38
    t = np.ones(1 << 16, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fastce.cross_entropy(x, t, reduction="sum")
        assert got == np.inf and got.dtype == np.float32
        got = fastce.nll_loss(-x, t, reduction="sum")
        assert got == 0.0 and got.dtype == np.float32
        got = fastce.nll_loss(x[:, ::-1].copy(), t, reduction="sum")
        assert got == -np.inf and got.dtype == np.float32


DECLINED = {
    "int32 targets": lambda x, t: (x, t.astype(np.int32)),
    "Fortran-ordered logits": lambda x, t: (np.asfortranarray(x), t),
    "strided logits": lambda x, t: (np.repeat(x, 2, axis=1)[:, ::2], t),
    "strided targets": lambda x, t: (x, np.repeat(t, 2)[::2]),
    "byte-swapped logits": lambda x, t: (x.astype(x.dtype.newbyteorder()), t),
    "a list of targets": lambda x, t: (x, t.tolist()),
    "a list of logits": lambda x, t: (x.tolist(), t),
    "a subclass": lambda x, t: (np.ma.masked_array(x), t),
    "3-d logits": lambda x, t: (x.reshape(2, 4, 6), np.resize(t, (2, 6))),
    "single class": lambda x, t: (x[:, :1], np.zeros_like(t)),
    "no samples": lambda x, t: (x[:0], t[:0]),
    "integer logits": lambda x, t: (x.astype(np.int64), t),
}


@pytest.mark.parametrize("case", DECLINED)
@pytest.mark.parametrize("kernel", [CROSS_ENTROPY_INDEX, NLL_LOSS])
def test_other_inputs_take_the_checking_path(kernel, case):
    rng = np.random.default_rng(0)
    x, t = DECLINED[case](rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 4, 8))
    assert common(kernel, x, t) is None
    public = fastce.cross_entropy if kernel == CROSS_ENTROPY_INDEX else fastce.nll_loss

    def outcome(call):
        try:
            return "value", bits(call())
        except Exception as error:  # the same error, type and message
            return type(error), str(error)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the single class warns
        assert outcome(lambda: public(x, t)) == outcome(
            lambda: execute(checked_plan(kernel, x, t))[0]
        )


@pytest.mark.parametrize("bad", [-1, 6, -101, 2**40])
@pytest.mark.parametrize("kernel", [CROSS_ENTROPY_INDEX, NLL_LOSS])
def test_bad_targets_raise_the_checking_paths_error(kernel, bad):
    x = np.zeros((4, 6), dtype=np.float32)
    t = np.array([0, 1, bad, 2])
    assert common(kernel, x, t) is None
    public = fastce.cross_entropy if kernel == CROSS_ENTROPY_INDEX else fastce.nll_loss
    with pytest.raises(IndexError, match=rf"label value of {bad} at position \(2,\)"):
        public(x, t)


@pytest.mark.parametrize(
    "options",
    [
        {"reduction": "none"},
        {"reduction": "avg"},
        {"reduction": b"mean"},
        {"label_smoothing": 0.1},
        {"label_smoothing": True},
        {"label_smoothing": "0"},
        {"ignore_index": 1.0},
        {"ignore_index": True},
        {"ignore_index": np.int64(-100)},
        {"ignore_index": 2**64},
        {"axis": 0},
        {"axis": 2},
        {"axis": np.int64(1)},
        {"num_threads": 0},
        {"num_threads": 1.0},
        {"num_threads": True},
        {"num_threads": 2**70},
        {"weight": np.ones(6)},
        {"softcap": 30.0},
        {"temperature": 2.0},
        {"temperature": 1},
        {"z_loss": 1e-4},
    ],
)
def test_options_outside_the_commonest_call_behave_as_before(options):
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    t = np.array([0, 1, 2, 3, 4])
    assert common(CROSS_ENTROPY_INDEX, x, t, **options) is None

    def outcome(call):
        try:
            return "value", bits(call())
        except Exception as error:  # the same error, type and message
            return type(error), str(error)

    transform = {k: options[k] for k in ("softcap", "temperature", "z_loss") if k in options}
    plain = {k: v for k, v in options.items() if k not in transform}

    def checked():
        plan = checked_plan(CROSS_ENTROPY_INDEX, x, t, **plain)
        if transform:
            plan = plan._replace(
                transform=fastce._validate.check_logit_transform(
                    transform.get("softcap"),
                    transform.get("temperature", 1.0),
                    transform.get("z_loss", 0.0),
                )
            )
        return execute(plan)[0]

    assert outcome(lambda: fastce.cross_entropy(x, t, **options)) == outcome(checked)


def test_outs_the_checks_would_refuse_or_that_are_not_c_ordered_are_declined():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    t = rng.integers(0, 4, 6)
    read_only = np.empty((6, 4), dtype=np.float32)
    read_only.flags.writeable = False
    for out in [
        np.empty((6, 4)),  # float64 for float32 logits
        np.empty((4, 6), dtype=np.float32).T,  # Fortran order
        np.empty((6, 8), dtype=np.float32)[:, ::2],
        np.empty((6, 4), dtype=np.float32)[::-1],
        np.empty(24, dtype=np.float32),  # the wrong shape
        np.empty((6, 4), dtype=np.float32).view(np.matrix),  # a subclass: the checks refuse it
        read_only,
        [[0.0] * 4] * 6,
    ]:
        assert common(CROSS_ENTROPY_INDEX, x, t, 1.0, out) is None


def test_outs_that_overlap_the_inputs_are_the_executors_concern():
    # memory shared with the logits without being them, or with the targets:
    # the plan holds them as the checking path's does, and execute reads copies
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    t = rng.integers(0, 4, 6)
    want_loss, want_grad = fastce.cross_entropy_with_grad(x.copy(), t.copy())
    wide = np.zeros(32, dtype=np.float32)
    wide[:24] = x.ravel()
    logits, shifted = wide[:24].reshape(6, 4), wide[1:25].reshape(6, 4)
    fast = common(CROSS_ENTROPY_INDEX, logits, t, 1.0, shifted)
    assert_same_plan(fast, checked_plan(CROSS_ENTROPY_INDEX, logits, t, True, shifted))
    loss, grad = fastce.cross_entropy_with_grad(logits, t, out=shifted)
    assert grad is shifted and bits(loss) == bits(want_loss) and bits(grad) == bits(want_grad)
    buffer = np.zeros(12, dtype=np.int64)
    targets = buffer[:6]
    targets[:] = t
    over_targets = buffer.view(np.float32)[:24].reshape(6, 4)
    loss, grad = fastce.cross_entropy_with_grad(x, targets, out=over_targets)
    assert bits(loss) == bits(want_loss) and bits(grad) == bits(want_grad)


def test_grad_output_other_than_one_takes_the_checking_path():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    t = rng.integers(0, 5, 8)
    for go in (2.0, 1, np.float64(1.0), np.ones(())):
        assert common(CROSS_ENTROPY_INDEX, x, t, go) is None
    got = fastce.cross_entropy_grad(x, t, grad_output=2.0)
    np.testing.assert_array_equal(got, 2 * fastce.cross_entropy_grad(x, t))
    with pytest.raises(ValueError, match="grad_output must be a scalar"):
        fastce.cross_entropy_grad(x, t, grad_output=np.ones(8))


@pytest.mark.parametrize("n", [1, 3, 8, 9, 17, 64, 1001])
def test_targets_are_counted_and_checked_alike_on_every_path(simd_path, n):
    # the commonest call's target pass is vector code of each path: every
    # position of a vector and of its tail, and values at and past the ends
    n_classes = 7
    x = np.zeros((n, n_classes), dtype=np.float32)
    rng = np.random.default_rng(n)
    for ignore_index in (-100, 3, 2**63 - 1, -(2**63)):
        t = rng.integers(0, n_classes, n)
        t[rng.random(n) < 0.3] = ignore_index
        fast = common(CROSS_ENTROPY_INDEX, x, t, ignore_index=ignore_index)
        assert fast.denominator == np.count_nonzero(t != ignore_index)
        for position in sorted({0, n // 2, n - 1}):
            for bad in (-1, n_classes, 2**63 - 1, -(2**63), -100):
                if bad == ignore_index:
                    continue
                spoilt = t.copy()
                spoilt[position] = bad
                assert common(CROSS_ENTROPY_INDEX, x, spoilt, ignore_index=ignore_index) is None
