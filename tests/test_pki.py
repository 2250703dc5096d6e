"""etcd_dr.pki and etcd_dr.local.tls: certificate contents, file handling, refusals, and real use
(an `ssl` handshake, and etcd 3.4 itself accepting / refusing the certificates)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcd_dr import pki
from etcd_dr.local.tls import ClusterTLS, TLSFiles, make_cluster_tls
from etcd_dr.pki import PkiError

ETCD = Path("/usr/bin/etcd")
ETCDCTL = Path("/usr/bin/etcdctl")

# The etcd certificate request of the cfssl procedure this tool replaces (its "# ..." comment removed:
# JSON has no comments, cfssl rejects it too).
SEED_CSR = {
    "CN": "etcd",
    "hosts": ["192.168.1.1", "127.0.0.1"],
    "key": {"algo": "rsa", "size": 2048},
    "names": [{"C": "CN", "ST": "HangZhou", "L": "XS", "O": "k8s", "OU": "System"}],
}


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


T = TypeVar("T", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: type[T]) -> x509.Extension[T]:
    return cert.extensions.get_extension_for_class(kind)


def sans(cert: x509.Certificate) -> tuple[list[ipaddress.IPv4Address | ipaddress.IPv6Address], list[str]]:
    san = ext(cert, x509.SubjectAlternativeName).value
    ips = [ip for ip in san.get_values_for_type(x509.IPAddress) if not isinstance(ip, ipaddress._BaseNetwork)]
    return ips, san.get_values_for_type(x509.DNSName)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Content, mode and mtime of every file: to show that a refused call changed nothing."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init_ca(d)
    return d


# ---------------------------------------------------------------------------------------------------
# the CA


def test_init_ca_default_is_ecdsa_p256_ca(tmp_path: Path) -> None:
    d = tmp_path / "new" / "pki"  # created, parents included
    before = dt.datetime.now(dt.UTC)
    paths = pki.init_ca(d)
    assert paths == pki.CertPaths(d / "ca.pem", d / "ca-key.pem")
    assert sorted(p.name for p in d.iterdir()) == ["ca-key.pem", "ca.pem"]
    assert mode(paths.key) == 0o600
    assert mode(d) == 0o700

    cert = load(paths.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "etcd-dr CA"
    assert cert.issuer == cert.subject
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature and not ku.value.key_encipherment
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)  # self-signed

    # As cfssl: no AuthorityKeyIdentifier on a self-signed root (it would only repeat the SKI).
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.AuthorityKeyIdentifier)
    # Back-dated for clock skew, from the minute (as cfssl); exactly 36500 days long by default.
    assert before - dt.timedelta(minutes=6) <= cert.not_valid_before_utc <= before - dt.timedelta(minutes=4)
    assert cert.not_valid_before_utc.second == 0
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=36500)


def test_init_ca_rsa_cn_days(tmp_path: Path) -> None:
    paths = pki.init_ca(tmp_path, cn="Acme etcd CA", key_type="rsa", days=10)
    cert = load(paths.cert)
    pub = cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
    assert cert.subject.rfc4514_string() == "CN=Acme etcd CA"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=10)
    assert mode(paths.key) == 0o600
    # PKCS#1, as cfssljson writes it.
    assert paths.key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")


def test_serials_are_random(tmp_path: Path) -> None:
    a = load(pki.init_ca(tmp_path / "a").cert)
    b = load(pki.init_ca(tmp_path / "b").cert)
    assert a.serial_number != b.serial_number
    assert a.serial_number.bit_length() > 64


# ---------------------------------------------------------------------------------------------------
# issued certificates

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


@pytest.mark.parametrize(
    ("profile", "usages"),
    [("server", [SERVER_AUTH, CLIENT_AUTH]), ("peer", [SERVER_AUTH, CLIENT_AUTH]), ("client", [CLIENT_AUTH])],
)
def test_profiles(ca_dir: Path, profile: str, usages: list[x509.ObjectIdentifier]) -> None:
    hosts = ["10.0.0.1", "etcd-1.example.com", "2001:db8::1", "[::1]", "*.etcd.example.com", "10.0.0.1"]
    paths = pki.issue(ca_dir, profile=profile, name="m1", hosts=hosts)
    assert paths == pki.CertPaths(ca_dir / "m1.pem", ca_dir / "m1-key.pem")
    assert mode(paths.key) == 0o600
    assert mode(paths.cert) & 0o022 == 0  # nobody else may change it

    ca = load(ca_dir / "ca.pem")
    cert = load(paths.cert)
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject
    assert cert.subject.rfc4514_string() == "CN=m1"  # the name when no CN is given

    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(cert, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == usages
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    ext(cert, x509.SubjectKeyIdentifier)

    ips, dns = sans(cert)
    # IPs (v4, v6, bracketed v6) as IP SANs, the rest as DNS names; duplicates dropped.
    assert ips == [
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_address("::1"),
    ]
    assert dns == ["etcd-1.example.com", "*.etcd.example.com"]

    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=3650)
    # SEC 1, as cfssljson writes it.
    assert paths.key.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")


def test_client_without_hosts_cn_and_key_type(ca_dir: Path) -> None:
    paths = pki.issue(ca_dir, profile="client", name="alice", cn="alice@ops", key_type="rsa", days=30)
    cert = load(paths.cert)
    assert cert.subject.rfc4514_string() == "CN=alice@ops"
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)
    pub = cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
    cert.verify_directly_issued_by(load(ca_dir / "ca.pem"))


def test_rsa_ca_signs_ecdsa_leaf(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, key_type="rsa")
    cert = load(pki.issue(tmp_path, profile="server", name="s", hosts=["127.0.0.1"]).cert)
    cert.verify_directly_issued_by(load(tmp_path / "ca.pem"))
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_cfssl_style_ca_key_is_accepted(ca_dir: Path) -> None:
    # cfssljson writes "EC PRIVATE KEY" / "RSA PRIVATE KEY" (traditional OpenSSL), not PKCS#8.
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    trad = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert trad.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    (ca_dir / "ca-key.pem").write_bytes(trad)
    cert = load(pki.issue(ca_dir, profile="client", name="c").cert)
    cert.verify_directly_issued_by(load(ca_dir / "ca.pem"))


def test_describe(ca_dir: Path) -> None:
    paths = pki.issue(ca_dir, profile="server", name="m1", hosts=["127.0.0.1", "::1", "localhost"], days=5)
    info = pki.describe(paths.cert)
    assert info.subject_cn == "m1"
    assert info.issuer_cn == "etcd-dr CA"
    assert info.sans == ("127.0.0.1", "::1", "localhost")
    assert not info.is_ca
    assert info.usages == ("serverAuth", "clientAuth")
    assert info.not_after == load(paths.cert).not_valid_after_utc
    assert info.not_after - dt.datetime.now(dt.UTC) < dt.timedelta(days=5)

    ca = pki.describe(ca_dir / "ca.pem")
    assert ca.is_ca and ca.subject_cn == ca.issuer_cn == "etcd-dr CA" and ca.sans == ()

    with pytest.raises(PkiError, match=r"nope\.pem not found"):
        pki.describe(ca_dir / "nope.pem")
    with pytest.raises(PkiError, match=r"m1-key\.pem is not a PEM certificate"):
        pki.describe(paths.key)


# ---------------------------------------------------------------------------------------------------
# cfssl CSR JSON


def test_cfssl_csr_json_is_honoured(ca_dir: Path, tmp_path: Path) -> None:
    csr = tmp_path / "etcd-csr.json"
    csr.write_text(json.dumps(SEED_CSR, indent=2))
    paths = pki.issue(ca_dir, profile="server", name="etcd", csr_json=csr)
    cert = load(paths.cert)
    cert.verify_directly_issued_by(load(ca_dir / "ca.pem"))
    pub = cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
    subject = {a.oid: a.value for a in cert.subject}
    assert subject == {
        NameOID.COUNTRY_NAME: "CN",
        NameOID.STATE_OR_PROVINCE_NAME: "HangZhou",
        NameOID.LOCALITY_NAME: "XS",
        NameOID.ORGANIZATION_NAME: "k8s",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "System",
        NameOID.COMMON_NAME: "etcd",
    }
    assert cert.subject.rfc4514_string() == "CN=etcd,OU=System,O=k8s,L=XS,ST=HangZhou,C=CN"
    ips, dns = sans(cert)
    assert ips == [ipaddress.ip_address("192.168.1.1"), ipaddress.ip_address("127.0.0.1")]
    assert dns == []


def test_explicit_arguments_override_csr_json(ca_dir: Path, tmp_path: Path) -> None:
    csr = tmp_path / "etcd-csr.json"
    csr.write_text(json.dumps(SEED_CSR))
    paths = pki.issue(
        ca_dir, profile="peer", name="p", csr_json=csr, cn="peer-1", hosts=["etcd-1.lan"], key_type="ecdsa"
    )
    cert = load(paths.cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "peer-1"
    # names still come from the file: there is no argument for them
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "k8s"
    assert sans(cert) == ([], ["etcd-1.lan"])


def test_csr_json_ecdsa_size_and_defaults(ca_dir: Path, tmp_path: Path) -> None:
    csr = tmp_path / "c.json"
    csr.write_text(json.dumps({"key": {"algo": "ecdsa", "size": 384}, "hosts": None}))
    cert = load(pki.issue(ca_dir, profile="client", name="c", csr_json=csr).cert)
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1"
    assert cert.subject.rfc4514_string() == "CN=c"  # no CN in the file: the name


# ---------------------------------------------------------------------------------------------------
# never overwrite


def test_init_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    before = snapshot(ca_dir)
    with pytest.raises(PkiError, match=r"ca\.pem already exists") as e:
        pki.init_ca(ca_dir)
    assert e.value.path == ca_dir / "ca.pem"
    assert snapshot(ca_dir) == before


def test_init_ca_refuses_when_only_the_key_exists(tmp_path: Path) -> None:
    (tmp_path / "ca-key.pem").write_text("precious")
    with pytest.raises(PkiError, match=r"ca-key\.pem already exists"):
        pki.init_ca(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca-key.pem"]
    assert (tmp_path / "ca-key.pem").read_text() == "precious"


@pytest.mark.parametrize("existing", ["m1.pem", "m1-key.pem"])
def test_issue_refuses_to_overwrite(ca_dir: Path, existing: str) -> None:
    (ca_dir / existing).write_text("precious")
    before = snapshot(ca_dir)
    with pytest.raises(PkiError, match=f"{existing} already exists"):
        pki.issue(ca_dir, profile="server", name="m1", hosts=["127.0.0.1"])
    assert snapshot(ca_dir) == before


def test_issue_refuses_a_dangling_symlink(ca_dir: Path, tmp_path: Path) -> None:
    # Writing through it would create a file somewhere else.
    (ca_dir / "m1-key.pem").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PkiError, match=r"m1-key\.pem already exists"):
        pki.issue(ca_dir, profile="client", name="m1")
    assert not (tmp_path / "elsewhere").exists()
    assert not (ca_dir / "m1.pem").exists()


def test_issue_twice_same_name_refused(ca_dir: Path) -> None:
    pki.issue(ca_dir, profile="client", name="c")
    before = snapshot(ca_dir)
    with pytest.raises(PkiError, match=r"c\.pem already exists"):
        pki.issue(ca_dir, profile="client", name="c")
    assert snapshot(ca_dir) == before


# ---------------------------------------------------------------------------------------------------
# bad input: one clear PkiError naming the culprit, nothing written


def _ca_pem_is_a_directory(d: Path, tmp: Path) -> None:
    (d / "ca.pem").unlink()
    (d / "ca.pem").mkdir()


def _other_ca_cert_with_this_key(d: Path, tmp: Path) -> None:
    other = tmp / "other"
    pki.init_ca(other)
    (d / "ca.pem").unlink()
    shutil.copy(other / "ca.pem", d / "ca.pem")


def _leaf_as_ca(d: Path, tmp: Path) -> None:
    leaf = pki.issue(d, profile="client", name="leaf")
    (d / "ca.pem").unlink()
    (d / "ca-key.pem").unlink()
    leaf.cert.rename(d / "ca.pem")
    leaf.key.rename(d / "ca-key.pem")


def _encrypt_ca_key(d: Path, tmp: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((d / "ca-key.pem").read_bytes(), None)
    enc = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (d / "ca-key.pem").write_bytes(enc)


def _short_lived_ca(d: Path, tmp: Path) -> None:
    (d / "ca.pem").unlink()
    (d / "ca-key.pem").unlink()
    pki.init_ca(d, days=100)


CA_BREAKERS: list[tuple[str, Callable[[Path, Path], object], str]] = [
    ("no ca.pem", lambda d, t: (d / "ca.pem").unlink(), r"CA certificate .*ca\.pem not found"),
    ("no ca-key.pem", lambda d, t: (d / "ca-key.pem").unlink(), r"CA key .*ca-key\.pem not found"),
    (
        "garbled ca.pem",
        lambda d, t: (d / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n"),
        r"CA certificate .*ca\.pem is not a PEM certificate",
    ),
    (
        "garbled ca-key.pem",
        lambda d, t: (d / "ca-key.pem").write_text("garbage"),
        r"CA key .*ca-key\.pem is not a PEM private key",
    ),
    ("ca.pem is a directory", _ca_pem_is_a_directory, r"ca\.pem is a directory"),
    ("key of another CA", _other_ca_cert_with_this_key, r"ca-key\.pem does not belong to CA certificate"),
    ("leaf as CA", _leaf_as_ca, r"ca\.pem is not a CA certificate"),
    ("encrypted key", _encrypt_ca_key, r"ca-key\.pem is encrypted"),
    ("CA ends before the cert", _short_lived_ca, r"--days 3650 would end after the CA .*ca\.pem expires"),
]


@pytest.mark.parametrize(
    ("breaker", "message"), [(b, m) for _, b, m in CA_BREAKERS], ids=[i for i, _, _ in CA_BREAKERS]
)
def test_issue_with_a_bad_ca(
    ca_dir: Path, tmp_path: Path, breaker: Callable[[Path, Path], object], message: str
) -> None:
    breaker(ca_dir, tmp_path)
    before = sorted(p.name for p in ca_dir.iterdir())
    with pytest.raises(PkiError, match=message) as e:
        pki.issue(ca_dir, profile="server", name="m1", hosts=["127.0.0.1"])
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in ca_dir.iterdir()) == before


def test_issue_without_any_ca(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"ca\.pem not found \(create a CA first"):
        pki.issue(tmp_path / "missing", profile="client", name="c")
    assert not (tmp_path / "missing").exists()


BAD_ISSUE_ARGS: list[tuple[str, dict[str, object], str]] = [
    ("days 0", {"days": 0}, "--days must be .* not 0"),
    ("days negative", {"days": -5}, "--days must be .* not -5"),
    ("days huge", {"days": 10**9}, "--days 1000000000 is too large"),
    ("bad profile", {"profile": "admin"}, "unknown profile 'admin'"),
    ("bad key type", {"key_type": "dsa"}, "unknown key type 'dsa'"),
    ("empty name", {"name": ""}, "--name must not be empty"),
    ("name with slash", {"name": "../evil"}, r"--name '\.\./evil' must be a plain file name"),
    ("name dotdot", {"name": ".."}, r"--name '\.\.' must be a plain file name"),
    ("host with space", {"hosts": ["10.0.0.1", "a b"]}, "host 'a b' is neither"),
    ("host url", {"hosts": ["https://etcd:2379"]}, "host 'https://etcd:2379' is neither"),
    ("empty host", {"hosts": [""]}, "host '' is empty"),
    ("hosts as a string", {"hosts": "10.0.0.1"}, "not the string '10.0.0.1'"),
    ("server without hosts", {"hosts": []}, "a server certificate needs at least one host"),
    ("peer without hosts", {"profile": "peer", "hosts": []}, "a peer certificate needs at least one host"),
    ("empty cn", {"cn": ""}, "common name '' must be"),
    ("long cn", {"cn": "x" * 65}, "common name 'x{65}' must be 1 to 64"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), [(k, m) for _, k, m in BAD_ISSUE_ARGS], ids=[i for i, _, _ in BAD_ISSUE_ARGS]
)
def test_issue_bad_arguments(ca_dir: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"profile": "server", "name": "m1", "hosts": ["127.0.0.1"], **kwargs}
    before = snapshot(ca_dir)
    with pytest.raises(PkiError, match=message) as e:
        pki.issue(ca_dir, **args)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
    assert snapshot(ca_dir) == before
    assert not (ca_dir.parent / "evil.pem").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 0}, "--days must be"),
        ({"key_type": "ed25519"}, "unknown key type 'ed25519'"),
        ({"cn": ""}, "common name '' must be"),
    ],
)
def test_init_ca_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PkiError, match=message):
        pki.init_ca(tmp_path / "pki", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "pki").exists()


def test_init_ca_directory_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(PkiError, match="f exists and is not a directory"):
        pki.init_ca(tmp_path / "f")


BAD_CSRS: list[tuple[str, str, str]] = [
    ("comment", '{"CN": "etcd", "hosts": [\n# the hosts\n"127.0.0.1"]}', "is not valid JSON"),
    ("not an object", "[1, 2]", "expected a JSON object"),
    ("dsa", '{"key": {"algo": "dsa", "size": 2048}}', "key algo 'dsa' is not supported"),
    ("rsa 1024", '{"key": {"algo": "rsa", "size": 1024}}', "key algo rsa size 1024 is not supported"),
    ("rsa 16384", '{"key": {"algo": "rsa", "size": 16384}}', "key algo rsa size 16384 is not supported"),
    ("ecdsa 2048", '{"key": {"algo": "ecdsa", "size": 2048}}', "key algo ecdsa size 2048 is not supported"),
    ("size text", '{"key": {"algo": "rsa", "size": "2048"}}', "key size '2048' is not a number"),
    ("hosts text", '{"hosts": "127.0.0.1"}', '"hosts" must be a list'),
    ("CN number", '{"CN": 5}', '"CN" must be a string'),
    ("names unknown", '{"names": [{"C": "CN", "X": "y"}]}', '"names" field.s. X'),
    ("country", '{"names": [{"C": "China"}]}', "country C 'China' must be a two-letter code"),
    ("bad host", '{"hosts": ["no such host!"]}', "host 'no such host!' is neither"),
]


@pytest.mark.parametrize(
    ("text", "message"), [(t, m) for _, t, m in BAD_CSRS], ids=[i for i, _, _ in BAD_CSRS]
)
def test_bad_csr_json(ca_dir: Path, tmp_path: Path, text: str, message: str) -> None:
    csr = tmp_path / "bad-csr.json"
    csr.write_text(text)
    before = snapshot(ca_dir)
    with pytest.raises(PkiError, match=message) as e:
        pki.issue(ca_dir, profile="client", name="c", csr_json=csr)
    # The file is named, except for a bad host, which names the host (the same value as in --hosts).
    if "host '" not in message:
        assert str(csr) in str(e.value)
        assert e.value.path == csr
    assert snapshot(ca_dir) == before


def test_missing_csr_json(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"CSR file .*nope\.json not found"):
        pki.issue(ca_dir, profile="client", name="c", csr_json=tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------------
# testing.tls


def test_make_cluster_tls(tmp_path: Path) -> None:
    a = make_cluster_tls(tmp_path / "a")
    b = make_cluster_tls(tmp_path / "b", name="dr", hosts=("127.0.0.1",))
    assert a.ca == tmp_path / "a" / "ca.pem" and a.client.cacert == a.ca
    assert b.server_cert == tmp_path / "b" / "dr-server.pem"

    ca_a, ca_b = load(a.ca), load(b.ca)
    for c in (a.server_cert, a.peer_cert, a.client.cert):
        load(c).verify_directly_issued_by(ca_a)
        with pytest.raises((ValueError, TypeError)):  # two independent CAs
            load(c).verify_directly_issued_by(ca_b)
    for k in (a.server_key, a.peer_key, a.client.key):
        assert mode(k) == 0o600

    client = load(a.client.cert)
    assert client.subject.rfc4514_string() == "CN=etcd-dr-client"
    assert list(ext(client, x509.ExtendedKeyUsage).value) == [CLIENT_AUTH]
    server = load(a.server_cert)
    assert list(ext(server, x509.ExtendedKeyUsage).value) == [SERVER_AUTH, CLIENT_AUTH]
    assert sans(server) == (
        [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        ["localhost"],
    )
    assert sans(load(b.peer_cert)) == ([ipaddress.ip_address("127.0.0.1")], [])


# ---------------------------------------------------------------------------------------------------
# real TLS with the ssl module


def server_context(tls: ClusterTLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    ctx.load_verify_locations(tls.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # like etcd --client-cert-auth
    return ctx


def client_context(cacert: Path, client: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its host name
    ctx.load_verify_locations(cacert)
    ctx.load_cert_chain(client.cert, client.key)
    return ctx


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str
) -> tuple[BaseException | None, BaseException | None]:
    """Handshake over a socketpair and exchange one byte each way: (client error, server error)."""
    s_sock, c_sock = socket.socketpair()
    s_sock.settimeout(10)
    c_sock.settimeout(10)
    server_error: list[BaseException] = []
    client_error: BaseException | None = None

    def serve() -> None:
        try:
            with server.wrap_socket(s_sock, server_side=True) as tls:
                if tls.recv(1) != b"?":
                    raise ConnectionError("server: no request")
                tls.sendall(b"!")
        except (OSError, ssl.SSLError) as e:
            server_error.append(e)
        finally:
            s_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(c_sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"?")
            # Under TLS 1.3 a rejected client certificate shows up here, after the handshake.
            if tls.recv(1) != b"!":
                raise ConnectionError("client: no answer")
    except (OSError, ssl.SSLError) as e:
        client_error = e
    finally:
        c_sock.close()
        thread.join(10)
    assert not thread.is_alive()
    return client_error, (server_error[0] if server_error else None)


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClusterTLS, ClusterTLS]:
    d = tmp_path_factory.mktemp("tls")
    return make_cluster_tls(d / "a"), make_cluster_tls(d / "b")


@pytest.mark.parametrize("hostname", ["127.0.0.1", "::1", "localhost"])
def test_ssl_handshake_succeeds(two_cas: tuple[ClusterTLS, ClusterTLS], hostname: str) -> None:
    a, _ = two_cas
    assert handshake(server_context(a), client_context(a.ca, a.client), hostname) == (None, None)


def test_ssl_client_rejects_server_of_another_ca(two_cas: tuple[ClusterTLS, ClusterTLS]) -> None:
    a, b = two_cas
    client_err, _ = handshake(server_context(a), client_context(b.ca, a.client), "127.0.0.1")
    assert isinstance(client_err, ssl.SSLCertVerificationError)
    # 19 X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN / 20 ..._UNABLE_TO_GET_ISSUER_CERT_LOCALLY: which one depends
    # on whether the server sends its CA along.
    assert client_err.verify_code in (19, 20), client_err


def test_ssl_server_rejects_client_of_another_ca(two_cas: tuple[ClusterTLS, ClusterTLS]) -> None:
    a, b = two_cas
    client_err, server_err = handshake(server_context(a), client_context(a.ca, b.client), "127.0.0.1")
    assert isinstance(server_err, ssl.SSLCertVerificationError)
    assert client_err is not None  # told by an alert


def test_ssl_wrong_host_name_rejected(two_cas: tuple[ClusterTLS, ClusterTLS]) -> None:
    a, _ = two_cas
    client_err, _ = handshake(server_context(a), client_context(a.ca, a.client), "etcd.example.com")
    assert isinstance(client_err, ssl.SSLCertVerificationError)
    assert client_err.verify_code == 62, client_err  # X509_V_ERR_HOSTNAME_MISMATCH


def test_ssl_client_cert_cannot_serve(two_cas: tuple[ClusterTLS, ClusterTLS], tmp_path: Path) -> None:
    # A client-profile certificate lacks serverAuth: a TLS client must refuse it as a server.
    a, _ = two_cas
    d = tmp_path / "c"
    shutil.copytree(a.ca.parent, d)
    bad = pki.issue(d, profile="client", name="not-a-server", hosts=["127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(bad.cert, bad.key)
    client_err, _ = handshake(server, client_context(a.ca, a.client), "127.0.0.1")
    assert isinstance(client_err, ssl.SSLCertVerificationError)
    assert client_err.verify_code == 26, client_err  # X509_V_ERR_INVALID_PURPOSE


# ---------------------------------------------------------------------------------------------------
# etcd itself

needs_etcd = pytest.mark.skipif(
    not (ETCD.exists() and ETCDCTL.exists()), reason="needs /usr/bin/etcd and /usr/bin/etcdctl"
)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def clean_env() -> dict[str, str]:
    # ETCD_* / ETCDCTL_* in the environment would silently change etcd's and etcdctl's flags.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl(endpoint: str, cacert: Path, client: TLSFiles, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(ETCDCTL),
        "--endpoints",
        endpoint,
        "--cacert",
        str(cacert),
        "--cert",
        str(client.cert),
        "--key",
        str(client.key),
        "--dial-timeout",
        "3s",
        "--command-timeout",
        "5s",
        *args,
    ]
    return subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=30, check=False)


def stop(proc: subprocess.Popen[bytes]) -> None:
    # Only the process this test started, by its PID.
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def etcd_cluster(tmp: Path, tls: ClusterTLS, members: int) -> Iterator[list[str]]:
    """Start `members` TLS etcd processes on loopback; yield their client URLs; always stop them."""
    ports = free_ports(2 * members)
    names = [f"m{i}" for i in range(members)]
    peer_urls = [f"https://127.0.0.1:{ports[2 * i + 1]}" for i in range(members)]
    client_urls = [f"https://127.0.0.1:{ports[2 * i]}" for i in range(members)]
    initial = ",".join(f"{n}={u}" for n, u in zip(names, peer_urls, strict=True))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for i, name in enumerate(names):
            log = tmp / f"{name}.log"
            logs.append(log)
            cmd = [
                str(ETCD),
                f"--name={name}",
                f"--data-dir={tmp / name}",
                f"--listen-client-urls={client_urls[i]}",
                f"--advertise-client-urls={client_urls[i]}",
                f"--listen-peer-urls={peer_urls[i]}",
                f"--initial-advertise-peer-urls={peer_urls[i]}",
                f"--initial-cluster={initial}",
                f"--initial-cluster-token=pki-test-{os.getpid()}-{ports[0]}",
                "--initial-cluster-state=new",
                "--client-cert-auth",
                f"--trusted-ca-file={tls.ca}",
                f"--cert-file={tls.server_cert}",
                f"--key-file={tls.server_key}",
                "--peer-client-cert-auth",
                f"--peer-trusted-ca-file={tls.ca}",
                f"--peer-cert-file={tls.peer_cert}",
                f"--peer-key-file={tls.peer_key}",
                "--logger=zap",
                "--log-outputs=stderr",
            ]
            with log.open("wb") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_env()))
        deadline = time.monotonic() + 30
        for url in client_urls:
            while True:
                for p, log in zip(procs, logs, strict=True):
                    if p.poll() is not None:
                        pytest.fail(f"etcd exited with {p.returncode}:\n{log.read_text()[-3000:]}")
                if etcdctl(url, tls.ca, tls.client, "endpoint", "health").returncode == 0:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(
                        "etcd not healthy in 30 s:\n" + "\n".join(lg.read_text()[-2000:] for lg in logs)
                    )
                time.sleep(0.2)
        yield client_urls
    finally:
        for p in procs:
            stop(p)


@needs_etcd
@pytest.mark.timeout(120)
def test_etcd_accepts_same_ca_and_refuses_another(
    two_cas: tuple[ClusterTLS, ClusterTLS], tmp_path: Path
) -> None:
    a, b = two_cas
    with etcd_cluster(tmp_path, a, members=1) as (url,):
        put = etcdctl(url, a.ca, a.client, "put", "/pki-test", "hello")
        assert put.returncode == 0, put.stderr
        get = etcdctl(url, a.ca, a.client, "get", "--print-value-only", "/pki-test")
        assert get.returncode == 0 and get.stdout.strip() == "hello", get.stderr

        # A client certificate from another CA: the server refuses the handshake.
        log = tmp_path / "m0.log"
        refused = etcdctl(url, a.ca, b.client, "put", "/pki-test", "intruder")
        assert refused.returncode != 0
        assert "failed to verify client certificate: x509: certificate signed by unknown authority" in (
            log.read_text()
        )
        # A client that trusts another CA refuses the server (and tells it with an alert).
        distrust = etcdctl(url, b.ca, a.client, "get", "/pki-test")
        assert distrust.returncode != 0
        assert "remote error: tls: bad certificate" in log.read_text()
        assert (
            etcdctl(url, a.ca, a.client, "get", "--print-value-only", "/pki-test").stdout.strip() == "hello"
        )


@needs_etcd
@pytest.mark.timeout(120)
def test_etcd_members_talk_over_peer_tls(two_cas: tuple[ClusterTLS, ClusterTLS], tmp_path: Path) -> None:
    # Peer certificates are presented as client certs when members dial each other, and etcd checks
    # their SANs against the dialing address: a 3-member cluster only forms if both are right.
    a, _ = two_cas
    with etcd_cluster(tmp_path, a, members=3) as urls:
        assert etcdctl(urls[0], a.ca, a.client, "put", "/peer", "ok").returncode == 0
        got = etcdctl(urls[2], a.ca, a.client, "get", "--consistency=l", "--print-value-only", "/peer")
        assert got.returncode == 0 and got.stdout.strip() == "ok", got.stderr
        members = etcdctl(urls[1], a.ca, a.client, "member", "list")
        assert members.returncode == 0 and members.stdout.count("started") == 3, members.stdout
