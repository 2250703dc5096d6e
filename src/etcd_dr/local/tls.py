"""TLS material for test and demo clusters, made with `etcd_dr.pki` (ECDSA: fast to generate)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from etcd_dr import pki

__all__ = ["CLIENT_CN", "ClusterTLS", "TLSFiles", "make_cluster_tls"]

# Not "root": with etcd auth enabled a client certificate's CN is taken as the user name, and tests must
# not get root's rights by accident.
CLIENT_CN = "etcd-dr-client"


@dataclass(frozen=True)
class TLSFiles:
    """What a client (or the mirror) needs to dial a TLS cluster."""

    cacert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterTLS:
    """What etcd members need, plus a client certificate signed by the same CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    peer_cert: Path
    peer_key: Path
    client: TLSFiles


def make_cluster_tls(
    directory: Path, *, name: str = "etcd", hosts: Sequence[str] = ("127.0.0.1", "::1", "localhost")
) -> ClusterTLS:
    """Create a fresh CA in DIR and sign DIR/NAME-server, DIR/NAME-peer and DIR/client with it.

    Every call makes its own CA, so two directories give two clusters that do not trust each other.
    """
    directory = Path(directory)
    ca = pki.init_ca(directory, cn=f"{name} test CA")
    server = pki.issue(directory, profile="server", name=f"{name}-server", hosts=hosts, cn=f"{name}-server")
    peer = pki.issue(directory, profile="peer", name=f"{name}-peer", hosts=hosts, cn=f"{name}-peer")
    client = pki.issue(directory, profile="client", name="client", cn=CLIENT_CN)
    return ClusterTLS(
        ca=ca.cert,
        server_cert=server.cert,
        server_key=server.key,
        peer_cert=peer.cert,
        peer_key=peer.key,
        client=TLSFiles(cacert=ca.cert, cert=client.cert, key=client.key),
    )
