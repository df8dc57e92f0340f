"""An Accumulator's totals: an update applies completely or not at all,
options are checked when it is made, and updates and merges from several
threads lose nothing."""

import copy
import pickle
import sys
import threading

import numpy as np
import pytest

import fastce
from fastce import _eval_plan

rng = np.random.default_rng(5)
LOGITS = rng.standard_normal((600, 12))
TARGET = rng.integers(0, 12, 600)


def totals(acc):
    return (
        acc.count,
        acc.loss_sum,
        acc.weight_sum,
        acc.n_classes,
        acc.result().accuracy,
        acc.result().bin_count.tolist(),
    )


def test_any_top_k_is_counted_whatever_its_size():
    acc = fastce.Accumulator(topk=(1, 12, 2**63, 10**30))
    acc.update(LOGITS, TARGET)
    r = acc.result()
    want = fastce.evaluate(LOGITS, TARGET, topk=(1, 12))
    assert r.accuracy[1] == want.accuracy[1]
    assert r.accuracy[12] == r.accuracy[2**63] == r.accuracy[10**30] == 1.0


@pytest.mark.parametrize("failure", [KeyboardInterrupt, MemoryError])
def test_an_update_that_fails_part_way_changes_nothing(monkeypatch, failure):
    x = rng.standard_normal((6000, 12))
    t = rng.integers(0, 12, 6000)
    acc = fastce.Accumulator(topk=(1, 3))
    acc.update(x[:100], t[:100])
    before = totals(acc)
    # blocks of a few rows, and a kernel that fails on the third block
    monkeypatch.setattr(_eval_plan, "_BLOCK_BYTES", 12 * 8 * 64)
    calls = []
    original = _eval_plan._metrics.evaluate_index

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise failure()
        return original(*args)

    monkeypatch.setattr(_eval_plan._metrics, "evaluate_index", failing)
    with pytest.raises(failure):
        acc.update(x[100:], t[100:])
    assert len(calls) == 3
    assert totals(acc) == before
    monkeypatch.setattr(_eval_plan._metrics, "evaluate_index", original)
    acc.update(x[100:], t[100:])
    whole = fastce.Accumulator(topk=(1, 3))
    whole.update(x, t)
    assert acc.count == whole.count
    assert acc.loss == pytest.approx(whole.loss, rel=1e-14)


def test_a_batch_with_the_wrong_class_count_changes_nothing():
    acc = fastce.Accumulator()
    acc.update(LOGITS, TARGET)
    before = totals(acc)
    with pytest.raises(ValueError, match="12"):
        acc.update(LOGITS[:, :5], TARGET % 5)
    assert totals(acc) == before


def test_an_empty_batch_does_not_fix_the_class_count():
    acc = fastce.Accumulator()
    acc.update(np.zeros((0, 0)), np.zeros(0, np.int64))
    acc.update(np.zeros((0, 7)), np.zeros(0, np.int64))
    assert acc.n_classes is None and acc.count == 0
    acc.update(LOGITS, TARGET)
    assert acc.n_classes == 12 and acc.count == 600


def test_merging_an_accumulator_into_itself_is_refused():
    acc = fastce.Accumulator()
    acc.update(LOGITS, TARGET)
    before = totals(acc)
    with pytest.raises(ValueError, match="itself"):
        acc.merge(acc)
    assert totals(acc) == before
    acc.merge(copy.deepcopy(acc))
    assert acc.count == 1200


def test_accumulators_still_pickle_and_copy():
    acc = fastce.Accumulator(topk=(1, 2))
    acc.update(LOGITS, TARGET)
    for clone in (pickle.loads(pickle.dumps(acc)), copy.deepcopy(acc)):
        assert totals(clone) == totals(acc)
        clone.update(LOGITS, TARGET)
        assert clone.count == 1200 and acc.count == 600


@pytest.fixture
def eager_switching():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_concurrent_updates_and_merges_lose_nothing(eager_switching):
    batches = [(LOGITS[i : i + 30], TARGET[i : i + 30]) for i in range(0, 600, 30)]
    shared = fastce.Accumulator(topk=(1, 5), num_threads=1)
    merged = fastce.Accumulator(topk=(1, 5), num_threads=1)

    def work():
        own = fastce.Accumulator(topk=(1, 5), num_threads=1)
        for _ in range(5):
            for x, t in batches:
                shared.update(x, t)
                own.update(x, t)
        merged.merge(own)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    serial = fastce.Accumulator(topk=(1, 5))
    for _ in range(20):
        serial.update(LOGITS, TARGET)
    for acc in (shared, merged):
        r, want = acc.result(), serial.result()
        assert r.count == want.count == 12_000
        assert r.accuracy == want.accuracy
        assert r.bin_count.tolist() == want.bin_count.tolist()
        assert r.loss == pytest.approx(want.loss, rel=1e-13)
