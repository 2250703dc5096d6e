"""The failover drill on real clusters: a primary taking acknowledged writes under a running mirror is
killed; failover promotes the standby and reports the RPO; the mirror started before cannot write
after it; the old primary comes back and failback lists its unreplicated writes, re-syncs it and
switches back. Plus the role checks that make every move refuse the wrong direction."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from harness.mirroring import until

from etcd_dr import MirrorConfig
from etcd_dr.errors import CheckFailed, Refused
from etcd_dr.etcd import ClientConfig, CompactedError, EtcdClient, prefix_range_end
from etcd_dr.failover.config import MoveConfig
from etcd_dr.failover.failback import failback
from etcd_dr.failover.failover import failover
from etcd_dr.failover.sites import reversed_pair
from etcd_dr.failover.switchover import switchover
from etcd_dr.local.acked import AckedWriter
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.state import StateLayout
from etcd_dr.state.roles import read_role, write_role
from etcd_dr.status import status as mirror_status

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


async def dump(c: EtcdClient, prefix: bytes = APP) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await c.range(prefix, prefix_range_end(prefix))).kvs}


async def test_failover_drill_rpo_fencing_and_failback_report(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    cfg = pair(a, b)
    async with EtcdClient(cfg.source) as ca, EtcdClient(cfg.dest) as cb:
        for i in range(200):
            await ca.put(APP + b"base/%04d" % i, b"x" * 100)
        mirror = Mirror(cfg)
        daemon = asyncio.create_task(mirror.run())
        await until(lambda: mirror.stats.phase == "replay", 30, "the mirror's first copy")

        writer = AckedWriter(ca)
        stop = asyncio.Event()
        writing = asyncio.create_task(writer.run(stop, rate=400))
        await until(lambda: len(writer.acked) > 300, 30, "acknowledged writes")
        a.kill(0)  # the primary site dies under load
        await asyncio.sleep(0.3)
        stop.set()
        await writing
        assert writer.acked

        move = MoveConfig(pair=cfg, fence="none", revision_margin=1000, probe_timeout=1.0)
        result = await failover(move)
        rpo = result.rpo_revision
        assert result.epoch == 2 and rpo > 0 and not result.finished_earlier_run
        # The mirror still running into B (this process) is named, with how to stop it.
        assert [line for line in result.old_mirror if f":{os.getpid()}:" in line and "kill" in line], (
            result.lines()
        )
        again = await failover(move)  # a rerun (say after a crash) finishes, changes nothing
        assert again.finished_earlier_run and again.rpo_revision == rpo and again.epoch == 2
        on_b = await dump(cb)
        kept, lost = writer.up_to(rpo), writer.after(rpo)
        missing = [ack.key for ack in kept if on_b.get(ack.key) != ack.value]
        assert not missing, f"{len(missing)} acknowledged writes at or below the RPO revision are not on B"
        assert not [ack.key for ack in lost if ack.key in on_b], "B holds writes after the reported RPO"
        role = (await read_role(cb, LAYOUT)).role
        assert role is not None and role.is_primary and role.applied_revision == rpo

        # Watchers holding the old primary's revisions are told to re-list, not left waiting.
        status_b = await cb.status()
        assert status_b.revision > max(ack.revision for ack in writer.acked)
        with pytest.raises(CompactedError):
            async with cb.watch(APP, prefix_range_end(APP), start_revision=rpo) as w:
                async for _ in w:
                    break

        # The old primary comes back: the mirror started before the failover must not write into B.
        a.restart(0)
        with pytest.raises(Refused, match="marked primary"):
            await asyncio.wait_for(daemon, 60)
        assert await dump(cb) == on_b, "the old mirror wrote into the new primary"

        # A write on the new primary while the old one was away, then failback.
        await cb.put(APP + b"written-on-b", b"1")
        # First keep B as the primary (--stay): A becomes its standby, re-synced.
        stay_report = tmp_path / "errant-stay.json"
        back = MoveConfig(pair=reversed_pair(cfg), fence="none", revision_margin=1000, report=stay_report)
        stayed = await failback(replace(back, stay=True))
        assert stayed.switched_back is None and stayed.errant_writes >= len(lost)
        assert await dump(ca) == await dump(cb)
        # Then the same command without --stay (as a rerun after a crash would) finishes the move back;
        # the same --report is this failback's: kept as it is.
        # Another failback's report in the way is refused, never overwritten.
        (tmp_path / "other.json").write_text('{"old_primary": {}}')
        with pytest.raises(Refused, match="not this failback's"):
            await failback(replace(back, report=tmp_path / "other.json"))
        report = stay_report
        written = report.read_text()
        fb = await failback(back)
        assert report.read_text() == written
        doc = json.loads(report.read_text())
        reported = {(w["key"], w["mod_revision"]) for w in doc["writes"]}
        assert doc["complete"] and doc["applied_up_to_revision"] == rpo
        for ack in lost:
            assert (ack.key.decode(), ack.revision) in reported, f"{ack.key!r} not in the failback report"
        assert all(w["mod_revision"] > rpo for w in doc["writes"])
        assert fb.errant_writes == len(doc["writes"]) >= len(lost)
        assert fb.switched_back is not None and fb.switched_back.epoch == 3

    async with EtcdClient(cfg.source) as ca, EtcdClient(cfg.dest) as cb:
        assert await dump(ca) == await dump(cb)
        assert (await ca.get(APP + b"written-on-b")) is not None
        for ack in lost:
            assert await ca.get(ack.key) is None, "an errant write survived the re-sync"
        role_a, role_b = (await read_role(ca, LAYOUT)).role, (await read_role(cb, LAYOUT)).role
        assert role_a is not None and role_a.is_primary and role_a.epoch == 3
        assert role_b is not None and not role_b.is_primary and role_b.epoch == 3
    # `etcd-dr status` shows each site's role and the last moves recorded in both.
    lines = (await mirror_status(cfg)).lines()
    assert any(line.strip().startswith("role: primary (epoch 3") for line in lines), lines
    moves = "\n".join(lines[lines.index("last moves:") :])
    assert "promoted: switchover from" in moves and "demoted:" in moves, moves

    # A failback that stopped after promoting A again but before B was made a standby: rerun it.
    async with EtcdClient(cfg.dest) as cb:
        state_b = await read_role(cb, LAYOUT)
        assert state_b.role is not None
        stale = replace(state_b.role, role="primary", epoch=2)
        assert (await write_role(cb, LAYOUT, stale, state_b)).succeeded
        finished = await failback(back)
        assert finished.switched_back is not None and finished.switched_back.finished_earlier_run
        role_b = (await read_role(cb, LAYOUT)).role
        assert role_b is not None and not role_b.is_primary and role_b.epoch == 3


async def test_failover_refuses_while_the_primary_is_healthy(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    cfg = pair(a, b, once=True)
    async with EtcdClient(cfg.source) as ca:
        await ca.put(APP + b"k", b"v")
    await Mirror(cfg).run()
    with pytest.raises(CheckFailed, match="answers and is healthy"):
        await failover(MoveConfig(pair=cfg, fence="none"))
    async with EtcdClient(cfg.dest) as cb:
        role = (await read_role(cb, LAYOUT)).role
        assert role is not None and not role.is_primary  # nothing changed


async def test_mirror_refuses_the_wrong_direction(etcd_cluster_factory: Callable[..., EtcdCluster]) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    cfg = pair(a, b, once=True)
    await Mirror(cfg).run()
    async with EtcdClient(cfg.source) as ca, EtcdClient(cfg.dest) as cb:
        ra, rb = (await read_role(ca, LAYOUT)).role, (await read_role(cb, LAYOUT)).role
        assert ra is not None and ra.is_primary and ra.peer_cluster_id == (await cb.status()).cluster_id
        assert rb is not None and not rb.is_primary and rb.epoch == ra.epoch == 1
        await ca.put(APP + b"after", b"1")
        with pytest.raises(Refused, match="marked primary"):
            await Mirror(reversed_pair(cfg)).run()
        assert await ca.get(APP + b"after") is not None


async def test_switchover_no_fence_loses_nothing_and_reruns_cleanly(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    cfg = pair(a, b)
    async with EtcdClient(cfg.source) as ca, EtcdClient(cfg.dest) as cb:
        for i in range(100):
            await ca.put(APP + b"k%03d" % i, b"v%d" % i)
        mirror = Mirror(cfg)
        daemon = asyncio.create_task(mirror.run())
        await until(lambda: mirror.stats.phase == "replay", 30, "the mirror's first copy")
        for i in range(50):
            await ca.put(APP + b"late%03d" % i, b"1")
        move = MoveConfig(pair=cfg, fence="none", revision_margin=500)
        result = await switchover(move)
        assert result.epoch == 2 and not result.finished_earlier_run
        assert [line for line in result.old_mirror if f":{os.getpid()}:" in line], result.lines()
        assert await dump(ca) == await dump(cb)
        with pytest.raises(Refused, match="marked primary"):
            await asyncio.wait_for(daemon, 30)
        assert (await cb.status()).revision > (await ca.status()).revision
        again = await switchover(move)
        assert again.finished_earlier_run and again.epoch == 2
        # The reverse mirror is the one that now runs.
        await cb.put(APP + b"on-b", b"2")
        await Mirror(replace(reversed_pair(cfg), once=True)).run()
        assert (await ca.get(APP + b"on-b")) is not None
