"""The mirror's first contact with both clusters (etcd's make-mirror has none: it trusts its flags):
reach them, refuse a mirror of a cluster into an overlapping range of itself, and refuse (or, with
--take-over, take) a destination range that has another source (sourceguard.py)."""

from __future__ import annotations

import asyncio
import logging
import time

from ..config import MirrorConfig
from ..errors import Refused
from ..etcd import EtcdClient, Status, TransientError, Unavailable
from ..state.records import encode_key
from .keys import KeyMapper, ranges_overlap
from .sourceguard import guard_one_source

log = logging.getLogger("etcd_dr.mirror")


async def preflight(
    config: MirrorConfig, mapper: KeyMapper, source: EtcdClient, dest: EtcdClient
) -> tuple[Status, Status]:
    """Both clusters' status once they answer, the pair checked; logs the pair it will mirror."""
    src = await status_with_retry(config, source, "source")
    dst = await status_with_retry(config, dest, "destination")
    if src.cluster_id == dst.cluster_id and ranges_overlap(mapper.source_range, mapper.dest_range):
        raise Refused(
            f"source {config.source.endpoints_text} and destination "
            f"{config.dest.endpoints_text} are the same cluster (cluster id {src.cluster_id:x}) "
            "and the key ranges overlap: "
            "mirroring a cluster into itself is refused"
        )
    await guard_one_source(
        dest,
        layout=config.layout,
        source_id=src.cluster_id,
        source_prefix=config.prefix,
        dest_prefix=mapper.dest_prefix,
        dest_text=config.dest.endpoints_text,
        take_over=config.take_over,
        reason=config.take_over_reason,
    )
    log.info(
        "source %s (cluster %x, etcd %s, revision %d) -> destination %s (cluster %x, etcd %s); "
        "prefix %s -> %s",
        config.source.endpoints_text,
        src.cluster_id,
        src.version,
        src.revision,
        config.dest.endpoints_text,
        dst.cluster_id,
        dst.version,
        encode_key(config.prefix) or "(all keys)",
        encode_key(mapper.dest_prefix) or "(all keys)",
    )
    if config.leases == "ignore":
        log.info("--leases ignore: keys are written without their leases (make-mirror's behaviour)")
    return src, dst


async def status_with_retry(config: MirrorConfig, client: EtcdClient, role: str) -> Status:
    """The first contact: TLS and auth failures are fatal at once; unreachable endpoints are retried
    (forever for the daemon, for --timeout with --once)."""
    deadline = time.monotonic() + config.timeout
    backoff = 0.2
    while True:
        try:
            return await client.status()
        except TransientError as e:
            if config.once and time.monotonic() > deadline:
                raise Unavailable(f"{role} unreachable for {config.timeout:g} s (--timeout): {e}") from e
            log.warning("%s not reachable yet: %s; retrying in %.1f s", role, e, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
