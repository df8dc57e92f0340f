"""Every row of SPEC's error table: the error type, a message that helps, and
nothing written when a call fails."""

import numpy as np
import pytest

import fastce

rng = np.random.default_rng(1234)
LOGITS = rng.standard_normal((4, 3))
TARGET = np.array([0, 2, 1, 2])

CE_FUNCS = [fastce.cross_entropy, fastce.cross_entropy_grad, fastce.cross_entropy_with_grad]
GRAD_FUNCS = [fastce.cross_entropy_grad, fastce.cross_entropy_with_grad]


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
@pytest.mark.parametrize(
    "logits",
    [
        np.array([[1, 2], [3, 4]]),
        np.array([[True, False]]),
        np.array([[1 + 2j, 0j]]),
        np.array([["a", "b"]], dtype=object),
    ],
    ids=["int", "bool", "complex", "object"],
)
def test_logits_must_be_floating(func, logits):
    with pytest.raises(TypeError, match="must be a floating array.*got dtype"):
        func(logits, np.zeros(logits.shape[0], dtype=np.int64))


def test_other_ml_dtypes_floats_are_refused_naming_the_accepted_ones():
    # of ml_dtypes' narrow floats only bfloat16 is read; float8 is refused
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = LOGITS.astype(ml_dtypes.float8_e4m3fn)
    with pytest.raises(
        TypeError,
        match=r"\(float16, bfloat16, float32 or float64\); "
        r"got dtype float8_e4m3fn",
    ):
        fastce.cross_entropy(x, TARGET)


@pytest.mark.parametrize("func", [fastce.log_softmax, fastce.softmax, fastce.logsumexp])
def test_softmax_family_rejects_integers(func):
    with pytest.raises(TypeError, match="x must be a floating array.*int64"):
        func(np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("func", CE_FUNCS)
def test_index_target_shape_mismatch_shows_both_shapes_and_axis(func):
    with pytest.raises(ValueError, match=r"shape \(4,\).*\(4, 3\).*axis 1.*got \(3,\)"):
        func(LOGITS, TARGET[:3])


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
def test_column_target_suggests_squeeze(func):
    with pytest.raises(ValueError, match="squeeze"):
        func(LOGITS, TARGET[:, None])


@pytest.mark.parametrize("func", CE_FUNCS)
def test_one_hot_integer_target_suggests_argmax(func):
    one_hot = np.eye(3, dtype=np.int64)[TARGET]
    with pytest.raises(ValueError, match=r"one-hot.*argmax\(axis=1\)"):
        func(LOGITS, one_hot)


@pytest.mark.parametrize("func", CE_FUNCS)
def test_probability_target_shape_mismatch(func):
    with pytest.raises(
        ValueError, match=r"probability target must have the logits' shape \(4, 3\)"
    ):
        func(LOGITS, np.full((4, 2), 0.5))


@pytest.mark.parametrize("func", CE_FUNCS)
def test_float_target_of_index_shape_is_a_type_error(func):
    with pytest.raises(TypeError, match="class-index shape.*astype\\(np.int64\\)"):
        func(LOGITS, TARGET.astype(np.float64))


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
def test_bool_target_is_a_type_error(func):
    with pytest.raises(TypeError, match="class indices.*bool"):
        func(LOGITS, TARGET > 0)


def test_nll_loss_takes_only_class_indices():
    with pytest.raises(TypeError, match="class indices.*float64"):
        fastce.nll_loss(LOGITS, np.full((4, 3), 1 / 3))


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
@pytest.mark.parametrize("bad", [3, -1, 1000, -101])
def test_target_out_of_range_names_value_position_and_range(func, bad):
    target = TARGET.copy()
    target[2] = bad
    with pytest.raises(
        IndexError,
        match=rf"label value of {bad} at position \(2,\) which is outside the valid range "
        rf"of \[0, 3\)",
    ):
        func(LOGITS, target)


def test_out_of_range_position_is_in_the_targets_own_shape():
    logits = rng.standard_normal((2, 4, 3, 5))
    target = rng.integers(0, 4, (2, 3, 5))
    target[1, 2, 3] = 9
    with pytest.raises(IndexError, match=r"9 at position \(1, 2, 3\)"):
        fastce.cross_entropy(logits, target)


def test_out_of_range_uint64_target():
    target = TARGET.astype(np.uint64)
    target[1] = np.uint64(2**64 - 1)
    with pytest.raises(IndexError, match=r"18446744073709551615 at position \(1,\)"):
        fastce.cross_entropy(LOGITS, target)


def test_ignore_index_is_not_out_of_range():
    target = TARGET.copy()
    target[1] = 7
    assert np.isfinite(fastce.cross_entropy(LOGITS, target, ignore_index=7))


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
@pytest.mark.parametrize("reduction", ["avg", "MEAN", None, 1])
def test_bad_reduction(func, reduction):
    with pytest.raises(ValueError, match="reduction must be one of"):
        func(LOGITS, TARGET, reduction=reduction)


@pytest.mark.parametrize("func", CE_FUNCS)
@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_label_smoothing(func, eps):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        func(LOGITS, TARGET, label_smoothing=eps)


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
@pytest.mark.parametrize("axis", [2, -3, 10])
def test_axis_out_of_range(func, axis):
    with pytest.raises(ValueError, match=rf"axis {axis} is out of range for .* 2 dimension"):
        func(LOGITS, TARGET, axis=axis)


@pytest.mark.parametrize("func", [fastce.log_softmax, fastce.softmax, fastce.logsumexp])
def test_softmax_family_axis_out_of_range(func):
    with pytest.raises(ValueError, match=r"axis 2 is out of range .*\[-2, 1\]"):
        func(LOGITS, axis=2)


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.log_softmax])
def test_axis_must_be_an_integer(func):
    args = (LOGITS, TARGET) if func is not fastce.log_softmax else (LOGITS,)
    with pytest.raises(TypeError, match="axis must be an integer"):
        func(*args, axis=1.0)


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
@pytest.mark.parametrize("weight", [np.ones(2), np.ones(4), np.ones((3, 1)), np.ones(())])
def test_weight_must_be_one_per_class(func, weight):
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\), one weight per class"):
        func(LOGITS, TARGET, weight)


def test_weight_must_be_real():
    with pytest.raises(TypeError, match="weight must hold real numbers"):
        fastce.cross_entropy(LOGITS, TARGET, np.array(["a", "b", "c"]))


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
@pytest.mark.parametrize("ignore_index", [1.5, "x", True])
def test_ignore_index_must_be_an_integer(func, ignore_index):
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        func(LOGITS, TARGET, ignore_index=ignore_index)


@pytest.mark.parametrize("func", GRAD_FUNCS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_must_be_scalar_for_reductions(func, reduction):
    with pytest.raises(
        ValueError, match=f"grad_output must be a scalar for reduction='{reduction}'"
    ):
        func(LOGITS, TARGET, reduction=reduction, grad_output=np.ones(4))


@pytest.mark.parametrize("func", GRAD_FUNCS)
def test_grad_output_shape_for_none(func):
    with pytest.raises(
        ValueError, match=r"grad_output must be a scalar or have .* \(4,\).*got \(3,\)"
    ):
        func(LOGITS, TARGET, reduction="none", grad_output=np.ones(3))


@pytest.mark.parametrize("func", GRAD_FUNCS)
def test_out_wrong_shape(func):
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\)"):
        func(LOGITS, TARGET, out=np.empty((3, 4)))


@pytest.mark.parametrize("func", GRAD_FUNCS)
def test_out_wrong_dtype(func):
    with pytest.raises(TypeError, match="out must have dtype float64"):
        func(LOGITS, TARGET, out=np.empty((4, 3), dtype=np.float32))


@pytest.mark.parametrize("func", GRAD_FUNCS)
def test_out_read_only(func):
    out = np.zeros((4, 3))
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        func(LOGITS, TARGET, out=out)


@pytest.mark.parametrize("func", GRAD_FUNCS)
def test_out_not_an_array(func):
    with pytest.raises(TypeError, match="out must be a NumPy array"):
        func(LOGITS, TARGET, out=[[0.0] * 3] * 4)


@pytest.mark.parametrize("func", [fastce.log_softmax, fastce.softmax])
def test_softmax_out_checks(func):
    with pytest.raises(TypeError, match="out must have dtype float64"):
        func(LOGITS, out=np.empty((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\)"):
        func(LOGITS, out=np.empty(12))


@pytest.mark.parametrize("func", CE_FUNCS + [fastce.nll_loss])
def test_zero_classes_with_samples(func):
    with pytest.raises(ValueError, match="zero classes"):
        func(np.empty((4, 0)), np.zeros(4, dtype=np.int64))


def test_zero_d_logits():
    with pytest.raises(ValueError, match="at least one dimension"):
        fastce.cross_entropy(np.float64(1.0), np.int64(0))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: fastce.binary_cross_entropy_with_logits(np.ones(3), np.ones(4)),
            ValueError,
            r"target must have the shape of logits, \(3,\)",
        ),
        (
            lambda: fastce.binary_cross_entropy_with_logits(np.ones(3), np.ones(3, dtype=int)),
            TypeError,
            "target must be a float array",
        ),
        (
            lambda: fastce.binary_cross_entropy_with_logits(
                np.ones((2, 3)), np.ones((2, 3)), pos_weight=np.ones(2)
            ),
            ValueError,
            "pos_weight of shape \\(2,\\) does not broadcast",
        ),
        (
            lambda: fastce.binary_cross_entropy_with_logits(
                np.ones(3), np.ones(3), weight=np.ones((2, 3))
            ),
            ValueError,
            "weight of shape \\(2, 3\\) would enlarge",
        ),
        (
            lambda: fastce.binary_cross_entropy_with_logits(np.ones(3, dtype=int), np.ones(3)),
            TypeError,
            "logits must be a floating array",
        ),
        (
            lambda: fastce.binary_cross_entropy_with_logits(np.ones(3), np.ones(3), reduction="x"),
            ValueError,
            "reduction must be one of",
        ),
        (
            lambda: fastce.binary_cross_entropy(np.array([0.5, 1.5]), np.ones(2)),
            ValueError,
            r"probs must lie in \[0, 1\]; got 1.5 at flat position 1",
        ),
        (
            lambda: fastce.binary_cross_entropy(np.array([np.nan, 0.5]), np.ones(2)),
            ValueError,
            r"probs must lie in \[0, 1\]; got nan",
        ),
        (
            lambda: fastce.binary_cross_entropy(np.array([-0.1]), np.ones(1)),
            ValueError,
            "binary_cross_entropy_with_logits",
        ),
    ],
)
def test_binary_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(label_smoothing=2.0), ValueError, "label_smoothing"),
        (dict(ignore_index=0.5), TypeError, "ignore_index"),
        (dict(weight=np.ones((2, 2))), ValueError, "weight"),
        (dict(axis="last"), TypeError, "axis"),
    ],
)
def test_criterion_checks_options_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        fastce.CrossEntropyLoss(**kwargs)


# --- nothing written on failure -----------------------------------------------------------

FAILING_CALLS = [
    dict(target=np.array([0, 2, 1, 5])),  # out of range, found by the kernel-side scan
    dict(target=np.array([0, 2, 1])),
    dict(target=TARGET, weight=np.ones(2)),
    dict(target=TARGET, reduction="bad"),
    dict(target=TARGET, grad_output=np.ones(4)),
    dict(target=TARGET, label_smoothing=-1.0),
]


@pytest.mark.parametrize("func", GRAD_FUNCS)
@pytest.mark.parametrize("kwargs", FAILING_CALLS)
def test_failed_call_leaves_out_untouched(func, kwargs):
    out = np.full((4, 3), 7.0)
    kwargs = dict(kwargs)
    target = kwargs.pop("target")
    weight = kwargs.pop("weight", None)
    with pytest.raises((ValueError, IndexError, TypeError)):
        func(LOGITS, target, weight, out=out, **kwargs)
    assert np.all(out == 7.0)


@pytest.mark.parametrize("func", GRAD_FUNCS)
@pytest.mark.parametrize("kwargs", FAILING_CALLS)
def test_failed_in_place_call_leaves_logits_untouched(func, kwargs):
    logits = LOGITS.copy()
    kwargs = dict(kwargs)
    target = kwargs.pop("target")
    weight = kwargs.pop("weight", None)
    with pytest.raises((ValueError, IndexError, TypeError)):
        func(logits, target, weight, out=logits, **kwargs)
    np.testing.assert_array_equal(logits, LOGITS)


def test_failed_softmax_out_untouched():
    out = np.full((4, 3), 7.0)
    with pytest.raises(ValueError):
        fastce.log_softmax(LOGITS, axis=5, out=out)
    assert np.all(out == 7.0)


def test_single_class_warns_and_is_exactly_zero():
    with pytest.warns(RuntimeWarning, match="single class is always exactly 0"):
        loss = fastce.cross_entropy(np.array([[3.0], [-1.0]]), np.array([0, 0]))
    assert loss == 0.0
