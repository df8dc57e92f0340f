"""Inputs users hold: torch tensors, JAX arrays, bfloat16 and every integer target dtype."""

import itertools

import numpy as np
import pytest
from cases import arrange
from memory_gauge import peak_bytes

import fastce
from fastce import reference

rng = np.random.default_rng(11)
X = rng.standard_normal((512, 300)).astype(np.float32)
T = rng.integers(0, 300, 512)


def test_torch_tensors_are_read_in_place():
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(X.copy())
    tt = torch.from_numpy(T)
    np.testing.assert_array_equal(fastce.cross_entropy(xt, tt), fastce.cross_entropy(X, T))
    assert peak_bytes(lambda: fastce.cross_entropy(xt, tt)) < X.nbytes // 50
    # the in-place gradient lands in the tensor's own memory
    grad_view = xt.numpy()
    loss, grad = fastce.cross_entropy_with_grad(grad_view, tt, out=grad_view)
    np.testing.assert_array_equal(xt.numpy(), fastce.cross_entropy_grad(X, T))


def test_jax_arrays_are_read_in_place():
    jnp = pytest.importorskip("jax.numpy")
    xj = jnp.asarray(X)
    np.testing.assert_array_equal(
        fastce.cross_entropy(xj, jnp.asarray(T.astype(np.int32))), fastce.cross_entropy(X, T)
    )
    assert peak_bytes(lambda: fastce.cross_entropy(xj, T)) < X.nbytes // 50


class DLPackOnly:
    """An exporter with nothing but the DLPack protocol."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_dlpack_exporters_are_read_in_place():
    holder = DLPackOnly(X)
    np.testing.assert_array_equal(fastce.cross_entropy(holder, T), fastce.cross_entropy(X, T))
    assert peak_bytes(lambda: fastce.cross_entropy(holder, T)) < X.nbytes // 50


def bfloat16():
    """ml_dtypes' bfloat16 (JAX's), or a skip where ml_dtypes is not installed."""
    return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)


def half_dtype(name):
    return bfloat16() if name == "bfloat16" else np.dtype(name)


# bfloat16 values are exact in float64 and computed in float32, so fastce
# meets the float64 reference to float32's tolerance: rtol, and an atol
# scaled by the largest magnitude
BF16_RTOL, BF16_ATOL = 1e-5, 1e-6
# logits shape, class axis, layout: the class axis last, first, in the
# middle, and strided
BF16_GEOMETRIES = [
    ((64, 300), -1, "C"),
    ((300, 64), 0, "F"),
    ((4, 30, 7, 9), 1, "C"),
    ((2, 11, 33), 1, "strided"),
    ((30,), 0, "C"),
]
BF16_OPTIONS = [
    {},
    {"weight": True},
    {"ignore_index": 3},
    {"weight": True, "ignore_index": -100, "label_smoothing": 0.2},
    {"prob": True},
    {"prob": True, "weight": True, "label_smoothing": 0.1},
]


def assert_near_reference(got, want, msg):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape, msg)
    finite = np.abs(want[np.isfinite(want)])
    scale = float(finite.max()) if finite.size else 1.0
    np.testing.assert_allclose(
        got, want, rtol=BF16_RTOL, atol=BF16_ATOL * max(scale, 1.0), equal_nan=True, err_msg=msg
    )


def bf16_case(shape, axis, layout, option, seed):
    """bfloat16 logits (and weight and probabilities) in ``layout``, with the
    same values exactly in float64 for the reference."""
    g = np.random.default_rng(seed)
    bf = bfloat16()
    ax = axis % len(shape)
    n_classes = shape[ax]
    x = arrange((g.standard_normal(shape) * 4).astype(bf), layout)
    kwargs = {"axis": axis}
    if option.get("weight"):
        kwargs["weight"] = g.uniform(0.2, 2.0, n_classes).astype(bf)
    if option.get("prob"):
        p = g.random(shape)
        target = arrange((p / p.sum(axis=ax, keepdims=True)).astype(bf), layout)
    else:
        target = g.integers(0, n_classes, shape[:ax] + shape[ax + 1 :])
        if "ignore_index" in option:
            target.reshape(-1)[::4] = option["ignore_index"]
            kwargs["ignore_index"] = option["ignore_index"]
    if "label_smoothing" in option:
        kwargs["label_smoothing"] = option["label_smoothing"]
    exact = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    exact_target = target.astype(np.float64) if option.get("prob") else target
    return (x, target, kwargs), (x.astype(np.float64), exact_target, exact)


@pytest.mark.parametrize("shape, axis, layout", BF16_GEOMETRIES)
def test_bfloat16_cross_entropy_matches_the_float64_reference(shape, axis, layout):
    for i, option in enumerate(BF16_OPTIONS):
        (x, t, kw), (x64, t64, kw64) = bf16_case(shape, axis, layout, option, seed=i)
        for reduction in ("none", "mean", "sum"):
            msg = f"{shape} axis={axis} {layout} {option} {reduction}"
            loss_shape = np.shape(reference.cross_entropy(x64, t64, reduction=reduction, **kw64))
            go = np.random.default_rng(i).standard_normal(loss_shape) if loss_shape else 0.7
            loss, grad = fastce.cross_entropy_with_grad(
                x, t, reduction=reduction, grad_output=go, **kw
            )
            want_loss, want_grad = reference.cross_entropy_with_grad(
                x64, t64, reduction=reduction, grad_output=go, **kw64
            )
            assert_near_reference(loss, want_loss, msg)
            assert_near_reference(grad, want_grad, msg)
            assert_near_reference(
                fastce.cross_entropy(x, t, reduction=reduction, **kw), want_loss, msg
            )
            assert_near_reference(
                fastce.cross_entropy_grad(x, t, reduction=reduction, grad_output=go, **kw),
                want_grad,
                msg,
            )
            if not option.get("prob") and not kw.get("label_smoothing"):
                kw_nll = {k: v for k, v in kw.items() if k != "label_smoothing"}
                kw64_nll = {k: v for k, v in kw64.items() if k != "label_smoothing"}
                assert_near_reference(
                    fastce.nll_loss(x, t, reduction=reduction, **kw_nll),
                    reference.nll_loss(x64, t, reduction=reduction, **kw64_nll),
                    msg,
                )


@pytest.mark.parametrize("shape, axis, layout", BF16_GEOMETRIES)
def test_bfloat16_softmax_family_matches_the_float64_reference(shape, axis, layout):
    (x, _, _), (x64, _, _) = bf16_case(shape, axis, layout, {}, seed=7)
    for name in ("log_softmax", "softmax", "logsumexp"):
        assert_near_reference(
            getattr(fastce, name)(x, axis=axis), getattr(reference, name)(x64, axis=axis), name
        )
    out = np.empty(x.shape, np.float32)
    assert fastce.softmax(x, axis=axis, out=out) is out
    assert_near_reference(out, reference.softmax(x64, axis=axis), "softmax out=")


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_bfloat16_binary_cross_entropy_matches_the_float64_reference(layout):
    bf = bfloat16()
    g = np.random.default_rng(9)
    x = arrange((g.standard_normal((40, 6)) * 4).astype(bf), layout)
    y = arrange(g.random((40, 6)).astype(bf), layout)
    p = arrange(g.uniform(0.01, 0.99, (40, 6)).astype(bf), layout)
    w = g.uniform(0.5, 2.0, 6).astype(bf)
    pw = g.uniform(0.5, 3.0, 6).astype(bf)
    x64, y64, p64, w64, pw64 = (a.astype(np.float64) for a in (x, y, p, w, pw))
    for reduction in ("none", "mean", "sum"):
        assert_near_reference(
            fastce.binary_cross_entropy_with_logits(x, y, w, pos_weight=pw, reduction=reduction),
            reference.binary_cross_entropy_with_logits(
                x64, y64, w64, pos_weight=pw64, reduction=reduction
            ),
            reduction,
        )
        assert_near_reference(
            fastce.binary_cross_entropy(p, y, w, reduction=reduction),
            reference.binary_cross_entropy(p64, y64, w64, reduction=reduction),
            reduction,
        )


@pytest.mark.parametrize("shape, axis, layout", BF16_GEOMETRIES[:4])
def test_bfloat16_evaluation_is_cross_entropys(shape, axis, layout):
    option = {"weight": True, "ignore_index": 3, "label_smoothing": 0.1}
    (x, t, kw), (x64, _, kw64) = bf16_case(shape, axis, layout, option, seed=11)
    r = fastce.evaluate(x, t, per_sample=True, **kw)
    np.testing.assert_array_equal(
        r.per_sample.loss, fastce.cross_entropy(x, t, reduction="none", **kw)
    )
    np.testing.assert_allclose(r.loss, reference.cross_entropy(x64, t, **kw64), rtol=BF16_RTOL)
    acc = fastce.Accumulator(kw["weight"], ignore_index=3, label_smoothing=0.1, axis=axis)
    acc.update(x, t)
    np.testing.assert_allclose(acc.loss, r.loss, rtol=1e-12)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
)
def test_every_integer_target_dtype(dtype):
    x = rng.standard_normal((64, 100)).astype(np.float32)
    t = rng.integers(0, 100, 64).astype(dtype)
    want = reference.cross_entropy(x, t.astype(np.int64), reduction="none")
    np.testing.assert_allclose(fastce.cross_entropy(x, t, reduction="none"), want, rtol=1e-5)
    np.testing.assert_allclose(
        fastce.nll_loss(fastce.log_softmax(x), t, reduction="none"), want, rtol=1e-5
    )


# logits shape, class axis, layout: every way the blocks are cut
HALF_CASES = [
    ((1000, 1000), 1, "C"),
    ((3, 40, 50, 60), 1, "C"),
    ((200, 3, 30000), 1, "C"),
    ((64, 5000), 0, "F"),
    ((700, 2, 600), -1, "strided"),
]


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape, axis, layout", HALF_CASES)
def test_half_floats_run_in_float32_blocks(shape, axis, layout, name):
    # float16 and bfloat16 logits are converted a block at a time; every
    # per-sample value equals the float32 computation on the converted array
    # exactly
    xh = arrange(rng.standard_normal(shape).astype(half_dtype(name)), layout)
    x32 = xh.astype(np.float32)
    ax = axis % len(shape)
    t_shape = shape[:ax] + shape[ax + 1 :]
    t = rng.integers(0, shape[ax], t_shape)
    t.reshape(-1)[::7] = 2
    go = rng.standard_normal(t_shape)
    w = rng.uniform(0.5, 2.0, shape[ax])
    options = ({}, {"weight": w, "ignore_index": 2, "label_smoothing": 0.1})
    for kw, (reduction, grad_output) in itertools.product(
        options, (("none", go), ("mean", 1.5), ("sum", 1.0))
    ):
        lossh, gradh = fastce.cross_entropy_with_grad(
            xh, t, reduction=reduction, grad_output=grad_output, axis=axis, **kw
        )
        loss32, grad32 = fastce.cross_entropy_with_grad(
            x32, t, reduction=reduction, grad_output=grad_output, axis=axis, **kw
        )
        assert gradh.dtype == np.float32 and np.asarray(lossh).dtype == np.float32
        np.testing.assert_array_equal(gradh, grad32)
        if reduction == "none":
            np.testing.assert_array_equal(lossh, loss32)
        else:
            np.testing.assert_allclose(lossh, loss32, rtol=1e-6)
    for func in ("log_softmax", "softmax", "logsumexp"):
        np.testing.assert_array_equal(
            getattr(fastce, func)(xh, axis=axis),
            getattr(fastce, func)(x32, axis=axis),
            err_msg=func,
        )
    np.testing.assert_array_equal(
        fastce.nll_loss(xh, t, axis=axis, reduction="none"),
        fastce.nll_loss(x32, t, axis=axis, reduction="none"),
    )
    np.testing.assert_array_equal(
        fastce.evaluate(xh, t, axis=axis, per_sample=True).per_sample.loss,
        fastce.cross_entropy(x32, t, axis=axis, reduction="none"),
    )


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_floats_are_never_converted_whole(name):
    xh = rng.standard_normal((2000, 1000)).astype(half_dtype(name))
    t = rng.integers(0, 1000, 2000)
    full_copy = xh.size * 4
    assert peak_bytes(lambda: fastce.cross_entropy(xh, t)) < full_copy // 3
    assert peak_bytes(lambda: fastce.nll_loss(xh, t)) < full_copy // 3
    assert peak_bytes(lambda: fastce.logsumexp(xh)) < full_copy // 3
    assert peak_bytes(lambda: fastce.evaluate(xh, t)) < full_copy // 3
    # the gradient and the softmax are full-size float32 results, and no more
    assert peak_bytes(lambda: fastce.cross_entropy_with_grad(xh, t)) < full_copy * 4 // 3
    assert peak_bytes(lambda: fastce.softmax(xh)) < full_copy * 4 // 3


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64])
def test_integer_targets_are_read_without_conversion(dtype):
    x = rng.standard_normal((200_000, 4)).astype(np.float32)
    t = rng.integers(0, 4, 200_000).astype(dtype)
    assert peak_bytes(lambda: fastce.cross_entropy(x, t)) < 64 * 1024
    assert peak_bytes(lambda: fastce.nll_loss(x, t)) < 64 * 1024
