"""Unplanned failover: the primary is gone; promote the standby and say exactly what was lost.

The RPO comes from the standby's mirror checkpoints, read and removed in the same txn that promotes
it: the last revision of the old primary that was applied, and that revision's time. The new primary's
revision is raised past the old one's last known revision plus a margin and compacted there, so that
watchers holding the old primary's revisions re-list. A mirror still writing into the standby is
fenced by the promotion (its txns compare the role record).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..checkpoints import live_checkpoints
from ..errors import CheckFailed, Refused
from ..etcd import Compare, CompareResult, Delete, EtcdClient, Status
from ..mirror.checkpoint import SYNC, checkpoint_key
from ..mirror.keys import KeyMapper
from .config import MoveConfig
from .events import record_event
from .fence import fence_writes, unfence_writes
from .revision import mark_compacted, raise_revision
from .roles import PRIMARY, Role, write_role
from .sites import Site, mirror_command, open_site, probe, reversed_pair, switch_clients

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

    @property
    def rpo_seconds(self) -> float | None:
        return round(self.promoted_at - self.rpo_time, 3) if self.rpo_time else None

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
            f"clients: {self.clients}",
            f"when the old primary is back: {self.next_command}",
        ] + [f"stale checkpoint not used for the RPO: {line}" for line in self.stale_checkpoints]


async def failover(cfg: MoveConfig) -> FailoverResult:
    pair = cfg.pair
    sp = pair.state_prefix
    async with EtcdClient(pair.dest) as s_client:
        standby = await open_site(s_client, pair.dest, sp)
        role = standby.role.role
        if role is not None and role.is_primary:
            log.info(
                "failover: %s is already %s; finishing what an earlier run left",
                standby.text,
                role.describe(),
            )
            return await _after_promotion(cfg, standby, role, True)
        if role is None:
            raise Refused(f"{standby.describe()}: no mirror has run into it; it is nobody's standby")
        old_id = role.peer_cluster_id
        await _check_primary_gone(cfg, old_id)
        own_key = checkpoint_key(sp, old_id, pair.prefix, KeyMapper.from_config(pair).dest_prefix)
        for _attempt in range(10):
            # The RPO comes from the mirror that was running (live_checkpoints), never from a checkpoint
            # a stopped mirror left (another --prefix, an old one-off run): that one is behind.
            found, choice = await live_checkpoints(s_client, sp, old_id, own_key)
            if not choice.used:
                raise Refused(f"{standby.describe()} holds no mirror checkpoint from cluster {old_id:x}")
            used = [c.checkpoint for c in choice.used if c.checkpoint is not None]
            unfinished = [c for c in used if c.phase == SYNC]
            if unfinished and not cfg.force:
                raise CheckFailed(
                    f"failover refused: the standby {standby.text} is in the middle of a copy (its content "
                    "is not any one state of the primary); --force promotes it anyway"
                )
            rpo = min(c.revision for c in used)
            rpo_time = min(c.source_time for c in used)
            known = max(c.checkpoint.revision for c in found if c.checkpoint is not None)
            bump = await raise_revision(s_client, sp, known + cfg.revision_margin)
            await mark_compacted(s_client, bump.revision)
            epoch = role.epoch + 1
            new = role.moved(PRIMARY, epoch, old_id, "failover", applied_revision=rpo, applied_time=rpo_time)
            result = await write_role(
                s_client,
                sp,
                new,
                standby.role,
                compare=tuple(Compare.value_(c.key, CompareResult.EQUAL, c.raw) for c in found),
                also=tuple(Delete(c.key) for c in found),
            )
            if result.succeeded:
                log.info(
                    "failover: %s promoted: %s; RPO: revision %d of cluster %x",
                    standby.text,
                    new.describe(),
                    rpo,
                    old_id,
                )
                standby = await open_site(s_client, pair.dest, sp)
                stale = [f"{c.line(new.since)} (removed at the promotion)" for c in choice.ignored]
                return await _after_promotion(cfg, standby, new, False, stale)
            # A mirror still applied something between the read and the promotion: read again.
            log.info("failover: the standby's checkpoint moved while promoting; reading it again")
            standby = await open_site(s_client, pair.dest, sp)
            if standby.role.role is None or standby.role.role.is_primary:
                raise CheckFailed(f"the role record on {standby.text} changed under the failover")
        raise CheckFailed(
            f"failover stopped: the checkpoints on {standby.text} keep moving; is the primary alive?"
        )


async def _check_primary_gone(cfg: MoveConfig, old_id: int) -> None:
    """Refuse to promote while the primary answers and has a leader, unless --force (then fence it)."""
    answer = await probe(cfg.pair.source, cfg.probe_timeout)
    if not isinstance(answer, Status):
        log.info("failover: the primary %s does not answer (%s)", cfg.pair.source.endpoints_text, answer)
        return
    if answer.cluster_id != old_id:
        log.warning(
            "failover: %s answers but is cluster %x, not the standby's primary %x; going on",
            cfg.pair.source.endpoints_text,
            answer.cluster_id,
            old_id,
        )
        return
    healthy = answer.leader != 0
    if not cfg.force:
        if healthy:
            raise CheckFailed(
                f"failover refused: the primary {cfg.pair.source.endpoints_text} answers and is healthy "
                f"(revision {answer.revision}); use `etcd-dr switchover` for a planned move, or --force"
            )
        log.info("failover: the primary answers but has no leader; promoting the standby")
        return
    log.warning("failover --force: the primary answers; fencing its writes first (best effort)")
    try:
        async with EtcdClient(cfg.pair.source) as p_client:
            await fence_writes(p_client, cfg.pair.state_prefix, mode=cfg.fence, hook=cfg.fence_hook)
    except Exception as e:  # best effort by design: --force promotes whatever happens here
        log.warning(
            "failover --force: could not fence the primary's writes (%s); both sites may take writes", e
        )


async def _after_promotion(
    cfg: MoveConfig, standby: Site, role: Role, resumed: bool, stale: list[str] | None = None
) -> FailoverResult:
    sp = cfg.pair.state_prefix
    if await unfence_writes(standby.client, sp, hook=cfg.fence_hook) is not None:
        log.info("failover: writes on %s allowed (its fence from an earlier move lifted)", standby.text)
    clients = await switch_clients(cfg, standby, cfg.pair.source.endpoints_text, role.epoch)
    if not resumed:
        await record_event(
            standby.client,
            sp,
            "promoted",
            f"failover from cluster {role.peer_cluster_id:x}: primary with epoch {role.epoch}; "
            f"RPO revision {role.applied_revision}",
            epoch=role.epoch,
            via="failover",
            rpo_revision=role.applied_revision,
            rpo_time=role.applied_time,
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
    )


def _failback_args(cfg: MoveConfig) -> str:
    # failback's source is the new primary and its DEST the old one: the mirror command's words, reversed.
    words = mirror_command(reversed_pair(cfg.pair)).split(" ", 2)
    return words[2]
