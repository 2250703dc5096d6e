"""Network partitions between two sites: the source etcd in one network namespace, the destination in
another, joined by a veth link that the test cuts and heals; the mirror (a real `etcd-dr mirror`
process) runs in one of the sites. The mirror must ride the partitions out and end equal, exactly once.
Skipped where network namespaces cannot be made (not root, no iproute2, not permitted)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.history import check_exactly_once
from harness.mirroring import connect, wait_equal
from harness.mirrorproc import MirrorProcess, read_checkpoint, wait_caught_up
from harness.netns import NetnsUnavailable, TwoSites
from harness.workload import Workload

from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.state import StateLayout

pytestmark = pytest.mark.netns

STATE = b"/etcd-dr/"
PREFIX = b"/app/"
Factory = Callable[..., EtcdCluster]


@pytest.fixture
def sites() -> Iterator[TwoSites]:
    try:
        made = TwoSites().start()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces cannot be made here: {exc}")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def site_factory(sites: TwoSites, etcd_cluster_factory: Factory) -> Factory:
    # Depends on `sites` first, so its clusters are stopped before the namespaces are removed.
    return etcd_cluster_factory


@pytest.mark.newest_etcd_only  # the subject is the mirror's network handling, not the server
@pytest.mark.parametrize("mirror_at", ["dest-site", "source-site"])
async def test_partition_between_sites_cut_and_healed(
    sites: TwoSites, site_factory: Factory, tmp_path: Path, mirror_at: str
) -> None:
    a, b = sites.a, sites.b
    src = site_factory(name="src", **a.cluster_options())
    dst = site_factory(name="dst", **b.cluster_options())
    src_port, dst_port = src.members[0].client_port, dst.members[0].client_port
    if mirror_at == "dest-site":
        # Destination local, source across the link.
        home, far = b, a
        source_ep, dest_ep = f"http://{a.link_address}:{src_port}", f"http://127.0.0.1:{dst_port}"
    else:
        home, far = a, b
        source_ep, dest_ep = f"http://127.0.0.1:{src_port}", f"http://{b.link_address}:{dst_port}"
    mirror = MirrorProcess(
        dest_ep,
        source_ep,
        "--prefix", "/app/", "--max-txn-ops", "16",
        log_path=tmp_path / "mirror.log",
        command_prefix=home.exec_prefix,
    )  # fmt: skip
    async with connect(src) as s, connect(dst) as d:
        key = StateLayout(STATE).checkpoint((await s.status()).cluster_id, PREFIX, PREFIX)
        await Workload(s, seed=41).run(200)
        mirror.start()
        stop = asyncio.Event()
        writer = asyncio.create_task(Workload(s, seed=42, max_txn=12).run(stop=stop, rate=150))
        try:
            await wait_caught_up(s, d, key, timeout=60)
            await asyncio.sleep(2)  # the replay under way
            await wait_caught_up(s, d, key, timeout=60)
            # Long enough for the mirror's keepalive to declare the link dead, then short (TCP's own
            # retransmission carries it), each time cut at the end away from the mirror: seen from the
            # mirror, its packets just vanish.
            for cut_seconds in (10.0, 2.5):
                assert mirror.running(), mirror.log_text()[-3000:]
                sites.cut(at=far)
                await asyncio.sleep(1.5)  # what was in flight lands (or is lost) by now
                during = await read_checkpoint(d, key)
                rev_at_cut = (await s.status()).revision
                await asyncio.sleep(cut_seconds - 1.5)
                still = await read_checkpoint(d, key)
                rev_at_heal = (await s.status()).revision
                sites.heal()
                # A real partition: the source kept taking writes; the destination heard nothing.
                assert rev_at_heal - rev_at_cut > 50
                assert during == still, "the destination moved while the sites were cut apart"
                await wait_caught_up(s, d, key, timeout=60)
            stop.set()
            await writer
            await wait_caught_up(s, d, key, timeout=60)
            await wait_equal(s, d, PREFIX, timeout=30)
            assert mirror.running(), mirror.log_text()[-3000:]
            assert await mirror.stop() == 0, mirror.log_text()[-3000:]
        except BaseException:
            print(f"mirror log (tail):\n{mirror.log_text()[-6000:]}")
            raise
        finally:
            stop.set()
            mirror.kill()
            sites.heal()
        report = await check_exactly_once(s, d, KeyMapper.create(PREFIX, None, (), STATE), key)
        assert report.copies == 1 and report.source_ops_checked > 500
        log = mirror.log_text()
        assert "Traceback" not in log, log[-3000:]


# Run inside a site: connect across the (cut) link and name the error of each attempt.
_PROBE = """
import asyncio, sys
from etcd_dr import ClientConfig
from etcd_dr.etcd import EtcdClient

async def main() -> None:
    async with EtcdClient(ClientConfig.create(sys.argv[1])) as c:
        for _ in range(int(sys.argv[2])):
            try:
                await c.status()
                print("ok")
            except Exception as e:
                print(type(e).__name__, e)
            await asyncio.sleep(0.2)

asyncio.run(main())
"""


def test_unreachable_across_a_cut_link_is_unavailable_not_a_tls_error(sites: TwoSites) -> None:
    # A TCP connect that gets no answer ends in grpc's "tcp handshaker shutdown": a transient fault,
    # retried forever by the mirror, not a TLS failure (fatal at once). It once ended the mirror
    # daemon during a partition with "TLS handshake failed" on a plain-text channel.
    sites.cut(at=sites.a)
    out = subprocess.run(
        [*sites.b.exec_prefix, sys.executable, "-c", _PROBE, f"{sites.a.link_address}:2379", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert len(lines) == 8, out
    assert all(line.startswith("Unavailable ") for line in lines), out
