"""Distance between the sites: a 30 ms round trip to the destination (the test suite's delaying TCP
proxy, 15 ms each way; `tc netem` is not available on these machines' kernels). One destination txn
costs at least a round trip, so a mirror applying one source revision per txn would manage about 33
revisions/s; by grouping revisions into txns it keeps up with a source writing hundreds per second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from harness.history import check_exactly_once
from harness.mirroring import connect, wait_equal
from harness.mirrorproc import MirrorProcess, measure_lag, wait_caught_up
from harness.proxy import FaultProxy

from etcd_dr.etcd import ClientConfig, EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.state import StateLayout

STATE = b"/etcd-dr/"
PREFIX = b"/app/"
Factory = Callable[..., EtcdCluster]

ONE_WAY = 0.015
RATE = 300  # single-key puts (= source revisions) per second
LOAD_SECONDS = 8.0


async def steady_writer(s: EtcdClient, rate: float, seconds: float) -> int:
    """Single-key puts at `rate` per second on a fixed schedule (not slowed by the puts' own latency);
    returns how many were acknowledged."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    pending: set[asyncio.Task[object]] = set()
    while (elapsed := loop.time() - start) < seconds:
        due = int(elapsed * rate) - sent
        for _ in range(due):
            pending.add(asyncio.create_task(s.put(PREFIX + b"k%05d" % (sent % 2000), b"v%d" % sent)))
            sent += 1
        await asyncio.sleep(0.01)
        done = {t for t in pending if t.done()}
        for t in done:
            t.result()  # a failed put fails the test
        pending -= done
    await asyncio.gather(*pending)
    return sent


async def test_mirror_keeps_up_over_a_30ms_round_trip_by_batching(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    with FaultProxy.to(dst.endpoints[0]) as far:
        far.set_delay(ONE_WAY)
        mirror = MirrorProcess(
            far.url(), ",".join(src.endpoints), "--prefix", "/app/", log_path=tmp_path / "mirror.log"
        )
        async with connect(src) as s, connect(dst) as d:
            key = StateLayout(STATE).checkpoint((await s.status()).cluster_id, PREFIX, PREFIX)
            await s.put(PREFIX + b"seed", b"1")
            mirror.start()
            try:
                await wait_caught_up(s, d, key, timeout=60)
                src_before, dst_before = (await s.status()).revision, (await d.status()).revision
                t0 = time.monotonic()
                written = await steady_writer(s, RATE, LOAD_SECONDS)
                load_seconds = time.monotonic() - t0
                lag_at_end = await measure_lag(s, d, key)
                catch_up = await wait_caught_up(s, d, key, timeout=60)
                src_after, dst_after = (await s.status()).revision, (await d.status()).revision
                await wait_equal(s, d, PREFIX, timeout=30)
                assert await mirror.stop() == 0, mirror.log_text()[-3000:]
            except BaseException:
                print(f"mirror log (tail):\n{mirror.log_text()[-6000:]}")
                raise
            finally:
                mirror.kill()
            source_revisions = src_after - src_before  # the writer's puts and the mirror's heartbeats
            dest_txns = dst_after - dst_before  # every destination txn is one revision
            print(
                f"\ndistance {2 * ONE_WAY * 1000:.0f} ms round trip: {written} puts in {load_seconds:.1f} s "
                f"({written / load_seconds:.0f}/s); lag at the end of the load {lag_at_end.revisions} "
                f"revisions; caught up {catch_up:.2f} s later; {source_revisions} source revisions "
                f"in {dest_txns} destination txns ({source_revisions / max(dest_txns, 1):.1f} per txn)"
            )
            assert written >= RATE * LOAD_SECONDS * 0.9
            # Grouped: one txn per source revision could not keep up at 30 ms a txn.
            assert dest_txns * 4 < source_revisions, (dest_txns, source_revisions)
            # Generous for a loaded 2-core machine; at one revision per txn it would take over 50 s.
            assert catch_up < 10.0, catch_up
            report = await check_exactly_once(s, d, KeyMapper.create(PREFIX, None, (), STATE), key)
            assert report.copies == 1 and report.source_ops_checked >= written
            assert "Traceback" not in mirror.log_text()


async def test_a_tls_site_100ms_away_answers_the_first_request(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    """Over a 100 ms round trip, TLS's handshakes take about 0.3 s. grpc cut every connection attempt
    at 100 ms (our quick-reconnect setting) and each failed request started a fresh channel from there:
    the client never connected (20 requests in 4 s, none answered). Now an attempt has 1 s."""
    site = etcd_cluster_factory(name="far", tls=True)
    tls = site.tls
    assert tls is not None
    with FaultProxy.to(site.endpoints[0]) as far:
        far.set_delay(0.05)  # each way
        config = ClientConfig.create(
            far.url().replace("http://", "https://"),
            cacert=tls.ca,
            cert=tls.client.cert,
            key=tls.client.key,
            request_timeout=10,
        )
        async with EtcdClient(config) as c:
            t0 = time.monotonic()
            assert (await c.get(b"nothing")) is None
        assert time.monotonic() - t0 < 10
