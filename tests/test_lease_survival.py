"""Leases that survive restarts, moves and distance (issue 12, findings 1, 2 and 7), on real etcd.

The source's leases are kept alive by the test as Patroni or a service registry would: one lease
shared by two keys (a leader key and its member key), one lease per other member. Every leased key of
the source must be on the standby, under a live destination lease, whatever the mirror's downtime, after
a switchover there and back, and with the source 30 ms away."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from harness.clirun import etcd_dr
from harness.mirroring import connect, pair_config, running, until
from harness.mirrorproc import MirrorProcess
from harness.proxy import FaultProxy

from etcd_dr.etcd import ClientConfig, EtcdClient, EtcdError, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster

Factory = Callable[..., EtcdCluster]
SVC = b"/svc/"


@contextlib.asynccontextmanager
async def kept_alive(target: Callable[[], EtcdClient], leases: Sequence[int]) -> AsyncIterator[None]:
    """Refresh `leases` every second on whatever cluster `target()` names at that moment (a client
    follows the primary), as the lease's owners would; all of them in one pass."""

    async def loop() -> None:
        while True:
            async with target().lease_keepalive() as ka:
                for lease in list(leases):
                    with contextlib.suppress(EtcdError):
                        await ka.refresh(lease)
            await asyncio.sleep(1.0)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def leased(c: EtcdClient, prefix: bytes = SVC) -> dict[bytes, int]:
    """Every key under `prefix` that has a live lease: key -> lease ID."""
    out: dict[bytes, int] = {}
    for kv in (await c.range(prefix, prefix_range_end(prefix))).kvs:
        if kv.lease and (await c.lease_time_to_live(kv.lease)).ttl > 0:
            out[kv.key] = kv.lease
    return out


async def patroni_like(
    s: EtcdClient, ttl: int, prefix: bytes = SVC, members: Sequence[str] = ("m1", "m2", "m3")
) -> list[int]:
    """A leader key and the leader's member key on one lease, one lease per other member."""
    leases = [(await s.lease_grant(ttl)).id for _ in members]
    await s.put(prefix + b"leader", members[0].encode(), lease=leases[0])
    for name, lease in zip(members, leases, strict=True):
        await s.put(prefix + b"members/" + name.encode(), b"{}", lease=lease)
    return leases


async def test_mirror_down_longer_than_the_ttl_starts_again_and_restores_leased_keys(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    ttl = 3
    mirror = MirrorProcess(
        dst.endpoints[0], src.endpoints[0], "--prefix", "/svc/", log_path=tmp_path / "m.log"
    )
    async with connect(src) as s, connect(dst) as d:
        leases = await patroni_like(s, ttl)
        await s.put(SVC + b"config", b"plain")
        want = await leased(s)
        assert len(want) == 4 and len(set(want.values())) == 3
        async with kept_alive(lambda: s, leases):
            try:
                mirror.start()
                await until(lambda: _has(d, want), 30, "first copy")
                assert await mirror.stop() == 0, mirror.log_text()[-2000:]
                # Down for longer than the TTL: the destination's leases expire, and their keys with them.
                await until(lambda: _none_leased(d), 3 * ttl + 5, "destination leases expired")
                mirror.start()
                await until(lambda: _has(d, want), 30, f"leased keys back\n{mirror.log_text()[-3000:]}")
                # And kept: more than a TTL later, still there, and the mirror still running.
                await asyncio.sleep(ttl + 2)
                assert await _has(d, want), mirror.log_text()[-3000:]
                assert mirror.running(), mirror.log_text()[-3000:]
                run = await etcd_dr(
                    "verify", dst.endpoints[0], "--endpoints", src.endpoints[0], "--prefix", "/svc/"
                )
                assert run.code == 0, run.stdout + run.stderr
                text = mirror.log_text()
                assert "leases: granting 3 leases again before any key is attached" in text, text[-3000:]
                assert "Traceback" not in text
            finally:
                await mirror.stop()


async def _has(d: EtcdClient, want: dict[bytes, int]) -> bool:
    return await leased(d) == want


async def _none_leased(d: EtcdClient) -> bool:
    kvs = (await d.range(SVC, prefix_range_end(SVC))).kvs
    return not [kv for kv in kvs if kv.lease]


async def test_switchover_there_and_back_keeps_every_leased_key_on_the_standby(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    ttl = 4
    async with connect(a) as ca, connect(b) as cb:
        primary = [ca]
        owned = await patroni_like(ca, ttl, SVC + b"a/", ("a1", "a2"))

        def mirror(dest: EtcdCluster, source: EtcdCluster, name: str) -> MirrorProcess:
            return MirrorProcess(
                dest.endpoints[0], source.endpoints[0], "--prefix", "/svc/", log_path=tmp_path / f"{name}.log"
            ).start()

        async def switch(to: EtcdCluster, frm: EtcdCluster, client: EtcdClient) -> None:
            # The mirror is stopped for the move: the lease owners, who follow the primary, refresh both
            # sites until it is done.
            async with kept_alive(lambda: client, owned):
                run = await etcd_dr(
                    "switchover", to.endpoints[0], "--endpoints", frm.endpoints[0],
                    "--prefix", "/svc/", "--no-fence", "--no-verify", timeout=90,
                )  # fmt: skip
                assert run.code == 0, run.stderr[-3000:]
                primary[0] = client

        async with kept_alive(lambda: primary[0], owned):
            ab = mirror(b, a, "a-to-b")
            try:
                await until(lambda: _equal_leased(ca, cb), 30, "A -> B copy")
            finally:
                await ab.stop()
            await switch(b, a, cb)
            # A service registers on B while B is the primary.
            owned.extend(await patroni_like(cb, ttl, SVC + b"b/", ("b1", "b2")))
            ba = mirror(a, b, "b-to-a")
            try:
                await until(lambda: _equal_leased(cb, ca, 6), 30, "B -> A, with B's leases")
                await asyncio.sleep(ttl + 2)
                assert await _equal_leased(cb, ca, 6), ba.log_text()[-3000:]
            finally:
                await ba.stop()
            await switch(a, b, ca)
            ab = mirror(b, a, "a-to-b-again")
            try:
                await until(lambda: _equal_leased(ca, cb, 6), 30, "A -> B again")
                # A TTL and more after the move back, nobody but the mirror refreshes B's copies.
                for _ in range(2):
                    await asyncio.sleep(ttl + 1)
                    want, got = await leased(ca), await leased(cb)
                    assert len(want) == 6 and got == want, (want, got, ab.log_text()[-3000:])
                assert "taking them over" in ab.log_text()
            finally:
                await ab.stop()


async def _equal_leased(s: EtcdClient, d: EtcdClient, n: int = 3) -> bool:
    want = await leased(s)
    return len(want) == n and await leased(d) == want


@pytest.mark.newest_etcd_only
async def test_many_leases_with_the_source_30ms_away_are_all_kept(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    n, ttl = 400, 4
    async with connect(src) as s, connect(dst) as d:
        leases = [(await s.lease_grant(ttl)).id for _ in range(n)]
        for i, lease in enumerate(leases):
            await s.put(SVC + b"svc-%04d" % i, b"x", lease=lease)
        with FaultProxy.to(src.endpoints[0]) as far:
            far.set_delay(0.015)  # a 30 ms round trip between the mirror and the source
            cfg = replace(
                pair_config(src, dst, prefix=SVC), source=ClientConfig.create([far.url()], role="source")
            )
            async with kept_alive(lambda: s, leases), running(cfg) as mirror:
                await until(lambda: _count(d, n), 60, "copy of the leased keys")
                # Three TTLs: every destination lease is kept alive all along.
                deadline = time.monotonic() + 3 * ttl
                while time.monotonic() < deadline:
                    got = await _count_keys(d)
                    assert got == n, f"{n - got} leased keys lost on the destination; {mirror.stats.problems}"
                    await asyncio.sleep(0.5)
                assert len(await d.leases()) >= n
                assert not mirror.stats.problems


async def _count_keys(d: EtcdClient) -> int:
    return (await d.range(SVC, prefix_range_end(SVC), count_only=True)).count


async def _count(d: EtcdClient, n: int) -> bool:
    return await _count_keys(d) == n


async def test_a_lost_destination_lease_is_flagged_until_its_keys_are_back(
    etcd_cluster_factory: Factory,
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with connect(src) as s, connect(dst) as d:
        leases = await patroni_like(s, 5)
        want = await leased(s)
        async with kept_alive(lambda: s, leases), running(pair_config(src, dst, prefix=SVC)) as mirror:
            flagged: list[str] = []
            flag = mirror.stats.flag

            def recording(kind: str, detail: str) -> None:
                flagged.append(f"{kind}: {detail}")
                flag(kind, detail)

            mirror.stats.flag = recording  # type: ignore[method-assign]
            await until(lambda: _has(d, want), 30, "first copy")
            # The destination loses the shared lease (leader and m1) while the source's lives.
            await d.lease_revoke(leases[0])
            assert len(await leased(d)) == 2
            await until(lambda: _has(d, want), 30, "keys restored under a live lease")
            assert any(f.startswith("lease_lost: ") and f"{leases[0]:x}" in f for f in flagged), flagged
            await until(lambda: not mirror.stats.problems, 10, "lease_lost cleared")
