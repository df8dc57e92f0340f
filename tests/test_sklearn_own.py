"""scikit-learn's own tests of log_loss and top_k_accuracy_score, run against fastce.sklearn.

The installed scikit-learn's test functions of the two metrics
(``sklearn/metrics/tests/test_classification.py``, ``test_ranking.py``)
and the cases of its common metric tests (``test_common.py``) that run
them are collected here, each with the test module's names ``log_loss``
and ``top_k_accuracy_score`` (and the common tests' tables of metrics)
bound to fastce's.  A common test parametrized over every metric keeps
only the cases of these two.

Not run, with the reason: the array-API cases of other namespaces and
devices (fastce reads arrays through NumPy; their NumPy case runs).
"""

import functools
from functools import partial

import numpy as np
import pytest

pytest.importorskip("sklearn")
classification = pytest.importorskip("sklearn.metrics.tests.test_classification")
ranking = pytest.importorskip("sklearn.metrics.tests.test_ranking")
common = pytest.importorskip("sklearn.metrics.tests.test_common")
import sklearn.metrics  # noqa: E402

import fastce.sklearn  # noqa: E402

ORIGINALS = {
    sklearn.metrics.log_loss: fastce.sklearn.log_loss,
    sklearn.metrics.top_k_accuracy_score: fastce.sklearn.top_k_accuracy_score,
}
NAMES = {"log_loss", "unnormalized_log_loss", "top_k_accuracy_score"}


def substitute(value):
    """fastce's function for scikit-learn's (a partial of it included)."""
    if isinstance(value, partial) and value.func in ORIGINALS:
        return partial(ORIGINALS[value.func], *value.args, **value.keywords)
    try:
        return ORIGINALS.get(value, value)
    except TypeError:  # unhashable
        return value


def concerns_these_metrics(value):
    """Whether a parameter (or tuple of parameters) names or is one of the two metrics."""
    values = value.values if hasattr(value, "values") else (value,)
    flat = []
    for v in values:
        flat.extend(v if isinstance(v, tuple) else (v,))
    return any((isinstance(v, str) and v in NAMES) or substitute(v) is not v for v in flat)


@pytest.fixture(autouse=True)
def fastce_metrics(monkeypatch):
    for module in (classification, ranking, common):
        for name in ("log_loss", "top_k_accuracy_score"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(fastce.sklearn, name))
    for table in vars(common).values():
        if isinstance(table, dict):
            for key, value in list(table.items()):
                if substitute(value) is not value:
                    monkeypatch.setitem(table, key, substitute(value))


@pytest.fixture
def global_random_seed():
    """scikit-learn's fixture, at its default seed."""
    return 42


def restricted(test):
    """``test`` with the parameter sets of its ``parametrize`` marks that
    concern other metrics left out, fastce's metrics passed for
    scikit-learn's, and the other array-API namespaces skipped."""
    marks = []
    for mark in getattr(test, "pytestmark", []):
        if mark.name != "parametrize":
            marks.append(mark)
            continue
        values = list(mark.args[1])
        kwargs = dict(mark.kwargs)
        if any(concerns_these_metrics(v) for v in values):
            keep = [i for i, v in enumerate(values) if concerns_these_metrics(v)]
            values = [values[i] for i in keep]
            if isinstance(kwargs.get("ids"), (list, tuple)):
                kwargs["ids"] = [kwargs["ids"][i] for i in keep]
        marks.append(pytest.mark.parametrize(mark.args[0], values, **kwargs).mark)

    @functools.wraps(test)
    def run(*args, **kwargs):
        namespace = kwargs.get("array_namespace")
        if namespace is not None and namespace != "numpy":
            pytest.skip(
                f"array-API namespace {namespace}: fastce reads arrays through NumPy "
                "and returns NumPy results"
            )
        return test(*args, **{k: substitute(v) for k, v in kwargs.items()})

    # scikit-learn's own metric warns as fastce's does (a k of no meaning in
    # the common tests' two-class cases); its tests do not expect it
    marks.append(
        pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning").mark
    )
    run.pytestmark = marks
    return run


def wrapped(module, names):
    return {name: restricted(getattr(module, name)) for name in names}


def listed(module):
    """The module's tests with the values of each ``parametrize`` mark listed:
    some are generators, which reading them would use up."""
    for name, value in vars(module).items():
        if name.startswith("test_") and callable(value) and hasattr(value, "pytestmark"):
            value.pytestmark = [
                pytest.mark.parametrize(m.args[0], list(m.args[1]), *m.args[2:], **m.kwargs).mark
                if m.name == "parametrize" and not isinstance(m.args[1], (list, tuple))
                else m
                for m in value.pytestmark
            ]
    return module


for _module in (classification, ranking, common):
    listed(_module)


def touching_these_metrics(module):
    """The test functions of ``module`` parametrized over a case of the two metrics."""
    names = []
    for name, value in vars(module).items():
        if not name.startswith("test_") or not callable(value):
            continue
        for mark in getattr(value, "pytestmark", []):
            if mark.name == "parametrize" and any(
                concerns_these_metrics(v) for v in list(mark.args[1])
            ):
                names.append(name)
                break
    return names


globals().update(
    wrapped(
        classification,
        [
            name
            for name in vars(classification)
            if name.startswith("test_log_loss") and callable(getattr(classification, name))
        ],
    )
)
globals().update(
    wrapped(
        ranking,
        [
            name
            for name in vars(ranking)
            if name.startswith("test_top_k_accuracy_score")
            or name == "test_multiclass_ranking_metrics_raise_for_incorrect_shape_of_y_score"
        ],
    )
)
globals().update(wrapped(common, touching_these_metrics(common)))


def test_the_metrics_are_substituted():
    assert classification.log_loss is fastce.sklearn.log_loss
    assert ranking.top_k_accuracy_score is fastce.sklearn.top_k_accuracy_score
    assert common.ALL_METRICS["log_loss"] is fastce.sklearn.log_loss
    assert common.ALL_METRICS["unnormalized_log_loss"].func is fastce.sklearn.log_loss
    assert np.isfinite(common.ALL_METRICS["top_k_accuracy_score"]([0, 1, 2], np.eye(3)))
