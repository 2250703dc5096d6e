"""A real BIND 9 ``named`` on loopback, for testing the DNS switch of failover and switchover.

    with bind_server(records={"etcd": ["127.0.0.10"]}) as ns:
        ns.server          # "127.0.0.1:PORT", what --dns-server takes
        ns.key_file        # the TSIG key, in tsig-keygen's format (what --dns-tsig-key takes)
        ns.addresses("etcd")   # what the server answers now, asked with a plain dnspython resolver

Each server has its own temporary directory (named.conf, the zone file and its journal, the log), is
run in the foreground (``named -g``) without ``-u`` so it stays the user that started it and can write
its zone journal, listens on 127.0.0.1 (and ::1 if asked) on one free port for both UDP and TCP, has no
recursion and no control channel (no rndc), and accepts updates of its one zone signed with its key.
It is stopped through the PID of the process this module started, and its directory is removed; both
are registered in etcd_dr.local.resources, whose exit hook ends them if the caller never did.

``named`` comes from Debian's ``bind9`` package (scripts/setup.sh installs it); ``ETCD_DR_NAMED_BIN``
names another binary. AppArmor: Debian ships a profile for /usr/sbin/named that confines it to
/etc/bind, /var/cache/bind and a few more; where that profile is enforced, a named run from a
temporary directory cannot read its configuration and `bind_server` says so in its error (point
``ETCD_DR_NAMED_BIN`` at an unconfined copy, or put the profile in complain mode).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from etcd_dr.local import resources

ENV_VAR = "ETCD_DR_NAMED_BIN"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_GRACE = 10.0
_SYSTEM_PATHS = (Path("/usr/sbin/named"), Path("/usr/local/sbin/named"))
_APPARMOR_PROFILE = Path("/sys/kernel/security/apparmor/profiles")


class BindError(RuntimeError):
    """named could not be found, or did not start and answer."""


def named_path() -> Path | None:
    """The named binary to run: $ETCD_DR_NAMED_BIN, `named` on PATH, or Debian's /usr/sbin/named."""
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("named")
    if found:
        return Path(found)
    for path in _SYSTEM_PATHS:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def named_unavailable_reason() -> str | None:
    """None when named can be run here, otherwise why not (for pytest.skip)."""
    if named_path() is None:
        where = f"${ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR) else "PATH or /usr/sbin"
        return (
            f"BIND 9 named not found ({where}); install Debian's bind9 package "
            "(scripts/setup.sh does: apt-get install bind9)"
        )
    return None


def named_available() -> bool:
    return named_unavailable_reason() is None


def new_tsig_secret(algorithm: str = "hmac-sha256") -> str:
    """A random base64 secret as long as the algorithm's digest, like tsig-keygen makes."""
    sizes = {"hmac-sha1": 20, "hmac-sha224": 28, "hmac-sha256": 32, "hmac-sha384": 48, "hmac-sha512": 64}
    return base64.b64encode(os.urandom(sizes.get(algorithm, 32))).decode()


def key_text(name: str, algorithm: str, secret: str) -> str:
    """A TSIG key statement exactly as `tsig-keygen` prints it."""
    return f'key "{name}" {{\n\talgorithm {algorithm};\n\tsecret "{secret}";\n}};\n'


def _free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (named listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise BindError("no port free for both TCP and UDP on 127.0.0.1")


def ipv6_loopback_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class BindServer:
    """A running named; see the module docstring."""

    directory: Path
    port: int
    zone: str  # absolute, e.g. "dr.test."
    key_name: str
    key_algorithm: str
    key_secret: str
    ipv6: bool
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return HOST

    @property
    def server(self) -> str:
        """host:port as --dns-server takes it."""
        return f"{HOST}:{self.port}"

    @property
    def server6(self) -> str:
        """[::1]:port (only when started with ipv6=True)."""
        if not self.ipv6:
            raise BindError("this named does not listen on ::1 (start it with ipv6=True)")
        return f"[::1]:{self.port}"

    @property
    def key_file(self) -> Path:
        """The zone's update key in tsig-keygen's format."""
        return self.directory / "update.key"

    @property
    def log_file(self) -> Path:
        return self.directory / "named.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_file.read_bytes()
        except OSError:
            return "(no log)"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def write_key_file(
        self, path: Path, *, name: str | None = None, algorithm: str | None = None, secret: str | None = None
    ) -> Path:
        """Write a key file for this server's key, or (with any argument given) a different key."""
        path.write_text(
            key_text(name or self.key_name, algorithm or self.key_algorithm, secret or self.key_secret)
        )
        path.chmod(0o600)
        return path

    def fqdn(self, name: str) -> dns.name.Name:
        return dns.name.from_text(name, origin=dns.name.from_text(self.zone))

    def resolver(self) -> dns.resolver.Resolver:
        """A plain dnspython stub resolver that asks only this server (not /etc/resolv.conf)."""
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [HOST]
        res.port = self.port
        res.lifetime = 5.0
        res.cache = None
        return res

    def addresses(self, name: str) -> set[str]:
        """The A and AAAA addresses this server answers for `name` now (relative to the zone or absolute)."""
        res = self.resolver()
        found: set[str] = set()
        for rdtype in ("A", "AAAA"):
            answer = res.resolve(self.fqdn(name), rdtype, raise_on_no_answer=False, search=False)
            if answer.rrset is not None:
                found.update(r.to_text() for r in answer.rrset)
        return found

    def soa_serial(self) -> int:
        answer = self.resolver().resolve(self.fqdn("@"), "SOA", search=False)
        assert answer.rrset is not None
        return int(answer.rrset[0].serial)

    def answers_soa(self, timeout: float = 0.5) -> bool:
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        try:
            response = dns.query.udp(query, HOST, port=self.port, timeout=timeout)
        except (dns.exception.DNSException, OSError):
            return False
        return response.rcode() == dns.rcode.NOERROR and bool(response.answer)

    def stop(self) -> None:
        """Stop the named this object started (by its PID) and wait for it."""
        if self.process is not None:
            resources.end_process(self.process, STOP_GRACE)
        self.process = None


def _write_config(srv: BindServer, records: Mapping[str, Sequence[str]], extra: Sequence[str]) -> Path:
    d = srv.directory
    zone = srv.zone.rstrip(".")
    zone_file = d / f"{zone}.zone"
    lines = [
        "$TTL 300",
        f"@ IN SOA ns1.{srv.zone} hostmaster.{srv.zone} 1 3600 600 86400 60",
        f"@ IN NS ns1.{srv.zone}",
        f"ns1 IN A {HOST}",
    ]
    for name, addrs in records.items():
        for addr in addrs:
            lines.append(f"{name} IN {'AAAA' if ':' in addr else 'A'} {addr}")
    lines.extend(extra)
    zone_file.write_text("\n".join(lines) + "\n")
    srv.write_key_file(srv.key_file)
    v6 = f"listen-on-v6 port {srv.port} {{ ::1; }};" if srv.ipv6 else "listen-on-v6 { none; };"
    conf = d / "named.conf"
    conf.write_text(
        f"""options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {srv.port} {{ {HOST}; }};
    {v6}
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
{key_text(srv.key_name, srv.key_algorithm, srv.key_secret)}
zone "{zone}" {{
    type primary;
    file "{zone_file}";
    allow-update {{ key "{srv.key_name}"; }};
}};
"""
    )
    return conf


def _apparmor_note(named: Path) -> str:
    try:
        profiles = _APPARMOR_PROFILE.read_text()
    except OSError:
        return ""
    for line in profiles.splitlines():
        if line.startswith(str(named)) and "enforce" in line:
            return (
                f"; AppArmor enforces a profile on {named}, which may forbid reading a config from a "
                f"temporary directory (see the harness.bind docstring)"
            )
    return ""


def _start(srv: BindServer, named: Path, conf: Path) -> None:
    log = srv.log_file.open("ab")
    try:
        # -g: foreground, log to stderr; -n 1: one worker thread (the test machines are small);
        # no -u: stay the user who started us, so the zone journal is writable.
        args = [str(named), "-g", "-n", "1", *([] if srv.ipv6 else ["-4"]), "-c", str(conf)]
        srv.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=srv.directory,
        )
    finally:
        log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if srv.process.poll() is not None:
            raise BindError(
                f"named exited with code {srv.process.returncode} at start"
                f"{_apparmor_note(named)}; its log:\n{srv.log_tail()}"
            )
        if srv.answers_soa():
            return
        time.sleep(0.05)
    srv.stop()
    raise BindError(
        f"named on {srv.server} did not answer a SOA query for {srv.zone} within {START_TIMEOUT:.0f} s"
        f"{_apparmor_note(named)}; its log:\n{srv.log_tail()}"
    )


@contextlib.contextmanager
def bind_server(
    *,
    zone: str = "dr.test.",
    records: Mapping[str, Sequence[str]] | None = None,
    extra_records: Sequence[str] = (),
    key_name: str = "etcd-dr-update",
    key_algorithm: str = "hmac-sha256",
    ipv6: bool = False,
) -> Iterator[BindServer]:
    """Start named with `zone` (A/AAAA `records`: name relative to the zone -> addresses, and
    `extra_records`: zone file lines such as "www IN CNAME etcd"); stop it and remove its directory on
    exit. ipv6=True also listens on [::1] (if the host has it)."""
    named = named_path()
    if named is None:
        raise BindError(named_unavailable_reason() or "named not found")
    if ipv6 and not ipv6_loopback_usable():
        raise BindError("ipv6=True but ::1 is not usable on this host")
    if not zone.endswith("."):
        zone += "."
    directory = Path(tempfile.mkdtemp(prefix="etcd-dr-bind-"))
    srv: BindServer | None = None

    def end() -> None:
        if srv is not None:
            srv.stop()
        resources.remove_dir(directory)

    resources.track(directory, f"BIND server in {directory}", end)
    try:
        last: BindError | None = None
        for _attempt in range(3):
            srv = BindServer(
                directory=directory,
                port=_free_port(),
                zone=zone,
                key_name=key_name,
                key_algorithm=key_algorithm,
                key_secret=new_tsig_secret(key_algorithm),
                ipv6=ipv6,
            )
            conf = _write_config(srv, records or {}, extra_records)
            try:
                _start(srv, named, conf)
            except BindError as exc:
                # Most likely another process took the port between our probe and named's bind.
                srv.stop()
                last = exc
                continue
            break
        else:
            assert last is not None
            raise last
        yield srv
    finally:
        end()
        resources.untrack(directory)
