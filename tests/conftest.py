"""What several test files share."""

import pytest

from fastce import _kernels

# the path in use when the tests start: the best the CPU has, or FASTCE_SIMD's
ACTIVE_PATH = _kernels.simd_isa()


def pytest_configure(config):
    # here rather than in pyproject.toml, so that they hold wherever tests/ runs
    # from (the wheel check runs a copy of it outside the project)
    config.addinivalue_line(
        "markers",
        "slow: a long test (the 8.6 GB array); it runs by default, -m 'not slow' skips it",
    )
    # the marks of SciPy's own tests, which tests/test_scipy_own.py runs
    for mark in ("array_api_backends", "skip_xp_backends", "xfail_xp_backends"):
        config.addinivalue_line("markers", f"{mark}: a mark of SciPy's tests of array-API backends")
    # a warning is a failure unless its test expects it (pytest.warns)
    config.addinivalue_line("filterwarnings", "error")


@pytest.fixture(params=_kernels.simd_paths())
def simd_path(request):
    """Each vector code path this CPU can run in turn (the core kernels choose
    it for both extensions); the path in use is restored afterwards."""
    assert _kernels.simd_init(request.param) == request.param
    yield request.param
    _kernels.simd_init(ACTIVE_PATH)
