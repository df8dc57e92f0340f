"""Inputs: never modified (but for ``out=logits``), read-only and memory-mapped
inputs work, and a failing call writes nothing anywhere.

The last section holds the input bugs the fuzzer found, each kept as its
minimal reproducer.
"""

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fastce
from fastce import reference as ref

SHAPES = {"small": (64, 7), "threaded": (6000, 9)}  # 54,000 logits start a thread team


def make_inputs(shape, seed=11):
    rng = np.random.default_rng(seed)
    n, c = shape
    t = rng.integers(0, c, n)
    t[::7] = -100
    return {
        "x": (rng.standard_normal(shape) * 3).astype(np.float32),
        "t": t,
        "y": ref.softmax(rng.standard_normal(shape)),  # probabilities, float64
        "w": rng.uniform(0.5, 2.0, c),
        "go": rng.standard_normal(n),
        "p": rng.uniform(0.01, 0.99, shape),  # binary probabilities
        "yb": rng.random(shape),  # binary targets
        "pw": rng.uniform(0.5, 2.0, c),
    }


# every public function, each reading as many inputs as it takes
CALLS = {
    "cross_entropy": lambda a: fastce.cross_entropy(a["x"], a["t"], a["w"], label_smoothing=0.1),
    "cross_entropy_probs": lambda a: fastce.cross_entropy(a["x"], a["y"], a["w"], reduction="none"),
    "cross_entropy_grad": lambda a: fastce.cross_entropy_grad(
        a["x"], a["t"], a["w"], grad_output=a["go"], reduction="none"
    ),
    "cross_entropy_with_grad": lambda a: fastce.cross_entropy_with_grad(
        a["x"], a["y"], a["w"], label_smoothing=0.2
    ),
    "nll_loss": lambda a: fastce.nll_loss(a["x"], a["t"], a["w"], reduction="sum"),
    "log_softmax": lambda a: fastce.log_softmax(a["x"], axis=0),
    "softmax": lambda a: fastce.softmax(a["x"]),
    "logsumexp": lambda a: fastce.logsumexp(a["x"], axis=-1),
    "binary_cross_entropy_with_logits": lambda a: fastce.binary_cross_entropy_with_logits(
        a["x"], a["yb"], a["w"], pos_weight=a["pw"], reduction="none"
    ),
    "binary_cross_entropy": lambda a: fastce.binary_cross_entropy(a["p"], a["yb"], a["w"]),
    "CrossEntropyLoss": lambda a: fastce.CrossEntropyLoss(a["w"], label_smoothing=0.1)(
        a["x"], a["t"]
    ),
    "CrossEntropyLoss.with_grad": lambda a: fastce.CrossEntropyLoss(reduction="sum").with_grad(
        a["x"], a["t"]
    ),
}


def flatten(result):
    """A call's result as a list of arrays, for byte comparisons."""
    parts = result if isinstance(result, tuple) else (result,)
    return [np.asarray(p) for p in parts]


def assert_same_results(a, b):
    for p, q in zip(flatten(a), flatten(b), strict=True):
        assert p.dtype == q.dtype and p.shape == q.shape
        assert p.tobytes() == q.tobytes()


def layout(a, kind):
    if kind == "C":
        return np.array(a, order="C")
    if kind == "F":
        return np.array(a, order="F")
    if kind == "reversed":
        return np.array(a[::-1], order="C")[::-1]
    if kind == "byteswapped":
        return a.astype(a.dtype.newbyteorder())
    if kind == "strided":
        big = np.zeros((2 * a.shape[0],) + a.shape[1:], dtype=a.dtype)
        big[::2] = a
        return big[::2]
    raise AssertionError(kind)


@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("kind", ["C", "F", "reversed", "byteswapped", "strided"])
@pytest.mark.parametrize("name", list(CALLS))
def test_inputs_are_never_modified(name, kind, size):
    inputs = {k: layout(v, kind) for k, v in make_inputs(SHAPES[size]).items()}
    before = {k: v.copy() for k, v in inputs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CALLS[name](inputs)
    for key, value in inputs.items():
        assert value.tobytes() == before[key].tobytes(), f"{name} modified {key}"
        assert value.dtype == before[key].dtype


@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("name", list(CALLS))
def test_read_only_inputs_work(name, size):
    inputs = make_inputs(SHAPES[size])
    expected = CALLS[name](inputs)
    frozen = {k: v.copy() for k, v in inputs.items()}
    for v in frozen.values():
        v.flags.writeable = False
    assert_same_results(CALLS[name](frozen), expected)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("name", list(CALLS))
def test_memory_mapped_inputs_work(name, order, tmp_path):
    # the same memory order in RAM and on disk: the kernels' rounding may
    # depend on the layout, never on where the bytes live
    inputs = {k: np.array(v, order=order) for k, v in make_inputs(SHAPES["threaded"]).items()}
    expected = CALLS[name](inputs)
    mapped = {}
    for key, value in inputs.items():
        path = tmp_path / f"{key}.npy"
        np.save(path, value)
        mapped[key] = np.load(path, mmap_mode="r")
        assert isinstance(mapped[key], np.memmap) and not mapped[key].flags.writeable
    assert_same_results(CALLS[name](mapped), expected)
    for key, value in inputs.items():  # the files still hold the inputs
        assert np.array_equal(np.load(tmp_path / f"{key}.npy"), value)


def test_memory_mapped_out_receives_the_result(tmp_path):
    inputs = make_inputs(SHAPES["threaded"])
    x, t = inputs["x"], inputs["t"]
    path = tmp_path / "grad.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=x.shape)
    grad = fastce.cross_entropy_grad(x, t, out=out)
    assert grad is out
    out.flush()
    np.testing.assert_array_equal(np.load(path), fastce.cross_entropy_grad(x, t))
    soft = np.lib.format.open_memmap(
        tmp_path / "soft.npy", mode="w+", dtype=np.float32, shape=x.shape
    )
    assert fastce.softmax(x, out=soft) is soft
    np.testing.assert_array_equal(np.asarray(soft), fastce.softmax(x))


@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("func", [fastce.cross_entropy_grad, fastce.cross_entropy_with_grad])
def test_out_logits_writes_only_the_logits(func, size):
    inputs = make_inputs(SHAPES[size])
    x = inputs["x"]
    expected = func(
        x.copy(),
        inputs["t"],
        inputs["w"],
        grad_output=inputs["go"],
        reduction="none",
        label_smoothing=0.1,
    )
    others = {k: v.copy() for k, v in inputs.items() if k != "x"}
    got = func(
        x,
        inputs["t"],
        inputs["w"],
        grad_output=inputs["go"],
        reduction="none",
        label_smoothing=0.1,
        out=x,
    )
    assert_same_results(got, expected)
    grad = got[1] if isinstance(got, tuple) else got
    assert grad is x
    for key, value in others.items():
        assert inputs[key].tobytes() == value.tobytes(), f"out=logits modified {key}"


# --------------------------------------------------------------------------
# a failing call writes nothing anywhere


def late_out_of_range(t, n_classes):
    """The target with its very last sample out of range: found only after
    every other check has passed and the whole target has been read."""
    bad = t.copy()
    bad[-1] = n_classes
    return bad


FAILING = {
    # name: (function, arguments from the inputs, error)
    "ce_late_index": (
        fastce.cross_entropy_grad,
        lambda a, c: dict(target=late_out_of_range(a["t"], c)),
        IndexError,
    ),
    "ce_negative_index": (
        fastce.cross_entropy_with_grad,
        lambda a, c: dict(target=np.where(a["t"] == 3, -5, a["t"])),
        IndexError,
    ),
    "ce_weight_shape": (
        fastce.cross_entropy_grad,
        lambda a, c: dict(target=a["t"], weight=a["w"][:-1]),
        ValueError,
    ),
    "ce_grad_output_shape": (
        fastce.cross_entropy_with_grad,
        lambda a, c: dict(target=a["t"], grad_output=a["go"][:-1], reduction="none"),
        ValueError,
    ),
    "ce_smoothing": (
        fastce.cross_entropy_grad,
        lambda a, c: dict(target=a["y"], label_smoothing=1.5),
        ValueError,
    ),
    "ce_reduction": (
        fastce.cross_entropy_with_grad,
        lambda a, c: dict(target=a["t"], reduction="avg"),
        ValueError,
    ),
    "ce_threads": (
        fastce.cross_entropy_grad,
        lambda a, c: dict(target=a["t"], num_threads=0),
        ValueError,
    ),
    "ce_probs_shape": (
        fastce.cross_entropy_grad,
        lambda a, c: dict(target=a["y"][:, :-1]),
        ValueError,
    ),
    "ce_bool_target": (fastce.cross_entropy_grad, lambda a, c: dict(target=a["t"] > 2), TypeError),
    "ce_axis": (
        fastce.cross_entropy_with_grad,
        lambda a, c: dict(target=a["t"], axis=2),
        ValueError,
    ),
}


@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("out_kind", ["buffer", "logits"])
@pytest.mark.parametrize("case", list(FAILING))
def test_failing_call_writes_nothing(case, out_kind, size):
    func, arguments, error = FAILING[case]
    inputs = make_inputs(SHAPES[size])
    n_classes = inputs["x"].shape[1]
    kwargs = arguments(inputs, n_classes)
    out = inputs["x"] if out_kind == "logits" else np.full(inputs["x"].shape, 7.0, np.float32)
    arrays = dict(inputs, out=out, **{k: v for k, v in kwargs.items() if isinstance(v, np.ndarray)})
    before = {k: v.copy() for k, v in arrays.items()}
    threads = fastce.get_num_threads()
    target = kwargs.pop("target")
    with pytest.raises(error):
        func(inputs["x"], target, out=out, **kwargs)
    for key, value in arrays.items():
        assert value.tobytes() == before[key].tobytes(), f"the failing call wrote to {key}"
    assert fastce.get_num_threads() == threads


@pytest.mark.parametrize("func", [fastce.softmax, fastce.log_softmax])
@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(axis=3), ValueError),
        (dict(axis=1.0), TypeError),
        (dict(num_threads=-1), ValueError),
        (dict(num_threads="2"), TypeError),
    ],
)
@pytest.mark.parametrize("out_kind", ["buffer", "x"])
def test_failing_softmax_writes_nothing(func, kwargs, error, out_kind):
    x = make_inputs(SHAPES["threaded"])["x"]
    out = x if out_kind == "x" else np.full(x.shape, 7.0, np.float32)
    x_before, out_before = x.copy(), out.copy()
    with pytest.raises(error):
        func(x, out=out, **kwargs)
    assert x.tobytes() == x_before.tobytes()
    assert out.tobytes() == out_before.tobytes()


def test_failing_call_on_a_read_only_memmap_leaves_the_file(tmp_path):
    x = make_inputs(SHAPES["small"])["x"]
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    with pytest.raises(ValueError, match="read-only"):
        fastce.cross_entropy_grad(mapped, np.zeros(len(x), dtype=np.int64), out=mapped)
    with pytest.raises(ValueError, match="read-only"):
        fastce.softmax(mapped, out=mapped)
    assert np.load(path).tobytes() == x.tobytes()


def test_out_sharing_memory_with_a_probability_target_gives_the_right_gradient():
    # the one overlap the package copies for: out= holding the target itself
    inputs = make_inputs(SHAPES["threaded"])
    x, y = inputs["x"], inputs["y"].astype(np.float32)
    expected = fastce.cross_entropy_grad(x, y.copy())
    got = fastce.cross_entropy_grad(x, y, out=y)
    assert got is y
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------
# bugs found by the fuzzer, each a minimal reproducer

TARGET_IN_OUT = textwrap.dedent(
    """
    import numpy as np, fastce
    buf = np.zeros((4, 3))
    target = buf.reshape(-1).view(np.int64)[:4]   # class indices stored in out's memory
    target[:] = 1
    expected = fastce.cross_entropy_grad(np.zeros((4, 3)), target.copy())
    got = fastce.cross_entropy_grad(np.zeros((4, 3)), target, out=buf)
    assert np.array_equal(got, expected), got
    print("ok")
    """
)

TARGET_IN_LOGITS_OUT = textwrap.dedent(
    """
    import numpy as np, fastce
    x = np.zeros((4, 3))
    target = x.reshape(-1).view(np.int64)[:4]      # class indices stored in the logits
    target[:] = 1
    expected = fastce.cross_entropy_grad(x.copy(), target.copy())
    got = fastce.cross_entropy_grad(x, target, out=x)
    assert np.array_equal(got, expected), got
    print("ok")
    """
)


@pytest.mark.parametrize(
    "script", [TARGET_IN_OUT, TARGET_IN_LOGITS_OUT], ids=["out_buffer", "out_logits"]
)
def test_target_sharing_memory_with_out_does_not_crash(script):
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", (
        f"exit code {done.returncode}: {done.stderr[-2000:]}"
    )


def test_weight_sharing_memory_with_out_gives_the_right_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    t = rng.integers(0, 3, 50)
    buf = np.ones((50, 3))
    weight = buf[0]  # the weights are out's first row
    expected = fastce.cross_entropy_grad(x, t, weight.copy())
    got = fastce.cross_entropy_grad(x, t, weight, out=buf)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_grad_output_sharing_memory_with_out_gives_the_right_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    t = rng.integers(0, 3, 50)
    buf = np.ones((50, 3))
    grad_output = buf[::-1, 0]  # sample n's grad_output lies in row 49 - n of out
    expected = fastce.cross_entropy_grad(x, t, grad_output=grad_output.copy(), reduction="none")
    got = fastce.cross_entropy_grad(x, t, grad_output=grad_output, reduction="none", out=buf)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("func", [fastce.log_softmax, fastce.softmax])
def test_zero_d_input_returns_out(func):
    out = np.full((), 7.0)
    assert func(np.array(3.0), out=out) is out


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_float32_overflow_returns_inf_without_a_warning(reduction):
    x = np.array([[3e38, -3e38], [3e38, -3e38]], dtype=np.float32)
    t = np.array([1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = fastce.cross_entropy(x, t, reduction=reduction)
    assert loss == np.inf and loss.dtype == np.float32


def test_binary_cross_entropy_with_an_infinite_logit_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = fastce.binary_cross_entropy_with_logits(
            np.array([np.inf, 0.0]), np.array([1.0, 0.0])
        )
    assert np.isnan(loss)


@pytest.mark.parametrize("call", ["log_softmax", "softmax", "cross_entropy_grad"])
def test_out_of_any_layout_receives_the_result_in_place(call):
    x = np.arange(24.0).reshape(2, 3, 4) / 10
    x_perm = np.array(x.transpose(2, 0, 1), order="C").transpose(1, 2, 0)  # same values
    out = np.zeros((2, 3, 4), order="F")
    t = np.array([[0, 1, 2], [3, 0, 1]])
    args = (t,) if call == "cross_entropy_grad" else ()
    func = getattr(fastce, call)
    expected = func(x, *args, axis=-1)
    np.testing.assert_allclose(func(x_perm, *args, axis=-1, out=out), expected, rtol=1e-12)


def test_zero_weight_sample_has_a_zero_gradient_in_every_layout():
    # the tile kernel (class axis not last) once wrote NaN at the target of a
    # sample whose target weight is 0 when one of its logits was NaN
    x = np.array([[0.5, 1.0], [0.2, -1.0], [np.nan, 0.3]])  # 3 classes on axis 0, 2 samples
    t = np.array([1, 0])
    w = np.array([1.0, 0.0, 1.0])  # sample 0's target has weight 0: no coefficient at all
    rows = fastce.cross_entropy_grad(x.T.copy(), t, w, axis=1, reduction="sum")
    assert np.array_equal(rows[0], [0.0, 0.0, 0.0])  # the row kernel
    tiles = fastce.cross_entropy_grad(x, t, w, axis=0, reduction="sum")
    np.testing.assert_array_equal(tiles, rows.T)


@pytest.mark.parametrize("layout", ["rows", "tiles"])
def test_coefficients_that_cancel_still_count(layout):
    # a sample whose coefficients sum to 0 without all being 0 (a signed
    # probability target) was once treated as ignored: loss 0, gradient 0
    x = np.array([[1.0, 2.0, 3.0]])
    y = np.array([[0.5, -0.5, 0.0]])  # sums to 0: A = 0, but a is not 0
    if layout == "tiles":
        loss, grad = fastce.cross_entropy_with_grad(x.T.copy(), y.T.copy(), axis=0)
        grad = grad.T
    else:
        loss, grad = fastce.cross_entropy_with_grad(x, y)
    # loss = -(0.5 * logp0 - 0.5 * logp1) = 0.5 * (x1 - x0); grad = A * p - a = -a
    np.testing.assert_allclose(loss, 0.5, rtol=1e-12)
    np.testing.assert_allclose(grad, -y, atol=1e-15)
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, y)
    np.testing.assert_allclose(ref_loss, 0.5, rtol=1e-12)
    np.testing.assert_allclose(ref_grad, -y, atol=1e-15)


@pytest.mark.parametrize("layout", ["rows", "tiles"])
def test_signed_weights_that_cancel_still_count(layout):
    # class-index targets: with label smoothing 1 every class gets w[c] / C,
    # and weights (1, -1) sum to 0 without being 0
    x = np.array([[1.0, 3.0], [0.5, -2.0]])
    t = np.array([0, 1])
    w = np.array([1.0, -1.0])
    options = dict(weight=w, label_smoothing=1.0, reduction="sum")
    if layout == "tiles":
        loss, grad = fastce.cross_entropy_with_grad(x.T.copy(), t, axis=0, **options)
        grad = grad.T
    else:
        loss, grad = fastce.cross_entropy_with_grad(x, t, **options)
    # loss[n] = -(logp[n, 0] - logp[n, 1]) / 2 = (x[n, 1] - x[n, 0]) / 2
    np.testing.assert_allclose(loss, (2.0 - 2.5) / 2, rtol=1e-12)
    np.testing.assert_allclose(grad, [[-0.5, 0.5], [-0.5, 0.5]], atol=1e-15)
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, t, **options)
    np.testing.assert_allclose(ref_loss, loss, rtol=1e-12)
    np.testing.assert_allclose(ref_grad, grad, atol=1e-15)
    # evaluate shares the core's per-sample code
    xs, axis = (x.T.copy(), 0) if layout == "tiles" else (x, 1)
    per_sample = fastce.evaluate(
        xs, t, weight=w, label_smoothing=1.0, axis=axis, per_sample=True
    ).per_sample.loss
    np.testing.assert_array_equal(
        per_sample,
        fastce.cross_entropy(xs, t, weight=w, label_smoothing=1.0, axis=axis, reduction="none"),
    )


def misaligned(shape, dtype=np.float64):
    """A zeroed array whose data start one byte past an element boundary."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    a = np.zeros(n + 1, dtype=np.uint8)[1:].view(dtype).reshape(shape)
    assert not a.flags.aligned
    return a


@pytest.fixture
def kernel_arguments(monkeypatch):
    """Records every array in the plans the public functions hand to the
    compiled executor, which refuses (with an internal error) any array a
    kernel would read or write misaligned, so a call that succeeds handed
    the kernels aligned arrays whatever the plan held."""
    from fastce import functional

    seen = []
    original = functional.execute

    def recording(plan):
        seen.extend(
            (field, a)
            for field, a in zip(plan._fields, plan)
            if isinstance(a, np.ndarray) and field not in ("x", "out")
        )
        return original(plan)

    monkeypatch.setattr(functional, "execute", recording)
    return seen


def test_the_executor_refuses_misaligned_arrays():
    from fastce._kernels import execute
    from fastce._plan import plan_cross_entropy

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    t = rng.integers(0, 3, 50)
    plan = plan_cross_entropy(x, t, None, -100, "mean", 0.0, None, False, None, None, None)
    shifted = misaligned((50, 3))
    shifted[...] = x
    index = misaligned((50, 1), np.int64)
    index[...] = t[:, None]
    for bad in (
        {"x3": shifted.reshape(50, 3, 1)},
        {"index2": index},
        {"weight": misaligned((3,))},
    ):
        with pytest.raises(ValueError, match="internal"):
            execute(plan._replace(**bad))


def test_aligned_inputs_reach_the_kernels_aligned(kernel_arguments):
    # misaligned logits, targets and probabilities are copied before the kernels
    rng = np.random.default_rng(0)
    x = misaligned((50, 3))
    x[...] = rng.standard_normal((50, 3))
    t = misaligned((50,), np.int64)
    t[...] = rng.integers(0, 3, 50)
    y = misaligned((50, 3))
    y[...] = 1 / 3
    fastce.cross_entropy_with_grad(x, t)
    fastce.cross_entropy_with_grad(x, y)
    fastce.nll_loss(x, t)
    fastce.softmax(x)
    assert kernel_arguments
    assert all(a.flags.aligned for _, a in kernel_arguments)


@pytest.mark.parametrize("which", ["out", "weight", "grad_output", "softmax_out"])
def test_misaligned_buffers_reach_the_kernels_aligned(which, kernel_arguments):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    t = rng.integers(0, 3, 50)
    if which == "out":
        out = misaligned((50, 3))
        fastce.cross_entropy_grad(x, t, out=out)
        np.testing.assert_array_equal(out, fastce.cross_entropy_grad(x, t))
    elif which == "weight":
        w = misaligned((3,))
        w[...] = [0.5, 1.0, 2.0]
        fastce.cross_entropy_grad(x, t, w)
    elif which == "grad_output":
        go = misaligned((50,))
        go[...] = 1.0
        fastce.cross_entropy_grad(x, t, grad_output=go, reduction="none")
    else:
        fastce.softmax(x, out=misaligned((50, 3)))
    bad = [field for field, a in kernel_arguments if not a.flags.aligned]
    assert not bad, f"misaligned arrays reached the kernels: {bad}"


def test_bfloat16_reaches_the_kernels_as_it_is_and_is_never_modified(kernel_arguments):
    # read-only bfloat16 logits are read as they are, misaligned ones from an
    # aligned copy: the kernels convert them, never a float32 copy of them all
    bf = pytest.importorskip("ml_dtypes").bfloat16
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((50, 3)) * 3).astype(bf)
    t = rng.integers(0, 3, 50)
    frozen = values.copy()
    frozen.flags.writeable = False
    shifted = misaligned((50, 3), bf)
    shifted[...] = values
    want = fastce.cross_entropy_with_grad(values.astype(np.float32), t, reduction="none")
    want_softmax = fastce.softmax(values.astype(np.float32))
    kernel_arguments.clear()
    for x in (frozen, shifted):
        loss, grad = fastce.cross_entropy_with_grad(x, t, reduction="none")
        np.testing.assert_array_equal(loss, want[0])
        np.testing.assert_array_equal(grad, want[1])
        np.testing.assert_array_equal(fastce.softmax(x), want_softmax)
        assert x.tobytes() == values.tobytes()
    logits_seen = [a for field, a in kernel_arguments if field == "x3"]
    assert logits_seen and all(a.dtype == bf and a.flags.aligned for a in logits_seen)
