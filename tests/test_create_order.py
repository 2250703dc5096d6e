"""Locks and leaders survive a failover (issue 18): the standby keeps the source's create order of leased
keys (and of keys under --ordered-prefix), on real etcd with real `etcdctl elect` and `etcdctl lock`.

etcd's concurrency recipes rank the keys under one prefix by create revision: the lowest leads or holds
the lock, a waiter waits for every lower one to go. After the initial copy, a grouped replay (the mirror
behind), a re-sync forced by compaction, a failover and a failback, the keys under each prefix must rank
on the standby as on the source: `etcdctl elect -l` names the same leader on both sites, and a client
campaigning again on the promoted standby with its session's key (same lease ID) elects the old leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from harness.mirroring import connect, dump, pair_config, until

from etcd_dr.etcd import Compare, CompareResult, EtcdClient, Get, Put, prefix_range_end
from etcd_dr.failover.config import MoveConfig
from etcd_dr.failover.failback import failback
from etcd_dr.failover.failover import failover
from etcd_dr.failover.reorder import recreate_in_order
from etcd_dr.failover.sites import reversed_pair
from etcd_dr.local.cluster import EtcdCluster, _child_env
from etcd_dr.mirror import Mirror
from etcd_dr.mirror.order import OrderedKey, OrderRule, as_data, joins, plan
from etcd_dr.state.layout import StateLayout
from etcd_dr.state.records import OrderJournal
from etcd_dr.status import status as mirror_status
from etcd_dr.verify import verify

Factory = Callable[..., EtcdCluster]
ELECTION = b"leader-election/"  # `etcdctl elect leader-election`: keys leader-election/<lease hex>
LOCK = b"jobs-lock/"
ORDERED = b"/queue/"  # unleased keys, ordered by --ordered-prefix
STATE = b"/etcd-dr/"


# ---- the plan, without etcd -----------------------------------------------------------------------


def _k(key: bytes, create: int, dest: int = 0, differs: bool = True) -> OrderedKey:
    return OrderedKey(key, b"v", 7, create, dest, differs)


def test_plan_layers_siblings_by_source_create_revision_and_leaves_lone_keys_alone() -> None:
    keys = [
        _k(b"/e/c", 30),
        _k(b"/e/a", 10),
        _k(b"/e/b", 20),
        _k(b"/f/x", 5),
        _k(b"/g/t1", 9),
        _k(b"/g/t2", 9),
    ]
    p = plan(keys)
    # /f/ has one key and /g/ two keys of one source revision: no order to keep, written with the rest.
    assert sorted(k.key for k in p.puts) == [b"/f/x", b"/g/t1", b"/g/t2"]
    assert [[k.key for k in layer] for layer in p.layers] == [[b"/e/a"], [b"/e/b"], [b"/e/c"]]
    assert not p.deletes and p.parents == 1


def test_plan_keeps_what_the_destination_has_in_order_and_recreates_from_the_first_out_of_order() -> None:
    # On the destination: b (dest 4), a (dest 5), c (dest 6); on the source a < b < c; d is new.
    keys = [
        _k(b"/e/a", 10, 5, False),
        _k(b"/e/b", 20, 4, False),
        _k(b"/e/c", 30, 6, True),
        _k(b"/e/d", 40),
    ]
    p = plan(keys)
    assert p.puts == []  # a is kept as it is
    assert p.deletes == [b"/e/b", b"/e/c"]  # out of order: deleted, then created again after a
    assert [[k.key for k in layer] for layer in p.layers] == [[b"/e/b"], [b"/e/c"], [b"/e/d"]]


def test_replay_never_joins_two_revisions_creating_siblings() -> None:
    assert joins({b"/other/k"}, {b"/x/"}, [b"/e/a"])
    assert not joins({b"/e/a"}, {b"/e/"}, [b"/e/b"])  # a sibling created in the group
    assert not joins({b"/e/a"}, set(), [b"/e/a"])  # deleted in the group, created again
    assert OrderRule().ordered(b"/any", 5) and not OrderRule().ordered(b"/q/1", 0)
    assert OrderRule((b"/q/",)).ordered(b"/q/1", 0)


# ---- real etcdctl sessions --------------------------------------------------------------------------


class Sessions:
    """`etcdctl elect` candidates and `etcdctl lock` holders/waiters on a cluster, started one after the
    other (each key created before the next process starts); ended by PID."""

    def __init__(self, cluster: EtcdCluster, client: EtcdClient) -> None:
        self.cluster, self.client = cluster, client
        self.procs: list[subprocess.Popen[str]] = []

    def _start(self, *args: str) -> subprocess.Popen[str]:
        env = _child_env(self.cluster.etcdctl_env())
        proc = subprocess.Popen(
            [str(self.cluster.binaries.etcdctl), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        return proc

    async def _one_more(self, prefix: bytes, *args: str) -> None:
        before = len((await self.client.get_prefix(prefix)).kvs)
        self._start(*args)
        await until(
            lambda: self._count(prefix, before + 1), 30, f"etcdctl {' '.join(args)} to create its key"
        )

    async def _count(self, prefix: bytes, n: int) -> bool:
        return len((await self.client.get_prefix(prefix)).kvs) >= n

    async def candidates(self, n: int, first: int = 0) -> None:
        for i in range(first, first + n):
            await self._one_more(ELECTION, "elect", ELECTION.decode().rstrip("/"), f"candidate-{i}")

    async def lockers(self, n: int) -> None:
        for _ in range(n):
            await self._one_more(LOCK, "lock", LOCK.decode().rstrip("/"))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


@contextlib.contextmanager
def sessions(cluster: EtcdCluster, client: EtcdClient) -> Iterator[Sessions]:
    s = Sessions(cluster, client)
    try:
        yield s
    finally:
        s.close()


def observed_leader(cluster: EtcdCluster) -> str:
    """What `etcdctl elect -l` prints first on `cluster`: the leader's key (it then keeps observing)."""
    proc = subprocess.Popen(
        [str(cluster.binaries.etcdctl), "elect", "-l", ELECTION.decode().rstrip("/")],
        env=_child_env(cluster.etcdctl_env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        return proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def ranked(c: EtcdClient, prefix: bytes) -> list[list[bytes]]:
    """The keys under `prefix` as the recipes rank them: by create revision, ties together."""
    kvs = sorted((await c.get_prefix(prefix)).kvs, key=lambda kv: (kv.create_revision, kv.key))
    return [sorted(kv.key for kv in g) for _, g in groupby(kvs, key=lambda kv: kv.create_revision)]


async def assert_same_order(a: EtcdClient, b: EtcdClient, *prefixes: bytes) -> None:
    for prefix in prefixes:
        want, got = await ranked(a, prefix), await ranked(b, prefix)
        assert len(want) >= 2, f"nothing to compare under {prefix!r}: {want}"
        assert got == want, f"under {prefix!r} the standby ranks {got}, the source {want}"


async def campaign(c: EtcdClient, key: bytes, lease: int) -> bool:
    """concurrency.Election.Campaign with an existing session (our client, the recipe's rules): put the
    key if absent (else keep it and its create revision); it leads when no key under the prefix has a
    lower create revision (else it would wait for them to go)."""
    result = await c.txn(
        [Compare.create(key, CompareResult.EQUAL, 0)], [Put(key, b"again", lease)], [Get(key)]
    )
    mine = await c.get(key)
    assert mine is not None and mine.lease == lease, f"{key!r}: not held by lease {lease:x}"
    assert result.succeeded is False, f"{key!r} was gone: the mirror lost the session's key"
    others = (await c.get_prefix(ELECTION)).kvs
    return not [kv for kv in others if kv.create_revision < mine.create_revision]


async def mirror_once(a: EtcdCluster, b: EtcdCluster, **kw: Any) -> None:
    await asyncio.wait_for(Mirror(pair_config(a, b, once=True, timeout=20, **kw)).run(), 60)


@contextlib.asynccontextmanager
async def clients(a: EtcdCluster, b: EtcdCluster) -> AsyncIterator[tuple[EtcdClient, EtcdClient]]:
    async with connect(a) as ca, connect(b) as cb:
        yield ca, cb


async def queue_keys(c: EtcdClient, names: list[bytes]) -> None:
    for name in names:
        await c.put(ORDERED + name, b"job")


# ---- on real etcd ---------------------------------------------------------------------------------


async def test_copy_keeps_the_order_of_candidates_lock_waiters_and_ordered_prefixes(
    etcd_cluster_factory: Factory,
) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    async with clients(a, b) as (ca, cb):
        with sessions(a, ca) as s:
            await s.candidates(3)
            await s.lockers(3)  # one holder, two waiters
            await queue_keys(ca, [b"3", b"1", b"2"])  # created in another order than the key order
            for i in range(50):  # unordered keys, written the fast way
                await ca.put(b"/plain/%02d" % i, b"x")
            await mirror_once(a, b, ordered_prefixes=(ORDERED,))
            await assert_same_order(ca, cb, ELECTION, LOCK, ORDERED)
            leader = observed_leader(a)
            assert leader.startswith(ELECTION.decode()) and observed_leader(b) == leader


async def test_grouped_replay_keeps_the_order(etcd_cluster_factory: Factory) -> None:
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    async with clients(a, b) as (ca, cb):
        with sessions(a, ca) as s:
            await ca.put(b"/plain/0", b"x")
            await queue_keys(ca, [b"x", b"y"])
            await mirror_once(a, b, ordered_prefixes=(ORDERED,))  # the checkpoint; then the mirror is away
            await s.candidates(3)
            await s.lockers(4)
            # x leaves the queue and comes back (after y, on the source): in one txn the delete and the
            # create would collapse into a put, and x would keep its old place before y.
            await ca.delete_range(ORDERED + b"x")
            await queue_keys(ca, [b"x", b"b", b"a"])
            # Replayed from the checkpoint: many source revisions wait, and would share a txn.
            await mirror_once(a, b, ordered_prefixes=(ORDERED,))
            await assert_same_order(ca, cb, ELECTION, LOCK, ORDERED)
            assert observed_leader(b) == observed_leader(a)


@pytest.mark.parametrize("budget", [60.0, 0.0], ids=["in-layers", "as-data"])
async def test_resync_after_compaction_keeps_and_repairs_the_order(
    etcd_cluster_factory: Factory, budget: float
) -> None:
    """In layers, the re-sync repairs the order at once; as data (no time for layers), the keys are all
    there, x untouched, and the order is right once a promotion's re-creation has run."""
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    async with clients(a, b) as (ca, cb):
        with sessions(a, ca) as s:
            await s.candidates(2)
            await queue_keys(ca, [b"x", b"y"])
            await mirror_once(a, b, ordered_prefixes=(ORDERED,))
            x_before = await cb.get(ORDERED + b"x")
            # While the mirror is away: more candidates; x leaves the queue and comes back after y (the
            # standby has x before y: it must be created again); then the source compacts.
            await s.candidates(2, first=2)
            await ca.delete_range(ORDERED + b"x")
            await queue_keys(ca, [b"z", b"x"])
            head = (await ca.status()).revision
            await ca.compact(head)
            await mirror_once(a, b, ordered_prefixes=(ORDERED,), ordered_copy_time=budget)
            if not budget:
                assert await dump(cb, ORDERED) == await dump(ca, ORDERED)
                assert await dump(cb, ELECTION) == await dump(ca, ELECTION)
                x_now = await cb.get(ORDERED + b"x")
                assert x_now is not None and x_before is not None
                assert x_now.create_revision == x_before.create_revision  # left in place, its order as data
                assert await recreate_in_order(cb, StateLayout(STATE), "site-b") > 0  # what a promotion does
            await assert_same_order(ca, cb, ELECTION, ORDERED)
            assert observed_leader(b) == observed_leader(a)


@pytest.mark.parametrize("budget", [60.0, 0.0], ids=["in-layers", "as-data"])
async def test_failover_and_failback_keep_the_leader(
    etcd_cluster_factory: Factory, tmp_path: Path, budget: float
) -> None:
    """With the default time budget the copies write the siblings in layers; with none they keep the
    order as data, and the failover and the failback's switchover create them again."""
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    cfg = replace(pair_config(a, b), heartbeat_interval=0.2, lock_ttl=2, ordered_copy_time=budget)
    async with clients(a, b) as (ca, cb):
        with sessions(a, ca) as s:
            await s.candidates(3)
            mirror = Mirror(cfg)
            daemon = asyncio.create_task(mirror.run())
            try:
                await until(lambda: mirror.stats.phase == "replay", 30, "the mirror's copy")
                await s.lockers(3)
                await s.candidates(1, first=3)
                head = (await ca.status()).revision
                await until(lambda: mirror.stats.applied_revision >= head, 30, "the mirror to catch up")
                if budget:  # else the first three are tied until the promotion
                    await assert_same_order(ca, cb, ELECTION, LOCK)
                want = {p: await ranked(ca, p) for p in (ELECTION, LOCK)}
                sessions_a = {kv.key: kv.lease for kv in (await ca.get_prefix(ELECTION)).kvs}
                leader = observed_leader(a)
                a.kill(0)
                result = await failover(
                    MoveConfig(pair=cfg, fence="none", revision_margin=1000, probe_timeout=1)
                )
                assert result.epoch == 2
            finally:
                daemon.cancel()
                with contextlib.suppress(BaseException):
                    await daemon
            # On the promoted standby: the same order and leader; a re-campaign of every session elects
            # the old leader only.
            assert {p: await ranked(cb, p) for p in (ELECTION, LOCK)} == want
            assert observed_leader(b) == leader
            leads = {key: await campaign(cb, key, lease) for key, lease in sessions_a.items()}
            assert [k.decode() for k, won in leads.items() if won] == [leader], leads
            # Two new candidates on B, then A comes back and fails back: re-synced from B, in B's order.
            for _ in range(2):
                lease = (await cb.lease_grant(60)).id
                await cb.put(ELECTION + b"%x" % lease, b"new", lease=lease)
            on_b = await ranked(cb, ELECTION)
            a.restart(0)
            back = MoveConfig(
                pair=reversed_pair(cfg), fence="none", revision_margin=1000, report=tmp_path / "errant.json"
            )
            fb = await failback(back)
            assert fb.switched_back is not None
        async with connect(a) as ca2:
            assert await ranked(ca2, ELECTION) == on_b
            assert observed_leader(a) == leader


def test_layers_the_copy_cannot_afford_keep_their_order_as_data() -> None:
    layers = plan(
        [_k(b"/big/%d" % i, 10 + i) for i in range(3)] + [_k(b"/small/a", 1), _k(b"/small/b", 2)]
    ).layers
    # The copy wrote the first layer in order; the other two become data, per parent, layer by layer.
    assert as_data(layers[1:]) == [(b"/big/", [[b"/big/1"], [b"/big/2"]]), (b"/small/", [[b"/small/b"]])]


async def test_order_kept_as_data_is_recreated_at_the_failover(etcd_cluster_factory: Factory) -> None:
    """Siblings the copy's time budget cannot afford are written tied, their order kept as data on
    the standby; the failover creates them again in that order (with one the replay created after the
    copy after them) before the clients are switched."""
    a, b = etcd_cluster_factory(name="site-a"), etcd_cluster_factory(name="site-b")
    cfg = replace(pair_config(a, b), heartbeat_interval=0.2, lock_ttl=2, ordered_copy_time=0)
    start = StateLayout(STATE).order_records
    records = (start, prefix_range_end(start))
    async with clients(a, b) as (ca, cb):
        with sessions(a, ca) as s:
            await s.candidates(4)
            await s.lockers(3)
            mirror = Mirror(cfg)
            daemon = asyncio.create_task(mirror.run())
            try:
                await until(lambda: mirror.stats.phase == "replay", 30, "the mirror's copy")
                assert (await cb.range(*records, count_only=True)).count == 2  # one per parent
                shown = (await mirror_status(cfg)).lines()
                assert any(line.startswith("create order: 7 leased or ordered keys") for line in shown), shown
                checked = await verify(cfg)
                assert (
                    checked.equal
                    and "7 leased or ordered keys keep the source's create order as data"
                    in (checked.summary())
                ), checked.summary()
                assert await ranked(cb, ELECTION) != await ranked(ca, ELECTION)  # tied on the standby
                await s.candidates(1, first=4)  # replayed after the copy: after every recorded key
                head = (await ca.status()).revision
                await until(lambda: mirror.stats.applied_revision >= head, 30, "the mirror to catch up")
                want = {p: await ranked(ca, p) for p in (ELECTION, LOCK)}
                sessions_a = {kv.key: kv.lease for kv in (await ca.get_prefix(ELECTION)).kvs}
                leader = observed_leader(a)
                a.kill(0)
                await failover(MoveConfig(pair=cfg, fence="none", revision_margin=1000, probe_timeout=1))
            finally:
                daemon.cancel()
                with contextlib.suppress(BaseException):
                    await daemon
            assert {p: await ranked(cb, p) for p in (ELECTION, LOCK)} == want
            assert not (await cb.range(*records, count_only=True)).count  # done: the records go
            assert observed_leader(b) == leader
            leads = {key: await campaign(cb, key, lease) for key, lease in sessions_a.items()}
            assert [k.decode() for k, won in leads.items() if won] == [leader], leads


async def test_an_interrupted_recreation_puts_its_deleted_keys_back(etcd_cluster: EtcdCluster) -> None:
    """A promotion that crashed between deleting a layer and putting it back: its rerun puts the keys
    of the journal back first (with their lease), then removes the journal."""
    async with connect(etcd_cluster) as c:
        lease = (await c.lease_grant(60)).id
        journal = StateLayout(STATE).order_journal
        gone = [(ELECTION + b"%x" % lease, b"cand", lease), (ORDERED + b"j", b"job", 0)]
        await c.put(journal, OrderJournal(gone).encode())
        assert (
            await recreate_in_order(c, StateLayout(STATE), "here") == 0
        )  # no order records: only the journal
        for key, value, kv_lease in gone:
            kv = await c.get(key)
            assert kv is not None and (kv.value, kv.lease) == (value, kv_lease)
        assert await c.get(journal) is None
