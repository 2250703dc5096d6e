"""`etcd-dr drill DEST --endpoints SRC`: a failover rehearsed on a copy, both sites untouched.

The standby is copied with etcd's Maintenance Snapshot stream and restored into a throwaway etcd of the
same version on this host (free loopback ports, a temporary directory); then the failover's own steps
run against that copy (failover/failover.py with `rehearsal`: the old primary is neither probed nor
fenced, the clients are not switched): promotion, revision raise and compaction; then the copy is
compared with the source at the revision the standby's checkpoint names. Each step is timed: their sum
is the RTO this host would achieve. The copy and its files are removed on every exit, Ctrl-C included
(the cluster is in local/resources.py's registry, whose exit hook ends what a crash leaves).

The sites: the source is only read; the standby is only read (Status, the snapshot stream), except for
the drill's own record, written on the standby after everything else (`--no-record`: not even that).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import CheckFailed, EtcdDrError, Refused, UsageError
from .etcd import ClientConfig, CompactedError, EtcdClient, parse_endpoints
from .failover.config import MoveConfig
from .failover.failover import failover
from .failover.policy import move_record, record_move
from .local import resources
from .local.binaries import EtcdBinaries, EtcdNotFoundError, find
from .local.cluster import EtcdCluster, EtcdClusterError
from .state.roles import read_role
from .verify import verify

log = logging.getLogger("etcd_dr.drill")

# A rough rate (bytes/s) of snapshot + restore, for the estimate printed first: 8 MB/s measured on a
# busy 2-core machine on tmpfs (docs/benchmarks.md, bench/drill_bench.py).
ESTIMATE_RATE = 10e6


@dataclass(frozen=True)
class DrillConfig:
    move: MoveConfig  # pair: source = the primary (SRC), dest = the standby (DEST); --max-rpo, --reason
    max_snapshot_size: int | None = None  # bytes; refuse a larger standby
    work_dir: Path | None = None  # where the snapshot and the copy's data go (default: the system's temp)
    record: bool = True  # write the drill's record on the standby at the end

    def __post_init__(self) -> None:
        if self.work_dir is not None and not self.work_dir.is_dir():
            raise UsageError(f"--work-dir {self.work_dir}: not a directory")


@dataclass
class DrillResult:
    standby: str
    source: str
    version: str  # the standby's etcd version, and the copy's
    db_size: int  # the standby's database, from its Status
    snapshot_bytes: int = 0
    rpo_revision: int = 0  # the primary's last revision the standby had applied
    behind_revisions: int | None = None  # the primary's revisions not applied, at the snapshot
    rpo_seconds: float | None = None  # how old that last applied write was at the promotion
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step, in order
    passed: bool = False
    why: str = ""
    verify: str = ""
    recorded: bool = False

    @property
    def rto_seconds(self) -> float:
        """The failover's own steps (promotion, raise, client switch): what a real one would take here;
        the snapshot, restore and comparison are the rehearsal's."""
        own = ("revision raise and compaction", "promotion", "client switch")
        return round(sum(v for k, v in self.steps.items() if k in own), 3)

    @property
    def total_seconds(self) -> float:
        return round(sum(self.steps.values()), 3)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "rto_seconds": self.rto_seconds, "total_seconds": self.total_seconds}

    def lines(self) -> list[str]:
        rpo_s = "unknown (no heartbeat applied)" if self.rpo_seconds is None else f"{self.rpo_seconds:.1f} s"
        behind = "" if self.behind_revisions is None else f", {self.behind_revisions} revisions behind"
        out = [
            f"drill {'PASSED' if self.passed else 'FAILED'}: a failover to {self.standby} "
            f"(etcd {self.version}), rehearsed on a copy: {self.why}",
            f"RPO it would have had: revision {self.rpo_revision} of the primary{behind}; its last applied "
            f"write {rpo_s} old",
        ]
        out += [f"  {name}: {secs:.2f} s" for name, secs in self.steps.items()]
        out.append(
            f"RTO on this host: {self.rto_seconds:.2f} s (promotion, revision raise, client switch); "
            f"the drill took {self.total_seconds:.2f} s in all"
        )
        if self.verify:
            out.append(f"comparison with the source: {self.verify}")
        out.append(
            "both sites untouched"
            + (f"; the drill's record written on {self.standby}" if self.recorded else "")
        )
        return out


async def drill(cfg: DrillConfig, tell: Callable[[str], None]) -> DrillResult:
    """Rehearse a failover to cfg.move.pair.dest on a copy; `tell` prints the progress lines."""
    pair = cfg.move.pair
    t0 = time.monotonic()
    async with EtcdClient(pair.dest) as s_client:
        status = await s_client.status()
        role = (await read_role(s_client, pair.layout)).role
        if role is None or role.is_primary:
            what = "no mirror has run into it" if role is None else role.describe()
            raise Refused(f"drill: {pair.dest.endpoints_text} is not a standby ({what}): nothing to rehearse")
        result = DrillResult(
            pair.dest.endpoints_text, pair.source.endpoints_text, status.version, status.db_size
        )
        tell(
            f"drill: the standby {result.standby}'s database is {status.db_size / 1e6:.1f} MB: about "
            f"{status.db_size / ESTIMATE_RATE + 2:.0f} s to copy and restore here"
        )
        if cfg.max_snapshot_size is not None and status.db_size > cfg.max_snapshot_size:
            raise Refused(
                f"drill refused: the standby's database is {status.db_size} bytes, beyond "
                f"--max-snapshot-size {cfg.max_snapshot_size}"
            )
        try:
            binaries = find(".".join(status.version.split(".")[:2]))
        except EtcdNotFoundError as e:
            raise Refused(f"drill: no etcd {status.version} on this host to run the copy: {e}") from None
        tmp = Path(tempfile.mkdtemp(prefix="etcd-dr-drill-", dir=cfg.work_dir))
        resources.track(tmp, f"drill directory {tmp}", lambda: resources.remove_dir(tmp))
        try:
            await _rehearse(cfg, s_client, binaries, tmp, result, tell)
        finally:
            resources.remove_dir(tmp)
            resources.untrack(tmp)
    if cfg.record:
        await _record(cfg, result, t0)
    return result


async def _rehearse(
    cfg: DrillConfig,
    s_client: EtcdClient,
    binaries: EtcdBinaries,
    tmp: Path,
    result: DrillResult,
    tell: Callable[[str], None],
) -> None:
    pair = cfg.move.pair
    t = time.monotonic()
    snap = tmp / "standby.db"
    async with EtcdClient(pair.source) as p_client:
        head = (await p_client.status()).revision
        result.snapshot_bytes = await s_client.snapshot(snap)
    result.steps["snapshot"] = round(time.monotonic() - t, 3)
    tell(
        f"drill: snapshot of {result.standby}: {result.snapshot_bytes} bytes "
        f"in {result.steps['snapshot']:.2f} s"
    )
    t = time.monotonic()
    copy = EtcdCluster(binaries, 1, name="drill", base_dir=tmp, snapshot=snap)
    try:
        try:
            # In this thread, blocking: a Ctrl-C is acted on once the copy has started (or failed to),
            # never while a start in another thread could still spawn it after the stop below.
            copy.start()
        except EtcdClusterError as e:
            raise CheckFailed(f"drill: the copy of the standby did not start: {e}") from None
        snap.unlink()  # restored: its space is the copy's now
        result.steps["restore and start"] = round(time.monotonic() - t, 3)
        tell(f"drill: the copy runs at {copy.endpoints[0]} (etcd {binaries.version})")
        at = replace(
            pair.dest,
            endpoints=parse_endpoints(copy.endpoints[0]),
            tls=None,
            role="drill copy",
            flag_prefix="",
        )
        await _failover_on(cfg, at, head, result)
    finally:
        copy.stop()  # blocking on purpose: also on Ctrl-C, the copy ends before the command does


async def _failover_on(cfg: DrillConfig, at: ClientConfig, head: int, result: DrillResult) -> None:
    """The failover's own steps on the copy `at`, then the comparison with the source."""
    moved = replace(
        cfg.move,
        pair=replace(cfg.move.pair, dest=at),
        rehearsal=True,
        dns=None,
        switch_hook=None,
        fence_hook=None,
        fence="auth",
    )
    try:
        done = await failover(moved)
    except EtcdDrError as e:
        result.why = f"the failover would have stopped: {e}"
        return
    result.steps.update(done.steps)
    result.rpo_revision = done.rpo_revision
    result.rpo_seconds = done.rpo_seconds
    result.behind_revisions = max(0, head - done.rpo_revision)
    t = time.monotonic()
    try:
        compared = await verify(replace(cfg.move.pair, dest=at), source_revision=done.rpo_revision)
    except CompactedError:
        result.why = (
            f"the source's history is compacted past revision {done.rpo_revision}: the copy could not be "
            "compared with it"
        )
        return
    finally:
        result.steps["comparison with the source"] = round(time.monotonic() - t, 3)
    result.verify = compared.summary()
    result.passed = compared.equal
    result.why = (
        "promoted, revision raised and compacted, and equal to the source at the revision it had applied"
        if compared.equal
        else f"the copy differs from the source at revision {done.rpo_revision}: {compared.summary()}"
    )


async def _record(cfg: DrillConfig, result: DrillResult, t0: float) -> None:
    """The drill's record, on the standby: after everything else (its copy is gone by now)."""
    pair = cfg.move.pair
    record = move_record(
        replace(cfg.move, force=False),
        result.source,
        result.standby,
        t0,
        result="ok" if result.passed else f"failed: {result.why}",
        rpo_revision=result.rpo_revision or None,
        rpo_seconds=result.rpo_seconds,
    )
    message = (
        f"drill of a failover to {result.standby}: {'passed' if result.passed else 'failed'}; "
        f"RTO {result.rto_seconds:.2f} s"
    )
    async with EtcdClient(pair.dest) as s_client:
        await record_move([s_client], pair.layout, "drill", message, record)
    result.recorded = True
