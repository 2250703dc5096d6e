"""Revision continuity for Kubernetes and other watchers across a move between sites.

Clients of the old primary hold its revisions (Kubernetes resource versions). The new primary counts
its own revisions, usually lower (the mirror groups revisions). A watch from a revision the new primary
has not reached yet would wait in silence for events that never come; etcd's snapshot restore offers
`--bump-revision` and `--mark-compacted` for this. Online, a revision only grows by writes, so the new
primary is written to (one scratch key under the state prefix, many writes in flight) until it is past
the old primary's last known revision plus a margin, then compacted there: a watcher from any older
revision is told "compacted" and re-lists instead of missing events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from ..etcd import CompactedError, EtcdClient
from ..state.layout import StateLayout

log = logging.getLogger("etcd_dr.failover")


@dataclass(frozen=True)
class Bump:
    start: int  # the cluster's revision before
    revision: int  # its revision after (at least the target)
    seconds: float

    @property
    def added(self) -> int:
        return self.revision - self.start

    @property
    def rate(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


async def raise_revision(client: EtcdClient, layout: StateLayout, target: int, *, inflight: int = 64) -> Bump:
    """Write until the cluster's revision is at least `target` (no compaction; see `mark_compacted`)."""
    t0 = time.monotonic()
    key = layout.revision_raise
    first = await client.put(key, b"")
    start = current = first.header.revision - 1

    async def writer() -> None:
        nonlocal current
        while current < target:
            put = await client.put(key, b"")
            current = max(current, put.header.revision)

    if first.header.revision < target:
        # Every write is one revision whatever it holds; many in flight is what makes this fast.
        await asyncio.gather(*(writer() for _ in range(max(1, min(inflight, target - current)))))
    deleted = await client.delete_range(key)
    bump = Bump(start, deleted.header.revision, time.monotonic() - t0)
    if bump.added > 2:
        log.info(
            "revision raised from %d to %d (%d revisions in %.2f s, %.0f/s)",
            bump.start,
            bump.revision,
            bump.added,
            bump.seconds,
            bump.rate,
        )
    return bump


async def mark_compacted(client: EtcdClient, revision: int) -> None:
    """Compact at `revision`: watches and reads of older revisions fail as compacted, so clients
    holding the old primary's revisions re-list."""
    with contextlib.suppress(CompactedError):  # already compacted at or past it
        await client.compact(revision)
    log.info("compacted at revision %d: watchers from older revisions will re-list", revision)
