#!/usr/bin/env bash
# The project's linters and its type check, as CI runs them; each prints what it
# finds and the script fails if any of them does.  Needs the lint extra:
#
#   pip install ".[lint]" && bash scripts/lint.sh
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
run() {
    echo "== $*"
    "$@" || status=1
}
run ruff check .
run ruff format --check .
run cython-lint --max-line-length 100 src/fastce/_kernels.pyx src/fastce/_metrics.pyx \
    src/fastce/_kernels.pxd
run clang-format --dry-run --Werror src/fastce/csrc/*.c src/fastce/csrc/*.h
# the package as its users' type checkers see it: from its sources and stubs
run env MYPYPATH=src mypy --strict -p fastce
exit $status
