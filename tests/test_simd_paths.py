"""Every vector code path gives the reference's answer: the portable baseline
as well as the best one this CPU has."""

import itertools

import numpy as np
import pytest

import fastce
from fastce import _kernels, reference

BEST = _kernels.simd_isa()
PATHS = sorted({"baseline", BEST})

CASES = [
    ((300, 1000), 1),      # rows in cache: two passes
    ((3, 40000), 1),       # long rows: running maximum
    ((5000, 7), 1),        # few classes: transposed tiles
    ((4, 21, 33, 35), 1),  # class axis in the middle: tiles
    ((6, 50, 130), -1),
]


@pytest.fixture(params=PATHS)
def simd_path(request):
    chosen = _kernels.simd_init(request.param)
    assert chosen == request.param
    yield chosen
    _kernels.simd_init(BEST)


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paths_match_the_reference(simd_path, shape, axis, dtype):
    rng = np.random.default_rng(hash((shape, axis)) % 2**32)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    ax = axis % len(shape)
    t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1:])
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-5, 2e-7)
    for smoothing, reduction in itertools.product((0.0, 0.1), ("none", "mean")):
        loss, grad = fastce.cross_entropy_with_grad(x, t, axis=axis, label_smoothing=smoothing,
                                                    reduction=reduction)
        want_loss, want_grad = reference.cross_entropy_with_grad(
            x.astype(np.float64), t, axis=axis, label_smoothing=smoothing, reduction=reduction)
        np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=atol)
        np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol)
    for name in ("log_softmax", "softmax", "logsumexp"):
        np.testing.assert_allclose(getattr(fastce, name)(x, axis=axis),
                                   getattr(reference, name)(x.astype(np.float64), axis=axis),
                                   rtol=rtol, atol=atol * 10)


def test_paths_keep_special_values(simd_path):
    x = np.zeros((4, 300), dtype=np.float32)
    x[0, 5] = np.nan
    x[1, 7] = np.inf
    x[2, :] = -np.inf
    x[3, 9] = -np.inf
    loss = fastce.cross_entropy(x, np.array([0, 0, 0, 9]), reduction="none")
    assert np.isnan(loss[:3]).all()
    assert loss[3] == np.inf
    grad = fastce.cross_entropy_grad(x, np.array([0, 0, 0, 1]), reduction="none")
    assert grad[3, 9] == 0.0


def test_an_empty_name_chooses_the_best_path():
    assert _kernels.simd_init("") == BEST


def test_vector_log_of_sums_matches_libm(simd_path):
    rng = np.random.default_rng(9)
    s = np.concatenate([
        1.0 + rng.random(10000) * 1e-12, 1.0 + rng.random(10000) * 1e-4,
        1.0 + rng.random(10000), rng.random(10000) * 1e6 + 1.0,
        np.array([1.0, np.nextafter(1.0, 2.0), np.sqrt(2.0), 2.0, 1e300, np.inf, np.nan]),
    ])
    got = _kernels.tile_log(s)
    want = np.log(s)
    np.testing.assert_allclose(got[:-2], want[:-2], rtol=4e-16, atol=0)
    assert got[-2] == np.inf and np.isnan(got[-1])
