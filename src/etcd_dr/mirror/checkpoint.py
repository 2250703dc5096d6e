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
            source_endpoints=str(d.get("source_endpoints", "")),
            seen_revision=int(d.get("seen_revision", 0)),
            seen_time=float(d.get("seen_time", 0.0)),
            source_rate=float(d.get("source_rate", 0.0)),
        )

    def seen(self, revision: int, rate: float) -> Checkpoint:
        """This checkpoint with the source's head as seen now (never below what it covers)."""
        return replace(
            self,
            seen_revision=max(revision, self.revision, self.split_revision),
            seen_time=round(time.time(), 3),
            source_rate=round(rate, 1),
        )


class SourceRate:
    """The source's write rate in revisions/s: the peak over recent windows of `window` seconds (a peak,
    not a mean: a failover extrapolates from it how far the old primary may have gone unseen)."""

    def __init__(self, window: float = 10.0, keep: float = 300.0) -> None:
        self._window = window
        self._keep = keep
        self._start: tuple[float, int] | None = None  # (monotonic time, revision) the window began
        self._peaks: list[tuple[float, float]] = []  # (monotonic end, rate) of finished windows
        self._carried = 0.0  # from an earlier run's checkpoint, until a window of our own is done

    def carry(self, ckpt: Checkpoint) -> None:
        """Start from the rate the last checkpoint recorded, if it is recent."""
        if ckpt.source_rate and time.time() - ckpt.seen_time < self._keep:
            self._carried = ckpt.source_rate

    def observe(self, revision: int) -> float:
        now = time.monotonic()
        if self._start is None or revision < self._start[1]:
            self._start = (now, revision)
        t0, r0 = self._start
        current = (revision - r0) / (now - t0) if now - t0 >= 2.0 else 0.0
        if now - t0 >= self._window:
            self._peaks.append((now, current))
            self._start = (now, revision)
        self._peaks = [(t, r) for t, r in self._peaks if now - t < self._keep]
        if self._peaks:
            self._carried = 0.0
        return max([current, self._carried, *(r for _, r in self._peaks)])


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
