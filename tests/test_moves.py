"""Moves an operator can trust (issue 17): the primary is known from the standby's records, not from a
typed address; a failback with no failover behind it and a one-shot mirror beside a running one end at
once with one line; a failover raises past what the old primary may have written while unseen;
--dry-run changes nothing; a terminal is asked before a move."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.clirun import ERROR_PREFIX, Run, assert_refused, etcd_dr
from harness.mirroring import until
from harness.mirrorproc import MirrorProcess

from etcd_dr import MirrorConfig
from etcd_dr.etcd import ClientConfig, EtcdClient, Status, prefix_range_end
from etcd_dr.failover.revision import raise_revision
from etcd_dr.failover.sites import checkpoints_from
from etcd_dr.local.cluster import EtcdCluster, free_ports
from etcd_dr.mirror import Mirror
from etcd_dr.state import StateLayout
from etcd_dr.state.roles import read_role

STATE = b"/etcd-dr/"
LAYOUT = StateLayout(STATE)
APP = b"/app/"


def pair(src: EtcdCluster, dst: EtcdCluster, *, once: bool = False) -> MirrorConfig:
    return MirrorConfig(
        source=ClientConfig.create(src.endpoints),
        dest=ClientConfig.create(dst.endpoints),
        prefix=APP,
        heartbeat_interval=0.2,
        lock_ttl=2,
        once=once,
    )


async def snapshot(cluster: EtcdCluster) -> tuple[int, dict[bytes, bytes]]:
    """The cluster's revision and every key with its value and mod revision."""
    async with EtcdClient(ClientConfig.create(cluster.endpoints)) as c:
        result = await c.range(b"\0", b"\0")
        return result.header.revision, {kv.key: kv.value + b"@%d" % kv.mod_revision for kv in result.kvs}


async def has_health_record(cluster: EtcdCluster) -> bool:
    layout = LAYOUT
    async with EtcdClient(ClientConfig.create(cluster.endpoints)) as c:
        return bool((await c.range(layout.health_records, prefix_range_end(layout.health_records))).kvs)


async def role_of(cluster: EtcdCluster) -> str:
    async with EtcdClient(ClientConfig.create(cluster.endpoints)) as c:
        role = (await read_role(c, LAYOUT)).role
        return role.describe() if role else "none"


def refused_once(run: Run, code: int, *needles: str) -> None:
    """Exit `code`, one `etcd-dr: error:` line last on stderr naming every needle, no traceback."""
    assert run.code == code, f"exit {run.code}, expected {code}:\n{run.stderr}\n{run.stdout}"
    assert run.last_line.startswith(ERROR_PREFIX) and run.stderr.count(ERROR_PREFIX) == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    for needle in needles:
        assert needle in run.last_line, (needle, run.last_line)


def closed_port() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


async def test_failover_refused_while_the_recorded_primary_answers(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    """A healthy A that its mirror recorded: failover B without --endpoints, with a dead port, and with
    another cluster's endpoints is refused each time, and B stays A's standby."""
    a, b, c = (etcd_cluster_factory(name=n) for n in ("site-a", "site-b", "other"))
    async with EtcdClient(ClientConfig.create(a.endpoints)) as ca:
        await ca.put(APP + b"k", b"v")
    await Mirror(pair(a, b, once=True)).run()
    # No --yes: without a terminal there is no prompt (and the same command runs on today's code).
    dest, common = b.endpoints[0], ["--no-fence", "--probe-timeout", "1"]
    before = await role_of(b)

    missing = await etcd_dr("failover", dest, *common, timeout=30)
    assert_refused(missing, "--endpoints", "required")

    dead = closed_port()
    run = await etcd_dr("failover", dest, "--endpoints", dead, *common, timeout=30)
    refused_once(run, 1, "answers and is healthy", a.endpoints[0], "where its mirror read it")

    a_id, c_id = (await ca_status(a)).cluster_id, (await ca_status(c)).cluster_id
    run = await etcd_dr("failover", dest, "--endpoints", c.endpoints[0], *common, timeout=30)
    refused_once(run, 2, f"{c_id:x}", f"{a_id:x}", c.endpoints[0])

    # The dry run of the same move is refused the same way (the checks run, nothing changes).
    run = await etcd_dr("failover", dest, "--endpoints", dead, *common, "--dry-run", timeout=30)
    refused_once(run, 1, "answers and is healthy")
    assert await role_of(b) == before and before.startswith("standby")
    async with EtcdClient(ClientConfig.create(b.endpoints)) as cb:
        (stored,) = await checkpoints_from(cb, LAYOUT, a_id)
    assert stored.record.source_endpoints == a.endpoints[0]


async def ca_status(cluster: EtcdCluster) -> Status:
    async with EtcdClient(ClientConfig.create(cluster.endpoints)) as c:
        return await c.status()


async def test_failback_without_a_failover_and_once_beside_a_running_mirror_end_at_once(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    cfg = pair(a, b)
    mirror = Mirror(cfg)
    daemon = asyncio.create_task(mirror.run())
    try:
        await until(lambda: mirror.stats.phase == "replay", 30, "the mirror's first copy")
        # The running mirror writes its health record on its own schedule: once it exists, a later
        # write changes its value only, and the keys below are the failback's doing alone.
        for _ in range(600):
            if await has_health_record(b):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the mirror wrote no health record in 30 s")
        before = await snapshot(b)
        # The role records say A has been the primary since the first mirror: nothing to fail back.
        t0 = time.monotonic()
        run = await etcd_dr(
            "failback", b.endpoints[0], "--endpoints", a.endpoints[0], "--report", str(tmp_path / "r.json"),
            "--prefix", APP.decode(), "--no-fence", timeout=30,
        )  # fmt: skip
        assert_refused(run, "failback refused", "no failover or switchover", b.endpoints[0])
        assert time.monotonic() - t0 < 25
        assert not (tmp_path / "r.json").exists()
        # The running mirror rewrites its health record meanwhile; nothing else may appear.
        assert {k for k in (await snapshot(b))[1] if b"/health/" not in k} == {
            k for k in before[1] if b"/health/" not in k
        }
        assert (await role_of(b)).startswith("standby")

        # A one-shot mirror beside the running one: one line naming the holder (this process), exit 1.
        run = await etcd_dr(
            "mirror", b.endpoints[0], "--endpoints", a.endpoints[0], "--prefix", APP.decode(),
            "--once", "--timeout", "2", timeout=30,
        )  # fmt: skip
        refused_once(run, 1, "held by", f"{socket.gethostname()}:{os.getpid()}:", "--timeout", "kill")
        assert not daemon.done()
    finally:
        daemon.cancel()
        await asyncio.gather(daemon, return_exceptions=True)


async def test_dry_run_changes_nothing_and_json_still_works(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    async with EtcdClient(ClientConfig.create(a.endpoints)) as ca:
        for i in range(20):
            await ca.put(APP + b"k%02d" % i, b"v")
    await Mirror(pair(a, b, once=True)).run()
    src, dst = ["--endpoints", a.endpoints[0]], b.endpoints[0]
    flags = ["--prefix", APP.decode(), "--no-fence", "--probe-timeout", "1"]

    async def unchanged(args: list[str], *sites: EtcdCluster) -> Run:
        before = [await snapshot(s) for s in sites]
        run = await etcd_dr(*args, "--dry-run", timeout=60)
        assert run.code == 0, run.stderr
        assert [await snapshot(s) for s in sites] == before, f"{args[0]} --dry-run changed something"
        assert "nothing was changed" in run.stdout or '"dry_run": true' in run.stdout, run.stdout
        return run

    run = await unchanged(["switchover", dst, *src, "--prefix", APP.decode(), "--no-fence"], a, b)
    assert "promote" in run.stdout and "one-shot mirror" in run.stdout, run.stdout

    a.kill(0)
    run = await unchanged(["failover", dst, *src, *flags, "--json"], b)
    plan = json.loads(run.stdout)
    assert plan["dry_run"] and any("revision raise to" in s for s in plan["steps"]), plan

    # The real failover, with --json: the raise's terms are in it.
    run = await etcd_dr("failover", dst, *src, *flags, "--json", "--yes", timeout=60)
    assert run.code == 0, run.stderr
    done = json.loads(run.stdout)
    assert done["epoch"] == 2 and done["revision_raise"]["margin"] == 10_000, done
    assert done["new_revision"] >= done["revision_raise"]["target"], done

    a.restart(0)
    back = ["failback", a.endpoints[0], "--endpoints", b.endpoints[0], "--prefix", APP.decode(), "--no-fence"]
    report = tmp_path / "report.json"
    run = await unchanged([*back, "--report", str(report)], a, b)
    assert "re-sync" in run.stdout and "switch over back" in run.stdout, run.stdout
    assert not report.exists()


def test_a_terminal_is_asked_before_a_move(etcd_cluster_factory: Callable[..., EtcdCluster]) -> None:
    """stdin and stdout a terminal: the plan, then a question; "n" changes nothing (exit 1)."""
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    asyncio.run(Mirror(pair(a, b, once=True)).run())
    before = asyncio.run(snapshot(b))
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "etcd_dr", "switchover", b.endpoints[0], "--endpoints", a.endpoints[0],
         "--prefix", APP.decode(), "--no-fence"],
        stdin=slave, stdout=slave, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    out = b""

    def read(until: bytes | None) -> None:
        nonlocal out
        deadline = time.monotonic() + 60
        while until is None or until not in out:
            assert time.monotonic() < deadline, out.decode(errors="replace")
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    assert until is None, out.decode(errors="replace")
                    return
                out += chunk

    try:
        read(b"now?")
        os.write(master, b"n\n")
        read(None)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert "switchover plan:" in text and "promote" in text, text
    assert proc.returncode == 1, text
    assert text.strip().splitlines()[-1].startswith(ERROR_PREFIX + "switchover not confirmed"), text
    assert asyncio.run(snapshot(b)) == before


@pytest.mark.newest_etcd_only
async def test_failover_raises_past_what_the_old_primary_wrote_unseen(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    """The mirror saw A's head after 10,000 writes (its rate measured) and was stopped; A took 30,000
    more and died. The failover raises B past A's last revision from the recorded rate and time (today's
    code: the last applied + the margin, 20,000 short)."""
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    proc = MirrorProcess(
        b.endpoints[0], a.endpoints[0], "--prefix", APP.decode(), "--heartbeat-interval", "0.5s",
        log_path=tmp_path / "mirror.log",
    ).start()  # fmt: skip
    try:
        async with (
            EtcdClient(ClientConfig.create(a.endpoints)) as ca,
            EtcdClient(ClientConfig.create(b.endpoints)) as cb,
        ):
            a_id = (await ca.status()).cluster_id

            async def seen() -> int:
                """What the mirror has applied (once caught up, it has seen the head too)."""
                stored = await checkpoints_from(cb, LAYOUT, a_id)
                return max((s.record.revision for s in stored), default=0)

            async def rate() -> float:
                """The source's write rate the checkpoint records (0 until a window of 2 s is measured)."""
                stored = await checkpoints_from(cb, LAYOUT, a_id)
                return max((s.record.source_rate for s in stored), default=0.0)

            deadline = time.monotonic() + 60
            while await seen() == 0:
                assert time.monotonic() < deadline and proc.running(), proc.log_text()[-3000:]
                await asyncio.sleep(0.2)
            start = (await ca.status()).revision
            await raise_revision(ca, StateLayout(APP), start + 10_000)  # one key, 10,000 revisions
            head = (await ca.status()).revision
            # Caught up, and the burst's rate recorded: a mirror that reads it fast can catch up before
            # its rate window has run the 2 s it needs, and the checkpoint says 0 until then.
            while await seen() < head or await rate() == 0:
                assert time.monotonic() < deadline + 60 and proc.running(), proc.log_text()[-3000:]
                await asyncio.sleep(0.2)
            assert await proc.stop() == 0
            await raise_revision(ca, StateLayout(APP), head + 30_000)
            last = (await ca.status()).revision
        a.kill(0)
        run = await etcd_dr(
            "failover", b.endpoints[0], "--endpoints", a.endpoints[0], "--prefix", APP.decode(),
            "--no-fence", "--probe-timeout", "1", timeout=180,
        )  # fmt: skip
        assert run.code == 0, run.stderr
        b_revision = (await snapshot(b))[0]
        assert b_revision > last, (
            f"B raised to {b_revision}, not past A's last revision {last}:\n{run.stdout}"
        )
        assert "revision raise to" in run.stdout and "rev/s" in run.stdout, run.stdout
    finally:
        proc.kill()


async def test_a_checkpoint_of_the_previous_version_still_resumes(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    """A checkpoint written before the new fields (endpoints, seen revision, rate) is resumed from, not
    taken for another writer's (its txns compare the stored bytes, not a re-encoding)."""
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    cfg = pair(a, b, once=True)
    await Mirror(cfg).run()
    async with EtcdClient(cfg.source) as ca, EtcdClient(cfg.dest) as cb:
        a_id = (await ca.status()).cluster_id
        (stored,) = await checkpoints_from(cb, LAYOUT, a_id)
        old = json.loads(stored.raw)
        for name in ("source_endpoints", "seen_revision", "seen_time", "source_rate"):
            del old[name]
        await cb.put(stored.key, json.dumps(old, sort_keys=True, separators=(",", ":")).encode())
        await ca.put(APP + b"after-upgrade", b"1")
        result = await asyncio.wait_for(Mirror(cfg).run(), 60)
        assert result.copied is None, "the upgraded mirror copied again instead of resuming"
        assert await cb.get(APP + b"after-upgrade") is not None
        (stored,) = await checkpoints_from(cb, LAYOUT, a_id)
        assert stored.record.source_endpoints == cfg.source.endpoints_text
        assert stored.record.seen_revision >= stored.record.revision > 0
