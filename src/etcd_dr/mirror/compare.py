"""Side-by-side reading of the source range (at one revision) and the destination range (at one
revision), in key order: the merge both the copy and `verify` are built on. Memory is bounded by the
read-ahead pages, not by the keyspace."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from ..aio import cancel_and_wait
from ..etcd import EtcdClient, KeyValue
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
    source: KeyValue | None
    dest: KeyValue | None


async def _pages(
    client: EtcdClient, key: bytes, end: bytes, revision: int, page_size: int
) -> AsyncGenerator[list[KeyValue]]:
    """Pages of one range at one revision, read one page ahead of the consumer."""
    queue: asyncio.Queue[list[KeyValue] | BaseException | None] = asyncio.Queue(maxsize=2)

    async def reader() -> None:
        try:
            async for page in client.range_pages(
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


async def compare_ranges(
    source: EtcdClient,
    dest: EtcdClient,
    mapper: KeyMapper,
    *,
    source_revision: int,
    dest_revision: int,
    page_size: int,
    compare_leases: bool = False,
) -> AsyncGenerator[list[Pair]]:
    """Every mirrored key of either side once, in destination-key order, with how the two compare;
    in batches (a page's worth), since per-key async iteration would cost more than the compare."""
    src_key, src_end = mapper.source_range
    dst_key, dst_end = mapper.dest_range
    src_pages = _pages(source, src_key, src_end, source_revision, page_size)
    dst_pages = _pages(dest, dst_key, dst_end, dest_revision, page_size)
    to_dest, protected = mapper.to_dest, mapper.dest_is_protected
    sbuf: list[tuple[bytes, KeyValue]] = []
    dbuf: list[KeyValue] = []
    si = di = 0
    s_done = d_done = False
    try:
        while True:
            while si == len(sbuf) and not s_done:
                page = await anext(src_pages, None)
                if page is None:
                    s_done = True
                else:
                    sbuf = [(k, kv) for kv in page if (k := to_dest(kv.key)) is not None]
                    si = 0
            while di == len(dbuf) and not d_done:
                dpage = await anext(dst_pages, None)
                if dpage is None:
                    d_done = True
                else:
                    dbuf = [kv for kv in dpage if not protected(kv.key)]
                    di = 0
            if s_done and d_done:
                return
            out: list[Pair] = []
            while si < len(sbuf) and di < len(dbuf):
                sk, skv = sbuf[si]
                dkv = dbuf[di]
                if sk < dkv.key:
                    out.append(Pair(Kind.MISSING, sk, skv, None))
                    si += 1
                elif dkv.key < sk:
                    out.append(Pair(Kind.EXTRA, dkv.key, None, dkv))
                    di += 1
                else:
                    same = skv.value == dkv.value and (not compare_leases or skv.lease == dkv.lease)
                    out.append(Pair(Kind.EQUAL if same else Kind.DIFFERENT, sk, skv, dkv))
                    si += 1
                    di += 1
            if d_done:
                out.extend(Pair(Kind.MISSING, k, kv, None) for k, kv in sbuf[si:])
                si = len(sbuf)
            if s_done:
                out.extend(Pair(Kind.EXTRA, kv.key, None, kv) for kv in dbuf[di:])
                di = len(dbuf)
            yield out
    finally:
        await src_pages.aclose()
        await dst_pages.aclose()
