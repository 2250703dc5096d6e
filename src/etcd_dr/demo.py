"""`etcd-dr demo`: two local 3-member etcd clusters with mutual TLS (one CA per site), the mirror
between them, and the source procedure narrated step by step. It ends every process it started and
removes its files on any exit, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .aio import cancel_and_wait
from .config import MirrorConfig
from .etcd import ClientConfig, EtcdClient, TransientError, prefix_range_end
from .mirror import Mirror
from .testing.binaries import EtcdBinaries, find
from .testing.cluster import EtcdCluster
from .testing.tls import ClusterTLS, make_cluster_tls

log = logging.getLogger("etcd_dr.demo")


def _client_config(cluster: EtcdCluster, tls: ClusterTLS, role: str, flag_prefix: str) -> ClientConfig:
    return ClientConfig.create(
        cluster.endpoints,
        cacert=tls.client.cacert,
        cert=tls.client.cert,
        key=tls.client.key,
        role=role,
        flag_prefix=flag_prefix,
    )


async def _wait_equal(src: EtcdClient, dst: EtcdClient, prefix: bytes, timeout: float = 30.0) -> float:
    """Seconds until the destination's prefix holds exactly what the source's does."""
    t0 = time.monotonic()
    end = prefix_range_end(prefix)
    while True:
        a = [(kv.key, kv.value) for kv in (await src.range(prefix, end)).kvs]
        b = [(kv.key, kv.value) for kv in (await dst.range(prefix, end)).kvs]
        if a == b:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the standby did not catch up within {timeout:g} s")
        await asyncio.sleep(0.02)


async def _app_put(client: EtcdClient, key: bytes, value: bytes) -> None:
    """The demo's application: a put retried while the cluster elects a new leader, as real clients do
    (the same put twice leaves the same value)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.put(key, value)
            return
        except TransientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def run_demo(say: Callable[[str], None], *, keep: bool = False, version: str | None = None) -> None:
    # The narration says what happens; the mirror's own info lines would only repeat it.
    for name in ("etcd_dr.mirror", "etcd_dr.etcd"):
        logging.getLogger(name).setLevel(logging.WARNING)
    binaries: EtcdBinaries = find(version)
    workdir = Path(tempfile.mkdtemp(prefix="etcd-dr-demo-"))
    clusters: list[EtcdCluster] = []
    mirror_task: asyncio.Task[object] | None = None
    try:
        say(f"etcd {binaries.version} ({binaries.etcd}); working directory {workdir}")
        say("1. Certificates: one CA per site, server/peer/client certificates (etcd-dr pki, not cfssl).")
        tls_a = make_cluster_tls(workdir / "site-a-pki", name="site-a")
        tls_b = make_cluster_tls(workdir / "site-b-pki", name="site-b")
        say(
            "2. Two 3-member clusters with mutual TLS for clients and peers: "
            "site A (primary), site B (standby)."
        )
        site_a = EtcdCluster(binaries, 3, tls=tls_a, name="site-a", base_dir=workdir)
        clusters.append(site_a)
        site_b = EtcdCluster(binaries, 3, tls=tls_b, name="site-b", base_dir=workdir)
        clusters.append(site_b)
        await asyncio.gather(asyncio.to_thread(site_a.start), asyncio.to_thread(site_b.start))
        say(f"   site A: {','.join(site_a.endpoints)}")
        say(f"   site B: {','.join(site_b.endpoints)}")
        src_cfg = _client_config(site_a, tls_a, "source", "")
        dst_cfg = _client_config(site_b, tls_b, "destination", "dest-")
        async with EtcdClient(src_cfg) as a, EtcdClient(dst_cfg) as b:
            say("3. Applications write to site A: 2,000 keys under /registry/.")
            for i in range(0, 2000, 100):
                await asyncio.gather(
                    *(a.put(b"/registry/pods/pod-%04d" % j, b"spec-%d" % j) for j in range(i, i + 100))
                )
            say("4. etcd-dr mirror A -> B (copy at one revision, then replay; checkpoint in site B).")
            config = MirrorConfig(source=src_cfg, dest=dst_cfg, status_interval=3600)
            mirror = Mirror(config)
            mirror_task = asyncio.create_task(mirror.run())
            took = await _wait_equal(a, b, b"/registry/")
            say(f"   site B holds the same 2,000 keys after {took:.2f} s.")
            say("5. New writes, overwrites and a prefix delete on site A appear on site B:")
            for j in range(10):
                await a.put(b"/registry/services/svc-%d" % j, b"v1")
            await a.put(b"/registry/pods/pod-0001", b"spec-1-updated")
            await a.delete_range(b"/registry/pods/pod-19", prefix_range_end(b"/registry/pods/pod-19"))
            took = await _wait_equal(a, b, b"/registry/")
            say(
                f"   equal again after {took * 1000:.0f} ms; "
                f"mirror at source revision {mirror.stats.applied_revision}."
            )
            say("6. A member of site A dies: the mirror moves to another member and loses nothing.")
            site_a.kill(0)
            for j in range(10, 20):
                await _app_put(a, b"/registry/services/svc-%d" % j, b"v1")
            took = await _wait_equal(a, b, b"/registry/")
            say(f"   equal after {took * 1000:.0f} ms with member 0 of site A down.")
            site_a.restart(0)
            say("7. Failover, failback and switchover arrive with the next release; the demo stops here.")
            if keep:
                say("   --keep: clusters and mirror keep running; Ctrl-C ends them. Reach them with:")
                for name, cl, t in (("A", site_a, tls_a), ("B", site_b, tls_b)):
                    say(
                        f"   site {name}: etcdctl --endpoints {','.join(cl.endpoints)} "
                        f"--cacert {t.client.cacert} --cert {t.client.cert} --key {t.client.key} "
                        "get --prefix /registry/ --keys-only"
                    )
                await asyncio.Event().wait()
    finally:
        await cancel_and_wait(mirror_task)
        for cl in clusters:
            cl.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        say("Stopped every process the demo started and removed its files.")
