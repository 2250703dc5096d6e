"""Parsing of endpoint strings: `host:port`, `http://host:port`, `https://host:port`, IPv6 in brackets."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import ConfigError

DEFAULT_PORT = 2379

# A DNS name or label list; deliberately permissive (underscores appear in real internal names).
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    scheme: str | None = None  # "http", "https" or None when the user wrote host:port

    @property
    def target(self) -> str:
        """The gRPC target: host:port, IPv6 literals in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, tls: bool) -> str:
        scheme = self.scheme or ("https" if tls else "http")
        return f"{scheme}://{self.target}"

    def __str__(self) -> str:
        return self.url(self.scheme == "https") if self.scheme else self.target


def parse_endpoint(text: str) -> Endpoint:
    """Parse one endpoint; raises ConfigError naming it when it is malformed."""
    raw = text.strip()
    if not raw:
        raise ConfigError("empty endpoint")
    scheme: str | None = None
    rest = raw
    if "://" in raw:
        scheme, rest = raw.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"endpoint {raw!r}: scheme must be http or https, not {scheme!r}")
    rest = rest.rstrip("/")
    if "/" in rest:
        raise ConfigError(f"endpoint {raw!r}: a path is not allowed")
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ConfigError(f"endpoint {raw!r}: unclosed '[' in IPv6 address")
        host, after = rest[1:close], rest[close + 1 :]
        if after and not after.startswith(":"):
            raise ConfigError(f"endpoint {raw!r}: expected ':port' after ']'")
        port_text = after[1:] if after else ""
        has_colon = bool(after)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"endpoint {raw!r}: {host!r} is not an IPv6 address") from None
    elif rest.count(":") > 1:
        # A bare IPv6 literal without a port, e.g. ::1
        host, port_text = rest, ""
        has_colon = False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"endpoint {raw!r}: not host:port (IPv6 addresses go in brackets)") from None
    else:
        host, colon, port_text = rest.partition(":")
        has_colon = bool(colon)
        if not host:
            raise ConfigError(f"endpoint {raw!r}: missing host")
        if not _is_ipv4(host) and not _HOSTNAME.match(host):
            raise ConfigError(f"endpoint {raw!r}: {host!r} is not a valid host name or IP address")
    if port_text == "" and has_colon:
        raise ConfigError(f"endpoint {raw!r}: missing port after ':'")
    if port_text == "":
        port = DEFAULT_PORT
    else:
        if not port_text.isdigit():
            raise ConfigError(f"endpoint {raw!r}: port {port_text!r} is not a number")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ConfigError(f"endpoint {raw!r}: port {port} is out of range")
    return Endpoint(host=host, port=port, scheme=scheme)


def parse_endpoints(text: str | list[str] | tuple[str, ...]) -> tuple[Endpoint, ...]:
    """Parse a comma-separated list (or a list of such strings) into endpoints, keeping order."""
    parts: list[str] = []
    for item in [text] if isinstance(text, str) else list(text):
        parts.extend(p for p in item.split(",") if p.strip())
    if not parts:
        raise ConfigError("no endpoints given")
    endpoints = tuple(parse_endpoint(p) for p in parts)
    schemes = {e.scheme for e in endpoints if e.scheme}
    if len(schemes) > 1:
        raise ConfigError(f"endpoints {','.join(parts)!r} mix http and https")
    return endpoints


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True
