"""How grpc's failure messages map to our typed errors: which are TLS problems (fatal at once) and
which are a connection closing or never made (transient, retried). The messages are grpc's own, as
seen in runs against real etcd; the error object only carries a code and those details."""

from __future__ import annotations

import grpc
import pytest

from etcd_dr.etcd import TLSError, Unavailable
from etcd_dr.etcd.errors import map_grpc_error


class _Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


CONNECT = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: "


@pytest.mark.parametrize(
    ("details", "never_sent"),
    [
        (CONNECT + "tcp handshaker shutdown", True),
        (CONNECT + "Handshake read failed (Endpoint closing)", True),
        (CONNECT + "Handshake write failed", True),
        (CONNECT + "Failed to connect to remote host: Connection refused", True),
        ("Socket closed", False),
    ],
)
def test_connections_closing_or_never_made_are_transient(details: str, never_sent: bool) -> None:
    err = map_grpc_error(_Failure(grpc.StatusCode.UNAVAILABLE, details), "127.0.0.1:2379", "source")
    assert isinstance(err, Unavailable), err
    assert err.maybe_applied is not never_sent


@pytest.mark.parametrize(
    "details",
    [
        CONNECT + "Ssl handshake failed: SSL_ERROR_SSL: error:1000007d:SSL routines:"
        "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED",
        CONNECT + "Handshake failed",
        # A server certificate without the name the client asked for (grpc's own hostname check).
        "Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.",
    ],
)
def test_tls_failures_are_fatal(details: str) -> None:
    err = map_grpc_error(_Failure(grpc.StatusCode.UNAVAILABLE, details), "127.0.0.1:2379", "source")
    assert isinstance(err, TLSError), err


@pytest.mark.parametrize(
    ("code", "details", "plain"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            CONNECT + "Failed to connect to remote host: Connection refused",
            "source endpoint 127.0.0.1:2379 unavailable: cannot connect (connection refused)",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            CONNECT + "tcp handshaker shutdown",
            "source endpoint 127.0.0.1:2379 unavailable: cannot connect (no answer)",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv6:[::1]:2379: "
            "Failed to connect to remote host: Connection refused",
            "source endpoint 127.0.0.1:2379 unavailable: cannot connect (connection refused)",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            CONNECT + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
            "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
            "source endpoint 127.0.0.1:2379: TLS handshake failed: certificate verify failed: unable to get "
            "local issuer certificate",
        ),
        (
            grpc.StatusCode.UNKNOWN,
            "etcdserver: some new failure",
            "source endpoint 127.0.0.1:2379: etcdserver: some new failure",
        ),
    ],
)
def test_messages_carry_no_grpc_internals(code: grpc.StatusCode, details: str, plain: str) -> None:
    """Our message names the endpoint and says what happened in words: no status names, subchannel
    addresses or OpenSSL error codes (they made `etcd-dr: error:` lines long and cryptic)."""
    err = map_grpc_error(_Failure(code, details), "127.0.0.1:2379", "source")
    assert str(err) == plain


def test_our_grpc_cores_internal_error_is_a_broken_call_retried() -> None:
    """grpc's own "Internal error from Core" (a call refused by our side as its channel went away; it
    ended a mirror reading in windows with exit 2 once) is a broken stream, resumed, not a server error."""
    err = map_grpc_error(
        _Failure(grpc.StatusCode.INTERNAL, "Internal error from Core"), "127.0.0.1:2379", "source"
    )
    assert isinstance(err, Unavailable), err
