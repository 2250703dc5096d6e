"""Only live checkpoints count (issue 17, finding 3), on real etcd: a stale checkpoint left by an earlier
one-off mirror run with another --prefix does not decide a failover's RPO; `etcd-dr checkpoints` lists
the checkpoints with their lock holder and removes a stale one, refusing a live one without --force; a
--prefix without its trailing "/" is warned about."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from harness.clirun import assert_refused, etcd_dr
from harness.mirroring import connect, pair_config, running

from etcd_dr.checkpoints import choose_live
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.state import StateLayout
from etcd_dr.state.records import Checkpoint, HealthRecord, LockHolder
from etcd_dr.state.site import StoredCheckpoint

Factory = Callable[..., EtcdCluster]
STATE = b"/etcd-dr/"
LAYOUT = StateLayout(STATE)
APP = b"/app/"


async def until(cond: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        await asyncio.sleep(0.05)


async def test_failover_rpo_comes_from_the_running_mirror_not_a_stale_checkpoint(
    etcd_cluster_factory: Factory,
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    async with connect(a) as ca, connect(b) as cb:
        for i in range(20):
            await ca.put(APP + b"k%d" % i, b"v")
            await ca.put(b"/apple/k%d" % i, b"v")
        # An earlier one-off run with --prefix /app (no slash) left its checkpoint behind.
        await Mirror(pair_config(a, b, prefix=b"/app", once=True, heartbeat_interval=0)).run()
        a_id = (await ca.status()).cluster_id
        stale_key = LAYOUT.checkpoint(a_id, b"/app", b"/app")
        kv = await cb.get(stale_key)
        assert kv is not None
        stale_rev = Checkpoint.decode(kv.value).revision

        config = pair_config(a, b, prefix=APP, heartbeat_interval=0, lock_ttl=2)
        live_key = LAYOUT.checkpoint(a_id, APP, APP)
        async with running(config) as mirror:
            await until(lambda: mirror.stats.phase == "replay", "the mirror's first copy")
            for i in range(30):
                last = (await ca.put(APP + b"late%d" % i, b"v")).header.revision

            async def live_revision() -> int:
                kv = await cb.get(live_key)
                return Checkpoint.decode(kv.value).revision if kv else 0

            deadline = time.monotonic() + 30
            while await live_revision() < last:
                assert time.monotonic() < deadline, "the running mirror did not apply the writes"
                await asyncio.sleep(0.1)
            assert stale_rev < last

            a.kill(0)  # the primary is lost; the mirror keeps its lock while it retries
            run = await etcd_dr(
                "failover", b.endpoints[0], "--endpoints", a.endpoints[0], "--prefix", "/app/",
                "--no-fence", "--probe-timeout", "1", "--dial-timeout", "1", "--json", timeout=90,
            )  # fmt: skip
        assert run.code == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["rpo_revision"] == last, (result, stale_rev)
        assert len(result["stale_checkpoints"]) == 1 and "'/app'" in result["stale_checkpoints"][0]
        assert "stale mirror checkpoint" in run.stderr


async def test_checkpoints_lists_and_removes_only_what_it_is_asked(etcd_cluster_factory: Factory) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    dest = b.endpoints[0]
    async with connect(a) as ca, connect(b) as cb:
        await ca.put(APP + b"x", b"1")
        await Mirror(pair_config(a, b, prefix=b"/app", once=True, heartbeat_interval=0)).run()
        a_id = (await ca.status()).cluster_id
        stale_key = LAYOUT.checkpoint(a_id, b"/app", b"/app")
        stale_id = stale_key.decode().rsplit("/", 2)
        full_id = f"{stale_id[1]}/{stale_id[2]}"
        await cb.put(LAYOUT.health(a_id, b"/app", b"/app"), HealthRecord(updated=time.time()).encode())
        async with running(pair_config(a, b, prefix=APP, heartbeat_interval=0, lock_ttl=2)) as mirror:
            await until(lambda: mirror.stats.phase == "replay", "the mirror's first copy")
            text = await etcd_dr("checkpoints", dest)
            assert text.code == 0, text.stderr
            lines = [line for line in text.stdout.splitlines() if "cluster" in line]
            assert len(lines) == 2, text.stdout
            stale_line = next(line for line in lines if "'/app' ->" in line)
            live_line = next(line for line in lines if "'/app/' ->" in line)
            assert stale_line.startswith(full_id) and "STALE, lock free" in stale_line
            assert "live, lock held by" in live_line
            assert "1 stale" in text.stdout

            listed = await etcd_dr("checkpoints", dest, "--json")
            assert listed.code == 0, listed.stderr
            doc = {c["source_prefix"]: c for c in json.loads(listed.stdout)["checkpoints"]}
            assert doc["/app"]["state"] == "stale" and doc["/app"]["lock_holder"] is None
            assert doc["/app/"]["state"] == "live" and doc["/app/"]["lock_holder"]
            assert doc["/app"]["id"] == full_id and doc["/app"]["phase"] == "replay"
            assert doc["/app/"]["revision"] >= doc["/app"]["revision"] > 0

            live_id = live_line.split()[0]
            refused = await etcd_dr("checkpoints", dest, "--remove", live_id)
            assert_refused(refused, live_id, "lock is held", "--force")
            assert await cb.get(LAYOUT.checkpoint(a_id, APP, APP)) is not None

            unknown = await etcd_dr("checkpoints", dest, "--remove", "0123456789abcdef")
            assert_refused(unknown, "--remove", "0123456789abcdef")

            # By the digest alone.
            removed = await etcd_dr("checkpoints", dest, "--remove", stale_id[2])
            assert removed.code == 0, removed.stderr
            assert f"removed the mirror checkpoint {full_id}" in removed.stderr + removed.stdout
            assert await cb.get(stale_key) is None
            assert await cb.get(LAYOUT.health(a_id, b"/app", b"/app")) is None
            assert await cb.get(LAYOUT.checkpoint(a_id, APP, APP)) is not None

            after = await etcd_dr("checkpoints", dest, "--json")
            assert [c["source_prefix"] for c in json.loads(after.stdout)["checkpoints"]] == ["/app/"]
            events = await etcd_dr("status", dest, "--endpoints", a.endpoints[0], "--prefix", "/app/")
            assert "checkpoint-removed" in events.stdout, events.stdout
        # A live one (its lock held by a mirror elsewhere) goes only with --force, which says so.
        lease = await cb.lease_grant(300)
        await cb.put(LAYOUT.lock(a_id, APP, APP), b"other-host:1:x", lease=lease.id)
        assert_refused(await etcd_dr("checkpoints", dest, "--remove", live_id), "other-host:1:x")
        forced = await etcd_dr("checkpoints", dest, "--remove", live_id, "--force")
        assert forced.code == 0, forced.stderr
        assert "--force: its mirror (lock held by other-host:1:x) will copy again" in forced.stderr
        assert await cb.get(LAYOUT.checkpoint(a_id, APP, APP)) is None


async def test_prefix_without_trailing_slash_is_warned_about(etcd_cluster_factory: Factory) -> None:
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    run = await etcd_dr("verify", b.endpoints[0], "--endpoints", a.endpoints[0], "--prefix", "/app")
    assert run.code == 0, run.stderr
    assert "--prefix '/app' has no trailing '/'" in run.stderr and "/app/" in run.stderr
    run = await etcd_dr("verify", b.endpoints[0], "--endpoints", a.endpoints[0], "--prefix", "/app/")
    assert run.code == 0, run.stderr
    assert "trailing" not in run.stderr


def test_the_rpo_checkpoint_is_the_running_mirrors() -> None:
    """The choice among one source's checkpoints (pure: no cluster), rule by rule."""

    def info(prefix: bytes, revision: int, updated: float, holder: str | None) -> StoredCheckpoint:
        ck = Checkpoint(1, prefix, prefix, revision, updated=updated)
        key = LAYOUT.checkpoint(1, prefix, prefix)
        return StoredCheckpoint(key, ck.encode(), 1, ck, None if holder is None else LockHolder(holder))

    old_once = info(b"/app", 100, 50.0, None)
    shard_a, shard_b = info(b"/a/", 300, 90.0, "h:1:x"), info(b"/b/", 250, 80.0, "h:2:y")
    own = info(APP, 200, 60.0, None)
    # This --prefix's mirror runs: its checkpoint, whatever else is there.
    own_live = info(APP, 200, 60.0, "h:3:z")
    assert choose_live([old_once, own_live, shard_a], own_live.key).used == [own_live]
    # Another pair's (sharded) mirrors run: theirs, the lowest revision counts for the RPO.
    choice = choose_live([old_once, shard_a, shard_b, own], own.key)
    assert choice.used == [shard_a, shard_b] and choice.ignored == [old_once, own]
    # No lock held: this --prefix's checkpoint; without one, the most recently updated.
    assert choose_live([old_once, own], own.key).used == [own]
    assert choose_live([old_once, own], None).used == [own]
    assert choose_live([own, old_once], LAYOUT.checkpoint(1, b"/x/", b"/x/")).used == [own]
    # An unreadable record is never used (and still listed among the ignored).
    bad = StoredCheckpoint(
        LAYOUT.checkpoint(1, b"/z/", b"/z/"), b"{", 1, None, LockHolder("h:4:w"), "bad json"
    )
    choice = choose_live([bad], None)
    assert choice.used == [] and choice.ignored == [bad]
