"""The command line as a user meets it: exit codes, the one-line error, nothing written on bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.clirun import assert_refused, etcd_dr, tls_flags

from etcd_dr.etcd import ClientConfig, EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import make_cluster_tls

Factory = Callable[..., EtcdCluster]


async def keys(cluster: EtcdCluster, **tls: object) -> list[bytes]:
    async with EtcdClient(ClientConfig.create(cluster.endpoints, **tls)) as c:  # type: ignore[arg-type]
        return [kv.key for kv in (await c.range(b"\0", b"\0", keys_only=True)).kvs]


async def test_once_mirrors_and_exits_0(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    src.etcdctl("put", "/a", "1")
    run = await etcd_dr("mirror", dst.endpoints[0], "--endpoints", src.endpoints[0], "--once")
    assert run.code == 0, run.stderr
    assert dst.etcdctl("get", "/a", "--print-value-only").strip() == "1"


async def test_tls_mirror_between_sites_with_their_own_cas(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    a = make_cluster_tls(tmp_path / "a", name="site-a")
    b = make_cluster_tls(tmp_path / "b", name="site-b")
    src = etcd_cluster_factory(name="src", tls=a)
    dst = etcd_cluster_factory(name="dst", tls=b)
    src.etcdctl("put", "/tls", "ok")
    run = await etcd_dr(
        "mirror", ",".join(dst.endpoints), "--endpoints", ",".join(src.endpoints),
        "--cacert", str(a.client.cacert), "--cert", str(a.client.cert), "--key", str(a.client.key),
        *tls_flags("dest-", b.client.cacert, b.client.cert, b.client.key), "--once",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert dst.etcdctl("get", "/tls", "--print-value-only").strip() == "ok"


async def test_wrong_ca_is_one_line_and_nothing_written(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    a = make_cluster_tls(tmp_path / "a", name="site-a")
    b = make_cluster_tls(tmp_path / "b", name="site-b")
    src = etcd_cluster_factory(name="src", tls=a)
    dst = etcd_cluster_factory(name="dst", tls=b)
    src.etcdctl("put", "/x", "1")
    # The destination's CA is given for the source: the source's server certificate is not trusted.
    run = await etcd_dr(
        "mirror", dst.endpoints[0], "--endpoints", src.endpoints[0],
        "--cacert", str(b.client.cacert), "--cert", str(a.client.cert), "--key", str(a.client.key),
        *tls_flags("dest-", b.client.cacert, b.client.cert, b.client.key), "--once",
    )  # fmt: skip
    assert_refused(run, "source endpoint", src.endpoints[0].split("//")[1], "--cacert")
    tls = {"cacert": b.client.cacert, "cert": b.client.cert, "key": b.client.key}
    assert await keys(dst, **tls) == []


async def test_unreadable_tls_file(etcd_cluster_factory: Factory, tmp_path: Path) -> None:
    dst = etcd_cluster_factory(name="dst")
    missing = tmp_path / "nope.pem"
    run = await etcd_dr("mirror", dst.endpoints[0], "--cacert", str(missing))
    assert_refused(run, "--cacert", str(missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    run = await etcd_dr(
        "mirror", dst.endpoints[0], "--dest-cacert", str(garbage), "--endpoints", dst.endpoints[0]
    )
    assert_refused(run, "--dest-cacert", str(garbage))
    assert await keys(dst) == []


async def test_auth_failure_is_fatal_at_once(etcd_cluster_factory: Factory) -> None:
    src = etcd_cluster_factory(name="src", auth=("root", "rootpw"))
    dst = etcd_cluster_factory(name="dst")
    run = await etcd_dr(
        "mirror", dst.endpoints[0], "--endpoints", src.endpoints[0], "--user", "root:wrong", timeout=30
    )
    assert_refused(run, "authentication failed", "root")
    assert await keys(dst) == []
    ok = await etcd_dr(
        "mirror", dst.endpoints[0], "--endpoints", src.endpoints[0], "--user", "root:rootpw", "--once"
    )
    assert ok.code == 0, ok.stderr


async def test_same_cluster_is_refused(etcd_cluster_factory: Factory) -> None:
    c = etcd_cluster_factory(name="one")
    run = await etcd_dr("mirror", c.endpoints[0], "--endpoints", c.endpoints[0])
    assert_refused(run, "same cluster")
    assert await keys(c) == []


async def test_bad_flags_and_endpoints() -> None:
    assert_refused(await etcd_dr("mirror", "127.0.0.1:2379", "--endpoints", "http://:12"), "http://:12")
    assert_refused(await etcd_dr("mirror", "ftp://x:1"), "ftp://x:1")
    assert_refused(
        await etcd_dr("mirror", "127.0.0.1:1", "--dest-prefix", "/a", "--no-dest-prefix"), "--no-dest-prefix"
    )
    assert_refused(await etcd_dr("mirror", "127.0.0.1:1", "--frobnicate"), "--frobnicate")
    assert_refused(await etcd_dr("mirror", "127.0.0.1:1", "--max-txn-ops", "1"), "--max-txn-ops")
    assert_refused(await etcd_dr("mirror", "127.0.0.1:1", "--cert", "/tmp/x.pem"), "--key")
    assert_refused(await etcd_dr("mirror"), "DEST")


async def test_once_with_unreachable_destination_gives_up_after_timeout(
    etcd_cluster_factory: Factory,
) -> None:
    src = etcd_cluster_factory(name="src")
    run = await etcd_dr("mirror", "127.0.0.1:9", "--endpoints", src.endpoints[0], "--once", "--timeout", "1")
    assert_refused(run, "destination", "127.0.0.1:9", "--timeout")
