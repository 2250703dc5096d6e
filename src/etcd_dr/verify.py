"""`etcd-dr verify`: prove that the destination holds what the source holds.

Both sides are read at one revision each and compared key by key in one streaming pass (etcd has no
server-side hash of a key range whose result two clusters could share: HashKV covers revisions, which
differ between clusters, so the values themselves are compared, page by page, bounded in memory).

When a mirror runs, the destination is compared with the source AT THE REVISION THE MIRROR'S
CHECKPOINT NAMES (read in the same destination revision as the data), so a mirror that is still
applying is reported as "behind by N revisions", not as a difference.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .config import MirrorConfig
from .errors import Refused
from .etcd import CompactedError, EtcdClient, KeyValue
from .mirror.compare import Kind, Pair, as_pairs, diff_ranges
from .mirror.keys import KeyMapper, ranges_overlap
from .state.reader import decode
from .state.records import REPLAY, Checkpoint, encode_key
from .state.site import keys_ordered_as_data

log = logging.getLogger("etcd_dr.verify")


@dataclass
class VerifyResult:
    keys: int = 0  # keys on the source side of the comparison
    missing: list[bytes] = field(default_factory=list)
    extra: list[bytes] = field(default_factory=list)
    different: list[bytes] = field(default_factory=list)
    source_revision: int = 0  # the source revision compared
    dest_revision: int = 0
    source_current_revision: int = 0
    checkpoint_revision: int | None = None  # the mirror's, when there is one
    ordered_as_data: int = 0  # keys on the standby without the source's create order, kept as data

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different)

    @property
    def behind(self) -> int:
        """Revisions the compared source revision is behind the source's current one."""
        return max(0, self.source_current_revision - self.source_revision)

    def summary(self) -> str:
        if self.equal:
            text = f"equal: {self.keys} keys"
        else:
            text = f"{len(self.missing)} missing, {len(self.extra)} extra, {len(self.different)} different"
        if self.checkpoint_revision is not None:
            text += (
                f" (source at revision {self.source_revision}, as applied by the mirror; "
                f"the mirror is {self.behind} revisions behind the source's {self.source_current_revision})"
            )
        if self.ordered_as_data:
            text += (
                f"; {self.ordered_as_data} leased or ordered keys keep the source's create order as data "
                "(a promotion creates them again in it)"
            )
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "keys": self.keys,
            "missing": [encode_key(k) for k in self.missing],
            "extra": [encode_key(k) for k in self.extra],
            "different": [encode_key(k) for k in self.different],
            "source_revision": self.source_revision,
            "dest_revision": self.dest_revision,
            "source_current_revision": self.source_current_revision,
            "checkpoint_revision": self.checkpoint_revision,
            "ordered_as_data_keys": self.ordered_as_data,
            "behind": self.behind,
        }


async def verify(
    config: MirrorConfig,
    *,
    on_difference: Any = None,
    rate: float | None = None,
    page_size: int | None = None,
    source_revision: int | None = None,
) -> VerifyResult:
    """Compare source and destination as `config` maps them; `on_difference(kind, key)` is called for
    each difference as it is found (the CLI prints them as they come).

    `rate`: at most this many bytes of keys and values read per second, both sides together (the pages
    are then spread over time instead of read in one burst: a running mirror's periodic verify).
    `page_size`: keys per page (default: config.page_size).
    `source_revision`: compare the source at this revision, whatever the destination's checkpoint says
    (the drill: its copy's checkpoint is gone with the promotion); compacted there is CompactedError."""
    pages = page_size or config.page_size
    mapper = KeyMapper.from_config(config)
    async with EtcdClient(config.source) as source, EtcdClient(config.dest) as dest:
        src_status, dst_status = await asyncio.gather(source.status(), dest.status())
        if src_status.cluster_id == dst_status.cluster_id and ranges_overlap(
            mapper.source_range, mapper.dest_range
        ):
            raise Refused(
                f"source {config.source.endpoints_text} and destination {config.dest.endpoints_text} are "
                f"the same cluster (cluster id {src_status.cluster_id:x}) with overlapping ranges: "
                "nothing to compare"
            )
        key = config.layout.checkpoint(src_status.cluster_id, config.prefix, mapper.dest_prefix)
        for attempt in range(20):
            # The checkpoint and the data are read at the same destination revision.
            ckpt, dest_rev = await _read_checkpoint(dest, key)
            if ckpt is not None and ckpt.split_revision:
                # The mirror is in the middle of a source revision too large for one txn.
                await asyncio.sleep(0.1 * (attempt + 1))
                continue
            break
        current = (await source.range(b"\0", b"\0", count_only=True)).header.revision
        result = VerifyResult(dest_revision=dest_rev, source_current_revision=current)
        src_rev = current
        if source_revision is not None:
            result.checkpoint_revision = source_revision
            at = source_revision
            await _compare(source, dest, mapper, at, dest_rev, pages, result, on_difference, rate)
            return result
        if ckpt is not None and ckpt.phase == REPLAY:
            result.checkpoint_revision = ckpt.revision
            src_rev = ckpt.revision
            layout = config.layout
            result.ordered_as_data = await keys_ordered_as_data(dest, layout, layout.pair_of(key))
        try:
            await _compare(source, dest, mapper, src_rev, dest_rev, pages, result, on_difference, rate)
        except CompactedError:
            if src_rev == current:
                raise
            # The mirror's revision is compacted away on the source: compare with the current one.
            log.warning(
                "the mirror's checkpoint revision %d is compacted on the source; comparing with the "
                "source's current revision %d instead (differences may be changes not yet applied)",
                src_rev,
                current,
            )
            result = VerifyResult(dest_revision=dest_rev, source_current_revision=current)
            await _compare(source, dest, mapper, current, dest_rev, pages, result, on_difference, rate)
        return result


async def _compare(
    source: EtcdClient,
    dest: EtcdClient,
    mapper: KeyMapper,
    src_rev: int,
    dest_rev: int,
    page_size: int,
    result: VerifyResult,
    on_difference: Any,
    rate: float | None = None,
) -> None:
    result.source_revision = src_rev
    started = time.monotonic()
    nbytes = 0
    lists = {Kind.MISSING: result.missing, Kind.EXTRA: result.extra, Kind.DIFFERENT: result.different}
    pair: Pair
    diffs = diff_ranges(
        source,
        dest,
        mapper,
        source_revision=src_rev,
        dest_revision=dest_rev,
        page_size=page_size,
        include_equal=True,
    )
    async for batch in as_pairs(diffs):
        for pair in batch:
            if pair.source is not None:
                result.keys += 1
            if pair.kind is not Kind.EQUAL:
                lists[pair.kind].append(pair.key)
                if on_difference is not None:
                    on_difference(pair.kind.value, pair.key)
        if rate:
            # Pace the reads: the next page is read (one page of read-ahead) once the bytes read so far
            # fit the budget.
            for pair in batch:
                for kv in (pair.source, pair.dest):
                    if kv is not None:
                        nbytes += len(kv.key) + len(kv.value)
            wait = nbytes / rate - (time.monotonic() - started)
            if wait > 0:
                await asyncio.sleep(wait)


@dataclass(frozen=True)
class _Segment(KeyMapper):
    """The mapping of `mapper`, over one segment of the range only."""

    segment_source: tuple[bytes, bytes] = (b"", b"")
    segment_dest: tuple[bytes, bytes] = (b"", b"")

    @property
    def source_range(self) -> tuple[bytes, bytes]:
        return self.segment_source

    @property
    def dest_range(self) -> tuple[bytes, bytes]:
        return self.segment_dest


async def verify_in_segments(
    config: MirrorConfig, *, rate: float | None, page_size: int, segment_keys: int = 100_000
) -> VerifyResult:
    """What a running mirror's periodic verify does: `verify`, one segment of about `segment_keys`
    source keys at a time, each compared at revisions of its own (the destination with the mirror's
    checkpoint at one revision, the source at the checkpoint's). A verify paced to a small rate takes
    minutes on a large keyspace; in segments, no revision has to outlive a compaction for that long,
    and each segment is as exact as a whole verify. Raises Refused while the mirror copies."""
    mapper = KeyMapper.from_config(config)
    base = {f.name: getattr(mapper, f.name) for f in fields(KeyMapper)}
    src_key, src_end = mapper.source_range
    dst_key, dst_end = mapper.dest_range

    def to_dest(source_key: bytes) -> bytes:
        return mapper.dest_prefix + source_key[len(mapper.prefix) :]

    result = VerifyResult()
    async with EtcdClient(config.source) as source, EtcdClient(config.dest) as dest:
        src_id = (await source.status()).cluster_id
        key = config.layout.checkpoint(src_id, config.prefix, mapper.dest_prefix)
        cursor, dest_cursor = src_key, dst_key
        while True:
            for attempt in range(50):
                ckpt, dest_rev = await _read_checkpoint(dest, key)
                if ckpt is None or ckpt.phase != REPLAY:
                    raise Refused("the mirror is copying (or has no checkpoint): nothing to compare yet")
                if not ckpt.split_revision:
                    break
                await asyncio.sleep(0.1 * (attempt + 1))  # inside a source revision applied in parts
            else:
                raise Refused("the mirror stays inside a source revision applied in parts; try again")
            # Where this segment ends: after `segment_keys` source keys (a keys-only read; etcd walks
            # its in-memory index, not the data).
            bound = await source.range(
                cursor, src_end, revision=ckpt.revision, limit=segment_keys, keys_only=True
            )
            last = bound.more and bool(bound.kvs)
            seg_src = (cursor, bound.kvs[-1].key + b"\0") if last else (cursor, src_end)
            seg_dst = (dest_cursor, to_dest(seg_src[1])) if last else (dest_cursor, dst_end)
            segment = _Segment(**base, segment_source=seg_src, segment_dest=seg_dst)
            await _compare(
                source,
                dest,
                segment,
                ckpt.revision,
                dest_rev,
                page_size,
                result,
                None,
                rate,
            )
            result.checkpoint_revision = ckpt.revision
            result.dest_revision = dest_rev
            if not last:
                break
            cursor, dest_cursor = seg_src[1], seg_dst[1]
        result.source_current_revision = (await source.range(b"\0", b"\0", count_only=True)).header.revision
    return result


async def recheck(config: MirrorConfig, keys: list[bytes]) -> list[bytes]:
    """The destination keys among `keys` that still differ from the source when read again: the
    destination (with the mirror's checkpoint) at one revision, the source at the checkpoint's. A
    difference that a live mirror's moving state made is gone by then; a real one stays."""
    mapper = KeyMapper.from_config(config)
    still: list[bytes] = []
    async with EtcdClient(config.source) as source, EtcdClient(config.dest) as dest:
        src_id = (await source.status()).cluster_id
        key = config.layout.checkpoint(src_id, config.prefix, mapper.dest_prefix)
        for dkey in keys:
            ckpt, dest_rev = await _read_checkpoint(dest, key)
            if ckpt is None or ckpt.phase != REPLAY:
                raise Refused(
                    "the mirror is copying (or has no checkpoint): differences cannot be judged now"
                )
            d = await dest.get(dkey, revision=dest_rev)
            skey = mapper.prefix + dkey[len(mapper.dest_prefix) :]
            try:
                s = await source.get(skey, revision=ckpt.revision)
            except CompactedError:
                s = await source.get(skey)  # newer than the checkpoint: a change not yet applied may show
            if (s is None) != (d is None) or (s is not None and d is not None and s.value != d.value):
                still.append(dkey)
        return still


def _checkpoint(dest: EtcdClient, key: bytes, kvs: Sequence[KeyValue]) -> Checkpoint | None:
    return decode("checkpoint", key, kvs[0].value, dest, Checkpoint.decode) if kvs else None


async def _read_checkpoint(dest: EtcdClient, key: bytes) -> tuple[Checkpoint | None, int]:
    """The pair's checkpoint and the destination revision it was read at (where the data is read)."""
    read = await dest.range(key)
    return _checkpoint(dest, key, read.kvs), read.header.revision
