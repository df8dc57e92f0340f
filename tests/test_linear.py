"""``linear_cross_entropy``: the loss of a linear head, computed in blocks.

It must equal ``cross_entropy(hidden @ W.T + b, ...)`` and its gradients the
chain rule through the product, for every option, however the rows are cut
into blocks; hold no more than its block of logits at once; and check its
arguments as ``cross_entropy`` does.
"""

import itertools

import numpy as np
import pytest
from memory_gauge import peak_and_result
from numpy.testing import assert_allclose

import fastce
from fastce import linear

OPTIONS = (
    {},
    {"weight": True},
    {"ignore_index": -100},
    {"label_smoothing": 0.2, "weight": True, "ignore_index": -100},
    {"ignore_index": 3},
    {"prob": True},
    {"prob": True, "weight": True, "label_smoothing": 0.1},
)
REDUCTIONS = ("mean", "sum", "none")


def make_head(rng, sample_shape, n_features, n_classes, option, bias=True, dtype=np.float64):
    """``(hidden, W, b, target, class_weight, kwargs)`` for one case."""
    hidden = rng.standard_normal(sample_shape + (n_features,)).astype(dtype)
    w = (rng.standard_normal((n_classes, n_features)) * 0.7).astype(dtype)
    b = rng.standard_normal(n_classes).astype(dtype) if bias else None
    class_weight = rng.uniform(0.1, 2.0, n_classes) if option.get("weight") else None
    kwargs = {}
    if "label_smoothing" in option:
        kwargs["label_smoothing"] = option["label_smoothing"]
    if option.get("prob"):
        target = rng.random(sample_shape + (n_classes,))
        target /= target.sum(axis=-1, keepdims=True)
    else:
        target = rng.integers(0, n_classes, sample_shape)
        if "ignore_index" in option:
            kwargs["ignore_index"] = option["ignore_index"]
            target = np.where(rng.random(sample_shape) < 0.3, option["ignore_index"], target)
    return hidden, w, b, np.asarray(target), class_weight, kwargs


def full_logits(hidden, w, b):
    logits = hidden @ w.T
    return logits if b is None else logits + b


@pytest.fixture(params=["row blocks", "class slices"])
def path(request, monkeypatch):
    """Each of the two ways through the output layer: blocks of whole rows, or
    (for vocabularies too large for the block) many rows walked in slices of
    classes."""
    monkeypatch.setattr(linear, "MIN_BLOCK_ROWS", 1 if request.param == "row blocks" else 10**9)
    return request.param


@pytest.mark.parametrize("option, reduction", list(itertools.product(OPTIONS, REDUCTIONS)), ids=str)
@pytest.mark.parametrize("sample_shape", [(23,), (3, 7), ()], ids=str)
@pytest.mark.parametrize("block_rows", [1, 5, 1000])
@pytest.mark.parametrize(
    "transform", [{}, {"softcap": 2.0, "temperature": 0.7, "z_loss": 0.05}], ids=str
)
def test_equals_cross_entropy_of_the_full_logits(
    option, reduction, sample_shape, block_rows, transform, path
):
    rng = np.random.default_rng(len(str(option)) + len(reduction) + len(sample_shape))
    n_classes = 11
    hidden, w, b, target, cw, kwargs = make_head(rng, sample_shape, 6, n_classes, option)
    go = rng.standard_normal(sample_shape) if reduction == "none" else 0.8
    common = dict(
        reduction=reduction, max_block_bytes=block_rows * n_classes * 8, **kwargs, **transform
    )
    logits = full_logits(hidden, w, b)
    # the classes are the last axis of the linear output
    want_loss = fastce.cross_entropy(logits, target, cw, axis=-1, **common_ce(common))
    want_grad = fastce.cross_entropy_grad(
        logits, target, cw, axis=-1, grad_output=go, **common_ce(common)
    )
    loss = fastce.linear_cross_entropy(hidden, w, target, b, cw, **common)
    loss2, gh, gw, gb = fastce.linear_cross_entropy_with_grad(
        hidden, w, target, b, cw, grad_output=go, **common
    )
    assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-14)
    assert_allclose(loss2, want_loss, rtol=1e-12, atol=1e-14)
    assert np.shape(loss) == np.shape(want_loss) and np.asarray(loss).dtype == np.float64
    g2 = want_grad.reshape(-1, n_classes)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    assert_allclose(gh, (g2 @ w).reshape(hidden.shape), rtol=1e-11, atol=1e-14)
    assert_allclose(gw, g2.T @ h2, rtol=1e-11, atol=1e-14)
    assert_allclose(gb, g2.sum(axis=0), rtol=1e-11, atol=1e-14)


def common_ce(common):
    return {k: v for k, v in common.items() if k != "max_block_bytes"}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float32_and_half_operands_compute_in_float32(dtype, path):
    rng = np.random.default_rng(1)
    hidden, w, b, target, _, _ = make_head(rng, (40,), 16, 300, {}, dtype=dtype)
    loss, gh, gw, gb = fastce.linear_cross_entropy_with_grad(
        hidden, w, target, b, max_block_bytes=4096
    )
    assert loss.dtype == gh.dtype == gw.dtype == gb.dtype == np.float32
    h64, w64, b64 = (a.astype(np.float64) for a in (hidden, w, b))
    g = fastce.cross_entropy_grad(full_logits(h64, w64, b64), target)
    assert_allclose(loss, fastce.cross_entropy(full_logits(h64, w64, b64), target), rtol=2e-5)
    assert_allclose(gh, g @ w64, rtol=1e-3, atol=1e-6)
    assert_allclose(gw, g.T @ h64, rtol=1e-3, atol=1e-6)


def test_a_float64_operand_makes_it_float64():
    rng = np.random.default_rng(2)
    hidden, w, b, target, _, _ = make_head(rng, (9,), 5, 7, {}, dtype=np.float32)
    loss = fastce.linear_cross_entropy(hidden, w.astype(np.float64), target, b)
    assert loss.dtype == np.float64


def test_gradients_match_finite_differences(path):
    rng = np.random.default_rng(3)
    option = {"label_smoothing": 0.1, "weight": True, "ignore_index": -100}
    hidden, w, b, target, cw, kwargs = make_head(rng, (5,), 3, 4, option)
    _, gh, gw, gb = fastce.linear_cross_entropy_with_grad(
        hidden, w, target, b, cw, max_block_bytes=64, **kwargs
    )

    def numerical(values, f, h=1e-5):
        grad = np.empty_like(values)
        for idx in np.ndindex(values.shape):
            up, down = values.copy(), values.copy()
            up[idx] += h
            down[idx] -= h
            grad[idx] = (f(up) - f(down)) / (2 * h)
        return grad

    def loss(hh=hidden, ww=w, bb=b):
        return float(fastce.linear_cross_entropy(hh, ww, target, bb, cw, **kwargs))

    assert_allclose(gh, numerical(hidden, lambda v: loss(hh=v)), rtol=1e-6, atol=1e-9)
    assert_allclose(gw, numerical(w, lambda v: loss(ww=v)), rtol=1e-6, atol=1e-9)
    assert_allclose(gb, numerical(b, lambda v: loss(bb=v)), rtol=1e-6, atol=1e-9)


def test_matches_torch_autograd(path):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    option = {"label_smoothing": 0.15, "weight": True, "ignore_index": -100}
    hidden, w, b, target, cw, kwargs = make_head(rng, (31,), 8, 50, option)
    th, tw, tb = (torch.tensor(a, requires_grad=True) for a in (hidden, w, b))
    want = F.cross_entropy(F.linear(th, tw, tb), torch.tensor(target), torch.tensor(cw), **kwargs)
    want.backward()
    loss, gh, gw, gb = fastce.linear_cross_entropy_with_grad(
        hidden, w, target, b, cw, max_block_bytes=2000, **kwargs
    )
    assert_allclose(loss, want.item(), rtol=1e-12)
    for got, tensor in ((gh, th), (gw, tw), (gb, tb)):
        assert_allclose(got, tensor.grad.numpy(), rtol=1e-10, atol=1e-14)
    if hasattr(F, "linear_cross_entropy"):
        torch_linear = F.linear_cross_entropy(
            th, tw, torch.tensor(target), linear_bias=tb, weight=torch.tensor(cw), **kwargs
        )
        assert_allclose(loss, torch_linear.item(), rtol=1e-12)


def test_every_target_ignored(path):
    rng = np.random.default_rng(5)
    hidden, w, b, _, _, _ = make_head(rng, (6,), 4, 5, {})
    target = np.full(6, -100)
    loss, gh, gw, gb = fastce.linear_cross_entropy_with_grad(hidden, w, target, b)
    assert np.isnan(loss)
    assert not gh.any() and not gw.any() and not gb.any()
    assert fastce.linear_cross_entropy(hidden, w, target, reduction="sum") == 0.0
    none = fastce.linear_cross_entropy(hidden, w, target, reduction="none")
    assert none.shape == (6,) and not none.any()


def test_no_bias_gives_no_bias_gradient():
    rng = np.random.default_rng(6)
    hidden, w, _, target, _, _ = make_head(rng, (6,), 4, 5, {}, bias=False)
    *_, gb = fastce.linear_cross_entropy_with_grad(hidden, w, target)
    assert gb is None


def test_holds_one_block_of_logits_at_a_time(path):
    rng = np.random.default_rng(7)
    n, n_features, n_classes = 512, 32, 20000
    hidden = rng.standard_normal((n, n_features), dtype=np.float32)
    w = rng.standard_normal((n_classes, n_features), dtype=np.float32)
    target = rng.integers(0, n_classes, n)
    block = 2 << 20
    full = n * n_classes * 4  # 40 MB of logits
    peak, loss = peak_and_result(
        lambda: fastce.linear_cross_entropy(hidden, w, target, max_block_bytes=block)
    )
    assert peak < 2 * block + (1 << 20) < full
    peak, result = peak_and_result(
        lambda: fastce.linear_cross_entropy_with_grad(hidden, w, target, max_block_bytes=block)
    )
    returned = sum(a.nbytes for a in result[1:3])
    assert peak - returned < 3 * block + (1 << 20)
    assert_allclose(loss, fastce.cross_entropy(hidden @ w.T, target), rtol=1e-5)


@pytest.mark.parametrize("layout", ["float16", "bfloat16", "fortran"])
def test_an_output_layer_not_in_place_is_converted_a_slice_at_a_time(layout):
    # a float16 or bfloat16 output layer (or one not C-ordered) is never
    # converted whole: the call holds a block of logits and a slice of the layer
    rng = np.random.default_rng(8)
    n, n_features, n_classes = 300, 64, 20000
    hidden = rng.standard_normal((n, n_features), dtype=np.float32)
    w32 = rng.standard_normal((n_classes, n_features), dtype=np.float32) * 0.2
    if layout == "fortran":
        w = np.asfortranarray(w32)
    else:
        dtype = np.float16 if layout == "float16" else pytest.importorskip("ml_dtypes").bfloat16
        w = w32.astype(dtype)
    target = rng.integers(0, n_classes, n)
    block = 1 << 20
    whole = n_classes * n_features * 4  # 5 MB: the float32 layer
    peak, loss = peak_and_result(
        lambda: fastce.linear_cross_entropy(hidden, w, target, max_block_bytes=block)
    )
    assert peak < 3 * block + (1 << 19) < whole
    peak, (loss2, gh, gw, _) = peak_and_result(
        lambda: fastce.linear_cross_entropy_with_grad(hidden, w, target, max_block_bytes=block)
    )
    assert peak - gh.nbytes - gw.nbytes < 4 * block + (1 << 19)
    w_used = w.astype(np.float32)
    g = fastce.cross_entropy_grad(hidden @ w_used.T, target)
    assert_allclose(loss, fastce.cross_entropy(hidden @ w_used.T, target), rtol=1e-5)
    assert_allclose(loss2, loss, rtol=1e-6)
    assert_allclose(gh, g @ w_used, rtol=1e-3, atol=1e-6)
    assert_allclose(gw, g.T @ hidden, rtol=1e-3, atol=1e-6)
    peak, result = peak_and_result(
        lambda: fastce.evaluate_linear(hidden, w, target, max_block_bytes=block)
    )
    assert peak < 3 * block + (1 << 19)
    assert_allclose(result.loss, loss, rtol=1e-5)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(hidden=np.float32(1.0)), ValueError, "at least one dimension"),
        (dict(hidden=np.zeros((4, 3), dtype=np.int64)), TypeError, "floating"),
        (dict(linear_weight=np.zeros((7, 5))), ValueError, r"shape \(V, 3\)"),
        (dict(linear_bias=np.zeros(6)), ValueError, r"linear_bias must have shape \(7,\)"),
        (dict(target=np.array([0, 1, 7, 2])), IndexError, "outside the valid range"),
        (dict(target=np.zeros((4, 2), dtype=np.int64)), ValueError, "class indices"),
        (dict(max_block_bytes=0), ValueError, "max_block_bytes"),
        (dict(max_block_bytes=1.5), TypeError, "max_block_bytes"),
        (dict(reduction="avg"), ValueError, "reduction"),
    ],
)
def test_errors_are_cross_entropys(change, error, match):
    args = dict(
        hidden=np.zeros((4, 3)),
        linear_weight=np.zeros((7, 3)),
        target=np.array([0, 1, 2, 3]),
        linear_bias=np.zeros(7),
    )
    kwargs = {}
    for key, value in change.items():
        (args if key in args else kwargs)[key] = value
    with pytest.raises(error, match=match):
        fastce.linear_cross_entropy(**args, **kwargs)


def test_thread_count_does_not_change_the_result():
    rng = np.random.default_rng(8)
    hidden, w, b, target, _, _ = make_head(rng, (64,), 16, 500, {})
    one = fastce.linear_cross_entropy_with_grad(hidden, w, target, b, num_threads=1)
    two = fastce.linear_cross_entropy_with_grad(hidden, w, target, b, num_threads=2)
    for a, c in zip(one, two):
        assert_allclose(a, c, rtol=1e-12)


def test_without_scipy_the_products_are_numpys_and_the_same(monkeypatch, path):
    rng = np.random.default_rng(9)
    hidden, w, b, target, _, _ = make_head(rng, (50,), 8, 300, {"ignore_index": -100})
    with_gemm = fastce.linear_cross_entropy_with_grad(hidden, w, target, b, max_block_bytes=4000)
    monkeypatch.setattr(linear, "_gemm_of", lambda dtype: None)
    # slices of classes of the NumPy path: a few classes per product
    without = fastce.linear_cross_entropy_with_grad(hidden, w, target, b, max_block_bytes=4000)
    for a, c in zip(with_gemm, without):
        assert_allclose(a, c, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("option", OPTIONS[:5], ids=str)
@pytest.mark.parametrize("per_sample", [False, True])
def test_evaluation_from_hidden_states_equals_evaluate(option, per_sample):
    rng = np.random.default_rng(10)
    hidden, w, b, target, cw, kwargs = make_head(rng, (4, 33), 6, 120, option)
    options = dict(topk=(1, 3, 7), bins=10, per_sample=per_sample, **kwargs)
    want = fastce.evaluate(full_logits(hidden, w, b), target, cw, axis=-1, **options)
    got = fastce.evaluate_linear(hidden, w, target, b, cw, max_block_bytes=120 * 8 * 9, **options)
    for name in ("loss", "perplexity", "confidence", "entropy", "ece", "weight_sum"):
        assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12, err_msg=name)
    assert got.count == want.count and got.accuracy == want.accuracy
    assert (got.bin_count == want.bin_count).all()
    if per_sample:
        for name in ("loss", "prediction", "target_rank", "confidence", "entropy"):
            assert_allclose(
                getattr(got.per_sample, name), getattr(want.per_sample, name), rtol=1e-13
            )
    acc = fastce.Accumulator(cw, topk=(1, 3, 7), bins=10, **kwargs)
    for rows in (slice(0, 1), slice(1, 4)):
        acc.update_linear(hidden[rows], w, target[rows], b, max_block_bytes=5000)
    assert_allclose(acc.result().loss, want.loss, rtol=1e-12)
    assert acc.result().accuracy == want.accuracy


def test_evaluation_from_hidden_states_checks_its_arguments():
    with pytest.raises(ValueError, match=r"shape \(V, 3\)"):
        fastce.evaluate_linear(np.zeros((4, 3)), np.zeros((7, 2)), np.zeros(4, dtype=int))
    with pytest.raises(TypeError, match="class indices"):
        fastce.evaluate_linear(np.zeros((4, 3)), np.zeros((7, 3)), np.full((4, 7), 1 / 7))
    acc = fastce.Accumulator()
    acc.update_linear(np.zeros((4, 3)), np.zeros((7, 3)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="classes"):
        acc.update_linear(np.zeros((4, 3)), np.zeros((8, 3)), np.zeros(4, dtype=int))
