"""What the mirror's periodic verify costs the source: its share of the source's read capacity.

    .venv/bin/python -m bench.verify_pacing_bench [--keys 100000] [--rate 4MiB] [--etcd-version 3.5]

Loads KEYS keys of 256 B into a source cluster and mirrors them (`mirror --once`, in process). Then:

1. capacity: READERS concurrent clients (in a process of their own) scan the source's range in pages
   of 1,000 keys, over and over, for SECONDS: the source's read throughput (bytes of keys and values
   per second, pages per second) with nothing else running;
2. the same readers while a verify paced to RATE runs as the mirror's periodic one does
   (`--verify-rate`, pages of `verify_page_size` keys, segments of 100,000 keys each at revisions of
   its own): their throughput, and the verify's own source read rate;
3. the same with an unpaced verify (`etcd-dr verify`, one burst), for comparison;
4. before those, each verify alone, with the source member's CPU time (from /proc) while it runs: the
   share of a core the verify keeps the source busy, the steadiest figure on a shared machine.

The share of the source's read capacity a verify takes is shown two ways: its own source read rate over
the capacity measured in 1., and the drop of the readers' throughput while it runs (noisier: the
machine is shared). Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from dataclasses import replace

from etcd_dr import ClientConfig, MirrorConfig
from etcd_dr.etcd import EtcdClient, Put
from etcd_dr.local.binaries import find
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.verify import verify, verify_in_segments


async def load(client: EtcdClient, keys: int, value: bytes) -> None:
    sem = asyncio.Semaphore(16)

    async def txn(start: int) -> None:
        async with sem:
            await client.txn(
                [], [Put(b"/bench/%08d" % i, value) for i in range(start, min(start + 100, keys))]
            )

    await asyncio.gather(*(txn(s) for s in range(0, keys, 100)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def verify_alone(config: MirrorConfig, pid: int, rate: float | None) -> tuple[float, float, float]:
    """A verify with nothing else running: (seconds, the source member's CPU seconds meanwhile, the
    source's bytes read)."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    result = await (
        verify_in_segments(config, rate=rate, page_size=config.verify_page_size) if rate else verify(config)
    )
    took, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    assert result.equal, result.summary()
    return took, cpu, result.keys * (len(b"/bench/00000000") + 256)


def size(text: str) -> float:
    t = text.lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1024.0, "m": 1024.0**2}.get(t[-1:], 1.0)
    return float(t.rstrip("km")) * scale


async def readers(endpoint: str, count: int, seconds: float) -> None:
    """(In a process of its own, so that the client's CPU is not the verify's.) `count` clients scan
    the range for `seconds`; prints "bytes pages seconds"."""
    totals = [0, 0]
    config = ClientConfig.create([endpoint], request_timeout=120)
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()

    async def one() -> None:
        async with EtcdClient(config) as c:
            while time.monotonic() < deadline:
                async for page in c.range_pages(b"/bench/", b"/bench0", page_size=1000):
                    totals[0] += sum(len(kv.key) + len(kv.value) for kv in page.kvs)
                    totals[1] += 1
                    if time.monotonic() >= deadline:
                        return

    await asyncio.gather(*(one() for _ in range(count)))
    print(totals[0], totals[1], time.monotonic() - t0)


async def with_readers(
    config: MirrorConfig, count: int, seconds: float, rate: float | None
) -> tuple[float, float, float, float]:
    """Readers' bytes/s and pages/s over `seconds` while a verify (paced to `rate`; None: unpaced;
    0: none) runs from the same moment; with the verify's source bytes/s and duration."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.verify_pacing_bench",
        "--reader",
        config.source.endpoints_text,
        "--readers",
        str(count),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        v_bytes = v_seconds = 0.0
        if rate != 0:
            t0 = time.monotonic()
            result = await (
                verify_in_segments(config, rate=rate, page_size=config.verify_page_size)
                if rate
                else verify(config)
            )
            v_seconds = time.monotonic() - t0
            assert result.equal, result.summary()
            v_bytes = result.keys * (len(b"/bench/00000000") + 256)
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if len(out.split()) != 3:
        raise RuntimeError(f"the readers' process failed (exit {proc.returncode}); see its stderr above")
    nbytes, pages, took = (float(x) for x in out.split())
    return nbytes / took, pages / took, v_bytes / max(v_seconds, 1e-9), v_seconds


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rate", default="4MiB", help="the periodic verify's --verify-rate")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the capacity run")
    parser.add_argument("--etcd-version", default=None)
    parser.add_argument("--reader", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        await readers(args.reader, args.readers, args.seconds)
        return
    rate = size(args.rate)
    bins = find(args.etcd_version)
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; etcd {bins.version}")
    quota = ["--quota-backend-bytes=8589934592"]
    with (
        EtcdCluster(bins, name="psrc", extra_args=quota) as src,
        EtcdCluster(bins, name="pdst", extra_args=quota) as dst,
    ):
        config = MirrorConfig(
            source=ClientConfig.create(src.endpoints, role="source", request_timeout=120),
            dest=ClientConfig.create(dst.endpoints, role="destination", request_timeout=120),
            once=True,
        )
        async with EtcdClient(config.source) as s:
            await load(s, args.keys, b"x" * 256)
        await Mirror(config).run()
        config = replace(config, once=False)
        mib = 1024 * 1024
        cap, cap_pages, _, _ = await with_readers(config, args.readers, args.seconds, 0)
        print(
            f"source read capacity ({args.readers} readers scanning, pages of 1,000 keys): "
            f"{cap / mib:.1f} MiB/s, {cap_pages:.0f} pages/s"
        )
        pid = src.members[0].pid
        assert pid is not None
        cpu0 = cpu_seconds(pid)
        await asyncio.sleep(5.0)
        idle = (cpu_seconds(pid) - cpu0) / 5.0
        print(f"the source member idle: {100 * idle:.1f}% of one core (subtracted below)")
        for label, r in ((f"paced verify (--verify-rate {args.rate})", rate), ("unpaced verify", None)):
            took, cpu, nbytes = await verify_alone(config, pid, r)
            cpu = max(cpu - idle * took, 0.0)
            print(
                f"{label}, alone: {args.keys} keys in {took:.1f} s; the source member's CPU for it "
                f"{cpu:.2f} s = {100 * cpu / took:.1f}% of one core on average ({cpu / (nbytes / mib):.3f} "
                f"CPU s per MiB read: {1 / max(cpu / (nbytes / mib), 1e-9):.0f} MiB/s per core)"
            )
        for label, r in ((f"paced verify (--verify-rate {args.rate})", rate), ("unpaced verify", None)):
            got, _, v_rate, v_took = await with_readers(config, args.readers, args.seconds, r)
            print(
                f"{label}: {args.keys} keys in {v_took:.1f} s, reading the source at "
                f"{v_rate / mib:.2f} MiB/s "
                f"= {100 * v_rate / cap:.1f}% of its capacity; the readers meanwhile {got / mib:.1f} MiB/s "
                f"({100 * (1 - got / cap):+.1f}% drop)"
            )


if __name__ == "__main__":
    asyncio.run(main())
