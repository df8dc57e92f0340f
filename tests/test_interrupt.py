"""Ctrl-C stops a long call: the walk checks for signals between stretches of
its units, and a stopped Accumulator update changes nothing."""

import signal
import time

import numpy as np
import pytest

import fastce

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")


@pytest.fixture
def interrupt_after():
    """Raises KeyboardInterrupt in the main thread ``seconds`` from now, as Ctrl-C does."""

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, raise_interrupt)

    def arm(seconds):
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
def test_a_long_call_stops_soon_after_ctrl_c(interrupt_after):
    # 2^28 logits on one thread: far longer than the 0.05 s before the signal
    x = np.zeros((1 << 14, 1 << 14), np.float32)
    out = np.full_like(x, np.nan)
    interrupt_after(0.05)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        fastce.log_softmax(x, out=out, num_threads=1)
    stopped = time.perf_counter() - start
    # the call stopped part way: rows past the stretch it was in are untouched
    assert np.isnan(out[-1]).all()
    assert not np.isnan(out[0]).any()
    print(f"stopped {stopped:.3f} s after the call began")
    assert stopped < 5.0


@pytest.mark.slow
def test_an_interrupted_update_leaves_the_accumulator_as_it_was(interrupt_after, monkeypatch):
    x = np.zeros((1 << 12, 1 << 15), np.float32)
    t = np.zeros(1 << 12, np.int64)
    acc = fastce.Accumulator(num_threads=1)
    acc.update(x[:10], t[:10])
    interrupt_after(0.05)
    with pytest.raises(KeyboardInterrupt):
        acc.update(x, t)
    assert acc.count == 10
