"""The logit transforms (soft-cap, temperature) and the z-loss: against the
float64 twin on every layout, dtype and vector path, against torch autograd on
the composed expression, against finite differences, and the counting rule of
the z-loss."""

import numpy as np
import pytest
from cases import arrange, class_axis, make_case

import fastce
from fastce import reference

TRANSFORMS = [
    {"softcap": 3.0},
    {"temperature": 0.7},
    {"z_loss": 1e-2},
    {"softcap": 5.0, "temperature": 2.0, "z_loss": 1e-3},
]

OPTIONS = [
    {},
    {"weight": True, "ignore_index": -100},
    {"label_smoothing": 0.1, "weight": True},
    {"prob": True, "label_smoothing": 0.2},
    {"ignore_index": 1},
]

# (shape, axis): rows, rows of few classes (transposed into tiles), channels
# first (tiles), long rows, and rows longer than the kernels read twice from
# cache (a running maximum, the sum rescaled as it moves)
SHAPES = [
    ((9, 300), None),
    ((70, 5), None),
    ((3, 7, 33), 1),
    ((2, 5000), None),
    ((2, 20000), None),
]

TOLERANCE = {np.float64: 1e-10, np.float32: 2e-5, np.float16: 2e-5}


def _tol(dtype):
    return TOLERANCE.get(np.dtype(dtype).type, 2e-5)


def _bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return ml_dtypes.bfloat16


def _close(got, want, dtype, scale=1.0):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    tol = _tol(dtype) * scale
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: "-".join(t))
@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("shape_axis", SHAPES, ids=lambda s: str(s[0]))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_the_twin_on_every_path(simd_path, transform, option, shape_axis, reduction):
    shape, axis = shape_axis
    rng = np.random.default_rng(len(shape) * 7 + shape[-1])
    case = make_case(rng, shape, axis, np.float64, option, scale=4.0)
    kwargs = dict(case.kwargs, reduction=reduction, **transform)
    want = reference.cross_entropy_with_grad(
        case.logits, case.target, case.weight, return_z_loss=True, return_lse=True, **kwargs
    )
    for dtype in (np.float64, np.float32):
        x = case.logits.astype(dtype)
        target = case.target.astype(dtype) if option.get("prob") else case.target
        got = fastce.cross_entropy_with_grad(
            x, target, case.weight, return_z_loss=True, return_lse=True, **kwargs
        )
        assert len(got) == 4
        for g, w in zip(got, want):
            assert np.asarray(g).dtype == dtype
            _close(g, w, dtype)
        loss_only = fastce.cross_entropy(x, target, case.weight, **kwargs)
        _close(loss_only, want[0], dtype)
        grad_only = fastce.cross_entropy_grad(x, target, case.weight, **kwargs)
        np.testing.assert_array_equal(grad_only, got[1])


@pytest.mark.parametrize("layout", ["F", "strided", "reversed", "byteswapped"])
@pytest.mark.parametrize("transform", TRANSFORMS[::3], ids=lambda t: "-".join(t))
def test_layouts_and_half_precision(layout, transform):
    rng = np.random.default_rng(5)
    case = make_case(rng, (40, 17), None, np.float64, {"ignore_index": -100}, scale=5.0)
    for dtype in (np.float32, np.float16, _bfloat16()):
        x = case.logits.astype(dtype)
        x64 = x.astype(np.float64)  # what the kernels read
        want = reference.cross_entropy_with_grad(
            x64, case.target, return_lse=True, **case.kwargs, **transform
        )
        got = fastce.cross_entropy_with_grad(
            arrange(x, layout) if dtype == np.float32 else x,
            arrange(case.target, layout),
            return_lse=True,
            **case.kwargs,
            **transform,
        )
        for g, w in zip(got, want):
            assert np.asarray(g).dtype == np.float32
            _close(g, w, np.float32)


@pytest.mark.parametrize("shape", [(40, 300), (3, 20000)], ids=str)
def test_half_logits_under_a_temperature(simd_path, shape):
    # converted rows the row kernels scale as they read them, short and longer than they
    # read twice from cache; against the twin on the half values in float64
    rng = np.random.default_rng(21)
    x = rng.standard_normal(shape) * 4
    t = rng.integers(0, shape[1], shape[0])
    options = {"temperature": 0.7, "label_smoothing": 0.1}
    for dtype in (np.float16, _bfloat16()):
        xh = x.astype(dtype)
        x64 = xh.astype(np.float64)
        want = reference.cross_entropy_with_grad(x64, t, return_lse=True, **options)
        got = fastce.cross_entropy_with_grad(xh, t, return_lse=True, **options)
        for g, w in zip(got, want):
            _close(g, w, np.float32)
        slow = reference.evaluate(x64, t, topk=(1, 3), **options)
        fast = fastce.evaluate(xh, t, topk=(1, 3), **options)
        for name in ("loss", "perplexity", "confidence", "entropy", "ece"):
            _close(getattr(fast, name), slow[name], np.float32, 4.0)


def test_gradient_in_place():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 100)) * 8
    t = rng.integers(0, 100, 64)
    want = reference.cross_entropy_grad(x, t, softcap=4.0, z_loss=1e-3)
    buf = x.copy()
    got = fastce.cross_entropy_grad(buf, t, softcap=4.0, z_loss=1e-3, out=buf)
    assert got is buf
    _close(got, want, np.float64)


def test_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6)) * 3
    t = np.array([0, 5, -100, 2])
    w = rng.uniform(0.5, 2.0, 6)
    options = dict(softcap=2.5, temperature=1.5, z_loss=0.05, label_smoothing=0.1)
    grad = fastce.cross_entropy_grad(x, t, w, **options)
    h = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (
            fastce.cross_entropy(up, t, w, **options) - fastce.cross_entropy(down, t, w, **options)
        ) / (2 * h)
    np.testing.assert_allclose(grad, numeric, atol=1e-8)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("prob", [False, True])
def test_against_torch_autograd_on_the_composed_expression(reduction, prob):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 5)) * 10
    weight = rng.uniform(0.2, 2.0, 3)
    cap, temperature, z = 6.0, 1.3, 1e-2
    if prob:
        target = rng.random((6, 3, 5))
        target /= target.sum(axis=1, keepdims=True)
        kwargs = dict(label_smoothing=0.1)
    else:
        target = rng.integers(0, 3, (6, 5))
        target[0, :2] = -100
        kwargs = dict(label_smoothing=0.1, ignore_index=-100)

    xt = torch.tensor(x, requires_grad=True)
    y = cap * torch.tanh(xt / cap) / temperature
    tt = torch.tensor(target)
    wt = torch.tensor(weight)
    ce = torch.nn.functional.cross_entropy(y, tt, wt, reduction="none", **kwargs)
    lse = torch.logsumexp(y, dim=1)
    if prob:
        z_per = z * lse**2
        denominator = torch.tensor(float(target.size // 3))
    else:
        counted = tt != -100
        w_t = torch.where(counted, wt[tt.clamp(min=0)], torch.zeros(()))
        z_per = z * w_t * lse**2
        denominator = w_t.sum()
    total = ce + z_per
    if reduction == "mean":
        loss, z_red = total.sum() / denominator, z_per.sum() / denominator
    elif reduction == "sum":
        loss, z_red = total.sum(), z_per.sum()
    else:
        loss, z_red = total, z_per
    loss.backward(torch.ones_like(loss))

    got_loss, got_grad, got_z, got_lse = fastce.cross_entropy_with_grad(
        x,
        target,
        weight,
        reduction=reduction,
        softcap=cap,
        temperature=temperature,
        z_loss=z,
        return_z_loss=True,
        return_lse=True,
        **kwargs,
    )
    np.testing.assert_allclose(got_loss, loss.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_z, z_red.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_lse, lse.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_z_loss_counting_rule():
    # counted like the sample's cross-entropy: weighted by its target's class
    # weight, never for an ignored target, over the same "mean" denominator
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 4))
    t = np.array([0, 3, -100, 3, 1])
    w = np.array([1.0, 0.5, 2.0, 3.0])
    z = 0.1
    lse = reference.logsumexp(x, axis=1)
    w_t = np.array([1.0, 3.0, 0.0, 3.0, 0.5])
    expected_sum = float(np.sum(z * w_t * lse**2))
    for reduction, expected in [
        ("sum", expected_sum),
        ("mean", expected_sum / w_t.sum()),
        ("none", z * w_t * lse**2),
    ]:
        loss, z_part = fastce.cross_entropy(
            x, t, w, z_loss=z, reduction=reduction, return_z_loss=True
        )
        np.testing.assert_allclose(z_part, expected, rtol=1e-13)
        plain = fastce.cross_entropy(x, t, w, reduction=reduction)
        np.testing.assert_allclose(loss - z_part, plain, rtol=1e-12, atol=1e-15)
    # every sample ignored: the mean is NaN, z-loss included; the sum is 0
    none = np.full(5, -100)
    loss, z_part = fastce.cross_entropy(x, none, z_loss=z, return_z_loss=True)
    assert np.isnan(loss) and np.isnan(z_part)
    loss, z_part = fastce.cross_entropy(x, none, z_loss=z, reduction="sum", return_z_loss=True)
    assert loss == 0 and z_part == 0


def test_temperature_and_softcap_mean_what_they_say():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, 30)) * 3
    t = rng.integers(0, 30, 50)
    _close(
        fastce.cross_entropy(x, t, temperature=2.0), fastce.cross_entropy(x / 2.0, t), np.float64
    )
    capped = 4.0 * np.tanh(x / 4.0)
    _close(fastce.cross_entropy(x, t, softcap=4.0), fastce.cross_entropy(capped, t), np.float64)
    _, lse = fastce.cross_entropy(x, t, softcap=4.0, return_lse=True, reduction="none")
    _close(lse, fastce.logsumexp(capped, axis=1), np.float64)
    # a soft-cap far above every logit changes almost nothing
    _close(fastce.cross_entropy(x, t, softcap=1e6), fastce.cross_entropy(x, t), np.float64, 1e3)


def test_lse_is_reported_for_ignored_samples_and_nan_rows():
    x = np.array([[1.0, 2.0, 3.0], [0.0, np.nan, 1.0], [-1.0, 0.0, 1.0]])
    t = np.array([0, -100, -100])
    loss, grad, lse = fastce.cross_entropy_with_grad(
        x, t, reduction="none", softcap=2.0, return_lse=True
    )
    capped = 2.0 * np.tanh(x / 2.0)
    assert np.isnan(lse[1])
    _close(lse[[0, 2]], reference.logsumexp(capped[[0, 2]], axis=1), np.float64)
    assert loss[1] == 0 and loss[2] == 0
    assert (grad[1:] == 0).all()


def test_transformed_values_are_accurate(simd_path):
    # the vector tanh against NumPy's across the whole range, through
    # softcap=1: the log-sum-exp of a single class is its transformed logit
    tiny = 2.0 ** np.arange(-40.0, 4.0, 0.01)
    x = np.concatenate(
        [np.linspace(-30, 30, 200001), tiny, -tiny, [0.0, -0.0, 0.624, 0.625, 0.626, 50.0, -50.0]]
    )
    # float32's rational form rounds ten times, float64's split form a few
    for dtype, max_ulp in ((np.float64, 3.0), (np.float32, 6.0)):
        xs = x.astype(dtype)
        with pytest.warns(RuntimeWarning, match="single class"):
            _, lse = fastce.cross_entropy(
                xs[:, None],
                np.zeros(xs.size, np.int64),
                reduction="none",
                softcap=1.0,
                return_lse=True,
            )
        want = np.tanh(xs.astype(np.float64))
        ulp = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
        assert np.max(np.abs(lse.astype(np.float64) - want) / ulp) <= max_ulp
    with pytest.warns(RuntimeWarning, match="single class"):
        _, lse = fastce.cross_entropy(
            np.array([[np.inf], [-np.inf], [np.nan]], np.float32),
            np.zeros(3, np.int64),
            reduction="none",
            softcap=2.0,
            return_lse=True,
        )
    np.testing.assert_allclose(lse[:2], [2.0, -2.0], rtol=2e-7)
    assert np.isnan(lse[2])


def test_criterion_carries_the_transform():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 5))
    t = rng.integers(0, 5, 8)
    criterion = fastce.CrossEntropyLoss(softcap=2.0, temperature=0.5, z_loss=1e-3)
    expected = fastce.cross_entropy(x, t, softcap=2.0, temperature=0.5, z_loss=1e-3)
    assert criterion(x, t) == expected
    loss, grad = criterion.with_grad(x, t)
    assert loss == expected
    np.testing.assert_array_equal(
        grad, fastce.cross_entropy_grad(x, t, softcap=2.0, temperature=0.5, z_loss=1e-3)
    )
    assert "softcap=2.0" in repr(criterion)
    assert criterion != fastce.CrossEntropyLoss()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"softcap": -1.0}, ValueError, "softcap"),
        ({"softcap": np.inf}, ValueError, "softcap"),
        ({"softcap": True}, TypeError, "softcap"),
        ({"softcap": "3"}, TypeError, "softcap"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -2.0}, ValueError, "temperature"),
        ({"temperature": np.nan}, ValueError, "temperature"),
        ({"temperature": 1e-320}, ValueError, "temperature"),
        ({"z_loss": -1e-4}, ValueError, "z_loss"),
        ({"z_loss": np.inf}, ValueError, "z_loss"),
        ({"z_loss": None}, TypeError, "z_loss"),
        ({"return_z_loss": 1}, TypeError, "return_z_loss"),
        ({"return_lse": "yes"}, TypeError, "return_lse"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, error, match):
    x = np.zeros((2, 3))
    t = np.array([0, 1])
    with pytest.raises(error, match=match):
        fastce.cross_entropy(x, t, **kwargs)
    if not any(k.startswith("return") for k in kwargs):
        with pytest.raises(error, match=match):
            fastce.cross_entropy_grad(x, t, **kwargs)
        with pytest.raises(error, match=match):
            fastce.CrossEntropyLoss(**kwargs)


def test_class_axis_rule_holds_with_transforms():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 6, 3))
    t = rng.integers(0, 4, (6, 3))
    ax = class_axis(3, 0)
    want = reference.cross_entropy(x, t, axis=ax, softcap=1.5, reduction="none")
    _close(fastce.cross_entropy(x, t, axis=0, softcap=1.5, reduction="none"), want, np.float64)


# --------------------------------------------------------------------------
# evaluation


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: "-".join(t))
@pytest.mark.parametrize("shape_axis", SHAPES, ids=lambda s: str(s[0]))
def test_evaluate_matches_the_twin_on_every_path(simd_path, transform, shape_axis):
    shape, axis = shape_axis
    rng = np.random.default_rng(11)
    case = make_case(
        rng, shape, axis, np.float64, {"weight": True, "ignore_index": -100}, scale=4.0
    )
    slow = reference.evaluate(
        case.logits, case.target, case.weight, topk=(1, 3), **case.kwargs, **transform
    )
    for dtype in (np.float64, np.float32):
        fast = fastce.evaluate(
            case.logits.astype(dtype),
            case.target,
            case.weight,
            topk=(1, 3),
            per_sample=True,
            **case.kwargs,
            **transform,
        )
        for name in ("loss", "perplexity", "confidence", "entropy", "ece", "z_loss"):
            _close(getattr(fast, name), slow[name], dtype, 4.0)
        # ranks and predictions can differ in float32 only where the
        # transform saturates two logits to one value
        if dtype == np.float64:
            assert fast.accuracy == slow["accuracy"]
            np.testing.assert_array_equal(fast.per_sample.prediction.reshape(-1), slow["pred"])
        _close(fast.per_sample.lse.reshape(-1), slow["lse"], dtype)
        # the loss is the cross-entropy's alone; cross_entropy's loss includes the z-loss
        ce, z_part = fastce.cross_entropy(
            case.logits.astype(dtype),
            case.target,
            case.weight,
            return_z_loss=True,
            **case.kwargs,
            **transform,
        )
        _close(fast.loss, ce - z_part, dtype, 4.0)
        _close(fast.z_loss, z_part, dtype, 4.0)


def test_accumulator_and_linear_evaluation_carry_the_transform():
    rng = np.random.default_rng(12)
    h = rng.standard_normal((300, 16)).astype(np.float32)
    head = (rng.standard_normal((50, 16)) * 0.5).astype(np.float32)
    t = rng.integers(0, 50, 300)
    options = dict(softcap=3.0, temperature=1.5, z_loss=1e-3, topk=(1, 5))
    whole = fastce.evaluate(h @ head.T, t, **options)
    acc = fastce.Accumulator(**options)
    for start in range(0, 300, 70):
        acc.update(h[start : start + 70] @ head.T, t[start : start + 70])
    streamed = acc.result()
    linear = fastce.evaluate_linear(h, head, t, max_block_bytes=50 * 4 * 32, **options)
    for r in (streamed, linear):
        _close(r.loss, whole.loss, np.float32)
        _close(r.z_loss, whole.z_loss, np.float32)
        assert r.accuracy == whole.accuracy
    assert "softcap=3.0" in repr(acc) and "z_loss=0.001" in repr(acc)
    with pytest.raises(ValueError, match="different options"):
        acc.merge(fastce.Accumulator(topk=(1, 5)))
    plain = fastce.evaluate(h @ head.T, t, topk=(1, 5))
    assert plain.z_loss == 0.0 and plain.loss != whole.loss


def test_evaluate_rejects_bad_transforms():
    with pytest.raises(ValueError, match="softcap"):
        fastce.evaluate(np.zeros((2, 3)), np.array([0, 1]), softcap=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        fastce.Accumulator(temperature=0.0)


# --------------------------------------------------------------------------
# the torch drop-in


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("prob", [False, True])
def test_torch_drop_in_takes_the_transforms(reduction, prob):
    torch = pytest.importorskip("torch")
    import fastce.torch as ft

    rng = np.random.default_rng(13)
    x = rng.standard_normal((7, 5)) * 6
    weight = torch.tensor(rng.uniform(0.3, 2.0, 5))
    if prob:
        p = rng.random((7, 5))
        target = torch.tensor(p / p.sum(axis=1, keepdims=True))
    else:
        target = torch.tensor(rng.integers(0, 5, 7))
        target[2] = -100
    options = dict(softcap=4.0, temperature=0.8, z_loss=2e-2, label_smoothing=0.05)
    results = []
    for soft_target_grad in (False, True):
        xt = torch.tensor(x, requires_grad=True)
        t = target
        if soft_target_grad and prob:
            t = target.clone().requires_grad_(True)  # torch's operations answer this one
        loss, z_part, lse = ft.cross_entropy(
            xt, t, weight, reduction=reduction, return_z_loss=True, return_lse=True, **options
        )
        loss.backward(torch.ones_like(loss))
        assert not z_part.requires_grad and not lse.requires_grad
        results.append((loss.detach(), z_part, lse, xt.grad))
    want = reference.cross_entropy_with_grad(
        x,
        target.numpy(),
        weight.numpy(),
        reduction=reduction,
        return_z_loss=True,
        return_lse=True,
        **options,
    )
    for loss, z_part, lse, grad in results:
        np.testing.assert_allclose(loss.numpy(), want[0], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(grad.numpy(), want[1], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(z_part.numpy(), want[2], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(lse.numpy(), want[3], rtol=1e-12)


def test_torch_drop_in_gradcheck_and_plain_results():
    torch = pytest.importorskip("torch")
    import fastce.torch as ft

    rng = np.random.default_rng(14)
    x = torch.tensor(rng.standard_normal((4, 6)) * 3, requires_grad=True)
    t = torch.tensor([0, 5, -100, 3])
    assert torch.autograd.gradcheck(
        lambda a: ft.cross_entropy(a, t, softcap=2.0, temperature=1.5, z_loss=0.1), (x,)
    )
    with torch.no_grad():
        loss, lse = ft.cross_entropy(x, t, temperature=2.0, return_lse=True)
    expected = torch.nn.functional.cross_entropy(x.detach() / 2.0, t)
    assert torch.allclose(loss, expected, rtol=1e-12)
    assert torch.allclose(lse, torch.logsumexp(x.detach() / 2.0, dim=1), rtol=1e-12)
    with pytest.raises(ValueError, match="softcap"):
        ft.cross_entropy(x, t, softcap=0.0)


def test_torch_linear_drop_in_takes_the_transforms():
    torch = pytest.importorskip("torch")
    import fastce.torch as ft

    rng = np.random.default_rng(15)
    options = dict(softcap=3.0, temperature=1.2, z_loss=1e-2)
    h = torch.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    w = torch.tensor(rng.standard_normal((9, 4)), requires_grad=True)
    t = torch.tensor([0, 8, -100, 3, 3])
    loss = ft.linear_cross_entropy(h, w, t, **options)
    loss.backward()
    results = [(loss.detach(), h.grad, w.grad)]
    logits = (h.detach() @ w.detach().T).numpy()
    want_loss, want_grad = reference.cross_entropy_with_grad(logits, t.numpy(), **options)
    loss, gh, gw = results[0]
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-12)
    np.testing.assert_allclose(gh.numpy(), want_grad @ w.detach().numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gw.numpy(), want_grad.T @ h.detach().numpy(), rtol=1e-10, atol=1e-14)
    # a call fastce leaves to torch (float32 input, float64 weight) composes the same expression
    h32 = torch.tensor(rng.standard_normal((5, 4)), dtype=torch.float32)
    w64 = torch.tensor(rng.standard_normal((9, 4)))
    with pytest.raises(RuntimeError):
        ft.linear_cross_entropy(h32, w64, t, **options)  # torch's own dtype error


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: "-".join(t))
def test_infinite_logits_keep_the_plain_calls_meaning(simd_path, transform):
    # a -inf target logit: an infinite loss and a finite gradient, as without a
    # transform (the chain rule must not multiply inf by a zero of its own)
    x = np.array([[0.5, -np.inf, 1.0, -np.inf] + [0.0] * 20, [1.0, 2.0, -np.inf, 0.0] + [0.0] * 20])
    t = np.array([1, 0])
    for dtype in (np.float64, np.float32, np.float16):
        xs = x.astype(dtype)
        loss, grad = fastce.cross_entropy_with_grad(xs, t, reduction="none", **transform)
        want_loss, want_grad = reference.cross_entropy_with_grad(
            xs.astype(np.float64), t, reduction="none", **transform
        )
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(want_grad))
        _close(grad, want_grad, dtype if dtype != np.float16 else np.float32)
        np.testing.assert_array_equal(np.isinf(loss), np.isinf(want_loss))
