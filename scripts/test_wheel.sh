#!/usr/bin/env bash
# Test what users install, not the source tree:
#   1. build an sdist, then a wheel from that sdist alone (python -m build's default),
#      with FASTCE_REQUIRE_OPENMP=1 so that a build without OpenMP fails;
#   2. check that the sdist holds every file the build and the tests need;
#   3. install the wheel into a fresh virtual environment (no system site-packages)
#      with torch and the test extra;
#   4. import every module of the source package from the installed one, then run the
#      test suite from a copy of tests/ in a directory without src/, so that only the
#      installed package can be imported.
# Usage: scripts/test_wheel.sh [extra pytest arguments]
# Environment: PYTHON (default python3), TORCH_REQUIREMENT (default torch==2.13.0),
#              FASTCE_KEEP_WHEEL_DIR=1 keeps the work directory.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
torch_requirement="${TORCH_REQUIREMENT:-torch==2.13.0}"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastce-wheel.XXXXXX")"
if [[ "${FASTCE_KEEP_WHEEL_DIR:-}" != 1 ]]; then
    trap 'rm -rf "$work"' EXIT
fi
export FASTCE_REQUIRE_OPENMP=1
start=$SECONDS
step() { printf '\n== %s (%ds)\n' "$1" $((SECONDS - start)); }

step "sdist, then a wheel built from the sdist"
"$python" -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install -q build
"$work/build-env/bin/python" -m build --outdir "$work/dist" "$root"
sdists=("$work"/dist/fastce-*.tar.gz)
wheels=("$work"/dist/fastce-*.whl)
[[ ${#sdists[@]} == 1 && -f "${sdists[0]}" ]] || { echo "expected one sdist" >&2; exit 1; }
[[ ${#wheels[@]} == 1 && -f "${wheels[0]}" ]] || { echo "expected one wheel" >&2; exit 1; }
sdist="${sdists[0]}"
wheel="${wheels[0]}"

step "sdist contents"
"$work/build-env/bin/python" - "$sdist" "$wheel" <<'EOF'
import sys, tarfile, zipfile

sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as tar:
    names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
needed = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
          "src/fastce/_kernels.pyx", "src/fastce/_kernels.pyi", "src/fastce/csrc/dispatch.c",
          "src/fastce/csrc/kernels_body.h", "src/fastce/csrc/vec_avx512.h",
          "src/fastce/py.typed", "src/fastce/__init__.py", "src/fastce/torch.py",
          "tests/test_reference.py", "tests/test_torch_adapter.py",
          "scripts/test_wheel.sh", "scripts/share_libomp_macos.py"]
missing = [n for n in needed if n not in names]
# the C of src/fastce/csrc is written by hand; Cython's output beside the .pyx is not
generated = [n for n in names if n.endswith((".so", ".pyd", ".html"))
             or (n.endswith(".c") and not n.startswith("src/fastce/csrc/"))]
with zipfile.ZipFile(wheel) as whl:
    in_wheel = whl.namelist()
shipped = ["fastce/py.typed", "fastce/_kernels.pyi", "fastce/torch.py"]
not_shipped = [n for n in shipped if n not in in_wheel]
has_extension = any(n.startswith("fastce/_kernels") and n.endswith((".so", ".pyd"))
                    for n in in_wheel)
print(f"sdist: {len(names)} files; wheel: {len(in_wheel)} files")
if missing or generated or not_shipped or not has_extension:
    sys.exit(f"sdist lacks {missing}, ships generated {generated}; wheel lacks "
             f"{not_shipped}, compiled extension present: {has_extension}")
EOF

step "fresh environment: the wheel, $torch_requirement and the test extra"
"$python" -m venv "$work/test-env"
"$work/test-env/bin/python" -m pip install -q "$torch_requirement" "${wheel}[all]"

step "the test suite against the installed wheel"
cp -R "$root/tests" "$work/tests"
cd "$work"
"$work/test-env/bin/python" - "$root" <<'EOF'
import importlib, os, sys
import fastce

root = os.path.realpath(sys.argv[1])
where = os.path.realpath(fastce.__file__)
print(f"testing fastce {fastce.__version__} from {os.path.dirname(where)}")
if where.startswith(root + os.sep) or "site-packages" not in where:
    sys.exit("fastce was not imported from the installed wheel")
if not fastce.show_config()["openmp"]:
    sys.exit("the wheel was built without OpenMP")
# every module of the source package imports from the wheel, those whose tests CI leaves
# out of this run too (their optional dependencies are installed here)
source = os.path.join(root, "src", "fastce")
names = sorted({name.split(".")[0] for name in os.listdir(source)
                if name.endswith((".py", ".pyx")) and not name.startswith("__")})
for name in names:
    module = importlib.import_module("fastce." + name)
    if not os.path.realpath(module.__file__).startswith(os.path.dirname(where) + os.sep):
        sys.exit(f"fastce.{name} was not imported from the installed wheel")
print(f"imported {len(names)} modules of the installed package")
EOF
"$work/test-env/bin/python" -m pytest -p no:cacheprovider --rootdir "$work" "$work/tests" "$@"
step "done"
