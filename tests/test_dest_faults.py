"""Destination faults of issue 8 (item 2) on real etcd: the destination's NOSPACE alarm (disk full:
the mirror pauses and alerts, then resumes once the operator has made room), and the destination
paused (SIGSTOP) for longer than the TTLs of the leases the mirror keeps for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from etcd_dr.config import MirrorConfig
from etcd_dr.etcd import EtcdClient
from etcd_dr.metrics import MetricsServer
from etcd_dr.mirror import Mirror
from etcd_dr.testing.cluster import EtcdCluster
from etcd_dr.testing.mirroring import connect, dump, pair_config, wait_equal
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
    assert proc.returncode == 0, err.decode()
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
