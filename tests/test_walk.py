"""The walk every kernel shares: float16 and bfloat16 logits, converted by the
threads a piece at a time, give the bits of their float32 values on every
layout the walk cuts (rows, rows of few classes gathered into tiles, tiles of
neighbouring samples, tiles too wide to convert at once), for every function
and thread count."""

import numpy as np
import pytest

import fastce
from fastce import _kernels, reference

HALF = [np.float16, pytest.param("bfloat16", id="bfloat16")]


def half_dtype(name):
    if name == "bfloat16":
        return pytest.importorskip("ml_dtypes").bfloat16
    return name


def rows_contiguous(rng, dtype):
    return (rng.standard_normal((300, 1003)) * 4).astype(dtype), 1


def rows_contiguous_nonfinite(rng, dtype):
    # rows whose kernels stop early (an infinite maximum, a NaN) beside rows
    # that do not: each half row is converted while the row before it is
    # summed, or after it when that row's kernel did not get so far
    x = rng.standard_normal((64, 517)) * 4
    x[3, 7] = np.inf
    x[4, 500] = np.nan
    x[5] = -np.inf
    x[9, ::3] = -np.inf
    x[10] = 1.0
    return x.astype(dtype), 1


def long_rows(rng, dtype):
    # rows longer than a cached one, each its own block: each row converted
    # chunk by chunk beside the row before it, across the blocks of a thread
    x = rng.standard_normal((9, 17_000)) * 4
    x[2, 16_999] = np.inf
    x[5, 3] = np.nan
    x[6] = -np.inf
    return x.astype(dtype), 1


def rows_strided(rng, dtype):
    # every other class: rows whose classes are not contiguous
    return (rng.standard_normal((130, 400)) * 4).astype(dtype)[:, ::2], 1


def few_classes(rng, dtype):
    return (rng.standard_normal((1000, 7)) * 4).astype(dtype), 1


def few_classes_many_rows(rng, dtype):
    # more logits than a block of the old half-precision conversion: blocks
    # cut at rows that were not whole blocks of the row kernel
    return (rng.standard_normal((70_000, 10)) * 4).astype(dtype), 1


def few_classes_apart(rng, dtype):
    # rows of few contiguous classes, every other row
    return (rng.standard_normal((2000, 7)) * 4).astype(dtype)[::2], 1


def channels_first(rng, dtype):
    return (rng.standard_normal((3, 50, 150)) * 4).astype(dtype), 1


def channels_first_wide(rng, dtype):
    # so many classes that a tile is converted a few samples at a time
    return (rng.standard_normal((1, 6000, 70)) * 4).astype(dtype), 1


def class_axis_in_the_middle(rng, dtype):
    # (B, C, T) whose classes are contiguous: rows, T of them per outer position
    return (rng.standard_normal((4, 90, 60)) * 4).astype(dtype).transpose(0, 2, 1), 1


LAYOUTS = [
    rows_contiguous,
    rows_contiguous_nonfinite,
    long_rows,
    rows_strided,
    few_classes,
    few_classes_many_rows,
    few_classes_apart,
    channels_first,
    channels_first_wide,
    class_axis_in_the_middle,
]


def targets(rng, x, axis):
    shape = x.shape[:axis] + x.shape[axis + 1 :]
    t = rng.integers(0, x.shape[axis], shape)
    t.reshape(-1)[::7] = -100
    return t


def same_bits(a, b, what=""):
    """The same bits, except that a NaN may be any NaN: its sign and payload
    follow the order of a multiplication's operands, which the compiler may
    swap."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if a.dtype.kind == "f":
        nan = np.isnan(a)
        np.testing.assert_array_equal(nan, np.isnan(b), what)
        a, b = a[~nan], b[~nan]
    assert a.tobytes() == b.tobytes(), what


def everything(x, t, axis, threads):
    """Every function's result on the logits x, per sample and reduced."""
    out = {}
    for reduction in ("none", "sum", "mean"):
        loss, grad = fastce.cross_entropy_with_grad(
            x,
            t,
            axis=axis,
            reduction=reduction,
            label_smoothing=0.1 if reduction == "sum" else 0.0,
            num_threads=threads,
        )
        out[f"cross_entropy {reduction}"] = loss
        out[f"gradient {reduction}"] = grad
        out[f"nll_loss {reduction}"] = fastce.nll_loss(
            x, t, axis=axis, reduction=reduction, num_threads=threads
        )
    for name in ("softmax", "log_softmax", "logsumexp"):
        out[name] = getattr(fastce, name)(x, axis=axis, num_threads=threads)
    result = fastce.evaluate(x, t, axis=axis, per_sample=True, num_threads=threads)
    out["evaluate loss"] = result.loss
    for field in ("loss", "prediction", "target_rank", "confidence", "entropy"):
        out[f"evaluate {field}"] = getattr(result.per_sample, field)
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", HALF)
def test_half_logits_give_the_bits_of_their_float32_values(layout, dtype):
    rng = np.random.default_rng(7)
    x, axis = layout(rng, half_dtype(dtype))
    t = targets(rng, x, axis)
    want = everything(np.array(x.astype(np.float32)), t, axis, 2)
    for threads in (1, 2, 5):
        got = everything(x, t, axis, threads)
        for name in want:
            same_bits(got[name], want[name], f"{name}, {threads} threads")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(3, 5), (40_000,), (70, 1001), (3, 5000)])
@pytest.mark.parametrize("target_dtype", ["float32", "the logits'"])
def test_half_binary_losses_give_the_bits_of_their_float32_values(dtype, shape, target_dtype):
    # targets of the logits' own dtype are converted by the kernels, as the
    # logits are; rows wider than a few thousand go one at a time
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(shape) * 4).astype(half_dtype(dtype))
    y = rng.random(shape).astype(np.float32)
    if target_dtype != "float32":
        y = y.astype(x.dtype)
    p = 1 / (1 + np.exp(-x.astype(np.float32)))
    probs = p.astype(x.dtype)
    pos = rng.random(shape[-1]).astype(np.float32) + 0.5
    for threads in (1, 2):
        for f, a in (
            (fastce.binary_cross_entropy_with_logits_with_grad, x),
            (fastce.binary_cross_entropy_with_grad, probs),
        ):
            for reduction in ("none", "sum"):
                kwargs = {"pos_weight": pos} if a is x else {}
                got = f(a, y, reduction=reduction, num_threads=threads, **kwargs)
                want = f(
                    a.astype(np.float32),
                    y.astype(np.float32),
                    reduction=reduction,
                    num_threads=threads,
                    **kwargs,
                )
                for g, w in zip(got, want):
                    same_bits(g, w, f"{f.__name__} {reduction}")


@pytest.mark.parametrize("dtype", HALF)
def test_half_targets_outside_the_unit_interval_are_found(dtype):
    target = np.full(50_000, 0.5, half_dtype(dtype))
    target[41_234] = 1.5
    with pytest.raises(ValueError, match="41234"):
        fastce.binary_cross_entropy(np.full(50_000, 0.5, np.float32), target)
    with pytest.raises(ValueError, match="41234"):
        fastce.binary_cross_entropy(np.full(50_000, 0.5, target.dtype), target)


def test_half_probabilities_outside_the_unit_interval_are_found():
    probs = np.full(50_000, 0.5, np.float16)
    probs[41_234] = 1.5
    with pytest.raises(ValueError, match="41234"):
        fastce.binary_cross_entropy(probs, np.zeros(50_000, np.float32))


@pytest.mark.parametrize("weighted", [False, True])
def test_extreme_logits_give_one_answer_in_every_layout(weighted):
    # differences of logits near the float32 limits overflow float32: every
    # layout sums them in float64 then, as the strided and tiled ones always do
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((64, 50)) * 3).astype(np.float32)
    x[::3, 0] = 3.4e38
    x[::3, 1] = -3.4e38
    x[1::5, 2:40] = -3.0e37
    t = rng.integers(0, 50, 64)
    w = rng.random(50) + 0.5 if weighted else None
    layouts = {
        "C": (x, t),
        "F": (np.asfortranarray(x), t),
        "strided": (np.repeat(x, 2, axis=1)[:, ::2], t),
        "tiles": (np.ascontiguousarray(x.T)[None], t[None]),
    }
    results = {
        name: fastce.cross_entropy(a, tt, w, label_smoothing=0.1, reduction="none").reshape(-1)
        for name, (a, tt) in layouts.items()
    }
    with np.errstate(over="ignore"):  # a loss beyond float32's range is inf
        want = reference.cross_entropy(
            x.astype(np.float64), t, w, label_smoothing=0.1, reduction="none"
        ).astype(np.float32)
    for name, got in results.items():
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=name)
        np.testing.assert_allclose(
            got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-5, err_msg=name
        )


def streamed_shape(dtype, n_classes):
    """A (samples, classes) shape whose output is just past the size the
    kernels store past the caches."""
    per_row = n_classes * np.dtype(dtype).itemsize
    return _kernels.STREAMED_OUT_BYTES // per_row + 2, n_classes


STREAMED_CALLS = {
    "softmax": lambda x, t, out: fastce.softmax(x, out=out),
    "log_softmax": lambda x, t, out: fastce.log_softmax(x, out=out),
    "cross_entropy_grad": lambda x, t, out: fastce.cross_entropy_grad(
        x, t, reduction="sum", out=out
    ),
    # a temperature the row bodies apply as they read (streamed); a soft-cap
    # whose derivative multiplies the output afterwards (stored in cache)
    "cross_entropy_grad, temperature": lambda x, t, out: fastce.cross_entropy_grad(
        x, t, reduction="sum", out=out, temperature=0.7
    ),
    "cross_entropy_grad, softcap": lambda x, t, out: fastce.cross_entropy_grad(
        x, t, reduction="sum", out=out, softcap=5.0
    ),
}


@pytest.mark.parametrize("name", STREAMED_CALLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [1000, 70_001])
@pytest.mark.parametrize("misaligned", [False, True])
def test_outputs_streamed_past_the_caches_have_the_bits_of_allocated_ones(
    simd_path, name, dtype, n_classes, misaligned
):
    # out= of the caller's memory, large enough to be streamed, against the
    # result the call allocates (in fresh memory, never streamed); a
    # misaligned out starts each row with elements stored before the first
    # aligned vector
    rng = np.random.default_rng(5)
    shape = streamed_shape(dtype, n_classes)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x[1, 3] = 200.0
    x[2, :] = -np.inf
    t = rng.integers(0, n_classes, shape[0])
    call = STREAMED_CALLS[name]
    fastce.set_result_cache_bytes(0)
    try:
        expected = call(x, t, None)
    finally:
        fastce.set_result_cache_bytes(None)
    storage = np.full(x.size + 1, np.nan, dtype=dtype)
    out = storage[1:] if misaligned else storage[:-1]
    out = out.reshape(shape)
    assert out.nbytes >= _kernels.STREAMED_OUT_BYTES
    result = call(x, t, out)
    assert np.shares_memory(result, out)
    # the sign of a NaN is whichever operand the compiler put first; the
    # soft-cap makes the row of -inf finite
    nan = np.isnan(expected)
    assert nan.any() != ("softcap" in name) and np.array_equal(np.isnan(out), nan), name
    same_bits(out[~nan], expected[~nan], name)


@pytest.mark.parametrize("transform", [{"softcap": 5.0}, {"temperature": 0.7}])
def test_half_logits_gradient_streamed_past_the_caches(simd_path, transform):
    # float16 rows converted, then transformed, into the thread's buffer; the
    # float32 gradient stored past the caches against one in fresh memory
    rng = np.random.default_rng(6)
    shape = streamed_shape(np.float32, 1000)
    x = (rng.standard_normal(shape) * 4).astype(np.float16)
    t = rng.integers(0, 1000, shape[0])
    t[::5] = -100
    fastce.set_result_cache_bytes(0)
    try:
        expected = fastce.cross_entropy_grad(x, t, **transform)
    finally:
        fastce.set_result_cache_bytes(None)
    out = np.full(shape, np.nan, np.float32)
    assert fastce.cross_entropy_grad(x, t, out=out, **transform) is out
    same_bits(out, expected, str(transform))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("in_place", [False, True])
def test_a_row_gives_the_bits_it_gives_alone(simd_path, name, dtype, in_place):
    # each row's output is written while the next row is summed; rows whose
    # maximum is infinite, or NaN, or -inf throughout sit between others
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((40, 1003)) * 4).astype(dtype)
    x[3, 7] = np.inf
    x[4, :] = -np.inf
    x[5, 500] = np.nan
    x[6, 1002] = 60.0
    x[-1, 0] = -np.inf
    func = getattr(fastce, name)
    alone = np.concatenate([func(x[k : k + 1]) for k in range(x.shape[0])])
    if in_place and dtype != np.float16:
        together = func(x, out=x)
    else:
        together = func(x)
    nan = np.isnan(alone)
    assert np.array_equal(np.isnan(together), nan)
    same_bits(together[~nan], alone[~nan], name)


STRIDED_CLASSES = {
    "reversed": lambda a: a[:, ::-1],
    "every other": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
    "every third, reversed": lambda a: np.repeat(a, 3, axis=1)[:, ::-3],
}


@pytest.mark.parametrize("view", STRIDED_CLASSES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_rows_of_strided_classes_give_the_bits_of_their_contiguous_copy(simd_path, view, dtype):
    # copied into the thread's buffer for the vector kernels, as a contiguous row is read
    rng = np.random.default_rng(8)
    x = STRIDED_CLASSES[view]((rng.standard_normal((300, 1003)) * 4).astype(dtype))
    assert x.strides[1] not in (0, x.itemsize)
    t = targets(rng, x, 1)
    copy = np.ascontiguousarray(x)
    want = everything(copy, t, 1, 2)
    got = everything(x, t, 1, 2)
    for name in want:
        same_bits(got[name], want[name], name)
    # under a temperature, which the row kernels apply as they read the rows
    for options in ({"temperature": 0.7}, {"temperature": 0.7, "softcap": 5.0}):
        for a, b in zip(
            fastce.cross_entropy_with_grad(x, t, return_lse=True, **options),
            fastce.cross_entropy_with_grad(copy, t, return_lse=True, **options),
        ):
            same_bits(a, b, f"cross_entropy_with_grad {options}")
        r = fastce.evaluate(x, t, per_sample=True, **options)
        w = fastce.evaluate(copy, t, per_sample=True, **options)
        same_bits(r.loss, w.loss, f"evaluate {options}")
        same_bits(r.per_sample.entropy, w.per_sample.entropy, f"entropy {options}")


@pytest.mark.parametrize("stride", [(1 << 27) - 1, (1 << 27) + 16])
def test_rows_of_few_classes_far_apart(simd_path, stride, tmp_path):
    # rows of few classes are gathered into tiles, a class's lanes in one
    # instruction where the ISA has one, whose 32-bit offsets reach 16 rows
    # of up to 2^27 elements; rows farther apart are copied element by
    # element (a sparse file holds them)
    n, C = 17, 10  # a whole vector of rows and a tail
    big = np.memmap(tmp_path / "rows.bin", dtype=np.float32, mode="w+", shape=(n, stride))
    rng = np.random.default_rng(5)
    values = rng.standard_normal((n, C), dtype=np.float32)
    big[:, :C] = values
    t = rng.integers(0, C, n)
    want = fastce.cross_entropy_with_grad(values, t, reduction="none")
    got = fastce.cross_entropy_with_grad(big[:, :C], t, reduction="none")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    del big
