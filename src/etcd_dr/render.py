"""`etcd-dr render`: etcd configuration, systemd units, certificate script and install notes for every
member of both sites of a topology (see topology.py).

Output, under the --out directory::

    README.txt                          what to run and copy where, host by host
    <site>/pki.sh                       the `etcd-dr pki init/issue` commands for the site's certificates
    <site>/<member>/etcd.conf.yml       etcd's configuration file (`etcd --config-file`)
    <site>/<member>/etcd.service        systemd unit: Type=notify, Restart=always, LimitNOFILE=65536,
                                        run as the `etcd` user
    <mirror site>/etcd-dr-mirror.service  systemd unit running `etcd-dr mirror` primary -> standby as
                                        its own unprivileged user, sandboxed, with /metrics on
                                        (an HA pair: <mirror site>/mirror@<host>/etcd-dr-mirror.service)
    <mirror site>/etcd-dr-mirror.env    the mirror's credentials (mode 0600), read by the unit
    clients-pki.sh                      the clients' CA bundle and the applications' client certificates

Every site has its own CA (`clients.ca: bundle`, the default), or one CA signs both (`shared`). The
host running the mirror needs a CA and a client certificate of *both* sites: the cross-site client
certificate bundles, made by each site's pki.sh (pki/<site>/ca.pem, mirror.pem, mirror-key.pem).

Clients follow a failover by name: the name applications use (`clients.dns`, default the primary's
client_dns), which the DNS switch moves to the new primary, is in the server certificate of every member
of both sites; applications verify either site with pki/clients-ca.pem (both CAs, or the shared one) and
present a client certificate that every member accepts (signed by the primary's CA, which the standby's
members also trust for clients in `bundle` mode).

Everything is computed first, then checked, then written: a refusal writes nothing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from . import pki
from .config import MirrorConfig
from .config import mirror_argv as config_mirror_argv
from .errors import UsageError
from .etcd import ClientConfig, TLSConfig, parse_endpoints
from .topology import Application, Member, Site, Topology, TopologyError, expand, is_ip

__all__ = [
    "CLIENTS_CA",
    "CLIENTS_SCRIPT",
    "MIRROR_CLIENT_CN",
    "CertRequest",
    "Copy",
    "RenderedFile",
    "app_cert_name",
    "clients_plan",
    "etcd_config",
    "install_plan",
    "make_pki",
    "mirror_argv",
    "pki_plan",
    "render",
    "write_rendered",
]

CLIENTS_CA = "pki/clients-ca.pem"
CLIENTS_SCRIPT = "clients-pki.sh"

# The mirror's client certificates' CN: with etcd auth enabled it is the user the mirror acts as.
MIRROR_CLIENT_CN = "etcd-dr-mirror"
MIRROR_UNIT = "etcd-dr-mirror.service"
MIRROR_ENV = "etcd-dr-mirror.env"
RESTART_SEC = 5

# What the mirror may do, as systemd sandboxing: it reads its certificates and talks TCP to both sites
# (and serves /metrics); it writes nothing on its host, needs no privilege and no device.
MIRROR_SANDBOX = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "UMask=0077",
)
# A member writes only its data dir; the rest of the system is read-only to it.
MEMBER_SANDBOX = (
    "NoNewPrivileges=yes",
    "ProtectSystem=full",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "CapabilityBoundingSet=",
)


@dataclass(frozen=True)
class RenderedFile:
    path: PurePosixPath  # relative to the --out directory
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class CertRequest:
    """One `etcd-dr pki issue` of a site's pki.sh."""

    site: str
    profile: str  # server | peer | client
    name: str  # pki/<site>/<name>.pem and <name>-key.pem
    hosts: tuple[str, ...]
    cn: str
    member: str | None = None


@dataclass(frozen=True)
class Copy:
    """A file to put on a host: `source` is relative to the --out directory."""

    source: str
    host: str
    dest: str
    site: str  # the site of the host it goes to
    member: str | None  # None: the mirror host, or an application's host
    private: bool = False  # a private key (mode 0600)
    app: str | None = None  # an application's files (clients.applications)


# ---------------------------------------------------------------------------------------------------
# small helpers


# etcd's --max-txn-ops and --max-request-bytes for every member (etcd's defaults: 128 and 1.5 MiB). The
# mirror probes the op limit (mirror/limits.py) and fills its txns up to it. 10 MiB is the most etcd 3.5
# recommends (above it, it warns at start "exceeded recommended request limit").
STANDBY_MAX_TXN_OPS = 4096
STANDBY_MAX_REQUEST_BYTES = 10 * 1024 * 1024


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _url(host: str, port: int) -> str:
    return f"https://{_url_host(host)}:{port}"


def _member_paths(site_name: str, site: Site, member: Member) -> dict[str, str]:
    def m(template: str) -> str:
        return expand(template, site=site_name, member=member.name)

    return {
        "server_ca": m(site.tls.server.ca),
        "server_cert": m(site.tls.server.cert),
        "server_key": m(site.tls.server.key),
        "peer_ca": m(site.tls.peer.ca),
        "peer_cert": m(site.tls.peer.cert),
        "peer_key": m(site.tls.peer.key),
    }


def _client_paths(site_name: str, site: Site) -> tuple[str, str, str]:
    t = site.tls.mirror_client
    return (
        expand(t.ca, site=site_name),
        expand(t.cert, site=site_name),
        expand(t.key, site=site_name),
    )


def config_file_of(site_name: str, site: Site, member: Member) -> str:
    """Where the member's etcd.conf.yml goes on its host."""
    return expand(site.config_file, site=site_name, member=member.name)


def unit_of(site_name: str, site: Site, member: Member) -> str:
    """The member's systemd unit name on its host."""
    return expand(site.unit_name, site=site_name, member=member.name)


def client_endpoints(site: Site) -> list[str]:
    """The members' client URLs (not client_dns: that name moves between the sites on failover)."""
    return [_url(m.host, m.client_port) for m in site.members]


def _cluster_token(site_name: str, site: Site) -> str:
    return site.cluster_token if site.cluster_token is not None else f"etcd-{site_name}"


def _systemd_arg(arg: str) -> str:
    """Quote one ExecStart argument: systemd expands %specifiers and $VARIABLES, and splits on
    whitespace; double quotes with C escapes keep the argument as it is."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg == "" or re.search(r"[\s\"'\\;]", arg):
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def _exec_start(argv: Sequence[str], groups: Sequence[int] = ()) -> str:
    """ExecStart=... with a line continuation before each index in `groups` (readability)."""
    out = "ExecStart="
    for i, arg in enumerate(argv):
        if i > 0:
            out += " \\\n    " if i in groups else " "
        out += _systemd_arg(arg)
    return out


# ---------------------------------------------------------------------------------------------------
# etcd configuration and unit


def etcd_config(topology: Topology, site_name: str, member: Member) -> dict[str, Any]:
    """etcd's configuration-file settings for one member (keys as in etcd's etcd.conf.yml.sample)."""
    site = topology.sites[site_name]
    paths = _member_paths(site_name, site, member)
    listen = member.effective_listen_ip
    config: dict[str, Any] = {
        "name": member.name,
        "data-dir": member.effective_data_dir,
        "listen-client-urls": _url(listen, member.client_port),
        "advertise-client-urls": _url(member.host, member.client_port),
        "listen-peer-urls": _url(listen, member.peer_port),
        "initial-advertise-peer-urls": _url(member.host, member.peer_port),
        "initial-cluster": ",".join(f"{m.name}={_url(m.host, m.peer_port)}" for m in site.members),
        "initial-cluster-token": _cluster_token(site_name, site),
        # Only read when the data dir is empty: restarts of a bootstrapped member ignore it.
        "initial-cluster-state": "new",
        "client-transport-security": {
            "cert-file": paths["server_cert"],
            "key-file": paths["server_key"],
            "client-cert-auth": True,
            "trusted-ca-file": paths["server_ca"],
        },
        "peer-transport-security": {
            "cert-file": paths["peer_cert"],
            "key-file": paths["peer_key"],
            "client-cert-auth": True,
            "trusted-ca-file": paths["peer_ca"],
        },
        # zap on both 3.4 and 3.5 (3.4's default logger is deprecated); stderr goes to the journal.
        "logger": "zap",
        "log-outputs": ["stderr"],
        # Big txns for the mirror that writes into this site while it is the standby (both sites get
        # them: the roles swap on a switchover). One txn per round trip carries up to 4096 source
        # revisions, so a standby 100 ms away keeps up (docs/benchmarks.md: what it costs).
        "max-txn-ops": STANDBY_MAX_TXN_OPS,
        "max-request-bytes": STANDBY_MAX_REQUEST_BYTES,
    }
    config.update(site.extra_flags)
    return config


def _etcd_conf_text(topology: Topology, site_name: str, member: Member, source: str) -> str:
    where = config_file_of(site_name, topology.sites[site_name], member)
    header = (
        f"# etcd configuration of member {member.name} of site {site_name} ({member.host}).\n"
        f"# Rendered by `etcd-dr render {source}`; install as {where}.\n"
        "# etcd reads only this file when started with --config-file: flags and ETCD_* variables are\n"
        "# ignored, so extra settings belong in the topology's extra_flags.\n"
    )
    body = yaml.safe_dump(etcd_config(topology, site_name, member), sort_keys=False, default_flow_style=False)
    return header + body


def _etcd_unit_text(topology: Topology, site_name: str, member: Member, source: str) -> str:
    site = topology.sites[site_name]
    lines = [
        f"# etcd member {member.name} of site {site_name}: install as "
        f"/etc/systemd/system/{unit_of(site_name, site, member)}",
        f"# on {member.host}. Rendered by `etcd-dr render {source}`.",
        "[Unit]",
        f"Description=etcd member {member.name} (site {site_name})",
        "Documentation=https://etcd.io/docs",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        # etcd tells systemd when it serves clients (after joining its cluster).
        "Type=notify",
    ]
    if site.service_user is not None:
        lines += [f"User={site.service_user}", f"Group={site.service_user}"]
        data_dir = PurePosixPath(member.effective_data_dir)
        if data_dir.is_relative_to("/var/lib") and data_dir != PurePosixPath("/var/lib"):
            # systemd creates the data dir owned by that user (mode 0700) before etcd starts.
            lines += [f"StateDirectory={data_dir.relative_to('/var/lib')}", "StateDirectoryMode=0700"]
    lines += [
        _exec_start([site.etcd_binary, "--config-file", config_file_of(site_name, site, member)]),
        "Restart=always",
        f"RestartSec={RESTART_SEC}",
        "LimitNOFILE=65536",
        # A new member waits for its peers before it notifies: do not give up on it early.
        "TimeoutStartSec=0",
        *MEMBER_SANDBOX,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# the mirror


def metrics_addr(topology: Topology, host: str) -> str | None:
    """HOST:PORT the mirror on `host` serves /metrics and /healthz on (None: off)."""
    port = topology.mirror.metrics_port
    if port is None:
        return None
    ip = host if is_ip(host) else "0.0.0.0"
    return f"{_url_host(ip)}:{port}"


def mirror_argv(topology: Topology, host: str | None = None) -> list[str]:
    """The `etcd-dr mirror` command line the mirror unit on `host` (default: the first mirror host)
    runs: primary -> standby. Credentials are not in it: the unit reads them from its env file."""
    src_name, dst_name = topology.primary, topology.standby
    src, dst = topology.sites[src_name], topology.sites[dst_name]
    m = topology.mirror
    prefix = m.prefix.encode("utf-8", "surrogateescape")
    dest_prefix = None if m.dest_prefix is None else m.dest_prefix.encode("utf-8", "surrogateescape")
    if dest_prefix == prefix or (dest_prefix == b"" and not prefix):
        dest_prefix = None  # the keys keep their names: nothing to say
    addr = metrics_addr(topology, host if host is not None else topology.mirror_host)
    # The topology's own --metrics-addr (in extra_args) wins: a flag given twice is refused.
    if any(a.split("=", 1)[0] == "--metrics-addr" for a in m.extra_args):
        addr = None
    config = MirrorConfig(
        source=_mirror_client(src_name, src),
        dest=_mirror_client(dst_name, dst),
        prefix=prefix,
        dest_prefix=dest_prefix,
        excludes=tuple(e.encode("utf-8", "surrogateescape") for e in m.exclude),
        ordered_prefixes=tuple(o.encode("utf-8", "surrogateescape") for o in m.ordered_prefix),
        state_prefix=m.state_prefix.encode("utf-8", "surrogateescape"),
        metrics_addr=addr,
    )
    return config_mirror_argv(config, program=m.etcd_dr_binary, always_state_prefix=True) + m.extra_args


def _mirror_client(site_name: str, site: Site) -> ClientConfig:
    """The mirror's client of `site` as the unit names it (the files are not read here)."""
    ca, cert, key = _client_paths(site_name, site)
    return ClientConfig(
        endpoints=tuple(parse_endpoints(client_endpoints(site))),
        tls=TLSConfig(cacert=Path(ca), cert=Path(cert), key=Path(key)),
    )


def mirror_unit_path(topology: Topology, host: str) -> PurePosixPath:
    """Where the mirror unit for `host` is rendered: one per host of an HA pair."""
    if len(topology.mirror_hosts) == 1:
        return PurePosixPath(topology.mirror_site, MIRROR_UNIT)
    return PurePosixPath(topology.mirror_site, f"mirror@{host}", MIRROR_UNIT)


def _cert_dirs(topology: Topology) -> list[str]:
    """The directories of the mirror's certificates (both sites'), shown to it read-only."""
    dirs: list[str] = []
    for site_name, site in topology.sites.items():
        for path in _client_paths(site_name, site):
            d = str(PurePosixPath(path).parent)
            if d not in dirs:
                dirs.append(d)
    return dirs


def _mirror_unit_text(topology: Topology, source: str, host: str) -> str:
    argv = mirror_argv(topology, host)
    # One continuation line per group: DEST, source, source TLS, destination TLS, prefixes, extra.
    groups = [2, 3]
    groups += [
        i
        for i, a in enumerate(argv)
        if a
        in (
            "--cacert",
            "--dest-cacert",
            "--prefix",
            "--exclude",
            "--ordered-prefix",
            "--state-prefix",
            "--metrics-addr",
        )
    ]
    if topology.mirror.extra_args:
        groups.append(len(argv) - len(topology.mirror.extra_args))
    m = topology.mirror
    pair = topology.mirror_hosts
    lines = [
        f"# etcd-dr mirror, site {topology.primary} -> site {topology.standby}: install as",
        f"# /etc/systemd/system/{MIRROR_UNIT} on {host} (site {topology.mirror_site}).",
    ]
    if len(pair) > 1:
        other = next(h for h in pair if h != host)
        lines.append(f"# Its HA partner runs the same on {other}; a lock on the standby elects one active.")
    lines += [
        f"# Credentials (with etcd password auth) go in {m.env_file} (mode 0600), never in this unit.",
        f"# Rendered by `etcd-dr render {source}`.",
        "[Unit]",
        f"Description=etcd-dr mirror {topology.primary} -> {topology.standby}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
    ]
    if m.service_user is not None:
        lines += [f"User={m.service_user}", f"Group={m.service_user}"]
    lines += [
        # Read by systemd before the service starts (as root), so the file stays 0600 root's.
        f"EnvironmentFile={m.env_file}",
        _exec_start(argv, sorted(set(groups))),
        "Restart=always",
        f"RestartSec={RESTART_SEC}",
        *MIRROR_SANDBOX,
        f"ReadOnlyPaths={' '.join(_systemd_arg(d) for d in _cert_dirs(topology))}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _mirror_env_text(topology: Topology, source: str) -> str:
    m = topology.mirror
    return "\n".join(
        [
            f"# Credentials of etcd-dr mirror ({topology.primary} -> {topology.standby}): install as",
            f"# {m.env_file}, owner root, mode 0600 (systemd reads it for the unit; the mirror's user",
            "# cannot read it). Rendered by `etcd-dr render " + source + "`.",
            "# With etcd auth on and client-certificate users, nothing is needed here: the client",
            f"# certificate's CN ({MIRROR_CLIENT_CN}) is the user. With password auth, set the users and",
            "# passwords (docs/failover.md lists the permissions each one needs):",
            "#ETCDCTL_USER=etcd-dr-mirror",
            "#ETCDCTL_PASSWORD=",
            "#ETCDCTL_DEST_USER=etcd-dr-mirror",
            "#ETCDCTL_DEST_PASSWORD=",
            "",
        ]
    )


# ---------------------------------------------------------------------------------------------------
# certificates


def _san_hosts(*hosts: str | None) -> tuple[str, ...]:
    out: list[str] = []
    for h in hosts:
        if h is None:
            continue
        if is_ip(h) and ipaddress.ip_address(h).is_unspecified:
            continue
        if h.lower() not in (x.lower() for x in out):
            out.append(h)
    return tuple(out)


def pki_plan(topology: Topology) -> dict[str, list[CertRequest]]:
    """Per site: the certificates its pki.sh issues (after `pki init`), in order."""
    plan: dict[str, list[CertRequest]] = {}
    for site_name, site in topology.sites.items():
        reqs: list[CertRequest] = []
        for m in site.members:
            listen = m.listen_ip
            reqs.append(
                CertRequest(
                    site_name,
                    "server",
                    f"{m.name}-server",
                    # The member's address, the site's client name, the name clients use (which the
                    # DNS switch moves to this site when it becomes the primary), and loopback for
                    # etcdctl on the host.
                    _san_hosts(
                        m.host, listen, site.client_dns, topology.switched_dns, "localhost", "127.0.0.1"
                    ),
                    m.name,
                    m.name,
                )
            )
            reqs.append(
                CertRequest(site_name, "peer", f"{m.name}-peer", _san_hosts(m.host, listen), m.name, m.name)
            )
        reqs.append(CertRequest(site_name, "client", "mirror", (), MIRROR_CLIENT_CN))
        plan[site_name] = reqs
    return plan


def app_cert_name(app: Application) -> str:
    """pki/<primary>/<name>.pem: the application's client certificate, signed by the primary's CA."""
    return f"{app.name}-client"


def clients_plan(topology: Topology) -> list[CertRequest]:
    """The applications' client certificates (clients-pki.sh), signed by the primary's CA."""
    return [
        CertRequest(topology.primary, "client", app_cert_name(a), (), a.common_name)
        for a in topology.clients.applications
    ]


def _server_trust(topology: Topology, site_name: str) -> str:
    """The file a member trusts client certificates with (its trusted-ca-file), under --out: the standby's
    members also trust the primary's CA, which signs the applications' certificates (clients.ca: bundle);
    the primary's members trust their own CA only, so the standby's certificates are refused there."""
    if topology.clients.ca == "bundle" and site_name != topology.primary:
        return CLIENTS_CA
    return f"pki/{site_name}/ca.pem"


def _ca_cn(topology: Topology, site_name: str) -> str:
    return "etcd CA" if topology.clients.ca == "shared" else f"{site_name} etcd CA"


def make_pki(topology: Topology, pki_root: Path, *, days: int = 3650) -> None:
    """Do what every site's pki.sh and clients-pki.sh do, with etcd_dr.pki: PKI_ROOT/<site>/{ca,
    <member>-server,...}, PKI_ROOT/clients-ca.pem and the applications' certificates."""
    root = Path(pki_root)
    primary = root / topology.primary
    for site_name in [topology.primary, *(n for n in topology.sites if n != topology.primary)]:
        d = root / site_name
        if topology.clients.ca == "shared" and site_name != topology.primary:
            d.mkdir(parents=True, exist_ok=True)
            for f in ("ca.pem", "ca-key.pem"):
                (d / f).write_bytes((primary / f).read_bytes())
            (d / "ca-key.pem").chmod(0o600)
        else:
            pki.init_ca(d, cn=_ca_cn(topology, site_name))
        for r in pki_plan(topology)[site_name]:
            pki.issue(d, profile=r.profile, name=r.name, hosts=r.hosts, cn=r.cn, days=days)
    cas = [topology.primary] if topology.clients.ca == "shared" else list(topology.sites)
    (root / "clients-ca.pem").write_bytes(b"".join((root / s / "ca.pem").read_bytes() for s in cas))
    for r in clients_plan(topology):
        pki.issue(primary, profile=r.profile, name=r.name, hosts=r.hosts, cn=r.cn, days=days)


def _pki_script(topology: Topology, site_name: str, source: str) -> str:
    lines = [
        "#!/bin/sh",
        f"# Certificates of site {site_name}: its CA, a server and a peer certificate per member, and the",
        "# client certificate the mirror uses to reach this site. Run once, on a trusted machine, from the",
        "# directory `etcd-dr render` wrote (see README.txt); existing files are never overwritten.",
        f"# Rendered by `etcd-dr render {source}`.",
        "set -eu",
        'ETCD_DR="${ETCD_DR:-etcd-dr}"',
        f'PKI_DIR="${{1:-pki/{site_name}}}"',
    ]
    primary = topology.primary
    if topology.clients.ca == "shared" and site_name != primary:
        # One CA for both sites (clients.ca: shared): the primary's pki.sh made it.
        lines += [
            f"if [ ! -e pki/{primary}/ca-key.pem ]; then",
            f"  echo 'run {primary}/pki.sh first: the sites share its CA (clients.ca: shared)' >&2",
            "  exit 1",
            "fi",
            'mkdir -p "$PKI_DIR"',
            f'cp -p pki/{primary}/ca.pem pki/{primary}/ca-key.pem "$PKI_DIR/"',
        ]
    else:
        lines.append(f'"$ETCD_DR" pki init --dir "$PKI_DIR" --cn {shlex.quote(_ca_cn(topology, site_name))}')
    for r in pki_plan(topology)[site_name]:
        lines.append(_issue_cmd(r, '"$PKI_DIR"'))
    lines.append("")
    return "\n".join(lines)


def _issue_cmd(r: CertRequest, directory: str) -> str:
    q = shlex.quote
    cmd = f'"$ETCD_DR" pki issue --dir {directory} --profile {r.profile} --name {q(r.name)} --cn {q(r.cn)}'
    if r.hosts:
        cmd += f" --hosts {q(','.join(r.hosts))}"
    return cmd


def _clients_script(topology: Topology, source: str) -> str:
    primary = topology.primary
    cas = [primary] if topology.clients.ca == "shared" else list(topology.sites)
    what = "the sites' shared CA" if topology.clients.ca == "shared" else "the CAs of both sites"
    lines = [
        "#!/bin/sh",
        f"# The clients' CA bundle ({CLIENTS_CA}: {what}), with which an application verifies",
        "# whichever site the switched name points at, and a client certificate per application of the",
        f"# topology's clients section, signed by the CA of site {primary}, which every member accepts.",
        "# Run after every site's pki.sh, from the same directory (see README.txt).",
        f"# Rendered by `etcd-dr render {source}`.",
        "set -eu",
        'ETCD_DR="${ETCD_DR:-etcd-dr}"',
    ]
    for s in cas:
        lines += [
            f"[ -e pki/{s}/ca.pem ] || {{ echo 'run {s}/pki.sh first' >&2; exit 1; }}",
        ]
    lines.append(f"cat {' '.join(f'pki/{s}/ca.pem' for s in cas)} > {CLIENTS_CA}")
    for r in clients_plan(topology):
        lines.append(_issue_cmd(r, f"pki/{primary}"))
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# what goes where


def install_plan(topology: Topology) -> list[Copy]:
    """Every file to copy to a host: certificates (from pki/<site>/), configuration and units."""
    plan: list[Copy] = []
    for site_name, site in topology.sites.items():
        for m in site.members:
            p = _member_paths(site_name, site, m)
            pki_dir = f"pki/{site_name}"
            copies = [
                (_server_trust(topology, site_name), p["server_ca"], False),
                *([(f"{pki_dir}/ca.pem", p["peer_ca"], False)] if p["peer_ca"] != p["server_ca"] else []),
                (f"{pki_dir}/{m.name}-server.pem", p["server_cert"], False),
                (f"{pki_dir}/{m.name}-server-key.pem", p["server_key"], True),
                (f"{pki_dir}/{m.name}-peer.pem", p["peer_cert"], False),
                (f"{pki_dir}/{m.name}-peer-key.pem", p["peer_key"], True),
                (f"{site_name}/{m.name}/etcd.conf.yml", config_file_of(site_name, site, m), False),
                (
                    f"{site_name}/{m.name}/etcd.service",
                    f"/etc/systemd/system/{unit_of(site_name, site, m)}",
                    False,
                ),
            ]
            plan += [Copy(src, m.host, dest, site_name, m.name, private) for src, dest, private in copies]
    # The cross-site client certificate bundles: the mirror host reaches both sites.
    ms = topology.mirror_site
    for host in topology.mirror_hosts:
        for site_name, site in topology.sites.items():
            ca, cert, key = _client_paths(site_name, site)
            plan.append(Copy(f"pki/{site_name}/ca.pem", host, ca, ms, None))
            plan.append(Copy(f"pki/{site_name}/mirror.pem", host, cert, ms, None))
            plan.append(Copy(f"pki/{site_name}/mirror-key.pem", host, key, ms, None, True))
        unit = mirror_unit_path(topology, host).as_posix()
        plan.append(Copy(unit, host, f"/etc/systemd/system/{MIRROR_UNIT}", ms, None))
        plan.append(Copy(f"{ms}/{MIRROR_ENV}", host, topology.mirror.env_file, ms, None, True))
    # The applications: the clients' CA bundle and their own client certificate.
    for app in topology.clients.applications:
        ca, cert, key = app.paths()
        name = app_cert_name(app)
        for h in app.hosts:
            plan.append(Copy(CLIENTS_CA, h, ca, "", None, app=app.name))
            plan.append(Copy(f"pki/{topology.primary}/{name}.pem", h, cert, "", None, app=app.name))
            plan.append(Copy(f"pki/{topology.primary}/{name}-key.pem", h, key, "", None, True, app=app.name))
    return plan


def _check_plan(topology: Topology, plan: Sequence[Copy], source: str) -> None:
    """Two different files must not land on the same path of one host (members sharing a host need
    {member} in their TLS paths, and data dirs of their own)."""
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for c in plan:
        key = (c.host.lower(), c.dest)
        if key in seen and seen[key] != c.source:
            problems.append(
                f"{source}: {c.dest} on host {c.host} would receive both {seen[key]} and {c.source}: "
                "give the members sharing this host paths of their own (e.g. with {member})"
            )
        seen.setdefault(key, c.source)
    dirs: dict[tuple[str, str], str] = {}
    for site_name, site in topology.sites.items():
        for m in site.members:
            key = (m.host.lower(), m.effective_data_dir)
            here = f"sites.{site_name}.members {m.name}"
            if key in dirs:
                problems.append(
                    f"{source}: {here}: data dir {m.effective_data_dir} on host {m.host} is also "
                    f"the data dir of {dirs[key]}"
                )
            dirs.setdefault(key, here)
    if problems:
        raise TopologyError(problems)


def _readme(topology: Topology, plan: Sequence[Copy], source: str) -> str:
    primary, standby, ms = topology.primary, topology.standby, topology.mirror_site
    other = primary if ms == standby else standby
    mirror_hosts = " and ".join(topology.mirror_hosts)
    out = [
        f"Rendered by `etcd-dr render {source}`.",
        "",
        f'Two etcd sites: "{primary}" (primary) and "{standby}" (standby), '
        + ("each with its own CA and" if topology.clients.ca == "bundle" else "one CA for both, and"),
        "mutual TLS for clients and peers. etcd-dr mirror copies the primary into the standby; it runs at",
        f'site "{ms}" on host {mirror_hosts}'
        + (
            " (an HA pair: a lock on the standby elects one active mirror)."
            if len(topology.mirror_hosts) > 1
            else "."
        ),
        "",
        "1. Certificates. In this directory, on a trusted machine, once per site"
        + (f" ({primary} first: its CA is shared):" if topology.clients.ca == "shared" else ":"),
    ]
    for s in [primary, *(n for n in topology.sites if n != primary)]:
        out.append(f"     sh {s}/pki.sh          # writes pki/{s}/ (keys 0600)")
    out.append(f"     sh {CLIENTS_SCRIPT}       # then: {CLIENTS_CA} and the applications' certificates")
    out += [
        "   (ETCD_DR=/path/to/etcd-dr if it is not on PATH.) Each site's CA signs its members' server and",
        "   peer certificates and one client certificate for the mirror "
        f"(CN {MIRROR_CLIENT_CN}; with etcd auth on,",
        "   that is the user the mirror acts as).",
        "",
        "2. Copy to each member host (private keys mode 0600, owned by the user etcd runs as):",
    ]
    users = sorted({s.service_user for s in topology.sites.values() if s.service_user is not None})
    if users:
        out += [
            f"   etcd runs as the user {' / '.join(users)} (Debian's etcd-server package creates it; else",
            "   `useradd --system --home-dir /var/lib/etcd --shell /usr/sbin/nologin etcd`). A data dir",
            "   outside /var/lib must exist, owned by that user: `install -d -o etcd -g etcd -m 0700 DIR`.",
        ]
    by_host: dict[tuple[str, str, str | None], list[Copy]] = {}
    for c in plan:
        if c.app is None:
            by_host.setdefault((c.site, c.host, c.member), []).append(c)
    for (site_of, host, member), copies in by_host.items():
        if member is None:
            continue
        out.append(f"   site {site_of}, member {member}, host {host}:")
        width = max(len(c.source) for c in copies)
        out += [f"     {c.source.ljust(width)}  ->  {c.dest}" for c in copies]
    mu = topology.mirror.service_user
    out += [
        "",
        f"3. The cross-site client certificate bundles, to the mirror host {mirror_hosts} (site {ms}):",
        "   it needs a CA and a client certificate of BOTH sites; the ones of site "
        f'"{other}" come from the other site.',
    ]
    if mu is not None:
        out += [
            f"   The mirror runs as its own user {mu}: `useradd --system --no-create-home --shell "
            f"/usr/sbin/nologin {mu}`;",
            f"   its private keys are mode 0600 owned by {mu}. {MIRROR_ENV} (its credentials, if any) is",
            "   mode 0600 owned by root: systemd reads it for the unit, the mirror's user cannot.",
        ]
    for (_site, host, member), copies in by_host.items():
        if member is not None:
            continue
        out.append(f"   mirror host {host}:")
        width = max(len(c.source) for c in copies)
        out += [f"     {c.source.ljust(width)}  ->  {c.dest}" for c in copies]
    out += [
        f'   For failback (the mirror running {standby} -> {primary}), site "{other}" needs the same two',
        "   bundles on the host that will run the mirror then.",
        "",
        "4. Start. A new member waits for its peers, so start all members of a site together:",
        "     systemctl daemon-reload && systemctl enable --now --no-block "
        + " ".join(sorted({unit_of(n, s, m) for n, s in topology.sites.items() for m in s.members})),
        f"   then, on the mirror host{'s' if len(topology.mirror_hosts) > 1 else ''} {mirror_hosts}:",
        f"     systemctl daemon-reload && systemctl enable --now {MIRROR_UNIT}",
    ]
    for host in topology.mirror_hosts:
        addr = metrics_addr(topology, host)
        if addr is not None:
            out.append(f"   Its /metrics and /healthz on {host}: {addr} (docs/metrics.md).")
    out += [
        "",
        "5. Check the certificates the members present (expiry, SANs, chain):",
    ]
    for site_name, site in topology.sites.items():
        ca, cert, key = _client_paths(site_name, site)
        out.append(
            f"     etcd-dr pki check --endpoints {','.join(client_endpoints(site))} "
            f"--cacert {ca} --cert {cert} --key {key}"
        )
    out += _readme_clients(topology)
    out.append("")
    return "\n".join(out)


def _readme_clients(topology: Topology) -> list[str]:
    name = topology.switched_dns
    port = topology.sites[topology.primary].members[0].client_port
    trust = "the CAs of both sites" if topology.clients.ca == "bundle" else "the CA both sites share"
    out = [
        "",
        "6. Clients. Applications reach the primary by a name that a failover moves to the new primary:",
    ]
    if name is None:
        return [
            *out,
            "   none is set (clients.dns, or the primary site's client_dns): applications must be",
            '   re-pointed by hand after a move. See docs/failover.md, "Clients that follow a move".',
        ]
    out += [
        f"   https://{name}:{port}. Every member of both sites has {name} in its server certificate, so",
        f"   a client verifying with {CLIENTS_CA} ({trust}) accepts whichever site the",
        f"   name points at; a move's DNS switch (--dns-name {name} --dns-server ..., or a hook)",
        "   moves it.",
    ]
    if topology.clients.ca == "bundle":
        out += [
            f"   The applications' certificates are signed by site {topology.primary}'s CA, which the",
            f"   members of site {topology.standby} also trust for clients ({CLIENTS_CA} is their trusted CA",
            "   file; give tls.peer.ca a path of its own to keep their peer trust to their own CA).",
        ]
    for app in topology.clients.applications:
        ca, cert, key = app.paths()

        hosts = ", ".join(app.hosts) if app.hosts else "its hosts (none listed: clients.applications[].hosts)"
        out.append(f"   {app.name} (CN {app.common_name}), on {hosts}:")
        sources = [
            CLIENTS_CA,
            f"pki/{topology.primary}/{app_cert_name(app)}.pem",
            f"pki/{topology.primary}/{app_cert_name(app)}-key.pem",
        ]
        width = max(len(x) for x in sources)
        out += [
            f"     {src.ljust(width)}  ->  {dest}" for src, dest in zip(sources, (ca, cert, key), strict=True)
        ]

        if app.name == "kube-apiserver":
            out.append(
                f"     flags: --etcd-servers=https://{name}:{port} --etcd-cafile={ca} "
                f"--etcd-certfile={cert} --etcd-keyfile={key}"
            )
        else:
            out.append(
                f"     etcdctl --endpoints=https://{name}:{port} --cacert={ca} --cert={cert} --key={key}"
            )
    return out


# ---------------------------------------------------------------------------------------------------
# render and write


def render(topology: Topology, *, source: str = "topology.yaml") -> list[RenderedFile]:
    """Every file of the rendered output, computed and checked, nothing written."""
    plan = install_plan(topology)
    _check_plan(topology, plan, source)
    files: list[RenderedFile] = []
    for site_name, site in topology.sites.items():
        files.append(
            RenderedFile(PurePosixPath(site_name, "pki.sh"), _pki_script(topology, site_name, source), 0o755)
        )
        for m in site.members:
            d = PurePosixPath(site_name, m.name)
            files.append(RenderedFile(d / "etcd.conf.yml", _etcd_conf_text(topology, site_name, m, source)))
            files.append(RenderedFile(d / "etcd.service", _etcd_unit_text(topology, site_name, m, source)))
    for host in topology.mirror_hosts:
        files.append(
            RenderedFile(mirror_unit_path(topology, host), _mirror_unit_text(topology, source, host))
        )
    files.append(
        RenderedFile(
            PurePosixPath(topology.mirror_site, MIRROR_ENV), _mirror_env_text(topology, source), 0o600
        )
    )
    files.append(RenderedFile(PurePosixPath(CLIENTS_SCRIPT), _clients_script(topology, source), 0o755))
    files.append(RenderedFile(PurePosixPath("README.txt"), _readme(topology, plan, source)))
    return files


def write_rendered(files: Sequence[RenderedFile], out: Path, *, force: bool = False) -> list[Path]:
    """Write the files under OUT. Existing files are refused (all targets are checked before anything
    is written) unless `force`; returns the paths written."""
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    targets = [out.joinpath(*f.path.parts) for f in files]
    for t in targets:
        # A parent that is a file (or a target that is a directory) cannot be fixed by --force.
        for parent in t.relative_to(out).parents:
            p = out / parent
            if parent != Path(".") and os.path.lexists(p) and not p.is_dir():
                raise UsageError(f"--out {out}: {p} exists and is not a directory")
        if t.is_dir():
            raise UsageError(f"--out {out}: {t} is a directory")
    existing = [t for t in targets if os.path.lexists(t)]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UsageError(
            f"--out {out}: {existing[0]} already exists{more}; nothing written (use --force to overwrite)"
        )
    written: list[Path] = []
    for f, t in zip(files, targets, strict=True):
        try:
            t.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=t.parent, prefix=f".{t.name}.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(f.content)
                os.chmod(tmp, f.mode)
                os.replace(tmp, t)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write {t}: {e.strerror or e}") from None
        written.append(t)
    return written
