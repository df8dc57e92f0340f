"""fastce.fit_temperature: the NLL-optimal temperature, against SciPy's
minimiser on the float64 reference objective."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastce
from fastce import reference as ref

optimize = pytest.importorskip("scipy.optimize")


def _data(rng, n=3000, C=20, sharpness=3.0):
    target = rng.integers(0, C, n)
    logits = rng.standard_normal((n, C)) + 1.5 * np.eye(C)[target]
    return sharpness * logits, target


def _scipy_temperature(logits, target, weight=None, **kwargs):
    def nll(log_t):
        return float(ref.cross_entropy(logits, target, weight, temperature=np.exp(log_t), **kwargs))

    r = optimize.minimize_scalar(nll, bounds=(-6, 6), method="bounded", options={"xatol": 1e-11})
    return float(np.exp(r.x)), r.fun


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight": np.linspace(0.3, 2.0, 20)},
        {"label_smoothing": 0.1},
        {"weight": np.linspace(0.3, 2.0, 20), "label_smoothing": 0.2, "ignore_index": 3},
        {"softcap": 4.0},
    ],
    ids=["plain", "weight", "smoothing", "all", "softcap"],
)
@pytest.mark.parametrize("sharpness", [0.3, 3.0])
def test_equals_scipy_on_the_same_objective(options, sharpness):
    rng = np.random.default_rng(1)
    logits, target = _data(rng, sharpness=sharpness)
    kwargs = dict(options)
    weight = kwargs.pop("weight", None)
    fit = fastce.fit_temperature(logits, target, weight, **kwargs)
    want, loss = _scipy_temperature(logits, target, weight, **kwargs)
    assert_allclose(fit.temperature, want, rtol=1e-6)
    assert_allclose(fit.loss, loss, rtol=1e-12)
    assert_allclose(
        fit.loss_at_one, ref.cross_entropy(logits, target, weight, **kwargs), rtol=1e-12
    )
    assert fit.loss <= fit.loss_at_one and 2 <= fit.passes <= 16


def test_dtypes_layouts_and_memory_maps(tmp_path):
    rng = np.random.default_rng(2)
    logits, target = _data(rng, n=2000, C=50)
    want = fastce.fit_temperature(logits, target).temperature
    for dtype, rtol in ((np.float32, 1e-5), (np.float16, 2e-3)):
        fit = fastce.fit_temperature(logits.astype(dtype), target)
        assert_allclose(fit.temperature, want, rtol=rtol)
    # classes along axis 0, Fortran order, and a memory-mapped file
    assert_allclose(
        fastce.fit_temperature(np.asfortranarray(logits.T), target, axis=0).temperature,
        want,
        rtol=1e-9,
    )
    path = tmp_path / "logits.npy"
    np.save(path, logits)
    mapped = np.load(path, mmap_mode="r")
    assert_allclose(fastce.fit_temperature(mapped, target).temperature, want, rtol=1e-12)


def test_scale_equivariance():
    # logits made k times sharper need a k times higher temperature
    rng = np.random.default_rng(3)
    logits, target = _data(rng, sharpness=1.0)
    one = fastce.fit_temperature(logits, target).temperature
    assert_allclose(fastce.fit_temperature(7.0 * logits, target).temperature, 7.0 * one, rtol=1e-8)


def test_errors():
    x = np.array([[5.0, 0.0], [0.0, 5.0]])
    with pytest.raises(ValueError, match="most likely class"):
        fastce.fit_temperature(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="tell nothing"):
        fastce.fit_temperature(x, np.array([1, 0]))
    with pytest.raises(ValueError, match="not finite"):
        fastce.fit_temperature(np.array([[np.nan, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="not finite"):
        fastce.fit_temperature(x, np.array([-100, -100]))
    with pytest.raises(ValueError, match="xtol"):
        fastce.fit_temperature(x, np.array([0, 0]), xtol=0)
    with pytest.raises(TypeError, match="class indices"):
        fastce.fit_temperature(x, np.eye(2))
