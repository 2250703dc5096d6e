"""`etcd-dr check DEST --endpoints SRC`: would a failover or switchover to DEST work now? Everything
such a move needs, checked without changing anything, one item per line (ok / warn / fail and why),
then the RPO a failover would have now. Ready (exit 0) when no item fails; warnings are said.

The items (their names are the `item` label of the mirror's `etcd_dr_readiness` gauge):

- source, destination: every member answers, no alarm; the destination is a standby, not a primary;
- quota: the fullest member's database against --quota-backend-bytes (etcd's own default: 2 GiB);
- certificates: what the members present and the client certificates given (as `pki check` does);
- mirror: a mirror holds the pair's lock, its copy is done, its health record is current;
- lag: the RPO a failover would have now, in seconds, against --max-rpo;
- verify: the mirror's last periodic verify (its result and age), or one run now (--verify);
- fencing: auth on and etcd-dr's user holding `root` on both sites (fence.py), or the fence hook
  exists and is executable (the mirror, not told how the moves fence: auth off is a warning);
- switch: the DNS server answers for the name authoritatively, accepts the TSIG key and points the
  name at the current primary; or the switch hook exists and is executable.

Nothing is written: the sites are read (status.py), the verify reads, the fencing check reads roles,
and the DNS key is tried with an update whose prerequisite cannot hold. A running mirror runs the
same checks every --check-every (`run_for_mirror`), those that need only the pair (no DNS, no hooks).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from .checkpoints import live_checkpoints
from .config import MirrorConfig
from .errors import EtcdDrError, Refused
from .etcd import EtcdClient, EtcdError, TLSError, TransientError
from .failover.config import MoveConfig
from .failover.plan import Rpo
from .mirror.keys import KeyMapper
from .state.records import REPLAY, Checkpoint
from .status import ClusterState, Limits, StatusReport, _ago, in_our_words, status_of

log = logging.getLogger("etcd_dr.check")

Level = Literal["ok", "warn", "fail", "skip"]
# A skipped item is not exported; the gauge's value per level is metrics.READINESS_SCORE.
ITEMS = (
    "source",
    "destination",
    "quota",
    "certificates",
    "mirror",
    "lag",
    "verify",
    "fencing",
    "switch",
)
DEFAULT_QUOTA = 2 * 1024**3  # etcd's --quota-backend-bytes default
QUOTA_WARN, QUOTA_FAIL = 0.80, 0.95
# The mirror's periodic verify older than this is a warning (its default period is 10 minutes).
VERIFY_MAX_AGE = 24 * 3600.0


@dataclass(frozen=True)
class CheckOptions:
    """What `check` takes beyond the move's own flags."""

    max_rpo: float = 30.0
    verify_now: bool = False
    quota_bytes: int = DEFAULT_QUOTA
    warn_days: int = 30  # certificates expiring sooner are a warning (as `pki check --warn-days`)


@dataclass(frozen=True)
class Item:
    name: str
    level: Level
    message: str

    def line(self) -> str:
        return (
            f"  {self.level.upper() if self.level == 'fail' else self.level:<5} {self.name:<13}{self.message}"
        )


@dataclass
class Readiness:
    """Every item's verdict, and the RPO a failover would have now."""

    source: str
    dest: str
    items: list[Item] = field(default_factory=list)
    rpo_revision: int | None = None  # every source write up to here is on the standby
    rpo_behind: int | None = None  # source revisions after it
    rpo_seconds: float | None = None
    max_rpo: float = 30.0
    at: float = field(default_factory=time.time)

    def add(self, name: str, level: Level, message: str) -> None:
        log.debug("check %s: %s: %s", name, level, message)  # printed by `check`; the mirror logs changes
        self.items.append(Item(name, level, message))

    @property
    def ready(self) -> bool:
        return not any(i.level == "fail" for i in self.items)

    def levels(self) -> dict[str, str]:
        return {i.name: i.level for i in self.items if i.level != "skip"}

    def rpo_line(self) -> str:
        if self.rpo_revision is None:
            return "RPO a failover would have now: unknown (no mirror checkpoint on the destination)"
        secs = (
            "unknown seconds (no heartbeat applied)"
            if self.rpo_seconds is None
            else f"{self.rpo_seconds:.1f} s"
        )
        behind = "" if self.rpo_behind is None else f"; {self.rpo_behind} source revisions after it"
        return (
            f"RPO a failover would have now: every write up to source revision {self.rpo_revision} is "
            f"on the standby{behind}; {secs} of writes (--max-rpo {self.max_rpo:g} s)"
        )

    def lines(self) -> list[str]:
        out = [f"failover readiness of {self.dest} (standby) for {self.source} (primary):"]
        out += [i.line() for i in self.items]
        out.append(self.rpo_line())
        fails = [i.name for i in self.items if i.level == "fail"]
        warns = [i.name for i in self.items if i.level == "warn"]
        if fails:
            out.append(f"NOT READY: {len(fails)} item(s) fail ({', '.join(fails)})")
        else:
            tail = f" ({len(warns)} warning(s): {', '.join(warns)})" if warns else ""
            out.append("READY: a failover or switchover to the standby has what it needs" + tail)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "source": self.source,
            "destination": self.dest,
            "at": self.at,
            "items": [{"item": i.name, "level": i.level, "message": i.message} for i in self.items],
            "rpo": {
                "revision": self.rpo_revision,
                "behind_revisions": self.rpo_behind,
                "seconds": self.rpo_seconds,
                "max_rpo_seconds": self.max_rpo,
            },
        }


async def check(move: MoveConfig, options: CheckOptions) -> Readiness:
    """`etcd-dr check`: every item, for a move with `move`'s flags."""
    report = await _check_pair(move.pair, options, fence=move.fence, fence_hook=move.fence_hook)
    await _switch_item(report, move)
    return report


async def run_for_mirror(config: MirrorConfig) -> dict[str, str]:
    """The checks a running mirror makes every --check-every: those that need only the pair (fencing
    by auth, no DNS, no hook); item -> level. Never raises for what it finds."""
    try:
        options = CheckOptions(max_rpo=config.check_max_rpo)
        report = await _check_pair(config, options, fence="mirror", fence_hook=None)
    except (EtcdDrError, TimeoutError) as e:
        log.warning("readiness check did not finish: %s", e)
        return {}
    return report.levels()


async def _check_pair(
    pair: MirrorConfig, options: CheckOptions, *, fence: str, fence_hook: str | None
) -> Readiness:
    report = Readiness(pair.source.endpoints_text, pair.dest.endpoints_text, max_rpo=options.max_rpo)
    try:
        async with EtcdClient(pair.source) as source, EtcdClient(pair.dest) as dest:
            await _items(report, pair, options, (source, dest), fence, fence_hook)
    except TLSError as e:
        # A certificate expired or rejected is a readiness problem (the certificates item says which),
        # not bad input: said as the site's failure, the items that need the site are not checked.
        site = "destination" if str(e).startswith(pair.dest.role) else "source"  # "<role> endpoint ..."
        report.add(site, "fail", str(e))
        if not any(i.name == "certificates" for i in report.items):
            await _certificates_item(report, pair, options.warn_days)
    order = {name: i for i, name in enumerate(ITEMS)}
    report.items.sort(key=lambda i: order.get(i.name, len(order)))
    return report


async def _items(
    report: Readiness,
    pair: MirrorConfig,
    options: CheckOptions,
    clients: tuple[EtcdClient, EtcdClient],
    fence: str,
    fence_hook: str | None,
) -> None:
    # Certificates first: a TLS handshake refused (an expired certificate) ends the rest.
    await _certificates_item(report, pair, options.warn_days)
    state = await status_of(pair, *clients, Limits(max_lag_seconds=options.max_rpo))
    _site_item(report, state.source, state)
    _site_item(report, state.dest, state)
    _quota_item(report, state, options.quota_bytes)
    _mirror_item(report, state)
    await _lag_item(report, pair, state, options.max_rpo, clients[1])
    await _verify_item(report, pair, state, options.verify_now)
    await _fencing_item(report, state, clients, fence, fence_hook)


def _site_item(report: Readiness, c: ClusterState, state: StatusReport) -> None:
    name = c.role
    if c.down:
        report.add(name, "fail", f"{c.endpoints} is DOWN: {c.down}")
        return
    down = [m for m in c.members if not m.healthy]
    if down:
        report.add(name, "fail", "; ".join(f"member {m.endpoint} is DOWN: {m.error}" for m in down))
        return
    if c.alarms:
        alarms = ", ".join(f"{alarm} on member {member:x}" for member, alarm in c.alarms)
        report.add(name, "fail", f"alarm {alarms}: writes are refused until it is cleared")
        return
    role = c.site_role
    if c.role == "destination" and role is not None and role.is_primary:
        report.add(name, "fail", f"{c.endpoints} is {role.describe()}: it is nobody's standby")
        return
    if c.role == "source" and role is not None and not role.is_primary:
        report.add(name, "fail", f"{c.endpoints} is {role.describe()}, not the primary: give the primary")
        return
    members = f"{len(c.members)} member{'s' if len(c.members) != 1 else ''} healthy"
    report.add(name, "ok", f"cluster {c.cluster_id:x}, {members}, revision {c.revision}, no alarm")


def _quota_item(report: Readiness, state: StatusReport, quota: int) -> None:
    sizes = [
        (m.db_size, c.role, m.endpoint) for c in (state.source, state.dest) for m in c.members if m.healthy
    ]
    if not sizes:
        report.add("quota", "skip", "no member answered")
        return
    size, role, endpoint = max(sizes)
    used = size / quota
    text = f"fullest member: {role} {endpoint}, database {_mib(size)} of {_mib(quota)} quota ({used:.0%})"
    if used >= QUOTA_FAIL:
        report.add("quota", "fail", text + ": compact and defragment it before the NOSPACE alarm")
    elif used >= QUOTA_WARN:
        report.add("quota", "warn", text + f": above {QUOTA_WARN:.0%}")
    else:
        report.add("quota", "ok", text)


async def _certificates_item(report: Readiness, pair: MirrorConfig, warn_days: int) -> None:
    from .pki_check import check_endpoints, check_files

    found: list[tuple[str, str]] = []  # (level, what)
    checked = 0
    for role, cfg in (("source", pair.source), ("destination", pair.dest)):
        tls = cfg.tls
        if tls is None:  # plain http
            continue
        result = await asyncio.to_thread(
            check_endpoints,
            [str(e) for e in cfg.endpoints],
            cacert=tls.cacert,
            cert=tls.cert,
            key=tls.key,
            warn_days=warn_days,
            timeout=cfg.dial_timeout,
        )
        if tls.cert is not None:
            files = await asyncio.to_thread(check_files, [tls.cert], warn_days=warn_days)
            result.certificates += files.certificates
        for cert in result.certificates:
            checked += 1
            where = f"{role} {'member' if cert.kind == 'endpoint' else 'client certificate'} {cert.target}"
            if cert.error is not None:
                continue  # a member that does not answer is the site's item
            for f in cert.findings:
                if f.level != "ok":
                    found.append(("fail" if f.level == "error" else "warn", f"{where}: {f.message}"))
    if not checked:
        report.add("certificates", "ok", "no TLS: plain http on both sites, nothing expires")
        return
    if found:
        level: Level = "fail" if any(lv == "fail" for lv, _ in found) else "warn"
        report.add("certificates", level, "; ".join(text for _, text in found))
        return
    report.add("certificates", "ok", f"{checked} certificates valid for more than {warn_days} days")


def _mirror_item(report: Readiness, state: StatusReport) -> None:
    if state.dest.down:
        report.add("mirror", "fail", "unknown: the destination does not answer")
        return
    ck = state.checkpoint
    if state.checkpoint_error:
        report.add("mirror", "fail", state.checkpoint_error)
    elif ck is None:
        report.add(
            "mirror", "fail", "no mirror checkpoint for this --prefix on the destination: not mirrored"
        )
    elif state.lock_holder is None:
        report.add("mirror", "fail", "no mirror is running: its lock is free (start `etcd-dr mirror`)")
    elif ck.phase != REPLAY:
        report.add(
            "mirror", "fail", "the mirror's copy is not finished: the standby is no state of the source"
        )
    elif state.health is not None and (state.health_age or 0.0) > state.limits.health_max_age:
        report.add(
            "mirror",
            "warn",
            f"running ({state.lock_holder}), but its health record is {_ago(state.health_age or 0.0)} old",
        )
    elif state.health is not None and state.health.problems:
        problems = "; ".join(f"{k}: {v}" for k, v in sorted(state.health.problems.items()))
        report.add("mirror", "warn", f"running ({state.lock_holder}); it reports: {problems}")
    else:
        report.add(
            "mirror", "ok", f"running, lock held by {state.lock_holder}, applied revision {ck.revision}"
        )


async def _lag_item(
    report: Readiness, pair: MirrorConfig, state: StatusReport, max_rpo: float, dest: EtcdClient
) -> None:
    """The RPO a failover would have now: the failover's own computation (failover/plan.py Rpo from
    the checkpoints checkpoints.live_checkpoints chooses)."""
    if state.dest.down:
        report.add("lag", "fail", "unknown: the destination does not answer")
        return
    source_id = state.source.cluster_id or (
        state.dest.site_role.peer_cluster_id if state.dest.site_role is not None else 0
    )
    if not source_id:
        report.add("lag", "fail", "unknown: the source does not answer and the standby names no primary")
        return
    own = pair.layout.checkpoint(source_id, pair.prefix, KeyMapper.from_config(pair).dest_prefix)
    try:
        _found, choice = await live_checkpoints(dest, pair.layout, source_id, own)
    except EtcdError as e:
        report.add("lag", "fail", f"the destination's checkpoints cannot be read: {e}")
        return
    used = [c.checkpoint for c in choice.used if isinstance(c.checkpoint, Checkpoint)]
    if not used:
        report.add("lag", "fail", "no mirror checkpoint from the source: a failover has nothing to keep")
        return
    point = Rpo.of(used)
    report.rpo_revision = point.revision
    if not state.source.down:
        report.rpo_behind = max(0, state.source.revision - point.revision)
    report.rpo_seconds = point.seconds(time.time(), report.rpo_behind)
    behind = "unknown revisions" if report.rpo_behind is None else f"{report.rpo_behind} revisions"
    if report.rpo_seconds is None:
        report.add(
            "lag",
            "warn",
            f"{behind} behind; seconds unknown (no heartbeat applied: mirror --heartbeat-interval)",
        )
    elif report.rpo_seconds > max_rpo:
        report.add(
            "lag",
            "fail",
            f"{behind}, {report.rpo_seconds:.1f} s behind: above --max-rpo {max_rpo:g} s (a failover now "
            "loses more than that)",
        )
    else:
        report.add("lag", "ok", f"{behind}, {report.rpo_seconds:.1f} s behind (--max-rpo {max_rpo:g} s)")


async def _verify_item(report: Readiness, pair: MirrorConfig, state: StatusReport, now: bool) -> None:
    if now:
        from .verify import verify

        try:
            result = await verify(pair)
        except (EtcdError, Refused) as e:
            report.add("verify", "fail", f"--verify did not finish: {e}")
            return
        report.add("verify", "ok" if result.equal else "fail", f"--verify now: {result.summary()}")
        return
    h = state.health
    if h is None or h.verify is None:
        report.add(
            "verify",
            "warn",
            "no periodic verify recorded (the mirror's --verify-every; or run check --verify)",
        )
        return
    v = h.verify
    age = max(0.0, state.now - v.at)
    if not v.equal:
        report.add(
            "verify", "fail", f"the last periodic verify ({_ago(age)}) found {v.differences} differences"
        )
    elif age > VERIFY_MAX_AGE:
        report.add("verify", "warn", f"the last periodic verify was equal but {_ago(age)}")
    else:
        report.add("verify", "ok", f"the last periodic verify was equal, {v.keys} keys, {_ago(age)}")


async def _fencing_item(
    report: Readiness,
    state: StatusReport,
    clients: tuple[EtcdClient, EtcdClient],
    fence: str,
    hook: str | None,
) -> None:
    if fence == "none":
        report.add("fencing", "warn", "--no-fence: a move would not fence the old primary's writes")
        return
    if fence == "hook":
        problem = hook_problem(hook or "", "--fence-hook")
        report.add("fencing", "fail" if problem else "ok", problem or f"--fence-hook {hook!r} is executable")
        return
    from .fence import FenceError, check_auth_fencing

    lacks: list[str] = []
    for c, client in zip((state.source, state.dest), clients, strict=True):
        if fence == "mirror" and c.auth_enabled is False:
            # The mirror is not told how the moves fence: without auth, a hook may do it.
            report.add(
                "fencing", "warn", f"etcd auth is off on the {c.role}: only a --fence-hook can fence it"
            )
            return
        if c.down:
            lacks.append(f"the {c.role} does not answer")
            continue
        try:
            await check_auth_fencing(client)
        except FenceError as e:
            lacks.append(str(e))
        except (TransientError, TimeoutError) as e:
            lacks.append(f"the {c.role}: {in_our_words(e, client.config.request_timeout)}")
    if lacks:
        report.add("fencing", "fail", "; ".join(lacks))
    else:
        who = clients[0].config.user or "the client certificate's user"
        report.add("fencing", "ok", f"auth is on at both sites and {who} holds root: writes can be fenced")


async def _switch_item(report: Readiness, move: MoveConfig) -> None:
    if move.switch_hook:
        problem = hook_problem(move.switch_hook, "--switch-hook")
        report.add(
            "switch",
            "fail" if problem else "ok",
            problem or f"--switch-hook {move.switch_hook!r} is executable",
        )
        return
    if move.dns is None:
        report.add("switch", "warn", "no --dns-* and no --switch-hook: a move does not move the clients")
        return
    from .failover.dns import DnsError, addresses_from_endpoints, check_switch

    cfg = move.dns
    try:
        now = await check_switch(cfg)
    except DnsError as e:
        report.add("switch", "fail", str(e))
        return
    try:
        primary = addresses_from_endpoints([str(e) for e in move.pair.source.endpoints])
    except EtcdDrError:
        primary = []
    signed = "TSIG key accepted" if cfg.tsig_key_file else "unsigned updates (no --dns-tsig-key)"
    where = f"{cfg.name} at {cfg.server} answers {', '.join(now) or '(nothing)'}"
    if not primary:
        report.add("switch", "warn", f"{where}; {signed}; the primary's endpoints are names, not compared")
    elif set(now) != set(primary):
        report.add("switch", "fail", f"{where}, not the current primary's {', '.join(primary)}")
    else:
        report.add("switch", "ok", f"{where} (the current primary); {signed}")


def hook_problem(cmd: str, flag: str) -> str | None:
    """Why the hook's program cannot run (not found, not executable), or None. The hook is a shell
    command line: its first word is the program."""
    try:
        words = shlex.split(cmd)
    except ValueError as e:
        return f"{flag} {cmd!r}: not a command line: {e}"
    if not words:
        return f"{flag}: empty command"
    program = words[0]
    if "/" not in program:
        if shutil.which(program) is None:
            return f"{flag} {cmd!r}: {program!r} is not found on PATH"
        return None
    if not os.path.exists(program):
        return f"{flag} {cmd!r}: {program} does not exist"
    if os.path.isdir(program) or not os.access(program, os.X_OK):
        return f"{flag} {cmd!r}: {program} is not executable"
    return None


def _mib(n: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} bytes"
