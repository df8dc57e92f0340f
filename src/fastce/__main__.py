"""``python -m fastce``: the worked example, then a short speed comparison;
``python -m fastce evaluate LOGITS.npy TARGETS.npy``: an evaluation of saved
logits (``--help`` for its options)."""

import sys

import numpy as np

import fastce
from fastce import bench


def main() -> int:
    if sys.argv[1:2] == ["evaluate"]:
        from . import cli

        return cli.main(sys.argv[2:])
    logits = np.array([1.0, 2.0, 0.1])
    target = np.array(1)
    loss, grad = fastce.cross_entropy_with_grad(logits, target)
    print("Worked example: logits [1.0, 2.0, 0.1], target 1")
    print(f"  cross_entropy       = {loss:.4f}")
    print(f"  gradient            = {np.array2string(grad, precision=6)}")
    print(f"  logsumexp           = {fastce.logsumexp(logits):.6f}")
    print()
    threads = fastce.get_num_threads()
    print(
        "Comparison on random data (median of interleaved runs with their interquartile range; "
        "speed-up = their time / fastce's):"
    )
    for line in bench.header(threads):
        print("  " + line)
    load = bench.load_average()
    rows = bench.run(
        ["W1", "W2", "W7a"],
        threads,
        repeats=7,
        passes=("forward", "forward+backward"),
        libraries=("torch", "jax", "numpy"),
    )
    print(bench.summary_table(rows))
    for line in bench.busy_warnings(rows, load, threads):
        print(line)
    print("\nThe full suite: python -m fastce.bench --help")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
