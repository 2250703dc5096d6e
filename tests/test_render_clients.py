"""Certificates that follow the switch (issue 17, item 5): an application that reaches etcd by the name a
failover moves, with the CA bundle and the client certificate `render` plans for it, connects to either
site after a real DNS switch on BIND, the name checked against the server certificate's SANs.

The two one-member sites listen on the same port of two loopback addresses (127.0.0.2 and 127.0.0.3), so
that the DNS answer alone decides which site a client reaches, as with real hosts. The certificates are
made by the rendered pki.sh and clients-pki.sh scripts, the files copied where the install plan says,
the members started with their rendered configuration files, and the name resolved through the test's
named (dnspython); grpc then checks the certificate against the name (ssl_target_name_override), as it
would for a target given by that name.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.bind import BindServer, bind_server, named_unavailable_reason

from etcd_dr.etcd import ClientConfig, EtcdClient, TLSError
from etcd_dr.failover.dns import DnsConfig, switch_name
from etcd_dr.local.binaries import EtcdBinaries
from etcd_dr.render import install_plan, make_pki, render, write_rendered
from etcd_dr.topology import Topology, parse_topology

ADDRESSES = {"a": "127.0.0.2", "b": "127.0.0.3"}
NAME = "etcd.dr.test"


def _ports() -> tuple[int, int]:
    """Two ports free on both addresses (a client port and a peer port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ADDRESSES["a"], 0))
            ports = [s.getsockname()[1]]
            with socket.socket() as t:
                t.bind((ADDRESSES["a"], 0))
                ports.append(t.getsockname()[1])
        try:
            for addr in ADDRESSES.values():
                for p in ports:
                    with socket.socket() as u:
                        u.bind((addr, p))
        except OSError:
            continue
        return ports[0], ports[1]
    raise AssertionError("no port free on both loopback addresses")


def _topology(root: Path, ca: str) -> Topology:
    client_port, peer_port = _ports()
    hosts = root / "hosts"
    doc: dict[str, Any] = {"sites": {}}
    for site, role in (("a", "primary"), ("b", "standby")):
        doc["sites"][site] = {
            "role": role,
            "client_dns": f"{site}.dr.test",
            "members": [
                {
                    "name": f"etcd-{site}1",
                    "host": ADDRESSES[site],
                    "client_port": client_port,
                    "peer_port": peer_port,
                    "data_dir": str(root / "data" / site),
                }
            ],
            # Every "host" is this machine: each site's files under a directory of its own.
            "tls": {
                kind: {
                    "ca": f"{hosts}/{{site}}/{kind}-ca.pem",
                    "cert": f"{hosts}/{{site}}/{kind}.pem",
                    "key": f"{hosts}/{{site}}/{kind}-key.pem",
                }
                for kind in ("server", "peer")
            },
            "extra_flags": {"heartbeat-interval": 50, "election-timeout": 500},
        }
    app = hosts / "apiserver"
    doc["clients"] = {
        "dns": NAME,
        "ca": ca,
        "applications": [
            {
                "name": "kube-apiserver",
                "hosts": ["127.0.0.1"],
                "ca": f"{app}/etcd-ca.crt",
                "cert": f"{app}/apiserver-etcd-client.crt",
                "key": f"{app}/apiserver-etcd-client.key",
            }
        ],
    }
    return parse_topology(yaml.safe_dump(doc))


def _etcd_dr_binary() -> str:
    found = Path(sys.executable).parent / "etcd-dr"
    if found.exists():
        return str(found)
    path = shutil.which("etcd-dr")
    if path is None:
        pytest.skip("the etcd-dr command is not installed next to this Python")
    return path


def _make_files(topology: Topology, out: Path, *, scripts: bool) -> None:
    """Render, make the certificates (with the rendered scripts, or make_pki which does the same in this
    process: a second or so less per certificate), and copy what the install plan puts on the members'
    and the application's hosts."""
    write_rendered(render(topology, source="topology.yaml"), out)
    if scripts:
        env = {**os.environ, "ETCD_DR": _etcd_dr_binary()}
        for script in ("a/pki.sh", "b/pki.sh", "clients-pki.sh"):
            done = subprocess.run(
                ["sh", script], cwd=out, env=env, capture_output=True, text=True, timeout=120, check=False
            )
            assert done.returncode == 0, f"{script}: {done.stderr}"
    else:
        make_pki(topology, out / "pki")
    for c in install_plan(topology):
        if c.member is None and c.app is None:
            continue  # the mirror host's files: no mirror here
        dest = Path(c.dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / c.source, dest)


@contextmanager
def _members(etcd: EtcdBinaries, out: Path, topology: Topology) -> Iterator[None]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for site_name, site in topology.sites.items():
            m = site.members[0]
            with (out / f"{site_name}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [str(etcd.etcd), "--config-file", str(out / site_name / m.name / "etcd.conf.yml")],
                        stdout=log,
                        stderr=log,
                        stdin=subprocess.DEVNULL,
                    )
                )
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _client(ns: BindServer, port: int, ca: Path, cert: Path, key: Path, name: str = NAME) -> ClientConfig:
    """A client of https://NAME:PORT: NAME resolved through the test's named, the server's certificate
    checked against NAME."""
    addresses = sorted(ns.addresses(NAME.split(".")[0]))
    assert len(addresses) == 1, addresses
    return ClientConfig.create(
        [f"https://{addresses[0]}:{port}"],
        cacert=ca,
        cert=cert,
        key=key,
        dial_timeout=2.0,
        request_timeout=5.0,
        extra_options=(("grpc.ssl_target_name_override", name),),
    )


async def _site_answering(config: ClientConfig, timeout: float = 60) -> str:
    """Which site answers (each was given its own /site key), once it serves."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with EtcdClient(config) as c:
                kv = await c.get(b"/site")
                return kv.value.decode() if kv is not None else ""
        except TLSError:
            raise
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def test_an_application_follows_the_dns_switch_to_either_site(
    etcd_bin: EtcdBinaries, tmp_path: Path
) -> None:
    """Each site its own CA (the default)."""
    await _follows_the_switch(etcd_bin, tmp_path, "bundle", scripts=False)


@pytest.mark.newest_etcd_only  # ~10 etcd-dr processes: slow, and the same on every etcd version
async def test_one_ca_for_both_sites_made_by_the_rendered_scripts(
    etcd_bin: EtcdBinaries, tmp_path: Path
) -> None:
    await _follows_the_switch(etcd_bin, tmp_path, "shared", scripts=True)


async def _follows_the_switch(etcd_bin: EtcdBinaries, tmp_path: Path, ca: str, *, scripts: bool) -> None:
    reason = named_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    topology = _topology(tmp_path, ca)
    out = tmp_path / "out"
    _make_files(topology, out, scripts=scripts)
    port = topology.sites["a"].members[0].client_port
    app_ca, app_cert, app_key = topology.clients.applications[0].paths()
    app = (Path(app_ca), Path(app_cert), Path(app_key))

    with (
        bind_server(zone="dr.test.", records={"etcd": [ADDRESSES["a"]]}) as ns,
        _members(etcd_bin, out, topology),
    ):
        # Each site gets a key naming it, written with the site's own mirror certificate.
        for site in ("a", "b"):
            own = ClientConfig.create(
                [f"https://{ADDRESSES[site]}:{port}"],
                cacert=out / f"pki/{site}/ca.pem",
                cert=out / f"pki/{site}/mirror.pem",
                key=out / f"pki/{site}/mirror-key.pem",
                dial_timeout=2.0,
            )
            assert await _wait_put(own, site) == site

        assert await _site_answering(_client(ns, port, *app)) == "a"

        # The failover's DNS switch: the name now answers the standby's address.
        cfg = DnsConfig.create(server=ns.server, zone="dr.test", name="etcd", tsig_key_file=ns.key_file)
        await switch_name(cfg, [ADDRESSES["b"]])
        assert ns.addresses("etcd") == {ADDRESSES["b"]}
        assert await _site_answering(_client(ns, port, *app)) == "b"

        # What makes it work: the certificate is checked against the name ...
        with pytest.raises(TLSError):
            await _site_answering(_client(ns, port, *app, name="not-in-the-sans.dr.test"))
        if ca == "bundle":
            # ... and site b's server certificate is signed by b's CA, which the bundle holds.
            with pytest.raises(TLSError):
                await _site_answering(_client(ns, port, out / "pki/a/ca.pem", app[1], app[2]))


async def _wait_put(config: ClientConfig, site: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with EtcdClient(config) as c:
                await c.put(b"/site", site.encode())
                kv = await c.get(b"/site")
                assert kv is not None
                return kv.value.decode()
        except TLSError:
            raise
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
