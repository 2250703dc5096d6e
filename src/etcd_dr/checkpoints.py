"""The mirror checkpoints a destination holds, which of them are live, and removing a stale one.

A destination keeps one checkpoint per mirror pair (source cluster, source prefix -> destination
prefix) that ever ran into it. A checkpoint whose mirror lock is held belongs to a running mirror
(live); one whose lock is free was left by a mirror that stopped (stale: a one-off run with another
--prefix, a pair no longer used). Stale checkpoints must not decide a move's RPO, and nothing else
removes them: `etcd-dr checkpoints DEST` lists them and removes one on request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import CheckFailed, Refused, UsageError
from .etcd import Compare, CompareResult, Delete, EtcdClient
from .state.events import record_event
from .state.layout import StateLayout
from .state.site import SiteState, StoredCheckpoint

log = logging.getLogger("etcd_dr.checkpoints")


async def list_checkpoints(
    client: EtcdClient, layout: StateLayout, source_id: int | None = None, *, strict: bool = True
) -> list[StoredCheckpoint]:
    """Every mirror checkpoint on `client` (only those from the cluster `source_id` if given), each
    with its lock's holder; oldest first by key. An unreadable one is UnreadableRecord, unless not
    `strict` (removing one by its id must still work: then it is listed with its error)."""
    return (await SiteState.read(client, layout)).stored_checkpoints(source_id, strict=strict)


@dataclass(frozen=True)
class Choice:
    """The checkpoints a move takes its RPO from, and the stale ones it ignores."""

    used: list[StoredCheckpoint]
    ignored: list[StoredCheckpoint]
    why: str


def choose_live(found: list[StoredCheckpoint], own_key: bytes | None = None) -> Choice:
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


def find(found: list[StoredCheckpoint], wanted: str) -> StoredCheckpoint:
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
) -> StoredCheckpoint:
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
) -> tuple[list[StoredCheckpoint], Choice]:
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
