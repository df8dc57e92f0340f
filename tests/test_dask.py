"""fastce.dask: dask arrays give the in-memory results, on the local schedulers and
on a distributed.LocalCluster of worker processes."""

import pickle
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from dask.array.core import PerformanceWarning  # noqa: E402

import fastce  # noqa: E402
import fastce.dask as fdask  # noqa: E402


def same_result(a, b):
    """Two EvalResults agree: counts exactly, totals to float64 rounding (and
    in practice to the last bit)."""
    assert a.count == b.count and a.accuracy == b.accuracy
    assert_array_equal(a.bin_count, b.bin_count)
    for name in ("loss", "perplexity", "confidence", "entropy", "ece", "weight_sum"):
        got, want = getattr(a, name), getattr(b, name)
        assert got == want or (np.isnan(got) and np.isnan(want)), (name, got, want)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(51)
    x = (rng.standard_normal((6000, 120)) * 2).astype(np.float32)
    t = rng.integers(0, 120, 6000)
    t[::11] = -100
    w = rng.uniform(0.5, 2.0, 120)
    return x, t, w


OPTIONS = dict(ignore_index=-100, label_smoothing=0.1, topk=(1, 5), bins=12)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
@pytest.mark.parametrize("chunks", [(1000, 120), (777, -1), (6000, 120)])
def test_evaluate_equals_the_in_memory_result(data, scheduler, chunks):
    x, t, w = data
    expected = fastce.evaluate(x, t, w, **OPTIONS)
    xd = da.from_array(x, chunks=chunks)
    td = da.from_array(t, chunks=1500)  # not aligned with the logits: rechunked
    with dask.config.set(scheduler=scheduler):
        got = fdask.evaluate(xd, td, w, **OPTIONS)
    same_result(got, expected)


def test_logit_transforms_reach_every_block(data):
    x, t, w = data
    transform = dict(softcap=3.0, temperature=1.3, z_loss=1e-3)
    whole = fastce.evaluate(x, t, w, **OPTIONS, **transform)
    got = fdask.evaluate(da.from_array(x, chunks=(1000, 120)), t, w, **OPTIONS, **transform)
    same_result(got, whole)
    assert got.z_loss == pytest.approx(whole.z_loss, rel=1e-12) and got.z_loss > 0
    acc = fdask.accumulate(da.from_array(x, chunks=(1500, 120)), t, w, **OPTIONS, **transform)
    assert acc.compute().result().loss == pytest.approx(whole.loss, rel=1e-12)
    with pytest.raises(ValueError, match="softcap"):
        fdask.evaluate(da.from_array(x, chunks=(1000, 120)), t, softcap=-1.0)


def test_channels_first_and_class_last_layouts():
    rng = np.random.default_rng(52)
    x = rng.standard_normal((6, 10, 40, 30))
    t = rng.integers(0, 10, (6, 40, 30))
    got = fdask.evaluate(
        da.from_array(x, chunks=(2, 10, 20, 30)), da.from_array(t, chunks=(3, 40, 15))
    )
    same_result(got, fastce.evaluate(x, t))
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))  # (B, H, W, C)
    got = fdask.evaluate(da.from_array(xl, chunks=(4, 13, 30, 10)), da.from_array(t), axis=-1)
    same_result(got, fastce.evaluate(xl, t, axis=-1))


def test_cross_entropy_every_reduction(data):
    x, t, w = data
    xd = da.from_array(x, chunks=(1000, 120))
    td = da.from_array(t, chunks=1000)
    for reduction in ("mean", "sum"):
        lazy = fdask.cross_entropy(xd, td, w, reduction=reduction, label_smoothing=0.1)
        assert isinstance(lazy, da.Array) and lazy.shape == () and lazy.dtype == np.float32
        value = lazy.compute()
        expected = fastce.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.1)
        assert np.asarray(value).dtype == np.float32
        assert_allclose(value, expected, rtol=1e-6)
    none = fdask.cross_entropy(xd, td, w, reduction="none", label_smoothing=0.1)
    assert none.shape == t.shape and none.chunks == ((1000,) * 6,)
    assert_array_equal(
        none.compute(), fastce.cross_entropy(x, t, w, reduction="none", label_smoothing=0.1)
    )
    # float64 logits: the mean from the accumulators, to float64 rounding
    x64 = x.astype(np.float64)
    value = fdask.cross_entropy(da.from_array(x64, chunks=(900, 120)), td).compute()
    assert_allclose(value, fastce.cross_entropy(x64, t), rtol=1e-13)


def test_bfloat16_logits_give_the_in_memory_results(data):
    # each block reads its bfloat16 logits as fastce.evaluate and
    # fastce.cross_entropy read them in memory: in float32 blocks
    bf = pytest.importorskip("ml_dtypes").bfloat16
    x, t, w = data
    xb = x.astype(bf)
    xd = da.from_array(xb, chunks=(777, 120))
    td = da.from_array(t, chunks=1000)
    same_result(fdask.evaluate(xd, td, w, **OPTIONS), fastce.evaluate(xb, t, w, **OPTIONS))
    lazy = fdask.cross_entropy(xd, td, w, reduction="mean", label_smoothing=0.1)
    assert lazy.dtype == np.float32
    assert_allclose(lazy.compute(), fastce.cross_entropy(xb, t, w, label_smoothing=0.1), rtol=1e-6)
    assert_array_equal(
        fdask.cross_entropy(xd, td, w, reduction="none").compute(),
        fastce.cross_entropy(xb, t, w, reduction="none"),
    )


def test_class_axis_split_across_chunks_is_rechunked_where_rows_are_needed(data):
    x, t, w = data
    xd = da.from_array(x, chunks=(1000, 50))
    # a soft-cap (as temperatures, equal-mass bins, segments, a reference) needs whole rows
    with pytest.warns(PerformanceWarning, match="class axis"):
        got = fdask.evaluate(xd, da.from_array(t, chunks=1000), softcap=5.0, **OPTIONS)
    same_result(got, fastce.evaluate(x, t, softcap=5.0, **OPTIONS))
    with pytest.warns(PerformanceWarning, match="class axis"):
        loss = fdask.cross_entropy(xd, da.from_array(t, chunks=1000)).compute()
    assert_allclose(loss, fastce.cross_entropy(x, t), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fdask.evaluate(da.from_array(x, chunks=(1000, -1)), t)  # no warning when whole


def close_result(a, b, rtol):
    """Two EvalResults agree: counts exactly, totals to ``rtol``."""
    assert a.count == b.count and a.accuracy == b.accuracy
    assert_array_equal(a.bin_count, b.bin_count)
    for name in ("loss", "confidence", "entropy", "brier", "ece", "weight_sum", "loss_se"):
        assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, err_msg=name)


SHARD_OPTIONS = [
    {},
    {"label_smoothing": 0.1, "topk": (1, 5, 200), "bins": 12},
    {"weighted": True, "label_smoothing": 0.2, "z_loss": 1e-3, "topk": (1, 2)},
]


@pytest.mark.parametrize("options", SHARD_OPTIONS, ids=["plain", "smoothing", "weighted"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_a_vocabulary_in_shards_gives_the_unsharded_result(data, options, dtype):
    x, t, w = data
    x = x.astype(dtype)
    kwargs = dict(options)
    if kwargs.pop("weighted", False):
        w = w.copy()
        w[7] = 0.0
        kwargs["weight"] = w
    x = x.copy()
    x[3, [10, 70]] = x[3].max() + 1  # the largest logit twice, in two shards
    t[3] = 70
    x[4, :60] = -np.inf  # a shard with nothing above -inf
    x[5, [20, 90]] = x[5, 20]  # the target's logit tied in another shard
    t[5] = 90
    if "weight" in kwargs:
        x[6, 7] = -np.inf  # a -inf logit at a target of zero weight adds nothing
        t[6] = 7
    want = fastce.evaluate(x, t, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shards are not rechunked
        got = fdask.evaluate(
            da.from_array(x, chunks=(1700, (60, 35, 25))), da.from_array(t, chunks=2000), **kwargs
        )
    close_result(got, want, 1e-12 if dtype == np.float64 else 1e-7)
    assert_allclose(got.z_loss, want.z_loss, rtol=1e-7)


@pytest.mark.parametrize("slice_bytes", [1 << 24, 8 * 60 * 7])
def test_shards_of_special_rows_and_three_dimensional_logits(monkeypatch, slice_bytes):
    # small slices: each shard's rows are taken a few at a time
    monkeypatch.setattr(fdask, "_SHARD_SLICE_BYTES", slice_bytes)
    rng = np.random.default_rng(52)
    x = rng.standard_normal((4, 30, 60))
    t = rng.integers(0, 60, (4, 30))
    x[0, 1, 5] = np.nan
    x[0, 2, :] = -np.inf
    x[0, 3, 7] = np.inf
    for axis, chunks in ((-1, (2, 15, (20, 40))), (1, (2, (10, 50), 15))):
        xa = x if axis == -1 else np.ascontiguousarray(np.moveaxis(x, 2, 1))
        want = fastce.evaluate(xa, t, axis=axis, topk=(1, 3))
        got = fdask.evaluate(da.from_array(xa, chunks=chunks), t, axis=axis, topk=(1, 3))
        assert got.count == want.count and got.accuracy == want.accuracy
        assert np.isnan(got.loss) and np.isnan(want.loss)
        clean = t.copy()
        clean[0, 1:4] = -100  # without the special rows: the same numbers
        close_result(
            fdask.evaluate(da.from_array(xa, chunks=chunks), clean, axis=axis, topk=(1, 3)),
            fastce.evaluate(xa, clean, axis=axis, topk=(1, 3)),
            1e-12,
        )


def test_accumulate_gives_a_mergeable_accumulator(data):
    x, t, w = data
    lazy = fdask.accumulate(da.from_array(x[:4000], chunks=(1000, 120)), t[:4000], w, **OPTIONS)
    acc = lazy.compute()
    assert isinstance(acc, fastce.Accumulator)
    acc = pickle.loads(pickle.dumps(acc))
    acc.update(x[4000:], t[4000:])  # the rest, in memory
    same_result(acc.result(), fastce.evaluate(x, t, w, **OPTIONS))
    delayed = fdask.evaluate(da.from_array(x, chunks=(3000, 120)), t, w, compute=False, **OPTIONS)
    same_result(delayed.compute(), fastce.evaluate(x, t, w, **OPTIONS))


def test_errors_come_when_the_graph_is_built(data):
    x, t, _ = data
    xd = da.from_array(x, chunks=(1000, 120))
    cases = [
        (xd.astype(np.int64), t, {}),
        (xd, da.from_array(t[:, None]), {}),
        (xd, t.astype(bool), {}),
        (xd, t.astype(np.float32), {}),
        (xd, t, {"axis": 2}),
        (xd, t, {"label_smoothing": -0.1}),
        (xd, t, {"weight": np.ones(3)}),
    ]
    for logits, target, kwargs in cases:
        kwargs = dict(kwargs)
        weight = kwargs.pop("weight", None)
        with pytest.raises(Exception) as expected:
            fastce.cross_entropy(np.asarray(logits), np.asarray(target), weight, **kwargs)
        with pytest.raises(expected.type) as got:
            fdask.evaluate(logits, target, weight, compute=False, **kwargs)
        assert str(got.value) == str(expected.value)
        with pytest.raises(expected.type) as got:
            fdask.cross_entropy(logits, target, weight, **kwargs)
        assert str(got.value) == str(expected.value)
    with pytest.raises(ValueError, match="topk"):
        fdask.evaluate(xd, t, topk=0, compute=False)
    with pytest.raises(ValueError, match="bins"):
        fdask.evaluate(xd, t, bins=0, compute=False)
    with pytest.raises(ValueError, match="reduction"):
        fdask.cross_entropy(xd, t, reduction="avg")
    with pytest.raises(TypeError, match="class indices"):
        fdask.evaluate(xd, da.from_array(np.full(x.shape, 1 / 120)), compute=False)
    unknown = xd[xd[:, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fdask.evaluate(unknown, t[:10], compute=False)
    # a class index out of range is found when the block is computed
    bad = t.copy()
    bad[4321] = 120
    with pytest.raises(IndexError, match="label value of 120"):
        fdask.evaluate(xd, bad)


def test_chunked_logits_from_npy_and_zarr_on_disk(tmp_path, data):
    x, t, _ = data
    np.save(tmp_path / "logits.npy", x)
    xd = fdask.from_npy(tmp_path / "logits.npy", rows_per_chunk=1024)
    assert xd.chunks[0][:2] == (1024, 1024) and xd.shape == x.shape
    same_result(fdask.evaluate(xd, t, **OPTIONS), fastce.evaluate(x, t, **OPTIONS))
    with pytest.raises(ValueError, match="rows_per_chunk"):
        fdask.from_npy(tmp_path / "logits.npy", rows_per_chunk=0)
    zarr = pytest.importorskip("zarr")
    store = str(tmp_path / "logits.zarr")
    z = zarr.open(store, mode="w", shape=x.shape, chunks=(1500, 120), dtype=x.dtype)
    z[:] = x
    got = fdask.evaluate(da.from_zarr(store), da.from_array(t, chunks=1500), **OPTIONS)
    same_result(got, fastce.evaluate(x, t, **OPTIONS))


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_a_local_cluster_of_worker_processes_gives_the_in_memory_result(
    cluster_client, tmp_path, data
):
    distributed = pytest.importorskip("distributed")
    x, t, w = data
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "target.npy", t)
    xd = fdask.from_npy(tmp_path / "logits.npy", rows_per_chunk=700)
    td = fdask.from_npy(tmp_path / "target.npy", rows_per_chunk=2000)
    with distributed.get_task_stream(cluster_client) as stream:
        got = fdask.evaluate(xd, td, w, num_threads=1, **OPTIONS)  # on the cluster
    same_result(got, fastce.evaluate(x, t, w, **OPTIONS))
    loss = fdask.cross_entropy(xd, td, w, label_smoothing=0.1, num_threads=1).compute()
    assert_allclose(loss, fastce.cross_entropy(x, t, w, label_smoothing=0.1), rtol=1e-6)
    # the blocks ran in the worker processes (how the scheduler spreads them over
    # the two is its own affair: on a busy machine one worker may take them all)
    workers = {task["worker"] for task in stream.data if str(task["key"]).startswith("_block")}
    assert workers and workers <= set(cluster_client.scheduler_info()["workers"]), workers


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(fdask, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def _slowly(block):
    """The block, after a pause: keeps a computation running long enough to
    lose a worker in the middle of it."""
    import time

    time.sleep(0.05)
    return block


def test_a_sharded_evaluation_survives_a_killed_worker(cluster_client, data):
    """Logits split along the vocabulary, on worker processes; one worker is
    killed part way through, its tasks rerun elsewhere, and the result is
    the same as the run that lost nothing, to the bit."""
    import os
    import signal
    import time

    import cloudpickle

    pytest.importorskip("distributed")
    cloudpickle.register_pickle_by_value(__import__(__name__))
    x, t, w = data
    xd = da.from_array(x, chunks=(300, (50, 40, 30))).map_blocks(_slowly)
    td = da.from_array(t, chunks=300)
    kwargs = dict(OPTIONS, weight=w, num_threads=1)
    undisturbed = fdask.evaluate(xd, td, **kwargs, compute=False).compute(scheduler="sync")
    future = cluster_client.compute(fdask.evaluate(xd, td, **kwargs, compute=False))
    pids = cluster_client.run(os.getpid)
    # wait until the work has started on both workers, then kill one
    deadline = time.time() + 30
    while time.time() < deadline:
        processing = cluster_client.processing()
        if sum(len(v) for v in processing.values()) and not future.done():
            break
        time.sleep(0.02)
    assert not future.done()  # killed in the middle of the work
    victim = sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)
    got = future.result(timeout=120)
    assert not future.cancelled()
    same_result(got, undisturbed)
    assert got.loss_se == undisturbed.loss_se and got.brier == undisturbed.brier
    close_result(got, fastce.evaluate(x, t, w, **OPTIONS), 1e-7)
    # the cluster lost a worker process on the way
    assert pids[victim] not in cluster_client.run(os.getpid).values()
