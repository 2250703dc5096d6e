"""Adopting a standby that `etcdctl make-mirror` filled: the first `etcd-dr mirror` copies only what
differs and, before deleting the keys make-mirror left behind (make-mirror never removes keys deleted
while it was down), names how many and which; the mass-delete guard's rules apply to them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.clirun import etcd_dr
from harness.mirroring import connect, dump, wait_equal

from etcd_dr.local.cluster import EtcdCluster

Factory = Callable[..., EtcdCluster]

KEYS = 300  # at least the guard's minimum (100) of deletes must be possible


async def make_mirror_fills(src: EtcdCluster, dst: EtcdCluster, log: Path) -> None:
    """Run the real etcdctl make-mirror until DEST holds the source's keys, then stop it."""
    env = {**os.environ, **src.etcdctl_env()}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(src.binaries.etcdctl), "make-mirror", dst.endpoints[0],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        async with connect(src) as s, connect(dst) as d:
            # A write while it runs: it is watching, not only copying.
            await wait_equal(s, d, timeout=60)
            await s.put(b"/k/live", b"1")
            await wait_equal(s, d, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def test_adopt_make_mirror_standby_lists_stale_keys_then_deletes(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    async with connect(src) as s:
        for i in range(KEYS):
            await s.put(b"/k/%03d" % i, b"v%d" % i)
    await make_mirror_fills(src, dst, tmp_path / "make-mirror.log")

    # While make-mirror is down: most keys deleted on the source, one changed, one added.
    gone = [b"/k/%03d" % i for i in range(200)]
    async with connect(src) as s:
        for key in gone:
            await s.delete_range(key)
        await s.put(b"/k/250", b"changed")
        await s.put(b"/k/new", b"1")

    # The mass-delete guard refuses 200 of 301 keys; the stale keys are named first.
    run = await etcd_dr("mirror", dst.endpoints[0], "--endpoints", src.endpoints[0], "--once")
    assert run.code == 2, run.stderr
    stale = re.search(
        r"copy: (\d+) destination key\(s\) are not on the source .*permitting: (.*)$", run.stderr, re.M
    )
    assert stale is not None, run.stderr
    assert stale.group(1) == "200"
    named = stale.group(2)
    assert named.startswith("/k/000, /k/001, ") and named.endswith("and 180 more"), named
    assert named.count(", ") == 19
    assert stale.start() < run.stderr.index("; refused, the standby is left"), run.stderr
    async with connect(dst) as d:
        assert len(await dump(d)) == KEYS + 1  # nothing deleted

    # Allowed: the same list, then the deletes; only what differs is written.
    run = await etcd_dr(
        "mirror", dst.endpoints[0], "--endpoints", src.endpoints[0], "--once", "--allow-mass-delete"
    )
    assert run.code == 0, run.stderr
    stale = re.search(r"copy: 200 destination key\(s\) are not on the source", run.stderr)
    assert stale is not None, run.stderr
    first_delete = run.stderr.index("copy: removing destination key /k/000")
    assert stale.start() < first_delete
    assert re.search(
        r"copy: done at revision \d+ in [\d.]+ s: 102 keys, 2 written, 200 removed, 100 already", run.stderr
    ), run.stderr
    async with connect(src) as s, connect(dst) as d:
        assert await dump(d) == await dump(s)
