"""Failback: the old primary is back. Fence it, make it a standby of the new primary, write every
write it took after the last revision the standby had applied (the errant writes) into a report file,
re-sync it from the new primary (only what differs), then, unless told to stay, switch over back.

Nothing is overwritten before it is in the report. The errant writes come from the old primary's own
history (every put and delete, in order); if it was compacted past that point, the report lists the
keys changed since from the current content and says that deletes could not be listed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import CheckFailed, Refused
from ..etcd import CompactedError, EtcdClient, EventType
from ..fence import fence_writes
from ..mirror.engine import Mirror
from ..mirror.keys import KeyMapper
from ..state.events import record_event
from ..state.records import encode_key
from ..state.roles import STANDBY, Role, write_role
from .config import MoveConfig
from .plan import MovePlan, plan_move, run_move
from .policy import move_record, record_move
from .sites import Site, events_between, mirror_command, open_pair, switch_plan
from .switchover import SwitchoverResult, switchover

log = logging.getLogger("etcd_dr.failover")


@dataclass
class FailbackResult:
    primary: str
    old_primary: str
    report: str
    errant_writes: int
    complete: bool  # False: the old primary's history was compacted; deletes are not listed
    written: int
    removed: int
    switched_back: SwitchoverResult | None = None
    next_command: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["switched_back"] = self.switched_back.to_json() if self.switched_back else None
        return d

    def lines(self) -> list[str]:
        out = [
            f"failback: {self.errant_writes} writes the old primary {self.old_primary} took after the last "
            f"revision the standby applied are listed in {self.report}"
            + ("" if self.complete else " (its history was compacted: deletes are not listed)"),
            f"failback: {self.old_primary} re-synced from {self.primary}: {self.written} keys written, "
            f"{self.removed} removed",
        ]
        if self.switched_back is not None:
            out += self.switched_back.lines()
        else:
            out.append(
                f"{self.old_primary} is the standby of {self.primary}; keep it current with: "
                + self.next_command
            )
        return out + self.notes


async def failback(cfg: MoveConfig) -> FailbackResult:
    return await run_move(_failback, cfg)


async def plan_failback(cfg: MoveConfig) -> MovePlan:
    """The checks of a failback, then what it would do (--dry-run): nothing is changed."""
    return await plan_move("failback", _failback, cfg)


# The moves after which the other site has lost the primary role (a failback may undo them).
MOVES = ("failover", "switchover")


async def _failback(cfg: MoveConfig, plan: MovePlan | None) -> FailbackResult | None:
    pair = cfg.pair  # source: the new primary; destination: the old primary that came back
    layout = pair.layout
    t0 = time.monotonic()
    async with open_pair(pair) as (primary, old):
        b_client, a_client = primary.client, old.client
        role = primary.role.role
        if role is None or not role.is_primary:
            raise Refused(
                f"the source {primary.describe()} is not the primary: failback runs from the promoted site "
                "(--endpoints) to the old primary (DEST)"
            )
        if role.peer_cluster_id != old.id:
            raise Refused(
                f"{old.describe()} is not the old primary of {primary.text} "
                f"(that is cluster {role.peer_cluster_id:x})"
            )
        current = old.role.role
        if (
            current is not None
            and current.is_primary
            and current.epoch > role.epoch
            and current.peer_cluster_id == primary.id
        ):
            # An earlier run re-synced the old primary and promoted it again, then stopped: finish.
            log.info(
                "failback: %s is already the primary again (%s); finishing", old.text, current.describe()
            )
            if plan is not None:
                plan.note(f"{old.text} is already the primary again: an earlier failback promoted it")
                plan.step(f"finish the switchover back: make {primary.text} its standby, switch clients")
                return None
            done = await switchover(cfg)
            return FailbackResult(
                primary=old.text,
                old_primary=primary.text,
                report="",
                errant_writes=0,
                complete=True,
                written=0,
                removed=0,
                switched_back=done,
                notes=[
                    "an earlier run had re-synced and promoted the old primary; this run finished the move"
                ],
            )
        _refuse_without_a_move(primary, old, role)
        if plan is not None:
            _plan_steps(plan, cfg, primary, old, role)
            return None
        until = await _demote(cfg, primary, old, role)
        report_path = cfg.report or Path(f"etcd-dr-failback-{old.id:x}-{time.strftime('%Y%m%dT%H%M%S')}.json")
        mapper = KeyMapper.from_config(pair)
        writes, complete = await _errant_writes(a_client, b_client, mapper, role.applied_revision, until)
        _write_report(report_path, primary, old, role, until, writes, complete)
        log.info(
            "failback: %d writes of %s after revision %d (not on %s) listed in %s",
            len(writes),
            old.text,
            role.applied_revision,
            primary.text,
            report_path,
        )
        await record_event(
            a_client,
            layout,
            "errant-writes",
            f"{len(writes)} writes after revision {role.applied_revision} reported to {report_path}",
        )
    log.info("failback: re-syncing %s from %s (only what differs)", old.text, primary.text)
    result = await Mirror(
        replace(
            pair,
            once=True,
            heartbeat_interval=0.0,
            allow_mass_delete=True,
            status_interval=3600.0,
            timeout=cfg.catch_up_timeout,  # also bounds the wait for a mirror lock held by another
        )
    ).run()
    copied = result.copied
    fb = FailbackResult(
        primary=primary.text,
        old_primary=old.text,
        report=str(report_path),
        errant_writes=len(writes),
        complete=complete,
        written=copied.puts if copied else 0,
        removed=copied.deletes if copied else 0,
        next_command=mirror_command(pair),
    )
    if not cfg.stay:
        log.info("failback: switching over back to %s", old.text)
        fb.switched_back = await switchover(cfg)
    record = move_record(
        cfg,
        f"{primary.text} (cluster {primary.id:x})",
        f"{old.text} (cluster {old.id:x})",
        t0,
        rpo_revision=role.applied_revision,
    )
    what = "standby again (--stay)" if cfg.stay else "primary again"
    message = f"failback: {old.text} {what}; {len(writes)} errant writes listed in {report_path}"
    # On both sites: both are alive when a failback ends.
    async with EtcdClient(pair.source) as b_client, EtcdClient(pair.dest) as a_client:
        await record_move([b_client, a_client], layout, "failback", message, record)
    return fb


def _refuse_without_a_move(primary: Site, old: Site, role: Role) -> None:
    """A failback undoes a failover or switchover recorded on the two clusters: the source became the
    primary by one of them, and DEST lost the primary role by it (it still says primary at an older
    epoch, or a move made it the standby at this epoch). Anything else, say the primary as the first
    mirror marked it, is refused at once: re-syncing there would overwrite a standby for nothing (and
    wait on the running mirror's lock)."""
    current = old.role.role
    lost = (
        current is None
        or (current.is_primary and current.epoch < role.epoch)
        or (not current.is_primary and current.epoch == role.epoch and current.via in (*MOVES, "failback"))
    )
    if role.via in MOVES and lost:
        return
    raise Refused(
        f"failback refused: no failover or switchover made {old.text} lose the primary role: "
        f"{primary.text} is {role.describe()} and {old.describe()}. Failback moves the service back "
        "after `etcd-dr failover`; to move a healthy primary use `etcd-dr switchover`"
    )


def _plan_steps(plan: MovePlan, cfg: MoveConfig, primary: Site, old: Site, role: Role) -> None:
    plan.note(f"primary {primary.describe()}; old primary {old.describe()}")
    current = old.role.role
    if current is not None and not current.is_primary and current.epoch == role.epoch:
        plan.step(f"{old.text} is already the standby of {primary.text} (an earlier run): not fenced again")
    else:
        fence = "NOT fenced (--no-fence)" if cfg.fence == "none" else f"fenced ({cfg.fence})"
        plan.step(
            f"writes on the old primary {old.text} {fence}; its role record becomes standby, "
            f"epoch {role.epoch}"
        )
    unseen = max(0, old.status.revision - role.applied_revision)
    report = cfg.report or "a new file etcd-dr-failback-<cluster>-<time>.json here"
    plan.step(
        f"list the writes {old.text} took after revision {role.applied_revision} (the RPO of the failover; "
        f"{unseen} revisions to read, up to its revision {old.status.revision}) in {report}"
    )
    plan.step(
        f"re-sync {old.text} from {primary.text}, only what differs (its writes after the RPO are "
        "overwritten or removed, after being listed)"
    )
    if cfg.stay:
        plan.step(f"stop there (--stay): {primary.text} stays the primary, {old.text} its standby")
    else:
        plan.step(
            f"switch over back: fence {primary.text}, let {old.text} catch up, verify, raise its revision "
            f"past {primary.text}'s (now {primary.status.revision}) + margin, promote it (epoch "
            f"{role.epoch + 1}); clients: {switch_plan(cfg, old)}"
        )


async def _demote(cfg: MoveConfig, primary: Site, old: Site, role: Role) -> int:
    """Fence the old primary and make it a standby of the new one; returns the revision of that
    change (the old primary's own writes end before it)."""
    layout = cfg.pair.layout
    current = old.role.role
    if (
        current is not None
        and not current.is_primary
        and current.epoch == role.epoch
        and current.peer_cluster_id == primary.id
    ):
        log.info("failback: %s is already %s (an earlier run)", old.text, current.describe())
        return old.role.mod_revision
    if current is not None and current.is_primary and current.epoch >= role.epoch:
        raise Refused(
            f"both {primary.describe()} and {old.describe()} say primary; the newer epoch is unclear"
        )
    await fence_writes(
        old.client, layout, mode=cfg.fence, hook=cfg.fence_hook, epoch=current.epoch if current else 0
    )
    log.info("failback: writes on the old primary %s fenced (%s)", old.text, cfg.fence)
    base = current or Role(STANDBY, 0, primary.id, 0.0)
    demoted = base.moved(STANDBY, role.epoch, primary.id, "failback", applied_revision=role.applied_revision)
    result = await write_role(old.client, layout, demoted, old.role)
    if not result.succeeded:
        raise CheckFailed(
            f"the role record on {old.text} changed while it was being made a standby; run again"
        )
    log.info("failback: %s is now %s", old.text, demoted.describe())
    return result.header.revision


async def _errant_writes(
    old: EtcdClient, primary: EtcdClient, mapper: KeyMapper, after: int, until: int
) -> tuple[list[dict[str, Any]], bool]:
    """The old primary's mirrored writes in revisions (after, until), with what the primary has now."""

    def mirrored(key: bytes) -> bytes | None:
        """The primary's key for an old-primary key the mirror covers, else None."""
        if not key.startswith(mapper.dest_prefix) or mapper.dest_is_protected(key):
            return None
        source_key = mapper.prefix + key[len(mapper.dest_prefix) :]
        return source_key if mapper.to_dest(source_key) == key else None

    found: list[tuple[bytes, bytes, EventType, bytes | None, int]] = []
    complete = True
    if until > after + 1:
        try:
            for ev in await events_between(old, after, until - 1, retry_for=30.0):
                source_key = mirrored(ev.kv.key)
                if source_key is not None:
                    value = ev.kv.value if ev.type is EventType.PUT else None
                    found.append((ev.kv.key, source_key, ev.type, value, ev.kv.mod_revision))
        except CompactedError:
            complete = False
            log.warning(
                "failback: the old primary's history after revision %d is compacted; listing keys changed "
                "since from its content (deletes cannot be listed)",
                after,
            )
            found = []
            key, end = mapper.dest_range
            result = await old.range(key, end, revision=until - 1, min_mod_revision=after + 1)
            for kv in result.kvs:
                source_key = mirrored(kv.key)
                if source_key is not None:
                    found.append((kv.key, source_key, EventType.PUT, kv.value, kv.mod_revision))
    writes = []
    for key, source_key, type_, value, revision in found:
        now = await primary.get(source_key)
        writes.append(
            {
                "key": encode_key(key),
                "type": "put" if type_ is EventType.PUT else "delete",
                "value": None if value is None else encode_key(value),
                "mod_revision": revision,
                "primary_key": encode_key(source_key),
                "primary_value": None if now is None else encode_key(now.value),
            }
        )
    return writes, complete


def _write_report(
    path: Path, primary: Site, old: Site, role: Role, until: int, writes: list[dict[str, Any]], complete: bool
) -> None:
    """Written once, whole (a temporary file renamed), readable only by its owner: it holds values."""
    doc = {
        "old_primary": {"endpoints": old.text, "cluster_id": f"{old.id:x}"},
        "primary": {"endpoints": primary.text, "cluster_id": f"{primary.id:x}", "epoch": role.epoch},
        "applied_up_to_revision": role.applied_revision,
        "old_primary_fenced_at_revision": until,
        "complete": complete,
        "written_at": round(time.time(), 3),
        "writes": writes,
    }
    if path.exists():
        try:
            earlier = json.loads(path.read_text())
            same = all(earlier.get(k) == doc[k] for k in ("old_primary", "primary", "applied_up_to_revision"))
            same = same and earlier.get("old_primary_fenced_at_revision") == until
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            raise Refused(
                f"--report {path}: the file exists and is not this failback's; it is never overwritten"
            )
        log.info("failback: the report %s from an earlier run of this failback is kept", path)
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    if path.exists():
        tmp.unlink()
        raise Refused(f"the report {path} appeared meanwhile; it is never overwritten")
    tmp.rename(path)
