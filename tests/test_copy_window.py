"""The copy's window (mirror/sync.py TxnPipeline): bytes of txns in flight, so that a far destination gets
as much in flight as its round trip needs whatever the txn size, with --inflight as a cap on the txns.
Real etcd; the client's txn call is only wrapped to count the txns in flight (each held a little longer,
as a far destination would)."""

from __future__ import annotations

import asyncio

import pytest

from etcd_dr.etcd import ClientConfig, Compare, EtcdClient, TxnBatch, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror.sync import TxnPipeline

PREFIX = b"/w/"


@pytest.mark.parametrize(
    ("window", "inflight", "peak"),
    [
        (35 * 1024, 50, 3),  # 10 KiB txns: the bytes window lets 3 go at once, though 50 are allowed
        (64 * 1024 * 1024, 4, 4),  # a window far larger than needed: --inflight caps
        (1024, 50, 1),  # a txn larger than the window still goes, alone
    ],
)
async def test_the_copy_keeps_a_window_of_bytes_in_flight_capped_by_inflight(
    etcd_cluster: EtcdCluster, window: int, inflight: int, peak: int
) -> None:
    async with EtcdClient(ClientConfig.create(etcd_cluster.endpoints)) as c:
        out = 0
        seen: list[int] = []
        send = c.txn_batch

        async def far_txn(guard: list[Compare], batch: TxnBatch) -> tuple[bool, int]:
            nonlocal out
            out += 1
            seen.append(out)
            try:
                await asyncio.sleep(0.05)
                return await send(guard, batch)
            finally:
                out -= 1

        c.txn_batch = far_txn  # type: ignore[method-assign,assignment]
        pipeline = TxnPipeline(c, [], 10, 64 * 1024, inflight, window_bytes=window)
        for i in range(120):
            await pipeline.put(PREFIX + b"%03d" % i, b"x" * 1020)  # 1 KiB with the key: 10 KiB a txn
        await pipeline.close()
        assert max(seen) == peak
        assert pipeline.txns == 12
        assert (await c.range(PREFIX, prefix_range_end(PREFIX), count_only=True)).count == 120
