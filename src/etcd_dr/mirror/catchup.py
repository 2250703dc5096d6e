"""Catch-up beyond one watcher: a backlog far behind the source's head is read through several watches
over consecutive revision slices at once, and handed on strictly in revision order.

Why: etcd feeds a watch that starts behind the head from its own store, about 1,000 revisions per sync
pass (every 100 ms) and per watch, so one watch reads a backlog at 3,500 to 7,500 rev/s whatever the
mirror could apply; watches over different slices are fed side by side (8 watches: 15,000 to 42,000
rev/s on this machine, docs/benchmarks.md).

How it stays exactly-once and in order:
- Slice i covers the source revisions [first_i, last_i], consecutive and without gaps from the
  resume point to the head read at the start. Its watch (on the whole keyspace, like the replay's
  own) starts at first_i; every source revision has at least one event there, so the slice is whole
  when the watch delivers last_i, and events past last_i are dropped (slice i+1 has them).
- Revisions go to `deliver` slice after slice: slice i's only after slice i-1's last. The slice being
  delivered streams through (the replay's backlog bounds it); a later slice buffers up to its bound,
  then stops reading (its watch waits in etcd) until its turn.
- A slice's watch resumes by itself after a broken stream (etcd/watch.py); a compaction past a slice's
  start raises CompactedError out of `catch_up`, and the mirror re-syncs as for any compaction.
After the last slice the replay watches live from the next revision, with one watch as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..aio import cancel_and_wait
from ..errors import UsageError
from ..etcd import EtcdClient, WatchBatch
from .keys import ALL_KEYS

if TYPE_CHECKING:
    from .replay import SourceRevision

log = logging.getLogger("etcd_dr.mirror")

# Per slice buffered while waiting for its turn: bytes of keys and values (plus a per-op allowance for
# the objects holding them) and ops. Several slices wait at once, so this times the watchers bounds it.
SLICE_BYTES = 8 * 1024 * 1024
SLICE_OPS = 64 * 1024
OP_OVERHEAD = 200  # bytes of Python objects per buffered op (a Put and its share of a SourceRevision)


@dataclass(frozen=True)
class CatchUpConfig:
    """When and how a backlog is read through several watches (measured: docs/benchmarks.md)."""

    watchers: int = 8  # watches reading at once (1: one watch, the catch-up is off)
    slice_revisions: int = 5000  # revisions per slice
    threshold: int = 5000  # the catch-up is used when the resume point is more than this behind the head

    def __post_init__(self) -> None:
        if self.watchers < 1 or self.slice_revisions < 1 or self.threshold < 0:
            raise UsageError(
                f"--catch-up {self.watchers}/{self.slice_revisions}/{self.threshold}: watchers and slice "
                "size must be at least 1, the threshold at least 0"
            )

    @classmethod
    def parse(cls, text: str) -> CatchUpConfig:
        """WATCHERS/SLICE_REVISIONS/THRESHOLD, e.g. 8/5000/5000 (the hidden --catch-up option)."""
        try:
            w, s, t = (int(x) for x in text.split("/"))
        except ValueError:
            raise UsageError(
                f"--catch-up {text!r}: expected WATCHERS/SLICE_REVISIONS/THRESHOLD, e.g. 8/5000/5000"
            ) from None
        return cls(w, s, t)

    @property
    def enabled(self) -> bool:
        return self.watchers > 1


Convert = Callable[[WatchBatch], "list[SourceRevision]"]
Deliver = Callable[["list[SourceRevision]"], Awaitable[None]]


class _Slice:
    """One slice's watch and what it read and has not handed on yet."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.buffer: deque[SourceRevision] = deque()
        self.size = 0  # buffered bytes (with the per-op allowance) and ops
        self.ops = 0
        self.done = False  # the watch delivered `last`
        self.error: BaseException | None = None
        self.changed = asyncio.Event()  # set when something was buffered, or done, or failed
        self.room = asyncio.Event()
        self.room.set()
        self.task: asyncio.Task[None] | None = None

    async def read(self, source: EtcdClient, convert: Convert, retry_for: float | None) -> None:
        watch = source.watch(*ALL_KEYS, start_revision=self.first, retry_for=retry_for)
        try:
            async for batch in watch:
                if not batch.events:
                    continue
                reached = batch.events[-1].kv.mod_revision
                if reached > self.last:
                    # The rest belongs to the next slice.
                    batch = WatchBatch(
                        batch.header, [e for e in batch.events if e.kv.mod_revision <= self.last]
                    )
                for rev in convert(batch):
                    self.buffer.append(rev)
                    self.size += rev.nbytes + OP_OVERHEAD * (len(rev.ops) or 1)
                    self.ops += len(rev.ops) or 1
                if reached >= self.last:
                    self.done = True
                    self.changed.set()
                    return
                self.changed.set()
                if self.size >= SLICE_BYTES or self.ops >= SLICE_OPS:
                    self.room.clear()
                    await self.room.wait()
        except Exception as e:  # raised by the consumer when this slice's turn comes
            self.error = e
            self.changed.set()
        finally:
            await watch.close()

    def take(self) -> list[SourceRevision]:
        out = list(self.buffer)
        self.buffer.clear()
        self.size = self.ops = 0
        self.changed.clear()
        self.room.set()
        return out


def slices(first: int, last: int, size: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi] ranges covering first..last, `size` revisions each (the last one shorter)."""
    return [(lo, min(last, lo + size - 1)) for lo in range(first, last + 1, size)]


async def catch_up(
    source: EtcdClient,
    first: int,
    last: int,
    *,
    config: CatchUpConfig,
    convert: Convert,
    deliver: Deliver,
    retry_for: float | None = None,
) -> None:
    """Hand the source revisions first..last to `deliver`, in order, each exactly once, read through up
    to `config.watchers` watches at once. `deliver` applies the back-pressure (it returns when the
    replay has room). Raises what a slice's watch raised (CompactedError, ...) when that slice's turn
    comes."""
    bounds = slices(first, last, config.slice_revisions)
    started = time.monotonic()
    log.info(
        "catch-up: source revisions %d..%d (%d behind the head) read through %d watches at once, in "
        "%d slices of %d revisions",
        first,
        last,
        last - first + 1,
        config.watchers,
        len(bounds),
        config.slice_revisions,
    )
    parts = [_Slice(lo, hi) for lo, hi in bounds]
    try:
        for i, part in enumerate(parts):
            # Keep `watchers` slices reading: this one and the next ones.
            for ahead in parts[i : i + config.watchers]:
                if ahead.task is None:
                    ahead.task = asyncio.create_task(ahead.read(source, convert, retry_for))
            while True:
                if part.buffer:
                    await deliver(part.take())
                    continue
                if part.error is not None:
                    raise part.error
                if part.done:
                    break
                await part.changed.wait()
            assert part.task is not None
            await part.task
    finally:
        for part in parts:
            if part.task is not None:
                await cancel_and_wait(part.task)
    seconds = time.monotonic() - started
    log.info(
        "catch-up: read source revisions %d..%d in %.2f s (%.0f rev/s); watching live from %d",
        first,
        last,
        seconds,
        (last - first + 1) / max(seconds, 1e-6),
        last + 1,
    )
