"""The kernels allocate no N x C temporary: what a call allocates is its result."""

import numpy as np
import pytest
from memory_gauge import peak_bytes

import fastce

SHAPES = [((4096, 1000), 1), ((8, 21, 64, 64), 1), ((4, 64, 2000), -1), ((20000, 10), 1)]


def inputs(shape, axis, dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    ax = axis % len(shape)
    t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1 :])
    return x, t


@pytest.mark.parametrize("shape, axis", SHAPES)
def test_forward_allocates_no_n_by_c_temporary(shape, axis):
    x, t = inputs(shape, axis)
    budget = x.nbytes // 100
    assert peak_bytes(lambda: fastce.cross_entropy(x, t, axis=axis)) < budget
    assert peak_bytes(lambda: fastce.cross_entropy(x, t, axis=axis, label_smoothing=0.1)) < budget
    assert peak_bytes(lambda: fastce.logsumexp(x, axis=axis)) < budget + x.nbytes // x.shape[axis]


@pytest.mark.parametrize("shape, axis", SHAPES)
def test_in_place_gradient_allocates_nothing_of_size(shape, axis):
    x, t = inputs(shape, axis)
    assert peak_bytes(lambda: fastce.cross_entropy_with_grad(x, t, axis=axis, out=x)) < 64 * 1024
    assert peak_bytes(lambda: fastce.log_softmax(x, axis=axis, out=x)) < 64 * 1024


@pytest.mark.parametrize("shape, axis", SHAPES)
def test_gradient_allocates_only_its_result(shape, axis):
    x, t = inputs(shape, axis)
    peak = peak_bytes(lambda: fastce.cross_entropy_with_grad(x, t, axis=axis))
    assert x.nbytes <= peak < x.nbytes + 64 * 1024
