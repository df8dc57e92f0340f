"""``cross_entropy_grad`` against finite differences of ``cross_entropy``.

The derivative is estimated with the 4th-order central difference
``(-f(x + 2h) + 8 f(x + h) - 8 f(x - h) + f(x - 2h)) / (12 h)`` in float64, whose
truncation error (~h^4) and rounding error (~1e-16 / h) are both far below the
tolerance for h = 1e-3.  For ``reduction="none"`` the scalar differentiated is
``sum(grad_output * loss)``.
"""

import itertools

import cases
import numpy as np
import pytest
from cases import loss_shape
from numpy.testing import assert_allclose

import fastce

H = 1e-3
REDUCTIONS = ("none", "sum", "mean")


def numerical_gradient(f, x, h=H):
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):

        def at(delta, idx=idx):
            xd = x.copy()
            xd[idx] += delta
            return f(xd)

        grad[idx] = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
    return grad


# (logits shape, axis), the class axis in the middle included
GEOMETRIES = (((4, 5), None), ((5,), None), ((2, 5, 3), None), ((2, 3, 5), -1), ((3, 2, 4), 0))
OPTIONS = (
    dict(),
    dict(weight=True),
    dict(label_smoothing=0.2),
    dict(ignore_index=-100),
    dict(ignore_index=1, weight=True, label_smoothing=0.1),
    dict(prob=True),
    dict(prob=True, weight=True, label_smoothing=0.3),
)


def make_case(shape, axis, option, seed):
    return cases.make_case(np.random.default_rng(seed), shape, axis, np.float64, option)


CASES = [
    pytest.param(
        shape,
        axis,
        option,
        reduction,
        id=f"{shape}-axis{axis}-"
        f"{'-'.join(f'{k}{v}' for k, v in option.items()) or 'plain'}-{reduction}",
    )
    for (shape, axis), option, reduction in itertools.product(GEOMETRIES, OPTIONS, REDUCTIONS)
]


@pytest.mark.parametrize("shape, axis, option, reduction", CASES)
def test_grad_matches_finite_differences(shape, axis, option, reduction):
    x, target, weight, kwargs = make_case(shape, axis, option, 2024)
    rng = np.random.default_rng(1)
    if reduction == "none":
        go = rng.standard_normal(loss_shape(shape, axis))

        def f(z):
            loss = fastce.cross_entropy(z, target, weight, reduction="none", **kwargs)
            return float(np.sum(go * loss))
    else:
        go = 0.8

        def f(z):
            return go * float(
                fastce.cross_entropy(z, target, weight, reduction=reduction, **kwargs)
            )

    grad = fastce.cross_entropy_grad(
        x, target, weight, grad_output=go, reduction=reduction, **kwargs
    )
    expected = numerical_gradient(f, x)
    assert grad.shape == x.shape
    assert_allclose(grad, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignored_samples_have_zero_gradient(reduction):
    x, target, weight, kwargs = make_case(
        (6, 4), None, dict(ignore_index=-100, label_smoothing=0.2), 3
    )
    grad = fastce.cross_entropy_grad(x, target, weight, reduction=reduction, **kwargs)
    ignored = target == -100
    assert ignored.any() and not ignored.all()
    np.testing.assert_array_equal(grad[ignored], 0.0)
    assert (grad[~ignored] != 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "option", OPTIONS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()) or "plain"
)
def test_with_grad_is_bit_identical_to_separate_calls(option, reduction, dtype):
    for shape, axis in GEOMETRIES + (((64, 300), None), ((8, 40, 9), 1)):
        x, target, weight, kwargs = make_case(shape, axis, option, 5)
        x = x.astype(dtype)
        go = (
            np.random.default_rng(2).standard_normal(loss_shape(shape, axis))
            if reduction == "none"
            else 1.3
        )
        loss, grad = fastce.cross_entropy_with_grad(
            x, target, weight, grad_output=go, reduction=reduction, **kwargs
        )
        loss_alone = fastce.cross_entropy(x, target, weight, reduction=reduction, **kwargs)
        grad_alone = fastce.cross_entropy_grad(
            x, target, weight, grad_output=go, reduction=reduction, **kwargs
        )
        msg = f"{shape} axis={axis}"
        assert type(loss) is type(loss_alone), msg
        assert np.asarray(loss).dtype == np.asarray(loss_alone).dtype, msg
        assert np.asarray(loss).tobytes() == np.asarray(loss_alone).tobytes(), msg
        assert grad.dtype == grad_alone.dtype, msg
        assert grad.shape == grad_alone.shape, msg
        assert grad.tobytes() == grad_alone.tobytes(), msg


@pytest.mark.parametrize("layout", ["rows", "few classes", "tiles"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("scale", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("weighted", [False, True])
def test_infinite_and_nan_grad_output_give_torchs_gradient(layout, reduction, scale, weighted):
    # an infinite grad_output meets a coefficient of 0 only where torch's does
    # (the target's p_t - 1 cancels to inf - inf, an underflowed p is inf * 0)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    shape, axis = {"rows": ((6, 40), 1), "few classes": ((6, 3), 1), "tiles": ((2, 5, 70), 1)}[
        layout
    ]
    x = rng.standard_normal(shape) * 3
    x.reshape(-1)[::9] = -200.0  # probabilities that underflow to 0
    n_classes = shape[axis]
    t = rng.integers(0, n_classes, shape[:axis] + shape[axis + 1 :])
    t.reshape(-1)[::4] = -100
    w = rng.random(n_classes) + 0.5 if weighted else None
    xt = torch.tensor(x, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(
        xt, torch.tensor(t), weight=None if w is None else torch.tensor(w), reduction=reduction
    )
    loss.backward(torch.full_like(loss, scale))
    go = np.full(loss.shape, scale) if reduction == "none" else scale
    got = fastce.cross_entropy_grad(x, t, w, reduction=reduction, grad_output=go)
    want = xt.grad.numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert_allclose(got[finite], want[finite], rtol=1e-12, atol=0)
    assert np.array_equal(np.sign(got[np.isinf(got)]), np.sign(want[np.isinf(want)]))
