"""Each cluster's role record: primary or standby, with an epoch that grows on every move.

The record lives under the state prefix of the cluster it describes, so it is read and changed with
the same txns as the data: a mirror compares it in every txn it writes (a promoted standby changes it,
so a mirror started before the move cannot write after it), and a promotion is one txn that also checks
the mirror checkpoints it reports from.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from ..errors import Refused
from ..etcd import Compare, CompareResult, EtcdClient, EtcdError, KeyValue, Op, Put, TxnResult
from .layout import StateLayout
from .reader import UnreadableRecord, where

log = logging.getLogger("etcd_dr.failover")

PRIMARY = "primary"
STANDBY = "standby"
RoleName = Literal["primary", "standby"]


@dataclass(frozen=True)
class Role:
    role: str
    epoch: int
    peer_cluster_id: int  # the other site: a standby's source, a primary's standby (or old primary)
    since: float
    via: str = ""  # what made it so: "mirror" (first mirror), "switchover", "failover", "failback"
    # A primary promoted from a standby: the last revision of the old primary it had applied (the RPO)
    # and that revision's source time (0 when unknown).
    applied_revision: int = 0
    applied_time: float = 0.0
    # A demoted old primary: its revision when it was fenced (its own writes after `applied_revision`
    # of the new primary, up to this one, were not replicated: the failback report lists them).
    fenced_revision: int = 0

    @property
    def is_primary(self) -> bool:
        return self.role == PRIMARY

    def moved(self, role: str, epoch: int, peer: int, via: str, **fields: Any) -> Role:
        base = replace(self, applied_revision=0, applied_time=0.0, fenced_revision=0)
        return replace(base, role=role, epoch=epoch, peer_cluster_id=peer, via=via, since=now(), **fields)

    def encode(self) -> bytes:
        d = asdict(self)
        d["peer_cluster_id"] = f"{self.peer_cluster_id:x}"
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Role:
        d = json.loads(data)
        role = str(d["role"])
        if role not in (PRIMARY, STANDBY):
            raise ValueError(f"unknown role {role!r}")
        return cls(
            role=role,
            epoch=int(d["epoch"]),
            peer_cluster_id=int(str(d.get("peer_cluster_id", "0")), 16),
            since=float(d.get("since", 0.0)),
            via=str(d.get("via", "")),
            applied_revision=int(d.get("applied_revision", 0)),
            applied_time=float(d.get("applied_time", 0.0)),
            fenced_revision=int(d.get("fenced_revision", 0)),
        )

    def describe(self) -> str:
        text = f"{self.role} (epoch {self.epoch}"
        if self.via:
            text += f", by {self.via}"
        if self.since:
            text += f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.since))} UTC"
        return text + ")"


def now() -> float:
    return round(time.time(), 3)


@dataclass(frozen=True)
class RoleState:
    """A role record as read, with the mod revision that txns compare to change it safely."""

    role: Role | None
    mod_revision: int  # 0: no record

    @property
    def epoch(self) -> int:
        return self.role.epoch if self.role else 0

    def guard(self, layout: StateLayout) -> Compare:
        """True while the record is exactly what was read (a missing key compares as revision 0)."""
        return Compare.mod(layout.role, CompareResult.EQUAL, self.mod_revision)


class RoleUnreadable(UnreadableRecord):
    pass


async def read_role(client: EtcdClient, layout: StateLayout) -> RoleState:
    return read_role_kv(await client.get(layout.role), client)


def read_role_kv(kv: KeyValue | None, client: EtcdClient) -> RoleState:
    """The role record as read from `client` (None: no record)."""
    if kv is None:
        return RoleState(None, 0)
    try:
        return RoleState(Role.decode(kv.value), kv.mod_revision)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RoleUnreadable("role", kv.key, where(client), e) from None


async def write_role(
    client: EtcdClient,
    layout: StateLayout,
    new: Role,
    expected: RoleState,
    *,
    compare: tuple[Compare, ...] = (),
    also: tuple[Op, ...] = (),
) -> TxnResult:
    """Replace the role record if it is still `expected` and `compare` holds; `also` in the same txn."""
    return await client.txn([expected.guard(layout), *compare], [Put(layout.role, new.encode()), *also])


async def claim_standby(
    source: EtcdClient,
    dest: EtcdClient,
    layout: StateLayout,
    *,
    source_id: int,
    dest_id: int,
    dest_text: str,
) -> RoleState:
    """What a mirror does before writing: the destination must not be a primary. A pair seen for the
    first time is marked (destination standby; source primary unless it says otherwise). Returns the
    destination's record, which every mirror txn then compares."""
    for _ in range(5):
        dest_state = await read_role(dest, layout)
        if dest_state.role is not None:
            if dest_state.role.is_primary:
                raise Refused(
                    f"the destination {dest_text} is marked {dest_state.role.describe()}: mirroring into "
                    "a primary is refused (after a failover, `etcd-dr failback` makes the old primary a "
                    "standby again)"
                )
            return dest_state
        try:
            src_state = await read_role(source, layout)
        except RoleUnreadable:
            src_state = RoleState(None, 0)
        epoch = max(src_state.epoch, 1)
        new = Role(STANDBY, epoch, source_id, now(), via="mirror")
        if (await write_role(dest, layout, new, dest_state)).succeeded:
            log.info("marked the destination %s %s", dest_text, new.describe())
            if src_state.role is None:
                await _mark_source_primary(source, layout, src_state, epoch, dest_id)
            continue  # read it back for its mod revision
    raise Refused(
        f"the role record on the destination {dest_text} keeps changing; is another tool moving it?"
    )


async def _mark_source_primary(
    source: EtcdClient, layout: StateLayout, state: RoleState, epoch: int, dest_id: int
) -> None:
    """Best effort: the source's record helps the later moves, but a mirror with read-only access
    to its source must still run."""
    try:
        await write_role(source, layout, Role(PRIMARY, epoch, dest_id, now(), via="mirror"), state)
    except EtcdError as e:
        log.info("could not mark the source primary (%s); switchover will", e)
