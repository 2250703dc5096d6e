"""Data at the edges, through the mirror (issue 8, item 4): keys of arbitrary bytes (not UTF-8, NUL
inside, 0xff), empty values, values up to etcd's default request limit (1.5 MiB), and source txns
larger than what the destination accepts in one request, which the mirror must split, not die on.
Each ends with the destination equal (`etcd-dr verify` exit 0) and, where the histories allow, the
exactly-once check."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest
from harness.clirun import assert_refused, etcd_dr
from harness.history import check_exactly_once
from harness.mirroring import connect, dump, pair_config, running, until, wait_equal

from etcd_dr.config import MirrorConfig
from etcd_dr.etcd import Delete, EtcdClient, Put
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.mirror.keys import KeyMapper

Factory = Callable[..., EtcdCluster]
STATE = b"/etcd-dr/"
KiB = 1024
MiB = 1024 * KiB
# A single put this big fits etcd's default --max-request-bytes (1.5 MiB) with room for the txn around
# it: the mirror must carry it alone in a txn with its checkpoint.
BIG = 1400 * KiB

ODD_KEYS = [
    b"\x00",  # the very first key of the keyspace
    b"\x00\x00\x01",
    b"/odd/nul\x00inside",
    b"/odd/\xff\xfe\xfd",  # not UTF-8
    b"/odd/caf\xe9",  # latin-1, not UTF-8
    b"/odd/line\nbreak\ttab",
    b"/odd/" + bytes(range(256)),
    b"\xff",
    b"\xff\xff\xff\xff",  # near the end of the keyspace
]


async def verify_cli(src: EtcdCluster, dst: EtcdCluster, *flags: str) -> tuple[int, str, str]:
    run = await etcd_dr("verify", dst.endpoints[0], "--endpoints", src.endpoints[0], *flags, timeout=120)
    return run.code, run.stdout, run.stderr


def ckpt_key(config: MirrorConfig, source_id: int) -> bytes:
    return config.layout.checkpoint(source_id, config.prefix, config.effective_dest_prefix)


async def test_arbitrary_keys_empty_and_large_values(etcd_cluster_factory: Factory) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    config = pair_config(src, dst)  # the whole keyspace: keys from \x00 to \xff\xff...
    async with connect(src) as s, connect(dst) as d:
        for i, key in enumerate(ODD_KEYS):
            await s.put(key, b"" if i % 2 else bytes([i]) * 10)
        await s.put(b"/big/copied", b"c" * BIG)
        await s.put(b"/empty", b"")
        async with running(config) as mirror:
            await wait_equal(s, d, timeout=60)
            assert mirror.stats.phase == "replay"
            # The same through the replay: puts, an empty value over a full one, a big value, deletes,
            # a txn of odd keys, a prefix delete whose range ends in 0xff.
            await s.put(b"/odd/\xff\xfe\xfd", b"")
            await s.put(b"/odd/new\x00\xff", b"\x00\xff" * 1000)
            await s.put(b"/big/replayed", b"r" * BIG)
            await s.put(b"/big/copied", b"")
            await s.delete_range(b"\x00")
            await s.txn([], [Put(b"/odd/t\x01", b""), Put(b"/odd/t\xff", b"v"), Delete(b"/odd/caf\xe9")])
            await s.delete_range(b"\xff", b"\x00")  # from \xff to the end of the keyspace
            await s.put(b"\xff\x00", b"after the range delete")
            await wait_equal(s, d, timeout=60)
        got = await dump(d)
        assert got[b"/big/replayed"] == b"r" * BIG and got[b"/big/copied"] == b""
        assert got[b"/odd/new\x00\xff"] == b"\x00\xff" * 1000
        assert b"\x00" not in got and b"\xff\xff\xff\xff" not in got and got[b"\xff\x00"]
        source_id = (await s.status()).cluster_id
        report = await check_exactly_once(s, d, KeyMapper.from_config(config), ckpt_key(config, source_id))
        assert report.copies == 1 and report.source_ops_checked == 11

        code, out, err = await verify_cli(src, dst)
        assert code == 0, (out, err)
        assert out.startswith("equal: "), out
        # A difference on an odd key is named in base64 in --json, and in the summary.
        await d.delete_range(b"/odd/\xff\xfe\xfd")
        code, out, err = await verify_cli(src, dst, "--json")
        assert code == 1, err
        doc = json.loads(out)
        assert doc["missing"] == ["base64:L29kZC///v0="], doc


async def test_source_txn_over_the_destination_limit_is_split(
    etcd_cluster_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The source accepts requests of 8 MiB, the destination etcd's default 1.5 MiB: a 4.4 MiB source
    txn reaches the destination in several txns (the log says so), and so does the initial copy."""
    caplog.set_level(logging.INFO, "etcd_dr")
    src = etcd_cluster_factory(name="src", extra_args=["--max-request-bytes=8388608"])
    dst = etcd_cluster_factory(name="dst")
    config = pair_config(src, dst, prefix=b"/app/")
    async with connect(src) as s, connect(dst) as d:
        await s.txn([], [Put(b"/app/copy/%d" % i, bytes([i]) * 1100 * KiB) for i in range(4)])
        async with running(config) as mirror:
            await wait_equal(s, d, b"/app/", timeout=60)
            # The copy's keys are on the destination before its closing checkpoint moves it to replay.
            await until(lambda: mirror.stats.phase == "replay", 30, "the copy's end")
            await s.txn(
                [],
                [Put(b"/app/replay/%d" % i, bytes([i]) * 1100 * KiB) for i in range(4)]
                + [Put(b"/app/small/%d" % i, b"s") for i in range(10)]
                + [Delete(b"/app/copy/0")],
            )
            await wait_equal(s, d, b"/app/", timeout=60)
        assert "so it is not atomic on the destination" in caplog.text
        source_id = (await s.status()).cluster_id
        report = await check_exactly_once(s, d, KeyMapper.from_config(config), ckpt_key(config, source_id))
        assert report.copies == 1
        code, out, err = await verify_cli(src, dst, "--prefix", "/app/")
        assert code == 0, (out, err)


async def test_destination_with_a_smaller_request_limit(
    etcd_cluster_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """A destination whose --max-request-bytes is below the mirror's txn size (1 MiB of keys and
    values): its "request is too large" makes the mirror use smaller txns, in the copy and the replay,
    instead of ending."""
    caplog.set_level(logging.INFO, "etcd_dr")
    src = etcd_cluster_factory(name="src")
    dst = etcd_cluster_factory(name="dst", extra_args=[f"--max-request-bytes={256 * KiB}"])
    config = pair_config(src, dst, prefix=b"/app/")
    async with connect(src) as s, connect(dst) as d:
        for i in range(12):
            await s.put(b"/app/copy/%02d" % i, bytes([i]) * 100 * KiB)
        task = asyncio.create_task(Mirror(config).run())
        try:
            await _equal_or_ended(s, d, task)
            # A source txn of 1.2 MiB: one request on the source, at least five on the destination.
            await s.txn([], [Put(b"/app/replay/%02d" % i, bytes([i]) * 100 * KiB) for i in range(12)])
            await _equal_or_ended(s, d, task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert "too large" in caplog.text
        code, out, err = await verify_cli(src, dst, "--prefix", "/app/")
        assert code == 0, (out, err)


async def _equal_or_ended(s: EtcdClient, d: EtcdClient, task: asyncio.Task[object]) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while await dump(s, b"/app/") != await dump(d, b"/app/"):
        if task.done():
            raise AssertionError(f"the mirror ended: {task.exception()!r}")
        assert asyncio.get_running_loop().time() < deadline, "not equal in 60 s"
        await asyncio.sleep(0.1)


async def test_a_value_the_destination_can_never_take_is_one_clear_error(
    etcd_cluster_factory: Factory,
) -> None:
    """A single source value larger than the destination's request limit cannot be mirrored without
    losing it: `--once` ends with exit 2 and a line that says what to change, not a traceback."""
    src = etcd_cluster_factory(name="src")
    dst = etcd_cluster_factory(name="dst", extra_args=[f"--max-request-bytes={256 * KiB}"])
    async with connect(src) as s:
        await s.put(b"/app/fits", b"f" * 100 * KiB)
        await s.put(b"/app/huge", b"h" * 900 * KiB)
    run = await etcd_dr(
        "mirror",
        dst.endpoints[0],
        "--endpoints",
        src.endpoints[0],
        "--prefix",
        "/app/",
        "--once",
        timeout=120,
    )
    assert_refused(run, "destination endpoint", "--max-request-bytes")
