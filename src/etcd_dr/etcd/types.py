"""Plain value types of the client API (no protobuf or grpc objects cross this layer's boundary)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ._pb import etcd_dr_v3_pb2 as pb

_I = TypeVar("_I")


def prefix_range_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with prefix (etcd's convention).

    The empty prefix selects the whole keyspace: range_end b"\\0".
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@dataclass(frozen=True, slots=True)
class Header:
    cluster_id: int
    member_id: int
    revision: int
    raft_term: int

    @classmethod
    def from_pb(cls, h: pb.ResponseHeader) -> Header:
        return cls(h.cluster_id, h.member_id, h.revision, h.raft_term)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @classmethod
    def from_pb(cls, kv: pb.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


class KeyValueLike(Protocol):
    """What a key-value read from etcd offers, read-only: both `KeyValue` and the key-values of a
    `RawPage` (read straight from the response, not converted one by one) have these attributes."""

    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...
    @property
    def create_revision(self) -> int: ...
    @property
    def mod_revision(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def lease(self) -> int: ...


class EventType(enum.Enum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    kv: KeyValue  # for DELETE: key and mod_revision (the deleting revision) are set
    prev_kv: KeyValue | None = None

    @classmethod
    def from_pb(cls, ev: pb.Event) -> Event:
        return cls(
            EventType.DELETE if ev.type == pb.Event.DELETE else EventType.PUT,
            KeyValue.from_pb(ev.kv),
            KeyValue.from_pb(ev.prev_kv) if ev.HasField("prev_kv") else None,
        )


@dataclass(frozen=True, slots=True)
class RangeResult:
    header: Header
    kvs: list[KeyValue]
    more: bool
    count: int


@dataclass(frozen=True, slots=True)
class RawPage:
    """One page of `EtcdClient.range_pages_raw`: the key-values as etcd sent them, unconverted (for
    loops over many keys that read only a few attributes of each). They are read-only views: do not
    modify them, and keep them only as long as the page."""

    revision: int
    kvs: Sequence[KeyValueLike]
    more: bool


@dataclass(frozen=True, slots=True)
class PutResult:
    header: Header
    prev_kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    header: Header
    deleted: int
    prev_kvs: list[KeyValue]


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


# ---- transactions -------------------------------------------------------------------------------


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn guard: `target(key) result value`, e.g. Compare.mod(b"k") == 5."""

    key: bytes
    target: CompareTarget
    result: CompareResult
    value: int | bytes
    range_end: bytes = b""

    @staticmethod
    def version(key: bytes, result: CompareResult, value: int) -> Compare:
        return Compare(key, CompareTarget.VERSION, result, value)

    @staticmethod
    def create(key: bytes, result: CompareResult, value: int) -> Compare:
        return Compare(key, CompareTarget.CREATE, result, value)

    @staticmethod
    def mod(key: bytes, result: CompareResult, value: int) -> Compare:
        return Compare(key, CompareTarget.MOD, result, value)

    @staticmethod
    def value_(key: bytes, result: CompareResult, value: bytes) -> Compare:
        return Compare(key, CompareTarget.VALUE, result, value)

    @staticmethod
    def lease(key: bytes, result: CompareResult, value: int) -> Compare:
        return Compare(key, CompareTarget.LEASE, result, value)

    def to_pb(self) -> pb.Compare:
        c = pb.Compare(
            key=self.key,
            target=pb.Compare.CompareTarget.ValueType(self.target),
            result=pb.Compare.CompareResult.ValueType(self.result),
            range_end=self.range_end,
        )
        if self.target is CompareTarget.VALUE:
            if not isinstance(self.value, bytes):
                raise TypeError("a VALUE compare takes bytes")
            c.value = self.value
        else:
            if not isinstance(self.value, int):
                raise TypeError(f"a {self.target.name} compare takes an int")
            setattr(c, _COMPARE_FIELD[self.target], self.value)
        return c


_COMPARE_FIELD = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.LEASE: "lease",
}


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0
    prev_kv: bool = False

    def to_pb(self) -> pb.RequestOp:
        return pb.RequestOp(
            request_put=pb.PutRequest(key=self.key, value=self.value, lease=self.lease, prev_kv=self.prev_kv)
        )


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False

    def to_pb(self) -> pb.RequestOp:
        return pb.RequestOp(
            request_delete_range=pb.DeleteRangeRequest(
                key=self.key, range_end=self.range_end, prev_kv=self.prev_kv
            )
        )


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    range_end: bytes = b""
    keys_only: bool = False
    count_only: bool = False
    limit: int = 0

    def to_pb(self) -> pb.RequestOp:
        return pb.RequestOp(
            request_range=pb.RangeRequest(
                key=self.key,
                range_end=self.range_end,
                keys_only=self.keys_only,
                count_only=self.count_only,
                limit=self.limit,
            )
        )


Op = Put | Delete | Get


def chunked(items: Sequence[_I], max_items: int, max_bytes: int, size: Callable[[_I], int]) -> list[list[_I]]:
    """Cut `items` into consecutive chunks of at most `max_items` items and `max_bytes` of `size`, one
    txn's worth each (an item over the byte limit goes alone)."""
    chunks: list[list[_I]] = []
    cur: list[_I] = []
    nbytes = 0
    for item in items:
        n = size(item)
        if cur and (len(cur) >= max_items or nbytes + n > max_bytes):
            chunks.append(cur)
            cur, nbytes = [], 0
        cur.append(item)
        nbytes += n
    if cur:
        chunks.append(cur)
    return chunks


class TxnBatch:
    """The write ops of one txn, built straight into the request, without an object per op: for
    writing many keys (the mirror's copy and replay). Send it with `EtcdClient.txn_batch`; a batch is
    sent once and not changed after. `len()` is its op count, `nbytes` the bytes of its keys and values.
    """

    __slots__ = ("_add", "_req", "nbytes")

    def __init__(self, ops: Iterable[Put | Delete] = ()) -> None:
        self._req = pb.TxnRequest()
        self._add = self._req.success.add
        self.nbytes = 0
        for op in ops:
            self.add(op)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        p = self._add().request_put
        p.key = key
        p.value = value
        if lease:
            p.lease = lease
        self.nbytes += len(key) + len(value)

    def delete(self, key: bytes, range_end: bytes = b"") -> None:
        d = self._add().request_delete_range
        d.key = key
        if range_end:
            d.range_end = range_end
        self.nbytes += len(key)

    def add(self, op: Put | Delete) -> None:
        if isinstance(op, Put):
            if op.prev_kv:
                raise ValueError("a TxnBatch does not return results: prev_kv is not supported")
            self.put(op.key, op.value, op.lease)
        else:
            if op.prev_kv:
                raise ValueError("a TxnBatch does not return results: prev_kv is not supported")
            self.delete(op.key, op.range_end)

    def __len__(self) -> int:
        return len(self._req.success)

    def request(self, compare: Sequence[Compare]) -> pb.TxnRequest:
        """The request with these guards (replacing any earlier ones): for the client only."""
        del self._req.compare[:]
        self._req.compare.extend(c.to_pb() for c in compare)
        return self._req


@dataclass(frozen=True, slots=True)
class OpResult:
    """The result of one op of a txn: exactly one of the fields is set."""

    range: RangeResult | None = None
    put: PutResult | None = None
    delete: DeleteResult | None = None


@dataclass(frozen=True, slots=True)
class TxnResult:
    header: Header
    succeeded: bool
    responses: list[OpResult] = field(default_factory=list)


def txn_request(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> pb.TxnRequest:
    return pb.TxnRequest(
        compare=[c.to_pb() for c in compare],
        success=[o.to_pb() for o in success],
        failure=[o.to_pb() for o in failure],
    )


def range_result(r: pb.RangeResponse) -> RangeResult:
    return RangeResult(Header.from_pb(r.header), [KeyValue.from_pb(kv) for kv in r.kvs], r.more, r.count)


def txn_result(r: pb.TxnResponse) -> TxnResult:
    out: list[OpResult] = []
    for op in r.responses:
        kind = op.WhichOneof("response")
        if kind == "response_range":
            out.append(OpResult(range=range_result(op.response_range)))
        elif kind == "response_put":
            p = op.response_put
            out.append(
                OpResult(
                    put=PutResult(
                        Header.from_pb(p.header),
                        KeyValue.from_pb(p.prev_kv) if p.HasField("prev_kv") else None,
                    )
                )
            )
        elif kind == "response_delete_range":
            d = op.response_delete_range
            out.append(
                OpResult(
                    delete=DeleteResult(
                        Header.from_pb(d.header), d.deleted, [KeyValue.from_pb(kv) for kv in d.prev_kvs]
                    )
                )
            )
        else:
            out.append(OpResult())
    return TxnResult(Header.from_pb(r.header), r.succeeded, out)


# ---- watch, lease, cluster ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """What one watch response delivered: all events of one or more whole revisions, in order.

    A batch with no events is a progress notification: every event up to `header.revision` was delivered.
    """

    header: Header
    events: list[Event]

    @property
    def is_progress(self) -> bool:
        return not self.events


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    id: int
    ttl: int  # remaining seconds; -1 when the lease has expired or does not exist
    granted_ttl: int
    keys: list[bytes]


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool


@dataclass(frozen=True, slots=True)
class Status:
    endpoint: str
    header: Header
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: list[str]
    db_size_in_use: int
    is_learner: bool

    @property
    def cluster_id(self) -> int:
        return self.header.cluster_id

    @property
    def member_id(self) -> int:
        return self.header.member_id

    @property
    def revision(self) -> int:
        return self.header.revision

    @property
    def is_leader(self) -> bool:
        return self.leader == self.header.member_id


@dataclass(frozen=True, slots=True)
class Permission:
    perm_type: str  # "read", "write", "readwrite"
    key: bytes
    range_end: bytes
