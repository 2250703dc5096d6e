"""Counters and gauges of a running mirror, read by the status line and the Prometheus metrics."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from ..state.records import VerifyResult as VerifyRecord

# Upper bounds (seconds) of the destination txn duration histogram; the last is +Inf.
TXN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


@dataclass
class MirrorStats:
    phase: str = "starting"
    source_read: str = "live"  # how the replay reads the source: "live", or "windows" while it is busy
    applied_revision: int = 0  # last source revision applied to the destination
    source_revision: int = 0  # newest source revision seen (watch headers, status)
    applied_events: int = 0
    applied_txns: int = 0
    resyncs: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_apply_time: float = 0.0  # time.time() of the last applied txn
    source_compact_revision: int = 0
    leases: int = 0  # destination leases the mirror keeps alive
    verify_mismatch: int | None = None  # differences found by the last periodic verify
    failing_since: float | None = None  # monotonic time of the first error since the last progress
    txn_buckets: list[int] = field(default_factory=lambda: [0] * len(TXN_BUCKETS))
    txn_seconds_sum: float = 0.0
    # applied_txns when a NOSPACE alarm last refused a write (None: never); the alarm counts as current
    # until a txn is applied again.
    nospace_txns: int | None = None
    copy_total: int = 0
    copy_done: int = 0
    started: float = field(default_factory=time.time)
    # What the mirror knows the standby lacks or gets wrong right now, by kind (lease_lost,
    # verify_differs, foreign_write, ...) -> one line saying what and since when. /healthz, the metrics,
    # the health record (status) and the log report them; the code that saw a problem clears it once fixed.
    problems: dict[str, str] = field(default_factory=dict)
    problems_changed: int = 0  # bumped when a kind appears or clears (the health record is then written)
    # Writes into the mirrored range on the destination that the mirror did not make (mirror/foreign.py).
    foreign_writes: int = 0
    last_foreign_key: str = ""  # encode_key form
    last_foreign_revision: int = 0
    last_verify: VerifyRecord | None = None  # the last periodic verify's result
    verify_runs: int = 0
    # The last failover readiness check (standby.py, every --check-every): item -> ok / warn / fail.
    readiness: dict[str, str] = field(default_factory=dict)
    readiness_at: float = 0.0  # time.time() it finished

    # (source revision, monotonic time the mirror received it) of received, not yet applied revisions.
    _unapplied: deque[tuple[int, float]] = field(default_factory=deque)

    def flag(self, kind: str, detail: str) -> None:
        if kind not in self.problems:
            self.problems_changed += 1
        self.problems[kind] = detail

    def clear(self, kind: str) -> None:
        if self.problems.pop(kind, None) is not None:
            self.problems_changed += 1

    def observe_txn(self, seconds: float) -> None:
        for i, bound in enumerate(TXN_BUCKETS):
            if seconds <= bound:
                self.txn_buckets[i] += 1
        self.txn_seconds_sum += seconds

    @property
    def nospace(self) -> bool:
        """Whether a NOSPACE alarm refuses the mirror's writes (no txn applied since it refused one)."""
        return self.nospace_txns is not None and self.applied_txns == self.nospace_txns

    @property
    def compaction_headroom(self) -> int:
        return self.applied_revision + 1 - self.source_compact_revision

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
