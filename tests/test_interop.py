"""Inputs users hold: torch tensors, JAX arrays, bfloat16 and every integer target dtype."""

import tracemalloc

import numpy as np
import pytest

import fastce
from fastce import reference

rng = np.random.default_rng(11)
X = rng.standard_normal((512, 300)).astype(np.float32)
T = rng.integers(0, 300, 512)


def peak_bytes(call):
    call()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


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
    np.testing.assert_array_equal(fastce.cross_entropy(xj, jnp.asarray(T.astype(np.int32))),
                                  fastce.cross_entropy(X, T))
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


def test_bfloat16_logits_are_computed_in_float32():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    xb = X.astype(ml_dtypes.bfloat16)
    as_float = xb.astype(np.float32)
    loss = fastce.cross_entropy(xb, T, reduction="none")
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss, reference.cross_entropy(as_float, T, reduction="none"),
                               rtol=1e-5)
    np.testing.assert_allclose(fastce.softmax(xb), reference.softmax(as_float), rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64,
                                   np.uint8, np.uint16, np.uint32, np.uint64])
def test_every_integer_target_dtype(dtype):
    x = rng.standard_normal((64, 100)).astype(np.float32)
    t = rng.integers(0, 100, 64).astype(dtype)
    want = reference.cross_entropy(x, t.astype(np.int64), reduction="none")
    np.testing.assert_allclose(fastce.cross_entropy(x, t, reduction="none"), want, rtol=1e-5)
    np.testing.assert_allclose(fastce.nll_loss(fastce.log_softmax(x), t, reduction="none"), want,
                               rtol=1e-5)


HALF_CASES = [((1000, 1000), 1), ((3, 40, 50, 60), 1), ((200, 3, 30000), 1), ((64, 5000), 0)]


@pytest.mark.parametrize("shape, axis", HALF_CASES)
def test_float16_runs_in_float32_blocks(shape, axis):
    # float16 logits are converted a block at a time; every per-sample value
    # equals the float32 computation on the converted array exactly
    x16 = rng.standard_normal(shape).astype(np.float16)
    if axis == 0:
        x16 = np.asfortranarray(x16)
    x32 = x16.astype(np.float32)
    t_shape = shape[:axis] + shape[axis + 1:]
    t = rng.integers(0, shape[axis], t_shape)
    go = rng.standard_normal(t_shape)
    for reduction, grad_output in (("none", go), ("mean", 1.5), ("sum", 1.0)):
        loss16, grad16 = fastce.cross_entropy_with_grad(
            x16, t, reduction=reduction, grad_output=grad_output, axis=axis)
        loss32, grad32 = fastce.cross_entropy_with_grad(
            x32, t, reduction=reduction, grad_output=grad_output, axis=axis)
        assert grad16.dtype == np.float32 and np.asarray(loss16).dtype == np.float32
        np.testing.assert_array_equal(grad16, grad32)
        if reduction == "none":
            np.testing.assert_array_equal(loss16, loss32)
        else:
            np.testing.assert_allclose(loss16, loss32, rtol=1e-6)
    np.testing.assert_array_equal(fastce.log_softmax(x16, axis=axis),
                                  fastce.log_softmax(x32, axis=axis))
    np.testing.assert_array_equal(fastce.logsumexp(x16, axis=axis),
                                  fastce.logsumexp(x32, axis=axis))
    np.testing.assert_array_equal(
        fastce.nll_loss(x16, t, axis=axis, reduction="none"),
        fastce.nll_loss(x32, t, axis=axis, reduction="none"))


def test_float16_is_never_converted_whole():
    x16 = rng.standard_normal((2000, 1000)).astype(np.float16)
    t = rng.integers(0, 1000, 2000)
    full_copy = x16.size * 4
    assert peak_bytes(lambda: fastce.cross_entropy(x16, t)) < full_copy // 3
    assert peak_bytes(lambda: fastce.logsumexp(x16)) < full_copy // 3


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64])
def test_integer_targets_are_read_without_conversion(dtype):
    x = rng.standard_normal((200_000, 4)).astype(np.float32)
    t = rng.integers(0, 4, 200_000).astype(dtype)
    assert peak_bytes(lambda: fastce.cross_entropy(x, t)) < 64 * 1024
    assert peak_bytes(lambda: fastce.nll_loss(x, t)) < 64 * 1024
