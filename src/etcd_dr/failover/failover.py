"""Unplanned failover: the primary is gone; promote the standby and say exactly what was lost.

The RPO comes from the standby's mirror checkpoints, read and removed in the same txn that promotes
it: the last revision of the old primary that was applied, and that revision's time. The new primary's
revision is raised past the old one's last known revision plus a margin and compacted there, so that
watchers holding the old primary's revisions re-list. A mirror still writing into the standby is
fenced by the promotion (its txns compare the role record).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..checkpoints import live_checkpoints
from ..errors import CheckFailed, Refused
from ..etcd import ClientConfig, Compare, CompareResult, Delete, EtcdClient, Status, parse_endpoints
from ..fence import fence_writes, unfence_writes
from ..mirror.keys import KeyMapper
from ..state.events import record_event
from ..state.records import SYNC, Checkpoint, LockHolder
from ..state.roles import PRIMARY, Role, write_role
from .config import MoveConfig
from .plan import MovePlan, Rpo, mirror_holders, old_mirror_lines, plan_move, run_move
from .policy import guard_max_rpo, move_record, record_move
from .reorder import read_order_records, recreate_in_order
from .revision import mark_compacted, raise_revision
from .sites import (
    Site,
    checkpoints_from,
    mirror_command,
    open_site,
    probe,
    reversed_pair,
    switch_clients,
    switch_plan,
)

log = logging.getLogger("etcd_dr.failover")


@dataclass
class FailoverResult:
    new_primary: str
    old_primary_cluster_id: str
    epoch: int
    rpo_revision: int  # every write of the old primary up to this revision is on the new primary
    rpo_time: float  # the old primary's clock at that revision (0: unknown, no heartbeat applied)
    promoted_at: float
    new_revision: int
    clients: str
    next_command: str
    finished_earlier_run: bool = False
    # Checkpoints of mirrors that were not running, not used for the RPO (checkpoints.live_checkpoints).
    stale_checkpoints: list[str] = field(default_factory=list)
    revision_raise: dict[str, Any] | None = None  # each term of the raise (RaiseTarget)
    raise_line: str = ""
    old_mirror: list[str] = field(default_factory=list)
    # Seconds each step took ("revision raise and compaction", "promotion", "client switch"): the RTO.
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def rpo_seconds(self) -> float | None:
        return Rpo(self.rpo_revision, self.rpo_time).seconds(self.promoted_at)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "rpo_seconds": self.rpo_seconds}

    def lines(self) -> list[str]:
        when = (
            f"its time {time.strftime('%H:%M:%S', time.gmtime(self.rpo_time))} UTC, "
            f"{self.rpo_seconds:.1f} s before the promotion"
            if self.rpo_time
            else "its time unknown (no heartbeat applied)"
        )
        return [
            f"failover done: {self.new_primary} is the primary (epoch {self.epoch})",
            f"RPO: every write of the old primary up to its revision {self.rpo_revision} is here ({when}); "
            "later writes to the old primary are not: `etcd-dr failback` lists them when it is back",
            *([self.raise_line + f"; the revision is now {self.new_revision}"] if self.raise_line else []),
            f"clients: {self.clients}",
            *([f"took: {', '.join(f'{k} {v:.2f} s' for k, v in self.steps.items())}"] if self.steps else []),
            *self.old_mirror,
            f"when the old primary is back: {self.next_command}",
        ] + [f"stale checkpoint not used for the RPO: {line}" for line in self.stale_checkpoints]


async def failover(cfg: MoveConfig) -> FailoverResult:
    return await run_move(_failover, cfg)


async def plan_failover(cfg: MoveConfig) -> MovePlan:
    """The checks of a failover, then what it would do (--dry-run): nothing is changed."""
    return await plan_move("failover", _failover, cfg)


async def _failover(cfg: MoveConfig, plan: MovePlan | None) -> FailoverResult | None:
    pair = cfg.pair
    layout = pair.layout
    t0 = time.monotonic()
    async with EtcdClient(pair.dest) as s_client:
        standby = await open_site(s_client, pair.dest, layout)
        await read_order_records(s_client, layout)  # a damaged one stops the move here, not after it
        role = standby.role.role
        if role is not None and role.is_primary:
            log.info(
                "failover: %s is already %s; finishing what an earlier run left",
                standby.text,
                role.describe(),
            )
            if plan is not None:
                plan.note(f"{standby.text} is already {role.describe()}: an earlier failover promoted it")
                plan.step(f"lift any fence left on {standby.text} and switch the clients to it")
                return None
            return await _after_promotion(cfg, standby, role, True, [])
        if role is None:
            raise Refused(f"{standby.describe()}: no mirror has run into it; it is nobody's standby")
        old_id = role.peer_cluster_id
        stored = await checkpoints_from(s_client, layout, old_id)
        if not stored:
            raise Refused(f"{standby.describe()} holds no mirror checkpoint from cluster {old_id:x}")
        recorded = sorted({s.record.source_endpoints for s in stored if s.record.source_endpoints})
        # A rehearsal (drill) runs on a copy of the standby while the primary lives: never probe or fence it.
        fence_at = None if cfg.rehearsal else await _check_primary_gone(cfg, old_id, recorded, plan)
        holders = await mirror_holders(s_client, layout, old_id)
        own_key = layout.checkpoint(old_id, pair.prefix, KeyMapper.from_config(pair).dest_prefix)
        for _attempt in range(10):
            # The RPO comes from the mirror that was running (live_checkpoints), never from a checkpoint
            # a stopped mirror left (another --prefix, an old one-off run): that one is behind.
            found, choice = await live_checkpoints(s_client, layout, old_id, own_key)
            if not choice.used:
                raise Refused(f"{standby.describe()} holds no mirror checkpoint from cluster {old_id:x}")
            used = [c.checkpoint for c in choice.used if c.checkpoint is not None]
            unfinished = [c for c in used if c.phase == SYNC]
            if unfinished and not cfg.force:
                raise CheckFailed(
                    f"failover refused: the standby {standby.text} is in the middle of a copy (its content "
                    "is not any one state of the primary); --force promotes it anyway"
                )
            point = Rpo.of(used)
            rpo, rpo_time = point.revision, point.source_time
            # The raise covers every checkpoint (and what each mirror saw of the source), stale ones too.
            target = raise_target([c.checkpoint for c in found if c.checkpoint is not None], cfg)
            epoch = role.epoch + 1
            guard_max_rpo(cfg, "failover", standby.text, rpo, rpo_time)
            if plan is not None:
                _plan_steps(plan, cfg, standby, old_id, fence_at, rpo, target, epoch, holders)
                return None
            if fence_at is not None and _attempt == 0:
                await _fence_anyway(cfg, fence_at)
            log.info("failover: %s", target.line())
            t_step = time.monotonic()
            bump = await raise_revision(s_client, layout, target.target)
            await mark_compacted(s_client, bump.revision)
            steps = {"revision raise and compaction": round(time.monotonic() - t_step, 3)}
            t_step = time.monotonic()
            new = role.moved(PRIMARY, epoch, old_id, "failover", applied_revision=rpo, applied_time=rpo_time)
            result = await write_role(
                s_client,
                layout,
                new,
                standby.role,
                compare=tuple(Compare.value_(c.key, CompareResult.EQUAL, c.raw) for c in found),
                also=tuple(Delete(c.key) for c in found),
            )
            if result.succeeded:
                steps["promotion"] = round(time.monotonic() - t_step, 3)
                log.info(
                    "failover: %s promoted: %s; RPO: revision %d of cluster %x",
                    standby.text,
                    new.describe(),
                    rpo,
                    old_id,
                )
                standby = await open_site(s_client, pair.dest, layout)
                stale = [f"{c.line(new.since)} (removed at the promotion)" for c in choice.ignored]
                return await _after_promotion(
                    cfg, standby, new, False, holders, target, stale, steps=steps, t0=t0
                )
            # A mirror still applied something between the read and the promotion: read again.
            log.info("failover: the standby's checkpoint moved while promoting; reading it again")
            standby = await open_site(s_client, pair.dest, layout)
            if standby.role.role is None or standby.role.role.is_primary:
                raise CheckFailed(f"the role record on {standby.text} changed under the failover")
        raise CheckFailed(
            f"failover stopped: the checkpoints on {standby.text} keep moving; is the primary alive?"
        )


@dataclass(frozen=True)
class RaiseTarget:
    """The revision the new primary is raised past, and each term of it (printed: the operator sees
    how the number came about). The old primary may have written on after the mirror last saw it."""

    applied: int  # the newest source revision applied on the standby
    seen: int  # the newest source revision the mirror saw (the source's head then)
    seen_time: float  # when (the mirror's clock; 0: unknown, a checkpoint of an older etcd-dr)
    rate: float  # the source's recent peak write rate, revisions/s
    elapsed: float  # seconds from seen_time to now
    estimate: int  # rate x elapsed x safety, at most the cap
    capped: bool
    margin: int
    target: int

    def line(self) -> str:
        if self.seen_time:
            unseen = (
                f" + {self.rate:.0f} rev/s x {self.elapsed:.1f} s since seen x {RATE_SAFETY:g} (safety)"
                f" = {self.estimate}" + (" (capped: --max-revision-estimate)" if self.capped else "")
            )
        else:
            unseen = " + 0 (the checkpoint does not record the source's rate: an older mirror wrote it)"
        return (
            f"revision raise to {self.target} = max(seen {self.seen}, applied {self.applied})"
            f"{unseen} + margin {self.margin} (--revision-margin)"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "safety": RATE_SAFETY}


# How much faster than its recent peak the old primary is assumed to have written while unseen.
RATE_SAFETY = 2.0


def raise_target(ckpts: list[Checkpoint], cfg: MoveConfig) -> RaiseTarget:
    applied = max(c.revision for c in ckpts)
    seen = max(c.seen_revision for c in ckpts)
    seen_time = max(c.seen_time for c in ckpts)
    rate = max(c.source_rate for c in ckpts)
    elapsed = max(0.0, time.time() - seen_time) if seen_time else 0.0
    estimate = math.ceil(rate * elapsed * RATE_SAFETY)
    capped = estimate > cfg.max_revision_estimate
    if capped:
        log.warning(
            "failover: the old primary may have written %d revisions since the mirror last saw it "
            "(%.0f/s for %.0f s); raising by --max-revision-estimate %d only",
            estimate,
            rate,
            elapsed,
            cfg.max_revision_estimate,
        )
        estimate = cfg.max_revision_estimate
    base = max(seen, applied)
    return RaiseTarget(
        applied=applied,
        seen=seen,
        seen_time=seen_time,
        rate=round(rate, 1),
        elapsed=round(elapsed, 3),
        estimate=estimate,
        capped=capped,
        margin=cfg.revision_margin,
        target=base + estimate + cfg.revision_margin,
    )


def _plan_steps(
    plan: MovePlan,
    cfg: MoveConfig,
    standby: Site,
    old_id: int,
    fence_at: ClientConfig | None,
    rpo: int,
    target: RaiseTarget,
    epoch: int,
    holders: list[LockHolder],
) -> None:
    if fence_at is not None:
        plan.step(
            f"--force: fence writes on the old primary {fence_at.endpoints_text} (cluster {old_id:x}, "
            f"{cfg.fence}), best effort"
        )
    else:
        plan.step(f"fence nothing: the old primary (cluster {old_id:x}) is gone (fenced only with --force)")
    plan.step(
        f"raise {standby.text}'s revision (now {standby.status.revision}) to {target.target} and compact "
        f"there: {target.line()}"
    )
    plan.step(
        f"promote {standby.text} (cluster {standby.id:x}): its role record becomes primary, epoch {epoch}; "
        f"its mirror checkpoints from cluster {old_id:x} are removed in the same txn"
    )
    plan.step(
        f"RPO: every write of the old primary up to its revision {rpo} is on {standby.text}; later ones "
        "are not (failback lists them)"
    )
    for holder in holders:
        plan.step(f"the mirror holding the lock ({holder.describe()}) is fenced by the promotion")
    plan.step(f"lift any fence on {standby.text}; clients: {switch_plan(cfg, standby)}")


async def _check_primary_gone(
    cfg: MoveConfig, old_id: int, recorded: list[str], plan: MovePlan | None
) -> ClientConfig | None:
    """Refuse to promote while the old primary answers and has a leader, at --endpoints or at the
    endpoints its mirror recorded, or when --endpoints is another cluster; --force overrides (and says
    so). Returns where to fence the primary (--force with it answering), else None."""
    given = cfg.pair.source
    answer = await probe(given, cfg.probe_timeout)
    answering: list[tuple[ClientConfig, Status]] = []
    if isinstance(answer, Status) and answer.cluster_id != old_id:
        what = (
            f"--endpoints {given.endpoints_text} is cluster {answer.cluster_id:x}, not the standby's primary "
            f"{old_id:x}" + (f" (its mirror read it at {', '.join(recorded)})" if recorded else "")
        )
        if not cfg.force:
            raise Refused(f"failover refused: {what}; give the old primary's endpoints")
        log.warning("failover --force overrides: %s; that cluster is not touched", what)
        if plan is not None:
            plan.note(f"--force overrides: {what}")
    elif isinstance(answer, Status):
        answering.append((given, answer))
    else:
        log.info("failover: the primary does not answer at --endpoints %s (%s)", given.endpoints_text, answer)
    if not recorded:
        log.warning(
            "failover: the standby's checkpoints do not record where its mirror read the primary (written "
            "by an older etcd-dr): only --endpoints %s was probed",
            given.endpoints_text,
        )
    for text in recorded:
        if text == given.endpoints_text:
            continue
        at = replace(given, endpoints=parse_endpoints(text))
        seen = await probe(at, cfg.probe_timeout)
        if isinstance(seen, Status) and seen.cluster_id == old_id:
            answering.append((at, seen))
        elif isinstance(seen, Status):
            log.info("failover: %s (recorded by the mirror) is now cluster %x", text, seen.cluster_id)
        else:
            log.info("failover: the primary does not answer at %s, where its mirror read it (%s)", text, seen)
    if not answering:
        if plan is not None:
            plan.note(
                f"the old primary (cluster {old_id:x}) answers nowhere: "
                + ", ".join([given.endpoints_text, *[t for t in recorded if t != given.endpoints_text]])
            )
        return None
    at, status = next(((c, s) for c, s in answering if s.leader != 0), answering[0])
    healthy = status.leader != 0
    where = at.endpoints_text + ("" if at is given else " (where its mirror read it)")
    if not healthy:
        log.info("failover: the primary answers at %s but has no leader; promoting the standby", where)
        if plan is not None:
            plan.note(f"the old primary answers at {where} but has no leader")
        return None
    if not cfg.force:
        raise CheckFailed(
            f"failover refused: the primary {where} (cluster {old_id:x}) answers and is healthy "
            f"(revision {status.revision}); use `etcd-dr switchover` for a planned move, or --force"
        )
    log.warning(
        "failover --force overrides: the primary answers at %s and is healthy; fencing its writes first",
        where,
    )
    if plan is not None:
        plan.note(f"--force overrides: the primary answers at {where} and is healthy")
    return at


async def _fence_anyway(cfg: MoveConfig, at: ClientConfig) -> None:
    try:
        async with EtcdClient(at) as p_client:
            await fence_writes(p_client, cfg.pair.layout, mode=cfg.fence, hook=cfg.fence_hook)
    except Exception as e:  # best effort by design: --force promotes whatever happens here
        log.warning(
            "failover --force: could not fence the primary's writes (%s); both sites may take writes", e
        )


async def _after_promotion(
    cfg: MoveConfig,
    standby: Site,
    role: Role,
    resumed: bool,
    holders: list[LockHolder],
    target: RaiseTarget | None = None,
    stale: list[str] | None = None,
    *,
    steps: dict[str, float] | None = None,
    t0: float | None = None,
) -> FailoverResult:
    layout = cfg.pair.layout
    steps = dict(steps or {})
    t_step = time.monotonic()
    if await recreate_in_order(standby.client, layout, standby.text):  # before any client campaigns there
        steps["create order"] = round(time.monotonic() - t_step, 3)
    t_step = time.monotonic()
    if await unfence_writes(standby.client, layout, hook=cfg.fence_hook) is not None:
        log.info("failover: writes on %s allowed (its fence from an earlier move lifted)", standby.text)
    clients = await switch_clients(cfg, standby, cfg.pair.source.endpoints_text, role.epoch)
    steps["client switch"] = round(time.monotonic() - t_step, 3)
    if not resumed:
        await record_event(
            standby.client,
            layout,
            "promoted",
            f"failover from cluster {role.peer_cluster_id:x}: primary with epoch {role.epoch}; "
            f"RPO revision {role.applied_revision}",
            epoch=role.epoch,
            via="failover",
            rpo_revision=role.applied_revision,
            rpo_time=role.applied_time,
        )
        if not cfg.rehearsal:
            # On the promoted site only: the old primary may be gone (history merges both sites).
            record = move_record(
                cfg,
                f"{cfg.pair.source.endpoints_text} (cluster {role.peer_cluster_id:x})",
                f"{standby.text} (cluster {standby.id:x})",
                t0 if t0 is not None else t_step,
                rpo_revision=role.applied_revision,
                rpo_seconds=role.since - role.applied_time if role.applied_time else None,
            )
            await record_move(
                [standby.client],
                layout,
                "failover",
                f"failover to {standby.text}, epoch {role.epoch}",
                record,
            )
    return FailoverResult(
        new_primary=standby.text,
        old_primary_cluster_id=f"{role.peer_cluster_id:x}",
        epoch=role.epoch,
        rpo_revision=role.applied_revision,
        rpo_time=role.applied_time,
        promoted_at=role.since,
        new_revision=(await standby.client.status()).revision,
        clients=clients,
        next_command="etcd-dr failback " + _failback_args(cfg),
        finished_earlier_run=resumed,
        stale_checkpoints=stale or [],
        revision_raise=target.to_json() if target else None,
        raise_line=target.line() if target else "",
        old_mirror=await old_mirror_lines(
            standby.client, layout, role.peer_cluster_id, holders, standby.text
        ),
        steps=steps,
    )


def _failback_args(cfg: MoveConfig) -> str:
    # failback's source is the new primary and its DEST the old one: the mirror command's words, reversed.
    words = mirror_command(reversed_pair(cfg.pair)).split(" ", 2)
    return words[2]
