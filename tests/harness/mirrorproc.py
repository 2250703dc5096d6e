"""`etcd-dr mirror` as a child process for fault and load tests: its log in a file, its memory read
from /proc, its lag read from the two clusters, ended by PID (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from etcd_dr.etcd import EtcdClient
from etcd_dr.local import resources
from etcd_dr.state.records import REPLAY, Checkpoint


def end_process(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Send `signum` and wait `timeout` for the exit code. One that does not end in time is asked with
    SIGUSR1 to print what each of its tasks waits on (to its own stderr, the test's log of it), then
    SIGKILLed: the test fails showing where it hung instead of only that it did."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            proc.wait()
    return proc.returncode


class MirrorProcess:
    """`python -m etcd_dr mirror DEST --endpoints SOURCE *args`, run after `command_prefix` (e.g.
    a site's `ip netns exec NS`, which execs it: the PID is the mirror's)."""

    def __init__(
        self,
        dest: str,
        source: str,
        *args: str,
        log_path: Path,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.command = [
            *command_prefix,
            sys.executable,
            "-m",
            "etcd_dr",
            "mirror",
            dest,
            "--endpoints",
            source,
            *args,
        ]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MirrorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        resources.track(self, f"mirror process {self.process.pid}", self.kill)
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("mirror process not started")
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> int:
        """Resident memory (VmRSS) of the mirror process, in KiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (the mirror releases its lock and exits 0), SIGKILL after `timeout`; the exit code."""
        proc = self.process
        if proc is None:
            return 0
        code = await asyncio.to_thread(end_process, proc, signal.SIGTERM, timeout)
        resources.untrack(self)
        return code

    def kill(self) -> None:
        """SIGKILL and reap (for cleanup paths)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        resources.untrack(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


@dataclass
class Lag:
    source_revision: int
    applied_revision: int  # the destination checkpoint's source revision (0: none yet / copying)
    seconds: float | None  # now minus the source time of the newest applied heartbeat, when known

    @property
    def revisions(self) -> int:
        return self.source_revision - self.applied_revision


async def read_checkpoint(dest: EtcdClient, checkpoint_key: bytes) -> Checkpoint | None:
    kv = await dest.get(checkpoint_key)
    return Checkpoint.decode(kv.value) if kv is not None else None


async def measure_lag(source: EtcdClient, dest: EtcdClient, checkpoint_key: bytes) -> Lag:
    """Where the mirror stands: the source revision (read first) against the destination's checkpoint.

    The heartbeat that the mirror writes on the source adds a revision of its own every second or so.
    """
    source_revision = (await source.status()).revision
    ckpt = await read_checkpoint(dest, checkpoint_key)
    applied = ckpt.revision if ckpt is not None and ckpt.phase == REPLAY else 0
    seconds = time.time() - ckpt.source_time if ckpt is not None and ckpt.source_time else None
    return Lag(source_revision, applied, seconds)


async def wait_caught_up(
    source: EtcdClient, dest: EtcdClient, checkpoint_key: bytes, timeout: float
) -> float:
    """Wait until the checkpoint reaches the source revision read on entry; the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    target = (await source.status()).revision
    while True:
        ckpt = await read_checkpoint(dest, checkpoint_key)
        if ckpt is not None and ckpt.phase == REPLAY and ckpt.revision >= target:
            return loop.time() - start
        if loop.time() - start > timeout:
            got = ckpt.revision if ckpt is not None else None
            raise AssertionError(
                f"the mirror did not reach source revision {target} in {timeout} s: at {got}"
            )
        await asyncio.sleep(0.05)
