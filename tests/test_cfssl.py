"""`etcd-dr pki` reads cfssl's files and makes the certificates cfssl 1.2.0 makes from them.

The reference is Debian's golang-cfssl (cfssl 1.2.0, the seed's version) run on the seed's own JSON
files; the comparison skips cleanly where cfssl is not installed. The rest (profiles, usages, refusals)
needs no cfssl.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness.clirun import assert_refused, etcd_dr_sync
from harness.seed import cfssl_gencert, cfssl_path, write_seed_json

from etcd_dr import pki
from etcd_dr.pki import PkiError

needs_cfssl = pytest.mark.skipif(cfssl_path() is None, reason="cfssl/cfssljson not installed (golang-cfssl)")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate, cls: type[Any]) -> Any:
    try:
        e = cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None
    return (e.critical, e.value)


def fields(cert: x509.Certificate, key_pem: bytes) -> dict[str, Any]:
    """What must match between cfssl's certificate and ours."""
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        key = ("rsa", pub.key_size)
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        key = ("ecdsa", pub.curve.key_size)
    san = ext(cert, x509.SubjectAlternativeName)
    ski = ext(cert, x509.SubjectKeyIdentifier)
    aki = ext(cert, x509.AuthorityKeyIdentifier)
    return {
        "subject": cert.subject.rfc4514_string(),
        "subject_rdns": [[a.oid.dotted_string for a in rdn] for rdn in cert.subject.rdns],
        "issuer": cert.issuer.rfc4514_string(),
        "key": key,
        "signature": cert.signature_algorithm_oid.dotted_string,
        "sans": sorted(str(n.value) for n in san[1]) if san else None,
        "key_usage": ext(cert, x509.KeyUsage),
        "ext_key_usage": (lambda e: (e[0], list(e[1])) if e else None)(ext(cert, x509.ExtendedKeyUsage)),
        "basic_constraints": ext(cert, x509.BasicConstraints),
        "ski": ski is not None and ski[1].digest == x509.SubjectKeyIdentifier.from_public_key(pub).digest,
        "aki": aki is not None,
        "lifetime": cert.not_valid_after_utc - cert.not_valid_before_utc,
        "key_pem_header": key_pem.splitlines()[0],
        "extension_order": [e.oid.dotted_string for e in cert.extensions],
    }


@needs_cfssl
def test_seed_files_give_cfssls_certificates(tmp_path: Path) -> None:
    ref = tmp_path / "cfssl"
    files = write_seed_json(ref)
    cfssl_gencert(ref)
    ours = tmp_path / "ours"
    run = etcd_dr_sync("pki", "init", "--dir", str(ours), "--csr", str(files["ca-csr.json"]))
    assert run.code == 0, run.stderr
    run = etcd_dr_sync(
        "pki", "issue", "--dir", str(ours), "--config", str(files["ca-config.json"]),
        "--profile", "kubernetes", "--csr", str(files["etcd-csr.json"]), "--name", "etcd",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    for name in ("ca", "etcd"):
        theirs = fields(load(ref / f"{name}.pem"), (ref / f"{name}-key.pem").read_bytes())
        mine = fields(load(ours / f"{name}.pem"), (ours / f"{name}-key.pem").read_bytes())
        assert mine == theirs, name
    # The seed's values, to show what was compared.
    ca, leaf = load(ours / "ca.pem"), load(ours / "etcd.pem")
    assert leaf.subject.rfc4514_string() == "CN=etcd,OU=System,O=k8s,L=XS,ST=HangZhou,C=CN"
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == dt.timedelta(hours=876000)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=438000)
    assert ext(ca, x509.AuthorityKeyIdentifier) is None
    leaf.verify_directly_issued_by(ca)


@needs_cfssl
def test_several_names_entries_and_ecdsa_like_cfssl(tmp_path: Path) -> None:
    csr = {
        "CN": "multi",
        "hosts": ["etcd.example.com", "10.0.0.1"],
        "key": {"algo": "ecdsa", "size": 384},
        "names": [{"C": "CN", "O": "a", "OU": "x"}, {"C": "US", "O": "b", "ST": "S"}],
    }
    config = {"signing": {"default": {"usages": ["digital signature", "client auth"], "expiry": "1h30m"}}}
    for d in ("cfssl", "ours"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "ca-csr.json").write_text(json.dumps({**csr, "CN": "ca"}))
        (tmp_path / d / "etcd-csr.json").write_text(json.dumps(csr))
        (tmp_path / d / "ca-config.json").write_text(json.dumps(config))
    cfssl_gencert(tmp_path / "cfssl", profile="default")
    o = tmp_path / "ours"
    pki.init_ca(o, csr_json=o / "ca-csr.json")
    # No --profile: the config's "default", as cfssl.
    pki.issue(o, profile=None, name="etcd", csr_json=o / "etcd-csr.json", config_json=o / "ca-config.json")
    for name in ("ca", "etcd"):
        theirs = fields(
            load(tmp_path / "cfssl" / f"{name}.pem"), (tmp_path / "cfssl" / f"{name}-key.pem").read_bytes()
        )
        mine = fields(load(o / f"{name}.pem"), (o / f"{name}-key.pem").read_bytes())
        if name == "ca":
            # cfssl 1.2.0 keeps only the IPs of a CA CSR's hosts (a quirk of its -initca); etcd-dr
            # puts every host the CSR asks for. Nothing checks a CA's SANs.
            assert theirs.pop("sans") == ["10.0.0.1"]
            assert mine.pop("sans") == ["10.0.0.1", "etcd.example.com"]
        assert mine == theirs, name
    assert load(o / "ca.pem").not_valid_after_utc - load(o / "ca.pem").not_valid_before_utc == dt.timedelta(
        hours=43800
    )  # cfssl's default CA expiry


def test_profile_usages_map_to_extensions(tmp_path: Path) -> None:
    config = tmp_path / "ca-config.json"
    config.write_text(
        json.dumps(
            {
                "signing": {
                    "default": {"expiry": "24h"},
                    "profiles": {
                        "peer": {
                            "usages": ["content committment", "key agreement", "server auth", "ipsec user"]
                        },
                        "client": {"usages": ["signing", "client auth"], "expiry": "1h"},
                    },
                }
            }
        )
    )
    pki.init_ca(tmp_path)
    cert = load(pki.issue(tmp_path, profile="peer", name="p", hosts=["127.0.0.1"], config_json=config).cert)
    critical, ku = ext(cert, x509.KeyUsage)
    assert critical and ku.content_commitment and ku.key_agreement and not ku.digital_signature
    assert list(ext(cert, x509.ExtendedKeyUsage)[1]) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    ]
    # The profile lacks an expiry: the default's.
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=24)
    cert = load(pki.issue(tmp_path, profile="client", name="c", config_json=config).cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=1)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "c"
    # --days still wins over the profile's expiry.
    cert = load(pki.issue(tmp_path, profile="client", name="d", config_json=config, days=2).cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=2)


@pytest.mark.parametrize(
    ("config", "profile", "needles"),
    [
        (
            {"signing": {"profiles": {"kubernetes": {"usages": ["signing"]}}}},
            "kubrenetes",
            ["'kubrenetes'", "kubernetes"],
        ),
        ({"signing": {"default": {"usages": ["signing", "server auht"]}}}, None, ["'server auht'"]),
        ({"signing": {"default": {"expiry": "10 years"}}}, None, ['"expiry"', "10 years"]),
        ({"signing": {"default": {"ca_constraint": {"is_ca": True}}}}, None, ["ca_constraint"]),
        ({"nothing": {}}, None, ['"signing"']),
    ],
)  # fmt: skip
def test_bad_config_refused_naming_it(
    tmp_path: Path, config: dict[str, Any], profile: str | None, needles: list[str]
) -> None:
    pki.init_ca(tmp_path)
    path = tmp_path / "ca-config.json"
    path.write_text(json.dumps(config))
    argv = [
        "pki",
        "issue",
        "--dir",
        str(tmp_path),
        "--config",
        str(path),
        "--name",
        "x",
        "--hosts",
        "127.0.0.1",
    ]
    run = etcd_dr_sync(*argv, *(["--profile", profile] if profile else []))
    assert_refused(run, str(path), *needles)
    assert not (tmp_path / "x.pem").exists() and not (tmp_path / "x-key.pem").exists()


def test_init_csr_ca_section(tmp_path: Path) -> None:
    csr = tmp_path / "ca-csr.json"
    csr.write_text(
        json.dumps({"CN": "c", "hosts": ["ca.example.com"], "ca": {"expiry": "8760h", "pathlen": 1}})
    )
    cert = load(pki.init_ca(tmp_path / "a", csr_json=csr).cert)
    assert ext(cert, x509.BasicConstraints) == (True, x509.BasicConstraints(ca=True, path_length=1))
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=8760)
    assert [str(n.value) for n in ext(cert, x509.SubjectAlternativeName)[1]] == ["ca.example.com"]
    csr.write_text(json.dumps({"CN": "c", "ca": {"pathlenzero": True, "expiry": "1y"}}))
    with pytest.raises(PkiError, match=r'"ca" expiry.*1y'):
        pki.init_ca(tmp_path / "b", csr_json=csr)
    assert not (tmp_path / "b").exists()


def test_no_profile_without_config_refused(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    assert_refused(etcd_dr_sync("pki", "issue", "--dir", str(tmp_path), "--name", "x"), "--profile")
    assert_refused(
        etcd_dr_sync("pki", "issue", "--dir", str(tmp_path), "--name", "x", "--profile", "kubernetes"),
        "--profile 'kubernetes'",
        "--config",
    )


def test_cfssl_installed_by_setup() -> None:
    setup = (Path(__file__).resolve().parents[1] / "scripts" / "setup.sh").read_text()
    assert "golang-cfssl" in setup
    if shutil.which("apt-get") and cfssl_path() is None:
        pytest.skip("golang-cfssl listed in setup.sh but not installed here")
