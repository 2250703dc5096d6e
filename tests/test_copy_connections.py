"""The copy's txns over several destination connections (mirror/sync.py COPY_CONNECTIONS): etcd's grpc
server opens each connection's HTTP/2 window small and grows it over round trips, so a far copy spreads
its first txns over connections of their own. Real etcd behind the test proxy, which counts what each
connection carries and can reset one of them in the middle of a request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from harness.mirroring import connect, dump, pair_config, running, until, wait_equal
from harness.proxy import FaultProxy

from etcd_dr.config import MirrorConfig
from etcd_dr.etcd import ClientConfig, EtcdClient, TxnBatch
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.mirror.sync import COPY_CONNECTIONS
from etcd_dr.state import StateLayout
from etcd_dr.state.records import REPLAY, Checkpoint

PREFIX = b"/app/"
Factory = Callable[..., EtcdCluster]
KEYS = 3000  # 24 txns at etcd's default 128 ops per txn: more than one per connection
VALUE = b"v" * 250
TXN_BYTES = 127 * (len(VALUE) + 12)  # a full copy txn's keys and values


async def fill(s: EtcdClient, n: int) -> None:
    for start in range(0, n, 100):
        batch = TxnBatch()
        for i in range(start, min(start + 100, n)):
            batch.put(PREFIX + b"%06d" % i, VALUE + b"%d" % i)
        await s.txn_batch([], batch)


def far_config(src: EtcdCluster, far: FaultProxy, **kw: Any) -> MirrorConfig:
    """The mirror's config from `src` to the destination behind `far`."""
    config = pair_config(src, src, prefix=PREFIX, **kw)
    return replace(config, dest=ClientConfig.create(far.url(), role="destination", flag_prefix="dest-"))


async def test_the_copy_spreads_its_txns_over_several_destination_connections(
    etcd_cluster_factory: Factory,
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    with FaultProxy.to(dst.endpoints[0]) as far:
        far.set_delay(0.01)
        async with connect(src) as s, connect(dst) as d:
            await fill(s, KEYS)
            await Mirror(far_config(src, far, once=True)).run()
            assert await dump(d, PREFIX) == await dump(s, PREFIX)
            carried = [n for n in far.sent_per_connection if n >= TXN_BYTES]
            # Every connection of the copy carried at least a txn of its data, not the mirror's one alone.
            assert len(carried) >= COPY_CONNECTIONS, far.sent_per_connection
            # And the copy's connections were closed when it ended (the mirror's own closed at exit).
            await until(lambda: far.connections == 0, 10, "the copy's connections closed")


async def test_a_copy_connection_cut_mid_request_ends_in_an_exact_copy(
    etcd_cluster_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etcd_dr")
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    with FaultProxy.to(dst.endpoints[0]) as far:
        far.set_delay(0.01)
        async with connect(src) as s, connect(dst) as d:
            await fill(s, KEYS)
            # The mirror's own connection is the first; the copy's are opened at its start. The last
            # of them is cut half-way through the first txn it carries (the request never completes).
            far.cut_when_sent(COPY_CONNECTIONS - 1, TXN_BYTES // 2)
            config = far_config(src, far)
            async with running(config):
                await asyncio.to_thread(far.cut_done.wait, 60)
                assert far.cut_done.is_set(), far.sent_per_connection
                await wait_equal(s, d, PREFIX, timeout=60)
                key = StateLayout(b"/etcd-dr/").checkpoint((await s.status()).cluster_id, PREFIX, PREFIX)

                async def replaying() -> bool:
                    kv = await d.get(key)
                    return kv is not None and Checkpoint.decode(kv.value).phase == REPLAY

                await until(replaying, 60, "the checkpoint in phase REPLAY")
            assert await dump(d, PREFIX) == await dump(s, PREFIX)
            # The copy failed with the cut and was done again from its SYNC checkpoint.
            assert "an earlier copy did not finish" in caplog.text


async def test_the_copys_connections_use_the_destinations_tls_and_auth_token(
    etcd_cluster_factory: Factory,
) -> None:
    """Into a destination with mutual TLS and auth on: the copy's other connections dial with the same
    TLS material and send the token of the mirror's own connection."""
    src = etcd_cluster_factory(name="src")
    dst = etcd_cluster_factory(name="dst", tls=True, auth=("root", "rootpw"))
    files = dst.client_tls
    assert files is not None
    with FaultProxy.to(dst.endpoints[0]) as far:
        dest = ClientConfig.create(
            far.url("https"),
            cacert=files.cacert,
            cert=files.cert,
            key=files.key,
            user="root",
            password="rootpw",
            role="destination",
            flag_prefix="dest-",
        )
        async with connect(src) as s:
            await fill(s, KEYS)
            await Mirror(replace(pair_config(src, src, prefix=PREFIX, once=True), dest=dest)).run()
            async with EtcdClient(dest) as d:
                assert await dump(d, PREFIX) == await dump(s, PREFIX)
        assert len([n for n in far.sent_per_connection if n >= TXN_BYTES]) >= COPY_CONNECTIONS
