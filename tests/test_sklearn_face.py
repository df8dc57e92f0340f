"""fastce.sklearn against sklearn.metrics: random inputs over labels, dtypes,
layouts, weights and ties; the logits path; the errors."""

import doctest
import importlib
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
import sklearn.metrics  # noqa: E402
from scipy.special import expit, softmax  # noqa: E402

import fastce.sklearn  # noqa: E402
from fastce.sklearn import InvalidParameterError, log_loss, top_k_accuracy_score  # noqa: E402


def sklearn_result(name, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(sklearn.metrics, name)(*args, **kwargs)


def probabilities(rng, n, c, dtype):
    p = rng.dirichlet(np.full(c, 0.3), size=n)
    p[0] = 0.0
    p[0, 0] = 1.0  # a probability of 0 at some targets: the clipping decides
    return p.astype(dtype)


def layouts(a):
    yield np.ascontiguousarray(a)
    yield np.asfortranarray(a)
    yield np.repeat(a, 2, axis=1)[:, ::2]


LABEL_SETS = {
    "ints": np.array([3, 5, 7, 11, 13]),
    "strings": np.array(["ant", "bee", "cat", "dog", "eel"]),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("labels_kind", list(LABEL_SETS))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_log_loss_random_against_sklearn(dtype, labels_kind, weighted, normalize):
    rng = np.random.default_rng(7)
    classes = LABEL_SETS[labels_kind]
    n = 300
    y = classes[rng.integers(0, len(classes), n)]
    y[: len(classes)] = classes  # every class present
    w = rng.uniform(0, 2, n) if weighted else None
    for p in layouts(probabilities(rng, n, len(classes), dtype)):
        expected = sklearn_result("log_loss", y, p, normalize=normalize, sample_weight=w)
        actual = log_loss(y, p, normalize=normalize, sample_weight=w)
        assert isinstance(actual, float)
        np.testing.assert_allclose(actual, expected, rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_log_loss_labels_absent_from_y_true():
    rng = np.random.default_rng(8)
    p = probabilities(rng, 50, 4, np.float64)
    y = rng.choice(["a", "c"], 50)
    kwargs = dict(labels=["a", "b", "c", "d"])
    assert log_loss(y, p, **kwargs) == pytest.approx(
        sklearn_result("log_loss", y, p, **kwargs), rel=1e-12
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_log_loss_binary_column_against_sklearn(dtype):
    rng = np.random.default_rng(9)
    p = rng.uniform(0, 1, 200).astype(dtype)
    p[:3] = [0.0, 1.0, 0.5]
    y = rng.choice(["no", "yes"], 200)
    for column in (p, p[:, None]):
        np.testing.assert_allclose(
            log_loss(y, column), sklearn_result("log_loss", y, column), rtol=1e-3
        )


def test_log_loss_of_an_indicator_matrix_against_sklearn():
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, (40, 3))
    p = rng.uniform(0, 1, (40, 3))
    p /= p.sum(axis=1, keepdims=True)
    assert log_loss(y, p) == pytest.approx(sklearn_result("log_loss", y, p), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_log_loss_from_logits_is_that_of_their_softmax(dtype, weighted):
    rng = np.random.default_rng(11)
    z = (rng.standard_normal((500, 6)) * 4).astype(dtype)
    z[0, :] = [60.0, -60.0, 0, 0, 0, 0]  # probabilities clipped at eps and 1 - eps
    z[1, 2] = -np.inf
    y = rng.integers(0, 6, 500)
    y[:6] = np.arange(6)
    y[0] = 1
    w = rng.uniform(0, 1, 500) if weighted else None
    for zl in layouts(z):
        expected = sklearn_result("log_loss", y, softmax(zl, axis=1), sample_weight=w)
        actual = log_loss(y, zl, sample_weight=w, from_logits=True)
        np.testing.assert_allclose(actual, expected, rtol=1e-5 if dtype == np.float32 else 1e-10)


def test_log_loss_from_logits_of_one_column_is_that_of_the_sigmoid():
    rng = np.random.default_rng(12)
    z = rng.standard_normal(300) * 5
    z[:2] = [-80.0, 80.0]
    y = rng.choice(["neg", "pos"], 300)
    y[:2] = ["pos", "neg"]  # the two clipped at eps
    expected = sklearn_result("log_loss", y, expit(z))
    assert log_loss(y, z, from_logits=True) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("bad, message", [(np.nan, "contains NaN"), (np.inf, "infinity")])
def test_log_loss_from_logits_refuses_nan_and_inf(bad, message):
    z = np.zeros((4, 3))
    z[2, 1] = bad
    with pytest.raises(ValueError, match=message):
        log_loss([0, 1, 2, 0], z, from_logits=True)


@pytest.mark.parametrize(
    "p, message",
    [
        ([[np.nan, 0.8], [0.6, 0.4]], "Input contains NaN"),
        ([[np.inf, 0.8], [0.6, 0.4]], "Input contains infinity"),
        ([[1.5, 0.8], [0.6, 0.4]], "greater than 1: 1.5"),
        ([[-0.5, 0.8], [0.6, 0.4]], "lower than 0: -0.5"),
    ],
)
def test_log_loss_refuses_what_sklearn_refuses(p, message):
    for function in (log_loss, sklearn.metrics.log_loss):
        with pytest.raises(ValueError, match=message):
            function([0, 1], np.array(p))


def test_invalid_parameters_are_value_and_type_errors():
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    for call in (
        lambda: log_loss([0, 1], p, normalize=1),
        lambda: log_loss([0, 1], p, from_logits="yes"),
        lambda: top_k_accuracy_score([0, 1, 2], np.eye(3), k=0),
        lambda: top_k_accuracy_score([0, 1, 2], np.eye(3), k=1.0),
    ):
        with pytest.raises(InvalidParameterError) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_a_weight_sum_of_zero_is_a_zero_division_as_in_sklearn():
    with pytest.raises(ZeroDivisionError, match="Weights sum to zero"):
        log_loss([0, 1], [[0.2, 0.8], [0.6, 0.4]], sample_weight=[-1, 1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_top_k_random_against_sklearn_with_ties(dtype, weighted, normalize):
    rng = np.random.default_rng(13)
    n, c = 400, 7
    # few distinct scores: many ties, which go to the higher index
    scores = rng.integers(0, 4, (n, c)).astype(dtype)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    w = rng.uniform(0, 2, n) if weighted else None
    for s in layouts(scores):
        for k in range(1, c + 2):
            kwargs = dict(k=k, normalize=normalize, sample_weight=w)
            expected = sklearn_result("top_k_accuracy_score", y, s, **kwargs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fastce.sklearn.UndefinedMetricWarning)
                actual = top_k_accuracy_score(y, s, **kwargs)
            assert actual == pytest.approx(expected, rel=1e-12), k


def test_top_k_with_labels_against_sklearn():
    rng = np.random.default_rng(14)
    scores = rng.standard_normal((100, 5))
    y = rng.choice(["b", "d", "e"], 100)
    kwargs = dict(k=2, labels=["a", "b", "c", "d", "e"])
    assert top_k_accuracy_score(y, scores, **kwargs) == sklearn_result(
        "top_k_accuracy_score", y, scores, **kwargs
    )


def test_top_k_warns_as_sklearn_when_k_covers_every_class():
    with pytest.warns(fastce.sklearn.UndefinedMetricWarning, match="perfect score"):
        assert top_k_accuracy_score([0, 1, 2], np.eye(3), k=3) == 1.0


def test_top_k_binary_from_logits_thresholds_at_zero():
    z = np.array([-2.0, -0.1, 0.3, 4.0])
    y = [0, 1, 1, 1]
    # scores in [0, 1] would be thresholded at 0.5 by scikit-learn; logits at 0
    assert top_k_accuracy_score(y, z, k=1, from_logits=True) == 0.75
    assert top_k_accuracy_score(y, expit(z), k=1) == 0.75
    assert top_k_accuracy_score(y, np.array([0.1, 0.2, 0.3, 0.9]), k=1) == 0.5
    assert top_k_accuracy_score(y, np.array([0.1, 0.2, 0.3, 0.9]), k=1, from_logits=True) == 0.75


def test_without_sklearn_the_warning_is_fastces_own(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.exceptions", None)
    warning = fastce.sklearn._undefined_metric_warning()
    assert warning is fastce.sklearn._UndefinedMetricWarning
    assert issubclass(warning, UserWarning)
    # with scikit-learn, its own class
    monkeypatch.undo()
    assert (
        fastce.sklearn.UndefinedMetricWarning
        is importlib.import_module("sklearn.exceptions").UndefinedMetricWarning
    )


def test_inputs_are_not_modified():
    p = np.array([[0.0, 1.0], [0.6, 0.4], [1.0, 0.0]])
    z = np.array([[1.0, -np.inf], [0.5, 0.2], [3.0, 1.0]])
    p0, z0 = p.copy(), z.copy()
    log_loss([0, 1, 1], p)
    log_loss([0, 1, 1], z, from_logits=True)
    top_k_accuracy_score([0, 1, 1], p[:, 1], k=1)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(z, z0)


def test_docstring_examples_run():
    result = doctest.testmod(fastce.sklearn, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_top_k_ranks_block_by_block(monkeypatch):
    """Scores negated a few rows at a time give the ranks of one block."""
    rng = np.random.default_rng(15)
    scores = rng.integers(0, 3, (37, 6)).astype(np.float32)
    y = rng.integers(0, 6, 37)
    y[:6] = np.arange(6)
    expected = sklearn_result("top_k_accuracy_score", y, scores, k=2)
    monkeypatch.setattr(fastce.sklearn, "_BLOCK_BYTES", 5 * 6 * 4)  # 5 rows
    assert top_k_accuracy_score(y, scores, k=2) == pytest.approx(expected, rel=1e-12)
