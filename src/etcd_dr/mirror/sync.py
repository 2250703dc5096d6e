"""Snapshot copy: make the destination range equal to the source range at one source revision R.

It is a diff, not a blind copy: source (at R) and destination are read side by side in key order and
only what differs is written (puts for missing or different keys, deletes for keys the source does not
have). The same code does the first copy into an empty destination, the redo of a copy cut short by a
crash, and the re-sync after the source compacted past the checkpoint, each writing only what differs.
Memory is bounded by the read-ahead pages and the txns in flight, not by the keyspace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import Fenced
from ..etcd import Compare, EtcdClient, KeyValueLike, TxnBatch
from ..state.records import encode_key
from .compare import Kind, diff_ranges
from .leases import LeaseMirror
from .stats import MirrorStats
from .writer import DestWriter

log = logging.getLogger("etcd_dr.mirror")

# The copy's window: bytes (of keys and values) of txns in flight, so that a far destination has as much
# in flight as its round trip needs whatever the txn size; --inflight caps the number of txns. Both also
# bound the memory the requests in flight hold.
COPY_WINDOW_BYTES = 8 * 1024 * 1024

REPORT_FIRST = 10  # how many overwritten / removed keys are named in the log before a summary
STALE_LIST = 20  # how many stale keys the one line before the copy's deletes names


@dataclass
class SyncResult:
    revision: int
    source_keys: int = 0
    puts: int = 0
    deletes: int = 0
    unchanged: int = 0
    overwritten: int = 0
    seconds: float = 0.0


ProgressFn = Callable[[SyncResult], None]


def copy_txn_limits(writer: DestWriter) -> tuple[int, int]:
    """Ops and bytes of keys and values per copy txn: the one place the copy's txn size is chosen (the
    configured --max-txn-ops and request size today; the destination's learned limits belong here)."""
    return writer.max_txn_ops, writer.max_txn_bytes


class TxnPipeline:
    """Sends batches of ops as destination txns guarded by `guard`: up to `window_bytes` of keys and
    values in flight, and at most `inflight` txns.

    Order between txns does not matter here (each key is written once per copy), which is what lets
    several be in flight. Ops go straight into the next txn's request (`TxnBatch`): `room` says whether
    one more fits, else `flush` sends the batch first.
    """

    def __init__(
        self,
        dest: EtcdClient,
        guard: Sequence[Compare],
        max_ops: int,
        max_bytes: int,
        inflight: int,
        stats: MirrorStats | None = None,
        window_bytes: int = COPY_WINDOW_BYTES,
    ) -> None:
        self._stats = stats
        self._dest = dest
        self._guard = list(guard)
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._max_txns = inflight
        self._window = window_bytes
        self._txns_out = 0  # txns in flight, and their bytes of keys and values
        self._bytes_out = 0
        self._freed = asyncio.Event()  # set when a txn in flight ended
        self._tasks: set[asyncio.Task[None]] = set()
        self.batch = TxnBatch()
        self._ops = 0
        self.txns = 0

    def _room(self, size: int) -> bool:
        """Whether one more op of `size` bytes (key and value) fits in the current batch (the first
        op always does: the source took it, so a destination with the same limits takes it too)."""
        return not self._ops or (self._ops < self._max_ops and self.batch.nbytes + size <= self._max_bytes)

    def try_put(self, key: bytes, value: bytes, lease: int = 0) -> bool:
        """Add a put to the current batch if it fits (no await: the per-key path); False when the
        batch must be flushed first (then `put`)."""
        if not self._room(len(key) + len(value)):
            return False
        self.batch.put(key, value, lease)
        self._ops += 1
        return True

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        if not self._room(len(key) + len(value)):
            await self.flush()
        self.batch.put(key, value, lease)
        self._ops += 1

    async def delete(self, key: bytes) -> None:
        if not self._room(len(key)):
            await self.flush()
        self.batch.delete(key)
        self._ops += 1

    async def flush(self) -> None:
        if not self._ops:
            return
        batch, self.batch, self._ops = self.batch, TxnBatch(), 0
        size = batch.nbytes
        self._raise_failures()
        # One txn always goes, however large; more while the window and the cap allow.
        while self._txns_out and (self._txns_out >= self._max_txns or self._bytes_out + size > self._window):
            self._freed.clear()
            await self._freed.wait()
            self._raise_failures()
        self._txns_out += 1
        self._bytes_out += size
        task = asyncio.create_task(self._send(batch, size))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: TxnBatch, size: int) -> None:
        try:
            started = time.monotonic()
            succeeded, _ = await self._dest.txn_batch(self._guard, batch)
            if self._stats is not None:
                self._stats.observe_txn(time.monotonic() - started)
                self._stats.applied_txns += 1
                self._stats.failing_since = None
            if not succeeded:
                raise Fenced("the mirror's checkpoint changed during the copy: another mirror is writing")
            self.txns += 1
        finally:
            self._txns_out -= 1
            self._bytes_out -= size
            self._freed.set()

    def _raise_failures(self) -> None:
        for t in list(self._tasks):
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    async def close(self) -> None:
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def abort(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _put_missing(
    pipeline: TxnPipeline,
    keys: Sequence[bytes],
    kvs: Sequence[KeyValueLike],
    leases: LeaseMirror | None,
) -> None:
    """Put keys the destination lacks: the whole copy into an empty destination goes through here,
    so it is one tight loop without an await per key."""
    if leases is not None:
        # The leases these keys use exist on the destination first (most keys have none).
        granted = await leases.ensure_many(kv.lease for kv in kvs)
    try_put = pipeline.try_put
    for key, kv in zip(keys, kvs, strict=True):
        lease = kv.lease
        if lease:
            lease = granted[lease] if leases is not None else 0
        if not try_put(key, kv.value, lease):
            await pipeline.put(key, kv.value, lease)


async def diff_sync(
    source: EtcdClient,
    writer: DestWriter,
    *,
    revision: int,
    checkpoint_raw: bytes,
    inflight: int,
    page_size: int,
    on_progress: ProgressFn | None = None,
    progress_every: float = 1.0,
    resync: bool = False,
    guard_deletes: Callable[[int, int, int], None] | None = None,
) -> SyncResult:
    """Make the destination's mapped range equal to source's range at `revision` (must be > 0), in
    txns that hold while the checkpoint is still `checkpoint_raw` (the copy's SYNC record).

    Keys it overwrites or removes are named in the log (the first few, then a count): as warnings on a
    first copy, where they are data the destination had of its own; at info level on a `resync`, where
    they are the source's own changes that the mirror could not replay.
    """
    dest, mapper, stats, leases = writer.dest, writer.mapper, writer.stats, writer.leases
    guard = writer.guard(checkpoint_raw)
    max_txn_ops, max_txn_bytes = copy_txn_limits(writer)
    level = logging.INFO if resync else logging.WARNING
    started = time.monotonic()
    result = SyncResult(revision=revision)
    pipeline = TxnPipeline(dest, guard, max_txn_ops, max_txn_bytes, inflight, stats)
    dst_key, dst_end = mapper.dest_range
    # The destination is read at one revision too, so the comparison is against a consistent view.
    dest_rev = (await dest.range(dst_key, dst_end, count_only=True)).header.revision
    diffs = diff_ranges(
        source,
        dest,
        mapper,
        source_revision=revision,
        dest_revision=dest_rev,
        page_size=page_size,
        compare_leases=leases is not None,
        owns_lease=leases.owns if leases is not None else None,
    )
    last_report = time.monotonic()
    extras: list[bytes] = []
    dest_keys = 0
    MISSING, EXTRA = Kind.MISSING, Kind.EXTRA
    try_put = pipeline.try_put
    try:
        async for diff in diffs:
            result.source_keys += diff.equal
            result.unchanged += diff.equal
            dest_keys += diff.equal
            for pair in diff.pairs:
                kind = pair.kind
                if kind is EXTRA:
                    # Deletes wait until the whole comparison is known, for the mass-delete guard.
                    extras.append(pair.key)
                    dest_keys += 1
                    continue
                src = pair.source
                assert src is not None
                result.source_keys += 1
                result.puts += 1
                if kind is not MISSING:
                    dest_keys += 1
                    result.overwritten += 1
                    if result.overwritten <= REPORT_FIRST:
                        log.log(
                            level,
                            "copy: overwriting destination key %s: its value differs from the source's "
                            "at revision %d",
                            encode_key(pair.key),
                            revision,
                        )
                lease = await leases.ensure(src.lease) if leases and src.lease else 0
                if not try_put(pair.key, src.value, lease):
                    await pipeline.put(pair.key, src.value, lease)
            if diff.missing:
                await _put_missing(pipeline, diff.missing_keys, diff.missing, leases)
                n = len(diff.missing)
                result.source_keys += n
                result.puts += n
            if on_progress is not None and time.monotonic() - last_report >= progress_every:
                last_report = time.monotonic()
                result.seconds = last_report - started
                on_progress(result)
        if extras:
            # Named before anything is deleted (and before the mass-delete guard may refuse): on a
            # standby another tool filled (etcdctl make-mirror, which never removes keys deleted while
            # it was down), these are the stale keys it left.
            shown = ", ".join(encode_key(k) for k in extras[:STALE_LIST])
            more = f" and {len(extras) - STALE_LIST} more" if len(extras) > STALE_LIST else ""
            log.log(
                level,
                "copy: %d destination key(s) are not on the source at revision %d (stale: deleted on the "
                "source, or left by an earlier mirror such as etcdctl make-mirror, or written on the "
                "standby); removing them, the mass-delete guard permitting: %s%s",
                len(extras),
                revision,
                shown,
                more,
            )
        if guard_deletes is not None:
            guard_deletes(len(extras), dest_keys, result.source_keys)
        for key in extras:
            result.deletes += 1
            if result.deletes <= REPORT_FIRST:
                log.log(
                    level,
                    "copy: removing destination key %s: the source does not have it at revision %d",
                    encode_key(key),
                    revision,
                )
            await pipeline.delete(key)
        await pipeline.close()
    except BaseException:
        await pipeline.abort()
        raise
    finally:
        await diffs.aclose()
    result.seconds = time.monotonic() - started
    if result.deletes > REPORT_FIRST or result.overwritten > REPORT_FIRST:
        log.log(
            level,
            "copy: in all %d destination keys removed and %d overwritten (first %d of each named above)",
            result.deletes,
            result.overwritten,
            REPORT_FIRST,
        )
    if on_progress is not None:
        on_progress(result)
    return result
