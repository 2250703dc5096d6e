"""Configuration objects built by the CLI (or by library users) and consumed by the library."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from .errors import UsageError
from .etcd import ClientConfig
from .state.layout import StateLayout

DEFAULT_STATE_PREFIX = b"/etcd-dr/"


@dataclass(frozen=True)
class MirrorConfig:
    source: ClientConfig
    dest: ClientConfig
    prefix: bytes = b""
    # None: keys keep their names; b"" with --no-dest-prefix strips the prefix (make-mirror semantics).
    dest_prefix: bytes | None = None
    excludes: tuple[bytes, ...] = ()
    # Unleased source keys that keep the source's create order on the destination, like leased keys
    # (mirror/order.py): the prefixes of locks and elections whose keys carry no lease.
    ordered_prefixes: tuple[bytes, ...] = ()
    # Seconds a copy may spend writing ordered siblings in the source's create order, one txn per
    # create revision; the layers it cannot afford keep their order as data until a promotion
    # (mirror/order.py).
    ordered_copy_time: float = 60.0
    ignore_keys_regex: str | None = None
    # Ops per destination txn: None learns the destination's limit (mirror/limits.py, probed down from
    # 4096); a number caps what is learned.
    max_txn_ops: int | None = None
    # Bytes of keys and values per destination txn; None: guessed from the op limit learned (1 MiB under
    # etcd's default --max-request-bytes of 1.5 MiB, 8 MiB for a destination configured for big txns),
    # halved whenever the destination refuses a txn as too large.
    max_txn_bytes: int | None = None
    # Most destination txns in flight during the copy, which also keeps at most mirror.sync's
    # COPY_WINDOW_BYTES in flight: the window, in bytes, is what lets a far destination be fed.
    inflight: int = 64
    # Most keys per read page (pages are also cut to about 4 MiB of keys and values).
    page_size: int = 10000
    # Catch-up beyond one watcher (mirror/catchup.py): watches at once, revisions per slice, and how far
    # behind the head the resume point must be to use it (the hidden --catch-up W/S/T; 1 watcher: off).
    catchup_watchers: int = 8
    catchup_slice: int = 5000
    catchup_threshold: int = 5000
    # Above this many source revisions/s read, the replay reads in windows behind the head (less CPU, up
    # to ~0.1 s more lag), and goes back to the live watch below trail_below (mirror/feed.py; the hidden
    # --trail ABOVE/BELOW, "off": never).
    trail_above: float = 1000.0
    trail_below: float = 250.0
    start_revision: int | None = None
    once: bool = False
    leases: Literal["mirror", "ignore"] = "mirror"
    state_prefix: bytes = DEFAULT_STATE_PREFIX
    # With --once: how long an endpoint may stay unreachable before the run fails.
    timeout: float = 30.0
    # How often an idle mirror records its progress (checkpoint-only txns) and logs a status line.
    checkpoint_interval: float = 1.0
    # How often the mirror writes its heartbeat on the source (0: never), for lag in seconds.
    heartbeat_interval: float = 1.0
    compaction_poll_interval: float = 30.0
    # Seconds between periodic verifications by a running mirror (None or 0: never).
    verify_every: float | None = 600.0
    # Bytes of keys and values a periodic verify reads per second, source and destination together, in
    # pages of verify_page_size keys: a small share of the source's read capacity (docs/benchmarks.md).
    verify_rate: float = 4 * 1024 * 1024
    verify_page_size: int = 1000
    # Seconds between the failover readiness checks a running mirror makes and exports (readiness.py;
    # None or 0: never), and the RPO above which it calls a failover not ready.
    check_every: float | None = 300.0
    check_max_rpo: float = 30.0
    # Writes into the mirrored range on the destination not made by the mirror: "restore" (report them
    # and put the source's state back), "report" (only report), "ignore" (do not watch for them).
    foreign_writes: Literal["restore", "report", "ignore"] = "restore"
    # Fence application writes on the destination through etcd auth at start (fence.py).
    fence_standby: bool = False
    # How often the mirror rewrites its health record on the destination (and at once on a change).
    health_interval: float = 5.0
    status_interval: float = 30.0
    metrics_addr: str | None = None
    # TTL (seconds) of the lease that holds the mirror lock: how long a stand-by mirror waits for a dead
    # holder before taking over.
    lock_ttl: int = 10
    # Guard against a source that reads empty or a mistaken mass delete wiping the standby: a copy or a
    # replayed source revision that deletes at least `mass_delete_min` keys and more than this share of the
    # destination's keys under the prefix is refused, unless allowed.
    max_delete_ratio: float = 0.5
    allow_mass_delete: bool = False
    mass_delete_min: int = 100
    # Replace the mirror of another source cluster into an overlapping destination range (stopped
    # first), instead of refusing: one standby range has one source.
    take_over: bool = False
    take_over_reason: str | None = None  # --reason: kept in the take-over's record
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_txn_ops is not None and self.max_txn_ops < 2:
            raise UsageError(
                f"--max-txn-ops {self.max_txn_ops}: must be at least 2 (one op is the checkpoint)"
            )
        if not 0.0 < self.max_delete_ratio <= 1.0:
            raise UsageError(f"--max-delete-ratio {self.max_delete_ratio}: must be above 0 and at most 1")
        if self.verify_rate <= 0:
            raise UsageError(f"--verify-rate {self.verify_rate:g}: must be above 0")
        if self.foreign_writes not in ("restore", "report", "ignore"):
            raise UsageError(f"--foreign-writes {self.foreign_writes!r}: expected restore, report or ignore")
        if self.ordered_copy_time < 0:
            raise UsageError(f"--ordered-copy-time {self.ordered_copy_time:g}: must not be negative")
        if self.take_over_reason is not None and not self.take_over:
            raise UsageError("--reason is only for --take-over (the one move a mirror makes)")
        if self.inflight < 1:
            raise UsageError("--inflight must be at least 1")
        if self.catchup_watchers < 1 or self.catchup_slice < 1 or self.catchup_threshold < 0:
            raise UsageError(
                f"--catch-up {self.catchup_watchers}/{self.catchup_slice}/{self.catchup_threshold}: "
                "watchers and slice size must be at least 1, the threshold at least 0"
            )
        if self.start_revision is not None and self.start_revision < 1:
            raise UsageError(f"--rev {self.start_revision}: must be a positive revision")
        if self.ignore_keys_regex:
            try:
                re.compile(self.ignore_keys_regex)
            except re.error as err:
                raise UsageError(f"--ignore-keys-regex {self.ignore_keys_regex!r}: {err}") from None
        if not self.state_prefix:
            raise UsageError("--state-prefix must not be empty")
        for e in self.excludes:
            if not e:
                raise UsageError("--exclude must not be empty (it would exclude every key)")
        for o in self.ordered_prefixes:
            if not o:
                raise UsageError("--ordered-prefix must not be empty (name the lock's or election's prefix)")
            if not (o.startswith(self.prefix) or self.prefix.startswith(o)):
                raise UsageError(
                    f"--ordered-prefix {o.decode(errors='replace')!r} is outside --prefix "
                    f"{self.prefix.decode(errors='replace')!r}: no mirrored key is under it"
                )

    @cached_property
    def layout(self) -> StateLayout:
        """The keys of the state records under --state-prefix (built once, held by every user)."""
        return StateLayout(self.state_prefix)

    @property
    def effective_dest_prefix(self) -> bytes:
        return self.prefix if self.dest_prefix is None else self.dest_prefix


def mirror_argv(
    config: MirrorConfig, *, program: str = "etcd-dr", always_state_prefix: bool = False
) -> list[str]:
    """The `etcd-dr mirror` command line that runs `config`'s pair: the one inverse of the CLI's flags
    (the rendered mirror unit and the commands the moves print both come from here). Passwords are
    left out: the mirror reads them from its env file, or the user gives them by env or flag.
    `always_state_prefix`: --state-prefix even when it is the default (a unit file says it)."""

    def text(b: bytes) -> str:
        return b.decode("utf-8", "surrogateescape")  # as the CLI encodes argv (surrogateescape)

    argv = [program, "mirror", config.dest.endpoints_text, "--endpoints", config.source.endpoints_text]
    for flag_prefix, side in (("", config.source), ("dest-", config.dest)):
        if side.tls is not None:
            for flag, path in (("cacert", side.tls.cacert), ("cert", side.tls.cert), ("key", side.tls.key)):
                if path is not None:
                    argv += [f"--{flag_prefix}{flag}", str(path)]
        if side.user:
            argv += [f"--{flag_prefix}user", side.user]
    if config.prefix:
        argv += ["--prefix", text(config.prefix)]
    if config.dest_prefix is not None:
        argv += ["--dest-prefix", text(config.dest_prefix)] if config.dest_prefix else ["--no-dest-prefix"]
    for e in config.excludes:
        argv += ["--exclude", text(e)]
    for o in config.ordered_prefixes:
        argv += ["--ordered-prefix", text(o)]
    if config.ignore_keys_regex:
        argv += ["--ignore-keys-regex", config.ignore_keys_regex]
    if always_state_prefix or config.state_prefix != DEFAULT_STATE_PREFIX:
        argv += ["--state-prefix", text(config.state_prefix)]
    if config.metrics_addr:
        argv += ["--metrics-addr", config.metrics_addr]
    return argv
