"""The replay's read of the source: every revision from a start on, in order, each exactly once, through
one live watch while the source is quiet and through "trailing" watches while it is busy.

Why two ways: etcd sends a watcher that is in step with it (a synced watcher) one response per revision
as each is committed, and reading one response through grpc's Python API costs about 100 us of CPU,
half of the replay's whole cost per revision. A watcher that starts behind the head (an unsynced one) is
fed by etcd's background loop, which passes every 100 ms and sends all it has in one response of up to
1,000 revisions: measured, about 7 us of read per revision. So while the source is busy, the feed reads in
windows: a watch from the next revision, read until a response reaches the head as of its sending (its
last event's revision equals its header's, which on a watch of the whole keyspace means nothing is left),
then closed, and the next one opened at once from the revision after it. Each window waits for etcd's
next pass, so trailing adds up to about 100 ms of lag; that is why a quiet source keeps the live watch.

The switch is by the rate read: from live to trailing above TRAIL_ABOVE revisions a second, back to live
below TRAIL_BELOW. Either way the next watch starts where the last delivered revision ends (the Watch's
own rule), so nothing is lost or read twice across a switch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from ..errors import UsageError
from ..etcd import EtcdClient, Watch, WatchBatch
from .keys import ALL_KEYS

log = logging.getLogger("etcd_dr.mirror")

# Revisions per second read from the source above which the feed trails (each revision read live costs
# ~100 us of CPU: 10 % of a core at this rate), and below which it goes back to the live watch.
TRAIL_ABOVE = 1000.0
TRAIL_BELOW = 250.0
# Seconds over which the rate is measured.
RATE_EVERY = 1.0
# Seconds between a window closed at the head and the next one: a watch opened before the source's next
# revision is in step with it, and would be fed live, one response per revision.
TRAIL_PAUSE = 0.01


@dataclass(frozen=True)
class TrailConfig:
    """When the feed trails: above `above` revisions/s read, until below `below` (the hidden --trail)."""

    above: float = TRAIL_ABOVE
    below: float = TRAIL_BELOW

    @classmethod
    def parse(cls, text: str) -> TrailConfig:
        """ABOVE/BELOW in revisions per second, e.g. 1000/250; "off": always the live watch."""
        if text.strip().lower() == "off":
            return cls(math.inf, 0.0)
        try:
            above, below = (float(x) for x in text.split("/"))
        except ValueError:
            raise UsageError(f"--trail {text!r}: expected ABOVE/BELOW revisions per second, or off") from None
        if not 0 <= below <= above:
            raise UsageError(f"--trail {text!r}: expected 0 <= BELOW <= ABOVE")
        return cls(above, below)


class SourceFeed:
    """Async iterator of WatchBatch from `start` on (see the module's docstring)."""

    def __init__(
        self,
        source: EtcdClient,
        start: int,
        *,
        retry_for: float | None = None,
        trail: TrailConfig | None = None,
    ) -> None:
        self._source = source
        self._next = start
        self._retry_for = retry_for
        self._trail = trail or TrailConfig()
        self._watch: Watch | None = None
        self.trailing = self._trail.above <= 0  # (a test's way to trail from the start)
        if self.trailing:
            log.info("replay: reading the source in windows behind its head (--trail 0/...)")
        self.windows = 0  # trailing watches opened (for tests and the bench)
        self._since = time.monotonic()
        self._count = 0  # revisions read since `_since`

    @property
    def next_revision(self) -> int:
        return self._watch.next_revision if self._watch is not None else self._next

    def __aiter__(self) -> SourceFeed:
        return self

    async def close(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            self._next = watch.next_revision
            await watch.close()

    async def __anext__(self) -> WatchBatch:
        if self._watch is None:
            if self.trailing and TRAIL_PAUSE:
                await asyncio.sleep(TRAIL_PAUSE)
            self._watch = self._source.watch(*ALL_KEYS, start_revision=self._next, retry_for=self._retry_for)
            self.windows += self.trailing
        batch = await anext(self._watch)
        if batch.events:
            self._count += batch.events[-1].kv.mod_revision - batch.events[0].kv.mod_revision + 1
            head_reached = batch.events[-1].kv.mod_revision >= batch.header.revision
            if self.trailing and head_reached:
                await self.close()  # the next read opens the next window, from the next revision
            self._judge_rate()
        return batch

    def _judge_rate(self) -> None:
        now = time.monotonic()
        if now - self._since < RATE_EVERY:
            return
        rate = self._count / (now - self._since)
        self._since, self._count = now, 0
        if not self.trailing and rate > self._trail.above:
            log.info(
                "replay: the source writes %.0f revisions/s; reading it in windows behind its head (less "
                "CPU per revision, up to ~0.1 s more lag)",
                rate,
            )
            self.trailing = True
        elif self.trailing and rate < self._trail.below:
            log.info("replay: the source writes %.0f revisions/s; reading it live again", rate)
            self.trailing = False
