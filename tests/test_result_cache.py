"""The memory of freed large results, kept for the next result.

A result of at least ``KEPT_RESULT_MIN_BYTES`` is allocated through fastce's
NumPy memory handler; when NumPy frees it, the memory is kept (up to
``get_result_cache_bytes()``) and the next result of about that size takes
it.  The kept memory holds the old result's values: every function that
writes a result must write all of it, which these tests check by planting
NaN there first.
"""

import pickle
import threading

import numpy as np
import pytest

import fastce
from fastce import _kernels

handler_name = np.lib.get_handler_name if hasattr(np.lib, "get_handler_name") else None
if handler_name is None:
    from numpy._core.multiarray import get_handler_name as handler_name

MIN_BYTES = _kernels.KEPT_RESULT_MIN_BYTES
# (rows, classes) of float32 results of just over the smallest kept size
SHAPE = (MIN_BYTES // (4 * 1000) + 3, 1000)


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with nothing kept and the default limit, and leaves so."""
    fastce.set_result_cache_bytes(0)
    fastce.set_result_cache_bytes(None)
    yield
    fastce.set_result_cache_bytes(0)
    fastce.set_result_cache_bytes(None)


def held():
    return _kernels.kept_result_bytes()[0]


def plant_nan(shape, dtype):
    """Leaves a freed result of ``shape`` and ``dtype`` full of NaN in the cache."""
    r = fastce.softmax(np.zeros(shape, dtype))
    r.fill(np.nan)
    address = r.ctypes.data
    del r
    assert held() >= np.prod(shape) * np.dtype(dtype).itemsize
    return address


def logits_and_targets(shape=SHAPE, dtype=np.float32):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::7] = -100
    return x, t


def misaligned_like(x):
    """An array of ``x``'s shape and dtype one byte off its dtype's alignment."""
    return np.empty(x.nbytes + 1, np.uint8)[1:].view(x.dtype).reshape(x.shape)


def big_results(x, t):
    """Every result a call allocates at the logits' size, by name."""
    probs = fastce.softmax(x)
    y = (x > 0).astype(x.dtype)
    bce_grad = fastce.binary_cross_entropy_with_logits_grad(x, y)
    return {
        "softmax": lambda: fastce.softmax(x),
        "log_softmax": lambda: fastce.log_softmax(x),
        "log_softmax, axis 0": lambda: fastce.log_softmax(x, axis=0),
        "cross_entropy_grad": lambda: fastce.cross_entropy_grad(x, t),
        "cross_entropy_grad, smoothed, summed": lambda: fastce.cross_entropy_grad(
            x, t, label_smoothing=0.2, reduction="sum"
        ),
        "cross_entropy_grad, probabilities": lambda: fastce.cross_entropy_grad(x, probs),
        "cross_entropy_with_grad, none": lambda: fastce.cross_entropy_with_grad(
            x, t, reduction="none"
        )[1],
        "cross_entropy_grad, column-major logits": lambda: fastce.cross_entropy_grad(
            np.asfortranarray(x), t
        ),
        "binary_cross_entropy_with_logits, none": lambda: fastce.binary_cross_entropy_with_logits(
            x, y, reduction="none"
        ),
        "binary_cross_entropy_with_logits_grad": lambda: (
            fastce.binary_cross_entropy_with_logits_grad(x, y)
        ),
        "binary_cross_entropy, none": lambda: fastce.binary_cross_entropy(
            probs, y, reduction="none"
        ),
        "binary_cross_entropy_grad": lambda: fastce.binary_cross_entropy_grad(probs, y),
        "softmax into a misaligned out=": lambda: fastce.softmax(x, out=misaligned_like(x)),
        "bce grad into a reversed out=": lambda: fastce.binary_cross_entropy_with_logits_grad(
            x, y, out=np.empty_like(bce_grad)[::-1]
        ),
    }


@pytest.mark.parametrize("name", list(big_results(*logits_and_targets(SHAPE[:1] + (4,)))))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_result_in_kept_memory_has_the_bits_of_one_in_fresh_memory(simd_path, name, dtype):
    x, t = logits_and_targets(dtype=dtype)
    call = big_results(x, t)[name]
    fastce.set_result_cache_bytes(0)
    fresh = np.array(call())  # a copy: the result's own memory is not kept
    fastce.set_result_cache_bytes(None)
    plant_nan(x.shape, dtype)
    kept = call()
    if not name.endswith("out="):
        assert held() == 0, name  # the call's result took the planted memory
    # else the call wrote a buffer in the planted memory, copied it into out=
    # and freed it
    assert fresh.dtype == kept.dtype and fresh.shape == kept.shape
    np.testing.assert_array_equal(np.isnan(kept), np.isnan(fresh), err_msg=name)
    assert kept.tobytes() == fresh.tobytes(), name


def test_a_freed_result_is_reused_by_the_next_of_its_size():
    x, _ = logits_and_targets()
    first = fastce.softmax(x)
    address = first.ctypes.data
    assert handler_name(first) == "fastce_result_pool"
    del first
    assert held() >= x.nbytes
    second = fastce.log_softmax(x)
    assert second.ctypes.data == address
    assert held() == 0
    np.testing.assert_allclose(second, np.log(fastce.softmax(x)), rtol=1e-5, atol=1e-6)


def test_a_result_smaller_than_the_kept_size_is_an_array_as_numpy_makes_it():
    x = np.zeros((10, 10), np.float32)
    assert handler_name(fastce.softmax(x)) == handler_name(np.empty(3))
    # and the handler is NumPy's again once a call has made its result
    fastce.softmax(np.zeros(SHAPE, np.float32))
    assert handler_name(np.empty(MIN_BYTES)) != "fastce_result_pool"


def test_a_result_twice_the_size_asked_or_more_is_not_taken():
    big = fastce.softmax(np.zeros((2 * SHAPE[0] + 2, SHAPE[1]), np.float32))
    address = big.ctypes.data
    del big
    small = fastce.softmax(np.zeros(SHAPE, np.float32))
    assert small.ctypes.data != address
    assert held() > 0  # the large block waits for a result of its size


def test_memory_of_a_live_view_is_not_reused():
    x, _ = logits_and_targets()
    result = fastce.softmax(x)
    view = result[5:]
    expected = view.copy()
    del result
    assert held() == 0
    again = fastce.softmax(x * 2)
    assert not np.shares_memory(again, view)
    np.testing.assert_array_equal(view, expected)
    del view
    assert held() >= x.nbytes


def test_results_own_their_memory_and_behave_as_any_array():
    x, _ = logits_and_targets()
    result = fastce.softmax(x)
    assert result.flags.owndata and result.base is None and result.flags.writeable
    copy = pickle.loads(pickle.dumps(result))
    np.testing.assert_array_equal(copy, result)
    expected = result.ravel()[: x.size // 2].copy()
    # resizing in place moves the data through the handler's realloc
    result.resize((x.size // 2,), refcheck=False)
    np.testing.assert_array_equal(result, expected)
    result.resize((2 * x.size,), refcheck=False)
    np.testing.assert_array_equal(result[: x.size // 2], expected)
    assert result[x.size // 2 :].shape == (2 * x.size - x.size // 2,)


def test_the_limit_bounds_what_is_kept_and_zero_keeps_nothing():
    x, _ = logits_and_targets()
    results = [fastce.softmax(x + k) for k in range(4)]
    limit = 2 * x.nbytes + 1024
    fastce.set_result_cache_bytes(limit)
    del results
    assert x.nbytes <= held() <= limit
    fastce.set_result_cache_bytes(0)
    assert held() == 0
    del_me = fastce.softmax(x)
    del del_me
    assert held() == 0
    assert fastce.get_result_cache_bytes() == 0
    fastce.set_result_cache_bytes(None)
    assert fastce.get_result_cache_bytes() == _kernels.KEPT_RESULT_DEFAULT_LIMIT
    assert fastce.show_config()["result_cache_bytes"] == _kernels.KEPT_RESULT_DEFAULT_LIMIT


@pytest.mark.parametrize(
    "value, error",
    [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("512", TypeError)],
)
def test_a_bad_limit_is_refused(value, error):
    with pytest.raises(error, match="n_bytes"):
        fastce.set_result_cache_bytes(value)
    assert fastce.get_result_cache_bytes() == _kernels.KEPT_RESULT_DEFAULT_LIMIT


def test_results_made_and_freed_by_many_threads_stay_right():
    x, _ = logits_and_targets()
    expected = fastce.softmax(x).copy()
    failures = []

    def work(k):
        for _ in range(6):
            result = fastce.softmax(x, num_threads=1)
            if result.tobytes() != expected.tobytes():
                failures.append(k)
            result.fill(np.nan)  # planted for whichever call takes this memory next

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_a_loop_that_rebinds_its_result_takes_turns_with_two_blocks():
    # `p = softmax(x)` frees the previous p only after the new one is made
    rng = np.random.default_rng(8)
    addresses = []
    for _ in range(6):
        p = fastce.softmax(rng.standard_normal(SHAPE).astype(np.float32))
        addresses.append(p.ctypes.data)
    assert len(set(addresses)) == 2
    assert addresses[2:] == addresses[:2] * 2
