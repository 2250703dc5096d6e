"""Switching the clients' DNS name to the new primary: an RFC 2136 dynamic update, TSIG-signed.

`switch_name` makes the name's A and AAAA records exactly the given addresses in one update message
(delete both RRsets, then add the new records: a server applies an update's records in order and all
or nothing), then asks the server again to confirm it answers exactly those addresses. Every message
goes to the configured server itself over TCP (queries included, so an unreachable server is found at
once instead of after a UDP timeout, and answers are never truncated); the answers must be
authoritative, so a server that only caches the name is not mistaken for the one that holds it.
Rerunning with the same addresses changes nothing and succeeds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from ..errors import EtcdDrError, UsageError
from ..etcd.endpoints import parse_endpoints
from ..etcd.errors import ConfigError

log = logging.getLogger("etcd_dr.failover")

DEFAULT_PORT = 53
_MAX_TTL = 2**31 - 1
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
# What a BIND key file holds, for the error message.
_KEY_FORMAT = 'key "NAME" { algorithm hmac-sha256; secret "BASE64"; };'
# The HMAC algorithms dnspython signs with (GSS-TSIG needs a negotiated context, not a key file).
_ALGORITHMS = {a for a in dns.tsig.mac_sizes if a != dns.tsig.GSS_TSIG}

_T = TypeVar("_T")


class DnsError(EtcdDrError):
    """The DNS update or its confirmation failed: refused, not authorized, timed out, unreachable."""

    def __init__(self, message: str, *, server: str, name: str, rcode: str | None = None) -> None:
        super().__init__(message)
        self.server = server
        self.name = name
        self.rcode = rcode


@dataclass(frozen=True)
class DnsConfig:
    """Where and what to update. Build it with `create`, which checks every field.

    server: host, host:port, [v6]:port or a bare IPv6 literal (port 53 by default); a DNS name is
    resolved with the system resolver when the switch runs. zone and name are absolute (create makes
    them so; a name is read relative to the zone unless it already ends in the zone).
    tsig_key_file: a BIND key file as `tsig-keygen` writes it; None sends unsigned updates (only for
    servers that allow updates by address).
    """

    server: str
    zone: str
    name: str
    tsig_key_file: Path | None
    ttl: int = 30
    timeout: float = 5.0
    # The key read from tsig_key_file by create (repr=False: dns.tsig.Key's repr shows the secret).
    tsig_key: dns.tsig.Key | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        *,
        server: str,
        zone: str,
        name: str,
        tsig_key_file: str | os.PathLike[str] | None,
        ttl: int = 30,
        timeout: float = 5.0,
    ) -> DnsConfig:
        """Check and normalise; raises UsageError with one line naming the --dns-* flag at fault."""
        server = (server or "").strip()
        if not server:
            raise UsageError("--dns-server: give the DNS server to update (host or host:port)")
        parse_server(server)
        zone_name = _parse_zone(zone)
        abs_name = _parse_name(name, zone_name)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= _MAX_TTL:
            raise UsageError(f"--dns-ttl {ttl!r}: must be a whole number of seconds, 1 to {_MAX_TTL}")
        if not timeout > 0:
            raise UsageError(f"DNS timeout {timeout!r}: must be more than 0 seconds")
        key_path = Path(tsig_key_file) if tsig_key_file is not None else None
        key = load_tsig_key(key_path) if key_path is not None else None
        return cls(
            server=server,
            zone=zone_name.to_text(),
            name=abs_name.to_text(),
            tsig_key_file=key_path,
            ttl=ttl,
            timeout=float(timeout),
            tsig_key=key,
        )


@dataclass(frozen=True)
class DnsSwitch:
    """What switch_name did: the addresses the name had before and has now, and how long it took."""

    server: str
    name: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    seconds: float

    @property
    def changed(self) -> bool:
        return set(self.before) != set(self.after)


def parse_server(text: str) -> tuple[str, int]:
    """(host, port) of --dns-server: host, host:port, [v6], [v6]:port or a bare IPv6 literal."""
    raw = text.strip()
    host, port_text = raw, ""
    if raw.startswith("["):
        close = raw.find("]")
        host, after = raw[1:close], raw[close + 1 :]
        if close < 0 or (after and not after.startswith(":")):
            raise UsageError(f"--dns-server {text!r}: write an IPv6 address as [ADDRESS] or [ADDRESS]:PORT")
        port_text = after[1:] if after else ""
        if after == ":":
            raise UsageError(f"--dns-server {text!r}: missing port after ':'")
        if not _is_ip(host, 6):
            raise UsageError(f"--dns-server {text!r}: {host!r} is not an IPv6 address")
    elif raw.count(":") > 1:
        if not _is_ip(raw, 6):
            raise UsageError(f"--dns-server {text!r}: not host:port (put an IPv6 address in brackets)")
    else:
        host, colon, port_text = raw.partition(":")
        if colon and not port_text:
            raise UsageError(f"--dns-server {text!r}: missing port after ':'")
        if not host or not (_is_ip(host, 4) or _is_hostname(host)):
            raise UsageError(f"--dns-server {text!r}: {host!r} is not a host name or IP address")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--dns-server {text!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def load_tsig_key(path: Path) -> dns.tsig.Key:
    """Read a BIND key file (tsig-keygen's output); raises UsageError naming --dns-tsig-key and the file."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise UsageError(f"--dns-tsig-key {path}: cannot read: {exc.strerror or exc}") from None
    # dnspython >= 2.9 parses this format (dns.tsigkeyring.from_file). It reads the first key
    # statement only and raises a bare Exception (or binascii.Error for a bad secret) on anything it
    # cannot read, hence the broad except and the checks of what it returns.
    try:
        keyring = dns.tsigkeyring.from_file(path)
    except Exception:
        raise UsageError(
            f"--dns-tsig-key {path}: not a BIND key file (expected {_KEY_FORMAT} as tsig-keygen writes)"
        ) from None
    key = next(iter(keyring.values()), None)
    if not isinstance(key, dns.tsig.Key):
        raise UsageError(f"--dns-tsig-key {path}: no key with an algorithm found (expected {_KEY_FORMAT})")
    if key.algorithm not in _ALGORITHMS:
        raise UsageError(
            f"--dns-tsig-key {path}: algorithm {key.algorithm.to_text(omit_final_dot=True)!r} is not "
            f"supported (use hmac-sha256, hmac-sha512, ...)"
        )
    if not key.secret:
        raise UsageError(f"--dns-tsig-key {path}: the key's secret is empty")
    return key


def addresses_from_endpoints(endpoints: Sequence[str]) -> list[str]:
    """The IP addresses of etcd endpoints (host:port, http(s)://host:port, [v6]:port; an item may be a
    comma-separated list), in order, without repeats. A host that is a DNS name is a UsageError: the
    addresses to publish must then be given with --dns-address."""
    try:
        parsed = parse_endpoints(list(endpoints))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    out: list[str] = []
    for ep in parsed:
        try:
            addr = ipaddress.ip_address(ep.host)
        except ValueError:
            raise UsageError(
                f"endpoint {ep}: {ep.host!r} is a DNS name, not an IP address; give --dns-address "
                f"with the addresses the clients' name should have"
            ) from None
        if str(addr) not in out:
            out.append(str(addr))
    return out


async def switch_name(cfg: DnsConfig, addresses: Sequence[str]) -> DnsSwitch:
    """Make cfg.name's A and AAAA records exactly `addresses` on cfg.server, and confirm it.

    IPv4 addresses become A records and IPv6 ones AAAA; records of a type not given are deleted.
    Raises UsageError for a bad address and DnsError (one line naming server, name and rcode) when the
    server refuses, does not answer within cfg.timeout per message, or answers something else after.
    """
    wanted = _parse_addresses(addresses, cfg.name)
    started = time.monotonic()
    ask = await _Asker.open(cfg)
    name, zone, key = ask.name, ask.zone, ask.key

    before = await ask.addresses(name, "query")
    log.info("DNS %s at %s answers %s", cfg.name, cfg.server, _show(before))

    v4 = [a for a in wanted if a.version == 4]
    v6 = [a for a in wanted if a.version == 6]
    update = dns.update.UpdateMessage(zone)
    update.delete(name, dns.rdatatype.A)
    update.delete(name, dns.rdatatype.AAAA)
    for a4 in v4:
        update.add(name, cfg.ttl, dns.rdatatype.A, str(a4))
    for a6 in v6:
        update.add(name, cfg.ttl, dns.rdatatype.AAAA, str(a6))
    if key is not None:
        update.use_tsig(key)
        signed = f"signed with TSIG key {key.name.to_text(omit_final_dot=True)}"
    else:
        signed = "unsigned (no --dns-tsig-key)"
        log.warning("DNS update of %s at %s is not signed: no --dns-tsig-key given", cfg.name, cfg.server)
    log.info(
        "DNS update of zone %s at %s: %s -> A %s, AAAA %s, TTL %d, %s",
        cfg.zone,
        cfg.server,
        cfg.name,
        _show(v4),
        _show(v6),
        cfg.ttl,
        signed,
    )
    t_update = time.monotonic()
    response = await ask.send("update", update)
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        raise ask.error("update", f"answered {dns.rcode.to_text(rcode)}{_hint(rcode, cfg)}", rcode)
    log.info("DNS update accepted by %s in %.3f s", cfg.server, time.monotonic() - t_update)

    after = await ask.addresses(name, "check")
    if set(after) != set(wanted):
        raise ask.error(
            "check",
            f"the update was accepted, but the server now answers {_show(after)}, not {_show(wanted)}",
            None,
        )
    seconds = time.monotonic() - started
    log.info("DNS %s at %s now answers %s (confirmed; %.3f s)", cfg.name, cfg.server, _show(after), seconds)
    return DnsSwitch(
        server=cfg.server,
        name=cfg.name,
        before=tuple(str(a) for a in before),
        after=tuple(str(a) for a in after),
        seconds=seconds,
    )


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _sorted(addrs: set[_Address] | list[_Address]) -> list[_Address]:
    return sorted(set(addrs), key=lambda a: (a.version, int(a)))


def _show(addrs: Sequence[_Address]) -> str:
    return ", ".join(str(a) for a in addrs) if addrs else "(none)"


def _parse_addresses(addresses: Sequence[str], name: str) -> list[_Address]:
    if isinstance(addresses, str):
        addresses = [addresses]
    out: list[_Address] = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text.strip())
        except ValueError:
            raise UsageError(f"--dns-address {text!r}: not an IPv4 or IPv6 address") from None
        if addr not in out:
            out.append(addr)
    if not out:
        raise UsageError(f"--dns-address: no address given to point {name} at")
    return _sorted(out)


def _is_hostname(text: str) -> bool:
    labels = text.removesuffix(".").split(".")
    return len(text) <= 253 and all(_LABEL.match(label) for label in labels)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _parse_zone(zone: str) -> dns.name.Name:
    text = (zone or "").strip()
    if not text:
        raise UsageError("--dns-zone: give the zone that holds the name (e.g. example.com)")
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise UsageError(f"--dns-zone {zone!r}: not a valid DNS name: {exc}") from None


def _parse_name(name: str, zone: dns.name.Name) -> dns.name.Name:
    text = (name or "").strip()
    if not text:
        raise UsageError("--dns-name: give the name clients use (absolute, or relative to --dns-zone)")
    try:
        absolute = dns.name.from_text(text.rstrip(".") + ".")
        # "etcd.example.com" with zone example.com means etcd.example.com., not etcd.example.com.example.com.
        if text.endswith(".") or absolute.is_subdomain(zone):
            result = absolute
        else:
            result = dns.name.from_text(text, origin=zone)
    except dns.exception.DNSException as exc:
        raise UsageError(f"--dns-name {name!r}: not a valid DNS name: {exc}") from None
    if not result.is_subdomain(zone):
        raise UsageError(f"--dns-name {name!r}: not inside --dns-zone {zone.to_text()}")
    return result


async def _resolve_server(cfg: DnsConfig, host: str, port: int) -> str:
    if _is_ip(host, 4) or _is_ip(host, 6):
        return host
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(cfg.timeout):
            infos = await loop.getaddrinfo(host, port, type=0, proto=0)
    except TimeoutError:
        raise DnsError(
            f"DNS server {cfg.server}: its name did not resolve within {cfg.timeout:g} s",
            server=cfg.server,
            name=cfg.name,
        ) from None
    except OSError as exc:
        raise DnsError(
            f"DNS server {cfg.server}: cannot resolve {host!r}: {exc.strerror or exc}",
            server=cfg.server,
            name=cfg.name,
        ) from None
    address = str(infos[0][4][0])
    log.info("DNS server %s is %s", cfg.server, address)
    return address


_TSIG_ERRORS: dict[type[dns.tsig.PeerError], tuple[str, str]] = {
    dns.tsig.PeerBadKey: ("BADKEY", "the server does not know this TSIG key (name or algorithm)"),
    dns.tsig.PeerBadSignature: ("BADSIG", "the TSIG key's secret is not the server's"),
    dns.tsig.PeerBadTime: ("BADTIME", "this machine's clock and the server's differ by more than 5 minutes"),
    dns.tsig.PeerBadTruncation: ("BADTRUNC", "the server rejected the TSIG MAC length"),
}


def _hint(rcode: dns.rcode.Rcode, cfg: DnsConfig) -> str:
    if rcode == dns.rcode.REFUSED:
        who = "TSIG key" if cfg.tsig_key_file else "unsigned client"
        return f" (the server does not allow this {who} to update zone {cfg.zone})"
    if rcode == dns.rcode.NOTAUTH:
        return f" (the server is not authoritative for zone {cfg.zone}, or did not accept the TSIG key)"
    if rcode == dns.rcode.NOTZONE:
        return f" ({cfg.name} is not in zone {cfg.zone})"
    return ""


class _Asker:
    """Sends messages to one server and turns every failure into a DnsError naming server and name."""

    def __init__(self, cfg: DnsConfig, where: str, port: int, key: dns.tsig.Key | None = None) -> None:
        self.cfg = cfg
        self.where = where
        self.port = port
        self.name = dns.name.from_text(cfg.name)
        self.zone = dns.name.from_text(cfg.zone)
        self.key = key

    @classmethod
    async def open(cls, cfg: DnsConfig) -> _Asker:
        """The server cfg.server names, resolved once, with cfg's name, zone and TSIG key (a bad key
        file is refused before the server is looked up)."""
        host, port = parse_server(cfg.server)
        key = cfg.tsig_key
        if key is None and cfg.tsig_key_file is not None:
            key = load_tsig_key(cfg.tsig_key_file)
        return cls(cfg, await _resolve_server(cfg, host, port), port, key)

    async def send(self, step: str, message: dns.message.Message) -> dns.message.Message:
        return await self.call(
            step, dns.asyncquery.tcp(message, self.where, timeout=self.cfg.timeout, port=self.port)
        )

    def error(self, step: str, what: str, rcode: dns.rcode.Rcode | str | None) -> DnsError:
        code = dns.rcode.to_text(rcode) if isinstance(rcode, int) else rcode
        return DnsError(
            f"DNS {step} of {self.cfg.name} at {self.cfg.server}: {what}",
            server=self.cfg.server,
            name=self.cfg.name,
            rcode=code,
        )

    async def call(self, step: str, aw: Awaitable[_T]) -> _T:
        cfg = self.cfg
        try:
            # dnspython enforces the timeout itself; this bounds name lookups and odd stalls too.
            async with asyncio.timeout(cfg.timeout + 1):
                return await aw
        except (TimeoutError, dns.exception.Timeout):
            raise self.error(step, f"no answer within {cfg.timeout:g} s", "TIMEOUT") from None
        except dns.tsig.PeerError as exc:
            code, why = _TSIG_ERRORS.get(type(exc), (type(exc).__name__, str(exc)))
            raise self.error(step, f"answered NOTAUTH/{code}: {why}", code) from None
        except (dns.message.UnknownTSIGKey, dns.tsig.BadSignature, dns.tsig.BadKey) as exc:
            raise self.error(step, f"the answer's TSIG signature does not verify: {exc}", "BADSIG") from None
        except ConnectionRefusedError:
            raise self.error(step, "connection refused (is the server listening there?)", None) from None
        except OSError as exc:
            raise self.error(step, f"cannot reach the server: {exc.strerror or exc}", None) from None
        except dns.exception.DNSException as exc:
            raise self.error(step, f"bad answer: {exc}", None) from None

    async def addresses(self, name: dns.name.Name, step: str) -> list[_Address]:
        """The A and AAAA addresses the server answers for name, authoritatively."""
        tasks = [asyncio.ensure_future(self._rrset(name, t, step)) for t in ("A", "AAAA")]
        try:
            found = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return _sorted([a for part in found for a in part])

    async def _rrset(self, name: dns.name.Name, rdtype_text: str, step: str) -> list[_Address]:
        rdtype = dns.rdatatype.from_text(rdtype_text)
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        response = await self.send(step, query)
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return []
        if rcode != dns.rcode.NOERROR:
            hint = f" (does it serve zone {self.cfg.zone}?)" if rcode == dns.rcode.REFUSED else ""
            raise self.error(step, f"{rdtype_text} query answered {dns.rcode.to_text(rcode)}{hint}", rcode)
        if not response.flags & dns.flags.AA:
            raise self.error(
                step, f"the server is not authoritative for {self.cfg.name} (is it the zone's primary?)", None
            )
        if any(r.name == name and r.rdtype == dns.rdatatype.CNAME for r in response.answer):
            raise self.error(step, f"{self.cfg.name} is a CNAME; it cannot have addresses too", None)
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        if rrset is None:
            return []
        return [ipaddress.ip_address(r.to_text()) for r in rrset]


async def check_switch(cfg: DnsConfig) -> list[str]:
    """What `switch_name` needs of the server, checked without changing anything (`etcd-dr check`):
    it answers for cfg.name authoritatively (the addresses it has now are returned), and it accepts the
    TSIG key. The key is tried with an update whose prerequisite cannot hold ("a random name that does
    not exist is in use"): a server that verified the key answers NXDOMAIN and applies nothing; a key
    it does not accept is BADKEY/BADSIG/NOTAUTH (DnsError). Whether the key may update the name is the
    server's policy, checked only after the prerequisites: it cannot be known without an update."""
    ask = await _Asker.open(cfg)
    now = await ask.addresses(ask.name, "query")
    probe = dns.name.from_text(f"etcd-dr-check-{os.urandom(8).hex()}", origin=ask.zone)
    update = dns.update.UpdateMessage(ask.zone)
    update.present(probe)
    if ask.key is not None:
        update.use_tsig(ask.key)
    response = await ask.send("key check", update)
    rcode = response.rcode()
    if rcode != dns.rcode.NXDOMAIN:
        raise ask.error(
            "key check",
            f"an update whose prerequisite cannot hold was answered {dns.rcode.to_text(rcode)}, not "
            f"NXDOMAIN{_hint(rcode, cfg)}",
            rcode,
        )
    return [str(a) for a in now]
