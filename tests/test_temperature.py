"""Temperatures: evaluate's scan, and fastce.fit_temperature's NLL-optimal one, against SciPy's
minimiser on the float64 reference objective."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastce
from fastce import reference as ref


def _data(rng, n=3000, C=20, sharpness=3.0):
    target = rng.integers(0, C, n)
    logits = rng.standard_normal((n, C)) + 1.5 * np.eye(C)[target]
    return sharpness * logits, target


def _scipy_temperature(logits, target, weight=None, **kwargs):
    optimize = pytest.importorskip("scipy.optimize")

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


def _same_result(a, b):
    for name in ("loss", "perplexity", "confidence", "entropy", "brier", "ece", "count"):
        assert getattr(a, name) == getattr(b, name) or (
            np.isnan(getattr(a, name)) and np.isnan(getattr(b, name))
        ), name
    assert a.accuracy == b.accuracy
    np.testing.assert_array_equal(a.bin_count, b.bin_count)


@pytest.mark.parametrize(
    "layout", ["rows", "fortran", "float16", "few classes", "memmap", "softcap", "weights"]
)
def test_scan_equals_one_evaluation_per_temperature(layout, tmp_path):
    rng = np.random.default_rng(5)
    logits, target = _data(rng, n=3000, C=4 if layout == "few classes" else 40)
    target[::9] = -100
    kwargs = {"topk": (1, 3), "bins": 10}
    if layout == "fortran":
        logits = np.asfortranarray(logits)
    elif layout == "float16":
        logits = logits.astype(np.float16)
    elif layout == "memmap":
        np.save(tmp_path / "x.npy", logits)
        logits = np.load(tmp_path / "x.npy", mmap_mode="r")
    elif layout == "softcap":
        kwargs["softcap"] = 5.0
    elif layout == "weights":
        kwargs.update(weight=rng.random(40) + 0.5, label_smoothing=0.1)
    temperatures = [0.25, 1.0, 3.5]
    r = fastce.evaluate(logits, target, temperatures=temperatures, temperature=2.0, **kwargs)
    _same_result(r, fastce.evaluate(logits, target, temperature=2.0, **kwargs))
    assert list(r.by_temperature) == temperatures
    for t in temperatures:
        _same_result(r.by_temperature[t], fastce.evaluate(logits, target, temperature=t, **kwargs))
    # streamed in batches and merged: the same numbers
    acc = fastce.Accumulator(temperatures=temperatures, temperature=2.0, **kwargs)
    for a in range(0, 3000, 700):
        acc.update(logits[a : a + 700], target[a : a + 700])
    for t in temperatures:
        assert_allclose(acc.result().by_temperature[t].loss, r.by_temperature[t].loss, rtol=1e-12)
        assert acc.result().by_temperature[t].accuracy == r.by_temperature[t].accuracy


def test_scan_on_dask_and_linear_heads():
    rng = np.random.default_rng(6)
    h = rng.standard_normal((400, 8))
    W = rng.standard_normal((30, 8))
    t = rng.integers(0, 30, 400)
    whole = fastce.evaluate(h @ W.T, t, temperatures=[0.5, 2.0])
    r = fastce.evaluate_linear(h, W, t, temperatures=[0.5, 2.0], max_block_bytes=30 * 8 * 64)
    for temp in (0.5, 2.0):
        assert_allclose(r.by_temperature[temp].loss, whole.by_temperature[temp].loss, rtol=1e-12)
    da = pytest.importorskip("dask.array")
    import fastce.dask as fdask

    r = fdask.evaluate(da.from_array(h @ W.T, chunks=(90, 30)), t, temperatures=[0.5, 2.0])
    for temp in (0.5, 2.0):
        assert_allclose(r.by_temperature[temp].loss, whole.by_temperature[temp].loss, rtol=1e-12)


def test_scan_options_are_checked():
    x = np.zeros((3, 4))
    t = np.array([0, 1, 2])
    for bad in ([0.0], [-1.0], [np.inf], [1.0, 1.0], 2.0, ["a"]):
        with pytest.raises((ValueError, TypeError), match="temperature"):
            fastce.evaluate(x, t, temperatures=bad)
    a = fastce.Accumulator(temperatures=[1.0, 2.0])
    b = fastce.Accumulator(temperatures=[2.0, 1.0])
    a.update(x, t)
    b.update(x, t)
    with pytest.raises(ValueError, match="different options"):
        a.merge(b)
    assert "temperatures=[1.0, 2.0]" in repr(a)
    assert fastce.evaluate(x, t).by_temperature == {}
