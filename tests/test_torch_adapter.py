"""``fastce.torch``: a drop-in for ``torch.nn.functional.cross_entropy`` on CPU.

Values and gradients are compared with torch's own function, the analytic
gradient with finite differences (``gradcheck``), and every path is checked
to be the one it claims: fastce's kernels, in place on the tensor's memory,
for the calls it serves; torch's function, with torch's errors, for the rest.
"""

import doctest
import itertools
import os
import subprocess
import sys
import textwrap
import zlib

import cases
import numpy as np
import pytest
from numpy.testing import assert_allclose

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastce  # noqa: E402
import fastce.torch as ft  # noqa: E402

REDUCTIONS = ("mean", "sum", "none")

# logits shape (class axis 1, or 0 unbatched)
GEOMETRIES = {
    "2d": (13, 5),
    "unbatched": (5,),
    "kdim": (3, 4, 2, 3),
    "empty": (0, 5),
}
OPTIONS = {
    "index": dict(),
    "index-ignore": dict(ignore_index=-100),
    "index-weight-ignore-ls": dict(weight=True, ignore_index=-100, label_smoothing=0.2),
    "index-ignore3": dict(ignore_index=3),
    "prob": dict(prob=True),
    "prob-weight-ls": dict(prob=True, weight=True, label_smoothing=0.1),
}


def make_case(geometry, option, dtype=torch.float64, seed=0):
    """The shared generator's case (``cases.make_case``) as torch tensors:
    ``(logits, target, kwargs)`` with the weight in ``kwargs``."""
    shape = GEOMETRIES[geometry]
    logits, target, weight, kwargs = cases.make_case(
        np.random.default_rng(seed), shape, None, np.float64, option, scale=3.0
    )
    del kwargs["axis"]  # torch's rule: class axis 1, or 0 unbatched
    kwargs.setdefault("label_smoothing", 0.0)
    if weight is not None:
        kwargs["weight"] = torch.from_numpy(weight).to(dtype)
    x = torch.from_numpy(logits).to(dtype)
    t = torch.from_numpy(target)
    return x, t.to(dtype) if option.get("prob") else t, kwargs


def loss_and_grad(fn, x, target, reduction, grad_output, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, target, reduction=reduction, **kwargs)
    loss.backward(grad_output)
    return loss.detach(), x.grad


def grad_output_for(loss_shape, dtype, seed):
    if loss_shape == "scalar":
        return torch.tensor(0.7, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(loss_shape, generator=g, dtype=torch.float64).to(dtype)


def assert_close(got, want, dtype):
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    tol = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6), torch.float16: (2e-3, 2e-3)}[
        dtype
    ]
    assert_allclose(
        got.double().numpy(), want.double().numpy(), rtol=tol[0], atol=tol[1], equal_nan=True
    )


class Spy:
    """Records the calls the adapter makes into fastce's public functions."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("cross_entropy", "cross_entropy_with_grad"):
            real = getattr(fastce.functional, name)

            def spy(*args, _real=real, _name=name, **kwargs):
                self.calls.append((_name, args, kwargs))
                return _real(*args, **kwargs)

            monkeypatch.setattr(ft._functional, name, spy)

    @property
    def names(self):
        return [name for name, _, _ in self.calls]


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


# --------------------------------------------------------------------------
# values and gradients against torch.nn.functional.cross_entropy

CASES = [
    pytest.param(g, o, r, id=f"{g}-{o}-{r}")
    for g, o, r in itertools.product(GEOMETRIES, OPTIONS, REDUCTIONS)
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("geometry, option, reduction", CASES)
def test_matches_torch_value_and_gradient(geometry, option, reduction, dtype, spy):
    x, target, kwargs = make_case(
        geometry, OPTIONS[option], dtype, seed=zlib.crc32(f"{geometry}{option}{reduction}".encode())
    )
    want_loss = F.cross_entropy(x, target, reduction=reduction, **kwargs)
    shape = "scalar" if reduction != "none" else tuple(want_loss.shape)
    go = grad_output_for(shape, dtype, seed=3)
    want_loss, want_grad = loss_and_grad(F.cross_entropy, x, target, reduction, go, **kwargs)
    loss, grad = loss_and_grad(ft.cross_entropy, x, target, reduction, go, **kwargs)
    assert spy.names == ["cross_entropy_with_grad"]
    assert_close(loss, want_loss, dtype)
    assert_close(grad, want_grad, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float16_logits_give_float16_results(reduction, spy):
    x, target, kwargs = make_case("kdim", OPTIONS["index-weight-ignore-ls"], torch.float32, 5)
    x, kwargs["weight"] = x.half(), kwargs["weight"].half()
    want_loss = F.cross_entropy(x, target, reduction=reduction, **kwargs)
    go = torch.ones_like(want_loss)
    want_loss, want_grad = loss_and_grad(F.cross_entropy, x, target, reduction, go, **kwargs)
    loss, grad = loss_and_grad(ft.cross_entropy, x, target, reduction, go, **kwargs)
    assert spy.names == ["cross_entropy_with_grad"]
    assert_close(loss, want_loss, torch.float16)
    assert_close(grad, want_grad, torch.float16)


# bfloat16: read in place, computed in float32, the loss and the gradient
# rounded once at the end.  Torch rounds its intermediate steps too, so the
# two are compared with the float64 computation on the same bfloat16 values:
# fastce's results lie within half a bfloat16 ulp (relative 2**-8) of it, and
# no further from it than torch's own bfloat16 results.
BF16_RTOL, BF16_ATOL = 2.0**-8, 1e-7
BF16_CASES = [
    pytest.param(g, o, r, id=f"{g}-{o}-{r}")
    for g, o, r in itertools.product(
        ("2d", "unbatched", "kdim"),
        ("index", "index-weight-ignore-ls", "prob-weight-ls"),
        REDUCTIONS,
    )
]


@pytest.fixture
def no_torch_fallback(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the adapter handed the call to torch's cross_entropy")

    monkeypatch.setattr(ft, "_torch_cross_entropy", refuse)


def float64_truth(x, target, reduction, **kwargs):
    """Loss and gradient in float64 of the very (bfloat16) values given."""
    exact = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    target = target.double() if target.is_floating_point() else target
    loss = F.cross_entropy(x.double(), target, reduction=reduction, **exact)
    return loss_and_grad(
        F.cross_entropy, x.double(), target, reduction, torch.ones_like(loss), **exact
    )


def assert_bfloat16_nearer_than_torch(got, torchs, truth):
    assert got.dtype == torchs.dtype == torch.bfloat16
    assert got.shape == truth.shape
    got, torchs, truth = got.double().numpy(), torchs.double().numpy(), truth.numpy()
    assert_allclose(got, truth, rtol=BF16_RTOL, atol=BF16_ATOL)  # NaN where truth is NaN
    defined = ~np.isnan(truth)  # a mean over ignored targets only is NaN
    assert np.abs(got - truth)[defined].max(initial=0) <= np.abs(torchs - truth)[defined].max(
        initial=0
    )


@pytest.mark.parametrize("geometry, option, reduction", BF16_CASES)
def test_bfloat16_logits_give_bfloat16_results(geometry, option, reduction, spy, no_torch_fallback):
    pytest.importorskip("ml_dtypes")
    x, target, kwargs = make_case(
        geometry,
        OPTIONS[option],
        torch.bfloat16,
        seed=zlib.crc32(f"bf16{geometry}{option}{reduction}".encode()),
    )
    want_loss, want_grad = float64_truth(x, target, reduction, **kwargs)
    go = torch.ones(want_loss.shape, dtype=torch.bfloat16)
    torch_loss, torch_grad = loss_and_grad(F.cross_entropy, x, target, reduction, go, **kwargs)
    loss, grad = loss_and_grad(ft.cross_entropy, x, target, reduction, go, **kwargs)
    assert spy.names == ["cross_entropy_with_grad"]
    assert_bfloat16_nearer_than_torch(loss, torch_loss, want_loss)
    assert_bfloat16_nearer_than_torch(grad, torch_grad, want_grad)
    with torch.no_grad():
        loss_only = ft.cross_entropy(x, target, reduction=reduction, **kwargs)
    torch.testing.assert_close(loss_only, loss, rtol=0, atol=0, equal_nan=True)
    assert spy.names[-1] == "cross_entropy"


@pytest.mark.parametrize("view", ["transposed", "strided-classes", "channels-last"])
def test_reads_strided_bfloat16_tensors_in_place(view, spy, no_torch_fallback):
    pytest.importorskip("ml_dtypes")
    base = (torch.randn(40, 24, generator=torch.Generator().manual_seed(8)) * 3).bfloat16()
    if view == "transposed":
        x = base.t()
    elif view == "strided-classes":
        x = base[:, 1::2]
    else:
        x = base.reshape(2, 4, 5, 24).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    target = torch.randint(0, x.shape[1], x.shape[:1] + x.shape[2:])
    x.requires_grad_(True)
    loss = ft.cross_entropy(x, target, reduction="sum")
    loss.backward()
    loss, grad = loss.detach(), x.grad
    logits = spy.calls[0][1][0]
    assert logits.dtype.name == "bfloat16"
    assert np.shares_memory(logits, base.view(torch.int16).numpy())
    assert logits.strides == tuple(s * x.element_size() for s in x.stride())
    np.testing.assert_array_equal(logits.astype(np.float32), x.detach().float().numpy())
    want_loss, want_grad = float64_truth(x, target, "sum")
    torch_loss, torch_grad = loss_and_grad(F.cross_entropy, x, target, "sum", torch.tensor(1.0))
    assert_bfloat16_nearer_than_torch(loss, torch_loss, want_loss)
    assert_bfloat16_nearer_than_torch(grad, torch_grad, want_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_uint8_targets_are_class_indices(reduction, spy):
    x, target, _ = make_case("2d", OPTIONS["index"], torch.float32)
    want = F.cross_entropy(x, target.to(torch.uint8), reduction=reduction)
    got = ft.cross_entropy(x, target.to(torch.uint8), reduction=reduction)
    assert spy.names == ["cross_entropy"]
    assert_close(got, want, torch.float32)


def test_backward_scales_the_fused_gradient():
    x, target, kwargs = make_case("2d", OPTIONS["index-weight-ignore-ls"])
    x.requires_grad_(True)
    (2.5 * ft.cross_entropy(x, target, **kwargs)).backward()
    scaled = x.grad.clone()
    x.grad = None
    ft.cross_entropy(x, target, **kwargs).backward()
    assert_allclose(scaled.numpy(), 2.5 * x.grad.numpy(), rtol=1e-14)


def test_retain_graph_backward_twice_accumulates():
    x, target, _ = make_case("2d", OPTIONS["index"])
    x.requires_grad_(True)
    loss = ft.cross_entropy(x, target)
    loss.backward(retain_graph=True)
    once = x.grad.clone()
    loss.backward()
    assert_allclose(x.grad.numpy(), 2 * once.numpy(), rtol=1e-14)


def test_unbatched_none_reduction_with_scalar_grad_output():
    x = torch.tensor([1.0, 2.0, 0.1], dtype=torch.float64, requires_grad=True)
    loss = ft.cross_entropy(x, torch.tensor(1), reduction="none")
    assert loss.shape == ()
    loss.backward(torch.tensor(-2.0, dtype=torch.float64))
    assert_allclose(x.grad.numpy(), -2.0 * np.array([0.242433, -0.340999, 0.098566]), atol=2e-6)


# --------------------------------------------------------------------------
# gradcheck: the gradient against central finite differences, in float64

GRADCHECK = [
    ("2d", "index", "mean"),
    ("2d", "index-weight-ignore-ls", "mean"),
    ("2d", "index-weight-ignore-ls", "sum"),
    ("2d", "index-weight-ignore-ls", "none"),
    ("kdim", "index-ignore", "none"),
    ("kdim", "prob-weight-ls", "mean"),
    ("unbatched", "index", "none"),
    ("unbatched", "prob", "sum"),
]


@pytest.mark.parametrize(
    "geometry, option, reduction", GRADCHECK, ids=["-".join(c) for c in GRADCHECK]
)
def test_gradcheck(geometry, option, reduction, spy):
    x, target, kwargs = make_case(geometry, OPTIONS[option], torch.float64, seed=11)
    x.requires_grad_(True)

    def fn(inp):
        return ft.cross_entropy(inp, target, reduction=reduction, **kwargs)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert "cross_entropy_with_grad" in spy.names


def test_gradcheck_fails_on_a_wrong_gradient(monkeypatch):
    """The check above can fail: a gradient off by 1% is caught."""
    real = fastce.functional.cross_entropy_with_grad

    def off(*args, **kwargs):
        loss, grad = real(*args, **kwargs)
        grad *= 1.01
        return loss, grad

    monkeypatch.setattr(ft._functional, "cross_entropy_with_grad", off)
    x, target, _ = make_case("2d", OPTIONS["index"], torch.float64)
    x.requires_grad_(True)
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        torch.autograd.gradcheck(lambda inp: ft.cross_entropy(inp, target), (x,))


def test_second_derivative_raises_clearly():
    x, target, _ = make_case("2d", OPTIONS["index"])
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(ft.cross_entropy(x, target), x, create_graph=True)
    assert grad.requires_grad
    with pytest.raises(RuntimeError, match="no second derivative"):
        grad.sum().backward()
    # also when the gradient is one term of a larger penalty
    y = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ft.cross_entropy(y, target), y, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        ((g**2).sum() + (y**2).sum()).backward()


# --------------------------------------------------------------------------
# the fastce path: fused, in place, loss only when no gradient is wanted


def test_reads_contiguous_tensors_in_place(spy):
    x, target, _ = make_case("2d", OPTIONS["index"], torch.float32)
    x.requires_grad_(True)
    ft.cross_entropy(x, target)
    ((name, args, kwargs),) = spy.calls
    assert name == "cross_entropy_with_grad"
    logits, tgt = args[0], args[1]
    assert isinstance(logits, np.ndarray) and isinstance(tgt, np.ndarray)
    assert logits.__array_interface__["data"][0] == x.data_ptr()
    assert tgt.__array_interface__["data"][0] == target.data_ptr()
    # the gradient goes to memory the call allocates, which the kernels know to be new
    assert kwargs.get("out") is None and kwargs["grad_output"] == 1.0


@pytest.mark.parametrize("view", ["transposed", "strided-rows", "strided-classes", "channels-last"])
def test_reads_strided_tensors_in_place(view, spy):
    base = torch.randn(40, 24, dtype=torch.float64)
    if view == "transposed":
        x = base.t()  # (24, 40): Fortran order
    elif view == "strided-rows":
        x = base[::3]  # every third row
    elif view == "strided-classes":
        x = base[:, 1::2]  # every other class
    else:
        x = base.reshape(2, 4, 5, 24).permute(0, 3, 1, 2)  # channels-last (N, C, H, W)
    assert not x.is_contiguous()
    C = x.shape[1]
    target = torch.randint(0, C, x.shape[:1] + x.shape[2:])
    x.requires_grad_(True)
    loss = ft.cross_entropy(x, target, reduction="sum")
    loss.backward()
    logits = spy.calls[0][1][0]
    assert np.shares_memory(logits, base.numpy())
    assert logits.strides == tuple(s * x.element_size() for s in x.stride())
    want_loss, want_grad = loss_and_grad(
        F.cross_entropy, x, target, "sum", torch.tensor(1.0, dtype=torch.float64)
    )
    assert_close(loss.detach(), want_loss, torch.float64)
    assert_close(x.grad, want_grad, torch.float64)


def test_inputs_are_never_modified():
    x, target, kwargs = make_case("kdim", OPTIONS["prob-weight-ls"], torch.float32)
    copies = [t.clone() for t in (x, target, kwargs["weight"])]
    x.requires_grad_(True)
    ft.cross_entropy(x, target, reduction="none", **kwargs).sum().backward()
    for before, after in zip(copies, (x, target, kwargs["weight"])):
        assert torch.equal(before, after.detach())


def test_no_grad_computes_the_loss_only(spy):
    x, target, _ = make_case("2d", OPTIONS["index"], torch.float32)
    x.requires_grad_(True)
    with torch.no_grad():
        loss = ft.cross_entropy(x, target)
    assert spy.names == ["cross_entropy"]
    assert loss.grad_fn is None and not loss.requires_grad
    x.requires_grad_(False)
    ft.cross_entropy(x, target)
    with torch.inference_mode():
        inference = ft.cross_entropy(x, target)
    assert spy.names == ["cross_entropy"] * 3
    assert_close(inference, F.cross_entropy(x, target), torch.float32)


def test_follows_torch_thread_count(spy):
    x, target, _ = make_case("2d", OPTIONS["index"], torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ft.cross_entropy(x, target)
    finally:
        torch.set_num_threads(before)
    assert spy.calls[0][2]["num_threads"] == 1


def test_gradient_carries_no_graph_and_loss_has_one():
    x, target, _ = make_case("2d", OPTIONS["index"], torch.float32)
    x.requires_grad_(True)
    loss = ft.cross_entropy(x, target)
    assert loss.requires_grad and loss.grad_fn is not None
    assert loss.dtype == torch.float32 and loss.shape == ()
    loss.backward()
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype


# --------------------------------------------------------------------------
# what torch answers: unserved tensors and arguments, and every error


def test_bfloat16_goes_to_torch_without_ml_dtypes():
    # NumPy has no bfloat16 without ml_dtypes: the adapter cannot view the tensor
    code = textwrap.dedent("""
        import sys
        sys.modules["ml_dtypes"] = None
        import torch, fastce.torch as ft
        assert torch.bfloat16 not in ft._LOGIT_DTYPES
        def refuse(*args, **kwargs):
            raise AssertionError("fastce computed a bfloat16 call")
        ft._functional.cross_entropy_with_grad = ft._functional.cross_entropy = refuse
        x = torch.randn(13, 5).bfloat16().requires_grad_(True)
        target = torch.randint(0, 5, (13,))
        loss = ft.cross_entropy(x, target)
        assert loss.dtype == torch.bfloat16
        assert torch.equal(loss, torch.nn.functional.cross_entropy(x, target))
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_mixed_dtype_probabilities_go_to_torch(spy):
    """torch promotes float32 logits against float64 probabilities: a float64 loss."""
    x, target, _ = make_case("2d", OPTIONS["prob"], torch.float32)
    got = ft.cross_entropy(x, target.double())
    want = F.cross_entropy(x, target.double())
    assert spy.calls == []
    assert got.dtype == want.dtype == torch.float64
    assert_close(got, want, torch.float64)


def test_meta_tensors_go_to_torch(spy):
    x = torch.empty(8, 5, device="meta", requires_grad=True)
    loss = ft.cross_entropy(x, torch.empty(8, dtype=torch.long, device="meta"))
    assert spy.calls == [] and loss.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_go_to_torch(spy):
    x = torch.randn(8, 5, device="cuda", requires_grad=True)
    t = torch.randint(0, 5, (8,), device="cuda")
    loss = ft.cross_entropy(x, t)
    loss.backward()
    assert spy.calls == [] and loss.device.type == "cuda"
    assert torch.allclose(loss, F.cross_entropy(x, t))


def test_target_gradient_goes_to_torch(spy):
    x, target, _ = make_case("2d", OPTIONS["prob"])
    x.requires_grad_(True)
    target.requires_grad_(True)
    ft.cross_entropy(x, target).backward()
    assert spy.calls == []
    assert target.grad is not None
    want = -torch.log_softmax(x.detach(), 1) / x.shape[0]
    assert_close(target.grad, want, torch.float64)


def test_weight_requiring_grad_goes_to_torch(spy):
    """torch has no gradient for the weight, and says so: so does the adapter."""
    x, target, _ = make_case("2d", OPTIONS["index"])
    weight = torch.rand(5, dtype=torch.float64, requires_grad=True)
    want = _outcome(F.cross_entropy, x, target, weight)
    got = _outcome(ft.cross_entropy, x, target, weight)
    assert spy.calls == []
    assert isinstance(want, RuntimeError) and type(got) is type(want)
    assert str(got) == str(want)


def test_legacy_arguments_go_to_torch(spy):
    x, target, _ = make_case("2d", OPTIONS["index"])
    with pytest.warns(UserWarning, match="deprecated"):
        got = ft.cross_entropy(x, target, size_average=False)
    assert spy.calls == []
    assert_close(got, F.cross_entropy(x, target, reduction="sum"), torch.float64)


class Tagged(torch.Tensor):
    """A tensor subclass with its own __torch_function__ (kept by every op)."""


def test_tensor_subclasses_go_to_torch(spy):
    x, target, _ = make_case("2d", OPTIONS["index"])
    loss = ft.cross_entropy(x.as_subclass(Tagged), target)
    assert spy.calls == [] and type(loss) is Tagged


def test_functorch_transforms_are_served(spy):
    x, target, _ = make_case("2d", OPTIONS["index"])
    grad = torch.func.grad(lambda inp: ft.cross_entropy(inp, target))(x)
    want = torch.func.grad(lambda inp: F.cross_entropy(inp, target))(x)
    batched = torch.func.vmap(lambda inp, t: ft.cross_entropy(inp, t))(x, target)
    assert "cross_entropy_with_grad" in spy.names and "cross_entropy" in spy.names
    assert_close(grad, want, torch.float64)
    assert_close(batched, F.cross_entropy(x, target, reduction="none"), torch.float64)


# torch's forward-mode decompositions use torch.jit.script, which warns of its deprecation
@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_second_derivatives_go_to_torch(spy):
    """fastce's gradient has no derivative of its own: a Hessian (forward
    over reverse mode, or reverse over reverse) is torch's."""
    x, target, _ = make_case("2d", OPTIONS["index"])
    x = x[:3]
    target = target[:3]
    want = torch.func.hessian(lambda inp: F.cross_entropy(inp, target))(x)
    got = torch.func.hessian(lambda inp: ft.cross_entropy(inp, target))(x)
    twice = torch.func.jacrev(torch.func.jacrev(lambda inp: ft.cross_entropy(inp, target)))(x)
    assert spy.calls == []
    assert_close(got, want, torch.float64)
    assert_close(twice, want, torch.float64)


def test_torch_compile_calls_fastce(spy):
    x, target, _ = make_case("2d", OPTIONS["index"])
    compiled = torch.compile(
        lambda inp, t: ft.cross_entropy(inp, t), backend="eager", fullgraph=True
    )
    got = compiled(x, target)
    assert spy.names == ["cross_entropy"]
    assert_close(got, F.cross_entropy(x, target), torch.float64)


def _outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - the outcome is the exception
        return err


x_, t_ = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
BAD_CALLS = {
    "target-out-of-range": (x_, torch.tensor([0, 1, 3, 0]), {}),
    "target-negative": (x_, torch.tensor([0, -1, 2, 0]), {}),
    "batch-mismatch": (x_, torch.tensor([0, 1, 2]), {}),
    "kdim-mismatch": (torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long), {}),
    "prob-shape": (x_, torch.rand(4, 2), {}),
    "int32-target": (x_, t_.int(), {}),
    "bool-target": (x_, t_.bool(), {}),
    "float-index-target": (x_, t_.float(), {}),
    "int-logits": (x_.long(), t_, {}),
    "0d-logits": (torch.tensor(1.0), torch.tensor(0), {}),
    "bad-reduction": (x_, t_, {"reduction": "avg"}),
    "label-smoothing": (x_, t_, {"label_smoothing": 1.5}),
    "weight-shape": (x_, t_, {"weight": torch.ones(4)}),
    "weight-dtype": (x_, t_, {"weight": torch.ones(3, dtype=torch.float64)}),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("case", BAD_CALLS)
def test_errors_are_torch_errors(case, requires_grad):
    x, target, kwargs = BAD_CALLS[case]
    if requires_grad and x.is_floating_point():
        x = x.detach().requires_grad_(True)
    want = _outcome(F.cross_entropy, x, target, **kwargs)
    got = _outcome(ft.cross_entropy, x, target, **kwargs)
    assert isinstance(want, Exception), f"torch accepts {case}"
    assert type(got) is type(want)
    assert str(got) == str(want)


def test_single_class_warns_and_matches_torch():
    x = torch.randn(6, 1)
    with pytest.warns(RuntimeWarning, match="single class"):
        loss = ft.cross_entropy(x, torch.zeros(6, dtype=torch.long))
    assert loss.item() == 0.0 == F.cross_entropy(x, torch.zeros(6, dtype=torch.long)).item()


# --------------------------------------------------------------------------
# CrossEntropyLoss: torch's module with fastce's forward


def test_module_is_torch_module_with_fastce_forward(spy):
    weight = torch.rand(5) + 0.5
    ours = ft.CrossEntropyLoss(weight=weight, ignore_index=2, label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=2, label_smoothing=0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss) and isinstance(ours, torch.nn.Module)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert torch.equal(ours.state_dict()["weight"], theirs.state_dict()["weight"])
    x, target, _ = make_case("2d", OPTIONS["index"], torch.float32)
    want_loss, want_grad = loss_and_grad(
        lambda *a, reduction, **k: theirs(*a), x, target, "mean", torch.tensor(1.0)
    )
    loss, grad = loss_and_grad(
        lambda *a, reduction, **k: ours(*a), x, target, "mean", torch.tensor(1.0)
    )
    assert spy.names == ["cross_entropy_with_grad"]
    assert_close(loss, want_loss, torch.float32)
    assert_close(grad, want_grad, torch.float32)


def test_module_follows_its_weight_buffer(spy):
    criterion = ft.CrossEntropyLoss(weight=torch.rand(5) + 0.5, reduction="sum").double()
    assert criterion.weight.dtype == torch.float64
    criterion.load_state_dict({"weight": torch.arange(1.0, 6.0, dtype=torch.float64)})
    x, target, _ = make_case("2d", OPTIONS["index"], torch.float64)
    got = criterion(x, target)
    want = F.cross_entropy(x, target, torch.arange(1.0, 6.0, dtype=torch.float64), reduction="sum")
    assert spy.names == ["cross_entropy"]
    assert_close(got, want, torch.float64)


def test_import_without_torch_says_what_is_missing():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import fastce.torch\n"
        "except ImportError as err:\n    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fastce.torch is the PyTorch drop-in and needs torch" in done.stdout
    done = subprocess.run(
        [sys.executable, "-c", "import sys, fastce; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "False"  # import fastce never imports torch


def test_documented_examples_run():
    result = doctest.testmod(ft, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------
# one process, two OpenMP users: neither may abort or hang the other

COEXIST = textwrap.dedent(
    """
    import sys
    first, second = sys.argv[1:]
    mods = {}
    for name in (first, second):
        mods[name] = __import__(name)
    import fastce.torch
    torch, fastce = mods["torch"], mods["fastce"]
    torch.set_num_threads(2)
    x = torch.randn(4096, 1000, requires_grad=True)
    t = torch.randint(0, 1000, (4096,))
    for _ in range(3):
        (x @ torch.randn(1000, 64)).sum().backward()          # torch's thread team
        fastce.torch.cross_entropy(x, t).backward()           # fastce's thread team
        fastce.cross_entropy(x.detach().numpy(), t.numpy(), num_threads=2)
    print("ok", fastce._config.config()["openmp"])
    """
)


@pytest.mark.parametrize(
    "order", [("fastce", "torch"), ("torch", "fastce")], ids=["fastce-first", "torch-first"]
)
def test_openmp_runtimes_coexist_with_torch(order):
    done = subprocess.run(
        [sys.executable, "-c", COEXIST, *order],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "ok"
