"""Channel, TLS and auth handling: one gRPC channel at a time, moved to the next endpoint on failure.

grpc's own multi-address load balancing is not used because every etcd endpoint may be a different
host name that TLS must verify separately, and because we want to know (and log) which endpoint failed.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from ._pb import etcd_dr_v3_pb2 as pb
from .endpoints import Endpoint, parse_endpoints
from .errors import (
    AuthError,
    ConfigError,
    EtcdError,
    InvalidToken,
    TLSConfigError,
    Unavailable,
    map_grpc_error,
)

log = logging.getLogger(__name__)

# gRPC message size limits on our side. etcd bounds requests itself (--max-request-bytes, 1.5 MiB by
# default) and answers "request is too large"; responses are bounded by our paging, so a generous
# receive limit only guards against a runaway response.
MAX_RECEIVE_BYTES = 512 * 1024 * 1024
MAX_SEND_BYTES = 512 * 1024 * 1024
# The least time a connection attempt is given (grpc.min_reconnect_backoff_ms): see Connection._options.
CONNECT_ATTEMPT_MS = 1000


@dataclass(frozen=True)
class TLSConfig:
    """PEM files for TLS; any of them may be None (server-only TLS with the system roots, or no client
    certificate)."""

    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class ClientConfig:
    endpoints: tuple[Endpoint, ...]
    tls: TLSConfig | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line or a message
    dial_timeout: float = 5.0
    request_timeout: float = 30.0
    keepalive_time: float = 10.0
    keepalive_timeout: float = 5.0
    # How error messages name this connection's flags ("" for the source, "dest-" for the destination).
    flag_prefix: str = ""
    # Who this cluster is in messages: "source", "destination", "etcd".
    role: str = "etcd"
    extra_options: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def create(
        cls,
        endpoints: str | Sequence[str],
        *,
        cacert: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        user: str | None = None,
        password: str | None = None,
        insecure_transport: bool | None = None,
        **kwargs: Any,
    ) -> ClientConfig:
        """Build a config from etcdctl-style values; `user` may be "name:password" as in etcdctl."""
        prefix = kwargs.get("flag_prefix", "")
        try:
            eps = parse_endpoints(endpoints if isinstance(endpoints, str) else list(endpoints))
        except ConfigError as e:
            # Name where the endpoints came from: the destination's are the DEST argument.
            raise ConfigError(f"{'DEST' if prefix == 'dest-' else '--endpoints'}: {e}") from None
        if user is not None and password is None and ":" in user:
            user, password = user.split(":", 1)
        if user is not None and not user:
            raise ConfigError(f"--{prefix}user is empty")
        if password is not None and user is None:
            raise ConfigError(f"--{prefix}password is given without --{prefix}user")
        any_https = any(e.scheme == "https" for e in eps)
        use_tls = any_https or any(x is not None for x in (cacert, cert, key))
        if insecure_transport:
            use_tls = any_https
        tls = (
            TLSConfig(
                Path(cacert) if cacert is not None else None,
                Path(cert) if cert is not None else None,
                Path(key) if key is not None else None,
            )
            if use_tls
            else None
        )
        config = cls(endpoints=eps, tls=tls, user=user, password=password, **kwargs)
        if tls is not None and (tls.cert is None) != (tls.key is None):
            missing = "key" if tls.key is None else "cert"
            raise TLSConfigError(
                f"--{config.flag_prefix}cert and --{config.flag_prefix}key go together: "
                f"--{config.flag_prefix}{missing} is missing"
            )
        return config

    def with_role(self, role: str, flag_prefix: str) -> ClientConfig:
        return replace(self, role=role, flag_prefix=flag_prefix)

    @property
    def endpoints_text(self) -> str:
        return ",".join(str(e) for e in self.endpoints)


def _read_pem(path: Path, flag: str, kind: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{flag} {path}: no such file", path=str(path)) from None
    except IsADirectoryError:
        raise TLSConfigError(f"{flag} {path}: is a directory, not a PEM file", path=str(path)) from None
    except OSError as e:
        raise TLSConfigError(f"{flag} {path}: cannot read: {e.strerror}", path=str(path)) from None
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"{flag} {path}: not a PEM {kind}", path=str(path))
    return data


def load_credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    """Read and check the TLS files; every problem is reported naming the flag and the file."""
    tls = config.tls
    assert tls is not None
    p = config.flag_prefix
    root = _read_pem(tls.cacert, f"--{p}cacert", "certificate") if tls.cacert else None
    chain = _read_pem(tls.cert, f"--{p}cert", "certificate") if tls.cert else None
    key = _read_pem(tls.key, f"--{p}key", "private key") if tls.key else None
    # Check here what grpc would only report as an opaque handshake failure later.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if root is not None:
        try:
            x509.load_pem_x509_certificates(root)
        except ValueError:
            raise TLSConfigError(
                f"--{p}cacert {tls.cacert}: not a valid PEM certificate", path=str(tls.cacert)
            ) from None
    if chain is not None and key is not None:
        try:
            cert_obj = x509.load_pem_x509_certificates(chain)[0]
        except ValueError:
            raise TLSConfigError(
                f"--{p}cert {tls.cert}: not a valid PEM certificate", path=str(tls.cert)
            ) from None
        try:
            key_obj = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as e:
            raise TLSConfigError(
                f"--{p}key {tls.key}: not a usable PEM private key ({e})", path=str(tls.key)
            ) from None
        if cert_obj.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key_obj.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise TLSConfigError(
                f"--{p}cert {tls.cert} does not match --{p}key {tls.key}", path=str(tls.cert)
            )
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


# ---- the connection -------------------------------------------------------------------------------

M = TypeVar("M", bound=Message)


def closed_under_us() -> bool:
    """Whether an asyncio.CancelledError just raised by a grpc call means that its channel was closed
    (grpc cancels the calls of a closed channel) rather than that the calling task is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


# Stream calls whose first read has completed (see read_stream).
_started: weakref.WeakSet[Any] = weakref.WeakSet()
# How often a read left behind by a cancel is cancelled again until it ends (see read_stream).
RECANCEL_EVERY = 1.0


async def read_stream(call: Any) -> Any:
    """`call.read()` of a grpc stream call, except that a cancel of the calling task always arrives.

    grpc's first read of a call waits for the call's start inside grpc (its `_preparation` task), which
    swallows a cancel that arrives then: it cancels the call and returns normally, so the read goes on
    to wait for a message on a cancelled call, forever, and the caller's cancel is lost (measured with
    grpcio 1.85: about 1 cancel in 100 in a watch's first milliseconds). A mirror then cannot stop its
    watch: its cycle, and its shutdown on SIGTERM, wait forever. So the first read runs as a task of its
    own that the caller waits for: the caller's cancel always raises here; the read left behind is
    cancelled again until it ends. Later reads wait on the message alone, where a cancel does arrive."""
    if call in _started:
        return await call.read()
    read = asyncio.ensure_future(call.read())
    try:
        await asyncio.wait({read})
    except asyncio.CancelledError:
        _end(read)
        raise
    _started.add(call)
    return read.result()


def _end(task: asyncio.Future[Any]) -> None:
    """Cancel `task` until it ends (a cancel can be lost, see read_stream); its outcome is dropped."""
    loop = asyncio.get_running_loop()

    def again() -> None:
        if not task.done():
            task.cancel()
            loop.call_later(RECANCEL_EVERY, again)

    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning at exit
    again()


class Connection:
    """Holds the current channel, the auth token, and the rotation between endpoints."""

    def __init__(self, config: ClientConfig, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.config = config
        self._index = 0
        self._channel: grpc.aio.Channel | None = None
        self._credentials: grpc.ChannelCredentials | None = None
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._callables: dict[str, Any] = {}
        self._closed = False
        # Counts rotations: a call remembers the epoch its channel belongs to, so that its failure
        # moves the connection only if nobody moved it since (see rotate).
        self._epoch = 0
        if config.tls is not None:
            # Read the files now, so that a bad file is reported before any network activity.
            self._credentials = credentials or load_credentials(config)

    def sibling(self) -> Connection:
        """Another connection to the same cluster, from the endpoint this one uses now, with its TLS
        material and auth token: a channel (TCP connection, HTTP/2 flow-control windows) of its own."""
        other = Connection(self.config, self._credentials)
        other._index = self._index
        other._token = self._token
        return other

    def connect(self) -> None:
        """Start connecting now, in the background, so that the first call does not wait for the TCP,
        TLS and HTTP/2 handshakes (a round trip or more each to a far destination)."""
        self.channel().get_state(try_to_connect=True)

    # channel management

    @property
    def endpoint(self) -> Endpoint:
        return self.config.endpoints[self._index]

    def _options(self) -> list[tuple[str, Any]]:
        c = self.config
        options = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.keepalive_time_ms", int(c.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(c.keepalive_timeout * 1000)),
            # Current grpc waits for a keepalive ping's ack this long (default 1 min), not for
            # keepalive_timeout_ms: without it a silently dead connection is noticed after 70 s.
            ("grpc.http2.ping_timeout_ms", int(c.keepalive_timeout * 1000)),
            # Ping only while a call is open: etcd (grpc-go, PermitWithoutStream=false) counts pings on
            # an idle connection as abuse and closes it with GOAWAY "too_many_pings" after three.
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            # Reconnect quickly: a replicator wants to be back within a second of the peer's return,
            # not after grpc's default backoff of up to two minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            # grpc gives a connection attempt max(backoff, this) to finish its TCP, TLS and HTTP/2
            # handshakes. At 100 ms a far site never connected: over a 100 ms round trip with TLS (about
            # 0.3 s of handshakes) every attempt was cut short, and each failed request's fresh channel
            # started again from 100 ms (20 requests in 4 s, none answered); at 1 s the first request
            # is answered after 0.31 s. A member that does not answer at all costs 1 s an attempt.
            ("grpc.min_reconnect_backoff_ms", CONNECT_ATTEMPT_MS),
            ("grpc.enable_retries", 0),
            # A channel of its own connections: grpc otherwise shares subchannels between channels to
            # the same address, and a new channel to a member that just came back would inherit the
            # old connection's failure (and its reconnect backoff) instead of dialing afresh.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        # grpc takes the first of repeated options: merge, so that extra_options really override.
        return list({**dict(options), **dict(c.extra_options)}.items())

    def channel(self) -> grpc.aio.Channel:
        if self._closed:
            raise EtcdError("client is closed")
        if self._channel is None:
            target = self.endpoint.target
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(target, self._credentials, options=self._options())
            else:
                self._channel = grpc.aio.insecure_channel(target, options=self._options())
            self._callables = {}
        return self._channel

    def open_channel(self, endpoint: Endpoint) -> grpc.aio.Channel:
        """A separate channel to one given endpoint (for per-member status); the caller closes it."""
        if self._credentials is not None:
            return grpc.aio.secure_channel(endpoint.target, self._credentials, options=self._options())
        return grpc.aio.insecure_channel(endpoint.target, options=self._options())

    @property
    def epoch(self) -> int:
        """Which channel calls made now go on: changes at every rotation."""
        return self._epoch

    async def rotate(self, failed: Endpoint | None = None, *, epoch: int | None = None) -> None:
        # Closing the channel cancels every call still on it: their callers see that as
        # asyncio.CancelledError from grpc, told apart from a real cancel by `closed_under_us`.
        """Move to the next endpoint (if `failed` is still the current one and, given `epoch`, the
        channel of that epoch is still the current one)."""
        if failed is not None and failed != self.endpoint:
            return  # another caller already moved on
        if epoch is not None and epoch != self._epoch:
            # The failed call's channel was already replaced, and the calls on it cancelled, by
            # another caller's rotation: moving again would close the new channel under the calls
            # that already resumed on it (with one endpoint, the same endpoint's fresh channel),
            # and each of those would then move it once more.
            return
        self._epoch += 1
        old = self._channel
        self._channel = None
        self._callables = {}
        if len(self.config.endpoints) > 1:
            self._index = (self._index + 1) % len(self.config.endpoints)
            log.info("%s: switching to endpoint %s", self.config.role, self.endpoint)
        if old is not None:
            await old.close(grace=None)

    async def close(self) -> None:
        self._closed = True
        # A call made after close (a helper task still running) gets "client is closed" from channel(),
        # not grpc's UsageError from a cached callable of the closed channel.
        self._callables = {}
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None

    # metadata and auth

    def metadata(self, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        md = tuple(extra)
        if self._token:
            md = (*md, ("token", self._token))
        return md

    async def authenticate(self) -> None:
        """Get a token for user/password (no-op without a user); also used when the token goes stale."""
        c = self.config
        if c.user is None:
            return
        async with self._auth_lock:
            attempts = len(c.endpoints)  # an unavailable endpoint moves on, once around the list
            while True:
                endpoint, epoch = self.endpoint, self._epoch
                fn = self.channel().unary_unary(
                    "/etcdserverpb.Auth/Authenticate",
                    request_serializer=pb.AuthenticateRequest.SerializeToString,
                    response_deserializer=pb.AuthenticateResponse.FromString,
                )
                try:
                    resp = await fn(
                        pb.AuthenticateRequest(name=c.user, password=c.password or ""),
                        timeout=c.request_timeout,
                    )
                except grpc.RpcError as e:
                    err = map_grpc_error(e, str(endpoint), c.role, c.request_timeout, config=c)
                    if isinstance(err, AuthError):
                        raise type(err)(
                            f"{c.role} endpoint {endpoint}: authentication failed for user {c.user!r} "
                            f"(--{c.flag_prefix}user/--{c.flag_prefix}password): {e.details()}",
                            endpoint=str(endpoint),
                        ) from None
                    if isinstance(err, Unavailable):
                        await self.rotate(endpoint, epoch=epoch)
                        attempts -= 1
                        if attempts > 0:
                            continue
                    raise err from None
                self._token = resp.token
                return

    # calls

    def _callable(self, method: str, request: Message, response_type: type[M]) -> Any:
        fn = self._callables.get(method)
        if fn is None:
            fn = self.channel().unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            self._callables[method] = fn
        return fn

    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        idempotent: bool,
        timeout: float | None = None,
        anonymous: bool = False,
    ) -> M:
        """Call a unary RPC. Reads (idempotent) move to the next endpoint and try again when one is
        unavailable, once around the list; writes never retry here (their outcome is unknown).
        `anonymous`: send it without authenticating and without the token (a probe of the server)."""
        c = self.config
        timeout = timeout if timeout is not None else c.request_timeout
        attempts = len(c.endpoints) if idempotent else 1
        reauthed = False
        widened = False
        if c.user is not None and self._token is None and not anonymous:
            await self.authenticate()
        while True:
            endpoint, epoch = self.endpoint, self._epoch
            fn = self._callable(method, request, response_type)
            metadata = () if anonymous else self.metadata()
            try:
                resp: M = await fn(request, timeout=timeout, metadata=metadata, wait_for_ready=False)
                return resp
            except grpc.RpcError as e:
                err = map_grpc_error(e, str(endpoint), c.role, timeout, config=c)
            except asyncio.CancelledError:
                if not closed_under_us():
                    raise
                err = Unavailable(
                    f"{c.role} endpoint {endpoint}: the connection was closed while the request was in "
                    "flight (another request found the endpoint failing)",
                    endpoint=str(endpoint),
                    maybe_applied=True,
                )
            if isinstance(err, InvalidToken) and not reauthed and not anonymous:
                reauthed = True  # the request was rejected, not applied: safe to send again
                await self.authenticate()
                continue
            if isinstance(err, Unavailable):
                await self.rotate(endpoint, epoch=epoch)
                if not idempotent:
                    if err.maybe_applied:
                        raise err  # outcome unknown: never resend a write
                    if not widened:
                        # A write that never left: safe to send to the next endpoint, once around the list.
                        widened = True
                        attempts = len(c.endpoints)
                attempts -= 1
                if attempts > 0:
                    log.debug("retrying on %s after: %s", self.endpoint, err)
                    continue
            raise err

    def stream(self, method: str, request_type: type[Message], response_type: type[M]) -> Callable[..., Any]:
        return self.channel().stream_stream(
            method,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
