"""Planned switchover: fence writes on the primary, let the standby apply its last revision, prove
both equal, raise the standby's revision past the primary's, swap the roles (a new epoch, which fences
any mirror still writing into the standby), lift the fence there and switch the clients.

Rerunning after a crash finishes the job: before the promotion the primary is fenced (fencing again is
a no-op) and nothing else changed; after it the standby's role record says so and only the remaining
steps run. If anything fails before the promotion, the primary's fence is lifted and the error raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..checkpoints import live_checkpoints
from ..errors import CheckFailed, EtcdDrError, Refused
from ..etcd import CompactedError, Compare, CompareResult, Delete, EtcdClient, EtcdError
from ..fence import fence_writes, unfence_writes
from ..mirror.engine import Mirror
from ..mirror.keys import KeyMapper
from ..state.events import record_event
from ..state.layout import StateLayout
from ..state.records import REPLAY, LockHolder
from ..state.roles import PRIMARY, STANDBY, Role, now, read_role, write_role
from ..state.site import StoredCheckpoint
from ..verify import verify
from .config import MoveConfig
from .plan import MovePlan, mirror_holders, old_mirror_lines, plan_move, run_move
from .policy import guard_max_rpo, move_record, record_move
from .reorder import read_order_records, recreate_in_order
from .revision import mark_compacted, raise_revision
from .sites import (
    Site,
    events_between,
    mirror_command,
    open_pair,
    refresh,
    reversed_pair,
    switch_clients,
    switch_plan,
)

log = logging.getLogger("etcd_dr.failover")

# A planned move knows the old primary's last revision exactly: a small margin covers the revisions
# etcd-dr itself still writes there (fence record, heartbeats) after the fence.
SWITCHOVER_MARGIN = 1000


@dataclass
class SwitchoverResult:
    old_primary: str
    new_primary: str
    epoch: int
    last_revision: int  # the old primary's revision when its writes were fenced; all applied
    writes_refused_seconds: float
    new_revision: int  # the new primary's revision after the raise (compacted there)
    clients: str
    next_command: str
    finished_earlier_run: bool = False
    fenced: bool = True  # False with --no-fence: writes_refused_seconds is then how long the move took
    old_mirror: list[str] = field(default_factory=list)  # the mirror that ran into the new primary

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        refused = (
            f"writes were refused for {self.writes_refused_seconds:.2f} s"
            if self.fenced
            else "writes were NOT fenced (--no-fence): any write to the old primary after that revision "
            "is not on the new one"
        )
        return [
            f"switchover done: {self.new_primary} is the primary (epoch {self.epoch}); "
            f"{self.old_primary} is its standby",
            f"every write up to the old primary's revision {self.last_revision} is on the new primary; "
            + refused,
            f"clients: {self.clients}",
            *self.old_mirror,
            f"keep the old primary current with: {self.next_command}",
        ]


async def switchover(cfg: MoveConfig) -> SwitchoverResult:
    return await run_move(_switchover, cfg)


async def plan_switchover(cfg: MoveConfig) -> MovePlan:
    """The checks of a switchover, then what it would do (--dry-run): nothing is changed."""
    return await plan_move("switchover", _switchover, cfg)


async def _switchover(cfg: MoveConfig, plan: MovePlan | None) -> SwitchoverResult | None:
    pair = cfg.pair
    layout = pair.layout
    t0 = time.monotonic()
    async with open_pair(pair) as (primary, standby):
        p_client, s_client = primary.client, standby.client
        await read_order_records(s_client, layout)  # a damaged one stops the move here, not after it
        s_role, p_role = standby.role.role, primary.role.role
        if s_role is not None and s_role.is_primary and s_role.peer_cluster_id == primary.id:
            if p_role is not None and p_role.is_primary and p_role.epoch >= s_role.epoch:
                raise Refused(f"both {primary.describe()} and {standby.describe()} say primary")
            log.info(
                "switchover: %s is already the primary; finishing what an earlier run left", standby.text
            )
            if plan is not None:
                plan.note(f"{standby.text} is already {s_role.describe()}: an earlier switchover promoted it")
                plan.step(
                    f"make {primary.text} its standby, lift the fence on {standby.text}, switch clients"
                )
                return None
            return await _after_promotion(cfg, primary, standby, s_role.epoch, time.monotonic(), True)
        _check_roles(primary, standby)
        mapper = KeyMapper.from_config(pair)
        key = layout.checkpoint(primary.id, pair.prefix, mapper.dest_prefix)
        stored = await _checkpoint(standby, key)
        # Logs the stale ones, with a warning.
        _, choice = await live_checkpoints(s_client, layout, primary.id, key)
        applied = [c.checkpoint for c in choice.used if c.checkpoint is not None] or [stored.record]
        # Before anything is fenced: a standby far behind would keep the writes refused a long time.
        guard_max_rpo(
            cfg,
            "switchover",
            standby.text,
            min(c.revision for c in applied),
            min(c.source_time for c in applied),
        )
        log.info(
            "switchover: %s -> %s; the standby has applied revision %d of %d",
            primary.text,
            standby.text,
            stored.record.revision,
            primary.status.revision,
        )
        # Raised ahead while writes still flow, so that little is left to do while they are refused.
        margin = min(cfg.revision_margin, SWITCHOVER_MARGIN)
        holders = await mirror_holders(s_client, layout, primary.id)
        if plan is not None:
            _plan_steps(plan, cfg, primary, standby, stored, holders, margin)
            return None
        for _ in range(5):
            top = (await p_client.status()).revision
            if (await s_client.status()).revision >= top + 2 * margin:
                break
            await raise_revision(s_client, layout, top + 3 * margin)

        t_fence = time.monotonic()
        try:
            # Inside the try: a fence that fails halfway is lifted again (the record says what it took).
            await fence_writes(
                p_client, layout, mode=cfg.fence, hook=cfg.fence_hook, epoch=primary.role.epoch
            )
            if cfg.fence == "none":
                log.warning("switchover: --no-fence: writes on %s are NOT stopped", primary.text)
            else:
                log.info("switchover: writes on %s fenced (%s)", primary.text, cfg.fence)
            await record_event(
                p_client, layout, "fenced", f"writes fenced for a switchover to {standby.text}"
            )
            last = (await p_client.status()).revision
            need = await _catch_up(
                cfg, p_client, s_client, key, last, layout.lock(primary.id, pair.prefix, mapper.dest_prefix)
            )
            if cfg.verify:
                result = await verify(pair)
                if not result.equal:
                    raise CheckFailed(
                        f"switchover stopped: the sites differ after catching up: {result.summary()}"
                    )
                log.info(
                    "switchover: verified equal at revision %d: %s", result.source_revision, result.summary()
                )
            top = (await p_client.status()).revision
            bump = await raise_revision(s_client, layout, top + margin)
            await mark_compacted(s_client, bump.revision)
            epoch = max(primary.role.epoch, standby.role.epoch) + 1
            await _promote(s_client, layout, standby, primary.id, epoch, key, need)
        except BaseException as e:
            log.error(
                "switchover stopped before the roles changed (%s); lifting the fence on %s", e, primary.text
            )
            try:
                await unfence_writes(p_client, layout, hook=cfg.fence_hook)
            except (EtcdError, EtcdDrError) as unfence_error:
                log.error(
                    "the fence on %s could not be lifted (%s): its writes stay refused; rerun the switchover",
                    primary.text,
                    unfence_error,
                )
            else:
                await record_event(p_client, layout, "unfenced", f"switchover to {standby.text} stopped: {e}")
                failed = move_record(
                    cfg, primary.text, standby.text, t0, result=f"failed: {str(e) or type(e).__name__}"
                )
                await record_move(
                    [p_client], layout, "switchover", f"switchover to {standby.text} stopped", failed
                )
            raise
        standby = await refresh(standby, layout)
        return await _after_promotion(
            cfg, primary, standby, epoch, t_fence, False, last=last, holders=holders, t0=t0
        )


def _plan_steps(
    plan: MovePlan,
    cfg: MoveConfig,
    primary: Site,
    standby: Site,
    stored: StoredCheckpoint,
    holders: list[LockHolder],
    margin: int,
) -> None:
    top = primary.status.revision
    plan.note(
        f"primary {primary.describe()}; standby {standby.describe()}, applied revision "
        f"{stored.record.revision} of {top}"
    )
    plan.step(
        f"raise {standby.text}'s revision (now {standby.status.revision}) ahead to about {top + 3 * margin}"
    )
    if cfg.fence == "none":
        plan.step(f"do NOT fence writes on {primary.text} (--no-fence): later writes there are not moved")
    else:
        plan.step(
            f"fence writes on {primary.text} ({cfg.fence}): refused from here on (it stays fenced as the "
            "new standby)"
        )
    if holders:
        catch_up = "by the running mirror " + ", ".join(h.describe() for h in holders)
    else:
        catch_up = "by a one-shot mirror run here (no mirror holds the lock)"
    plan.step(
        f"wait (at most {cfg.catch_up_timeout:g} s) until {standby.text} has applied the fenced primary's "
        f"last revision, {catch_up}"
    )
    plan.step(
        "compare both sites (verify)" if cfg.verify else "skip the comparison of the sites (--no-verify)"
    )
    plan.step(
        f"raise {standby.text}'s revision past the primary's last one + {margin} and compact there "
        "(watchers of the old primary re-list)"
    )
    epoch = max(primary.role.epoch, standby.role.epoch) + 1
    plan.step(
        f"promote {standby.text} (cluster {standby.id:x}): primary, epoch {epoch}, its checkpoint removed; "
        f"the mirror into it is fenced by the new role record; then make {primary.text} its standby"
    )
    plan.step(f"lift any fence on {standby.text}; clients: {switch_plan(cfg, standby)}")
    plan.step(
        "RPO 0: every write up to the fenced primary's last revision is on the new primary"
        + ("" if cfg.fence != "none" else " (not with --no-fence)")
    )


def _check_roles(primary: Site, standby: Site) -> None:
    p, s = primary.role.role, standby.role.role
    if p is not None and not p.is_primary:
        raise Refused(
            f"the source {primary.describe()} is not the primary: a switchover moves the service from "
            "the primary (--endpoints) to its standby (DEST)"
        )
    if s is None:
        raise Refused(
            f"the destination {standby.describe()}: no mirror has run into it; nothing to switch to"
        )
    if s.is_primary:
        raise Refused(f"the destination {standby.describe()} is itself a primary")
    if s.peer_cluster_id != primary.id:
        raise Refused(
            f"the destination {standby.describe()} is the standby of cluster {s.peer_cluster_id:x}, "
            f"not of {primary.text} (cluster {primary.id:x})"
        )


async def _checkpoint(standby: Site, key: bytes) -> StoredCheckpoint:
    kv = await standby.client.get(key)
    if kv is None:
        raise Refused(
            f"no mirror checkpoint for this prefix on {standby.text}: give the same --prefix/--dest-prefix "
            "as the mirror's, or let the mirror make its first copy first"
        )

    stored = StoredCheckpoint.read(kv, standby.client)
    if stored.record.phase != REPLAY:
        raise Refused(f"the mirror into {standby.text} has not finished its copy yet; switch over after it")
    return stored


async def _catch_up(
    cfg: MoveConfig, source: EtcdClient, dest: EtcdClient, key: bytes, last: int, lock: bytes
) -> int:
    """Wait until the standby has applied every mirrored change of the fenced primary (up to its
    revision `last`): by the running mirror if one holds the lock, else by a one-shot mirror run here.
    Returns the revision the checkpoint must have reached."""
    if await dest.get(lock) is None:
        log.info("switchover: no mirror is running into the standby; catching up here")
        mirror = Mirror(
            replace(
                cfg.pair,
                once=True,
                heartbeat_interval=0.0,
                status_interval=3600.0,
                timeout=cfg.catch_up_timeout,
            )
        )
        await mirror.run()
    deadline = time.monotonic() + cfg.catch_up_timeout
    stored = await _read_checkpoint(dest, key)
    # The newest revisions after the fence are etcd-dr's own (fence record, heartbeats): a running
    # mirror records those only at its next idle checkpoint. What must be applied is the last change
    # to a mirrored key, found in the primary's history since the checkpoint.
    need = await _last_mirrored_change(cfg, source, stored.record.revision, last)
    while True:
        if stored.record.revision >= need and not stored.record.split_revision:
            log.info(
                "switchover: the standby has applied revision %d: every mirrored change of the primary "
                "(the last at %d; the primary is at %d)",
                stored.record.revision,
                need,
                last,
            )
            return need
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"switchover stopped: the standby did not apply the primary's revision {need} within "
                f"{cfg.catch_up_timeout:g} s (--catch-up-timeout); it is at {stored.record.revision}. "
                "Is the mirror running?"
            )
        await asyncio.sleep(0.01)
        stored = await _read_checkpoint(dest, key)


async def _last_mirrored_change(cfg: MoveConfig, source: EtcdClient, after: int, upto: int) -> int:
    """The newest revision in (after, upto] that changed a mirrored key (`after` if none)."""
    if after >= upto:
        return after
    mapper = KeyMapper.from_config(cfg.pair)
    try:
        async with asyncio.timeout(cfg.catch_up_timeout):
            events = await events_between(source, after, upto)
    except CompactedError:
        log.info("switchover: the primary's history since %d is compacted; waiting for all of it", after)
        return upto
    return max((ev.kv.mod_revision for ev in events if mapper.to_dest(ev.kv.key) is not None), default=after)


async def _read_checkpoint(dest: EtcdClient, key: bytes) -> StoredCheckpoint:
    kv = await dest.get(key)
    if kv is None:
        raise CheckFailed(f"switchover stopped: the mirror checkpoint on {dest.endpoint} disappeared")
    return StoredCheckpoint.read(kv, dest)


async def _promote(
    client: EtcdClient,
    layout: StateLayout,
    standby: Site,
    old_primary: int,
    epoch: int,
    key: bytes,
    need: int,
) -> None:
    """One txn: the role record says primary, and the mirror checkpoint from the old primary goes
    (its revisions are the old primary's; a later mirror the other way starts from a fresh copy).
    It holds only if the role and the checkpoint are still as read; a running mirror may still move
    its checkpoint over etcd-dr's own revisions, so a moved checkpoint is read again."""
    assert standby.role.role is not None
    for _ in range(20):
        stored = await _read_checkpoint(client, key)
        if stored.record.revision < need:
            raise CheckFailed("switchover stopped: the standby's checkpoint went backwards")
        role = standby.role.role.moved(
            PRIMARY,
            epoch,
            old_primary,
            "switchover",
            applied_revision=stored.record.revision,
            applied_time=stored.record.source_time,
        )
        result = await write_role(
            client,
            layout,
            role,
            standby.role,
            compare=(Compare.value_(stored.key, CompareResult.EQUAL, stored.raw),),
            also=(Delete(stored.key),),
        )
        if result.succeeded:
            log.info("switchover: %s promoted: %s", standby.text, role.describe())
            return
        if (await read_role(client, layout)).mod_revision != standby.role.mod_revision:
            break
    raise CheckFailed("switchover stopped: the standby's role or checkpoint changed under it")


async def _after_promotion(
    cfg: MoveConfig,
    primary: Site,
    standby: Site,
    epoch: int,
    t_fence: float,
    resumed: bool,
    last: int = 0,
    holders: list[LockHolder] | None = None,
    t0: float | None = None,
) -> SwitchoverResult:
    layout = cfg.pair.layout
    p_role = await read_role(primary.client, layout)
    if p_role.role is None or p_role.role.is_primary or p_role.epoch < epoch:
        base = p_role.role or Role(PRIMARY, 0, standby.id, now())
        demoted = base.moved(STANDBY, epoch, standby.id, "switchover", fenced_revision=last)
        if not (await write_role(primary.client, layout, demoted, p_role)).succeeded:
            raise CheckFailed(f"the role record on {primary.text} changed while it was being made a standby")
        log.info("switchover: %s is now %s", primary.text, demoted.describe())
    await recreate_in_order(standby.client, layout, standby.text)  # before any client campaigns there
    if await unfence_writes(standby.client, layout, hook=cfg.fence_hook) is not None:
        log.info(
            "switchover: writes on %s allowed again (its fence from an earlier move lifted)", standby.text
        )
    refused = time.monotonic() - t_fence
    if not resumed:
        if cfg.fence == "none":
            log.info("switchover: the roles moved %.2f s after the move began (writes not fenced)", refused)
        else:
            log.info("switchover: writes were refused for %.2f s", refused)
    clients = await switch_clients(cfg, standby, primary.text, epoch)
    s_role = standby.role.role
    last = last or (s_role.applied_revision if s_role else 0)
    message = f"switchover from {primary.text}: primary with epoch {epoch}, all of revision {last} applied"
    await record_event(standby.client, layout, "promoted", message, epoch=epoch, via="switchover")
    await record_event(
        primary.client, layout, "demoted", f"switchover to {standby.text}: standby, epoch {epoch}"
    )
    if not resumed:
        # On both sites: both are alive in a planned move, and either may be the one asked later.
        record = move_record(
            cfg,
            f"{primary.text} (cluster {primary.id:x})",
            f"{standby.text} (cluster {standby.id:x})",
            t0 if t0 is not None else t_fence,
            rpo_revision=last,
            rpo_seconds=0.0 if cfg.fence != "none" else None,
        )
        await record_move(
            [standby.client, primary.client], layout, "switchover", f"switchover to {standby.text}", record
        )
    return SwitchoverResult(
        old_primary=primary.text,
        new_primary=standby.text,
        epoch=epoch,
        last_revision=last,
        writes_refused_seconds=0.0 if resumed else round(refused, 3),
        new_revision=(await standby.client.status()).revision,
        clients=clients,
        next_command=mirror_command(reversed_pair(cfg.pair)),
        finished_earlier_run=resumed,
        fenced=cfg.fence != "none",
        old_mirror=await old_mirror_lines(standby.client, layout, primary.id, holders or [], standby.text),
    )
