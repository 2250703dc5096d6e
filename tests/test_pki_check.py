"""`etcd-dr pki check` against real etcd members with mutual TLS (3.4 and 3.5), and on files.

One module-wide pair of single-member clusters per etcd version: "good" presents a 10-year certificate
naming only 127.0.0.1; "short" presents one that expires in 5 days.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness.clirun import etcd_dr_sync as etcd_dr

from etcd_dr import pki
from etcd_dr.errors import UsageError
from etcd_dr.local.binaries import EtcdBinaries
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import ClusterTLS, TLSFiles, make_cluster_tls
from etcd_dr.pki_check import check_endpoints, check_files, host_in_sans


def cluster_tls(directory: Path, *, server_days: int, hosts: tuple[str, ...]) -> ClusterTLS:
    ca = pki.init_ca(directory, cn=f"{directory.name} CA")
    server = pki.issue(directory, profile="server", name="server", hosts=hosts, days=server_days)
    peer = pki.issue(directory, profile="peer", name="peer", hosts=hosts)
    client = pki.issue(directory, profile="client", name="client", cn="checker")
    return ClusterTLS(
        ca=ca.cert,
        server_cert=server.cert,
        server_key=server.key,
        peer_cert=peer.cert,
        peer_key=peer.key,
        client=TLSFiles(ca.cert, client.cert, client.key),
    )


@dataclass
class Sites:
    good: EtcdCluster
    good_tls: ClusterTLS
    short: EtcdCluster
    short_tls: ClusterTLS
    other: ClusterTLS  # a CA (and client certificate) that neither cluster trusts


@pytest.fixture(scope="module")
def sites(etcd_bin: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    d = tmp_path_factory.mktemp(f"pki-check-{etcd_bin.minor}")
    good_tls = cluster_tls(d / "good", server_days=3650, hosts=("127.0.0.1",))
    short_tls = cluster_tls(d / "short", server_days=5, hosts=("127.0.0.1", "localhost"))
    other = make_cluster_tls(d / "other", name="other")
    good = EtcdCluster(etcd_bin, 1, tls=good_tls, name="good")
    short = EtcdCluster(etcd_bin, 1, tls=short_tls, name="short")
    try:
        good.start()
        short.start()
        yield Sites(good, good_tls, short, short_tls, other)
    finally:
        good.stop()
        short.stop()


def tls_args(cacert: Path, client: TLSFiles) -> list[str]:
    return ["--cacert", str(cacert), "--cert", str(client.cert), "--key", str(client.key)]


# ---------------------------------------------------------------------------------------------------
# the command line against real members


def test_good_certificate_exit_0(sites: Sites) -> None:
    ep = sites.good.endpoints[0]
    run = etcd_dr("pki", "check", "--endpoints", ep, *tls_args(sites.good_tls.ca, sites.good_tls.client))
    assert run.code == 0, run.stdout + run.stderr
    assert f"{ep}: CN server" in run.stdout
    assert "ok: chains to --cacert" in run.stdout
    assert "ok: host 127.0.0.1 is in the SANs" in run.stdout
    assert "0 error(s), 0 warning(s)" in run.stdout
    assert run.stderr == ""


def test_json_is_one_object(sites: Sites) -> None:
    ep = sites.good.endpoints[0]
    run = etcd_dr(
        "pki", "check", "--endpoints", ep, *tls_args(sites.good_tls.ca, sites.good_tls.client), "--json"
    )
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["errors"] == 0
    (c,) = doc["certificates"]
    assert c["target"] == ep and c["kind"] == "endpoint" and c["error"] is None
    assert c["subject_cn"] == "server" and c["issuer_cn"] == "good CA"
    assert c["sans"] == ["127.0.0.1"]
    assert 3640 < c["days_left"] <= 3650
    assert c["host_in_sans"] is True and c["trusted"] is True and c["client_cert_accepted"] is True


def test_host_not_in_sans_exit_1_naming_it(sites: Sites) -> None:
    # "localhost" reaches the member (it listens on 127.0.0.1) but its certificate names only the IP.
    port = sites.good.members[0].client_port
    eps = f"https://127.0.0.1:{port},https://localhost:{port}"
    run = etcd_dr("pki", "check", "--endpoints", eps, *tls_args(sites.good_tls.ca, sites.good_tls.client))
    assert run.code == 1, run.stdout + run.stderr
    assert (
        f"https://localhost:{port}: CN server" in run.stdout
        and "error: host localhost is not in the certificate's SANs (127.0.0.1)" in run.stdout
    )
    assert "1 error(s)" in run.stdout


def test_ca_that_did_not_sign_it_exit_1(sites: Sites) -> None:
    ep = sites.good.endpoints[0]
    other_ca = sites.other.ca
    run = etcd_dr(
        "pki", "check", "--endpoints", ep, "--cacert", str(other_ca),
        "--cert", str(sites.good_tls.client.cert), "--key", str(sites.good_tls.client.key),
    )  # fmt: skip
    assert run.code == 1, run.stdout + run.stderr
    assert f"error: certificate is not signed by --cacert {other_ca}" in run.stdout
    assert "Traceback" not in run.stderr


def test_client_certificate_of_another_ca_exit_2(sites: Sites) -> None:
    ep = sites.good.endpoints[0]
    run = etcd_dr("pki", "check", "--endpoints", ep, *tls_args(sites.good_tls.ca, sites.other.client))
    assert run.code == 2, run.stdout + run.stderr
    assert run.last_line.startswith(f"etcd-dr: error: {ep}: "), run.stderr
    assert f"the member refused our client certificate --cert {sites.other.client.cert}" in run.last_line


def test_expiring_soon_warns_and_strict_fails(sites: Sites) -> None:
    ep = sites.short.endpoints[0]
    args = ["pki", "check", "--endpoints", ep, *tls_args(sites.short_tls.ca, sites.short_tls.client)]
    run = etcd_dr(*args, "--warn-days", "30")
    assert run.code == 0, run.stdout + run.stderr
    assert "warning: certificate expires in 4 days" in run.stdout, run.stdout
    assert "(under --warn-days 30)" in run.stdout
    assert "1 warning(s)" in run.stdout
    strict = etcd_dr(*args, "--warn-days", "30", "--strict")
    assert strict.code == 1, strict.stdout
    assert etcd_dr(*args, "--warn-days", "3", "--strict").code == 0


def test_unreachable_endpoint_exit_2(sites: Sites) -> None:
    good = sites.good.endpoints[0]
    sites_tls = tls_args(sites.good_tls.ca, sites.good_tls.client)
    # Port 1 on loopback: nobody listens there.
    run = etcd_dr("pki", "check", "--endpoints", f"{good},https://127.0.0.1:1", *sites_tls)
    assert run.code == 2, run.stdout + run.stderr
    assert f"{good}: CN server" in run.stdout  # the reachable one is still reported
    assert run.last_line == "etcd-dr: error: https://127.0.0.1:1: cannot connect: Connection refused"


# ---------------------------------------------------------------------------------------------------
# the library, for the cases the command line above does not show


def test_without_client_certificate(sites: Sites) -> None:
    report = check_endpoints(sites.good.endpoints, cacert=sites.good_tls.ca)
    (c,) = report.certificates
    if c.error is not None:
        # TLS 1.2 (etcd 3.5 here): the member ends the handshake itself; the message says what to give.
        assert "the member requires a client certificate: give --cert and --key" in c.error
        assert report.exit_code == 2
    else:
        # TLS 1.3: the certificate is read; the refusal that follows is reported as good news.
        assert c.subject_cn == "server" and c.trusted is True
        assert any("requires a client certificate" in f.message for f in c.findings)
        assert report.exit_code == 0


def test_plain_http_member_is_not_tls(etcd_cluster: EtcdCluster) -> None:
    ep = etcd_cluster.hostports[0]
    report = check_endpoints(ep)
    (c,) = report.certificates
    assert c.error is not None and "TLS (plain http?)" in c.error, c.error
    assert report.exit_code == 2


def test_host_matching_follows_go() -> None:
    sans: list[x509.GeneralName] = [
        x509.DNSName("*.etcd.example.com"),
        x509.DNSName("Etcd.Example.COM"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
    ]
    assert host_in_sans("etcd.example.com", sans)
    assert host_in_sans("a.etcd.example.com", sans)
    assert not host_in_sans("a.b.etcd.example.com", sans)  # a wildcard covers one label
    assert not host_in_sans("etcd.example.org", sans)
    assert host_in_sans("10.0.0.1", sans)
    assert not host_in_sans("10.0.0.2", sans)


# ---------------------------------------------------------------------------------------------------
# files and usage errors (no etcd needed)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("files") / "ca"
    pki.init_ca(d, cn="files CA")
    pki.issue(d, profile="server", name="server", hosts=["10.0.0.1", "etcd.example.com"])
    return d


def expired_certificate(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_file_check(ca_dir: Path) -> None:
    run = etcd_dr(
        "pki", "check", "--cert-file", str(ca_dir / "server.pem"), "--cacert", str(ca_dir / "ca.pem"),
        "--hosts", "10.0.0.1,etcd.example.com",
    )  # fmt: skip
    assert run.code == 0, run.stdout + run.stderr
    assert "ok: signed by --cacert" in run.stdout
    assert "ok: usages: serverAuth, clientAuth" in run.stdout
    assert "ok: host etcd.example.com is in the SANs" in run.stdout

    run = etcd_dr("pki", "check", "--cert-file", str(ca_dir / "server.pem"), "--hosts", "10.0.0.2")
    assert run.code == 1
    assert "error: host 10.0.0.2 is not in the certificate's SANs (10.0.0.1, etcd.example.com)" in run.stdout


def test_expired_file_and_foreign_ca(ca_dir: Path, tmp_path: Path) -> None:
    old = expired_certificate(tmp_path / "old.pem")
    report = check_files([old, ca_dir / "ca.pem"], cacert=ca_dir / "ca.pem")
    first, second = report.certificates
    assert first.days_left is not None and first.days_left < 0
    assert any(f.level == "error" and "certificate expired on" in f.message for f in first.findings)
    assert any(f.level == "error" and "not signed by --cacert" in f.message for f in first.findings)
    assert second.usages[0] == "CA" and second.trusted is True
    assert report.exit_code == 1
    run = etcd_dr("pki", "check", "--cert-file", str(old), "--json")
    assert run.code == 1
    assert json.loads(run.stdout)["certificates"][0]["days_left"] < 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "give --endpoints"),
        (["--endpoints", "127.0.0.1:2379", "--cert-file", "x.pem"], "give --endpoints"),
        (
            ["--endpoints", "127.0.0.1:2379", "--cacert", "/nonexistent/ca.pem"],
            "--cacert /nonexistent/ca.pem",
        ),
        (["--endpoints", "127.0.0.1:2379", "--cert", "/tmp/c.pem"], "--key is missing"),
        (["--endpoints", "ftp://x:1"], "--endpoints"),
        (["--cert-file", "/nonexistent/c.pem"], "/nonexistent/c.pem"),
        (["--cert-file", "/etc/hostname", "--warn-days", "-1"], "--warn-days"),
    ],
)
def test_usage_errors_exit_2(args: list[str], needle: str) -> None:
    run = etcd_dr("pki", "check", *args)
    assert run.code == 2, run.stdout + run.stderr
    assert run.last_line.startswith("etcd-dr: error: ") and needle in run.last_line, run.stderr
    assert "Traceback" not in run.stderr


def test_library_usage_error() -> None:
    with pytest.raises(UsageError, match="--warn-days"):
        check_files([], warn_days=-3)
