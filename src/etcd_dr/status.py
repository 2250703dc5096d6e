"""`etcd-dr status`: both clusters' health, and where the mirror stands: revisions, lag in revisions
and seconds, checkpoint age, and the headroom left before the source compacts the checkpoint away.

It reports in every weather: a site that does not answer gets a DOWN row with the reason and the other
site is still read; what makes the pair unfit to fail over (two primaries, no mirror running, lag beyond
the limits, fencing impossible, stale checkpoints, a problem the mirror's health record names) is a
problem, listed at the end, and the command exits 1 (degraded) instead of 0."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import MirrorConfig
from .etcd import EtcdClient, Status, TransientError
from .mirror.keys import KeyMapper
from .state.events import Event
from .state.layout import StateLayout
from .state.records import REPLAY, Checkpoint, HealthRecord, encode_key
from .state.roles import Role
from .state.site import SiteState, StoredCheckpoint, keys_ordered_as_data

log = logging.getLogger("etcd_dr.status")

# Kinds of recorded events that are moves (state/events.py), and of drills.
MOVE_KINDS = ("promoted", "demoted", "switchover", "failover", "failback", "take-over")
DRILL_MARK = "drill"


@dataclass(frozen=True)
class Limits:
    """What `status` calls degraded, from its flags."""

    max_lag_revisions: int = 1000
    max_lag_seconds: float = 30.0
    # The moves fence by a hook (or the operator runs them with --no-fence): auth need not be on.
    fencing_without_auth: bool = False
    # The mirror rewrites its health record every few seconds: older than this, it stopped.
    health_max_age: float = 60.0


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str


@dataclass
class MemberState:
    endpoint: str
    healthy: bool
    version: str = ""
    member_id: int = 0
    is_leader: bool = False
    revision: int = 0
    db_size: int = 0
    error: str = ""


@dataclass
class ClusterState:
    role: str  # "source" / "destination"
    endpoints: str
    cluster_id: int = 0
    revision: int = 0
    compact_revision: int = 0
    members: list[MemberState] = field(default_factory=list)
    site_role: Role | None = None  # primary / standby, as etcd-dr recorded it
    events: list[Event] = field(default_factory=list)  # the last moves etcd-dr made on this cluster
    alarms: list[tuple[int, str]] = field(default_factory=list)  # (member id, "NOSPACE" / "CORRUPT")
    down: str = ""  # why the cluster could not be read, in our words ("" when it answered)
    auth_enabled: bool | None = None  # None: not known
    # Every record under the state prefix as read (one range): role, events, checkpoints, heartbeats.
    site: SiteState | None = field(default=None, repr=False, compare=False)

    @property
    def healthy(self) -> bool:
        members_ok = any(m.healthy for m in self.members) and all(m.healthy for m in self.members)
        return not self.down and members_ok and not self.alarms


@dataclass
class StatusReport:
    source: ClusterState
    dest: ClusterState
    checkpoint: Checkpoint | None = None
    lock_holder: str | None = None  # the mirror process allowed to write, if one runs
    # The newest heartbeat the mirror wrote on the source (its wall-clock time), 0 if none.
    source_heartbeat: float = 0.0
    now: float = field(default_factory=time.time)
    health: HealthRecord | None = None  # the mirror's health record (state/records.py), if written
    checkpoints: list[StoredCheckpoint] = field(default_factory=list)  # every one on the destination
    checkpoint_id: str = ""  # this pair's, in `etcd-dr checkpoints` form
    checkpoint_error: str = ""  # why this pair's checkpoint could not be read
    ordered_as_data: int = 0  # keys written tied, their source create order kept as data
    limits: Limits = field(default_factory=Limits)

    @property
    def applied_revision(self) -> int | None:
        return self.checkpoint.revision if self.checkpoint and self.checkpoint.phase == REPLAY else None

    @property
    def lag_revisions(self) -> int | None:
        applied = self.applied_revision
        return None if applied is None or self.source.down else max(0, self.source.revision - applied)

    @property
    def lag_seconds(self) -> float | None:
        """0 when every source revision is applied; else how far the newest applied heartbeat is behind
        the newest one written. Both were stamped by the mirror's clock: a difference between this host's
        clock and the mirror's, or a jump of either, does not enter it (it never goes below 0). Only
        without a heartbeat on the source is this host's clock used."""
        if self.lag_revisions is None:
            return None
        if self.lag_revisions == 0:
            return 0.0
        if self.checkpoint is None or not self.checkpoint.source_time:
            return None
        newest = self.source_heartbeat or self.now
        return max(0.0, newest - self.checkpoint.source_time)

    @property
    def checkpoint_age(self) -> float | None:
        return None if self.checkpoint is None else max(0.0, self.now - self.checkpoint.updated)

    @property
    def compaction_headroom(self) -> int | None:
        """Revisions between the source's compaction point and the checkpoint: at 0 or below, a
        restarted mirror cannot resume and must copy again."""
        applied = self.applied_revision
        if applied is None or self.source.down:
            return None
        return applied + 1 - self.source.compact_revision

    @property
    def stale_checkpoints(self) -> list[StoredCheckpoint]:
        """Checkpoints of other pairs whose mirror is not running (this pair's own is `lock_holder`)."""
        return [c for c in self.checkpoints if not c.live and c.id != self.checkpoint_id]

    @property
    def health_age(self) -> float | None:
        return None if self.health is None else max(0.0, self.now - self.health.updated)

    def _events(self, match: Callable[[Event], bool]) -> tuple[Event, str] | None:
        found = [(e, c.role) for c in (self.source, self.dest) for e in c.events if match(e)]
        return max(found, key=lambda x: x[0].time) if found else None

    @property
    def last_move(self) -> tuple[Event, str] | None:
        return self._events(lambda e: e.kind in MOVE_KINDS)

    @property
    def last_drill(self) -> tuple[Event, str] | None:
        return self._events(lambda e: e.kind == DRILL_MARK)

    @property
    def problems(self) -> list[Problem]:
        """Everything that makes the pair degraded (exit 1), each in one line with its reason."""
        out: list[Problem] = []
        src, dst = self.source, self.dest
        for c in (src, dst):
            if c.down:
                out.append(Problem("site-down", f"the {c.role} {c.endpoints} is DOWN: {c.down}"))
                continue
            for m in c.members:
                if not m.healthy:
                    out.append(Problem("member-down", f"{c.role} member {m.endpoint} is DOWN: {m.error}"))
            for member_id, alarm in c.alarms:
                out.append(Problem("alarm", f"{c.role} member {member_id:x} has the alarm {alarm}"))
        out += self._role_problems()
        if not dst.down:
            out += self._mirror_problems()
        if not self.limits.fencing_without_auth:
            no_auth = [c for c in (src, dst) if not c.down and c.auth_enabled is False]
            if no_auth:
                sites = " and ".join(f"the {c.role} {c.endpoints}" for c in no_auth)
                out.append(
                    Problem(
                        "fencing-impossible",
                        f"a move cannot fence writes on {sites}: etcd auth is off there and no "
                        "--fence-hook is given (enable auth, or run the moves and status with --fence-hook)",
                    )
                )
        return out

    def _role_problems(self) -> list[Problem]:
        s_role, d_role = self.source.site_role, self.dest.site_role
        if s_role is not None and d_role is not None and s_role.is_primary and d_role.is_primary:
            return [
                Problem(
                    "two-primaries",
                    f"both sites are marked primary (source epoch {s_role.epoch}, destination epoch "
                    f"{d_role.epoch}): clients may write to either; keep the newer epoch's site, make "
                    "the other its standby with `etcd-dr failback`",
                )
            ]
        if d_role is not None and d_role.is_primary:
            return [
                Problem(
                    "destination-primary",
                    f"the destination {self.dest.endpoints} is marked {d_role.describe()}: it is nobody's "
                    "standby (after a move, give the new standby as DEST and the primary as --endpoints)",
                )
            ]
        return []

    def _mirror_problems(self) -> list[Problem]:
        out: list[Problem] = []
        ck = self.checkpoint
        lim = self.limits
        if self.checkpoint_error:
            out.append(Problem("checkpoint-unreadable", self.checkpoint_error))
        elif ck is None:
            pairs = "; ".join(f"{c.pair()}, {'live' if c.live else 'stale'}" for c in self.checkpoints[:3])
            others = f" (it holds those of other pairs: {pairs}; give their --prefix)" if pairs else ""
            out.append(
                Problem(
                    "no-checkpoint",
                    "no mirror checkpoint for this --prefix on the destination"
                    + others
                    + ": the standby is not mirrored",
                )
            )
        if self.lock_holder is None and ck is not None:
            behind = self.lag_revisions
            tail = f"; {behind} source revisions are not applied" if behind else ""
            out.append(Problem("mirror-stopped", "no mirror is running: its lock is free" + tail))
        if ck is not None and ck.phase != REPLAY:
            out.append(
                Problem("copying", "the mirror's copy is not finished: the standby is no state of the source")
            )
        lag, secs = self.lag_revisions, self.lag_seconds
        if lag is not None and lag > lim.max_lag_revisions:
            out.append(
                Problem("lag", f"lag {lag} revisions, above --max-lag-revisions {lim.max_lag_revisions}")
            )
        if secs is not None and secs > lim.max_lag_seconds:
            out.append(Problem("lag", f"lag {secs:.1f} s, above --max-lag {lim.max_lag_seconds:g} s"))
        headroom = self.compaction_headroom
        if headroom is not None and headroom <= 0:
            out.append(
                Problem(
                    "compacted",
                    "the source compacted past the checkpoint: a restarted mirror must copy everything again",
                )
            )
        stale = self.stale_checkpoints
        if stale:
            out.append(
                Problem(
                    "stale-checkpoints",
                    f"{len(stale)} stale checkpoint(s) of mirrors not running "
                    f"({', '.join(c.id for c in stale)}): "
                    "see `etcd-dr checkpoints DEST`, remove those no longer wanted with --remove ID",
                )
            )
        h = self.health
        if h is not None:
            for kind, line in sorted(h.problems.items()):
                out.append(Problem(f"health:{kind}", f"the mirror reports: {line}"))
            if h.verify is not None and not h.verify.equal:
                out.append(
                    Problem(
                        "verify",
                        f"the last periodic verify found {h.verify.differences} differences "
                        f"({_ago(self.now - h.verify.at)})",
                    )
                )
            age = self.health_age or 0.0
            if age > lim.health_max_age:
                out.append(
                    Problem(
                        "health-old",
                        f"the mirror's health record was written {_ago(age)}: no mirror keeps it current",
                    )
                )
        return out

    @property
    def degraded(self) -> bool:
        return bool(self.problems)

    def to_json(self) -> dict[str, Any]:
        def cluster(c: ClusterState) -> dict[str, Any]:
            return {
                "endpoints": c.endpoints,
                "cluster_id": f"{c.cluster_id:x}",
                "revision": c.revision,
                "compact_revision": c.compact_revision,
                "healthy": c.healthy,
                "alarms": sorted({name for _, name in c.alarms}),
                "role": None
                if c.site_role is None
                else {
                    "role": c.site_role.role,
                    "epoch": c.site_role.epoch,
                    "peer_cluster_id": f"{c.site_role.peer_cluster_id:x}",
                    "since": c.site_role.since,
                    "via": c.site_role.via,
                },
                "events": [{"time": e.time, "kind": e.kind, "message": e.message} for e in c.events],
                "down": c.down or None,
                "auth_enabled": c.auth_enabled,
                "members": [
                    {
                        "endpoint": m.endpoint,
                        "healthy": m.healthy,
                        "version": m.version,
                        "member_id": f"{m.member_id:x}",
                        "leader": m.is_leader,
                        "revision": m.revision,
                        "db_size": m.db_size,
                        "error": m.error,
                    }
                    for m in c.members
                ],
            }

        ck = self.checkpoint
        return {
            "source": cluster(self.source),
            "destination": cluster(self.dest),
            "checkpoint": None
            if ck is None
            else {
                "phase": ck.phase,
                "revision": ck.revision,
                "source_prefix": encode_key(ck.source_prefix),
                "dest_prefix": encode_key(ck.dest_prefix),
                "updated": ck.updated,
                "source_time": ck.source_time or None,
            },
            "mirror_lock_holder": self.lock_holder,
            "applied_revision": self.applied_revision,
            "lag_revisions": self.lag_revisions,
            "lag_seconds": self.lag_seconds,
            "checkpoint_age_seconds": self.checkpoint_age,
            "compaction_headroom_revisions": self.compaction_headroom,
            "healthy": not self.degraded,
            "problems": [{"kind": p.kind, "message": p.message} for p in self.problems],
            "limits": {
                "max_lag_revisions": self.limits.max_lag_revisions,
                "max_lag_seconds": self.limits.max_lag_seconds,
            },
            "health": None if self.health is None else self._health_json(self.health),
            "checkpoint_id": self.checkpoint_id or None,
            "checkpoint_error": self.checkpoint_error or None,
            "checkpoints": [c.to_json(self.now) for c in self.checkpoints],
            "stale_checkpoints": [c.id for c in self.stale_checkpoints],
            "last_move": _event_json(self.last_move),
            "last_drill": _event_json(self.last_drill),
            "ordered_as_data_keys": self.ordered_as_data,
        }

    def _health_json(self, h: HealthRecord) -> dict[str, Any]:
        v = h.verify
        return {
            "updated": h.updated,
            "age_seconds": self.health_age,
            "problems": dict(h.problems),
            "verify": None
            if v is None
            else {
                "at": v.at,
                "age_seconds": max(0.0, self.now - v.at),
                "seconds": v.seconds,
                "equal": v.equal,
                "keys": v.keys,
                "differences": v.differences,
                "source_revision": v.source_revision,
                "dest_revision": v.dest_revision,
            },
            "foreign_writes": h.foreign_writes,
            "last_foreign_key": h.last_foreign_key or None,
            "last_foreign_revision": h.last_foreign_revision or None,
        }

    def lines(self) -> list[str]:
        out: list[str] = []
        for c in (self.source, self.dest):
            if c.down:
                out.append(f"{c.role}: {c.endpoints} DOWN ({c.down})")
                if len(c.members) > 1:  # one member: the line above says it all
                    out += [f"  {m.endpoint}: DOWN ({m.error})" for m in c.members]
                continue
            out.append(
                f"{c.role}: cluster {c.cluster_id:x}, revision {c.revision}, "
                f"compacted at {c.compact_revision}, {'healthy' if c.healthy else 'UNHEALTHY'}"
            )
            out.append("  role: " + (c.site_role.describe() if c.site_role else "none recorded"))
            for member_id, alarm in c.alarms:
                hint = (
                    ": writes are refused (backend quota full); compact, defragment, then "
                    "`etcdctl alarm disarm`"
                    if alarm == "NOSPACE"
                    else ""
                )
                out.append(f"  ALARM {alarm} on member {member_id:x}{hint}")
            for m in c.members:
                if m.healthy:
                    lead = ", leader" if m.is_leader else ""
                    out.append(f"  {m.endpoint}: etcd {m.version}, revision {m.revision}{lead}")
                else:
                    out.append(f"  {m.endpoint}: DOWN ({m.error})")
        out += self._mirror_lines()
        last_move, last_drill = self.last_move, self.last_drill
        out.append(
            "last move: "
            + (f"{_event_line(last_move[0])} (on the {last_move[1]})" if last_move else "none recorded")
        )
        out.append(
            "last drill: "
            + (f"{_event_line(last_drill[0])} (on the {last_drill[1]})" if last_drill else "none recorded")
        )
        # What was done, step by step (the moves' own records are the lines above and `etcd-dr history`).
        moves = sorted(
            ((e, c.role) for c in (self.source, self.dest) for e in c.events if e.move is None),
            key=lambda x: x[0].time,
        )[-5:]
        if moves:
            out.append("last moves:")
            out += [f"  {c}: {e.line()}" for e, c in moves]
        problems = self.problems
        if problems:
            out.append(f"DEGRADED: {len(problems)} problem(s)")
            out += [f"  {p.kind}: {p.message}" for p in problems]
        else:
            out.append("healthy")
        return out

    def _mirror_lines(self) -> list[str]:
        if self.dest.down:
            return ["mirror: unknown (the destination does not answer)"]
        out: list[str] = []
        ck = self.checkpoint
        if ck is None:
            out.append("mirror: no checkpoint on the destination (no mirror has run for this prefix)")
        elif ck.phase != REPLAY:
            out.append(f"mirror: initial copy in progress at source revision {ck.revision}")
        else:
            age = self.checkpoint_age or 0.0
            if self.source.down:
                out.append(
                    f"mirror: applied source revision {ck.revision}; lag unknown (the source does not "
                    f"answer); checkpoint written {age:.1f} s ago"
                )
            else:
                secs = self.lag_seconds
                lag_s = "unknown (no heartbeat)" if secs is None else f"{secs:.1f} s"
                out.append(
                    f"mirror: applied source revision {ck.revision}; lag {self.lag_revisions} revisions, "
                    f"{lag_s}; checkpoint written {age:.1f} s ago"
                )
                out.append(f"compaction headroom: {self.compaction_headroom} revisions before a re-copy")
        holder = f"held by {self.lock_holder}" if self.lock_holder else "free (no mirror running)"
        out.append(f"mirror lock: {holder}")
        if self.ordered_as_data:
            out.append(
                f"create order: {self.ordered_as_data} leased or ordered keys are on the standby without the "
                "source's create order, which is kept as data: a promotion creates them again in it"
            )
        h = self.health
        if h is None:
            out.append("mirror health: no record (no mirror has written one here)")
        else:
            problems = "; ".join(f"{k}: {v}" for k, v in sorted(h.problems.items())) or "no problem known"
            out.append(f"mirror health: {problems} (written {_ago(self.health_age or 0.0)})")
            v = h.verify
            if v is None:
                out.append("  last periodic verify: none yet")
            else:
                result = "equal" if v.equal else f"{v.differences} DIFFERENCES"
                out.append(
                    f"  last periodic verify: {result}, {v.keys} keys, {_ago(self.now - v.at)}, "
                    f"took {v.seconds:.1f} s"
                )
            if h.foreign_writes:
                out.append(
                    f"  foreign writes on the standby: {h.foreign_writes} (last {h.last_foreign_key!r} "
                    f"at destination revision {h.last_foreign_revision}), put back to the source's state"
                )
        for c in self.checkpoints:
            if c.id != self.checkpoint_id and not c.live:
                out.append(f"stale checkpoint: {c.line(self.now)}")
        return out


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _event_json(found: tuple[Event, str] | None) -> dict[str, Any] | None:
    if found is None:
        return None
    e, where = found
    out = {"time": e.time, "kind": e.kind, "message": e.message, "cluster": where}
    return {**out, "move": e.move.to_json()} if e.move is not None else out


def _event_line(e: Event) -> str:
    """A move's record as `etcd-dr history` shows it; another event as it was written."""
    if e.move is None:
        return e.line()
    from .history import describe

    return describe(e)


def in_our_words(e: BaseException, timeout: float) -> str:
    """Why a cluster or member did not answer, without the transport's internals (those go to the
    debug log)."""
    text = str(e).lower()
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g} s"
    if "settings frame" in text:
        return "it accepts connections but does not answer: a hung process, or not etcd"
    if any(w in text for w in ("deadline", "timed out", "timeout")):
        return "no answer in time"
    if "refused" in text:
        return "connection refused: nothing listens at that address"
    if "no route" in text or "unreachable" in text:
        return "no route to the host"
    if "resolve" in text or "not known" in text or "dns" in text:
        return "the host name does not resolve"
    if "reset" in text or "closed" in text or "eof" in text:
        return "the connection was closed"
    if "ssl" in text or "tls" in text or "handshake" in text:
        return "the TLS handshake failed"
    return "it does not answer"


async def _cluster_state(client: EtcdClient, role: str, layout: StateLayout) -> ClusterState:
    state = ClusterState(role=role, endpoints=client.config.endpoints_text)
    timeout = client.config.request_timeout
    try:
        async with asyncio.timeout(timeout):
            await _read_cluster(client, state, layout)
    except (TransientError, TimeoutError) as e:
        log.debug("the %s %s does not answer: %s", role, state.endpoints, e)
        state.down = in_our_words(e, timeout)
    return state


async def _read_cluster(client: EtcdClient, state: ClusterState, layout: StateLayout) -> None:
    statuses = await client.statuses()
    timeout = client.config.request_timeout
    for ep, st in statuses.items():
        if isinstance(st, Status):
            state.members.append(
                MemberState(str(ep), True, st.version, st.member_id, st.is_leader, st.revision, st.db_size)
            )
            state.cluster_id = st.cluster_id
        else:
            log.debug("%s member %s: %s", state.role, ep, st)
            state.members.append(MemberState(str(ep), False, error=in_our_words(st, timeout)))
    down = [st for st in statuses.values() if isinstance(st, TransientError)]
    if down and len(down) == len(statuses):
        raise down[0]  # no member answers: the cluster is down, for the first one's reason
    head = await client.range(b"\0", b"\0", count_only=True)
    state.cluster_id = head.header.cluster_id
    state.revision = head.header.revision
    state.compact_revision = await client.compact_revision(state.revision)
    state.site = await SiteState.read(client, layout)
    state.site_role = state.site.role
    # Enough to find the last move and the last drill among the other events (fences, removals).
    state.events = state.site.recent_events(20)
    state.alarms = [(member, name.removeprefix("ALARM_")) for member, name in await client.alarms()]
    state.auth_enabled = await client.auth_enabled()


async def status(config: MirrorConfig, limits: Limits | None = None) -> StatusReport:
    async with EtcdClient(config.source) as source, EtcdClient(config.dest) as dest:
        return await status_of(config, source, dest, limits)


async def status_of(
    config: MirrorConfig, source: EtcdClient, dest: EtcdClient, limits: Limits | None = None
) -> StatusReport:
    """`status` over clients the caller holds (`check` reads more with the same ones)."""
    mapper = KeyMapper.from_config(config)
    src, dst = await asyncio.gather(
        _cluster_state(source, "source", config.layout),
        _cluster_state(dest, "destination", config.layout),
    )
    report = StatusReport(src, dst, limits=limits or Limits())
    if dst.down:
        return report
    try:
        async with asyncio.timeout(config.dest.request_timeout):
            await _read_mirror(report, config, mapper, dest)
    except (TransientError, TimeoutError) as e:
        # It answered a moment ago: the mirror's records could not be read (member lost meanwhile).
        log.debug("reading the mirror's records on the destination: %s", e)
        dst.down = in_our_words(e, config.dest.request_timeout)
    return report


async def _read_mirror(
    report: StatusReport, config: MirrorConfig, mapper: KeyMapper, dest: EtcdClient
) -> None:
    """The pair's records, from the snapshots of both sites' state (each read in one range)."""
    src, dst = report.source, report.dest
    site = dst.site
    if site is None:
        return
    report.checkpoints = site.stored_checkpoints()
    # This pair's source cluster: the source's own id; with the source down, the one the standby's
    # role record names, else the one whose checkpoint has this pair's prefixes.
    source_id = src.cluster_id if not src.down else 0
    if not source_id and dst.site_role is not None and not dst.site_role.is_primary:
        source_id = dst.site_role.peer_cluster_id
    if not source_id:
        same = [
            c
            for c in report.checkpoints
            if c.checkpoint is not None
            and (c.checkpoint.source_prefix, c.checkpoint.dest_prefix) == (config.prefix, mapper.dest_prefix)
        ]
        source_id = (
            max(same, key=lambda c: (c.live, c.checkpoint.updated if c.checkpoint else 0)).source_cluster_id
            if same
            else 0
        )
    if not source_id:
        return
    pair = site.layout.pair_of(site.layout.checkpoint(source_id, config.prefix, mapper.dest_prefix))
    report.checkpoint_id = pair.decode()
    report.checkpoint = site.checkpoint(pair)
    holder = site.lock_holder(pair)
    report.lock_holder = None if holder is None else str(holder)
    report.health = site.health(pair)
    report.ordered_as_data = await keys_ordered_as_data(dest, site.layout, pair)
    if src.site is not None and not src.down:
        report.source_heartbeat = src.site.heartbeat(dst.cluster_id) or 0.0


def _parse_time(value: bytes) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0
