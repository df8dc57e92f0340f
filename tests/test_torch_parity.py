"""Parity with ``torch.nn.functional``: values, gradients and errors.

``fastce`` promises PyTorch's semantics: the same number to float tolerance,
the same gradient as autograd, and an error wherever PyTorch raises one.  The
one deliberate difference (a probability target of 0 at a ``-inf`` logit) has
its own test.
"""

import itertools
import warnings
import zlib

import cases
import numpy as np
import pytest
from cases import class_axis
from numpy.testing import assert_allclose

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastce  # noqa: E402

REDUCTIONS = ("none", "sum", "mean")


def tensor(a):
    return torch.from_numpy(np.array(a, order="C"))


def assert_matches(fast, expected, dtype, msg=""):
    fast = np.asarray(fast)
    expected = np.asarray(expected, dtype=np.float64)
    assert fast.shape == expected.shape, f"{fast.shape} != {expected.shape}: {msg}"
    if np.dtype(dtype) == np.float64:
        rtol, atol = 1e-10, 1e-12
    else:
        rtol, atol = 1e-5, 1e-6
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(finite.max()) if finite.size else 0.0
    assert_allclose(
        fast.astype(np.float64),
        expected,
        rtol=rtol,
        atol=atol * (scale if scale > 0 else 1.0),
        equal_nan=True,
        err_msg=msg,
    )


# --------------------------------------------------------------------------
# cross_entropy: values and gradients

# logits shape, axis (torch always has the class axis at 1, or 0 unbatched)
CE_GEOMETRIES = {
    "2d": ((13, 5), None),
    "unbatched": ((5,), None),
    "kdim": ((4, 6, 3, 2), None),
    "lm-axis-1": ((2, 3, 11), -1),
    "empty": ((0, 5), None),
}
CE_INDEX_OPTIONS = [
    dict(weight=w, ignore_index=ii, label_smoothing=ls)
    for w, ii, ls in itertools.product((False, True), (-100, 3), (0.0, 0.15))
]
CE_PROB_OPTIONS = [
    dict(weight=w, label_smoothing=ls, prob=True)
    for w, ls in itertools.product((False, True), (0.0, 0.15))
]


def option_id(option):
    parts = ["prob" if option.get("prob") else "index"]
    if option.get("weight"):
        parts.append("weight")
    if option.get("ignore_index", -100) != -100:
        parts.append(f"ignore{option['ignore_index']}")
    if option.get("label_smoothing"):
        parts.append(f"ls{option['label_smoothing']}")
    return "-".join(parts)


def make_case(geometry, option, dtype, seed):
    """The shared generator's case for one geometry: ``(logits, target, weight,
    ignore_index, label_smoothing, axis)``."""
    shape, axis = CE_GEOMETRIES[geometry]
    rng = np.random.default_rng(seed)
    x, target, weight, kwargs = cases.make_case(rng, shape, axis, dtype, option, scale=3.0)
    ignore_index = kwargs.get("ignore_index", -100)
    return x, target, weight, ignore_index, option["label_smoothing"], axis


def torch_cross_entropy(
    x, target, weight, ignore_index, label_smoothing, axis, reduction, grad_output=None
):
    """Loss (and, with ``grad_output``, the autograd gradient) from torch, with the
    class axis moved to where torch wants it."""
    xt = tensor(x).requires_grad_(grad_output is not None)
    moved = xt if axis is None else xt.movedim(axis, 1)
    tt = tensor(target)
    if axis is not None and target.dtype.kind == "f":
        tt = tt.movedim(axis, 1)
    kwargs = {} if target.dtype.kind == "f" else {"ignore_index": ignore_index}
    loss = F.cross_entropy(
        moved,
        tt,
        None if weight is None else tensor(weight).to(xt.dtype),
        reduction=reduction,
        label_smoothing=label_smoothing,
        **kwargs,
    )
    if grad_output is None:
        return loss.detach().numpy(), None
    loss.backward(torch.as_tensor(grad_output, dtype=loss.dtype).expand_as(loss))
    return loss.detach().numpy(), xt.grad.numpy()


CE_CASES = [
    pytest.param(g, o, r, id=f"{g}-{option_id(o)}-{r}")
    for g in CE_GEOMETRIES
    for o in CE_INDEX_OPTIONS + CE_PROB_OPTIONS
    for r in REDUCTIONS
]


@pytest.mark.parametrize("geometry, option, reduction", CE_CASES)
def test_cross_entropy_float64_value_and_grad(geometry, option, reduction):
    seed = zlib.crc32(f"{geometry}-{option_id(option)}-{reduction}".encode())
    x, target, weight, ignore_index, ls, axis = make_case(geometry, option, np.float64, seed)
    rng = np.random.default_rng(seed)
    if reduction == "none":
        loss_shape = list(x.shape)
        del loss_shape[class_axis(x.ndim, axis)]
        go = rng.standard_normal(loss_shape)
    else:
        go = 0.7
    want_loss, want_grad = torch_cross_entropy(
        x, target, weight, ignore_index, ls, axis, reduction, go
    )
    kwargs = dict(ignore_index=ignore_index, label_smoothing=ls, reduction=reduction, axis=axis)
    loss = fastce.cross_entropy(x, target, weight, **kwargs)
    assert_matches(loss, want_loss, np.float64)
    grad = fastce.cross_entropy_grad(x, target, weight, grad_output=go, **kwargs)
    assert_matches(grad, want_grad, np.float64)
    loss2, grad2 = fastce.cross_entropy_with_grad(x, target, weight, grad_output=go, **kwargs)
    assert_matches(loss2, want_loss, np.float64)
    assert_matches(grad2, want_grad, np.float64)


@pytest.mark.parametrize("geometry, option, reduction", CE_CASES)
def test_cross_entropy_float32_value(geometry, option, reduction):
    x, target, weight, ignore_index, ls, axis = make_case(geometry, option, np.float32, 99)
    w32 = None if weight is None else weight.astype(np.float32)
    want, _ = torch_cross_entropy(x, target, w32, ignore_index, ls, axis, reduction)
    loss = fastce.cross_entropy(
        x,
        target,
        w32,
        ignore_index=ignore_index,
        label_smoothing=ls,
        reduction=reduction,
        axis=axis,
    )
    assert np.asarray(loss).dtype == np.float32
    assert_matches(loss, want, np.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_float32_grad(reduction):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 10)).astype(np.float32)
    t = rng.integers(0, 10, 64)
    w = rng.uniform(0.5, 1.5, 10).astype(np.float32)
    xt = tensor(x).requires_grad_(True)
    loss = F.cross_entropy(xt, tensor(t), tensor(w), reduction=reduction, label_smoothing=0.1)
    go = rng.standard_normal(64).astype(np.float32) if reduction == "none" else 1.0
    loss.backward(torch.as_tensor(go).expand_as(loss))
    grad = fastce.cross_entropy_grad(
        x, t, w, grad_output=go, reduction=reduction, label_smoothing=0.1
    )
    assert grad.dtype == np.float32
    assert_matches(grad, xt.grad.numpy(), np.float32)


SPECIAL_ROWS = [
    ([np.inf, 1.0], 1),
    ([np.inf, 1.0], 0),
    ([1.0, -np.inf, 2.0], 0),
    ([1.0, -np.inf, 2.0], 1),
    ([-np.inf, -np.inf], 0),
    ([np.nan, 1.0], 1),
    ([5.0, 1.0, -3.0], -100),
]


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("row, target", SPECIAL_ROWS, ids=[f"{r}-t{t}" for r, t in SPECIAL_ROWS])
def test_cross_entropy_special_values(row, target, reduction):
    x = np.array([row, [0.5] * len(row)])
    t = np.array([target, 0])
    want_loss, want_grad = torch_cross_entropy(x, t, None, -100, 0.0, None, reduction, 1.0)
    loss, grad = fastce.cross_entropy_with_grad(x, t, reduction=reduction)
    assert_matches(loss, want_loss, np.float64)
    assert_matches(grad, want_grad, np.float64)


def test_ignored_nan_row_has_zero_gradient():
    """An ignored sample contributes exactly nothing, even with NaN logits: the
    loss agrees with torch, and the gradient is 0 where torch's autograd gives
    NaN (``0 * exp(nan)`` in its log_softmax backward)."""
    x = np.array([[np.nan, 1.0], [0.5, 0.5]])
    t = np.array([-100, 0])
    for reduction in REDUCTIONS:
        want_loss, want_grad = torch_cross_entropy(x, t, None, -100, 0.0, None, reduction, 1.0)
        loss, grad = fastce.cross_entropy_with_grad(x, t, reduction=reduction)
        assert_matches(loss, want_loss, np.float64)
        assert np.isnan(want_grad[0]).all()
        np.testing.assert_array_equal(grad[0], 0.0)
        assert_matches(grad[1], want_grad[1], np.float64)


def test_cross_entropy_all_ignored_and_empty():
    x = np.random.default_rng(2).standard_normal((3, 4))
    t = np.full(3, -100)
    want_loss, want_grad = torch_cross_entropy(x, t, None, -100, 0.0, None, "mean", 1.0)
    loss, grad = fastce.cross_entropy_with_grad(x, t)
    assert np.isnan(want_loss) and np.isnan(loss)
    assert_matches(grad, want_grad, np.float64)
    empty = np.zeros((0, 4))
    for reduction in ("mean", "sum"):
        want, _ = torch_cross_entropy(
            empty, np.zeros(0, np.int64), None, -100, 0.0, None, reduction
        )
        assert_matches(
            fastce.cross_entropy(empty, np.zeros(0, np.int64), reduction=reduction),
            want,
            np.float64,
        )


def test_cross_entropy_zero_weight_denominator_with_smoothing():
    x = np.random.default_rng(12).standard_normal((3, 4))
    t = np.zeros(3, np.int64)
    w = np.array([0.0, 1.0, 1.0, 1.0])
    want_loss, want_grad = torch_cross_entropy(x, t, w, -100, 0.1, None, "mean", 1.0)
    loss, grad = fastce.cross_entropy_with_grad(x, t, w, label_smoothing=0.1)
    assert np.isnan(want_loss) and np.isnan(loss)
    assert_matches(grad, want_grad, np.float64)


def test_cross_entropy_single_class():
    x = np.array([[1.5], [-2.0]])
    t = np.zeros(2, np.int64)
    want, _ = torch_cross_entropy(x, t, None, -100, 0.0, None, "mean")
    with pytest.warns(RuntimeWarning):
        got = fastce.cross_entropy(x, t)
    assert got == want == 0.0


def test_probability_target_zero_at_minus_inf_is_the_limit():
    """The one deliberate difference: torch gives NaN from ``0 * -inf``; fastce
    gives the limit, as scipy.special.xlogy."""
    x = np.array([[-np.inf, 1.0, 2.0], [0.3, 0.2, 0.1]])
    y = np.array([[0.0, 0.25, 0.75], [0.2, 0.3, 0.5]])
    torch_loss, _ = torch_cross_entropy(x, y, None, -100, 0.0, None, "none")
    assert np.isnan(torch_loss[0])
    loss, grad = fastce.cross_entropy_with_grad(x, y, reduction="none")
    finite = np.array([[1.0, 2.0], [0.3, 0.2]])  # row 0 without the -inf class
    logp = finite[0] - np.log(np.exp(finite[0]).sum())
    assert_allclose(loss[0], -(0.25 * logp[0] + 0.75 * logp[1]), rtol=1e-12)
    assert_matches(loss[1], torch_loss[1], np.float64)
    assert grad[0, 0] == 0.0
    p = np.exp(logp)
    assert_allclose(grad[0, 1:], p - [0.25, 0.75], rtol=1e-12)


def test_probability_target_ignores_ignore_index():
    """SPEC: with a probability target any ignore_index is accepted and has no
    effect (torch refuses a non-default one)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4))
    y = rng.dirichlet(np.ones(4), 5)
    want, _ = torch_cross_entropy(x, y, None, -100, 0.0, None, "mean")
    assert_matches(fastce.cross_entropy(x, y, ignore_index=1), want, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_tensors_are_accepted(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 5)).astype(dtype)
    t = rng.integers(0, 5, 6)
    want = F.cross_entropy(tensor(x), tensor(t)).numpy()
    assert_matches(fastce.cross_entropy(tensor(x), tensor(t)), want, dtype)
    assert_matches(fastce.log_softmax(tensor(x)), F.log_softmax(tensor(x), -1).numpy(), dtype)


# --------------------------------------------------------------------------
# CrossEntropyLoss


CLASS_OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none", ignore_index=2),
    dict(label_smoothing=0.2),
    dict(weight=True, reduction="mean"),
    dict(weight=True, label_smoothing=0.1, ignore_index=0),
]


@pytest.mark.parametrize(
    "option", CLASS_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_cross_entropy_loss_class(option):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 4, 3))
    t = rng.integers(0, 4, (7, 3))
    kwargs = dict(option)
    weight = rng.uniform(0.5, 2, 4) if kwargs.pop("weight", False) else None
    want = torch.nn.CrossEntropyLoss(None if weight is None else tensor(weight), **kwargs)(
        tensor(x), tensor(t)
    )
    got = fastce.CrossEntropyLoss(weight, **kwargs)(x, t)
    assert_matches(got, want.numpy(), np.float64)


# --------------------------------------------------------------------------
# nll_loss


NLL_CASES = [
    pytest.param(shape, w, ii, r, id=f"{shape}-w{int(w)}-ii{ii}-{r}")
    for shape in ((13, 5), (5,), (4, 6, 3, 2))
    for w in (False, True)
    for ii in (-100, 1)
    for r in REDUCTIONS
]


@pytest.mark.parametrize("shape, weighted, ignore_index, reduction", NLL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nll_loss(shape, weighted, ignore_index, reduction, dtype):
    rng = np.random.default_rng(6)
    C = shape[1] if len(shape) > 1 else shape[0]
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    lp = (
        F.log_softmax(tensor(rng.standard_normal(shape)), 1 if len(shape) > 1 else 0)
        .numpy()
        .astype(dtype)
    )
    t = np.asarray(rng.integers(0, C, tshape), dtype=np.int64)
    if ignore_index == -100 and t.ndim:
        t[rng.random(tshape) < 0.3] = -100
    w = rng.uniform(0.5, 2, C).astype(dtype) if weighted else None
    want = F.nll_loss(
        tensor(lp),
        tensor(t),
        None if w is None else tensor(w),
        ignore_index=ignore_index,
        reduction=reduction,
    )
    got = fastce.nll_loss(lp, t, w, ignore_index=ignore_index, reduction=reduction)
    assert_matches(got, want.numpy(), dtype)


# --------------------------------------------------------------------------
# softmax family


def softmax_input(shape, specials, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) * 4
    if specials:
        flat = x.reshape(-1)
        flat[:6] = [np.nan, np.inf, -np.inf, -np.inf, -np.inf, np.inf]
        rng.shuffle(flat)
    return x.astype(dtype)


SOFTMAX_CASES = [
    pytest.param(f, shape, axis, s, id=f"{f}-{shape}-axis{axis}-{'specials' if s else 'finite'}")
    for f in ("log_softmax", "softmax", "logsumexp")
    for shape in ((9,), (6, 7), (3, 4, 5))
    for axis in range(-len(shape), len(shape))
    for s in (False, True)
] + [
    pytest.param(f, (4, 0), axis, False, id=f"{f}-(4, 0)-axis{axis}-empty")
    for f in ("log_softmax", "softmax", "logsumexp")
    for axis in (0, 1)
]


@pytest.mark.parametrize("func, shape, axis, specials", SOFTMAX_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family(func, shape, axis, specials, dtype):
    x = softmax_input(shape, specials, dtype)
    torch_func = {"log_softmax": F.log_softmax, "softmax": F.softmax, "logsumexp": torch.logsumexp}[
        func
    ]
    want = torch_func(tensor(x), axis).numpy()
    got = getattr(fastce, func)(x, axis=axis)
    assert got.dtype == dtype
    assert_matches(got, want, dtype)


# --------------------------------------------------------------------------
# binary cross-entropy


BCE_CASES = [
    pytest.param(shape, w, pw, r, id=f"{shape}-w{w}-pw{pw}-{r}")
    for shape in ((8,), (6, 5), (2, 3, 4))
    for w in ("none", "last", "full")
    for pw in ("none", "last", "one")
    for r in REDUCTIONS
]


def bce_arrays(shape, w, pw, dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape) * 5
    x.reshape(-1)[:2] = [60.0, -60.0]
    y = rng.random(shape)
    weight = {
        "none": None,
        "last": rng.uniform(0.2, 2, shape[-1:]),
        "full": rng.uniform(0.2, 2, shape),
    }[w]
    pos_weight = {"none": None, "last": rng.uniform(0.2, 3, shape[-1:]), "one": np.array([2.5])}[pw]

    def cast(a):
        return None if a is None else a.astype(dtype)

    return cast(x), cast(y), cast(weight), cast(pos_weight)


@pytest.mark.parametrize("shape, w, pw, reduction", BCE_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_with_logits(shape, w, pw, reduction, dtype):
    x, y, weight, pos_weight = bce_arrays(shape, w, pw, dtype)
    want = F.binary_cross_entropy_with_logits(
        tensor(x),
        tensor(y),
        None if weight is None else tensor(weight),
        pos_weight=None if pos_weight is None else tensor(pos_weight),
        reduction=reduction,
    )
    got = fastce.binary_cross_entropy_with_logits(
        x, y, weight, pos_weight=pos_weight, reduction=reduction
    )
    assert np.asarray(got).dtype == dtype
    assert_matches(got, want.numpy(), dtype)


@pytest.mark.parametrize("shape, w, pw, reduction", [c for c in BCE_CASES if c.values[2] == "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy(shape, w, pw, reduction, dtype):
    x, y, weight, _ = bce_arrays(shape, w, pw, dtype)
    p = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(dtype)
    p.reshape(-1)[:3] = [0.0, 1.0, 0.5]
    tw = None if weight is None else tensor(np.broadcast_to(weight, shape))
    want = F.binary_cross_entropy(tensor(p), tensor(y), tw, reduction=reduction)
    got = fastce.binary_cross_entropy(p, y, weight, reduction=reduction)
    assert np.asarray(got).dtype == dtype
    assert_matches(got, want.numpy(), dtype)


# --------------------------------------------------------------------------
# errors: wherever torch raises, fastce raises one of the contract's errors


X = np.random.default_rng(9).standard_normal((3, 4))
T = np.array([0, 1, 2])
Y = np.random.default_rng(9).random((3, 4))
XT, TT, YT = tensor(X), tensor(T), tensor(Y)
ANY = (TypeError, ValueError, IndexError)


def _fastce_grad_output(go, reduction):
    return lambda: fastce.cross_entropy_grad(X, T, reduction=reduction, grad_output=go)


def _torch_grad_output(go, reduction):
    def run():
        xt = XT.clone().requires_grad_(True)
        F.cross_entropy(xt, TT, reduction=reduction).backward(torch.as_tensor(go))

    return run


ERROR_CASES = {
    "int-logits": (
        lambda: F.cross_entropy(XT.long(), TT),
        lambda: fastce.cross_entropy(X.astype(np.int64), T),
        TypeError,
    ),
    "bool-logits": (
        lambda: F.cross_entropy(XT > 0, TT),
        lambda: fastce.cross_entropy(X > 0, T),
        TypeError,
    ),
    "complex-logits": (
        lambda: F.cross_entropy(XT.to(torch.complex128), TT),
        lambda: fastce.cross_entropy(X.astype(np.complex128), T),
        TypeError,
    ),
    "target-equals-C": (
        lambda: F.cross_entropy(XT, tensor([0, 4, 1])),
        lambda: fastce.cross_entropy(X, np.array([0, 4, 1])),
        IndexError,
    ),
    "target-negative": (
        lambda: F.cross_entropy(XT, tensor([0, -1, 1])),
        lambda: fastce.cross_entropy(X, np.array([0, -1, 1])),
        IndexError,
    ),
    "target-uint8-255": (
        lambda: F.cross_entropy(XT, tensor(np.array([0, 255, 1], np.uint8))),
        lambda: fastce.cross_entropy(X, np.array([0, 255, 1], np.uint8)),
        IndexError,
    ),
    "target-out-of-range-kdim": (
        lambda: F.cross_entropy(
            torch.zeros(2, 3, 2, dtype=torch.float64), tensor([[0, 1], [3, 2]])
        ),
        lambda: fastce.cross_entropy(np.zeros((2, 3, 2)), np.array([[0, 1], [3, 2]])),
        IndexError,
    ),
    "grad-target-out-of-range": (
        lambda: F.cross_entropy(XT, tensor([0, 9, 1])),
        lambda: fastce.cross_entropy_grad(X, np.array([0, 9, 1])),
        IndexError,
    ),
    "target-N-by-1": (
        lambda: F.cross_entropy(XT, TT[:, None]),
        lambda: fastce.cross_entropy(X, T[:, None]),
        ValueError,
    ),
    "target-wrong-batch": (
        lambda: F.cross_entropy(XT, tensor([0, 1, 2, 3])),
        lambda: fastce.cross_entropy(X, np.array([0, 1, 2, 3])),
        ValueError,
    ),
    "onehot-int-target": (
        lambda: F.cross_entropy(XT, torch.zeros(3, 4, dtype=torch.long)),
        lambda: fastce.cross_entropy(X, np.zeros((3, 4), np.int64)),
        ValueError,
    ),
    "float-target-index-shape": (
        lambda: F.cross_entropy(XT, TT.double()),
        lambda: fastce.cross_entropy(X, T.astype(np.float64)),
        TypeError,
    ),
    "bool-target": (
        lambda: F.cross_entropy(XT, TT > 0),
        lambda: fastce.cross_entropy(X, T > 0),
        TypeError,
    ),
    "bool-target-full-shape": (
        lambda: F.cross_entropy(XT, XT > 0),
        lambda: fastce.cross_entropy(X, X > 0),
        TypeError,
    ),
    "prob-target-wrong-shape": (
        lambda: F.cross_entropy(XT, torch.rand(3, 5, dtype=torch.float64)),
        lambda: fastce.cross_entropy(X, np.random.rand(3, 5)),
        ValueError,
    ),
    "weight-wrong-shape": (
        lambda: F.cross_entropy(XT, TT, torch.ones(3, dtype=torch.float64)),
        lambda: fastce.cross_entropy(X, T, np.ones(3)),
        ValueError,
    ),
    "label-smoothing-above-1": (
        lambda: F.cross_entropy(XT, TT, label_smoothing=1.5),
        lambda: fastce.cross_entropy(X, T, label_smoothing=1.5),
        ValueError,
    ),
    "reduction-unknown": (
        lambda: F.cross_entropy(XT, TT, reduction="avg"),
        lambda: fastce.cross_entropy(X, T, reduction="avg"),
        ValueError,
    ),
    "grad-reduction-unknown": (
        lambda: F.cross_entropy(XT, TT, reduction="avg"),
        lambda: fastce.cross_entropy_grad(X, T, reduction="avg"),
        ValueError,
    ),
    "zero-classes-with-samples": (
        lambda: F.cross_entropy(
            torch.zeros(3, 0, dtype=torch.float64), torch.zeros(3, dtype=torch.long)
        ),
        lambda: fastce.cross_entropy(np.zeros((3, 0)), np.zeros(3, np.int64)),
        ValueError,
    ),
    "zero-d-logits": (
        lambda: F.cross_entropy(torch.tensor(1.0), torch.tensor(0)),
        lambda: fastce.cross_entropy(np.float64(1.0), np.int64(0)),
        ANY,
    ),
    "grad-output-wrong-shape-none": (
        _torch_grad_output(np.ones(5), "none"),
        _fastce_grad_output(np.ones(5), "none"),
        ValueError,
    ),
    "grad-output-array-for-mean": (
        _torch_grad_output(np.ones(3), "mean"),
        _fastce_grad_output(np.ones(3), "mean"),
        ValueError,
    ),
    "class-reduction-unknown": (
        lambda: torch.nn.CrossEntropyLoss(reduction="bad")(XT, TT),
        lambda: fastce.CrossEntropyLoss(reduction="bad")(X, T),
        ValueError,
    ),
    "class-target-out-of-range": (
        lambda: torch.nn.CrossEntropyLoss()(XT, tensor([5, 0, 0])),
        lambda: fastce.CrossEntropyLoss()(X, np.array([5, 0, 0])),
        IndexError,
    ),
    "nll-target-out-of-range": (
        lambda: F.nll_loss(XT, tensor([0, 4, 1])),
        lambda: fastce.nll_loss(X, np.array([0, 4, 1])),
        IndexError,
    ),
    "nll-int-input": (
        lambda: F.nll_loss(XT.long(), TT),
        lambda: fastce.nll_loss(X.astype(np.int64), T),
        TypeError,
    ),
    "nll-float-target": (lambda: F.nll_loss(XT, YT), lambda: fastce.nll_loss(X, Y), ANY),
    "nll-weight-wrong-shape": (
        lambda: F.nll_loss(XT, TT, torch.ones(5, dtype=torch.float64)),
        lambda: fastce.nll_loss(X, T, np.ones(5)),
        ValueError,
    ),
    "log-softmax-int": (
        lambda: F.log_softmax(XT.long(), 1),
        lambda: fastce.log_softmax(X.astype(np.int64), axis=1),
        TypeError,
    ),
    "softmax-int": (
        lambda: F.softmax(XT.long(), 1),
        lambda: fastce.softmax(X.astype(np.int64), axis=1),
        TypeError,
    ),
    "log-softmax-axis": (
        lambda: F.log_softmax(XT, 2),
        lambda: fastce.log_softmax(X, axis=2),
        ValueError,
    ),
    "softmax-axis": (lambda: F.softmax(XT, -3), lambda: fastce.softmax(X, axis=-3), ValueError),
    "logsumexp-axis": (
        lambda: torch.logsumexp(XT, 2),
        lambda: fastce.logsumexp(X, axis=2),
        ValueError,
    ),
    "ce-axis": (
        lambda: F.cross_entropy(XT.movedim(1, 3), TT),
        lambda: fastce.cross_entropy(X, T, axis=3),
        ValueError,
    ),
    "bcel-target-shape": (
        lambda: F.binary_cross_entropy_with_logits(XT, torch.rand(3, 5, dtype=torch.float64)),
        lambda: fastce.binary_cross_entropy_with_logits(X, np.random.rand(3, 5)),
        ValueError,
    ),
    "bcel-pos-weight": (
        lambda: F.binary_cross_entropy_with_logits(
            XT, YT, pos_weight=torch.ones(3, dtype=torch.float64)
        ),
        lambda: fastce.binary_cross_entropy_with_logits(X, Y, pos_weight=np.ones(3)),
        ValueError,
    ),
    "bcel-weight": (
        lambda: F.binary_cross_entropy_with_logits(
            XT, YT, weight=torch.ones(3, dtype=torch.float64)
        ),
        lambda: fastce.binary_cross_entropy_with_logits(X, Y, weight=np.ones(3)),
        ValueError,
    ),
    "bcel-reduction": (
        lambda: F.binary_cross_entropy_with_logits(XT, YT, reduction="avg"),
        lambda: fastce.binary_cross_entropy_with_logits(X, Y, reduction="avg"),
        ValueError,
    ),
    "bcel-int-logits": (
        lambda: F.binary_cross_entropy_with_logits(XT.long(), YT),
        lambda: fastce.binary_cross_entropy_with_logits(X.astype(np.int64), Y),
        TypeError,
    ),
    "bce-above-1": (
        lambda: F.binary_cross_entropy(torch.full((3,), 1.5, dtype=torch.float64), YT[0, :3]),
        lambda: fastce.binary_cross_entropy(np.full(3, 1.5), Y[0, :3]),
        ValueError,
    ),
    "bce-below-0": (
        lambda: F.binary_cross_entropy(torch.full((3,), -0.5, dtype=torch.float64), YT[0, :3]),
        lambda: fastce.binary_cross_entropy(np.full(3, -0.5), Y[0, :3]),
        ValueError,
    ),
    "bce-nan": (
        lambda: F.binary_cross_entropy(
            torch.full((3,), float("nan"), dtype=torch.float64), YT[0, :3]
        ),
        lambda: fastce.binary_cross_entropy(np.full(3, np.nan), Y[0, :3]),
        ValueError,
    ),
    "bce-target-shape": (
        lambda: F.binary_cross_entropy(YT[0], YT[0, :3]),
        lambda: fastce.binary_cross_entropy(Y[0], Y[0, :3]),
        ValueError,
    ),
    "bce-weight": (
        lambda: F.binary_cross_entropy(
            YT[0, :3], YT[0, :3], weight=torch.ones(4, dtype=torch.float64)
        ),
        lambda: fastce.binary_cross_entropy(Y[0, :3], Y[0, :3], weight=np.ones(4)),
        ValueError,
    ),
    "bce-reduction": (
        lambda: F.binary_cross_entropy(YT, YT, reduction="avg"),
        lambda: fastce.binary_cross_entropy(Y, Y, reduction="avg"),
        ValueError,
    ),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_error_parity(name):
    torch_call, fastce_call, expected = ERROR_CASES[name]
    with pytest.raises(Exception):  # noqa: B017 - whichever error torch raises
        torch_call()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(expected):
            fastce_call()


def test_rejected_out_logits_left_untouched():
    logits = X.copy()
    with pytest.raises(Exception):  # noqa: B017 - whichever error torch raises
        F.cross_entropy(tensor(logits), tensor([0, 7, 1]))
    with pytest.raises(IndexError):
        fastce.cross_entropy_with_grad(logits, np.array([0, 7, 1]), out=logits)
    np.testing.assert_array_equal(logits, X)
