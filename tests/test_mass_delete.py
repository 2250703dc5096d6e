"""The mass-delete guard: a source that reads empty, a re-sync or a replayed delete that would wipe most
of the standby is refused (the standby left intact) unless --allow-mass-delete is given."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import pytest

from etcd_dr import ClientConfig, MirrorConfig
from etcd_dr.errors import MassDeleteRefused
from etcd_dr.etcd import Delete, EtcdClient, Put, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror

Factory = Callable[..., EtcdCluster]


def cfg(src: EtcdCluster, dst: EtcdCluster, **kw: object) -> MirrorConfig:
    return MirrorConfig(
        source=ClientConfig.create(src.endpoints, role="source"),
        dest=ClientConfig.create(dst.endpoints, role="destination", flag_prefix="dest-"),
        prefix=b"/app/",
        **{"checkpoint_interval": 0.2, **kw},  # type: ignore[arg-type]
    )


async def count(c: EtcdClient, prefix: bytes = b"/app/") -> int:
    return (await c.range(prefix, prefix_range_end(prefix), count_only=True)).count


async def fill(c: EtcdClient, n: int, prefix: bytes = b"/app/k") -> None:
    for i in range(0, n, 100):
        await c.txn([], [Put(prefix + b"%05d" % j, b"v") for j in range(i, min(i + 100, n))])


async def test_source_that_reads_empty_is_refused(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with EtcdClient(ClientConfig.create(dst.endpoints)) as d:
        await fill(d, 10)  # a standby holding data, a source holding none under the prefix
        with pytest.raises(MassDeleteRefused, match="source reads empty"):
            await Mirror(cfg(src, dst, once=True)).run()
        assert await count(d) == 10
        await Mirror(cfg(src, dst, once=True, allow_mass_delete=True)).run()
        assert await count(d) == 0


async def test_resync_deleting_most_of_the_standby_is_refused(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        await fill(s, 400)
        await Mirror(cfg(src, dst, once=True)).run()
        # While no mirror runs, 300 of 400 keys go, then the source compacts past the checkpoint.
        await s.delete_range(b"/app/k000", prefix_range_end(b"/app/k000"))
        await s.delete_range(b"/app/k001", prefix_range_end(b"/app/k001"))
        await s.delete_range(b"/app/k002", prefix_range_end(b"/app/k002"))
        await s.compact((await s.put(b"/other", b"x")).header.revision)
        with pytest.raises(MassDeleteRefused, match="would delete 300 of the destination's 400 keys"):
            await Mirror(cfg(src, dst, once=True)).run()
        assert await count(d) == 400
        # A ratio that allows it (or --allow-mass-delete) applies it.
        await Mirror(cfg(src, dst, once=True, max_delete_ratio=0.8)).run()
        assert await count(d) == 100


async def test_replayed_mass_delete_is_refused_and_the_cli_says_so(etcd_cluster_factory: Factory) -> None:
    src = etcd_cluster_factory(name="src", extra_args=["--max-txn-ops=1000"])
    dst = etcd_cluster_factory(name="dst")
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        await fill(s, 300)
        await Mirror(cfg(src, dst, once=True)).run()
        # One source txn deleting 250 of the 300 keys.
        await s.txn([], [Delete(b"/app/k%05d" % i) for i in range(250)])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "etcd_dr", "mirror", dst.endpoints[0], "--endpoints", src.endpoints[0],
            "--prefix", "/app/", "--once", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        last = err.decode().strip().splitlines()[-1]
        assert proc.returncode == 2 and last.startswith("etcd-dr: error: ") and "--allow-mass-delete" in last
        assert await count(d) == 300
        await Mirror(cfg(src, dst, once=True, allow_mass_delete=True)).run()
        assert await count(d) == 50


def test_refusals_are_counted_in_the_metrics() -> None:
    from etcd_dr.metrics import MirrorCollector
    from etcd_dr.mirror import MirrorStats

    stats = MirrorStats()
    stats.errors["mass_delete_refused"] += 1
    samples = {
        (s.name, s.labels.get("kind")): s.value for m in MirrorCollector(stats).collect() for s in m.samples
    }
    assert samples[("etcd_dr_errors_total", "mass_delete_refused")] == 1
    assert samples[("etcd_dr_errors_total", "unavailable")] == 0
