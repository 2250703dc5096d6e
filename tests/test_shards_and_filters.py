"""--prefix shards (several mirrors into one destination, each with its own checkpoint and lock) and
--ignore-keys-regex, applied to copies, events and verify alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from harness.workload import Workload

from etcd_dr import ClientConfig, MirrorConfig
from etcd_dr.etcd import EtcdClient, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.verify import verify

Factory = Callable[..., EtcdCluster]


def cfg(src: EtcdCluster, dst: EtcdCluster, **kw: object) -> MirrorConfig:
    return MirrorConfig(
        source=ClientConfig.create(src.endpoints, role="source"),
        dest=ClientConfig.create(dst.endpoints, role="destination", flag_prefix="dest-"),
        **{"checkpoint_interval": 0.2, **kw},  # type: ignore[arg-type]
    )


async def dump(c: EtcdClient, prefix: bytes) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await c.range(prefix, prefix_range_end(prefix))).kvs}


async def test_prefix_shards_run_side_by_side(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    shards = [b"/shard-a/", b"/shard-b/", b"/shard-c/"]
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        loads = [Workload(s, prefix=p, seed=i) for i, p in enumerate(shards)]
        await asyncio.gather(*(w.run(100) for w in loads))
        mirrors = [Mirror(cfg(src, dst, prefix=p, lock_ttl=2)) for p in shards]
        tasks = [asyncio.create_task(m.run()) for m in mirrors]
        try:
            await asyncio.gather(*(w.run(200) for w in loads))
            deadline = asyncio.get_running_loop().time() + 30
            while any([await dump(s, p) != await dump(d, p) for p in shards]):
                assert asyncio.get_running_loop().time() < deadline, "shards not equal"
                await asyncio.sleep(0.1)
            # Each shard applies on its own: all three hold their own lock at once.
            assert all(m.stats.applied_txns > 0 for m in mirrors)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for p in shards:
            assert (await verify(cfg(src, dst, prefix=p))).equal
        locks = (await d.range(b"/etcd-dr/lock/", prefix_range_end(b"/etcd-dr/lock/"))).kvs
        assert locks == []  # released on the way out


async def test_ignore_keys_regex(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        await s.put(b"/app/keep", b"1")
        await s.put(b"/app/cache/tmp-1", b"skip me")
        await d.put(b"/app/cache/tmp-own", b"the destination's own: left alone")
        config = cfg(src, dst, prefix=b"/app/", ignore_keys_regex=r"/tmp-", once=True)
        await Mirror(config).run()
        await s.put(b"/app/cache/tmp-2", b"skip me too")
        await s.put(b"/app/late", b"2")
        await Mirror(config).run()
        assert await dump(d, b"/app/") == {
            b"/app/keep": b"1",
            b"/app/late": b"2",
            b"/app/cache/tmp-own": b"the destination's own: left alone",
        }
        assert (await verify(config)).equal
