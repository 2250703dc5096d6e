"""How fast a promoted site's revision is raised (failover / switchover, for Kubernetes watchers).

    .venv/bin/python -m bench.revision_bump_bench [--revisions 10000 100000] [--inflight 16 64 128]
                                                 [--etcd-version 3.4] [--data-dir DIR]

A revision only grows by writes, so etcd-dr raises it with writes of one scratch key, many in flight
(src/etcd_dr/failover/revision.py). Prints revisions/s for each size and concurrency, on a fresh
single-member cluster each time (on tmpfs unless --data-dir puts it on a disk).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from pathlib import Path

from etcd_dr.etcd import ClientConfig, EtcdClient
from etcd_dr.failover.revision import raise_revision
from etcd_dr.local.binaries import find
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.state import StateLayout

STATE = b"/etcd-dr/"


async def one(cluster: EtcdCluster, revisions: int, inflight: int) -> tuple[int, float]:
    async with EtcdClient(ClientConfig.create(cluster.endpoints)) as client:
        start = (await client.status()).revision
        bump = await raise_revision(client, StateLayout(STATE), start + revisions, inflight=inflight)
        return bump.added, bump.seconds


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--revisions", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--inflight", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--etcd-version", default=None)
    parser.add_argument("--data-dir", default=None, help="Put the cluster's data here (default: tmpfs).")
    args = parser.parse_args()
    bins = find(args.etcd_version)
    where = args.data_dir or "tmpfs"
    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; "
        f"etcd {bins.version}; data on {where}"
    )
    print(f"{'revisions':>10} {'inflight':>8} {'seconds':>8} {'rev/s':>8}")
    for revisions in args.revisions:
        for inflight in args.inflight:
            base = Path(args.data_dir) if args.data_dir else None
            with EtcdCluster(bins, name="bump", base_dir=base) as cluster:
                added, seconds = await one(cluster, revisions, inflight)
            print(f"{added:>10} {inflight:>8} {seconds:>8.2f} {added / seconds:>8.0f}")


if __name__ == "__main__":
    asyncio.run(main())
