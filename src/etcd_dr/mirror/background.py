"""What a running mirror does beside its copy/replay cycle, each a loop the engine starts as a task and
cancels when it stops: the heartbeat on the source (lag in seconds), following the source's compaction
point (headroom before a re-copy), and the periodic status line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..config import MirrorConfig
from ..etcd import AuthError, EtcdClient, EtcdError
from .stats import MirrorStats

log = logging.getLogger("etcd_dr.mirror")


async def heartbeats(config: MirrorConfig, stats: MirrorStats, source: EtcdClient, key: bytes) -> None:
    """Write the time on the source every interval; the replay carries the newest one it applied
    into the checkpoint, which gives the lag in seconds. Optional: without write access, it only
    follows the source's revision (which the watch alone under-reports when the mirror is behind)."""
    # A one-shot run writes none: it would only add source revisions for itself to catch up on.
    write = config.heartbeat_interval > 0 and not config.once
    while True:
        try:
            if write:
                put = await source.put(key, f"{time.time():.3f}".encode())
                revision = put.header.revision
            else:
                revision = (await source.range(key, count_only=True)).header.revision
            stats.source_revision = max(stats.source_revision, revision)
        except AuthError as e:
            if not write:
                return
            log.info("heartbeat: no write access on the source (%s); lag in seconds is not measured", e)
            write = False
        except EtcdError as e:
            log.debug("heartbeat: %s", e)
        await asyncio.sleep(config.heartbeat_interval or 1.0)


async def follow_compaction(config: MirrorConfig, stats: MirrorStats, source: EtcdClient) -> None:
    """Follow the source's compaction point, for the headroom before a re-copy would be needed."""
    while True:
        with contextlib.suppress(EtcdError):
            stats.source_compact_revision = await source.compact_revision()
        await asyncio.sleep(config.compaction_poll_interval)


async def status_lines(config: MirrorConfig, stats: MirrorStats) -> None:
    """Every --status-interval while replaying: how far the mirror is, and how busy."""
    last_events = 0
    while True:
        await asyncio.sleep(config.status_interval)
        s = stats
        if s.phase != "replay":
            continue
        log.info(
            "applied source revision %d (source at %d, %d behind, %.1f s); %d events in the last %g s",
            s.applied_revision,
            s.source_revision,
            s.lag_revisions,
            s.lag_seconds,
            s.applied_events - last_events,
            config.status_interval,
        )
        last_events = s.applied_events
