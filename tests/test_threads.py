"""Results do not depend on the number of OpenMP threads, to the last bit."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    import fastce
    from fastce import _kernels

    rng = np.random.default_rng(7)
    digest = hashlib.sha256()
    def feed(*arrays):
        for a in arrays:
            digest.update(np.ascontiguousarray(a).tobytes())

    cases = [((4096, 1000), 1), ((65536, 10), 1), ((8, 21, 64, 64), 1), ((4, 512, 2000), -1)]
    for shape, axis in cases:
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal(shape).astype(dtype) * 3
            ax = axis % len(shape)
            t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1:])
            t.reshape(-1)[::10] = -100
            w = rng.random(shape[ax])
            for reduction in ("mean", "sum", "none"):
                feed(*fastce.cross_entropy_with_grad(x, t, w, reduction=reduction,
                                                     label_smoothing=0.1, axis=axis))
            p = fastce.softmax(rng.standard_normal(shape).astype(dtype), axis=axis)
            feed(*fastce.cross_entropy_with_grad(x, p, axis=axis))
            feed(fastce.log_softmax(x, axis=axis), fastce.logsumexp(x, axis=axis))
            feed(fastce.nll_loss(fastce.log_softmax(x, axis=axis), t, axis=axis))
    print(_kernels.max_threads(), digest.hexdigest())
    """
)


def run_with_threads(n):
    env = dict(os.environ, OMP_NUM_THREADS=str(n))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    threads, digest = done.stdout.split()
    return int(threads), digest


def test_one_and_two_threads_give_identical_bytes():
    threads_1, digest_1 = run_with_threads(1)
    threads_2, digest_2 = run_with_threads(2)
    assert threads_1 == 1
    assert threads_2 == 2
    assert digest_1 == digest_2


def test_eight_threads_on_fewer_cores_give_identical_bytes():
    threads_8, digest_8 = run_with_threads(8)
    threads_1, digest_1 = run_with_threads(1)
    assert threads_8 == 8
    assert digest_8 == digest_1


def test_block_partials_do_not_depend_on_the_thread_count():
    # Within one process: the totals come from fixed blocks added in order,
    # so a sum equals the ordered float64 sum of the kernel's per-sample values
    # computed in the same blocks, whatever the thread count.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import fastce

    rng = np.random.default_rng(3)
    x = rng.standard_normal((20000, 50))
    t = rng.integers(0, 50, 20000)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        one = fastce.cross_entropy(x, t, reduction="sum")
    two = fastce.cross_entropy(x, t, reduction="sum")
    assert one.tobytes() == two.tobytes()


FORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import numpy as np
    import fastce
    from fastce import _kernels

    def child(queue):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((4096, 1000)).astype(np.float32)
        t = rng.integers(0, 1000, 4096)
        queue.put((float(fastce.cross_entropy(x, t)), _kernels.forked_child_serial()))

    if __name__ == "__main__":
        rng = np.random.default_rng(1)
        x = rng.standard_normal((4096, 1000)).astype(np.float32)
        t = rng.integers(0, 1000, 4096)
        expected = float(fastce.cross_entropy(x, t))   # runs a thread team
        for method in ("fork", "spawn", "forkserver"):
            ctx = mp.get_context(method)
            queue = ctx.Queue()
            proc = ctx.Process(target=child, args=(queue,))
            proc.start()
            got, serial = queue.get(timeout=120)
            proc.join(timeout=120)
            assert proc.exitcode == 0, (method, proc.exitcode)
            assert got == expected, (method, got, expected)
            assert serial == (method == "fork"), (method, serial)
            print(method, "ok")
    """
)


def test_children_compute_correctly_after_the_parent_ran_threads(tmp_path):
    script = tmp_path / "fork_check.py"
    script.write_text(FORK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["fork", "ok", "spawn", "ok", "forkserver", "ok"]


def test_num_threads_argument_gives_identical_results():
    import fastce

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 300))
    t = rng.integers(0, 300, 3000)
    one = fastce.cross_entropy_with_grad(x, t, num_threads=1)
    two = fastce.cross_entropy_with_grad(x, t, num_threads=2)
    assert one[0].tobytes() == two[0].tobytes()
    assert one[1].tobytes() == two[1].tobytes()
    np.testing.assert_array_equal(
        fastce.log_softmax(x, num_threads=1), fastce.log_softmax(x, num_threads=2)
    )


@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)],
)
def test_num_threads_is_checked(bad, error):
    import fastce

    with pytest.raises(error, match="num_threads must be"):
        fastce.cross_entropy(np.zeros((2, 3)), np.zeros(2, dtype=int), num_threads=bad)
    with pytest.raises(error, match="num_threads must be"):
        fastce.softmax(np.zeros((2, 3)), num_threads=bad)
    with pytest.raises(error, match="num_threads must be"):
        fastce.set_num_threads(bad)


@pytest.mark.parametrize(
    "user, want",
    [
        ({}, "10000 None"),
        ({"OMP_WAIT_POLICY": "active"}, "None active"),
        ({"GOMP_SPINCOUNT": "5"}, "5 None"),
    ],
)
def test_a_short_openmp_spin_is_set_unless_the_user_chose_a_policy(user, want):
    code = (
        "import os, fastce; "
        "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(env, **user),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split() == want.split()


CAP_SCRIPT = textwrap.dedent(
    """
    import os
    import numpy as np
    import fastce
    from fastce import _kernels

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cap = _kernels.thread_cap()
    assert 1 <= cap <= 4 * cores, (cap, cores)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 1000)).astype(np.float32)   # 20 MB
    t = rng.integers(0, 1000, 5000)
    want = fastce.cross_entropy(x, t, num_threads=1)
    for request in (40_000, 2**31 - 1):
        assert fastce.cross_entropy(x, t, num_threads=request) == want
        assert fastce.softmax(x, num_threads=request).shape == x.shape
        assert fastce.evaluate(x, t, num_threads=request).loss == want
    fastce.set_num_threads(2**40)
    assert fastce.get_num_threads() == cap
    assert fastce.cross_entropy(x, t) == want
    fastce.set_num_threads(None)
    with open("/proc/self/status") as status:
        threads = int(status.read().split("Threads:")[1].split()[0])
    # the main thread, the kernels' team and whatever NumPy's libraries started
    assert threads <= cap + 8, threads
    print("ok")
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("omp_num_threads", [None, "40000"])
def test_no_thread_count_asks_for_more_threads_than_the_cap(omp_num_threads):
    # libgomp aborts the process when it cannot create a thread: a request of
    # any size runs on at most four threads per usable core
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if omp_num_threads:
        env["OMP_NUM_THREADS"] = omp_num_threads
    done = subprocess.run(
        [sys.executable, "-c", CAP_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
