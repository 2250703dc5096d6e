"""`etcd-dr verify` against real etcd: every kind of difference, none on an equal pair while a mirror
runs, rewritten prefixes, the JSON shape, and exit codes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable

from harness.workload import Workload

from etcd_dr import ClientConfig, MirrorConfig
from etcd_dr.etcd import EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.verify import verify

Factory = Callable[..., EtcdCluster]


def cfg(src: EtcdCluster, dst: EtcdCluster, **kw: object) -> MirrorConfig:
    return MirrorConfig(
        source=ClientConfig.create(src.endpoints, role="source"),
        dest=ClientConfig.create(dst.endpoints, role="destination", flag_prefix="dest-"),
        checkpoint_interval=0.2,
        **kw,  # type: ignore[arg-type]
    )


def client(c: EtcdCluster) -> EtcdClient:
    return EtcdClient(ClientConfig.create(c.endpoints))


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "etcd_dr", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_every_kind_of_difference_under_rewritten_prefix(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s, client(dst) as d:
        for i in range(50):
            await s.put(b"/app/k%02d" % i, b"v%d" % i)
        config = cfg(src, dst, prefix=b"/app/", dest_prefix=b"/copy/", once=True)
        await Mirror(config).run()
        equal = await verify(config)
        assert equal.equal and equal.keys == 50 and equal.behind == 0
        # Plant one of each kind on the destination, and a change outside the mapped range.
        await d.delete_range(b"/copy/k01")
        await d.put(b"/copy/zz-extra", b"x")
        await d.put(b"/copy/k02", b"changed")
        await d.put(b"/app/k03", b"outside the mapped range: not compared")
        await d.put(b"/copy/\xff\xfe", b"binary key")
        r = await verify(config)
        assert not r.equal
        assert r.missing == [b"/copy/k01"]
        assert r.extra == [b"/copy/zz-extra", b"/copy/\xff\xfe"]
        assert r.different == [b"/copy/k02"]
        code, out, err = await run_cli(
            "verify", dst.endpoints[0], "--endpoints", src.endpoints[0], "--prefix", "/app/",
            "--dest-prefix", "/copy/", "--json",
        )  # fmt: skip
        assert code == 1, err
        doc = json.loads(out)
        assert doc["equal"] is False and doc["keys"] == 50
        assert doc["missing"] == ["/copy/k01"] and doc["different"] == ["/copy/k02"]
        assert doc["extra"] == ["/copy/zz-extra", "base64:L2NvcHkv//4="]
        assert set(doc) >= {"source_revision", "dest_revision"}
        code, out, _ = await run_cli(
            "verify",
            dst.endpoints[0],
            "--endpoints",
            src.endpoints[0],
            "--prefix",
            "/app/",
            "--dest-prefix",
            "/copy/",
        )
        lines = out.strip().splitlines()
        assert code == 1
        assert (
            "missing /copy/k01" in lines
            and "different /copy/k02" in lines
            and "extra /copy/zz-extra" in lines
        )
        assert lines[-1].startswith("1 missing, 2 extra, 1 different")


async def test_no_difference_while_the_mirror_runs(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with client(src) as s:
        await Workload(s, seed=1).run(200)
        config = cfg(src, dst, prefix=b"/app/")
        mirror = Mirror(config)
        task = asyncio.create_task(mirror.run())
        try:
            stop = asyncio.Event()
            writer = asyncio.create_task(Workload(s, seed=2).run(stop=stop, rate=200))
            checks = []
            for _ in range(8):
                await asyncio.sleep(0.25)
                checks.append(await verify(config))
            stop.set()
            await writer
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert all(r.equal for r in checks), [r.summary() for r in checks if not r.equal]
    assert all(r.checkpoint_revision is not None for r in checks)
    assert any(r.keys > 0 for r in checks)


async def test_equal_exit_0_and_same_cluster_refused(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    src.etcdctl("put", "/a", "1")
    dst.etcdctl("put", "/a", "1")
    code, out, err = await run_cli("verify", dst.endpoints[0], "--endpoints", src.endpoints[0])
    assert code == 0, err
    assert out.strip() == "equal: 1 keys"
    code, _, err = await run_cli("verify", src.endpoints[0], "--endpoints", src.endpoints[0])
    assert code == 2 and err.strip().splitlines()[-1].startswith("etcd-dr: error: ") and "same cluster" in err
