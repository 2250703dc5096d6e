#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, type-check and run the test suite against real etcd 3.4 and 3.5.
# Extra arguments go to pytest, e.g. scripts/test.sh -k watch --etcd-version 3.5
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/mypy
set +e
.venv/bin/pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
