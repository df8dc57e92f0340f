"""Evaluate logits that sit on disk: a memory-mapped .npy file read in blocks,
then the same file as a chunked dask array (and a zarr store, when zarr is
installed), on the local scheduler or a LocalCluster of worker processes.

    python examples/evaluate_from_disk.py --gib 2            # a 2 GiB file
    python examples/evaluate_from_disk.py --gib 2 --cluster  # dask.distributed too

The file may be larger than the machine's memory: fastce.evaluate reads the
mapped pages block by block and never holds a copy of the logits, so its own
memory stays at a few MiB whatever the file's size (the operating system
keeps, and drops, pages of the file in its cache as it sees fit).
"""

import argparse
import os
import tempfile
import time
import tracemalloc

import numpy as np

import fastce


def write_logits(path, n_rows, n_classes, seed=0):
    """A file of float32 logits, written in slices so that it never sits in
    memory; a third of the rows favour their target."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, n_classes, n_rows)
    logits = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, n_classes))
    step = max(1, (64 << 20) // (4 * n_classes))
    for start in range(0, n_rows, step):
        block = rng.standard_normal((min(step, n_rows - start), n_classes), dtype=np.float32)
        rows = np.arange(0, len(block), 3)
        block[rows, target[start + rows]] += 4.0
        logits[start : start + len(block)] = block
    logits.flush()
    del logits
    return target


def show(name, result, seconds):
    print(
        f"{name:28s} loss {result.loss:.6f}  ppl {result.perplexity:.3f}  "
        f"top1 {result.accuracy[1]:.4f}  top5 {result.accuracy[5]:.4f}  "
        f"ece {result.ece:.4f}  n {result.count}  ({seconds:.2f} s)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=0.5, help="size of the logits file")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument(
        "--cluster", action="store_true", help="also evaluate on a dask.distributed LocalCluster"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "logits.npy")
        n_rows = max(1, int(args.gib * 2**30) // (4 * args.classes))
        start = time.perf_counter()
        target = write_logits(path, n_rows, args.classes)
        print(
            f"wrote {n_rows} x {args.classes} float32 logits "
            f"({os.path.getsize(path) / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s"
        )

        # 1. a memory map, evaluated in blocks
        logits = np.load(path, mmap_mode="r")
        tracemalloc.start()
        start = time.perf_counter()
        result = fastce.evaluate(logits, target, topk=(1, 5), bins=15)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        show("numpy memmap", result, seconds)
        print(f"{'':28s} peak memory allocated while evaluating: {peak / 2**20:.1f} MiB")

        # 2. the same file as a dask array, one task per 128 MiB of rows
        try:
            import dask.array as da

            import fastce.dask as fdask
        except ImportError:
            print("dask is not installed: pip install 'dask[array]'")
            return
        chunked = fdask.from_npy(path)
        target_d = da.from_array(target, chunks=chunked.chunks[0])
        start = time.perf_counter()
        show("dask, local threads", fdask.evaluate(chunked, target_d), time.perf_counter() - start)

        # 3. a zarr store of the same logits
        try:
            import zarr
        except ImportError:
            zarr = None
        if zarr is not None:
            store = os.path.join(tmp, "logits.zarr")
            da.to_zarr(chunked, store)
            start = time.perf_counter()
            show(
                "dask, from zarr",
                fdask.evaluate(da.from_zarr(store), target_d),
                time.perf_counter() - start,
            )

        # 4. a cluster of worker processes on this machine
        if args.cluster:
            from distributed import Client, LocalCluster

            with (
                LocalCluster(
                    n_workers=2,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                ) as cluster,
                Client(cluster),
            ):
                start = time.perf_counter()
                # one task per core: one OpenMP thread per task
                r = fdask.evaluate(chunked, target_d, num_threads=1)
                show("dask.distributed, 2 workers", r, time.perf_counter() - start)
            print(
                f"{'':28s} identical to the memmap result: "
                f"{r.loss == result.loss and r.accuracy == result.accuracy}"
            )


if __name__ == "__main__":
    main()
