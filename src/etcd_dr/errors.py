"""Every error etcd-dr raises, under one root, each with the exit code the CLI maps it to.

The tree (module, where it is not this one; exit code):

    EtcdDrError                    2  a failure with one clear line of explanation
    ├── UsageError                 2  bad flags or input files
    │   └── TopologyError          2  (topology.py) a topology file's problems, each on a line
    ├── Refused                    2  unsafe to act: e.g. mirroring a cluster into itself
    │   ├── MassDeleteRefused      2  a copy or batch would delete most of the destination
    │   └── UnreadableRecord       2  (state/reader.py) a record under the state prefix cannot be
    │       │                         decoded: one line naming the record, key, cluster and fix
    │       └── RoleUnreadable     2  (state/roles.py) a site's role record cannot be read
    ├── CheckFailed                1  a check found a difference, or a move's precondition fails
    │   └── LockHeld               1  (mirror/lock.py) --once gave up waiting: another mirror runs
    ├── Fenced                     2  another writer changed this mirror's checkpoint
    ├── LeaseLost                  2  a destination lease ended while its source lease lives: caught
    │                                 inside the mirror, which copies again
    ├── PkiError                   2  (pki.py) a certificate operation refused, naming the file
    ├── FenceError                 2  (fence.py) fencing writes failed
    ├── DnsError                   2  (failover/dns.py) the clients' DNS name was not switched
    ├── HookFailed                 2  (hooks.py) a --fence-hook / --switch-hook failed
    ├── Stopped                    128 + signal number  SIGINT (130), SIGTERM (143), SIGHUP (129)
    │                                 ended the command after its cleanup: printed as
    │                                 "etcd-dr: stopped (SIGINT)", not as an error
    └── EtcdError                  2  (etcd/errors.py) the etcd client's errors: no grpc type leaves
        │                             etcd_dr.etcd, each grpc failure is one of these (one table there)
        ├── ConfigError            2  the client's configuration is wrong (endpoint, file)
        │   └── TLSConfigError     2  a TLS file missing, unreadable, not PEM, key not matching
        ├── TransientError         2  may go away by itself: a daemon retries it with backoff
        │   └── Unavailable        2  no endpoint answered (a write's outcome is unknown)
        ├── TLSError               2  the TLS handshake failed
        ├── AuthError              2  authentication failed
        │   ├── AuthNotEnabled     2
        │   ├── PermissionDenied   2
        │   └── InvalidToken       2  (etcd/connection.py)
        ├── CompactedError         2  the revision asked for is compacted away
        ├── FutureRevisionError    2
        ├── InvalidRequest         2  the server rejected the request as malformed
        │   ├── TooManyOpsError    2
        │   └── RequestTooLargeError 2
        ├── NoSpaceError           2  the cluster's NOSPACE alarm
        ├── LeaseNotFound, LeaseExists, RoleNotFound, WatchCanceled   2

Anything else reaching the CLI is a bug: one line "internal error: ...", exit 2 (cli.exit_status maps
them all). This module imports nothing of etcd-dr's, so that every layer (the etcd client too) can.
"""

from __future__ import annotations

import signal


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


class LeaseLost(EtcdDrError):
    """A destination lease expired while its source lease lives: its keys are gone from the destination
    and a re-sync must restore them (an event inside the mirror, which copies again)."""


class Stopped(EtcdDrError):
    """SIGINT (Ctrl-C), SIGTERM (systemd stopping the service) or SIGHUP (a closed terminal) ended the
    command, after its cleanup: printed as ``etcd-dr: stopped (SIGINT)``, not as an error, with the
    shell's convention for the exit code (128 + the signal's number: 130, 143, 129)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped ({signal_name})")
        self.signal_name = signal_name
        self.exit_code = 128 + int(signal.Signals[signal_name])
