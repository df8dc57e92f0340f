"""Make a repaired macOS wheel share one OpenMP runtime with PyTorch.

``delocate-wheel`` copies Homebrew's ``libomp.dylib`` into ``fastce/.dylibs``
and points the extension at it by a fixed path.  PyTorch's wheels ship their
own ``torch/lib/libomp.dylib``; two copies of LLVM's OpenMP runtime in one
process abort it ("OMP: Error #15: Initializing libomp.dylib, but found
libomp.dylib already initialized").  So the extension is rewritten to load
``@rpath/libomp.dylib``, searched first in ``../torch/lib`` (PyTorch's copy,
when PyTorch is installed beside fastce) and then in ``.dylibs`` (fastce's
own), and the bundled copy gets the same install name as PyTorch's.  Either
import order then loads a single runtime.

Usage (cibuildwheel's macOS repair step, after delocate-wheel)::

    python scripts/share_libomp_macos.py DEST_DIR_OR_WHEEL...
"""

from __future__ import annotations

import glob
import os
import sys

from delocate.tools import (
    add_rpath,
    get_install_names,
    get_rpaths,
    replace_signature,
    set_install_id,
    set_install_name,
)
from delocate.wheeltools import InWheel

BUNDLED = "@loader_path/.dylibs/libomp.dylib"
SHARED = "@rpath/libomp.dylib"
SEARCH = ("@loader_path/../torch/lib", "@loader_path/.dylibs")


def share_libomp(wheel: str) -> None:
    with InWheel(wheel, wheel):  # rewrites RECORD and repacks in place
        extensions = glob.glob(os.path.join("fastce", "_kernels*.so"))
        if not extensions:
            raise SystemExit(f"{wheel}: no compiled extension")
        for ext in extensions:
            names = get_install_names(ext)
            if BUNDLED not in names:
                raise SystemExit(f"{ext} does not load the bundled libomp: {names}")
            set_install_name(ext, BUNDLED, SHARED, ad_hoc_sign=False)
            for path in SEARCH:
                if path not in get_rpaths(ext):
                    add_rpath(ext, path, ad_hoc_sign=False)
        set_install_id(os.path.join("fastce", ".dylibs", "libomp.dylib"), SHARED)
        for ext in extensions:  # an ad-hoc signature, after the last change
            replace_signature(ext, "-")
    print(f"{os.path.basename(wheel)}: libomp loaded as {SHARED} from {', '.join(SEARCH)}")


def main(paths: list[str]) -> int:
    wheels = []
    for path in paths:
        wheels += glob.glob(os.path.join(path, "*.whl")) if os.path.isdir(path) else [path]
    if not wheels:
        raise SystemExit(f"no wheel in {paths}")
    for wheel in wheels:
        share_libomp(os.path.abspath(wheel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
