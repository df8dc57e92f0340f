"""fastce.evaluate against the way evaluation is done today: the loss, then the
argmax and top-k, then the probabilities for confidence and entropy, then a
calibration histogram, one pass over the logits (or a temporary of their size)
per metric.

    pip install ".[bench]"
    python -m pytest benchmarks/test_bench_evaluate.py --benchmark-group-by=param:workload
    python benchmarks/test_bench_evaluate.py          # side by side, with the ratios

Every way computes the same numbers (checked below): mean loss, perplexity,
top-1 and top-5 accuracy, mean confidence, mean entropy and a 15-bin ECE.
"""

import time

import numpy as np
import pytest

import fastce

WORKLOADS = {
    "4096x1000": (4096, 1000),  # ImageNet-sized classification
    "2048x50257": (2048, 50257),  # a language model's vocabulary
}
TOPK = 5
BINS = 15


def make(workload, dtype=np.float32):
    n, c = WORKLOADS[workload]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, c), dtype=np.float32) * 2).astype(dtype)
    t = rng.integers(0, c, n)
    x[np.arange(n)[::3], t[::3]] += 6  # a model that is right a third of the time
    return x, t


def ece_from(conf, correct, bins=BINS):
    b = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(b, minlength=bins)
    gap = np.bincount(b, weights=correct, minlength=bins) - np.bincount(
        b, weights=conf, minlength=bins
    )
    return float(np.abs(gap).sum() / count.sum())


def multipass_numpy(x, t):
    from scipy.special import logsumexp

    lse = logsumexp(x, axis=1)  # pass 1 (and a temporary)
    rows = np.arange(len(t))
    loss = float(np.mean(lse - x[rows, t]))
    pred = x.argmax(axis=1)  # pass 2
    top = np.argpartition(-x, TOPK, axis=1)[:, :TOPK]  # pass 3 (and a copy)
    logp = x - lse[:, None]  # pass 4 (N x C)
    p = np.exp(logp)  # pass 5 (N x C)
    conf = p.max(axis=1).astype(np.float64)  # pass 6
    entropy = float(np.mean(-(p * logp).sum(axis=1)))  # passes 7-8
    correct = (pred == t).astype(np.float64)
    return dict(
        loss=loss,
        perplexity=float(np.exp(loss)),
        top1=correct.mean(),
        top5=float((top == t[:, None]).any(axis=1).mean()),
        confidence=conf.mean(),
        entropy=entropy,
        ece=ece_from(conf, correct),
    )


def multipass_torch(x, t):
    import torch
    import torch.nn.functional as F

    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    loss = F.cross_entropy(xt, tt)  # pass 1
    logp = F.log_softmax(xt, dim=1)  # pass 2 (N x C)
    p = logp.exp()  # pass 3 (N x C)
    conf, pred = p.max(dim=1)  # pass 4
    top = xt.topk(TOPK, dim=1).indices  # pass 5
    entropy = -(p * logp).sum(dim=1)  # passes 6-7
    correct = (pred == tt).double().numpy()
    conf = conf.double().numpy()
    return dict(
        loss=float(loss),
        perplexity=float(torch.exp(loss)),
        top1=correct.mean(),
        top5=float((top == tt[:, None]).any(dim=1).double().mean()),
        confidence=conf.mean(),
        entropy=float(entropy.mean()),
        ece=ece_from(conf, correct),
    )


def one_pass_fastce(x, t):
    r = fastce.evaluate(x, t, topk=(1, TOPK), bins=BINS)
    return dict(
        loss=r.loss,
        perplexity=r.perplexity,
        top1=r.accuracy[1],
        top5=r.accuracy[TOPK],
        confidence=r.confidence,
        entropy=r.entropy,
        ece=r.ece,
    )


WAYS = {
    "fastce.evaluate": one_pass_fastce,
    "torch, one pass per metric": multipass_torch,
    "numpy, one pass per metric": multipass_numpy,
}


def _available(way):
    if "torch" in way:
        pytest.importorskip("torch")
    if "numpy" in way:
        pytest.importorskip("scipy")


@pytest.fixture(scope="module", autouse=True)
def same_threads_for_torch():
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(fastce.get_num_threads())
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_every_way_computes_the_same_numbers(workload):
    x, t = make(workload)
    ours = one_pass_fastce(x, t)
    for way, fn in WAYS.items():
        if way == "fastce.evaluate":
            continue
        _available(way)
        theirs = fn(x, t)
        for key, value in ours.items():
            assert value == pytest.approx(theirs[key], rel=2e-5, abs=2e-5), (way, key)


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("way", list(WAYS))
def test_bench_evaluate(benchmark, workload, way):
    _available(way)
    x, t = make(workload)
    benchmark.group = f"evaluate {workload} float32"
    benchmark.extra_info.update(workload=workload, way=way, threads=fastce.get_num_threads())
    # an idle pause before each round (not timed): the OpenMP threads of the
    # previous test's library stop spinning and leave the cores to this one
    benchmark.pedantic(
        WAYS[way], args=(x, t), setup=lambda: time.sleep(0.3), rounds=5, warmup_rounds=1
    )


def side_by_side(repeats=9):
    """Each way timed ``repeats`` times in a row after a warm-up, one way after
    the other (interleaving them would charge each way for the previous one's
    OpenMP threads, which spin for a while after their work); prints the
    medians and how many times fastce.evaluate's time each way takes."""
    try:
        import torch

        torch.set_num_threads(fastce.get_num_threads())
    except ImportError:
        pass
    print(
        f"fastce {fastce.__version__}, {fastce.get_num_threads()} threads, "
        f"median of {repeats}; ratio = time / fastce.evaluate's time"
    )
    for workload in WORKLOADS:
        x, t = make(workload)
        ways = dict(WAYS)
        ways["fastce.cross_entropy (loss only)"] = lambda a, b: fastce.cross_entropy(a, b)
        medians = {}
        for way, fn in ways.items():
            try:
                fn(x, t)
                fn(x, t)
            except ImportError:
                continue
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(x, t)
                times.append(time.perf_counter() - start)
            medians[way] = float(np.median(times))
            time.sleep(0.5)
        base = medians["fastce.evaluate"]
        print(f"\n{workload} float32 ({x.nbytes / 2**20:.0f} MiB)")
        for way, med in medians.items():
            print(f"  {way:34s} {med * 1e3:9.2f} ms   x{med / base:5.2f}")


if __name__ == "__main__":
    side_by_side()
