"""`etcd-dr status`: both clusters' health, and where the mirror stands: revisions, lag in revisions
and seconds, checkpoint age, and the headroom left before the source compacts the checkpoint away."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .config import MirrorConfig
from .etcd import EtcdClient, EtcdError, Status
from .failover.events import Event, recent_events
from .failover.roles import Role, RoleUnreadable, read_role
from .mirror.checkpoint import REPLAY, Checkpoint, checkpoint_key, encode_key, heartbeat_key, lock_key
from .mirror.keys import KeyMapper


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

    @property
    def healthy(self) -> bool:
        members_ok = any(m.healthy for m in self.members) and all(m.healthy for m in self.members)
        return members_ok and not self.alarms


@dataclass
class StatusReport:
    source: ClusterState
    dest: ClusterState
    checkpoint: Checkpoint | None = None
    lock_holder: str | None = None  # the mirror process allowed to write, if one runs
    # The newest heartbeat the mirror wrote on the source (its wall-clock time), 0 if none.
    source_heartbeat: float = 0.0
    now: float = field(default_factory=time.time)

    @property
    def applied_revision(self) -> int | None:
        return self.checkpoint.revision if self.checkpoint and self.checkpoint.phase == REPLAY else None

    @property
    def lag_revisions(self) -> int | None:
        applied = self.applied_revision
        return None if applied is None else max(0, self.source.revision - applied)

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
        return None if applied is None else applied + 1 - self.source.compact_revision

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
        }

    def lines(self) -> list[str]:
        out: list[str] = []
        for c in (self.source, self.dest):
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
        ck = self.checkpoint
        if ck is None:
            out.append("mirror: no checkpoint on the destination (no mirror has run for this prefix)")
        elif ck.phase != REPLAY:
            out.append(f"mirror: initial copy in progress at source revision {ck.revision}")
        else:
            secs = self.lag_seconds
            lag_s = "unknown (no heartbeat)" if secs is None else f"{secs:.1f} s"
            age = self.checkpoint_age or 0.0
            out.append(
                f"mirror: applied source revision {ck.revision}; lag {self.lag_revisions} revisions, "
                f"{lag_s}; checkpoint written {age:.1f} s ago"
            )
            out.append(f"compaction headroom: {self.compaction_headroom} revisions before a re-copy")
        holder = f"held by {self.lock_holder}" if self.lock_holder else "free (no mirror running)"
        out.append(f"mirror lock: {holder}")
        moves = sorted(
            ((e, c.role) for c in (self.source, self.dest) for e in c.events), key=lambda x: x[0].time
        )[-5:]
        if moves:
            out.append("last moves:")
            out += [f"  {c}: {e.line()}" for e, c in moves]
        return out


async def _cluster_state(client: EtcdClient, role: str, state_prefix: bytes) -> ClusterState:
    state = ClusterState(role=role, endpoints=client.config.endpoints_text)
    statuses = await client.statuses()
    for ep, st in statuses.items():
        if isinstance(st, Status):
            state.members.append(
                MemberState(str(ep), True, st.version, st.member_id, st.is_leader, st.revision, st.db_size)
            )
            state.cluster_id = st.cluster_id
        else:
            state.members.append(MemberState(str(ep), False, error=str(st)))
    head = await client.range(b"\0", b"\0", count_only=True)
    state.cluster_id = head.header.cluster_id
    state.revision = head.header.revision
    state.compact_revision = await client.compact_revision(state.revision)
    try:
        state.site_role = (await read_role(client, state_prefix)).role
    except RoleUnreadable:
        state.site_role = None
    state.events = await recent_events(client, state_prefix, limit=5)
    state.alarms = [(member, name.removeprefix("ALARM_")) for member, name in await client.alarms()]
    return state


async def status(config: MirrorConfig) -> StatusReport:
    mapper = KeyMapper.from_config(config)
    async with EtcdClient(config.source) as source, EtcdClient(config.dest) as dest:
        src, dst = await asyncio.gather(
            _cluster_state(source, "source", config.state_prefix),
            _cluster_state(dest, "destination", config.state_prefix),
        )
        key = checkpoint_key(config.state_prefix, src.cluster_id, config.prefix, mapper.dest_prefix)
        kv = await dest.get(key)
        ckpt: Checkpoint | None = None
        if kv is not None:
            try:
                ckpt = Checkpoint.decode(kv.value)
            except (ValueError, KeyError) as e:
                raise EtcdError(
                    f"the checkpoint {encode_key(key)} on the destination is not readable: {e}"
                ) from None
        lock = await dest.get(
            lock_key(config.state_prefix, src.cluster_id, config.prefix, mapper.dest_prefix)
        )
        holder = lock.value.decode(errors="replace") if lock is not None else None
        beat = await source.get(heartbeat_key(config.state_prefix, dst.cluster_id))
        return StatusReport(src, dst, ckpt, holder, source_heartbeat=_parse_time(beat.value) if beat else 0.0)


def _parse_time(value: bytes) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0
