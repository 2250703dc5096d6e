#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, type-check and run the test suite against real etcd 3.4 and 3.5.
# Extra arguments go to pytest, e.g. scripts/test.sh -k watch --etcd-version 3.5
# The tests run on $ETCD_DR_TEST_WORKERS pytest-xdist workers (default 2): most of a test's time is spent
# waiting on etcd, so two workers on two cores take about half the time of one. Each test starts its own
# etcd on free ports in its own directories, so tests do not share state. `-n 0` (or
# ETCD_DR_TEST_WORKERS=0) runs them in one process, as a plain `pytest` does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/mypy
set +e
.venv/bin/pytest -q -p no:cacheprovider -n "${ETCD_DR_TEST_WORKERS:-2}" --dist worksteal "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
