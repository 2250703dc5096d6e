"""A short history of what etcd-dr did to a cluster (fenced, promoted, demoted, re-synced, ...), kept
under the cluster's state prefix so `etcd-dr status` can show the last moves whoever made them."""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from dataclasses import fields as dc_fields
from typing import Any

from ..etcd import EtcdClient, EtcdError, KeyValue, SortOrder, SortTarget, prefix_range_end
from .layout import StateLayout
from .reader import decode

log = logging.getLogger("etcd_dr.failover")

KEEP = 200  # events kept per cluster; older ones are removed when a new one is written

# A mirror from another source cluster replaced the one that wrote into this range (`--take-over`);
# its fields name both sources and the replaced checkpoint (mirror/sourceguard.py).
TAKE_OVER = "take-over"


# The moves `etcd-dr history` lists: each one's event carries a MoveRecord (who, from, to, outcome).
MOVES = ("switchover", "failover", "failback", TAKE_OVER, "drill")


@dataclass(frozen=True)
class MoveRecord:
    """What the record of a move says beyond its event: who ran it where, from which site to which,
    the RPO it had, how long it took, its result, the operator's reason and whether --force was given."""

    source: str  # where the service was (endpoints, cluster id)
    target: str  # where it went (for a drill: the standby rehearsed)
    result: str  # "ok", or "failed: why"
    user: str = ""
    host: str = ""
    reason: str = ""
    forced: bool = False
    rpo_revision: int | None = None
    rpo_seconds: float | None = None
    duration: float | None = None  # seconds, the whole move
    id: str = ""  # one move recorded on both sites has one id (history lists it once)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dc_fields(self)}

    @classmethod
    def decode(cls, d: Any) -> MoveRecord | None:
        """From an event's `move` field; None when it is not one (history is shown as far as it can be
        read)."""
        if not isinstance(d, dict):
            return None
        known = {f.name for f in dc_fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError:
            return None


def who() -> tuple[str, str]:
    """(user, host) of this process, for a move's record."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's uid)
        user = f"uid-{os.getuid()}"
    return user, socket.gethostname()


@dataclass(frozen=True)
class Event:
    time: float
    kind: str
    message: str
    fields: dict[str, Any]
    move: MoveRecord | None = None  # the record of a move (MOVES), else None

    @classmethod
    def decode(cls, data: bytes) -> Event:
        d = json.loads(data)
        move = MoveRecord.decode(d.pop("move", None))
        return cls(float(d.pop("time")), str(d.pop("kind")), str(d.pop("message")), dict(d), move)

    def line(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.time))
        return f"{stamp} UTC {self.kind}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        out = {"time": self.time, "kind": self.kind, "message": self.message, **self.fields}
        if self.move is not None:
            out["move"] = self.move.to_json()
        return out


async def record_event(
    client: EtcdClient,
    layout: StateLayout,
    kind: str,
    message: str,
    *,
    move: MoveRecord | None = None,
    **fields: Any,
) -> None:
    """Best effort: an event that cannot be written is logged, never a reason to stop a move halfway."""
    t = time.time()
    key = layout.event(time.time_ns(), kind)
    if move is not None:
        fields["move"] = move.to_json()
    value = json.dumps({"time": round(t, 3), "kind": kind, "message": message, **fields}, sort_keys=True)
    try:
        await client.put(key, value.encode())
        await _trim(client, layout)
    except EtcdError as e:
        log.warning("could not record the event %r on %s: %s", kind, client.endpoint, e)


async def _trim(client: EtcdClient, layout: StateLayout) -> None:
    prefix = layout.events
    end = prefix_range_end(prefix)
    count = (await client.range(prefix, end, count_only=True)).count
    if count <= KEEP:
        return
    oldest = await client.range(prefix, end, keys_only=True, limit=count - KEEP)
    if oldest.kvs:
        await client.delete_range(prefix, oldest.kvs[-1].key + b"\0")


async def recent_events(client: EtcdClient, layout: StateLayout, limit: int = 10) -> list[Event]:
    """The newest `limit` events, oldest first (an unreadable one is UnreadableRecord, exit 2)."""
    prefix = layout.events
    result = await client.range(
        prefix,
        prefix_range_end(prefix),
        limit=limit,
        sort_order=SortOrder.DESCEND,
        sort_target=SortTarget.KEY,
    )
    return [read_event(kv, client) for kv in reversed(result.kvs)]


def read_event(kv: KeyValue, client: EtcdClient) -> Event:
    """One event record as read from `client`; a damaged one is UnreadableRecord (state/reader.py)
    like every other record: a history shown with holes would hide the move an operator looks for."""
    return decode("event", kv.key, kv.value, client, Event.decode)
