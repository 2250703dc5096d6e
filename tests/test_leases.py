"""Lease mirroring against real etcd: destination leases have the source's TTL, are kept alive while the
source lease lives, and end with it; the registry survives a restart; --leases ignore keeps make-mirror's
behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from harness.mirroring import running, until

from etcd_dr import ClientConfig, MirrorConfig
from etcd_dr.etcd import EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror

Factory = Callable[..., EtcdCluster]


def cfg(src: EtcdCluster, dst: EtcdCluster, **kw: object) -> MirrorConfig:
    return MirrorConfig(
        source=ClientConfig.create(src.endpoints, role="source"),
        dest=ClientConfig.create(dst.endpoints, role="destination", flag_prefix="dest-"),
        prefix=b"/svc/",
        **{"checkpoint_interval": 0.2, "lock_ttl": 2, **kw},  # type: ignore[arg-type]
    )


async def test_leases_follow_the_source(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        kept = await s.lease_grant(6)
        doomed = await s.lease_grant(30)
        await s.put(b"/svc/a", b"1", lease=kept.id)
        await s.put(b"/svc/b", b"2", lease=doomed.id)
        await s.put(b"/svc/plain", b"3")
        async with running(cfg(src, dst)):
            await until(lambda: d.get(b"/svc/b"))
            kv = await d.get(b"/svc/a")
            assert kv is not None and kv.lease == kept.id
            assert (await d.get(b"/svc/plain")) is not None
            # The destination lease has the source's TTL and is kept alive by the mirror (at about a
            # third of its TTL) while the source lists the source lease.
            for _ in range(3):
                await s.lease_keepalive_once(kept.id)
                await asyncio.sleep(1.5)
                info = await d.lease_time_to_live(kept.id)
                assert info.granted_ttl == 6 and 0 < info.ttl <= 6, info
            # Refreshed on the source for longer than its TTL: still alive on the destination.
            for _ in range(5):
                await s.lease_keepalive_once(kept.id)
                await asyncio.sleep(1.5)
            assert (await d.get(b"/svc/a")) is not None
            # A revoked source lease removes the keys on both sides and the destination lease.
            await s.lease_revoke(doomed.id)
            await until(lambda: _gone(d, b"/svc/b"))
            await until(lambda: _lease_gone(d, doomed.id))
            # A source lease left to expire: its keys go on the destination too.
            await until(lambda: _gone(d, b"/svc/a"), timeout=20)
            assert (await d.get(b"/svc/plain")) is not None


async def _gone(c: EtcdClient, key: bytes) -> bool:
    return (await c.get(key)) is None


async def _lease_gone(c: EtcdClient, lease: int) -> bool:
    return (await c.lease_time_to_live(lease)).ttl == -1


async def test_restarted_mirror_keeps_leases_alive(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        lease = await s.lease_grant(4)
        await s.put(b"/svc/x", b"1", lease=lease.id)
        async with running(cfg(src, dst)):
            await until(lambda: d.get(b"/svc/x"))
        # A new mirror process finds the lease in the registry and keeps it alive, with no key written.
        async with running(cfg(src, dst)):
            for _ in range(6):
                await s.lease_keepalive_once(lease.id)
                await asyncio.sleep(1.0)
            assert (await d.get(b"/svc/x")) is not None
            assert (await d.lease_time_to_live(lease.id)).ttl > 0


async def test_leases_ignore(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        lease = await s.lease_grant(30)
        await s.put(b"/svc/x", b"1", lease=lease.id)
        await Mirror(cfg(src, dst, once=True, leases="ignore")).run()
        kv = await d.get(b"/svc/x")
        assert kv is not None and kv.lease == 0
        assert await d.leases() == []


async def test_same_cluster_leases_are_not_kept_alive_by_the_mirror(etcd_cluster_factory: Factory) -> None:
    """Mirroring /svc/ into /copy/ of the same cluster: the copy's key is attached to the source lease
    itself, which the mirror must not keep alive: once its owner stops refreshing it, it ends, and both
    keys go."""
    one = etcd_cluster_factory(name="one")
    async with EtcdClient(ClientConfig.create(one.endpoints)) as c:
        lease = await c.lease_grant(3)
        await c.put(b"/svc/x", b"1", lease=lease.id)
        async with running(cfg(one, one, dest_prefix=b"/copy/")):
            await until(lambda: c.get(b"/copy/x"))
            kv = await c.get(b"/copy/x")
            assert kv is not None and kv.lease == lease.id
            # Nobody refreshes the lease: it ends after its TTL, mirror or not.
            await until(lambda: _lease_gone(c, lease.id), timeout=10)
            await until(lambda: _gone(c, b"/copy/x"))
            assert (await c.get(b"/svc/x")) is None
