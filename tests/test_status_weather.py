"""`etcd-dr status` in every weather (issue 17, finding 2), through the command line on real etcd: a site
that is down gets a DOWN row in our words and the other site is still shown; a stopped mirror with
unapplied writes, two primaries, a problem in the mirror's health record, an old health record, lag
beyond the limit, fencing impossible and stale checkpoints each make it exit 1 with the reason; a
healthy pair exits 0; --json says the same, keeping the fields it had."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from harness.clirun import ERROR_PREFIX, Run, etcd_dr
from harness.mirroring import connect, pair_config, running

from etcd_dr.etcd import EtcdClient
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.state import StateLayout
from etcd_dr.state.events import record_event
from etcd_dr.state.records import HealthRecord, VerifyResult
from etcd_dr.state.roles import PRIMARY, read_role, write_role

Factory = Callable[..., EtcdCluster]
STATE = b"/etcd-dr/"
LAYOUT = StateLayout(STATE)
APP = b"/app/"
# Old fields of `status --json`, kept for the scripts that read them.
OLD_FIELDS = {
    "source", "destination", "checkpoint", "mirror_lock_holder", "applied_revision", "lag_revisions",
    "lag_seconds", "checkpoint_age_seconds", "compaction_headroom_revisions",
}  # fmt: skip


async def status(a: EtcdCluster, b: EtcdCluster, *flags: str) -> Run:
    run = await etcd_dr(
        "status", b.endpoints[0], "--endpoints", a.endpoints[0], "--prefix", "/app/",
        "--dial-timeout", "2", "--command-timeout", "10", *flags,
    )  # fmt: skip
    # Whatever the weather: a report, never an error line, a traceback or the transport's internals.
    assert run.code in (0, 1), f"exit {run.code}:\n{run.stderr}"
    assert ERROR_PREFIX not in run.stderr and "Traceback" not in run.stderr, run.stderr
    for internal in ("ipv4:", "UNKNOWN:", "UNAVAILABLE", "grpc"):
        assert internal not in run.stdout and internal not in run.stderr, (internal, run.stdout, run.stderr)
    return run


def kinds(run: Run) -> set[str]:
    return {p["kind"] for p in json.loads(run.stdout)["problems"]}


async def mirrored_once(a: EtcdCluster, b: EtcdCluster, writes: int = 10) -> int:
    """The source's /app/ copied once into b (the mirror then stops); returns the source's id."""
    async with connect(a) as ca:
        for i in range(writes):
            await ca.put(APP + b"k%d" % i, b"v")
        await Mirror(pair_config(a, b, prefix=APP, once=True, heartbeat_interval=0)).run()
        return (await ca.status()).cluster_id


async def hold_lock(cb: EtcdClient, source_id: int) -> None:
    """The mirror lock held as a running mirror holds it (no mirror process that would rewrite the
    records this test writes by hand)."""
    lease = await cb.lease_grant(300)
    await cb.put(LAYOUT.lock(source_id, APP, APP), b"mirror-host:4242:test", lease=lease.id)


async def test_healthy_pair_exits_0_and_json_keeps_its_fields(etcd_cluster_factory: Factory) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    await mirrored_once(a, b)
    async with running(pair_config(a, b, prefix=APP, heartbeat_interval=0.5, lock_ttl=2)) as mirror:
        deadline = time.monotonic() + 30
        while mirror.stats.phase != "replay":
            assert time.monotonic() < deadline, "the mirror does not run"
            await asyncio.sleep(0.05)
        text = await status(a, b, "--no-fence")
        assert text.code == 0, text.stdout
        assert text.stdout.splitlines()[-1] == "healthy", text.stdout
        assert "mirror lock: held by" in text.stdout and "last move: none recorded" in text.stdout
        doc = await status(a, b, "--no-fence", "--json")
        assert doc.code == 0
        d = json.loads(doc.stdout)
        assert set(d) >= OLD_FIELDS, OLD_FIELDS - set(d)
        assert d["healthy"] is True and d["problems"] == [] and d["mirror_lock_holder"]
        assert d["source"]["down"] is None and d["destination"]["auth_enabled"] is False
        # The same pair without a way to fence (auth off, no hook): a move could not fence: degraded.
        unfenced = await status(a, b, "--json")
        assert unfenced.code == 1 and kinds(unfenced) == {"fencing-impossible"}, unfenced.stdout
        hooked = await status(a, b, "--fence-hook", "/bin/true")
        assert hooked.code == 0, hooked.stdout


async def test_each_site_down_still_shows_the_other(etcd_cluster_factory: Factory) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    a_id = await mirrored_once(a, b)
    async with connect(b) as cb:
        await hold_lock(cb, a_id)
        b_id = (await cb.status()).cluster_id

    a.pause(0)  # hung: it accepts connections and answers nothing
    try:
        run = await status(a, b, "--no-fence")
    finally:
        a.resume(0)
    assert run.code == 1 and f"source: {a.endpoints[0]} DOWN (" in run.stdout, run.stdout
    assert f"destination: cluster {b_id:x}" in run.stdout, run.stdout

    a.kill(0)
    run = await status(a, b, "--no-fence")
    assert run.code == 1
    out = run.stdout
    assert f"source: {a.endpoints[0]} DOWN (connection refused" in out, out
    assert f"destination: cluster {b_id:x}" in out and "role: standby" in out, out
    assert "lag unknown (the source does not answer)" in out and "mirror lock: held by" in out, out
    doc = json.loads((await status(a, b, "--no-fence", "--json")).stdout)
    assert doc["source"]["down"].startswith("connection refused")
    assert doc["destination"]["down"] is None and doc["destination"]["cluster_id"] == f"{b_id:x}"
    assert doc["applied_revision"] is not None and doc["lag_revisions"] is None
    assert {p["kind"] for p in doc["problems"]} == {"site-down"}, doc["problems"]

    a.restart(0)
    b.kill(0)
    run = await status(a, b, "--no-fence")
    assert run.code == 1
    out = run.stdout
    assert f"destination: {b.endpoints[0]} DOWN (connection refused" in out, out
    assert f"source: cluster {a_id:x}" in out and "role: primary" in out, out
    assert "mirror: unknown (the destination does not answer)" in out, out
    assert "site-down: the destination" in out, out


async def test_stopped_mirror_with_unapplied_writes_and_lag_limit(etcd_cluster_factory: Factory) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    await mirrored_once(a, b)
    async with connect(a) as ca:
        for i in range(30):
            await ca.put(APP + b"later%d" % i, b"v")
    run = await status(a, b, "--no-fence")
    assert run.code == 1, run.stdout
    assert "mirror lock: free (no mirror running)" in run.stdout
    assert "mirror-stopped: no mirror is running: its lock is free; 30 source revisions are not applied" in (
        run.stdout
    ), run.stdout
    doc = await status(a, b, "--no-fence", "--json", "--max-lag-revisions", "20")
    d = json.loads(doc.stdout)
    assert d["lag_revisions"] == 30 and d["healthy"] is False
    assert kinds(doc) == {"mirror-stopped", "lag"}, d["problems"]
    assert any("above --max-lag-revisions 20" in p["message"] for p in d["problems"])

    # Without the mirror's --prefix: its pair is named, so the operator knows what to give.
    bare = await etcd_dr("status", b.endpoints[0], "--endpoints", a.endpoints[0], "--no-fence")
    assert bare.code == 1, bare.stderr
    assert "no-checkpoint: no mirror checkpoint for this --prefix" in bare.stdout, bare.stdout
    assert "'/app/' -> '/app/', stale; give their --prefix" in bare.stdout, bare.stdout

    # A checkpoint that cannot be read is exit 2 from every command (DESIGN.md), naming the key and
    # the fix; `checkpoints --remove` still removes it by its id.
    async with connect(a) as ca, connect(b) as cb:
        a_id = (await ca.status()).cluster_id
        key = LAYOUT.checkpoint(a_id, APP, APP)
        await cb.put(key, b"{not json")
    broken = await etcd_dr(
        "status", b.endpoints[0], "--endpoints", a.endpoints[0], "--prefix", "/app/", "--no-fence"
    )
    last = broken.stderr.strip().splitlines()[-1]
    assert broken.code == 2 and last.startswith("etcd-dr: error: the mirror checkpoint "), broken.stderr
    assert key.decode() in last and "etcdctl del" in last, last
    listed = await etcd_dr("checkpoints", b.endpoints[0])
    assert listed.code == 2 and key.decode() in listed.stderr, listed.stdout + listed.stderr


async def test_two_primaries_and_the_last_move(etcd_cluster_factory: Factory) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    a_id = await mirrored_once(a, b)
    async with connect(b) as cb:
        await hold_lock(cb, a_id)
        state = await read_role(cb, LAYOUT)
        assert state.role is not None and not state.role.is_primary
        promoted = state.role.moved(PRIMARY, state.role.epoch + 1, a_id, "failover")
        assert (await write_role(cb, LAYOUT, promoted, state)).succeeded
        await record_event(cb, LAYOUT, "promoted", "failover from a: primary with epoch 2", epoch=2)
        await record_event(cb, LAYOUT, "drill", "failover drill, RTO 41 s")
    run = await status(a, b, "--no-fence")
    assert run.code == 1, run.stdout
    assert "two-primaries: both sites are marked primary" in run.stdout, run.stdout
    assert "last move: " in run.stdout and "promoted: failover from a" in run.stdout, run.stdout
    assert "last drill: " in run.stdout and "failover drill, RTO 41 s" in run.stdout, run.stdout
    d = json.loads((await status(a, b, "--no-fence", "--json")).stdout)
    assert "two-primaries" in {p["kind"] for p in d["problems"]}
    assert d["last_move"]["kind"] == "promoted" and d["last_move"]["cluster"] == "destination"
    assert d["last_drill"]["message"] == "failover drill, RTO 41 s"


async def test_health_record_problems_and_age_and_stale_checkpoints(etcd_cluster_factory: Factory) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    a_id = await mirrored_once(a, b)
    hkey = LAYOUT.health(a_id, APP, APP)
    now = time.time()
    verify = VerifyResult(
        at=now - 3600, seconds=1.5, equal=True, keys=10, differences=0, source_revision=11, dest_revision=12
    )
    async with connect(b) as cb:
        await hold_lock(cb, a_id)
        await cb.put(hkey, HealthRecord(updated=now, verify=verify).encode())
        healthy = await status(a, b, "--no-fence")
        assert healthy.code == 0, healthy.stdout
        assert "mirror health: no problem known" in healthy.stdout
        assert "last periodic verify: equal, 10 keys, 60 min ago, took 1.5 s" in healthy.stdout, (
            healthy.stdout
        )

        lost = "destination lease 1a2b lost while the source's lives: 3 keys missing"
        record = HealthRecord(
            updated=time.time(),
            problems={"lease-lost": lost},
            verify=VerifyResult(now - 5, 2.0, False, 10, 3, 11, 12),
            foreign_writes=2,
            last_foreign_key="/app/k3",
            last_foreign_revision=40,
        )
        await cb.put(hkey, record.encode())
        run = await status(a, b, "--no-fence")
        assert run.code == 1, run.stdout
        assert f"health:lease-lost: the mirror reports: {lost}" in run.stdout, run.stdout
        assert "verify: the last periodic verify found 3 differences" in run.stdout
        assert "foreign writes on the standby: 2 (last '/app/k3'" in run.stdout
        d = json.loads((await status(a, b, "--no-fence", "--json")).stdout)
        assert d["health"]["problems"] == {"lease-lost": lost} and d["health"]["foreign_writes"] == 2
        assert d["health"]["verify"]["equal"] is False and d["health"]["verify"]["seconds"] == 2.0

        # A record nobody rewrites any more: said, and degraded.
        await cb.put(hkey, HealthRecord(updated=time.time() - 600, verify=verify).encode())
        old = await status(a, b, "--no-fence", "--json")
        assert kinds(old) == {"health-old"}, old.stdout

        await cb.put(hkey, HealthRecord(updated=time.time(), verify=verify).encode())
    # A checkpoint left by another pair whose mirror is not running: stale, named.
    await Mirror(pair_config(a, b, prefix=b"/app", once=True, heartbeat_interval=0)).run()
    run = await status(a, b, "--no-fence")
    assert run.code == 1, run.stdout
    assert "stale-checkpoints: 1 stale checkpoint(s)" in run.stdout and "etcd-dr checkpoints" in run.stdout
    assert "stale checkpoint: " in run.stdout and "'/app' -> '/app'" in run.stdout, run.stdout
    d = json.loads((await status(a, b, "--no-fence", "--json")).stdout)
    assert len(d["stale_checkpoints"]) == 1 and len(d["checkpoints"]) == 2
