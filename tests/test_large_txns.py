"""Replay txns as large as the destination takes (issue 14): the mirror learns the destination's
limits itself (mirror/limits.py) and fills each txn up to them. Exactly once still holds with txns of
thousands of ops: through kill -9 of the mirror, a lock lost while a big txn is in flight and cut
links (held to the application's acknowledged writes and to both clusters' histories); and a
destination whose limits are below the mirror's guess is learned, not refused."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from harness.history import check_against_acks, check_exactly_once
from harness.mirroring import connect, pair_config, running, wait_equal
from harness.proxy import FaultProxy
from harness.workload import Workload

from etcd_dr.etcd import ClientConfig, EtcdClient, Put, Unavailable, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.mirror.limits import probe_max_ops
from etcd_dr.state.layout import StateLayout

STATE = b"/etcd-dr/"
APP = b"/app/"
MAPPER = KeyMapper.create(APP, None, (), STATE)
Factory = Callable[..., EtcdCluster]
# The standby's etcd as `render` configures it.
RENDERED = ["--max-txn-ops=4096", f"--max-request-bytes={10 * 1024 * 1024}"]


async def content(c: EtcdClient) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await c.range(APP, prefix_range_end(APP))).kvs}


async def test_the_probe_finds_the_destinations_op_limit(etcd_cluster_factory: Factory) -> None:
    rendered = etcd_cluster_factory(name="big", extra_args=RENDERED)
    default = etcd_cluster_factory(name="default")
    odd = etcd_cluster_factory(name="odd", extra_args=["--max-txn-ops=300"])
    key = b"/etcd-dr/probe-test"
    for cluster, cap, want in (
        (rendered, 4096, 4096),
        (default, 4096, 128),
        (default, 100, 100),  # the user's cap, taken as it is
        (odd, 4096, 256),  # not a power of two: the power of two below it
        (odd, 64, 64),
    ):
        async with connect(cluster) as c:
            assert await probe_max_ops(c, key, cap) == want, (cluster.name, cap)
            assert await c.get(key) is None  # the probe writes nothing
            assert (await c.status()).revision == 1


async def test_a_destination_below_the_mirrors_guess_is_learned_exactly_once(
    etcd_cluster_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """--max-txn-ops 64 and --max-request-bytes 32 KiB on the destination, no --max-txn-ops given: the
    mirror probes 64, guesses 1 MiB, is refused as too large and halves until its txns fit, exactly
    once (the refused txns applied nothing)."""
    caplog.set_level(logging.INFO, logger="etcd_dr")
    src = etcd_cluster_factory(name="src")
    dst = etcd_cluster_factory(name="dst", extra_args=["--max-txn-ops=64", "--max-request-bytes=32768"])
    dp = FaultProxy.to(dst.endpoints[0])
    config = pair_config(src, dst, prefix=APP)
    config = replace(config, dest=ClientConfig.create(dp.address, role="destination", flag_prefix="dest-"))
    async with connect(src) as s, connect(dst) as d:
        key = StateLayout(STATE).checkpoint((await s.status()).cluster_id, APP, APP)
        async with running(config) as mirror:
            await s.put(APP + b"ready", b"1")
            await wait_equal(s, d, APP)
            rng = random.Random(14)
            keys = iter(range(1500))

            async def writer() -> None:
                for i in keys:
                    await s.put(APP + b"k%04d" % (i % 700), rng.randbytes(rng.choice((10, 500, 1000))))

            # The link is held while the source is written, so the backlog (and a txn over the
            # destination's 32 KiB) does not depend on how fast this machine writes.
            dp.set_blackhole(True)
            try:
                await asyncio.gather(*(writer() for _ in range(32)))
            finally:
                dp.set_blackhole(False)
            await wait_equal(s, d, APP, timeout=60)
            assert mirror.stats.errors["too_large"] >= 1
        report = await check_exactly_once(s, d, MAPPER, key)
        assert report.replay_txns > 0 and report.source_ops_checked >= 1500
        assert 1 < report.largest_txn <= 63
    assert "destination txn limits: 64 ops per txn" in caplog.text
    assert "refused a txn as too large" in caplog.text
    dp.close()


async def test_exactly_once_with_large_txns_through_kill_lost_lock_and_cut_links(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    """The mirror (no --max-txn-ops) against a destination configured as `render` does: while it is
    killed, a backlog builds up that the restarted mirror applies in txns of hundreds of ops; it is
    killed again in the middle of that, its lock is taken away while a big txn is in flight (the
    destination link slowed so the txn is long in flight), and links are cut. Every sample of the
    destination is an acknowledged source state, and both histories show each source op once."""
    src = etcd_cluster_factory(name="src")
    dst = etcd_cluster_factory(name="dst", extra_args=RENDERED)
    rng = random.Random(14)
    with FaultProxy.to(src.endpoints[0]) as src_proxy, FaultProxy.to(dst.endpoints[0]) as dst_proxy:
        async with (
            EtcdClient(ClientConfig.create(src.endpoints)) as s,
            EtcdClient(ClientConfig.create(dst.endpoints)) as d,
        ):
            await s.txn([], [Put(APP + b"seed/%04d" % j, b"s%d" % j) for j in range(100)])
            initial = await content(s)
            cluster_id = (await s.status()).cluster_id
            key = StateLayout(STATE).checkpoint(cluster_id, APP, APP)
            lock = StateLayout(STATE).lock(cluster_id, APP, APP)
            workload = Workload(s, seed=14, max_txn=12, keys=2000)
            stop = asyncio.Event()
            writing = asyncio.create_task(workload.run(stop=stop))
            log_path = tmp_path / "mirror.log"
            cmd = [
                sys.executable, "-m", "etcd_dr", "mirror", dst_proxy.url(), "--endpoints", src_proxy.url(),
                "--prefix", APP.decode(), "--lock-ttl", "1",
            ]  # fmt: skip
            checked: list[int] = []

            wrong: list[AssertionError] = []

            async def sample() -> None:
                try:
                    at = (await d.status()).revision
                    try:
                        got = await check_against_acks(workload, initial, d, MAPPER, key, at)
                    except AssertionError:
                        # The workload's request in flight may be on the destination already: check
                        # the same destination revision again once it is acknowledged.
                        await asyncio.sleep(0.5)
                        got = await check_against_acks(workload, initial, d, MAPPER, key, at)
                except Unavailable:
                    return  # the test's own client, on a loaded machine: the next sample checks
                except AssertionError as e:
                    wrong.append(e)  # raised after the histories are checked, which say more
                    return
                if got is not None:
                    checked.append(got.checkpoint_revision)

            async def replaying() -> None:
                """Until the mirror started last resumes from its checkpoint (python starts slowly
                on a loaded machine)."""
                for _ in range(300):
                    if cycles() >= resumed + 1:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(log_path.read_text()[-3000:])

            def cycles() -> int:
                text = log_path.read_text()
                return text.count("resuming from the checkpoint") + text.count("copy: done")

            resumed = 0
            with log_path.open("wb") as log:

                async def start() -> asyncio.subprocess.Process:
                    return await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)

                proc = await start()
                try:
                    await replaying()
                    for step in range(24):
                        await asyncio.sleep(0.25)
                        await sample()
                        assert proc.returncode is None, log_path.read_text()[-3000:]
                        if step in (4, 14):
                            # Killed for 1.5 s: the restarted mirror has a backlog to apply in big txns.
                            proc.send_signal(signal.SIGKILL)
                            await proc.wait()
                            await asyncio.sleep(1.5)
                            resumed = cycles()
                            proc = await start()
                        elif step in (5, 15):
                            # Killed again in the middle of that catch-up (once it is replaying).
                            await replaying()
                            await asyncio.sleep(rng.uniform(0.0, 0.3))
                            proc.send_signal(signal.SIGKILL)
                            await proc.wait()
                            await asyncio.sleep(1.0)
                            resumed = cycles()
                            proc = await start()
                        elif step == 9:
                            # The lock taken away while a big txn is in flight over a slow link.
                            await replaying()
                            dst_proxy.set_delay(0.05)
                            await asyncio.sleep(0.3)
                            await d.delete_range(lock)
                            await asyncio.sleep(1.0)
                            dst_proxy.set_delay(0)
                        elif step in (11, 19):
                            dst_proxy.cut()
                        elif step == 21:
                            src_proxy.cut()
                    stop.set()
                    await writing
                    top = (await s.status()).revision
                    deadline = asyncio.get_running_loop().time() + 90
                    while True:
                        got = await check_against_acks(workload, initial, d, MAPPER, key)
                        if got is not None and got.checkpoint_revision >= top:
                            break
                        assert asyncio.get_running_loop().time() < deadline, log_path.read_text()[-3000:]
                        await asyncio.sleep(0.1)
                finally:
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGKILL)
                        await proc.wait()
            text = log_path.read_text()
            assert "Traceback" not in text
            assert "destination txn limits: 4096 ops per txn" in text
            assert "lock was taken over" in text or "lost the mirror lock" in text, text[-3000:]
            report = await check_exactly_once(s, d, MAPPER, key)
            if wrong:
                raise wrong[0]
            assert len(set(checked)) >= 3, checked
            assert await content(d) == await content(s)
            # The backlogs were applied in txns beyond etcd's default limit of 128 ops.
            assert report.largest_txn > 128, report
