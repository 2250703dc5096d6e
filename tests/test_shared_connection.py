"""Calls sharing one connection when its endpoint dies: the first failure closes the channel, which
makes grpc cancel every other call on it. Those callers must see a typed, transient error (and a
watch must resume), never an asyncio.CancelledError that looks like their own task being cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from harness.proxy import FaultProxy

from etcd_dr.etcd import ClientConfig, EtcdClient, EtcdError, TransientError, Watch
from etcd_dr.local.cluster import EtcdCluster


async def test_concurrent_calls_on_a_dying_endpoint_fail_typed_not_cancelled(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    cluster = etcd_cluster_factory(name="dying")
    errors: list[BaseException] = []
    stop = asyncio.Event()
    async with EtcdClient(ClientConfig.create(cluster.endpoints, request_timeout=5.0)) as c:

        async def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    await c.put(b"/k/%d/%d" % (n, i), b"v")
                except EtcdError as e:
                    errors.append(e)
                    await asyncio.sleep(0.01)

        watch_failures: list[BaseException] = []

        async def watcher() -> None:
            try:
                async with c.watch(b"/k/", b"/k0", retry_for=30.0) as w:
                    async for _ in w:
                        if stop.is_set():
                            return
            except BaseException as e:  # recorded, then judged by the test
                watch_failures.append(e)
                raise

        tasks = [asyncio.create_task(writer(n)) for n in range(16)]
        watch = asyncio.create_task(watcher())
        await asyncio.sleep(0.5)
        cluster.kill(0)
        await asyncio.sleep(1.0)
        cluster.restart(0)
        await asyncio.sleep(1.0)
        stop.set()
        await c.put(b"/k/last", b"v")  # wakes the watcher so it sees `stop`
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(watch, 30)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert errors, "the writers never saw the endpoint die"
    assert all(isinstance(e, TransientError) for e in errors), {type(e).__name__ for e in errors}
    assert not watch_failures, watch_failures


async def test_watches_on_one_connection_move_endpoint_once_per_failure(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    # Three endpoints (proxies in front of one member) and three watches on one client. Cutting the
    # first endpoint breaks all three streams at once: the connection must move to the next endpoint
    # once. Each watch that rotated from the endpoint it *found current* (not the one its stream was
    # opened on) moved the connection again, closing the channel under its siblings' fresh streams,
    # which then moved it again: the watches cut each other and skipped over healthy endpoints.
    cluster = etcd_cluster_factory(name="siblings")
    prefixes = [b"/a/", b"/b/", b"/c/"]
    with (
        FaultProxy.to(cluster.endpoints[0]) as p0,
        FaultProxy.to(cluster.endpoints[0]) as p1,
        FaultProxy.to(cluster.endpoints[0]) as p2,
    ):
        endpoints = [p.url() for p in (p0, p1, p2)]
        async with (
            EtcdClient(ClientConfig.create(cluster.endpoints, request_timeout=5.0)) as writer,
            EtcdClient(ClientConfig.create(endpoints, request_timeout=5.0)) as c,
        ):
            start = (await writer.put(b"/marker", b"x")).header.revision + 1
            watches = [c.watch_prefix(p, start_revision=start) for p in prefixes]
            got: dict[bytes, list[int]] = {p: [] for p in prefixes}
            written: dict[bytes, list[int]] = {p: [] for p in prefixes}

            async def read(prefix: bytes, w: Watch) -> None:
                async for batch in w:
                    got[prefix].extend(e.kv.mod_revision for e in batch.events)

            async def write_and_wait() -> None:
                for p in prefixes:
                    for i in range(5):
                        written[p].append((await writer.put(p + b"%d" % i, b"v")).header.revision)
                async with asyncio.timeout(30):
                    while any(got[p] != written[p] for p in prefixes):
                        assert not any(t.done() for t in readers), [t.exception() for t in readers]
                        await asyncio.sleep(0.01)

            readers = [asyncio.create_task(read(p, w)) for p, w in zip(prefixes, watches, strict=True)]
            try:
                await write_and_wait()
                assert str(c.endpoint) == endpoints[0]
                assert p0.cut() >= 1
                await write_and_wait()
            finally:
                for w in watches:
                    await w.close()
                for t in readers:
                    t.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
            assert str(c.endpoint) == endpoints[1], "one failure must move the connection once"
            assert [w.reconnects for w in watches] == [1, 1, 1]


async def test_a_call_after_close_is_a_typed_error(etcd_cluster_factory: Callable[..., EtcdCluster]) -> None:
    # A helper task still running when its client is closed (the mirror's heartbeats when its stop was
    # cut short) must meet etcd-dr's error, not grpc's UsageError from a callable of the closed channel.
    cluster = etcd_cluster_factory(name="closed")
    c = EtcdClient(ClientConfig.create(cluster.endpoints))
    await c.put(b"/k", b"v")
    await c.get(b"/k")
    await c.close()
    for call in (c.put(b"/k", b"w"), c.get(b"/k")):
        try:
            await call
        except EtcdError as e:
            assert "client is closed" in str(e)
        else:
            raise AssertionError("a call on a closed client succeeded")
