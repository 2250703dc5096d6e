"""At a promotion, before the clients are switched: create again, in the source's create order, the
ordered siblings a copy wrote without it (too many for its budget of txns one after the other; their
order kept as data while the site was a standby: mirror/order.py, records.OrderRecord).

Each key is deleted and put back with the same value and lease, one txn per layer (keys of one source
create revision together), so that etcd's lock and election recipes rank them as on the old primary.
Keys created after the copy (by the replay) come after them on the source too: they are created again
after them. A key's delete and its put back are in consecutive txns; the keys deleted and not yet put
back are kept in the order journal (in the same txn as their delete), so a rerun after a crash puts
them back first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import groupby

from ..etcd import EtcdClient, KeyValue, LeaseNotFound, TxnBatch, chunked, prefix_range_end
from ..state.layout import StateLayout
from ..state.reader import decode
from ..state.records import OrderJournal, OrderRecord, encode_key

log = logging.getLogger("etcd_dr.failover")


def parent(key: bytes) -> bytes:
    """The prefix siblings share (as mirror/order.py, which the failover layer does not import)."""
    return key[: key.rfind(b"/") + 1]


SLICE_KEYS = 50  # keys deleted (and put back) per txn, under etcd's default --max-txn-ops of 128
SLICE_BYTES = 512 * 1024


async def read_order_records(client: EtcdClient, layout: StateLayout) -> list[OrderRecord]:
    """The order records and the order journal of a site, each decoded: a damaged one raises the reader's
    error (exit 2 naming the key). The moves call it before they change anything, so that a record
    they could not use stops them before the promotion, not after."""
    kv = await client.get(layout.order_journal)
    if kv is not None:
        decode("order journal", kv.key, kv.value, client, OrderJournal.decode)
    found = (await client.range(layout.order_records, prefix_range_end(layout.order_records))).kvs
    return [decode("order", kv.key, kv.value, client, OrderRecord.decode) for kv in found]


async def recreate_in_order(client: EtcdClient, layout: StateLayout, where: str) -> int:
    """Create the keys the order records name again in their source order; remove the records.
    Returns how many keys were created again (0: no records)."""
    await _put_back_journal(client, layout)
    records = await read_order_records(client, layout)
    if not records:
        return 0
    by_parent: dict[bytes, list[OrderRecord]] = {}
    for r in records:
        by_parent.setdefault(r.parent, []).append(r)
    merged: list[list[KeyValue]] = []
    for name, recs in by_parent.items():
        for i, layer in enumerate(await _layers(client, name, recs)):
            if i == len(merged):
                merged.append([])
            merged[i].extend(layer)
    total = sum(len(layer) for layer in merged)
    log.info(
        "promotion: creating %d keys under %d prefix(es) of %s again, in the source's create order (kept "
        "as data while it was a standby, so that locks and elections rank them as on the old primary): "
        "%d txns, before the clients are switched",
        total,
        len(by_parent),
        where,
        len(merged) + 1,
    )
    prev: list[KeyValue] = []
    for piece in [*_slices(merged), []]:
        try:
            await client.txn_batch([], _step(layout, prev, piece))
        except LeaseNotFound:  # a lease ended meanwhile: its keys are not put back (etcd deleted them)
            await client.txn_batch([], _step(layout, await _live(client, prev), piece))
        prev = piece
    await client.delete_range(layout.order_records, prefix_range_end(layout.order_records))
    return total


def _step(layout: StateLayout, put_back: Sequence[KeyValue], delete: Sequence[KeyValue]) -> TxnBatch:
    """One txn: put back the keys the previous one deleted, delete the next ones and journal them."""
    batch = TxnBatch()
    for kv in put_back:
        batch.put(kv.key, kv.value, kv.lease)
    for kv in delete:
        batch.delete(kv.key)
    if delete:
        batch.put(
            layout.order_journal, OrderJournal([(kv.key, kv.value, kv.lease) for kv in delete]).encode()
        )
    else:
        batch.delete(layout.order_journal)
    return batch


async def _layers(client: EtcdClient, name: bytes, recs: Sequence[OrderRecord]) -> list[list[KeyValue]]:
    """One parent's keys as they must be created again: the recorded ones in the recorded order, then
    those created after the copy, by create revision; the leading layers already in order are left."""
    recs = sorted(recs, key=lambda r: r.part)
    below = min(r.written_below for r in recs)
    current = {kv.key: kv for kv in (await client.get_prefix(name)).kvs if parent(kv.key) == name}
    layers: list[list[KeyValue]] = []
    for r in recs:
        for group in r.groups:
            layer = [current[k] for k in group if k in current and current[k].create_revision <= below]
            if layer:
                layers.append(layer)
    later = sorted(
        (kv for kv in current.values() if kv.create_revision > below), key=lambda kv: kv.create_revision
    )
    layers += [list(g) for _, g in groupby(later, key=lambda kv: kv.create_revision)]
    top = 0
    for i, layer in enumerate(layers):
        if min(kv.create_revision for kv in layer) <= top:
            return layers[i:]
        top = max(kv.create_revision for kv in layer)
    return []


def _slices(layers: Sequence[Sequence[KeyValue]]) -> list[list[KeyValue]]:
    """The layers cut to fit one txn each (a layer of many parents in several: they need no order)."""
    return [
        chunk
        for layer in layers
        for chunk in chunked(layer, SLICE_KEYS, SLICE_BYTES, lambda kv: len(kv.key) + len(kv.value))
    ]


async def _live(client: EtcdClient, kvs: Sequence[KeyValue]) -> list[KeyValue]:
    """`kvs` without those whose lease has ended meanwhile (etcd would have deleted them anyway)."""
    out = []
    for kv in kvs:
        if kv.lease:
            try:
                alive = (await client.lease_time_to_live(kv.lease)).ttl > 0
            except LeaseNotFound:
                alive = False
            if not alive:
                log.info(
                    "promotion: %s not created again: its lease %x has ended", encode_key(kv.key), kv.lease
                )
                continue
        out.append(kv)
    return out


async def _put_back_journal(client: EtcdClient, layout: StateLayout) -> None:
    """Keys an interrupted re-creation deleted and did not put back: put them back first."""
    kv = await client.get(layout.order_journal)
    if kv is None:
        return
    journal = decode("order journal", kv.key, kv.value, client, OrderJournal.decode)
    kvs = [KeyValue(k, v, 0, 0, 0, lease) for k, v, lease in journal.kvs]
    log.info("promotion: putting back %d keys an interrupted re-creation in order had deleted", len(kvs))
    batch = TxnBatch()
    for one in await _live(client, kvs):
        batch.put(one.key, one.value, one.lease)
    batch.delete(layout.order_journal)
    await client.txn_batch([], batch)
