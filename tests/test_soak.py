"""Soak: the source written at its maximum rate by several concurrent Workload writers (puts,
overwrites, deletes, prefix deletes, multi-op txns, keys outside the prefix) while a real `etcd-dr
mirror` process follows it; its memory (VmRSS from /proc) and lag are sampled every second.

    pytest tests/test_soak.py                   the 60 s soak (marker `soak`, runs in CI)
    pytest -m soak_long tests/test_soak.py      the 10 min soak (marker `soak_long`, never in CI:
                                                pyproject's addopts deselect it)

Each asserts that the mirror's memory stops growing once warmed up (the last quarter's peak within a
margin of the first quarter's), that it catches up once the load ends, and that the destination ends
equal to the source, exactly once. The samples' summary is printed, for the CI log.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.history import HistoryRecorder, check_exactly_once
from harness.mirroring import connect, wait_equal
from harness.mirrorproc import MirrorProcess, measure_lag, wait_caught_up
from harness.workload import Workload

from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.state import StateLayout

STATE = b"/etcd-dr/"
PREFIX = b"/app/"
WRITERS = 4
Factory = Callable[..., EtcdCluster]

# After warm-up the mirror's RSS may still move by allocator noise and by how full its bounded
# backlog is at a given moment; a leak at soak rates outgrows this within minutes.
RSS_MARGIN_KIB = 32 * 1024
RSS_MARGIN_FRACTION = 0.25


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss_kib: int
    lag_revisions: int
    lag_seconds: float | None
    source_revision: int


def summarize(samples: list[Sample], writes: int, load_seconds: float, catch_up: float) -> str:
    rss = [s.rss_kib / 1024 for s in samples]
    lags = [s.lag_revisions for s in samples]
    lag_secs = [s.lag_seconds for s in samples if s.lag_seconds is not None]
    q = max(1, len(samples) // 4)
    return (
        f"soak: {load_seconds:.0f} s of load, {writes} source requests ({writes / load_seconds:.0f}/s, "
        f"{samples[-1].source_revision - samples[0].source_revision} revisions), {len(samples)} samples; "
        f"mirror RSS min {min(rss):.1f} MiB, max {max(rss):.1f} MiB, first quarter max "
        f"{max(rss[:q]):.1f} MiB, last quarter max {max(rss[-q:]):.1f} MiB; lag max {max(lags)} revisions "
        f"(median {statistics.median(lags):.0f}), max {max(lag_secs, default=0.0):.1f} s; caught up "
        f"{catch_up:.1f} s after the load"
    )


async def soak(etcd_cluster_factory: Factory, tmp_path: Path, seconds: float) -> None:
    src = etcd_cluster_factory(name="src", extra_args=["--max-txn-ops=256"])
    dst = etcd_cluster_factory(name="dst")
    mirror = MirrorProcess(
        ",".join(dst.endpoints),
        ",".join(src.endpoints),
        "--prefix",
        "/app/",
        log_path=tmp_path / "mirror.log",
    )
    # The histories for the exactly-once check are recorded as they happen (a million revisions are
    # too many to read back), each over a connection of its own.
    async with (
        connect(src) as s,
        connect(dst) as d,
        connect(src) as s_watch,
        connect(dst) as d_watch,
        HistoryRecorder(s_watch) as s_history,
        HistoryRecorder(d_watch) as d_history,
    ):
        key = StateLayout(STATE).checkpoint((await s.status()).cluster_id, PREFIX, PREFIX)
        await Workload(s, seed=100).run(500)
        mirror.start()
        samples: list[Sample] = []
        stop = asyncio.Event()
        workloads = [Workload(s, seed=101 + i, max_txn=30) for i in range(WRITERS)]
        try:
            await wait_caught_up(s, d, key, timeout=60)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            writers = [asyncio.create_task(w.run(stop=stop)) for w in workloads]
            while (t := loop.time() - t0) < seconds:
                assert mirror.running(), f"the mirror exited:\n{mirror.log_text()[-3000:]}"
                lag = await measure_lag(s, d, key)
                rss = mirror.rss_kib()
                samples.append(Sample(t, rss, lag.revisions, lag.seconds, lag.source_revision))
                await asyncio.sleep(max(0.0, (len(samples)) - (loop.time() - t0)))
            stop.set()
            await asyncio.gather(*writers)
            load_seconds = loop.time() - t0
            writes = sum(w.ops for w in workloads)
            catch_up = await wait_caught_up(s, d, key, timeout=max(120.0, seconds / 2))
            await wait_equal(s, d, PREFIX, timeout=30)
            assert mirror.running(), f"the mirror exited:\n{mirror.log_text()[-3000:]}"
            assert await mirror.stop() == 0, mirror.log_text()[-3000:]
        except BaseException:
            print(f"mirror log (tail):\n{mirror.log_text()[-6000:]}")
            raise
        finally:
            stop.set()
            mirror.kill()
        print("\n" + summarize(samples, writes, load_seconds, catch_up))
        q = max(1, len(samples) // 4)
        warm = max(x.rss_kib for x in samples[:q])
        last = max(x.rss_kib for x in samples[-q:])
        bound = warm + max(RSS_MARGIN_KIB, int(warm * RSS_MARGIN_FRACTION))
        assert last <= bound, f"mirror RSS grew: last quarter max {last} KiB > {bound} KiB (warm-up {warm})"
        t = time.monotonic()
        mapper = KeyMapper.create(PREFIX, None, (), STATE)
        report = await check_exactly_once(s_history, d_history, mapper, key)
        print(
            f"soak: exactly once over {report.source_ops_checked} source ops in {report.replay_txns} "
            f"destination txns (checked in {time.monotonic() - t:.1f} s)"
        )
        assert report.copies == 1 and report.source_ops_checked > writes // 2
        assert "Traceback" not in mirror.log_text()


@pytest.mark.soak
@pytest.mark.newest_etcd_only
async def test_soak_60s(etcd_cluster_factory: Factory, tmp_path: Path) -> None:
    await soak(etcd_cluster_factory, tmp_path, 60.0)


@pytest.mark.soak_long
@pytest.mark.timeout(1800)
async def test_soak_10min(etcd_cluster_factory: Factory, tmp_path: Path) -> None:
    await soak(etcd_cluster_factory, tmp_path, 600.0)
