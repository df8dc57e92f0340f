"""Every bad argument gets one of the documented error types, with a message
that names what was received and what to pass instead."""

import numpy as np
import pytest

import fastce

X = np.random.default_rng(2).standard_normal((4, 3))
T = np.array([0, 1, 2, 0])


def test_a_tensor_that_requires_grad_is_refused_with_a_way_forward():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="detach"):
        fastce.cross_entropy(torch.tensor(X, requires_grad=True), T)
    with pytest.raises(TypeError, match="detach"):
        fastce.softmax(torch.tensor(X, requires_grad=True))


def test_negated_views_and_bfloat16_tensors_are_read_as_their_values():
    torch = pytest.importorskip("torch")
    negated = torch.tensor(X)._neg_view()
    assert negated.is_neg()
    assert fastce.cross_entropy(negated, T) == fastce.cross_entropy(-X, T)
    pytest.importorskip("ml_dtypes")
    bf = torch.tensor(X, dtype=torch.bfloat16)
    np.testing.assert_array_equal(fastce.log_softmax(bf), fastce.log_softmax(bf.float().numpy()))


@pytest.mark.parametrize("value", ["0.1", b"0.1", [0.1], None, 0.1j])
def test_label_smoothing_must_be_a_number(value):
    with pytest.raises(TypeError, match="label_smoothing"):
        fastce.cross_entropy(X, T, label_smoothing=value)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError):
        torch.nn.functional.cross_entropy(torch.tensor(X), torch.tensor(T), label_smoothing=value)


@pytest.mark.parametrize(
    "make",
    [
        lambda axis: fastce.Accumulator(axis=axis).update(X, T),
        lambda axis: fastce.CrossEntropyLoss(axis=axis)(X, T),
    ],
)
def test_an_axis_option_is_checked_against_the_logits_it_meets(make):
    with pytest.raises(ValueError, match=r"2 dimension\(s\); use an axis in \[-2, 1\]"):
        make(70)
    with pytest.raises(TypeError, match="axis must be an integer"):
        make("1")


@pytest.mark.parametrize(
    "make",
    [
        lambda w: fastce.CrossEntropyLoss(weight=w),
        lambda w: fastce.Accumulator(weight=w),
    ],
)
def test_a_weight_option_is_checked_when_made_with_a_message_that_says_what_to_pass(make):
    for weight in (np.ones((3, 1)), 1.0):
        with pytest.raises(ValueError, match=r"1-d array of one weight per class; got shape"):
            make(weight)
    with pytest.raises(TypeError, match="real numbers"):
        make(["a", "b"])
    made = make(np.ones(3))
    assert made.weight.dtype == np.float64
