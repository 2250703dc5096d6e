"""What a move would do, step by step, without doing it (`--dry-run`), and the old mirror a move leaves
behind (named in its output with how to stop it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..etcd import EtcdClient, EtcdError, prefix_range_end
from ..state.layout import StateLayout
from ..state.reader import decode
from ..state.records import Checkpoint, LockHolder

if TYPE_CHECKING:
    from .config import MoveConfig

T = TypeVar("T")
# A move's one body: it does the move (no plan given) or only checks and fills the plan (--dry-run).
Move = Callable[["MoveConfig", "MovePlan | None"], Awaitable[T | None]]


@dataclass
class MovePlan:
    move: str  # "switchover", "failover", "failback"
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the checks found (not steps)

    def step(self, text: str) -> None:
        self.steps.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": True, "move": self.move, "steps": self.steps, "notes": self.notes}

    def lines(self, dry_run: bool = True) -> list[str]:
        out = [f"{self.move} plan" + (" (--dry-run: nothing was changed):" if dry_run else ":")]
        out += [f"  {note}" for note in self.notes]
        out += [f"  {i}. {text}" for i, text in enumerate(self.steps, 1)]
        return out


@dataclass(frozen=True)
class Rpo:
    """What a promotion of the standby keeps: every write of the primary up to `revision`, which the
    primary's clock stamped `source_time` (0: unknown, no heartbeat applied). One computation for the
    RPO a failover prints and the one `check` (readiness.py) says a failover would have now."""

    revision: int
    source_time: float

    @classmethod
    def of(cls, used: list[Checkpoint]) -> Rpo:
        """From the checkpoints a move takes its RPO from (checkpoints.choose_live: the running
        mirror's; sharded mirrors: the one furthest behind counts)."""
        return cls(min(c.revision for c in used), min(c.source_time for c in used))

    def seconds(self, now: float, behind: int | None = None) -> float | None:
        """The writes of the last this-many seconds would be lost by a promotion at `now`: 0 when
        nothing is behind (`behind` revisions, if known), None without a heartbeat applied."""
        if behind == 0:
            return 0.0
        return round(max(0.0, now - self.source_time), 3) if self.source_time else None


async def run_move(move: Move[T], cfg: MoveConfig) -> T:
    """The move done: its result (a body given no plan always returns one)."""
    result = await move(cfg, None)
    if result is None:
        raise AssertionError("a move without a plan returned no result")
    return result


async def plan_move(name: str, move: Move[Any], cfg: MoveConfig) -> MovePlan:
    """The move's checks, then what it would do (--dry-run): nothing is changed."""
    plan = MovePlan(name)
    await move(cfg, plan)
    return plan


async def mirror_holders(client: EtcdClient, layout: StateLayout, source_id: int) -> list[LockHolder]:
    """The holders (HOST:PID:TOKEN) of the mirror locks on `client` of mirrors from `source_id`."""
    prefix = layout.locks_of(source_id)
    try:
        result = await client.range(prefix, prefix_range_end(prefix))
    except EtcdError:
        return []
    return [decode("lock", kv.key, kv.value, client, LockHolder.decode) for kv in result.kvs]


async def old_mirror_lines(
    client: EtcdClient, layout: StateLayout, source_id: int, before: list[LockHolder], into: str
) -> list[str]:
    """After a move: the mirror that ran into the new primary before it (read before the move), and
    whether it still holds its lock. The promotion fenced it: it cannot write, and it ends at its next
    attempt; its service must not start it again."""
    if not before:
        return []
    now = set(await mirror_holders(client, layout, source_id))
    lines = []
    for holder in before:
        state = (
            "still running (fenced: it can no longer write; it ends at its next attempt)"
            if holder in now
            else "it has stopped"
        )
        lines.append(
            f"old mirror into {into}: {holder.describe()}; {state}. Disable its service there so it "
            "does not start again"
        )
    return lines
