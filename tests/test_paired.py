"""evaluate(..., reference=...): a model against a reference model's logits,
against the literal float64 twin, on every vector path."""

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastce
from fastce import cli
from fastce import reference as ref


def _pair(rng, n=800, C=50, noise=0.4, dtype=np.float64):
    x = rng.standard_normal((n, C)) * 2
    t = rng.integers(0, C, n)
    t[::10] = -100
    r = x + noise * rng.standard_normal((n, C))
    return x.astype(dtype), t, r.astype(dtype)


def _assert_paired(fast, slow, rtol):
    p, q = fast.paired, slow["paired"]
    assert p is not None and q is not None
    for name in (
        "kl",
        "top1_agreement",
        "target_prob_change",
        "target_prob_change_sd",
        "reference_loss",
        "log_perplexity_ratio",
        "log_perplexity_ratio_se",
    ):
        assert_allclose(getattr(p, name), q[name], rtol=rtol, atol=rtol * 1e-3, err_msg=name)
    for k in ("p50", "p90", "p99", "max"):
        assert_allclose(p.kl_percentiles[k], q["kl_percentiles"][k], rtol=rtol, err_msg=k)
    assert_allclose(p.reference_perplexity, np.exp(q["reference_loss"]), rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "options",
    [{}, {"weight": np.linspace(0.5, 2, 50), "label_smoothing": 0.1}],
    ids=["plain", "weighted"],
)
def test_equals_the_twin_on_every_path(simd_path, dtype, options):
    rng = np.random.default_rng(0)
    x, t, r = _pair(rng, dtype=dtype)
    kwargs = dict(options)
    weight = kwargs.pop("weight", None)
    fast = fastce.evaluate(x, t, weight, reference=r, per_sample=True, **kwargs)
    slow = ref.evaluate(x, t, weight, reference=r, **kwargs)
    rtol = 1e-10 if dtype == np.float64 else 3e-5
    _assert_paired(fast, slow, rtol)
    assert_allclose(fast.per_sample.kl, slow["kl"], rtol=rtol, atol=1e-6)
    # the model's own metrics are evaluate's
    plain = fastce.evaluate(x, t, weight, **kwargs)
    assert_allclose(fast.loss, plain.loss, rtol=1e-12)
    assert fast.accuracy == plain.accuracy


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_long_rows_equal_the_twin_on_every_path(simd_path, dtype):
    # rows longer than a cached row: the reference's running maximum rises
    # chunk after chunk, and whole chunks of its logits are -inf
    rng = np.random.default_rng(4)
    x, t, r = _pair(rng, n=12, C=16384 + 900, noise=1.0)
    r[0] += np.linspace(-30, 30, r.shape[1])
    r[1, 256:1280] = -np.inf
    r[2, 2000:] -= 50
    x[3] = r[3]  # the same row: KL 0, agreement
    fast = fastce.evaluate(x.astype(dtype), t, reference=r.astype(dtype), per_sample=True)
    slow = ref.evaluate(x.astype(dtype), t, reference=r.astype(dtype))
    rtol = 1e-10 if dtype == np.float64 else 3e-5
    _assert_paired(fast, slow, rtol)
    assert_allclose(fast.per_sample.kl, slow["kl"], rtol=rtol, atol=1e-6)
    # a long row is swept beside its reference's: the model's own metrics
    # are still those of evaluate alone, to the bit
    plain = fastce.evaluate(x.astype(dtype), t, per_sample=True)
    for name in ("loss", "prediction", "target_rank", "confidence", "entropy", "brier"):
        got, want = getattr(fast.per_sample, name), getattr(plain.per_sample, name)
        assert got.tobytes() == want.tobytes(), name
    assert (fast.loss, fast.entropy, fast.brier, fast.ece) == (
        plain.loss,
        plain.entropy,
        plain.brier,
        plain.ece,
    )
    assert fast.accuracy == plain.accuracy


@pytest.mark.parametrize("layout", ["fortran", "classes in the middle", "float16", "mixed"])
def test_layouts_and_dtypes(layout, tmp_path):
    rng = np.random.default_rng(1)
    x, t, r = _pair(rng, n=300, C=12)
    kwargs = {}
    if layout == "fortran":
        x, r = np.asfortranarray(x), np.asfortranarray(r)
    elif layout == "classes in the middle":
        x = np.ascontiguousarray(x.reshape(3, 100, 12).transpose(0, 2, 1))
        r = np.ascontiguousarray(r.reshape(3, 100, 12).transpose(0, 2, 1))
        t = t.reshape(3, 100)
    elif layout == "float16":
        x, r = x.astype(np.float16), r.astype(np.float16)
    elif layout == "mixed":
        np.save(tmp_path / "r.npy", r.astype(np.float32))
        r = np.load(tmp_path / "r.npy", mmap_mode="r")  # float32, memory-mapped
    fast = fastce.evaluate(x, t, reference=r, **kwargs)
    slow = ref.evaluate(x, t, reference=r, **kwargs)
    _assert_paired(fast, slow, 1e-10 if np.asarray(x).dtype == np.float64 else 5e-5)


def test_ignored_rows_between_pairs_change_no_bit(simd_path):
    # a reference row reads the next one's maxima while it is summed: an
    # ignored row between two pairs (here with a far larger maximum) must
    # leave the pairs as they are without it
    rng = np.random.default_rng(3)
    x = rng.standard_normal((301, 700)).astype(np.float32)
    r = (x + rng.standard_normal(x.shape) * 0.5).astype(np.float32)
    t = rng.integers(0, 700, 301)
    t[::3] = -100
    r[::3] += 50.0
    r[1::7] -= 30.0
    keep = t != -100
    for threads in (1, 2):
        for per_sample in (True, False):
            got = fastce.evaluate(x, t, reference=r, per_sample=per_sample, num_threads=threads)
            want = fastce.evaluate(
                x[keep], t[keep], reference=r[keep], per_sample=per_sample, num_threads=threads
            )
            assert vars(got.paired) == vars(want.paired)
            if per_sample:
                np.testing.assert_array_equal(got.per_sample.kl[keep], want.per_sample.kl)


def test_the_same_model_and_special_rows():
    rng = np.random.default_rng(2)
    x, t, _ = _pair(rng, n=200, C=30)
    same = fastce.evaluate(x, t, reference=x).paired
    assert abs(same.kl) < 1e-12 and same.top1_agreement == 1.0
    assert same.log_perplexity_ratio == 0.0 and same.target_prob_change == 0.0
    # a class the reference gives mass and the model none: infinite KL; -inf
    # reference logits add nothing
    y, r = x.copy(), x.copy()
    y[1, 3] = -np.inf
    r[2, 4] = -np.inf
    t[1:3] = 0
    p = fastce.evaluate(y, t, reference=r, per_sample=True)
    assert np.isinf(p.per_sample.kl[1]) and np.isfinite(p.per_sample.kl[2])
    assert p.paired.kl_percentiles["max"] == np.inf


def test_streams_exactly_and_checks_its_batches():
    rng = np.random.default_rng(3)
    x, t, r = _pair(rng, n=1000)
    whole = fastce.evaluate(x, t, reference=r).paired
    acc = fastce.Accumulator()
    for a in range(0, 1000, 170):
        acc.update(x[a : a + 170], t[a : a + 170], reference=r[a : a + 170])
    streamed = acc.result().paired
    assert streamed.kl_percentiles == whole.kl_percentiles
    assert streamed.top1_agreement == whole.top1_agreement
    assert_allclose(streamed.kl, whole.kl, rtol=1e-12)
    assert_allclose(streamed.log_perplexity_ratio_se, whole.log_perplexity_ratio_se, rtol=1e-12)
    with pytest.raises(ValueError, match="needs a reference, or none does"):
        acc.update(x[:5], t[:5])
    with pytest.raises(ValueError, match="with a reference and one without"):
        other = fastce.Accumulator()
        other.update(x[:5], t[:5])
        acc.merge(other)
    with pytest.raises(ValueError, match="the logits' shape"):
        fastce.evaluate(x, t, reference=r[:-1])
    with pytest.raises(TypeError, match="reference"):
        fastce.evaluate(x, t, reference=r.astype(np.int64))
    assert fastce.evaluate(x, t).paired is None


def test_dask_and_the_command_line(tmp_path):
    rng = np.random.default_rng(4)
    x, t, r = _pair(rng, n=600)
    whole = fastce.evaluate(x, t, reference=r).paired
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "r.npy", r)
    code = cli.main(
        [str(tmp_path / n) for n in ("x.npy", "t.npy")]
        + ["--reference", str(tmp_path / "r.npy"), "--json", str(tmp_path / "o.json")]
    )
    assert code == 0
    saved = json.loads((tmp_path / "o.json").read_text())["paired"]
    assert_allclose(saved["kl"], whole.kl, rtol=1e-12)
    da = pytest.importorskip("dask.array")
    import fastce.dask as fdask

    p = fdask.evaluate(
        da.from_array(x, chunks=(150, 50)), t, reference=da.from_array(r, chunks=(100, 50))
    ).paired
    assert p.kl_percentiles == whole.kl_percentiles
    assert_allclose(p.kl, whole.kl, rtol=1e-12)
