"""Catch-up beyond one watcher (mirror/catchup.py), on real etcd: a backlog read through several watches
over revision slices is applied exactly once and in order across slice boundaries (the recorded-history
checker), through a kill -9 mid-catch-up and a resume; slices whose revisions touch no mirrored key still
checkpoint exactly; a compaction during the catch-up ends in the re-sync. Small slices and a low
threshold (the hidden --catch-up WATCHERS/SLICE/THRESHOLD) keep the backlogs to a few thousand
revisions."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.history import check_against_acks, check_exactly_once
from harness.workload import Workload

from etcd_dr.etcd import ClientConfig, EtcdClient, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.catchup import CatchUpConfig, slices
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.state.layout import StateLayout
from etcd_dr.state.records import Checkpoint

STATE = b"/etcd-dr/"
APP = b"/app/"
MAPPER = KeyMapper.create(APP, None, (), STATE)


async def content(c: EtcdClient) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await c.range(APP, prefix_range_end(APP))).kvs}


def mirror_cmd(src: EtcdCluster, dst: EtcdCluster, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "etcd_dr", "mirror", dst.endpoints[0], "--endpoints", src.endpoints[0],
        "--prefix", APP.decode(), "--lock-ttl", "1", "--heartbeat-interval", "0", *extra,
    ]  # fmt: skip


def read(log: Path) -> str:
    return log.read_text()


async def run_once(cmd: list[str], log: Path) -> str:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*cmd, "--once", stdout=out, stderr=out)
        rc = await asyncio.wait_for(proc.wait(), 120)
    text = read(log)
    assert rc == 0, text[-3000:]
    return text


async def checkpoint(d: EtcdClient, key: bytes) -> Checkpoint | None:
    kv = await d.get(key)
    return Checkpoint.decode(kv.value) if kv is not None else None


def test_slices_cover_the_backlog_without_gaps_or_overlap() -> None:
    assert slices(11, 30, 7) == [(11, 17), (18, 24), (25, 30)]
    assert slices(5, 5, 100) == [(5, 5)]
    assert not CatchUpConfig.parse("1/100/0").enabled


async def test_catch_up_over_slices_is_exactly_once_through_a_kill_and_a_resume(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    log = tmp_path / "mirror.log"
    # 4 watches over slices of 150 revisions from 300 behind; txns of at most 7 ops, so that the
    # replay is slow enough to be killed in the middle.
    cmd = mirror_cmd(src, dst, "--catch-up", "4/150/300", "--max-txn-ops", "8")
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        await Workload(s, seed=2).run(100)
        initial_text = await run_once(cmd, log)  # the copy and a checkpoint
        assert "catch-up:" not in initial_text
        initial = await content(s)
        key = StateLayout(STATE).checkpoint((await s.status()).cluster_id, APP, APP)
        start = await checkpoint(d, key)
        assert start is not None
        # The backlog: puts, deletes, multi-op txns, writes outside the prefix, and a run of 600
        # revisions that touch no mirrored key (whole slices with nothing to apply).
        workload = Workload(s, seed=14, max_txn=6)
        await workload.run(1200)
        for i in range(600):
            await s.put(b"/other/run%04d" % i, b"x")
        await workload.run(1200)
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=out)
            try:
                # Killed once the replay is past the first slices but not done.
                head = (await s.status()).revision
                deadline = asyncio.get_running_loop().time() + 60
                while True:
                    c = await checkpoint(d, key)
                    if c is not None and c.revision > start.revision + 400:
                        break
                    assert asyncio.get_running_loop().time() < deadline, read(log)[-3000:]
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
        killed_at = await checkpoint(d, key)
        assert killed_at is not None and killed_at.revision < head, "killed after the catch-up: no test"
        await workload.run(300)
        top = (await s.status()).revision
        text = await run_once(cmd, log)
        # Both runs read their backlog through the slices.
        assert text.count("catch-up: source revisions") >= 2, text[-3000:]
        assert "Traceback" not in text
        end = await checkpoint(d, key)
        assert end is not None and end.revision == top  # exact, though the last revisions touch no key
        assert await content(d) == await content(s)
        assert await check_against_acks(workload, initial, d, MAPPER, key) is not None
        report = await check_exactly_once(s, d, MAPPER, key)
        assert report.replay_txns > 100 and report.source_ops_checked > 1000


async def test_a_compaction_during_the_catch_up_ends_in_a_resync(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    log = tmp_path / "mirror.log"
    # 2 watches over slices of 100: the later slices' watches start after the compaction.
    cmd = mirror_cmd(src, dst, "--catch-up", "2/100/200", "--max-txn-ops", "2")
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        await run_once(cmd, log)
        key = StateLayout(STATE).checkpoint((await s.status()).cluster_id, APP, APP)
        start = await checkpoint(d, key)
        assert start is not None
        await Workload(s, seed=21).run(2000)
        head = (await s.status()).revision
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=out)
            try:
                # Compacted once a few slices are applied: the slices being read, and those not yet
                # started, are past the compaction.
                deadline = asyncio.get_running_loop().time() + 60
                while (c := await checkpoint(d, key)) is None or c.revision < start.revision + 300:
                    assert asyncio.get_running_loop().time() < deadline, read(log)[-3000:]
                    await asyncio.sleep(0.02)
                await s.compact(head)
                c = await checkpoint(d, key)
                assert c is not None and c.revision < head - 500, "caught up before the compaction: no test"
                while True:
                    c = await checkpoint(d, key)
                    if c is not None and c.revision >= head and await content(d) == await content(s):
                        break
                    assert asyncio.get_running_loop().time() < deadline, read(log)[-3000:]
                    await asyncio.sleep(0.1)
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
        text = read(log)
        assert "catch-up: source revisions" in text, text[-3000:]
        assert "resync: the source compacted past the checkpoint" in text, text[-3000:]
        assert "Traceback" not in text


@pytest.mark.parametrize("text", ["8/5000", "0/10/10", "a/b/c"])
async def test_a_bad_catch_up_option_is_refused(text: str) -> None:
    # Refused before any connection: the endpoints need not exist.
    cmd = [sys.executable, "-m", "etcd_dr", "mirror", "http://127.0.0.1:1", "--endpoints",
           "http://127.0.0.1:2", "--catch-up", text]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines()[-1].startswith("etcd-dr: error: --catch-up")
