"""Counters and gauges of a running mirror, read by the status line and the Prometheus metrics."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class MirrorStats:
    phase: str = "starting"
    applied_revision: int = 0  # last source revision applied to the destination
    source_revision: int = 0  # newest source revision seen (watch headers, status)
    applied_events: int = 0
    applied_txns: int = 0
    resyncs: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_apply_time: float = 0.0  # time.time() of the last applied txn
    copy_total: int = 0
    copy_done: int = 0
    started: float = field(default_factory=time.time)

    # (source revision, monotonic time the mirror received it) of received, not yet applied revisions.
    _unapplied: deque[tuple[int, float]] = field(default_factory=deque)

    @property
    def lag_revisions(self) -> int:
        return max(0, self.source_revision - self.applied_revision)

    def received(self, revision: int) -> None:
        self.source_revision = max(self.source_revision, revision)
        if not self._unapplied or self._unapplied[-1][0] < revision:
            self._unapplied.append((revision, time.monotonic()))

    def applied(self, revision: int) -> None:
        self.applied_revision = revision
        while self._unapplied and self._unapplied[0][0] <= revision:
            self._unapplied.popleft()

    @property
    def lag_seconds(self) -> float:
        """How long the oldest received but unapplied source revision has waited (0 when caught up)."""
        return time.monotonic() - self._unapplied[0][1] if self._unapplied else 0.0
