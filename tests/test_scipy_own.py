"""SciPy's own tests of logsumexp, softmax and log_softmax, run against fastce.scipy.

The test classes of the installed SciPy's ``scipy/special/tests/test_logsumexp.py``
are collected here as subclasses, and every test runs with the module's names
``logsumexp``, ``softmax`` and ``log_softmax`` bound to fastce's.  SciPy's
``xp`` fixture is replaced by one for NumPy alone: fastce computes NumPy
arrays on the CPU, so the other array-API backends and their devices are
not run (the documented difference; CPU torch tensors are read through
NumPy and give NumPy results).  Complex cases (347 of SciPy 1.17.1's 406)
pass through the SciPy fallback that the docstrings describe, and only
they do.
"""

from collections.abc import Collection

import numpy as np
import pytest

pytest.importorskip("scipy")
own = pytest.importorskip(
    "scipy.special.tests.test_logsumexp", reason="this SciPy was installed without its tests"
)
from scipy._lib._array_api import array_namespace  # noqa: E402

import fastce.scipy  # noqa: E402

SUBSTITUTED = ("logsumexp", "softmax", "log_softmax")


@pytest.fixture(autouse=True)
def fastce_functions(monkeypatch):
    """The names the SciPy tests call, bound to fastce's functions; SciPy's
    own functions are reached only for the input the docstrings name."""
    for name in SUBSTITUTED:
        assert callable(getattr(own, name))
        monkeypatch.setattr(own, name, getattr(fastce.scipy, name))
    fallback = fastce.scipy._scipy_function

    def only_complex_or_longdouble(name, dtype):
        assert dtype.kind == "c" or dtype == np.longdouble, dtype
        return fallback(name, dtype)

    monkeypatch.setattr(fastce.scipy, "_scipy_function", only_complex_or_longdouble)


@pytest.fixture(params=[np], ids=["numpy"])
def xp(request):
    """SciPy's ``xp`` fixture for its NumPy backend: its skip and xfail
    marks that name NumPy apply, the others name backends not run here."""
    for kind in ("skip", "xfail"):
        for mark in request.node.iter_markers(f"{kind}_xp_backends"):
            if mark.args and mark.args[0] == "numpy":
                getattr(pytest, kind)(reason=mark.kwargs.get("reason") or "SciPy's own mark")
    return array_namespace(request.param.empty(0))


@pytest.fixture
def devices():
    """NumPy's devices, as SciPy's fixture lists them: the CPU and the default."""
    return ["cpu", None]


def _listed_parameters(cls):
    """SciPy parametrizes a test with an ``itertools.product`` iterator, which
    pytest deprecates: its values, listed (the same cases)."""
    for name, member in vars(cls).items():
        marks = getattr(member, "pytestmark", None)
        if not name.startswith("test") or not marks:
            continue
        member.pytestmark = [
            pytest.mark.parametrize(m.args[0], list(m.args[1]), *m.args[2:], **m.kwargs).mark
            if m.name == "parametrize" and not isinstance(m.args[1], Collection)
            else m
            for m in marks
        ]
    return cls


for _cls in (own.TestLogSumExp, own.TestSoftmax, own.TestLogSoftmax):
    _listed_parameters(_cls)


class TestLogSumExp(own.TestLogSumExp):
    pass


class TestSoftmax(own.TestSoftmax):
    pass


class TestLogSoftmax(own.TestLogSoftmax):
    pass


def test_the_functions_are_substituted():
    """The substitution reaches the names the tests call."""
    x = np.array([1.0, 2.0])
    assert own.logsumexp is fastce.scipy.logsumexp
    assert own.softmax(x) is not None and own.softmax is fastce.scipy.softmax
    assert own.log_softmax is fastce.scipy.log_softmax
