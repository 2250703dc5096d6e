"""Counters and gauges of a running mirror, read by the status line and the Prometheus metrics."""

from __future__ import annotations

import time
from collections import Counter
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

    @property
    def lag_revisions(self) -> int:
        return max(0, self.source_revision - self.applied_revision)
