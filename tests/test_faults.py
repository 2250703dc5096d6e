"""Faults of issue 8 not covered elsewhere, each ending in a check that fails if anything was lost,
applied twice or half-applied: the source's leader killed under load in a 3-member cluster, and the
source compacted while the initial copy is reading it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from harness.history import check_against_acks, check_exactly_once
from harness.mirroring import connect, dump, pair_config, running, wait_equal
from harness.workload import Acked, Workload

from etcd_dr.etcd import Put
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.state import StateLayout

STATE = b"/etcd-dr/"
LAYOUT = StateLayout(STATE)
APP = b"/app/"
MAPPER = KeyMapper.create(APP, None, (), STATE)


async def test_source_leader_killed_under_load(etcd_cluster_factory: Callable[..., EtcdCluster]) -> None:
    src = etcd_cluster_factory(3, name="src")
    dst = etcd_cluster_factory(name="dst")
    async with connect(src) as s, connect(dst) as d:
        config = pair_config(src, dst, prefix=APP)
        key = LAYOUT.checkpoint((await s.status()).cluster_id, APP, APP)
        initial = await dump(s, APP)
        async with running(config):
            workload = Workload(s, seed=21)
            stop = asyncio.Event()
            writing = asyncio.create_task(workload.run(stop=stop, rate=300))
            await asyncio.sleep(1.0)
            leader = src.leader()
            assert leader is not None
            src.kill(leader)  # the mirror's source endpoint may be this one or not: both must work
            await asyncio.sleep(2.0)
            stop.set()
            await writing
            await wait_equal(s, d, APP, timeout=60)
            sample = await check_against_acks(workload, initial, d, MAPPER, key)
            assert sample is not None and sample.keys > 0
        src.restart(leader)
        report = await check_exactly_once(s, d, MAPPER, key)
        assert report.copies == 1 and report.replay_txns > 0


async def test_source_compacted_while_the_initial_copy_reads_it(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with connect(src) as s, connect(dst) as d:
        for i in range(0, 60_000, 100):
            await s.txn([], [Put(APP + b"bulk/%06d" % j, b"x" * 100) for j in range(i, i + 100)])
        initial = await dump(s, APP)
        key = LAYOUT.checkpoint((await s.status()).cluster_id, APP, APP)
        # Small pages and one txn in flight: the copy takes long enough to be caught in the middle.
        config = pair_config(src, dst, prefix=APP, page_size=500, inflight=1)
        async with running(config) as mirror:
            deadline = asyncio.get_running_loop().time() + 30
            while not (mirror.stats.phase == "copy" and mirror.stats.copy_done > 0):
                assert asyncio.get_running_loop().time() < deadline, "the copy never started"
                await asyncio.sleep(0.005)
            workload = Workload(s, seed=23, keys=60_000)
            await workload.run(50)
            top = (await s.put(APP + b"marker", b"1")).header.revision
            await s.compact(top)  # the copy's revision is gone from under it
            copy_was_running = mirror.stats.phase == "copy"
            await wait_equal(s, d, APP, timeout=60)
            assert mirror.stats.resyncs >= 1 or not copy_was_running
            assert copy_was_running, "the compaction did not land during the copy; make the copy longer"
            assert mirror.stats.errors["compacted"] >= 1
        workload.acked.append(Acked(top, (Put(APP + b"marker", b"1"),)))  # acknowledged too
        sample = await check_against_acks(workload, initial, d, MAPPER, key)
        assert sample is not None and sample.checkpoint_revision >= top
