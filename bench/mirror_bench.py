"""Side-by-side benchmark: `etcdctl make-mirror` against `etcd-dr mirror`, same machine, same real etcd.

    .venv/bin/python -m bench.mirror_bench [--quick] [--etcd-version 3.4|3.5] [--only NAME[,NAME..]]

Every scenario starts fresh single-member source and destination clusters for EACH tool (identical
pairs, identical data), runs the tool as a subprocess exactly as a user would, watches the destination
with our own client, and ends every process it started (by PID, in `finally`). Scenarios (--only):

  copy      initial copy of 100,000 keys of 256 B: time until the destination has them all
  replay    a source writer with 64 single-key puts in flight, 20,000 revisions: lag at load end and
            the sustained apply rate
  rss       peak RSS (and time) of etcd-dr's initial copy of 1,000,000 keys
  distance  a 15 ms each-way delay proxy in front of the destination: initial copy of 10,000 keys
            (make-mirror capped at 60 s, its rate extrapolated) and the lag after 1,000 writes
  leased    etcd-dr's copy of 10,000 leased keys under one prefix (Kubernetes-events-like: leases of
            1 h shared by 100 keys each, every key created at its own revision), their create order
            kept in layers (one txn per create revision, --ordered-copy-time 1h) and as data
            (--ordered-copy-time 0, then the promotion's re-creation timed), beside the same keys
            without leases; on loopback and, with 1,000 keys, over the 30 ms delay proxy
  far       30 and 100 ms round trips (15 / 50 ms each way): copy of 10,000 keys and 20,000 writes at
            the writer's top rate (64 in flight): lag at load end and apply rate, etcd-dr against a
            destination configured as `render` configures it (max-txn-ops 4096, max-request-bytes
            10 MiB) and with etcd's default limits; make-mirror capped and extrapolated
  farcopy   the far scenario's copy alone: etcd-dr's copy of 10,000 keys over 30 and 100 ms into a
            destination configured as `render` configures it (no make-mirror, no replay): a quick
            before/after of the copy (its make-mirror baseline is the far scenario's)
  alongside loopback, both mirrors running at once from one source into two destinations, 20,000
            writes (64 in flight): each tool's lag at load end and CPU per replayed revision
  catchup   `mirror --once` from a checkpoint 60,000 single-key revisions behind the head, through
            one watch and through slices (mirror/catchup.py), against one `etcdctl watch --rev`
            reading the same backlog (the baseline column)

It prints the machine, a line per measurement, and a final table; the same table goes to
bench/results/<timestamp>.json. See docs/benchmarks.md for the figures and how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.proxy import FaultProxy

from etcd_dr.config import DEFAULT_STATE_PREFIX
from etcd_dr.etcd import ClientConfig, EtcdClient, Put, prefix_range_end
from etcd_dr.failover.reorder import recreate_in_order
from etcd_dr.local import binaries as etcd_binaries
from etcd_dr.local.binaries import EtcdBinaries
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.state.layout import StateLayout
from etcd_dr.state.records import OrderRecord

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"

PREFIX = b"/bench/"
DATA = PREFIX + b"data/"  # keys of the initial copies
LOAD = PREFIX + b"load/"  # keys written by the replay load (each written once)
BACKLOG = PREFIX + b"backlog/"  # keys written while etcd-dr is stopped (its backlog)
READY = PREFIX + b"ready"  # written before the mirror starts: seen on the destination = caught up
VALUE_SIZE = 256

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
READY_TIMEOUT = 60.0  # a mirror must have copied the one-key source by then
DELAY_ONE_WAY = 0.015  # the distance scenario's proxy delay (30 ms round trip)

SCENARIOS = ("copy", "replay", "rss", "distance", "far", "farcopy", "alongside", "leased", "catchup")


class BenchError(RuntimeError):
    """A tool failed, or a result was wrong: the scenario's figures would mean nothing."""


# ---- sizes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    copy_keys: int = 100_000
    copy_cap: float = 600.0  # make-mirror's copy is cut here (rate then extrapolated)
    replay_writes: int = 20_000
    replay_cap: float = 300.0  # wait at most this long after load end for the last write
    rss_keys: int = 1_000_000
    rss_mm_cap: float | None = 60.0  # make-mirror's 1M copy, capped; None: skipped
    distance_keys: int = 10_000
    distance_mm_cap: float = 60.0
    distance_writes: int = 1_000
    distance_replay_cap: float = 180.0
    far_writes: int = 20_000
    far_mm_cap: float = 30.0  # make-mirror's copy and replay over the far links (then extrapolated)
    catchup_revisions: int = 60_000
    dr_timeout: float = 900.0  # an etcd-dr --once run must exit by then
    leased_keys: int = 10_000
    leased_far_keys: int = 1_000  # over the delay proxy: one round trip per key, so fewer


FULL = Sizes()
QUICK = Sizes(
    copy_keys=10_000,
    copy_cap=120.0,
    replay_writes=2_000,
    replay_cap=60.0,
    rss_keys=100_000,
    rss_mm_cap=None,
    distance_keys=10_000,
    distance_mm_cap=15.0,
    distance_writes=300,
    distance_replay_cap=60.0,
    far_writes=3_000,
    far_mm_cap=10.0,
    catchup_revisions=20_000,
    dr_timeout=300.0,
    leased_keys=2_000,
    leased_far_keys=300,
)


# ---- data ----------------------------------------------------------------------------------------


def key_of(prefix: bytes, i: int) -> bytes:
    return prefix + b"%08d" % i


def value_of(i: int, size: int = VALUE_SIZE, salt: bytes = b"v") -> bytes:
    head = b"%s%010d:" % (salt, i)
    return (head * (size // len(head) + 1))[:size]


async def load_keys(
    client: EtcdClient, prefix: bytes, n: int, *, batch: int = 100, inflight: int = 8
) -> float:
    """Put keys 0..n-1 under prefix in txns of `batch` puts, `inflight` txns at once; seconds taken."""
    t0 = time.monotonic()
    starts = iter(range(0, n, batch))

    async def worker() -> None:
        for b in starts:  # shared iterator: each batch is taken by exactly one worker
            ops = [Put(key_of(prefix, i), value_of(i)) for i in range(b, min(b + batch, n))]
            ok, _ = await client.txn_succeeded([], ops)
            if not ok:
                raise BenchError("a load txn without compares did not succeed")

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.monotonic() - t0


async def count(client: EtcdClient, prefix: bytes) -> int:
    return (await client.range(prefix, prefix_range_end(prefix), count_only=True)).count


async def check_copy(client: EtcdClient, prefix: bytes, n: int) -> str:
    """Check that the destination holds exactly keys 0..n-1 with their values (all of them up to
    200,000 keys, else the count and 2,000 random keys). Returns what was checked."""
    got = await count(client, prefix)
    if got != n:
        raise BenchError(f"destination has {got} keys under {prefix!r}, expected {n}")
    if n <= 200_000:
        i = 0
        async for page in client.range_pages(prefix, prefix_range_end(prefix), page_size=10_000):
            for kv in page.kvs:
                if kv.key != key_of(prefix, i) or kv.value != value_of(i):
                    raise BenchError(f"destination key {kv.key!r} (#{i}) is not what the source has")
                i += 1
        return f"all {n} keys and values equal"
    rng = random.Random(1)
    for i in rng.sample(range(n), 2000):
        got_kv = await client.get(key_of(prefix, i))
        if got_kv is None or got_kv.value != value_of(i):
            raise BenchError(f"destination key #{i} missing or different")
    return f"{n} keys, 2000 sampled values equal"


# ---- processes -----------------------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # A developer's ETCDCTL_* / ETCD_* variables must not change what the tools run against.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env.update(extra or {})
    return env


_TICK = os.sysconf("SC_CLK_TCK")


def pid_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with contextlib.suppress(OSError, ValueError):
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
        return (user + nice + system + irq + softirq + steal) / _TICK
    return 0.0


class Proc:
    """A tool run as a subprocess; output to a log file; reaped with wait4 (for its own peak RSS);
    stop() ends it by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.returncode: int | None = None
        self.maxrss_kb = 0  # from wait4 once reaped; from /proc VmHWM while it runs
        self._cpu: float | None = None  # user + system seconds, from wait4 once reaped
        with self.log_path.open("wb") as log:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C reaches it through stop(), not on its own
            )
        self.pid = self.popen.pid

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        self.sample_rss()
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.returncode  # reaped here: Popen must not wait for it
        self.maxrss_kb = max(self.maxrss_kb, usage.ru_maxrss)
        self._cpu = usage.ru_utime + usage.ru_stime
        return self.returncode

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far (all threads)."""
        return self._cpu if self._cpu is not None else pid_cpu_seconds(self.pid)

    def sample_rss(self) -> None:
        """Read VmHWM (the kernel's own peak RSS) while the process lives."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.maxrss_kb = max(self.maxrss_kb, int(line.split()[1]))

    @property
    def peak_rss_mb(self) -> float:
        return self.maxrss_kb / 1024

    async def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            rc = self.poll()
            if rc is not None or time.monotonic() >= deadline:
                return rc
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if await self.wait(STOP_GRACE) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await self.wait(STOP_GRACE)

    def ensure_running(self) -> None:
        rc = self.poll()
        if rc is not None:
            raise BenchError(f"{self.name} exited with code {rc}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _git(*args: str) -> bytes:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=60, check=False)
    if out.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout


@dataclass
class EtcdDr:
    """How etcd-dr is run: the installed command (for an editable install, the working tree as it is
    at that moment), or the package as of a git revision, exported to a directory of its own."""

    argv: list[str]
    env: dict[str, str]
    source: str  # what was measured, for the report

    @classmethod
    def installed(cls) -> EtcdDr:
        beside = Path(sys.executable).with_name("etcd-dr")
        found = str(beside) if beside.exists() else shutil.which("etcd-dr")
        if found is None:
            raise BenchError("etcd-dr not found beside this Python nor on PATH: install the package")
        try:
            head = _git("rev-parse", "--short", "HEAD").decode().strip()
            diff = _git("diff", "HEAD", "--", "src") + _git("ls-files", "--others", "--", "src")
        except (BenchError, OSError, subprocess.TimeoutExpired):
            return cls([found], {}, f"{found} (not in a git checkout)")
        if not diff:
            return cls([found], {}, f"working tree = git {head}")
        digest = hashlib.sha1(diff).hexdigest()[:10]
        return cls(
            [found], {}, f"working tree = git {head} + uncommitted changes in src (diff sha1 {digest})"
        )

    @classmethod
    def at_revision(cls, rev: str, into: Path) -> EtcdDr:
        """Export src/etcd_dr as of `rev` and run it from there (this venv's dependencies)."""
        sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
        archive = _git("archive", "--format=tar", sha, "src/etcd_dr")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(into, filter="data")
        # Compiled ahead, as an installed package is (pip compiles it): with PYTHONDONTWRITEBYTECODE set
        # (as on the machines these figures come from) every run would otherwise compile the whole
        # package again, 0.05 to 0.2 s of its start-up.
        compileall.compile_dir(into / "src", quiet=1)
        code = "from etcd_dr.cli import main; main()"
        return cls([sys.executable, "-c", code], {"PYTHONPATH": str(into / "src")}, f"git {sha[:10]} ({rev})")


@dataclass(frozen=True)
class Storage:
    """Where the clusters keep their data: None = the fixture's default (/dev/shm when there is one,
    and etcd >= 3.5 started with --unsafe-no-fsync); a directory = a real disk, fsync on."""

    data_dir: Path | None = None

    def extra_args(self, bins: EtcdBinaries) -> tuple[str, ...]:
        # The fixture turns fsync off for 3.5 (throwaway test data); on a disk, measure the real thing.
        # etcd's flags are Go flags: the last occurrence wins.
        if self.data_dir is not None and bins.version_tuple >= (3, 5):
            return ("--unsafe-no-fsync=false",)
        return ()

    def describe(self, bins: EtcdBinaries) -> str:
        if self.data_dir is None:
            shm = Path("/dev/shm").is_dir()
            where = "/dev/shm (tmpfs)" if shm else tempfile.gettempdir()
            fsync = "off (--unsafe-no-fsync)" if bins.version_tuple >= (3, 5) else "on"
            return f"{where}, fsync {fsync}"
        return f"{self.data_dir} (--data-dir), fsync on"


@dataclass
class Tools:
    bins: EtcdBinaries
    log_dir: Path
    etcd_dr: EtcdDr
    storage: Storage = field(default_factory=Storage)
    quiet_wait: bool = True
    runs: int = 0
    mirror_args: tuple[str, ...] = ()  # --etcd-dr-args: more flags for every `etcd-dr mirror`

    def make_mirror(self, tag: str, src: str, dest: str) -> Proc:
        self.runs += 1
        return Proc(
            f"{self.runs:02d}-{tag}-make-mirror",
            [str(self.bins.etcdctl), "make-mirror", "--endpoints", src, dest],
            child_env({"ETCDCTL_API": "3"}),
            self.log_dir,
        )

    def mirror(self, tag: str, src: str, dest: str, *, once: bool) -> Proc:
        self.runs += 1
        argv = [*self.etcd_dr.argv, "mirror", dest, "--endpoints", src, *self.mirror_args]
        if once:
            argv.append("--once")
        return Proc(f"{self.runs:02d}-{tag}-etcd-dr", argv, child_env(self.etcd_dr.env), self.log_dir)


# ---- clusters ------------------------------------------------------------------------------------


@dataclass
class Pair:
    src: EtcdCluster
    dst: EtcdCluster
    src_client: EtcdClient
    dst_client: EtcdClient

    @property
    def src_addr(self) -> str:
        return self.src.hostports[0]

    @property
    def dst_addr(self) -> str:
        return self.dst.hostports[0]


@contextlib.asynccontextmanager
async def fresh_pair(tools: Tools, tag: str, dst_args: Sequence[str] = ()) -> AsyncIterator[Pair]:
    """New single-member source and destination clusters (`dst_args`: more flags for the destination)."""
    bins, storage = tools.bins, tools.storage
    opts: dict[str, Any] = {"base_dir": storage.data_dir, "extra_args": storage.extra_args(bins)}
    src = EtcdCluster(bins, 1, name=f"{tag}-src", **opts)
    dst_opts = {**opts, "extra_args": (*storage.extra_args(bins), *dst_args)}
    dst = EtcdCluster(bins, 1, name=f"{tag}-dst", **dst_opts)
    try:
        await asyncio.to_thread(src.start)
        await asyncio.to_thread(dst.start)
        async with (
            EtcdClient(ClientConfig.create(src.hostports[0])) as sc,
            EtcdClient(ClientConfig.create(dst.hostports[0])) as dc,
        ):
            yield Pair(src, dst, sc, dc)
    finally:
        await asyncio.to_thread(dst.stop)
        await asyncio.to_thread(src.stop)


class OtherLoad:
    """How much CPU the rest of the machine (not this bench, its tool, its etcd members) used during a
    run, in cores: the machine is shared, and with few cores a busy neighbour skews a result."""

    def __init__(self, pair: Pair, proc: Proc | None) -> None:
        self._pair, self._proc = pair, proc
        self._t0 = time.monotonic()
        self._busy0 = machine_busy_seconds()
        self._mine0 = self._mine()

    def _mine(self) -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        members = [*self._pair.src.members, *self._pair.dst.members]
        etcd = sum(pid_cpu_seconds(m.pid) for m in members if m.pid is not None)
        tool = self._proc.cpu_seconds() if self._proc is not None else 0.0
        return me.ru_utime + me.ru_stime + tool + etcd

    def cores(self) -> float:
        others = (machine_busy_seconds() - self._busy0) - (self._mine() - self._mine0)
        return max(others, 0.0) / max(time.monotonic() - self._t0, 1e-6)


QUIET_CORES = 0.3  # the rest of the machine counts as quiet below this many cores
QUIET_MAX_WAIT = 60.0


async def wait_quiet(tools: Tools, pair: Pair, proc: Proc | None = None) -> None:
    """Before a measurement: wait (at most QUIET_MAX_WAIT s) until the rest of the machine has used
    under QUIET_CORES cores for a second, so a neighbour's burst does not land in one tool's run."""
    if not tools.quiet_wait:
        return
    t0 = time.monotonic()
    while True:
        probe = OtherLoad(pair, proc)
        await asyncio.sleep(1.0)
        cores = probe.cores()
        waited = time.monotonic() - t0
        if cores < QUIET_CORES or waited >= QUIET_MAX_WAIT:
            if waited > 1.5:
                say(f"  (waited {waited:.0f} s for a quiet machine; others now use {cores:.2f} cores)")
            return


@contextlib.contextmanager
def delay_proxy(target: str, one_way: float) -> Iterator[FaultProxy]:
    proxy = FaultProxy.to(target)
    try:
        proxy.set_delay(one_way)
        yield proxy
    finally:
        proxy.close()


# ---- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    metric: str
    unit: str
    make_mirror: float | None
    etcd_dr: float | None
    better: str = "lower"  # "lower" or "higher": which way is better, for the ratio
    min_ratio: float | None = None  # goal: etcd-dr at least this many times better
    max_dr: float | None = None  # goal: etcd-dr's figure below this
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times better etcd-dr is than make-mirror (> 1: etcd-dr better)."""
        mm, dr = self.make_mirror, self.etcd_dr
        if mm is None or dr is None or mm <= 0 or dr <= 0:
            return None
        return mm / dr if self.better == "lower" else dr / mm

    @property
    def goal(self) -> str:
        if self.min_ratio is not None:
            return f">= {self.min_ratio:g}x"
        if self.max_dr is not None:
            return f"etcd-dr < {self.max_dr:g} {self.unit}"
        return "-"

    @property
    def met(self) -> bool | None:
        if self.min_ratio is not None:
            return self.ratio is not None and self.ratio >= self.min_ratio
        if self.max_dr is not None:
            return self.etcd_dr is not None and self.etcd_dr < self.max_dr
        return None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "goal": self.goal, "met": self.met}


def median_rows(runs: Sequence[Sequence[Row]]) -> list[Row]:
    """One row per (scenario, metric): the median of each tool's figure over the repeats."""
    out: list[Row] = []
    for i, row in enumerate(runs[0]):
        same = [r[i] for r in runs if i < len(r) and r[i].metric == row.metric]

        def med(values: list[float | None]) -> float | None:
            vals = [v for v in values if v is not None]
            return statistics.median(vals) if vals else None

        notes = sorted({r.note for r in same if r.note})
        out.append(
            replace(
                row,
                make_mirror=med([r.make_mirror for r in same]),
                etcd_dr=med([r.etcd_dr for r in same]),
                note="; ".join(notes),
            )
        )
    return out


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    repeats: dict[str, list[Any]] = field(default_factory=dict)


def say(text: str) -> None:
    print(text, flush=True)


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
    if unit == "MB":
        return f"{v:.0f} MB"
    if v >= 100:
        return f"{v:,.0f} {unit}"
    return f"{v:.1f} {unit}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:,.0f}x" if r >= 100 else f"{r:.1f}x"


def table(rows: Sequence[Row]) -> str:
    head = ["scenario", "make-mirror", "etcd-dr", "ratio", "goal", "met?"]
    body = [
        [
            f"{r.scenario}: {r.metric}",
            fmt(r.make_mirror, r.unit) + ("*" if "extrapolated" in r.note and r.make_mirror else ""),
            fmt(r.etcd_dr, r.unit),
            fmt_ratio(r.ratio),
            r.goal,
            "-" if r.met is None else ("yes" if r.met else "NO"),
        ]
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in body]
    return "\n".join(line.rstrip() for line in lines)


# ---- measurements shared by the scenarios --------------------------------------------------------


@dataclass
class CopyRun:
    seconds: float  # until the destination had every key (or until the cap)
    keys: int  # keys on the destination at that moment
    capped: bool
    peak_rss_mb: float
    cpu_seconds: float
    engine_seconds: float | None = None  # etcd-dr's own "copy: done ... in X s"
    # etcd-dr's whole copy, its checkpoints included, from its log's time stamps (ms): from "copying
    # the source at one revision" to "copy: done"
    copy_span: float | None = None
    other_cores: float = 0.0  # CPU the rest of the machine used meanwhile (see OtherLoad)
    checked: str = ""

    @property
    def rate(self) -> float:
        return self.keys / self.seconds


async def copy_with_make_mirror(tools: Tools, tag: str, pair: Pair, dest: str, n: int, cap: float) -> CopyRun:
    """make-mirror never exits: poll the destination until it has all n keys, or `cap` s.

    make-mirror puts the keys one by one in key order, so the last key's arrival is polled (a cheap
    get: counting 100,000s of keys 20 times a second would load the destination it writes to), then
    the count confirms it."""
    await wait_quiet(tools, pair)
    proc = tools.make_mirror(tag, pair.src_addr, dest)
    others = OtherLoad(pair, proc)
    last = key_of(DATA, n - 1)
    try:
        while True:
            have_last = await pair.dst_client.get(last) is not None
            now = time.monotonic()
            got = await count(pair.dst_client, DATA) if have_last or now - proc.started >= cap else 0
            if got >= n or now - proc.started >= cap:
                proc.sample_rss()
                run = CopyRun(now - proc.started, got, got < n, proc.peak_rss_mb, proc.cpu_seconds())
                run.other_cores = others.cores()
                break
            proc.ensure_running()
            await asyncio.sleep(0.02)
    finally:
        await proc.stop()
    if not run.capped:
        run.checked = await check_copy(pair.dst_client, DATA, n)
    return run


def engine_copy_seconds(proc: Proc) -> float | None:
    try:
        text = proc.log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if "copy: done at revision" in line and " in " in line:
            with contextlib.suppress(ValueError, IndexError):
                return float(line.split(" in ", 1)[1].split(" s", 1)[0])
    return None


async def copy_with_etcd_dr(tools: Tools, tag: str, pair: Pair, dest: str, n: int, timeout: float) -> CopyRun:
    """`etcd-dr mirror --once`: time until it exits 0, then check the destination."""
    await wait_quiet(tools, pair)
    proc = tools.mirror(tag, pair.src_addr, dest, once=True)
    others = OtherLoad(pair, proc)
    try:
        rc = await proc.wait(timeout)
        elapsed = time.monotonic() - proc.started
        other_cores = others.cores()
        if rc is None:
            raise BenchError(f"etcd-dr mirror --once still running after {timeout:g} s:\n{proc.log_tail()}")
        if rc != 0:
            raise BenchError(f"etcd-dr mirror --once exited with code {rc}:\n{proc.log_tail()}")
    finally:
        await proc.stop()
    run = CopyRun(elapsed, n, False, proc.peak_rss_mb, proc.cpu_seconds(), engine_copy_seconds(proc))
    run.copy_span = log_span(proc, "copying the source at one revision", "copy: done at revision")
    run.other_cores = other_cores
    run.checked = await check_copy(pair.dst_client, DATA, n)
    return run


@dataclass
class LoadRun:
    writes: int
    write_seconds: float  # load start to the last put's reply
    write_rate: float
    behind_at_load_end: int  # writes not yet on the destination when the load ended
    lag: float  # load end until the destination had the last write
    catch_up_seconds: float  # load start until the destination had the last write
    apply_rate: float
    extrapolated: bool  # the last write never arrived within the cap: lag and rate extrapolated
    peak_rss_mb: float
    cpu_seconds: float  # the tool's CPU from load start until caught up (or the cap)
    other_cores: float  # CPU the rest of the machine used meanwhile (see OtherLoad)

    @property
    def catch_up_rate(self) -> float | None:
        """Revisions applied per second after the load ended, while still behind: the tool's
        own replay capacity, with the writer no longer competing for the CPU."""
        if self.behind_at_load_end < max(100, self.writes // 100) or self.lag <= 0:
            return None
        return self.behind_at_load_end / self.lag


async def wait_caught_up(proc: Proc, client: EtcdClient, key: bytes, value: bytes, timeout: float) -> float:
    """Poll the destination until `key` has `value`; returns the moment. The tool must stay alive."""
    deadline = time.monotonic() + timeout
    while True:
        kv = await client.get(key)
        now = time.monotonic()
        if kv is not None and kv.value == value:
            return now
        proc.ensure_running()
        if now >= deadline:
            raise TimeoutError
        await asyncio.sleep(0.005)


async def write_puts(client: EtcdClient, prefix: bytes, n: int, inflight: int) -> tuple[bytes, bytes]:
    """`n` single-key puts of new keys under prefix, `inflight` at once, as fast as the source takes
    them; returns the key and value of the write with the highest revision (the last one)."""
    indices = iter(range(n))
    newest: dict[str, Any] = {"revision": 0, "key": b"", "value": b""}

    async def writer() -> None:
        for i in indices:  # shared iterator: each index is written by exactly one writer
            k, v = key_of(prefix, i), value_of(i, salt=b"w")
            r = await client.put(k, v)
            if r.header.revision > newest["revision"]:
                newest.update(revision=r.header.revision, key=k, value=v)

    await asyncio.gather(*(writer() for _ in range(inflight)))
    return bytes(newest["key"]), bytes(newest["value"])


async def replay_load(proc: Proc, pair: Pair, writes: int, inflight: int, cap: float) -> LoadRun:
    """With the mirror running and caught up: `writes` single-key puts (each a new key, so the
    destination's key count under LOAD counts applied revisions), `inflight` at once, as fast as
    the source takes them; then wait for the write with the highest revision on the destination."""
    dst = pair.dst_client
    cpu0 = proc.cpu_seconds()
    others = OtherLoad(pair, proc)
    t_start = time.monotonic()
    key, value = await write_puts(pair.src_client, LOAD, writes, inflight)
    t_end = time.monotonic()
    behind = writes - await count(dst, LOAD)
    extrapolated = False
    try:
        t_caught = await wait_caught_up(proc, dst, key, value, cap)
        applied = writes
    except TimeoutError:
        # Never caught up within the cap: extrapolate at the rate it applied so far.
        extrapolated = True
        now = time.monotonic()
        applied = await count(dst, LOAD)
        rate = applied / (now - t_start)
        t_caught = now + (writes - applied) / max(rate, 1e-9)
    proc.sample_rss()
    cpu = proc.cpu_seconds() - cpu0
    other_cores = others.cores()
    return LoadRun(
        writes=writes,
        write_seconds=t_end - t_start,
        write_rate=writes / (t_end - t_start),
        behind_at_load_end=behind,
        lag=t_caught - t_end,
        catch_up_seconds=t_caught - t_start,
        apply_rate=writes / (t_caught - t_start),
        extrapolated=extrapolated,
        peak_rss_mb=proc.peak_rss_mb,
        cpu_seconds=cpu,
        other_cores=other_cores,
    )


async def replay_run(
    tools: Tools, tag: str, pair: Pair, dest: str, which: str, writes: int, cap: float
) -> LoadRun:
    await pair.src_client.put(READY, b"1")
    if which == "make-mirror":
        proc = tools.make_mirror(tag, pair.src_addr, dest)
    else:
        proc = tools.mirror(tag, pair.src_addr, dest, once=False)
    try:
        try:
            await wait_caught_up(proc, pair.dst_client, READY, b"1", READY_TIMEOUT)
        except TimeoutError:
            raise BenchError(f"{which} did not copy one key in {READY_TIMEOUT:g} s") from None
        await wait_quiet(tools, pair, proc)  # also lets the mirror settle: it is watching, idle
        return await replay_load(proc, pair, writes, 64, cap)
    finally:
        await proc.stop()


@dataclass
class DrainRun:
    revisions: int
    seconds: float  # `etcd-dr mirror --once`: start to exit 0
    replay_seconds: float | None  # from its log: "resuming from the checkpoint" to "done"
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.revisions / (self.replay_seconds or self.seconds)


def log_time(line: str) -> float | None:
    """The time of an etcd-dr text log line ("2026-01-01T00:00:00.000Z INFO ...")."""
    with contextlib.suppress(ValueError, IndexError):
        stamp = line.split(" ", 1)[0].replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(stamp).timestamp()
    return None


def log_span(proc: Proc, start: str, end: str) -> float | None:
    """Seconds between the first log line containing `start` and the last containing `end`."""
    try:
        lines = proc.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    t0 = next((log_time(x) for x in lines if start in x), None)
    t1 = next((log_time(x) for x in reversed(lines) if end in x), None)
    return t1 - t0 if t0 is not None and t1 is not None else None


async def backlog_drain(
    tools: Tools, tag: str, pair: Pair, dest: str, writes: int, timeout: float
) -> DrainRun:
    """With etcd-dr stopped (its checkpoint on the destination), the source takes `writes` revisions;
    then `etcd-dr mirror --once` resumes from the checkpoint and replays them: the replay's capacity
    when it is behind, which a live run cannot show once the mirror keeps up with the writer."""
    await write_puts(pair.src_client, BACKLOG, writes, 64)
    await wait_quiet(tools, pair)
    proc = tools.mirror(tag, pair.src_addr, dest, once=True)
    try:
        rc = await proc.wait(timeout)
        elapsed = time.monotonic() - proc.started
        if rc != 0:
            raise BenchError(f"etcd-dr mirror --once (backlog) ended with {rc}:\n{proc.log_tail()}")
    finally:
        await proc.stop()
    got = await count(pair.dst_client, BACKLOG)
    if got != writes:
        raise BenchError(f"after the backlog replay the destination has {got} of {writes} keys")
    replay = log_span(proc, "resuming from the checkpoint", "done: source revision")
    return DrainRun(writes, elapsed, replay, proc.cpu_seconds(), proc.peak_rss_mb)


def describe_load(which: str, r: LoadRun) -> str:
    extra = " (EXTRAPOLATED: not caught up within the cap)" if r.extrapolated else ""
    return (
        f"  {which:<11}: source wrote {r.writes} revisions in {r.write_seconds:.2f} s "
        f"({r.write_rate:,.0f}/s); {r.behind_at_load_end} behind at load end; lag at load end "
        f"{r.lag:.3f} s; caught up {r.catch_up_seconds:.2f} s after load start "
        f"({r.apply_rate:,.0f} rev/s){extra}; tool CPU {r.cpu_seconds:.1f} s "
        f"({1e6 * r.cpu_seconds / r.writes:.0f} us per revision), "
        f"peak RSS {r.peak_rss_mb:.0f} MB; others used {r.other_cores:.2f} cores"
    )


def describe_copy(which: str, run: CopyRun, n: int) -> str:
    capped = f" (CAPPED: {run.keys:,} of {n:,} keys; rate extrapolated)" if run.capped else ""
    engine = f" (engine's own copy time {run.engine_seconds:.2f} s)" if run.engine_seconds else ""
    return (
        f"  {which:<11}: {run.keys:,} keys in {run.seconds:.2f} s ({run.rate:,.1f} keys/s){engine}{capped}; "
        f"CPU {run.cpu_seconds:.1f} s, peak RSS {run.peak_rss_mb:.0f} MB; others used "
        f"{run.other_cores:.2f} cores; {run.checked or 'not checked'}"
    )


# ---- the scenarios -------------------------------------------------------------------------------


async def scenario_copy(tools: Tools, sizes: Sizes, res: Results) -> None:
    n = sizes.copy_keys
    say(f"\n== copy: initial copy of {n:,} keys of {VALUE_SIZE} B")
    runs: dict[str, CopyRun] = {}
    for which in ("make-mirror", "etcd-dr"):
        async with fresh_pair(tools, "copy") as pair:
            secs = await load_keys(pair.src_client, DATA, n, batch=100, inflight=8)
            say(f"  loaded {n:,} keys into the source in {secs:.1f} s ({n / secs:,.0f} keys/s)")
            if which == "make-mirror":
                run = await copy_with_make_mirror(tools, "copy", pair, pair.dst_addr, n, sizes.copy_cap)
            else:
                run = await copy_with_etcd_dr(tools, "copy", pair, pair.dst_addr, n, sizes.dr_timeout)
            runs[which] = run
            say(describe_copy(which, run, n))
    mm, dr = runs["make-mirror"], runs["etcd-dr"]
    mm_secs = n / mm.rate if mm.capped else mm.seconds
    row = Row(
        "copy",
        f"{n // 1000}k keys, time",
        "s",
        mm_secs,
        dr.seconds,
        min_ratio=30,
        note="make-mirror extrapolated from its rate at the cap" if mm.capped else "",
    )
    res.rows.append(row)
    res.rows.append(Row("copy", "rate", "keys/s", n / mm_secs, dr.rate, better="higher"))
    res.details["copy"] = {k: asdict(v) for k, v in runs.items()}


async def scenario_replay(tools: Tools, sizes: Sizes, res: Results) -> None:
    w = sizes.replay_writes
    say(f"\n== replay: mirror running, then {w:,} single-key puts, 64 in flight")
    runs: dict[str, LoadRun] = {}
    drain: DrainRun | None = None
    for which in ("make-mirror", "etcd-dr"):
        async with fresh_pair(tools, "replay") as pair:
            runs[which] = await replay_run(tools, "replay", pair, pair.dst_addr, which, w, sizes.replay_cap)
            say(describe_load(which, runs[which]))
            if which == "etcd-dr":
                drain = await backlog_drain(tools, "backlog", pair, pair.dst_addr, w, sizes.dr_timeout)
                replay = (
                    f", {drain.replay_seconds:.2f} s from its checkpoint to done"
                    if drain.replay_seconds
                    else ""
                )
                say(
                    f"  etcd-dr    : backlog of {w:,} revisions written while stopped: --once took "
                    f"{drain.seconds:.2f} s{replay} ({drain.rate:,.0f} rev/s); "
                    f"CPU {drain.cpu_seconds:.1f} s, peak RSS {drain.peak_rss_mb:.0f} MB"
                )
    mm, dr = runs["make-mirror"], runs["etcd-dr"]
    ext = "make-mirror extrapolated (not caught up within the cap)" if mm.extrapolated else ""
    res.rows.append(
        Row("replay", "source write rate", "rev/s", mm.write_rate, dr.write_rate, better="higher")
    )
    lag = Row("replay", "lag at load end", "s", mm.lag, dr.lag, max_dr=0.5, note=ext)
    rate = Row(
        "replay",
        "sustained apply rate",
        "rev/s",
        mm.apply_rate,
        dr.apply_rate,
        "higher",
        min_ratio=3,
        note=ext,
    )
    capacity = Row(
        "replay",
        "capacity when behind",
        "rev/s",
        mm.catch_up_rate,
        drain.rate if drain else None,
        better="higher",
        note="make-mirror: its catch-up rate after the load ended; etcd-dr: its replay of a backlog of "
        "the same size from its checkpoint (--once)",
    )
    cpu = Row(
        "replay",
        "tool CPU per revision",
        "us",
        1e6 * mm.cpu_seconds / mm.writes,
        1e6 * dr.cpu_seconds / dr.writes,
        note="the tool's user + system CPU from load start until caught up, per source write",
    )
    res.rows += [lag, rate, capacity, cpu]
    res.details["replay"] = {k: {**asdict(v), "catch_up_rate": v.catch_up_rate} for k, v in runs.items()}
    if drain is not None:
        res.details["replay"]["etcd-dr backlog"] = {**asdict(drain), "rate": drain.rate}


async def scenario_rss(tools: Tools, sizes: Sizes, res: Results) -> None:
    n = sizes.rss_keys
    say(f"\n== rss: initial copy of {n:,} keys of {VALUE_SIZE} B, peak RSS")
    runs: dict[str, CopyRun] = {}
    order = ("make-mirror", "etcd-dr") if sizes.rss_mm_cap is not None else ("etcd-dr",)
    for which in order:
        async with fresh_pair(tools, "rss") as pair:
            secs = await load_keys(pair.src_client, DATA, n, batch=100, inflight=16)
            say(f"  loaded {n:,} keys into the source in {secs:.1f} s ({n / secs:,.0f} keys/s)")
            if which == "make-mirror":
                assert sizes.rss_mm_cap is not None
                run = await copy_with_make_mirror(tools, "rss", pair, pair.dst_addr, n, sizes.rss_mm_cap)
            else:
                run = await copy_with_etcd_dr(tools, "rss", pair, pair.dst_addr, n, sizes.dr_timeout)
            runs[which] = run
            say(describe_copy(which, run, n))
    dr = runs["etcd-dr"]
    mm = runs.get("make-mirror")
    note = "make-mirror: capped run, RSS over that part, time extrapolated" if mm and mm.capped else ""
    rss = Row(
        "rss",
        f"{n // 1000}k keys, peak RSS",
        "MB",
        mm.peak_rss_mb if mm else None,
        dr.peak_rss_mb,
        max_dr=200,
        note=note,
    )
    mm_secs = (n / mm.rate if mm.capped else mm.seconds) if mm else None
    res.rows.append(rss)
    res.rows.append(Row("rss", f"{n // 1000}k keys, time", "s", mm_secs, dr.seconds, note=note))
    res.details["rss"] = {k: asdict(v) for k, v in runs.items()}


async def scenario_distance(tools: Tools, sizes: Sizes, res: Results) -> None:
    n, w = sizes.distance_keys, sizes.distance_writes
    rtt_ms = 2 * DELAY_ONE_WAY * 1000
    say(f"\n== distance: {rtt_ms:.0f} ms round trip to the destination (delay proxy)")
    say(f"  copy of {n:,} keys (make-mirror capped at {sizes.distance_mm_cap:g} s, rate extrapolated)")
    copies: dict[str, CopyRun] = {}
    for which in ("make-mirror", "etcd-dr"):
        async with fresh_pair(tools, "dist") as pair:
            await load_keys(pair.src_client, DATA, n, batch=100, inflight=8)
            with delay_proxy(pair.dst_addr, DELAY_ONE_WAY) as proxy:
                if which == "make-mirror":
                    run = await copy_with_make_mirror(
                        tools, "dist-copy", pair, proxy.address, n, sizes.distance_mm_cap
                    )
                else:
                    run = await copy_with_etcd_dr(
                        tools, "dist-copy", pair, proxy.address, n, sizes.dr_timeout
                    )
            copies[which] = run
            say(describe_copy(which, run, n))
    say(f"  replay of {w:,} single-key puts, 64 in flight")
    loads: dict[str, LoadRun] = {}
    for which in ("make-mirror", "etcd-dr"):
        async with fresh_pair(tools, "dist") as pair:
            with delay_proxy(pair.dst_addr, DELAY_ONE_WAY) as proxy:
                loads[which] = await replay_run(
                    tools, "dist-replay", pair, proxy.address, which, w, sizes.distance_replay_cap
                )
            say(describe_load(which, loads[which]))
    mm, dr = copies["make-mirror"], copies["etcd-dr"]
    copy = Row(
        "distance",
        f"{n // 1000}k keys copy rate",
        "keys/s",
        mm.rate,
        dr.rate,
        better="higher",
        min_ratio=100,
        note="make-mirror extrapolated from the keys it copied in its capped run" if mm.capped else "",
    )
    lm, ld = loads["make-mirror"], loads["etcd-dr"]
    lag = Row(
        "distance",
        f"{w} writes, lag at load end",
        "s",
        lm.lag,
        ld.lag,
        max_dr=1.0,
        note="make-mirror extrapolated" if lm.extrapolated else "",
    )
    rate = Row(
        "distance",
        "replay apply rate",
        "rev/s",
        lm.apply_rate,
        ld.apply_rate,
        better="higher",
        note="make-mirror extrapolated" if lm.extrapolated else "",
    )
    res.rows += [copy, lag, rate]
    res.details["distance"] = {
        "copy": {k: asdict(v) for k, v in copies.items()},
        "replay": {k: asdict(v) for k, v in loads.items()},
    }


EVENTS = PREFIX + b"events/"  # the leased scenario's keys: siblings under one prefix


async def load_events(client: EtcdClient, n: int, *, leased: bool, per_lease: int = 100) -> None:
    """n keys under EVENTS, one put each (so each has its own create revision), 64 in flight; with
    `leased`, on leases of 1 h shared by `per_lease` keys each, as Kubernetes attaches its events."""
    leases = [(await client.lease_grant(3600)).id for _ in range(0, n, per_lease)] if leased else []
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            await client.put(key_of(EVENTS, i), value_of(i), lease=leases[i // per_lease] if leased else 0)

    await asyncio.gather(*(worker() for _ in range(64)))


async def check_events(pair: Pair, n: int, how: str) -> str:
    """The destination has the n keys; in layers, ranked by create revision as on the source, no two
    sharing one; as data, the order records hold all n."""

    async def order(c: EtcdClient) -> list[tuple[int, bytes, int]]:
        kvs = (await c.range(EVENTS, prefix_range_end(EVENTS))).kvs
        return sorted((kv.create_revision, kv.key, kv.lease) for kv in kvs)

    src, dst = await order(pair.src_client), await order(pair.dst_client)
    if len(dst) != n:
        raise BenchError(f"destination has {len(dst)} keys under {EVENTS!r}, expected {n}")
    if how == "unleased":
        return "all keys there (unleased: no order kept)"
    if any(not lease for _, _, lease in dst):
        raise BenchError("a leased key is on the destination without a lease")
    if how == "as data":
        layout = StateLayout(DEFAULT_STATE_PREFIX)
        records = (await pair.dst_client.get_prefix(layout.order_records)).kvs
        kept = sum(len(g) for kv in records for g in OrderRecord.decode(kv.value).groups)
        if kept != n:
            raise BenchError(f"the order records hold {kept} keys, expected {n}")
        return f"order kept as data ({len(records)} records)"
    if [k for _, k, _ in dst] != [k for _, k, _ in src] or len({r for r, _, _ in dst}) != n:
        raise BenchError("the destination does not rank the leased keys by create revision as the source")
    return "create order as on the source, each key its own revision"


LEASED_HOW = {  # variant -> (leased, etcd-dr's extra flags)
    "unleased": (False, ()),
    "in layers": (True, ("--ordered-copy-time", "1h")),  # every sibling in order, one txn each
    "as data": (True, ("--ordered-copy-time", "0")),  # the order kept as data, for the promotion
}


async def scenario_leased(tools: Tools, sizes: Sizes, res: Results) -> None:
    say("\n== leased: etcd-dr's copy of leased siblings (create order kept) beside unleased ones")
    runs: dict[str, CopyRun] = {}
    for far in (False, True):
        n = sizes.leased_keys if not far else sizes.leased_far_keys
        where = f"{2 * DELAY_ONE_WAY * 1000:.0f} ms" if far else "loopback"
        for how, (leased, extra) in LEASED_HOW.items():
            which = f"{how}, {where}"
            async with fresh_pair(tools, "leased") as pair:
                await load_events(pair.src_client, n, leased=leased)
                await wait_quiet(tools, pair)
                with contextlib.ExitStack() as stack:
                    dest = pair.dst_addr
                    if far:
                        dest = stack.enter_context(delay_proxy(pair.dst_addr, DELAY_ONE_WAY)).address
                    tools.runs += 1
                    argv = [
                        *tools.etcd_dr.argv,
                        "mirror",
                        dest,
                        "--endpoints",
                        pair.src_addr,
                        "--once",
                        *extra,
                    ]
                    proc = Proc(
                        f"{tools.runs:02d}-leased-etcd-dr", argv, child_env(tools.etcd_dr.env), tools.log_dir
                    )
                    try:
                        rc = await proc.wait(sizes.dr_timeout)
                        elapsed = time.monotonic() - proc.started
                        if rc != 0:
                            raise BenchError(f"etcd-dr mirror --once: exit {rc}:\n{proc.log_tail()}")
                    finally:
                        await proc.stop()
                run = CopyRun(
                    elapsed, n, False, proc.peak_rss_mb, proc.cpu_seconds(), engine_copy_seconds(proc)
                )
                run.checked = await check_events(pair, n, how)
                runs[which] = run
                say(describe_copy(which, run, n))
                if how == "as data" and not far:
                    # What a promotion adds: the keys created again in order, on the promoted site.
                    t0 = time.monotonic()
                    again = await recreate_in_order(
                        pair.dst_client, StateLayout(DEFAULT_STATE_PREFIX), "the standby"
                    )
                    secs = time.monotonic() - t0
                    run.checked += "; " + await check_events(pair, n, "in layers")
                    say(f"  promotion's re-creation of {again:,} keys in order: {secs:.2f} s; {run.checked}")
                    res.rows.append(Row("leased", f"{n:,} keys, promotion's re-creation", "s", None, secs))
        for how in ("in layers", "as data"):
            plain, ordered = runs[f"unleased, {where}"], runs[f"{how}, {where}"]
            res.rows.append(
                Row(
                    "leased",
                    f"{n:,} keys copy, {where}, leased {how}",
                    "s",
                    plain.engine_seconds or plain.seconds,
                    ordered.engine_seconds or ordered.seconds,
                    note="the make-mirror column holds etcd-dr's copy of the same keys unleased",
                )
            )
    res.details["leased"] = {k: asdict(v) for k, v in runs.items()}


# The destination's limits in the far scenario: as `render` configures a standby, and etcd's defaults.
RENDERED_DEST = ("--max-txn-ops=4096", f"--max-request-bytes={10 * 1024 * 1024}")
FAR_RTTS_MS = (30, 100)
FAR_RUNS = (("make-mirror", "default"), ("etcd-dr", "rendered"), ("etcd-dr", "default"))


async def scenario_far(tools: Tools, sizes: Sizes, res: Results) -> None:
    """Issue 14's distances: per round trip, the copy and a sustained replay for make-mirror and for
    etcd-dr against a destination with the rendered limits and with etcd's defaults."""
    n, w = sizes.distance_keys, sizes.far_writes
    details: dict[str, Any] = {}
    for rtt in FAR_RTTS_MS:
        one_way = rtt / 2000
        say(f"\n== far: {rtt} ms round trip to the destination ({one_way * 1000:.0f} ms each way)")
        copies: dict[tuple[str, str], CopyRun] = {}
        loads: dict[tuple[str, str], LoadRun] = {}
        for which, limits in FAR_RUNS:
            args = RENDERED_DEST if limits == "rendered" else ()
            label = f"{which} ({limits} limits)" if which == "etcd-dr" else which
            async with fresh_pair(tools, f"far{rtt}", dst_args=args) as pair:
                await load_keys(pair.src_client, DATA, n, batch=100, inflight=8)
                with delay_proxy(pair.dst_addr, one_way) as proxy:
                    if which == "make-mirror":
                        run = await copy_with_make_mirror(
                            tools, f"far{rtt}-copy", pair, proxy.address, n, sizes.far_mm_cap
                        )
                    else:
                        run = await copy_with_etcd_dr(
                            tools, f"far{rtt}-copy", pair, proxy.address, n, sizes.dr_timeout
                        )
                copies[which, limits] = run
                say(describe_copy(label, run, n))
            async with fresh_pair(tools, f"far{rtt}", dst_args=args) as pair:
                with delay_proxy(pair.dst_addr, one_way) as proxy:
                    loads[which, limits] = await replay_run(
                        tools, f"far{rtt}-replay", pair, proxy.address, which, w, sizes.far_mm_cap
                    )
                say(describe_load(label, loads[which, limits]))
        mm_copy, mm_load = copies["make-mirror", "default"], loads["make-mirror", "default"]
        mm_note = "make-mirror extrapolated from its capped run"
        for limits in ("rendered", "default"):
            dr_copy, dr_load = copies["etcd-dr", limits], loads["etcd-dr", limits]
            where = f"{rtt} ms, dest {limits}"
            res.rows.append(
                Row(
                    "far",
                    f"{where}: {n // 1000}k keys copy rate",
                    "keys/s",
                    mm_copy.rate,
                    dr_copy.rate,
                    better="higher",
                    min_ratio=1000 if rtt == 100 and limits == "rendered" else None,
                    note=mm_note if mm_copy.capped else "",
                )
            )
            res.rows.append(
                Row(
                    "far",
                    f"{where}: {w:,} writes, lag at load end",
                    "s",
                    mm_load.lag,
                    dr_load.lag,
                    max_dr=(1.0 if rtt == 30 else 2.0) if limits == "rendered" else None,
                    note=mm_note if mm_load.extrapolated else "",
                )
            )
            res.rows.append(
                Row(
                    "far",
                    f"{where}: apply rate",
                    "rev/s",
                    mm_load.apply_rate,
                    dr_load.apply_rate,
                    better="higher",
                    note=mm_note if mm_load.extrapolated else "",
                )
            )
        details[f"{rtt}ms"] = {
            "copy": {f"{a} {b}": asdict(v) for (a, b), v in copies.items()},
            "replay": {f"{a} {b}": asdict(v) for (a, b), v in loads.items()},
        }
    res.details["far"] = details


async def scenario_farcopy(tools: Tools, sizes: Sizes, res: Results) -> None:
    """etcd-dr's copy of the far scenario alone (rendered destination), end to end and in the engine."""
    n = sizes.distance_keys
    details: dict[str, Any] = {}
    for rtt in FAR_RTTS_MS:
        one_way = rtt / 2000
        say(f"\n== farcopy: {rtt} ms round trip to the destination ({one_way * 1000:.0f} ms each way)")
        async with fresh_pair(tools, f"farcopy{rtt}", dst_args=RENDERED_DEST) as pair:
            await load_keys(pair.src_client, DATA, n, batch=100, inflight=8)
            with delay_proxy(pair.dst_addr, one_way) as proxy:
                run = await copy_with_etcd_dr(
                    tools, f"farcopy{rtt}", pair, proxy.address, n, sizes.dr_timeout
                )
        say(describe_copy("etcd-dr", run, n))
        say(f"  the whole copy with its checkpoints (log time stamps): {run.copy_span or 0:.3f} s")
        engine = n / run.engine_seconds if run.engine_seconds else None
        res.rows.append(
            Row(
                "farcopy",
                f"{rtt} ms: {n // 1000}k keys copy rate, end to end",
                "keys/s",
                None,
                run.rate,
                "higher",
            )
        )
        res.rows.append(
            Row("farcopy", f"{rtt} ms: {n // 1000}k keys copy rate, engine", "keys/s", None, engine, "higher")
        )
        res.rows.append(
            Row(
                "farcopy",
                f"{rtt} ms: {n // 1000}k keys, whole copy with checkpoints",
                "s",
                None,
                run.copy_span,
            )
        )
        details[f"{rtt}ms"] = asdict(run)
    res.details["farcopy"] = details


async def scenario_alongside(tools: Tools, sizes: Sizes, res: Results) -> None:
    """Both mirrors at once from one source (each into its own destination), on the same cores: the
    replay's CPU per revision is what limits it then."""
    w = sizes.replay_writes
    say(f"\n== alongside: make-mirror and etcd-dr running at once from one source, {w:,} puts, 64 in flight")
    bins, storage = tools.bins, tools.storage
    async with fresh_pair(tools, "along") as pair:
        dst2 = EtcdCluster(
            bins, 1, name="along-dst2", base_dir=storage.data_dir, extra_args=storage.extra_args(bins)
        )
        await asyncio.to_thread(dst2.start)
        try:
            async with EtcdClient(ClientConfig.create(dst2.hostports[0])) as d2:
                await pair.src_client.put(READY, b"1")
                mm = tools.make_mirror("along", pair.src_addr, dst2.hostports[0])
                dr = tools.mirror("along", pair.src_addr, pair.dst_addr, once=False)
                try:
                    await wait_caught_up(mm, d2, READY, b"1", READY_TIMEOUT)
                    await wait_caught_up(dr, pair.dst_client, READY, b"1", READY_TIMEOUT)
                    await wait_quiet(tools, pair, dr)
                    cpu0 = {"make-mirror": mm.cpu_seconds(), "etcd-dr": dr.cpu_seconds()}
                    others = OtherLoad(pair, dr)
                    t0 = time.monotonic()
                    key, value = await write_puts(pair.src_client, LOAD, w, 64)
                    t_end = time.monotonic()

                    async def caught(proc: Proc, client: EtcdClient) -> float:
                        try:
                            return await wait_caught_up(proc, client, key, value, sizes.replay_cap)
                        except TimeoutError:
                            cap = sizes.replay_cap
                            raise BenchError(f"{proc.name} not caught up {cap:g} s after the load") from None

                    t_mm, t_dr = await asyncio.gather(caught(mm, d2), caught(dr, pair.dst_client))
                    cpu = {"make-mirror": mm.cpu_seconds(), "etcd-dr": dr.cpu_seconds()}
                    other_cores = others.cores()
                finally:
                    await dr.stop()
                    await mm.stop()
        finally:
            await asyncio.to_thread(dst2.stop)
    rate = w / (t_end - t0)
    lags = {"make-mirror": t_mm - t_end, "etcd-dr": t_dr - t_end}
    per_rev = {k: 1e6 * (cpu[k] - cpu0[k]) / w for k in cpu}
    for k in ("make-mirror", "etcd-dr"):
        say(
            f"  {k:<11}: source wrote {w} revisions in {t_end - t0:.2f} s ({rate:,.0f}/s); lag at load end "
            f"{lags[k]:.3f} s; CPU {cpu[k] - cpu0[k]:.1f} s ({per_rev[k]:.0f} us per revision); "
            f"others used {other_cores:.2f} cores"
        )
    res.rows.append(Row("alongside", "source write rate", "rev/s", rate, rate, better="higher"))
    res.rows.append(
        Row("alongside", "lag at load end", "s", lags["make-mirror"], lags["etcd-dr"], max_dr=0.5)
    )
    res.rows.append(
        Row("alongside", "tool CPU per revision", "us", per_rev["make-mirror"], per_rev["etcd-dr"])
    )
    res.details["alongside"] = {"write_rate": rate, "lag": lags, "cpu_us_per_revision": per_rev}


# ---- catch-up: a backlog far behind the checkpoint --------------------------------------------------


async def etcdctl_watch_read(tools: Tools, addr: str, first: int, last_key: bytes, timeout: float) -> float:
    """Seconds one `etcdctl watch --rev FIRST` takes to print the backlog up to `last_key` (the key
    written last): one etcd watcher's read rate of the backlog, the baseline of the catch-up."""
    argv = [str(tools.bins.etcdctl), "--endpoints", addr, "watch", "--prefix", "", "--rev", str(first)]
    env = child_env({"ETCDCTL_API": "3"})

    def read() -> float:
        started = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            assert p.stdout is not None
            for line in p.stdout:
                if line.rstrip(b"\n") == last_key:
                    return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    break
            raise BenchError(f"etcdctl watch --rev {first} did not print {last_key!r} within {timeout:g} s")
        finally:
            p.kill()
            p.wait()

    return await asyncio.to_thread(read)


# The destination as `render` configures a standby (issue 14): txns of up to 4096 ops and 16 MiB; the
# mirror is given the same --max-txn-ops (until it learns the destination's limits by itself).
STANDBY_TXN_OPS = 4096
STANDBY_REQUEST_BYTES = 16 * 1024 * 1024


@contextlib.asynccontextmanager
async def standby_pair(tools: Tools, tag: str) -> AsyncIterator[Pair]:
    """Like fresh_pair, with the destination started with the standby's txn limits."""
    bins, storage = tools.bins, tools.storage
    limits = (f"--max-txn-ops={STANDBY_TXN_OPS}", f"--max-request-bytes={STANDBY_REQUEST_BYTES}")
    src = EtcdCluster(
        bins, 1, name=f"{tag}-src", base_dir=storage.data_dir, extra_args=storage.extra_args(bins)
    )
    dst = EtcdCluster(
        bins, 1, name=f"{tag}-dst", base_dir=storage.data_dir, extra_args=(*storage.extra_args(bins), *limits)
    )
    try:
        await asyncio.to_thread(src.start)
        await asyncio.to_thread(dst.start)
        async with (
            EtcdClient(ClientConfig.create(src.hostports[0])) as sc,
            EtcdClient(ClientConfig.create(dst.hostports[0])) as dc,
        ):
            yield Pair(src, dst, sc, dc)
    finally:
        await asyncio.to_thread(dst.stop)
        await asyncio.to_thread(src.stop)


def catchup_mirror(tools: Tools, tag: str, pair: Pair, extra: Sequence[str]) -> Proc:
    tools.runs += 1
    argv = [*tools.etcd_dr.argv, "mirror", pair.dst_addr, "--endpoints", pair.src_addr, "--once"]
    argv += ["--max-txn-ops", str(STANDBY_TXN_OPS), *extra]
    return Proc(f"{tools.runs:02d}-{tag}-etcd-dr", argv, child_env(tools.etcd_dr.env), tools.log_dir)


@dataclass
class CatchUpRun:
    revisions: int
    seconds: float  # from the log: "resuming from the checkpoint" to "done"
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.revisions / self.seconds


async def scenario_catchup(tools: Tools, sizes: Sizes, res: Results) -> None:
    n = sizes.catchup_revisions
    say(f"\n== catch-up: `mirror --once` from a checkpoint {n:,} single-key revisions behind the head")
    async with standby_pair(tools, "catchup") as pair:
        first_run = catchup_mirror(tools, "catchup-ckpt", pair, ["--heartbeat-interval", "0"])
        if await first_run.wait(sizes.dr_timeout) != 0:
            raise BenchError(f"etcd-dr mirror --once (checkpoint) failed:\n{first_run.log_tail()}")
        # The checkpoint as the first run left it: put back before each measured run.
        saved = (await pair.dst_client.range(b"/etcd-dr/mirror/", prefix_range_end(b"/etcd-dr/mirror/"))).kvs
        if len(saved) != 1:
            raise BenchError(f"expected one checkpoint on the destination, found {len(saved)}")
        ckpt_key, ckpt_value = saved[0].key, saved[0].value
        first = (await pair.src_client.status()).revision + 1
        last_key, _ = await write_puts(pair.src_client, BACKLOG, n, 64)
        revisions = (await pair.src_client.status()).revision - first + 1
        await wait_quiet(tools, pair)
        base = await etcdctl_watch_read(tools, pair.src_addr, first, last_key, sizes.dr_timeout)
        say(
            f"  etcdctl watch --rev: read {revisions:,} revisions in {base:.2f} s "
            f"({revisions / base:,.0f} rev/s)"
        )
        runs: dict[str, CatchUpRun] = {}
        for which, extra in (("one watch", ["--catch-up", "1/1/1"]), ("slices", [])):
            await pair.dst_client.delete_prefix(BACKLOG)
            await pair.dst_client.put(ckpt_key, ckpt_value)
            await wait_quiet(tools, pair)
            proc = catchup_mirror(tools, "catchup", pair, ["--heartbeat-interval", "0", *extra])
            try:
                if await proc.wait(sizes.dr_timeout) != 0:
                    raise BenchError(f"etcd-dr mirror --once (catch-up) failed:\n{proc.log_tail()}")
            finally:
                await proc.stop()
            got = await count(pair.dst_client, BACKLOG)
            if got != n:
                raise BenchError(f"after the catch-up the destination has {got} of {n} keys")
            span = log_span(proc, "resuming from the checkpoint", "done: source revision")
            run = CatchUpRun(
                revisions, span or time.monotonic() - proc.started, proc.cpu_seconds(), proc.peak_rss_mb
            )
            runs[which] = run
            say(
                f"  etcd-dr ({which}): {revisions:,} revisions in {run.seconds:.2f} s "
                f"({run.rate:,.0f} rev/s); "
                f"CPU {run.cpu_seconds:.1f} s ({run.cpu_seconds / revisions * 1e6:.0f} us/rev), "
                f"peak RSS {run.peak_rss_mb:.0f} MB"
            )
    res.rows.append(
        Row(
            "catch-up",
            f"{n // 1000}k-revision backlog read/applied",
            "rev/s",
            revisions / base,
            runs["slices"].rate,
            better="higher",
            min_ratio=2,
            note="the make-mirror column is one `etcdctl watch --rev` reading the same backlog; etcd-dr "
            "through one watch (--catch-up 1/1/1) is on each run's lines",
        )
    )
    res.details["catchup"] = {
        "revisions": revisions,
        "etcdctl_watch_seconds": base,
        "runs": {k: {**asdict(v), "rate": v.rate} for k, v in runs.items()},
    }


RUNNERS = {
    "leased": scenario_leased,
    "copy": scenario_copy,
    "replay": scenario_replay,
    "rss": scenario_rss,
    "distance": scenario_distance,
    "far": scenario_far,
    "farcopy": scenario_farcopy,
    "alongside": scenario_alongside,
    "catchup": scenario_catchup,
}


# ---- machine facts, main -------------------------------------------------------------------------


def _first_line(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def machine_facts(bins: EtcdBinaries, etcd_dr: EtcdDr, storage: Storage) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "etcd": f"{bins.version} ({bins.etcd})",
        "etcdctl": f"{_first_line([str(bins.etcdctl), 'version'], child_env({'ETCDCTL_API': '3'}))} "
        f"({bins.etcdctl})",
        "etcd_dr": f"{_first_line([*etcd_dr.argv, '--version'], child_env(etcd_dr.env))}, {etcd_dr.source}",
        "etcd_data": storage.describe(bins),
    }


async def run(args: argparse.Namespace, storage: Storage) -> int:
    sizes = QUICK if args.quick else FULL
    if args.distance_writes is not None:
        sizes = replace(sizes, distance_writes=args.distance_writes)
    bins = etcd_binaries.find(args.etcd_version)
    only = [s for part in (args.only or []) for s in part.split(",") if s] or list(SCENARIOS)
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        say(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        return 2
    res = Results()
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="etcd-dr-bench-") as tmp:
        try:
            if args.etcd_dr_rev:
                etcd_dr = EtcdDr.at_revision(args.etcd_dr_rev, Path(tmp) / "etcd-dr")
            else:
                etcd_dr = EtcdDr.installed()
        except BenchError as e:
            say(f"etcd-dr: {e}")
            return 2
        facts = machine_facts(bins, etcd_dr, storage)
        say("etcd-dr mirror vs etcdctl make-mirror" + (" (--quick)" if args.quick else ""))
        for k, v in facts.items():
            say(f"  {k:<9} {v}")
        log_dir = Path(args.keep_logs) if args.keep_logs else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        tools = Tools(
            bins,
            log_dir,
            etcd_dr,
            storage,
            quiet_wait=not args.no_quiet_wait,
            mirror_args=tuple(shlex.split(args.etcd_dr_args)),
        )
        if tools.mirror_args:
            say(f"  etcd-dr   mirror run with {shlex.join(tools.mirror_args)} (--etcd-dr-args)")
        for name in only:
            done: list[list[Row]] = []
            for i in range(args.repeat):
                t0 = time.monotonic()
                if args.repeat > 1:
                    say(f"\n-- {name}: run {i + 1} of {args.repeat}")
                sub = Results()
                try:
                    await RUNNERS[name](tools, sizes, sub)
                    done.append(sub.rows)
                except (BenchError, TimeoutError, OSError, RuntimeError) as e:
                    res.errors[f"{name} #{i + 1}"] = str(e)
                    say(f"  {name}: FAILED: {e}")
                res.details.setdefault(name, []).append(sub.details.get(name))
                res.repeats.setdefault(name, []).append([r.as_json() for r in sub.rows])
                say(f"  ({name} took {time.monotonic() - t0:.0f} s)")
            if done:
                res.rows += median_rows(done) if len(done) > 1 else done[0]
    runs = f"median of {args.repeat} runs per figure; " if args.repeat > 1 else ""
    say(f"\n{runs}ratio = how many times better etcd-dr is (> 1: etcd-dr better); * = extrapolated")
    say(table(res.rows))
    for r in res.rows:
        if r.note:
            say(f"  note ({r.scenario}: {r.metric}): {r.note}")
    for name, err in res.errors.items():
        say(f"  {name}: FAILED: {err.splitlines()[0]}")
    out = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeat": args.repeat,
        "sizes": asdict(sizes),
        "machine": facts,
        "rows": [r.as_json() for r in res.rows],
        "repeats": res.repeats,
        "details": res.details,
        "errors": res.errors,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{stamp}-etcd{bins.version}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    say(f"\nresults: {path.relative_to(ROOT)}")
    return 1 if res.errors else 0


async def main_async(args: argparse.Namespace, storage: Storage) -> int:
    # SIGTERM ends the run like Ctrl-C does: through every `finally`, so no process is left behind.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(args, storage)


class _ProxyShutdownNoise(logging.Filter):
    """FaultProxy.close() cancels its open connection handlers; Python 3.11's asyncio.streams then logs
    "Exception in callback StreamReaderProtocol.connection_made...callback" with a CancelledError
    traceback for each. Harmless (the bench has already stopped the tools), so kept out of the output."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(exc, asyncio.CancelledError)
            and "StreamReaderProtocol.connection_made" in record.getMessage()
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mirror_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller counts: a smoke run of a few minutes")
    p.add_argument("--etcd-version", default="3.4", help="etcd (and etcdctl) version to use: 3.4 or 3.5")
    p.add_argument(
        "--only", action="append", metavar="NAME", help=f"run only these scenarios ({', '.join(SCENARIOS)})"
    )
    p.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="run each scenario N times; report medians"
    )
    p.add_argument(
        "--no-quiet-wait",
        action="store_true",
        help="do not wait for the rest of the machine to go quiet before each measurement",
    )
    p.add_argument(
        "--distance-writes",
        type=int,
        metavar="N",
        help="writes of the distance scenario's replay (default 1,000; 300 with --quick)",
    )
    p.add_argument(
        "--etcd-dr-rev",
        metavar="REV",
        help="measure etcd-dr as of this git revision (exported from git) instead of the working tree",
    )
    p.add_argument(
        "--etcd-dr-args",
        metavar="ARGS",
        default="",
        help='more flags for every `etcd-dr mirror`, e.g. "--trail off" (the replay\'s live read only)',
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep the clusters' data under DIR (a real disk, fsync on) instead of /dev/shm",
    )
    p.add_argument("--keep-logs", metavar="DIR", help="write the tools' logs to DIR and keep them")
    args = p.parse_args(argv)
    if args.distance_writes is not None and args.distance_writes < 1:
        p.error("--distance-writes must be at least 1")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    logging.getLogger("asyncio").addFilter(_ProxyShutdownNoise())
    storage = Storage(Path(args.data_dir).resolve() if args.data_dir else None)
    if storage.data_dir is not None:
        storage.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(main_async(args, storage))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
