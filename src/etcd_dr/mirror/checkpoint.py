"""The mirror's checkpoint behaviour: the source's write rate it records (the Checkpoint codec and key
live in state/).

Every destination txn of the replay writes the checkpoint in the same txn as the data, guarded by a
compare on the previous checkpoint's exact value, so that a txn is applied at most once and in order,
and a restart resumes exactly where the last applied txn left off.
"""

from __future__ import annotations

import time

from ..state.records import Checkpoint


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
