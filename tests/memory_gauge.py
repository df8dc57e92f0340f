"""What a call allocates at its peak, as tracemalloc sees it (shared by the tests)."""

import tracemalloc


def peak_and_result(call, warm_up=True):
    """``(peak bytes the call allocated, its result)``; with ``warm_up`` the
    call runs once before, so that first-call caches are not its cost."""
    if warm_up:
        call()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, result


def peak_bytes(call):
    peak, result = peak_and_result(call)
    del result
    return peak
