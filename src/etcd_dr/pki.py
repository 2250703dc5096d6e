"""Certificate authority and server / peer / client certificates for etcd (replaces cfssl).

The files are laid out the way cfssl + cfssljson lay them out (DIR/ca.pem, DIR/ca-key.pem,
DIR/NAME.pem, DIR/NAME-key.pem), so a directory made by cfssl can be used to issue more certificates
and the etcd flags of an existing deployment keep working.

Every failure is a `PkiError` whose message is one line naming the file, flag or value at fault; nothing
is ever overwritten, and a refused call writes nothing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import EtcdDrError

__all__ = [
    "KEY_TYPES",
    "PROFILES",
    "CertInfo",
    "CertPaths",
    "PkiError",
    "describe",
    "init_ca",
    "issue",
]

PROFILES = ("server", "peer", "client")
KEY_TYPES = ("ecdsa", "rsa")

# Certificates are back-dated so that a member whose clock is a little behind accepts them at once.
_CLOCK_SKEW = dt.timedelta(minutes=5)

_EKU: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    # etcd members also dial as clients (grpc-gateway, and the peer cert is presented when dialing a
    # peer), so server and peer certificates carry clientAuth too.
    "server": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "peer": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
}

_DEFAULT_SIZE = {"ecdsa": 256, "rsa": 2048}
_EC_CURVES: dict[int, ec.EllipticCurve] = {256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}
# cfssl's own limits for RSA keys.
_RSA_MIN, _RSA_MAX = 2048, 8192

# cfssl "names" fields, in the order cfssl (Go's pkix.Name) puts them in the subject.
_NAME_FIELDS: dict[str, x509.ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
}

# A DNS SAN: letters, digits, '-', '_', '.', and a leading wildcard label. Anything else (spaces, commas,
# schemes, ports) is a mistake in --hosts that would otherwise give a certificate nobody can use.
_DNS_RE = re.compile(
    r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$"
)

_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class PkiError(EtcdDrError):
    """A certificate operation was refused; the message names the file / flag / value at fault (exit 2)."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertInfo:
    path: Path
    subject_cn: str | None
    issuer_cn: str | None
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    usages: tuple[str, ...]  # extended key usages: "serverAuth", "clientAuth", other dotted OIDs
    serial: int


@dataclass(frozen=True)
class _KeySpec:
    algo: str
    size: int


@dataclass(frozen=True)
class _CsrRequest:
    cn: str | None
    hosts: tuple[str, ...]
    key: _KeySpec | None
    names: tuple[x509.NameAttribute[str], ...]
    # The "ca" section (cfssl's CAConfig), used by `pki init --csr`.
    ca_expiry: float | None = None
    ca_pathlen: int | None = None


# ---------------------------------------------------------------------------------------------------
# public API


def init_ca(
    directory: Path,
    *,
    cn: str | None = None,
    key_type: str | None = None,
    days: int | None = None,
    csr_json: Path | None = None,
) -> CertPaths:
    """Create a self-signed CA: DIR/ca.pem and DIR/ca-key.pem (DIR is created if missing).

    `csr_json` is cfssl's ca-csr.json: its CN, names, key, hosts and "ca" section (expiry, pathlen) make
    the CA that `cfssl gencert -initca` makes; `cn`, `key_type` and `days` override them. Without it:
    CN "etcd-dr CA", ECDSA P-256, 36500 days.
    """
    directory = Path(directory)
    req = _read_csr_json(Path(csr_json)) if csr_json is not None else None
    if days is not None:
        lifetime = _days(days)
    elif req is not None:
        # cfssl's default CA expiry is 5 years (43800h).
        lifetime = _lifetime(req.ca_expiry if req.ca_expiry is not None else 43800 * 3600.0, csr_json)
    else:
        lifetime = dt.timedelta(days=36500)
    if key_type is not None:
        spec = _key_spec(key_type)
        if req is not None and req.key is not None and req.key.algo == spec.algo:
            spec = req.key
    elif req is not None and req.key is not None:
        spec = req.key
    else:
        spec = _key_spec("ecdsa")
    subject_cn = cn if cn is not None else (req.cn if req is not None and req.cn else "etcd-dr CA")
    _check_cn(subject_cn)
    sans = _sans(req.hosts) if req is not None else []
    paths = CertPaths(directory / "ca.pem", directory / "ca-key.pem")
    _check_free(paths)

    key = _generate_key(spec)
    not_before, not_after = _validity(lifetime, days)
    name = _subject(req.names if req is not None else (), subject_cn)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    pathlen = req.ca_pathlen if req is not None else None
    # No AuthorityKeyIdentifier: on a self-signed root it only repeats the SKI (RFC 5280 4.2.1.1 lets
    # it be omitted), and cfssl leaves it out.
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
        .add_extension(ski, critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, _hash_for(key))
    if not directory.exists():
        try:
            # The directory holds private keys: nobody else needs to list it.
            directory.mkdir(mode=0o700, parents=True)
        except OSError as e:
            raise PkiError(f"cannot create directory {directory}: {e.strerror or e}", path=directory) from e
    elif not directory.is_dir():
        raise PkiError(f"{directory} exists and is not a directory", path=directory)
    _write_pair(paths, cert, key)
    return paths


def issue(
    directory: Path,
    *,
    profile: str | None,
    name: str,
    hosts: Sequence[str] = (),
    days: int | None = None,
    key_type: str | None = None,
    csr_json: Path | None = None,
    cn: str | None = None,
    config_json: Path | None = None,
) -> CertPaths:
    """Sign a new certificate with DIR's CA and write DIR/NAME.pem and DIR/NAME-key.pem.

    `csr_json` is a cfssl CSR file: its CN, hosts, key and names are used unless the caller gives
    `cn`, `hosts` or `key_type` explicitly. `key_type` None means "the CSR's key, else ECDSA P-256".

    Without `config_json`, `profile` is etcd-dr's server, peer or client (3650 days by default). With
    it (cfssl's ca-config.json), `profile` names one of its profiles (None: its "default"), whose usages
    and expiry the certificate gets, as from `cfssl gencert -config ... -profile ...`.
    """
    directory = Path(directory)
    signing = None
    if config_json is not None:
        from .cfssl import CfsslConfigError, read_signing_profile

        try:
            signing = read_signing_profile(Path(config_json), profile)
        except CfsslConfigError as e:
            raise PkiError(str(e), path=Path(config_json)) from None
    elif profile not in PROFILES:
        raise PkiError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    _check_name(name)
    if days is not None:
        lifetime = _days(days)
    elif signing is not None:
        lifetime = _lifetime(signing.expiry_seconds, config_json)
    else:
        lifetime = dt.timedelta(days=3650)
    if isinstance(hosts, str):
        # A bare string would be split into characters; the caller meant a list.
        raise PkiError(f"hosts must be a list of host names / IPs, not the string {hosts!r}")
    req = _read_csr_json(Path(csr_json)) if csr_json is not None else None

    if key_type is not None:
        spec = _key_spec(key_type)
        # The CSR's size still applies when it asks for the same algorithm.
        if req is not None and req.key is not None and req.key.algo == spec.algo:
            spec = req.key
    elif req is not None and req.key is not None:
        spec = req.key
    else:
        spec = _key_spec("ecdsa")

    subject_cn = cn if cn is not None else (req.cn if req is not None and req.cn else name)
    _check_cn(subject_cn)
    host_list = tuple(hosts) if hosts else (req.hosts if req is not None else ())
    sans = _sans(host_list)
    if signing is not None:
        ekus = signing.ext_key_usages
        key_usage = signing.key_usage
        serves = ExtendedKeyUsageOID.SERVER_AUTH in ekus
    else:
        assert profile is not None
        ekus = _EKU[profile]
        key_usage = _key_usage(cert_sign=False)
        serves = profile in ("server", "peer")
    if serves and not sans and signing is not None:
        raise PkiError(
            f"profile {signing.name!r} has server auth but the certificate has no hosts (--hosts, or "
            '"hosts" in --csr): Go (etcd, etcdctl) ignores the CN, so nobody could use it as a server'
        )
    if profile in ("server", "peer") and signing is None and not sans:
        # Go (etcd, etcdctl) ignores the CN for host checks: without SANs the certificate is unusable.
        raise PkiError(
            f"a {profile} certificate needs at least one host (--hosts): the IPs / DNS names it serves"
        )

    ca_paths = CertPaths(directory / "ca.pem", directory / "ca-key.pem")
    ca_cert, ca_key = _load_ca(ca_paths)
    paths = CertPaths(directory / f"{name}.pem", directory / f"{name}-key.pem")
    _check_free(paths)

    not_before, not_after = _validity(lifetime, days)
    if not_after > ca_cert.not_valid_after_utc:
        if days is not None or signing is None:
            what = f"--days {days or 3650}"
        else:
            what = f"expiry {signing.expiry_text} of profile {signing.name!r}"
        raise PkiError(
            f"{what} would end after the CA {ca_paths.cert} expires "
            f"({ca_cert.not_valid_after_utc:%Y-%m-%d}): use fewer days"
        )

    key = _generate_key(spec)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(req.names if req is not None else (), subject_cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, _hash_for(ca_key))
    _write_pair(paths, cert, key)
    return paths


def describe(cert_path: Path) -> CertInfo:
    """What `pki check` shows about a certificate file (the first certificate in it)."""
    cert_path = Path(cert_path)
    cert = _load_cert(cert_path, what="certificate")
    try:
        san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(str(n.value) for n in san_ext if isinstance(n, x509.DNSName | x509.IPAddress))
    except x509.ExtensionNotFound:
        sans = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
    except x509.ExtensionNotFound:
        usages = ()
    return CertInfo(
        path=cert_path,
        subject_cn=_common_name(cert.subject),
        issuer_cn=_common_name(cert.issuer),
        sans=sans,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        usages=usages,
        serial=cert.serial_number,
    )


_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


# ---------------------------------------------------------------------------------------------------
# validation


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise PkiError(f"--days must be a whole number of at least 1, not {days!r}")


def _days(days: int) -> dt.timedelta:
    _check_days(days)
    try:
        return dt.timedelta(days=days)
    except OverflowError:
        raise PkiError(f"--days {days} is too large (certificates must end by the year 9999)") from None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise PkiError("--name must not be empty")
    seps = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    if any(s in name for s in seps) or name in (".", "..") or "\0" in name:
        raise PkiError(f"--name {name!r} must be a plain file name (no path separator): files go in --dir")


def _check_cn(cn: str) -> None:
    # X.509 (RFC 5280 ub-common-name) allows 1..64 characters.
    if not isinstance(cn, str) or not cn or len(cn) > 64:
        raise PkiError(f"common name {cn!r} must be 1 to 64 characters")


def _key_spec(key_type: str) -> _KeySpec:
    if key_type not in KEY_TYPES:
        raise PkiError(f"unknown key type {key_type!r}: use ecdsa or rsa")
    return _KeySpec(key_type, _DEFAULT_SIZE[key_type])


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        if not isinstance(host, str) or not host.strip():
            raise PkiError(f"host {host!r} is empty or not a string")
        h = host
        # "[::1]" is how IPv6 hosts are written in URLs; accept it.
        if h.startswith("[") and h.endswith("]"):
            h = h[1:-1]
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            ip = None
        if ip is not None:
            if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
                raise PkiError(f"host {host!r}: an IPv6 zone (%{ip.scope_id}) cannot go in a certificate")
            key = str(ip)
            name: x509.GeneralName = x509.IPAddress(ip)
        else:
            if not _DNS_RE.match(h) or len(h) > 253:
                raise PkiError(f"host {host!r} is neither an IP address nor a valid DNS name")
            key = h.lower()
            name = x509.DNSName(h)
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def _check_free(paths: CertPaths) -> None:
    # Checked for both files before anything is generated or written: a refusal leaves DIR untouched.
    for p in (paths.cert, paths.key):
        if os.path.lexists(p):
            raise PkiError(f"{p} already exists; refusing to overwrite it", path=p)


def _read_csr_json(path: Path) -> _CsrRequest:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PkiError(f"CSR file {path} not found", path=path) from e
    except (OSError, UnicodeDecodeError) as e:
        raise PkiError(f"cannot read CSR file {path}: {getattr(e, 'strerror', None) or e}", path=path) from e
    try:
        doc: Any = json.loads(raw)
    except json.JSONDecodeError as e:
        raise PkiError(f"CSR file {path} is not valid JSON: {e}", path=path) from e
    if not isinstance(doc, dict):
        raise PkiError(f"CSR file {path}: expected a JSON object", path=path)

    def bad(what: str) -> PkiError:
        return PkiError(f"CSR file {path}: {what}", path=path)

    cn = doc.get("CN")
    if cn is not None and not isinstance(cn, str):
        raise bad(f'"CN" must be a string, not {cn!r}')

    hosts = doc.get("hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise bad(f'"hosts" must be a list of strings, not {hosts!r}')

    key: _KeySpec | None = None
    key_doc = doc.get("key")
    if key_doc is not None:
        if not isinstance(key_doc, dict):
            raise bad(f'"key" must be an object like {{"algo": "ecdsa", "size": 256}}, not {key_doc!r}')
        algo = key_doc.get("algo", "ecdsa")
        size = key_doc.get("size")
        if algo not in KEY_TYPES:
            raise bad(f"key algo {algo!r} is not supported: use ecdsa or rsa")
        if size is None:
            size = _DEFAULT_SIZE[algo]
        if isinstance(size, bool) or not isinstance(size, int):
            raise bad(f"key size {size!r} is not a number")
        if algo == "ecdsa" and size not in _EC_CURVES:
            raise bad(f"key algo ecdsa size {size} is not supported: use 256, 384 or 521")
        if algo == "rsa" and not _RSA_MIN <= size <= _RSA_MAX:
            raise bad(f"key algo rsa size {size} is not supported: use {_RSA_MIN} to {_RSA_MAX}")
        key = _KeySpec(algo, size)

    names_doc = doc.get("names") or []
    if not isinstance(names_doc, list):
        raise bad(f'"names" must be a list of objects, not {names_doc!r}')
    names: list[x509.NameAttribute[str]] = []
    for entry in names_doc:
        if not isinstance(entry, dict):
            raise bad(f'each "names" entry must be an object, not {entry!r}')
        unknown = sorted(set(entry) - set(_NAME_FIELDS))
        if unknown:
            # Dropping a subject field silently would give a certificate other than the one asked for.
            raise bad(f'unsupported "names" field(s) {", ".join(unknown)}: use C, ST, L, O, OU')
        for field, oid in _NAME_FIELDS.items():
            value = entry.get(field)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise bad(f'"names" field {field} must be a string, not {value!r}')
            if field == "C" and len(value) != 2:
                raise bad(f"country C {value!r} must be a two-letter code such as CN or US")
            try:
                names.append(x509.NameAttribute(oid, value))
            except ValueError as e:
                raise bad(f'"names" field {field} {value!r}: {e}') from e
    ca_expiry: float | None = None
    ca_pathlen: int | None = None
    ca_doc = doc.get("ca")
    if ca_doc is not None:
        if not isinstance(ca_doc, dict):
            raise bad(f'"ca" must be an object like {{"expiry": "876000h"}}, not {ca_doc!r}')
        unknown = sorted(set(ca_doc) - {"expiry", "pathlen", "pathlenzero", "backdate"})
        if unknown:
            raise bad(f'unsupported "ca" field(s) {", ".join(unknown)}: use expiry, pathlen, pathlenzero')
        if ca_doc.get("backdate") not in (None, ""):
            raise bad('"ca" field backdate is not supported (etcd-dr back-dates by 5 minutes, as cfssl)')
        expiry = ca_doc.get("expiry")
        if expiry not in (None, ""):
            from .cfssl import parse_expiry

            try:
                ca_expiry = parse_expiry(expiry, '"ca" expiry', "876000h")
            except ValueError as e:
                raise bad(str(e)) from None
        pathlen = ca_doc.get("pathlen", 0)
        if isinstance(pathlen, bool) or not isinstance(pathlen, int) or pathlen < 0:
            raise bad(f'"ca" pathlen must be a whole number, not {pathlen!r}')
        # cfssl: pathlen 0 means "no limit" unless pathlenzero is true.
        if pathlen > 0:
            ca_pathlen = pathlen
        elif ca_doc.get("pathlenzero") is True:
            ca_pathlen = 0
    return _CsrRequest(
        cn=cn or None,
        hosts=tuple(hosts),
        key=key,
        names=tuple(names),
        ca_expiry=ca_expiry,
        ca_pathlen=ca_pathlen,
    )


# ---------------------------------------------------------------------------------------------------
# keys, certificates, files


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _lifetime(seconds: float, source: Path | None) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise PkiError(f"the expiry in {source} is too large", path=source) from None


def _validity(lifetime: dt.timedelta, days: int | None) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter) as cfssl makes them: now rounded to the minute, back-dated for clock skew
    (a member whose clock is a little behind accepts the certificate at once), and notAfter exactly
    `lifetime` later, so the certificate lasts what was asked."""
    now = _now()
    rounded = (now + dt.timedelta(seconds=30)).replace(second=0)
    not_before = rounded - _CLOCK_SKEW
    try:
        return not_before, not_before + lifetime
    except OverflowError:
        what = f"--days {days}" if days is not None else "the expiry"
        raise PkiError(f"{what} is too large (certificates must end by the year 9999)") from None


def _subject(names: Sequence[x509.NameAttribute[str]], cn: str) -> x509.Name:
    """The subject as Go's pkix.Name (cfssl) writes it: C, ST, L, O, OU, then CN; the values of one
    attribute type (several "names" entries) together in one RDN."""
    rdns: list[x509.RelativeDistinguishedName] = []
    for oid in (*_NAME_FIELDS.values(), NameOID.COMMON_NAME):
        values = [a for a in names if a.oid == oid] if oid != NameOID.COMMON_NAME else []
        if oid == NameOID.COMMON_NAME:
            values = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        unique: list[x509.NameAttribute[str]] = []
        for v in values:
            if v not in unique:
                unique.append(v)
        if unique:
            rdns.append(x509.RelativeDistinguishedName(unique))
    return x509.Name(rdns)


def _generate_key(spec: _KeySpec) -> _PrivateKey:
    if spec.algo == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)
    return ec.generate_private_key(_EC_CURVES[spec.size])


def _hash_for(key: _PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    # Match the digest to the key's strength, as cfssl (signer.DefaultSigAlgo) does.
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    elif key.key_size >= 4096:
        return hashes.SHA512()
    elif key.key_size >= 3072:
        return hashes.SHA384()
    return hashes.SHA256()


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # A CA made elsewhere without SKI: derive the identifier from its key, as RFC 5280 suggests.
        pub = ca_cert.public_key()
        if not isinstance(pub, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise PkiError("CA key type is not supported: use an RSA or ECDSA CA") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(pub)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        hint = " (create a CA first with `etcd-dr pki init`)" if what.startswith("CA") else ""
        raise PkiError(f"{what} {path} not found{hint}", path=path) from e
    except IsADirectoryError as e:
        raise PkiError(f"{what} {path} is a directory, not a file", path=path) from e
    except OSError as e:
        raise PkiError(f"cannot read {what} {path}: {e.strerror or e}", path=path) from e


def _load_cert(path: Path, *, what: str) -> x509.Certificate:
    data = _read_bytes(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise PkiError(f"{what} {path} is not a PEM certificate", path=path) from e


def _load_ca(paths: CertPaths) -> tuple[x509.Certificate, _PrivateKey]:
    cert = _load_cert(paths.cert, what="CA certificate")
    data = _read_bytes(paths.key, "CA key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise PkiError(
            f"CA key {paths.key} is encrypted; etcd-dr needs an unencrypted key", path=paths.key
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PkiError(f"CA key {paths.key} is not a PEM private key", path=paths.key) from e
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"CA key {paths.key} is not an RSA or ECDSA key", path=paths.key)

    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != cert.public_key().public_bytes(der, pub):
        raise PkiError(f"CA key {paths.key} does not belong to CA certificate {paths.cert}", path=paths.key)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"{paths.cert} is not a CA certificate (no BasicConstraints CA:TRUE)", path=paths.cert)
    if cert.not_valid_after_utc <= _now():
        raise PkiError(
            f"CA certificate {paths.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}", path=paths.cert
        )
    return cert, key


def _write_pair(paths: CertPaths, cert: x509.Certificate, key: _PrivateKey) -> None:
    # "RSA PRIVATE KEY" (PKCS#1) / "EC PRIVATE KEY" (SEC 1), as cfssljson writes them: tools that
    # look for those headers (and Go, and OpenSSL) read them.
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    # Key first, created 0600 from the start so it is never readable by others, not even briefly.
    _write_new(paths.key, key_pem, 0o600)
    try:
        _write_new(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        # Do not leave a key without its certificate: the next attempt would be refused.
        paths.key.unlink(missing_ok=True)
        raise


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        # O_EXCL: never overwrite, even if the file appeared after _check_free (or is a symlink).
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError as e:
        raise PkiError(f"{path} already exists; refusing to overwrite it", path=path) from e
    except OSError as e:
        raise PkiError(f"cannot create {path}: {e.strerror or e}", path=path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)
        raise PkiError(f"cannot write {path}: {e.strerror or e}", path=path) from e
