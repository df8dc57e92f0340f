"""fastce.torch tells why a call went to torch: the logger "fastce.torch"
records each such call at DEBUG level with its reason, one case per reason
the README lists; calls fastce serves record nothing (and calls that
torch.compile traces record nothing either: a traced call does not run
as Python)."""

import logging
import warnings

import pytest

torch = pytest.importorskip("torch")

import fastce.torch as ft  # noqa: E402

F = torch.nn.functional
X = torch.randn(6, 5, dtype=torch.float64)
T = torch.tensor([0, 1, 2, 3, 4, 0])


class Tagged(torch.Tensor):
    """A tensor subclass with its own __torch_function__."""


CASES = {
    "meta": (lambda: ft.cross_entropy(X.to("meta"), T.to("meta")), "a tensor on meta"),
    "sparse": (lambda: ft.cross_entropy(X.to_sparse(), T), "sparse"),
    "subclass": (
        lambda: ft.cross_entropy(X.as_subclass(Tagged), T),
        "a tensor subclass with __torch_function__",
    ),
    "torch.func second derivative": (
        lambda: torch.func.jacrev(torch.func.grad(lambda x: ft.cross_entropy(x, T)))(X),
        "nested torch.func gradient transforms",
    ),
    "torch.func forward mode": (
        lambda: torch.func.jacfwd(lambda x: ft.cross_entropy(x, T))(X),
        "a torch.func forward-mode transform",
    ),
    "int logits": (lambda: ft.cross_entropy(X.long(), T), "logits of dtype torch.int64"),
    "int32 target": (lambda: ft.cross_entropy(X, T.int()), "a target of dtype torch.int32"),
    "mixed probabilities": (
        lambda: ft.cross_entropy(X.float(), torch.softmax(X, 1)),
        "a target of dtype torch.float64 for torch.float32 logits",
    ),
    "weight dtype": (
        lambda: ft.cross_entropy(X, T, torch.ones(5)),
        "a weight of dtype torch.float32",
    ),
    "target requires grad": (
        lambda: ft.cross_entropy(X, torch.softmax(X, 1).requires_grad_()),
        "a target that requires a gradient",
    ),
    "weight requires grad": (
        lambda: ft.cross_entropy(X, T, torch.ones(5, dtype=torch.float64, requires_grad=True)),
        "a weight that requires a gradient",
    ),
    "deprecated": (
        lambda: ft.cross_entropy(X, T, size_average=False),
        "the deprecated size_average= or reduce= argument",
    ),
    "checks": (
        lambda: ft.cross_entropy(X, torch.tensor([0, 1, 2, 3, 9, 0])),
        "fastce's checks rejected the call",
    ),
    "linear 3-d": (
        lambda: ft.linear_cross_entropy(torch.randn(2, 3, 4), torch.randn(5, 4), T[:2]),
        "3-d hidden states",
    ),
    "linear torch.func": (
        lambda: torch.func.grad(lambda h: ft.linear_cross_entropy(h, torch.randn(5, 4), T))(
            torch.randn(6, 4)
        ),
        "a torch.func transform is active over a linear cross-entropy",
    ),
    "linear float16": (
        lambda: ft.linear_cross_entropy(torch.randn(6, 4).half(), torch.randn(5, 4).half(), T),
        "hidden states of dtype torch.float16",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_fallback_says_why(name, caplog):
    call, reason = CASES[name]
    with caplog.at_level(logging.DEBUG, logger="fastce.torch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call()
        except (IndexError, RuntimeError, ValueError, NotImplementedError):
            pass  # torch's own answer to a call it rejects
    messages = [r.getMessage() for r in caplog.records if r.name == "fastce.torch"]
    assert any("computed by torch" in m and reason in m for m in messages), messages


def test_bfloat16_without_ml_dtypes_says_so(monkeypatch, caplog):
    monkeypatch.setattr(ft, "_LOGIT_DTYPES", (torch.float32, torch.float64, torch.float16))
    with caplog.at_level(logging.DEBUG, logger="fastce.torch"):
        ft.cross_entropy(X.bfloat16(), T)
    assert "bfloat16 logits without ml_dtypes installed" in caplog.text


def test_served_calls_record_nothing(caplog):
    with caplog.at_level(logging.DEBUG, logger="fastce.torch"):
        ft.cross_entropy(X, T)
        ft.cross_entropy(X.float().requires_grad_(), T).backward()
        ft.linear_cross_entropy(torch.randn(6, 4), torch.randn(5, 4), T)
    assert not [r for r in caplog.records if r.name == "fastce.torch"]


def test_a_rejected_linear_call_with_gradients_raises_torchs_error():
    # fastce's checks reject it inside the autograd function: torch answers,
    # and raises its own IndexError (not a private exception of fastce's)
    h = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(5, 3, requires_grad=True)
    with pytest.raises(IndexError):
        ft.linear_cross_entropy(h, w, torch.tensor([0, 1, 7, 2]))
