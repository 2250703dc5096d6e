"""`etcd-dr demo` as a newcomer runs it: it finishes by itself, builds its sites from a rendered topology
(members started with `etcd --config-file`), kills site A under an application's writes, fails over to
site B with the RPO, fails back with the errant-writes report, ends with verify saying equal, and
Ctrl-C (or SIGTERM) leaves nothing behind."""

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


def _unwrap(text: str) -> str:
    """The demo's lines as they were before it wrapped them at 119 columns (a continuation is indented 5
    more than its line)."""
    return re.sub(r"\n {5,}(?=\S)", " ", text)


def _final_keys(text: str) -> int:
    """The key count of the demo's last verify (1,920 of step 9 plus the application's writes)."""
    found = re.search(r"^18\. etcd-dr verify: equal: (\d+) keys \(", text, re.M)
    assert found is not None, text
    return int(found.group(1))


def _check_switchover_and_back(text: str) -> None:
    """Step 10: to B (epoch 2) and back to A (epoch 3), each fencing the mirror into the new primary."""
    for epoch, old, new in ((2, "A -> B", "B -> A"), (3, "B -> A", "A -> B")):
        done = re.search(
            rf"^   \| switchover done: (site [AB]) is the primary \(epoch {epoch}\); "
            r"(site [AB]) is its standby$",
            text,
            re.M,
        )
        assert done is not None, text
        assert re.search(
            rf"^   The mirror {old} stops: the destination {re.escape(done.group(1))} is marked primary "
            rf"\(epoch {epoch}, by switchover at .*\)\. The mirror {new} \(the printed command\) copies what "
            r"differs and replays: equal after [\d.]+ s\.$",
            text,
            re.M,
        ), text
    assert len(re.findall(r"^   \$ etcd-dr switchover [AB] --endpoints [AB] --prefix ", text, re.M)) == 2
    # Two switchovers of step 10 and the one that ends the failback.
    moved = r"^   \| every write up to the old primary's revision \d+ is on the new primary"
    assert len(re.findall(moved, text, re.M)) == 3, text


def _check_failover_and_failback(text: str, dirs: Dirs) -> None:
    """Site A killed by PID under writes; failover with the RPO; the old mirror refused; failback's
    report holds at least the recorded writes after the RPO; both sites equal at the end."""
    killed = re.search(
        r"^12\. Site A dies .*SIGKILL to its 3 members \(PIDs (\d+), (\d+), (\d+)\).* (\d+) "
        r"writes were acknowledged, the last at revision (\d+)\.$",
        text,
        re.M,
    )
    assert killed is not None, text
    acked, last = int(killed.group(4)), int(killed.group(5))
    assert acked >= 400
    assert "13. etcd-dr failover promotes site B" in text and " --no-fence " in text
    assert "--fence-hook CMD" in text  # the narration says how a real site fences
    rpo = re.search(
        r"^   RPO, in [\d.]+ s: site B has applied site A's revision (\d+): all (\d+) recorded writes "
        r"up to it are on site B; (?:none came after it|(\d+) came after it)",
        text,
        re.M,
    )
    assert rpo is not None, text
    rpo_revision, kept, lost = int(rpo.group(1)), int(rpo.group(2)), int(rpo.group(3) or 0)
    assert kept + lost == acked
    assert (lost == 0) == (rpo_revision >= last), text
    assert f"   | RPO: every write of the old primary up to its revision {rpo_revision} is here" in text
    assert re.search(r"^   Kubernetes: site B's revision was raised .* \(now (\d+)\)", text, re.M), text
    # The mirror from before the failover cannot write into the new primary.
    refused = re.search(
        r"^   (The mirror left running from step 10 reaches site A again and stops|Started again "
        r"\(as its unit's Restart= would\), it stops): the destination site B is marked primary "
        r"\(epoch 4, by failover",
        text,
        re.M,
    )
    assert refused is not None, text
    # The report: where the demo said, at least every recorded write after the RPO.
    report = re.search(r"^   The report (\S+) lists (no|\d+) writes", text, re.M)
    assert report is not None, text
    # (failback-report-N.json: a run again after a connection cut; a report is never overwritten)
    assert re.fullmatch(rf"{re.escape(dirs.workdir)}/failback-report(-\d)?\.json", report.group(1)), text
    listed = 0 if report.group(2) == "no" else int(report.group(2))
    assert listed >= lost
    assert re.search(
        rf"^   \| failback: {listed} writes the old primary site A took after the last revision", text, re.M
    )
    if lost:
        assert f"the {lost} recorded writes after the RPO" in text
    # Switched back to A, the mirror A -> B again, and both sites equal: what site B had (the writes up
    # to the RPO, perhaps some never acknowledged) and the application's 200 writes since; not the lost.
    assert re.search(r"^   \| switchover done: site A is the primary \(epoch 5\)", text, re.M), text
    assert 1920 + kept + 200 <= _final_keys(text) <= 1920 + acked + 200 + 32  # 32 writes in flight


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
    raw = "".join(lines) + out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]
    # A terminal of 120 columns shows every line whole; sites are named, not listed by endpoint.
    assert max(len(line) for line in raw.splitlines()) <= 119, raw
    assert not re.search(r"https://\S+,https://", raw), raw
    assert " --cacert " not in raw and " --dest-key " not in raw, raw
    text = _unwrap(raw)
    steps = [
        "1. Topology: sites A (primary) and B (standby), 3 members each on 127.0.0.1",
        f"-> {dirs.workdir}/topology.yaml",
        f"-> 16 certificates in {dirs.workdir}/sites/pki/{{site-a,site-b}}",
        "3. render: 6 etcd.conf.yml, 6 etcd.service, 2 pki.sh, etcd-dr-mirror.service, etcd-dr-mirror.env, "
        "clients-pki.sh, README.txt in "
        f"{dirs.workdir}/sites\n",
        f"4. Start the 6 members as their rendered units do: etcd --config-file {dirs.workdir}/sites/",
        "pki/site-a/mirror.pem and pki/site-b/mirror.pem",
        "site B holds the same 2,000 keys",
        "equal again after",
        "with etcd-a1 down",
        "etcd-a1 restarted from its etcd.conf.yml",
        "10. A planned switchover to site B (site A's maintenance, a drill) and back. --no-fence",
        f"   The application finds the primary in {dirs.workdir}/clients.endpoints",
        "   Would a failover to site B work now? etcd-dr check takes the failover's flags",
        "   $ etcd-dr check B --endpoints A --prefix /registry/ --no-fence ",
        "   | ok    lag ",
        "   | READY",
        "11. The application writes to the site named in clients.endpoints (site A)",
        "   (commands name the sites A and B and leave out their TLS flags; `etcd-dr demo --verbose` prints",
        "   $ etcd-dr drill B --endpoints A --prefix /registry/ --revision-margin 1000 --reason",
        "   | drill PASSED: a failover to ",
        "   | both sites untouched; the drill's record written on ",
        "   $ etcd-dr failover B --endpoints A --prefix /registry/ --no-fence ",
        "   | failover done: ",
        "14. The application follows clients.endpoints to site B: 100 writes there",
        "15. Site A is back, its 3 members started again",
        "   $ etcd-dr failback A --endpoints B --prefix /registry/ --no-fence ",
        "   | keep the old primary current with: etcd-dr mirror B --endpoints A --prefix /registry/\n",
        f"--report {dirs.workdir}/failback-report.json",
        "17. The mirror A -> B again",
        "the application's 100 new writes on site A are on site B",
    ]
    for step in steps:
        assert step in text, f"{step!r} not in:\n{text}"
    # 2,000 keys, 20 services, 100 pods deleted by prefix.
    assert re.search(r"^9\. etcd-dr verify \(the mirror's flags\): equal: 1920 keys \(", text, re.M), text
    _check_switchover_and_back(text)
    _check_failover_and_failback(text, dirs)
    assert text.rstrip().endswith("Stopped every process the demo started and removed its files.")
    assert "Traceback" not in err.decode()
    await _check_nothing_left(dirs)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("signum", "after", "code", "message"),
    [
        # Sites up, no mirror yet; then with the mirror running.
        (signal.SIGINT, "site B:", 130, "stopped (SIGINT)"),
        (signal.SIGTERM, "site B holds the same", 143, "stopped (SIGTERM)"),
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
    assert err.decode().strip().splitlines()[-1] == f"etcd-dr: {message}"
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
            # ". ENV_FILE && "$ETCDCTL" get ...": etcdctl's endpoints and TLS files in a file of their own.
            env_file = Path(shlex.split(line)[1])
            env = await asyncio.to_thread(env_file.read_text)
            assert f"ETCDCTL_CACERT={dirs.workdir}/sites/pki/" in env, env
            done = await asyncio.to_thread(
                subprocess.run, ["sh", "-c", line], capture_output=True, text=True, timeout=30, check=False
            )
            assert done.returncode == 0, f"{site}: {done.stderr}"
            keys = done.stdout.split()
            count = _final_keys(_unwrap("".join(lines)))
            assert len(keys) == count and keys[0] == "/registry/pods/pod-0000", (site, len(keys), keys[:3])
        await asyncio.sleep(0.5)
        assert proc.returncode is None, "--keep: the demo ended by itself"
        _check_members_run_from_rendered_files(dirs)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await _end(proc)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode().strip().splitlines()[-1] == "etcd-dr: stopped (SIGINT)"
    await _check_nothing_left(dirs)


def test_narration_names_sites_and_verbose_keeps_commands_whole() -> None:
    """The demo's narrator without running the demo: endpoint lists become site names, commands lose
    their TLS flags and long lines wrap (continuations 5 columns in); --verbose prints commands whole."""
    from etcd_dr.demo import WIDTH, _Narrator

    a = ["https://127.0.0.1:1001", "https://127.0.0.1:1002"]
    b = ["https://127.0.0.1:2001", "https://127.0.0.1:2002"]
    tls = " --cacert /tmp/d/pki/site-b/ca.pem --cert /tmp/d/pki/site-b/m.pem --key /tmp/d/pki/site-b/k.pem"
    command = f"   $ etcd-dr failover {','.join(b)} --endpoints {','.join(a)}{tls} --prefix /registry/"
    prose = f"   | failover done: {','.join(b)} is the primary (epoch 2); " + "and more words " * 8
    for verbose in (False, True):
        out: list[str] = []
        say = _Narrator(out.append, verbose)
        say.name_sites({"A": a, "B": b})
        say(command)
        say(prose)
        if verbose:
            assert out[0] == command
        else:
            assert out[0].startswith("   (commands name the sites A and B")
            assert out[1] == "   $ etcd-dr failover B --endpoints A --prefix /registry/"
        assert out[-2].startswith("   | failover done: site B is the primary (epoch 2); and more")
        assert (
            out[-1].startswith("        ")
            and out[-1][8] != " "
            and all(len(line) <= WIDTH for line in out[-2:])
        )


def test_every_function_of_the_demo_is_one_step_of_at_most_60_lines() -> None:
    """The demo is read as its story: one step per function or method, none longer than a screen."""
    import ast

    import etcd_dr.demo

    source = Path(etcd_dr.demo.__file__).read_text(encoding="utf-8")
    functions = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    assert len(functions) > 30  # the walk found the demo's functions
    long = {f"{f.name} (line {f.lineno})": f.end_lineno - f.lineno + 1 for f in functions if f.end_lineno}
    assert {name: n for name, n in long.items() if n > 60} == {}
