"""The record of every move on real clusters: a drill, a switchover, a failover and a failback each
leave a record (who, when, from, to, RPO, duration, result, reason) on the sites that survive them;
`etcd-dr history` lists them newest first from both sites merged (a move recorded on both once), and
from the one site that answers when the other is gone; `status` shows the last move and the last
drill."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.clirun import etcd_dr

from etcd_dr.config import MirrorConfig
from etcd_dr.drill import DrillConfig, drill
from etcd_dr.etcd import ClientConfig, EtcdClient
from etcd_dr.failover.config import MoveConfig
from etcd_dr.failover.failback import failback
from etcd_dr.failover.failover import failover
from etcd_dr.failover.sites import reversed_pair
from etcd_dr.failover.switchover import switchover
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.state.events import who

APP = b"/app/"


def pair(src: EtcdCluster, dst: EtcdCluster) -> MirrorConfig:
    return MirrorConfig(
        # A generous dial timeout: the test machine may be busy.
        source=ClientConfig.create(src.endpoints, dial_timeout=15.0),
        dest=ClientConfig.create(dst.endpoints, dial_timeout=15.0),
        prefix=APP,
        once=True,
        heartbeat_interval=0.0,
    )


def cli_args(a: EtcdCluster, b: EtcdCluster) -> list[str]:
    sites = [",".join(b.endpoints), "--endpoints", ",".join(a.endpoints), "--dial-timeout", "15s"]
    return [*sites, "--prefix", "/app/"]


async def test_history_after_a_drill_switchover_failover_and_failback(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    ab = pair(a, b)
    async with EtcdClient(ab.source) as ca:
        for i in range(10):
            await ca.put(APP + b"k%d" % i, b"v")
    await Mirror(ab).run()

    def move(cfg: MirrorConfig, reason: str, **kw: Any) -> MoveConfig:
        return MoveConfig(pair=cfg, fence="none", revision_margin=100, reason=reason, probe_timeout=0.5, **kw)

    rehearsed = await drill(DrillConfig(move(ab, "quarterly drill")), lambda line: None)
    assert rehearsed.passed and rehearsed.recorded
    await switchover(move(ab, "planned: site A maintenance"))  # b primary, a its standby
    ba = reversed_pair(ab)
    await Mirror(replace(ba, once=True)).run()
    b.kill(0)  # site B is lost: failover to a
    await failover(move(ba, "site B lost"))
    b.restart(0)  # site B is back: failback, staying on a
    await failback(move(replace(ab, once=False), "site B back", stay=True, report=tmp_path / "errant.json"))

    run = await etcd_dr("history", *cli_args(a, b), "--json")
    assert run.code == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["unreachable"] == []
    kinds = [m["kind"] for m in found["moves"]]
    assert kinds == ["failback", "failover", "switchover", "drill"]
    times = [m["time"] for m in found["moves"]]
    assert times == sorted(times, reverse=True)
    user, host = who()
    by_kind = {m["kind"]: m for m in found["moves"]}
    for kind, reason in [
        ("drill", "quarterly drill"),
        ("switchover", "planned: site A maintenance"),
        ("failover", "site B lost"),
        ("failback", "site B back"),
    ]:
        record = by_kind[kind]["move"]
        assert record["reason"] == reason and record["result"] == "ok", record
        assert record["user"] == user and record["host"] == host and record["forced"] is False
        assert record["duration"] is not None and record["duration"] >= 0
    a_text, b_text = ",".join(a.endpoints), ",".join(b.endpoints)
    # Where each was written: both sites for the switchover and failback, the promoted one for the
    # failover (its old primary was gone), the standby for the drill.
    assert sorted(by_kind["switchover"]["sites"]) == sorted([a_text, b_text])
    assert sorted(by_kind["failback"]["sites"]) == sorted([a_text, b_text])
    assert by_kind["failover"]["sites"] == [a_text]
    assert by_kind["drill"]["sites"] == [b_text]
    assert by_kind["switchover"]["move"]["target"].startswith(b_text)
    assert by_kind["failover"]["move"]["target"].startswith(a_text)
    assert by_kind["failover"]["move"]["rpo_revision"] > 0

    run = await etcd_dr("history", *cli_args(a, b))
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 4 and "failback:" in lines[0] and "reason: site B back" in lines[0]
    assert "drill:" in lines[3] and f"by {user}@{host}" in lines[3]

    run = await etcd_dr("status", *cli_args(a, b))
    assert "last move: " in run.stdout and "failback:" in run.stdout.split("last move: ")[1].splitlines()[0]
    assert "drill:" in run.stdout.split("last drill: ")[1].splitlines()[0]

    b.stop_member(0)  # one site gone: the other's records still listed, and said so
    run = await etcd_dr("history", *cli_args(a, b), "--json")
    assert run.code == 0, run.stderr
    found = json.loads(run.stdout)
    assert len(found["unreachable"]) == 1 and b_text in found["unreachable"][0]
    assert [m["kind"] for m in found["moves"]] == ["failback", "failover", "switchover"]
