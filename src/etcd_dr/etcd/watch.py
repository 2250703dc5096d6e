"""A resumable watch stream.

The rule that makes it safe for replication: after a broken stream, the watch is created again from
(the last delivered event's mod_revision + 1), never from a response header's revision. etcd delivers
all events of one revision in one response (or in fragments we join before delivering), so that point
is always a revision boundary: nothing is lost and nothing is delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict, TypeVar

import grpc
import grpc.aio

from ._pb import etcd_dr_v3_pb2 as pb
from .connection import Connection, closed_under_us, read_stream
from .endpoints import Endpoint
from .errors import (
    CompactedError,
    EtcdError,
    InvalidToken,
    TransientError,
    Unavailable,
    WatchCanceled,
    map_grpc_error,
)
from .types import Event, Header, WatchBatch

T = TypeVar("T")

log = logging.getLogger(__name__)

WATCH_METHOD = "/etcdserverpb.Watch/Watch"
# Ask the member to cancel our watch when it loses its leader, instead of leaving us on a partitioned
# member that will never deliver anything again (etcd's clientv3 does the same).
REQUIRE_LEADER = (("hasleader", "true"),)


class _NoLeader(Unavailable):
    """The member canceled the watch because it lost its leader: transient, resume elsewhere."""


class _StaleToken(EtcdError):
    """The member canceled the watch for want of a valid token (restarted member, expired token):
    authenticate again and resume. etcd 3.4 says "invalid auth token", 3.5 says "permission denied"."""


class WatchOptions(TypedDict, total=False):
    """A watch's options (the defaults of `Watch`): from `start_revision` (0: now), with each event's
    previous key-value, with progress notifications, fragmented responses, and for how long of continuous
    failure transient faults are retried (None: forever)."""

    start_revision: int
    prev_kv: bool
    progress_notify: bool
    fragment: bool
    retry_for: float | None


class Watch:
    """Async iterator of WatchBatch. Retries transient faults by itself (for `retry_for` seconds of
    continuous failure, forever when None) and raises CompactedError / WatchCanceled / other errors."""

    def __init__(
        self,
        conn: Connection,
        key: bytes,
        range_end: bytes = b"",
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        fragment: bool = True,
        retry_for: float | None = None,
    ) -> None:
        self._conn = conn
        self._key = key
        self._range_end = range_end
        self._next_revision = start_revision
        self._prev_kv = prev_kv
        self._progress_notify = progress_notify
        self._fragment = fragment
        self._retry_for = retry_for
        self._call: Any = None
        self._closed = False
        self._pending: list[Event] = []
        self._failing_since: float | None = None
        self._backoff = 0.05
        self._reauthed = False  # re-authenticated since the last watch the server accepted
        self._reauth = False  # authenticate again before the next open
        self.reconnects = 0
        self._reader: asyncio.Task[Any] | None = None  # the task inside _read, if any
        self._read_broken = False
        self._io_seq = 0  # which read or write a deferred _break_io is about
        # Where the current (or last) call was opened: its failure moves the shared connection only if
        # no sibling call moved it since (Connection.rotate). None: no call opened since the last move.
        self._call_at: tuple[Endpoint, int] | None = None

    @property
    def next_revision(self) -> int:
        """The revision the watch would resume from: the last delivered event's mod_revision + 1."""
        return self._next_revision

    def __aiter__(self) -> Watch:
        return self

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        await self._drop_call()

    async def request_progress(self) -> None:
        """Ask the server for a progress notification (delivered as an empty batch)."""
        if self._call is not None:
            # On failure the read side sees the broken stream and resumes.
            # Bounded: a write on a call ending under it can wait forever (see _io).
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError, TimeoutError):
                async with asyncio.timeout(self._conn.config.request_timeout):
                    await self._call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    async def _drop_call(self) -> None:
        call, self._call = self._call, None
        self._pending = []  # fragments of a revision not fully received are asked for again
        if call is not None:
            call.cancel()

    async def _open(self) -> None:
        if self._conn.config.user is not None and (self._reauth or not self._conn.metadata()):
            await self._conn.authenticate()
            self._reauth = False
        self._call_at = (self._conn.endpoint, self._conn.epoch)
        fn = self._conn.stream(WATCH_METHOD, pb.WatchRequest, pb.WatchResponse)
        call = fn(metadata=self._conn.metadata(REQUIRE_LEADER))
        self._call = call
        call.add_done_callback(self._call_ended)
        request = pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=self._key,
                range_end=self._range_end,
                start_revision=self._next_revision,
                progress_notify=self._progress_notify,
                prev_kv=self._prev_kv,
                fragment=self._fragment,
            )
        )
        await self._io(functools.partial(call.write, request))

    async def _failed(self, err: EtcdError) -> None:
        """A transient failure: drop the stream, wait, move endpoint, and let the loop resume."""
        # The endpoint and channel the stream was opened on, not the connection's current ones: when
        # a sibling watch or request already moved the connection (closing the channel under this
        # stream), this watch resumes on the new channel instead of moving it again under them.
        endpoint, epoch = self._call_at or (self._conn.endpoint, None)
        self._call_at = None
        await self._drop_call()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if self._retry_for is not None and now - self._failing_since > self._retry_for:
            raise Unavailable(
                f"watch on {self._conn.config.role} gave up after {self._retry_for:g} s: {err}",
                endpoint=err.endpoint,
            ) from err
        log.warning(
            "watch on %s %s broke (%s); resuming from revision %d",
            self._conn.config.role,
            endpoint,
            err,
            self._next_revision,
        )
        self.reconnects += 1
        await self._conn.rotate(endpoint, epoch=epoch)
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, 2.0)

    async def _io(self, make: Callable[[], Awaitable[T]]) -> T:
        """Await a read or write of the current call. grpc can leave either waiting forever when the
        call ends under it (a channel closed by another request's reconnect cancels the call but not
        the read, and a write still waiting for the call's start never wakes): the call's done
        callback then cancels this task, and the operation reports a broken stream instead."""
        call = self._call
        if call is None or call.cancelled():
            raise asyncio.InvalidStateError("the watch call was cancelled under us")
        task = asyncio.current_task()
        assert task is not None
        self._reader = task
        self._io_seq += 1
        try:
            result = await make()
        except asyncio.CancelledError:
            if not self._read_broken:
                raise
            self._read_broken = False
            task.uncancel()
            if task.cancelling():
                raise  # the task was also cancelled for real: that cancel wins
            raise asyncio.InvalidStateError("the watch call ended under a read or write") from None
        finally:
            self._reader = None
        if self._read_broken:
            # The break's cancel was lost inside grpc as the operation completed: take it back, or this
            # task would count a cancel it never saw (and a later real one would be taken for a break).
            self._read_broken = False
            task.uncancel()
        return result

    def _call_ended(self, call: Any) -> None:
        if call is not self._call or self._reader is None or self._closed:
            return
        if call.cancelled():
            # Cancelled locally while current: its channel was closed; a read or write on it hangs.
            self._break_io(self._io_seq)
        else:
            # Ended by the server: the pending read raises its status itself. A safety net in case not.
            asyncio.get_running_loop().call_later(2.0, self._break_io, self._io_seq)

    def _break_io(self, seq: int) -> None:
        if self._reader is not None and seq == self._io_seq and not self._closed:
            self._read_broken = True
            self._reader.cancel()

    async def __anext__(self) -> WatchBatch:
        while True:
            if self._closed:
                raise StopAsyncIteration
            try:
                if self._call is None:
                    await self._open()
                resp = await self._io(functools.partial(read_stream, self._call))
            except grpc.RpcError as e:
                err = map_grpc_error(
                    e, str(self._conn.endpoint), self._conn.config.role, config=self._conn.config
                )
                if isinstance(err, InvalidToken):
                    await self._drop_call()
                    self._reauth = True  # done by _open, where a transient failure is retried
                    continue
                if isinstance(err, TransientError):
                    await self._failed(err)
                    continue
                raise err from None
            except TransientError as err:
                # From authenticate() in _open: no endpoint answered; retry like a broken stream.
                await self._failed(err)
                continue
            except asyncio.InvalidStateError:
                await self._failed(Unavailable("watch stream closed", endpoint=str(self._conn.endpoint)))
                continue
            except asyncio.CancelledError:
                if not closed_under_us():
                    raise
                # Another call on the shared connection found the endpoint failing and closed the
                # channel under this stream: resume like any broken stream (not a cancel of ours).
                await self._failed(
                    Unavailable("connection closed by a reconnect", endpoint=str(self._conn.endpoint))
                )
                continue
            if resp is grpc.aio.EOF:
                await self._failed(
                    Unavailable("server closed the watch stream", endpoint=str(self._conn.endpoint))
                )
                continue
            try:
                batch = self._handle(resp)
            except _NoLeader as e:
                await self._failed(e)
                continue
            except _StaleToken:
                # Once per accepted watch: a real lack of permission still ends in WatchCanceled.
                self._reauthed = True
                await self._drop_call()
                self._reauth = True
                continue
            if batch is not None:
                self._failing_since = None
                self._backoff = 0.05
                return batch

    def _handle(self, resp: pb.WatchResponse) -> WatchBatch | None:
        endpoint = str(self._conn.endpoint)
        if resp.compact_revision:
            raise CompactedError(
                f"watch on {self._conn.config.role} from revision {self._next_revision}: revisions up to "
                f"{resp.compact_revision} have been compacted",
                compact_revision=resp.compact_revision,
                endpoint=endpoint,
            )
        if resp.canceled:
            reason = resp.cancel_reason
            if "no leader" in reason.lower():
                # Transient: the member lost its leader. Raised here, handled by the caller's loop.
                raise _NoLeader(f"{endpoint}: {reason}")
            stale = "invalid auth token" in reason.lower() or "permission denied" in reason.lower()
            if stale and self._conn.config.user is not None and not self._reauthed:
                raise _StaleToken(f"{endpoint}: {reason}", endpoint=endpoint)
            raise WatchCanceled(
                f"watch on {self._conn.config.role} endpoint {endpoint} canceled: "
                f"{reason or 'no reason given'}",
                reason=reason,
                endpoint=endpoint,
            )
        if resp.created:
            self._reauthed = False
            if self._next_revision == 0:
                # A watch "from now" starts after the revision the server created it at.
                self._next_revision = resp.header.revision + 1
            if not resp.events:
                return None
        events = [Event.from_pb(ev) for ev in resp.events]
        if resp.fragment:
            self._pending.extend(events)
            return None
        if self._pending:
            events = self._pending + events
            self._pending = []
        if events:
            self._next_revision = events[-1].kv.mod_revision + 1
        return WatchBatch(Header.from_pb(resp.header), events)
