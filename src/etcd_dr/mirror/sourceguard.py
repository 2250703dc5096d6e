"""One standby range, one source: a mirror refuses a destination range that holds the checkpoint of a
mirror from another source cluster (two clusters writing the same key names, a mistyped endpoint in a
unit file), because it would overwrite the other source's values silently. `--take-over` is the way
out once that other mirror is stopped: its checkpoint, lease registry and health record go in one txn
(which also points the destination's standby record at the new source), and the move is recorded in
the destination's history of moves."""

from __future__ import annotations

import logging
import time

from ..errors import Refused
from ..etcd import Compare, CompareResult, Delete, EtcdClient, Op, prefix_range_end
from ..state.events import TAKE_OVER, MoveRecord, record_event, who
from ..state.layout import StateLayout
from ..state.reader import decode
from ..state.records import LockHolder, encode_key
from ..state.roles import STANDBY, read_role, write_role
from ..state.site import StoredCheckpoint
from .keys import key_range, ranges_overlap

log = logging.getLogger("etcd_dr.mirror")


def _age(other: StoredCheckpoint, now: float) -> str:
    if not other.record.updated:
        return "age unknown"
    return f"updated {_duration(max(0.0, now - other.record.updated))} ago"


def _describe(other: StoredCheckpoint, now: float) -> str:
    """The checkpoint of a mirror from another source cluster whose destination range overlaps ours."""
    c = other.record
    mapping = f"{encode_key(c.source_prefix) or '(all keys)'} -> {encode_key(c.dest_prefix) or '(all keys)'}"
    return (
        f"source cluster {c.source_cluster_id:x} (prefix {mapping}, checkpoint at revision {c.revision}, "
        f"{_age(other, now)})"
    )


def _owned_keys(other: StoredCheckpoint, layout: StateLayout) -> list[Op]:
    """Deletes of what that mirror keeps beside its data: checkpoint, lease registry, health."""
    c = other.record
    registry = layout.lease_registry(c.source_cluster_id, c.source_prefix, c.dest_prefix)
    return [
        Delete(other.key),
        Delete(registry, prefix_range_end(registry)),
        Delete(layout.health(c.source_cluster_id, c.source_prefix, c.dest_prefix)),
    ]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


async def foreign_checkpoints(
    dest: EtcdClient, layout: StateLayout, source_id: int, dest_range: tuple[bytes, bytes]
) -> list[StoredCheckpoint]:
    """Checkpoints on `dest` of mirrors from clusters other than `source_id` into a range overlapping
    `dest_range` (the same key names, or one range inside the other), each with its lock's holder."""
    prefix = layout.checkpoints
    found = []
    for kv in (await dest.range(prefix, prefix_range_end(prefix))).kvs:
        stored = StoredCheckpoint.read(kv, dest)
        if stored.record.source_cluster_id == source_id:
            continue
        if ranges_overlap(key_range(stored.record.dest_prefix), dest_range):
            found.append(stored)
    return found


async def guard_one_source(
    dest: EtcdClient,
    *,
    layout: StateLayout,
    source_id: int,
    source_prefix: bytes,
    dest_prefix: bytes,
    dest_text: str,
    take_over: bool,
    reason: str | None = None,
) -> None:
    """Refuse (Refused, exit 2) when the destination range has another source's checkpoint; with
    `take_over`, remove that other mirror's state instead, record it (with `reason`) and go on."""
    others = await foreign_checkpoints(dest, layout, source_id, key_range(dest_prefix))
    if not others:
        return
    now = time.time()
    if not take_over:
        first = others[0]
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise Refused(
            f"the destination {dest_text} already has another source: the range "
            f"{encode_key(dest_prefix) or '(all keys)'} overlaps the range of a mirror from "
            f"{_describe(first, now)}{more}; one standby range has one source, and this mirror would "
            f"overwrite that source's values. If this source is meant to replace it, stop the mirror from "
            f"cluster {first.source_cluster_id:x}, then run again with --take-over"
        )
    compares: list[Compare] = []
    deletes: list[Op] = []
    for other in others:
        lock = await dest.get(layout.lock_of_pair(layout.pair_of(other.key)))
        if lock is not None:
            holder = decode("lock", lock.key, lock.value, dest, LockHolder.decode)
            raise Refused(
                f"--take-over: the mirror from {_describe(other, now)} is still running on the destination "
                f"{dest_text} (it holds its lock, {holder}); stop it first, then run again with --take-over"
            )
        compares.append(Compare.mod(other.key, CompareResult.EQUAL, other.mod_revision))
        compares.append(
            Compare.create(layout.lock_of_pair(layout.pair_of(other.key)), CompareResult.EQUAL, 0)
        )
        deletes.extend(_owned_keys(other, layout))
    taken = {o.source_cluster_id for o in others}
    role = await read_role(dest, layout)
    if role.role is not None and role.role.role == STANDBY and role.role.peer_cluster_id in taken:
        # The standby's record names its source: the moves read it.
        new = role.role.moved(STANDBY, role.role.epoch, source_id, "take-over")
        result = await write_role(dest, layout, new, role, compare=tuple(compares), also=tuple(deletes))
    else:
        result = await dest.txn([role.guard(layout), *compares], deletes)
    if not result.succeeded:
        raise Refused(
            f"--take-over: the other mirror's state on the destination {dest_text} changed while it was "
            "being taken over; is that mirror still running? Stop it, then run again"
        )
    mine = layout.checkpoint(source_id, source_prefix, dest_prefix)
    for other in others:
        message = (
            f"the range {encode_key(dest_prefix) or '(all keys)'} of {dest_text} taken over from "
            f"{_describe(other, now)} by the mirror from source cluster {source_id:x}"
        )
        log.warning("--take-over: %s; its checkpoint is removed and the range is copied again", message)
        user, host = who()
        # A move in `etcd-dr history`: the range's source moved from the other cluster to this one.
        record = MoveRecord(
            source=f"cluster {other.source_cluster_id:x}",
            target=f"{dest_text} (from source cluster {source_id:x})",
            result="ok",
            user=user,
            host=host,
            reason=reason or "",
            rpo_revision=other.record.revision,
        )
        await record_event(
            dest,
            layout,
            TAKE_OVER,
            message,
            previous_source=f"{other.source_cluster_id:x}",
            previous_revision=other.record.revision,
            previous_checkpoint=encode_key(other.key),
            source=f"{source_id:x}",
            checkpoint=encode_key(mine),
            move=record,
        )
