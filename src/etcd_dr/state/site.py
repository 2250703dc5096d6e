"""A site's whole state, read in one range: the snapshot the commands that need several records take
(status, checkpoints), like Patroni's `Cluster`. One range means one revision: a lock and the
checkpoint it guards are seen as they were together, never a mirror half-started between two reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..etcd import EtcdClient, KeyValue
from .events import Event, read_event
from .layout import StateLayout
from .reader import decode
from .records import Checkpoint, FenceRecord, HealthRecord, LockHolder
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
    event_kvs: tuple[KeyValue, ...]  # oldest first
    heartbeat_kvs: Mapping[bytes, KeyValue]  # on a source: destination cluster id (hex) -> heartbeat

    @classmethod
    async def read(cls, client: EtcdClient, layout: StateLayout) -> SiteState:
        result = await client.range(*layout.range)
        checkpoints: dict[bytes, KeyValue] = {}
        locks: dict[bytes, KeyValue] = {}
        health: dict[bytes, KeyValue] = {}
        leases: dict[bytes, int] = {}
        role = fence = None
        events = []
        heartbeats: dict[bytes, KeyValue] = {}
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
                events.append(kv)
            elif k.startswith(layout.heartbeats):
                heartbeats[k[len(layout.heartbeats) :]] = kv
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
            heartbeats,
        )

    def checkpoint(self, pair: bytes) -> Checkpoint | None:
        kv = self.checkpoint_kvs.get(pair)
        return None if kv is None else decode("checkpoint", kv.key, kv.value, self.client, Checkpoint.decode)

    def health(self, pair: bytes) -> HealthRecord | None:
        kv = self.health_kvs.get(pair)
        return None if kv is None else decode("health", kv.key, kv.value, self.client, HealthRecord.decode)

    def lock_holder(self, pair: bytes) -> LockHolder | None:
        """The mirror holding the pair's lock, None when free."""
        kv = self.lock_kvs.get(pair)
        return None if kv is None else LockHolder.decode(kv.value)

    def heartbeat(self, dest_cluster_id: int) -> float | None:
        """On a source: the time of the newest heartbeat of the mirror into `dest_cluster_id`."""
        kv = self.heartbeat_kvs.get(self.layout.heartbeat(dest_cluster_id)[len(self.layout.heartbeats) :])
        return None if kv is None else decode("heartbeat", kv.key, kv.value, self.client, float)

    def recent_events(self, limit: int) -> list[Event]:
        """The newest `limit` events, oldest first (an unreadable one is UnreadableRecord)."""
        return [read_event(kv, self.client) for kv in self.event_kvs[-limit:]] if limit > 0 else []

    @property
    def events(self) -> list[Event]:
        return self.recent_events(len(self.event_kvs))

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
