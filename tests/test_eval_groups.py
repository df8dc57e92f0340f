"""Per-group scores (``segments``), standard errors and the target's
log-probability of ``fastce.evaluate``, ``Accumulator`` and ``fastce.dask``,
against the literal float64 twin in ``fastce.reference`` and, for the
errors' coverage, a simulation."""

import pickle
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastce
from fastce import reference as ref


def _case(rng, n=600, C=12, groups=40, ignore_every=7):
    x = rng.standard_normal((n, C)) * 2.0
    t = rng.integers(0, C, n)
    t[::ignore_every] = -100
    # ids neither contiguous nor sorted, some negative, and an all-ignored group
    ids = rng.permutation(np.arange(-groups // 2, groups // 2) * 7919)
    seg = np.sort(rng.integers(0, groups, n))
    seg = ids[seg]
    seg[:3] = 123456789
    t[:3] = -100
    return x, t, seg


def _assert_groups_match(got, want, rtol=1e-12):
    assert got is not None and want is not None
    assert_array_equal(got.ids, want["ids"])
    assert_array_equal(got.count, want["count"])
    assert_array_equal(got.greedy, want["greedy"])
    for name in ("weight_sum", "loss_sum", "log_likelihood", "loss"):
        assert_allclose(getattr(got, name), want[name], rtol=rtol, atol=1e-12, err_msg=name)
    assert_allclose(got.perplexity, np.exp(want["loss"]), rtol=rtol)
    assert got.accuracy.keys() == want["accuracy"].keys()
    for k in got.accuracy:
        assert_allclose(got.accuracy[k], want["accuracy"][k], rtol=1e-15)


OPTIONS = [
    {},
    {"weight": np.linspace(0.2, 2.0, 12)},
    {"label_smoothing": 0.1},
    {"softcap": 3.0, "temperature": 0.7},
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "weight", "smoothing", "transform"])
def test_groups_and_errors_equal_the_reference(dtype, options):
    rng = np.random.default_rng(3)
    x, t, seg = _case(rng)
    x = x.astype(dtype)
    kwargs = dict(options)
    weight = kwargs.pop("weight", None)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    fast = fastce.evaluate(x, t, weight, topk=(1, 3, 20), segments=seg, per_sample=True, **kwargs)
    slow = ref.evaluate(x, t, weight, topk=(1, 3, 20), segments=seg, **kwargs)
    _assert_groups_match(fast.groups, slow["groups"], rtol=rtol)
    assert fast.groups.count[fast.groups.ids == 123456789] == 0
    assert_allclose(fast.macro_loss, slow["macro_loss"], rtol=rtol)
    assert_allclose(fast.macro_perplexity, slow["macro_perplexity"], rtol=rtol)
    assert_allclose(fast.loss_se, slow["loss_se"], rtol=1e-9 if dtype == np.float64 else 1e-4)
    for k in (1, 3, 20):
        assert_allclose(fast.accuracy_se[k], slow["accuracy_se"][k], rtol=1e-12)
    assert_allclose(fast.per_sample.target_logprob, slow["target_logprob"], rtol=rtol, atol=rtol)
    # without per-sample arrays the kernel fills only what the groups read:
    # every figure, to the bit
    lean = fastce.evaluate(x, t, weight, topk=(1, 3, 20), segments=seg, **kwargs)
    for name in ("ids", "count", "weight_sum", "loss_sum", "log_likelihood", "greedy"):
        assert_array_equal(getattr(lean.groups, name), getattr(fast.groups, name), err_msg=name)
    for k in (1, 3, 20):
        assert_array_equal(lean.groups.accuracy[k], fast.groups.accuracy[k])
        assert lean.accuracy_se[k] == fast.accuracy_se[k]
    assert (lean.loss, lean.loss_se, lean.macro_loss) == (fast.loss, fast.loss_se, fast.macro_loss)
    # without segments: the errors of independent samples
    plain = fastce.evaluate(x, t, weight, topk=(1, 3, 20), **kwargs)
    slow = ref.evaluate(x, t, weight, topk=(1, 3, 20), **kwargs)
    assert plain.groups is None and np.isnan(plain.macro_loss)
    assert_allclose(plain.loss_se, slow["loss_se"], rtol=1e-9 if dtype == np.float64 else 1e-4)
    for k in (1, 3, 20):
        assert_allclose(plain.accuracy_se[k], slow["accuracy_se"][k], rtol=1e-12)
    low, high = plain.perplexity_interval
    assert_allclose(np.log([low, high]), plain.loss + np.array([-1, 1]) * 1.959964 * plain.loss_se)


def test_packed_rows_and_a_class_axis_in_the_middle():
    # several documents per row of a (batch, classes, positions) array
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 9, 50))
    t = rng.integers(0, 9, (4, 50))
    seg = np.cumsum(rng.random((4, 50)) < 0.1, axis=1) + 100 * np.arange(4)[:, None]
    fast = fastce.evaluate(x, t, axis=1, segments=seg, topk=(1, 2))
    slow = ref.evaluate(x, t, axis=1, segments=seg, topk=(1, 2))
    _assert_groups_match(fast.groups, slow["groups"])
    # and Fortran-ordered logits, which the kernels walk along the samples
    fast = fastce.evaluate(np.asfortranarray(x[0].T), t[0], segments=seg[0], topk=(1, 2))
    slow = ref.evaluate(x[0].T, t[0], segments=seg[0], topk=(1, 2))
    _assert_groups_match(fast.groups, slow["groups"])


def test_greedy_match_and_log_likelihood_of_a_continuation():
    # two continuations: the first follows the argmax, the second does not
    x = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]))
    t = np.array([0, 1, 1, 2])
    r = fastce.evaluate(x, t, segments=[0, 0, 1, 1], topk=1)
    assert_array_equal(r.groups.greedy, [True, False])
    assert_allclose(r.groups.log_likelihood, np.log([0.7 * 0.6, 0.25 * 0.5]), rtol=1e-14)
    assert_allclose(r.groups.loss, -np.log([0.7 * 0.6, 0.25 * 0.5]) / 2, rtol=1e-14)
    assert_allclose(r.groups.accuracy[1], [1.0, 0.5])
    assert_allclose(r.macro_perplexity, np.mean(1 / np.sqrt([0.7 * 0.6, 0.25 * 0.5])))
    assert_allclose(r.macro_loss, np.mean(r.groups.loss))
    # the micro figures stay token-weighted
    assert_allclose(r.loss, fastce.cross_entropy(x, t), rtol=1e-14)


def test_streamed_groups_equal_one_call():
    rng = np.random.default_rng(11)
    x, t, seg = _case(rng, n=900)
    whole = fastce.evaluate(x, t, segments=seg, topk=(1, 5))
    for cuts in ([450], [1, 2, 300, 301, 899], list(range(50, 900, 50))):
        acc = fastce.Accumulator(topk=(1, 5))
        for a, b in zip([0, *cuts], [*cuts, 900]):
            acc.update(x[a:b], t[a:b], segments=seg[a:b])
        r = acc.result()
        assert r.loss == whole.loss and r.accuracy == whole.accuracy
        _assert_groups_match(r.groups, _as_dict(whole.groups), rtol=1e-12)
        assert_allclose(r.loss_se, whole.loss_se, rtol=1e-12)
        assert r.accuracy_se == whole.accuracy_se
        assert_allclose(r.macro_loss, whole.macro_loss, rtol=1e-12)
    # shards merged in any order, through pickle
    parts = []
    for a, b in ((0, 300), (300, 650), (650, 900)):
        part = fastce.Accumulator(topk=(1, 5))
        part.update(x[a:b], t[a:b], segments=seg[a:b])
        parts.append(pickle.loads(pickle.dumps(part)))
    total = fastce.Accumulator(topk=(1, 5))
    for part in reversed(parts):
        total.merge(part)
    _assert_groups_match(total.result().groups, _as_dict(whole.groups), rtol=1e-12)


def _as_dict(groups):
    return {name: getattr(groups, name) for name in groups.__dataclass_fields__}


def test_unsegmented_streams_keep_their_standard_error():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1000, 30))
    t = rng.integers(0, 30, 1000)
    w = rng.random(30) + 0.5
    whole = fastce.evaluate(x, t, w)
    acc = fastce.Accumulator(w)
    for a in range(0, 1000, 137):
        acc.update(x[a : a + 137], t[a : a + 137])
    assert_allclose(acc.result().loss_se, whole.loss_se, rtol=1e-12)
    assert acc.result().accuracy_se == whole.accuracy_se


def test_linear_head_groups_equal_the_full_logits():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((300, 16))
    W = rng.standard_normal((50, 16))
    t = rng.integers(0, 50, 300)
    t[::5] = -100
    seg = np.repeat(np.arange(30), 10)
    seg[:10] = 99  # with t[::5] ignored, group 99 keeps tokens 1-4 and 6-9
    t[:10] = -100  # now group 99 is all ignored
    whole = fastce.evaluate(h @ W.T, t, segments=seg)
    r = fastce.evaluate_linear(h, W, t, segments=seg, max_block_bytes=50 * 8 * 32)
    _assert_groups_match(r.groups, _as_dict(whole.groups), rtol=1e-12)
    assert 99 in r.groups.ids and r.groups.count[r.groups.ids == 99] == 0
    acc = fastce.Accumulator()
    acc.update_linear(h[:130], W, t[:130], segments=seg[:130])
    acc.update_linear(h[130:], W, t[130:], segments=seg[130:])
    _assert_groups_match(acc.result().groups, _as_dict(whole.groups), rtol=1e-12)


def test_dask_groups_equal_one_call():
    da = pytest.importorskip("dask.array")
    import fastce.dask as fdask

    rng = np.random.default_rng(4)
    x, t, seg = _case(rng, n=700)
    whole = fastce.evaluate(x, t, segments=seg)
    r = fdask.evaluate(
        da.from_array(x, chunks=(170, 12)),
        da.from_array(t, chunks=250),
        segments=da.from_array(seg, chunks=90),
    )
    assert r.loss == whole.loss
    _assert_groups_match(r.groups, _as_dict(whole.groups), rtol=1e-12)
    assert_allclose(r.loss_se, whole.loss_se, rtol=1e-12)
    with pytest.raises(ValueError, match="target's shape"):
        fdask.evaluate(da.from_array(x, chunks=(170, 12)), t, segments=seg[:-1])


def test_empty_groups_and_tiny_evaluations():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    t = np.array([0, -100, 1])
    with warnings.catch_warnings():
        # an empty group's NaN metrics are its values, not warnings
        warnings.simplefilter("error")
        r = fastce.evaluate(x, t, segments=[5, 6, 5], topk=1)
    assert_array_equal(r.groups.ids, [5, 6])
    assert_array_equal(r.groups.count, [2, 0])
    assert np.isnan(r.groups.loss[1]) and not r.groups.greedy[1]
    assert r.groups.log_likelihood[1] == 0.0 and np.isnan(r.groups.accuracy[1][1])
    # one non-empty group: no clustered error
    assert np.isnan(r.loss_se) and np.isnan(r.accuracy_se[1])
    assert_allclose(r.macro_loss, r.groups.loss[0])
    # one sample: no error either, and no samples at all
    one = fastce.evaluate(x[:1], t[:1])
    assert np.isnan(one.loss_se) and np.isnan(one.perplexity_interval[0])
    none = fastce.evaluate(x[:0], t[:0], segments=np.zeros(0, np.int64))
    assert none.count == 0 and none.groups.ids.size == 0 and np.isnan(none.macro_loss)
    # a NaN row is never a hit, however large k
    y = x.copy()
    y[2, 0] = np.nan
    r = fastce.evaluate(y, t, segments=[5, 6, 5], topk=(1, 9))
    assert_array_equal(r.groups.accuracy[9], [0.5, np.nan])


def test_segments_errors_and_mixing():
    x = np.zeros((4, 3))
    t = np.array([0, 1, 2, 0])
    with pytest.raises(TypeError, match="integer group ids"):
        fastce.evaluate(x, t, segments=np.zeros(4))
    with pytest.raises(ValueError, match=r"target's shape \(4,\)"):
        fastce.evaluate(x, t, segments=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="fit in int64"):
        fastce.evaluate(x, t, segments=np.full(4, 2**63, np.uint64))
    acc = fastce.Accumulator()
    acc.update(x, t, segments=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="needs segments, or none does"):
        acc.update(x, t)
    assert acc.count == 4  # the refused batch left nothing behind
    plain = fastce.Accumulator()
    plain.update(x, t)
    with pytest.raises(ValueError, match="with segments and one without"):
        acc.merge(plain)
    with pytest.raises(ValueError, match="needs segments, or none does"):
        plain.update(x, t, segments=[0, 0, 1, 1])


def _coverage(rng, replicates, draw):
    """How often the 95 % interval of the mean loss holds ``truth``, for
    intervals from evaluate's standard error, clustered or not."""
    hits = {"clustered": 0, "naive": 0}
    for _ in range(replicates):
        x, t, seg, truth = draw(rng)
        for name, s in (("clustered", seg), ("naive", None)):
            r = fastce.evaluate(x, t, segments=s)
            hits[name] += abs(r.loss - truth) <= 1.959964 * r.loss_se
    return {k: v / replicates for k, v in hits.items()}


def test_interval_coverage_by_simulation():
    C, docs, per_doc = 8, 40, 20
    # a population where a document shifts every one of its tokens' logits:
    # its tokens' losses are correlated
    base = np.random.default_rng(0).standard_normal(C)

    def population_loss(shift_sd, samples=400_000, seed=1):
        g = np.random.default_rng(seed)
        shifts = g.standard_normal((samples // per_doc, 1, C)) * shift_sd
        x = (base + shifts + 0.5 * g.standard_normal((samples // per_doc, per_doc, C))).reshape(
            -1, C
        )
        t = g.integers(0, C, samples)
        return fastce.evaluate(x, t).loss

    def sampler(shift_sd, truth):
        def draw(g):
            shifts = np.repeat(g.standard_normal((docs, 1, C)) * shift_sd, per_doc, axis=1)
            x = (base + shifts + 0.5 * g.standard_normal((docs, per_doc, C))).reshape(-1, C)
            t = g.integers(0, C, docs * per_doc)
            return x, t, np.repeat(np.arange(docs), per_doc), truth

        return draw

    rng = np.random.default_rng(7)
    # independent tokens: both intervals hold the truth about 95 % of the time
    independent = _coverage(rng, 300, sampler(0.0, population_loss(0.0)))
    assert 0.91 <= independent["naive"] <= 0.985, independent
    assert 0.90 <= independent["clustered"] <= 0.985, independent
    # correlated within documents: only the clustered interval does
    correlated = _coverage(rng, 300, sampler(1.5, population_loss(1.5)))
    assert 0.89 <= correlated["clustered"] <= 0.985, correlated
    assert correlated["naive"] < correlated["clustered"] - 0.1, correlated
