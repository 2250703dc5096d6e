"""Fencing application writes on a cluster while the service moves, and lifting the fence.

Three ways, chosen by the caller (`--fence-hook CMD`, `--no-fence`, else etcd auth):

- "auth": etcd auth must be on. Every application role (every role but `root` and the roles of the
  user etcd-dr is connected as, who keeps writing its state) loses its write permissions: READWRITE
  becomes READ, WRITE goes. Reads go on. A permission inside the state prefix is etcd-dr's own (a
  mirror's heartbeat) and is kept. Changing roles needs etcd-dr's user to hold the `root` role.
- "hook": the operator's command does it (run with ETCD_DR_ACTION=fence, later unfence).
- "none": nothing is fenced; the record only says that writes were not.

The fence record lives IN the fenced cluster (StateLayout.fence), and says what was done, so
that lifting the fence restores exactly that. It is written BEFORE anything changes, listing every
permission about to change (state "fencing"); it says "fenced" once all are done and "unfencing" while
they are given back; it is deleted at the end. A crash anywhere loses nothing: fence_writes finishes a
"fencing" (or half-lifted "unfencing") record, unfence_writes finishes lifting any record, and both are
no-ops when there is nothing left to do. Each record change is a txn on the record's mod revision, so
two etcd-dr runs cannot overwrite each other's record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from .errors import EtcdDrError
from .etcd import (
    Compare,
    CompareResult,
    Delete,
    EtcdClient,
    Permission,
    PermissionDenied,
    Put,
    RoleNotFound,
    prefix_range_end,
)
from .hooks import HookFailed, run_hook
from .state.layout import StateLayout
from .state.reader import decode
from .state.records import FENCED, FENCING, MODES, UNFENCING, FenceMode, FenceRecord, encode_key

log = logging.getLogger("etcd_dr.failover")

# Scan-and-change passes before giving up: the second pass normally finds nothing left to do (it is
# the check that the fence holds); more are needed only when roles change while we fence.
_PASSES = 5


class FenceError(EtcdDrError):
    """Writes could not be fenced (or the fence lifted); one line says why and what to do."""


async def read_fence(client: EtcdClient, layout: StateLayout) -> FenceRecord | None:
    """The cluster's fence record, or None when its writes are not fenced."""
    record, _ = await _read(client, layout)
    return record


async def fence_writes(
    client: EtcdClient,
    layout: StateLayout,
    *,
    mode: FenceMode,
    hook: str | None = None,
    epoch: int = 0,
    env: Mapping[str, str] | None = None,
    by: str | None = None,
    hook_timeout: float = 60.0,
) -> FenceRecord:
    """Fence application writes on the cluster `client` is connected to, and record how.

    Idempotent: an already fenced cluster is left as it is (its record returned); a fence a crash
    left half done is finished. Raises FenceError with one line naming the cluster and the remedy
    (auth not enabled, etcd-dr's user not root, hook failed, fenced by another mode meanwhile).
    `env`: more variables for the hook (it also gets ETCD_DR_CLUSTER_ID and ETCD_DR_ENDPOINTS).
    """
    if mode not in MODES:
        raise ValueError(f"unknown fence mode {mode!r}")
    started = time.monotonic()
    where = client.config.endpoints_text
    if mode == "hook" and not hook:
        raise FenceError(f"cannot fence writes on {where} by a hook: give the command (--fence-hook CMD)")
    own: set[str] = set()
    if mode == "auth":
        if not await client.auth_enabled():
            raise FenceError(
                f"cannot fence writes on {where}: etcd auth is not enabled; "
                "give --fence-hook CMD or --no-fence"
            )
        own = await _own_roles(client, "fence writes on")
    record, cluster_id = await _read(client, layout)
    if record is not None:
        if record.mode != mode:
            raise FenceError(
                f"cannot fence writes on {where} by {mode}: the cluster has a fence by {record.mode} "
                f"({record.describe()}); lift it first (unfence) or fence the same way"
            )
        if record.state == FENCED:
            log.info("writes on %s are already fenced (%s): nothing to do", where, record.describe())
            return record
        log.info(
            "writes on %s: finishing the fence an earlier run left %s (%s)",
            where,
            "half done" if record.state == FENCING else "half lifted",
            record.describe(),
        )
    owner = by or _owner(client)
    if mode == "auth":
        record, changes = await _fence_by_auth(client, layout, own, record, epoch, owner)
        detail = (
            f"write permission taken from {record.permission_count} permissions of "
            f"{len(record.revoked)} roles ({changes} role changes made now)"
        )
    elif mode == "hook":
        assert hook is not None
        if record is None:
            record = await _store(client, layout, _new(mode, epoch, owner), None, "fence writes on")
        try:
            await run_hook(hook, "fence", _hook_env(client, cluster_id, env), hook_timeout)
        except HookFailed as e:
            raise FenceError(f"cannot fence writes on {where}: {e}") from None
        detail = f"by --fence-hook {hook!r}"
    else:
        detail = "by nothing (--no-fence): applications can still write"
    done = replace(record, state=FENCED) if record is not None else _new(mode, epoch, owner, FENCED)
    record = await _store(client, layout, done, record, "fence writes on")
    log.info(
        "writes on %s fenced (%s) at revision %d: %s, in %.3f s",
        where,
        mode,
        record.mod_revision,
        detail,
        time.monotonic() - started,
    )
    return record


async def unfence_writes(
    client: EtcdClient,
    layout: StateLayout,
    *,
    hook: str | None = None,
    env: Mapping[str, str] | None = None,
    hook_timeout: float = 60.0,
) -> FenceRecord | None:
    """Lift the fence on the cluster: give back exactly what was revoked (the original perm types),
    or run the hook with ETCD_DR_ACTION=unfence; then delete the record. Returns the record lifted,
    None when there was none (idempotent). A role deleted meanwhile is skipped with a warning.
    Returns the record as it was found (mod_revision: that record's)."""
    started = time.monotonic()
    where = client.config.endpoints_text
    record, cluster_id = await _read(client, layout)
    if record is None:
        log.info("writes on %s are not fenced: no fence to lift", where)
        return None
    log.info("lifting the fence on %s (%s)", where, record.describe())
    lifted = record
    if record.mode == "hook" and not hook:
        raise FenceError(
            f"cannot lift the fence on {where}: its writes were fenced by a hook; give --fence-hook CMD"
        )
    if record.state != UNFENCING:
        # From here on a fence_writes knows the permissions may be half given back.
        record = await _store(client, layout, replace(record, state=UNFENCING), record, "lift the fence on")
    detail = ""
    if record.mode == "auth":
        changes, gone = await _unfence_by_auth(client, record)
        restored = record.permission_count - sum(len(record.revoked[r]) for r in gone)
        roles = len(record.revoked) - len(gone)
        detail = f": {restored} permissions of {roles} roles given back ({changes} role changes made now)"
    elif record.mode == "hook":
        assert hook is not None
        try:
            await run_hook(hook, "unfence", _hook_env(client, cluster_id, env), hook_timeout)
        except HookFailed as e:
            raise FenceError(f"cannot lift the fence on {where}: {e}") from None
        detail = f" by --fence-hook {hook!r}"
    key = layout.fence
    result = await client.txn([Compare.mod(key, CompareResult.EQUAL, record.mod_revision)], [Delete(key)])
    if not result.succeeded:
        raise FenceError(
            f"cannot lift the fence on {where}: its record {encode_key(key)} changed meanwhile "
            "(another etcd-dr at work?); rerun"
        )
    log.info(
        "writes on %s allowed again (the %s fence lifted%s), in %.3f s",
        where,
        record.mode,
        detail,
        time.monotonic() - started,
    )
    return lifted


# ---- the record -----------------------------------------------------------------------------------


def _new(mode: str, epoch: int, by: str, state: str = FENCING) -> FenceRecord:
    return FenceRecord(mode=mode, since=round(time.time(), 3), by=by, revoked={}, epoch=epoch, state=state)


def _owner(client: EtcdClient) -> str:
    user = client.config.user or "(no user)"
    return f"etcd-dr {user}@{socket.gethostname()} pid {os.getpid()}"


async def _read(client: EtcdClient, layout: StateLayout) -> tuple[FenceRecord | None, int]:
    """(the record or None, the cluster id)."""
    key = layout.fence
    r = await client.range(key)
    if not r.kvs:
        return None, r.header.cluster_id
    kv = r.kvs[0]
    record = decode("fence", key, kv.value, client, lambda v: FenceRecord.decode(v, kv.mod_revision))
    return record, r.header.cluster_id


async def _store(
    client: EtcdClient, layout: StateLayout, new: FenceRecord, old: FenceRecord | None, doing: str
) -> FenceRecord:
    """Write `new` if the record is still `old` (None: absent); returns it with its mod revision."""
    key = layout.fence
    expected = old.mod_revision if old is not None else 0  # a missing key compares as revision 0
    result = await client.txn([Compare.mod(key, CompareResult.EQUAL, expected)], [Put(key, new.encode())])
    if not result.succeeded:
        raise FenceError(
            f"cannot {doing} {client.config.endpoints_text}: its fence record {encode_key(key)} changed "
            "meanwhile (another etcd-dr at work?); rerun"
        )
    return replace(new, mod_revision=result.header.revision)


def _hook_env(client: EtcdClient, cluster_id: int, env: Mapping[str, str] | None) -> dict[str, str]:
    return {
        **(env or {}),
        "ETCD_DR_CLUSTER_ID": f"{cluster_id:x}",
        "ETCD_DR_ENDPOINTS": client.config.endpoints_text,
    }


# ---- fencing by etcd auth -------------------------------------------------------------------------


async def _fence_by_auth(
    client: EtcdClient,
    layout: StateLayout,
    own: set[str],
    record: FenceRecord | None,
    epoch: int,
    by: str,
) -> tuple[FenceRecord, int]:
    """Take the write part of every application role's permissions away; the record first.

    Each pass reads the roles, adds any write permission not yet in the record to it (written before
    the change), and changes what does not hold yet. A pass that finds nothing to do proves the fence
    holds; it is normally the second."""
    where = client.config.endpoints_text
    kept = sorted({"root", *own})
    log.info(
        "fencing writes on %s through etcd auth: every role but %s (etcd-dr's own user %s) loses write "
        "permission; permissions inside the state prefix %s are kept",
        where,
        ", ".join(kept),
        client.config.user or "(none given)",
        encode_key(layout.prefix),
    )
    changes = 0
    gone: set[str] = set()
    for n in range(_PASSES):
        extra = record.revoked.keys() if record is not None else ()
        current = await _role_permissions(client, own, extra)
        revoked = {role: list(perms) for role, perms in (record.revoked.items() if record else ())}
        added = 0
        for role, perms in current.items():
            if role in own:
                continue  # in the record from before etcd-dr's user got it: not an application role now
            for p in perms:
                if p.perm_type == "read":
                    continue
                if _inside(p, layout):
                    if n == 0:
                        log.info(
                            "role %s keeps its %s permission on %s: inside the state prefix, etcd-dr's",
                            role,
                            p.perm_type,
                            _describe(p),
                        )
                    continue
                have = revoked.setdefault(role, [])
                if not any(_same_range(q, p) for q in have):
                    have.append(p)
                    added += 1
        for role in revoked.keys() - current.keys() - gone:
            log.warning("role %s is in the fence record but no longer exists: skipped", role)
            gone.add(role)
        if record is None or added:
            new = record if record is not None else _new("auth", epoch, by)
            new = replace(new, revoked={r: tuple(ps) for r, ps in revoked.items() if ps})
            record = await _store(client, layout, new, record, "fence writes on")
            log.info(
                "fence record written on %s before changing any role: %d write permissions of %d roles "
                "to take (%d new)",
                where,
                record.permission_count,
                len(record.revoked),
                added,
            )
        wanted = {
            role: [(p, "read" if p.perm_type == "readwrite" else None) for p in perms]
            for role, perms in record.revoked.items()
            if role in current and role not in own
        }
        made = await _apply(client, current, wanted, "fence")
        if not made:
            return record, changes
        changes += made
    raise FenceError(
        f"cannot fence writes on {where}: role permissions keep changing while they are fenced "
        f"(after {_PASSES} passes); stop whatever changes them and rerun"
    )


async def _unfence_by_auth(client: EtcdClient, record: FenceRecord) -> tuple[int, list[str]]:
    """Give every recorded permission its original type back; (changes made, roles gone)."""
    await _own_roles(client, "lift the fence on")
    changes = 0
    gone: list[str] = []
    for _ in range(_PASSES):
        current = await _role_permissions(client, (), record.revoked.keys(), apps=False)
        for role in record.revoked:
            if role not in current and role not in gone:
                log.warning(
                    "role %s was deleted while fenced: its %d permissions are not given back",
                    role,
                    len(record.revoked[role]),
                )
                gone.append(role)
        wanted = {
            role: [(p, p.perm_type) for p in perms]
            for role, perms in record.revoked.items()
            if role in current
        }
        made = await _apply(client, current, wanted, "unfence")
        if not made:
            return changes, gone
        changes += made
    raise FenceError(
        f"cannot lift the fence on {client.config.endpoints_text}: role permissions keep changing "
        f"(after {_PASSES} passes); stop whatever changes them and rerun"
    )


async def _own_roles(client: EtcdClient, doing: str) -> set[str]:
    """The roles of the user etcd-dr is connected as, who must hold `root` to change roles."""
    user = client.config.user
    flag = f"--{client.config.flag_prefix}user"
    who = f"the user {user} ({flag})" if user else f"the client (no {flag} given)"
    lacks = FenceError(
        f"cannot {doing} {client.config.endpoints_text}: {who} lacks the root role needed to change "
        "role permissions"
    )
    try:
        if user is None:
            await client.role_list()  # only a root user may; the client certificate's CN may be one
            return set()
        roles = set(await client.user_get(user))
    except PermissionDenied:
        raise lacks from None
    if "root" not in roles:
        raise lacks
    return roles


async def _role_permissions(
    client: EtcdClient, own: Collection[str], extra: Collection[str], *, apps: bool = True
) -> dict[str, list[Permission]]:
    """Current permissions of the application roles (with `apps`) and of the `extra` roles that still
    exist; roles deleted meanwhile are left out."""
    names = set(await client.role_list())
    wanted = {r for r in extra if r in names}
    if apps:
        wanted |= {r for r in names if r != "root" and r not in own}

    async def get(role: str) -> tuple[str, list[Permission] | None]:
        try:
            return role, await client.role_get(role)
        except RoleNotFound:
            return role, None

    got = await asyncio.gather(*(get(r) for r in sorted(wanted)))
    return {role: perms for role, perms in got if perms is not None}


async def _apply(
    client: EtcdClient,
    current: Mapping[str, list[Permission]],
    wanted: Mapping[str, Sequence[tuple[Permission, str | None]]],
    action: str,
) -> int:
    """Bring each role's recorded ranges to the wanted perm type (None: no permission), roles
    concurrently; returns how many changes were made."""

    async def one(role: str, targets: Sequence[tuple[Permission, str | None]]) -> int:
        made = await _set_role(client, role, current[role], targets)
        if made:
            log.info("%s: role %s: %s", action, role, "; ".join(made))
        return len(made)

    counts = await asyncio.gather(*(one(r, t) for r, t in wanted.items()))
    return sum(counts)


async def _set_role(
    client: EtcdClient, role: str, current: list[Permission], targets: Sequence[tuple[Permission, str | None]]
) -> list[str]:
    """Make each target's exact range (key, range_end) hold the given perm type, or nothing.

    etcd's grant on a range the role already has replaces its type in place (one atomic change, so
    an application never loses read access) when that permission is the role's only one with the
    same key; otherwise the grant would add a second entry, so the old one is revoked first.
    Returns the changes made, described."""
    perms = list(current)
    made: list[str] = []
    for p, want in targets:
        same = [q for q in perms if _same_range(q, p)]
        now = [q.perm_type for q in same]
        if now == ([want] if want else []):
            continue
        if want is None:
            await client.role_revoke_permission(role, p.key, p.range_end)
        else:
            in_place = len(same) == 1 and sum(q.key == p.key for q in perms) == 1
            if same and not in_place:
                await client.role_revoke_permission(role, p.key, p.range_end)
            await client.role_grant_permission(role, Permission(want, p.key, p.range_end))
        made.append(f"{'+'.join(now) or 'nothing'} on {_describe(p)} -> {want or 'revoked'}")
        perms = [q for q in perms if not _same_range(q, p)]
        if want is not None:
            perms.append(Permission(want, p.key, p.range_end))
    return made


def _same_range(a: Permission, b: Permission) -> bool:
    return a.key == b.key and a.range_end == b.range_end


def _inside(p: Permission, layout: StateLayout) -> bool:
    """Whether the permission covers only keys under the state prefix."""
    start, end = layout.range
    if not p.range_end:
        return p.key.startswith(start)
    return p.key >= start and p.range_end != b"\0" and p.range_end <= end


def _describe(p: Permission) -> str:
    if not p.range_end:
        return encode_key(p.key)
    if p.range_end == b"\0":
        return f"every key from {encode_key(p.key)}"
    if p.range_end == prefix_range_end(p.key):
        return f"prefix {encode_key(p.key)}"
    return f"[{encode_key(p.key)}, {encode_key(p.range_end)})"


async def check_auth_fencing(client: EtcdClient) -> list[str]:
    """What fencing by auth needs of `client`'s cluster, checked without changing anything (`etcd-dr
    check`): auth on, and etcd-dr's user holding `root` (`_own_roles`). Raises FenceError saying what
    is missing; returns the user's roles."""
    if not await client.auth_enabled():
        raise FenceError(
            f"cannot fence writes on {client.config.endpoints_text}: etcd auth is off there (enable it, "
            "or give --fence-hook)"
        )
    return sorted(await _own_roles(client, "fence writes on"))
