"""The mirror checkpoints a destination holds, which of them are live, and removing a stale one.

A destination keeps one checkpoint per mirror pair (source cluster, source prefix -> destination
prefix) that ever ran into it. A checkpoint whose mirror lock is held belongs to a running mirror
(live); one whose lock is free was left by a mirror that stopped (stale: a one-off run with another
--prefix, a pair no longer used). Stale checkpoints must not decide a move's RPO, and nothing else
removes them: `etcd-dr checkpoints DEST` lists them and removes one on request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .errors import CheckFailed, Refused, UsageError
from .etcd import Compare, CompareResult, Delete, EtcdClient
from .state.events import record_event
from .state.layout import StateLayout
from .state.reader import UnreadableRecord, where
from .state.records import Checkpoint, LockHolder, encode_key
from .state.site import SiteState

log = logging.getLogger("etcd_dr.checkpoints")


@dataclass(frozen=True)
class CheckpointInfo:
    key: bytes
    raw: bytes
    mod_revision: int
    checkpoint: Checkpoint | None  # None: the record is not readable (listed, removable)
    holder: LockHolder | None  # the mirror lock's holder (a running mirror), None when the lock is free
    error: str = ""

    @property
    def id(self) -> str:
        """<source cluster id, 16 hex>/<digest of the prefixes>: the checkpoint key's tail."""
        return b"/".join(self.key.rsplit(b"/", 2)[-2:]).decode()

    @property
    def live(self) -> bool:
        return self.holder is not None

    @property
    def source_cluster_id(self) -> int:
        return int(self.id.split("/")[0], 16)

    def age(self, now: float | None = None) -> float | None:
        if self.checkpoint is None or not self.checkpoint.updated:
            return None
        return max(0.0, (time.time() if now is None else now) - self.checkpoint.updated)

    def pair(self) -> str:
        ck = self.checkpoint
        if ck is None:
            return f"cluster {self.source_cluster_id:x} (unreadable: {self.error})"
        return f"cluster {ck.source_cluster_id:x} {_prefix(ck.source_prefix)} -> {_prefix(ck.dest_prefix)}"

    def line(self, now: float | None = None) -> str:
        ck = self.checkpoint
        age = self.age(now)
        where = f"revision {ck.revision} ({ck.phase})" if ck else "unreadable"
        when = f"updated {age:.0f} s ago" if age is not None else "never updated"
        state = f"live, lock held by {self.holder}" if self.holder else "STALE, lock free"
        return f"{self.id}  {self.pair()}  {where}, {when}, {state}"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        ck = self.checkpoint
        return {
            "id": self.id,
            "key": encode_key(self.key),
            "source_cluster_id": f"{self.source_cluster_id:x}",
            "source_prefix": encode_key(ck.source_prefix) if ck else None,
            "dest_prefix": encode_key(ck.dest_prefix) if ck else None,
            "revision": ck.revision if ck else None,
            "phase": ck.phase if ck else None,
            "updated": ck.updated if ck else None,
            "age_seconds": self.age(now),
            "lock_holder": None if self.holder is None else str(self.holder),
            "state": "live" if self.live else "stale",
            "error": self.error or None,
        }


def _prefix(p: bytes) -> str:
    return repr(encode_key(p)) if p else "(all keys)"


async def list_checkpoints(
    client: EtcdClient, layout: StateLayout, source_id: int | None = None, *, strict: bool = True
) -> list[CheckpointInfo]:
    """Every mirror checkpoint on `client` (only those from the cluster `source_id` if given), each
    with its lock's holder; oldest first by key. An unreadable one is UnreadableRecord, unless not
    `strict` (removing one by its id must still work: then it is listed with its error)."""
    return checkpoints_of(await SiteState.read(client, layout), source_id, strict=strict)


def checkpoints_of(
    site: SiteState, source_id: int | None = None, *, strict: bool = True
) -> list[CheckpointInfo]:
    """list_checkpoints from a snapshot: each checkpoint with its lock as they were at one revision."""
    tail = None if source_id is None else site.layout.pair_of(site.layout.checkpoints_of(source_id))
    found = []
    for pair, kv in sorted(site.checkpoint_kvs.items()):
        if pair.count(b"/") != 1 or (tail is not None and not pair.startswith(tail)):
            continue  # not a checkpoint key (<cluster>/<digest>), or another source's
        try:
            ckpt: Checkpoint | None = Checkpoint.decode(kv.value)
            error = ""
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            if strict:
                raise UnreadableRecord("checkpoint", kv.key, where(site.client), e) from None
            ckpt, error = None, str(e) or type(e).__name__
        found.append(CheckpointInfo(kv.key, kv.value, kv.mod_revision, ckpt, site.lock_holder(pair), error))
    return found


@dataclass(frozen=True)
class Choice:
    """The checkpoints a move takes its RPO from, and the stale ones it ignores."""

    used: list[CheckpointInfo]
    ignored: list[CheckpointInfo]
    why: str


def choose_live(found: list[CheckpointInfo], own_key: bytes | None = None) -> Choice:
    """Which of one source cluster's checkpoints describe what the standby really has: those of the
    mirror that was running. In order: the move's own pair (`own_key`, from its --prefix) if its lock
    is held; else every pair whose lock is held (sharded mirrors: the lowest revision counts); else
    the move's own pair; else the most recently updated one. Unreadable records are never used."""
    readable = [c for c in found if c.checkpoint is not None]
    own = [c for c in readable if c.key == own_key]
    held = [c for c in readable if c.live]
    if own and own[0].live:
        used, why = own, "the mirror lock of this --prefix is held"
    elif held:
        used, why = held, "their mirror locks are held"
    elif own:
        used, why = own, "no mirror lock is held; the checkpoint of this --prefix"
    elif readable:
        newest = max(readable, key=lambda c: c.checkpoint.updated if c.checkpoint else 0.0)
        used, why = [newest], "no mirror lock is held; the most recently updated checkpoint"
    else:
        used, why = [], "no readable checkpoint"
    return Choice(used, [c for c in found if c not in used], why)


def find(found: list[CheckpointInfo], wanted: str) -> CheckpointInfo:
    """The checkpoint named by `wanted`: its full id (<cluster>/<digest>) or the digest alone."""
    w = wanted.strip().lower()
    matches = [c for c in found if c.id == w or c.id.split("/", 1)[1] == w]
    if not matches:
        known = ", ".join(c.id for c in found) or "none"
        raise UsageError(f"--remove {wanted!r}: no such checkpoint on the destination (there are: {known})")
    if len(matches) > 1:
        raise UsageError(
            f"--remove {wanted!r} names {len(matches)} checkpoints; give the full id "
            + " or ".join(c.id for c in matches)
        )
    return matches[0]


async def remove_checkpoint(
    client: EtcdClient, layout: StateLayout, wanted: str, *, force: bool = False
) -> CheckpointInfo:
    """Remove one checkpoint (and the health record beside it) in one txn that holds only if it is
    unchanged and, unless `force`, its lock is still free. A live one is refused without `force`:
    its mirror would lose its place and copy again."""
    info = find(await list_checkpoints(client, layout, strict=False), wanted)
    if info.live and not force:
        raise Refused(
            f"checkpoint {info.id} ({info.pair()}) is live: its mirror lock is held by {info.holder}; "
            "stop that mirror first, or --force (the mirror then copies its range again)"
        )
    compares = [Compare.mod(info.key, CompareResult.EQUAL, info.mod_revision)]
    ops = [Delete(info.key)]
    if not force:
        lock = layout.lock_of_pair(layout.pair_of(info.key))
        compares.append(Compare.create(lock, CompareResult.EQUAL, 0))
    if info.checkpoint is not None:
        ck = info.checkpoint
        ops.append(Delete(layout.health(ck.source_cluster_id, ck.source_prefix, ck.dest_prefix)))
    result = await client.txn(compares, ops)
    if not result.succeeded:
        raise CheckFailed(
            f"checkpoint {info.id} changed while being removed (a mirror started or moved it); "
            "list the checkpoints again"
        )
    log.warning(
        "removed the mirror checkpoint %s (%s, %s)%s",
        info.id,
        info.pair(),
        f"revision {info.checkpoint.revision}" if info.checkpoint else "unreadable",
        f"; --force: its mirror (lock held by {info.holder}) will copy again" if info.live else "",
    )
    await record_event(
        client,
        layout,
        "checkpoint-removed",
        f"mirror checkpoint {info.id} ({info.pair()}) removed" + (" with --force" if info.live else ""),
    )
    return info


async def live_checkpoints(
    client: EtcdClient, layout: StateLayout, source_id: int, own_key: bytes | None = None
) -> tuple[list[CheckpointInfo], Choice]:
    """Every checkpoint from `source_id` on `client`, and the choice a move takes its RPO from; the
    choice is logged, each stale checkpoint with a warning."""
    found = await list_checkpoints(client, layout, source_id)
    choice = choose_live(found, own_key)
    if choice.used:
        log.info(
            "the standby's applied state comes from checkpoint %s (%s)",
            ", ".join(f"{c.id} at revision {c.checkpoint.revision}" for c in choice.used if c.checkpoint),
            choice.why,
        )
    for c in choice.ignored:
        log.warning("stale mirror checkpoint, not used: %s", c.line())
    return found, choice
