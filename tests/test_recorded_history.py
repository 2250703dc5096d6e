"""The destination held to the application's own record (issue 8's recorded-history checker): a
workload logs every acknowledged source write with its revision; while the mirror is cut off, killed
with SIGKILL and restarted, the destination is sampled again and again, and every sample must be the
source's state at the revision its checkpoint names, rebuilt from the log alone. At the end both
clusters' histories prove exactly once. And the checkers do catch a wrong destination."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.history import check_against_acks, check_exactly_once
from harness.proxy import FaultProxy
from harness.workload import Workload

from etcd_dr import MirrorConfig
from etcd_dr.etcd import ClientConfig, EtcdClient, Put, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.state import StateLayout

STATE = b"/etcd-dr/"
LAYOUT = StateLayout(STATE)
APP = b"/app/"
MAPPER = KeyMapper.create(APP, None, (), STATE)


async def content(c: EtcdClient) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await c.range(APP, prefix_range_end(APP))).kvs}


@pytest.mark.parametrize("read", ["live", "trailing"])
async def test_every_sample_of_the_destination_is_an_acknowledged_source_state(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path, read: str
) -> None:
    """`trailing`: the replay reads the source in windows behind its head from the start (--trail 0/0,
    mirror/feed.py), each window resumed from the last delivered revision, through the same faults."""
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    rng = random.Random(8)
    with FaultProxy.to(src.endpoints[0]) as src_proxy, FaultProxy.to(dst.endpoints[0]) as dst_proxy:
        async with (
            EtcdClient(ClientConfig.create(src.endpoints)) as s,
            EtcdClient(ClientConfig.create(dst.endpoints)) as d,
        ):
            for i in range(0, 2000, 100):
                await s.txn([], [Put(APP + b"seed/%05d" % j, b"s%d" % j) for j in range(i, i + 100)])
            initial = await content(s)
            key = LAYOUT.checkpoint((await s.status()).cluster_id, APP, APP)
            workload = Workload(s, seed=5, max_txn=12)
            stop = asyncio.Event()
            writing = asyncio.create_task(workload.run(stop=stop, rate=300))
            log_path = tmp_path / "mirror.log"
            checked: list[int] = []
            cmd = [
                sys.executable, "-m", "etcd_dr", "mirror", dst_proxy.url(), "--endpoints", src_proxy.url(),
                "--prefix", APP.decode(), "--lock-ttl", "1", "--max-txn-ops", "8",
                *(["--trail", "0/0"] if read == "trailing" else []),
            ]  # fmt: skip
            with log_path.open("wb") as log:
                proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)
                try:
                    for step in range(40):
                        await asyncio.sleep(0.2)
                        sample = await check_against_acks(workload, initial, d, MAPPER, key)
                        if sample is not None:
                            checked.append(sample.checkpoint_revision)
                        fault = rng.random()
                        if step in (12, 27):
                            proc.send_signal(signal.SIGKILL)
                            await proc.wait()
                            proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)
                        elif fault < 0.15:
                            src_proxy.cut()
                        elif fault < 0.3:
                            dst_proxy.cut()
                    stop.set()
                    await writing
                    top = (await s.status()).revision
                    deadline = asyncio.get_running_loop().time() + 60
                    while True:
                        sample = await check_against_acks(workload, initial, d, MAPPER, key)
                        if sample is not None and sample.checkpoint_revision >= top:
                            break
                        assert asyncio.get_running_loop().time() < deadline, log_path.read_text()[-3000:]
                        await asyncio.sleep(0.1)
                finally:
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGKILL)
                        await proc.wait()
            # Many distinct intermediate states were checked, not just the end.
            assert len(set(checked)) >= 10, checked
            assert len(workload.acked) > 500
            assert await content(d) == await content(s)
            report = await check_exactly_once(s, d, MAPPER, key)
            assert report.replay_txns > 0 and report.copies >= 1
            assert "Traceback" not in log_path.read_text()
            assert ("reading the source in windows" in log_path.read_text()) == (read == "trailing")


async def test_the_checkers_catch_a_wrong_destination(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    config = MirrorConfig(
        source=ClientConfig.create(src.endpoints),
        dest=ClientConfig.create(dst.endpoints),
        prefix=APP,
        once=True,
    )
    async with EtcdClient(config.source) as s, EtcdClient(config.dest) as d:
        initial = await content(s)
        workload = Workload(s, seed=3)
        await workload.run(200)
        await Mirror(config).run()
        key = LAYOUT.checkpoint((await s.status()).cluster_id, APP, APP)
        assert await check_against_acks(workload, initial, d, MAPPER, key) is not None
        await check_exactly_once(s, d, MAPPER, key)

        # A value the source never had, written outside the mirror: both checkers object.
        victim = next(iter(await content(d)))
        await d.put(victim, b"tampered")
        with pytest.raises(AssertionError, match="different"):
            await check_against_acks(workload, initial, d, MAPPER, key)
        with pytest.raises(AssertionError, match="without a checkpoint"):
            await check_exactly_once(s, d, MAPPER, key)

        # A write the log says was acknowledged but that the destination lacks.
        await d.delete_range(victim)
        with pytest.raises(AssertionError, match="missing"):
            await check_against_acks(workload, initial, d, MAPPER, key)
