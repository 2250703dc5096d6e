"""`etcd-dr status`, the mirror's Prometheus metrics and /healthz, against real etcd: lag rises while
the destination is paused and falls after; compaction headroom; heartbeat-based lag in seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable

from etcd_dr import ClientConfig, MirrorConfig
from etcd_dr.etcd import EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.metrics import MetricsServer
from etcd_dr.mirror import Mirror
from etcd_dr.status import status

Factory = Callable[..., EtcdCluster]


def cfg(src: EtcdCluster, dst: EtcdCluster, **kw: object) -> MirrorConfig:
    return MirrorConfig(
        source=ClientConfig.create(src.endpoints, role="source"),
        dest=ClientConfig.create(dst.endpoints, role="destination", flag_prefix="dest-", request_timeout=5),
        **{"checkpoint_interval": 0.2, "heartbeat_interval": 0.2, **kw},  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def replaying(config: MirrorConfig) -> AsyncIterator[tuple[Mirror, MetricsServer]]:
    """The mirror running in this process with its metrics served, once it replays; stopped after."""
    mirror = Mirror(config)
    with MetricsServer("127.0.0.1:0", mirror.stats) as server:
        task = asyncio.create_task(mirror.run())
        try:
            await _until(lambda: mirror.stats.phase == "replay")
            yield mirror, server
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


async def test_compact_revision_is_found_exactly(etcd_cluster_factory: Factory) -> None:
    c = etcd_cluster_factory(name="c")
    async with EtcdClient(ClientConfig.create(c.endpoints)) as cl:
        assert await cl.compact_revision() == 0
        for i in range(40):
            await cl.put(b"k%d" % i, b"v")
        await cl.compact(23)
        assert await cl.compact_revision() == 23


async def test_lag_rises_while_destination_paused_and_falls_after(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    config = cfg(src, dst)
    async with EtcdClient(ClientConfig.create(src.endpoints)) as s, replaying(config) as (mirror, server):
        for i in range(50):
            await s.put(b"/k/%d" % i, b"v")
        await _until(lambda: mirror.stats.lag_revisions == 0)
        code, body = await asyncio.to_thread(scrape, server.port, "/healthz")
        assert code == 200, body
        text = (await asyncio.to_thread(scrape, server.port))[1]
        # Caught up, but for heartbeats (5 a second) written since.
        assert metric(text, "etcd_dr_lag_revisions") <= 5
        assert metric(text, "etcd_dr_applied_events_total") >= 50
        assert metric(text, "etcd_dr_txn_duration_seconds_count") > 0
        for name in (
            "etcd_dr_lag_seconds",
            "etcd_dr_resyncs_total",
            "etcd_dr_compaction_headroom_revisions",
        ):
            metric(text, name)
        assert 'etcd_dr_errors_total{kind="unavailable"}' in text
        # 50 writes and the heartbeats: read live, not in windows (mirror/feed.py).
        assert 'etcd_dr_source_read{mode="live"} 1.0' in text, text

        dst.pause(0)
        for i in range(100):
            await s.put(b"/k/p%d" % i, b"v")
        await asyncio.sleep(1.5)
        text = (await asyncio.to_thread(scrape, server.port))[1]
        assert metric(text, "etcd_dr_lag_revisions") >= 100
        assert metric(text, "etcd_dr_lag_seconds") >= 1.0
        dst.resume(0)
        await _until(lambda: mirror.stats.lag_revisions == 0, timeout=30)
        text = (await asyncio.to_thread(scrape, server.port))[1]
        assert metric(text, "etcd_dr_lag_revisions") <= 5
        assert metric(text, "etcd_dr_lag_seconds") < 1.0

        report = await status(config)
        # Caught up but for the last heartbeats (5 a second) not yet checkpointed.
        assert report.lag_revisions is not None and report.lag_revisions <= 20
        assert report.lag_seconds is not None and report.lag_seconds < 3.0
        assert report.checkpoint is not None and report.checkpoint.source_time > 0
        assert report.source.healthy and report.dest.healthy


async def test_the_metrics_say_when_the_source_is_read_in_windows(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    config = cfg(src, dst, trail_above=0.0, trail_below=0.0)  # in windows from the start
    async with EtcdClient(ClientConfig.create(src.endpoints)) as s, replaying(config) as (mirror, server):
        for i in range(20):
            await s.put(b"/k/%d" % i, b"v")
        # Applied (lag 0 alone holds before the mirror has heard of the writes).
        await _until(lambda: mirror.stats.applied_events >= 20 and mirror.stats.lag_revisions == 0)
        text = (await asyncio.to_thread(scrape, server.port))[1]
        assert 'etcd_dr_source_read{mode="windows"} 1.0' in text, text
        assert 'etcd_dr_source_read{mode="live"} 0.0' in text, text


async def test_status_cli_and_compaction_headroom(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with EtcdClient(ClientConfig.create(src.endpoints)) as s:
        for i in range(30):
            await s.put(b"/k/%d" % i, b"v")
        await Mirror(cfg(src, dst, once=True, heartbeat_interval=0)).run()
        rev = (await s.put(b"/k/late", b"v")).header.revision
        await s.compact(rev - 5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "etcd_dr", "status", dst.endpoints[0],
        "--endpoints", src.endpoints[0], "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    # Degraded: the --once mirror has stopped (one write not applied), and auth is off with no hook.
    assert proc.returncode == 1, err.decode()
    doc = json.loads(out)
    assert {p["kind"] for p in doc["problems"]} == {"mirror-stopped", "fencing-impossible"}, doc["problems"]
    assert doc["source"]["compact_revision"] == rev - 5
    assert doc["applied_revision"] == rev - 1
    assert doc["lag_revisions"] == 1
    assert doc["compaction_headroom_revisions"] == 5
    assert doc["destination"]["healthy"] is True and doc["checkpoint"]["phase"] == "replay"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "etcd_dr", "status", dst.endpoints[0], "--endpoints", src.endpoints[0],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    text = out.decode()
    assert "lag 1 revisions" in text and "compaction headroom: 5 revisions" in text


async def _until(cond: Callable[[], bool], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
