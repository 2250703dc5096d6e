"""A standby whose health tells the truth, and which only its mirror writes (issue 12, finding 4), on
real etcd, every version found:

- a client writing into the standby's mirrored range by mistake is seen, counted, flagged (/healthz 503
  with the reason, the health record on the destination) and put back to the source's state; a lease
  the mirror revokes on the destination is not taken for a foreign write;
- a periodic verify that finds a difference (one the foreign-write watch is told not to see) flags it,
  the health record says so, and an equal verify later clears it;
- --fence-standby on a destination with auth refuses an application user's write on the standby.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from harness.clirun import etcd_dr
from harness.mirroring import connect, pair_config, running, wait_equal
from harness.mirrorproc import MirrorProcess

from etcd_dr.config import DEFAULT_STATE_PREFIX
from etcd_dr.etcd import ClientConfig, EtcdClient, PermissionDenied
from etcd_dr.local.cluster import EtcdCluster, free_ports
from etcd_dr.mirror import Mirror
from etcd_dr.state import StateLayout
from etcd_dr.state.records import HealthRecord
from etcd_dr.verify import verify, verify_in_segments

Factory = Callable[..., EtcdCluster]
SP = DEFAULT_STATE_PREFIX


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # not listening yet
        return 0, str(e)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def value(c: EtcdClient, key: bytes) -> bytes | None:
    kv = await c.get(key)
    return None if kv is None else kv.value


async def health_record(source: EtcdClient, dest: EtcdClient, prefix: bytes) -> HealthRecord | None:
    cluster_id = (await source.status()).cluster_id
    kv = await dest.get(StateLayout(SP).health(cluster_id, prefix, prefix))
    return None if kv is None else HealthRecord.decode(kv.value)


def start_mirror(src: EtcdCluster, dst: EtcdCluster, tmp_path: Path, *args: str) -> tuple[MirrorProcess, int]:
    (port,) = free_ports(1)
    proc = MirrorProcess(
        dst.endpoints[0],
        src.endpoints[0],
        "--prefix",
        "/app/",
        "--metrics-addr",
        f"127.0.0.1:{port}",
        *args,
        log_path=tmp_path / "mirror.log",
    )
    return proc.start(), port


async def test_a_foreign_write_on_the_standby_is_seen_counted_flagged_and_put_back(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with connect(src) as s, connect(dst) as d:
        await s.put(b"/app/a", b"a1")
        await s.put(b"/app/b", b"b1")
        lease = (await s.lease_grant(60)).id
        await s.put(b"/app/leased", b"l1", lease=lease)
        mirror, port = start_mirror(src, dst, tmp_path, "--verify-every", "off")
        try:
            await until(lambda: _is(d, b"/app/leased", b"l1"), "the copy")
            code, body = await asyncio.to_thread(scrape, port, "/healthz")
            assert code == 200, body

            # A client pointed at the standby by mistake: a put over a mirrored key, a new key, a delete.
            wrong = await d.put(b"/app/a", b"WRONG")
            await d.put(b"/app/new", b"not on the source")
            await d.delete_range(b"/app/b")

            async def restored() -> bool:
                return (
                    await value(d, b"/app/a") == b"a1"
                    and await value(d, b"/app/b") == b"b1"
                    and await value(d, b"/app/new") is None
                )

            await until(restored, "the source's state put back on the standby")
            code, body = await asyncio.to_thread(scrape, port, "/healthz")
            assert code == 503 and "foreign_write" in body, body
            text = (await asyncio.to_thread(scrape, port, "/metrics"))[1]
            assert metric(text, "etcd_dr_foreign_writes_total") == 3
            assert 'etcd_dr_problem{kind="foreign_write"} 1.0' in text

            async def recorded() -> bool:
                rec = await health_record(s, d, b"/app/")
                return rec is not None and rec.foreign_writes == 3

            await until(recorded, "the health record")
            rec = await health_record(s, d, b"/app/")
            assert rec is not None and "foreign_write" in rec.problems
            assert rec.last_foreign_key == "/app/b"
            assert rec.last_foreign_revision > wrong.header.revision

            log = mirror.log_text()
            assert f"put of /app/a at destination revision {wrong.header.revision}" in log
            assert "restore: /app/a put back to the source's value" in log
            assert "restore: /app/new deleted (the source has no such key)" in log

            # The mirror goes on, and what it does itself (a put; a source lease ended, its keys
            # removed and its destination lease revoked) is not a foreign write.
            await s.put(b"/app/a", b"a2")
            await s.lease_revoke(lease)
            await until(lambda: _is(d, b"/app/a", b"a2"), "the mirror goes on")
            await until(lambda: _is(d, b"/app/leased", None), "the leased key removed")
            await asyncio.sleep(1.5)
            text = (await asyncio.to_thread(scrape, port, "/metrics"))[1]
            assert metric(text, "etcd_dr_foreign_writes_total") == 3, mirror.log_text()
        finally:
            assert await mirror.stop() == 0, mirror.log_text()


async def _is(c: EtcdClient, key: bytes, want: bytes | None) -> bool:
    return await value(c, key) == want


async def test_periodic_verify_flags_a_difference_and_clears_it_when_equal(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with connect(src) as s, connect(dst) as d:
        for i in range(20):
            await s.put(b"/app/k%02d" % i, b"v%d" % i)
        # The foreign-write watch would put the key back at once: told not to watch, the periodic
        # verify is what finds it.
        mirror, port = start_mirror(
            src, dst, tmp_path, "--verify-every", "0.5s", "--foreign-writes", "ignore"
        )
        try:

            async def verified_equal() -> bool:
                rec = await health_record(s, d, b"/app/")
                return rec is not None and rec.verify is not None and rec.verify.equal

            await until(verified_equal, "an equal periodic verify in the health record")
            await d.delete_range(b"/app/k07")

            async def flagged() -> bool:
                rec = await health_record(s, d, b"/app/")
                return rec is not None and "verify_differs" in rec.problems

            await until(flagged, "verify_differs in the health record")
            rec = await health_record(s, d, b"/app/")
            assert rec is not None and rec.verify is not None
            assert not rec.verify.equal and rec.verify.differences == 1 and rec.verify.keys == 20
            assert "/app/k07" in rec.problems["verify_differs"]
            code, body = await asyncio.to_thread(scrape, port, "/healthz")
            assert code == 503 and "verify_differs" in body, body
            assert "periodic verify: missing on the standby: /app/k07" in mirror.log_text()

            await d.put(b"/app/k07", b"v7")  # made equal again
            await until(
                lambda: _no_problems(s, d), "the flag cleared by an equal verify in the health record"
            )
            code, body = await asyncio.to_thread(scrape, port, "/healthz")
            assert code == 200, body
        finally:
            assert await mirror.stop() == 0, mirror.log_text()


async def _no_problems(s: EtcdClient, d: EtcdClient) -> bool:
    rec = await health_record(s, d, b"/app/")
    return rec is not None and not rec.problems and rec.verify is not None and rec.verify.equal


async def test_foreign_writes_report_only_leaves_the_key_and_flags_it(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with connect(src) as s, connect(dst) as d:
        await s.put(b"/app/a", b"a1")
        config = pair_config(src, dst, prefix=b"/app/", foreign_writes="report", verify_every=None)
        async with running(config) as mirror:
            await until(lambda: _is(d, b"/app/a", b"a1"), "the copy")
            await d.put(b"/app/a", b"WRONG")

            async def flagged() -> bool:
                return "foreign_write" in mirror.stats.problems

            await until(flagged, "foreign_write flagged")
            await asyncio.sleep(1.0)  # what a restore would have done by now
            assert await value(d, b"/app/a") == b"WRONG"
            assert mirror.stats.foreign_writes == 1 and mirror.stats.last_foreign_key == "/app/a"


async def test_the_mirrors_own_writes_under_load_are_not_foreign(etcd_cluster_factory: Factory) -> None:
    """Copy and replay under concurrent source writes (puts, deletes, a txn of several keys, a leased
    key whose lease is revoked): not one of the mirror's writes is taken for a foreign one."""
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with connect(src) as s, connect(dst) as d:
        for i in range(200):
            await s.put(b"/app/c%03d" % i, b"copied")
        config = pair_config(src, dst, prefix=b"/app/", verify_every=None, max_txn_ops=16)
        async with running(config) as mirror:
            lease = (await s.lease_grant(60)).id
            keys = iter(range(600))

            async def writer() -> None:
                for i in keys:
                    if i % 5 == 4:
                        await s.delete_range(b"/app/k%03d" % (i - 1))
                    elif i % 50 == 7:
                        await s.put(b"/app/l%03d" % i, b"leased", lease=lease)
                    else:
                        await s.put(b"/app/k%03d" % i, b"v")

            await asyncio.gather(*(writer() for _ in range(16)))
            await s.lease_revoke(lease)
            await wait_equal(s, d, b"/app/", timeout=60)
            await asyncio.sleep(1.5)  # the foreign-write watch has judged every revision by now
            assert mirror.stats.foreign_writes == 0, mirror.stats.problems
            assert "foreign_write" not in mirror.stats.problems


async def test_fence_standby_refuses_an_application_write(etcd_cluster_factory: Factory) -> None:
    src = etcd_cluster_factory(name="src")
    dst = etcd_cluster_factory(name="dst", auth=("root", "rootpw"))
    ctl = dst.etcdctl
    ctl("role", "add", "app")
    ctl("role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true")
    ctl("user", "add", "app:apppw")
    ctl("user", "grant-role", "app", "app")
    ctl("user", "add", "etcd-dr:drpw")
    ctl("user", "grant-role", "etcd-dr", "root")

    def dest_as(user: str, password: str) -> ClientConfig:
        return ClientConfig.create(
            dst.endpoints, role="destination", flag_prefix="dest-", user=user, password=password
        )

    async with EtcdClient(dest_as("app", "apppw")) as app:
        await app.put(b"/app/before", b"the application may write before the fence")
    base = pair_config(src, dst, prefix=b"/app/", fence_standby=True)
    config = replace(base, dest=dest_as("etcd-dr", "drpw"))
    async with connect(src) as s, EtcdClient(dest_as("app", "apppw")) as app:
        await s.put(b"/app/x", b"1")
        async with running(config) as mirror:
            await until(lambda: _is(app, b"/app/x", b"1"), "the copy", timeout=30)
            with pytest.raises(PermissionDenied):
                await app.put(b"/app/x", b"by mistake")
            await s.put(b"/app/x", b"2")  # the mirror itself still writes
            await until(lambda: _is(app, b"/app/x", b"2"), "the mirror writes through the fence")
            assert mirror.stats.foreign_writes == 0
    # Recorded where a move finds it (a promotion lifts it).
    async with EtcdClient(dest_as("etcd-dr", "drpw")) as dr:
        assert await dr.get(SP + b"fence") is not None


async def test_fence_standby_without_auth_is_refused(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    run = await etcd_dr("mirror", dst.endpoints[0], "--endpoints", src.endpoints[0], "--fence-standby")
    assert run.code == 2, run.stderr
    assert run.last_line == (
        f"etcd-dr: error: --fence-standby: etcd auth is not enabled on the destination {dst.endpoints[0]}, "
        "so its writes cannot be fenced; enable auth there (with a user holding the root role for the "
        "mirror), or run without --fence-standby"
    )


@pytest.mark.parametrize("dest_prefix", [None, b"/copy/"])
async def test_the_periodic_verify_in_segments_finds_what_verify_finds(
    etcd_cluster_factory: Factory, dest_prefix: bytes | None
) -> None:
    """Segments of 5 keys (pages of 3): every difference at a segment's edge or past the last source
    key is found, the same as one whole verify finds, with the keys mapped."""
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    dp = b"/app/" if dest_prefix is None else dest_prefix
    async with connect(src) as s, connect(dst) as d:
        for i in range(23):
            await s.put(b"/app/k%02d" % i, b"v%d" % i)
        await s.put(b"/app/skip/x", b"excluded")
        config = pair_config(
            src, dst, prefix=b"/app/", dest_prefix=dest_prefix, excludes=(b"/app/skip/",), once=True
        )
        await Mirror(config).run()
        await d.delete_range(dp + b"k04")  # the last key of the first segment
        await d.put(dp + b"k05", b"changed")  # the first of the second
        await d.put(dp + b"k04x", b"extra between segments")
        await d.put(dp + b"zz", b"extra past the last source key")
        await d.put(b"/app0", b"outside the range")
        whole = await verify(config)
        parts = await verify_in_segments(config, rate=None, page_size=3, segment_keys=5)
        assert (parts.missing, parts.extra, parts.different) == (whole.missing, whole.extra, whole.different)
        assert parts.missing == [dp + b"k04"] and parts.different == [dp + b"k05"]
        assert parts.extra == [dp + b"k04x", dp + b"zz"]
        assert parts.keys == whole.keys == 23


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--verify-rate", "0"), "--verify-rate '0': must be above 0"),
        (("--verify-rate", "fast"), "--verify-rate 'fast': expected a size"),
        (("--foreign-writes", "sometimes"), "'--foreign-writes': 'sometimes' is not one of 'restore'"),
    ],
)
async def test_bad_verify_options_are_refused(args: tuple[str, ...], needle: str) -> None:
    run = await etcd_dr("mirror", "http://127.0.0.1:1", "--endpoints", "http://127.0.0.1:2", *args)
    assert run.code == 2 and needle in run.last_line, run.stderr
