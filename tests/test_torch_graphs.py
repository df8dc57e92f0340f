"""fastce.torch inside torch's graphs and transforms, and under autocast.

The registered operator ``torch.ops.fastce.cross_entropy`` is what a
``torch.compile`` graph calls and what ``torch.func`` transforms see: its
schema, fake (shape) function and batching rule are checked with torch's own
``opcheck``; compiled training steps must call fastce's kernels (counted by a
spy on them) without graph breaks and give eager torch's losses and
gradients.  Under CPU autocast the loss has torch's dtype (float32) and is
computed from the half-precision logits in place.
"""

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastce.torch as ft  # noqa: E402
from fastce import functional  # noqa: E402

# torch's compiler and forward-mode decompositions still call torch.jit, which warns of its
# own deprecation
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


@pytest.fixture
def kernel_calls(monkeypatch):
    """The arrays each call into fastce's cross-entropy functions received."""
    calls = []
    for name in ("cross_entropy", "cross_entropy_with_grad"):
        real = getattr(functional, name)

        def spy(*args, _real=real, **kwargs):
            calls.append(args)
            return _real(*args, **kwargs)

        monkeypatch.setattr(ft._functional, name, spy)
    return calls


def _op_args(x, t, weight=None, reduction="mean", transform=None, want_grad=False, f32=False):
    softcap, temperature, z_loss = transform or (None, 1.0, 0.0)
    return (
        x, t, weight, -100, reduction, 0.1, softcap, temperature, z_loss,
        transform is not None, want_grad, f32,
    )  # fmt: skip


OPCHECK_CASES = {
    "mean": lambda: _op_args(torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, -100])),
    "grad-none-weight": lambda: _op_args(
        torch.randn(6, 5, requires_grad=True),
        torch.tensor([0, 1, 2, 3, 4, 0]),
        weight=torch.rand(5),
        reduction="none",
        want_grad=True,
    ),
    "kdim-probabilities": lambda: _op_args(
        torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True),
        torch.softmax(torch.randn(2, 5, 3, dtype=torch.float64), 1),
        want_grad=True,
    ),
    "transformed": lambda: _op_args(
        torch.randn(4, 7, requires_grad=True),
        torch.tensor([6, 0, 1, 2]),
        reduction="sum",
        transform=(5.0, 0.7, 1e-3),
        want_grad=True,
    ),
    "strided-grad": lambda: _op_args(
        torch.randn(8, 12)[:, ::2].requires_grad_(),
        torch.tensor([0, 1, 2, 3, 4, 5, 0, 1]),
        want_grad=True,
    ),
    "transposed-grad": lambda: _op_args(
        torch.randn(6, 4).t().requires_grad_(), torch.tensor([0, 1, 5, 3]), want_grad=True
    ),
    "unbatched-half-float32-loss": lambda: _op_args(
        torch.randn(9).bfloat16(), torch.tensor(3), want_grad=True, f32=True
    ),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_operator_passes_torchs_checks(case):
    torch.library.opcheck(torch.ops.fastce.cross_entropy.default, OPCHECK_CASES[case]())


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=40, width=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids)))


def _lm_loss(model, ids, labels, loss_fn):
    logits = model(ids)
    return loss_fn(logits.flatten(0, 1), labels.flatten())


def test_compiled_training_step_calls_fastce(kernel_calls):
    torch.manual_seed(0)
    ids = torch.randint(0, 40, (4, 9))
    labels = torch.randint(0, 40, (4, 9))
    labels[0, :4] = -100
    eager, compiled = TinyLM(), TinyLM()
    compiled.load_state_dict(eager.state_dict())
    # the forward pass compiled (its backward graph too), as training loops compile a model
    compiled_loss = torch.compile(_lm_loss)
    explanation = torch._dynamo.explain(_lm_loss)(compiled, ids, labels, ft.cross_entropy)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    kernel_calls.clear()
    for _ in range(3):
        want = _lm_loss(eager, ids, labels, F.cross_entropy)
        got = compiled_loss(compiled, ids, labels, ft.cross_entropy)
        want.backward()
        got.backward()
        torch.testing.assert_close(got, want)
        for p, q in zip(compiled.parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad)
        with torch.no_grad():
            for model in (eager, compiled):
                for p in model.parameters():
                    p -= 0.5 * p.grad
                    p.grad = None
    assert len(kernel_calls) == 3


def test_compiled_transformed_call(kernel_calls):
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 7, -100, 3, 3])

    def loss_and_extras(inp, fn):
        return fn(inp, t, softcap=4.0, z_loss=1e-2, return_z_loss=True, return_lse=True)

    compiled = torch.compile(loss_and_extras, backend="aot_eager", fullgraph=True)
    got = compiled(x, ft.cross_entropy)
    assert len(kernel_calls) == 1
    (got_grad,) = torch.autograd.grad(got[0], x)
    want = ft._torch_transformed(
        x, t, None, -100, "mean", 0.0, ft.check_logit_transform(4.0, 1.0, 1e-2)
    )
    (want_grad,) = torch.autograd.grad(want[0], x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.detach(), w.detach())
    torch.testing.assert_close(got_grad, want_grad)


def test_compiled_call_that_fastce_rejects_raises_torchs_error():
    compiled = torch.compile(ft.cross_entropy, backend="aot_eager", fullgraph=True)
    with pytest.raises(IndexError, match="out of bounds"):
        compiled(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 4, 1]))


def test_vmap_of_grad_gives_per_sample_gradients(kernel_calls):
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (6, 3))

    def per_sample(fn):
        return torch.func.vmap(torch.func.grad(lambda xi, ti: fn(xi, ti, label_smoothing=0.1)))(
            x, t
        )

    torch.testing.assert_close(per_sample(ft.cross_entropy), per_sample(F.cross_entropy))
    assert len(kernel_calls) == 6


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_autocast_gives_torchs_float32_loss(half, reduction, kernel_calls):
    torch.manual_seed(1)
    x = (3 * torch.randn(32, 300)).to(half).requires_grad_()
    t = torch.randint(0, 300, (32,))
    t[5] = -100
    with torch.autocast("cpu", dtype=half):
        got = ft.cross_entropy(x, t, reduction=reduction)
        want = F.cross_entropy(x, t, reduction=reduction)
    assert got.dtype == want.dtype == torch.float32
    # torch casts the logits to float32 exactly and computes in float32: so does fastce
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    grad_output = torch.rand_like(want)
    (got_grad,) = torch.autograd.grad(got, x, grad_output)
    (want_grad,) = torch.autograd.grad(want, x, grad_output)
    assert got_grad.dtype == want_grad.dtype == half
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-2, atol=1e-5)
    # the half-precision logits themselves, not a float32 copy
    (logits, *_), *_ = kernel_calls
    assert logits.__array_interface__["data"][0] == x.data_ptr()


def test_half_logits_without_autocast_keep_their_dtype():
    x = torch.randn(4, 6).bfloat16()
    t = torch.tensor([0, 1, 2, 3])
    assert ft.cross_entropy(x, t).dtype == F.cross_entropy(x, t).dtype == torch.bfloat16


def test_compiled_autocast_loss_is_float32(kernel_calls):
    def step(inp, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ft.cross_entropy(inp, t)

    x = torch.randn(8, 20).bfloat16().requires_grad_()
    t = torch.randint(0, 20, (8,))
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(x, t)
    assert got.dtype == torch.float32 and len(kernel_calls) == 1
    torch.testing.assert_close(got, F.cross_entropy(x.float(), t))


LINEAR_OPCHECK_CASES = {
    "mean-bias": lambda: (
        torch.randn(6, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True),
        torch.randn(9, requires_grad=True), torch.tensor([0, 1, 8, -100, 3, 3]), None,
        -100, "mean", 0.0, None, 1.0, 0.0, True, None,
    ),
    "none-weight-transformed": lambda: (
        torch.randn(5, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(7, 3, dtype=torch.float64, requires_grad=True), None,
        torch.tensor([6, 0, 1, 2, 2]), torch.rand(7, dtype=torch.float64),
        -100, "none", 0.1, 3.0, 0.8, 1e-3, False, None,
    ),
    "no-grad-unbatched": lambda: (
        torch.randn(4), torch.randn(6, 4), None, torch.tensor(5), None,
        -100, "sum", 0.0, None, 1.0, 0.0, False, None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LINEAR_OPCHECK_CASES))
def test_linear_operator_passes_torchs_checks(case):
    torch.library.opcheck(
        torch.ops.fastce.linear_cross_entropy.default, LINEAR_OPCHECK_CASES[case]()
    )


@pytest.fixture
def linear_calls(monkeypatch):
    calls = []
    for name in ("linear_cross_entropy", "linear_cross_entropy_with_grad"):
        real = getattr(ft._linear, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(ft._linear, name, spy)
    return calls


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_linear_cross_entropy_calls_fastce(reduction, linear_calls):
    torch.manual_seed(2)
    h = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 9, 3, -100, 4, 4, 1, 2])

    def loss_of(fn):
        loss = fn(h, w, t, linear_bias=b, reduction=reduction, label_smoothing=0.1)
        return loss if reduction != "none" else (loss * torch.arange(8.0)).sum()

    explanation = torch._dynamo.explain(loss_of)(ft.linear_cross_entropy)
    assert explanation.graph_break_count == 0
    linear_calls.clear()
    got = torch.compile(loss_of, backend="aot_eager", fullgraph=True)(ft.linear_cross_entropy)
    got_grads = torch.autograd.grad(got, (h, w, b))
    want = loss_of(F.linear_cross_entropy)
    want_grads = torch.autograd.grad(want, (h, w, b))
    torch.testing.assert_close(got, want)
    for g, v in zip(got_grads, want_grads):
        torch.testing.assert_close(g, v)
    assert linear_calls == (
        ["linear_cross_entropy_with_grad"]
        if reduction == "mean"
        else ["linear_cross_entropy", "linear_cross_entropy_with_grad"]
    )


def test_operator_answers_a_declined_call_with_torchs_loss(monkeypatch):
    """Where fastce's checks reject a call torch accepts (none is known: a
    stand-in rejects every call here), the operator gives torch's loss, and
    refuses its gradient with a clear error rather than a wrong one."""

    def reject(*args, **kwargs):
        raise ValueError("a stand-in rejection")

    for name in ("cross_entropy", "cross_entropy_with_grad"):
        monkeypatch.setattr(ft._functional, name, reject)
    x = torch.randn(5, 4, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, -100])
    compiled = torch.compile(ft.cross_entropy, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), F.cross_entropy(x, t))
    with pytest.raises(RuntimeError, match="a stand-in rejection.*torch.nn.functional"):
        compiled(x, t)
