"""Typed errors of the etcd client layer.

Nothing above `etcd_dr.etcd` sees a grpc exception: every failure is one of these, with a message that
names the endpoint (and, for TLS, the file) involved, so the CLI can print it as it is.
"""

from __future__ import annotations

from ..errors import EtcdDrError


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
