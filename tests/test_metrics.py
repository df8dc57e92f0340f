"""fastce.evaluate and fastce.Accumulator against their float64 NumPy twin (fastce.reference),
scikit-learn and fastce.cross_entropy; streaming, merging, pickling, memory-mapped
input, errors, threads and the vector paths."""

import doctest
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from cases import LAYOUTS, arrange, class_axis, make_case
from memory_gauge import peak_and_result
from numpy.testing import assert_allclose, assert_array_equal

import fastce
import fastce._eval_plan
import fastce._temperature
import fastce.metrics
from fastce import _kernels, _metrics
from fastce import reference as ref

FLOATS = (np.float32, np.float64)

# logits shape, class axis (None: PyTorch's rule)
GEOMETRIES = (
    ((7,), None),
    ((300, 37), None),
    ((64, 300), 1),
    ((37, 300), 0),
    ((4, 6, 5, 7), None),  # (N, C, H, W): the tile kernel
    ((3, 9, 130), 1),  # inner > TILE
    ((2, 5, 300), -1),  # (B, T, V)
    ((2, 300, 5), -2),
    ((3, 4, 0), None),
    ((0, 6), None),
)
OPTIONS = (
    {},
    {"weight": True},
    {"ignore_index": -100},
    {"ignore_index": 2, "weight": True},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "weight": True, "ignore_index": -100},
    {"specials": True},
)


# --------------------------------------------------------------------------
# inputs


BEST_PATH = _kernels.simd_isa()


def float_dtype(name):
    """The dtype of that name; bfloat16 is ml_dtypes' (a skip where it is not installed)."""
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def all_cases(dtype):
    rng = np.random.default_rng(2024)
    for shape, axis in GEOMETRIES:
        for option in OPTIONS:
            for layout in LAYOUTS:
                logits, target, weight, kwargs = make_case(rng, shape, axis, dtype, option)
                desc = f"shape={shape} axis={axis} option={option} layout={layout}"
                yield desc, arrange(logits, layout), arrange(target, layout), weight, kwargs


def assert_per_sample_matches(ps, slow, dtype, msg):
    """Per-sample predictions, ranks, confidences and entropies against the twin."""
    assert_array_equal(ps.prediction.reshape(-1), slow["pred"], err_msg=msg)
    assert_array_equal(ps.target_rank.reshape(-1), slow["rank"], err_msg=msg)
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    assert_allclose(ps.confidence.reshape(-1), slow["conf"], rtol=rtol, equal_nan=True, err_msg=msg)
    assert_allclose(
        ps.entropy.reshape(-1), slow["ent"], rtol=rtol, atol=1e-5, equal_nan=True, err_msg=msg
    )
    assert_allclose(ps.lse.reshape(-1), slow["lse"], rtol=rtol, equal_nan=True, err_msg=msg)
    assert_allclose(
        ps.brier.reshape(-1),
        slow["sample_brier"],
        rtol=rtol,
        atol=1e-12 if dtype == np.float64 else 1e-6,
        equal_nan=True,
        err_msg=msg,
    )


def assert_result_matches(fast, slow, dtype, msg):
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    assert fast.count == slow["count"], msg
    for name in ("loss", "perplexity", "confidence", "entropy", "weight_sum", "z_loss"):
        assert_allclose(
            getattr(fast, name),
            slow[name],
            rtol=rtol,
            atol=1e-12,
            equal_nan=True,
            err_msg=f"{name}: {msg}",
        )
    assert_allclose(
        fast.ece, slow["ece"], rtol=rtol, atol=1e-6, equal_nan=True, err_msg=f"ece: {msg}"
    )
    # sum p^2 - 2 p_t + 1 cancels where p_t is near 1: absolute float rounding
    assert_allclose(
        fast.brier,
        slow["brier"],
        rtol=rtol,
        atol=1e-12 if dtype == np.float64 else 1e-6,
        equal_nan=True,
        err_msg=f"brier: {msg}",
    )
    assert fast.accuracy.keys() == slow["accuracy"].keys(), msg
    for k in fast.accuracy:
        assert_allclose(
            fast.accuracy[k],
            slow["accuracy"][k],
            rtol=0,
            atol=0,
            equal_nan=True,
            err_msg=f"top{k}: {msg}",
        )


# --------------------------------------------------------------------------
# against the twin, and against cross_entropy


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_metric_matches_the_reference(dtype):
    checked = 0
    for desc, logits, target, weight, kwargs in all_cases(dtype):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fast = fastce.evaluate(
                logits, target, weight, topk=(1, 2, 5), bins=10, per_sample=True, **kwargs
            )
            slow = ref.evaluate(logits, target, weight, topk=(1, 2, 5), bins=10, **kwargs)
        assert_result_matches(fast, slow, dtype, desc)
        ps = fast.per_sample
        tshape = np.shape(target)
        for arr in (ps.loss, ps.prediction, ps.target_rank, ps.confidence, ps.entropy):
            assert arr.shape == tshape, desc
        assert ps.loss.dtype == ps.confidence.dtype == ps.entropy.dtype == dtype, desc
        assert ps.prediction.dtype == ps.target_rank.dtype == np.int64, desc
        assert_per_sample_matches(ps, slow, dtype, desc)
        checked += 1
    assert checked == len(GEOMETRIES) * len(OPTIONS) * len(LAYOUTS)


@pytest.mark.parametrize("dtype", FLOATS)
def test_per_sample_loss_is_cross_entropys_to_the_last_bit(dtype):
    for desc, logits, target, weight, kwargs in all_cases(dtype):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fast = fastce.evaluate(logits, target, weight, per_sample=True, **kwargs)
            none = fastce.cross_entropy(logits, target, weight, reduction="none", **kwargs)
            mean = fastce.cross_entropy(logits, target, weight, **kwargs)
        assert_array_equal(fast.per_sample.loss, none, err_msg=desc)
        # the mean: float64 totals, compensated here and plain there
        assert_allclose(
            fast.loss,
            float(mean),
            rtol=1e-12 if dtype == np.float64 else 1e-6,
            equal_nan=True,
            err_msg=desc,
        )


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_float_logits_are_computed_in_float32(name):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 30)).astype(float_dtype(name))
    t = rng.integers(0, 30, 200)
    fast = fastce.evaluate(x, t, per_sample=True)
    assert fast.per_sample.loss.dtype == np.float32
    assert_array_equal(fast.per_sample.loss, fastce.cross_entropy(x, t, reduction="none"))
    assert_result_matches(fast, ref.evaluate(x.astype(np.float32), t), np.float32, name)


# every layout the core kernels choose: logits shape, class axis, memory layout
PATH_GEOMETRIES = (
    ((5000, 7), None, "C"),  # rows of few classes, transposed into tiles; 3 blocks
    ((777, 32), None, "C"),  # the most classes such rows have
    ((600, 33), None, "C"),  # one row at a time
    ((3, 40000), None, "C"),  # rows longer than the cache: a running maximum
    ((300, 37), None, "strided"),  # strided rows
    ((300, 37), None, "F"),  # samples contiguous: tiles of one outer slice
    ((4, 21, 33, 35), None, "C"),  # (N, C, H, W): tiles
    ((3, 9, 130), 1, "C"),  # more inner positions than a tile
    ((2, 300, 5), -2, "C"),
    ((2, 5, 300), -1, "C"),
    ((40000, 10), None, "C"),  # float16: several conversion blocks
)


@pytest.mark.parametrize("name", ("float16", "bfloat16", "float32", "float64"))
def test_per_sample_loss_is_cross_entropys_on_every_path(simd_path, name):
    dtype = float_dtype(name)
    rng = np.random.default_rng(34)
    for shape, axis, layout in PATH_GEOMETRIES:
        ax = class_axis(len(shape), axis)
        C = shape[ax]
        tshape = shape[:ax] + shape[ax + 1 :]
        logits = (rng.standard_normal(shape) * 3).astype(dtype)
        logits.reshape(-1)[rng.choice(logits.size, 3, replace=False)] = [np.nan, np.inf, -np.inf]
        target = rng.integers(0, C, tshape)
        target.reshape(-1)[::9] = 3
        weight = rng.uniform(0.1, 2.0, C)
        x = arrange(logits, layout)
        for kwargs in (
            {},
            {"weight": weight, "label_smoothing": 0.1, "ignore_index": 3},
            {"label_smoothing": 0.3},
            # a logit scale, which the row kernels apply as they read the logits
            {"temperature": 0.7, "weight": weight, "label_smoothing": 0.1},
        ):
            desc = f"{simd_path} {shape} {layout} {kwargs}"
            r = fastce.evaluate(x, target, axis=axis, per_sample=True, **kwargs)
            none = fastce.cross_entropy(x, target, axis=axis, reduction="none", **kwargs)
            computed = np.float64 if dtype == np.float64 else np.float32
            assert r.per_sample.loss.dtype == none.dtype == computed
            assert_array_equal(r.per_sample.loss, none, err_msg=desc)
            mean = fastce.cross_entropy(x, target, axis=axis, **kwargs)
            assert_allclose(
                r.loss,
                float(mean),
                rtol=1e-12 if dtype == np.float64 else 1e-6,
                equal_nan=True,
                err_msg=desc,
            )
            if target.size > 10_000:
                continue  # the twin's rank loop is slow; the loss is checked above
            slow = ref.evaluate(x.astype(computed), target, axis=axis, **kwargs)
            assert_result_matches(r, slow, computed, desc)
            ps = r.per_sample
            assert_per_sample_matches(ps, slow, dtype, desc)


INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def test_every_integer_target_dtype_gives_the_same_results():
    rng = np.random.default_rng(35)
    # classes below 100, so that int8 holds them
    for shape, axis in (
        ((500, 7), None),
        ((300, 100), None),
        ((4, 21, 9, 9), None),
        ((100, 300), 0),
    ):
        ax = class_axis(len(shape), axis)
        x = rng.standard_normal(shape).astype(np.float32)
        t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1 :])
        t.reshape(-1)[::5] = 5
        opts = dict(axis=axis, ignore_index=5, label_smoothing=0.1, topk=(1, 3))
        want = fastce.evaluate(x, t, per_sample=True, **opts)
        for dt in INT_DTYPES:
            got = fastce.evaluate(x, t.astype(dt), per_sample=True, **opts)
            results_identical(got, want)
            assert got.count == want.count


def test_integer_targets_are_read_without_a_copy():
    n = 1 << 22
    x = np.zeros((n, 2), np.float32)
    x[:, 1] = 1.0
    for dt in (np.int8, np.uint16, np.int32, np.uint64):
        t = np.ones(n, dt)
        peak, r = peak_and_result(lambda t=t: fastce.evaluate(x, t), warm_up=False)
        assert peak < n, (dt, peak)  # an int64 copy would take 8 * n bytes
        assert r.count == n and r.accuracy[1] == 1.0


def test_the_core_chooses_the_vector_path_for_both_extensions():
    assert not hasattr(_metrics, "simd_init")
    try:
        _kernels.simd_init("baseline")
        assert _metrics.simd_isa() == "baseline"
    finally:
        _kernels.simd_init(BEST_PATH)
    assert _metrics.simd_isa() == _kernels.simd_isa() == BEST_PATH


def test_torch_tensors_and_lists_are_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    t = rng.integers(0, 8, 50)
    a = fastce.evaluate(torch.from_numpy(x), torch.from_numpy(t))
    b = fastce.evaluate(x.tolist(), t.tolist())
    c = fastce.evaluate(x, t)
    assert a.loss == c.loss and a.accuracy == c.accuracy
    assert_allclose(b.loss, ref.evaluate(x, t)["loss"], rtol=1e-12)


# --------------------------------------------------------------------------
# scikit-learn, torch and closed forms


def test_top_k_accuracy_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2000, 20))
    t = rng.integers(0, 20, 2000)
    r = fastce.evaluate(x, t, topk=(1, 2, 5, 19, 20))
    labels = np.arange(20)
    for k in (1, 2, 5, 19):
        expected = metrics.top_k_accuracy_score(t, x, k=k, labels=labels)
        assert r.accuracy[k] == pytest.approx(expected, abs=0), k
    assert r.accuracy[20] == 1.0
    assert r.accuracy[1] == metrics.accuracy_score(t, x.argmax(axis=1))


def test_loss_and_accuracy_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    x = rng.standard_normal((500, 50)).astype(np.float32)
    t = rng.integers(0, 50, 500)
    t[::9] = -100
    w = rng.uniform(0.5, 1.5, 50).astype(np.float32)
    r = fastce.evaluate(x, t, w, label_smoothing=0.1, topk=(1, 5))
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    loss = torch.nn.functional.cross_entropy(xt, tt, torch.from_numpy(w), label_smoothing=0.1)
    assert r.loss == pytest.approx(float(loss), rel=1e-5)
    keep = tt != -100
    top5 = xt[keep].topk(5, dim=1).indices
    acc5 = (top5 == tt[keep][:, None]).any(dim=1).double().mean().item()
    acc1 = (xt[keep].argmax(dim=1) == tt[keep]).double().mean().item()
    assert r.accuracy == {1: acc1, 5: acc5}
    p = torch.softmax(xt[keep].double(), dim=1)
    assert r.confidence == pytest.approx(p.max(dim=1).values.mean().item(), rel=1e-6)
    entropy = torch.distributions.Categorical(probs=p).entropy().mean().item()
    assert r.entropy == pytest.approx(entropy, rel=1e-6)


def test_ties_go_to_the_lower_class_index():
    x = np.array(
        [[1.0, 3.0, 3.0, 0.0], [1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]]
    )
    t = np.array([1, 2, 0, 3])
    r = fastce.evaluate(x, t, topk=(1, 2, 3), per_sample=True)
    assert_array_equal(r.per_sample.prediction, [1, 1, 0, 0])
    assert_array_equal(r.per_sample.target_rank, [0, 1, 0, 3])
    assert r.accuracy == {1: 0.5, 2: 0.75, 3: 0.75}


def test_ties_on_the_vector_path_across_chunks(simd_path):
    # equal logits around vector and chunk boundaries, on every dispatch path
    C = 1000
    x = np.zeros((6, C), dtype=np.float32)
    x[:, [3, 255, 256, 511, 700, 999]] = 5.0
    t = np.array([3, 255, 256, 700, 999, 4])
    r = fastce.evaluate(x, t, per_sample=True, topk=(1, 3, 6))
    assert_array_equal(r.per_sample.prediction, [3] * 6)
    assert_array_equal(r.per_sample.target_rank, [0, 1, 2, 4, 5, 6 + 3])
    for dtype in FLOATS:
        for layout in ("C", "F", "strided"):
            xa = arrange(x.astype(dtype), layout)
            rr = fastce.evaluate(xa, t, per_sample=True)
            assert_array_equal(rr.per_sample.target_rank, r.per_sample.target_rank, layout)


@pytest.mark.parametrize("C", [1, 3, 7, 8, 9, 31, 255, 256, 257, 600])
def test_many_ties_rank_as_defined_for_every_class_count(simd_path, C):
    # logits from a handful of values: ties everywhere, targets at every
    # position relative to the vector lanes and chunks
    rng = np.random.default_rng(C)
    n = 400
    values = np.array([-np.inf, -1.0, 0.0, 0.5, 2.0])
    x = values[rng.integers(0, 5, (n, C))]
    x[np.arange(n), rng.integers(0, C, n)] = 0.5  # every row has a finite maximum
    t = rng.integers(0, C, n)
    expected = np.array([(row > row[k]).sum() + (row[:k] == row[k]).sum() for row, k in zip(x, t)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for dtype in FLOATS:
            for layout in ("C", "F", "strided"):
                r = fastce.evaluate(arrange(x.astype(dtype), layout), t, per_sample=True)
                assert_array_equal(r.per_sample.target_rank, expected, f"{dtype} {layout}")
                assert_array_equal(r.per_sample.prediction, x.argmax(axis=1))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_long_rows_read_once_match_the_twin(simd_path, temperature):
    # rows longer than a cached row (16384 classes), summed chunk by chunk
    # under a running maximum: it rises in later chunks, ties across chunks,
    # chunks of -inf (one holding a -inf target), NaN and +inf in late chunks
    rng = np.random.default_rng(11)
    C = 16384 + 700
    x = rng.standard_normal((9, C)) * 3
    t = rng.integers(0, C, 9)
    x[0, :2000] -= 40  # the maximum rises chunk after chunk
    x[0, 5000:] += np.linspace(0, 30, C - 5000)
    x[1, [300, 9000, C - 1]] = 20.0  # the first of equal maxima, chunks apart
    t[1] = 9000
    x[2, 256:1024] = -np.inf  # whole chunks of -inf, the target in one of them
    t[2] = 600
    x[3, :512] = -np.inf  # the row starts with chunks of -inf
    x[4, 700] = np.nan
    x[5, C - 3] = np.inf
    x[6, 1200:1300] = np.nan
    x[6, 1024:1200] = -np.inf
    x[6, 1300:1536] = -np.inf  # NaN only in a chunk otherwise -inf
    x[7] = -np.inf
    x[8] = np.linspace(-50, 50, C)  # the maximum in the last chunk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for dtype in FLOATS:
            xd = x.astype(dtype)
            kwargs = {} if temperature == 1.0 else {"temperature": temperature}
            fast = fastce.evaluate(xd, t, topk=(1, 5), per_sample=True, **kwargs)
            slow = ref.evaluate(xd, t, topk=(1, 5), **kwargs)
            assert_per_sample_matches(fast.per_sample, slow, dtype, f"{dtype} {simd_path}")
            assert_array_equal(
                fast.per_sample.loss, fastce.cross_entropy(xd, t, reduction="none", **kwargs)
            )


def test_closed_form_calibration_error():
    # two classes; confidences 0.5 (bin 2 of 4), e/(1+e) = 0.731 (bin 2), 0.881 (bin 3)
    x = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    t = np.array([0, 0, 1, 1])
    r = fastce.evaluate(x, t, bins=4, topk=1, per_sample=True)
    c1, c2 = 1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(-2.0))
    assert_allclose(r.per_sample.confidence, [0.5, c1, c2, c1])
    # bin 2 holds 0.5, c1, c1 with 3 of them correct; bin 3 holds c2, wrong
    expected = (abs(3 - (0.5 + 2 * c1)) + abs(0 - c2)) / 4
    assert r.ece == pytest.approx(expected, rel=1e-12)
    assert_array_equal(r.bin_count, [0, 0, 3, 1])
    assert_allclose(r.bin_accuracy, [np.nan, np.nan, 1.0, 0.0])
    assert_allclose(r.bin_confidence[2:], [(0.5 + 2 * c1) / 3, c2])
    assert r.accuracy == {1: 0.75}


def test_worked_example_and_perplexity():
    r = fastce.evaluate(np.array([1.0, 2.0, 0.1]), np.array(1), per_sample=True)
    assert r.loss == pytest.approx(0.417030, abs=1e-6)
    assert r.perplexity == pytest.approx(np.exp(0.4170300162778335), rel=1e-12)
    assert r.count == 1 and r.accuracy[1] == 1.0
    assert r.per_sample.loss.shape == ()


def test_rows_without_defined_probabilities(simd_path):
    x = np.array(
        [
            [0.0, np.nan, 1.0, np.nan],
            [0.0, np.inf, 1.0, 2.0],
            [-np.inf] * 4,
            [0.0, 1.0, -np.inf, 2.0],
            [0.0, 1.0, 5.0, 2.0],
        ]
    )
    t = np.array([2, 1, 0, 2, 2])
    r = fastce.evaluate(x, t, topk=(1, 10), per_sample=True)
    ps = r.per_sample
    assert_array_equal(ps.prediction, [np.argmax(row) for row in x])
    assert_array_equal(ps.target_rank, [4, 4, 4, 3, 0])
    assert np.isnan(ps.loss[:3]).all() and ps.loss[3] == np.inf and np.isfinite(ps.loss[4])
    assert np.isnan(ps.confidence[:3]).all() and np.isnan(ps.entropy[:3]).all()
    assert np.isnan(r.loss) and np.isnan(r.confidence) and np.isnan(r.ece)
    # accuracy stays defined: such rows are never correct
    assert r.accuracy == {1: 0.2, 10: 0.4}


def test_ignored_samples_count_in_no_metric():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 7))
    t = rng.integers(0, 7, 100)
    t_ign = t.copy()
    t_ign[::4] = -1
    x_nan = x.copy()
    x_nan[::4] = np.nan  # what ignored rows hold does not matter
    r = fastce.evaluate(x_nan, t_ign, ignore_index=-1, per_sample=True)
    kept = fastce.evaluate(x[t_ign != -1], t[t_ign != -1])
    assert r.count == 75
    for name in ("loss", "confidence", "entropy", "ece", "accuracy", "count", "weight_sum"):
        assert getattr(r, name) == getattr(kept, name), name
    assert_array_equal(r.per_sample.target_rank[::4], -1)
    assert_array_equal(r.per_sample.loss[::4], 0)


def test_no_samples_gives_nan_and_a_single_class_warns():
    r = fastce.evaluate(np.zeros((0, 5)), np.zeros(0, np.int64), per_sample=True)
    assert r.count == 0 and np.isnan(r.loss) and np.isnan(r.accuracy[1]) and np.isnan(r.ece)
    assert r.per_sample.loss.shape == (0,)
    r = fastce.evaluate(np.ones((4, 3)), np.full(4, -100))
    assert r.count == 0 and np.isnan(r.loss) and np.isnan(r.perplexity)
    with pytest.warns(RuntimeWarning, match="single class"):
        r = fastce.evaluate(np.ones((4, 1)), np.zeros(4, np.int64))
    assert r.loss == 0.0 and r.accuracy[1] == 1.0 and r.confidence == 1.0 and r.entropy == 0.0


def test_inputs_are_not_modified():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 300)).astype(np.float32)
    t = rng.integers(0, 300, 64)
    x0, t0 = x.copy(), t.copy()
    fastce.evaluate(x, t, per_sample=True, label_smoothing=0.1)
    assert_array_equal(x, x0)
    assert_array_equal(t, t0)


# --------------------------------------------------------------------------
# streaming, merging, pickling


def split_points(rng, n, parts):
    cuts = np.sort(rng.integers(0, n + 1, parts - 1))
    return np.concatenate([[0], cuts, [n]])


@pytest.mark.parametrize("dtype", FLOATS)
def test_streamed_totals_equal_one_call_whatever_the_batches(dtype):
    rng = np.random.default_rng(21)
    n, C = 5000, 97
    x = (rng.standard_normal((n, C)) * 3).astype(dtype)
    t = rng.integers(0, C, n)
    t[rng.random(n) < 0.1] = -100
    w = rng.uniform(0.2, 3.0, C)
    opts = dict(ignore_index=-100, label_smoothing=0.05, topk=(1, 5), bins=15)
    whole = fastce.evaluate(x, t, w, **opts)
    ce = fastce.cross_entropy(x, t, w, label_smoothing=0.05)
    assert_allclose(whole.loss, float(ce), rtol=1e-12 if dtype == np.float64 else 1e-6)
    worst = 0.0
    for trial in range(20):
        acc = fastce.Accumulator(w, **opts)
        cuts = split_points(rng, n, int(rng.integers(2, 40)))  # empty batches included
        for a, b in zip(cuts[:-1], cuts[1:]):
            acc.update(x[a:b], t[a:b])
        r = acc.result()
        for name in ("loss", "confidence", "entropy", "ece", "weight_sum", "perplexity"):
            got, want = getattr(r, name), getattr(whole, name)
            worst = max(worst, abs(got - want) / abs(want))
            # promised: float64 rounding; in practice: the last bit
            assert got == want, f"{name} trial {trial}: {got!r} != {want!r}"
        assert r.accuracy == whole.accuracy and r.count == whole.count
        assert_array_equal(r.bin_count, whole.bin_count)
    assert worst == 0.0


def test_padded_language_model_batches_equal_the_unpadded_concatenation():
    # batches (B, T, V) of different lengths, padded with ignore_index
    rng = np.random.default_rng(22)
    V = 301
    sequences = [
        rng.standard_normal((int(rng.integers(1, 40)), V)).astype(np.float32) for _ in range(23)
    ]
    labels = [rng.integers(0, V, len(s)) for s in sequences]
    acc = fastce.Accumulator(axis=-1, topk=(1, 10))
    for start in range(0, 23, 4):
        batch = sequences[start : start + 4]
        T = max(len(s) for s in batch)
        xb = np.zeros((len(batch), T, V), np.float32)
        tb = np.full((len(batch), T), -100)
        for i, (s, lab) in enumerate(zip(batch, labels[start : start + 4])):
            xb[i, : len(s)] = s
            tb[i, : len(s)] = lab
        acc.update(xb, tb)
    flat_x, flat_t = np.concatenate(sequences), np.concatenate(labels)
    one = fastce.evaluate(flat_x, flat_t, topk=(1, 10))
    r = acc.result()
    assert r.count == len(flat_t)
    assert_allclose(r.loss, one.loss, rtol=1e-13)
    assert_allclose(
        r.loss, float(fastce.cross_entropy(flat_x.astype(np.float64), flat_t)), rtol=1e-6
    )
    assert r.accuracy == one.accuracy
    assert_allclose(
        [r.ece, r.entropy, r.confidence], [one.ece, one.entropy, one.confidence], rtol=1e-13
    )


def test_merge_in_any_order_and_pickle_midway():
    rng = np.random.default_rng(23)
    x = rng.standard_normal((3000, 40))
    t = rng.integers(0, 40, 3000)
    whole = fastce.evaluate(x, t, topk=(1, 3), bins=8)
    parts = []
    for a, b in ((0, 1000), (1000, 1700), (1700, 3000)):
        acc = fastce.Accumulator(topk=(3, 1), bins=8)
        acc.update(x[a:b], t[a:b])
        parts.append(pickle.loads(pickle.dumps(acc)))
    for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0)):
        total = fastce.Accumulator(topk=(1, 3), bins=8)
        for i in order:
            total.merge(pickle.loads(pickle.dumps(parts[i])))
        r = total.result()
        assert r.count == 3000 and r.accuracy == whole.accuracy
        assert_allclose(
            [r.loss, r.ece, r.entropy], [whole.loss, whole.ece, whole.entropy], rtol=1e-13
        )
    # an accumulator keeps working after a round trip through pickle
    acc = fastce.Accumulator(topk=(1, 3), bins=8)
    acc.update(x[:1200], t[:1200])
    acc = pickle.loads(pickle.dumps(acc))
    acc.update(x[1200:], t[1200:])
    assert acc.result().accuracy == whole.accuracy
    assert acc.count == 3000 and acc.n_classes == 40
    assert_allclose(acc.loss, whole.loss, rtol=1e-13)


def test_accumulator_state_reset_repr_and_empty_result():
    acc = fastce.Accumulator([1.0, 2.0, 3.0], topk=2, bins=3, ignore_index=0)
    r = acc.result()
    assert r.count == 0 and np.isnan(r.loss) and r.accuracy.keys() == {2}
    acc.update(np.eye(3), np.array([1, 2, 0]))
    assert acc.count == 2 and acc.weight_sum == 5.0
    assert "count=2" in repr(acc) and "topk=(2,)" in repr(acc)
    assert set(acc.result().as_dict()) == {
        "loss",
        "loss_se",
        "perplexity",
        "perplexity_low",
        "perplexity_high",
        "top2",
        "top2_se",
        "confidence",
        "entropy",
        "brier",
        "ece",
        "count",
        "weight_sum",
        "z_loss",
    }
    acc.reset()
    assert acc.count == 0 and acc.n_classes is None
    acc.update(np.eye(4)[:, :3], np.array([1, 2, 0, 1]))
    assert acc.count == 3


def test_merge_refuses_different_options_and_classes():
    base = fastce.Accumulator(topk=(1, 5))
    with pytest.raises(TypeError, match="another Accumulator"):
        base.merge({"loss": 1.0})
    for other in (
        fastce.Accumulator(topk=(1,)),
        fastce.Accumulator(bins=10),
        fastce.Accumulator(label_smoothing=0.1),
        fastce.Accumulator(ignore_index=0),
        fastce.Accumulator(axis=-1),
        fastce.Accumulator(weight=np.ones(3)),
    ):
        with pytest.raises(ValueError, match="different options"):
            base.merge(other)
    a, b = fastce.Accumulator(), fastce.Accumulator()
    a.update(np.zeros((2, 3)), np.zeros(2, np.int64))
    b.update(np.zeros((2, 4)), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="3 and 4 classes"):
        a.merge(b)
    with pytest.raises(ValueError, match="earlier batches had 3"):
        a.update(np.zeros((2, 4)), np.zeros(2, np.int64))
    assert a.count == 2  # a refused batch leaves the totals as they were


# --------------------------------------------------------------------------
# errors: cross_entropy's, and the metrics' own


BAD_INPUTS = (
    (np.zeros((3, 4), np.int64), np.zeros(3, np.int64), {}),
    (np.zeros((3, 4), complex), np.zeros(3, np.int64), {}),
    (np.zeros((3, 4)), np.zeros((3, 1), np.int64), {}),
    (np.zeros((3, 4)), np.zeros((3, 4), np.int64), {}),
    (np.zeros((3, 4)), np.zeros(3, bool), {}),
    (np.zeros((3, 4)), np.zeros(3), {}),
    (np.zeros((3, 4)), np.array([0, 4, 1]), {}),
    (np.zeros((3, 4)), np.array([0, -1, 1]), {}),
    (np.zeros((3, 4)), np.zeros(3, np.int64), {"axis": 2}),
    (np.zeros((3, 4)), np.zeros(3, np.int64), {"axis": 1.0}),
    (np.zeros((3, 4)), np.zeros(3, np.int64), {"weight": np.ones(3)}),
    (np.zeros((3, 4)), np.zeros(3, np.int64), {"weight": np.array(["a"] * 4)}),
    (np.zeros((3, 4)), np.zeros(3, np.int64), {"label_smoothing": 1.5}),
    (np.zeros((3, 4)), np.zeros(3, np.int64), {"ignore_index": 1.5}),
    (np.zeros((3, 4)), np.zeros(3, np.int64), {"num_threads": 0}),
    (np.zeros((3, 0)), np.zeros(3, np.int64), {}),
    (np.zeros(()), np.zeros((), np.int64), {}),
)


@pytest.mark.parametrize("logits, target, kwargs", BAD_INPUTS)
def test_bad_inputs_raise_what_cross_entropy_raises(logits, target, kwargs):
    kwargs = dict(kwargs)
    weight = kwargs.pop("weight", None)
    with pytest.raises(Exception) as expected:
        fastce.cross_entropy(logits, target, weight, **kwargs)
    with pytest.raises(expected.type) as got:
        fastce.evaluate(logits, target, weight, **kwargs)
    assert str(got.value) == str(expected.value)
    with pytest.raises(expected.type) as got:
        fastce.Accumulator(weight, **kwargs).update(logits, target)
    assert str(got.value) == str(expected.value)


def test_probability_targets_are_refused_with_advice():
    p = np.full((3, 4), 0.25)
    with pytest.raises(TypeError, match=r"class indices.*argmax\(axis=1\).*cross_entropy"):
        fastce.evaluate(np.zeros((3, 4)), p)


@pytest.mark.parametrize("topk", [0, -1, (), (1, 0), 1.5, (1, 2.0), True, (1, True), "a"])
def test_bad_topk_raises_naming_it(topk):
    with pytest.raises(ValueError, match="topk"):
        fastce.evaluate(np.zeros((2, 3)), np.zeros(2, np.int64), topk=topk)


@pytest.mark.parametrize("bins", [0, -3, 2.5, True, None, "15", 10**9])
def test_bad_bins_raises_naming_it(bins):
    with pytest.raises(ValueError, match="bins"):
        fastce.evaluate(np.zeros((2, 3)), np.zeros(2, np.int64), bins=bins)


def test_many_bins_and_a_long_rank_histogram_keep_memory_bounded():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6000, 3000)).astype(np.float32)
    t = rng.integers(0, 3000, 6000)
    peak, r = peak_and_result(
        lambda: fastce.evaluate(x, t, bins=1 << 20, topk=(1, 3000)), warm_up=False
    )
    assert peak < 256 << 20, peak  # the partials of 1024 units would take 30 GB
    few = fastce.evaluate(x, t, bins=15, topk=(1, 3000))
    assert r.accuracy == {1: few.accuracy[1], 3000: 1.0}
    assert r.loss == few.loss and r.bin_count.sum() == 6000
    # the ECE of 2**20 bins, by bincount over float64 probabilities
    z = x.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    conf = 1.0 / p.sum(axis=1)
    correct = (z.argmax(axis=1) == t).astype(np.float64)
    b = np.minimum((conf * (1 << 20)).astype(np.int64), (1 << 20) - 1)
    gap = np.bincount(b, correct, 1 << 20) - np.bincount(b, conf, 1 << 20)
    assert_allclose(r.ece, np.abs(gap).sum() / 6000, rtol=1e-6)


def test_topk_is_sorted_and_deduplicated():
    r = fastce.evaluate(np.eye(4), np.arange(4), topk=[5, 1, 5, np.int64(2)])
    assert list(r.accuracy) == [1, 2, 5]
    assert fastce.evaluate(np.eye(4), np.arange(4), topk=3).accuracy == {3: 1.0}


# --------------------------------------------------------------------------
# threads, vector paths, blocks


def results_identical(a, b):
    assert a.as_dict().keys() == b.as_dict().keys()
    for key, value in a.as_dict().items():
        other = b.as_dict()[key]
        assert value == other or (np.isnan(value) and np.isnan(other)), key
    for name in ("loss", "prediction", "target_rank", "confidence", "entropy"):
        assert_array_equal(getattr(a.per_sample, name), getattr(b.per_sample, name), name)


@pytest.mark.parametrize(
    "shape, axis", [((4096, 300), 1), ((8, 21, 32, 32), 1), ((4, 64, 1000), -1)]
)
def test_any_thread_count_gives_identical_results(shape, axis):
    rng = np.random.default_rng(31)
    x = rng.standard_normal(shape).astype(np.float32)
    ax = axis % len(shape)
    t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1 :])
    runs = [
        fastce.evaluate(x, t, axis=axis, per_sample=True, label_smoothing=0.1, num_threads=n)
        for n in (1, 2, 3)
    ]
    results_identical(runs[0], runs[1])
    results_identical(runs[0], runs[2])


def test_every_vector_path_matches_cross_entropy_too(simd_path):
    assert _kernels.simd_isa() == simd_path
    rng = np.random.default_rng(32)
    for shape, axis in (
        ((500, 1000), 1),
        ((300, 37), 1),
        ((4, 70, 130), 1),
        ((3, 9, 130), 1),
        ((2, 5, 300), -1),
    ):
        for dtype in FLOATS:
            x = (rng.standard_normal(shape) * 3).astype(dtype)
            ax = axis % len(shape)
            t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1 :])
            r = fastce.evaluate(x, t, axis=axis, per_sample=True, label_smoothing=0.1)
            assert _metrics.simd_isa() == simd_path
            assert_array_equal(
                r.per_sample.loss,
                fastce.cross_entropy(x, t, axis=axis, reduction="none", label_smoothing=0.1),
            )
            assert_result_matches(
                r,
                ref.evaluate(x, t, axis=axis, label_smoothing=0.1),
                dtype,
                f"{shape} {dtype}",
            )


@pytest.mark.parametrize(
    "shape, axis, layout",
    [
        ((3000, 50), 1, "C"),  # blocks of rows
        ((3000, 50), 1, "F"),  # one outer slice: blocks of tiles
        ((50, 3001), 0, "C"),
        ((6, 50, 700), 1, "C"),
        ((3000, 50), 1, "byteswapped"),  # converted block by block
    ],
)
def test_blocks_give_the_same_results(monkeypatch, shape, axis, layout):
    rng = np.random.default_rng(33)
    x = arrange(rng.standard_normal(shape).astype(np.float32), layout)
    ax = axis % len(shape)
    t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1 :])
    t.reshape(-1)[::7] = -100
    whole = fastce.evaluate(x, t, axis=axis, per_sample=True)
    monkeypatch.setattr(fastce._eval_plan, "_BLOCK_BYTES", 20000)
    blocked = fastce.evaluate(x, t, axis=axis, per_sample=True)
    results_identical(whole, blocked)
    assert_array_equal(
        blocked.per_sample.loss, fastce.cross_entropy(x, t, axis=axis, reduction="none")
    )


def test_memory_mapped_logits_are_read_in_blocks_without_a_copy(tmp_path):
    n, C = 150_000, 500  # 300 MB of float32
    path = tmp_path / "logits.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, C))
    rng = np.random.default_rng(41)
    for start in range(0, n, 10_000):
        mm[start : start + 10_000] = rng.standard_normal((10_000, C), dtype=np.float32)
    mm.flush()
    del mm
    target = rng.integers(0, C, n)
    target[::13] = -100

    logits = np.load(path, mmap_mode="r")
    peak, r = peak_and_result(lambda: fastce.evaluate(logits, target, topk=(1, 5)), warm_up=False)
    assert peak < logits.nbytes / 50, f"peak {peak} bytes for a {logits.nbytes} byte file"

    # the same numbers as batches copied into memory, and as cross_entropy
    acc = fastce.Accumulator(topk=(1, 5))
    for start in range(0, n, 40_000):
        acc.update(np.array(logits[start : start + 40_000]), target[start : start + 40_000])
    streamed = acc.result()
    assert r.count == streamed.count == np.count_nonzero(target != -100)
    assert r.accuracy == streamed.accuracy
    assert_allclose(
        [r.loss, r.ece, r.entropy], [streamed.loss, streamed.ece, streamed.entropy], rtol=1e-13
    )
    assert_allclose(r.loss, float(fastce.cross_entropy(logits, target)), rtol=1e-6)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_float_memmap_is_converted_one_block_at_a_time(tmp_path, monkeypatch, name):
    dtype = float_dtype(name)
    n, C = 40_000, 200  # 16 MB of half-width floats
    path = tmp_path / "half.npy"
    rng = np.random.default_rng(42)
    np.save(path, rng.standard_normal((n, C)).astype(dtype))
    target = rng.integers(0, C, n)
    # .npy keeps bfloat16 as two opaque bytes: the view names the dtype again
    logits = np.load(path, mmap_mode="r").view(dtype)
    assert isinstance(logits, np.memmap) and logits.dtype == dtype
    expected = fastce.evaluate(np.array(logits), target)
    monkeypatch.setattr(fastce._eval_plan, "_BLOCK_BYTES", 1 << 20)
    peak, r = peak_and_result(lambda: fastce.evaluate(logits, target), warm_up=False)
    assert peak < logits.nbytes / 4, peak
    assert r.loss == expected.loss and r.accuracy == expected.accuracy


# --------------------------------------------------------------------------
# the build


@pytest.mark.parametrize("module", [fastce.metrics, fastce._temperature])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_metrics_extension_is_built_like_the_core():
    assert _metrics.openmp_enabled() == _kernels.openmp_enabled()
    assert _metrics.compile_args() == _kernels.compile_args()
    assert _metrics.TILE_SIZE == _kernels.TILE_SIZE
    assert os.path.exists(os.path.join(os.path.dirname(fastce.__file__), "_metrics.pyi"))


FORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import sys
    import numpy as np
    import fastce
    from fastce import _kernels

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 256)).astype(np.float32)
    t = rng.integers(0, 256, 4096)

    def child(queue):
        a = fastce.evaluate(x, t)
        b = fastce.evaluate(x, t, num_threads=2)
        queue.put((a.loss, b.loss, float(fastce.cross_entropy(x, t)),
                   _kernels.forked_child_serial()))

    if __name__ == "__main__":
        threads = None if sys.argv[1] == "default" else int(sys.argv[1])
        # the only kernel this process runs, on a team of two threads
        parent = fastce.evaluate(x, t, num_threads=threads)
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        p = ctx.Process(target=child, args=(queue,))
        p.start()
        a, b, ce, serial = queue.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        assert serial, "the child of a process that ran a team must compute serially"
        assert a == b == parent.loss, (a, b, parent.loss)
        assert abs(ce - a) < 1e-5 * abs(a), (ce, a)
        print("ok")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="fork only")
@pytest.mark.skipif(not _kernels.openmp_enabled(), reason="no thread team without OpenMP")
@pytest.mark.parametrize("parent_threads", ["2", "default"])
def test_a_child_forked_after_evaluate_ran_threads_computes_serially(tmp_path, parent_threads):
    # evaluate's threads are counted by the core's rule, so the core's fork
    # handler knows a team ran even when no core kernel did
    script = tmp_path / "fork_eval.py"
    script.write_text(FORK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run(
        [sys.executable, str(script), parent_threads],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "ok"
