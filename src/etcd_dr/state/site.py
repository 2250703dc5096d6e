"""A site's whole state, read in one range: the snapshot the commands that need several records take
(status, checkpoints), like Patroni's `Cluster`. One range means one revision: a lock and the
checkpoint it guards are seen as they were together, never a mirror half-started between two reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..etcd import EtcdClient, KeyValue, prefix_range_end
from .events import Event, parse_event
from .layout import StateLayout
from .reader import decode
from .records import Checkpoint, FenceRecord, HealthRecord, OrderRecord
from .roles import Role, RoleState, read_role_kv


@dataclass(frozen=True)
class SiteState:
    """The records under one cluster's state prefix at `revision`, kept raw; the accessors decode
    them through the reader (an unreadable one is UnreadableRecord, exit 2)."""

    client: EtcdClient
    layout: StateLayout
    revision: int
    # pair id -> the record's key-value, per family (state/layout.py names the pair).
    checkpoint_kvs: Mapping[bytes, KeyValue]
    lock_kvs: Mapping[bytes, KeyValue]
    health_kvs: Mapping[bytes, KeyValue]
    lease_counts: Mapping[bytes, int]  # pair id -> leases in its registry
    role_kv: KeyValue | None
    fence_kv: KeyValue | None
    events: tuple[Event, ...]  # oldest first; undecodable ones skipped (history, not state)

    @classmethod
    async def read(cls, client: EtcdClient, state_prefix: bytes) -> SiteState:
        layout = StateLayout(state_prefix)
        result = await client.range(*layout.range)
        checkpoints: dict[bytes, KeyValue] = {}
        locks: dict[bytes, KeyValue] = {}
        health: dict[bytes, KeyValue] = {}
        leases: dict[bytes, int] = {}
        role = fence = None
        events = []
        registries = layout.lease_registry_of_pair(b"")
        for kv in result.kvs:
            k = kv.key
            if k.startswith(layout.checkpoints):
                checkpoints[k[len(layout.checkpoints) :]] = kv
            elif k.startswith(layout.locks):
                locks[k[len(layout.locks) :]] = kv
            elif k.startswith(layout.health_records):
                health[k[len(layout.health_records) :]] = kv
            elif k.startswith(registries[:-1]):
                pair = k[len(registries) - 1 :].rsplit(b"/", 1)[0]
                leases[pair] = leases.get(pair, 0) + 1
            elif k == layout.role:
                role = kv
            elif k == layout.fence:
                fence = kv
            elif k.startswith(layout.events):
                event = parse_event(kv.value)
                if event is not None:
                    events.append(event)
        return cls(
            client,
            layout,
            result.header.revision,
            checkpoints,
            locks,
            health,
            leases,
            role,
            fence,
            tuple(events),
        )

    def checkpoint(self, pair: bytes) -> Checkpoint | None:
        kv = self.checkpoint_kvs.get(pair)
        return None if kv is None else decode("checkpoint", kv.key, kv.value, self.client, Checkpoint.decode)

    def health(self, pair: bytes) -> HealthRecord | None:
        kv = self.health_kvs.get(pair)
        return None if kv is None else decode("health", kv.key, kv.value, self.client, HealthRecord.decode)

    def lock_holder(self, pair: bytes) -> str | None:
        """HOST:PID:TOKEN of the mirror holding the pair's lock (opaque text), None when free."""
        kv = self.lock_kvs.get(pair)
        return None if kv is None else kv.value.decode(errors="replace")

    @property
    def role_state(self) -> RoleState:
        return read_role_kv(self.role_kv, self.client)

    @property
    def role(self) -> Role | None:
        return self.role_state.role

    @property
    def fence(self) -> FenceRecord | None:
        kv = self.fence_kv
        if kv is None:
            return None
        return decode(
            "fence", kv.key, kv.value, self.client, lambda v: FenceRecord.decode(v, kv.mod_revision)
        )


async def keys_ordered_as_data(client: EtcdClient, layout: StateLayout, pair: bytes) -> int:
    """How many keys of `pair` the standby holds without the source's create order, that order kept
    as data (records.OrderRecord) for the next promotion to create them again in."""
    start = layout.order_records_of_pair(pair)
    kvs = (await client.range(start, prefix_range_end(start))).kvs
    records = [decode("order", kv.key, kv.value, client, OrderRecord.decode) for kv in kvs]
    return sum(len(g) for r in records for g in r.groups)
