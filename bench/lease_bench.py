"""Lease capacity of `etcd-dr mirror`: many source leases kept alive, the source far away.

    .venv/bin/python -m bench.lease_bench [--leases 10000] [--ttl 10] [--rtt-ms 100] [--hold 60]
                                          [--etcd-version 3.4|3.5]

Starts fresh single-member source and destination clusters; a process of its own plays the services:
it grants LEASES leases of TTL seconds on the source with one key each (a service registry) and keeps
every one of them alive at a third of the TTL, straight to the source (8 keepalive streams).
`etcd-dr mirror` runs as a subprocess where `render` puts it, next to the destination, with the source
behind the delay proxy (tests/harness/proxy.py, RTT-MS round trip). Measured:

  - copy: the time until every leased key is on the destination under a live lease;
  - hold: for HOLD seconds after it, the destination's leased keys counted every 2 s (the least count
    seen must be LEASES: every key kept), and the mirror's lease_lost problems;
  - the source's requests: the deltas of the source's own grpc_server_handled_total over the hold
    (its /metrics), per method; the keepalives of this process are a stream and are not counted;
  - the mirror's CPU over the hold.

`etcdctl make-mirror` has no equivalent to run side by side: it does not mirror leases at all (its
keys are written without a lease and stay after the source's lease ends), so there is nothing of its
to measure here. See docs/benchmarks.md for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from harness.mirrorproc import MirrorProcess
from harness.proxy import FaultProxy

from etcd_dr.etcd import ClientConfig, EtcdClient, EtcdError, Put, prefix_range_end
from etcd_dr.local.binaries import find
from etcd_dr.local.cluster import EtcdCluster

ROOT = Path(__file__).resolve().parent.parent
PREFIX = b"/bench/leases/"
_TICK = os.sysconf("SC_CLK_TCK")
_HANDLED = re.compile(
    r'^grpc_server_handled_total\{grpc_code="(\w+)",grpc_method="(\w+)",[^}]*\} (\S+)$', re.M
)


def handled(endpoint: str) -> Counter[str]:
    """The source's unary and stream calls handled so far, by method (its /metrics)."""
    with urllib.request.urlopen(endpoint + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: Counter[str] = Counter()
    for _code, method, value in _HANDLED.findall(text):
        out[method] += int(float(value))
    return out


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


async def grant_all(s: EtcdClient, n: int, ttl: int, leases: list[int]) -> None:
    """Grant n leases into `leases` (kept alive meanwhile by `keep_alive`), then a key on each."""
    sem = asyncio.Semaphore(64)

    async def grant(_: int) -> None:
        async with sem:
            leases.append((await s.lease_grant(ttl)).id)

    await asyncio.gather(*(grant(i) for i in range(n)))
    for i in range(0, n, 100):
        await s.txn([], [Put(PREFIX + b"svc-%06d" % j, b"{}", leases[j]) for j in range(i, min(i + 100, n))])


async def keep_alive(s: EtcdClient, leases: list[int], ttl: int, stop: asyncio.Event) -> None:
    """The services: every lease refreshed at a third of its TTL, straight to the source."""
    kas = [s.lease_keepalive() for _ in range(8)]  # etcd serves each stream's requests in turn
    while not stop.is_set():
        t = time.monotonic()
        now = list(leases)
        try:
            got: dict[int, int] = {}
            for part in await asyncio.gather(*(ka.refresh_many(now[i::8]) for i, ka in enumerate(kas))):
                got.update(part)
        except EtcdError as e:  # a slow source: again at once, as a client library would
            print(f"  load generator: {e}; refreshing again", file=sys.stderr, flush=True)
            continue
        if lost := [lease for lease in now if got.get(lease, 0) <= 0]:
            raise SystemExit(f"the load generator lost {len(lost)} source leases: machine too busy")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, ttl / 3 - (time.monotonic() - t)))
    for ka in kas:
        await ka.close()


async def leased_on(d: EtcdClient) -> int:
    """Keys under the prefix whose destination lease is alive (one LeaseLeases, one range)."""
    live = set(await d.leases())
    kvs = (await d.range(PREFIX, prefix_range_end(PREFIX), keys_only=True)).kvs
    return sum(1 for kv in kvs if kv.lease in live)


async def run(args: argparse.Namespace) -> None:
    bins = find(args.etcd_version)
    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"load {os.getloadavg()[0]:.1f}; "
        f"etcd {bins.version}; {args.leases} leases of {args.ttl} s, source {args.rtt_ms} ms away"
    )
    with (
        tempfile.TemporaryDirectory(prefix="lease-bench-") as tmp,
        EtcdCluster(bins, name="lsrc") as src,
        EtcdCluster(bins, name="ldst") as dst,
        FaultProxy.to(src.endpoints[0]) as far,
    ):
        far.set_delay(args.rtt_ms / 2000)
        async with (
            EtcdClient(ClientConfig.create(dst.endpoints)) as d,
        ):
            t = time.monotonic()
            # The services, in a process of their own (not sharing this one's interpreter with the
            # delay proxy): they grant the leases and keys, then keep every lease alive.
            keeper = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.lease_bench", "--services", src.endpoints[0],
                "--leases", str(args.leases), "--ttl", str(args.ttl),
                stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            assert keeper.stdout is not None
            line = (await keeper.stdout.readline()).decode()
            if not line.startswith("ready"):
                with contextlib.suppress(ProcessLookupError):
                    keeper.kill()
                await keeper.wait()
                raise SystemExit(f"the load generator failed: {line}")
            print(f"source: {args.leases} leases and keys in {time.monotonic() - t:.1f} s")
            await asyncio.sleep(5.0)  # the source applies what it was just given before the mirror starts
            mirror = MirrorProcess(
                dst.endpoints[0], far.url(), "--prefix", PREFIX.decode(), log_path=Path(tmp) / "mirror.log"
            )
            try:
                t0 = time.monotonic()
                mirror.start()
                while (n := await leased_on(d)) < args.leases:
                    if (
                        not mirror.running()
                        or keeper.returncode is not None
                        or time.monotonic() - t0 > args.copy_timeout
                    ):
                        raise SystemExit(f"copy: {n}/{args.leases} after {time.monotonic() - t0:.0f} s\n"
                                         + mirror.log_text()[-3000:])  # fmt: skip
                    await asyncio.sleep(0.5)
                print(
                    "copy: every leased key on the destination under a live lease after "
                    f"{time.monotonic() - t0:.1f} s"
                )
                copy_lost = mirror.log_text().count("lost (")
                print(f"  destination leases lost (and restored) during the copy: {copy_lost} warnings")
                before, cpu0, h0 = handled(src.endpoints[0]), cpu_seconds(mirror.pid), time.monotonic()
                least = args.leases
                while time.monotonic() - h0 < args.hold:
                    await asyncio.sleep(2.0)
                    least = min(least, await leased_on(d))
                    if not mirror.running() or keeper.returncode is not None:
                        raise SystemExit(
                            "the mirror or the load generator ended\n" + mirror.log_text()[-3000:]
                        )
                seconds = time.monotonic() - h0
                after, cpu1 = handled(src.endpoints[0]), cpu_seconds(mirror.pid)
            finally:
                await mirror.stop()
                if keeper.returncode is None:
                    keeper.terminate()
                await keeper.wait()
            rates = {m: (after[m] - before[m]) / seconds for m in after if after[m] > before[m]}
            lost = mirror.log_text().count("lost (") - copy_lost
            print(
                f"hold {seconds:.0f} s: least leased keys seen on the destination {least}/{args.leases} "
                f"({'every key kept' if least == args.leases else f'{args.leases - least} LOST'}); "
                f"lease_lost warnings in the mirror's log during the hold: {lost}"
            )
            print(f"source requests/s handled during the hold (all clients; the keepalive stream excluded): "
                  f"{sum(rates.values()):.1f}")  # fmt: skip
            for method, rate in sorted(rates.items(), key=lambda x: -x[1]):
                print(f"  {method:<20} {rate:8.2f}/s")
            print(f"mirror CPU during the hold: {(cpu1 - cpu0) / seconds * 100:.0f}% of a core")
            if least < args.leases:
                sys.exit(1)


async def services(args: argparse.Namespace) -> None:
    """The load generator's process: grant, say "ready", keep alive until terminated."""
    async with EtcdClient(ClientConfig.create([args.services])) as s:
        leases: list[int] = []
        keeper = asyncio.create_task(keep_alive(s, leases, args.ttl, asyncio.Event()))
        await grant_all(s, args.leases, args.ttl, leases)
        print("ready", flush=True)
        await keeper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", metavar="ENDPOINT", help=argparse.SUPPRESS)
    p.add_argument("--leases", type=int, default=10_000)
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--rtt-ms", type=float, default=100.0)
    p.add_argument("--hold", type=float, default=60.0)
    p.add_argument("--copy-timeout", type=float, default=300.0)
    p.add_argument("--etcd-version", default=None)
    args = p.parse_args()
    asyncio.run(services(args) if args.services else run(args))


if __name__ == "__main__":
    main()
