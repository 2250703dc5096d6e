"""The codecs of the records etcd-dr keeps under the state prefix (their keys: state/layout.py).

Every record is JSON; fields a reader does not know are ignored and missing ones take their defaults,
so either side can grow. A decode error is ValueError/KeyError/TypeError: state/reader.py turns it
into UnreadableRecord (exit 2, one line naming the key and the fix).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ..etcd import Permission

_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))

SYNC = "sync"  # a full (diff) copy at one source revision is in progress; restart redoes it
REPLAY = "replay"  # everything up to `revision` is applied; restart watches from revision + 1


def encode_key(key: bytes) -> str:
    """A key for humans and JSON: the string when it is UTF-8, else "base64:" + its base64."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(key).decode("ascii")
    return text if not text.startswith("base64:") else "base64:" + base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    if text.startswith("base64:"):
        return base64.b64decode(text[len("base64:") :])
    return text.encode("utf-8")


@dataclass(frozen=True)
class Checkpoint:
    source_cluster_id: int
    source_prefix: bytes
    dest_prefix: bytes
    revision: int  # last source revision whose events are all applied (the copy revision in SYNC)
    phase: str = REPLAY
    epoch: int = 0
    # A source revision with more ops than one destination txn holds is applied in parts:
    # `split_done` ops of revision `split_revision` are applied (and revision == split_revision - 1).
    split_revision: int = 0
    split_done: int = 0
    updated: float = 0.0
    # The source's wall-clock time of the newest applied heartbeat (0: none): lag in seconds.
    source_time: float = 0.0
    # Where the mirror read the source (its --endpoints): a failover probes them, whatever it is given.
    source_endpoints: str = ""
    # The newest source revision the mirror has seen (response headers: the source's head, applied or
    # not), the mirror's clock then, and the source's recent peak write rate (revisions/s). A failover
    # that cannot read the old primary estimates its last revision from them.
    seen_revision: int = 0
    seen_time: float = 0.0
    source_rate: float = 0.0

    def advanced(
        self, revision: int, *, split_revision: int = 0, split_done: int = 0, source_time: float = 0.0
    ) -> Checkpoint:
        return replace(
            self,
            revision=revision,
            phase=REPLAY,
            split_revision=split_revision,
            split_done=split_done,
            updated=round(time.time(), 3),
            source_time=source_time or self.source_time,
        )

    def encode(self) -> bytes:
        # Written with every replay txn: the fields by hand, not dataclasses.asdict (a deep copy that
        # cost about as much as the rest of a small txn's CPU). Same JSON as asdict gave.
        d: dict[str, Any] = {
            "source_cluster_id": f"{self.source_cluster_id:x}",
            "source_prefix": encode_key(self.source_prefix),
            "dest_prefix": encode_key(self.dest_prefix),
            "revision": self.revision,
            "phase": self.phase,
            "epoch": self.epoch,
            "split_revision": self.split_revision,
            "split_done": self.split_done,
            "updated": self.updated,
            "source_time": self.source_time,
            "source_endpoints": self.source_endpoints,
            "seen_revision": self.seen_revision,
            "seen_time": self.seen_time,
            "source_rate": self.source_rate,
        }
        return _JSON.encode(d).encode()

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        d = json.loads(data)
        return cls(
            source_cluster_id=int(d["source_cluster_id"], 16),
            source_prefix=decode_key(d["source_prefix"]),
            dest_prefix=decode_key(d["dest_prefix"]),
            revision=int(d["revision"]),
            phase=str(d.get("phase", REPLAY)),
            epoch=int(d.get("epoch", 0)),
            split_revision=int(d.get("split_revision", 0)),
            split_done=int(d.get("split_done", 0)),
            updated=float(d.get("updated", 0.0)),
            source_time=float(d.get("source_time", 0.0)),
            source_endpoints=str(d.get("source_endpoints", "")),
            seen_revision=int(d.get("seen_revision", 0)),
            seen_time=float(d.get("seen_time", 0.0)),
            source_rate=float(d.get("source_rate", 0.0)),
        )

    def seen(self, revision: int, rate: float, **more: Any) -> Checkpoint:
        """This checkpoint with the source's head as seen now (never below what it covers), and any
        `more` fields changed in the same copy (the replay builds one per txn)."""
        return replace(
            self,
            seen_revision=max(revision, self.revision, self.split_revision),
            seen_time=round(time.time(), 3),
            source_rate=round(rate, 1),
            **more,
        )


@dataclass(frozen=True)
class LockHolder:
    """The value of a mirror lock (mirror/lock.py): the process allowed to write a pair, as
    HOST:PID:TOKEN. Anything else was not written by a mirror: like every record, it is unreadable
    (state/reader.py, exit 2), since a mirror would otherwise wait forever on a lock nobody holds."""

    text: str

    @classmethod
    def mine(cls) -> LockHolder:
        """This process, with a token telling apart two holdings by one process."""
        return cls(f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    def encode(self) -> bytes:
        return self.text.encode()

    @classmethod
    def decode(cls, data: bytes) -> LockHolder:
        text = data.decode()  # not UTF-8: UnicodeDecodeError, a ValueError
        host, _, rest = text.partition(":")
        pid, _, token = rest.partition(":")
        if not host or not pid.isdigit() or not token:
            raise ValueError(f"not HOST:PID:TOKEN: {text[:40]!r}")
        return cls(text)

    def __str__(self) -> str:
        return self.text

    def describe(self) -> str:
        """Where the holder runs and how to stop it (the text alone when it is not HOST:PID:TOKEN)."""
        host, sep, rest = self.text.partition(":")
        pid = rest.partition(":")[0]
        if not sep or not pid.isdigit():
            return self.text
        how = f"stop it there with `kill {pid}` or its service"
        return f"{self.text} (etcd-dr process {pid} on host {host}: {how})"


@dataclass(frozen=True)
class VerifyResult:
    at: float  # time.time() the verify finished
    seconds: float  # how long it took
    equal: bool
    keys: int
    differences: int  # missing + extra + different
    source_revision: int
    dest_revision: int


@dataclass(frozen=True)
class HealthRecord:
    updated: float  # time.time() of this write
    # kind -> one line (MirrorStats.problems): the standby is known to lack or differ while non-empty.
    problems: dict[str, str] = field(default_factory=dict)
    verify: VerifyResult | None = None  # the last periodic verify's
    foreign_writes: int = 0  # writes into the mirrored range on the destination not made by the mirror
    last_foreign_key: str = ""  # encode_key form
    last_foreign_revision: int = 0  # destination revision of the last one

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> HealthRecord:
        d: dict[str, Any] = json.loads(data)
        v = d.get("verify")
        return cls(
            updated=float(d["updated"]),
            problems={str(k): str(x) for k, x in dict(d.get("problems") or {}).items()},
            verify=None
            if not v
            else VerifyResult(
                at=float(v["at"]),
                seconds=float(v["seconds"]),
                equal=bool(v["equal"]),
                keys=int(v["keys"]),
                differences=int(v["differences"]),
                source_revision=int(v["source_revision"]),
                dest_revision=int(v["dest_revision"]),
            ),
            foreign_writes=int(d.get("foreign_writes", 0)),
            last_foreign_key=str(d.get("last_foreign_key", "")),
            last_foreign_revision=int(d.get("last_foreign_revision", 0)),
        )


FenceMode = Literal["auth", "hook", "none"]
MODES: tuple[str, ...] = ("auth", "hook", "none")

FENCING = "fencing"  # the record is written, the fence is not (yet) complete
FENCED = "fenced"
UNFENCING = "unfencing"  # the fence is being lifted


@dataclass(frozen=True)
class FenceRecord:
    mode: str  # "auth", "hook" or "none"
    since: float  # unix time the fence was begun
    by: str  # who fenced: etcd-dr's user, host and pid
    # Mode auth: each role's permissions as they were before the fence (their original perm types),
    # every one of which lost its write part.
    revoked: Mapping[str, tuple[Permission, ...]]
    epoch: int  # the caller's epoch (of the role record) when fenced
    state: str = FENCED
    # Not stored: the record's mod revision as read or written (0: not stored). Once the state is
    # "fenced", no application write lands after this revision.
    mod_revision: int = field(default=0, compare=False)

    @property
    def permission_count(self) -> int:
        return sum(len(perms) for perms in self.revoked.values())

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.since))
        text = f"{self.mode}, {self.state} since {when} UTC by {self.by}, epoch {self.epoch}"
        if self.mode == "auth":
            text += f", {self.permission_count} write permissions of {len(self.revoked)} roles"
        return text

    def encode(self) -> bytes:
        d: dict[str, Any] = {
            "mode": self.mode,
            "since": self.since,
            "by": self.by,
            "revoked": {
                role: [
                    {"perm_type": p.perm_type, "key": encode_key(p.key), "range_end": encode_key(p.range_end)}
                    for p in perms
                ]
                for role, perms in self.revoked.items()
            },
            "epoch": self.epoch,
            "state": self.state,
        }
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, mod_revision: int = 0) -> FenceRecord:
        d = json.loads(data)
        mode = str(d["mode"])
        if mode not in MODES:
            raise ValueError(f"unknown fence mode {mode!r}")
        state = str(d.get("state", FENCED))
        if state not in (FENCING, FENCED, UNFENCING):
            raise ValueError(f"unknown fence state {state!r}")
        revoked: dict[str, tuple[Permission, ...]] = {}
        for role, perms in dict(d.get("revoked", {})).items():
            revoked[str(role)] = tuple(
                Permission(str(p["perm_type"]), decode_key(str(p["key"])), decode_key(str(p["range_end"])))
                for p in perms
            )
        for role, perms in revoked.items():
            for p in perms:
                if p.perm_type not in ("write", "readwrite"):
                    raise ValueError(f"role {role}: a {p.perm_type!r} permission cannot have been revoked")
        return cls(
            mode=mode,
            since=float(d["since"]),
            by=str(d.get("by", "")),
            revoked=revoked,
            epoch=int(d.get("epoch", 0)),
            state=state,
            mod_revision=mod_revision,
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class OrderRecord:
    """Part of the source's create order of one parent's ordered keys that the copy wrote without it
    (too many layers for the copy's budget): `groups`, the destination keys in ascending source create
    revision, keys of one source revision together. Every one of them was created on the destination
    at or below `written_below` (a key created later, by the replay, is already after them)."""

    parent: bytes
    part: int
    written_below: int
    groups: list[list[bytes]]

    def encode(self) -> bytes:
        doc = {
            "parent": _b64(self.parent),
            "part": self.part,
            "written_below": self.written_below,
            "groups": [[_b64(k) for k in g] for g in self.groups],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> OrderRecord:
        doc = json.loads(data)
        return cls(
            parent=base64.b64decode(doc["parent"], validate=True),
            part=int(doc["part"]),
            written_below=int(doc["written_below"]),
            groups=[[base64.b64decode(k, validate=True) for k in g] for g in doc["groups"]],
        )


@dataclass(frozen=True)
class OrderJournal:
    """Key-values a promotion deleted to create them again in order and has not yet put back: a rerun
    after a crash puts them back first. Each: (key, value, lease)."""

    kvs: list[tuple[bytes, bytes, int]]

    def encode(self) -> bytes:
        return json.dumps([[_b64(k), _b64(v), lease] for k, v, lease in self.kvs]).encode()

    @classmethod
    def decode(cls, data: bytes) -> OrderJournal:
        return cls(
            [(base64.b64decode(k), base64.b64decode(v), int(lease)) for k, v, lease in json.loads(data)]
        )
