"""Where every record etcd-dr keeps under the state prefix lives: the one place that builds those keys.

Like Patroni's `dcs/__init__.py`, one object built from the prefix with one method per record; no other
module concatenates with the state prefix or spells a record's path segment (tests/test_state_layout.py
checks it). A mirror pair (source cluster, source prefix, destination prefix) is named by its `pair`
id, `{source cluster id:016x}/{sha256(source prefix NUL dest prefix)[:16]}`, under which it keeps a
checkpoint, a lock, a health record and a lease registry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..etcd import prefix_range_end

# The records' path segments (the key is the state prefix + one of these [+ the pair / more]).
_CHECKPOINTS = b"mirror/"
_LOCKS = b"lock/"
_HEALTH = b"health/"
_LEASES = b"leases/"
_HEARTBEATS = b"heartbeat/"
_EVENTS = b"events/"
_ROLE = b"role"
_FENCE = b"fence"
_BUMP = b"bump"
_ORDER = b"order/"
_ORDER_JOURNAL = b"order-journal"


def pair_id(source_cluster_id: int, source_prefix: bytes, dest_prefix: bytes) -> bytes:
    """The name of one mirror pair inside the per-pair records."""
    digest = hashlib.sha256(source_prefix + b"\0" + dest_prefix).hexdigest()[:16]
    return f"{source_cluster_id:016x}/{digest}".encode()


def _source_part(source_cluster_id: int) -> bytes:
    return f"{source_cluster_id:016x}/".encode()


@dataclass(frozen=True)
class StateLayout:
    """The keys of every state record under `prefix` (the cluster's --state-prefix)."""

    prefix: bytes

    # ---- the whole state, and the per-pair record families ---------------------------------------
    @property
    def range(self) -> tuple[bytes, bytes]:
        """Every state record of the cluster, for a one-range snapshot (SiteState)."""
        return self.prefix, prefix_range_end(self.prefix)

    @property
    def checkpoints(self) -> bytes:
        """Prefix of every mirror checkpoint on this cluster (as a destination)."""
        return self.prefix + _CHECKPOINTS

    @property
    def locks(self) -> bytes:
        return self.prefix + _LOCKS

    @property
    def health_records(self) -> bytes:
        return self.prefix + _HEALTH

    def checkpoints_of(self, source_cluster_id: int) -> bytes:
        """Prefix of the checkpoints of mirrors from one source cluster."""
        return self.checkpoints + _source_part(source_cluster_id)

    def locks_of(self, source_cluster_id: int) -> bytes:
        return self.locks + _source_part(source_cluster_id)

    # ---- one mirror pair ---------------------------------------------------------------------------
    def checkpoint(self, source_cluster_id: int, source_prefix: bytes, dest_prefix: bytes) -> bytes:
        """The checkpoint of one pair (state/records.py Checkpoint), on the destination."""
        return self.checkpoints + pair_id(source_cluster_id, source_prefix, dest_prefix)

    def lock(self, source_cluster_id: int, source_prefix: bytes, dest_prefix: bytes) -> bytes:
        """The key whose holder is the one mirror allowed to write the pair (mirror/lock.py)."""
        return self.locks + pair_id(source_cluster_id, source_prefix, dest_prefix)

    def health(self, source_cluster_id: int, source_prefix: bytes, dest_prefix: bytes) -> bytes:
        """The pair's health record (state/records.py HealthRecord), beside its checkpoint."""
        return self.health_records + pair_id(source_cluster_id, source_prefix, dest_prefix)

    def lease_registry(self, source_cluster_id: int, source_prefix: bytes, dest_prefix: bytes) -> bytes:
        """Prefix of the pair's lease registry: one key per destination lease (hex id -> TTL)."""
        return self.prefix + _LEASES + pair_id(source_cluster_id, source_prefix, dest_prefix) + b"/"

    # The same records named by the pair id (as found in a checkpoint's key: `pair_of`).
    def pair_of(self, checkpoint_key: bytes) -> bytes:
        """The pair id of a checkpoint key (the inverse of `checkpoint`'s last part)."""
        return checkpoint_key[len(self.checkpoints) :]

    def pair_of_lock(self, lock_key: bytes) -> bytes:
        return lock_key[len(self.locks) :]

    def checkpoint_of_pair(self, pair: bytes) -> bytes:
        return self.checkpoints + pair

    def lock_of_pair(self, pair: bytes) -> bytes:
        return self.locks + pair

    def health_of_pair(self, pair: bytes) -> bytes:
        return self.health_records + pair

    def lease_registry_of_pair(self, pair: bytes) -> bytes:
        return self.prefix + _LEASES + pair + b"/"

    # The source's create order of ordered siblings the copy wrote tied (mirror/order.py), kept as
    # data until a promotion re-creates them in that order (failover/reorder.py).
    @property
    def order_records(self) -> bytes:
        """Prefix of every pair's order records on this cluster."""
        return self.prefix + _ORDER

    def order_records_of_pair(self, pair: bytes) -> bytes:
        return self.order_records + pair + b"/"

    def order_record(self, pair: bytes, parent: bytes, part: int) -> bytes:
        """Part `part` of one parent's order (records.OrderRecord)."""
        digest = hashlib.sha256(parent).hexdigest()[:16]
        return self.order_records_of_pair(pair) + f"{digest}/{part:06d}".encode()

    @property
    def order_journal(self) -> bytes:
        """The keys a promotion's re-creation has deleted and not yet put back (records.OrderJournal)."""
        return self.prefix + _ORDER_JOURNAL

    # ---- one per cluster -----------------------------------------------------------------------------
    @property
    def heartbeats(self) -> bytes:
        """Prefix of the heartbeats the mirrors from this cluster (as a source) write."""
        return self.prefix + _HEARTBEATS

    def heartbeat(self, dest_cluster_id: int) -> bytes:
        """On the source: where a mirror into `dest_cluster_id` writes its heartbeat (lag in seconds)."""
        return self.heartbeats + f"{dest_cluster_id:016x}".encode()

    @property
    def role(self) -> bytes:
        """The cluster's role record (state/roles.py Role): primary or standby, with its epoch."""
        return self.prefix + _ROLE

    @property
    def fence(self) -> bytes:
        """The fence record (state/records.py FenceRecord), in the fenced cluster."""
        return self.prefix + _FENCE

    @property
    def revision_raise(self) -> bytes:
        """The key a revision raise writes over and over (failover/revision.py)."""
        return self.prefix + _BUMP

    @property
    def events(self) -> bytes:
        """Prefix of the event history (state/events.py): moves, take-overs, checkpoint removals."""
        return self.prefix + _EVENTS

    def event(self, time_ns: int, kind: str) -> bytes:
        return self.events + f"{time_ns:020d}-{kind}".encode()
