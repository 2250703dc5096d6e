"""Benchmark of `etcd-dr verify` on a large equal pair (issue goal: 1,000,000 keys in under 20 s).

    .venv/bin/python -m bench.verify_bench [--keys 1000000] [--etcd-version 3.4]

Loads KEYS keys of 256 B into a source cluster, mirrors them into a destination with `etcd-dr mirror
--once` (in process), then times `verify` on the equal pair, and once more with 10 planted differences
(which it must find). Prints the times, keys/s and the peak RSS of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import time

from etcd_dr import ClientConfig, MirrorConfig
from etcd_dr.etcd import EtcdClient, Put
from etcd_dr.local.binaries import find
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.verify import verify


async def load(client: EtcdClient, keys: int, value: bytes) -> None:
    sem = asyncio.Semaphore(16)

    async def txn(start: int) -> None:
        async with sem:
            await client.txn(
                [], [Put(b"/bench/%08d" % i, value) for i in range(start, min(start + 100, keys))]
            )

    for chunk in range(0, keys, 10000):
        await asyncio.gather(*(txn(s) for s in range(chunk, min(chunk + 10000, keys), 100)))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--etcd-version", default=None)
    args = parser.parse_args()
    bins = find(args.etcd_version)
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; etcd {bins.version}")
    quota = ["--quota-backend-bytes=8589934592"]
    with (
        EtcdCluster(bins, name="vsrc", extra_args=quota) as src,
        EtcdCluster(bins, name="vdst", extra_args=quota) as dst,
    ):
        config = MirrorConfig(
            source=ClientConfig.create(src.endpoints, role="source", request_timeout=120),
            dest=ClientConfig.create(dst.endpoints, role="destination", request_timeout=120),
            once=True,
        )
        async with EtcdClient(config.source) as s, EtcdClient(config.dest) as d:
            t = time.monotonic()
            await load(s, args.keys, b"x" * 256)
            print(f"loaded {args.keys} keys in {time.monotonic() - t:.1f} s")
            t = time.monotonic()
            await Mirror(config).run()
            print(f"mirrored (etcd-dr mirror --once) in {time.monotonic() - t:.1f} s")
            t = time.monotonic()
            result = await verify(config)
            took = time.monotonic() - t
            assert result.equal and result.keys == args.keys, result.summary()
            print(f"verify, equal pair: {result.summary()} in {took:.1f} s ({args.keys / took:,.0f} keys/s)")
            for i in range(0, args.keys, args.keys // 10):
                await d.put(b"/bench/%08d" % i, b"planted difference")
            t = time.monotonic()
            result = await verify(config)
            took2 = time.monotonic() - t
            assert len(result.different) == 10, result.summary()
            print(f"verify, 10 planted differences: {result.summary()} in {took2:.1f} s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (load + mirror + verify): {rss:.0f} MB")
    goal = "met" if took < 20 else "NOT met"
    print(f"goal: {args.keys} keys verified in under 20 s: {took:.1f} s, {goal}")


if __name__ == "__main__":
    asyncio.run(main())
