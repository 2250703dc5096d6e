"""`etcd-dr demo` as a newcomer runs it: it finishes by itself, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def _etcd_pids_under(workdir: str) -> list[int]:
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "etcd" in line and workdir in line]


async def _start_demo() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "etcd_dr",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.timeout(180)
async def test_demo_runs_to_the_end_and_cleans_up() -> None:
    proc = await _start_demo()
    out, err = await asyncio.wait_for(proc.communicate(), 150)
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]
    workdir = re.search(r"working directory (\S+)", text)
    assert workdir is not None, text
    for step in ("1. Certificates", "site B holds the same 2,000 keys", "equal again after", "equal after"):
        assert step in text, text
    assert "Stopped every process the demo started" in text
    assert "Traceback" not in err.decode()
    assert not await asyncio.to_thread(Path(workdir.group(1)).exists)
    assert _etcd_pids_under(workdir.group(1)) == []


@pytest.mark.timeout(180)
async def test_demo_ctrl_c_ends_every_process_and_removes_files() -> None:
    proc = await _start_demo()
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        assert line, "the demo ended before it started its clusters"
        lines.append(line)
        if "site B:" in line:
            break
    workdir = re.search(r"working directory (\S+)", "".join(lines))
    assert workdir is not None
    assert _etcd_pids_under(workdir.group(1)), "no etcd of the demo is running"
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode().strip().splitlines()[-1] == "etcd-dr: error: interrupted"
    assert "Traceback" not in err.decode()
    assert _etcd_pids_under(workdir.group(1)) == []
    assert not await asyncio.to_thread(Path(workdir.group(1)).exists)
