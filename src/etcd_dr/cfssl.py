"""cfssl's signing configuration (ca-config.json), as cfssl 1.2.0 reads it, for `etcd-dr pki issue
--config`.

    {"signing": {"default": {"expiry": "168h"},
                 "profiles": {"kubernetes": {"usages": ["signing", "key encipherment",
                                                         "server auth", "client auth"],
                                             "expiry": "438000h"}}}}

A profile's "usages" and "expiry" are used; a field it lacks comes from "default", then from cfssl's
built-in default (the four usages above, 168h). Where cfssl silently falls back to the default profile
for a profile name it does not know, or drops a usage it does not know, etcd-dr refuses, naming it and
the file: the certificate would not be the one asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from .durations import DurationError, parse_duration

__all__ = ["EXT_KEY_USAGES", "KEY_USAGES", "SigningProfile", "read_signing_profile"]

# cfssl's names (config.KeyUsage) -> cryptography's KeyUsage field.
KEY_USAGES: dict[str, str] = {
    "signing": "digital_signature",
    "digital signature": "digital_signature",
    "content commitment": "content_commitment",
    "content committment": "content_commitment",  # cfssl 1.2.0's spelling
    "key encipherment": "key_encipherment",
    "key agreement": "key_agreement",
    "data encipherment": "data_encipherment",
    "cert sign": "key_cert_sign",
    "crl sign": "crl_sign",
    "encipher only": "encipher_only",
    "decipher only": "decipher_only",
}

# cfssl's names (config.ExtKeyUsage) -> OIDs.
EXT_KEY_USAGES: dict[str, x509.ObjectIdentifier] = {
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "s/mime": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec end system": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec tunnel": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec user": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "microsoft sgc": x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),
    "netscape sgc": x509.ObjectIdentifier("2.16.840.1.113730.4.1"),
}

_CFSSL_DEFAULT_USAGES = ("signing", "key encipherment", "server auth", "client auth")
_CFSSL_DEFAULT_EXPIRY = "168h"
# Fields of a profile that etcd-dr uses; other fields change what cfssl would sign (CA constraints,
# URLs, back-dating, remote signers) and are refused rather than ignored.
_USED = {"usages", "expiry"}
# Fields that only matter to a cfssl server, not to the certificate.
_HARMLESS = {"auth_key", "remote", "auth_remote", "name_whitelist", "ocsp_no_check_warning"}


class CfsslConfigError(ValueError):
    """The signing configuration cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class SigningProfile:
    name: str
    usages: tuple[str, ...]  # cfssl's names, in the file's order
    key_usage: x509.KeyUsage | None  # None: no key usage named
    ext_key_usages: tuple[x509.ObjectIdentifier, ...]
    expiry_seconds: float
    expiry_text: str


def read_signing_profile(path: Path, profile: str | None) -> SigningProfile:
    """The profile `profile` (None: "default") of cfssl config file `path`."""
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CfsslConfigError(f"--config {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CfsslConfigError(f"cannot read --config {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise CfsslConfigError(f"--config {path} is not valid JSON: {e}") from None
    signing = doc.get("signing") if isinstance(doc, dict) else None
    if not isinstance(signing, dict):
        raise CfsslConfigError(f'--config {path}: no "signing" object (is it a cfssl ca-config.json?)')
    default = signing.get("default") or {}
    profiles = signing.get("profiles") or {}
    if not isinstance(default, dict) or not isinstance(profiles, dict):
        raise CfsslConfigError(f'--config {path}: "signing.default" and "signing.profiles" must be objects')
    if profile is None or profile == "default":
        name, section = "default", default
    elif profile in profiles:
        name, section = profile, profiles[profile]
    else:
        have = ", ".join(sorted(profiles)) or "none"
        raise CfsslConfigError(f"--profile {profile!r} is not in --config {path} (its profiles: {have})")
    if not isinstance(section, dict):
        raise CfsslConfigError(f"--config {path}: profile {name!r} must be an object")
    unsupported = sorted(set(section) - _USED - _HARMLESS)
    if unsupported:
        raise CfsslConfigError(
            f"--config {path}: profile {name!r} field(s) {', '.join(unsupported)} not supported by etcd-dr "
            "(only usages and expiry): remove them or sign with cfssl"
        )

    usages = section.get("usages", default.get("usages", list(_CFSSL_DEFAULT_USAGES)))
    if not isinstance(usages, list) or not all(isinstance(u, str) for u in usages):
        raise CfsslConfigError(f'--config {path}: profile {name!r} "usages" must be a list of strings')
    ku: dict[str, bool] = {}
    ekus: list[x509.ObjectIdentifier] = []
    for usage in usages:
        u = usage.strip().lower()
        if u in KEY_USAGES:
            ku[KEY_USAGES[u]] = True
        elif u in EXT_KEY_USAGES:
            if EXT_KEY_USAGES[u] not in ekus:
                ekus.append(EXT_KEY_USAGES[u])
        else:
            raise CfsslConfigError(
                f"--config {path}: profile {name!r} usage {usage!r} is unknown "
                f"(key usages: {', '.join(KEY_USAGES)}; extended: {', '.join(EXT_KEY_USAGES)})"
            )
    key_usage = None
    if ku:
        fields = set(KEY_USAGES.values())
        try:
            key_usage = x509.KeyUsage(**{f: ku.get(f, False) for f in sorted(fields)})
        except ValueError as e:  # encipher/decipher only without key agreement
            raise CfsslConfigError(f"--config {path}: profile {name!r} usages: {e}") from None

    expiry = section.get("expiry", default.get("expiry", _CFSSL_DEFAULT_EXPIRY))
    try:
        seconds = parse_expiry(expiry, f'profile {name!r} "expiry"', "8760h")
    except ValueError as e:
        raise CfsslConfigError(f"--config {path}: {e}") from None
    return SigningProfile(name, tuple(usages), key_usage, tuple(ekus), seconds, str(expiry))


def parse_expiry(value: object, field: str, example: str) -> float:
    """A cfssl "expiry" (a Go duration such as "8760h"), in seconds, from a signing profile or a CSR's
    "ca" section; ValueError naming `field` when it is not a positive duration."""
    if not isinstance(value, str):
        raise ValueError(f'{field} must be a string like "{example}", not {value!r}')
    try:
        seconds = parse_duration(value)
    except DurationError as e:
        raise ValueError(f"{field}: {e}") from None
    if seconds <= 0:
        raise ValueError(f"{field} {value!r} must be positive")
    return seconds
