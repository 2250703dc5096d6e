"""The mirror's checkpoint: where it stands, kept in the destination next to the data it covers.

Every destination txn of the replay writes the checkpoint in the same txn as the data, guarded by a
compare on the previous checkpoint's exact value, so that a txn is applied at most once and in order,
and a restart resumes exactly where the last applied txn left off.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

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
        d: dict[str, Any] = asdict(self)
        d["source_cluster_id"] = f"{self.source_cluster_id:x}"
        d["source_prefix"] = encode_key(self.source_prefix)
        d["dest_prefix"] = encode_key(self.dest_prefix)
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

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
        )


def lock_key(state_prefix: bytes, source_cluster_id: int, source_prefix: bytes, dest_prefix: bytes) -> bytes:
    """The key whose holder is the one mirror allowed to write (one per checkpoint)."""
    ckpt = checkpoint_key(state_prefix, source_cluster_id, source_prefix, dest_prefix)
    return state_prefix + b"lock/" + ckpt[len(state_prefix) + len(b"mirror/") :]


def heartbeat_key(state_prefix: bytes, dest_cluster_id: int) -> bytes:
    """Where a mirror into the given destination writes its heartbeat on the source."""
    return state_prefix + f"heartbeat/{dest_cluster_id:016x}".encode()


def checkpoint_key(
    state_prefix: bytes, source_cluster_id: int, source_prefix: bytes, dest_prefix: bytes
) -> bytes:
    """One checkpoint per (source cluster, source prefix, destination prefix)."""
    digest = hashlib.sha256(source_prefix + b"\0" + dest_prefix).hexdigest()[:16]
    return state_prefix + f"mirror/{source_cluster_id:016x}/{digest}".encode()
