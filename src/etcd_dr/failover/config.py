"""What switchover, failover and failback take: the pair (source = the current primary, destination =
the other site) with its key mapping, and how to fence writes and switch the clients."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..config import MirrorConfig
from ..errors import UsageError

if TYPE_CHECKING:
    from .dns import DnsConfig

FenceMode = Literal["auth", "hook", "none"]


@dataclass(frozen=True)
class MoveConfig:
    pair: MirrorConfig  # source: the current primary; dest: the standby (or, for failback, old primary)
    fence: FenceMode = "auth"
    fence_hook: str | None = None
    dns: DnsConfig | None = None
    dns_addresses: tuple[str, ...] = ()  # the name's new addresses (default: the new primary's IPs)
    switch_hook: str | None = None
    # How far above the old primary's last known revision the new primary's revision is raised.
    revision_margin: int = 10_000
    # How long the standby may take to apply the fenced primary's last revision (switchover).
    catch_up_timeout: float = 30.0
    # How long the failover waits for an answer from the primary before calling it unreachable.
    probe_timeout: float = 3.0
    force: bool = False  # failover: even when the primary answers and is healthy
    verify: bool = True  # switchover: compare both sites before the roles change
    report: Path | None = None  # failback: where the errant writes go (default: a new file in the cwd)
    stay: bool = False  # failback: keep the new primary; make the old one its standby and stop there
    hook_timeout: float = 60.0
    # failover: the most revisions the raise adds for what the old primary may have written unseen.
    max_revision_estimate: int = 1_000_000
    # failover, switchover: refuse when the standby's last applied write is older than this (seconds;
    # None: no limit, the default: a failover in a disaster is never blocked unless the operator asks).
    max_rpo: float | None = None
    reason: str = ""  # --reason: why the move was made, kept in its record (`etcd-dr history`)
    # The drill runs the failover's own steps on a throwaway copy of the standby: the old primary is
    # neither probed nor fenced (it is alive: that is the point of a rehearsal).
    rehearsal: bool = False

    def __post_init__(self) -> None:
        if self.fence == "hook" and not self.fence_hook:
            raise UsageError("--fence-hook: give the command that fences writes")
        if self.revision_margin < 0:
            raise UsageError(f"--revision-margin {self.revision_margin}: must not be negative")
        if self.max_rpo is not None and self.max_rpo <= 0:
            raise UsageError(f"--max-rpo {self.max_rpo:g}: must be positive")
        if self.catch_up_timeout <= 0:
            raise UsageError(f"--catch-up-timeout {self.catch_up_timeout:g}: must be positive")
        # (An existing report is kept if it is an earlier run's of the same failback, else refused.)
        if self.report is not None and not self.report.parent.is_dir():
            raise UsageError(f"--report {self.report}: the directory {self.report.parent} does not exist")
