"""Every vector code path this CPU can run gives the reference's answer, keeps
NaN and inf, and gives the same bits for any thread count."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import fastce
from fastce import _kernels, reference

BEST = _kernels.simd_isa()
PATHS = _kernels.simd_paths()

CASES = [
    ((300, 1000), 1),  # rows in cache: two passes
    ((3, 40000), 1),  # long rows: running maximum
    ((5000, 7), 1),  # few classes: transposed tiles
    ((4, 21, 33, 35), 1),  # class axis in the middle: tiles
    ((6, 50, 130), -1),
]


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paths_match_the_reference(simd_path, shape, axis, dtype):
    rng = np.random.default_rng(hash((shape, axis)) % 2**32)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    ax = axis % len(shape)
    t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1 :])
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-5, 2e-7)
    for smoothing, reduction in itertools.product((0.0, 0.1), ("none", "mean")):
        loss, grad = fastce.cross_entropy_with_grad(
            x, t, axis=axis, label_smoothing=smoothing, reduction=reduction
        )
        want_loss, want_grad = reference.cross_entropy_with_grad(
            x.astype(np.float64), t, axis=axis, label_smoothing=smoothing, reduction=reduction
        )
        np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=atol)
        np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol)
    for name in ("log_softmax", "softmax", "logsumexp"):
        np.testing.assert_allclose(
            getattr(fastce, name)(x, axis=axis),
            getattr(reference, name)(x.astype(np.float64), axis=axis),
            rtol=rtol,
            atol=atol * 10,
        )


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
    # BEST is the path in use, which FASTCE_SIMD may have forced
    try:
        assert _kernels.simd_init("") == PATHS[0]
    finally:
        _kernels.simd_init(BEST)
    assert PATHS[-1] == "baseline"


@pytest.mark.parametrize("name", ["avx1024", "AVX2", "neon", "baseline "])
def test_an_unknown_or_missing_path_is_refused_and_changes_nothing(name):
    with pytest.raises(ValueError, match=f"vector path '{name}' is not available here"):
        _kernels.simd_init(name)
    assert _kernels.simd_isa() == BEST


def test_the_environment_forces_a_path_or_fails_clearly():
    code = (
        "import fastce; from fastce import _kernels, _metrics; "
        "print(_kernels.simd_isa(), _metrics.simd_isa()); fastce.show_config()"
    )
    for path in PATHS:
        env = dict(os.environ, FASTCE_SIMD=path)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert out.split()[:2] == [path, path]
        assert f"vector path:  {path}" in out
    env = dict(os.environ, FASTCE_SIMD="avx1024")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "vector path 'avx1024' is not available here" in run.stderr
    assert "baseline" in run.stderr


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_path_gives_the_same_bits_for_any_thread_count(simd_path, shape, axis, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    ax = axis % len(shape)
    t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1 :])
    runs = [
        fastce.cross_entropy_with_grad(x, t, axis=axis, label_smoothing=0.1, num_threads=n)
        for n in (1, 2, 8)
    ]
    for loss, grad in runs[1:]:
        assert loss.tobytes() == runs[0][0].tobytes()
        assert grad.tobytes() == runs[0][1].tobytes()
    sums = [fastce.evaluate(x, t, axis=axis, num_threads=n).loss for n in (1, 2, 8)]
    assert sums[0] == sums[1] == sums[2]


def test_vector_log_of_sums_matches_libm(simd_path):
    rng = np.random.default_rng(9)
    s = np.concatenate(
        [
            1.0 + rng.random(10000) * 1e-12,
            1.0 + rng.random(10000) * 1e-4,
            1.0 + rng.random(10000),
            rng.random(10000) * 1e6 + 1.0,
            np.array([1.0, np.nextafter(1.0, 2.0), np.sqrt(2.0), 2.0, 1e300, np.inf, np.nan]),
        ]
    )
    got = _kernels.tile_log(s)
    want = np.log(s)
    np.testing.assert_allclose(got[:-2], want[:-2], rtol=4e-16, atol=0)
    assert got[-2] == np.inf and np.isnan(got[-1])


@pytest.mark.parametrize("bfloat16", [False, True])
def test_half_precision_converts_exactly_on_every_path(simd_path, bfloat16):
    dtype = np.float16
    if bfloat16:
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    # every value, through the logsumexp of one class (which is the value
    # itself): as rows of few classes gathered into tiles, and as a tile of
    # neighbouring samples; both convert with the vector path's instructions
    values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)
    want = values.astype(np.float32)
    nan = np.isnan(want)
    for got in (
        fastce.logsumexp(values[:, None], axis=1),
        fastce.logsumexp(values[None, None, :], axis=1)[0],
    ):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(got), nan)
        np.testing.assert_array_equal(got[~nan], want[~nan])
    # nll_loss reads one value per sample with the scalar conversion: every
    # value again, signed zeros and subnormals included
    got = fastce.nll_loss(values[:, None], np.zeros(values.size, dtype=np.int64), reduction="none")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), nan)
    assert got[~nan].tobytes() == (-want[~nan]).tobytes()
    # a length with a tail after the whole vectors, and a block the kernels convert in pieces
    x = (np.random.default_rng(2).standard_normal((301, 1003)) * 3).astype(dtype)
    t = np.random.default_rng(3).integers(0, 1003, 301)
    assert (
        fastce.cross_entropy(x, t).tobytes()
        == fastce.cross_entropy(x.astype(np.float32), t).tobytes()
    )
    xt = x.T  # not one run of values: converted by NumPy, same bits
    assert (
        fastce.cross_entropy(xt, t, axis=0).tobytes()
        == fastce.cross_entropy(xt.astype(np.float32), t, axis=0).tobytes()
    )
