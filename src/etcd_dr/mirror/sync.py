"""Snapshot copy: make the destination range equal to the source range at one source revision R.

It is a diff, not a blind copy: source (at R) and destination are read side by side in key order and
only what differs is written (puts for missing or different keys, deletes for keys the source does not
have). The same code does the first copy into an empty destination, the redo of a copy cut short by a
crash, and the re-sync after the source compacted past the checkpoint, each writing only what differs.
Memory is bounded by the read-ahead pages and the txns in flight, not by the keyspace (and the ordered
keys: leased ones and those under --ordered-prefix, held until the end and written in the source's
create order, order.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..aio import cancel_and_wait
from ..errors import Fenced
from ..etcd import Compare, Delete, EtcdClient, KeyValueLike, Put, TxnBatch, prefix_range_end
from ..state.records import OrderRecord, encode_key
from .compare import Kind, diff_ranges
from .leases import LeaseMirror
from .order import AsData, OrderedKey, OrderRule, as_data, plan
from .stats import MirrorStats
from .writer import DestWriter

log = logging.getLogger("etcd_dr.mirror")

# The copy's window: bytes (of keys and values) of txns in flight, so that a far destination has as much
# in flight as its round trip needs whatever the txn size; --inflight caps the number of txns. Both also
# bound the memory the requests in flight hold.
COPY_WINDOW_BYTES = 8 * 1024 * 1024
# The copy's txns go over this many destination connections (the mirror's own and others opened for the
# copy), and its first txns are small (RAMP_TXN_BYTES, doubling with each round of txns over the
# connections, up to the destination's limit): etcd's grpc server opens every connection's HTTP/2
# receive window at 64 KiB and grows it only as it measures the link, so over a far link one connection
# carries little in its first round trips. Measured at 100 ms (docs/benchmarks.md): 10,000 keys of 256 B
# as three 0.93 MB txns took 1.3 s over one fresh connection, 0.5 s as 12 txns over 12 connections; and
# 0.35 s over one connection whose window had grown. Nothing on the client's side widens the server's
# window (grpc's bdp_probe, lookahead_bytes and write_buffer_size options changed nothing).
COPY_CONNECTIONS = 16
RAMP_TXN_BYTES = 64 * 1024

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
    # Ordered keys written one source create revision per txn, in how many txns, and how many of them
    # the destination had out of the source's order (deleted and created again).
    ordered_keys: int = 0
    ordered_txns: int = 0
    recreated: int = 0
    kept_as_data: int = 0  # ordered keys whose order is kept as data (order records)


ProgressFn = Callable[[SyncResult], None]


def copy_txn_limits(writer: DestWriter) -> tuple[int, int]:
    """Ops and bytes of keys and values per copy txn: the one place the copy's txn size is chosen (the
    configured --max-txn-ops and request size today; the destination's learned limits belong here)."""
    return writer.max_txn_ops, writer.max_txn_bytes


class TxnPipeline:
    """Sends batches of ops as destination txns guarded by `guard`: up to `window_bytes` of keys and
    values in flight, and at most `inflight` txns.

    Order between txns does not matter here (each key is written once per copy), which is what lets
    several be in flight, and over several connections: each txn goes over the one of `dest` and
    `senders` (clients of the same destination) with the fewest bytes in flight. The txns' bytes ramp up
    from RAMP_TXN_BYTES to `max_bytes` (see COPY_CONNECTIONS). Ops go straight into the next txn's
    request (`TxnBatch`): `room` says whether one more fits, else `flush` sends the batch first.
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
        senders: Sequence[EtcdClient] = (),
    ) -> None:
        self._stats = stats
        self._senders = [dest, *senders]
        self._sender_bytes = [0] * len(self._senders)  # bytes in flight on each
        self._sender_txns = [0] * len(self._senders)  # txns sent on each
        self.guard = list(guard)
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._cap = min(max_bytes, RAMP_TXN_BYTES)  # bytes of the batch being filled
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
        return not self._ops or (self._ops < self._max_ops and self.batch.nbytes + size <= self._cap)

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
        n = len(self._senders)
        i = min(range(n), key=lambda j: (self._sender_bytes[j], self._sender_txns[j]))
        self._sender_bytes[i] += size
        self._sender_txns[i] += 1
        rounds = min(sum(self._sender_txns) // n, 32)
        self._cap = min(self._max_bytes, RAMP_TXN_BYTES << rounds)
        task = asyncio.create_task(self._send(i, batch, size))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, sender: int, batch: TxnBatch, size: int) -> None:
        try:
            started = time.monotonic()
            succeeded, _ = await self._senders[sender].txn_batch(self.guard, batch)
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
            self._sender_bytes[sender] -= size
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
    rule: OrderRule,
    ordered: list[OrderedKey],
) -> None:
    """Put keys the destination lacks: the whole copy into an empty destination goes through here,
    so it is one tight loop without an await per key. Ordered keys are set aside in `ordered`."""
    is_ordered = rule.ordered
    if rule.any_ordered(kvs):
        rest = [(k, kv) for k, kv in zip(keys, kvs, strict=True) if not is_ordered(kv.key, kv.lease)]
        ordered.extend(
            OrderedKey(k, kv.value, kv.lease, kv.create_revision, 0, True)
            for k, kv in zip(keys, kvs, strict=True)
            if is_ordered(kv.key, kv.lease)
        )
        keys, kvs = [k for k, _ in rest], [kv for _, kv in rest]
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


MEASURE_LAYERS = 8  # layers written before the time they take is projected onto the rest


def _over_time(budget: float | None, done: int, elapsed: float, total: int) -> bool:
    """Whether writing all `total` layers would exceed `budget` seconds, judged after `done` of them
    took `elapsed` (None: no budget, every order kept in layers; 0: none in layers)."""
    if budget is None:
        return False
    if budget <= 0:
        return True
    return done >= MEASURE_LAYERS and elapsed / done * total > budget


async def _write_ordered(
    pipeline: TxnPipeline, writer: DestWriter, guard: Sequence[Compare], keys: Sequence[OrderedKey]
) -> tuple[int, int, int, AsData]:
    """Write the copy's ordered keys (order.py): those with no order to keep or already in it through
    the pipeline with the rest, then the others in layers, one txn at a time, after everything else
    has landed, as long as the layers fit the time budget; the rest the fast way, their order kept as
    data. Returns (keys written in layers, layer txns, keys re-created, the order kept as data)."""
    p = plan(keys)
    leases = writer.leases
    layered = [k for layer in p.layers for k in layer]
    granted = await leases.ensure_many(k.lease for k in [*p.puts, *layered]) if leases else {}

    def lease_of(k: OrderedKey) -> int:
        return granted.get(k.lease, 0) if leases is not None and k.lease else 0

    for k in p.puts:
        await pipeline.put(k.key, k.value, lease_of(k))
    # A key out of order is deleted just before its layer (the first layer's here, each next one's in
    # the txn of the layer before), so that one the budget leaves as data is not deleted for nothing.
    for k in p.layers[0] if p.layers else ():
        if k.dest_create:
            await pipeline.delete(k.key)
    # The layers are created after every other key of the copy, and each after the one before: txns
    # in flight together reach raft in no particular order.
    await pipeline.close()
    if not p.layers:
        return 0, 0, 0, []
    log.info(
        "copy: %d ordered keys under %d parents keep the source's create order: writing them in %d "
        "layers, one txn at a time (%d of them re-created: the destination had them out of order)",
        p.layered_keys,
        p.parents,
        len(p.layers),
        len(p.deletes),
    )
    budget = writer.order_time if writer.order_layout is not None else None
    txns, written, recreated, started = 0, 0, 0, time.monotonic()
    for done, layer in enumerate(p.layers):
        if _over_time(budget, done, time.monotonic() - started, len(p.layers)):
            return written, txns, recreated, await _rest_as_data(pipeline, p.layers[done:], lease_of, budget)
        following = p.layers[done + 1] if done + 1 < len(p.layers) else []
        ops: list[Put | Delete] = [Put(k.key, k.value, lease_of(k)) for k in layer]
        ops += [Delete(k.key) for k in following if k.dest_create]
        for chunk in _chunks(ops, writer.max_txn_ops, writer.max_txn_bytes):
            txns += await _send_layer(writer, guard, TxnBatch(chunk))
        written += len(layer)
        recreated += sum(1 for k in layer if k.dest_create)
    return written, txns, recreated, []


def _chunks(ops: Sequence[Put | Delete], max_ops: int, max_bytes: int) -> list[list[Put | Delete]]:
    """Consecutive ops cut to fit one txn each (a layer is one txn but for a very large one)."""
    out: list[list[Put | Delete]] = [[]]
    size = 0
    for op in ops:
        n = len(op.key) + (len(op.value) if isinstance(op, Put) else 0)
        if out[-1] and (len(out[-1]) >= max_ops or size + n > max_bytes):
            out.append([])
            size = 0
        out[-1].append(op)
        size += n
    return out if out[-1] else []


async def _rest_as_data(
    pipeline: TxnPipeline,
    rest: Sequence[Sequence[OrderedKey]],
    lease_of: Callable[[OrderedKey], int],
    budget: float | None,
) -> AsData:
    """Write the layers the budget cannot afford the fast way (after those written in order) and
    return their order, to keep as data. The first of them was deleted where the destination had it;
    the others are still there, in place: only what differs is put."""
    order = as_data(rest)
    log.info(
        "copy: the %d layers left would take more than --ordered-copy-time %.0f s one txn at a time: "
        "writing their %d keys (under %s) the fast way and keeping their source create order as data on "
        "the standby; a promotion creates them again in that order",
        len(rest),
        budget or 0.0,
        sum(len(layer) for layer in rest),
        ", ".join(encode_key(name) for name, _ in order[:5]) + (" ..." if len(order) > 5 else ""),
    )
    for i, layer in enumerate(rest):
        for k in layer:
            if k.differs or not k.dest_create or i == 0:
                await pipeline.put(k.key, k.value, lease_of(k))
    await pipeline.close()
    return order


RECORD_KEYS = 1000  # destination keys per order record


async def _write_order_records(writer: DestWriter, guard: Sequence[Compare], order: AsData) -> None:
    """Replace the pair's order records with `order` (none: only remove the old ones), after every
    key of the copy has landed: each record says they were all created at or below the destination's
    revision now."""
    layout = writer.order_layout
    if layout is None:
        return
    dest = writer.dest
    start = layout.order_records_of_pair(writer.pair)
    end = prefix_range_end(start)
    counted = await dest.range(start, end, count_only=True)
    if not order and not counted.count:
        return
    if counted.count:
        batch = TxnBatch()
        batch.delete(start, end)
        await _send_layer(writer, guard, batch)
    below = counted.header.revision
    batch, size = TxnBatch(), 0
    for name, groups in order:
        part, chunk, n = 0, [], 0
        for i, group in enumerate(groups):
            chunk.append(group)
            n += len(group)
            if n >= RECORD_KEYS or i == len(groups) - 1:
                key = layout.order_record(writer.pair, name, part)
                value = OrderRecord(name, part, below, chunk).encode()
                if len(batch) and (
                    len(batch) >= writer.max_txn_ops or size + len(value) > writer.max_txn_bytes
                ):
                    await _send_layer(writer, guard, batch)
                    batch, size = TxnBatch(), 0
                batch.put(key, value)
                size += len(key) + len(value)
                part, chunk, n = part + 1, [], 0
    if len(batch):
        await _send_layer(writer, guard, batch)


async def _count_order_records(writer: DestWriter) -> int:
    """How many order records the pair has on the destination (0 where the copy keeps none)."""
    layout = writer.order_layout
    if layout is None:
        return 0
    start = layout.order_records_of_pair(writer.pair)
    return (await writer.dest.range(start, prefix_range_end(start), count_only=True)).count


async def _send_layer(writer: DestWriter, guard: Sequence[Compare], batch: TxnBatch) -> int:
    started = time.monotonic()
    succeeded, _ = await writer.dest.txn_batch(guard, batch)
    writer.stats.observe_txn(time.monotonic() - started)
    writer.stats.applied_txns += 1
    if not succeeded:
        raise Fenced("the mirror's checkpoint changed during the copy: another mirror is writing")
    return 1


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
    dest, stats = writer.dest, writer.stats
    guard = writer.guard(checkpoint_raw)
    max_txn_ops, max_txn_bytes = copy_txn_limits(writer)
    # More connections for the copy's txns (COPY_CONNECTIONS), connecting while the destination is read,
    # when the copy may take more than one txn (the engine counted the source's keys).
    pool = [dest.sibling() for _ in range(COPY_CONNECTIONS - 1)] if stats.copy_total > max_txn_ops else []
    pipeline = TxnPipeline(dest, guard, max_txn_ops, max_txn_bytes, inflight, stats, senders=pool)
    try:
        return await _diff_sync(
            source, writer, pipeline, revision, page_size, on_progress, progress_every, resync, guard_deletes
        )
    finally:
        for client in pool:
            await client.close()


async def _diff_sync(
    source: EtcdClient,
    writer: DestWriter,
    pipeline: TxnPipeline,
    revision: int,
    page_size: int,
    on_progress: ProgressFn | None,
    progress_every: float,
    resync: bool,
    guard_deletes: Callable[[int, int, int], None] | None,
) -> SyncResult:
    """diff_sync's work, through `pipeline` (whose connections diff_sync closes)."""
    dest, mapper, leases, guard = writer.dest, writer.mapper, writer.leases, pipeline.guard
    rule = writer.order
    ordered: list[OrderedKey] = []
    level = logging.INFO if resync else logging.WARNING
    started = time.monotonic()
    result = SyncResult(revision=revision)
    dst_key, dst_end = mapper.dest_range
    # The destination is read at one revision too, so the comparison is against a consistent view; the
    # pair's order records are counted in the same round trip (none, and none to write: no step at
    # the end). Only a copy of this pair writes them, and no other can while our SYNC checkpoint holds.
    records = asyncio.ensure_future(_count_order_records(writer))
    try:
        dest_rev = (await dest.range(dst_key, dst_end, count_only=True)).header.revision
        had_records = await records
    finally:
        await cancel_and_wait(records)  # the count's failure raised above; this ends it on ours
    diffs = diff_ranges(
        source,
        dest,
        mapper,
        source_revision=revision,
        dest_revision=dest_rev,
        page_size=page_size,
        compare_leases=leases is not None,
        owns_lease=leases.owns if leases is not None else None,
        keep_equal=lambda kv: rule.ordered(kv.key, kv.lease),
    )
    last_report = time.monotonic()
    extras: list[bytes] = []
    dest_keys = 0
    MISSING, EXTRA, EQUAL = Kind.MISSING, Kind.EXTRA, Kind.EQUAL
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
                if kind is EQUAL:  # an ordered key, kept to check its order (counted above)
                    assert pair.dest is not None
                    ordered.append(
                        OrderedKey(
                            pair.key,
                            src.value,
                            src.lease,
                            src.create_revision,
                            pair.dest.create_revision,
                            False,
                        )
                    )
                    continue
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
                if rule.ordered(src.key, src.lease):
                    dest_create = pair.dest.create_revision if pair.dest is not None else 0
                    ordered.append(
                        OrderedKey(pair.key, src.value, src.lease, src.create_revision, dest_create, True)
                    )
                    continue
                lease = await leases.ensure(src.lease) if leases and src.lease else 0
                if not try_put(pair.key, src.value, lease):
                    await pipeline.put(pair.key, src.value, lease)
            if diff.missing:
                await _put_missing(pipeline, diff.missing_keys, diff.missing, leases, rule, ordered)
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
        kept: AsData = []
        if ordered:
            result.ordered_keys, result.ordered_txns, result.recreated, kept = await _write_ordered(
                pipeline, writer, guard, ordered
            )
        await pipeline.close()
        if kept or had_records:
            await _write_order_records(writer, guard, kept)
        result.kept_as_data = sum(len(g) for _, groups in kept for g in groups)
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
