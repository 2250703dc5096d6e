"""Benchmarks, run from the repository root as `python -m bench.NAME`."""

import sys
from pathlib import Path

# The test harness (fault proxy, workloads) lives in tests/harness, outside the wheel: import it as
# `harness`, as the tests do.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
