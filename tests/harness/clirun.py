"""The command line as a user meets it, for tests: `python -m etcd_dr ARGS` as a child process, its exit
code and output, and the check that a refusal is the one-line error the contract promises."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ERROR_PREFIX = "etcd-dr: error: "
# gRPC C-core's own log line ("E1205 11:25:59.727685    7404 ssl_transport_security.cc:2563] ..."):
# etcd-dr turns that log off, so none may reach a user's terminal.
GRPC_LOG_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.\w+:\d+\]", re.M)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def _env() -> dict[str, str]:
    # The source flags have ETCDCTL_* environment defaults: a developer's shell must not change a test.
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}


def etcd_dr_sync(*args: str, timeout: float = 60) -> Run:
    """Run `etcd-dr ARGS` and wait for it (for synchronous tests)."""
    out = subprocess.run(
        [sys.executable, "-m", "etcd_dr", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    return Run(out.returncode, out.stdout, out.stderr)


async def etcd_dr(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Run:
    """Run `etcd-dr ARGS` without blocking the event loop (the test's own clients keep working);
    `env`: variables added to its environment (e.g. ETCDCTL_DEST_PASSWORD)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "etcd_dr",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**_env(), **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"etcd-dr {' '.join(args)} did not end in {timeout} s") from None
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def tls_flags(prefix: str, cacert: Path, cert: Path, key: Path) -> list[str]:
    """--cacert/--cert/--key (prefix "") or --dest-cacert/... (prefix "dest-")."""
    return [f"--{prefix}cacert", str(cacert), f"--{prefix}cert", str(cert), f"--{prefix}key", str(key)]


def assert_refused(run: Run, *needles: str) -> None:
    """Exit 2, the last stderr line is `etcd-dr: error: ...` naming every needle, and no traceback or
    gRPC log line."""
    assert run.code == 2, f"exit {run.code}, expected 2:\n{run.stderr}"
    assert not GRPC_LOG_LINE.search(run.stderr), f"a gRPC log line on stderr:\n{run.stderr}"
    assert run.last_line.startswith(ERROR_PREFIX), run.stderr
    assert run.stderr.count(ERROR_PREFIX) == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    for n in needles:
        assert n in run.last_line, f"{n!r} not in {run.last_line!r}"
