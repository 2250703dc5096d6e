"""EtcdClient against real etcd (every version the suite found): KV, txn, compaction, leases, cluster
status, endpoint failover, TLS and auth.

Clusters are module-scoped where tests do not disturb each other (each test has its own key prefix);
a test that kills or restarts a member brings it back before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from etcd_dr.etcd import (
    AuthError,
    AuthNotEnabled,
    ClientConfig,
    CompactedError,
    Compare,
    CompareResult,
    CompareTarget,
    Delete,
    EtcdClient,
    EtcdError,
    FutureRevisionError,
    Get,
    InvalidRequest,
    KeyValue,
    LeaseExists,
    LeaseNotFound,
    Permission,
    PermissionDenied,
    Put,
    RangeResult,
    RequestTooLargeError,
    SortOrder,
    SortTarget,
    Status,
    TLSConfigError,
    TLSError,
    TooManyOpsError,
    TransientError,
    TxnBatch,
    Unavailable,
    parse_endpoint,
    prefix_range_end,
)
from etcd_dr.local.binaries import EtcdBinaries
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import ClusterTLS, make_cluster_tls

EQ = CompareResult.EQUAL
NE = CompareResult.NOT_EQUAL
GT = CompareResult.GREATER
LT = CompareResult.LESS

ROOT_AUTH = ("root", "rootpw")


# ---- clusters and clients ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain1(etcd_bin: EtcdBinaries) -> Iterator[EtcdCluster]:
    with EtcdCluster(etcd_bin, 1, name="kv") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def plain3(etcd_bin: EtcdBinaries) -> Iterator[EtcdCluster]:
    with EtcdCluster(etcd_bin, 3, name="trio") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClusterTLS, ClusterTLS]:
    """The TLS cluster's material, and a second set with a CA of its own (that the cluster does not trust)."""
    base = tmp_path_factory.mktemp("tls")
    return make_cluster_tls(base / "ours", name="ours"), make_cluster_tls(base / "theirs", name="theirs")


@pytest.fixture(scope="module")
def tls1(etcd_bin: EtcdBinaries, tls_material: tuple[ClusterTLS, ClusterTLS]) -> Iterator[EtcdCluster]:
    with EtcdCluster(etcd_bin, 1, name="secure", tls=tls_material[0]) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def auth1(etcd_bin: EtcdBinaries) -> Iterator[EtcdCluster]:
    with EtcdCluster(etcd_bin, 1, name="auth", auth=ROOT_AUTH) as cluster:
        # A user who may only read under /pub/.
        cluster.etcdctl("user", "add", "alice:alicepw")
        cluster.etcdctl("role", "add", "reader")
        cluster.etcdctl("role", "grant-permission", "reader", "read", "/pub/", "--prefix=true")
        cluster.etcdctl("user", "grant-role", "alice", "reader")
        yield cluster


@contextlib.asynccontextmanager
async def connect(endpoints: str | list[str], **kwargs: Any) -> AsyncIterator[EtcdClient]:
    kwargs.setdefault("request_timeout", 5.0)
    kwargs.setdefault("dial_timeout", 2.0)
    client = EtcdClient(ClientConfig.create(endpoints, **kwargs))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def client(plain1: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with connect(plain1.endpoints) as c:
        yield c


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> bytes:
    """A key prefix of the test's own, so that tests can share a cluster."""
    return f"/test/{request.node.originalname}/".encode()


def values(kvs: list[KeyValue]) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in kvs}


# ---- KV ------------------------------------------------------------------------------------------


async def test_put_get_and_prev_kv(client: EtcdClient, prefix: bytes) -> None:
    k = prefix + b"k"
    assert await client.get(k) is None
    first = await client.put(k, b"v1")
    assert first.prev_kv is None
    assert first.header.revision > 0 and first.header.cluster_id != 0 and first.header.member_id != 0
    second = await client.put(k, b"v2", prev_kv=True)
    assert second.header.revision == first.header.revision + 1
    assert second.prev_kv is not None
    assert (second.prev_kv.value, second.prev_kv.mod_revision, second.prev_kv.version) == (
        b"v1",
        first.header.revision,
        1,
    )
    kv = await client.get(k)
    assert kv == KeyValue(
        key=k,
        value=b"v2",
        create_revision=first.header.revision,
        mod_revision=second.header.revision,
        version=2,
        lease=0,
    )
    # Keys and values are bytes, not text: every byte value survives.
    binary = prefix + b"\x00\xff\xfe"
    await client.put(binary, bytes(range(256)))
    got = await client.get(binary)
    assert got is not None and got.value == bytes(range(256))


async def test_range_at_revision(client: EtcdClient, prefix: bytes) -> None:
    k = prefix + b"k"
    revs = [(await client.put(k, b"v%d" % i)).header.revision for i in range(4)]
    await client.delete_range(k)
    for i, rev in enumerate(revs):
        kv = await client.get(k, revision=rev)
        assert kv is not None
        assert (kv.value, kv.mod_revision, kv.version) == (b"v%d" % i, rev, i + 1)
    assert await client.get(k) is None
    assert await client.get(k, revision=revs[0] - 1) is None
    r = await client.get_prefix(prefix, revision=revs[1])
    assert values(r.kvs) == {k: b"v1"}
    # The header of a read at an old revision still tells the current revision.
    assert r.header.revision > revs[-1]


async def test_range_limit_more_and_count(client: EtcdClient, prefix: bytes) -> None:
    for i in range(10):
        await client.put(prefix + b"%02d" % i, b"x")
    r = await client.range(prefix, prefix_range_end(prefix), limit=3)
    assert [kv.key for kv in r.kvs] == [prefix + b"00", prefix + b"01", prefix + b"02"]
    assert r.more is True
    assert r.count == 10
    r = await client.range(prefix, prefix_range_end(prefix), limit=10)
    assert len(r.kvs) == 10 and r.more is False
    r = await client.range(prefix, prefix_range_end(prefix))
    assert len(r.kvs) == 10 and r.more is False and r.count == 10
    # A plain [key, range_end) interval.
    r = await client.range(prefix + b"03", prefix + b"06")
    assert [kv.key for kv in r.kvs] == [prefix + b"03", prefix + b"04", prefix + b"05"]


async def test_range_sort(client: EtcdClient, prefix: bytes) -> None:
    a, b, c = prefix + b"a", prefix + b"b", prefix + b"c"
    # create order b, a, c; modification order b, c, a; versions a=2; values z, x, y
    await client.put(b, b"x")
    await client.put(a, b"0")
    await client.put(c, b"y")
    await client.put(a, b"z")
    end = prefix_range_end(prefix)

    async def keys(order: SortOrder, target: SortTarget) -> list[bytes]:
        r = await client.range(prefix, end, sort_order=order, sort_target=target)
        return [kv.key for kv in r.kvs]

    assert await keys(SortOrder.ASCEND, SortTarget.KEY) == [a, b, c]
    assert await keys(SortOrder.DESCEND, SortTarget.KEY) == [c, b, a]
    assert await keys(SortOrder.ASCEND, SortTarget.CREATE) == [b, a, c]
    assert await keys(SortOrder.DESCEND, SortTarget.CREATE) == [c, a, b]
    assert await keys(SortOrder.ASCEND, SortTarget.MOD) == [b, c, a]
    assert await keys(SortOrder.DESCEND, SortTarget.MOD) == [a, c, b]
    assert await keys(SortOrder.ASCEND, SortTarget.VALUE) == [b, c, a]
    assert (await keys(SortOrder.DESCEND, SortTarget.VERSION))[0] == a
    # With a limit, etcd sorts before it cuts.
    r = await client.range(prefix, end, limit=1, sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD)
    assert [kv.key for kv in r.kvs] == [a] and r.more


async def test_range_keys_only_count_only_and_mod_revision_filters(client: EtcdClient, prefix: bytes) -> None:
    revs = [(await client.put(prefix + b"%d" % i, b"value-%d" % i)).header.revision for i in range(5)]
    end = prefix_range_end(prefix)
    r = await client.range(prefix, end, keys_only=True)
    assert [kv.key for kv in r.kvs] == [prefix + b"%d" % i for i in range(5)]
    assert all(kv.value == b"" for kv in r.kvs)
    assert [kv.mod_revision for kv in r.kvs] == revs  # metadata is still there
    r = await client.range(prefix, end, count_only=True)
    assert r.kvs == [] and r.count == 5
    r = await client.range(prefix, end, min_mod_revision=revs[2])
    assert [kv.key for kv in r.kvs] == [prefix + b"2", prefix + b"3", prefix + b"4"]
    r = await client.range(prefix, end, max_mod_revision=revs[1])
    assert [kv.key for kv in r.kvs] == [prefix + b"0", prefix + b"1"]


async def test_range_pages_one_revision_while_another_task_writes(client: EtcdClient, prefix: bytes) -> None:
    n, page_size = 1000, 64
    for start in range(0, n, 100):
        await client.txn([], [Put(prefix + b"%05d" % i, b"orig-%d" % i) for i in range(start, start + 100)])
    expected = {prefix + b"%05d" % i: b"orig-%d" % i for i in range(n)}

    # The writer runs as a separate task, released after each page: it overwrites keys already read
    # and keys still to come, adds keys between existing ones (before and after the cursor) and
    # deletes keys not yet read.
    page_done = asyncio.Queue[int]()
    wrote = asyncio.Queue[int]()

    async def writer() -> None:
        while (page := await page_done.get()) >= 0:
            ops: dict[bytes, Put | Delete] = {}  # one op per key: etcd refuses duplicates in a txn
            for i in (page * page_size, page * page_size + 5, min(n - 1, (page + 2) * page_size + 1)):
                ops[prefix + b"%05d" % i] = Put(prefix + b"%05d" % i, b"new-%d" % page)
            for k in (
                prefix + b"%05d-inserted-%d" % ((page + 1) * page_size + 3, page),
                prefix + b"%05d-inserted-%d" % (page * page_size, page),
                prefix + b"99999-%d" % page,
            ):
                ops[k] = Put(k, b"new")
            doomed = prefix + b"%05d" % ((page + 3) * page_size + 7)
            if (page + 3) * page_size + 7 < n:
                ops.setdefault(doomed, Delete(doomed))
            r = await client.txn([], list(ops.values()))
            await wrote.put(r.header.revision)

    task = asyncio.create_task(writer())
    pages: list[RangeResult] = []
    try:
        async for page in client.range_pages(prefix, prefix_range_end(prefix), page_size=page_size):
            pages.append(page)
            await page_done.put(len(pages) - 1)
            await wrote.get()
    finally:
        await page_done.put(-1)
        await task

    assert len(pages) == -(-n // page_size)
    paging_revision = pages[0].header.revision
    assert {p.header.revision for p in pages} == {paging_revision}
    seen_keys = [kv.key for p in pages for kv in p.kvs]
    assert seen_keys == sorted(seen_keys), "pages must come in key order"
    assert len(seen_keys) == len(set(seen_keys)), "a key was delivered twice"
    assert values([kv for p in pages for kv in p.kvs]) == expected
    assert all(kv.mod_revision <= paging_revision for p in pages for kv in p.kvs)
    assert all(len(p.kvs) == page_size for p in pages[:-1])
    # The writes really happened meanwhile: the current state differs from what was paged.
    now = await client.get_prefix(prefix)
    assert now.header.revision >= paging_revision + len(pages) - 1
    assert values(now.kvs) != expected


async def test_range_pages_raw_matches_range_pages(client: EtcdClient, prefix: bytes) -> None:
    await client.txn([], [Put(prefix + b"%03d" % i, b"v%d" % i, 0) for i in range(40)])
    end = prefix_range_end(prefix)
    converted = [p async for p in client.range_pages(prefix, end, page_size=15)]
    raw = [p async for p in client.range_pages_raw(prefix, end, page_size=15)]
    assert [len(p.kvs) for p in raw] == [len(p.kvs) for p in converted] == [15, 15, 10]
    assert [p.revision for p in raw] == [p.header.revision for p in converted]
    assert [p.more for p in raw] == [p.more for p in converted]
    fields = ("key", "value", "create_revision", "mod_revision", "version", "lease")
    assert [tuple(getattr(kv, f) for f in fields) for p in raw for kv in p.kvs] == [
        tuple(getattr(kv, f) for f in fields) for p in converted for kv in p.kvs
    ]


async def test_txn_batch(client: EtcdClient, prefix: bytes) -> None:
    await client.put(prefix + b"gone", b"x")
    batch = TxnBatch([Put(prefix + b"a", b"1"), Delete(prefix + b"gone")])
    batch.put(prefix + b"b", b"22")
    batch.delete(prefix + b"c", prefix + b"d")
    assert len(batch) == 4
    assert batch.nbytes == 4 * len(prefix) + len(b"a1" + b"gone" + b"b22" + b"c")
    # A failed guard writes nothing.
    no = [Compare.version(prefix + b"gone", CompareResult.EQUAL, 0)]
    ok, _ = await client.txn_batch(no, batch)
    assert not ok and (await client.get(prefix + b"a")) is None
    # The same batch with other guards (they replace the earlier ones).
    ok, rev = await client.txn_batch([Compare.version(prefix + b"gone", CompareResult.EQUAL, 1)], batch)
    assert ok
    got = await client.get_prefix(prefix)
    assert got.header.revision == rev
    assert [(kv.key, kv.value) for kv in got.kvs] == [(prefix + b"a", b"1"), (prefix + b"b", b"22")]
    with pytest.raises(ValueError):
        TxnBatch([Put(prefix + b"a", b"1", prev_kv=True)])


async def test_range_pages_explicit_revision_and_keys_only(client: EtcdClient, prefix: bytes) -> None:
    r0 = (await client.txn([], [Put(prefix + b"%03d" % i, b"a") for i in range(25)])).header.revision
    await client.txn([], [Put(prefix + b"%03d" % i, b"b") for i in range(25, 50)])
    pages = [
        p
        async for p in client.range_pages(
            prefix, prefix_range_end(prefix), revision=r0, page_size=10, keys_only=True
        )
    ]
    assert [len(p.kvs) for p in pages] == [10, 10, 5]
    assert [kv.key for p in pages for kv in p.kvs] == [prefix + b"%03d" % i for i in range(25)]
    assert all(p.header.revision == r0 for p in pages)
    assert all(kv.value == b"" for p in pages for kv in p.kvs)
    # An empty range gives one empty page.
    empty = [
        p async for p in client.range_pages(prefix + b"nothing/", prefix_range_end(prefix + b"nothing/"))
    ]
    assert len(empty) == 1 and empty[0].kvs == [] and not empty[0].more
    with pytest.raises(ValueError):
        async for _ in client.range_pages(prefix, page_size=0):
            pass


async def test_delete_range_and_prefix(client: EtcdClient, prefix: bytes) -> None:
    for k in (b"a/1", b"a/2", b"a/3", b"ab", b"b"):
        await client.put(prefix + k, k)
    d = await client.delete_prefix(prefix + b"a/")
    assert d.deleted == 3 and d.prev_kvs == []
    assert sorted(values((await client.get_prefix(prefix)).kvs)) == [prefix + b"ab", prefix + b"b"]
    d = await client.delete_range(prefix + b"ab", prev_kv=True)
    assert d.deleted == 1
    assert [(kv.key, kv.value) for kv in d.prev_kvs] == [(prefix + b"ab", b"ab")]
    before = d.header.revision
    d = await client.delete_range(prefix + b"missing")
    assert d.deleted == 0
    assert d.header.revision == before, "deleting nothing makes no revision"
    d = await client.delete_range(prefix, prefix_range_end(prefix), prev_kv=True)
    assert d.deleted == 1 and d.prev_kvs[0].key == prefix + b"b"
    assert (await client.get_prefix(prefix)).kvs == []


async def test_txn_compares_and_branches(client: EtcdClient, prefix: bytes) -> None:
    k, other, gone, fail = prefix + b"k", prefix + b"other", prefix + b"gone", prefix + b"fail"
    created = (await client.put(k, b"v1")).header.revision
    modified = (await client.put(k, b"v2")).header.revision
    await client.put(gone, b"bye")

    ok = await client.txn(
        [
            Compare.value_(k, EQ, b"v2"),
            Compare.version(k, EQ, 2),
            Compare.create(k, EQ, created),
            Compare.mod(k, EQ, modified),
            Compare.value_(k, GT, b"v1"),
            Compare.value_(k, LT, b"v3"),
            Compare.version(k, NE, 1),
            Compare.mod(k, GT, created),
            Compare.create(k, LT, modified),
        ],
        [Put(k, b"v3", prev_kv=True), Get(k), Put(other, b"o"), Delete(gone, prev_kv=True)],
        [Put(fail, b"x")],
    )
    assert ok.succeeded is True
    rev = ok.header.revision
    assert rev == modified + 2  # the put of `gone`, then this txn: one revision for all its writes
    assert len(ok.responses) == 4
    put0, get1, put2, del3 = ok.responses
    assert put0.put is not None and put0.range is None and put0.delete is None
    assert put0.put.prev_kv is not None and put0.put.prev_kv.value == b"v2"
    assert get1.range is not None and put2.put is not None and del3.delete is not None
    # A read inside the txn sees the txn's earlier writes.
    assert [(kv.value, kv.mod_revision, kv.version) for kv in get1.range.kvs] == [(b"v3", rev, 3)]
    assert del3.delete.deleted == 1 and [kv.value for kv in del3.delete.prev_kvs] == [b"bye"]
    assert await client.get(fail) is None
    assert (await client.get(other)) is not None
    assert await client.get(gone) is None

    # Every kind of compare can fail, and then only the failure branch runs.
    failing = [
        Compare.value_(k, EQ, b"v2"),
        Compare.value_(k, NE, b"v3"),
        Compare.version(k, EQ, 2),
        Compare.version(k, GT, 3),
        Compare.create(k, NE, created),
        Compare.create(k, LT, created),
        Compare.mod(k, EQ, modified),
        Compare.mod(k, LT, rev),
    ]
    for cmp in failing:
        before = (await client.get(k)) or pytest.fail("key vanished")
        res = await client.txn([cmp], [Put(k, b"never")], [Get(k), Put(fail, b"%d" % cmp.target)])
        assert res.succeeded is False, cmp
        assert len(res.responses) == 2
        r0 = res.responses[0].range
        assert r0 is not None and r0.kvs == [before]
        assert (await client.get(k)) is not None and (await client.get(k)).value == b"v3"  # type: ignore[union-attr]
        fv = await client.get(fail)
        assert fv is not None and fv.value == b"%d" % cmp.target
    # One failing compare among passing ones fails the txn.
    res = await client.txn([Compare.value_(k, EQ, b"v3"), Compare.version(k, EQ, 99)], [Put(k, b"no")])
    assert res.succeeded is False and res.responses == []

    # Create-if-absent: a missing key has create revision 0.
    new = prefix + b"new"
    res = await client.txn([Compare.create(new, EQ, 0)], [Put(new, b"first")], [Get(new)])
    assert res.succeeded
    res = await client.txn([Compare.create(new, EQ, 0)], [Put(new, b"second")], [Get(new)])
    assert not res.succeeded
    r0 = res.responses[0].range
    assert r0 is not None and r0.kvs[0].value == b"first"

    # A compare over a range: no key under the prefix was modified after `rev`.
    guard = Compare(prefix, CompareTarget.MOD, LT, rev + 100, range_end=prefix_range_end(prefix))
    assert (await client.txn([guard], [])).succeeded
    guard = Compare(prefix, CompareTarget.MOD, LT, rev, range_end=prefix_range_end(prefix))
    assert not (await client.txn([guard], [])).succeeded

    # A txn that writes nothing makes no revision.
    before_rev = (await client.get_prefix(prefix)).header.revision
    res = await client.txn([], [Get(k, count_only=True)])
    assert res.header.revision == before_rev
    r0 = res.responses[0].range
    assert r0 is not None and r0.count == 1 and r0.kvs == []

    # A VALUE compare takes bytes, the others ints: a mistake is caught before anything is sent.
    with pytest.raises(TypeError):
        await client.txn([Compare.value_(k, EQ, 3)], [])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await client.txn([Compare.version(k, EQ, b"3")], [])  # type: ignore[arg-type]


async def test_txn_invalid_requests(client: EtcdClient, prefix: bytes) -> None:
    ok = await client.txn([], [Put(prefix + b"%03d" % i, b"v") for i in range(128)])
    assert ok.succeeded and len(ok.responses) == 128
    with pytest.raises(TooManyOpsError) as info:
        await client.txn([], [Put(prefix + b"more-%03d" % i, b"v") for i in range(129)])
    assert "too many operations" in str(info.value)
    assert str(client.endpoint) in str(info.value)
    assert (await client.get(prefix + b"more-000")) is None
    assert isinstance(info.value, InvalidRequest) and not isinstance(info.value, TransientError)
    with pytest.raises(InvalidRequest, match="duplicate key"):
        await client.txn([], [Put(prefix + b"dup", b"1"), Put(prefix + b"dup", b"2")])


@pytest.mark.parametrize("size", [1536 * 1024 + 4096, 2 * 1024 * 1024])
async def test_request_too_large(client: EtcdClient, prefix: bytes, size: int) -> None:
    # Over etcd's --max-request-bytes (1.5 MiB) etcd refuses it; at 2 MiB and more gRPC's server limit
    # refuses it before etcd sees it. Both are the same typed error.
    k = prefix + b"%d" % size
    with pytest.raises(RequestTooLargeError) as info:
        await client.put(k, b"x" * size)
    assert str(client.endpoint) in str(info.value)
    assert await client.get(k) is None
    # Just under the limit works.
    await client.put(k, b"x" * (1024 * 1024))
    kv = await client.get(k)
    assert kv is not None and len(kv.value) == 1024 * 1024


async def test_compaction(client: EtcdClient, prefix: bytes) -> None:
    k = prefix + b"k"
    revs = [(await client.put(k, b"v%d" % i)).header.revision for i in range(5)]
    header = await client.compact(revs[3])
    assert header.revision >= revs[-1]
    with pytest.raises(CompactedError) as info:
        await client.range(k, revision=revs[2])
    assert "compacted" in str(info.value) and str(client.endpoint) in str(info.value)
    assert not isinstance(info.value, TransientError)
    # The compaction revision itself and later ones are still readable.
    kv = await client.get(k, revision=revs[3])
    assert kv is not None and kv.value == b"v3"
    kv = await client.get(k, revision=revs[4])
    assert kv is not None and kv.value == b"v4"
    # Compacting at or below the compacted revision again is refused the same way.
    with pytest.raises(CompactedError):
        await client.compact(revs[3])
    with pytest.raises(FutureRevisionError):
        await client.compact(revs[4] + 1000)


async def test_range_pages_compacted_while_paging(client: EtcdClient, prefix: bytes) -> None:
    await client.txn([], [Put(prefix + b"%02d" % i, b"v") for i in range(30)])
    pages = client.range_pages(prefix, prefix_range_end(prefix), page_size=10)
    first = await anext(pages)
    assert len(first.kvs) == 10
    later = await client.put(prefix + b"zz", b"later")
    await client.compact(later.header.revision)
    with pytest.raises(CompactedError):
        await anext(pages)


async def test_future_revision(client: EtcdClient, prefix: bytes) -> None:
    now = (await client.put(prefix + b"k", b"v")).header.revision
    with pytest.raises(FutureRevisionError) as info:
        await client.range(prefix + b"k", revision=now + 1000)
    assert "future revision" in str(info.value)
    assert not isinstance(info.value, TransientError)
    # The current revision itself is not in the future.
    assert (await client.get(prefix + b"k", revision=now)) is not None


# ---- leases --------------------------------------------------------------------------------------


async def test_lease_lifecycle(client: EtcdClient, prefix: bytes, etcd_bin: EtcdBinaries) -> None:
    lease_id = 0x7E57_0000_0000 + int(etcd_bin.version_tuple[1])
    grant = await client.lease_grant(60, lease_id)
    assert (grant.id, grant.ttl) == (lease_id, 60)
    with pytest.raises(LeaseExists):
        await client.lease_grant(60, lease_id)
    keys = [prefix + b"a", prefix + b"b"]
    for k in keys:
        await client.put(k, b"leased", lease=lease_id)
    await client.put(prefix + b"unleased", b"stays")
    kv = await client.get(keys[0])
    assert kv is not None and kv.lease == lease_id

    info = await client.lease_time_to_live(lease_id, keys=True)
    assert info.id == lease_id and info.granted_ttl == 60
    assert 0 < info.ttl <= 60
    assert sorted(info.keys) == keys
    assert (await client.lease_time_to_live(lease_id)).keys == []
    assert lease_id in await client.leases()
    assert await client.lease_keepalive_once(lease_id) == 60

    await client.lease_revoke(lease_id)
    assert await client.get(keys[0]) is None and await client.get(keys[1]) is None
    assert await client.get(prefix + b"unleased") is not None
    assert lease_id not in await client.leases()
    gone = await client.lease_time_to_live(lease_id, keys=True)
    assert gone.ttl == -1 and gone.keys == []
    with pytest.raises(LeaseNotFound):
        await client.lease_keepalive_once(lease_id)
    with pytest.raises(LeaseNotFound):
        await client.lease_revoke(lease_id)
    with pytest.raises(LeaseNotFound):
        await client.put(prefix + b"c", b"x", lease=lease_id)


async def test_lease_keepalive_stream_refreshes_many(client: EtcdClient) -> None:
    a = await client.lease_grant(30)
    b = await client.lease_grant(40)
    assert a.id != 0 and b.id != 0 and a.id != b.id
    async with client.lease_keepalive() as ka:
        for _ in range(3):
            assert await ka.refresh(a.id) == 30
            assert await ka.refresh(b.id) == 40
        await client.lease_revoke(a.id)
        with pytest.raises(LeaseNotFound):
            await ka.refresh(a.id)
        # The stream is still usable after a lease was not found.
        assert await ka.refresh(b.id) == 40
    await client.lease_revoke(b.id)


async def test_lease_expires(client: EtcdClient, prefix: bytes) -> None:
    # The single-member test cluster has a 10 ms heartbeat, so a 1 s lease is honoured.
    lease = await client.lease_grant(1)
    await client.put(prefix + b"k", b"v", lease=lease.id)
    deadline = time.monotonic() + 10
    while await client.get(prefix + b"k") is not None:
        assert time.monotonic() < deadline, "a 1 s lease did not expire in 10 s"
        await asyncio.sleep(0.1)
    with pytest.raises(LeaseNotFound):
        await client.lease_keepalive_once(lease.id)


# ---- status and members on 3 members --------------------------------------------------------------


async def test_status_and_member_list(plain3: EtcdCluster, etcd_bin: EtcdBinaries) -> None:
    async with connect(plain3.endpoints) as c:
        put = await c.put(b"/status/k", b"v")
        members = await c.member_list()
        assert len(members) == 3
        assert sorted(m.name for m in members) == [f"{plain3.name}-{i}" for i in range(3)]
        assert sorted(u for m in members for u in m.client_urls) == sorted(plain3.endpoints)
        assert sorted(u for m in members for u in m.peer_urls) == sorted(m.peer_url for m in plain3.members)
        assert not any(m.is_learner for m in members)
        ids = {m.id for m in members}
        assert len(ids) == 3 and 0 not in ids

        own = await c.status()
        assert own.endpoint == str(c.endpoint)
        statuses = await c.statuses()
        assert [str(ep) for ep in statuses] == plain3.endpoints
        sts = [s for s in statuses.values() if isinstance(s, Status)]
        assert len(sts) == 3, statuses
        assert {s.cluster_id for s in sts} == {put.header.cluster_id}
        assert {s.member_id for s in sts} == ids
        assert len({s.leader for s in sts}) == 1 and sts[0].leader in ids
        assert sum(s.is_leader for s in sts) == 1
        assert all(s.version == etcd_bin.version for s in sts)
        assert all(s.raft_index > 0 and s.raft_term > 0 and s.db_size > 0 for s in sts)
        assert all(s.errors == [] and not s.is_learner for s in sts)
        leader = next(s for s in sts if s.is_leader)
        assert leader.revision >= put.header.revision
        # The fixture's idea of the leader agrees with etcd's.
        idx = await asyncio.to_thread(plain3.wait_leader)
        assert plain3.endpoints[idx] == leader.endpoint
        # One endpoint's status over its own channel.
        one = await c.status(parse_endpoint(plain3.endpoints[2]))
        assert one.endpoint == plain3.endpoints[2]
        assert one.member_id == next(m.id for m in members if plain3.endpoints[2] in m.client_urls)


async def test_statuses_with_a_member_down(plain3: EtcdCluster) -> None:
    async with connect(plain3.endpoints, dial_timeout=2.0) as c:
        plain3.kill(1)
        try:
            t0 = time.monotonic()
            statuses = await c.statuses()
            assert time.monotonic() - t0 < 10
            down = statuses[parse_endpoint(plain3.endpoints[1])]
            assert isinstance(down, Unavailable), down
            assert plain3.endpoints[1] in str(down)
            assert down.endpoint == plain3.endpoints[1]
            for i in (0, 2):
                st = statuses[parse_endpoint(plain3.endpoints[i])]
                assert isinstance(st, Status), st
                assert st.endpoint == plain3.endpoints[i]
        finally:
            await asyncio.to_thread(plain3.restart, 1)
        statuses = await c.statuses()
        assert all(isinstance(s, Status) for s in statuses.values()), "; ".join(
            f"{type(s).__name__}: {s}" for s in statuses.values() if not isinstance(s, Status)
        )


async def test_failover_to_another_endpoint(plain3: EtcdCluster) -> None:
    killed: list[int] = []
    try:
        async with connect(plain3.endpoints, request_timeout=5.0) as c:
            await c.put(b"/failover/k", b"v1")
            used = plain3.endpoints.index(str(c.endpoint))
            plain3.kill(used)
            killed.append(used)
            # A killed leader leaves proposals hanging until a new one is elected: wait for it, so
            # that this test measures the client's failover, not etcd's election.
            await asyncio.to_thread(plain3.wait_leader)
            # Reads move on by themselves.
            kv = await c.get(b"/failover/k")
            assert kv is not None and kv.value == b"v1"
            assert str(c.endpoint) != plain3.endpoints[used]
            # Writes go to the endpoint now in use.
            put = await c.put(b"/failover/k", b"v2")
            kv = await c.get(b"/failover/k")
            assert kv is not None and kv.value == b"v2" and kv.mod_revision == put.header.revision
            for _ in range(20):
                await c.put(b"/failover/k", b"more")
                assert await c.get(b"/failover/k") is not None

            # Bring it back, then kill the member in use again, and write first: a write is never
            # resent by the client (its outcome may be unknown), so it may fail once, naming the
            # dead endpoint, and the next write goes elsewhere.
            await asyncio.to_thread(plain3.restart, used)
            killed.remove(used)
            used = plain3.endpoints.index(str(c.endpoint))
            plain3.kill(used)
            killed.append(used)
            await asyncio.to_thread(plain3.wait_leader)
            try:
                await c.put(b"/failover/k", b"v3")
            except Unavailable as e:
                assert plain3.endpoints[used] in str(e)
                await c.put(b"/failover/k", b"v3")
            assert str(c.endpoint) != plain3.endpoints[used]
            kv = await c.get(b"/failover/k")
            assert kv is not None and kv.value == b"v3"
    finally:
        for i in killed:
            await asyncio.to_thread(plain3.restart, i)


async def test_lease_keepalive_moves_to_another_endpoint(plain3: EtcdCluster) -> None:
    async with connect(plain3.endpoints, request_timeout=3.0) as c:
        lease = await c.lease_grant(60)
        used = plain3.endpoints.index(str(c.endpoint))
        try:
            async with c.lease_keepalive() as ka:
                assert await ka.refresh(lease.id) == 60
                plain3.kill(used)
                await asyncio.to_thread(plain3.wait_leader)
                # Its stream and its member are gone: the refresh is sent again, elsewhere.
                t0 = time.monotonic()
                assert await ka.refresh(lease.id) == 60
                assert time.monotonic() - t0 < 3
                assert str(c.endpoint) != plain3.endpoints[used]
                assert await ka.refresh(lease.id) == 60
            await c.lease_revoke(lease.id)
        finally:
            await asyncio.to_thread(plain3.restart, used)


async def test_all_endpoints_down_is_unavailable(plain1: EtcdCluster) -> None:
    # Nothing listens on these ports: a clear Unavailable naming an endpoint, quickly.
    dead = [plain1.endpoints[0].rsplit(":", 1)[0] + ":1", "127.0.0.1:2"]
    async with connect(dead, request_timeout=3.0) as c:
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await c.get(b"k")
        assert time.monotonic() - t0 < 5
        assert any(ep in str(info.value) for ep in ("127.0.0.1:1", "127.0.0.1:2"))
        # A write that could not be sent anywhere: tried once on each endpoint, then Unavailable,
        # marked as certainly not applied.
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as info:
            async with asyncio.timeout(10):
                await c.put(b"k", b"v")
        assert time.monotonic() - t0 < 5
        assert info.value.maybe_applied is False


async def test_idle_connection_is_not_dropped_by_keepalive(plain1: EtcdCluster) -> None:
    # etcd closes a connection that is pinged while no call is open ("too_many_pings" GOAWAY); the
    # client pings only during calls, so an idle connection stays up. With a short ping interval, a
    # client that pinged idle connections loses its connection after about 3 s.
    async with connect(plain1.endpoints, keepalive_time=0.2) as c:
        await c.put(b"/idle/k", b"v")
        channel = c._conn._channel  # white box: the connection state is not otherwise visible
        assert channel is not None
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        await asyncio.sleep(4.5)
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        assert (await c.get(b"/idle/k")) is not None


# ---- TLS -----------------------------------------------------------------------------------------


async def test_tls_with_client_certificate(tls1: EtcdCluster) -> None:
    files = tls1.client_tls
    assert files is not None
    assert all(ep.startswith("https://") for ep in tls1.endpoints)
    async with connect(tls1.endpoints, cacert=files.cacert, cert=files.cert, key=files.key) as c:
        await c.put(b"/tls/k", b"v")
        kv = await c.get(b"/tls/k")
        assert kv is not None and kv.value == b"v"
    # host:port without a scheme: TLS because TLS files are given.
    async with connect(tls1.hostports, cacert=files.cacert, cert=files.cert, key=files.key) as c:
        assert c.config.tls is not None
        kv = await c.get(b"/tls/k")
        assert kv is not None and kv.value == b"v"


def test_tls_missing_file(tls1: EtcdCluster, tmp_path: Path) -> None:
    files = tls1.client_tls
    assert files is not None
    missing = tmp_path / "no-such-ca.pem"
    config = ClientConfig.create(tls1.endpoints, cacert=missing, cert=files.cert, key=files.key)
    with pytest.raises(TLSConfigError) as info:
        EtcdClient(config)
    assert str(missing) in str(info.value) and "--cacert" in str(info.value)
    assert "no such file" in str(info.value)
    assert info.value.path == str(missing)
    # The same for the key, with the destination's flag names.
    config = ClientConfig.create(
        tls1.endpoints, cacert=files.cacert, cert=files.cert, key=tmp_path / "nokey.pem"
    ).with_role("destination", "dest-")
    with pytest.raises(TLSConfigError, match=r"--dest-key .*nokey\.pem: no such file"):
        EtcdClient(config)
    with pytest.raises(TLSConfigError, match="is a directory"):
        EtcdClient(ClientConfig.create(tls1.endpoints, cacert=tmp_path))


def test_tls_not_pem(tls1: EtcdCluster, tmp_path: Path) -> None:
    files = tls1.client_tls
    assert files is not None
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    with pytest.raises(TLSConfigError) as info:
        EtcdClient(ClientConfig.create(tls1.endpoints, cacert=junk, cert=files.cert, key=files.key))
    assert str(junk) in str(info.value) and "--cacert" in str(info.value) and "not a PEM" in str(info.value)
    with pytest.raises(TLSConfigError, match=rf"--key {junk}: not a PEM private key"):
        EtcdClient(ClientConfig.create(tls1.endpoints, cacert=files.cacert, cert=files.cert, key=junk))
    # PEM armour around garbage is caught too, naming the file.
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(TLSConfigError, match=rf"--cert {broken}: not a valid PEM certificate"):
        EtcdClient(ClientConfig.create(tls1.endpoints, cacert=files.cacert, cert=broken, key=files.key))
    with pytest.raises(TLSConfigError, match=rf"--cacert {broken}: not a valid PEM certificate"):
        EtcdClient(ClientConfig.create(tls1.endpoints, cacert=broken, cert=files.cert, key=files.key))
    # A certificate given as the key.
    with pytest.raises(TLSConfigError, match=rf"--key {files.cert}: not a usable PEM private key"):
        EtcdClient(ClientConfig.create(tls1.endpoints, cacert=files.cacert, cert=files.cert, key=files.cert))


def test_tls_cert_does_not_match_key(tls1: EtcdCluster, tls_material: tuple[ClusterTLS, ClusterTLS]) -> None:
    ours, theirs = tls_material
    config = ClientConfig.create(
        tls1.endpoints, cacert=ours.client.cacert, cert=ours.client.cert, key=theirs.client.key
    )
    with pytest.raises(TLSConfigError) as info:
        EtcdClient(config)
    msg = str(info.value)
    assert "does not match" in msg
    assert str(ours.client.cert) in msg and str(theirs.client.key) in msg
    assert info.value.path == str(ours.client.cert)


async def test_tls_wrong_ca(tls1: EtcdCluster, tls_material: tuple[ClusterTLS, ClusterTLS]) -> None:
    ours, theirs = tls_material
    async with connect(
        tls1.endpoints, cacert=theirs.client.cacert, cert=ours.client.cert, key=ours.client.key
    ) as c:
        t0 = time.monotonic()
        with pytest.raises(TLSError) as info:
            await c.get(b"k")
        assert time.monotonic() - t0 < 5, "a TLS failure must be reported at once, not retried"
    err = info.value
    assert not isinstance(err, TransientError)
    msg = str(err)
    assert tls1.endpoints[0] in msg and err.endpoint == tls1.endpoints[0]
    assert "TLS handshake failed" in msg
    assert f"--cacert {theirs.client.cacert}" in msg, msg


async def test_tls_client_certificate_rejected(
    tls1: EtcdCluster, tls_material: tuple[ClusterTLS, ClusterTLS]
) -> None:
    ours, theirs = tls_material
    # A client certificate from a CA the server does not trust.
    async with connect(
        tls1.endpoints, cacert=ours.client.cacert, cert=theirs.client.cert, key=theirs.client.key
    ) as c:
        with pytest.raises(TLSError) as info:
            await c.get(b"k")
    assert tls1.endpoints[0] in str(info.value)
    assert f"--cert {theirs.client.cert}" in str(info.value), str(info.value)
    # No client certificate at all (the cluster requires one).
    async with connect(tls1.endpoints, cacert=ours.client.cacert) as c:
        with pytest.raises(TLSError) as info:
            await c.get(b"k")
    assert tls1.endpoints[0] in str(info.value)
    assert "--cert" in str(info.value)


async def test_plain_text_client_against_tls(tls1: EtcdCluster) -> None:
    # The server answers plain text with a TLS alert and closes: grpc reports the connection closed,
    # which the client cannot tell from a dropped connection. So this is Unavailable (documented),
    # and the message names the endpoint.
    async with connect(tls1.hostports) as c:
        assert c.config.tls is None
        with pytest.raises((TLSError, Unavailable)) as info:
            await c.get(b"k")
    assert isinstance(info.value, Unavailable), f"now {type(info.value).__name__}: update the comment"
    assert tls1.hostports[0] in str(info.value)
    assert info.value.endpoint == tls1.hostports[0]


# ---- auth ----------------------------------------------------------------------------------------


async def test_auth_user_password(auth1: EtcdCluster) -> None:
    async with connect(auth1.endpoints, user="root", password="rootpw") as c:
        await c.put(b"/pub/k", b"v")
        kv = await c.get(b"/pub/k")
        assert kv is not None and kv.value == b"v"
        assert "root" in await c.user_list() and "alice" in await c.user_list()
        assert await c.user_get("alice") == ["reader"]
        assert "reader" in await c.role_list()
        assert await c.role_get("reader") == [Permission("read", b"/pub/", b"/pub0")]
    # etcdctl's user:password form.
    async with connect(auth1.endpoints, user="root:rootpw") as c:
        assert (await c.get(b"/pub/k")) is not None


@pytest.mark.parametrize(("user", "password"), [("root", "wrong"), ("nobody", "pw")])
async def test_auth_wrong_credentials(auth1: EtcdCluster, user: str, password: str) -> None:
    async with connect(auth1.endpoints, user=user, password=password) as c:
        with pytest.raises(AuthError) as info:
            await c.get(b"/pub/k")
    err = info.value
    assert not isinstance(err, TransientError | PermissionDenied)
    assert auth1.endpoints[0] in str(err)
    assert repr(user) in str(err) and "--user" in str(err)
    assert "authentication failed" in str(err)


async def test_auth_required(auth1: EtcdCluster) -> None:
    async with connect(auth1.endpoints) as c:
        with pytest.raises(AuthError) as info:
            await c.get(b"/pub/k")
    assert auth1.endpoints[0] in str(info.value)


async def test_auth_permission_denied(auth1: EtcdCluster) -> None:
    async with connect(auth1.endpoints, user="root", password="rootpw") as root:
        await root.put(b"/pub/readable", b"yes")
    async with connect(auth1.endpoints, user="alice", password="alicepw") as c:
        kv = await c.get(b"/pub/readable")
        assert kv is not None and kv.value == b"yes"
        with pytest.raises(PermissionDenied) as info:
            await c.put(b"/pub/readable", b"no")
        assert auth1.endpoints[0] in str(info.value)
        with pytest.raises(PermissionDenied):
            await c.get(b"/secret/x")


async def test_auth_enabled_probe(auth1: EtcdCluster, plain1: EtcdCluster) -> None:
    # The same probe on every version (3.4 has no AuthStatus), with or without credentials.
    async with connect(auth1.endpoints) as c:
        assert await c.auth_enabled()
    async with connect(auth1.endpoints, user="root", password="rootpw") as c:
        assert await c.auth_enabled()
        await c.put(b"/probe/k", b"v")  # the probe did not disturb the client's own token
        assert await c.auth_enabled()
    async with connect(plain1.endpoints) as c:
        assert not await c.auth_enabled()
    async with connect(plain1.endpoints, user="root", password="rootpw") as c:
        assert not await c.auth_enabled()
        with pytest.raises(AuthNotEnabled):
            await c.get(b"/probe/k")


async def test_auth_token_lost_on_member_restart(auth1: EtcdCluster) -> None:
    async with connect(auth1.endpoints, user="root", password="rootpw") as c:
        await c.put(b"/restart/k", b"before")
        token = c._conn._token  # white box: proves the re-authentication below really happened
        assert token
        await asyncio.to_thread(auth1.restart, 0)
        # The member forgot every simple token: the first request is refused with "invalid auth
        # token", and the client authenticates again and resends it without the caller noticing.
        kv = await c.get(b"/restart/k")
        assert kv is not None and kv.value == b"before"
        assert c._conn._token and c._conn._token != token
        await c.put(b"/restart/k", b"after")
        # A write is resent too: it was refused, not applied.
        await asyncio.to_thread(auth1.restart, 0)
        put = await c.put(b"/restart/k", b"after-2")
        kv = await c.get(b"/restart/k")
        assert kv is not None and kv.value == b"after-2" and kv.mod_revision == put.header.revision
        assert kv.version == 3
    assert "after-2" in auth1.etcdctl("get", "/restart/k", "--print-value-only")


async def test_auth_skips_a_dead_first_endpoint(auth1: EtcdCluster) -> None:
    # Authentication is the first request: it must move on past an endpoint that is down, like any
    # other read, rather than fail every call on that endpoint.
    async with connect(["127.0.0.1:1", *auth1.endpoints], user="root", password="rootpw") as c:
        await c.put(b"/deadfirst/k", b"v")
        kv = await c.get(b"/deadfirst/k")
        assert kv is not None and kv.value == b"v"
        assert str(c.endpoint) == auth1.endpoints[0]
        async with c.watch_prefix(b"/deadfirst/", start_revision=kv.mod_revision) as w:
            batch = await asyncio.wait_for(anext(w), 10)
        assert [e.kv.value for e in batch.events] == [b"v"]
    # A watch is the first request: the same.
    async with connect(["127.0.0.1:1", *auth1.endpoints], user="root", password="rootpw") as c:
        async with c.watch_prefix(b"/deadfirst/", start_revision=kv.mod_revision, retry_for=5) as w:
            batch = await asyncio.wait_for(anext(w), 10)
        assert [e.kv.value for e in batch.events] == [b"v"]


async def test_auth_per_member_calls_and_keepalive_after_restart(auth1: EtcdCluster) -> None:
    async with connect(auth1.endpoints, user="root", password="rootpw") as c:
        ep = c.config.endpoints[0]
        await c.put(b"/restart2/k", b"v")
        before = await c.hash_kv(ep)
        lease = await c.lease_grant(60)
        async with c.lease_keepalive() as ka:
            assert await ka.refresh(lease.id) == 60
            await asyncio.to_thread(auth1.restart, 0)
            # HashKV checks the token, over a channel of its own: re-authenticated there too.
            after = await c.hash_kv(ep)
            assert after[0] == before[0]
            # The keepalive stream broke with the restart: the next refresh opens a new one.
            assert await ka.refresh(lease.id) == 60
        await c.lease_revoke(lease.id)


async def test_auth_jwt_token_made_stale_by_a_permission_change(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    # A JWT token carries the auth revision it was issued at: after any role change (a write fence
    # does several) etcd refuses it with "revision in header is old"; the client authenticates again
    # and resends, as for a simple token a restarted member forgot.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = tmp_path / "jwt.key", tmp_path / "jwt.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    jwt = f"--auth-token=jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=10m"
    cluster = etcd_cluster_factory(name="jwt", auth=ROOT_AUTH, extra_args=[jwt])
    async with connect(cluster.endpoints, user="root", password="rootpw") as c:
        await c.put(b"/jwt/k", b"1")
        token = c._conn._token  # white box: proves the re-authentication below really happened
        cluster.etcdctl("role", "add", "app")
        await c.role_grant_permission("app", Permission("readwrite", b"/app/", b"/app0"))
        put = await c.put(b"/jwt/k", b"2")  # refused once (not applied), resent with a new token
        assert c._conn._token != token
        kv = await c.get(b"/jwt/k")
        assert kv is not None and kv.value == b"2" and kv.version == 2
        assert kv.mod_revision == put.header.revision


async def test_errors_are_typed_not_grpc(client: EtcdClient) -> None:
    # Whatever fails, callers see an EtcdError subclass, never a grpc exception.
    with pytest.raises(EtcdError) as info:
        await client.range(b"")
    assert type(info.value).__module__.startswith("etcd_dr.etcd")
    assert isinstance(info.value, InvalidRequest)


async def test_range_pages_bounded_guesses_cover_every_key_once(
    etcd_cluster_factory: Callable[..., Any],
) -> None:
    """Page bounds are guessed from key density: uneven, binary and long keys must still come out exactly
    once, in order, for small and large pages."""
    import random

    cluster = etcd_cluster_factory(name="pages")
    rng = random.Random(5)
    keys = {b"/p/" + rng.randbytes(rng.randrange(1, 40)) for _ in range(1500)}
    keys |= {b"/p/dense/%06d" % i for i in range(1500)}  # a dense run inside a sparse range
    keys |= {b"/p/" + b"\xff" * n for n in range(1, 30)}  # the top of the key space
    keys |= {b"/p/" + b"x" * 30 + b"%04d" % i for i in range(300)}  # differ only past the 24-byte width
    async with EtcdClient(ClientConfig.create(cluster.endpoints)) as c:
        for i in range(0, len(keys), 100):
            await c.txn([], [Put(k, b"v") for k in sorted(keys)[i : i + 100]])
        for page_size, page_bytes in ((7, None), (100, None), (1000, 2000), (5000, None)):
            got: list[bytes] = []
            revisions = set()
            async for page in c.range_pages(
                b"/p/", prefix_range_end(b"/p/"), page_size=page_size, page_bytes=page_bytes
            ):
                got.extend(kv.key for kv in page.kvs)
                revisions.add(page.header.revision)
            assert got == sorted(keys), (page_size, len(got), len(keys))
            assert len(revisions) == 1
        everything = [kv.key async for page in c.range_pages(b"\0", b"\0", page_size=50) for kv in page.kvs]
        assert everything == sorted(keys)
