"""The wheel-building configuration: cibuildwheel's settings and the macOS repair step.

These tests read the project's files (pyproject.toml, scripts/), so they run
from a source checkout and skip where the suite runs from a copy of tests/
against an installed wheel.  ``scripts/test_wheel.sh`` builds and tests the
real sdist and wheel.
"""

import base64
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "scripts").is_dir():
    pytest.skip("needs the source checkout (pyproject.toml, scripts/)", allow_module_level=True)

PYTHONS = {"cp310", "cp311", "cp312", "cp313"}


def identifiers(platform):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cibuildwheel",
            "--print-build-identifiers",
            "--platform",
            platform,
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()


def build_options(platform, identifier):
    from cibuildwheel.options import CommandLineArguments, compute_options

    args = dataclasses.replace(CommandLineArguments.defaults(), package_dir=ROOT, platform=platform)
    return compute_options(platform=platform, command_line_arguments=args, env={}).build_options(
        identifier
    )


def fake_macos_shell(command, env):
    """Runs the commands cibuildwheel's environment would run on a macOS 14.7.1 runner."""
    if command[:2] == ["brew", "--prefix"]:
        return "/opt/homebrew/opt/libomp\n"
    if command[0] == "python3" and command[1] == "-c":
        import platform

        out = io.StringIO()
        real = platform.mac_ver
        platform.mac_ver = lambda *a: ("14.7.1", ("", "", ""), "arm64")
        try:
            with contextlib.redirect_stdout(out):
                exec(command[2], {})
        finally:
            platform.mac_ver = real
        return out.getvalue()
    raise AssertionError(f"unexpected command {command}")


def test_cibuildwheel_selects_cpython_310_to_313_on_each_platform():
    pytest.importorskip("cibuildwheel")
    linux = identifiers("linux")
    assert {i.split("-")[0] for i in linux} == PYTHONS
    assert {i.split("-", 1)[1] for i in linux} == {"manylinux_x86_64", "manylinux_aarch64"}
    for platform, suffix in (("macos", "macosx_"), ("windows", "win_amd64")):
        found = identifiers(platform)
        assert {i.split("-")[0] for i in found} == PYTHONS, found
        assert all(i.split("-", 1)[1].startswith(suffix) for i in found), found


def test_every_platform_requires_openmp_and_tests_the_installed_wheel():
    pytest.importorskip("cibuildwheel")
    for platform, identifier in (
        ("linux", "cp312-manylinux_x86_64"),
        ("macos", "cp312-macosx_arm64"),
        ("windows", "cp312-win_amd64"),
    ):
        options = build_options(platform, identifier)
        env = options.environment.as_dictionary({"PATH": "/usr/bin"}, executor=fake_macos_shell)
        assert env["FASTCE_REQUIRE_OPENMP"] == "1", platform
        assert options.test_sources == ["tests"]
        assert options.test_extras == "[test,bfloat16]"
        assert "pytest" in options.test_command and "{project}" not in options.test_command
        assert any(r.startswith("torch") for r in options.test_requires)


def test_macos_build_finds_homebrew_libomp_and_targets_the_runner():
    pytest.importorskip("cibuildwheel")
    options = build_options("macos", "cp312-macosx_arm64")
    env = options.environment.as_dictionary({"PATH": "/usr/bin"}, executor=fake_macos_shell)
    assert env["MACOSX_DEPLOYMENT_TARGET"] == "14.0"
    assert env["CPPFLAGS"] == "-I/opt/homebrew/opt/libomp/include"
    assert env["LDFLAGS"] == "-L/opt/homebrew/opt/libomp/lib"
    assert env["LIBRARY_PATH"] == "/opt/homebrew/opt/libomp/lib"
    assert "brew install libomp" in options.before_all
    assert "delocate-wheel" in options.repair_command
    assert "share_libomp_macos.py" in options.repair_command


def test_linux_tests_use_the_cpu_build_of_torch():
    pytest.importorskip("cibuildwheel")
    options = build_options("linux", "cp312-manylinux_x86_64")
    env = options.test_environment.as_dictionary({})
    assert env["PIP_EXTRA_INDEX_URL"].rstrip("/").endswith("/whl/cpu")


# --------------------------------------------------------------------------
# scripts/share_libomp_macos.py, with the macOS tools replaced by a record of the calls


def load_share_script():
    pytest.importorskip("delocate")
    spec = importlib.util.spec_from_file_location(
        "share_libomp_macos", ROOT / "scripts" / "share_libomp_macos.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wheel(path: Path, extension="fastce/_kernels.cpython-312-darwin.so"):
    files = {
        "fastce/__init__.py": b"",
        extension: b"\xcf\xfa\xed\xfe extension",
        "fastce/.dylibs/libomp.dylib": b"\xcf\xfa\xed\xfe libomp",
        "fastce-0.1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fastce\n",
        "fastce-0.1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n",
        "fastce-0.1.0.dist-info/RECORD": b"",
    }
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
    return path


class MachO:
    """Stands in for install_name_tool and codesign: records what they would do."""

    def __init__(self, module, monkeypatch, bundled=True):
        self.calls = []
        self.names = {
            "fastce/_kernels.cpython-312-darwin.so": [
                module.BUNDLED if bundled else "/usr/lib/libSystem.B.dylib"
            ]
        }
        self.rpaths = {}
        for name in (
            "get_install_names",
            "set_install_name",
            "get_rpaths",
            "add_rpath",
            "set_install_id",
            "replace_signature",
        ):
            monkeypatch.setattr(module, name, getattr(self, name))

    def get_install_names(self, filename):
        return tuple(self.names[filename])

    def set_install_name(self, filename, old, new, ad_hoc_sign=True):
        self.calls.append(("change", filename, old, new))
        self.names[filename] = [new if n == old else n for n in self.names[filename]]

    def get_rpaths(self, filename):
        return tuple(self.rpaths.get(filename, ()))

    def add_rpath(self, filename, path, ad_hoc_sign=True):
        self.calls.append(("rpath", filename, path))
        self.rpaths.setdefault(filename, []).append(path)

    def set_install_id(self, filename, install_id, ad_hoc_sign=True):
        assert os.path.exists(filename)
        self.calls.append(("id", filename, install_id))

    def replace_signature(self, filename, identity):
        self.calls.append(("sign", filename, identity))


def test_share_libomp_rewrites_the_extension_to_load_one_runtime(tmp_path, monkeypatch):
    script = load_share_script()
    macho = MachO(script, monkeypatch)
    wheel = make_wheel(tmp_path / "fastce-0.1.0-cp312-cp312-macosx_14_0_arm64.whl")
    assert script.main([str(tmp_path)]) == 0
    ext = "fastce/_kernels.cpython-312-darwin.so"
    assert macho.calls == [
        ("change", ext, "@loader_path/.dylibs/libomp.dylib", "@rpath/libomp.dylib"),
        ("rpath", ext, "@loader_path/../torch/lib"),  # PyTorch's runtime, when installed
        ("rpath", ext, "@loader_path/.dylibs"),  # else fastce's own
        ("id", "fastce/.dylibs/libomp.dylib", "@rpath/libomp.dylib"),
        ("sign", ext, "-"),
    ]
    with zipfile.ZipFile(wheel) as whl:  # repacked with a RECORD that matches its files
        record = whl.read("fastce-0.1.0.dist-info/RECORD").decode().splitlines()
        listed = {line.split(",")[0]: line.split(",")[1] for line in record if line}
        for name in whl.namelist():
            if name.endswith(("RECORD", "/")):
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(whl.read(name)).digest())
            assert listed[name] == "sha256=" + digest.rstrip(b"=").decode()


def test_share_libomp_refuses_a_wheel_without_bundled_libomp(tmp_path, monkeypatch):
    script = load_share_script()
    MachO(script, monkeypatch, bundled=False)
    make_wheel(tmp_path / "fastce-0.1.0-cp312-cp312-macosx_14_0_arm64.whl")
    with pytest.raises(SystemExit, match="does not load the bundled libomp"):
        script.main([str(tmp_path)])
