"""The mirror engine against real etcd: copy, replay, prefixes, faults, kill -9, compaction, splits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness.history import check_exactly_once
from harness.mirroring import connect, dump, mapped, pair_config, running, wait_equal
from harness.workload import Workload

from etcd_dr import ClientConfig, Mirror, MirrorConfig
from etcd_dr.errors import Refused
from etcd_dr.etcd import Delete, EtcdClient, Put, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.state import StateLayout
from etcd_dr.state.records import Checkpoint

STATE = b"/etcd-dr/"
cfg = pair_config
client = connect
Factory = Callable[..., EtcdCluster]


async def the_checkpoint(d: EtcdClient, config: MirrorConfig, source_id: int) -> Checkpoint:
    key = config.layout.checkpoint(source_id, config.prefix, config.effective_dest_prefix)
    kv = await d.get(key)
    assert kv is not None, "no checkpoint on the destination"
    return Checkpoint.decode(kv.value)


async def test_copy_then_replay_removes_stale_keys(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        for i in range(500):
            await s.put(b"/a/%04d" % i, b"v%d" % i)
        await d.put(b"/a/stale", b"only on the destination")
        await d.put(b"/a/0001", b"different on the destination")
        config = cfg(src, dst, once=True)
        result = await Mirror(config).run()
        assert result.copied is not None
        assert (result.copied.puts, result.copied.deletes, result.copied.overwritten) == (500, 1, 1)
        assert await dump(d) == await dump(s)
        status = await s.status()
        ckpt = await the_checkpoint(d, config, status.cluster_id)
        assert ckpt.revision == status.revision and ckpt.phase == "replay"
        # Second run: nothing to copy again, only the new events are replayed.
        await s.put(b"/a/new", b"1")
        await s.delete_range(b"/a/0002")
        again = await Mirror(config).run()
        assert again.copied is None
        assert await dump(d) == await dump(s)
        assert again.checkpoint.revision == (await s.status()).revision


@pytest.mark.parametrize(
    ("dest_prefix", "landing"),
    [(None, b"/app/"), (b"/copy/", b"/copy/"), (b"", b"")],
    ids=["same-prefix", "dest-prefix", "no-dest-prefix"],
)
async def test_prefix_mapping(
    etcd_cluster_factory: Factory, dest_prefix: bytes | None, landing: bytes
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        for i in range(20):
            await s.put(b"/app/k%02d" % i, b"v")
            await s.put(b"/other/k%02d" % i, b"not mirrored")
        config = cfg(src, dst, prefix=b"/app/", dest_prefix=dest_prefix)
        async with running(config):
            await s.put(b"/app/late", b"x")
            await s.delete_range(b"/app/k00")
            await s.put(b"/other/late", b"x")
            await wait_equal(s, d, b"/app/", landing)
        got = await dump(d)
        assert got == mapped(await dump(s, b"/app/"), b"/app/", landing)
        assert not any(k.startswith(b"/other/") for k in got) or landing == b""
        assert landing + b"late" in got and landing + b"k00" not in got


async def test_excludes_and_state_prefix_not_mirrored(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        await s.put(b"/keep/a", b"1")
        await s.put(b"/secret/a", b"1")
        await s.put(STATE + b"something", b"source state")
        await d.put(b"/secret/dest-own", b"left alone")
        config = cfg(src, dst, excludes=(b"/secret/",))
        async with running(config):
            await s.put(b"/keep/b", b"2")
            await s.put(b"/secret/b", b"2")
            await wait_equal(s, d, b"/keep/")
        got = await dump(d)
        assert got == {b"/keep/a": b"1", b"/keep/b": b"2", b"/secret/dest-own": b"left alone"}
        assert (await d.get(STATE + b"something")) is None


async def test_random_workload_exactly_once(etcd_cluster_factory: Factory) -> None:
    src = etcd_cluster_factory(name="src", extra_args=["--max-txn-ops=256"])
    dst = etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        await Workload(s, seed=7).run(300)
        config = cfg(src, dst, prefix=b"/app/", max_txn_ops=16)
        async with running(config) as mirror:
            await Workload(s, seed=8, max_txn=40).run(1500)
            await wait_equal(s, d, b"/app/")
            assert mirror.stats.applied_txns > 0
        report = await check_exactly_once(
            s, d, KeyMapper.create(b"/app/", None, (), STATE), _key(config, await s.status())
        )
        assert report.copies == 1 and report.replay_txns > 10 and report.source_ops_checked > 1000


def _key(config: MirrorConfig, status: Any) -> bytes:
    return config.layout.checkpoint(status.cluster_id, config.prefix, config.effective_dest_prefix)


async def test_source_txn_larger_than_max_txn_ops_is_split(
    etcd_cluster_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    src = etcd_cluster_factory(name="src", extra_args=["--max-txn-ops=1000"])
    dst = etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        await s.put(b"/x/seed", b"1")
        config = cfg(src, dst, max_txn_ops=128)
        async with running(config):
            await wait_equal(s, d)
            with caplog.at_level(logging.WARNING, logger="etcd_dr.mirror"):
                await s.txn([], [Put(b"/x/big%04d" % i, b"v") for i in range(300)])
                await wait_equal(s, d)
        assert any("applying it in 3 txns" in r.getMessage() for r in caplog.records)
        report = await check_exactly_once(
            s, d, KeyMapper.create(b"", None, (), STATE), _key(config, await s.status())
        )
        assert report.source_ops_checked >= 300


async def test_compaction_past_checkpoint_resyncs(
    etcd_cluster_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        for i in range(100):
            await s.put(b"/c/%03d" % i, b"v1")
        config = cfg(src, dst, once=True)
        await Mirror(config).run()
        # While no mirror runs: changes and deletes, then the source compacts past the checkpoint.
        for i in range(0, 100, 2):
            await s.put(b"/c/%03d" % i, b"v2")
        await s.delete_range(b"/c/05", prefix_range_end(b"/c/05"))
        rev = (await s.put(b"/c/last", b"x")).header.revision
        await s.compact(rev)
        with caplog.at_level(logging.INFO, logger="etcd_dr.mirror"):
            result = await Mirror(config).run()
        assert result.copied is not None and result.copied.deletes == 10
        # Only what differs is written again: 45 evens changed or new, 45 odd keys untouched.
        assert (result.copied.puts, result.copied.unchanged) == (46, 45)
        assert any("compacted past the checkpoint" in r.getMessage() for r in caplog.records)
        assert await dump(d) == await dump(s)


async def test_destination_down_for_a_while(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        config = cfg(src, dst, prefix=b"/app/")
        async with running(config) as mirror:
            await Workload(s, seed=3).run(100)
            await wait_equal(s, d, b"/app/")
            dst.pause(0)
            await Workload(s, seed=4).run(200)
            await asyncio.sleep(1.0)
            dst.resume(0)
            await wait_equal(s, d, b"/app/")
            dst.kill(0)
            await Workload(s, seed=5).run(200)
            await asyncio.sleep(0.5)
            dst.restart(0)
            await wait_equal(s, d, b"/app/")
            assert mirror.stats.errors["unavailable"] >= 1


async def test_source_member_death_in_three_member_cluster(etcd_cluster_factory: Factory) -> None:
    src = etcd_cluster_factory(3, name="src")
    dst = etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        config = cfg(src, dst, prefix=b"/app/")
        async with running(config):
            await Workload(s, seed=11).run(100)
            await wait_equal(s, d, b"/app/")
            src.kill(0)
            await Workload(s, seed=12).run(200)
            await wait_equal(s, d, b"/app/")
        report = await check_exactly_once(
            s, d, KeyMapper.create(b"/app/", None, (), STATE), _key(config, await s.status())
        )
        assert report.copies == 1


async def test_rev_starts_without_copy(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        await s.put(b"/p/before", b"not copied")
        rev = (await s.put(b"/p/from", b"1")).header.revision
        await s.put(b"/p/after", b"2")
        result = await Mirror(
            cfg(src, dst, prefix=b"/p/", dest_prefix=b"/q/", start_revision=rev, once=True)
        ).run()
        assert result.copied is None
        # The prefix is rewritten for --rev too (etcdctl 3.6 does not: etcd-io/etcd#22421).
        assert await dump(d) == {b"/q/from": b"1", b"/q/after": b"2"}


async def test_same_cluster_overlapping_is_refused(etcd_cluster_factory: Factory) -> None:
    c = etcd_cluster_factory(name="one")
    with pytest.raises(Refused, match="same cluster"):
        await Mirror(cfg(c, c, prefix=b"/a/", dest_prefix=b"/a/b/")).run()
    # Disjoint ranges of one cluster are fine.
    async with client(c) as x:
        await x.put(b"/a/k", b"v")
        await Mirror(cfg(c, c, prefix=b"/a/", dest_prefix=b"/b/", once=True)).run()
        assert (await x.get(b"/b/k")) is not None


def _mirror_cmd(src: EtcdCluster, dst: EtcdCluster, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "etcd_dr", "mirror", ",".join(dst.endpoints),
        "--endpoints", ",".join(src.endpoints), "--prefix", "/app/", *extra,
    ]  # fmt: skip


async def test_kill_9_at_random_points_then_exactly_once(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    src = etcd_cluster_factory(name="src", extra_args=["--max-txn-ops=256"])
    dst = etcd_cluster_factory(name="dst")
    rng = random.Random(42)
    async with client(src) as s, client(dst) as d:
        # A keyspace large enough that some kills land in the middle of the initial copy.
        for i in range(0, 20000, 100):
            await s.txn([], [Put(b"/app/bulk/%06d" % j, b"x" * 200) for j in range(i, i + 100)])
        stop = asyncio.Event()
        writer = asyncio.create_task(Workload(s, seed=9, max_txn=30).run(stop=stop, rate=400))
        log_path = tmp_path / "mirror.log"
        try:
            with log_path.open("wb") as log:
                status = await s.status()
                key = StateLayout(STATE).checkpoint(status.cluster_id, b"/app/", b"/app/")
                for i in range(6):
                    before = await d.get(key)
                    proc = await asyncio.create_subprocess_exec(
                        *_mirror_cmd(src, dst, "--max-txn-ops", "16", "--lock-ttl", "1"),
                        stdout=log,
                        stderr=log,
                    )
                    if i == 0:
                        # The first kill lands in the middle of the initial copy, for sure.
                        await _wait_for_phase(d, key, "sync")
                        await asyncio.sleep(0.1)
                    else:
                        # Then at random points of the replay, once this process holds the lock and
                        # writes (its predecessor's lock lease first has to expire).
                        await _wait_for_change(d, key, before.value if before else None)
                        await _wait_for_phase(d, key, "replay")
                        await asyncio.sleep(rng.uniform(0.0, 1.5))
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
                stop.set()
                await writer
                done = await asyncio.create_subprocess_exec(
                    *_mirror_cmd(src, dst, "--once"), stdout=log, stderr=log
                )
                assert await asyncio.wait_for(done.wait(), 120) == 0
        finally:
            stop.set()
        await wait_equal(s, d, b"/app/", timeout=5)
        report = await check_exactly_once(s, d, KeyMapper.create(b"/app/", None, (), STATE), key)
        assert report.replay_txns > 0
        text = log_path.read_text()
        assert "Traceback" not in text
        # The copy cut short was done again as a diff: what the first run had written was not rewritten.
        assert "an earlier copy did not finish" in text
        redo = next(line for line in text.splitlines() if "copy: done" in line)
        assert int(redo.split(" removed, ")[1].split(" already equal")[0]) > 0, redo


async def _wait_for_change(d: EtcdClient, key: bytes, old: bytes | None, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        kv = await d.get(key)
        if kv is not None and kv.value != old:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the mirror never wrote its checkpoint")


async def _wait_for_phase(d: EtcdClient, key: bytes, phase: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        kv = await d.get(key)
        if kv is not None and Checkpoint.decode(kv.value).phase == phase:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the mirror never reached phase {phase}")


async def test_delete_workload_with_prefix_deletes_and_txn_deletes(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        config = cfg(src, dst)
        async with running(config):
            for i in range(50):
                await s.put(b"/d/%02d" % i, b"v")
            await s.txn(
                [], [Delete(b"/d/00"), Put(b"/d/new", b"n"), Delete(b"/d/1", prefix_range_end(b"/d/1"))]
            )
            await s.delete_range(b"/d/2", prefix_range_end(b"/d/2"))
            await wait_equal(s, d)
        got = await dump(d)
        assert b"/d/00" not in got and b"/d/15" not in got and b"/d/25" not in got and got[b"/d/new"] == b"n"


async def test_dropped_connections_on_both_sides(etcd_cluster_factory: Factory) -> None:
    from harness.proxy import FaultProxy

    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    with FaultProxy.to(src.endpoints[0]) as sp, FaultProxy.to(dst.endpoints[0]) as dp:
        config = MirrorConfig(
            source=ClientConfig.create(sp.address, role="source"),
            dest=ClientConfig.create(dp.address, role="destination", flag_prefix="dest-"),
            prefix=b"/app/",
            checkpoint_interval=0.2,
        )
        async with client(src) as s, client(dst) as d:
            await Workload(s, seed=21).run(200)
            async with running(config) as mirror:
                stop = asyncio.Event()
                writer = asyncio.create_task(Workload(s, seed=22, max_txn=20).run(stop=stop, rate=300))
                cut = [0, 0]
                for i in range(8):
                    await asyncio.sleep(0.3)
                    cut[i % 2] += (sp if i % 2 else dp).cut()
                stop.set()
                await writer
                await wait_equal(s, d, b"/app/")
                assert cut[0] >= 4 and cut[1] >= 4  # every cut broke live connections on both sides
                assert mirror.stats.applied_txns > 0
            report = await check_exactly_once(
                s, d, KeyMapper.create(b"/app/", None, (), STATE), _key(config, await s.status())
            )
            assert report.copies == 1 and report.source_ops_checked > 100


async def test_destination_leader_killed(etcd_cluster_factory: Factory) -> None:
    src = etcd_cluster_factory(name="src")
    dst = etcd_cluster_factory(3, name="dst")
    async with client(src) as s, client(dst) as d:
        config = cfg(src, dst, prefix=b"/app/")
        async with running(config):
            await Workload(s, seed=31).run(100)
            await wait_equal(s, d, b"/app/")
            stop = asyncio.Event()
            writer = asyncio.create_task(Workload(s, seed=32).run(stop=stop, rate=300))
            await asyncio.sleep(0.3)
            leader = dst.leader()
            assert leader is not None
            dst.kill(leader)
            await asyncio.sleep(1.0)
            stop.set()
            await writer
            await wait_equal(s, d, b"/app/", timeout=60)
            dst.restart(leader)
        report = await check_exactly_once(
            s, d, KeyMapper.create(b"/app/", None, (), STATE), _key(config, await s.status())
        )
        assert report.copies == 1


async def test_replay_behind_groups_up_to_max_txn_ops(etcd_cluster_factory: Factory) -> None:
    """Over a slow link, single-key revisions (one watch response each) pile up while a txn is in
    flight: the next txn takes up to --max-txn-ops of them, not one per queued watch response.

    The link is held while the source is written, so that the pile-up does not depend on how fast
    this machine writes (racing the writers against the mirror made the ratio fail under load)."""
    from harness.proxy import FaultProxy

    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    with FaultProxy.to(dst.endpoints[0]) as dp:
        config = MirrorConfig(
            source=ClientConfig.create(src.endpoints[0], role="source"),
            dest=ClientConfig.create(dp.address, role="destination", flag_prefix="dest-"),
            prefix=b"/app/",
            max_txn_ops=128,
        )
        async with client(src) as s, client(dst) as d, running(config) as mirror:
            await s.put(b"/app/ready", b"1")
            await wait_equal(s, d, b"/app/")
            dp.set_delay(0.02)
            txns0, events0 = mirror.stats.applied_txns, mirror.stats.applied_events
            keys = iter(range(3000))

            async def writer() -> None:
                for i in keys:
                    await s.put(b"/app/k%05d" % i, b"v")

            # The first txn waits on the held link; every later revision piles up behind it.
            dp.set_blackhole(True)
            try:
                await asyncio.gather(*(writer() for _ in range(64)))
            finally:
                dp.set_blackhole(False)
            await wait_equal(s, d, b"/app/", timeout=60)
            # The destination is read directly: the last txns' replies may still be on the slow link.
            async with asyncio.timeout(30):
                while mirror.stats.applied_events - events0 < 3000:  # noqa: ASYNC110 - a counter
                    await asyncio.sleep(0.05)
            txns = mirror.stats.applied_txns - txns0
            events = mirror.stats.applied_events - events0
            assert events == 3000
            # 64 revisions a txn was the old cap (64 watch responses queued); most txns are full now.
            assert events / txns > 90, (events, txns)


_HELPERS = {
    "Mirror._status_lines",
    "Mirror._compaction",
    "Mirror._heartbeats",
    "StandbyDuties._verify_periodically",
    "StandbyDuties._watch_foreign_writes",
    "StandbyDuties._write_health",
}


def _name(task: asyncio.Task[Any]) -> str:
    return str(getattr(task.get_coro(), "__qualname__", ""))


def _mirror_helpers() -> list[asyncio.Task[Any]]:
    """The tasks of Mirror.run's helpers (heartbeats, health record, compaction, ...) still running."""
    return [t for t in asyncio.all_tasks() if not t.done() and _name(t) in _HELPERS]


def _mirror_tasks() -> list[str]:
    """Every task of the mirror's still running."""
    names = [_name(t) for t in asyncio.all_tasks() if not t.done()]
    return [n for n in names if n.startswith(("Mirror", "StandbyDuties", "LeaseMirror", "Replay"))]


async def test_a_second_cancel_while_the_mirror_stops_leaves_no_helper_running(
    etcd_cluster_factory: Factory,
) -> None:
    """The demo cancels its mirror again when it has not ended within seconds: that cancel cut short
    the wait for the helpers, and those not yet cancelled ran on against the closed clients (grpc's
    "Channel is closed" at exit)."""
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        await s.put(b"/app/k", b"v")
        task = asyncio.create_task(Mirror(cfg(src, dst, prefix=b"/app/")).run())
        await wait_equal(s, d, b"/app/")
        assert len(_mirror_helpers()) >= 3
        task.cancel()
        # The second cancel lands while the mirror waits for its first helper to end.
        async with asyncio.timeout(10):
            while not any(t.cancelling() for t in _mirror_helpers()):  # noqa: ASYNC110 - no event
                await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(200):  # cancelled tasks end within a few loop turns; 10 s is generous
            if not (left := _mirror_tasks()):
                break
            await asyncio.sleep(0.05)
        assert not left, f"the mirror ended, these of its tasks run on: {left}"
