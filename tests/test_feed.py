"""The replay's read of the source (mirror/feed.py) against real etcd: live while the source is quiet,
in windows behind the head while it is busy (one response carries many revisions: the CPU it saves),
back to live when it calms down, and every revision delivered once, in order, across the switches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from etcd_dr.etcd import ClientConfig, EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.feed import SourceFeed, TrailConfig


async def test_a_busy_source_is_read_in_windows_and_a_quiet_one_live(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    src = etcd_cluster_factory(name="src")
    config = ClientConfig.create(src.endpoints)
    async with EtcdClient(config) as writer, EtcdClient(config) as reader:
        start = (await writer.status()).revision + 1
        feed = SourceFeed(reader, start, trail=TrailConfig(above=200, below=50))
        seen: list[int] = []
        responses = {"live": 0, "trailing": 0}
        revisions = {"live": 0, "trailing": 0}

        async def read() -> None:
            async for batch in feed:
                mode = "trailing" if feed.trailing else "live"
                if batch.events:
                    responses[mode] += 1
                    revisions[mode] += len({ev.kv.mod_revision for ev in batch.events})
                for ev in batch.events:
                    if not seen or seen[-1] != ev.kv.mod_revision:
                        seen.append(ev.kv.mod_revision)

        reading = asyncio.create_task(read())
        # Busy: as fast as one client writes, well above 200 revisions/s.
        for i in range(4000):
            await writer.put(b"/feed/k%d" % (i % 100), b"v%d" % i)
        assert feed.trailing and feed.windows >= 2, (feed.windows, responses)
        # Quiet: three writes a second; the feed goes back to its live watch.
        for i in range(8):
            await asyncio.sleep(0.3)
            quiet = (await writer.put(b"/feed/quiet", b"%d" % i)).header.revision
        last = quiet
        async with asyncio.timeout(30):
            while not seen or seen[-1] < last:  # noqa: ASYNC110 (the reader has no event for it)
                await asyncio.sleep(0.05)
        reading.cancel()
        await asyncio.wait({reading})
        await feed.close()
    assert not feed.trailing
    assert seen == list(range(start, last + 1))  # every revision once, in order
    # Trailing, a response carries many revisions (etcd's batches); live, about one each.
    assert revisions["trailing"] >= 5 * responses["trailing"], (revisions, responses)
