"""Two mirror processes for one source and destination: one applies, the other stands by; the active
one SIGSTOPped, the other takes over within 2 x the lock TTL, and the stopped one, resumed, writes
nothing (its txns carry the lock it lost)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.history import check_exactly_once
from harness.mirrorproc import MirrorProcess
from harness.workload import Workload

from etcd_dr import MirrorConfig
from etcd_dr.etcd import ClientConfig, EtcdClient, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.keys import KeyMapper
from etcd_dr.state import StateLayout
from etcd_dr.status import status as mirror_status

STATE = b"/etcd-dr/"
TTL = 2


async def _dump(c: EtcdClient, prefix: bytes) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await c.range(prefix, prefix_range_end(prefix))).kvs}


async def _until(cond: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def test_standby_mirror_takes_over_and_the_old_one_is_fenced(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    logs = [tmp_path / "mirror-a.log", tmp_path / "mirror-b.log"]
    procs: list[asyncio.subprocess.Process] = []
    async with (
        EtcdClient(ClientConfig.create(src.endpoints)) as s,
        EtcdClient(ClientConfig.create(dst.endpoints)) as d,
    ):
        await Workload(s, seed=41).run(100)
        try:
            for path in logs:
                with path.open("wb") as out:
                    procs.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "etcd_dr",
                            "mirror",
                            dst.endpoints[0],
                            "--endpoints",
                            src.endpoints[0],
                            "--prefix",
                            "/app/",
                            "--lock-ttl",
                            str(TTL),
                            stdout=out,
                            stderr=out,
                        )
                    )

            def holder() -> int | None:
                held = [i for i, p in enumerate(logs) if "holding the mirror lock" in p.read_text()]
                return held[0] if len(held) == 1 else None

            await _until(lambda: holder() is not None, 30)
            active = holder()
            assert active is not None
            other = 1 - active
            stop = asyncio.Event()
            writer = asyncio.create_task(Workload(s, seed=42).run(stop=stop, rate=200))
            await asyncio.sleep(1.0)
            procs[active].send_signal(signal.SIGSTOP)
            took = await _until(lambda: "holding the mirror lock" in logs[other].read_text(), 4 * TTL)
            assert took < 2 * TTL + 1.0, f"takeover took {took:.1f} s with a {TTL} s lock"
            await asyncio.sleep(1.0)
            procs[active].send_signal(signal.SIGCONT)  # the old holder wakes up, still "in the middle"
            await asyncio.sleep(2.0)
            stop.set()
            await writer
            deadline = time.monotonic() + 30
            while await _dump(s, b"/app/") != await _dump(d, b"/app/"):
                assert time.monotonic() < deadline, "not equal after the takeover"
                await asyncio.sleep(0.1)
            seen = await mirror_status(
                MirrorConfig(
                    source=ClientConfig.create(src.endpoints),
                    dest=ClientConfig.create(dst.endpoints),
                    prefix=b"/app/",
                )
            )
            assert seen.lock_holder is not None and f":{procs[other].pid}:" in seen.lock_holder
            text = logs[active].read_text()
            assert "lost the mirror lock" in text or "taken over" in text, text[-2000:]
            assert all(p.returncode is None for p in procs), "a mirror exited"
        finally:
            for p in procs:
                if p.returncode is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    await p.wait()
        status = await s.status()
        key = StateLayout(STATE).checkpoint(status.cluster_id, b"/app/", b"/app/")
        # No stale write from the fenced mirror: every destination txn applies exactly the next source ops.
        report = await check_exactly_once(s, d, KeyMapper.create(b"/app/", None, (), STATE), key)
        assert report.copies == 1 and report.replay_txns > 0


async def test_sigterm_stops_the_mirror_and_frees_its_lock_at_once(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    """systemd stops a service with SIGTERM: the mirror must release its lock (revoke its lease) so a
    successor starts at once instead of waiting out the TTL, and end with exit code 0."""
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    mirror = MirrorProcess(
        dst.endpoints[0], src.endpoints[0], "--lock-ttl", "60", log_path=tmp_path / "m.log"
    )
    async with EtcdClient(ClientConfig.create(dst.endpoints)) as d:
        try:
            mirror.start()
            await _until(lambda: "holding the mirror lock" in mirror.log_text(), 30)
            assert (await d.range(STATE + b"lock/", prefix_range_end(STATE + b"lock/"))).kvs
            code = await mirror.stop(timeout=10)  # SIGTERM, SIGKILL only after 10 s
        finally:
            mirror.kill()
        text = mirror.log_text()
        assert code == 0, text[-2000:]
        assert "SIGTERM received" in text and "Traceback" not in text, text[-2000:]
        # Its lease is revoked: the lock key went with it (a 60 s TTL would otherwise keep it).
        assert not (await d.range(STATE + b"lock/", prefix_range_end(STATE + b"lock/"))).kvs
