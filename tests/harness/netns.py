"""Two "sites" on one machine, as network namespaces joined by a link that tests can cut and heal.

    with TwoSites() as sites:
        src = EtcdCluster(bins, name="src", **sites.a.cluster_options()).start()
        dst = EtcdCluster(bins, name="dst", **sites.b.cluster_options()).start()
        # a process in site B reaches the source at f"{sites.a.link_address}:{port}"
        sites.cut(at=sites.a)    # partition
        sites.heal()

Topology, all of it made here (`ip netns`, veth pairs from iproute2; needs root) and removed by close():

    this namespace (the test) --veth "control" link-- site A
    this namespace (the test) --veth "control" link-- site B
    site A ------------------ veth "wan" link ------- site B

Addresses come from a 10.x.y.0/24 that no route or address of this namespace overlaps, in three /30s.
A site's namespace has only its connected routes, and this namespace none towards the sites' links:
traffic between the sites can only cross their link, so cutting it partitions them while the test
still reaches both sides (to write, read and check).

Only what this module made is removed: its namespaces and the veth ends it put in this namespace.
Started sites are registered in etcd_dr.local.resources, whose exit hook removes what a crashed
caller left behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from etcd_dr.local import resources

_IP_TIMEOUT = 10.0
_WAN = "wan"  # the inter-site link's device name inside each site
_CONTROL = "ctl"  # the device in each site joined to the test's namespace


class NetnsError(RuntimeError):
    """An `ip` command failed while building or changing the sites."""


class NetnsUnavailable(NetnsError):
    """Network namespaces or veth pairs cannot be made here (not root, no iproute2, not permitted)."""


def _ip(*args: str) -> str:
    try:
        out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from exc
    if out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed (exit {out.returncode}): {out.stderr.strip()}")
    return out.stdout


@dataclass(frozen=True)
class Site:
    """One site: a network namespace, reached by the test at `address`, by the other site at
    `link_address`, and by its own processes at either (or 127.0.0.1)."""

    label: str  # "a" or "b"
    netns: str
    address: str  # on the control link: where the test reaches this site
    link_address: str  # on the inter-site link: where the other site reaches this site

    @property
    def exec_prefix(self) -> list[str]:
        """Run a command in this site: `[*site.exec_prefix, cmd, ...]` (ip execs it: same PID)."""
        return ["ip", "netns", "exec", self.netns]

    def cluster_options(self) -> dict[str, Any]:
        """EtcdCluster options for members that run in this site and listen on all its addresses."""
        return {"host": self.address, "listen_host": "0.0.0.0", "command_prefix": self.exec_prefix}


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they (probably) can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if shutil.which("ip") is None:
        return "the ip command (Debian package iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this namespace routes or has an address in."""
    nets: list[ipaddress.IPv4Network] = []
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(100, 250)}.{rng.randrange(0, 256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError("no free 10.x.y.0/24 for the sites' links")


class TwoSites:
    """Two network namespaces, "sites" A and B, joined by a veth link that cut() and heal() control.

    start() builds them (raises NetnsUnavailable where namespaces cannot be made); close() removes
    them, idempotent. Stop the processes running in the sites first: a namespace whose processes
    still run lives on, unnamed, until they end.
    """

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.subnet: ipaddress.IPv4Network | None = None  # picked by start()
        self._sites: tuple[Site, Site] | None = None
        self._test_ends = ("", "")
        self._namespaces: list[str] = []  # made by us, removed by close()
        self._host_links: list[str] = []  # our veth ends in this namespace
        self._closed = False
        self._cut_at: set[str] = set()

    @property
    def sites(self) -> tuple[Site, Site]:
        if self._sites is None:
            raise RuntimeError("TwoSites not started")
        return self._sites

    @property
    def a(self) -> Site:
        return self.sites[0]

    @property
    def b(self) -> Site:
        return self.sites[1]

    def start(self) -> Self:
        if self._sites is not None:
            raise RuntimeError("TwoSites already started")
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        subnet = self.subnet = _free_subnet()
        hosts = list(subnet.hosts())  # .1 .. .254
        # /30s: .0 test<->A (.1 test, .2 A), .4 test<->B (.5 test, .6 B), .8 A<->B (.9 A, .10 B)
        self._test_ends = (str(hosts[0]), str(hosts[4]))
        self._sites = (
            Site("a", f"etcd-dr-{self.tag}-a", str(hosts[1]), str(hosts[8])),
            Site("b", f"etcd-dr-{self.tag}-b", str(hosts[5]), str(hosts[9])),
        )
        resources.track(self, f"network namespaces {self.a.netns} {self.b.netns}", self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        for i, site in enumerate(self.sites):
            try:
                _ip("netns", "add", site.netns)
            except NetnsError as exc:
                if i == 0:
                    raise NetnsUnavailable(str(exc)) from exc
                raise
            self._namespaces.append(site.netns)
            _ip("-n", site.netns, "link", "set", "lo", "up")
        # Control links: one end here, the other in the site.
        for site, test_end in zip(self.sites, self._test_ends, strict=True):
            host_dev = f"edr{self.tag}{site.label}"  # <= 15 characters
            try:
                _ip("link", "add", host_dev, "type", "veth", "peer", "name", _CONTROL, "netns", site.netns)
            except NetnsError as exc:
                if site is self.a:
                    raise NetnsUnavailable(str(exc)) from exc
                raise
            self._host_links.append(host_dev)
            _ip("addr", "add", f"{test_end}/30", "dev", host_dev)
            _ip("link", "set", host_dev, "up")
            _ip("-n", site.netns, "addr", "add", f"{site.address}/30", "dev", _CONTROL)
            _ip("-n", site.netns, "link", "set", _CONTROL, "up")
        # The inter-site link, made inside site A with its peer end in site B: never in this namespace.
        _ip(
            "-n",
            self.a.netns,
            "link",
            "add",
            _WAN,
            "type",
            "veth",
            "peer",
            "name",
            _WAN,
            "netns",
            self.b.netns,
        )
        for site in self.sites:
            _ip("-n", site.netns, "addr", "add", f"{site.link_address}/30", "dev", _WAN)
            _ip("-n", site.netns, "link", "set", _WAN, "up")

    def cut(self, at: Site | None = None) -> None:
        """Partition the sites: take the inter-site link down at `at`'s end (default: site A's).

        That end's routes go (its sockets see "network unreachable"); the other end only loses
        carrier: its packets are dropped silently, as in a WAN outage seen from afar.
        """
        site = at or self.a
        _ip("-n", site.netns, "link", "set", _WAN, "down")
        self._cut_at.add(site.netns)

    def heal(self) -> None:
        """Bring the inter-site link back up at every end cut() took down."""
        for netns in sorted(self._cut_at):
            _ip("-n", netns, "link", "set", _WAN, "up")
        self._cut_at.clear()

    @property
    def is_cut(self) -> bool:
        return bool(self._cut_at)

    def close(self) -> None:
        """Remove the namespaces and veth ends this instance made (nothing else). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            errors: list[str] = []
            for dev in self._host_links:
                # Gone already when its peer's namespace went: only a failure on a device still there counts.
                try:
                    _ip("link", "del", dev)
                except NetnsError as exc:
                    if "Cannot find device" not in str(exc):
                        errors.append(str(exc))
            for netns in self._namespaces:
                try:
                    _ip("netns", "del", netns)
                except NetnsError as exc:
                    errors.append(str(exc))
            if errors:
                raise NetnsError("; ".join(errors))
        finally:
            resources.untrack(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._sites is None:
            return f"TwoSites({self.tag}, not started)"
        return f"TwoSites({self.a.netns} {self.a.link_address} <-> {self.b.netns} {self.b.link_address})"
