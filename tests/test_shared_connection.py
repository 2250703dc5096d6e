"""Calls sharing one connection when its endpoint dies: the first failure closes the channel, which
makes grpc cancel every other call on it. Those callers must see a typed, transient error (and a
watch must resume), never an asyncio.CancelledError that looks like their own task being cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from etcd_dr.etcd import ClientConfig, EtcdClient, EtcdError, TransientError
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
