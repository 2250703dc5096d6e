"""The operator's policy on a promotion (--max-rpo, --force) and the record every move leaves
(`etcd-dr history`): who, from where to where, the RPO, how long, the result, the reason given."""

from __future__ import annotations

import logging
import time
import uuid

from ..errors import Refused
from ..etcd import EtcdClient
from ..state.events import MoveRecord, record_event, who
from ..state.layout import StateLayout
from .config import MoveConfig

log = logging.getLogger("etcd_dr.failover")


def applied_age(rpo_time: float, now: float | None = None) -> float | None:
    """How old the standby's last applied write is: now less the source time of the revision the live
    checkpoints say is applied (the RPO the move prints); None when unknown (no heartbeat applied)."""
    if not rpo_time:
        return None
    return max(0.0, (time.time() if now is None else now) - rpo_time)


def guard_max_rpo(cfg: MoveConfig, move: str, standby: str, rpo_revision: int, rpo_time: float) -> bool:
    """Refuse the promotion (Refused, exit 2) when the standby's last applied write is older than
    --max-rpo, or its age is unknown; --force overrides, logged as a decision. True when it did."""
    if cfg.max_rpo is None:
        return False
    age = applied_age(rpo_time)
    if age is not None and age <= cfg.max_rpo:
        log.info(
            "%s: the standby's last applied write is %.1f s old, within --max-rpo %g s",
            move,
            age,
            cfg.max_rpo,
        )
        return False
    what = (
        f"the standby {standby}'s last applied write (revision {rpo_revision} of the primary) is "
        + (f"{age:.1f} s old" if age is not None else "of unknown age (no heartbeat applied)")
        + f", beyond --max-rpo {cfg.max_rpo:g} s"
    )
    if not cfg.force:
        raise Refused(f"{move} refused: {what}; --force promotes it anyway")
    log.warning("%s: --force overrides --max-rpo: %s", move, what)
    return True


def move_record(
    cfg: MoveConfig,
    source: str,
    target: str,
    t0: float,
    *,
    result: str = "ok",
    rpo_revision: int | None = None,
    rpo_seconds: float | None = None,
) -> MoveRecord:
    """The record of a move begun at `t0` (time.monotonic()) by this process, with --reason and
    --force as given."""
    user, host = who()
    return MoveRecord(
        source=source,
        target=target,
        result=result,
        user=user,
        host=host,
        reason=cfg.reason,
        forced=cfg.force,
        rpo_revision=rpo_revision,
        rpo_seconds=None if rpo_seconds is None else round(rpo_seconds, 3),
        duration=round(time.monotonic() - t0, 3),
        id=uuid.uuid4().hex[:16],
    )


async def record_move(
    clients: list[EtcdClient], layout: StateLayout, kind: str, message: str, record: MoveRecord
) -> None:
    """The move's record on each of `clients` (the sites that survive it), best effort."""
    for client in clients:
        await record_event(client, layout, kind, message, move=record)
