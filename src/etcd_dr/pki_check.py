"""`etcd-dr pki check`: the certificates etcd members present, or certificate files, checked for what
breaks a deployment: expiry, a host name the certificate does not name, a CA that did not sign it.

For an endpoint, a TLS handshake (Python's ssl module, with the client certificate if given) reads the
server certificate the member presents; then

- expiry: days left; under --warn-days a warning, expired an error;
- the endpoint's host (IP or DNS name) must be among the certificate's SANs (etcd's clients, written in
  Go, ignore the CN): an error otherwise;
- with --cacert, the certificate must chain to that CA (checked by OpenSSL, expiry aside): an error
  otherwise;
- with a client certificate, the member must accept it (an alert after the handshake is an error).

A file is checked the same way (expiry; with --hosts, the SANs; with --cacert, the signature), and its
key usages are shown. Results are data (`CheckReport`); the CLI prints them as lines or one JSON object.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from . import pki
from .errors import UsageError
from .etcd import ConfigError, Endpoint, parse_endpoints

__all__ = [
    "DEFAULT_WARN_DAYS",
    "CertReport",
    "CheckReport",
    "Finding",
    "check_endpoints",
    "check_files",
    "format_human",
    "host_in_sans",
]

DEFAULT_WARN_DAYS = 30
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: verify the chain, leave expiry to our own (clearer) check.
_NO_CHECK_TIME = 0x200000

Level = Literal["ok", "warning", "error"]


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str


@dataclass
class CertReport:
    """One endpoint's (or file's) certificate and what was found about it."""

    target: str  # the endpoint as given, or the file path
    kind: Literal["endpoint", "file"]
    host: str | None = None
    port: int | None = None
    error: str | None = None  # could not connect / read: no certificate to judge (exit 2)
    subject_cn: str | None = None
    issuer_cn: str | None = None
    sans: list[str] = field(default_factory=list)
    usages: list[str] = field(default_factory=list)
    not_after: str | None = None  # ISO 8601, UTC
    days_left: int | None = None
    host_in_sans: bool | None = None
    trusted: bool | None = None  # None: no --cacert to check against
    client_cert_accepted: bool | None = None
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, message: str) -> None:
        self.findings.append(Finding(level, message))


@dataclass
class CheckReport:
    certificates: list[CertReport]
    warn_days: int
    strict: bool = False

    @property
    def errors(self) -> int:
        return sum(1 for c in self.certificates for f in c.findings if f.level == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for c in self.certificates for f in c.findings if f.level == "warning")

    @property
    def unreachable(self) -> list[CertReport]:
        return [c for c in self.certificates if c.error is not None]

    @property
    def exit_code(self) -> int:
        """0 all good, 1 a problem found (a warning too with `strict`), 2 a target could not be read."""
        if self.unreachable:
            return 2
        if self.errors or (self.strict and self.warnings):
            return 1
        return 0

    def summary(self) -> str:
        n = len(self.certificates)
        what = "certificate" if n == 1 else "certificates"
        parts = [f"{n} {what} checked", f"{self.errors} error(s)", f"{self.warnings} warning(s)"]
        if self.unreachable:
            parts.append(f"{len(self.unreachable)} not reachable")
        return ", ".join(parts)

    def first_problem(self) -> str | None:
        """The line the CLI ends with when the exit code is not 0."""
        for c in self.certificates:
            if c.error is not None:
                return f"{c.target}: {c.error}"
        for level in ("error", "warning"):
            for c in self.certificates:
                for f in c.findings:
                    if f.level == level:
                        return f"{c.target}: {f.message}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "warn_days": self.warn_days,
            "errors": self.errors,
            "warnings": self.warnings,
            "certificates": [asdict(c) for c in self.certificates],
        }

    def json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2)


# ---------------------------------------------------------------------------------------------------
# shared checks


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def host_in_sans(host: str, sans: Sequence[x509.GeneralName]) -> bool:
    """Whether `host` (an IP or a DNS name) is named by the SANs, as Go's crypto/x509 decides it: IPs
    against IP SANs, names against DNS SANs (a leading "*." matches exactly one label)."""
    h = host.strip("[]")
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        ip = None
    if ip is not None:
        return any(isinstance(n, x509.IPAddress) and n.value == ip for n in sans)
    name = h.rstrip(".").lower()
    for n in sans:
        if not isinstance(n, x509.DNSName):
            continue
        pattern = n.value.rstrip(".").lower()
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name:
            label, rest = name.split(".", 1)
            if label and rest == pattern[2:]:
                return True
    return False


def _sans_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n for n in ext if isinstance(n, x509.DNSName | x509.IPAddress)]


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not attrs:
        return None
    v = attrs[0].value
    return v if isinstance(v, str) else v.decode("utf-8", "replace")


def _judge_expiry(report: CertReport, not_after: dt.datetime, warn_days: int) -> None:
    left = not_after - _now()
    days = int(left.total_seconds() // 86400)
    report.not_after = not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    report.days_left = days
    if left.total_seconds() <= 0:
        report.add("error", f"certificate expired on {not_after:%Y-%m-%d %H:%M} UTC ({-days} days ago)")
    elif days < warn_days:
        report.add(
            "warning",
            f"certificate expires in {days} days, on {not_after:%Y-%m-%d} (under --warn-days {warn_days})",
        )
    else:
        report.add("ok", f"expires in {days} days, on {not_after:%Y-%m-%d}")


def _judge_host(report: CertReport, host: str, sans: Sequence[x509.GeneralName]) -> None:
    ok = host_in_sans(host, sans)
    report.host_in_sans = ok
    shown = ", ".join(report.sans) or "none"
    if ok:
        report.add("ok", f"host {host} is in the SANs")
    else:
        report.add(
            "error",
            f"host {host} is not in the certificate's SANs ({shown}): clients dialing {host} will refuse it",
        )


def _fill(report: CertReport, cert: x509.Certificate) -> list[x509.GeneralName]:
    sans = _sans_of(cert)
    report.subject_cn = _cn(cert.subject)
    report.issuer_cn = _cn(cert.issuer)
    report.sans = [str(n.value) for n in sans]
    return sans


def _check_warn_days(warn_days: int) -> None:
    if isinstance(warn_days, bool) or not isinstance(warn_days, int) or warn_days < 0:
        raise UsageError(f"--warn-days must be a whole number of at least 0, not {warn_days!r}")


# ---------------------------------------------------------------------------------------------------
# endpoints


@dataclass(frozen=True)
class _TLSFiles:
    cacert: Path | None
    cert: Path | None
    key: Path | None


def _contexts(files: _TLSFiles) -> tuple[ssl.SSLContext, ssl.SSLContext | None]:
    """(a context that accepts any server certificate, to read it; a verifying one if --cacert)."""
    if (files.cert is None) != (files.key is None):
        missing = "--key" if files.key is None else "--cert"
        raise UsageError(f"--cert and --key go together: {missing} is missing")

    def base() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # our own SAN check names the host; OpenSSL's would hide the chain result
        if files.cert is not None and files.key is not None:
            for flag, p in (("--cert", files.cert), ("--key", files.key)):
                if not p.is_file():
                    raise UsageError(f"{flag} {p}: no such file")
            try:
                ctx.load_cert_chain(str(files.cert), str(files.key))
            except (ssl.SSLError, OSError) as e:
                raise UsageError(
                    f"--cert {files.cert} / --key {files.key}: cannot load the client certificate and key "
                    f"({getattr(e, 'reason', None) or e})"
                ) from None
        return ctx

    reader = base()
    reader.verify_mode = ssl.CERT_NONE
    verifier: ssl.SSLContext | None = None
    if files.cacert is not None:
        if not files.cacert.is_file():
            raise UsageError(f"--cacert {files.cacert}: no such file")
        verifier = base()
        verifier.verify_mode = ssl.CERT_REQUIRED
        try:
            verifier.load_verify_locations(cafile=str(files.cacert))
        except (ssl.SSLError, OSError) as e:
            raise UsageError(f"--cacert {files.cacert}: not a PEM CA certificate ({e})") from None
        verifier.verify_flags = ssl.VerifyFlags(int(verifier.verify_flags) | _NO_CHECK_TIME)
    return reader, verifier


class _Unreachable(Exception):
    pass


@dataclass
class _Handshake:
    der: bytes
    alert: ssl.SSLError | None  # what the member said after the handshake (a refused client certificate)
    answered: bool  # the member answered our HTTP request


def _handshake(ctx: ssl.SSLContext, ep: Endpoint, timeout: float, client_cert: Path | None) -> _Handshake:
    """Connect, handshake, and send one HTTP request (etcd serves /version on client and peer ports):
    under TLS 1.3 a member refuses a client certificate only after the handshake, with an alert."""
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except TimeoutError:
        raise _Unreachable(f"cannot connect: no answer within {timeout:g} s") from None
    except OSError as e:
        raise _Unreachable(f"cannot connect: {e.strerror or e}") from None
    try:
        with ctx.wrap_socket(sock, server_hostname=ep.host) as tls:
            der = tls.getpeercert(binary_form=True)
            if der is None:
                raise _Unreachable("the server presented no certificate")
            alert: ssl.SSLError | None = None
            answered = False
            request = f"GET /version HTTP/1.1\r\nHost: {ep.target}\r\nConnection: close\r\n\r\n"
            # A write can fail on the closed connection before the member's alert is read: read anyway.
            with contextlib.suppress(OSError):
                tls.sendall(request.encode())
            try:
                answered = bool(tls.recv(1))
            except ssl.SSLError as e:
                alert = e
            except OSError:
                pass  # a reset or a timeout says nothing certain about our certificate
            return _Handshake(der, alert, answered)
    except ssl.SSLCertVerificationError:
        raise
    except (ssl.SSLError, OSError) as e:
        # A plain-http member answers a TLS hello with an error record, an EOF or a reset, depending on
        # timing: ask it plainly instead of guessing from the failure.
        if _speaks_plain_http(ep, timeout):
            raise _Unreachable(
                "TLS handshake failed: the endpoint does not speak TLS (plain http?): it answers plain HTTP"
            ) from None
        if isinstance(e, ssl.SSLError):
            raise _Unreachable(f"TLS handshake failed: {_ssl_reason(e, client_cert)}") from None
        if isinstance(e, TimeoutError):
            raise _Unreachable(f"TLS handshake: no answer within {timeout:g} s") from None
        raise _Unreachable(f"connection failed during the TLS handshake: {e.strerror or e}") from None
    finally:
        sock.close()


def _speaks_plain_http(ep: Endpoint, timeout: float) -> bool:
    """Whether the endpoint answers a plain HTTP request (etcd serves /version on its client and peer
    ports) with an HTTP response."""
    try:
        with socket.create_connection((ep.host, ep.port), timeout=timeout) as sock:
            sock.sendall(f"GET /version HTTP/1.1\r\nHost: {ep.target}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def _client_cert_refused(e: ssl.SSLError) -> bool:
    reason = (e.reason or "").lower()
    return any(
        a in reason
        for a in (
            "alert_bad_certificate",
            "alert_unknown_ca",
            "alert_certificate_required",
            "alert_handshake_failure",
        )
    )


def _ssl_reason(e: ssl.SSLError, client_cert: Path | None) -> str:
    reason = (e.reason or "").lower()
    if any(x in reason for x in ("wrong_version_number", "record_layer_failure", "packet_length_too_long")):
        return "the endpoint does not speak TLS (plain http?)"
    if "unexpected_eof" in reason or isinstance(e, ssl.SSLEOFError):
        return "the endpoint closed the connection during the handshake: does it speak TLS (plain http?)"
    if _client_cert_refused(e):
        if client_cert is None:
            return f"the member requires a client certificate: give --cert and --key ({reason})"
        return f"the member refused our client certificate --cert {client_cert} ({reason})"
    return reason.replace("_", " ") or str(e)


def _check_endpoint(ep: Endpoint, files: _TLSFiles, warn_days: int, timeout: float) -> CertReport:
    report = CertReport(target=str(ep), kind="endpoint", host=ep.host, port=ep.port)
    reader, verifier = _contexts(files)
    try:
        hs: _Handshake | None = None
        if verifier is not None:
            try:
                hs = _handshake(verifier, ep, timeout, files.cert)
                report.trusted = True
            except ssl.SSLCertVerificationError as e:
                report.trusted = False
                report.add(
                    "error", f"certificate is not signed by --cacert {files.cacert} ({e.verify_message})"
                )
        if hs is None:
            hs = _handshake(reader, ep, timeout, files.cert)
    except _Unreachable as e:
        report.error = str(e)
        report.findings = []
        return report

    cert = x509.load_der_x509_certificate(hs.der)
    sans = _fill(report, cert)
    if report.trusted:
        report.add("ok", f"chains to --cacert {files.cacert}")
    _judge_expiry(report, cert.not_valid_after_utc, warn_days)
    _judge_host(report, ep.host, sans)
    refused = hs.alert is not None and _client_cert_refused(hs.alert)
    if files.cert is not None:
        report.client_cert_accepted = not refused
        if refused:
            assert hs.alert is not None
            # Nothing can talk to this member with that certificate: a TLS configuration error (exit 2).
            report.error = _ssl_reason(hs.alert, files.cert)
    elif refused:
        report.add("ok", "the member requires a client certificate (client-cert-auth is on)")
    elif hs.answered:
        report.add("warning", "the member answered without a client certificate (client-cert-auth is off)")
    # Errors first, then warnings, then what is fine.
    order = {"error": 0, "warning": 1, "ok": 2}
    report.findings.sort(key=lambda f: order[f.level])
    return report


def check_endpoints(
    endpoints: str | Sequence[str],
    *,
    cacert: Path | str | None = None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    warn_days: int = DEFAULT_WARN_DAYS,
    timeout: float = 5.0,
    strict: bool = False,
) -> CheckReport:
    """Handshake with every endpoint (in parallel) and judge the certificate each one presents."""
    _check_warn_days(warn_days)
    try:
        eps = parse_endpoints(endpoints if isinstance(endpoints, str) else list(endpoints))
    except ConfigError as e:
        raise UsageError(f"--endpoints: {e}") from None
    files = _TLSFiles(*(Path(p) if p is not None else None for p in (cacert, cert, key)))
    _contexts(files)  # usage errors (missing / unreadable files) before any connection

    def one(ep: Endpoint) -> CertReport:
        return _check_endpoint(ep, files, warn_days, timeout)

    with ThreadPoolExecutor(max_workers=min(16, len(eps))) as pool:
        reports = list(pool.map(one, eps))
    return CheckReport(reports, warn_days, strict)


# ---------------------------------------------------------------------------------------------------
# files


def check_files(
    paths: Sequence[Path | str],
    *,
    cacert: Path | str | None = None,
    hosts: Sequence[str] = (),
    warn_days: int = DEFAULT_WARN_DAYS,
    strict: bool = False,
) -> CheckReport:
    """Judge certificate files: expiry, SANs (against `hosts`), usages, signature by `cacert`."""
    _check_warn_days(warn_days)
    ca: x509.Certificate | None = None
    if cacert is not None:
        try:
            ca = x509.load_pem_x509_certificate(Path(cacert).read_bytes())
        except FileNotFoundError:
            raise UsageError(f"--cacert {cacert}: no such file") from None
        except OSError as e:
            raise UsageError(f"--cacert {cacert}: cannot read: {e.strerror or e}") from None
        except ValueError:
            raise UsageError(f"--cacert {cacert}: not a PEM certificate") from None
    reports: list[CertReport] = []
    for p in paths:
        path = Path(p)
        report = CertReport(target=str(path), kind="file")
        try:
            info = pki.describe(path)
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except pki.PkiError as e:
            raise UsageError(f"--cert-file {path}: {e}") from None
        sans = _fill(report, cert)
        report.usages = list(info.usages)
        if info.is_ca:
            report.usages.insert(0, "CA")
        if ca is not None:
            try:
                cert.verify_directly_issued_by(ca)
                report.trusted = True
                report.add("ok", f"signed by --cacert {cacert}")
            except (ValueError, TypeError, InvalidSignature):
                report.trusted = False
                report.add("error", f"not signed by --cacert {cacert} (issuer: {report.issuer_cn or '?'})")
        _judge_expiry(report, info.not_after, warn_days)
        for h in hosts:
            _judge_host(report, h, sans)
        report.add("ok", f"usages: {', '.join(report.usages) or 'none'}")
        order = {"error": 0, "warning": 1, "ok": 2}
        report.findings.sort(key=lambda f: order[f.level])
        reports.append(report)
    return CheckReport(reports, warn_days, strict)


# ---------------------------------------------------------------------------------------------------
# output


def format_human(report: CheckReport) -> list[str]:
    """One line per certificate, then one indented line per finding, then a summary line."""
    lines: list[str] = []
    for c in report.certificates:
        if c.error is not None and c.not_after is None:
            lines.append(f"{c.target}: ERROR {c.error}")
            continue
        sans = ", ".join(c.sans) or "none"
        lines.append(f"{c.target}: CN {c.subject_cn or '-'}, issuer {c.issuer_cn or '-'}, SANs {sans}")
        if c.error is not None:
            lines.append(f"  ERROR {c.error}")
        for f in c.findings:
            lines.append(f"  {f.level}: {f.message}")
    lines.append(report.summary())
    return lines
