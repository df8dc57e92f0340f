"""The fast path that serves ``cross_entropy(x, t)`` and its gradient for C-ordered
2-d logits and int64 targets without the general validation: it must give
the general path's bits, and hand every other call (including every bad one)
to it."""

import warnings

import numpy as np
import pytest

import fastce
from fastce import _kernels
from fastce._plan import execute, plan_cross_entropy


def general_path(x, t, want_grad=False, out=None, **options):
    """The loss (and gradient) as the general (validating) path computes it."""
    args = {
        "weight": None,
        "ignore_index": -100,
        "reduction": "mean",
        "label_smoothing": 0.0,
        "axis": None,
        "num_threads": None,
    }
    args.update(options)
    loss, grad, _, _ = execute(
        plan_cross_entropy(
            x,
            t,
            args["weight"],
            args["ignore_index"],
            args["reduction"],
            args["label_smoothing"],
            args["axis"],
            want_grad,
            1.0,
            out,
            args["num_threads"],
        )
    )
    return (loss, grad) if want_grad else loss


def bits(value):
    return np.asarray(value).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 2), (1, 1000), (32, 10), (257, 33), (3000, 40), (64, 5000)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_same_bits_as_the_general_path(dtype, shape, reduction):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::5] = -100
    fast_path = _kernels.cross_entropy_common(x, t, reduction == "mean", -100, 0)
    assert fast_path is not None
    assert fast_path.dtype == dtype and np.ndim(fast_path) == 0
    assert bits(fast_path) == bits(general_path(x, t, reduction=reduction))
    assert bits(fastce.cross_entropy(x, t, reduction=reduction)) == bits(fast_path)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_request_is_honoured_and_changes_nothing(threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 50)).astype(np.float32)
    t = rng.integers(0, 50, 5000)
    expected = general_path(x, t, num_threads=threads)
    assert bits(fastce.cross_entropy(x, t, num_threads=threads)) == bits(expected)
    assert bits(_kernels.cross_entropy_common(x, t, True, -100, threads)) == bits(expected)


def test_other_ignore_index_and_all_ignored():
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=np.float32)
    t = np.array([2, 7])
    assert bits(fastce.cross_entropy(x, t, ignore_index=7)) == bits(
        general_path(x, t, ignore_index=7)
    )
    everything_ignored = np.array([-100, -100])
    assert np.isnan(fastce.cross_entropy(x, everything_ignored))
    assert fastce.cross_entropy(x, everything_ignored, reduction="sum") == 0.0
    assert np.isnan(_kernels.cross_entropy_common(x, everything_ignored, True, -100, 0))


def test_non_finite_logits():
    x = np.array([[np.inf, 0.0], [np.nan, 1.0], [-np.inf, 0.0], [3e38, 3e38]], dtype=np.float32)
    t = np.array([1, 0, 0, 1])
    for row in range(4):
        got = fastce.cross_entropy(x[row : row + 1], t[row : row + 1], reduction="sum")
        assert bits(got) == bits(general_path(x[row : row + 1], t[row : row + 1], reduction="sum"))


def test_a_float32_total_past_its_range_is_inf_without_warning():
    x = np.zeros((1 << 16, 2), dtype=np.float32)
    x[:, 0] = 3e38
    t = np.ones(1 << 16, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fastce.cross_entropy(x, t, reduction="sum")
    assert got == np.inf and got.dtype == np.float32


DECLINED = {
    "float16 logits": lambda x, t: (x.astype(np.float16), t),
    "int32 targets": lambda x, t: (x, t.astype(np.int32)),
    "Fortran-ordered logits": lambda x, t: (np.asfortranarray(x), t),
    "strided logits": lambda x, t: (np.repeat(x, 2, axis=1)[:, ::2], t),
    "strided targets": lambda x, t: (x, np.repeat(t, 2)[::2]),
    "byte-swapped logits": lambda x, t: (x.astype(x.dtype.newbyteorder()), t),
    "a list of targets": lambda x, t: (x, t.tolist()),
    "3-d logits": lambda x, t: (x.reshape(2, 4, 6), np.resize(t, (2, 6))),
    "single class": lambda x, t: (x[:, :1], np.zeros_like(t)),
    "no samples": lambda x, t: (x[:0], t[:0]),
}


@pytest.mark.parametrize("case", DECLINED)
def test_other_inputs_take_the_general_path(case):
    rng = np.random.default_rng(0)
    x, t = DECLINED[case](rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 4, 8))
    assert _kernels.cross_entropy_common(x, t, True, -100, 0) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the single class warns
        assert bits(fastce.cross_entropy(x, t)) == bits(general_path(x, t))


@pytest.mark.parametrize("bad", [-1, 6, -101, 2**40])
def test_bad_targets_raise_the_general_error(bad):
    x = np.zeros((4, 6), dtype=np.float32)
    t = np.array([0, 1, bad, 2])
    assert _kernels.cross_entropy_common(x, t, True, -100, 0) is None
    with pytest.raises(IndexError, match=rf"label value of {bad} at position \(2,\)"):
        fastce.cross_entropy(x, t)


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
        {"ignore_index": 2**64},
        {"axis": 0},
        {"axis": 2},
        {"num_threads": 0},
        {"num_threads": 1.0},
        {"weight": np.ones(6)},
    ],
)
def test_options_outside_the_lane_behave_as_before(options):
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    t = np.array([0, 1, 2, 3, 4])

    def outcome(call):
        try:
            return "value", bits(call())
        except Exception as error:  # the same error, type and message
            return type(error), str(error)

    assert outcome(lambda: fastce.cross_entropy(x, t, **options)) == outcome(
        lambda: general_path(x, t, **options)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 2), (32, 10), (257, 33), (3000, 40), (64, 5000)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_has_the_general_paths_bits(dtype, shape, reduction):
    rng = np.random.default_rng(sum(shape) + 1)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::5] = -100
    want_loss, want_grad = general_path(x, t, want_grad=True, reduction=reduction)
    loss, grad = _kernels.cross_entropy_common(x, t, reduction == "mean", -100, 0, True, None)
    assert bits(loss) == bits(want_loss) and bits(grad) == bits(want_grad)
    assert grad.dtype == dtype and grad.shape == shape and grad.flags.c_contiguous
    out = np.full_like(x, np.nan)
    loss, grad = fastce.cross_entropy_with_grad(x, t, reduction=reduction, out=out)
    assert grad is out and bits(grad) == bits(want_grad) and bits(loss) == bits(want_loss)
    assert bits(fastce.cross_entropy_grad(x, t, reduction=reduction)) == bits(want_grad)
    in_place = x.copy()
    loss, grad = fastce.cross_entropy_with_grad(in_place, t, reduction=reduction, out=in_place)
    assert grad is in_place and bits(grad) == bits(want_grad)


def test_gradient_when_every_target_is_ignored():
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=np.float32)
    t = np.array([-100, -100])
    loss, grad = fastce.cross_entropy_with_grad(x, t)
    want_loss, want_grad = general_path(x, t, want_grad=True)
    assert np.isnan(loss) and bits(loss) == bits(want_loss)
    assert bits(grad) == bits(want_grad) and not grad.any()


def test_outs_the_lane_declines():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    t = rng.integers(0, 4, 6)
    fast_path = lambda out: _kernels.cross_entropy_common(x, t, True, -100, 0, True, out)  # noqa: E731
    for out in [
        np.empty((6, 4)),  # float64 for float32 logits
        np.empty((4, 6), dtype=np.float32).T,  # Fortran order
        np.empty((6, 8), dtype=np.float32)[:, ::2],
        np.empty((6, 4), dtype=np.float32)[::-1],
        np.empty(24, dtype=np.float32),  # the wrong shape
        x[::-1].copy()[::-1],  # negative strides
        [[0.0] * 4] * 6,
    ]:
        assert fast_path(out) is None
    read_only = np.empty((6, 4), dtype=np.float32)
    read_only.flags.writeable = False
    assert fast_path(read_only) is None
    # memory shared with the logits without being them, or with the targets
    wide = np.zeros(32, dtype=np.float32)
    wide[:24] = x.ravel()
    shifted = wide[1:25].reshape(6, 4)
    assert (
        _kernels.cross_entropy_common(wide[:24].reshape(6, 4), t, True, -100, 0, True, shifted)
        is None
    )
    buffer = np.zeros(12, dtype=np.int64)
    targets = buffer[:6]
    targets[:] = t
    over_targets = buffer.view(np.float32)[:24].reshape(6, 4)
    assert _kernels.cross_entropy_common(x, targets, True, -100, 0, True, over_targets) is None
    # the general path answers them all, as for any out
    want = fastce.cross_entropy_grad(x, t)
    np.testing.assert_array_equal(fastce.cross_entropy_grad(x, targets, out=over_targets), want)


def test_grad_output_other_than_one_takes_the_general_path():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    t = rng.integers(0, 5, 8)
    got = fastce.cross_entropy_grad(x, t, grad_output=2.0)
    np.testing.assert_array_equal(got, 2 * fastce.cross_entropy_grad(x, t))
    with pytest.raises(ValueError, match="grad_output must be a scalar"):
        fastce.cross_entropy_grad(x, t, grad_output=np.ones(8))


# ---- nll_loss's fast_path --------------------------------------------------------


def nll_dtypes():
    dtypes = [np.float32, np.float64, np.float16]
    try:
        import ml_dtypes

        dtypes.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return dtypes


@pytest.mark.parametrize("dtype", nll_dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1, 2), (32, 10), (3000, 40), (20000, 7)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_nll_lane_has_the_general_paths_bits(dtype, shape, reduction):
    rng = np.random.default_rng(sum(shape))
    lp = (rng.standard_normal(shape) - 3).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::3] = -100
    fast_path = _kernels.nll_loss_common(lp, t, reduction == "mean", -100)
    assert fast_path is not None
    # a weight of ones, or int32 targets, take the general path
    for general in (
        fastce.nll_loss(lp, t, np.ones(shape[1]), reduction=reduction),
        fastce.nll_loss(lp, t.astype(np.int32), reduction=reduction),
    ):
        assert type(fast_path) is type(general) and bits(fast_path) == bits(general)
    assert bits(fastce.nll_loss(lp, t, reduction=reduction)) == bits(fast_path)


def test_nll_lane_hands_bad_targets_and_large_calls_to_the_general_path():
    lp = np.zeros((5, 3), np.float16)
    assert _kernels.nll_loss_common(lp, np.array([0, 1, 2, 3, 0]), True, -100) is None
    with pytest.raises(IndexError):
        fastce.nll_loss(lp, np.array([0, 1, 2, 3, 0]))
    big = np.zeros(((1 << 16) + 1, 2), np.float32)
    assert _kernels.nll_loss_common(big, np.zeros(len(big), np.int64), True, -100) is None
