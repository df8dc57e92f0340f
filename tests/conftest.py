"""What several test files share."""

import pytest

from fastce import _kernels

# the path in use when the tests start: the best the CPU has, or FASTCE_SIMD's
ACTIVE_PATH = _kernels.simd_isa()


@pytest.fixture(params=_kernels.simd_paths())
def simd_path(request):
    """Each vector code path this CPU can run in turn (the core kernels choose
    it for both extensions); the path in use is restored afterwards."""
    assert _kernels.simd_init(request.param) == request.param
    yield request.param
    _kernels.simd_init(ACTIVE_PATH)
