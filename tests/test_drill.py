"""`etcd-dr drill` on real clusters: a failover rehearsed on a throwaway copy of the standby leaves both
sites exactly as they were (every key, value, revision, the state prefix included), reports the RPO and
each step's time, and removes the copy and its files after Ctrl-C too; and the policy guard on
promotion: `--max-rpo` refuses a failover or switchover to a standby too far behind, `--force`
overrides it and the move's record says so."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.clirun import assert_refused, etcd_dr

from etcd_dr.config import MirrorConfig
from etcd_dr.etcd import ClientConfig, EtcdClient
from etcd_dr.local.cluster import EtcdCluster, free_ports
from etcd_dr.mirror import Mirror
from etcd_dr.state.events import recent_events
from etcd_dr.state.layout import StateLayout
from etcd_dr.state.roles import read_role

STATE = b"/etcd-dr/"
APP = b"/app/"

Everything = tuple[int, dict[bytes, tuple[bytes, int, int, int]]]


async def everything(cluster: EtcdCluster) -> Everything:
    """The cluster's revision and every key (state prefix included): value, create/mod revision,
    version."""
    async with EtcdClient(ClientConfig.create(cluster.endpoints)) as c:
        r = await c.range(b"\0", b"\0")
        kvs = {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in r.kvs}
        return r.header.revision, kvs


async def standby_of(a: EtcdCluster, b: EtcdCluster, keys: int = 30, later: int = 5) -> int:
    """b made the standby of a by one mirror run over /app/; then `later` writes on a that b has not
    applied. Returns the revision b has applied."""
    cfg = MirrorConfig(
        source=ClientConfig.create(a.endpoints),
        dest=ClientConfig.create(b.endpoints),
        prefix=APP,
        once=True,
        heartbeat_interval=0.0,
    )
    async with EtcdClient(cfg.source) as ca:
        for i in range(keys):
            await ca.put(APP + b"k%03d" % i, b"v%d" % i)
        await Mirror(cfg).run()
        applied = (await ca.status()).revision  # the mirror's run wrote on the source too (its claim)
        for i in range(later):
            await ca.put(APP + b"later%d" % i, b"x")
    return applied


def args(a: EtcdCluster, b: EtcdCluster, *more: str) -> list[str]:
    # A generous dial timeout: the test machine may be busy.
    sites = [",".join(b.endpoints), "--endpoints", ",".join(a.endpoints), "--dial-timeout", "15s"]
    return [*sites, "--prefix", "/app/", *more]


async def test_drill_passes_and_leaves_both_sites_untouched(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    applied = await standby_of(a, b)
    before_a, before_b = await everything(a), await everything(b)
    work = tmp_path / "work"
    work.mkdir()

    run = await etcd_dr(
        "drill", *args(a, b, "--no-record", "--json", "--revision-margin", "100", "--work-dir", str(work))
    )
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["passed"] is True, report
    assert report["rpo_revision"] == applied
    assert report["behind_revisions"] == 5  # the writes after the mirror's run
    assert report["rpo_seconds"] is not None and report["rpo_seconds"] >= 0
    assert report["verify"].startswith("equal: 30 keys")
    assert list(report["steps"]) == [
        "snapshot",
        "restore and start",
        "revision raise and compaction",
        "promotion",
        "client switch",
        "comparison with the source",
    ]
    assert report["rto_seconds"] > 0 and report["total_seconds"] >= report["rto_seconds"]
    assert report["snapshot_bytes"] > 0 and report["recorded"] is False
    assert "database is" in run.stderr  # the size and estimate, said first
    # Not one key, value or revision changed on either site, the state prefix included.
    assert await everything(a) == before_a
    assert await everything(b) == before_b
    assert list(work.iterdir()) == []

    # With its record (the default): on the standby, and nothing else changed anywhere.
    run = await etcd_dr("drill", *args(a, b, "--revision-margin", "100", "--reason", "quarterly test"))
    assert run.code == 0, run.stderr
    assert "drill PASSED" in run.stdout and "RTO on this host" in run.stdout
    assert await everything(a) == before_a
    rev_b, after_b = await everything(b)
    added = {k: v for k, v in after_b.items() if k not in before_b[1]}
    assert {k: v for k, v in after_b.items() if k in before_b[1]} == before_b[1]
    assert len(added) == 1 and next(iter(added)).startswith(STATE + b"events/")
    assert rev_b == before_b[0] + 1
    async with EtcdClient(ClientConfig.create(b.endpoints)) as cb:
        (event,) = await recent_events(cb, StateLayout(STATE), limit=1)
        assert (await read_role(cb, StateLayout(STATE))).role is not None
        assert not (await read_role(cb, StateLayout(STATE))).role.is_primary  # type: ignore[union-attr]
    assert event.kind == "drill" and event.move is not None
    assert event.move.result == "ok" and event.move.reason == "quarterly test"
    assert event.move.rpo_revision == applied and event.move.user and event.move.host


@pytest.mark.newest_etcd_only  # refusals before any etcd-version-specific step
async def test_drill_refuses_bad_input_and_fails_beyond_max_rpo(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    await standby_of(a, b, keys=5, later=0)
    before_b = await everything(b)
    run = await etcd_dr("drill", *args(a, b, "--max-snapshot-size", "1000"))
    assert_refused(run, "--max-snapshot-size 1000", "database is")
    run = await etcd_dr("drill", *args(a, b, "--work-dir", "/nonexistent/dir"))
    assert_refused(run, "--work-dir /nonexistent/dir")
    gone_endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    run = await etcd_dr("drill", gone_endpoint, "--endpoints", ",".join(a.endpoints), "--dial-timeout", "1s")
    assert_refused(run, gone_endpoint.removeprefix("http://"))
    await asyncio.sleep(0.6)
    run = await etcd_dr("drill", *args(a, b, "--max-rpo", "0.5s", "--no-record", "--revision-margin", "100"))
    assert run.code == 1, run.stderr
    assert "drill FAILED" in run.stdout and "beyond --max-rpo 0.5 s" in run.stdout
    assert await everything(b) == before_b


def etcd_processes_under(path: Path) -> list[int]:
    """PIDs of the processes whose command line names `path` (the drill's copy: its --data-dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline:
            found.append(int(entry.name))
    return found


async def test_drill_cleans_up_after_ctrl_c(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    await standby_of(a, b, keys=5, later=0)
    before_a, before_b = await everything(a), await everything(b)
    work = tmp_path / "work"
    work.mkdir()
    # A margin this large keeps the revision raise on the copy busy for minutes: Ctrl-C lands there.
    cmd = args(a, b, "--no-record", "--json", "--work-dir", str(work), "--revision-margin", "50000000")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "etcd_dr",
        "drill",
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))},
    )
    assert proc.stderr is not None
    seen = b""
    try:
        async with asyncio.timeout(60):
            while b"the copy runs at" not in seen:
                line = await proc.stderr.readline()
                assert line, f"the drill ended before its copy ran: {seen.decode()}"
                seen += line
        assert etcd_processes_under(work), "the copy's etcd should run under the work dir"
        await asyncio.sleep(0.5)  # into the revision raise
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 128 + signal.SIGINT, seen.decode()
    assert etcd_processes_under(work) == []  # the copy was stopped (and reaped) before the exit
    assert list(work.iterdir()) == []
    assert await everything(a) == before_a
    assert await everything(b) == before_b


async def test_max_rpo_refuses_a_move_and_force_is_recorded(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    await standby_of(a, b, keys=5, later=0)
    await asyncio.sleep(0.6)
    before_a, before_b = await everything(a), await everything(b)
    # A switchover is refused before anything is fenced.
    run = await etcd_dr("switchover", *args(a, b, "--max-rpo", "0.5s", "--yes"))
    assert_refused(run, "switchover refused", "s old", "--max-rpo 0.5 s", ",".join(b.endpoints))
    assert await everything(a) == before_a and await everything(b) == before_b

    a.kill(0)  # the primary is gone: a failover
    run = await etcd_dr("failover", *args(a, b, "--max-rpo", "0.5s", "--probe-timeout", "0.5", "--yes"))
    assert_refused(run, "failover refused", "s old", "--max-rpo 0.5 s")
    assert await everything(b) == before_b

    run = await etcd_dr(
        "failover",
        *args(
            a,
            b,
            "--max-rpo",
            "0.5s",
            "--force",
            "--reason",
            "site A flooded",
            "--json",
            "--probe-timeout",
            "0.5",
            "--revision-margin",
            "100",
        ),
    )
    assert run.code == 0, run.stderr
    assert "--force overrides --max-rpo" in run.stderr
    result = json.loads(run.stdout)
    assert set(result["steps"]) == {"revision raise and compaction", "promotion", "client switch"}
    async with EtcdClient(ClientConfig.create(b.endpoints)) as cb:
        role = (await read_role(cb, StateLayout(STATE))).role
        moves = [e for e in await recent_events(cb, StateLayout(STATE)) if e.move is not None]
    assert role is not None and role.is_primary
    (move,) = moves
    assert move.kind == "failover" and move.move is not None
    assert move.move.forced is True and move.move.reason == "site A flooded" and move.move.result == "ok"
    assert move.move.rpo_revision == result["rpo_revision"]
    assert move.move.rpo_seconds is not None and move.move.rpo_seconds > 0.5
