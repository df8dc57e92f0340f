"""Build the fastce Cython extensions, with OpenMP when the compiler has it.

The compiler is probed for OpenMP (``-fopenmp`` on gcc, libomp behind
``-Xpreprocessor -fopenmp`` with Apple clang, ``/openmp`` with MSVC).  Without
it the kernels build serially and a loud warning says so; setting
``FASTCE_REQUIRE_OPENMP=1`` turns that warning into an error.
``FASTCE_CYTHON_CHECKS=1`` builds with Cython's bounds and index checks on.
"""

import os
import sys
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _openmp_candidates(compiler_type):
    if compiler_type == "msvc":
        return [(["/openmp"], [])]
    if sys.platform == "darwin":
        return [
            (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),
            (["-fopenmp"], ["-fopenmp"]),
        ]
    return [(["-fopenmp"], ["-fopenmp"])]


def _compiles_and_links(compiler, compile_args, link_args):
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe_openmp.c")
        with open(source, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_args)
            compiler.link_executable(
                objects, "probe_openmp", output_dir=tmp, extra_postargs=link_args
            )
        except Exception:  # any compiler or linker failure means "no OpenMP"
            return False
    return True


class BuildExtWithOpenMP(build_ext):
    """Adds the OpenMP flags the compiler accepts, or builds serially."""

    def build_extensions(self):
        compiler_type = self.compiler.compiler_type
        openmp = None
        for compile_args, link_args in _openmp_candidates(compiler_type):
            if _compiles_and_links(self.compiler, compile_args, link_args):
                openmp = (compile_args, link_args)
                break
        if openmp is None:
            message = (
                "fastce: the C compiler has no usable OpenMP; building SERIAL kernels "
                "that use one core. Install libgomp (gcc) or libomp (clang) and rebuild "
                "for parallel kernels."
            )
            if _env_flag("FASTCE_REQUIRE_OPENMP"):
                raise RuntimeError(message + " (FASTCE_REQUIRE_OPENMP is set)")
            warnings.warn(message, stacklevel=1)
            print("\n" + "!" * 78 + "\n" + message + "\n" + "!" * 78 + "\n", file=sys.stderr)
            # the vector loops' simd pragmas still apply without the runtime
            if compiler_type != "msvc" and _compiles_and_links(
                self.compiler, ["-fopenmp-simd"], []
            ):
                openmp = (["-fopenmp-simd"], [])

        if compiler_type == "msvc":
            base_args = ["/O2"]
        else:
            # neither changes a result: errno is never read, FP traps are never on
            base_args = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
        for ext in self.extensions:
            compile_args = base_args + (openmp[0] if openmp else [])
            link_args = openmp[1] if openmp else []
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            ext.extra_link_args = link_args + ext.extra_link_args
            flags = " ".join(compile_args)
            ext.define_macros = ext.define_macros + [
                ("FASTCE_COMPILE_ARGS", '"{}"'.format(flags.replace('"', ""))),
            ]
        super().build_extensions()


checks = _env_flag("FASTCE_CYTHON_CHECKS")
directives = {
    "language_level": 3,
    "boundscheck": checks,
    "wraparound": False,
    "cdivision": not checks,
    "initializedcheck": checks,
    "embedsignature": True,
    "autotestdict": False,
}

# the vector layer: one kernel body, instantiated per ISA in a file of its own,
# and the one place that chooses among them at run time (src/fastce/csrc)
VECTOR_LAYER = [
    "src/fastce/csrc/dispatch.c",
    "src/fastce/csrc/kernels_base.c",
    "src/fastce/csrc/kernels_avx2.c",
    "src/fastce/csrc/kernels_avx512.c",
]
VECTOR_HEADERS = [
    os.path.join("src/fastce/csrc", name)
    for name in sorted(
        os.listdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "src/fastce/csrc"))
    )
    if name.endswith(".h")
]

extensions = [
    Extension(
        "fastce._kernels",
        ["src/fastce/_kernels.pyx", "src/fastce/csrc/result_pool.c"] + VECTOR_LAYER,
        include_dirs=[np.get_include(), "src/fastce"],
        depends=VECTOR_HEADERS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    ),
    Extension(
        "fastce._metrics",
        ["src/fastce/_metrics.pyx"],
        include_dirs=[np.get_include(), "src/fastce"],
        depends=VECTOR_HEADERS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives),
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
