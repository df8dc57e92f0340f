"""pytest-benchmark suite: every workload of ``python -m fastce.bench`` and
every public function, fastce beside the libraries that are installed.

Run with ``python -m pytest benchmarks --benchmark-group-by=param:workload``
(needs ``pip install ".[bench]"``).
"""

import numpy as np
import pytest

import fastce
from fastce import bench

pytest.importorskip("pytest_benchmark")

LIBRARIES = ["fastce", *bench.RIVALS]


def contender(library, w, x, t):
    if library == "fastce":
        return bench.fastce_contender(w, x, t)
    pytest.importorskip(library)
    return bench.RIVALS[library](w, x, t, fastce.get_num_threads())


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("workload", sorted(bench.WORKLOADS))
def test_forward(benchmark, workload, library):
    w = bench.WORKLOADS[workload]
    x, t = bench.make_inputs(w)
    benchmark.group = f"{workload} forward"
    benchmark(contender(library, w, x, t).forward)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("workload", sorted(bench.WORKLOADS))
def test_forward_backward(benchmark, workload, library):
    w = bench.WORKLOADS[workload]
    x, t = bench.make_inputs(w)
    benchmark.group = f"{workload} forward+backward"
    c = contender(library, w, x, t)
    if c.forward_backward is None:
        pytest.skip(f"{library} has no forward+backward")
    benchmark(c.forward_backward)


@pytest.mark.parametrize("workload", ["W1", "W3"])
def test_exp_sum_roof(benchmark, workload):
    from fastce import _kernels

    x, _ = bench.make_inputs(bench.WORKLOADS[workload])
    benchmark.group = f"{workload} forward"
    benchmark(_kernels.exp_sum_roof, x)


def _public_calls():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 1000), dtype=np.float32)
    t = rng.integers(0, 1000, 4096)
    logp = fastce.log_softmax(x)
    y = (rng.random((4096, 1000)) < 0.01).astype(np.float32)
    probs = fastce.softmax(x)
    out = np.empty_like(x)
    criterion = fastce.CrossEntropyLoss(label_smoothing=0.1)
    return {
        "cross_entropy": lambda: fastce.cross_entropy(x, t),
        "cross_entropy_none": lambda: fastce.cross_entropy(x, t, reduction="none"),
        "cross_entropy_smoothing_weight": lambda: fastce.cross_entropy(
            x, t, np.linspace(0.5, 1.5, 1000), label_smoothing=0.1
        ),
        "cross_entropy_probabilities": lambda: fastce.cross_entropy(x, probs),
        "cross_entropy_grad": lambda: fastce.cross_entropy_grad(x, t, out=out),
        "cross_entropy_with_grad": lambda: fastce.cross_entropy_with_grad(x, t, out=out),
        "nll_loss": lambda: fastce.nll_loss(logp, t),
        "log_softmax": lambda: fastce.log_softmax(x, out=out),
        "softmax": lambda: fastce.softmax(x, out=out),
        "logsumexp": lambda: fastce.logsumexp(x),
        "binary_cross_entropy_with_logits": lambda: fastce.binary_cross_entropy_with_logits(x, y),
        "binary_cross_entropy": lambda: fastce.binary_cross_entropy(probs, y),
        "CrossEntropyLoss": lambda: criterion(x, t),
    }


@pytest.mark.parametrize("name", sorted(_public_calls()))
def test_public_function(benchmark, name):
    benchmark.group = "public functions, (4096, 1000) float32"
    benchmark(_public_calls()[name])


@pytest.mark.parametrize("spread", [3, 30])
@pytest.mark.parametrize(
    "name", ["cross_entropy_grad", "evaluate", "binary_cross_entropy_with_logits_grad"]
)
def test_logits_spread_like_a_language_models(benchmark, name, spread):
    # probabilities far below a row's maximum are subnormal once scaled; a
    # spread of 30 should take the time of a spread of 3 (see denormals.h)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 1000), dtype=np.float32) * spread
    t = rng.integers(0, 1000, 4096)
    y = (x > 0).astype(np.float32)
    out = np.empty_like(x)
    calls = {
        "cross_entropy_grad": lambda: fastce.cross_entropy_grad(x, t, out=out),
        "evaluate": lambda: fastce.evaluate(x, t),
        "binary_cross_entropy_with_logits_grad": lambda: (
            fastce.binary_cross_entropy_with_logits_grad(x, y)
        ),
    }
    benchmark.group = f"{name}, (4096, 1000) float32, by logit spread"
    benchmark(calls[name])
