"""``fastce.torch.linear_cross_entropy`` and ``LinearCrossEntropyLoss``: torch's
linear-head loss, computed by fastce in blocks, checked against torch's own."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastce.torch as ft  # noqa: E402


def head_case(n=9, n_features=5, n_classes=13, dtype=torch.float64, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, n_features, generator=g, dtype=dtype)
    w = torch.randn(n_classes, n_features, generator=g, dtype=dtype) * 0.7
    b = torch.randn(n_classes, generator=g, dtype=dtype) if bias else None
    t = torch.randint(0, n_classes, (n,), generator=g)
    t[::4] = -100
    class_weight = torch.rand(n_classes, generator=g, dtype=dtype) + 0.2
    return h, w, b, t, class_weight


def grads_of(fn, h, w, b, t, grad_output, **kwargs):
    leaves = [a.detach().clone().requires_grad_(True) if a is not None else None for a in (h, w, b)]
    loss = fn(leaves[0], leaves[1], t, linear_bias=leaves[2], **kwargs)
    loss.backward(grad_output)
    return loss.detach(), [None if a is None else a.grad for a in leaves]


def torch_reference(h, w, t, linear_bias=None, ignore_index=None, **kwargs):
    index = -100 if ignore_index is None else ignore_index
    return F.cross_entropy(F.linear(h, w, linear_bias), t, ignore_index=index, **kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing, weighted", [(0.0, False), (0.2, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_gradients_are_torchs(reduction, smoothing, weighted, dtype):
    h, w, b, t, cw = head_case(dtype=dtype)
    kwargs = dict(reduction=reduction, label_smoothing=smoothing, weight=cw if weighted else None)
    go = (
        torch.randn(t.shape, dtype=dtype) if reduction == "none" else torch.tensor(0.7, dtype=dtype)
    )
    got, got_grads = grads_of(ft.linear_cross_entropy, h, w, b, t, go, **kwargs)
    want, want_grads = grads_of(torch_reference, h, w, b, t, go, **kwargs)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, **tol)
    for a, c in zip(got_grads, want_grads):
        torch.testing.assert_close(a, c, **tol)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(reduction):
    h, w, b, t, cw = head_case(n=5, n_features=3, n_classes=7)
    inputs = tuple(a.clone().requires_grad_(True) for a in (h, w, b))

    def f(h, w, b):
        return ft.linear_cross_entropy(
            h, w, t, linear_bias=b, weight=cw, reduction=reduction, label_smoothing=0.1
        )

    assert torch.autograd.gradcheck(f, inputs)


def test_calls_it_does_not_serve_are_torchs():
    h, w, b, t, _ = head_case()
    # 3-d input: torch's own error (it takes 1-d and 2-d input)
    with pytest.raises(RuntimeError, match="dimensionality"):
        ft.linear_cross_entropy(torch.randn(2, 13, 5, dtype=torch.float64), w, t)
    # mixed dtypes are promoted (or refused) by torch
    with pytest.raises(RuntimeError):
        ft.linear_cross_entropy(h.float(), w, t)
    # an out-of-range class raises torch's error
    bad = t.clone()
    bad[0] = 99
    with pytest.raises((IndexError, RuntimeError)):
        ft.linear_cross_entropy(h, w, bad)


def test_no_grad_computes_only_the_loss():
    h, w, b, t, _ = head_case()
    with torch.no_grad():
        loss = ft.linear_cross_entropy(h, w, t, linear_bias=b, options=object())
    torch.testing.assert_close(loss, torch_reference(h, w, t, linear_bias=b))


@pytest.mark.skipif(
    not hasattr(torch.nn, "LinearCrossEntropyLoss"), reason="torch without LinearCrossEntropyLoss"
)
def test_module_is_torchs_with_fastce_forward():
    torch.manual_seed(0)
    ours = ft.LinearCrossEntropyLoss(6, 20, bias=True, label_smoothing=0.1, dtype=torch.float64)
    theirs = torch.nn.LinearCrossEntropyLoss(
        6, 20, bias=True, label_smoothing=0.1, dtype=torch.float64
    )
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(11, 6, dtype=torch.float64)
    t = torch.randint(0, 20, (11,))
    a, c = ours(x, t), theirs(x, t)
    a.backward()
    c.backward()
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(ours.linear.weight.grad, theirs.linear.weight.grad)
    torch.testing.assert_close(ours.linear.bias.grad, theirs.linear.bias.grad)


class TinyLanguageModel(torch.nn.Module):
    """A small causal language model from a config, with random weights."""

    def __init__(self, vocab=500, width=32, heads=4, layers=2, context=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Embedding(context, width)
        layer = torch.nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, vocab)
        self.mask = torch.nn.Transformer.generate_square_subsequent_mask(context)

    def hidden(self, tokens):
        positions = torch.arange(tokens.shape[1])
        x = self.embed(tokens) + self.position(positions)
        n = tokens.shape[1]
        return self.blocks(x, mask=self.mask[:n, :n], is_causal=True)


def test_training_run_matches_torchs_loss():
    torch.manual_seed(0)
    model = TinyLanguageModel()
    twin = TinyLanguageModel()
    twin.load_state_dict(model.state_dict())
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin)]
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        tokens = torch.randint(0, 500, (4, 16), generator=g)
        labels = tokens[:, 1:].clone()
        labels[0, :3] = -100  # padding
        losses = []
        for m, opt, fastce_loss in ((model, optimisers[0], True), (twin, optimisers[1], False)):
            opt.zero_grad()
            h = m.hidden(tokens[:, :-1]).reshape(-1, 32)
            if fastce_loss:
                loss = ft.linear_cross_entropy(
                    h, m.head.weight, labels.reshape(-1), linear_bias=m.head.bias
                )
            else:
                loss = F.cross_entropy(m.head(h), labels.reshape(-1))
            loss.backward()
            losses.append(loss.item())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
        for opt in optimisers:
            opt.step()
    assert np.isfinite(losses[0])


def test_inputs_modified_before_backward_are_refused():
    # reduction="none" reads the inputs again in backward: as torch's own
    # functions do, a change in place between the passes is an error
    h, w, b, t, _ = head_case()
    h = h.clone().requires_grad_(True)
    x = h * 1.0
    loss = ft.linear_cross_entropy(x, w, t, linear_bias=b, reduction="none")
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()
