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
    >>> sorted(info)
    ['compile_args', 'machine', 'numpy', 'openmp', 'python', 'simd', 'threads', 'version']
    """
    info = config()
    print(f"fastce {info['version']}")
    print(f"  openmp:       {'on' if info['openmp'] else 'OFF (serial build)'}")
    print(f"  threads:      {info['threads']}")
    print(f"  vector path:  {info['simd']}")
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
