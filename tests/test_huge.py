"""Huge arrays: indexing is 64-bit everywhere.

One float32 array of ``(2**16 + 1, 2**15)`` logits, 2,147,516,416 elements
(8.6 GB): its last row starts at element 2**31 and its rows past 32,768 lie
beyond 2**32 bytes.  The same memory is read four ways:

* rows (class axis last, the row kernel), every row checked;
* columns (``axis=0``: 65,537 classes with a stride of 2**15 elements, the
  tile kernel), every column checked;
* one single row of 2**31 + 2**15 classes, with a target past 2**31;
* the gradient written in place (``out=logits``), checked at every target,
  through every row's sum, and in full around the 2**31 boundary.

The values make a float64 reference cheap without a float64 copy: row ``r``
is ``B[r % 1021] + s[r]``, with ``B`` 1021 random rows and ``s`` a per-row
shift, all multiples of 2**-10 small enough to be exact in float32.  1021 is
prime, so a row read from a wrapped 32-bit offset holds other values.
"""

import resource
import time

import numpy as np
import pytest

import fastce

R, C = 2**16 + 1, 2**15
K = 1021
BLOCK = 2048  # rows per block when filling and checking

pytestmark = pytest.mark.slow


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def logsumexp64(a, axis=-1):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


@pytest.fixture(scope="module")
def huge():
    if available_memory() < 11 * 2**30:
        pytest.skip("needs 11 GB of free memory for an 8.6 GB array")
    rng = np.random.default_rng(2024)
    base = (rng.integers(-8 * 1024, 8 * 1024, (K, C)) / 1024).astype(np.float32)
    shift = rng.integers(-64 * 1024, 64 * 1024, R) / 1024  # float64, exact in float32 sums
    x = np.empty((R, C), dtype=np.float32)
    for r0 in range(0, R, BLOCK):
        r1 = min(r0 + BLOCK, R)
        block = x[r0:r1]
        np.take(base, np.arange(r0, r1) % K, axis=0, out=block)
        block += shift[r0:r1, None].astype(np.float32)
    assert x.size > 2**31
    yield x, base.astype(np.float64), shift
    del x


def rows_of(r):
    return np.asarray(r) % K


def test_huge_arrays_give_the_reference_answer(huge, record_property):
    x, base, shift = huge
    started = time.perf_counter()
    rng = np.random.default_rng(7)
    lse_base = logsumexp64(base)  # (K,)
    row_lse = lse_base[rows_of(np.arange(R))] + shift  # every row's logsumexp

    # rows: the row kernel
    np.testing.assert_allclose(fastce.logsumexp(x), row_lse, rtol=0, atol=1e-4)
    t = rng.integers(0, C, R)
    t[-1] = C - 1  # the very last element of the array
    x_t = base[rows_of(np.arange(R)), t] + shift
    loss = row_lse - x_t
    np.testing.assert_allclose(
        fastce.cross_entropy(x, t, reduction="none"), loss, rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(fastce.cross_entropy(x, t, reduction="sum"), loss.sum(), rtol=1e-6)
    np.testing.assert_allclose(fastce.nll_loss(x, t, reduction="sum"), -x_t.sum(), rtol=1e-6)

    # columns: 65,537 classes on axis 0, the tile kernel.  Column j's sum of
    # exp is sum_k exp(B[k, j]) * S[k], with S[k] the sum of exp(s[r]) over
    # the rows r = k (mod K)
    weights = np.bincount(rows_of(np.arange(R)), weights=np.exp(shift), minlength=K)
    col_lse = np.log(weights @ np.exp(base))
    np.testing.assert_allclose(fastce.logsumexp(x, axis=0), col_lse, rtol=0, atol=1e-4)
    tc = rng.integers(0, R, C)
    tc[-1] = R - 1
    col_loss = col_lse - (base[rows_of(tc), np.arange(C)] + shift[tc])
    np.testing.assert_allclose(
        fastce.cross_entropy(x, tc, axis=0, reduction="none"), col_loss, rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(
        fastce.nll_loss(x, tc, axis=0, reduction="sum"),
        -(base[rows_of(tc), np.arange(C)] + shift[tc]).sum(),
        rtol=1e-6,
    )

    # one row of 2**31 + 2**15 classes, and a target past 2**31
    flat = x.reshape(1, -1)
    top = row_lse.max()
    all_lse = top + np.log(np.exp(row_lse - top).sum())
    np.testing.assert_allclose(fastce.logsumexp(flat), [all_lse], rtol=1e-6)
    far = np.array([2**31 + 12345])
    r_far, c_far = divmod(int(far[0]), C)
    np.testing.assert_allclose(
        fastce.cross_entropy(flat, far),
        all_lse - (base[r_far % K, c_far] + shift[r_far]),
        rtol=1e-5,
    )

    # the gradient in place: grad[r] = (softmax(B[r % K]) - onehot(t[r])) / R
    mean, grad = fastce.cross_entropy_with_grad(x, t, out=x)
    assert grad is x
    np.testing.assert_allclose(mean, loss.mean(), rtol=1e-6)
    probs = np.exp(base - lse_base[:, None])  # (K, C) softmax rows
    np.testing.assert_allclose(
        grad[np.arange(R), t] * R, probs[rows_of(np.arange(R)), t] - 1.0, rtol=0, atol=2e-6
    )
    row_sums = np.add.reduce(grad, axis=1, dtype=np.float64) * R
    np.testing.assert_allclose(row_sums, 0.0, atol=1e-4)
    boundary = 2**31 // C  # the row that starts at element 2**31 (the last one)
    check = 512
    for r0 in (0, 2**32 // (4 * C) - check // 2, boundary - check + 1):
        r = np.arange(r0, min(r0 + check, R))
        expected = probs[rows_of(r)]
        expected[np.arange(len(r)), t[r]] -= 1.0
        np.testing.assert_allclose(grad[r] * R, expected, rtol=0, atol=2e-6)

    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record_property("huge_elements", int(x.size))
    record_property("huge_seconds", round(seconds, 1))
    record_property("huge_peak_rss_gb", round(peak / 2**30, 2))
    print(
        f"{x.size:,} float32 logits ({x.nbytes / 1e9:.1f} GB): checked in {seconds:.0f} s "
        f"after the fill; peak resident set {peak / 2**30:.1f} GiB"
    )
