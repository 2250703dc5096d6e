"""A read-only standby: writes into the mirrored range on the destination that the mirror did not make.

Every write the mirror makes into the range carries its checkpoint key in the same txn (the replay's
txns, and the restore below), or is made while the checkpoint says a copy is under way (phase "sync").
So a destination revision that touches the range is the mirror's when the checkpoint key's
mod_revision is that revision, or when the checkpoint read at that revision is a copy's; anything else
is a foreign write: a client pointed at the standby by mistake. Deletes made by a lease ending on the
destination (its expiry, or the mirror's revoke when the source lease ended) are not foreign: a
mirrored lease lost while the source's lives is the lease mirror's business.

Two watches from the same destination revision: the checkpoint key (its puts are the mirror's own
revisions, known without a read), and the mirrored range (with previous key-values, for the leases of
deleted keys). A range revision the checkpoint watch has not (yet) named is decided by reading the
checkpoint at that revision, so a slow checkpoint watch costs a read, never a wrong verdict.

A foreign write is put back to the source's state at the checkpoint's revision (or deleted when the
source has no such key) in a txn that also re-puts the checkpoint unchanged (so it is recognised as the
mirror's own) and holds only while the key is still as the foreign write left it, the checkpoint
unmoved and the lock held: a key the mirror has written since already has the source's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..aio import cancel_and_wait
from ..etcd import (
    CompactedError,
    Compare,
    CompareResult,
    Delete,
    EtcdClient,
    EtcdError,
    Event,
    EventType,
    Put,
    WatchBatch,
)
from ..state.reader import decode
from ..state.records import REPLAY, SYNC, Checkpoint, encode_key
from .keys import KeyMapper
from .leases import LeaseMirror
from .stats import MirrorStats

log = logging.getLogger("etcd_dr.mirror")

# How long a range revision waits for the checkpoint watch to name it before its checkpoint is read.
OWN_GRACE = 0.5
# Revisions of the mirror's own checkpoint puts remembered (older ones are decided by a read).
OWN_MEMORY = 100_000
# Foreign writes logged one by one per watch batch; the rest are counted in one line.
LOG_EACH = 20


@dataclass(frozen=True)
class ForeignWrite:
    key: bytes  # destination key
    revision: int  # destination revision of the write
    deleted: bool
    value: bytes = b""


class ForeignWatch:
    """Finds foreign writes from `start_revision` on and hands them to `restore` (when given)."""

    def __init__(
        self,
        dest: EtcdClient,
        mapper: KeyMapper,
        checkpoint_key: bytes,
        stats: MirrorStats,
        *,
        restore: Callable[[list[ForeignWrite]], Awaitable[None]] | None = None,
        checkpoint_dest: EtcdClient | None = None,
    ) -> None:
        self._dest = dest
        # The checkpoint's watch on a connection of its own: two watches on one connection would cut
        # each other's stream each time one of them moves to another endpoint.
        self._ckpt_dest = checkpoint_dest or dest
        self._mapper = mapper
        self._ckpt_key = checkpoint_key
        self._stats = stats
        self._restore = restore
        self._own: dict[int, str] = {}  # destination revision of a checkpoint put -> its phase
        self._ckpt_seen = 0  # the checkpoint watch delivered every put up to this revision
        self._last_phase = ""  # of the newest checkpoint put it delivered
        self._ckpt_moved = asyncio.Event()
        self.next_revision = 0  # where a new watch resumes (after the last range revision handled)

    async def run(self, start_revision: int) -> None:
        self.next_revision = max(self.next_revision, start_revision)
        ckpt_task = asyncio.create_task(self._follow_checkpoint(self.next_revision))
        key, end = self._mapper.dest_range
        watch = self._dest.watch(key, end, start_revision=self.next_revision, prev_kv=True)
        try:
            async for batch in watch:
                if ckpt_task.done():
                    ckpt_task.result()  # its error ends this run (the caller starts it again)
                if batch.events:
                    await self._handle(batch)
                    self.next_revision = batch.events[-1].kv.mod_revision + 1
        finally:
            await watch.close()
            await cancel_and_wait(ckpt_task)

    async def _follow_checkpoint(self, start: int) -> None:
        watch = self._ckpt_dest.watch(self._ckpt_key, start_revision=start)
        try:
            async for batch in watch:
                for ev in batch.events:
                    if ev.type is not EventType.PUT:
                        continue  # the checkpoint removed (by hand): no write of the mirror's
                    phase = ""
                    with contextlib.suppress(ValueError, KeyError):
                        phase = Checkpoint.decode(ev.kv.value).phase
                    self._own[ev.kv.mod_revision] = phase
                    self._last_phase = phase
                if len(self._own) > OWN_MEMORY:
                    for rev in sorted(self._own)[: len(self._own) - OWN_MEMORY // 2]:
                        del self._own[rev]
                self._ckpt_seen = max(self._ckpt_seen, batch.header.revision)
                self._ckpt_moved.set()
        finally:
            await watch.close()

    async def _is_own(self, revision: int) -> bool:
        """Whether a destination revision that touched the range is the mirror's (or its copy's)."""
        if revision not in self._own and self._ckpt_seen < revision and self._last_phase != SYNC:
            # Replaying: the checkpoint watch names the mirror's txns about as fast as this one sees
            # them. (During a copy it names nothing: its txns do not write the checkpoint; read.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OWN_GRACE):
                    while revision not in self._own and self._ckpt_seen < revision:
                        self._ckpt_moved.clear()
                        await self._ckpt_moved.wait()
        if revision in self._own:
            return True
        # Not named by the checkpoint watch: the checkpoint as of that revision decides.
        try:
            kv = await self._dest.get(self._ckpt_key, revision=revision)
        except CompactedError:
            # Compacted meanwhile: whose it was cannot be told; not reported (the periodic verify
            # compares the key's value, which is what matters).
            log.info(
                "destination revision %d touched the mirrored range but is compacted away: whether the "
                "mirror made it cannot be told; left to the periodic verify",
                revision,
            )
            return True
        if kv is None:
            return False
        if kv.mod_revision == revision:
            return True
        try:
            return Checkpoint.decode(kv.value).phase == SYNC  # a copy's write
        except (ValueError, KeyError):
            return False

    async def _lease_ended(self, lease: int) -> bool:
        try:
            return (await self._dest.lease_time_to_live(lease)).ttl < 0
        except EtcdError:
            return False

    async def _handle(self, batch: WatchBatch) -> None:
        protected = self._mapper.dest_is_protected
        by_revision: dict[int, list[Event]] = {}
        for ev in batch.events:
            if ev.kv.key.startswith(self._mapper.dest_prefix) and not protected(ev.kv.key):
                by_revision.setdefault(ev.kv.mod_revision, []).append(ev)
        found: list[ForeignWrite] = []
        for rev, events in by_revision.items():
            if await self._is_own(rev):
                continue
            for ev in events:
                deleted = ev.type is EventType.DELETE
                lease = ev.prev_kv.lease if deleted and ev.prev_kv is not None else 0
                if lease and await self._lease_ended(lease):
                    continue  # a destination lease ended (expired, or revoked by the mirror)
                found.append(ForeignWrite(ev.kv.key, rev, deleted, b"" if deleted else ev.kv.value))
        if not found:
            return
        s = self._stats
        s.foreign_writes += len(found)
        s.last_foreign_key = encode_key(found[-1].key)
        s.last_foreign_revision = found[-1].revision
        for w in found[:LOG_EACH]:
            log.warning(
                "foreign write on the standby: %s %s at destination revision %d, not made by the mirror "
                "(a client writing to the standby?)",
                "delete of" if w.deleted else "put of",
                encode_key(w.key),
                w.revision,
            )
        if len(found) > LOG_EACH:
            log.warning("... and %d more foreign writes in this batch", len(found) - LOG_EACH)
        s.flag(
            "foreign_write",
            f"{s.foreign_writes} writes on the standby not made by the mirror, the last {s.last_foreign_key} "
            f"at destination revision {s.last_foreign_revision} "
            f"(since {time.strftime('%H:%M:%S', time.gmtime())} UTC)",
        )
        if self._restore is not None:
            await self._restore(found)


async def restore_foreign(
    source: EtcdClient,
    dest: EtcdClient,
    mapper: KeyMapper,
    checkpoint_key: bytes,
    guards: Callable[[], list[Compare]],
    leases: LeaseMirror | None,
    writes: Sequence[ForeignWrite],
    *,
    attempts: int = 5,
) -> tuple[int, int]:
    """Put each foreign write's key back to the source's state at the checkpoint's revision.
    Returns (restored, already right: the mirror wrote the key since, or it equals the source's)."""
    restored = unchanged = 0
    latest: dict[bytes, ForeignWrite] = {}
    for w in writes:
        latest[w.key] = w
    for w in latest.values():
        src_key = mapper.prefix + w.key[len(mapper.dest_prefix) :]
        for _ in range(attempts):
            ckpt_kv = await dest.get(checkpoint_key)
            if ckpt_kv is None:
                log.warning("foreign write on %s: no checkpoint to restore from; left", encode_key(w.key))
                unchanged += 1
                break
            ckpt = decode("checkpoint", checkpoint_key, ckpt_kv.value, dest, Checkpoint.decode)
            if ckpt.phase != REPLAY:
                unchanged += 1  # a copy is under way: it makes the key equal
                break
            now = await dest.get(w.key)
            if (now is None) != w.deleted or (now is not None and now.mod_revision != w.revision):
                # Written again since (by the mirror: the source's value; by another foreign write:
                # restored from that one's event).
                unchanged += 1
                break
            try:
                src = await source.get(src_key, revision=ckpt.revision)
            except CompactedError:
                src = await source.get(src_key)  # the newest is at least as new as the checkpoint's
            still = (
                Compare.create(w.key, CompareResult.EQUAL, 0)
                if now is None
                else Compare.mod(w.key, CompareResult.EQUAL, now.mod_revision)
            )
            compare = [Compare.value_(checkpoint_key, CompareResult.EQUAL, ckpt_kv.value), still, *guards()]
            op: Put | Delete
            if src is None:
                if now is None:
                    unchanged += 1
                    break
                op, what = Delete(w.key), "deleted (the source has no such key)"
            else:
                lease = await leases.ensure(src.lease) if leases is not None and src.lease else 0
                op, what = Put(w.key, src.value, lease), "put back to the source's value"
            result = await dest.txn(compare, [op, Put(checkpoint_key, ckpt_kv.value)])
            if result.succeeded:
                restored += 1
                if restored > LOG_EACH:
                    break  # the caller logs how many in all
                log.warning(
                    "restore: %s %s, as of source revision %d, at destination revision %d (reason: "
                    "a write on the standby not made by the mirror, at destination revision %d)",
                    encode_key(w.key),
                    what,
                    ckpt.revision,
                    result.header.revision,
                    w.revision,
                )
                break
        else:
            log.warning(
                "foreign write on %s: not restored after %d attempts (the checkpoint kept moving); "
                "the next verify checks it",
                encode_key(w.key),
                attempts,
            )
    return restored, unchanged
