"""Ctrl-C stops a long call: the walk checks for signals between stretches of
its units, and a stopped Accumulator update changes nothing.

The interrupt comes from a thread once the call is under way, as Ctrl-C does
(``_thread.interrupt_main`` raises SIGINT's KeyboardInterrupt in the main
thread): a timer armed before the call could fire before it began or, on a
fast machine, after its last check for signals, and either way outside it."""

import _thread
import signal
import threading
import time

import numpy as np
import pytest

import fastce


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Python's own SIGINT handler while a test runs: a library imported by
    another test may have replaced it (interrupt_main does nothing when
    SIGINT is ignored or left to the operating system)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt_when(ready, timeout=30.0):
    """Starts a thread that interrupts the main thread once ``ready()`` is true."""

    def watch():
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.0005)
        _thread.interrupt_main()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


@pytest.mark.slow
def test_a_long_call_stops_soon_after_ctrl_c():
    # 2^28 logits on one thread, 8 stretches between checks for signals; ones, not zeros, so
    # that every page is real memory and no stretch is quicker than reading it
    x = np.ones((1 << 14, 1 << 14), np.float32)
    out = np.full_like(x, np.nan)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        # Ctrl-C as soon as the first row is written: inside the first stretch
        watcher = interrupt_when(lambda: not np.isnan(out[0, 0]))
        fastce.log_softmax(x, out=out, num_threads=1)
    stopped = time.perf_counter() - start
    watcher.join()
    # the call stopped part way: rows past the stretch it was in are untouched
    assert np.isnan(out[-1]).all()
    assert not np.isnan(out[0]).any()
    print(f"stopped {stopped:.3f} s after the call began")
    assert stopped < 5.0


@pytest.mark.slow
def test_an_interrupted_update_leaves_the_accumulator_as_it_was():
    x = np.ones((1 << 13, 1 << 15), np.float32)
    t = np.zeros(1 << 13, np.int64)
    acc = fastce.Accumulator(num_threads=1)
    acc.update(x[:10], t[:10])
    calling = threading.Event()
    began = [0.0]

    def called_a_while_ago():
        if not calling.is_set():
            return False
        if not began[0]:
            began[0] = time.monotonic()
        return time.monotonic() - began[0] > 0.01

    with pytest.raises(KeyboardInterrupt):
        watcher = interrupt_when(called_a_while_ago)
        calling.set()
        acc.update(x, t)
    watcher.join()
    assert acc.count == 10
