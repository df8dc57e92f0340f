"""What was built: OpenMP, the typing stub, and the documented examples."""

import doctest
import os
import subprocess
import sys

import pytest

import fastce
import fastce._config
import fastce.functional


def test_show_config_prints_the_build(capsys):
    info = fastce.show_config()
    printed = capsys.readouterr().out
    assert info["version"] == fastce.__version__
    assert f"fastce {fastce.__version__}" in printed
    assert "openmp:" in printed and "threads:" in printed and "compile args:" in printed
    assert info["threads"] >= 1
    assert "-ffast-math" not in info["compile_args"]
    assert "-march=native" not in info["compile_args"]


@pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("FASTCE_REQUIRE_OPENMP")),
    reason="OpenMP is required only where the build asked for it",
)
def test_openmp_is_on_where_required():
    assert fastce.show_config()["openmp"] is True


@pytest.mark.parametrize("module", [fastce.functional, fastce._config])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("module", ["fastce._kernels", "fastce._metrics"])
def test_stub_matches_the_compiled_module(module):
    pytest.importorskip("mypy")
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", module],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_package_ships_typing_markers():
    root = os.path.dirname(fastce.__file__)
    assert os.path.exists(os.path.join(root, "py.typed"))
    assert os.path.exists(os.path.join(root, "_kernels.pyi"))


def test_build_switches_are_not_overridden_by_the_sources():
    # a "# cython:" line in a .pyx file overrides the directives setup.py
    # passes, so FASTCE_CYTHON_CHECKS=1 would build without checks
    import pathlib

    src = pathlib.Path(__file__).resolve().parents[1] / "src" / "fastce"
    sources = sorted(src.glob("*.pyx"))
    if not sources:
        pytest.skip("the .pyx sources are not beside this test (an installed wheel)")
    for path in sources:
        header = [line for line in path.read_text().splitlines() if line.startswith("# cython:")]
        assert header == ["# cython: language_level=3"], (path.name, header)


CHECKED_BUILD = r"""
import os, runpy, sys
import Cython.Build
import setuptools

project, work = sys.argv[1], sys.argv[2]
# the directives setup.py passes to cythonize when FASTCE_CYTHON_CHECKS=1
seen = {}
real_cythonize = Cython.Build.cythonize
Cython.Build.cythonize = lambda extensions, compiler_directives: seen.update(compiler_directives)
real_setup = setuptools.setup
setuptools.setup = lambda **kwargs: None
os.environ["FASTCE_CYTHON_CHECKS"] = "1"
os.chdir(project)
runpy.run_path("setup.py")
Cython.Build.cythonize, setuptools.setup = real_cythonize, real_setup

# a module with the header every fastce .pyx file has, built with them
os.chdir(work)
with open("checked.pyx", "w") as f:
    f.write("# cython: language_level=3\n"
            "def element(double[::1] a, Py_ssize_t i):\n"
            "    return a[i]\n")
sys.argv = ["setup.py", "build_ext", "--inplace", "-q"]
setuptools.setup(
    ext_modules=Cython.Build.cythonize(
        [setuptools.Extension("checked", ["checked.pyx"])],
        compiler_directives=seen, quiet=True),
    script_args=sys.argv[1:])
sys.path.insert(0, work)
import checked
import numpy as np
try:
    checked.element(np.zeros(3), 3)
except IndexError:
    print("raised")
"""


def test_a_checked_build_raises_on_an_index_out_of_bounds(tmp_path):
    # FASTCE_CYTHON_CHECKS=1: what setup.py passes turns Cython's bounds
    # checks on in a module headed as fastce's are
    import pathlib

    project = pathlib.Path(__file__).resolve().parents[1]
    if not (project / "setup.py").exists() or not (project / "src" / "fastce").is_dir():
        pytest.skip("setup.py is not beside this test (an installed wheel)")
    pytest.importorskip("Cython")
    done = subprocess.run(
        [sys.executable, "-c", CHECKED_BUILD, str(project), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "raised", done.stdout + done.stderr


def test_the_optimisation_level_is_chosen_by_its_switch(monkeypatch):
    # FASTCE_OPT_LEVEL: 3 unless set (the sanitizer build sets 1); a value a
    # compiler would not take stops the build with its name
    import pathlib
    import runpy

    project = pathlib.Path(__file__).resolve().parents[1]
    if not (project / "setup.py").exists():
        pytest.skip("setup.py is not beside this test (an installed wheel)")
    Build = pytest.importorskip("Cython.Build")
    setuptools = pytest.importorskip("setuptools")
    monkeypatch.setattr(Build, "cythonize", lambda extensions, compiler_directives: [])
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    monkeypatch.chdir(project)
    opt_level = runpy.run_path("setup.py")["_opt_level"]
    monkeypatch.delenv("FASTCE_OPT_LEVEL", raising=False)
    assert opt_level() == "3"
    monkeypatch.setenv("FASTCE_OPT_LEVEL", " 1 ")
    assert opt_level() == "1"
    for bad in ("fast", "4", "-O2"):
        monkeypatch.setenv("FASTCE_OPT_LEVEL", bad)
        with pytest.raises(RuntimeError, match="FASTCE_OPT_LEVEL must be 0, 1, 2 or 3"):
            opt_level()
