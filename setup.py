"""Build the fastce Cython extensions, with OpenMP when the compiler has it.

The compiler is probed for OpenMP (``-fopenmp`` on gcc, libomp behind
``-Xpreprocessor -fopenmp`` with Apple clang, ``/openmp`` with MSVC).  Without
it the kernels build serially and a loud warning says so; setting
``FASTCE_REQUIRE_OPENMP=1`` turns that warning into an error.
``FASTCE_CYTHON_CHECKS=1`` builds with Cython's bounds and index checks on.
``FASTCE_OPT_LEVEL`` (0, 1, 2 or 3, the default) is the optimisation level of
gcc and clang builds: the sanitizer build uses 1, AddressSanitizer's advice,
at which the vector files compile in half the time.
The C files of the extensions compile side by side, one per CPU.
"""

import os
import sys
import tempfile
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

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


def _opt_level():
    level = os.environ.get("FASTCE_OPT_LEVEL", "").strip() or "3"
    if level not in {"0", "1", "2", "3"}:
        raise RuntimeError(f"FASTCE_OPT_LEVEL must be 0, 1, 2 or 3, not {level!r}")
    return level


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


def _compile_side_by_side(compile_sources, workers):
    """The compiler's ``compile``, one source per call, ``workers`` calls at a time.

    Each instantiation of the kernel body is a file of its own and takes most of
    a build (minutes under the sanitizers); compiled one after another they
    leave every core but one idle.
    """

    def compile_each(sources, *args, **kwargs):
        if len(sources) < 2 or workers < 2:
            return compile_sources(sources, *args, **kwargs)
        with ThreadPoolExecutor(workers) as pool:
            parts = pool.map(lambda source: compile_sources([source], *args, **kwargs), sources)
            return [obj for objects in parts for obj in objects]

    return compile_each


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
            base_args = [f"-O{_opt_level()}", "-fno-math-errno", "-fno-trapping-math"]
        for ext in self.extensions:
            compile_args = base_args + (openmp[0] if openmp else [])
            link_args = openmp[1] if openmp else []
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            ext.extra_link_args = link_args + ext.extra_link_args
            flags = " ".join(compile_args)
            ext.define_macros = ext.define_macros + [
                ("FASTCE_COMPILE_ARGS", '"{}"'.format(flags.replace('"', ""))),
            ]
        # MSVC's compiler object sets itself up on its first call: it stays serial
        if compiler_type != "msvc":
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
            workers = workers or os.cpu_count() or 1
            self.compiler.compile = _compile_side_by_side(self.compiler.compile, workers)
            if not self.parallel:
                self.parallel = workers  # the extensions side by side as well
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

# the vector layer: one kernel body, instantiated per ISA and element type in a
# file of its own, and the one place that chooses among them at run time
# (src/fastce/csrc); the slowest to compile first, so that the others fill the
# remaining cores
VECTOR_LAYER = [
    f"src/fastce/csrc/kernels_{isa}_{dtype}.c"
    for isa in ("base", "avx512", "avx2")
    for dtype in ("f64", "f32")
] + ["src/fastce/csrc/dispatch.c"]
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
        VECTOR_LAYER + ["src/fastce/_kernels.pyx", "src/fastce/csrc/result_pool.c"],
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
