"""Replay: apply the source's watch events, revision by revision, each destination txn carrying the
checkpoint of what it covers.

The watch is on the whole source keyspace (filtered here), so that every source revision is seen, even
those that touch no mirrored key: the checkpoint then tracks the source revision exactly, the lag is
exact, and `--once` knows when it has caught up, without relying on progress notifications (which
etcd < 3.4.31 / 3.5.13 may send ahead of undelivered events, etcd-io/etcd#15220).

Consecutive revisions are grouped into one destination txn when more than one is waiting (the mirror is
behind), so the replay rate follows what the destination can absorb, not the source's revision rate.
The reader keeps reading while the applier writes: what it has read and not yet applied (the backlog) is
bounded by ops and bytes, not by watch responses, so that a mirror that is behind always finds a whole
txn's worth (`--max-txn-ops`) of revisions waiting, whether etcd sent them one per response or many.
A single revision is never split across txns unless it alone exceeds the txn limits; then it is applied
in parts, each part recorded in the checkpoint, and the log says so. Two revisions that create ordered
siblings (leased keys, keys under --ordered-prefix: order.py) never share a txn, so that they keep the
source's create order on the destination.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from ..aio import cancel_and_wait
from ..errors import Fenced
from ..etcd import (
    Delete,
    EtcdClient,
    EventType,
    Put,
    TxnBatch,
    Unavailable,
    WatchBatch,
    chunked,
)
from ..state.records import Checkpoint
from .catchup import CatchUpConfig, catch_up
from .checkpoint import SourceRate
from .feed import SourceFeed, TrailConfig
from .keys import ALL_KEYS
from .order import joins, parent
from .writer import DestWriter

log = logging.getLogger("etcd_dr.mirror")

DestOp = Put | Delete

# Seconds without any watch response, while the source's revision is known to be ahead, after which the
# watch is considered stuck and made again.
STALL_AFTER = 5.0

# The backlog (read, not yet applied) the reader may run ahead by: in destination txns' worth of ops,
# and in bytes of keys and values. Past either, the reader waits for the applier. The reader must stay
# a whole txn ahead plus what arrives while one is in flight: 16 txns of etcd's default 128 ops, or 4
# of a bigger limit (4 x 4096 ops: a few MB of queued objects besides the values, which the byte
# bound holds to 4 txns of the mirror's 8 MiB).
BACKLOG_TXNS = 16
BACKLOG_MIN_OPS = BACKLOG_TXNS * 128
BACKLOG_BIG_TXNS = 4
BACKLOG_BYTES = 32 * 1024 * 1024


@dataclass(slots=True)
class SourceRevision:
    revision: int
    ops: list[DestOp]  # mapped and filtered, in the source's order
    heartbeat: float = 0.0  # the source time this revision's heartbeat carries, if it has one
    nbytes: int = 0  # of the ops' keys and values
    creates: list[bytes] = field(default_factory=list)  # the ordered keys it creates (destination keys)


def _op_size(op: DestOp) -> int:
    return len(op.key) + (len(op.value) if isinstance(op, Put) else 0)


def chunk_ops(ops: Sequence[DestOp], max_ops: int, max_bytes: int) -> list[list[DestOp]]:
    """Cut ops into consecutive chunks within the op and byte limits (an op over the byte limit goes
    alone: the source accepted it, so a destination with the same limits accepts it too)."""
    return chunked(ops, max_ops, max_bytes, _op_size)


def _parse_time(value: bytes) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


class Replayer:
    def __init__(
        self,
        source: EtcdClient,
        writer: DestWriter,
        checkpoint: Checkpoint,
        *,
        stop_at: int | None = None,
        heartbeat_key: bytes | None = None,
        guard_deletes: Callable[[list[bytes]], Awaitable[None]] | None = None,
        checkpoint_interval: float = 1.0,
        retry_for: float | None = None,
        backlog_ops: int | None = None,
        backlog_bytes: int = BACKLOG_BYTES,
        checkpoint_raw: bytes | None = None,
        source_rate: SourceRate | None = None,
        source_endpoints: str = "",
        catchup: CatchUpConfig | None = None,
        trail: TrailConfig | None = None,
    ) -> None:
        self._source = source
        self._writer = writer
        self._dest = writer.dest
        self._mapper = writer.mapper
        self._key = writer.checkpoint_key
        max_txn_ops, max_txn_bytes = writer.max_txn_ops, writer.max_txn_bytes
        self._ckpt = checkpoint
        # The stored bytes, as the txns compare them (a record of an older version re-encodes otherwise).
        self._ckpt_bytes = checkpoint_raw if checkpoint_raw is not None else checkpoint.encode()
        self._rate = source_rate
        self._endpoints = source_endpoints or checkpoint.source_endpoints
        self._max_ops = max_txn_ops - 1  # one op of every txn is the checkpoint
        self._max_bytes = max_txn_bytes
        self._stats = writer.stats
        self._stop_at = stop_at
        self._heartbeat_key = heartbeat_key
        self._guard_deletes = guard_deletes
        self._leases = writer.leases
        self._order = writer.order
        self._heartbeat = 0.0  # newest heartbeat time covered but not yet in a written checkpoint
        self._interval = checkpoint_interval
        self._retry_for = retry_for
        self._catchup = catchup
        self._trail = trail
        # Revisions read and not yet applied, in order; the reader appends, the applier takes.
        self._pending: deque[SourceRevision] = deque()
        self._pending_ops = 0  # ops (counting a revision with none as one) and bytes in _pending
        self._pending_bytes = 0
        self._max_backlog_ops = backlog_ops or max(BACKLOG_MIN_OPS, BACKLOG_BIG_TXNS * max_txn_ops)
        self._max_backlog_bytes = backlog_bytes
        self._arrived = asyncio.Event()  # set when the reader appended (or failed)
        self._room = asyncio.Event()  # set while the backlog is under its bounds
        self._room.set()
        self._read_error: BaseException | None = None
        self.feed: SourceFeed | None = None  # the live read of the source, once the catch-up is done
        # The deletes of the source revision in the group being applied that deletes the most: the
        # mass-delete guard judges source requests (a prefix delete, a txn), not the destination's
        # txns, whose size follows how far behind the mirror is.
        self._worst_deletes: list[bytes] = []
        self._covered = checkpoint.revision  # every revision up to here is applied or has nothing to apply
        self._last_write = time.monotonic()
        self._last_batch = time.monotonic()  # when the watch last delivered anything

    @property
    def checkpoint(self) -> Checkpoint:
        return self._ckpt

    # ---- reading the source -------------------------------------------------------------------

    def _revisions(self, batch: WatchBatch) -> list[SourceRevision]:
        out: list[SourceRevision] = []
        skip = 0
        for ev in batch.events:
            rev = ev.kv.mod_revision
            if not out or out[-1].revision != rev:
                out.append(SourceRevision(rev, []))
                # Resuming inside a revision applied in parts: drop the parts already applied.
                skip = self._ckpt.split_done if rev == self._ckpt.split_revision else 0
            dkey = self._mapper.to_dest(ev.kv.key)
            if dkey is None:
                if ev.kv.key == self._heartbeat_key and ev.type is EventType.PUT:
                    out[-1].heartbeat = _parse_time(ev.kv.value)
                continue
            if skip:
                skip -= 1
                continue
            rev_ = out[-1]
            if ev.type is EventType.PUT:
                value = ev.kv.value
                rev_.ops.append(Put(dkey, value, ev.kv.lease if self._leases else 0))
                rev_.nbytes += len(dkey) + len(value)
                if ev.kv.version == 1 and self._order.ordered(ev.kv.key, ev.kv.lease):
                    rev_.creates.append(dkey)
            else:
                rev_.ops.append(Delete(dkey))
                rev_.nbytes += len(dkey)
        return out

    async def _read(self) -> None:
        start = self._ckpt.split_revision or self._ckpt.revision + 1
        try:
            start = await self._catch_up(start)
        except Exception as e:  # handed to the applier, as the watch's own errors are
            self._read_error = e
            self._arrived.set()
            return
        self.feed = feed = SourceFeed(self._source, start, retry_for=self._retry_for, trail=self._trail)
        try:
            async for batch in feed:
                self._last_batch = time.monotonic()
                self._stats.source_read = "windows" if feed.trailing else "live"
                if batch.events:
                    self._stats.received(batch.events[-1].kv.mod_revision)
                    self._append(self._revisions(batch))
                    if not self._room.is_set():
                        await self._room.wait()
                self._stats.source_revision = max(self._stats.source_revision, batch.header.revision)
        except Exception as e:  # handed to the applier, which raises it in the engine's loop
            self._read_error = e
            self._arrived.set()
        finally:
            await feed.close()

    async def _catch_up(self, start: int) -> int:
        """While the source's head is far ahead of `start`, read up to it through several watches
        (mirror/catchup.py); returns where the one live watch starts."""
        cfg = self._catchup
        while cfg is not None and cfg.enabled:
            head = (await self._source.range(ALL_KEYS[0])).header.revision
            self._stats.source_revision = max(self._stats.source_revision, head)
            if head - start + 1 <= cfg.threshold:
                break
            await catch_up(
                self._source,
                start,
                head,
                config=cfg,
                convert=self._revisions,
                deliver=self._deliver,
                retry_for=self._retry_for,
            )
            start = head + 1
        return start

    async def _deliver(self, revisions: list[SourceRevision]) -> None:
        """The catch-up's revisions, in order, into the backlog the applier takes from."""
        self._last_batch = time.monotonic()
        self._stats.received(revisions[-1].revision)
        self._append(revisions)
        if not self._room.is_set():
            await self._room.wait()

    def _append(self, revisions: list[SourceRevision]) -> None:
        for rev in revisions:
            self._pending.append(rev)
            self._pending_ops += len(rev.ops) or 1
            self._pending_bytes += rev.nbytes
        if self._pending_ops >= self._max_backlog_ops or self._pending_bytes >= self._max_backlog_bytes:
            self._room.clear()
        self._arrived.set()

    def _popleft(self) -> SourceRevision:
        rev = self._pending.popleft()
        self._pending_ops -= len(rev.ops) or 1
        self._pending_bytes -= rev.nbytes
        if self._pending_ops < self._max_backlog_ops and self._pending_bytes < self._max_backlog_bytes:
            self._room.set()
        return rev

    # ---- writing the destination --------------------------------------------------------------

    async def _apply(self, ops: list[DestOp], ckpt: Checkpoint) -> None:
        if self._leases is not None:
            ops = await self._leases.prepare(ops)
        # One copy of the checkpoint per txn, not one per field changed (its JSON is written per txn).
        more: dict[str, object] = {}
        if self._heartbeat and not ckpt.split_revision:
            more["source_time"] = self._heartbeat
        if self._rate is not None:
            # Where the source is and how fast it moves, written with the data (no extra txn).
            head = self._stats.source_revision
            ckpt = ckpt.seen(head, self._rate.observe(head), source_endpoints=self._endpoints, **more)
        elif more:
            ckpt = replace(ckpt, **more)  # type: ignore[arg-type]
        data = ckpt.encode()
        guard = self._writer.guard(self._ckpt_bytes)
        batch = TxnBatch(ops)
        batch.put(self._key, data)
        started = time.monotonic()
        succeeded, _ = await self._dest.txn_batch(guard, batch)
        self._stats.observe_txn(time.monotonic() - started)
        if not succeeded:
            raise Fenced(
                f"the checkpoint {self._key.decode(errors='replace')} on the destination changed under the "
                "mirror (another mirror, or a manual change)"
            )
        self._ckpt, self._ckpt_bytes = ckpt, data
        self._last_write = time.monotonic()
        s = self._stats
        s.applied(ckpt.revision)
        s.applied_events += len(ops)
        s.applied_txns += 1
        s.last_apply_time = time.time()
        s.failing_since = None

    async def _apply_split(self, rev: SourceRevision) -> None:
        base = self._ckpt.split_done if self._ckpt.split_revision == rev.revision else 0
        chunks = chunk_ops(rev.ops, self._max_ops, self._max_bytes)
        log.warning(
            "source revision %d has %d mirrored ops (%d bytes), more than one destination txn holds "
            "(--max-txn-ops %d, %d bytes): applying it in %d txns, so it is not atomic on the destination",
            rev.revision,
            len(rev.ops) + base,
            rev.nbytes,
            self._max_ops + 1,
            self._max_bytes,
            len(chunks),
        )
        done = base
        for i, chunk in enumerate(chunks):
            done += len(chunk)
            if i < len(chunks) - 1:
                ckpt = self._ckpt.advanced(rev.revision - 1, split_revision=rev.revision, split_done=done)
            else:
                ckpt = self._ckpt.advanced(rev.revision)
            await self._apply(chunk, ckpt)
        self._covered = rev.revision

    def _take_group(self) -> tuple[list[DestOp], int]:
        """Take whole revisions from the front of the pending queue that fit in one txn; collapse the
        ops per key (a txn may name a key once; the last op on a key gives the same final state)."""
        ops: dict[bytes, DestOp] = {}
        parents: set[bytes] = set()  # under which the group creates ordered keys
        size = 0
        last = self._covered
        self._worst_deletes = []
        while self._pending:
            rev = self._pending[0]
            rsize = rev.nbytes
            if ops and (len(ops) + len(rev.ops) > self._max_ops or size + rsize > self._max_bytes):
                break
            if rev.creates and not joins(ops, parents, rev.creates):
                break  # it creates a sibling of a key this txn creates: the next txn, after it
            if not ops and (len(rev.ops) > self._max_ops or rsize > self._max_bytes):
                break  # the caller applies this one in parts
            if len(rev.ops) > len(self._worst_deletes):  # (a list only when it may be the worst)
                deletes = [op.key for op in rev.ops if type(op) is Delete]
                if len(deletes) > len(self._worst_deletes):
                    self._worst_deletes = deletes
            for op in rev.ops:
                ops.pop(op.key, None)  # keep the order of the last write to each key
                ops[op.key] = op
            parents.update(parent(k) for k in rev.creates)
            size += rsize
            last = rev.revision
            self._heartbeat = max(self._heartbeat, rev.heartbeat)
            self._popleft()
        return list(ops.values()), last

    def _raise_read_error(self) -> None:
        if self._read_error is not None:
            raise self._read_error

    async def _wait(self) -> bool:
        """Wait for source revisions; False when the checkpoint interval passed first."""
        self._raise_read_error()
        if not self._pending:
            self._arrived.clear()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
                # arrives as the wait ends, and a cancelled mirror would then run on.
                async with asyncio.timeout(self._interval):
                    await self._arrived.wait()
            except TimeoutError:
                self._check_stalled()
                return False
            self._raise_read_error()
        return bool(self._pending)

    def _check_stalled(self) -> None:
        """A watch on the whole keyspace sees every source revision (the heartbeat makes one a second).
        If it delivers nothing while the source has moved on, the stream is stuck somewhere grpc does
        not notice: end the cycle, and the next one watches again from the checkpoint."""
        silent = time.monotonic() - self._last_batch
        if silent > STALL_AFTER and self._stats.source_revision > self._covered:
            raise Unavailable(
                f"the source watch delivered nothing for {silent:.0f} s while the source moved to revision "
                f"{self._stats.source_revision} (applied: {self._covered}); watching again"
            )

    def _done(self) -> bool:
        return self._stop_at is not None and self._covered >= self._stop_at and not self._pending

    async def run(self) -> Checkpoint:
        """Replay until `stop_at` is covered (then return the checkpoint) or forever."""
        reader = asyncio.create_task(self._read())
        self._stats.phase = "replay"
        try:
            while not self._done():
                if not self._pending and not await self._wait():
                    await self._checkpoint_if_behind()
                    continue
                self._raise_read_error()
                ops, last = self._take_group()
                if self._guard_deletes is not None:
                    await self._guard_deletes(self._worst_deletes)
                if ops:
                    await self._apply(ops, self._ckpt.advanced(last))
                    self._covered = last
                elif last > self._covered:
                    self._covered = last  # revisions with nothing to mirror
                    self._stats.applied(last)
                    if time.monotonic() - self._last_write >= self._interval:
                        await self._checkpoint_if_behind()
                elif self._pending:
                    big = self._pending[0]
                    if self._guard_deletes is not None:
                        await self._guard_deletes([op.key for op in big.ops if isinstance(op, Delete)])
                    await self._apply_split(self._popleft())
            await self._checkpoint_if_behind()
            return self._ckpt
        finally:
            await cancel_and_wait(reader)

    async def _checkpoint_if_behind(self) -> None:
        """Record revisions that had nothing to mirror, so a restart need not read them again."""
        if self._covered > self._ckpt.revision:
            await self._apply([], self._ckpt.advanced(self._covered))
