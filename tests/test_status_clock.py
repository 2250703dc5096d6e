"""Lag in seconds when clocks disagree (issue 8, item 2: clock jumps do not break lag reporting).

The mirror stamps its heartbeats (written on the source, carried into the checkpoint by the replay)
with its own wall clock; `etcd-dr status` may run on a host whose clock differs by any amount, or the
mirror's clock may have jumped. The system clock cannot be changed in a test: the heartbeat and the
checkpoint are written as a mirror whose clock is an hour ahead of (or behind) this host's would have
written them, on real etcd, and the lag must stay what the mirror's own clock measured."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from harness.mirroring import connect, pair_config

from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.state.records import Checkpoint
from etcd_dr.status import status

Factory = Callable[..., EtcdCluster]


@pytest.mark.parametrize("skew", [3600.0, -3600.0, 0.0], ids=["mirror-clock-ahead", "behind", "same"])
async def test_lag_seconds_uses_the_mirrors_clock_only(etcd_cluster_factory: Factory, skew: float) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    config = pair_config(src, dst)
    async with connect(src) as s, connect(dst) as d:
        await s.put(b"/a", b"1")
        await Mirror(pair_config(src, dst, once=True)).run()
        source_id, dest_id = (await s.status()).cluster_id, (await d.status()).cluster_id
        key = config.layout.checkpoint(source_id, b"", b"")
        kv = await d.get(key)
        assert kv is not None
        ckpt = Checkpoint.decode(kv.value)
        mirror_now = time.time() + skew
        # The applied state is 7.5 s behind the newest heartbeat, both on the mirror's clock.
        await d.put(key, ckpt.advanced(ckpt.revision, source_time=mirror_now - 7.5).encode())
        await s.put(config.layout.heartbeat(dest_id), f"{mirror_now:.3f}".encode())
        await s.put(b"/b", b"2")  # not applied yet: the mirror is behind

        report = await status(config)
        assert report.lag_revisions is not None and report.lag_revisions >= 2
        assert report.lag_seconds is not None
        assert report.lag_seconds == pytest.approx(7.5, abs=0.01), report.lag_seconds
        assert report.to_json()["lag_seconds"] == pytest.approx(7.5, abs=0.01)
        lag = f"lag {report.lag_revisions} revisions, 7.5 s"
        assert any(lag in line for line in report.lines()), report.lines()

        # A mirror whose clock jumped back after its last applied heartbeat: never a negative lag.
        await s.put(config.layout.heartbeat(dest_id), f"{mirror_now - 100:.3f}".encode())
        report = await status(config)
        assert report.lag_seconds == 0.0
