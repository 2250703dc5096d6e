"""Errors of the product layer (above the etcd client), each with the exit code the CLI maps it to."""

from __future__ import annotations


class EtcdDrError(Exception):
    """Base: a failure with one clear line of explanation."""

    exit_code = 2


class UsageError(EtcdDrError):
    """Bad flags or input files."""


class Refused(EtcdDrError):
    """The tool refuses to act because doing so would be unsafe (e.g. mirroring a cluster into itself)."""


class CheckFailed(EtcdDrError):
    """A check found a difference, or a precondition of a command does not hold."""

    exit_code = 1


class MassDeleteRefused(Refused):
    """Applying would delete a large share of the destination: refused unless --allow-mass-delete."""


class Fenced(EtcdDrError):
    """Another writer changed this mirror's checkpoint: we are no longer the one allowed to write."""


class Interrupted(EtcdDrError):
    """A signal ended the command, after its cleanup: printed as ``etcd-dr: stopped (SIGINT)``, not as an
    error, with the shell's convention for the exit code (128 + the signal's number)."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(f"stopped ({signal_name})")
        self.signal_name = signal_name
        self.exit_code = exit_code
