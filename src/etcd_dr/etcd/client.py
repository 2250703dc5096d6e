"""EtcdClient: the asyncio etcd v3 client used by every part of etcd-dr."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc

from ._pb import etcd_dr_v3_pb2 as pb
from .connection import ClientConfig, Connection, closed_under_us, read_stream
from .endpoints import Endpoint
from .errors import (
    AuthError,
    AuthNotEnabled,
    CompactedError,
    EtcdError,
    InvalidToken,
    LeaseNotFound,
    Unavailable,
    map_grpc_error,
)
from .types import (
    Compare,
    DeleteResult,
    Header,
    KeyValue,
    LeaseGrant,
    LeaseInfo,
    Member,
    Op,
    Permission,
    PutResult,
    RangeResult,
    RawPage,
    SortOrder,
    SortTarget,
    Status,
    TxnBatch,
    TxnResult,
    prefix_range_end,
    range_result,
    txn_request,
    txn_result,
)
from .watch import Watch, WatchOptions

_KV = "/etcdserverpb.KV/"
_LEASE = "/etcdserverpb.Lease/"
_MAINT = "/etcdserverpb.Maintenance/"
_CLUSTER = "/etcdserverpb.Cluster/"
_AUTH = "/etcdserverpb.Auth/"

_PERM_NAMES = {0: "read", 1: "write", 2: "readwrite"}


# Keys are compared as numbers over their first _KEY_WIDTH bytes to guess page bounds.
_KEY_WIDTH = 24


def _key_int(key: bytes) -> int:
    return int.from_bytes(key[:_KEY_WIDTH].ljust(_KEY_WIDTH, b"\0"), "big")


def _bound_after(start: bytes, span: int) -> bytes | None:
    """A key about `span` past `start`, strictly greater than it (None when past the number range)."""
    n = _key_int(start) + span
    if n >= 1 << (8 * _KEY_WIDTH):
        return None
    guess = n.to_bytes(_KEY_WIDTH, "big").rstrip(b"\0")
    return guess if guess > start else None


class PageOptions(TypedDict, total=False):
    """How `range_pages` reads (the defaults of `_range_pages`): at `revision` (0: the first page's),
    up to `page_size` keys per page, about `page_bytes` of keys and values per page, keys only."""

    revision: int
    page_size: int
    page_bytes: int | None
    keys_only: bool


class EtcdClient:
    """An etcd v3 client over one gRPC channel at a time, moving between endpoints on failure.

    Keys and values are bytes. Reads retry on the next endpoint when one is unavailable; writes raise
    Unavailable (outcome unknown) and leave retrying to the caller, who knows whether it is safe.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._conn = Connection(config)

    def sibling(self) -> EtcdClient:
        """A client to the same cluster over a connection of its own (see Connection.sibling), already
        connecting; the caller closes it. For requests that should not share one connection's HTTP/2
        windows, like the copy's txns to a far destination (mirror/sync.py)."""
        other = EtcdClient.__new__(EtcdClient)
        other.config = self.config
        other._conn = self._conn.sibling()
        other._conn.connect()
        return other

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._conn.close()

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint currently in use."""
        return self._conn.endpoint

    # ---- KV -------------------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        revision: int = 0,
        limit: int = 0,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
    ) -> RangeResult:
        req = pb.RangeRequest(
            key=key,
            range_end=range_end,
            revision=revision,
            limit=limit,
            sort_order=pb.RangeRequest.SortOrder.ValueType(sort_order),
            sort_target=pb.RangeRequest.SortTarget.ValueType(sort_target),
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
        )
        return range_result(await self._range(req))

    async def _range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        """One Range call, its raw response (range_pages reads the pages' `more` and counts)."""
        return await self._conn.unary(_KV + "Range", req, pb.RangeResponse, idempotent=True)

    async def get(self, key: bytes, *, revision: int = 0) -> KeyValue | None:
        r = await self.range(key, revision=revision)
        return r.kvs[0] if r.kvs else None

    async def get_prefix(self, prefix: bytes, *, revision: int = 0) -> RangeResult:
        return await self.range(prefix, prefix_range_end(prefix), revision=revision)

    async def range_pages(
        self, key: bytes, range_end: bytes = b"", **options: Unpack[PageOptions]
    ) -> AsyncIterator[RangeResult]:
        """Read a range in pages, all at ONE revision (the first page's, when revision is 0), in key
        order; each page's header.revision is that revision. Raises CompactedError if the revision is
        compacted while paging (the caller then starts over at a newer revision).

        etcd walks the WHOLE rest of the requested range on every limited request (to count it), so
        plain paging costs O(n^2 / page). Each request after the first is therefore bounded: its
        range_end is a guess, from the key density seen so far, of where one page's worth of keys ends;
        a short page just continues from that bound. With `page_bytes`, the page grows up to
        `page_size` keys while keeping about `page_bytes` of keys and values per page.
        """
        async for resp, rev in self._range_pages(key, range_end, **options):
            h = resp.header
            yield RangeResult(
                Header(h.cluster_id, h.member_id, rev, h.raft_term),
                [KeyValue.from_pb(kv) for kv in resp.kvs],
                resp.more,
                resp.count,
            )

    async def range_pages_raw(
        self, key: bytes, range_end: bytes = b"", **options: Unpack[PageOptions]
    ) -> AsyncIterator[RawPage]:
        """`range_pages`, with each page's key-values as etcd sent them (`KeyValueLike`, not converted
        to `KeyValue` one by one): for loops over many keys, like the mirror's copy and verify."""
        async for resp, rev in self._range_pages(key, range_end, **options):
            yield RawPage(rev, resp.kvs, resp.more)

    async def _range_pages(
        self,
        key: bytes,
        range_end: bytes,
        *,
        revision: int = 0,
        page_size: int = 1000,
        page_bytes: int | None = None,
        keys_only: bool = False,
    ) -> AsyncIterator[tuple[pb.RangeResponse, int]]:
        """The pages of range_pages, as responses with the paging revision."""
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        limit = min(page_size, 1000) if page_bytes else page_size
        start = key
        span: int | None = None  # estimated key-space width (as _key_int) of one page
        first = True
        while True:
            bound = range_end
            if span is not None and range_end:
                guess = _bound_after(start, span)
                if guess is not None and (range_end == b"\0" or guess < range_end):
                    bound = guess
            page = await self._range(
                pb.RangeRequest(
                    key=start, range_end=bound, revision=revision, limit=limit, keys_only=keys_only
                )
            )
            # No sort order is asked for: etcd returns keys in key order anyway, and any explicit sort
            # makes it read the whole rest of the range before cutting it to the limit.
            if revision == 0:
                revision = page.header.revision
            # Every page reports the paging revision, not the current one, so that every page agrees.
            kvs = page.kvs
            if kvs or first:
                yield (
                    page,
                    revision,
                )  # the first page always (it tells the revision), then only pages with keys
            first = False
            if page.more:
                # A full page inside [start, bound): the next one starts after its last key, and one
                # page's width is about what this one covered.
                lowest, last = kvs[0].key, kvs[-1].key
                span = max(1, _key_int(last) - _key_int(lowest))
                start = last + b"\0"
            elif bound == range_end:
                return
            else:
                # [start, bound) held less than a page: go on from the bound, with a wider guess.
                width = max(1, _key_int(bound) - _key_int(start))
                grow = min(16.0, limit / max(len(kvs), 1))
                span = max(1, int(width * grow))
                start = bound
            if page_bytes and kvs:
                size = page.ByteSize()  # the keys and values, and a few bytes a key more
                limit = max(1, min(page_size, page_bytes * len(kvs) // max(size, 1)))

    async def compact_revision(self, current: int = 0) -> int:
        """The compaction point: the oldest revision still readable (0 when nothing was compacted).
        etcd does not report it directly; a binary search with tiny reads finds it exactly."""
        probe = b"\0etcd-dr-compaction-probe"

        async def readable(rev: int) -> bool:
            try:
                await self.range(probe, revision=rev, count_only=True)
            except CompactedError:
                return False
            return True

        if current <= 0:
            current = (await self.range(probe, count_only=True)).header.revision
        if current <= 1 or await readable(1):
            return 0
        lo, hi = 1, current  # lo is compacted, hi is readable
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await readable(mid):
                hi = mid
            else:
                lo = mid
        return hi

    async def put(self, key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> PutResult:
        req = pb.PutRequest(key=key, value=value, lease=lease, prev_kv=prev_kv)
        resp = await self._conn.unary(_KV + "Put", req, pb.PutResponse, idempotent=False)
        return PutResult(
            Header.from_pb(resp.header), KeyValue.from_pb(resp.prev_kv) if resp.HasField("prev_kv") else None
        )

    async def delete_range(
        self, key: bytes, range_end: bytes = b"", *, prev_kv: bool = False
    ) -> DeleteResult:
        req = pb.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=prev_kv)
        resp = await self._conn.unary(_KV + "DeleteRange", req, pb.DeleteRangeResponse, idempotent=False)
        return DeleteResult(
            Header.from_pb(resp.header), resp.deleted, [KeyValue.from_pb(kv) for kv in resp.prev_kvs]
        )

    async def delete_prefix(self, prefix: bytes) -> DeleteResult:
        return await self.delete_range(prefix, prefix_range_end(prefix))

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        resp = await self._conn.unary(
            _KV + "Txn", txn_request(compare, success, failure), pb.TxnResponse, idempotent=False
        )
        return txn_result(resp)

    async def txn_succeeded(self, compare: Sequence[Compare], success: Sequence[Op]) -> tuple[bool, int]:
        """A txn whose op results the caller does not need: (succeeded, revision). The mirror's hot path
        writes thousands of ops a second and would only throw the converted results away."""
        resp = await self._conn.unary(
            _KV + "Txn", txn_request(compare, success, ()), pb.TxnResponse, idempotent=False
        )
        return resp.succeeded, resp.header.revision

    async def txn_batch(self, compare: Sequence[Compare], batch: TxnBatch) -> tuple[bool, int]:
        """Send a TxnBatch guarded by `compare`: (succeeded, revision). Like txn_succeeded, without an
        object per op on the way (the mirror's copy and replay)."""
        resp = await self._conn.unary(_KV + "Txn", batch.request(compare), pb.TxnResponse, idempotent=False)
        return resp.succeeded, resp.header.revision

    async def compact(self, revision: int, *, physical: bool = False) -> Header:
        req = pb.CompactionRequest(revision=revision, physical=physical)
        resp = await self._conn.unary(_KV + "Compact", req, pb.CompactionResponse, idempotent=True)
        return Header.from_pb(resp.header)

    # ---- watch ----------------------------------------------------------------------------------

    def watch(self, key: bytes, range_end: bytes = b"", **options: Unpack[WatchOptions]) -> Watch:
        """A watch of [key, range_end) (its options: WatchOptions, in watch.py)."""
        return Watch(self._conn, key, range_end, **options)

    def watch_prefix(self, prefix: bytes, **kwargs: Any) -> Watch:
        return self.watch(prefix, prefix_range_end(prefix), **kwargs)

    # ---- leases ---------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> LeaseGrant:
        resp = await self._conn.unary(
            _LEASE + "LeaseGrant",
            pb.LeaseGrantRequest(ttl=ttl, id=lease_id),
            pb.LeaseGrantResponse,
            idempotent=False,
        )
        if resp.error:
            raise EtcdError(
                f"{self.config.role}: lease grant failed: {resp.error}", endpoint=str(self.endpoint)
            )
        return LeaseGrant(resp.id, resp.ttl)

    async def lease_revoke(self, lease_id: int) -> None:
        await self._conn.unary(
            _LEASE + "LeaseRevoke",
            pb.LeaseRevokeRequest(id=lease_id),
            pb.LeaseRevokeResponse,
            idempotent=True,
        )

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        resp = await self._conn.unary(
            _LEASE + "LeaseTimeToLive",
            pb.LeaseTimeToLiveRequest(id=lease_id, keys=keys),
            pb.LeaseTimeToLiveResponse,
            idempotent=True,
        )
        return LeaseInfo(resp.id, resp.ttl, resp.granted_ttl, list(resp.keys))

    async def leases(self) -> list[int]:
        resp = await self._conn.unary(
            _LEASE + "LeaseLeases", pb.LeaseLeasesRequest(), pb.LeaseLeasesResponse, idempotent=True
        )
        return [le.id for le in resp.leases]

    def lease_keepalive(self) -> LeaseKeepAlive:
        return LeaseKeepAlive(self._conn)

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new TTL. Raises LeaseNotFound when it is gone."""
        async with self.lease_keepalive() as ka:
            return await ka.refresh(lease_id)

    # ---- cluster and maintenance ----------------------------------------------------------------

    async def status(self, endpoint: Endpoint | None = None) -> Status:
        """Status of the current endpoint, or of the given one (over a separate channel)."""
        if endpoint is None:
            ep = self.endpoint
            resp = await self._conn.unary(
                _MAINT + "Status", pb.StatusRequest(), pb.StatusResponse, idempotent=True
            )
            ep = self._conn.endpoint if self._conn.endpoint != ep else ep
        else:
            ep = endpoint
            resp = await self._on_endpoint(endpoint, _MAINT + "Status", pb.StatusRequest(), pb.StatusResponse)
        return Status(
            endpoint=str(ep),
            header=Header.from_pb(resp.header),
            version=resp.version,
            db_size=resp.db_size,
            leader=resp.leader,
            raft_index=resp.raft_index,
            raft_term=resp.raft_term,
            raft_applied_index=resp.raft_applied_index,
            errors=list(resp.errors),
            db_size_in_use=resp.db_size_in_use,
            is_learner=resp.is_learner,
        )

    async def statuses(self) -> dict[Endpoint, Status | EtcdError]:
        """Status of every configured endpoint, concurrently; an unreachable one maps to its error."""

        async def one(ep: Endpoint) -> Status | EtcdError:
            try:
                return await self.status(ep)
            except EtcdError as e:
                return e

        results = await asyncio.gather(*(one(ep) for ep in self.config.endpoints))
        return dict(zip(self.config.endpoints, results, strict=True))

    async def snapshot(self, path: Path) -> int:
        """Stream the current member's backend database (Maintenance.Snapshot) into the new file `path`;
        returns its size. The server appends the data's sha256, which `snapshot restore` checks. No
        deadline: a large database takes its time (the caller bounds it)."""
        conn = self._conn
        if self.config.user is not None and not conn.metadata():
            await conn.authenticate()
        endpoint = str(conn.endpoint)
        fn = conn.channel().unary_stream(
            _MAINT + "Snapshot",
            request_serializer=pb.SnapshotRequest.SerializeToString,
            response_deserializer=pb.SnapshotResponse.FromString,
        )
        call = fn(pb.SnapshotRequest(), metadata=conn.metadata())
        written = 0
        try:
            with path.open("xb") as f:
                async for resp in call:
                    f.write(resp.blob)
                    written += len(resp.blob)
        except grpc.RpcError as e:
            raise map_grpc_error(e, endpoint, self.config.role, config=self.config) from None
        finally:
            call.cancel()
        return written

    async def hash_kv(self, endpoint: Endpoint, revision: int = 0) -> tuple[int, int, Header]:
        """(hash, compact_revision, header) of one member's keyspace up to revision."""
        resp = await self._on_endpoint(
            endpoint, _MAINT + "HashKV", pb.HashKVRequest(revision=revision), pb.HashKVResponse
        )
        return resp.hash, resp.compact_revision, Header.from_pb(resp.header)

    async def alarms(self) -> list[tuple[int, str]]:
        resp = await self._conn.unary(
            _MAINT + "Alarm", pb.AlarmRequest(action=pb.AlarmRequest.GET), pb.AlarmResponse, idempotent=True
        )
        return [(a.member_id, pb.AlarmType.Name(a.alarm)) for a in resp.alarms]

    async def member_list(self) -> list[Member]:
        resp = await self._conn.unary(
            _CLUSTER + "MemberList", pb.MemberListRequest(), pb.MemberListResponse, idempotent=True
        )
        return [
            Member(m.id, m.name, list(m.peer_urls), list(m.client_urls), m.is_learner) for m in resp.members
        ]

    async def _on_endpoint(self, endpoint: Endpoint, method: str, request: Any, response_type: Any) -> Any:
        channel = self._conn.open_channel(endpoint)
        try:
            if self.config.user is not None and not self._conn.metadata():
                await self._conn.authenticate()
            fn = channel.unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            timeout = self.config.dial_timeout
            reauthed = False
            while True:
                try:
                    return await fn(
                        request, timeout=timeout, metadata=self._conn.metadata(), wait_for_ready=False
                    )
                except grpc.RpcError as e:
                    err = map_grpc_error(e, str(endpoint), self.config.role, timeout, config=self.config)
                if isinstance(err, InvalidToken) and not reauthed:
                    # The member restarted and forgot our token (HashKV checks it): get a new one.
                    reauthed = True
                    await self._conn.authenticate()
                    continue
                raise err
        finally:
            await channel.close(grace=None)

    # ---- auth -----------------------------------------------------------------------------------

    async def authenticate(self) -> None:
        await self._conn.authenticate()

    async def auth_enabled(self) -> bool:
        """Whether etcd auth is enabled on the cluster, the same way on etcd 3.4 and 3.5.

        An anonymous Authenticate as a user that should not exist: etcd answers "authentication is not
        enabled" before it looks at the name when auth is off, and "authentication failed" when it is
        on; nothing changes on the server (a member logs the failed attempt). Not AuthStatus: 3.5 has
        it, 3.4 answers "unknown method". Not an unauthenticated Range either: with --client-cert-auth,
        etcd takes the client certificate's CN as the user, so such a Range may succeed with auth on.
        """
        probe = pb.AuthenticateRequest(name="etcd-dr-auth-probe", password="")
        try:
            await self._conn.unary(
                _AUTH + "Authenticate", probe, pb.AuthenticateResponse, idempotent=True, anonymous=True
            )
        except AuthNotEnabled:
            return False
        except AuthError:
            return True
        return True  # a user of that name with an empty password: auth is on all the same

    async def role_list(self) -> list[str]:
        resp = await self._conn.unary(
            _AUTH + "RoleList", pb.AuthRoleListRequest(), pb.AuthRoleListResponse, idempotent=True
        )
        return list(resp.roles)

    async def role_get(self, role: str) -> list[Permission]:
        resp = await self._conn.unary(
            _AUTH + "RoleGet", pb.AuthRoleGetRequest(role=role), pb.AuthRoleGetResponse, idempotent=True
        )
        return [Permission(_PERM_NAMES.get(p.perm_type, "read"), p.key, p.range_end) for p in resp.perm]

    async def role_grant_permission(self, role: str, perm: Permission) -> None:
        perm_type = {v: k for k, v in _PERM_NAMES.items()}[perm.perm_type]
        req = pb.AuthRoleGrantPermissionRequest(
            name=role,
            perm=pb.Permission(
                perm_type=pb.Permission.Type.ValueType(perm_type), key=perm.key, range_end=perm.range_end
            ),
        )
        await self._conn.unary(
            _AUTH + "RoleGrantPermission", req, pb.AuthRoleGrantPermissionResponse, idempotent=True
        )

    async def role_revoke_permission(self, role: str, key: bytes, range_end: bytes = b"") -> None:
        req = pb.AuthRoleRevokePermissionRequest(role=role, key=key, range_end=range_end)
        await self._conn.unary(
            _AUTH + "RoleRevokePermission", req, pb.AuthRoleRevokePermissionResponse, idempotent=True
        )

    async def user_list(self) -> list[str]:
        resp = await self._conn.unary(
            _AUTH + "UserList", pb.AuthUserListRequest(), pb.AuthUserListResponse, idempotent=True
        )
        return list(resp.users)

    async def user_get(self, name: str) -> list[str]:
        resp = await self._conn.unary(
            _AUTH + "UserGet", pb.AuthUserGetRequest(name=name), pb.AuthUserGetResponse, idempotent=True
        )
        return list(resp.roles)


class LeaseKeepAlive:
    """One LeaseKeepAlive stream for refreshing any number of leases, one request at a time.

    A broken stream is opened again on the next refresh; a lease that is gone raises LeaseNotFound.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._call: Any = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> LeaseKeepAlive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def _stream(self) -> Any:
        """The open keepalive stream, opened (and authenticated) first when there is none."""
        if self._call is None:
            if self._conn.config.user is not None and not self._conn.metadata():
                await self._conn.authenticate()
            fn = self._conn.stream(
                _LEASE + "LeaseKeepAlive", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse
            )
            self._call = fn(metadata=self._conn.metadata())
        return self._call

    async def refresh(self, lease_id: int) -> int:
        """Refresh one lease: its new TTL; LeaseNotFound when it is gone."""
        ttl = (await self.refresh_many([lease_id])).get(lease_id, 0)
        if ttl <= 0:
            raise LeaseNotFound(
                f"lease {lease_id:x} not found on {self._conn.config.role}", endpoint=str(self._conn.endpoint)
            )
        return ttl

    async def refresh_many(self, lease_ids: Sequence[int], window: int = 512) -> dict[int, int]:
        """Refresh many leases: lease id -> its new TTL, 0 for a lease that is gone. Up to `window`
        requests are written before their answers are read (etcd answers a keepalive stream in order,
        one answer per request), so refreshing thousands of leases costs a few round trips, not one
        per lease."""
        out: dict[int, int] = {}
        async with self._lock:
            for i in range(0, len(lease_ids), window):
                chunk = lease_ids[i : i + window]
                try:
                    await self._exchange(chunk, out)
                except Unavailable:
                    # A stream opened earlier may have broken since (member restarted, connection
                    # dropped), or the member may be gone: a keepalive is idempotent, so it is sent once
                    # more, on a fresh stream, on the next endpoint.
                    await self._exchange(chunk, out)
        return out

    async def _exchange(self, lease_ids: Sequence[int], out: dict[int, int]) -> None:
        ep = self._conn.endpoint
        try:
            call = await self._stream()
            for lease_id in lease_ids:
                await call.write(pb.LeaseKeepAliveRequest(id=lease_id))
            async with asyncio.timeout(self._conn.config.request_timeout):  # not wait_for: see replay
                for _ in lease_ids:
                    resp = await read_stream(call)
                    if resp is grpc.aio.EOF:
                        raise EOFError
                    out[resp.id] = max(int(resp.ttl), 0)
        except (
            grpc.RpcError,
            asyncio.InvalidStateError,
            asyncio.CancelledError,
            EOFError,
            TimeoutError,
        ) as e:
            if isinstance(e, asyncio.CancelledError) and not closed_under_us():
                raise
            raise await self._broken(e, ep) from None

    async def _broken(self, e: BaseException, ep: Endpoint) -> EtcdError:
        """The one handler of a failed exchange: the stream is closed (the next exchange opens a new
        one), the endpoint rotated when it is unavailable; returns the error to raise."""
        await self.close()
        endpoint, role = str(ep), self._conn.config.role
        if isinstance(e, grpc.RpcError):
            err = map_grpc_error(e, endpoint, role, config=self._conn.config)
        else:
            if isinstance(e, TimeoutError):
                what = "lease keepalive timed out"
            elif isinstance(e, EOFError):
                what = "keepalive stream closed"  # the server ended the stream
            else:
                # InvalidStateError / CancelledError: the call had already ended (its connection broke
                # since the last refresh), or another call closed the channel under it.
                what = "keepalive stream broken"
            err = Unavailable(f"{role} endpoint {endpoint}: {what}", endpoint=endpoint)
        if isinstance(err, Unavailable):
            await self._conn.rotate(ep)
        return err
