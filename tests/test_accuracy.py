"""Accuracy where float32 arithmetic is easiest to get wrong."""

import numpy as np
import pytest

import fastce
from fastce import reference


@pytest.mark.parametrize("n_classes", [3, 7, 31, 33, 257, 1000, 5000])
@pytest.mark.parametrize("axis", [1, -1])
def test_confident_predictions_keep_their_relative_accuracy(n_classes, axis):
    # The target's logit is far above the rest, so each loss is tiny
    # (log(1 + delta) ~ delta): it must not be lost against the 1 that the
    # maximum contributes to the sum of exponentials.
    rng = np.random.default_rng(n_classes)
    n = 200
    logits = rng.standard_normal((n, n_classes)).astype(np.float32)
    target = rng.integers(0, n_classes, n)
    logits[np.arange(n), target] = 12.0 + np.log(n_classes) + rng.random(n).astype(np.float32) * 4
    if axis == 1 and n_classes <= 257:
        # class axis in the middle: the tile kernel
        logits = np.ascontiguousarray(np.broadcast_to(logits[:, :, None], (n, n_classes, 3)))
        target = np.repeat(target[:, None], 3, axis=1)
    got = fastce.cross_entropy(logits, target, reduction="none", axis=1)
    want = reference.cross_entropy(logits.astype(np.float64), target, reduction="none", axis=1)
    assert want.max() < 1e-2  # the case is as intended
    np.testing.assert_allclose(got, want, rtol=2e-6)
    got_lse = fastce.logsumexp(logits, axis=1) - np.take_along_axis(
        logits, np.expand_dims(target, 1), 1
    ).squeeze(1)
    assert np.all(np.isfinite(got_lse))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [5, 64, 3000])
def test_ties_at_the_maximum_count_once_each(dtype, n_classes):
    logits = np.zeros((4, n_classes), dtype=dtype)
    logits[:, 1:3] = 2.0  # two classes share the maximum
    want = reference.logsumexp(logits.astype(np.float64))
    np.testing.assert_allclose(fastce.logsumexp(logits), want, rtol=1e-6)
    np.testing.assert_allclose(
        fastce.cross_entropy(logits, np.array([1, 2, 0, 1]), reduction="none"),
        reference.cross_entropy(
            logits.astype(np.float64), np.array([1, 2, 0, 1]), reduction="none"
        ),
        rtol=1e-6,
    )


@pytest.mark.parametrize("n_classes", [5, 40, 300, 3000])
@pytest.mark.parametrize("special, expect_nan", [(np.inf, True), (-np.inf, True), (np.nan, True)])
def test_rows_of_special_values(n_classes, special, expect_nan):
    # a whole row of -inf, a +inf anywhere, or a NaN anywhere: NaN, whatever
    # path the row takes
    logits = np.zeros((3, n_classes), dtype=np.float32)
    if special == -np.inf:
        logits[1, :] = -np.inf
    else:
        logits[1, n_classes // 2] = special
    loss = fastce.cross_entropy(logits, np.array([0, 0, 0]), reduction="none")
    assert np.isnan(loss[1]) == expect_nan
    assert np.all(np.isfinite(loss[[0, 2]]))
    assert np.isnan(fastce.log_softmax(logits)[1]).all()


def _subnormal_product_survives():
    # 1e-38 * 1e-3 is a float32 subnormal unless the thread flushes such results
    return bool(np.float32(1e-38) * np.float32(1e-3) > 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 40), (2048, 1000), (64, 20000)])
def test_logits_spread_far_below_the_maximum(simd_path, dtype, shape):
    # probabilities far below the maximum scale into the subnormal range,
    # which the kernels flush to zero: nothing a tolerance sees changes, and
    # the calling thread's own floating-point mode is as it was
    assert _subnormal_product_survives()
    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * (40 if dtype == np.float32 else 400)).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    # the kernels' exponential is 0 below a few times the smallest normal number
    tiny = 4 * np.finfo(dtype).tiny
    loss, grad = fastce.cross_entropy_with_grad(x, t)
    ref_loss, ref_grad = reference.cross_entropy_with_grad(x, t)
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=tiny)
    np.testing.assert_allclose(
        fastce.softmax(x, axis=-1), reference.softmax(x, axis=-1), rtol=rtol, atol=tiny
    )
    r = fastce.evaluate(x, t, per_sample=True)
    np.testing.assert_allclose(r.brier, reference.evaluate(x, t)["brier"], rtol=rtol, atol=1e-12)
    assert _subnormal_product_survives()
