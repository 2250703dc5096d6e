"""A site's whole state, read in one range: the snapshot the commands that need several records take
(status, checkpoints), like Patroni's `Cluster`. One range means one revision: a lock and the
checkpoint it guards are seen as they were together, never a mirror half-started between two reads."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..etcd import EtcdClient, KeyValue, prefix_range_end
from .events import Event, read_event
from .layout import StateLayout
from .reader import UnreadableRecord, decode, where
from .records import Checkpoint, FenceRecord, HealthRecord, LockHolder, OrderRecord, encode_key
from .roles import Role, RoleState, read_role_kv


@dataclass(frozen=True)
class StoredCheckpoint:
    """A mirror checkpoint as stored on a destination: its key, value as read (a move compares it by
    value), mod revision, the decoded record and its pair's lock holder (a running mirror), as the
    moves, `checkpoints`, `status` and the one-source guard all see it."""

    key: bytes
    raw: bytes
    mod_revision: int
    checkpoint: Checkpoint | None  # None: read leniently and not readable (`error` says why)
    holder: LockHolder | None = None  # None when the lock is free (or was not read)
    error: str = ""

    @classmethod
    def read(cls, kv: KeyValue, client: EtcdClient, holder: LockHolder | None = None) -> StoredCheckpoint:
        """The checkpoint in `kv` as read from `client`; an unreadable one is UnreadableRecord."""
        ckpt = decode("checkpoint", kv.key, kv.value, client, Checkpoint.decode)
        return cls(kv.key, kv.value, kv.mod_revision, ckpt, holder)

    @property
    def record(self) -> Checkpoint:
        """The checkpoint, for code that read it strictly (`read`), where it is always decoded."""
        if self.checkpoint is None:
            raise UnreadableRecord("checkpoint", self.key, "the destination", self.error)
        return self.checkpoint

    @property
    def id(self) -> str:
        """<source cluster id, 16 hex>/<digest of the prefixes>: the checkpoint key's tail."""
        return b"/".join(self.key.rsplit(b"/", 2)[-2:]).decode()

    @property
    def live(self) -> bool:
        return self.holder is not None

    @property
    def source_cluster_id(self) -> int:
        return int(self.id.split("/")[0], 16)

    def age(self, now: float | None = None) -> float | None:
        if self.checkpoint is None or not self.checkpoint.updated:
            return None
        return max(0.0, (time.time() if now is None else now) - self.checkpoint.updated)

    def pair(self) -> str:
        ck = self.checkpoint
        if ck is None:
            return f"cluster {self.source_cluster_id:x} (unreadable: {self.error})"
        return f"cluster {ck.source_cluster_id:x} {_prefix(ck.source_prefix)} -> {_prefix(ck.dest_prefix)}"

    def line(self, now: float | None = None) -> str:
        ck = self.checkpoint
        age = self.age(now)
        at = f"revision {ck.revision} ({ck.phase})" if ck else "unreadable"
        when = f"updated {age:.0f} s ago" if age is not None else "never updated"
        state = f"live, lock held by {self.holder}" if self.holder else "STALE, lock free"
        return f"{self.id}  {self.pair()}  {at}, {when}, {state}"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        ck = self.checkpoint
        return {
            "id": self.id,
            "key": encode_key(self.key),
            "source_cluster_id": f"{self.source_cluster_id:x}",
            "source_prefix": encode_key(ck.source_prefix) if ck else None,
            "dest_prefix": encode_key(ck.dest_prefix) if ck else None,
            "revision": ck.revision if ck else None,
            "phase": ck.phase if ck else None,
            "updated": ck.updated if ck else None,
            "age_seconds": self.age(now),
            "lock_holder": None if self.holder is None else str(self.holder),
            "state": "live" if self.live else "stale",
            "error": self.error or None,
        }


def _prefix(p: bytes) -> str:
    return repr(encode_key(p)) if p else "(all keys)"


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

    def stored_checkpoints(
        self, source_id: int | None = None, *, strict: bool = True
    ) -> list[StoredCheckpoint]:
        """Every checkpoint (only those from the cluster `source_id` if given), each with its lock's
        holder as they were at one revision; oldest first by key. An unreadable one is
        UnreadableRecord, unless not `strict` (then it is listed with its error: removable by id)."""
        tail = None if source_id is None else self.layout.pair_of(self.layout.checkpoints_of(source_id))
        found = []
        for pair, kv in sorted(self.checkpoint_kvs.items()):
            if pair.count(b"/") != 1 or (tail is not None and not pair.startswith(tail)):
                continue  # not a checkpoint key (<cluster>/<digest>), or another source's
            try:
                ckpt: Checkpoint | None = Checkpoint.decode(kv.value)
                error = ""
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                if strict:
                    raise UnreadableRecord("checkpoint", kv.key, where(self.client), e) from None
                ckpt, error = None, str(e) or type(e).__name__
            found.append(
                StoredCheckpoint(kv.key, kv.value, kv.mod_revision, ckpt, self.lock_holder(pair), error)
            )
        return found

    def health(self, pair: bytes) -> HealthRecord | None:
        kv = self.health_kvs.get(pair)
        return None if kv is None else decode("health", kv.key, kv.value, self.client, HealthRecord.decode)

    def lock_holder(self, pair: bytes) -> LockHolder | None:
        """The mirror holding the pair's lock, None when free."""
        kv = self.lock_kvs.get(pair)
        return None if kv is None else decode("lock", kv.key, kv.value, self.client, LockHolder.decode)

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


async def keys_ordered_as_data(client: EtcdClient, layout: StateLayout, pair: bytes) -> int:
    """How many keys of `pair` the standby holds without the source's create order, that order kept
    as data (records.OrderRecord) for the next promotion to create them again in."""
    start = layout.order_records_of_pair(pair)
    kvs = (await client.range(start, prefix_range_end(start))).kvs
    records = [decode("order", kv.key, kv.value, client, OrderRecord.decode) for kv in kvs]
    return sum(len(g) for r in records for g in r.groups)
