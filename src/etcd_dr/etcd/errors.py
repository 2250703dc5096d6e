"""Typed errors of the etcd client layer.

Nothing above `etcd_dr.etcd` sees a grpc exception: every failure is one of these, with a message that
names the endpoint (and, for TLS, the file) involved, so the CLI can print it as it is. grpc's failures
become these through one table (`map_grpc_error`, at the end).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import grpc

from ..errors import EtcdDrError

if TYPE_CHECKING:
    from .connection import ClientConfig


class EtcdError(EtcdDrError):
    """Base of all client errors (exit code 2): a branch of etcd-dr's one error tree (etcd_dr.errors)."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class ConfigError(EtcdError):
    """The client configuration itself is wrong (malformed endpoint, unreadable file): a usage error."""


class TLSConfigError(ConfigError):
    """A TLS file is missing, unreadable, not PEM, or the certificate does not match its key."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class TransientError(EtcdError):
    """A failure that may go away by itself; a daemon retries it with backoff."""


class Unavailable(TransientError):
    """No usable endpoint answered (connection refused or cut, no leader, timeout).

    For a write this means "unknown outcome": the request may or may not have been applied, unless
    `maybe_applied` is False (the connection was never made, so nothing was sent).
    """

    def __init__(self, message: str, *, endpoint: str | None = None, maybe_applied: bool = True) -> None:
        super().__init__(message, endpoint=endpoint)
        self.maybe_applied = maybe_applied


class TLSError(EtcdError):
    """The TLS handshake failed (wrong CA, certificate rejected, plain text against TLS): not transient."""


class AuthError(EtcdError):
    """Authentication failed (wrong user or password, auth not enabled): not transient."""


class AuthNotEnabled(AuthError):
    """The cluster does not have etcd auth enabled (and was asked to authenticate)."""


class InvalidToken(AuthError):
    """The auth token expired or the server restarted: authenticate again and retry."""


class PermissionDenied(AuthError):
    """The user is authenticated but lacks permission for the request."""


class CompactedError(EtcdError):
    """The requested revision has been compacted away."""

    def __init__(self, message: str, *, compact_revision: int = 0, endpoint: str | None = None) -> None:
        super().__init__(message, endpoint=endpoint)
        self.compact_revision = compact_revision


class FutureRevisionError(EtcdError):
    """The requested revision is newer than the cluster's current revision."""


class InvalidRequest(EtcdError):
    """The server rejected the request as malformed (e.g. duplicate key in a txn)."""


class TooManyOpsError(InvalidRequest):
    """A txn has more operations than the server's --max-txn-ops."""


class RequestTooLargeError(InvalidRequest):
    """A request (or response) is larger than the server's (or gRPC's) message size limit."""


class NoSpaceError(EtcdError):
    """The cluster raised its NOSPACE alarm: its backend quota is exhausted."""


class LeaseNotFound(EtcdError):
    """The lease does not exist (expired or revoked)."""


class LeaseExists(EtcdError):
    """A lease with the requested ID already exists."""


class RoleNotFound(EtcdError):
    """The auth role does not exist (deleted, or never made)."""


class WatchCanceled(EtcdError):
    """The server canceled a watch for a reason other than compaction."""

    def __init__(self, message: str, *, reason: str = "", endpoint: str | None = None) -> None:
        super().__init__(message, endpoint=endpoint)
        self.reason = reason


# ---- grpc failures -> our errors ------------------------------------------------------------------
# One table, like httpx's mapping of its transport's exceptions: the first row whose status code (None:
# any) and message substring (None: any) match makes the error, either the class (message: where and
# grpc's details) or a function of the failure for the rows whose message needs more than that.


class Failure:
    """One grpc failure as the rows see it: where it happened and what grpc said."""

    def __init__(
        self,
        code: grpc.StatusCode | None,
        details: str,
        endpoint: str,
        role: str,
        timeout: float | None,
        config: ClientConfig | None,
    ) -> None:
        self.code, self.details, self.low = code, details, details.lower()
        self.endpoint, self.where = endpoint, f"{role} endpoint {endpoint}"
        self.timeout, self.config = timeout, config


def _unavailable(f: Failure) -> EtcdError:
    # "tcp handshaker shutdown": grpc gave up a TCP connect that got no answer (a partition, a
    # host gone), before any TLS was spoken: a transient fault, not a TLS one.
    tcp_connect = "tcp handshaker" in f.low
    # "Handshake read failed (Endpoint closing)": the server closed the connection in the middle
    # of the TLS handshake (it is stopping or restarting), not a certificate problem; "Handshake write
    # failed": the connection broke while we sent our part (seen under load in a demo's restart).
    closing = "endpoint closing" in f.low or "handshake write failed" in f.low
    if any(h in f.low for h in _TLS_HINTS) and not tcp_connect and not closing:
        return TLSError(
            f"{f.where}: TLS handshake failed{_tls_hint(f.low, f.config)}: {_short(f.details)}",
            endpoint=f.endpoint,
        )
    # grpc says "failed to connect" when no connection was made: the request was never sent.
    not_sent = tcp_connect or closing or "failed to connect" in f.low or "connection refused" in f.low
    return Unavailable(
        f"{f.where} unavailable: {_short(f.details)}", endpoint=f.endpoint, maybe_applied=not not_sent
    )


def _broken_here(f: Failure) -> EtcdError:
    return Unavailable(f"{f.where} unavailable: {_short(f.details)}", endpoint=f.endpoint)


def _timed_out(f: Failure) -> EtcdError:
    after = f" after {f.timeout:g} s" if f.timeout else ""
    return Unavailable(f"{f.where}: request timed out{after}", endpoint=f.endpoint)


def _cancelled(f: Failure) -> EtcdError:
    return Unavailable(f"{f.where}: request cancelled ({_short(f.details)})", endpoint=f.endpoint)


_Make = type[EtcdError] | Callable[[Failure], EtcdError]
_S = grpc.StatusCode

_GRPC_ERRORS: tuple[tuple[grpc.StatusCode | None, str | None, _Make], ...] = (
    # A JWT token carries the auth revision it was issued at, and any change to users, roles or
    # permissions (fencing writes, say) makes it stale ("auth: revision in header is old" comes from the
    # apply step, code UNKNOWN). Either way the request was refused before it was applied:
    # authenticate again and resend it.
    (None, "invalid auth token", InvalidToken),
    (None, "revision of auth store is old", InvalidToken),
    (None, "revision in header is old", InvalidToken),
    (None, "required revision has been compacted", CompactedError),
    (None, "required revision is a future revision", FutureRevisionError),
    (None, "too many operations in txn request", TooManyOpsError),
    (None, "request is too large", RequestTooLargeError),
    (None, "database space exceeded", NoSpaceError),
    (None, "requested lease not found", LeaseNotFound),
    (None, "lease already exists", LeaseExists),
    (None, "permission denied", PermissionDenied),
    (None, "authentication failed", AuthError),
    (None, "user name is empty", AuthError),
    (None, "user name not found", AuthError),
    (None, "authentication is not enabled", AuthNotEnabled),
    (None, "role name not found", RoleNotFound),
    (None, "duplicate key given in txn request", InvalidRequest),
    (None, "key is not provided", InvalidRequest),
    (_S.RESOURCE_EXHAUSTED, "larger than max", RequestTooLargeError),
    (_S.UNAVAILABLE, None, _unavailable),
    # Our own grpc core refusing an operation on a call whose channel is going away (seen when a watch
    # was opened as another request moved the connection): the call broke here, not on the server.
    (_S.INTERNAL, "internal error from core", _broken_here),
    (_S.DEADLINE_EXCEEDED, None, _timed_out),
    (_S.CANCELLED, None, _cancelled),
    (_S.UNAUTHENTICATED, None, AuthError),
    (_S.PERMISSION_DENIED, None, PermissionDenied),
    (_S.INVALID_ARGUMENT, None, InvalidRequest),
)

_TLS_HINTS = (
    "ssl",
    "handshake",
    "certificate",
    "tsi_",
    "tls",
    "wrong_version_number",
    "x509",
    "hostname verification",
)


def map_grpc_error(
    e: grpc.RpcError,
    endpoint: str,
    role: str = "etcd",
    timeout: float | None = None,
    *,
    config: ClientConfig | None = None,
) -> EtcdError:
    """Our error for a grpc failure: the first matching row of the table, else EtcdError."""
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    f = Failure(code, details, endpoint, role, timeout, config)
    for row_code, substring, make in _GRPC_ERRORS:
        if (row_code is None or row_code == code) and (substring is None or substring in f.low):
            if isinstance(make, type):
                return cast(EtcdError, make(f"{f.where}: {details}", endpoint=endpoint))
            return make(f)
    return EtcdError(
        f"{f.where}: {_short(details) if details else (code.name if code else 'error')}", endpoint=endpoint
    )


def _tls_hint(low: str, config: ClientConfig | None) -> str:
    """Name the file a TLS handshake failure most likely comes from (grpc's message names none)."""
    if config is None or config.tls is None:
        return ""
    tls, p = config.tls, config.flag_prefix
    if "hostname verification" in low:
        return (
            " (the server's certificate does not name the address it was reached by: "
            "see its SANs with `etcd-dr pki check`)"
        )
    if "certificate_verify_failed" in low or "unable to get local issuer" in low:
        if tls.cacert is None:
            return f" (the server's certificate is not signed by a CA the system trusts; give --{p}cacert)"
        return f" (the server's certificate is not signed by the CA in --{p}cacert {tls.cacert})"
    if "bad_certificate" in low or "certificate_required" in low or "tsi_data_corrupted" in low:
        if tls.cert is None:
            return f" (the server wants a client certificate: give --{p}cert and --{p}key)"
        return f" (the server rejected the client certificate --{p}cert {tls.cert})"
    return ""


def _short(details: str) -> str:
    """grpc's failure text in plain words: without its status names, subchannel addresses and OpenSSL
    error codes (``failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to
    connect to remote host: Connection refused`` -> ``cannot connect (connection refused)``). Our
    message already names the endpoint; these internals only make it longer and harder to search."""
    d = " ".join(details.split())
    if "last error:" in d:
        d = d.split("last error:", 1)[1].strip()
    # Status names and the subchannel's address that grpc puts in front ("UNKNOWN: ipv4:1.2.3.4:5: ").
    d = re.sub(r"^(?:[A-Z][A-Z_]+: )+", "", d)
    d = re.sub(r"^(?:ipv4|ipv6|unix|unix-abstract|dns):(?:\[[^\]]*\]|[^ ]*?)(?::\d+)?: ", "", d)
    d = re.sub(r":? ?\bOK$", "", d).strip().rstrip(":").strip()
    low = d.lower()
    if "connection refused" in low:
        return "cannot connect (connection refused)"
    if "tcp handshaker" in low:
        return "cannot connect (no answer)"
    if "endpoint closing" in low or "handshake write failed" in low:
        return "the connection was closed during the TLS handshake"
    if "socket closed" in low or "connection reset" in low:
        return "the connection was closed"
    if "hostname verification" in low:
        return "hostname verification failed"
    if "failed to connect to remote host" in low:
        reason = d.split(":", 1)[1].strip().lower() if ":" in d else ""
        return f"cannot connect ({reason})" if reason else "cannot connect"
    # TLS: keep OpenSSL's reason, in words ("certificate verify failed: unable to get local issuer
    # certificate", "sslv3 alert bad certificate").
    d = re.sub(r"\s*\(TSI_[A-Z_]+\)", "", d)
    d = re.sub(r"SSL_ERROR_[A-Z_]+: ", "", d)
    d = re.sub(r"error:[0-9a-fA-F]+:[A-Za-z ]+ routines:(?:OPENSSL_internal:)?", "", d)
    d = re.sub(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", lambda m: m.group(0).lower().replace("_", " "), d)
    d = d.replace("Tls handshake failed: ", "").replace("Handshake failed", "handshake failed")
    return (d or "no details")[:300]
