"""The topology file: two etcd sites (members, TLS material, the DNS name clients use) and the mirror.

A YAML file, validated with pydantic models. Every problem is reported, one line each, naming the file
and the field path::

    topology.yaml: sites.primary.members[1].client_port: must be between 1 and 65535, not 70000

Paths are paths *on the hosts* (where etcd and the mirror run), so they must be absolute. TLS paths may
contain ``{site}`` and, for the member certificates, ``{member}``: they are replaced per member, so one
file can give every member its own certificate (``/etc/etcd/pki/{member}.pem``) or every member the same
path (``/etc/etcd/pki/server.pem``, the content differing per host).

Example (see examples/topology.yaml for a full one)::

    sites:
      primary:
        role: primary
        client_dns: etcd.primary.example.com
        members:
          - {name: etcd-p1, host: 10.0.1.11}
          - {name: etcd-p2, host: 10.0.1.12}
          - {name: etcd-p3, host: 10.0.1.13}
      standby:
        client_dns: etcd.standby.example.com
        members:
          - {name: etcd-s1, host: 10.0.2.11}
    mirror:
      prefix: /registry/
    clients:                      # optional: applications that follow the primary by name
      dns: etcd.example.com       # default: the primary's client_dns
      applications:
        - {name: kube-apiserver, hosts: [10.0.1.21]}
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import string
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import UsageError

__all__ = [
    "Application",
    "ClientTLS",
    "Clients",
    "Member",
    "MirrorSettings",
    "PeerTLS",
    "ServerTLS",
    "Site",
    "SiteTLS",
    "Topology",
    "TopologyError",
    "load_topology",
    "parse_topology",
]

DEFAULT_CLIENT_PORT = 2379
DEFAULT_PEER_PORT = 2380

# Names that become directory names in `render --out DIR` and parts of etcd's --initial-cluster
# ("name=url,name=url"): no separators, no "=" or ",".
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
_DNS_RE = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
# etcd configuration-file keys: its flag names without the dashes in front.
_FLAG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# etcd settings `render` writes itself, and where the topology sets them.
RENDERED_FLAGS: dict[str, str] = {
    "name": "members[].name",
    "data-dir": "members[].data_dir",
    "listen-client-urls": "members[].listen_ip / client_port",
    "advertise-client-urls": "members[].host / client_port",
    "listen-peer-urls": "members[].listen_ip / peer_port",
    "initial-advertise-peer-urls": "members[].host / peer_port",
    "initial-cluster": "members",
    "initial-cluster-token": "cluster_token",
    "initial-cluster-state": "always new for a rendered cluster",
    "client-transport-security": "tls.server",
    "peer-transport-security": "tls.peer",
    "cert-file": "tls.server.cert",
    "key-file": "tls.server.key",
    "trusted-ca-file": "tls.server.ca",
    "client-cert-auth": "always true",
    "peer-cert-file": "tls.peer.cert",
    "peer-key-file": "tls.peer.key",
    "peer-trusted-ca-file": "tls.peer.ca",
    "peer-client-cert-auth": "always true",
    "config-file": "config_file",
}
# Files `render` writes into a site's directory next to the member directories.
RESERVED_MEMBER_NAMES = frozenset({"pki.sh", "etcd-dr-mirror.service", "etcd-dr-mirror.env"})
# Files `render` writes at the top of the --out directory, next to the site directories.
RESERVED_SITE_NAMES = frozenset({"README.txt", "clients-pki.sh", "pki"})


class TopologyError(UsageError):
    """The topology file is unreadable or invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = problems[0]
        else:
            first = problems[0].split(":", 1)[0] if problems else "topology"
            message = f"{first}: {len(problems)} problems in the topology (listed above)"
        super().__init__(message)


# ---------------------------------------------------------------------------------------------------
# field types


def _port(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a port number between 1 and 65535, not {value!r}")
    if not 1 <= value <= 65535:
        raise ValueError(f"must be between 1 and 65535, not {value}")
    return value


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host(value: str) -> str:
    if is_ip(value):
        return str(ipaddress.ip_address(value))
    if not _DNS_RE.match(value) or value.replace(".", "").isdigit():
        raise ValueError(f"must be an IP address or a DNS name, not {value!r}")
    return value


def _ip(value: str) -> str:
    if not is_ip(value):
        raise ValueError(f"must be an IP address (etcd listens on IPs, not names), not {value!r}")
    return str(ipaddress.ip_address(value))


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: letters, digits, '.', '_' and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _placeholders(value: str, allowed: frozenset[str]) -> str:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as e:
        raise ValueError(f"{value!r}: {e} (write {{{{ and }}}} for literal braces)") from None
    for f in fields:
        if f not in allowed:
            names = " or ".join(f"{{{a}}}" for a in sorted(allowed)) or "none"
            raise ValueError(f"{value!r}: unknown placeholder {{{f}}} (allowed here: {names})")
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path (a path on the host), not {value!r}")
    if "\0" in value or "\n" in value:
        raise ValueError(f"{value!r} contains a NUL or newline character")
    return value


def _member_path(value: str) -> str:
    return _placeholders(_abs_path(value), frozenset({"site", "member"}))


def _site_path(value: str) -> str:
    return _placeholders(_abs_path(value), frozenset({"site"}))


def _unit_name(value: str) -> str:
    _placeholders(value, frozenset({"site", "member"}))
    if not re.match(r"^[A-Za-z0-9{}:_.@-]+\.service$", value):
        raise ValueError(f"must be a systemd service name such as etcd.service, not {value!r}")
    return value


def _flag_value(value: object) -> object:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"must be a string, number, true/false or a list of strings, not {value!r}")


Port = Annotated[int, BeforeValidator(_port)]
Host = Annotated[str, AfterValidator(_host)]
IP = Annotated[str, AfterValidator(_ip)]
Name = Annotated[str, AfterValidator(_name)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
MemberPath = Annotated[str, AfterValidator(_member_path)]
SitePath = Annotated[str, AfterValidator(_site_path)]
UnitName = Annotated[str, AfterValidator(_unit_name)]
FlagValue = Annotated[bool | int | float | str | list[str], BeforeValidator(_flag_value)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------------
# models


class ServerTLS(_Model):
    """etcd's client-facing TLS on each member (--cert-file, --key-file, --trusted-ca-file)."""

    ca: MemberPath = "/etc/etcd/pki/ca.pem"
    cert: MemberPath = "/etc/etcd/pki/server.pem"
    key: MemberPath = "/etc/etcd/pki/server-key.pem"


class PeerTLS(_Model):
    """etcd's member-to-member TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file)."""

    ca: MemberPath = "/etc/etcd/pki/ca.pem"
    cert: MemberPath = "/etc/etcd/pki/peer.pem"
    key: MemberPath = "/etc/etcd/pki/peer-key.pem"


class ClientTLS(_Model):
    """Where the host running the mirror keeps this site's CA and a client certificate signed by it."""

    ca: SitePath = "/etc/etcd-dr/pki/{site}/ca.pem"
    cert: SitePath = "/etc/etcd-dr/pki/{site}/mirror.pem"
    key: SitePath = "/etc/etcd-dr/pki/{site}/mirror-key.pem"


class SiteTLS(_Model):
    server: ServerTLS = ServerTLS()
    peer: PeerTLS = PeerTLS()
    mirror_client: ClientTLS = ClientTLS()


class Member(_Model):
    name: Name
    host: Host
    client_port: Port = DEFAULT_CLIENT_PORT
    peer_port: Port = DEFAULT_PEER_PORT
    # etcd binds IPs only; default: `host` when it is an IP, else every interface.
    listen_ip: IP | None = None
    data_dir: AbsPath | None = None

    @property
    def effective_data_dir(self) -> str:
        return self.data_dir if self.data_dir is not None else f"/var/lib/etcd/{self.name}"

    @property
    def effective_listen_ip(self) -> str:
        if self.listen_ip is not None:
            return self.listen_ip
        return self.host if is_ip(self.host) else "0.0.0.0"


class Site(_Model):
    role: Literal["primary", "standby"] = "standby"
    # The name clients use to reach this site's cluster (switched between the sites on failover).
    client_dns: Host | None = None
    members: Annotated[list[Member], Field(min_length=1)]
    tls: SiteTLS = SiteTLS()
    etcd_binary: AbsPath = "/usr/bin/etcd"
    # Where etcd.conf.yml goes on each member host (the unit's --config-file); {member} allowed.
    config_file: MemberPath = "/etc/etcd/etcd.conf.yml"
    # The systemd unit's name on each member host (members sharing a host need their own: {member}).
    unit_name: UnitName = "etcd.service"
    cluster_token: Annotated[str, Field(min_length=1)] | None = None
    # The user (and group) etcd runs as, as Debian's package does; null runs it as root (not advised).
    service_user: Annotated[str, Field(min_length=1)] | None = "etcd"
    # More etcd settings, written into etcd.conf.yml (etcd ignores command-line flags when it reads a
    # configuration file): flag names without the dashes, e.g. {auto-compaction-retention: "1"}.
    extra_flags: dict[str, FlagValue] = {}

    @field_validator("extra_flags", mode="before")
    @classmethod
    def _check_extra_flags(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        out: dict[object, object] = {}
        bad: list[str] = []
        for key, v in value.items():
            if not isinstance(key, str):
                bad.append(f"flag name {key!r} must be a string")
                continue
            flag = key[2:] if key.startswith("--") else key
            if not _FLAG_RE.match(flag):
                bad.append(f"{key!r} is not an etcd flag name (e.g. auto-compaction-retention)")
            elif flag in RENDERED_FLAGS:
                bad.append(f"{flag!r} is set by the topology ({RENDERED_FLAGS[flag]}), not extra_flags")
            out[flag] = v
        if bad:
            raise ValueError("; ".join(bad))
        return out


class MirrorSettings(_Model):
    # The site whose host runs the mirror daemon; default: the standby.
    site: str | None = None
    # The host that runs it; default: the first member of that site.
    host: Host | None = None
    # Or the two hosts of an HA pair (one unit each; they elect one active mirror): not with `host`.
    hosts: Annotated[list[Host], Field(max_length=2)] = []
    prefix: str = ""
    # None: keys keep their names; "" strips `prefix` (--no-dest-prefix); else --dest-prefix.
    dest_prefix: str | None = None
    state_prefix: Annotated[str, Field(min_length=1)] = "/etcd-dr/"
    exclude: list[Annotated[str, Field(min_length=1)]] = []
    # Prefixes whose unleased keys keep the source's create order among siblings (--ordered-prefix:
    # locks and elections of etcd's recipes without a lease); leased keys always do.
    ordered_prefix: list[Annotated[str, Field(min_length=1)]] = []
    etcd_dr_binary: AbsPath = "/usr/local/bin/etcd-dr"
    # More `etcd-dr mirror` arguments, appended as given (e.g. ["--max-txn-ops", "256"]).
    extra_args: list[str] = []
    # An unprivileged user of its own (it needs only to read its certificates and reach both sites).
    service_user: Annotated[str, Field(min_length=1)] | None = "etcd-dr"
    # Its credentials (ETCDCTL_USER/PASSWORD, ETCDCTL_DEST_USER/PASSWORD), mode 0600: never in the unit.
    env_file: AbsPath = "/etc/etcd-dr/mirror.env"
    # /metrics and /healthz on the mirror host's address (every interface when it is a name); null: off.
    metrics_port: Port | None = 9379


# Where kubeadm puts kube-apiserver's etcd client files (--etcd-cafile, --etcd-certfile, --etcd-keyfile).
KUBE_APISERVER_PATHS = (
    "/etc/kubernetes/pki/etcd/ca.crt",
    "/etc/kubernetes/pki/apiserver-etcd-client.crt",
    "/etc/kubernetes/pki/apiserver-etcd-client.key",
)


class Application(_Model):
    """An etcd client application (kube-apiserver, Patroni, a service's own program): `render` plans a
    client certificate for it and the CA bundle it verifies either site with."""

    name: Name
    # The hosts it runs on, where the files go (README.txt lists the copies).
    hosts: list[Host] = []
    # The certificate's CN: with etcd auth on, the user the application acts as. Default: `name`.
    cn: Annotated[str, Field(min_length=1)] | None = None
    # Where the application reads the CA bundle, its certificate and its key. Defaults: kubeadm's paths
    # for kube-apiserver, /etc/etcd-dr/clients/<name>/{ca,client,client-key}.pem for the others.
    ca: AbsPath | None = None
    cert: AbsPath | None = None
    key: AbsPath | None = None

    def paths(self) -> tuple[str, str, str]:
        if self.name == "kube-apiserver":
            defaults = KUBE_APISERVER_PATHS
        else:
            d = f"/etc/etcd-dr/clients/{self.name}"
            defaults = (f"{d}/ca.pem", f"{d}/client.pem", f"{d}/client-key.pem")
        return (self.ca or defaults[0], self.cert or defaults[1], self.key or defaults[2])

    @property
    def common_name(self) -> str:
        return self.cn if self.cn is not None else self.name


class Clients(_Model):
    """How applications reach whichever site is the primary."""

    # The name applications use: the failover's DNS switch points it at the new primary, so every
    # member of BOTH sites has it in its server certificate. Default: the primary site's client_dns.
    dns: Host | None = None
    # How clients trust both sites. "bundle": each site keeps its own CA; clients get both CAs in one
    # file, and every member accepts client certificates of either CA. "shared": one CA (made by the
    # primary's pki.sh) signs the certificates of both sites.
    ca: Literal["bundle", "shared"] = "bundle"
    applications: list[Application] = []


class Topology(_Model):
    sites: dict[Name, Site]
    mirror: MirrorSettings = MirrorSettings()
    clients: Clients = Clients()

    @model_validator(mode="after")
    def _check_clients(self) -> Topology:
        names = [a.name for a in self.clients.applications]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"clients.applications: duplicate name {dup[0]!r}")
        if self.clients.applications and self.switched_dns is None:
            raise ValueError(
                "clients.applications: the applications need a name that follows the primary: set "
                "clients.dns (or the primary site's client_dns)"
            )
        return self

    @property
    def switched_dns(self) -> str | None:
        """The name clients use, moved to the new primary by a failover's DNS switch."""
        if self.clients.dns is not None:
            return self.clients.dns
        primaries = [s for s in self.sites.values() if s.role == "primary"]
        return primaries[0].client_dns if primaries else None

    @property
    def primary(self) -> str:
        return next(name for name, site in self.sites.items() if site.role == "primary")

    @property
    def standby(self) -> str:
        return next(name for name, site in self.sites.items() if site.role != "primary")

    @property
    def mirror_site(self) -> str:
        return self.mirror.site if self.mirror.site is not None else self.standby

    @property
    def mirror_host(self) -> str:
        """The (first) host running the mirror."""
        return self.mirror_hosts[0]

    @property
    def mirror_hosts(self) -> list[str]:
        """The hosts running the mirror: one, or the two of an HA pair."""
        if self.mirror.hosts:
            return list(self.mirror.hosts)
        if self.mirror.host is not None:
            return [self.mirror.host]
        return [self.sites[self.mirror_site].members[0].host]


# ---------------------------------------------------------------------------------------------------
# loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (PyYAML keeps the last one silently: a second site
    or member written under the same key would vanish)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[object, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # the base constructor reports unhashable keys
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_topology(path: Path | str) -> Topology:
    """Read and validate a topology file; raises TopologyError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise TopologyError([f"{path}: is a directory, not a topology file"]) from None
    except UnicodeDecodeError:
        raise TopologyError([f"{path}: not UTF-8 text"]) from None
    except OSError as e:
        raise TopologyError([f"{path}: cannot read: {e.strerror or e}"]) from None
    return parse_topology(text, source=str(path))


def parse_topology(text: str, *, source: str = "topology.yaml") -> Topology:
    """Validate topology YAML text; `source` names the file in error lines."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        where = e.problem_mark or e.context_mark
        pos = f"line {where.line + 1} column {where.column + 1}: " if where is not None else ""
        what = e.problem or e.context or "invalid YAML"
        raise TopologyError([f"{source}: {pos}{what}"]) from None
    except yaml.YAMLError as e:
        raise TopologyError([f"{source}: invalid YAML: {e}"]) from None
    if raw is None:
        raise TopologyError([f"{source}: the file is empty (it needs `sites:` with two sites)"])
    if not isinstance(raw, dict):
        raise TopologyError(
            [f"{source}: expected a mapping with `sites:` at the top, not {type(raw).__name__}"]
        )

    problems: list[tuple[str, str]] = []
    topology: Topology | None = None
    try:
        topology = Topology.model_validate(raw)
    except ValidationError as e:
        problems.extend(_pydantic_problems(e))
    # Checks across fields run on the raw document, so they are reported along with the field errors.
    problems.extend(_cross_checks(raw))
    if problems:
        raise TopologyError(
            [f"{source}: {where}: {msg}" if where else f"{source}: {msg}" for where, msg in problems]
        )
    assert topology is not None
    return topology


# ---------------------------------------------------------------------------------------------------
# error reporting


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p == "[key]":
            continue
        else:
            out += f".{p}" if out else str(p)
    return out


def _all_field_names() -> set[str]:
    names: set[str] = set()
    for model in (
        ServerTLS,
        PeerTLS,
        ClientTLS,
        SiteTLS,
        Member,
        Site,
        MirrorSettings,
        Application,
        Clients,
        Topology,
    ):
        names.update(model.model_fields)
    return names


def _pydantic_problems(error: ValidationError) -> Iterator[tuple[str, str]]:
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        # Errors inside a typed union (FlagValue) repeat once per member type; the BeforeValidator
        # already gives one message.
        kind = err["type"]
        msg = str(err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif kind == "missing":
            msg = "required"
        elif kind == "extra_forbidden":
            field = str(loc[-1]) if loc else ""
            close = difflib.get_close_matches(field, sorted(_all_field_names()), n=1)
            msg = f"unknown field{f' (did you mean {close[0]}?)' if close else ''}"
        elif kind == "too_short" and loc and loc[-1] == "members":
            msg = "a site needs at least one member"
        else:
            msg = msg.replace("Input should be", "must be").replace("Dictionary", "a mapping")
            if kind.endswith("_type") or kind.endswith("_parsing"):
                msg += f", not {err.get('input')!r}"
        if "[key]" in loc:
            msg = f"invalid name: {msg}"
        yield _loc(loc), msg


def _as_int(value: object, default: int) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _cross_checks(raw: Mapping[Any, Any]) -> Iterator[tuple[str, str]]:
    sites = raw.get("sites")
    if not isinstance(sites, dict):
        if sites is None and "sites" not in raw:
            return  # pydantic reports the missing field
        return
    names = [str(n) for n in sites]
    for n in names:
        if n in RESERVED_SITE_NAMES:
            yield f"sites.{n}", f"{n!r} is reserved (render writes a file or directory of that name)"
    if len(sites) != 2:
        yield "sites", f"must name exactly two sites, not {len(sites)} ({', '.join(names) or 'none'})"
    primaries = [str(n) for n, s in sites.items() if isinstance(s, dict) and s.get("role") == "primary"]
    if len(primaries) != 1 and len(sites) >= 1:
        found = f"found {len(primaries)}: {', '.join(primaries)}" if primaries else "found none"
        yield "sites", f"exactly one site must have `role: primary` ({found})"

    used: dict[tuple[str, int], str] = {}
    for site_name, site in sites.items():
        if not isinstance(site, dict) or not isinstance(site.get("members"), list):
            continue
        seen_names: dict[str, int] = {}
        for i, member in enumerate(site["members"]):
            if not isinstance(member, dict):
                continue
            where = f"sites.{site_name}.members[{i}]"
            name = member.get("name")
            if isinstance(name, str):
                if name in seen_names:
                    yield (
                        f"{where}.name",
                        f"duplicate member name {name!r} (also members[{seen_names[name]}])",
                    )
                else:
                    seen_names[name] = i
                if name in RESERVED_MEMBER_NAMES:
                    yield f"{where}.name", f"{name!r} is reserved (render writes a file of that name)"
            host = member.get("host")
            if not isinstance(host, str):
                continue
            try:
                host_key = _host(host).lower()
            except ValueError:
                continue
            for field, default in (("client_port", DEFAULT_CLIENT_PORT), ("peer_port", DEFAULT_PEER_PORT)):
                port = _as_int(member.get(field), default)
                if port is None:
                    continue
                here = f"{where}.{field}"
                key = (host_key, port)
                if key in used:
                    yield here, f"{host}:{port} is already used by {used[key]}"
                else:
                    used[key] = here

    mirror = raw.get("mirror")
    if isinstance(mirror, dict):
        site = mirror.get("site")
        if isinstance(site, str) and site not in sites:
            yield "mirror.site", f"unknown site {site!r}: use one of {', '.join(names)}"
        hosts = mirror.get("hosts")
        if mirror.get("host") is not None and hosts:
            yield "mirror.hosts", "give `host` (one mirror host) or `hosts` (an HA pair), not both"
        if isinstance(hosts, list) and len(hosts) == 2 and hosts[0] == hosts[1]:
            yield "mirror.hosts", f"the two hosts of the pair are the same ({hosts[0]})"


def expand(template: str, *, site: str, member: str = "") -> str:
    """Replace {site} / {member} in a path template (validated when the topology was loaded)."""
    return template.format_map({"site": site, "member": member})


def host_path(template: str, *, site: str, member: str = "") -> PurePosixPath:
    return PurePosixPath(expand(template, site=site, member=member))
