"""Writing to the destination under the checkpoint: what the copy (sync.py) and the replay (replay.py)
share. Every destination txn of the mirror compares the checkpoint's exact stored bytes and the guards
(the mirror's lock, the destination's role record), is split to fit etcd's --max-txn-ops and request
size, attaches keys to the leases the mirror owns there, and is counted in the stats."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..etcd import Compare, CompareResult, EtcdClient
from ..state.layout import StateLayout
from .keys import KeyMapper
from .leases import LeaseMirror
from .order import OrderRule
from .stats import MirrorStats


@dataclass(frozen=True)
class DestWriter:
    dest: EtcdClient
    mapper: KeyMapper
    checkpoint_key: bytes  # state/layout.py: the pair's checkpoint, written in the same txns as the data
    guards: tuple[Compare, ...]  # compared by every txn besides the checkpoint: lock, role
    max_txn_ops: int
    max_txn_bytes: int
    stats: MirrorStats
    leases: LeaseMirror | None = None  # None: leases not mirrored (source and destination one cluster)
    order: OrderRule = field(default_factory=OrderRule)  # which keys keep the source's create order
    # Where the copy keeps the order of siblings it cannot afford to write in layers within
    # `order_time` seconds (None: every order in layers, whatever the time).
    order_layout: StateLayout | None = None
    pair: bytes = b""  # the pair's id, for its order records
    order_time: float = 60.0

    def guard(self, checkpoint_raw: bytes) -> list[Compare]:
        """The compares of a txn written while the checkpoint's stored bytes are `checkpoint_raw`."""
        return [Compare.value_(self.checkpoint_key, CompareResult.EQUAL, checkpoint_raw), *self.guards]
