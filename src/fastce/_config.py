"""What the installed extension was built with, and how it runs now."""

from __future__ import annotations

import platform
import sys

import numpy as np

from . import _kernels
from ._validate import check_num_threads


def config() -> dict[str, str | int | bool]:
    """The build and runtime facts :func:`show_config` prints, as a dict."""
    from . import __version__

    return {
        "version": __version__,
        "openmp": _kernels.openmp_enabled(),
        "threads": _kernels.max_threads(),
        "result_cache_bytes": get_result_cache_bytes(),
        "simd": _kernels.simd_isa(),
        "compile_args": _kernels.compile_args(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
    }


def show_config() -> dict[str, str | int | bool]:
    """Print the version, whether OpenMP is on, the thread count and the compile flags.

    The thread count is what a large call would use now: OpenMP's maximum,
    which ``OMP_NUM_THREADS`` sets.  Returns the same facts as a dict.

    Examples
    --------
    >>> import fastce
    >>> info = fastce.show_config()  # doctest: +ELLIPSIS
    fastce ...
    >>> sorted(info)  # doctest: +NORMALIZE_WHITESPACE
    ['compile_args', 'machine', 'numpy', 'openmp', 'python', 'result_cache_bytes', 'simd',
     'threads', 'version']
    """
    info = config()
    print(f"fastce {info['version']}")
    print(f"  openmp:       {'on' if info['openmp'] else 'OFF (serial build)'}")
    print(f"  threads:      {info['threads']}")
    print(f"  vector path:  {info['simd']}")
    held, limit = _kernels.kept_result_bytes()
    print(f"  result cache: {held / 2**20:.0f} MiB held, at most {limit / 2**20:.0f} MiB")
    print(f"  compile args: {info['compile_args']}")
    print(f"  python:       {info['python']}  numpy: {info['numpy']}  machine: {info['machine']}")
    return info


def set_num_threads(n: int | None) -> None:
    """Use at most ``n`` threads in fastce's kernels; ``None`` restores the
    default, OpenMP's maximum (``OMP_NUM_THREADS``, or the number of cores).
    No call starts more than four threads per usable core, whatever ``n``.

    Examples
    --------
    >>> import fastce
    >>> fastce.set_num_threads(1); fastce.get_num_threads()
    1
    >>> fastce.set_num_threads(None)
    """
    _kernels.set_thread_limit(check_num_threads(n))


def get_num_threads() -> int:
    """The number of threads a large call uses now.

    Examples
    --------
    >>> import fastce
    >>> fastce.get_num_threads() >= 1
    True
    """
    return _kernels.max_threads()


def set_result_cache_bytes(n_bytes: int | None) -> None:
    """Keep at most ``n_bytes`` of the memory of fastce's freed results;
    ``None`` restores the default, 512 MiB; ``0`` keeps none.

    A new array of a few hundred megabytes costs more than the softmax that
    fills it: the operating system zeroes each page as it is first written.
    So when NumPy frees a result of fastce's of at least 4 MiB (a softmax,
    log_softmax, gradient or per-element loss), fastce keeps its memory, up
    to this many bytes, and the next result of about that size reuses it.
    The arrays are ordinary NumPy arrays that own their data.  Lowering the
    limit frees what is kept over it at once; results still alive are not
    affected.

    Examples
    --------
    >>> import fastce
    >>> fastce.set_result_cache_bytes(0)  # no memory kept after this
    >>> fastce.get_result_cache_bytes()
    0
    >>> fastce.set_result_cache_bytes(None)
    >>> fastce.get_result_cache_bytes() == 512 * 2**20
    True
    """
    if n_bytes is None:
        n_bytes = _kernels.KEPT_RESULT_DEFAULT_LIMIT
    if isinstance(n_bytes, (bool, np.bool_)) or not isinstance(n_bytes, (int, np.integer)):
        raise TypeError(f"n_bytes must be a non-negative integer or None; got {n_bytes!r}")
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be at least 0; got {n_bytes}")
    _kernels.set_kept_result_limit(int(min(n_bytes, 1 << 62)))


def get_result_cache_bytes() -> int:
    """The most memory of freed results fastce keeps for the next (bytes);
    see :func:`set_result_cache_bytes`.

    Examples
    --------
    >>> import fastce
    >>> fastce.get_result_cache_bytes() >= 0
    True
    """
    return _kernels.kept_result_bytes()[1]
