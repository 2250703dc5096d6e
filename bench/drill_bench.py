"""What `etcd-dr drill` costs and reports on a standby of a given size.

    .venv/bin/python -m bench.drill_bench [--keys 20000 100000] [--value-size 1024] [--etcd-version 3.5]

For each size: a fresh source and standby (single members, tmpfs), the keys written on the source, one
mirror run, then the drill (the library call `etcd-dr drill` makes, --no-record). Prints the standby's
database size, each step's time, the RTO and the whole drill, and the snapshot's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform

from etcd_dr.config import MirrorConfig
from etcd_dr.drill import DrillConfig, drill
from etcd_dr.etcd import ClientConfig, EtcdClient, Put
from etcd_dr.failover.config import MoveConfig
from etcd_dr.local.binaries import find
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror

PREFIX = b"/bench/"


async def one(bins_version: str | None, keys: int, value_size: int) -> None:
    bins = find(bins_version)
    with EtcdCluster(bins, name="src") as src, EtcdCluster(bins, name="dst") as dst:
        cfg = MirrorConfig(
            source=ClientConfig.create(src.endpoints),
            dest=ClientConfig.create(dst.endpoints),
            prefix=PREFIX,
            once=True,
            heartbeat_interval=0.0,
        )
        value = os.urandom(value_size // 2).hex().encode()
        async with EtcdClient(cfg.source) as c:
            for i in range(0, keys, 100):
                await c.txn([], [Put(PREFIX + b"%08d" % j, value) for j in range(i, min(keys, i + 100))])
        await Mirror(cfg).run()
        result = await drill(DrillConfig(MoveConfig(pair=cfg), record=False), lambda line: None)
        steps = ", ".join(f"{k} {v:.2f}" for k, v in result.steps.items())
        rate = result.snapshot_bytes / result.steps["snapshot"] / 1e6 if result.steps.get("snapshot") else 0.0
        print(
            f"etcd {bins.version}: {keys} keys x {value_size} B, db {result.db_size / 1e6:.1f} MB: "
            f"{'passed' if result.passed else 'FAILED ' + result.why}; {steps} (s); "
            f"RTO {result.rto_seconds:.2f} s, drill {result.total_seconds:.2f} s; snapshot {rate:.0f} MB/s"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--etcd-version", default=None)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; data on tmpfs")
    for keys in args.keys:
        await one(args.etcd_version, keys, args.value_size)


if __name__ == "__main__":
    asyncio.run(main())
