"""Proof of exactly-once replication: from the two clusters' histories (check_exactly_once), and from
the workload's log of acknowledged writes alone (check_against_acks).

After the mirror's last copy, every destination revision that changes mirrored keys must be a mirror
txn: it carries a checkpoint, and its data ops are exactly the (mapped, collapsed) source ops between
the previous checkpoint's position and its own. Positions never go back and never skip: each source op
is applied once, in order. Requires that neither cluster was compacted.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from etcd_dr.aio import cancel_and_wait
from etcd_dr.etcd import Delete, EtcdClient, EventType, Put
from etcd_dr.mirror.keys import ALL_KEYS, KeyMapper
from etcd_dr.state.records import REPLAY, SYNC, Checkpoint
from harness.workload import Acked, Workload

Op = tuple[bytes, bytes | None]  # (dest key, value or None for a delete)


@dataclass
class HistoryReport:
    replay_txns: int
    source_ops_checked: int
    copies: int
    largest_txn: int = 0  # the most mirrored ops one replay txn carried on the destination


# etcd hands a watcher that starts in the past at most 1000 revisions per sync pass (every 100 ms), and
# each pass reads the store from the lowest such watcher's position to the head: one watch over a long
# history is quadratic (minutes for 100k revisions). Watches over consecutive slices of 1000 revisions
# are served together, each in about one pass.
_SLICE = 1000
_CONCURRENT_SLICES = 64

Events = list[tuple[EventType, bytes, bytes]]


async def _history(client: EtcdClient) -> dict[int, Events]:
    """Every event of the cluster from revision 1, by revision."""
    end = (await client.range(b"\0", b"\0", count_only=True)).header.revision
    out: dict[int, Events] = defaultdict(list)
    if end <= 1:
        return out
    limit = asyncio.Semaphore(_CONCURRENT_SLICES)

    async def revisions(first: int, last: int) -> dict[int, Events]:
        # Every revision after 1 has at least one event: the watch is done once `last` is seen.
        got: dict[int, Events] = defaultdict(list)
        async with limit, client.watch(*ALL_KEYS, start_revision=first) as watch:
            async for batch in watch:
                for ev in batch.events:
                    if ev.kv.mod_revision <= last:
                        got[ev.kv.mod_revision].append((ev.type, ev.kv.key, ev.kv.value))
                if batch.events and batch.events[-1].kv.mod_revision >= last:
                    break
        return got

    async with asyncio.TaskGroup() as tg:  # one failing slice cancels the others
        firsts = range(2, end + 1, _SLICE)
        slices = [tg.create_task(revisions(first, min(first + _SLICE - 1, end))) for first in firsts]
    for task in slices:
        out.update(task.result())
    return out


class HistoryRecorder:
    """Every event of a cluster, recorded as it happens by one watch from revision 1.

    Read back afterwards, a long history costs etcd a pass over the store per 1000 revisions (and per
    watcher): hours for a soak's million revisions. A watch that follows the cluster costs one delivery
    per event. Start it before the load; pass it to check_exactly_once in place of the client.
    """

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.events: dict[int, Events] = defaultdict(list)
        self.revision = 1  # recorded up to here
        self._task: asyncio.Task[None] | None = None

    async def _record(self) -> None:
        async with self.client.watch(*ALL_KEYS, start_revision=2) as watch:
            async for batch in watch:
                for ev in batch.events:
                    self.events[ev.kv.mod_revision].append((ev.type, ev.kv.key, ev.kv.value))
                if batch.events:
                    self.revision = batch.events[-1].kv.mod_revision

    async def __aenter__(self) -> HistoryRecorder:
        self._task = asyncio.create_task(self._record())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def history(self, timeout: float = 60.0) -> dict[int, Events]:
        """The history up to the cluster's revision now (waiting until it is recorded)."""
        if self._task is None:
            raise RuntimeError("HistoryRecorder not started")
        end = (await self.client.range(b"\0", b"\0", count_only=True)).header.revision
        async with asyncio.timeout(timeout):
            while self.revision < end:
                if self._task.done():
                    self._task.result()  # its error
                    raise RuntimeError("the history watch ended")
                await asyncio.sleep(0.05)
        return self.events


async def _history_of(cluster: EtcdClient | HistoryRecorder) -> dict[int, Events]:
    return await (cluster.history() if isinstance(cluster, HistoryRecorder) else _history(cluster))


def _diff(expected: Mapping[bytes, object], got: Mapping[bytes, object]) -> str:
    missing = sorted(set(expected) - set(got))[:5]
    extra = sorted(set(got) - set(expected))[:5]
    wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])[:5]
    return f"missing {missing}, extra {extra}, different {wrong}"


def _position(c: Checkpoint) -> tuple[int, int]:
    """The next source op to apply, as (revision, index within the revision's mirrored ops)."""
    return (c.split_revision, c.split_done) if c.split_revision else (c.revision + 1, 0)


async def check_exactly_once(
    source: EtcdClient | HistoryRecorder,
    dest: EtcdClient | HistoryRecorder,
    mapper: KeyMapper,
    checkpoint_key: bytes,
) -> HistoryReport:
    src_hist = await _history_of(source)
    dst_hist = await _history_of(dest)
    # The mirrored source ops, in order, with their positions.
    src_ops: list[tuple[tuple[int, int], Op]] = []
    for rev in sorted(src_hist):
        i = 0
        for typ, key, value in src_hist[rev]:
            dkey = mapper.to_dest(key)
            if dkey is None:
                continue
            src_ops.append(((rev, i), (dkey, value if typ is EventType.PUT else None)))
            i += 1
    positions = [p for p, _ in src_ops]  # sorted: each txn's source ops are found by bisection

    copies = 0
    pos: tuple[int, int] | None = None  # position after the last copy / replay txn
    txns = 0
    largest = 0
    checked = 0
    state: set[bytes] = set()  # destination keys that exist before the revision being checked
    for rev in sorted(dst_hist):
        events = dst_hist[rev]
        # Whether each key this revision touches existed before it (the others did not change).
        existed: dict[bytes, bool] = {}
        for t, k, _ in events:
            existed.setdefault(k, k in state)
            (state.add if t is EventType.PUT else state.discard)(k)
        ckpts = [Checkpoint.decode(v) for t, k, v in events if k == checkpoint_key and t is EventType.PUT]
        data = [(t, k, v) for t, k, v in events if k != checkpoint_key and not mapper.dest_is_protected(k)]
        if not ckpts:
            if data and pos is not None:
                raise AssertionError(f"destination revision {rev} changes mirrored keys without a checkpoint")
            continue
        ckpt = ckpts[0]
        if ckpt.phase == SYNC:
            pos = None  # a copy starts: its txns carry no checkpoint; the next REPLAY ends it
            continue
        assert ckpt.phase == REPLAY
        new = _position(ckpt)
        if pos is None:  # the txn that ends a copy (or --rev): the replay starts here
            if data:
                raise AssertionError(f"destination revision {rev}: the copy's last txn carries data")
            copies += 1
            pos = new
            continue
        if new < pos:
            raise AssertionError(f"destination revision {rev}: checkpoint went back from {pos} to {new}")
        expected: dict[bytes, bytes | None] = {}
        for _, (k, v) in src_ops[bisect_left(positions, pos) : bisect_left(positions, new)]:
            expected[k] = v
            checked += 1
        # A key created and deleted within one group leaves no event on the destination.
        expected = {k: v for k, v in expected.items() if v is not None or existed.get(k, k in state)}
        got = {k: (v if t is EventType.PUT else None) for t, k, v in data}
        if got != expected:
            raise AssertionError(
                f"destination revision {rev} (source ops {pos}..{new}): {_diff(expected, got)}"
            )
        pos = new
        txns += 1
        largest = max(largest, len(data))
    return HistoryReport(replay_txns=txns, source_ops_checked=checked, copies=copies, largest_txn=largest)


# ---- the acknowledged-operations log (Jepsen style) --------------------------------------------------


def model_at(initial: dict[bytes, bytes], acked: Sequence[Acked], revision: int) -> dict[bytes, bytes]:
    """The source's content at `revision` as the acknowledged writes say, from `initial` (its content
    before the first of them)."""
    state = dict(initial)
    for a in sorted(acked, key=lambda a: a.revision):
        if a.revision > revision:
            break
        for op in a.ops:
            _apply(state, op)
    return state


def _apply(state: dict[bytes, bytes], op: Put | Delete) -> None:
    if isinstance(op, Put):
        state[op.key] = op.value
    elif not op.range_end:
        state.pop(op.key, None)
    else:
        for k in [k for k in state if _in_range(k, op.key, op.range_end)]:
            del state[k]


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    return key == start if not end else start <= key and (end == b"\0" or key < end)


@dataclass
class AckCheck:
    dest_revision: int
    checkpoint_revision: int
    keys: int  # keys compared
    uncertain: int  # keys left out: an op whose outcome is unknown touched them


async def check_against_acks(
    workload: Workload,
    initial: dict[bytes, bytes],
    dest: EtcdClient,
    mapper: KeyMapper,
    checkpoint_key: bytes,
    at_revision: int | None = None,
) -> AckCheck | None:
    """Read the destination's checkpoint and content at one destination revision (the current one, or
    `at_revision`: to check a sample again once the workload's request in flight was acknowledged, as
    it may already be on the destination); the content must be
    the source's content at the checkpoint's revision, as rebuilt from the workload's acknowledged
    writes alone (not from the source), on every key no unacknowledged write touched.

    None when there is nothing to check yet (no checkpoint, a copy in progress, or the middle of a
    split revision)."""
    got = await dest.range(checkpoint_key, revision=at_revision or 0)
    if not got.kvs:
        return None
    ckpt = Checkpoint.decode(got.kvs[0].value)
    if ckpt.phase != REPLAY or ckpt.split_revision:
        return None
    dest_rev = at_revision or got.header.revision
    key, end = mapper.dest_range
    content = {
        kv.key: kv.value
        for kv in (await dest.range(key, end, revision=dest_rev)).kvs
        if not mapper.dest_is_protected(kv.key)
    }
    # Read after the destination: an answer that arrived meanwhile is in `acked`; one still on its way is
    # `in_flight`, and the sample may hold it or not (the mirror can apply it before we hear the answer).
    doubtful = [op for ops in [*workload.uncertain, workload.in_flight] for op in ops]

    def certain(source_key: bytes) -> bool:
        return not any(
            _in_range(source_key, op.key, op.range_end if isinstance(op, Delete) else b"") for op in doubtful
        )

    expected: dict[bytes, bytes] = {}
    left_out: set[bytes] = set()
    for k, v in model_at(initial, workload.acked, ckpt.revision).items():
        dk = mapper.to_dest(k)
        if dk is None:
            continue
        if certain(k):
            expected[dk] = v
        else:
            left_out.add(dk)
    # Destination keys whose source key some doubtful op touched are left out too.
    for dk in content:
        source_key = mapper.prefix + dk[len(mapper.dest_prefix) :]
        if not certain(source_key):
            left_out.add(dk)
    actual = {k: v for k, v in content.items() if k not in left_out}
    if actual != expected:
        raise AssertionError(
            f"destination revision {dest_rev} (checkpoint at source revision {ckpt.revision}) is not the "
            f"acknowledged state at that revision: {_diff(expected, actual)}"
        )
    return AckCheck(dest_rev, ckpt.revision, len(expected), len(left_out))
