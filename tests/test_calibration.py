"""Calibration beyond equal-width bins: equal-mass bins, the reliability
diagram's data and its plot, against literal NumPy."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastce


def _probabilities(x):
    z = x - x.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _equal_mass_twin(x, t, bins, ignore_index=-100):
    """The samples sorted by confidence (misses before hits at equal
    confidence), cut into bins of floor(b N / bins) samples; written as a
    loop over bins."""
    keep = t != ignore_index
    p = _probabilities(np.asarray(x, np.float64))[keep]
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == t[keep]).astype(np.float64)
    order = sorted(range(conf.size), key=lambda i: (conf[i], hit[i]))
    conf, hit = conf[order], hit[order]
    n = conf.size
    gaps, count, accuracy, confidence = 0.0, [], [], []
    for b in range(bins):
        lo, hi = b * n // bins, (b + 1) * n // bins
        count.append(hi - lo)
        accuracy.append(hit[lo:hi].mean() if hi > lo else np.nan)
        confidence.append(conf[lo:hi].mean() if hi > lo else np.nan)
        gaps += abs(hit[lo:hi].sum() - conf[lo:hi].sum())
    return gaps / n, np.array(count), np.array(accuracy), np.array(confidence)


@pytest.mark.parametrize("n, bins", [(5000, 15), (7, 10), (1000, 1), (999, 7)])
def test_equal_mass_bins_equal_the_twin(n, bins):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 30)) * 2
    t = rng.integers(0, 30, n)
    t[::11] = -100
    x[np.arange(0, n, 3), np.maximum(t[::3], 0)] += 3.0
    r = fastce.evaluate(x, t, bins=bins, equal_mass=True)
    ece, count, accuracy, confidence = _equal_mass_twin(x, t, bins)
    assert_allclose(r.ece_equal_mass, ece, rtol=1e-10)
    m = r.mass_bins
    assert_array_equal(m.count, count)
    assert_allclose(m.accuracy, accuracy, rtol=1e-12)
    assert_allclose(m.confidence, confidence, rtol=1e-10)
    filled = m.count > 0
    assert np.all(m.lower[filled] <= m.confidence[filled] + 1e-15)
    assert np.all(m.confidence[filled] <= m.upper[filled] + 1e-15)
    assert np.all(np.isnan(m.lower[~filled]))
    # equal-width ECE and its data are unchanged by the option
    plain = fastce.evaluate(x, t, bins=bins)
    assert plain.ece == r.ece and np.isnan(plain.ece_equal_mass) and plain.mass_bins is None
    assert r.as_dict()["ece_equal_mass"] == r.ece_equal_mass
    assert "ece_equal_mass" not in plain.as_dict()


def test_equal_mass_bins_order_tied_confidences_by_hit_in_any_sample_order():
    # three distinct rows, so that most confidences tie; hits and misses among each
    rng = np.random.default_rng(3)
    patterns = rng.standard_normal((3, 8)) * 2
    rows = rng.integers(0, 3, 600)
    x = patterns[rows]
    t = rng.integers(0, 8, 600)
    x[5] = np.nan  # a row without probabilities: its confidence is NaN
    r = fastce.evaluate(x, t, bins=7, equal_mass=True)
    shuffled = rng.permutation(600)
    s = fastce.evaluate(x[shuffled], t[shuffled], bins=7, equal_mass=True)
    assert_array_equal(s.mass_bins.count, r.mass_bins.count)
    assert_array_equal(s.mass_bins.accuracy, r.mass_bins.accuracy)
    assert_array_equal(s.mass_bins.confidence, r.mass_bins.confidence)
    finite = np.arange(600) != 5
    ece, count, accuracy, confidence = _equal_mass_twin(x[finite], t[finite], 7)
    clean = fastce.evaluate(x[finite], t[finite], bins=7, equal_mass=True)
    assert_allclose(clean.ece_equal_mass, ece, rtol=1e-10)
    assert_array_equal(clean.mass_bins.count, count)
    assert_allclose(clean.mass_bins.accuracy, accuracy, rtol=1e-12)


def test_equal_mass_bins_stream_to_the_bit():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 50)).astype(np.float32)
    t = rng.integers(0, 50, 3000)
    whole = fastce.evaluate(x, t, bins=12, equal_mass=True)
    acc = fastce.Accumulator(bins=12, equal_mass=True)
    for a, b in ((0, 1000), (1000, 1001), (1001, 2500), (2500, 3000)):
        acc.update(x[a:b], t[a:b])
    r = acc.result()
    assert r.ece_equal_mass == whole.ece_equal_mass
    assert_array_equal(r.mass_bins.confidence, whole.mass_bins.confidence)
    other = fastce.Accumulator(bins=12, equal_mass=True)
    other.update(x[:10], t[:10])
    with pytest.raises(ValueError, match="different options"):
        other.merge(fastce.Accumulator(bins=12))
    assert "equal_mass=True" in repr(other)


def test_rows_without_probabilities_make_the_equal_mass_ece_nan():
    x = np.array([[1.0, 0.0], [np.nan, 0.0], [0.0, 2.0]])
    r = fastce.evaluate(x, np.array([0, 1, 1]), bins=2, equal_mass=True)
    assert np.isnan(r.ece_equal_mass) and np.isnan(r.ece)
    empty = fastce.evaluate(x[:0], np.zeros(0, np.int64), bins=3, equal_mass=True)
    assert np.isnan(empty.ece_equal_mass) and np.all(empty.mass_bins.count == 0)


def test_reliability_data_and_errors():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 10))
    t = rng.integers(0, 10, 500)
    r = fastce.evaluate(x, t, bins=5)
    rel = r.reliability()
    assert_array_equal(rel.count, r.bin_count)
    assert_array_equal(rel.accuracy, r.bin_accuracy)
    assert_allclose(rel.lower, [0, 0.2, 0.4, 0.6, 0.8])
    assert_allclose(rel.upper, [0.2, 0.4, 0.6, 0.8, 1.0])
    with pytest.raises(ValueError, match="equal_mass=True"):
        r.reliability(equal_mass=True)
    with pytest.raises(TypeError, match="equal_mass"):
        fastce.evaluate(x, t, equal_mass="yes")


@pytest.mark.parametrize("equal_mass", [False, True])
def test_plot_draws_the_diagram(equal_mass):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 10)) * 3
    t = rng.integers(0, 10, 2000)
    r = fastce.evaluate(x, t, bins=8, equal_mass=equal_mass)
    fig, ax = plt.subplots()
    assert r.plot(ax, equal_mass=equal_mass) is ax
    rel = r.reliability(equal_mass)
    filled = rel.count > 0
    heights = [patch.get_height() for patch in ax.patches]
    assert_allclose(heights, rel.accuracy[filled])
    assert ax.get_xlabel() == "confidence (largest probability)"
    assert ax.get_ylabel() == "accuracy (top-1)"
    ece = r.ece_equal_mass if equal_mass else r.ece
    assert f"ECE = {ece:.4f}" in ax.get_title()
    assert ("equal-mass" if equal_mass else "equal-width") in ax.get_title()
    plt.close(fig)
    new_ax = r.plot(equal_mass=equal_mass)  # a figure of its own
    assert new_ax.figure is not fig
    plt.close(new_ax.figure)
