"""Side-by-side timings of fastce against the libraries users already have.

``python -m fastce.bench`` prints a table: for each workload and each library
that is installed (fastce, PyTorch, JAX, ONNX Runtime, TensorFlow, NumPy), the
median time of a call with the interquartile range of its rounds, the
throughput in logits per second, and fastce's speed-up.  The calls of the
different libraries are interleaved, repeat by repeat, so that a noisy
machine slows them all alike; every rival's result is checked against
fastce's first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeAlias, TypedDict, TypeVar, cast

import numpy as np
import numpy.typing as npt

import fastce
from fastce import _kernels


@dataclass
class Workload:
    key: str
    title: str
    shape: tuple[int, ...]
    axis: int = 1
    dtype: type[np.floating[Any]] = np.float32
    ignore_fraction: float = 0.0

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


WORKLOADS = {
    w.key: w
    for w in [
        Workload("W1", "image classification", (4096, 1000)),
        Workload("W2", "few classes", (65536, 10)),
        Workload("W3", "LLM vocabulary", (512, 128000)),
        Workload("W4", "segmentation, class axis 1", (8, 21, 256, 256)),
        Workload(
            "W5",
            "language model, axis=-1, 10% ignored",
            (4, 512, 32000),
            axis=-1,
            ignore_fraction=0.1,
        ),
        Workload("W6", "image classification, float64", (4096, 1000), dtype=np.float64),
        Workload("W7a", "per-call overhead", (32, 10)),
        Workload("W7b", "per-call overhead, one sample", (1, 1000)),
    ]
}


def make_inputs(
    w: Workload, seed: int = 0
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    x: npt.NDArray[np.floating[Any]] = (
        rng.standard_normal(w.shape, dtype=np.float32).astype(w.dtype, copy=False) * 2
    )
    axis = w.axis % len(w.shape)
    t_shape = w.shape[:axis] + w.shape[axis + 1 :]
    t = rng.integers(0, w.shape[axis], t_shape, dtype=np.int64)
    if w.ignore_fraction:
        t[rng.random(t_shape) < w.ignore_fraction] = -100
    return x, t


class _Timing(TypedDict):
    workload: str
    title: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    library: str
    ms: float
    q1_ms: float
    q3_ms: float
    gelem: float
    speedup: float


class Row(_Timing, total=False):
    """One library's median on one workload and pass, as :func:`run` returns
    it, with the quartiles of the same rounds (``q1_ms``, ``q3_ms``); fastce's
    forward row on a 2-d C-ordered input also holds ``roof``, the exp-sum
    roof's time over fastce's."""

    roof: float


@dataclass
class Contender:
    name: str
    forward: Callable[[], object]
    forward_backward: Callable[[], object] | None = None
    notes: list[str] = field(default_factory=list)


def fastce_contender(
    w: Workload, x: npt.NDArray[np.floating[Any]], t: npt.NDArray[np.int64]
) -> Contender:
    grad = np.empty_like(x)
    return Contender(
        "fastce",
        lambda: fastce.cross_entropy(x, t, axis=w.axis),
        lambda: fastce.cross_entropy_with_grad(x, t, axis=w.axis, out=grad),
    )


def numpy_contender(
    w: Workload, x: npt.NDArray[np.floating[Any]], t: npt.NDArray[np.int64], threads: int
) -> Contender:
    axis = w.axis % x.ndim

    def forward() -> Any:  # a NumPy scalar, which NumPy's stubs type as Any
        m = x.max(axis=axis, keepdims=True)
        lse = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
        picked = np.take_along_axis(x, np.expand_dims(np.maximum(t, 0), axis), axis)
        valid = np.expand_dims(t != -100, axis)
        return ((lse - picked) * valid).sum() / valid.sum()

    def forward_backward() -> tuple[np.floating[Any], npt.NDArray[np.floating[Any]]]:
        m = x.max(axis=axis, keepdims=True)
        e = np.exp(x - m)
        s = e.sum(axis=axis, keepdims=True)
        lse = np.log(s) + m
        idx = np.expand_dims(np.maximum(t, 0), axis)
        valid = np.expand_dims(t != -100, axis)
        n = valid.sum()
        loss: np.floating[Any] = ((lse - np.take_along_axis(x, idx, axis)) * valid).sum() / n
        grad: npt.NDArray[np.floating[Any]] = e / s * (valid / n)
        np.put_along_axis(grad, idx, np.take_along_axis(grad, idx, axis) - valid / n, axis)
        return loss, grad

    return Contender("numpy", forward, forward_backward)


def torch_contender(
    w: Workload, x: npt.NDArray[np.floating[Any]], t: npt.NDArray[np.int64], threads: int
) -> Contender:
    torch: Any = importlib.import_module("torch")  # optional: typed Any whether installed or not
    F: Any = importlib.import_module("torch.nn.functional")
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    tt = torch.from_numpy(t)
    axis = w.axis % x.ndim
    moved = axis != 1 and x.ndim > 1
    if moved:
        # torch wants classes on axis 1: a view, as a user would write it
        xt = xt.movedim(axis, 1)

    def forward() -> Any:
        with torch.no_grad():
            return F.cross_entropy(xt, tt)

    leaf = xt.detach().clone().requires_grad_(True)

    def forward_backward() -> tuple[Any, Any]:
        leaf.grad = None
        loss = F.cross_entropy(leaf, tt)
        loss.backward()
        # the gradient in the logits' layout, as the other libraries give it (a view)
        return loss, leaf.grad.movedim(1, axis) if moved else leaf.grad

    return Contender(f"torch {torch.__version__.split('+')[0]}", forward, forward_backward)


def jax_contender(
    w: Workload, x: npt.NDArray[np.floating[Any]], t: npt.NDArray[np.int64], threads: int
) -> Contender:
    """JAX's jitted loss and value_and_grad; its threads are XLA's: all cores,
    or one where ``main`` sets XLA_FLAGS before the import (``--threads 1``)."""
    jax: Any = importlib.import_module("jax")  # optional: typed Any whether installed or not
    jnp: Any = importlib.import_module("jax.numpy")
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    axis = w.axis % x.ndim

    def loss_fn(logits: Any, target: Any) -> Any:
        logp = jax.nn.log_softmax(logits, axis=axis)
        valid = target != -100
        picked = jnp.take_along_axis(
            logp, jnp.expand_dims(jnp.where(valid, target, 0), axis), axis=axis
        )
        picked = jnp.squeeze(picked, axis)
        return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.sum(valid)

    forward_jit = jax.jit(loss_fn)
    both_jit = jax.jit(jax.value_and_grad(loss_fn))
    xj = jax.device_put(x)
    tj = jax.device_put(t if x.dtype == np.float64 else t.astype(np.int32))

    def forward() -> Any:
        return forward_jit(xj, tj).block_until_ready()

    def forward_backward() -> tuple[Any, Any]:
        loss, grad = both_jit(xj, tj)
        return loss.block_until_ready(), grad.block_until_ready()

    return Contender(f"jax {jax.__version__}", forward, forward_backward)


# the ONNX opset of the models onnxruntime_contender builds: the one of
# SoftmaxCrossEntropyLoss's newest definition, rather than the onnx package's
# newest opset, which an older onnxruntime may not run yet
ONNX_OPSET = 13


def onnxruntime_contender(
    w: Workload, x: npt.NDArray[np.floating[Any]], t: npt.NDArray[np.int64], threads: int
) -> Contender:
    """ONNX Runtime's SoftmaxCrossEntropyLoss (mean over the targets that are
    not -100), in a model built with onnx.helper and run by an
    InferenceSession on the CPU, as an inference pipeline runs it."""
    onnx: Any = importlib.import_module("onnx")  # optional: typed Any whether installed or not
    ort: Any = importlib.import_module("onnxruntime")
    helper, tensor = onnx.helper, onnx.TensorProto
    elem = tensor.DOUBLE if x.dtype == np.float64 else tensor.FLOAT
    axis = w.axis % x.ndim
    nodes, scores = [], "logits"
    if axis != 1 and x.ndim > 1:
        # the operator wants classes on axis 1: a transpose in the graph, which copies
        perm = [0, axis] + [d for d in range(1, x.ndim) if d != axis]
        nodes.append(helper.make_node("Transpose", ["logits"], ["scores"], perm=perm))
        scores = "scores"
    nodes.append(
        helper.make_node(
            "SoftmaxCrossEntropyLoss",
            [scores, "labels"],
            ["loss"],
            reduction="mean",
            ignore_index=-100,
        )
    )
    graph = helper.make_graph(
        nodes,
        "cross_entropy",
        [
            helper.make_tensor_value_info("logits", elem, list(x.shape)),
            helper.make_tensor_value_info("labels", tensor.INT64, list(t.shape)),
        ],
        [helper.make_tensor_value_info("loss", elem, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Workers that spin after a run take the cores from the call timed next
    # (fastce's W1 forward went from 1.5 to 4.8 ms beside them on 2 cores), and
    # onnxruntime itself ran faster without (W1: 11 against 5.9 ms)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {"logits": x, "labels": t}

    def forward() -> Any:
        return session.run(["loss"], feed)[0]

    return Contender(
        f"onnxruntime {ort.__version__}",
        forward,
        notes=["onnxruntime: forward only (an inference session computes no gradient)"],
    )


def tensorflow_contender(
    w: Workload, x: npt.NDArray[np.floating[Any]], t: npt.NDArray[np.int64], threads: int
) -> Contender:
    """TensorFlow's sparse_softmax_cross_entropy_with_logits, its mean over the
    targets that are not -100, and the gradient from a GradientTape, each a
    tf.function compiled by XLA (jit_compile=True): on the CPU the fastest of
    eager, graph and XLA execution for all but the smallest calls."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no INFO lines at import
    tf: Any = importlib.import_module("tensorflow")  # optional: typed Any whether installed or not
    notes = []
    try:
        # TensorFlow reads its thread counts once, when it first runs an operation
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            notes.append(
                "tensorflow: its threads were set earlier in this process, "
                f"to {tf.config.threading.get_intra_op_parallelism_threads()}, not {threads}"
            )
    axis = w.axis % x.ndim
    last = x.ndim - 1
    perm = [d for d in range(x.ndim) if d != axis] + [axis]

    def loss_fn(logits: Any, target: Any) -> Any:
        if axis != last:  # the function wants classes last: a transpose, as a user writes it
            logits = tf.transpose(logits, perm)
        valid = target != -100
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.where(valid, target, 0), logits=logits
        )
        weights = tf.cast(valid, logits.dtype)
        return tf.reduce_sum(losses * weights) / tf.reduce_sum(weights)

    def loss_and_grad(logits: Any, target: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = loss_fn(logits, target)
        return loss, tape.gradient(loss, logits)

    forward_xla = tf.function(loss_fn, jit_compile=True)
    both_xla = tf.function(loss_and_grad, jit_compile=True)
    xt, tt = tf.constant(x), tf.constant(t)
    return Contender(
        f"tensorflow {tf.__version__}",
        partial(forward_xla, xt, tt),
        partial(both_xla, xt, tt),
        notes,
    )


def roof_call(x: npt.NDArray[np.floating[Any]], threads: int) -> Callable[[], float] | None:
    """A pass that only sums exp(x) with the same vector code and threads:
    what the forward pass is measured against (2-d C-ordered inputs)."""
    if x.ndim != 2 or not x.flags.c_contiguous:
        return None
    return lambda: _kernels.exp_sum_roof(x, threads)


def interleaved_samples(
    calls: list[Callable[[], object]], repeats: int, min_time: float
) -> list[list[float]]:
    """Seconds per call of each call, one sample a round, the calls
    interleaved round by round."""
    for call in calls:  # warm up: compilation, caches, thread pools
        call()
        call()
    per_round = []
    for call in calls:
        start = time.perf_counter()
        call()
        per_round.append(time.perf_counter() - start)
    # small calls are batched so that each timing lasts about min_time
    batch = [max(1, int(min_time / max(p, 1e-9))) for p in per_round]
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            for _ in range(batch[i]):
                call()
            samples[i].append((time.perf_counter() - start) / batch[i])
    return samples


def median_times(calls: list[Callable[[], object]], repeats: int, min_time: float) -> list[float]:
    """Median seconds per call, the calls interleaved round by round."""
    return [statistics.median(s) for s in interleaved_samples(calls, repeats, min_time)]


# Restarts Linux's resident high-water mark at the current size: a memory
# script's measured call then adds status("VmHWM") - before.
_HIGH_WATER_RESET = """
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")   # restart the high-water mark at the current size
"""

MEMORY_SCRIPT = (
    """
import sys
import numpy as np
lib, shape = sys.argv[1], tuple(int(v) for v in sys.argv[2].split("x"))
rng = np.random.default_rng(0)
x = rng.standard_normal(shape, dtype=np.float32)
t = rng.integers(0, shape[1], shape[0])
if lib == "torch":
    import torch, torch.nn.functional as F
    xt = torch.from_numpy(x).requires_grad_(True)
    tt = torch.from_numpy(t)
    F.cross_entropy(xt[:2], tt[:2]).backward()   # load kernels before measuring
    xt.grad = None
    def call():
        F.cross_entropy(xt, tt).backward()
else:
    import fastce
    fastce.cross_entropy_with_grad(x[:2], t[:2])
    if lib == "fastce":
        def call():
            fastce.cross_entropy_with_grad(x, t)
    else:
        def call():
            fastce.cross_entropy_with_grad(x, t, out=x)
call()
"""
    + _HIGH_WATER_RESET
    + """
call()
print((status("VmHWM") - before) / 1024)
"""
)


def peak_memory_mb(library: str, shape: tuple[int, ...]) -> float | None:
    """Peak memory a forward+backward adds, in MB, measured in a fresh process
    from Linux's resident high-water mark (None where that cannot be read)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, library, "x".join(map(str, shape))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        return None
    return float(done.stdout.strip())


def memory_table(shape: tuple[int, ...] = (4096, 1000)) -> str:
    lines = [
        f"Peak memory added by one forward+backward on {'x'.join(map(str, shape))} "
        f"float32 (logits: {np.prod(shape) * 4 / 2**20:.1f} MB):"
    ]
    for library, label in [
        ("fastce", "fastce, gradient returned"),
        ("fastce-inplace", "fastce, out=logits"),
        ("torch", "torch autograd"),
    ]:
        mb = peak_memory_mb(library, shape)
        lines.append(f"  {label:28s} {'not installed' if mb is None else f'{mb:8.1f} MB'}")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(threads: int) -> list[str]:
    lines = [
        library_versions(),
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; "
        f"vector path: {_kernels.simd_isa()}; threads: {threads}",
    ]
    return lines


_Factory: TypeAlias = Callable[
    [Workload, npt.NDArray[np.floating[Any]], npt.NDArray[np.int64], int], Contender
]

# each rival beside fastce, by the name --libraries takes; a factory raises
# ImportError where its library is not installed
RIVALS: dict[str, _Factory] = {
    "torch": torch_contender,
    "jax": jax_contender,
    "onnxruntime": onnxruntime_contender,
    "tensorflow": tensorflow_contender,
    "numpy": numpy_contender,
}


def as_array(value: object) -> npt.NDArray[Any]:
    """A library's result as a NumPy array (a torch tensor detached first)."""
    detach = getattr(value, "detach", None)
    return np.asarray(detach() if detach is not None else value)


def disagreements(contenders: list[Contender], kind: str, dtype: np.dtype[Any]) -> list[str]:
    """The rivals whose loss (and gradient, forward+backward) differ from
    fastce's, the first contender's, by more than rounding allows."""
    # relative to the loss, and to the gradient's largest element
    tolerance = 1e-9 if dtype == np.float64 else 1e-4
    results = [
        [as_array(c.forward())]
        if kind == "forward"
        else [as_array(v) for v in cast(Callable[[], tuple[object, object]], c.forward_backward)()]
        for c in contenders
    ]
    expected = results[0]
    found = []
    for c, got in zip(contenders[1:], results[1:]):
        for what, a, b in zip(("loss", "gradient"), got, expected):
            scale = float(np.abs(b).max())
            # written so that a NaN disagrees
            if (
                a.shape != b.shape
                or not np.abs(a.astype(np.float64) - b).max() <= tolerance * scale
            ):
                found.append(f"{c.name.split()[0]}'s {what}")
    return found


def run(
    workloads: list[str],
    threads: int,
    repeats: int,
    passes: tuple[str, ...],
    libraries: tuple[str, ...],
    min_time: float = 0.02,
    out: Callable[[str], object] = print,
) -> list[Row]:
    """Times fastce and each of ``libraries`` that is installed on each
    workload and pass, interleaved; says through ``out`` which libraries
    were skipped, what they do not cover, and any result that disagrees
    with fastce's."""
    fastce.set_num_threads(threads)
    rows: list[Row] = []
    said: set[str] = set()

    def say(line: str) -> None:
        if line not in said:
            said.add(line)
            out(line)

    for key in workloads:
        w = WORKLOADS[key]
        x, t = make_inputs(w)
        contenders = [fastce_contender(w, x, t)]
        for name in libraries:
            try:
                contenders.append(RIVALS[name](w, x, t, threads))
            except ImportError:
                say(f"{name}: not installed, not timed")
        for c in contenders:
            for line in c.notes:
                say(line)
        roof = roof_call(x, threads)
        for kind in passes:
            timed = [c for c in contenders if kind == "forward" or c.forward_backward]
            wrong = disagreements(timed, kind, x.dtype)
            if wrong:
                say(f"WARNING: on {key} {kind}, {', '.join(wrong)} differ from fastce's")
            calls = [
                # the contenders of this pass, each with a forward_backward
                c.forward if kind == "forward" else cast(Callable[[], object], c.forward_backward)
                for c in timed
            ]
            if kind == "forward" and roof is not None:
                calls.append(roof)
            samples = interleaved_samples(calls, repeats, min_time)
            times = [statistics.median(s) for s in samples]
            for c, seconds, spread in zip(timed, times, samples):
                q1, q3 = np.percentile(spread, [25, 75])
                rows.append(
                    dict(
                        workload=key,
                        title=w.title,
                        shape=w.shape,
                        dtype=np.dtype(w.dtype).name,
                        kind=kind,
                        library=c.name,
                        ms=seconds * 1e3,
                        q1_ms=float(q1) * 1e3,
                        q3_ms=float(q3) * 1e3,
                        gelem=w.n_elements / seconds / 1e9,
                        speedup=seconds / times[0],
                    )
                )
            if kind == "forward" and roof is not None:
                rows[-len(timed)]["roof"] = times[-1] / times[0]
        del x, t, contenders
    fastce.set_num_threads(None)
    return rows


FAMILY_SHAPES: list[tuple[tuple[int, ...], type[np.floating[Any]]]] = [
    ((4096, 1000), np.float32),
    ((4096, 1000), np.float64),
    ((512, 128000), np.float32),
]


_T = TypeVar("_T")
# (function, variant, fastce call, torch call or None)
_FamilyCall: TypeAlias = tuple[str, str, Callable[[], object], Callable[[], object] | None]


def family_calls(
    shape: tuple[int, ...], dtype: Any, threads: int, rivals_too: bool = True
) -> list[_FamilyCall]:
    """(function, variant, fastce call, torch call or None) for every public
    function on logits of ``shape`` and ``dtype`` (float16 and bfloat16
    included, whose inputs all have that dtype and whose results are float32):
    what a user of each library writes for the same result (torch's autograd
    for a gradient; no torch call without ``rivals_too``)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape, dtype=np.float32) * 2).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    y = rng.random(shape).astype(dtype)
    wide = x.astype(np.float64)
    p = (1.0 / (1.0 + np.exp(-wide))).astype(dtype)
    logp = fastce.log_softmax(x).astype(dtype)
    result = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    buf = np.empty(shape, dtype=result)
    red = np.empty(shape[0], dtype=result)
    calls = [
        ("cross_entropy", "", lambda: fastce.cross_entropy(x, t)),
        ("cross_entropy_grad", "", lambda: fastce.cross_entropy_grad(x, t)),
        ("cross_entropy_grad", "out=", lambda: fastce.cross_entropy_grad(x, t, out=buf)),
        ("cross_entropy_with_grad", "", lambda: fastce.cross_entropy_with_grad(x, t)),
        ("log_softmax", "", lambda: fastce.log_softmax(x)),
        ("log_softmax", "out=", lambda: fastce.log_softmax(x, out=buf)),
        ("softmax", "", lambda: fastce.softmax(x)),
        ("softmax", "out=", lambda: fastce.softmax(x, out=buf)),
        ("logsumexp", "", lambda: fastce.logsumexp(x)),
        ("nll_loss", "", lambda: fastce.nll_loss(logp, t)),
        (
            "binary_cross_entropy_with_logits",
            "",
            lambda: fastce.binary_cross_entropy_with_logits(x, y),
        ),
        (
            "binary_cross_entropy_with_logits_grad",
            "",
            lambda: fastce.binary_cross_entropy_with_logits_grad(x, y),
        ),
        (
            "binary_cross_entropy_with_logits_with_grad",
            "",
            lambda: fastce.binary_cross_entropy_with_logits_with_grad(x, y),
        ),
        ("binary_cross_entropy", "", lambda: fastce.binary_cross_entropy(p, y)),
        ("binary_cross_entropy_grad", "", lambda: fastce.binary_cross_entropy_grad(p, y)),
        ("binary_cross_entropy_with_grad", "", lambda: fastce.binary_cross_entropy_with_grad(p, y)),
        ("evaluate", "", lambda: fastce.evaluate(x, t, topk=(1, 5))),
    ]
    rivals: dict[tuple[str, str], Callable[[], object]] = {}
    torch: Any = None  # an optional rival, typed Any whether installed or not
    F: Any = None
    if rivals_too:
        try:
            torch = importlib.import_module("torch")
            F = importlib.import_module("torch.nn.functional")
        except ImportError:
            torch = None
    if torch is not None:
        torch.set_num_threads(threads)
        tx, tt, ty, tp = (torch.from_numpy(a) for a in (x, t, y, p))
        tlogp, tbuf, tred = torch.from_numpy(logp), torch.from_numpy(buf), torch.from_numpy(red)

        def grad_of(
            loss_fn: Callable[..., Any], leaf_data: Any, *args: Any
        ) -> Callable[[], tuple[Any, Any]]:
            leaf = leaf_data.detach().clone().requires_grad_(True)

            def call() -> tuple[Any, Any]:
                leaf.grad = None
                loss = loss_fn(leaf, *args)
                loss.backward()
                return loss, leaf.grad

            return call

        def no_grad(fn: Callable[[], _T]) -> Callable[[], _T]:
            def call() -> _T:
                with torch.no_grad():
                    return fn()

            return call

        ce_grad = grad_of(F.cross_entropy, tx, tt)
        bcel_grad = grad_of(F.binary_cross_entropy_with_logits, tx, ty)
        bce_grad = grad_of(F.binary_cross_entropy, tp, ty)

        def evaluate_torch() -> tuple[Any, Any, Any, Any]:
            with torch.no_grad():
                loss = F.cross_entropy(tx, tt, reduction="none")
                top = tx.topk(5, dim=1).indices
                hits = top == tt[:, None]
                confidence = torch.softmax(tx, dim=1).max(dim=1).values
                return (
                    loss.mean(),
                    hits[:, 0].float().mean(),
                    hits.any(1).float().mean(),
                    confidence.mean(),
                )

        rivals = {
            ("cross_entropy", ""): no_grad(lambda: F.cross_entropy(tx, tt)),
            ("cross_entropy_grad", ""): ce_grad,
            ("cross_entropy_grad", "out="): ce_grad,
            ("cross_entropy_with_grad", ""): ce_grad,
            ("log_softmax", ""): no_grad(lambda: torch.log_softmax(tx, 1)),
            ("log_softmax", "out="): no_grad(lambda: torch._log_softmax(tx, 1, False, out=tbuf)),
            ("softmax", ""): no_grad(lambda: torch.softmax(tx, 1)),
            ("softmax", "out="): no_grad(lambda: torch._softmax(tx, 1, False, out=tbuf)),
            ("logsumexp", ""): no_grad(lambda: torch.logsumexp(tx, 1, out=tred)),
            ("nll_loss", ""): no_grad(lambda: F.nll_loss(tlogp, tt)),
            ("binary_cross_entropy_with_logits", ""): no_grad(
                lambda: F.binary_cross_entropy_with_logits(tx, ty)
            ),
            ("binary_cross_entropy_with_logits_grad", ""): bcel_grad,
            ("binary_cross_entropy_with_logits_with_grad", ""): bcel_grad,
            ("binary_cross_entropy", ""): no_grad(lambda: F.binary_cross_entropy(tp, ty)),
            ("binary_cross_entropy_grad", ""): bce_grad,
            ("binary_cross_entropy_with_grad", ""): bce_grad,
            ("evaluate", ""): evaluate_torch,
        }
    return [(name, variant, call, rivals.get((name, variant))) for name, variant, call in calls]


def family_table(threads: int, repeats: int) -> tuple[list[str], list[list[str]]]:
    """Every public function against torch on FAMILY_SHAPES, each pair
    interleaved: the columns and rows of a table."""
    fastce.set_num_threads(threads)
    body = []
    for shape, dtype in FAMILY_SHAPES:
        for name, variant, call, rival in family_calls(shape, dtype, threads):
            calls = [call] + ([rival] if rival is not None else [])
            times = median_times(calls, repeats, 0.02)
            body.append(
                [
                    name,
                    variant,
                    "x".join(map(str, shape)),
                    np.dtype(dtype).name,
                    f"{times[0] * 1e3:.4g}",
                    f"{times[1] * 1e3:.4g}" if rival is not None else "",
                    f"{times[1] / times[0]:.2f}x" if rival is not None else "",
                ]
            )
    fastce.set_num_threads(None)
    return ["function", "variant", "shape", "dtype", "fastce ms", "torch ms", "vs torch"], body


# the shapes of the half-precision table, each beside float32
HALF_SHAPES: list[tuple[int, ...]] = [(4096, 1000), (512, 128000)]


def half_dtypes() -> list[tuple[str, Any]]:
    """float16, and bfloat16 when ml_dtypes is installed."""
    dtypes: list[tuple[str, Any]] = [("float16", np.float16)]
    try:
        dtypes.append(("bfloat16", importlib.import_module("ml_dtypes").bfloat16))
    except ImportError:
        pass
    return dtypes


def half_table(threads: int, repeats: int) -> tuple[list[str], list[list[str]]]:
    """Every public function on float16 and bfloat16 inputs beside the same
    call on float32 ones of the same shape, interleaved: the columns and
    rows of a table, the half calls' time over the float32 one's."""
    fastce.set_num_threads(threads)
    halves = half_dtypes()
    body = []
    for shape in HALF_SHAPES:
        per_dtype = [family_calls(shape, np.float32, threads, rivals_too=False)]
        per_dtype += [family_calls(shape, d, threads, rivals_too=False) for _, d in halves]
        for i, (name, variant, _, _) in enumerate(per_dtype[0]):
            times = median_times([calls[i][2] for calls in per_dtype], repeats, 0.02)
            row = [name, variant, "x".join(map(str, shape)), f"{times[0] * 1e3:.4g}"]
            for t in times[1:]:
                row += [f"{t * 1e3:.4g}", f"{t / times[0]:.2f}"]
            body.append(row)
        del per_dtype
    fastce.set_num_threads(None)
    columns = ["function", "variant", "shape", "float32 ms"]
    for label, _ in halves:
        columns += [f"{label} ms", f"{label} / float32"]
    return columns, body


# linear heads: (N, H, V) of hidden states, features and classes, float32
LINEAR_WORKLOADS = {"L1": (4096, 1024, 32000), "L2": (1024, 1024, 128256)}

LINEAR_SCRIPT = (
    """
import sys
import numpy as np
lib, kind = sys.argv[1], sys.argv[2]
n, h, v = (int(a) for a in sys.argv[3].split("x"))
rng = np.random.default_rng(0)
hidden = rng.standard_normal((n, h), dtype=np.float32) * 0.5
w = rng.standard_normal((v, h), dtype=np.float32) * 0.03
t = rng.integers(0, v, n)
if lib == "fastce":
    import fastce
    def call(rows):
        if kind == "forward":
            return [fastce.linear_cross_entropy(hidden[rows], w, t[rows])]
        return list(fastce.linear_cross_entropy_with_grad(hidden[rows], w, t[rows])[1:3])
else:
    import torch, torch.nn.functional as F
    opts = torch.nn.LinearCrossEntropyOptions() if lib == "torch-chunked" else None
    th, tw, tt = torch.from_numpy(hidden), torch.from_numpy(w), torch.from_numpy(t)
    def call(rows):
        a = th[rows].clone().requires_grad_(kind != "forward")
        b = tw.clone().requires_grad_(kind != "forward") if kind != "forward" else tw
        with torch.set_grad_enabled(kind != "forward"):
            if opts is None:
                loss = F.cross_entropy(a @ b.T, tt[rows])
            else:
                loss = F.linear_cross_entropy(a, b, tt[rows], options=opts)
        if kind == "forward":
            return [loss]
        loss.backward()
        return [a.grad, b.grad, b]   # b: the clone that holds the gradient
# load kernels, and start thread pools with their buffers (a call of a few rows
# would run on one thread), before measuring
call(slice(0, 256))
"""
    + _HIGH_WATER_RESET
    + """
kept = call(slice(None))
returned = sum(int(np.prod(a.shape)) * a.element_size() if hasattr(a, "element_size")
               else a.nbytes for a in kept)
print((status("VmHWM") - before) / 1024 - returned / 2**20)
"""
)


def linear_memory_mb(library: str, kind: str, shape: tuple[int, int, int]) -> float | None:
    """Peak memory one linear-head call adds beyond its inputs and what it
    returns (the gradients), in MiB, from Linux's resident high-water mark
    in a fresh process; None where that cannot be read."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", LINEAR_SCRIPT, library, kind, "x".join(map(str, shape))],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        return None
    return float(done.stdout.strip().splitlines()[-1])


def _numpy_head_loss(
    hidden: npt.NDArray[np.float32], w: npt.NDArray[np.float32], t: npt.NDArray[np.int64]
) -> object:
    return fastce.cross_entropy(hidden @ w.T, t)


def _torch_head_loss(options: Any, grad: bool, th: Any, tw: Any, tt: Any) -> object:
    """torch's loss of a linear head (chunked with ``options``, else on the
    whole logits), and with ``grad`` its backward pass."""
    torch: Any = importlib.import_module("torch")
    F: Any = importlib.import_module("torch.nn.functional")
    a = th.clone().requires_grad_(True) if grad else th
    b = tw.clone().requires_grad_(True) if grad else tw
    with torch.set_grad_enabled(grad):
        if options is None:
            loss = F.cross_entropy(a @ b.T, tt)
        else:
            loss = F.linear_cross_entropy(a, b, tt, options=options)
    if grad:
        loss.backward()
    return loss


# the library LINEAR_SCRIPT measures for each row of the linear-head table
_MEMORY_SCRIPT_LIBRARY = {
    "fastce": "fastce",
    "torch, chunked": "torch-chunked",
    "torch, whole logits": "torch",
}


def _with_threads(threads: int) -> Any:
    """Sets fastce's thread count, and torch's where it is installed; returns
    torch, or None."""
    fastce.set_num_threads(threads)
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def linear_table(threads: int, repeats: int) -> tuple[list[str], list[list[str]]]:
    """The linear-head workloads: fastce against matmul + torch's cross-entropy
    on the whole logits, torch's chunked linear_cross_entropy and NumPy's
    matmul + fastce.cross_entropy, interleaved; time and peak extra memory."""
    torch = _with_threads(threads)
    body = []
    for key, (n, h, v) in LINEAR_WORKLOADS.items():
        rng = np.random.default_rng(0)
        hidden = rng.standard_normal((n, h), dtype=np.float32) * 0.5
        w = rng.standard_normal((v, h), dtype=np.float32) * 0.03
        t = rng.integers(0, v, n)
        for kind in ("forward", "forward+backward"):
            calls: dict[str, Callable[[], object]] = {}
            if kind == "forward":
                calls["fastce"] = partial(fastce.linear_cross_entropy, hidden, w, t)
                calls["numpy matmul + fastce"] = partial(_numpy_head_loss, hidden, w, t)
            else:
                calls["fastce"] = partial(fastce.linear_cross_entropy_with_grad, hidden, w, t)
            if torch is not None:
                th, tw, tt = torch.from_numpy(hidden), torch.from_numpy(w), torch.from_numpy(t)
                grad = kind != "forward"
                chunked = torch.nn.LinearCrossEntropyOptions()
                calls["torch, chunked"] = partial(_torch_head_loss, chunked, grad, th, tw, tt)
                calls["torch, whole logits"] = partial(_torch_head_loss, None, grad, th, tw, tt)
            names = list(calls)
            times = median_times(list(calls.values()), repeats, 0.0)
            for name, seconds in zip(names, times):
                mb = (
                    linear_memory_mb(_MEMORY_SCRIPT_LIBRARY[name], kind, (n, h, v))
                    if name in _MEMORY_SCRIPT_LIBRARY
                    else None
                )
                body.append(
                    [
                        key,
                        f"{n}x{h}x{v}",
                        kind,
                        name,
                        f"{seconds:.3g}",
                        "" if mb is None else f"{mb:.0f}",
                        "" if name == "fastce" else f"{seconds / times[0]:.2f}x",
                    ]
                )
    fastce.set_num_threads(None)
    cols = ["workload", "N x H x V", "pass", "library", "s", "extra MiB", "fastce speed-up"]
    return cols, body


# the logit transforms timed by transform_table: a Gemma-2-like soft-cap, a
# temperature, a PaLM-like z-loss, and all three
TRANSFORMS: dict[str, dict[str, float]] = {
    "plain": {},
    "temperature": {"temperature": 0.7},
    "softcap": {"softcap": 30.0},
    "z_loss": {"z_loss": 1e-4},
    "all three": {"softcap": 30.0, "temperature": 0.7, "z_loss": 1e-4},
}


def _torch_transformed_loss(torch: Any, x: Any, t: Any, cap: float | None) -> object:
    """torch's cross-entropy of soft-capped logits, the transform as its own operations."""
    y = cap * torch.tanh(x / cap) if cap is not None else x
    return torch.nn.functional.cross_entropy(y, t)


def _scaled_logits(key: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Random float32 logits of workload ``key``'s shape, 3 times the unit
    scale, and random targets."""
    shape = WORKLOADS[key].shape
    rng = np.random.default_rng(0)
    return rng.standard_normal(shape, dtype=np.float32) * 3, rng.integers(0, shape[1], shape[0])


def transform_table(threads: int, repeats: int) -> tuple[list[str], list[list[str]]]:
    """The forward cross-entropy of W1 and W3 with each logit transform, beside
    the plain call, interleaved; torch's plain and soft-capped losses too."""
    torch = _with_threads(threads)
    body = []
    for key in ("W1", "W3"):
        workload = WORKLOADS[key]
        x, t = _scaled_logits(key)
        calls: dict[tuple[str, str], Callable[[], object]] = {
            ("fastce", name): partial(fastce.cross_entropy, x, t, **options)
            for name, options in TRANSFORMS.items()
        }
        if torch is not None:
            tx, tt = torch.from_numpy(x), torch.from_numpy(t)
            calls[("torch", "plain")] = partial(_torch_transformed_loss, torch, tx, tt, None)
            calls[("torch", "softcap")] = partial(_torch_transformed_loss, torch, tx, tt, 30.0)
        times = median_times(list(calls.values()), repeats, 0.02)
        plain = times[0]
        for (library, name), seconds in zip(calls, times):
            body.append(
                [
                    key,
                    "x".join(map(str, workload.shape)),
                    library,
                    name,
                    f"{seconds * 1e3:.3g}",
                    f"{seconds / plain:.2f}x",
                ]
            )
    fastce.set_num_threads(None)
    return ["workload", "shape", "library", "transform", "ms", "over fastce plain"], body


def _evaluation_calls(
    x: npt.NDArray[np.float32], t: npt.NDArray[np.int64]
) -> dict[str, Callable[[], object]]:
    """evaluate plain and with each of its optional outputs, and fit_temperature."""
    rng = np.random.default_rng(1)
    # documents of about 64 tokens, a reference model's logits near the model's
    documents = np.arange(t.size) // 64
    reference = x + rng.standard_normal(x.shape, dtype=np.float32) * 0.1
    return {
        "evaluate": partial(fastce.evaluate, x, t),
        "segments": partial(fastce.evaluate, x, t, segments=documents),
        "temperatures, one": partial(fastce.evaluate, x, t, temperatures=[0.8]),
        "equal_mass": partial(fastce.evaluate, x, t, equal_mass=True),
        "reference (paired)": partial(fastce.evaluate, x, t, reference=reference),
        "fit_temperature": partial(fastce.fit_temperature, x, t),
    }


def evaluation_table(threads: int, repeats: int) -> tuple[list[str], list[list[str]]]:
    """evaluate on W1 and W3 with each optional output beside the plain call,
    interleaved, and the passes fit_temperature takes."""
    fastce.set_num_threads(threads)
    body = []
    for key in ("W1", "W3"):
        workload = WORKLOADS[key]
        x, t = _scaled_logits(key)
        # right about half the time, so that a temperature can be fitted
        x[np.arange(0, t.size, 2), t[::2]] += 12.0
        calls = _evaluation_calls(x, t)
        times = median_times(list(calls.values()), repeats, 0.02)
        passes = fastce.fit_temperature(x, t).passes
        for name, seconds in zip(calls, times):
            body.append(
                [
                    key,
                    "x".join(map(str, workload.shape)),
                    name + (f" ({passes} passes)" if name == "fit_temperature" else ""),
                    f"{seconds * 1e3:.3g}",
                    f"{seconds / times[0]:.2f}x",
                ]
            )
    fastce.set_num_threads(None)
    return ["workload", "shape", "evaluate with", "ms", "over plain evaluate"], body


# the workloads of the SciPy and scikit-learn faces
FACE_WORKLOADS = ("W1", "W6", "W3")


def _face_calls(
    x: npt.NDArray[np.floating[Any]], t: npt.NDArray[np.int64]
) -> list[tuple[str, str, Callable[[], object], Callable[[], object] | None]]:
    """(function, rival, fastce call, rival call or None) for each function of
    fastce.scipy and fastce.sklearn: the same call on the original, where it
    is installed; a logits path against the original on the softmax of the
    logits, as it is computed without fastce."""
    import fastce.scipy
    import fastce.sklearn

    try:  # optional rivals, typed Any whether installed or not
        special: Any = importlib.import_module("scipy.special")
    except ImportError:
        special = None
    try:
        sk_metrics: Any = importlib.import_module("sklearn.metrics")
    except ImportError:
        sk_metrics = None
    labels = np.arange(x.shape[1])  # not every class is among the targets
    p = fastce.scipy.softmax(x, axis=1)
    calls: list[tuple[str, str, Callable[[], object], Callable[[], object] | None]] = []
    for name in ("logsumexp", "softmax", "log_softmax"):
        calls.append(
            (
                f"{name}(axis=1)",
                "scipy.special",
                partial(getattr(fastce.scipy, name), x, axis=1),
                partial(getattr(special, name), x, axis=1) if special is not None else None,
            )
        )
    # (name, scores, fastce's options, the rival's options: None for the
    # rival on the softmax of the logits)
    metric_calls: list[tuple[str, npt.NDArray[Any], dict[str, Any], dict[str, Any] | None]] = [
        ("log_loss", p, {}, {}),
        ("log_loss(from_logits=True)", x, {"from_logits": True}, None),
        ("top_k_accuracy_score(k=5)", x, {"k": 5}, {"k": 5}),
    ]
    for name, scores, options, rival_options in metric_calls:
        function = name.split("(")[0]
        rival: Callable[[], object] | None = None
        if sk_metrics is not None and special is not None:
            if rival_options is None:
                rival = _sklearn_on_softmax(sk_metrics, special, function, x, t, labels)
            else:
                rival = partial(
                    getattr(sk_metrics, function), t, scores, labels=labels, **rival_options
                )
        calls.append(
            (
                name,
                "sklearn.metrics",
                partial(getattr(fastce.sklearn, function), t, scores, labels=labels, **options),
                rival,
            )
        )
    return calls


def _sklearn_on_softmax(
    sk_metrics: Any,
    special: Any,
    function: str,
    x: npt.NDArray[np.floating[Any]],
    t: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
) -> Callable[[], object]:
    def call() -> object:
        return getattr(sk_metrics, function)(t, special.softmax(x, axis=1), labels=labels)

    return call


def faces_table(threads: int, repeats: int) -> tuple[list[str], list[list[str]]]:
    """fastce.scipy and fastce.sklearn against SciPy and scikit-learn on W1,
    W6 and W3, each pair interleaved."""
    fastce.set_num_threads(threads)
    body = []
    for key in FACE_WORKLOADS:
        workload = WORKLOADS[key]
        x, t = make_inputs(workload)
        for name, rival_name, call, rival in _face_calls(x, t):
            with warnings.catch_warnings():
                # SciPy's and scikit-learn's own warnings (k of no meaning on
                # small test shapes) are not what is timed
                warnings.simplefilter("ignore")
                times = median_times([call] + ([rival] if rival else []), repeats, 0.02)
            body.append(
                [
                    key,
                    "x".join(map(str, workload.shape)),
                    np.dtype(workload.dtype).name,
                    name,
                    rival_name,
                    f"{times[0] * 1e3:.4g}",
                    f"{times[1] * 1e3:.4g}" if rival else "",
                    f"{times[1] / times[0]:.1f}x" if rival else "",
                ]
            )
    fastce.set_num_threads(None)
    cols = ["workload", "shape", "dtype", "function", "rival", "fastce ms", "rival ms", "speed-up"]
    return cols, body


BUSY_SCRIPT = "while True: pass"


def busy_table(repeats: int) -> tuple[list[str], list[list[str]]]:
    """fastce with 1 and 2 threads while another process spins on a core (a
    second thread that the OS deschedules must not stall the call): the
    columns and rows of a table."""
    import subprocess

    spinner = subprocess.Popen([sys.executable, "-c", BUSY_SCRIPT])
    body = []
    try:
        time.sleep(0.5)
        for shape, dtype in FAMILY_SHAPES:
            rng = np.random.default_rng(0)
            x = (rng.standard_normal(shape, dtype=np.float32) * 2).astype(dtype)
            t = rng.integers(0, shape[1], shape[0])
            one, two = median_times(
                [
                    # cast: mypy cannot type a lambda with defaults in a Callable[[], ...]
                    # context (python/mypy#15459)
                    cast(
                        Callable[[], object],
                        lambda x=x, t=t: fastce.cross_entropy(x, t, num_threads=1),
                    ),
                    cast(
                        Callable[[], object],
                        lambda x=x, t=t: fastce.cross_entropy(x, t, num_threads=2),
                    ),
                ],
                repeats,
                0.02,
            )
            body.append(
                [
                    "cross_entropy",
                    "x".join(map(str, shape)),
                    np.dtype(dtype).name,
                    f"{one * 1e3:.4g}",
                    f"{two * 1e3:.4g}",
                    f"{two / one:.2f}",
                ]
            )
    finally:
        spinner.kill()
        spinner.wait()
    return ["function", "shape", "dtype", "1 thread ms", "2 threads ms", "2 threads / 1"], body


def render(cols: list[str], body: list[list[str]], markdown: bool) -> str:
    """A table as Markdown, or as right-aligned columns of text."""
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:>{wd}}}" for wd in widths)
    return "\n".join([fmt.format(*cols)] + [fmt.format(*b) for b in body])


def relative_spread(r: Row) -> float:
    """The interquartile range of a row's rounds over their median."""
    return (r["q3_ms"] - r["q1_ms"]) / r["ms"]


SPREAD_NOTE = (
    "ms: median of the rounds; IQR: their interquartile range (in the summary, "
    "as a percentage of the median)"
)


def format_table(rows: list[Row], markdown: bool = False) -> str:
    cols = [
        "workload",
        "shape",
        "dtype",
        "pass",
        "library",
        "ms",
        "IQR ms",
        "Gelem/s",
        "fastce speed-up",
    ]
    body = []
    for r in rows:
        if r["library"] != "fastce":
            note = f"{r['speedup']:.2f}x"
        elif "roof" in r:
            note = f"roof ratio {r['roof']:.2f}"
        else:
            note = "-"
        body.append(
            [
                r["workload"],
                "x".join(map(str, r["shape"])),
                r["dtype"],
                r["kind"],
                r["library"],
                f"{r['ms']:.4g}",
                f"{r['q1_ms']:.4g}-{r['q3_ms']:.4g}",
                f"{r['gelem']:.2f}",
                note,
            ]
        )
    return render(cols, body, markdown)


def summary_table(rows: list[Row], markdown: bool = False) -> str:
    """One line per workload and pass: every library's median with its
    interquartile range as a percentage of it, and fastce's speed-up over
    each rival (the roof ratio for forward passes)."""
    libraries = list(dict.fromkeys(r["library"] for r in rows))
    rivals = [name for name in libraries if name != "fastce"]
    cols = (
        ["workload", "shape", "dtype", "pass"]
        + [f"{name} ms (IQR)" for name in libraries]
        + [f"vs {name.split()[0]}" for name in rivals]
        + ["roof ratio"]
    )
    body = []
    for key in dict.fromkeys((r["workload"], r["kind"]) for r in rows):
        group = {r["library"]: r for r in rows if (r["workload"], r["kind"]) == key}
        first = group["fastce"]
        body.append(
            [first["workload"], "x".join(map(str, first["shape"])), first["dtype"], first["kind"]]
            + [
                f"{group[name]['ms']:.4g} ({100 * relative_spread(group[name]):.0f}%)"
                if name in group
                else ""
                for name in libraries
            ]
            + [f"{group[name]['speedup']:.2f}x" if name in group else "" for name in rivals]
            + [f"{first['roof']:.2f}" if "roof" in first else ""]
        )
    return render(cols, body, markdown)


# a row whose interquartile range exceeds this fraction of its median was
# timed while something else took the cores: on a quiet machine the rounds of
# a call lie within a few percent of each other
SPREAD_LIMIT = 0.1
# how many of those rows a warning names, the widest first
WIDEST_LISTED = 5


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warnings(rows: list[Row], load: float | None, threads: int) -> list[str]:
    """Warnings that the timings may not be the libraries' own: rows whose
    rounds spread widely, and a load average taken before the timings that
    left fewer idle cores than the bench's threads."""
    warnings = []
    wide = [r for r in rows if relative_spread(r) > SPREAD_LIMIT]
    if wide:
        widest = sorted(wide, key=relative_spread, reverse=True)
        listed = ", ".join(
            f"{r['workload']} {r['kind']} {r['library'].split()[0]} {relative_spread(r):.0%}"
            for r in widest[:WIDEST_LISTED]
        ) + (f" and {len(wide) - WIDEST_LISTED} more" if len(wide) > WIDEST_LISTED else "")
        warnings.append(
            f"WARNING: the machine looks busy: in {len(wide)} of {len(rows)} rows the "
            f"interquartile range exceeds {100 * SPREAD_LIMIT:.0f}% of the median ({listed}); "
            "their medians and speed-ups may not be the libraries' own"
        )
    cores = os.cpu_count() or 1
    # half a core of margin: a shell, an editor or the bench's own imports
    if load is not None and load > cores - threads + 0.5:
        warnings.append(
            f"WARNING: the machine was busy: the 1-minute load average was {load:.2f} before "
            f"the timings, with {cores} logical cores and {threads} "
            f"thread{'s' if threads > 1 else ''} for the bench; other processes took cores the "
            "libraries timed here would have used"
        )
    return warnings


def speedup_range(rival: Row, fastce_row: Row) -> tuple[float, float]:
    """The speed-up's range over the middle halves of both libraries' rounds:
    the rival's lower quartile over fastce's upper one, and the reverse."""
    return rival["q1_ms"] / fastce_row["q3_ms"], rival["q3_ms"] / fastce_row["q1_ms"]


def library_versions() -> str:
    """fastce's, NumPy's and Python's versions (the rivals name theirs)."""
    return f"fastce {fastce.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}"


def workload_label(r: Row) -> str:
    """A workload's name, shape (thousands as k) and dtype where not float32,
    on three lines."""
    shape = "x".join(
        f"{n // 1000}k" if n >= 10000 and n % 1000 == 0 else str(n) for n in r["shape"]
    )
    return f"{r['workload']}\n{shape}" + ("" if r["dtype"] == "float32" else f"\n{r['dtype']}")


def plot_figure(rows: list[Row], threads: int, warnings: Sequence[str] = ()) -> Any:
    """A matplotlib Figure of fastce's speed-up over each rival: a panel per
    pass, a group of bars per workload, a colour per rival, on a log axis
    where bars rise from 1x when fastce is faster and fall when it is slower."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator

    passes = list(dict.fromkeys(r["kind"] for r in rows))
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    rivals = list(dict.fromkeys(r["library"] for r in rows if r["library"] != "fastce"))
    fastce_rows = {(r["workload"], r["kind"]): r for r in rows if r["library"] == "fastce"}
    # about 1400x560 pixels for two panels at 100 dpi: a laptop screen's width
    fig = Figure(figsize=(1.0 + 6.5 * len(passes), 5.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(passes), sharey=True, squeeze=False)[0]
    width = 0.8 / max(1, len(rivals))
    handles: dict[str, Any] = {}
    for ax, kind in zip(axes, passes):
        for i, name in enumerate(rivals):
            drawn = [r for r in rows if r["library"] == name and r["kind"] == kind]
            if not drawn:
                continue
            x = [
                workloads.index(r["workload"]) + (i - (len(rivals) - 1) / 2) * width for r in drawn
            ]
            speedups = [r["speedup"] for r in drawn]
            ranges = [speedup_range(r, fastce_rows[(r["workload"], kind)]) for r in drawn]
            handles[name] = ax.bar(
                x,
                [s - 1 for s in speedups],
                width,
                bottom=1,
                color=f"C{i}",
                yerr=[
                    [max(0.0, s - low) for s, (low, _) in zip(speedups, ranges)],
                    [max(0.0, high - s) for s, (_, high) in zip(speedups, ranges)],
                ],
                error_kw={"elinewidth": 0.8, "capsize": 2},
            )
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.grid(axis="y", which="major", linewidth=0.5, alpha=0.5)
        ax.set_xticks(
            range(len(workloads)),
            [workload_label(fastce_rows[(key, kind)]) for key in workloads],
            fontsize=7,
        )
        absent = [
            name.split()[0]
            for name in rivals
            if not any(r["library"] == name and r["kind"] == kind for r in rows)
        ]
        ax.set_title(kind + (f" (no {', '.join(absent)} pass)" if absent else ""))
    # the axes share one range, wide enough for every error bar and for a
    # margin below the line at 1x
    ends = [
        end
        for r in rows
        if r["library"] != "fastce"
        for end in speedup_range(r, fastce_rows[(r["workload"], r["kind"])])
    ]
    if ends:
        axes[0].set_ylim(min(0.8, min(ends) / 1.25), max(1.25, max(ends) * 1.25))
    axes[0].set_ylabel("fastce's speed-up: their median time / fastce's")
    fig.legend(list(handles.values()), list(handles), loc="outside right upper")
    rival_versions = ", ".join(name for name in rivals if name != "numpy")
    fig.suptitle(
        "fastce's speed-up over each library (above 1x: fastce is faster)\n"
        f"{cpu_name()}, {os.cpu_count()} logical cores; vector path {_kernels.simd_isa()}; "
        f"{threads} threads\n{library_versions()}"
        + (f", {rival_versions}" if rival_versions else ""),
        fontsize=10,
    )
    footnote = "error bars: each rival's lower to upper quartile over fastce's upper to lower one"
    if warnings:
        footnote += "; WARNING: the machine was busy during this run (see the printed warnings)"
    fig.supxlabel(footnote, fontsize=8, color="firebrick" if warnings else "black")
    return fig


def plot(rows: list[Row], path: str, threads: int, warnings: Sequence[str] = ()) -> None:
    plot_figure(rows, threads, warnings).savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastce.bench", description=__doc__)
    parser.add_argument(
        "--workload",
        action="append",
        choices=sorted(WORKLOADS),
        help="workload to run (repeatable); default: all",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument(
        "--libraries",
        default=",".join(RIVALS),
        help="comma-separated rivals to time beside fastce, from: " + ", ".join(RIVALS),
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart of the speed-ups")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also report the peak memory of forward+backward beside torch's",
    )
    parser.add_argument(
        "--family", action="store_true", help="also time every public function against torch"
    )
    parser.add_argument(
        "--half",
        action="store_true",
        help="also time every public function on float16 and bfloat16 inputs beside float32",
    )
    parser.add_argument(
        "--linear",
        action="store_true",
        help="also time the linear-head workloads (L1, L2) against torch's two paths",
    )
    parser.add_argument(
        "--transforms",
        action="store_true",
        help="also time the logit transforms (soft-cap, temperature, z-loss) on W1 and W3",
    )
    parser.add_argument(
        "--evaluation",
        action="store_true",
        help="also time evaluate's optional outputs (segments, a temperature scan, equal-mass "
        "bins, a reference model) and fit_temperature on W1 and W3",
    )
    parser.add_argument(
        "--faces",
        action="store_true",
        help="also time fastce.scipy and fastce.sklearn against SciPy and scikit-learn on W1, "
        "W6 and W3",
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="also time 1 and 2 threads while another process spins on a core",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    libraries = tuple(args.libraries.split(",")) if args.libraries else ()
    unknown = [name for name in libraries if name not in RIVALS]
    if unknown:
        parser.error(f"--libraries: no rival {', '.join(unknown)}; the rivals: {', '.join(RIVALS)}")
    if args.threads == 1:
        # XLA reads its thread settings once, when jax is first imported
        os.environ.setdefault(
            "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
    workloads = args.workload or list(WORKLOADS)
    passes = ("forward",) if args.forward_only else ("forward", "forward+backward")
    for line in header(args.threads):
        print(line)
    load = load_average()
    notes: list[str] = []

    def note(line: str) -> None:
        print(line)
        notes.append(line)

    rows = run(workloads, args.threads, args.repeats, passes, libraries, out=note)
    warnings = busy_warnings(rows, load, args.threads)
    print(SPREAD_NOTE)
    print(format_table(rows))
    print()
    print(summary_table(rows))
    for line in warnings:
        print(line)
    memory = memory_table() if args.memory else ""
    if memory:
        print(memory)
    family = family_table(args.threads, args.repeats) if args.family else None
    if family:
        print()
        print(render(*family, False))
    half = half_table(args.threads, args.repeats) if args.half else None
    if half:
        print()
        print("Half precision (the same calls on float16 and bfloat16 inputs):")
        print(render(*half, False))
    linear = linear_table(args.threads, min(args.repeats, 3)) if args.linear else None
    if linear:
        print()
        print("Linear heads (float32; extra MiB: beyond the inputs and the returned gradients):")
        print(render(*linear, False))
    transforms = transform_table(args.threads, args.repeats) if args.transforms else None
    if transforms:
        print()
        print("Logit transforms (forward, float32):")
        print(render(*transforms, False))
    evaluation = evaluation_table(args.threads, args.repeats) if args.evaluation else None
    if evaluation:
        print()
        print("Evaluation outputs (float32):")
        print(render(*evaluation, False))
    faces = faces_table(args.threads, min(args.repeats, 5)) if args.faces else None
    if faces:
        print()
        print("The SciPy and scikit-learn faces:")
        print(render(*faces, False))
    busy = busy_table(args.repeats) if args.busy else None
    if busy:
        print()
        print("With another process spinning on a core:")
        print(render(*busy, False))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(
                "\n\n".join(["\n".join(header(args.threads)), *notes, *warnings, SPREAD_NOTE])
                + "\n\n"
                + summary_table(rows, True)
                + "\n\n"
                + format_table(rows, True)
                + "\n"
            )
            if memory:
                f.write("\n```\n" + memory + "\n```\n")
            if family:
                f.write("\n" + render(*family, True) + "\n")
            if half:
                f.write("\nHalf precision:\n\n" + render(*half, True) + "\n")
            if linear:
                f.write("\nLinear heads:\n\n" + render(*linear, True) + "\n")
            if transforms:
                f.write("\nLogit transforms:\n\n" + render(*transforms, True) + "\n")
            if evaluation:
                f.write("\nEvaluation outputs:\n\n" + render(*evaluation, True) + "\n")
            if faces:
                f.write("\nThe SciPy and scikit-learn faces:\n\n" + render(*faces, True) + "\n")
            if busy:
                f.write(
                    "\nWith another process spinning on a core:\n\n" + render(*busy, True) + "\n"
                )
    if args.plot:
        plot(rows, args.plot, args.threads, warnings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
