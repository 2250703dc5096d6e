"""Reading state records: one rule for a record that cannot be decoded, whatever command reads it.

An unreadable record is `UnreadableRecord` (exit 2) with one line naming the key (encode_key form), the
cluster's endpoints and what to do about that record. Readers never guess over a damaged record: a
checkpoint or role read wrong could copy over, or promote, the wrong cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import Refused
from ..etcd import EtcdClient
from .records import encode_key

T = TypeVar("T")

# Per record: what it is, in words, and what the operator does about an unreadable one ({cmd} is the
# etcdctl command that removes it).
_RECORDS: dict[str, tuple[str, str]] = {
    "checkpoint": ("mirror checkpoint", "remove it with `{cmd}` to start that pair from a fresh copy"),
    "health": ("mirror health record", "remove it with `{cmd}`; the pair's mirror writes it again"),
    "role": (
        "role record",
        "remove it with `{cmd}` if no move is under way (the next mirror or move writes it again)",
    ),
    "fence": (
        "fence record",
        "give the application roles their write permissions back by hand, then remove it with `{cmd}`",
    ),
    "heartbeat": ("mirror heartbeat", "remove it with `{cmd}`; the mirror writes it again"),
    "order": (
        "order record (the source's create order of keys written tied)",
        "remove it with `{cmd}` (those keys then keep the standby's order) or copy again",
    ),
    "order journal": (
        "order journal (keys a promotion deleted to create them again)",
        "put its keys back by hand from its JSON, then remove it with `{cmd}`",
    ),
    "event": ("event record", "remove it with `{cmd}`; it is only a note in the history of moves"),
    "lock": (
        "mirror lock",
        "remove it with `{cmd}` once no mirror of that pair runs; a mirror takes it again",
    ),
    "lease registry": (
        "lease registry entry",
        "remove it with `{cmd}`; the pair's mirror registers its leases again",
    ),
}


class UnreadableRecord(Refused):
    """A record under the state prefix could not be decoded (exit 2: the operator must look)."""

    def __init__(self, record: str, key: bytes, where: str, error: Exception | str) -> None:
        what, fix = _RECORDS.get(record, (record, "remove it with `{cmd}`"))
        name = encode_key(key)
        fix = fix.format(cmd=f"etcdctl del {name!r}" if " " in name else f"etcdctl del {name}")
        super().__init__(f"the {what} {name} on {where} is not readable ({_reason(error)}); {fix}")
        self.record = record
        self.key = key


def _reason(error: Exception | str) -> str:
    text = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text.splitlines()[0][:200] if text else "empty"


def where(client: EtcdClient) -> str:
    """The cluster a client talks to, as its endpoints (what the operator passes to etcdctl)."""
    return ",".join(str(e) for e in client.config.endpoints)


def decode(record: str, key: bytes, value: bytes, client: EtcdClient, decoder: Callable[[bytes], T]) -> T:
    """`decoder(value)`, or UnreadableRecord naming `key` on `client`'s cluster."""
    try:
        return decoder(value)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UnreadableRecord(record, key, where(client), e) from None
