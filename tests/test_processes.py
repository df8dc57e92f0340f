"""Processes: children made by fork, spawn and forkserver compute correctly and
never hang, whatever threads the parent ran; fastce's objects pickle.

GNU OpenMP's thread pool does not survive ``fork``: a child whose parent has
run a parallel region hangs in its own first one.  Every scenario therefore
runs in a separate Python process, and every child is watched by a deadline
after which it is killed and the test fails.
"""

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import fastce

posix_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

# Shared by the scripts: the inputs, what a correct child prints, and a fork
# helper that kills a child that outlives its deadline.
PRELUDE = textwrap.dedent(
    """
    import hashlib, os, signal, sys, threading, time
    import numpy as np
    import fastce
    from fastce import _kernels

    rng = np.random.default_rng(1)
    X = rng.standard_normal((4096, 1000)).astype(np.float32)
    T = rng.integers(0, 1000, 4096)
    X4 = rng.standard_normal((8, 21, 64, 64))
    T4 = rng.integers(0, 21, (8, 64, 64))

    def digest(num_threads=None):
        h = hashlib.sha256()
        for a in (*fastce.cross_entropy_with_grad(X, T, num_threads=num_threads),
                  *fastce.cross_entropy_with_grad(X4, T4, label_smoothing=0.1,
                                                  num_threads=num_threads),
                  fastce.logsumexp(X, num_threads=num_threads),
                  fastce.softmax(X4, axis=1, num_threads=num_threads)):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def fork_and_check(expected, deadline=60.0, work=None):
        # fork; the child computes the digest and exits 0 when it matches;
        # returns the child's exit status, or "hung" after killing it
        pid = os.fork()
        if pid == 0:
            try:
                if work is not None:
                    work()
                ok = digest() == expected and digest(num_threads=2) == expected
                os._exit(0 if ok else 3)
            except BaseException:
                os._exit(4)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "hung"
    """
)


def run_script(body, env=None, timeout=300, head=""):
    script = head + PRELUDE + textwrap.dedent(body)
    environment = dict(os.environ, OMP_NUM_THREADS="2")
    environment.update(env or {})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scenario.py")  # a file: spawn children import __main__
        with open(path, "w") as f:
            f.write(script)
        done = subprocess.run(
            [sys.executable, path],
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp,
            start_new_session=True,
        )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done.stdout.split()


@posix_only
def test_a_forked_child_computes_correctly_after_the_parent_ran_threads():
    out = run_script(
        """
        expected = digest()            # runs thread teams
        assert digest(num_threads=1) == expected
        print(fork_and_check(expected))
        print(fork_and_check(expected, work=lambda: digest(num_threads=4)))
        """
    )
    assert out == ["0", "0"]


@posix_only
def test_a_grandchild_computes_correctly():
    out = run_script(
        """
        expected = digest()
        def child_forks_again():
            assert fork_and_check(expected) == 0
        print(fork_and_check(expected, work=child_forks_again))
        """
    )
    assert out == ["0"]


@posix_only
def test_fork_while_another_thread_is_inside_a_kernel():
    out = run_script(
        """
        expected = digest()
        stop = threading.Event()
        def busy():
            while not stop.is_set():
                fastce.cross_entropy_with_grad(X, T, num_threads=2)
        worker = threading.Thread(target=busy)
        worker.start()
        time.sleep(0.2)
        statuses = [fork_and_check(expected) for _ in range(5)]  # a team is likely running
        stop.set()
        worker.join()
        print(*statuses)
        """
    )
    assert out == ["0"] * 5


@posix_only
def test_a_fork_pool_maps_correctly_after_the_parent_ran_threads():
    out = run_script(
        """
        import multiprocessing as mp

        def task(seed):
            r = np.random.default_rng(seed)
            x = r.standard_normal((2048, 500)).astype(np.float32)
            t = r.integers(0, 500, 2048)
            loss, grad = fastce.cross_entropy_with_grad(x, t)
            return float(loss), float(np.abs(grad).sum())

        if __name__ == "__main__":
            expected = [task(s) for s in range(16)]   # the parent runs thread teams
            with mp.get_context("fork").Pool(4) as pool:
                got = pool.map_async(task, range(16)).get(timeout=120)
            print("same" if got == expected else "different")
        """
    )
    assert out == ["same"]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_and_forkserver_children_compute_correctly(method):
    if method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    out = run_script(
        f"""
        import multiprocessing as mp
        import pickle

        def task(args):
            criterion, seed = args
            r = np.random.default_rng(seed)
            x = r.standard_normal((2048, 500)).astype(np.float32)
            t = r.integers(0, 500, 2048)
            return float(criterion(x, t)), bytes(criterion.grad(x, t).tobytes())

        if __name__ == "__main__":
            criterion = fastce.CrossEntropyLoss(weight=np.linspace(0.5, 2, 500),
                                                label_smoothing=0.1)
            expected = [task((criterion, s)) for s in range(8)]
            with mp.get_context({method!r}).Pool(2) as pool:
                got = pool.map_async(task, [(criterion, s) for s in range(8)]).get(timeout=240)
            print("same" if got == expected else "different")
        """
    )
    assert out == ["same"]


# --------------------------------------------------------------------------
# a fork after an OpenMP team fastce did not start

TORCH_TEAM = """
    torch.set_num_threads(2)
    big = torch.randn(2000, 2000)
    float(big.exp().sum())             # torch runs its OpenMP team; fastce has not run one
    expected = digest(num_threads=1)    # (serial: no fastce team in the parent)
    assert not _kernels.forked_child_serial()
    print(fork_and_check(expected, deadline=10))
"""


@posix_only
def test_a_fork_after_torch_ran_its_threads_does_not_hang():
    pytest.importorskip("torch")
    # torch first, as in a training script: fastce's libgomp.so.1 then resolves to
    # the copy torch loaded, and both run their teams in it
    out = run_script(TORCH_TEAM, head="import torch\n")
    assert out == ["0"], out


OPENMP_LIBRARY = r"""
#include <omp.h>
int run_team(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n;
}
"""


@posix_only
def test_a_fork_after_another_openmp_library_ran_its_threads_does_not_hang(tmp_path):
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to build the other OpenMP library")
    source = tmp_path / "team.c"
    source.write_text(OPENMP_LIBRARY)
    library = tmp_path / "libteam.so"
    built = subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", "-fopenmp", str(source), "-o", str(library)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build an OpenMP library: {built.stderr[-300:]}")
    out = run_script(
        f"""
        import ctypes
        team = ctypes.CDLL({str(library)!r})
        assert team.run_team() == 2        # another library's team, in fastce's libgomp
        expected = digest(num_threads=1)
        print(fork_and_check(expected, deadline=10))
        """
    )
    assert out == ["0"], out


@posix_only
def test_a_forked_child_reports_the_thread_count_it_uses():
    out = run_script(
        """
        digest()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if _kernels.forked_child_serial() and fastce.get_num_threads() == 1
                     else 5)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    assert out == ["0"], out


# --------------------------------------------------------------------------
# pickling

CRITERIA = [
    fastce.CrossEntropyLoss(),
    fastce.CrossEntropyLoss(
        weight=np.array([0.5, 1.0, 2.0]),
        ignore_index=1,
        reduction="sum",
        label_smoothing=0.25,
        axis=-1,
    ),
    fastce.CrossEntropyLoss(weight=[1, 2, 3], reduction="none"),
]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("criterion", CRITERIA, ids=repr)
def test_criterion_pickles(criterion, protocol):
    clone = pickle.loads(pickle.dumps(criterion, protocol=protocol))
    assert clone == criterion and clone is not criterion
    assert repr(clone) == repr(criterion)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3))
    t = np.array([0, 1, 2, 2, 1, 0])
    for a, b in ((clone(x, t), criterion(x, t)), (clone.grad(x, t), criterion.grad(x, t))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", fastce.__all__)
def test_public_functions_pickle_by_reference(name):
    obj = getattr(fastce, name)
    assert pickle.loads(pickle.dumps(obj)) is obj


def test_results_pickle():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    t = np.array([0, 1, 2, 2, 1, 0])
    for result in (
        fastce.cross_entropy(x, t),
        *fastce.cross_entropy_with_grad(x, t),
        fastce.cross_entropy(x, t, reduction="none"),
    ):
        clone = pickle.loads(pickle.dumps(result))
        assert type(clone) is type(result) and np.asarray(clone).dtype == np.asarray(result).dtype
        assert np.asarray(clone).tobytes() == np.asarray(result).tobytes()
