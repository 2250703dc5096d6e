"""Side-by-side reading of the source range (at one revision) and the destination range (at one
revision), in key order: the merge both the copy and `verify` are built on. Memory is bounded by the
read-ahead pages, not by the keyspace.

This is the copy's hot loop (every key of both sides passes through it), so it works on the pages'
key-values as etcd sent them (`KeyValueLike`), maps a page's keys in one pass, and makes an object only
for keys that differ."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from ..aio import cancel_and_wait
from ..etcd import EtcdClient, KeyValueLike, prefix_range_end
from .keys import KeyMapper

# Keys and values per read page: large pages are cheap for etcd, this bounds our memory per page.
PAGE_BYTES = 4 * 1024 * 1024


class Kind(enum.Enum):
    EQUAL = "equal"
    MISSING = "missing"  # on the destination
    EXTRA = "extra"  # only on the destination
    DIFFERENT = "different"


@dataclass(frozen=True, slots=True)
class Pair:
    kind: Kind
    key: bytes  # the destination key
    source: KeyValueLike | None
    dest: KeyValueLike | None


@dataclass(slots=True)
class Diff:
    """One batch of the comparison (about a page): `pairs` in destination-key order, holding the keys
    that differ (and, when asked for, the equal ones too); `equal` counts the equal keys. Keys missing
    on the destination past its last key (all of them, into an empty destination) are not made into
    pairs: `missing_keys` (destination keys) and `missing` (the source's key-values) hold them, in
    order, after every key of `pairs`."""

    equal: int
    pairs: list[Pair]
    missing_keys: Sequence[bytes] = ()
    missing: Sequence[KeyValueLike] = ()


async def _pages(
    client: EtcdClient, key: bytes, end: bytes, revision: int, page_size: int
) -> AsyncGenerator[Sequence[KeyValueLike]]:
    """Pages of one range at one revision, read one page ahead of the consumer."""
    queue: asyncio.Queue[Sequence[KeyValueLike] | BaseException | None] = asyncio.Queue(maxsize=2)

    async def reader() -> None:
        try:
            async for page in client.range_pages_raw(
                key, end, revision=revision, page_size=page_size, page_bytes=PAGE_BYTES
            ):
                await queue.put(page.kvs)
            await queue.put(None)
        except Exception as e:  # handed to the consumer, who re-raises it (a cancel is not caught)
            await queue.put(e)

    task = asyncio.create_task(reader())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        await cancel_and_wait(task)


SourceMap = Callable[[Sequence[KeyValueLike]], tuple[list[bytes], list[KeyValueLike]]]
DestFilter = Callable[[Sequence[KeyValueLike]], list[KeyValueLike]]


def _source_map(mapper: KeyMapper) -> SourceMap:
    """A page of source key-values -> (their destination keys, the key-values), unmirrored ones left
    out. The page is inside the source range, so every key starts with the prefix."""
    excludes = tuple(e for e in mapper.excludes if e.startswith(mapper.prefix) or mapper.prefix.startswith(e))
    if mapper.ignore is None and mapper.prefix == mapper.dest_prefix:
        # Keys keep their names (the common case): no new key is made, and a page is only filtered
        # when an excluded range falls within its keys.
        bounds = [(e, prefix_range_end(e)) for e in excludes]

        def same(page: Sequence[KeyValueLike]) -> tuple[list[bytes], list[KeyValueLike]]:
            if not page:
                return [], []
            first, last = page[0].key, page[-1].key
            if any(last >= e and (end == b"\0" or first < end) for e, end in bounds):
                kvs = [kv for kv in page if not kv.key.startswith(excludes)]
            else:
                kvs = list(page)
            return [kv.key for kv in kvs], kvs

        return same

    to_dest = mapper.to_dest

    def mapped(page: Sequence[KeyValueLike]) -> tuple[list[bytes], list[KeyValueLike]]:
        keys: list[bytes] = []
        kvs: list[KeyValueLike] = []
        for kv in page:
            k = to_dest(kv.key)
            if k is not None:
                keys.append(k)
                kvs.append(kv)
        return keys, kvs

    return mapped


def _dest_filter(mapper: KeyMapper) -> DestFilter:
    """A page of destination key-values, without the protected ones (never written nor removed)."""
    if mapper.ignore is None:
        protected = mapper.protected
        if not protected:
            return list
        return lambda page: [kv for kv in page if not kv.key.startswith(protected)]
    is_protected = mapper.dest_is_protected
    return lambda page: [kv for kv in page if not is_protected(kv.key)]


async def diff_ranges(
    source: EtcdClient,
    dest: EtcdClient,
    mapper: KeyMapper,
    *,
    source_revision: int,
    dest_revision: int,
    page_size: int,
    compare_leases: bool = False,
    owns_lease: Callable[[int], bool] | None = None,
    include_equal: bool = False,
    keep_equal: Callable[[KeyValueLike], bool] | None = None,
) -> AsyncGenerator[Diff]:
    """Every mirrored key of either side once, in destination-key order, with how the two compare;
    in batches (a page's worth), since per-key async iteration would cost more than the compare.
    Equal keys are only counted, unless `include_equal` (all) or `keep_equal` (those whose source
    key-value it accepts: the copy's ordered keys)."""
    src_key, src_end = mapper.source_range
    dst_key, dst_end = mapper.dest_range
    src_pages = _pages(source, src_key, src_end, source_revision, page_size)
    dst_pages = _pages(dest, dst_key, dst_end, dest_revision, page_size)
    source_map, dest_filter = _source_map(mapper), _dest_filter(mapper)
    MISSING, EXTRA, EQUAL, DIFFERENT = Kind.MISSING, Kind.EXTRA, Kind.EQUAL, Kind.DIFFERENT
    skeys: list[bytes] = []
    skvs: list[KeyValueLike] = []
    dkvs: list[KeyValueLike] = []
    si = di = 0
    s_done = d_done = False
    try:
        while True:
            while si == len(skvs) and not s_done:
                page = await anext(src_pages, None)
                if page is None:
                    s_done = True
                else:
                    skeys, skvs = source_map(page)
                    si = 0
            while di == len(dkvs) and not d_done:
                dpage = await anext(dst_pages, None)
                if dpage is None:
                    d_done = True
                else:
                    dkvs = dest_filter(dpage)
                    di = 0
            if s_done and d_done:
                return
            out: list[Pair] = []
            add = out.append
            equal = 0
            ns, nd = len(skvs), len(dkvs)
            while si < ns and di < nd:
                sk = skeys[si]
                dkv = dkvs[di]
                dk = dkv.key
                if sk < dk:
                    add(Pair(MISSING, sk, skvs[si], None))
                    si += 1
                elif dk < sk:
                    add(Pair(EXTRA, dk, None, dkv))
                    di += 1
                else:
                    skv = skvs[si]
                    # With leases, the same lease ID is not enough: the destination's lease may be
                    # one nobody keeps alive (granted by the mirror of the other direction before a
                    # switchover and back); only one the mirror owns makes the keys equal.
                    if skv.value == dkv.value and (
                        not compare_leases
                        or (
                            skv.lease == dkv.lease
                            and (not dkv.lease or owns_lease is None or owns_lease(dkv.lease))
                        )
                    ):
                        equal += 1
                        if include_equal or (keep_equal is not None and keep_equal(skv)):
                            add(Pair(EQUAL, sk, skv, dkv))
                    else:
                        add(Pair(DIFFERENT, sk, skv, dkv))
                    si += 1
                    di += 1
            diff = Diff(equal, out)
            if d_done and si < ns:
                diff.missing_keys, diff.missing = skeys[si:], skvs[si:]
                si = ns
            if s_done and di < nd:
                out.extend([Pair(EXTRA, kv.key, None, kv) for kv in dkvs[di:]])
                di = nd
            yield diff
    finally:
        await src_pages.aclose()
        await dst_pages.aclose()


async def as_pairs(diffs: AsyncGenerator[Diff]) -> AsyncGenerator[list[Pair]]:
    """The batches of `diff_ranges(..., include_equal=True)` with every key as a pair, the missing
    ones included (verify reports each key; the copy only needs the differences)."""
    try:
        async for diff in diffs:
            pairs = diff.pairs
            missing = zip(diff.missing_keys, diff.missing, strict=True)
            pairs.extend([Pair(Kind.MISSING, k, kv, None) for k, kv in missing])
            yield pairs
    finally:
        await diffs.aclose()
