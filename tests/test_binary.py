"""The binary losses and their gradients: vectorised kernels on every vector
path, held to the float64 twin, to torch's autograd and to finite differences."""

import itertools

import numpy as np
import pytest

import fastce
from fastce import _kernels, reference

FLOATS = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=3e-6, atol=1e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}
# (shape, weight shape, pos_weight shape): factors per element, per class and broadcast
LAYOUTS = [
    ((37, 53), None, None),
    ((37, 53), (53,), (53,)),
    ((37, 53), (37, 53), (37, 1)),
    ((2, 3, 70), (3, 1), (70,)),
    ((1000,), (1000,), None),
    ((5, 1), (1,), (1,)),
    ((), None, ()),
]


def make_binary_case(shape, w_shape, pw_shape, dtype, seed=0, probs=False):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 6).astype(dtype)
    if probs:
        x = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(dtype)
    y = rng.random(shape).astype(dtype)
    w = None if w_shape is None else (rng.random(w_shape) * 2).astype(dtype)
    pw = None if pw_shape is None else (rng.random(pw_shape) * 3).astype(dtype)
    return x, y, w, pw


def close(got, want, dtype):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, **TOL[dtype])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_with_logits_matches_the_twin_on_every_path(simd_path, layout, dtype):
    shape, w_shape, pw_shape = layout
    x, y, w, pw = make_binary_case(shape, w_shape, pw_shape, dtype)
    for reduction in ("none", "mean", "sum"):
        kw = dict(pos_weight=pw, reduction=reduction)
        loss, grad = fastce.binary_cross_entropy_with_logits_with_grad(x, y, w, **kw)
        want_loss, want_grad = reference.binary_cross_entropy_with_logits_with_grad(x, y, w, **kw)
        close(loss, want_loss, dtype)
        close(grad, want_grad, dtype)
        assert grad.dtype == dtype and np.asarray(loss).dtype == dtype
        assert_bits(loss, fastce.binary_cross_entropy_with_logits(x, y, w, **kw))
        assert_bits(grad, fastce.binary_cross_entropy_with_logits_grad(x, y, w, **kw))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_probabilities_match_the_twin_on_every_path(simd_path, layout, dtype):
    shape, w_shape, _ = layout
    p, y, w, _ = make_binary_case(shape, w_shape, None, dtype, probs=True)
    for reduction in ("none", "mean", "sum"):
        loss, grad = fastce.binary_cross_entropy_with_grad(p, y, w, reduction=reduction)
        want_loss, want_grad = reference.binary_cross_entropy_with_grad(
            p, y, w, reduction=reduction
        )
        close(loss, want_loss, dtype)
        close(grad, want_grad, dtype)
        assert_bits(loss, fastce.binary_cross_entropy(p, y, w, reduction=reduction))
        assert_bits(grad, fastce.binary_cross_entropy_grad(p, y, w, reduction=reduction))


def assert_bits(a, b):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("dtype", FLOATS)
def test_extreme_logits_keep_their_accuracy_and_special_values(simd_path, dtype):
    big = 80.0 if dtype == np.float32 else 700.0
    x = np.array(
        [0.0, 1e-30, 20.0, 30.0, -30.0, big, -big, 1e4, -1e4, np.inf, -np.inf, np.nan, 3.5, -3.5],
        dtype=dtype,
    )
    # where exp(-|x|) crosses sqrt(2) - 1, log(1 + e)'s two forms meet
    meet = np.float64(np.arcsinh(1.0)).astype(dtype)
    beside = [np.nextafter(meet, dtype(0)), np.nextafter(meet, dtype(2))]
    x = np.concatenate([x, [meet, -meet, *beside]])
    for target in (0.0, 1.0, 0.3):
        y = np.full_like(x, target)
        loss = fastce.binary_cross_entropy_with_logits(x, y, reduction="none")
        grad = fastce.binary_cross_entropy_with_logits_grad(x, y, reduction="none")
        want = reference.binary_cross_entropy_with_logits(x, y, reduction="none")
        want_grad = reference.binary_cross_entropy_with_logits_grad(x, y, reduction="none")
        np.testing.assert_array_equal(np.isnan(loss), np.isnan(want))
        finite = np.isfinite(want)
        # relative accuracy even where the loss is tiny (a confident, right logit)
        np.testing.assert_allclose(loss[finite], want[finite], rtol=TOL[dtype]["rtol"] * 4, atol=0)
        np.testing.assert_array_equal(
            loss[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)]
        )
        ok = np.isfinite(want_grad)
        np.testing.assert_allclose(grad[ok], want_grad[ok], **TOL[dtype])


@pytest.mark.parametrize("dtype", FLOATS)
def test_probabilities_at_the_edges(simd_path, dtype):
    tiny = np.finfo(dtype).tiny
    p = np.array(
        [
            0.0,
            1.0,
            tiny,
            tiny / 8,
            1e-30,
            1e-7,
            0.5,
            0.49999997,
            np.nextafter(dtype(1), dtype(0)),
            0.999,
            0.25,
            # where log(1 - p)'s three forms meet: 1 - sqrt(1/2) and 1/2
            0.29289321881345248,
            np.nextafter(dtype(0.29289321881345248), dtype(0)),
            np.nextafter(dtype(0.29289321881345248), dtype(1)),
            np.nextafter(dtype(0.5), dtype(1)),
        ],
        dtype=dtype,
    )
    for target in (0.0, 1.0, 0.7):
        y = np.full_like(p, target)
        loss, grad = fastce.binary_cross_entropy_with_grad(p, y, reduction="none")
        want_loss, want_grad = reference.binary_cross_entropy_with_grad(p, y, reduction="none")
        close(loss, want_loss, dtype)
        close(grad, want_grad, dtype)


@pytest.mark.parametrize("bad", [-0.1, 1.5, np.nan])
def test_targets_and_probabilities_outside_the_unit_interval_are_refused(bad):
    p = np.full(10, 0.5)
    y = np.full(10, 0.5)
    y[3] = bad
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]; got .* at flat position 3"):
        fastce.binary_cross_entropy(p, y)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        fastce.binary_cross_entropy_grad(p, y)
    p[4] = bad
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]; got .* at flat position 4"):
        fastce.binary_cross_entropy_with_grad(p, np.full(10, 0.5))


def test_grad_output_and_out():
    x, y, w, pw = make_binary_case((40, 30), (30,), (30,), np.float64, seed=3)
    go = np.random.default_rng(4).standard_normal((40, 30))
    got = fastce.binary_cross_entropy_with_logits_grad(
        x, y, w, pos_weight=pw, reduction="none", grad_output=go
    )
    want = reference.binary_cross_entropy_with_logits_grad(
        x, y, w, pos_weight=pw, reduction="none", grad_output=go
    )
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    got = fastce.binary_cross_entropy_with_logits_grad(x, y, w, pos_weight=pw, grad_output=2.5)
    want = reference.binary_cross_entropy_with_logits_grad(x, y, w, pos_weight=pw, grad_output=2.5)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    # in place
    xc = x.copy()
    loss, grad = fastce.binary_cross_entropy_with_logits_with_grad(xc, y, w, pos_weight=pw, out=xc)
    assert grad is xc
    np.testing.assert_allclose(
        grad,
        reference.binary_cross_entropy_with_logits_grad(x, y, w, pos_weight=pw),
        rtol=1e-13,
        atol=1e-15,
    )
    # a strided out, and an out that is the target itself
    out = np.empty((30, 40)).T
    assert fastce.binary_cross_entropy_grad(np.full((40, 30), 0.3), y, out=out) is out
    np.testing.assert_allclose(out, reference.binary_cross_entropy_grad(np.full((40, 30), 0.3), y))
    yc = y.copy()
    got = fastce.binary_cross_entropy_with_logits_grad(x, yc, out=yc)
    np.testing.assert_allclose(
        got, reference.binary_cross_entropy_with_logits_grad(x, y), rtol=1e-13, atol=1e-15
    )
    with pytest.raises(ValueError, match="grad_output must be a scalar or have the per-sample"):
        fastce.binary_cross_entropy_grad(
            np.full(3, 0.5), np.full(3, 0.5), reduction="none", grad_output=np.ones(4)
        )
    with pytest.raises(TypeError, match="out must have dtype float64"):
        fastce.binary_cross_entropy_with_logits_grad(x, y, out=np.empty((40, 30), np.float32))


def test_a_failed_call_leaves_out_untouched():
    p = np.full(8, 0.5)
    out = np.full(8, 7.0)
    with pytest.raises(ValueError):
        fastce.binary_cross_entropy_grad(p, np.full(8, 2.0), out=out)
    assert (out == 7.0).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_any_thread_count_gives_the_same_bits(dtype):
    x, y, w, pw = make_binary_case((300, 999), (999,), (999,), dtype, seed=5)
    runs = [
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, w, pos_weight=pw, num_threads=n)
        for n in (1, 2, 8)
    ]
    for loss, grad in runs[1:]:
        assert_bits(loss, runs[0][0])
        assert_bits(grad, runs[0][1])
    p = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(dtype)
    sums = [fastce.binary_cross_entropy(p, y, w, num_threads=n) for n in (1, 2, 8)]
    assert_bits(sums[0], sums[1])
    assert_bits(sums[0], sums[2])


def test_half_precision_is_computed_in_float32():
    x, y, w, _ = make_binary_case((20, 30), (30,), None, np.float32, seed=6)
    for half in (np.float16,):
        loss, grad = fastce.binary_cross_entropy_with_logits_with_grad(x.astype(half), y, w)
        want, want_grad = fastce.binary_cross_entropy_with_logits_with_grad(
            x.astype(half).astype(np.float32), y, w
        )
        assert loss.dtype == np.float32 and grad.dtype == np.float32
        assert_bits(loss, want)
        assert_bits(grad, want_grad)


def test_finite_differences():
    x, y, w, pw = make_binary_case((6, 7), (7,), (7,), np.float64, seed=7)
    h = 1e-4
    grad = fastce.binary_cross_entropy_with_logits_grad(x, y, w, pos_weight=pw, reduction="sum")
    for i, j in itertools.product(range(6), range(7)):

        def f(v, i=i, j=j):
            xx = x.copy()
            xx[i, j] = v
            return fastce.binary_cross_entropy_with_logits(xx, y, w, pos_weight=pw, reduction="sum")

        v = x[i, j]
        fd = (-f(v + 2 * h) + 8 * f(v + h) - 8 * f(v - h) + f(v - 2 * h)) / (12 * h)
        assert abs(fd - grad[i, j]) <= 1e-8 * max(1.0, abs(fd))
    p = np.clip(1 / (1 + np.exp(-x)), 0.05, 0.95)
    grad = fastce.binary_cross_entropy_grad(p, y, w, reduction="sum")
    h = 1e-6
    for i, j in itertools.product(range(6), range(7)):

        def g(v, i=i, j=j):
            pp = p.copy()
            pp[i, j] = v
            return fastce.binary_cross_entropy(pp, y, w, reduction="sum")

        v = p[i, j]
        fd = (-g(v + 2 * h) + 8 * g(v + h) - 8 * g(v - h) + g(v - 2 * h)) / (12 * h)
        assert abs(fd - grad[i, j]) <= 1e-7 * max(1.0, abs(fd))


def test_gradients_match_torch_autograd():
    # torch computes in float64 here: its float32 results carry their own rounding
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def t64(a):
        return torch.tensor(a.astype(np.float64))

    for dtype in FLOATS:
        x, y, w, pw = make_binary_case((64, 33), (33,), (33,), dtype, seed=8)
        p = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(dtype)
        go = np.random.default_rng(9).standard_normal(x.shape).astype(dtype)
        for reduction in ("mean", "sum", "none"):
            g = go if reduction == "none" else 1.0
            tx = t64(x).requires_grad_()
            loss = F.binary_cross_entropy_with_logits(
                tx, t64(y), t64(w), pos_weight=t64(pw), reduction=reduction
            )
            (loss * t64(go)).sum().backward() if reduction == "none" else loss.backward()
            got_loss, got = fastce.binary_cross_entropy_with_logits_with_grad(
                x, y, w, pos_weight=pw, reduction=reduction, grad_output=g
            )
            close(got_loss, loss.detach().numpy(), dtype)
            close(got, tx.grad.numpy(), dtype)
            tp = t64(p).requires_grad_()
            loss = F.binary_cross_entropy(tp, t64(y), t64(w), reduction=reduction)
            (loss * t64(go)).sum().backward() if reduction == "none" else loss.backward()
            got_loss, got = fastce.binary_cross_entropy_with_grad(
                p, y, w, reduction=reduction, grad_output=g
            )
            close(got_loss, loss.detach().numpy(), dtype)
            close(got, tp.grad.numpy(), dtype)


def test_torch_refuses_targets_outside_the_unit_interval_too():
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError):
        torch.nn.functional.binary_cross_entropy(
            torch.full((3,), 0.5), torch.tensor([0.5, 1.5, 0.0])
        )


@pytest.mark.parametrize("dtype", FLOATS)
def test_the_unit_interval_check_finds_the_first_bad_value_on_every_path(simd_path, dtype):
    for n in (1, 7, 16, 33, 70, 40000):
        for where in sorted({0, n // 3, n - 1}):
            for bad in (-1e-30, 1.0000001, np.nan, np.inf):
                x = np.full(n, 0.5, dtype=dtype)
                x[where] = bad
                if x[where] == 1.0:  # rounded back into the interval
                    continue
                assert _kernels.first_outside_unit(x) == where
                if where + 1 < n:  # a later bad value does not move the first
                    x[n - 1] = np.nan
                    assert _kernels.first_outside_unit(x) == where
            assert _kernels.first_outside_unit(np.full(n, 1.0, dtype=dtype)) == -1


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("scale", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("logits", [True, False])
def test_infinite_and_nan_grad_output_scale_the_exact_coefficients(reduction, scale, logits):
    # an infinite scale meets no coefficient of 0 that is not there: +-inf
    # wherever the derivative is not 0, with its sign
    x = np.array([[0.0, 2.0, -30.0, 10.0], [1.0, -1.0, 0.5, 3.0]])
    y = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 1.0, 0.0]])
    if logits:
        got_f, ref_f = (
            fastce.binary_cross_entropy_with_logits_grad,
            reference.binary_cross_entropy_with_logits_grad,
        )
        a = x
    else:
        a = 1 / (1 + np.exp(-x[:, :3]))
        y = y[:, :3]
        got_f, ref_f = fastce.binary_cross_entropy_grad, reference.binary_cross_entropy_grad
    go = np.full(a.shape, scale) if reduction == "none" else scale
    got = got_f(a, y, reduction=reduction, grad_output=go)
    unit = ref_f(
        a, y, reduction=reduction, grad_output=np.ones(a.shape) if reduction == "none" else 1.0
    )
    assert (unit != 0).all()
    with np.errstate(invalid="ignore"):
        want = unit * scale
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
