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
