"""The mirror: copy at revision R, then replay from R + 1; resume from the destination's checkpoint.

Read top to bottom: `Mirror.run` connects and checks both clusters, then loops over `_cycle`, which reads
the checkpoint and either copies (no checkpoint, an interrupted copy, or a source compacted past it)
or replays from it. Retries, backoff and the status line wrap around that cycle, not through it:
any doubt (a txn with an unknown outcome, a broken stream, a moved checkpoint) ends the cycle, and the
next cycle starts again from what the destination's checkpoint says. The writes go through
`DestWriter` (writer.py); the standby's health duties (periodic verify, foreign writes, health record)
live in standby.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from ..aio import cancel_and_wait
from ..config import MirrorConfig
from ..errors import Fenced, LeaseLost, MassDeleteRefused, Refused, UsageError
from ..etcd import (
    CompactedError,
    Compare,
    CompareResult,
    EtcdClient,
    LeaseNotFound,
    NoSpaceError,
    Put,
    RequestTooLargeError,
    TooManyOpsError,
    TransientError,
    Unavailable,
)
from ..state.reader import decode
from ..state.records import REPLAY, SYNC, Checkpoint, encode_key
from ..state.roles import RoleState, claim_standby
from .background import follow_compaction, heartbeats, status_lines
from .catchup import CatchUpConfig
from .checkpoint import SourceRate
from .feed import TrailConfig
from .keys import KeyMapper
from .leases import LeaseMirror
from .limits import TxnLimits, learn
from .lock import MirrorLock
from .order import OrderRule
from .preflight import preflight
from .replay import Replayer
from .standby import StandbyDuties
from .stats import MirrorStats
from .sync import SyncResult, diff_sync
from .writer import DestWriter

log = logging.getLogger("etcd_dr.mirror")


class _Next(Enum):
    """What the loop does after an error: the next cycle at once, or after the backoff."""

    AGAIN = "again"
    BACKOFF = "backoff"


_AGAIN, _BACKOFF = _Next.AGAIN, _Next.BACKOFF

# The txn size (bytes of keys and values) the mirror goes down to, halving it each time the destination
# refuses a txn as too large (its --max-request-bytes is below the mirror's --max-txn-bytes).
MIN_TXN_BYTES = 16 * 1024


@dataclass
class MirrorResult:
    checkpoint: Checkpoint
    copied: SyncResult | None


class Mirror(StandbyDuties):
    """Continuous (or, with `once`, one-shot) replication SOURCE -> DEST as configured."""

    # Called where the mirror's cleanup begins (the CLI: runner.cleanup_begins, so that the runner's
    # repeated cancel, against one grpc lost, stops cutting into the cleanup).
    cleanup_begins: Callable[[], None] | None = None

    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self.stats = MirrorStats()
        self.mapper = KeyMapper.from_config(config)
        self._source_id = 0
        self._dest_id = 0
        self._role = RoleState(None, 0)
        self._key = b""
        self._lock_key = b""
        self._leases: LeaseMirror | None = None
        self._heartbeat_key = b""
        self._health_key = b""
        self._rev_pending = config.start_revision
        self._last_copy: SyncResult | None = None
        self._limits: TxnLimits | None = None  # the destination's, learned in the first cycle
        self._max_txn_bytes = 0  # bytes per txn: as learned, halved when the destination refuses one
        self._rate = SourceRate()

    # ---- the loop -------------------------------------------------------------------------------

    async def run(self) -> MirrorResult:
        async with EtcdClient(self.config.source) as source, EtcdClient(self.config.dest) as dest:
            await self._preflight(source, dest)
            if self.config.fence_standby:
                await self._fence_standby(dest)
            self._lock = MirrorLock(dest, self._lock_key, self.config.lock_ttl)
            helpers = [
                asyncio.create_task(status_lines(self.config, self.stats)),
                asyncio.create_task(follow_compaction(self.config, self.stats, source)),
            ]
            if self.config.verify_every and not self.config.once:
                helpers.append(asyncio.create_task(self._verify_periodically()))
            if self.config.foreign_writes != "ignore" and not self.config.once:
                helpers.append(asyncio.create_task(self._watch_foreign_writes(source)))
            if not self.config.once:
                helpers.append(asyncio.create_task(self._write_health(dest)))
            if self.readiness_check is not None and self.config.check_every and not self.config.once:
                helpers.append(asyncio.create_task(self._check_readiness_periodically()))
            helpers.append(
                asyncio.create_task(heartbeats(self.config, self.stats, source, self._heartbeat_key))
            )
            try:
                return await self._loop(source, dest)
            finally:
                if self.cleanup_begins is not None:
                    self.cleanup_begins()
                # Every helper cancelled before any is waited for: a second cancel of this task (the
                # demo repeats one) ends the waiting early, and a helper not cancelled by then would
                # run on against the closed clients.
                for task in helpers:
                    task.cancel()
                for task in helpers:
                    await cancel_and_wait(task)
                await self._lock.release()

    async def _preflight(self, source: EtcdClient, dest: EtcdClient) -> None:
        """Both clusters reached and the pair checked (preflight.py); the pair's keys and leases."""
        src, dst = await preflight(self.config, self.mapper, source, dest)
        self._source_id = src.cluster_id
        self._dest_id = dst.cluster_id
        self.stats.source_revision = src.revision
        layout, pair = self.config.layout, (src.cluster_id, self.config.prefix, self.mapper.dest_prefix)
        self._heartbeat_key = layout.heartbeat(dst.cluster_id)
        self._lock_key = layout.lock(*pair)
        if self.config.leases == "mirror":
            # The leases this mirror owns on the destination, next to its lock and checkpoint.
            self._leases = LeaseMirror(
                source,
                dest,
                layout.lease_registry(*pair),
                self.stats,
                self._guards,
                same_cluster=src.cluster_id == dst.cluster_id,
            )
        self._key = layout.checkpoint(*pair)
        self._health_key = layout.health(*pair)

    async def _loop(self, source: EtcdClient, dest: EtcdClient) -> MirrorResult:
        """Cycles until one ends (--once) or the mirror is stopped; an error is met as the retry
        policy (`_retry_policy`) says: again at once, again after the backoff, or raised."""
        target = self.stats.source_revision if self.config.once else None
        self._backoff, self._failing_since = 0.1, None
        while True:
            try:
                if not self._lock.revision or self._lock.lost.is_set():
                    # A one-shot run beside a running mirror says so and gives up after --timeout; the
                    # daemon stands by as long as it takes (that is its high availability).
                    await self._lock.acquire(self.config.timeout if self.config.once else None)
                ckpt = await self._while_holding_lock(self._cycle(source, dest, target))
                return MirrorResult(ckpt, self._last_copy)
            except Exception as e:
                handler = next((h for kind, h in self._retry_policy() if isinstance(e, kind)), None)
                if handler is None:
                    raise
                if await handler(e, dest) is _AGAIN:
                    continue
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)
            if self.stats.last_apply_time and time.time() - self.stats.last_apply_time < 10:
                self._backoff, self._failing_since = 0.1, None  # it was making progress: a fresh fault

    def _retry_policy(
        self,
    ) -> tuple[tuple[type[Exception], Callable[[Any, EtcdClient], Awaitable[_Next]]], ...]:
        """Which error -> what the loop does (first match; docs/architecture.md has it as a table).
        Any other error ends the mirror."""
        return (
            (LeaseLost, self._on_lease_expired),  # copy again, at once
            (LeaseNotFound, self._on_lease_not_found),  # copy again, after the backoff
            (TooManyOpsError, self._on_too_many_ops),  # refuse: the flag is wrong
            (CompactedError, self._on_compacted),  # copy again, at once
            (Fenced, self._on_fenced),  # lock lost: stand by; else restart from the checkpoint
            (RequestTooLargeError, self._on_too_large),  # smaller txns, at once
            (NoSpaceError, self._on_nospace),  # pause and retry (--once: until --timeout)
            (TransientError, self._on_transient),  # back off and retry (--once: until --timeout)
        )

    async def _on_lease_expired(self, e: LeaseLost, dest: EtcdClient) -> _Next:
        self.stats.resyncs += 1
        self._force_sync = "a destination lease expired while its source lease lives"
        return _AGAIN

    async def _on_lease_not_found(self, e: LeaseNotFound, dest: EtcdClient) -> _Next:
        # A txn named a destination lease that is gone (it expired between the cycle's lease check and
        # the txn): nothing was applied; the next cycle grants it again and copies.
        self.stats.resyncs += 1
        log.warning("%s: granting the leases again and copying", e)
        self._force_sync = "a destination lease expired while its source lease lives"
        return _BACKOFF

    async def _on_too_many_ops(self, e: TooManyOpsError, dest: EtcdClient) -> _Next:
        # The destination takes fewer ops than it did when probed (restarted with a lower limit, or a
        # member with another): nothing was applied; learn its limits again, unless they were just
        # learned (then the probe disagrees with the txns, which only a broken destination does).
        if self._limits is None or self.stats.applied_txns == self._limits_learned_at:
            raise UsageError(
                f"--max-txn-ops: the destination refuses txns the probe found it takes ({e}); give "
                "--max-txn-ops at most its etcd --max-txn-ops"
            ) from None
        log.warning("%s: the destination's limit went down; learning it again", e)
        self._limits = None
        return _AGAIN

    async def _on_compacted(self, e: CompactedError, dest: EtcdClient) -> _Next:
        self.stats.resyncs += 1
        self.stats.errors["compacted"] += 1
        log.warning("resync: the source compacted past the checkpoint (%s); copying again", e)
        self._force_sync = "the source compacted past the checkpoint"
        return _AGAIN

    async def _on_fenced(self, e: Fenced, dest: EtcdClient) -> _Next:
        self.stats.errors["fenced"] += 1
        try:
            holding = await self._still_holding_lock(dest)
        except TransientError as t:
            # The destination went away as well: the next cycle finds out (its txns compare the lock).
            log.warning("restart from the destination's checkpoint: %s (and %s)", e, t)
            return _BACKOFF
        if not holding:
            log.warning("the mirror lock was taken over (%s); standing by", e)
            self._lock.lost.set()
            return _AGAIN
        log.warning("restart from the destination's checkpoint: %s", e)
        return _BACKOFF

    async def _on_too_large(self, e: RequestTooLargeError, dest: EtcdClient) -> _Next:
        # Refused whole (nothing applied): the cycle starts again from the checkpoint with smaller
        # txns; a source txn larger than one of them is applied in parts (logged).
        self.stats.errors["too_large"] += 1
        if self._max_txn_bytes <= MIN_TXN_BYTES:
            raise Refused(
                f"{e}: the destination refuses even txns of {MIN_TXN_BYTES} bytes of keys and "
                "values, so a single source key and value is larger than its --max-request-bytes "
                "allows; raise it on the destination (to the source's, 1.5 MiB by default)"
            ) from e
        self._max_txn_bytes = max(MIN_TXN_BYTES, self._max_txn_bytes // 2)
        log.warning(
            "the destination refused a txn as too large (%s): its --max-request-bytes is below "
            "the mirror's txn size; from now on a txn carries at most %d bytes of keys and values",
            e,
            self._max_txn_bytes,
        )
        return _AGAIN

    async def _on_nospace(self, e: NoSpaceError, dest: EtcdClient) -> _Next:
        # Disk full (etcd's NOSPACE alarm): not a reason to exit. Nothing was written; pause, say so
        # (log, /healthz, metrics, status) and try again until the operator has made room.
        self.stats.errors["nospace"] += 1
        self.stats.nospace_txns = self.stats.applied_txns
        if self._gave_up():
            raise NoSpaceError(
                f"{e}: the cluster's NOSPACE alarm is raised (its backend quota is full); gave up "
                f"after {self.config.timeout:g} s (--timeout)",
                endpoint=e.endpoint,
            ) from e
        now = time.monotonic()
        if now - self._nospace_logged >= 30.0:
            self._nospace_logged = now
            log.error(
                "NOSPACE alarm: %s. The mirror is paused (nothing is lost: it resumes from its "
                "checkpoint) and retries every %.0f s or so. To make room: compact and defragment "
                "that cluster (`etcdctl compact REV`, `etcdctl defrag`) or raise its "
                "--quota-backend-bytes, then `etcdctl alarm disarm`",
                e,
                max(self._backoff, 5.0),
            )
        self._backoff = 5.0
        return _BACKOFF

    async def _on_transient(self, e: TransientError, dest: EtcdClient) -> _Next:
        self.stats.errors["unavailable"] += 1
        if self._gave_up():
            raise Unavailable(f"gave up after {self.config.timeout:g} s (--timeout): {e}") from e
        log.warning("%s; retrying from the checkpoint in %.1f s", e, self._backoff)
        return _BACKOFF

    def _gave_up(self) -> bool:
        """Counts the time the mirror has been failing: --once gives up after --timeout."""
        now = time.monotonic()
        self.stats.failing_since = self.stats.failing_since or now
        self._failing_since = self._failing_since or now
        return self.config.once and now - self._failing_since > self.config.timeout

    _limits_learned_at = -1  # stats.applied_txns when the limits were last learned
    _force_sync = ""  # why the next cycle must copy again, when it must
    _backoff = 0.1  # seconds before the next try after an error (doubling to 5 s)
    _failing_since: float | None = None  # monotonic time the current run of errors began
    _nospace_logged = -1e9  # monotonic time of the last NOSPACE error line

    async def _while_holding_lock(self, work: Coroutine[Any, Any, Checkpoint]) -> Checkpoint:
        """Run one cycle, cut short the moment the lock is lost (its txns would fail anyway)."""
        cycle = asyncio.ensure_future(work)
        helpers: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._lock.lost.wait())]
        if self._leases is not None:
            self._leases.new_cycle()
            helpers.append(asyncio.ensure_future(self._leases.keep_alive()))
            helpers.append(asyncio.ensure_future(self._leases.lost.wait()))
        try:
            await asyncio.wait({cycle, *helpers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not cycle.done():
                await cancel_and_wait(cycle)
            for h in helpers:
                await cancel_and_wait(h)
        if cycle.cancelled() or not cycle.done():
            if self._leases is not None and self._leases.lost.is_set():
                raise LeaseLost("a destination lease expired while its source lease lives")
            raise Fenced("lost the mirror lock")
        return cycle.result()

    async def _still_holding_lock(self, dest: EtcdClient) -> bool:
        kv = await dest.get(self._lock.key)
        return kv is not None and kv.create_revision == self._lock.revision

    def _guards(self) -> list[Compare]:
        """Compares every destination txn carries besides its checkpoint's: the lock, and the
        destination's role record as read at the start of the cycle (a promotion changes it, which
        fences this mirror for good)."""
        return [self._lock.guard(), self._role.guard(self.config.layout)]

    def _writer(self, dest: EtcdClient) -> DestWriter:
        """How the copy and the replay write: under the checkpoint and the guards of this cycle."""
        return DestWriter(
            dest,
            self.mapper,
            self._key,
            tuple(self._guards()),
            self._limits.max_ops if self._limits else 2,
            self._max_txn_bytes,
            self.stats,
            self._leases,
            OrderRule(self.config.ordered_prefixes),
            self.config.layout,
            self.config.layout.pair_of(self._key),
            self.config.ordered_copy_time,
        )

    async def _cycle(self, source: EtcdClient, dest: EtcdClient, target: int | None) -> Checkpoint:
        # Every cycle: a destination promoted meanwhile ends the mirror here (Refused).
        self._role = await claim_standby(
            source,
            dest,
            self.config.layout,
            source_id=self._source_id,
            dest_id=self._dest_id,
            dest_text=self.config.dest.endpoints_text,
        )
        if self._limits is None:
            self._limits = await learn(dest, self._key, self.config.max_txn_ops, self.config.max_txn_bytes)
            self._max_txn_bytes = min(self._max_txn_bytes or self._limits.max_bytes, self._limits.max_bytes)
            self._limits_learned_at = self.stats.applied_txns
        ckpt, raw = await self._read_checkpoint(dest)
        # The lease registry checked against both clusters before any key is attached this cycle.
        if self._leases is not None and await self._leases.reconcile() and not self._force_sync:
            self.stats.resyncs += 1
            self._force_sync = "a destination lease expired while its source lease lives"
        if self._rev_pending is not None:
            ckpt, raw = await self._start_at_revision(dest, ckpt, raw, self._rev_pending)
            self._rev_pending = None
        elif ckpt is None or ckpt.phase == SYNC or self._force_sync:
            reason = (
                "no checkpoint on the destination"
                if ckpt is None
                else "an earlier copy did not finish"
                if ckpt.phase == SYNC
                else f"{self._force_sync} (checkpoint at source revision {ckpt.revision})"
            )
            log.info("copy: %s; copying the source at one revision", reason)
            ckpt, raw = await self._copy(source, dest, ckpt, raw)
            self._force_sync = ""
            if self._leases is not None:
                self._leases.restored()
        else:
            log.info("resuming from the checkpoint: source revision %d applied", ckpt.revision)
        self.stats.applied_revision = ckpt.revision
        if target is not None and ckpt.revision >= target:
            return ckpt
        self._rate.carry(ckpt)
        replayer = Replayer(
            source,
            self._writer(dest),
            ckpt,
            stop_at=target,
            heartbeat_key=self._heartbeat_key,
            guard_deletes=lambda n: self._check_replay_deletes(dest, n),
            checkpoint_interval=self.config.checkpoint_interval,
            retry_for=self.config.timeout if self.config.once else None,
            checkpoint_raw=raw,
            source_rate=self._rate,
            source_endpoints=self.config.source.endpoints_text,
            catchup=CatchUpConfig(
                self.config.catchup_watchers, self.config.catchup_slice, self.config.catchup_threshold
            ),
            trail=TrailConfig(self.config.trail_above, self.config.trail_below),
        )
        return await replayer.run()

    # ---- the steps ------------------------------------------------------------------------------

    async def _copy(
        self, source: EtcdClient, dest: EtcdClient, previous: Checkpoint | None, raw: bytes | None
    ) -> tuple[Checkpoint, bytes]:
        src_key, src_end = self.mapper.source_range
        read_at = time.time()  # the copy is the source as of now: its time, until a heartbeat is applied
        counted = await source.range(src_key, src_end, count_only=True)
        revision = counted.header.revision
        self.stats.phase = "copy"
        self.stats.copy_total = counted.count
        self.stats.copy_done = 0
        self.stats.source_revision = max(self.stats.source_revision, revision)
        start = self._new_checkpoint(revision, SYNC)
        start_raw = await self._write_checkpoint(dest, raw, start)
        log.info("copy: %d source keys at revision %d", counted.count, revision)
        t0 = time.monotonic()

        last_line = [t0]

        def progress(r: SyncResult) -> None:
            self.stats.copy_done = r.source_keys
            if time.monotonic() - last_line[0] < 5.0:
                return
            last_line[0] = time.monotonic()
            rate = r.source_keys / max(time.monotonic() - t0, 1e-6)
            left = max(counted.count - r.source_keys, 0)
            log.info(
                "copy: %d/%d keys (%.0f keys/s, about %.0f s left)",
                r.source_keys,
                counted.count,
                rate,
                left / max(rate, 1),
            )

        result = await diff_sync(
            source,
            self._writer(dest),
            revision=revision,
            checkpoint_raw=start_raw,
            inflight=self.config.inflight,
            page_size=self.config.page_size,
            on_progress=progress,
            progress_every=0.25,
            resync=previous is not None and previous.phase == REPLAY,
            guard_deletes=self._check_copy_deletes,
        )
        done = replace(self._new_checkpoint(revision, REPLAY), source_time=round(read_at, 3))
        done_raw = await self._write_checkpoint(dest, start_raw, done)
        self._last_copy = result
        log.info(
            "copy: done at revision %d in %.1f s: %d keys, %d written, %d removed, %d already equal "
            "(%.0f keys/s)",
            revision,
            result.seconds,
            result.source_keys,
            result.puts,
            result.deletes,
            result.unchanged,
            result.source_keys / max(result.seconds, 1e-6),
        )
        return done, done_raw

    async def _start_at_revision(
        self, dest: EtcdClient, ckpt: Checkpoint | None, raw: bytes | None, revision: int
    ) -> tuple[Checkpoint, bytes]:
        if ckpt is not None:
            log.warning(
                "--rev %d: replacing the checkpoint at source revision %d; events in between are %s",
                revision,
                ckpt.revision,
                "skipped" if revision > ckpt.revision + 1 else "applied again",
            )
        else:
            log.info("--rev %d: no initial copy; replaying from source revision %d", revision, revision)
        new = self._new_checkpoint(revision - 1, REPLAY)
        return new, await self._write_checkpoint(dest, raw, new)

    # ---- the mass-delete guard --------------------------------------------------------------------

    def _refuse_mass_delete(self, deletes: int, dest_keys: int, what: str) -> None:
        c = self.config
        if c.allow_mass_delete or deletes < c.mass_delete_min or deletes <= c.max_delete_ratio * dest_keys:
            return
        self.stats.errors["mass_delete_refused"] += 1
        raise MassDeleteRefused(
            f"{what} would delete {deletes} of the destination's {dest_keys} keys under "
            f"{encode_key(self.mapper.dest_prefix) or 'the whole keyspace'} (more than --max-delete-ratio "
            f"{c.max_delete_ratio:g}); refused, the standby is left as it is. If the source really lost "
            "them, run again with --allow-mass-delete"
        )

    def _check_copy_deletes(self, deletes: int, dest_keys: int, source_keys: int) -> None:
        if source_keys == 0 and deletes > 0 and not self.config.allow_mass_delete:
            self.stats.errors["mass_delete_refused"] += 1
            raise MassDeleteRefused(
                f"the source reads empty under {encode_key(self.config.prefix) or 'the whole keyspace'} "
                f"while the destination holds {dest_keys} keys; refused, the standby is left as it is. "
                "If the source really is empty, run again with --allow-mass-delete"
            )
        self._refuse_mass_delete(deletes, dest_keys, "the copy")

    async def _check_replay_deletes(self, dest: EtcdClient, keys: list[bytes]) -> None:
        """`keys`: the keys one source revision deletes (the one deleting the most of those a replay txn
        applies). Its keys created earlier in the same txn, or already gone, are not on the destination:
        when the count alone would refuse, only the keys the destination holds are counted."""
        c = self.config
        if c.allow_mass_delete or len(keys) < c.mass_delete_min:
            return
        key, end = self.mapper.dest_range
        dest_keys = (await dest.range(key, end, count_only=True)).count
        deletes = len(keys)
        if deletes > c.max_delete_ratio * dest_keys:
            present = {kv.key for kv in (await dest.range(key, end, keys_only=True)).kvs}
            deletes = sum(k in present for k in keys)
        self._refuse_mass_delete(deletes, dest_keys, "a replayed source revision")

    def _new_checkpoint(self, revision: int, phase: str) -> Checkpoint:
        head = self.stats.source_revision
        return Checkpoint(
            source_cluster_id=self._source_id,
            source_prefix=self.config.prefix,
            dest_prefix=self.mapper.dest_prefix,
            revision=revision,
            phase=phase,
            epoch=self._role.epoch,
            updated=round(time.time(), 3),
            source_endpoints=self.config.source.endpoints_text,
        ).seen(head, self._rate.observe(head))

    async def _read_checkpoint(self, dest: EtcdClient) -> tuple[Checkpoint | None, bytes | None]:
        kv = await dest.get(self._key)
        if kv is None:
            return None, None
        return decode("checkpoint", kv.key, kv.value, dest, Checkpoint.decode), kv.value

    async def _write_checkpoint(self, dest: EtcdClient, previous: bytes | None, new: Checkpoint) -> bytes:
        """Replace the checkpoint, only if it is still what we read (else another writer is active)."""
        data = new.encode()
        guard = (
            Compare.create(self._key, CompareResult.EQUAL, 0)
            if previous is None
            else Compare.value_(self._key, CompareResult.EQUAL, previous)
        )
        result = await dest.txn([guard, *self._guards()], [Put(self._key, data)])
        if not result.succeeded:
            raise Fenced("the checkpoint on the destination changed while the mirror was starting")
        return data
