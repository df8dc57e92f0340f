"""A real training run: a small classifier on scikit-learn's bundled digits.

The same network, from the same initial weights and with the same batches, is
trained once with ``torch.nn.CrossEntropyLoss`` and once with
``fastce.torch.CrossEntropyLoss``.  Both must learn (test accuracy above 0.9),
reach the same accuracy, and follow the same loss curve: the two losses give
the same gradients to float32 rounding, so the runs may drift apart only by
rounding.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")
model_selection = pytest.importorskip("sklearn.model_selection")

import fastce.torch as ft  # noqa: E402

EPOCHS = 12
BATCH = 64


def digits():
    """The 1797 8x8 digit images shipped with scikit-learn (no download)."""
    data = datasets.load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    as_tensor = torch.from_numpy
    return (
        as_tensor(x_train),
        as_tensor(y_train.astype(np.int64)),
        as_tensor(x_test),
        as_tensor(y_test.astype(np.int64)),
    )


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )


def train(criterion, data):
    """Per-epoch mean training loss, per-epoch test loss, final test accuracy."""
    x_train, y_train, x_test, y_test = data
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    order = torch.Generator().manual_seed(1)
    train_losses, test_losses = [], []
    for _ in range(EPOCHS):
        model.train()
        total = 0.0
        permutation = torch.randperm(len(x_train), generator=order)
        for start in range(0, len(x_train), BATCH):
            batch = permutation[start : start + BATCH]
            optimizer.zero_grad()
            loss = criterion(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        train_losses.append(total / len(x_train))
        model.eval()
        with torch.no_grad():
            logits = model(x_test)
            test_losses.append(criterion(logits, y_test).item())
    accuracy = (logits.argmax(1) == y_test).double().mean().item()
    return np.array(train_losses), np.array(test_losses), accuracy


@pytest.fixture(scope="module")
def runs():
    data = digits()
    assert data[0].shape == (1347, 64) and data[2].shape == (450, 64)
    return {
        "torch": train(torch.nn.CrossEntropyLoss(label_smoothing=0.05), data),
        "fastce": train(ft.CrossEntropyLoss(label_smoothing=0.05), data),
    }


def test_both_losses_learn_the_digits(runs):
    for name, (train_losses, _, accuracy) in runs.items():
        assert accuracy > 0.9, f"{name}: test accuracy {accuracy:.3f}"
        assert train_losses[-1] < 0.25 * train_losses[0], f"{name}: {train_losses}"


def test_same_accuracy_and_loss_curves(runs):
    torch_train, torch_test, torch_acc = runs["torch"]
    fast_train, fast_test, fast_acc = runs["fastce"]
    assert abs(torch_acc - fast_acc) <= 2 / 450  # at most two test images apart
    np.testing.assert_allclose(fast_train, torch_train, rtol=1e-4)
    np.testing.assert_allclose(fast_test, torch_test, rtol=1e-4)


def test_fastce_run_used_fastce_kernels(monkeypatch):
    """The fastce run really went through fastce: its kernels, in training and in eval."""
    calls = []
    for name in ("cross_entropy", "cross_entropy_with_grad"):
        real = getattr(ft._functional, name)
        monkeypatch.setattr(
            ft._functional,
            name,
            lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k),
        )
    x_train, y_train, x_test, y_test = digits()
    model = make_model()
    criterion = ft.CrossEntropyLoss()
    criterion(model(x_train[:BATCH]), y_train[:BATCH]).backward()
    with torch.no_grad():
        criterion(model(x_test), y_test)
    assert calls == ["cross_entropy_with_grad", "cross_entropy"]
