"""Destination faults of issue 8 (item 2) on real etcd: the destination's NOSPACE alarm (disk full:
the mirror pauses and alerts, then resumes once the operator has made room), and the destination
paused (SIGSTOP) for longer than the TTLs of the leases the mirror keeps for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from harness.mirroring import connect, dump, pair_config, wait_equal

from etcd_dr.config import MirrorConfig
from etcd_dr.etcd import EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.metrics import MetricsServer
from etcd_dr.mirror import Mirror
from etcd_dr.verify import verify

Factory = Callable[..., EtcdCluster]
STATE = b"/etcd-dr/"
APP = b"/app/"
MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def mirror_task(config: MirrorConfig) -> AsyncIterator[tuple[Mirror, asyncio.Task[Any]]]:
    """A mirror running in this process; the task is there to check that it did not end."""
    mirror = Mirror(config)
    task = asyncio.create_task(mirror.run())
    try:
        yield mirror, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(cond: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = cond()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not in {timeout} s"
        await asyncio.sleep(0.1)


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in the metrics:\n{text}")


async def status_cli(src: EtcdCluster, dst: EtcdCluster, *flags: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "etcd_dr", "status", dst.endpoints[0], "--endpoints", src.endpoints[0],
        *flags, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err.decode()  # degraded: it is called while the alarm is on
    return out.decode()


async def test_destination_nospace_pauses_alerts_and_resumes(
    etcd_cluster_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    src = etcd_cluster_factory(name="src")
    dst = etcd_cluster_factory(name="dst", quota_backend_bytes=4 * MiB)
    config = pair_config(src, dst, prefix=APP)
    async with connect(src) as s, connect(dst) as d, mirror_task(config) as (mirror, task):
        with MetricsServer("127.0.0.1:0", mirror.stats) as server:
            await until(lambda: mirror.stats.phase == "replay", "the mirror replays")
            # Overwrites of a few keys: little live data, much history, which fills the destination's
            # 4 MiB backend (its quota) long before the source's.
            for i in range(160):
                await s.put(APP + b"k%d" % (i % 8), bytes([i]) * 100_000)
            await until(lambda: mirror.stats.errors["nospace"] > 0, "the mirror meets NOSPACE")
            assert "NOSPACE" in dst.etcdctl("alarm", "list")

            # Paused and alerting, not crashed.
            await asyncio.sleep(1.0)
            assert not task.done(), task.exception() if task.done() and not task.cancelled() else ""
            code, text = scrape(server.port, "/healthz")
            assert code == 503 and "NOSPACE" in text, (code, text)
            code, text = scrape(server.port, "/metrics")
            assert metric(text, 'etcd_dr_errors_total{kind="nospace"}') >= 1
            assert metric(text, "etcd_dr_nospace") == 1
            report = json.loads(await status_cli(src, dst, "--json"))
            assert report["destination"]["alarms"] == ["NOSPACE"], report["destination"]
            assert report["source"]["alarms"] == []
            assert report["destination"]["healthy"] is False
            assert "alarm" in {p["kind"] for p in report["problems"]}, report["problems"]
            assert "ALARM NOSPACE on member" in await status_cli(src, dst)
            assert "NOSPACE alarm: destination endpoint" in caplog.text

            # The operator makes room: compact, defragment, disarm (again if the catch-up refills it).
            for _ in range(20):
                seen = mirror.stats.errors["nospace"]
                rev = (await d.status()).revision
                await d.compact(rev)
                dst.etcdctl("defrag", timeout=60)
                dst.etcdctl("alarm", "disarm")
                caught_up = await _caught_up_or_full(s, d, mirror, seen)
                if caught_up:
                    break
            else:
                raise AssertionError("the mirror did not catch up after 20 rounds of making room")
            await wait_equal(s, d, APP, timeout=60)
            assert not task.done()
            await until(lambda: not mirror.stats.nospace, "the alarm is cleared in the stats")
            code, text = scrape(server.port, "/healthz")
            assert code == 200, text
            assert metric(scrape(server.port, "/metrics")[1], "etcd_dr_nospace") == 0
        result = await verify(config)
        assert result.equal and result.keys == 8, result.summary()


async def _caught_up_or_full(s: EtcdClient, d: EtcdClient, mirror: Mirror, seen: int) -> bool:
    """Wait until the destination holds the source's content (True) or the mirror met NOSPACE again."""
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        if await dump(s, APP) == await dump(d, APP):
            return True
        if mirror.stats.errors["nospace"] > seen:
            return False
        await asyncio.sleep(0.2)
    raise AssertionError("the mirror neither caught up nor met NOSPACE again in 60 s")


async def _keep_alive(s: EtcdClient, lease: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await s.lease_keepalive_once(lease)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def test_destination_paused_longer_than_the_lease_ttls(
    etcd_cluster_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "etcd_dr")
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    config = pair_config(src, dst, prefix=APP, lock_ttl=2)
    async with connect(src) as s, connect(dst) as d:
        kept = (await s.lease_grant(4)).id  # kept alive on the source all along
        ended = (await s.lease_grant(3)).id  # left to expire on the source while the destination sleeps
        await s.put(APP + b"kept", b"1", lease=kept)
        await s.put(APP + b"ended", b"2", lease=ended)
        await s.put(APP + b"plain", b"3")
        stop = asyncio.Event()
        refresher = asyncio.create_task(_keep_alive(s, kept, stop))
        async with mirror_task(config) as (mirror, task):
            await wait_equal(s, d, APP)
            dst.pause(0)
            try:
                # Longer than every TTL involved: both leases, and the mirror's lock (2 s).
                for i in range(8):
                    await s.put(APP + b"during/%d" % i, b"x")
                    await asyncio.sleep(1.0)
                assert (await s.get(APP + b"ended")) is None  # expired on the source meanwhile
            finally:
                dst.resume(0)
            # The destination's own clock ran on: on waking it expires the leases it was keeping; the
            # mirror must give back the keys of the lease that lives on the source, under a live lease.
            await wait_equal(s, d, APP, timeout=60)
            assert not task.done()
            kv = await d.get(APP + b"kept")
            assert kv is not None and kv.lease == kept
            # Kept alive on the destination for longer than its TTL, as long as the source's lives.
            for _ in range(6):
                await asyncio.sleep(1.0)
                assert (await d.get(APP + b"kept")) is not None
                assert (await d.lease_time_to_live(kept)).ttl > 0
            assert (await d.lease_time_to_live(ended)).ttl == -1
            assert (await d.get(APP + b"ended")) is None
            if mirror.stats.resyncs:  # the copy that restored the keys says why it ran
                assert "copy: a destination lease expired while its source lease lives" in caplog.text
                assert "compacted" not in caplog.text
            # And it ends with the source's.
            stop.set()
            await refresher
            await until(lambda: _gone(d, APP + b"kept"), "the key goes with its source lease", timeout=20)
            await wait_equal(s, d, APP)
            # Revoked on the destination once the source no longer lists it (polled every second).
            await until(
                lambda: _lease_gone(d, kept), "the destination lease ends with the source's", timeout=10
            )
            assert mirror.stats.leases == 0
        result = await verify(config)
        assert result.equal, result.summary()


async def _gone(c: EtcdClient, key: bytes) -> bool:
    return (await c.get(key)) is None


async def _lease_gone(c: EtcdClient, lease: int) -> bool:
    return (await c.lease_time_to_live(lease)).ttl == -1
