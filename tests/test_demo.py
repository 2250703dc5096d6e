"""`etcd-dr demo` as a newcomer runs it: it finishes by itself, builds its sites from a rendered topology
(members started with `etcd --config-file`), ends with verify saying equal, and Ctrl-C (or SIGTERM)
leaves nothing behind."""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def _etcd_processes_under(workdir: str) -> dict[int, list[str]]:
    """PID -> argv of the etcd processes whose command line names the demo's directory."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    found: dict[int, list[str]] = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "etcd" in args and workdir in args:
            found[int(pid)] = args.split()
    return found


@dataclass
class Dirs:
    workdir: str
    data: str


async def _start_demo(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "etcd_dr",
        "demo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _end(proc: asyncio.subprocess.Process) -> None:
    """After a failed check: Ctrl-C, so that the demo still cleans up; SIGKILL if it does not end."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _read_until(proc: asyncio.subprocess.Process, lines: list[str], marker: str) -> None:
    assert proc.stdout is not None
    while not lines or marker not in lines[-1]:
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        assert line, f"the demo ended before {marker!r}:\n{''.join(lines)}"
        lines.append(line)


def _dirs(text: str) -> Dirs:
    found = re.search(r"working directory (\S+) \(member data in (\S+)\)", text)
    assert found is not None, text
    return Dirs(found.group(1), found.group(2))


def _check_members_run_from_rendered_files(dirs: Dirs) -> None:
    """Six etcd processes, each `etcd --config-file` of its rendered etcd.conf.yml and nothing else."""
    procs = _etcd_processes_under(dirs.workdir)
    configs = sorted(argv[2] for argv in procs.values())
    assert [argv[1:2] for argv in procs.values()] == [["--config-file"]] * 6, procs
    assert all(len(argv) == 3 for argv in procs.values()), procs
    assert configs == [
        f"{dirs.workdir}/sites/site-{s}/etcd-{s}{i}/etcd.conf.yml" for s in "ab" for i in (1, 2, 3)
    ]


async def _check_nothing_left(dirs: Dirs) -> None:
    assert _etcd_processes_under(dirs.workdir) == {}
    assert not await asyncio.to_thread(Path(dirs.workdir).exists)
    assert not await asyncio.to_thread(Path(dirs.data).exists)


@pytest.mark.timeout(180)
async def test_demo_runs_to_the_end_and_cleans_up() -> None:
    proc = await _start_demo()
    lines: list[str] = []
    try:
        await _read_until(proc, lines, "site B:")
        dirs = _dirs("".join(lines))
        _check_members_run_from_rendered_files(dirs)
        out, err = await asyncio.wait_for(proc.communicate(), 150)
    finally:
        await _end(proc)
    text = "".join(lines) + out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]
    steps = [
        "1. Topology: sites A (primary) and B (standby), 3 members each on 127.0.0.1",
        f"-> {dirs.workdir}/topology.yaml",
        f"-> 16 certificates in {dirs.workdir}/sites/pki/{{site-a,site-b}}",
        "3. render: 6 etcd.conf.yml, 6 etcd.service, 2 pki.sh, etcd-dr-mirror.service, README.txt in "
        f"{dirs.workdir}/sites\n",
        f"4. Start the 6 members as their rendered units do: etcd --config-file {dirs.workdir}/sites/",
        "pki/site-a/mirror.pem and pki/site-b/mirror.pem",
        "site B holds the same 2,000 keys",
        "equal again after",
        "with etcd-a1 down",
        "etcd-a1 restarted from its etcd.conf.yml",
        "Failover, failback and switchover arrive with the next release",
    ]
    for step in steps:
        assert step in text, f"{step!r} not in:\n{text}"
    # 2,000 keys, 20 services, 100 pods deleted by prefix.
    assert re.search(r"^9\. etcd-dr verify \(the mirror's flags\): equal: 1920 keys \(", text, re.M), text
    assert text.rstrip().endswith("Stopped every process the demo started and removed its files.")
    assert "Traceback" not in err.decode()
    await _check_nothing_left(dirs)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("signum", "after", "code", "message"),
    [
        # Sites up, no mirror yet; then with the mirror running.
        (signal.SIGINT, "site B:", 130, "interrupted"),
        (signal.SIGTERM, "site B holds the same", 143, "terminated by SIGTERM"),
    ],
    ids=["ctrl-c", "sigterm"],
)
async def test_demo_signal_ends_every_process_and_removes_files(
    signum: int, after: str, code: int, message: str
) -> None:
    proc = await _start_demo()
    lines: list[str] = []
    try:
        await _read_until(proc, lines, after)
        dirs = _dirs("".join(lines))
        assert len(_etcd_processes_under(dirs.workdir)) == 6, "the demo's etcd members are not running"
        proc.send_signal(signum)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await _end(proc)
    assert proc.returncode == code, err.decode()[-2000:]
    assert err.decode().strip().splitlines()[-1] == f"etcd-dr: error: {message}"
    assert "Traceback" not in err.decode()
    await _check_nothing_left(dirs)


@pytest.mark.timeout(180)
async def test_demo_keep_prints_working_etcdctl_commands() -> None:
    proc = await _start_demo("--keep")
    lines: list[str] = []
    try:
        await _read_until(proc, lines, "Reach the sites with:")
        await _read_until(proc, lines, "   site A: ")
        await _read_until(proc, lines, "   site B: ")
        dirs = _dirs("".join(lines))
        commands = {line.split(":", 1)[0].strip(): line.split(":", 1)[1] for line in lines[-2:]}
        for site, line in commands.items():
            argv = shlex.split(line)
            assert "--cacert" in argv and f"{dirs.workdir}/sites/pki/" in line, line
            done = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, timeout=30, check=False
            )
            assert done.returncode == 0, f"{site}: {done.stderr}"
            keys = done.stdout.split()
            assert len(keys) == 1920 and keys[0] == "/registry/pods/pod-0000", (site, keys[:3])
        await asyncio.sleep(0.5)
        assert proc.returncode is None, "--keep: the demo ended by itself"
        _check_members_run_from_rendered_files(dirs)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await _end(proc)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode().strip().splitlines()[-1] == "etcd-dr: error: interrupted"
    await _check_nothing_left(dirs)
