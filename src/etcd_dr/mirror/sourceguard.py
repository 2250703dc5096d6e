"""One standby range, one source: a mirror refuses a destination range that holds the checkpoint of a
mirror from another source cluster (two clusters writing the same key names, a mistyped endpoint in a
unit file), because it would overwrite the other source's values silently. `--take-over` is the way
out once that other mirror is stopped: its checkpoint, lease registry and health record go in one txn
(which also points the destination's standby record at the new source), and the move is recorded in
the destination's history of moves."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..errors import Refused
from ..etcd import Compare, CompareResult, Delete, EtcdClient, Op, prefix_range_end
from ..state.events import TAKE_OVER, record_event
from ..state.layout import StateLayout
from ..state.reader import decode
from ..state.records import Checkpoint, LockHolder, encode_key
from ..state.roles import STANDBY, read_role, write_role
from .keys import key_range, ranges_overlap

log = logging.getLogger("etcd_dr.mirror")


@dataclass(frozen=True)
class ForeignCheckpoint:
    """The checkpoint of a mirror from another source cluster whose destination range overlaps ours."""

    key: bytes
    mod_revision: int
    checkpoint: Checkpoint

    @property
    def source_id(self) -> int:
        return self.checkpoint.source_cluster_id

    def age(self, now: float) -> str:
        if not self.checkpoint.updated:
            return "age unknown"
        return f"updated {_duration(max(0.0, now - self.checkpoint.updated))} ago"

    def describe(self, now: float) -> str:
        c = self.checkpoint
        mapping = (
            f"{encode_key(c.source_prefix) or '(all keys)'} -> {encode_key(c.dest_prefix) or '(all keys)'}"
        )
        return (
            f"source cluster {c.source_cluster_id:x} (prefix {mapping}, checkpoint at revision {c.revision}, "
            f"{self.age(now)})"
        )

    def lock_key(self, layout: StateLayout) -> bytes:
        c = self.checkpoint
        return layout.lock(c.source_cluster_id, c.source_prefix, c.dest_prefix)

    def owned_keys(self, layout: StateLayout) -> list[Op]:
        """Deletes of what that mirror keeps beside its data: checkpoint, lease registry, health."""
        c = self.checkpoint
        registry = layout.lease_registry(c.source_cluster_id, c.source_prefix, c.dest_prefix)
        return [
            Delete(self.key),
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
) -> list[ForeignCheckpoint]:
    """Checkpoints on `dest` of mirrors from clusters other than `source_id` into a range overlapping
    `dest_range` (the same key names, or one range inside the other)."""
    prefix = layout.checkpoints
    found = []
    for kv in (await dest.range(prefix, prefix_range_end(prefix))).kvs:
        ckpt = decode("checkpoint", kv.key, kv.value, dest, Checkpoint.decode)
        if ckpt.source_cluster_id == source_id:
            continue
        if ranges_overlap(key_range(ckpt.dest_prefix), dest_range):
            found.append(ForeignCheckpoint(kv.key, kv.mod_revision, ckpt))
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
) -> None:
    """Refuse (Refused, exit 2) when the destination range has another source's checkpoint; with
    `take_over`, remove that other mirror's state instead, record it and go on."""
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
            f"{first.describe(now)}{more}; one standby range has one source, and this mirror would "
            f"overwrite that source's values. If this source is meant to replace it, stop the mirror from "
            f"cluster {first.source_id:x}, then run again with --take-over"
        )
    compares: list[Compare] = []
    deletes: list[Op] = []
    for other in others:
        lock = await dest.get(other.lock_key(layout))
        if lock is not None:
            holder = LockHolder.decode(lock.value)
            raise Refused(
                f"--take-over: the mirror from {other.describe(now)} is still running on the destination "
                f"{dest_text} (it holds its lock, {holder}); stop it first, then run again with --take-over"
            )
        compares.append(Compare.mod(other.key, CompareResult.EQUAL, other.mod_revision))
        compares.append(Compare.create(other.lock_key(layout), CompareResult.EQUAL, 0))
        deletes.extend(other.owned_keys(layout))
    taken = {o.source_id for o in others}
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
            f"{other.describe(now)} by the mirror from source cluster {source_id:x}"
        )
        log.warning("--take-over: %s; its checkpoint is removed and the range is copied again", message)
        await record_event(
            dest,
            layout,
            TAKE_OVER,
            message,
            previous_source=f"{other.source_id:x}",
            previous_revision=other.checkpoint.revision,
            previous_checkpoint=encode_key(other.key),
            source=f"{source_id:x}",
            checkpoint=encode_key(mine),
        )
