"""Proof of exactly-once replication from the two clusters' histories.

After the mirror's last copy, every destination revision that changes mirrored keys must be a mirror
txn: it carries a checkpoint, and its data ops are exactly the (mapped, collapsed) source ops between
the previous checkpoint's position and its own. Positions never go back and never skip: each source op
is applied once, in order. Requires that neither cluster was compacted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from etcd_dr.etcd import EtcdClient, EventType
from etcd_dr.mirror.checkpoint import REPLAY, SYNC, Checkpoint
from etcd_dr.mirror.keys import ALL_KEYS, KeyMapper

Op = tuple[bytes, bytes | None]  # (dest key, value or None for a delete)


@dataclass
class HistoryReport:
    replay_txns: int
    source_ops_checked: int
    copies: int


async def _history(client: EtcdClient) -> dict[int, list[tuple[EventType, bytes, bytes]]]:
    """Every event of the cluster from revision 1, by revision."""
    end = (await client.range(b"\0", b"\0", count_only=True)).header.revision
    out: dict[int, list[tuple[EventType, bytes, bytes]]] = defaultdict(list)
    if end <= 1:
        return out
    async with client.watch(*ALL_KEYS, start_revision=1) as watch:
        async for batch in watch:
            for ev in batch.events:
                out[ev.kv.mod_revision].append((ev.type, ev.kv.key, ev.kv.value))
            if batch.events and batch.events[-1].kv.mod_revision >= end:
                break
    return out


def _position(c: Checkpoint) -> tuple[int, int]:
    """The next source op to apply, as (revision, index within the revision's mirrored ops)."""
    return (c.split_revision, c.split_done) if c.split_revision else (c.revision + 1, 0)


async def check_exactly_once(
    source: EtcdClient, dest: EtcdClient, mapper: KeyMapper, checkpoint_key: bytes
) -> HistoryReport:
    src_hist = await _history(source)
    dst_hist = await _history(dest)
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

    copies = 0
    pos: tuple[int, int] | None = None  # position after the last copy / replay txn
    txns = 0
    checked = 0
    state: set[bytes] = set()  # destination keys that exist before the revision being checked
    for rev in sorted(dst_hist):
        events = dst_hist[rev]
        before = set(state)
        for t, k, _ in events:
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
        for p, (k, v) in src_ops:
            if pos <= p < new:
                expected[k] = v
                checked += 1
        # A key created and deleted within one group leaves no event on the destination.
        expected = {k: v for k, v in expected.items() if v is not None or k in before}
        got = {k: (v if t is EventType.PUT else None) for t, k, v in data}
        if got != expected:
            missing = sorted(set(expected) - set(got))[:5]
            extra = sorted(set(got) - set(expected))[:5]
            wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])[:5]
            raise AssertionError(
                f"destination revision {rev} (source ops {pos}..{new}): missing {missing}, extra {extra}, "
                f"different {wrong}"
            )
        pos = new
        txns += 1
    return HistoryReport(replay_txns=txns, source_ops_checked=checked, copies=copies)
