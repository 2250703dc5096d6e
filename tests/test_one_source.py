"""One standby, one source (issue 12, finding 3): a destination range holding another source cluster's
checkpoint is refused, with the way out; `--take-over` replaces that mirror and is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from harness.clirun import assert_refused, etcd_dr
from harness.mirroring import connect, dump, pair_config, running

from etcd_dr.etcd import EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.state import StateLayout
from etcd_dr.state.events import recent_events
from etcd_dr.state.records import Checkpoint
from etcd_dr.state.roles import read_role

Factory = Callable[..., EtcdCluster]
STATE = b"/etcd-dr/"
LAYOUT = StateLayout(STATE)


async def fill(c: EtcdClient, value: bytes, n: int = 150, prefix: bytes = b"/registry/") -> None:
    for i in range(n):
        await c.put(prefix + b"%04d" % i, value + b"%d" % i)


async def checkpoints(c: EtcdClient) -> list[Checkpoint]:
    kvs = (await c.range(STATE + b"mirror/", STATE + b"mirror0")).kvs
    return [Checkpoint.decode(kv.value) for kv in kvs]


async def cluster_id(c: EtcdClient) -> str:
    return f"{(await c.status()).cluster_id:x}"


async def mirror_cli(dst: EtcdCluster, src: EtcdCluster, *args: str) -> tuple[int, str]:
    run = await etcd_dr("mirror", dst.endpoints[0], "--endpoints", src.endpoints[0], "--once", *args)
    return run.code, run.stderr


async def test_second_source_refused_then_taken_over_and_recorded(etcd_cluster_factory: Factory) -> None:
    a, b, c = (etcd_cluster_factory(name=n) for n in ("a", "b", "c"))
    async with connect(a) as ca, connect(b) as cb, connect(c) as cc:
        await fill(ca, b"from-a-")
        await fill(cb, b"from-b-")  # the same key names, other values
        a_id, b_id = await cluster_id(ca), await cluster_id(cb)
        code, err = await mirror_cli(c, a, "--prefix", "/registry/")
        assert code == 0, err
        a_rev = (await checkpoints(cc))[0].revision
        assert await dump(cc) == await dump(ca)

        run = await etcd_dr(
            "mirror", c.endpoints[0], "--endpoints", b.endpoints[0], "--once", "--prefix", "/registry/"
        )
        assert_refused(run, a_id, f"revision {a_rev}", "ago", "--take-over", "another source")
        assert await dump(cc) == await dump(ca), "the refused mirror wrote into the standby"

        # A mirror of B into a range overlapping A's (inside it) is refused too; a disjoint one is not.
        run = await etcd_dr(
            "mirror", c.endpoints[0], "--endpoints", b.endpoints[0], "--once", "--prefix", "/registry/00"
        )
        assert_refused(run, a_id, "--take-over")
        await cb.put(b"/other/x", b"b")
        code, err = await mirror_cli(c, b, "--prefix", "/other/")
        assert code == 0, err
        assert (await cc.get(b"/other/x")) is not None

        code, err = await mirror_cli(
            c, b, "--prefix", "/registry/", "--take-over", "--reason", "site A retired"
        )
        assert code == 0, err
        assert "take-over" in err and a_id in err  # logged, naming what was replaced
        assert await dump(cc, b"/registry/") == await dump(cb, b"/registry/")
        assert {f"{k.source_cluster_id:x}" for k in await checkpoints(cc)} == {b_id}  # B's two mirrors
        events = [e for e in await recent_events(cc, LAYOUT) if e.kind == "take-over"]
        assert len(events) == 1, events
        assert events[0].fields["previous_source"] == a_id and events[0].fields["source"] == b_id
        assert events[0].fields["previous_revision"] == a_rev
        move = events[0].move  # a move in `etcd-dr history`: who, from where, to where
        assert move is not None and move.result == "ok" and move.user and move.host
        assert move.source == f"cluster {a_id}" and move.rpo_revision == a_rev
        assert move.reason == "site A retired"
        role = (await read_role(cc, LAYOUT)).role
        assert role is not None and f"{role.peer_cluster_id:x}" == b_id and role.via == "take-over"
        shown = await etcd_dr(
            "status", c.endpoints[0], "--endpoints", b.endpoints[0], "--prefix", "/registry/"
        )
        # Degraded (exit 1): the one-shot mirror is not running and auth is off; the take-over is shown.
        assert shown.code == 1 and "Traceback" not in shown.stderr, shown.stderr
        assert any("take-over" in line and a_id in line for line in shown.stdout.splitlines()), shown.stdout

        # And now A is the other source, also for a mirror of every key.
        run = await etcd_dr("mirror", c.endpoints[0], "--endpoints", a.endpoints[0], "--once")
        assert_refused(run, b_id, "--take-over")


async def test_take_over_refused_while_the_other_mirror_runs(etcd_cluster_factory: Factory) -> None:
    a, b, c = (etcd_cluster_factory(name=n) for n in ("a", "b", "c"))
    async with connect(a) as ca, connect(b) as cb, connect(c) as cc:
        await fill(ca, b"from-a-", 20)
        await fill(cb, b"from-b-", 20)
        a_id = await cluster_id(ca)
        async with running(pair_config(a, c)):
            for _ in range(300):
                if await checkpoints(cc) and await dump(cc) == await dump(ca):
                    break
                await asyncio.sleep(0.1)
            assert await dump(cc) == await dump(ca)
            run = await etcd_dr(
                "mirror", c.endpoints[0], "--endpoints", b.endpoints[0], "--once", "--take-over"
            )
            assert_refused(run, a_id, "still running", "stop it first")
            assert await dump(cc) == await dump(ca)
            assert [f"{k.source_cluster_id:x}" for k in await checkpoints(cc)] == [a_id]
