"""The command line: parse flags into config objects, call the library, map errors to exit codes.

Flag names follow etcdctl (source = etcdctl's global flags, destination = the same with --dest-), so
`etcdctl make-mirror` can be swapped for `etcd-dr mirror`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from . import __version__, etcdctl_compat, logs, runner
from .cli_options import (
    POSITIVE,
    DestOptions,
    MoveOptions,
    PairOptions,
    arg_bytes,
    check_options,
    dest_config,
    dest_options,
    move_config,
    move_options,
    pair_options,
    readiness_options,
)
from .cli_options import pair_config as pair_config  # tests build a pair from click's parameters
from .config import DEFAULT_STATE_PREFIX
from .durations import Duration, DurationError, parse_duration
from .errors import CheckFailed, EtcdDrError, Stopped, UsageError

if TYPE_CHECKING:
    from .failover.config import MoveConfig

log = logging.getLogger("etcd_dr")


def split_list(values: tuple[str, ...]) -> list[str]:
    """A repeatable option whose values may also be comma-separated: every item, in order, once."""
    items = [item.strip() for value in values for item in value.split(",")]
    return list(dict.fromkeys(item for item in items if item))


# ---- one value per flag ------------------------------------------------------------------------


def repeated_option(command: click.Command, args: list[str]) -> str | None:
    """The first option of `command` that `args` give more than once although it takes one value (click
    would keep the last and drop the others silently), e.g. "--hosts"; None when there is none."""
    by_name: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                by_name[name] = param
    seen: dict[int, str] = {}
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            continue
        name, eq, _ = token.partition("=")
        option = by_name.get(name)
        if option is None:
            continue  # an unknown flag or a value: click reports the former
        if not (option.is_flag or option.count) and not eq:
            for _ in range(max(option.nargs, 1)):
                next(tokens, None)  # the option's value, even when it looks like a flag
        if option.multiple or option.count or (option.is_eager and not option.expose_value):
            continue  # repeatable, or --help / --version, which end the command anyway
        if id(option) in seen:
            first = seen[id(option)]
            return first if first == name else f"{first}/{name}"
        seen[id(option)] = name
    return None


class OneValueCommand(click.Command):
    """A command whose single-value options refuse a second occurrence instead of keeping the last."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _refuse_repeats(self, args)
        return super().parse_args(ctx, args)


class OneValueGroup(click.Group):
    """The same for a group's own options; its commands and subgroups get the same classes."""

    command_class = OneValueCommand
    group_class = type  # subgroups are OneValueGroups too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A group's own options come before the subcommand's name: check only those.
        head = []
        for token in args:
            if not token.startswith("-") and token in self.commands:
                break
            head.append(token)
        _refuse_repeats(self, head)
        return super().parse_args(ctx, args)


def _refuse_repeats(command: click.Command, args: list[str]) -> None:
    name = repeated_option(command, args)
    if name is not None:
        raise click.UsageError(
            f"{name} is given more than once; it takes one value and all but the last would be "
            "dropped: give it once"
        )


# ---- flag values ------------------------------------------------------------------------------


def byte_size(text: str, flag: str) -> float:
    """'4MiB', '512KiB', '1000000' (bytes), '2M' -> bytes; must be above 0."""
    t = text.strip().lower().removesuffix("/s").removesuffix("b").removesuffix("i")
    scale = {"k": 1024.0, "m": 1024.0**2, "g": 1024.0**3}.get(t[-1:])
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise click.UsageError(f"{flag} {text!r}: expected a size like 4MiB, 512KiB or 1000000") from None
    if value <= 0:
        raise click.UsageError(f"{flag} {text!r}: must be above 0")
    return value


def duration(text: str, flag: str) -> float:
    """'90', '90s', '5m', '1h', '1m30s', '500ms' -> seconds."""
    try:
        value = parse_duration(text)
    except DurationError:
        raise click.UsageError(f"{flag} {text!r}: expected a duration like 30s, 500ms, 1m30s or 1h") from None
    if value < 0:
        raise click.UsageError(f"{flag} {text!r}: must not be negative")
    return value


# ---- commands ----------------------------------------------------------------------------------


@click.group(
    cls=OneValueGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(__version__, prog_name="etcd-dr")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--log-repeat-interval",
    type=click.FloatRange(min=0),
    default=logs.DEFAULT_REPEAT_INTERVAL,
    show_default=True,
    help="A warning repeated with the same text is logged once, then once per this many seconds with "
    "the count of repeats left out (0: every time).",
)
def cli(log_level: str, log_format: str, log_repeat_interval: float) -> None:
    """Disaster recovery for etcd across sites: mirror, verify, switch over, fail over, fail back."""
    logs.setup(log_level, log_format, log_repeat_interval)


@cli.command()
@pair_options
@click.option(
    "--max-txn-ops",
    type=int,
    default=None,
    help="Most ops per destination txn. Default: the destination's limit, probed at start "
    "(from 4096 down; etcd's default is 128, a standby configured by `render` takes 4096).",
)
@click.option(
    "--rev", type=int, default=None, help="Start watching at this source revision (no initial copy)."
)
@click.option("--once", is_flag=True, help="Copy / catch up to the source revision seen at start, then exit.")
@click.option("--leases", type=click.Choice(["mirror", "ignore"]), default="mirror", show_default=True)
@click.option(
    "--timeout",
    type=POSITIVE,
    default=30.0,
    show_default=True,
    help="With --once: seconds an endpoint may be unreachable, or another mirror hold the lock.",
)
@click.option(
    "--inflight",
    type=int,
    default=64,
    show_default=True,
    help="Most destination txns in flight during the copy (which also keeps at most 8 MiB in flight).",
)
@click.option(
    "--ordered-copy-time",
    default="60s",
    show_default=True,
    help="Time a copy may spend creating leased (and --ordered-prefix) siblings in the source's create "
    "order, one txn each; the rest keep that order as data until a promotion (0: all of them).",
)
@click.option(
    "--max-delete-ratio",
    type=float,
    default=0.5,
    show_default=True,
    help="Refuse a copy or batch deleting more than this share of the destination's keys.",
)
@click.option(
    "--lock-ttl",
    type=Duration(min_seconds=1, min_open=False, max_seconds=3600, whole=True),
    default=10,
    show_default=True,
    help="Seconds a stand-by mirror waits for a dead lock holder before taking over.",
)
@click.option("--allow-mass-delete", is_flag=True, help="Apply such deletes (and a source that reads empty).")
@click.option(
    "--take-over",
    is_flag=True,
    help="Replace the (stopped) mirror of another source cluster into this range; recorded.",
)
@click.option("--reason", default=None, help="With --take-over: why, kept in its record (etcd-dr history).")
@click.option("--metrics-addr", default=None, help="Serve Prometheus /metrics and /healthz on HOST:PORT.")
@click.option(
    "--verify-every",
    default="10m",
    show_default=True,
    help="Verify the standby against the source every DURATION, paced by --verify-rate (0 or off: never).",
)
@click.option(
    "--check-every",
    default="5m",
    show_default=True,
    help="Run the failover readiness checks (as `check`, without DNS and hooks) every DURATION and "
    "export them as metrics (0 or off: never).",
)
@click.option(
    "--check-max-rpo",
    default="30s",
    show_default=True,
    help="The readiness checks call a failover not ready beyond this RPO (as `check --max-rpo`).",
)
@click.option(
    "--verify-rate",
    default="4MiB",
    show_default=True,
    help="Bytes of keys and values a periodic verify reads per second (both sides), e.g. 512KiB, 4MiB.",
)
@click.option(
    "--foreign-writes",
    type=click.Choice(["restore", "report", "ignore"]),
    default="restore",
    show_default=True,
    help="Writes on the standby's range not made by the mirror: report and put the source's state "
    "back, only report, or do not watch for them.",
)
@click.option(
    "--fence-standby",
    is_flag=True,
    help="Fence application writes on DEST through etcd auth at start (needs auth and the root role).",
)
@click.option(
    "--heartbeat-interval",
    default="1s",
    show_default=True,
    help="Write a heartbeat on the source this often, for lag in seconds (0: never).",
)
@click.option(
    "--catch-up", "catch_up", default=None, hidden=True, help="WATCHERS/SLICE/THRESHOLD (tests, bench)."
)
@click.option("--trail", default=None, hidden=True, help="ABOVE/BELOW revisions/s, or off (tests, bench).")
def mirror(
    pair: PairOptions,
    max_txn_ops: int | None,
    rev: int | None,
    once: bool,
    leases: Literal["mirror", "ignore"],
    timeout: float,
    inflight: int,
    ordered_copy_time: str,
    max_delete_ratio: float,
    lock_ttl: int,
    allow_mass_delete: bool,
    take_over: bool,
    reason: str | None,
    metrics_addr: str | None,
    verify_every: str,
    check_every: str,
    check_max_rpo: str,
    verify_rate: str,
    foreign_writes: Literal["restore", "report", "ignore"],
    fence_standby: bool,
    heartbeat_interval: str,
    catch_up: str | None,
    trail: str | None,
) -> None:
    """Continuously mirror SOURCE (--endpoints) into DEST, exactly once, resumable."""
    from .mirror import Mirror
    from .mirror.catchup import CatchUpConfig
    from .mirror.feed import TrailConfig

    catchup = CatchUpConfig.parse(catch_up) if catch_up else CatchUpConfig()
    trailing = TrailConfig.parse(trail) if trail else TrailConfig()

    config = pair.config(
        max_txn_ops=max_txn_ops,
        inflight=inflight,
        ordered_copy_time=duration(ordered_copy_time, "--ordered-copy-time"),
        start_revision=etcdctl_compat.make_mirror_rev(rev),
        once=once,
        leases=leases,
        timeout=timeout,
        max_delete_ratio=max_delete_ratio,
        allow_mass_delete=allow_mass_delete,
        take_over=take_over,
        take_over_reason=reason,
        lock_ttl=lock_ttl,
        metrics_addr=metrics_addr,
        verify_every=None
        if verify_every.strip().lower() in ("off", "never")
        else duration(verify_every, "--verify-every") or None,
        verify_rate=byte_size(verify_rate, "--verify-rate"),
        check_every=None
        if check_every.strip().lower() in ("off", "never")
        else duration(check_every, "--check-every") or None,
        check_max_rpo=duration(check_max_rpo, "--check-max-rpo"),
        foreign_writes=foreign_writes,
        fence_standby=fence_standby,
        heartbeat_interval=duration(heartbeat_interval, "--heartbeat-interval"),
        catchup_watchers=catchup.watchers,
        catchup_slice=catchup.slice_revisions,
        catchup_threshold=catchup.threshold,
        trail_above=trailing.above,
        trail_below=trailing.below,
    )
    from .progress import with_copy_progress

    mirror = Mirror(config)
    from .readiness import run_for_mirror

    mirror.readiness_check = run_for_mirror
    mirror.cleanup_begins = runner.cleanup_begins
    with contextlib.ExitStack() as stack:
        if config.metrics_addr:
            from .metrics import MetricsServer

            stack.enter_context(MetricsServer(config.metrics_addr, mirror.stats))
        try:
            # The daemon stops on SIGTERM (exit 0); a one-shot run stopped before its end did not do its job.
            # The stop is repeated until the mirror's cleanup begins: grpc can lose a cancel.
            result = runner.run(
                with_copy_progress(mirror.stats, mirror.run()), stop_ok=not config.once, repeat_cancel=True
            )
        except Stopped:
            log.info("stopped at source revision %d applied", mirror.stats.applied_revision)
            raise
    if result is None:
        log.info("stopped at source revision %d applied", mirror.stats.applied_revision)
    else:
        log.info("done: source revision %d applied", result.checkpoint.revision)


# etcdctl's name for it: replacing `etcdctl` by `etcd-dr` in a make-mirror line is all a user does.
cli.add_command(mirror, "make-mirror")


@cli.command()
@check_options
def verify(pair: PairOptions, as_json: bool) -> None:
    """Compare SOURCE and DEST: exit 0 equal, 1 different, 2 error."""
    from .state.records import encode_key
    from .verify import verify as run_verify

    config = pair.config()

    def show(kind: str, key: bytes) -> None:
        if not as_json:
            click.echo(f"{kind} {encode_key(key)}")

    result = runner.run(run_verify(config, on_difference=show))
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(result.summary())
    if not result.equal:
        raise SystemExit(CheckFailed.exit_code)


@cli.command()
@check_options
@click.option(
    "--max-lag-revisions",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Degraded when the mirror is more source revisions behind.",
)
@click.option(
    "--max-lag", default="30s", show_default=True, help="Degraded when the mirror is further behind."
)
@click.option(
    "--fence-hook",
    default=None,
    help="The moves fence with this command (not run here): etcd auth need not be on.",
)
@click.option("--no-fence", is_flag=True, help="The moves run with --no-fence: do not warn that auth is off.")
def status(
    pair: PairOptions,
    as_json: bool,
    max_lag_revisions: int,
    max_lag: str,
    fence_hook: str | None,
    no_fence: bool,
) -> None:
    """Both sites' health, roles, the mirror's lag, lock, health record and checkpoints: exit 0
    healthy, 1 degraded (each problem said), 2 usage error. A site that is down gets a DOWN row."""
    from .status import Limits
    from .status import status as run_status

    config = pair.config()
    limits = Limits(
        max_lag_revisions=max_lag_revisions,
        max_lag_seconds=duration(max_lag, "--max-lag"),
        fencing_without_auth=bool(fence_hook) or no_fence,
    )
    report = runner.run(run_status(config, limits))
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for line in report.lines():
            click.echo(line)
    if report.degraded:
        raise SystemExit(CheckFailed.exit_code)


@cli.command()
@click.argument("dest")
@dest_options
@click.option(
    "--state-prefix",
    default=DEFAULT_STATE_PREFIX.decode(),
    show_default=True,
    help="Where etcd-dr keeps its own keys.",
)
@click.option("--dial-timeout", type=POSITIVE, default=5.0, show_default=True, help="Seconds to connect.")
@click.option(
    "--command-timeout", type=POSITIVE, default=30.0, show_default=True, help="Seconds per request."
)
@click.option("--remove", "remove_id", default=None, metavar="ID", help="Remove this checkpoint (its ID).")
@click.option("--force", is_flag=True, help="With --remove: remove it even if its mirror is running.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def checkpoints(
    dest: str,
    destination: DestOptions,
    state_prefix: str,
    dial_timeout: float,
    command_timeout: float,
    remove_id: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """The mirror checkpoints DEST holds: pair, revision, age, lock holder, live or stale; --remove one."""
    from .checkpoints import list_checkpoints, remove_checkpoint
    from .etcd import EtcdClient
    from .state import StateLayout

    if force and remove_id is None:
        raise UsageError("--force goes with --remove ID")
    config = dest_config(dest, destination, dial_timeout=dial_timeout, command_timeout=command_timeout)
    layout = StateLayout(arg_bytes(state_prefix))

    async def run() -> tuple[Any, list[Any]]:
        async with EtcdClient(config) as client:
            removed = None
            if remove_id is not None:
                removed = await remove_checkpoint(client, layout, remove_id, force=force)
            return removed, await list_checkpoints(client, layout)

    removed, found = runner.run(run())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "removed": removed.to_json() if removed else None,
                    "checkpoints": [c.to_json() for c in found],
                }
            )
        )
        return
    if removed is not None:
        click.echo(f"removed {removed.line()}")
    for c in found:
        click.echo(c.line())
    stale = sum(not c.live for c in found)
    click.echo(
        f"{len(found)} checkpoints on {config.endpoints_text}, {stale} stale"
        + (" (remove one with --remove ID once its mirror is known to be gone)" if stale else "")
    )


# ---- moving the service between sites ----------------------------------------------------------


def show_result(result: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        for line in result.lines():
            click.echo(line)


def pair_options_no_default(f: Any) -> Any:
    """DEST and both sites' flags, --endpoints without a default (no guessed address)."""
    return pair_options(f, endpoints_default=None)


MAX_RPO_HELP = (
    "Refuse when DEST's last applied write is older than this (30s, 5m; default: no limit). --force "
    "overrides."
)


def run_move(
    config: MoveConfig,
    options: MoveOptions,
    move: Callable[[MoveConfig], Coroutine[Any, Any, Any]],
    plan: Callable[[MoveConfig], Coroutine[Any, Any, Any]],
) -> None:
    """--dry-run: the plan only. On a terminal (stdin and stdout), the plan, then a confirmation
    unless --yes; scripts (no terminal) are never prompted."""
    as_json = options.as_json
    if options.dry_run:
        show_result(runner.run(plan(config)), as_json)
        return
    if not options.yes and sys.stdin.isatty() and sys.stdout.isatty():
        steps = runner.run(plan(config))
        for line in steps.lines(dry_run=False):
            click.echo(line, err=as_json)
        if not click.confirm(f"{steps.move} now?", default=False, err=as_json):
            raise CheckFailed(f"{steps.move} not confirmed: nothing was changed (--yes skips the question)")
    show_result(runner.run(move(config)), as_json)


@cli.command()
@readiness_options
@click.option(
    "--max-rpo",
    default="30s",
    show_default=True,
    help="Not ready when a failover now would lose more than this (seconds of the primary's writes).",
)
@click.option("--verify", "verify_now", is_flag=True, help="Compare the sites now (reads all keys).")
@click.option(
    "--quota-backend-bytes",
    type=click.IntRange(min=1),
    default=2 * 1024**3,
    show_default=True,
    help="The clusters' etcd --quota-backend-bytes, to judge the headroom left.",
)
@click.option(
    "--warn-days",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="Warn about certificates expiring within this many days.",
)
def check(
    pair: PairOptions,
    move: MoveOptions,
    max_rpo: str,
    verify_now: bool,
    quota_backend_bytes: int,
    warn_days: int,
) -> None:
    """Would a failover or switchover to DEST work now? Give the flags the move would get. Checks both
    sites, the mirror, the lag against --max-rpo, fencing and the clients' switch; changes nothing.
    Exit 0 ready, 1 not ready (each failing item said), 2 usage error."""
    from .readiness import CheckOptions
    from .readiness import check as run_check

    options = CheckOptions(
        max_rpo=duration(max_rpo, "--max-rpo"),
        verify_now=verify_now,
        quota_bytes=quota_backend_bytes,
        warn_days=warn_days,
    )
    report = runner.run(run_check(move_config(pair, move), options))
    show_result(report, move.as_json)
    if not report.ready:
        raise SystemExit(CheckFailed.exit_code)


@cli.command()
@move_options
@click.option(
    "--catch-up-timeout",
    type=POSITIVE,
    default=30.0,
    show_default=True,
    help="Seconds the standby may take to apply the fenced primary's last revision.",
)
@click.option("--no-verify", is_flag=True, help="Do not compare the sites before the roles change.")
@click.option("--max-rpo", type=Duration(), default=None, help=MAX_RPO_HELP)
@click.option("--force", is_flag=True, help="Switch over even when DEST is behind --max-rpo.")
def switchover(
    pair: PairOptions,
    move: MoveOptions,
    catch_up_timeout: float,
    no_verify: bool,
    max_rpo: float | None,
    force: bool,
) -> None:
    """Planned move: fence the primary (--endpoints), let DEST catch up, verify, swap the roles."""
    from .failover.switchover import plan_switchover
    from .failover.switchover import switchover as run_switchover

    config = move_config(
        pair, move, catch_up_timeout=catch_up_timeout, verify=not no_verify, max_rpo=max_rpo, force=force
    )
    run_move(config, move, run_switchover, plan_switchover)


@cli.command()
@move_options
@click.option(
    "--force", is_flag=True, help="Promote even if the primary answers and is healthy, or beyond --max-rpo."
)
@click.option("--max-rpo", type=Duration(), default=None, help=MAX_RPO_HELP)
@click.option(
    "--probe-timeout",
    type=POSITIVE,
    default=3.0,
    show_default=True,
    help="Seconds to wait for the primary before calling it unreachable.",
)
@click.option(
    "--max-revision-estimate",
    type=click.IntRange(min=0),
    default=1_000_000,
    show_default=True,
    help="At most this many revisions are added for what the old primary may have written unseen.",
)
def failover(
    pair: PairOptions,
    move: MoveOptions,
    force: bool,
    max_rpo: float | None,
    probe_timeout: float,
    max_revision_estimate: int,
) -> None:
    """Unplanned move: promote DEST, the standby of the unreachable primary (--endpoints); report the RPO."""
    from .failover.failover import failover as run_failover
    from .failover.failover import plan_failover

    config = move_config(
        pair,
        move,
        force=force,
        max_rpo=max_rpo,
        probe_timeout=probe_timeout,
        max_revision_estimate=max_revision_estimate,
    )
    run_move(config, move, run_failover, plan_failover)


@cli.command()
@move_options
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the old primary's unreplicated writes are listed (JSON; default: a new file here).",
)
@click.option("--stay", is_flag=True, help="Keep the current primary; make DEST its standby and stop there.")
@click.option("--catch-up-timeout", type=POSITIVE, default=30.0, show_default=True)
def failback(
    pair: PairOptions,
    move: MoveOptions,
    report: Path | None,
    stay: bool,
    catch_up_timeout: float,
) -> None:
    """The old primary DEST is back: report its unreplicated writes, re-sync it from the primary
    (--endpoints), then switch back (unless --stay)."""
    from .failover.failback import failback as run_failback
    from .failover.failback import plan_failback

    config = move_config(pair, move, report=report, stay=stay, catch_up_timeout=catch_up_timeout)
    run_move(config, move, run_failback, plan_failback)


@cli.command()
@pair_options_no_default
@click.option(
    "--max-rpo", type=Duration(), default=None, help="Fail when DEST's last applied write is older."
)
@click.option(
    "--max-snapshot-size",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse when DEST's database is larger than this many bytes.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the snapshot and the copy's data go (default: the system's temporary directory).",
)
@click.option("--revision-margin", type=click.IntRange(min=0), default=10_000, show_default=True)
@click.option("--max-revision-estimate", type=click.IntRange(min=0), default=1_000_000, show_default=True)
@click.option("--reason", default=None, help="Why this drill is run: kept in its record (etcd-dr history).")
@click.option("--no-record", is_flag=True, help="Write nothing at all, not even the drill's record on DEST.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def drill(
    pair: PairOptions,
    max_rpo: float | None,
    max_snapshot_size: int | None,
    work_dir: Path | None,
    revision_margin: int,
    max_revision_estimate: int,
    reason: str | None,
    no_record: bool,
    as_json: bool,
) -> None:
    """Rehearse a failover to DEST on a throwaway copy of it: RPO, RTO, pass or fail (exit 0 passed, 1
    failed, 2 error). Neither site is changed (but for the drill's record on DEST)."""
    from .drill import DrillConfig
    from .drill import drill as run_drill
    from .failover.config import MoveConfig

    if pair.source.endpoints is None:
        raise click.UsageError("--endpoints (or ETCDCTL_ENDPOINTS) is required: give the primary's endpoints")
    move = MoveConfig(
        pair=pair.config(),
        max_rpo=max_rpo,
        reason=reason or "",
        revision_margin=revision_margin,
        max_revision_estimate=max_revision_estimate,
    )
    config = DrillConfig(move, max_snapshot_size=max_snapshot_size, work_dir=work_dir, record=not no_record)
    result = runner.run(run_drill(config, lambda line: click.echo(line, err=as_json)))
    show_result(result, as_json)
    if not result.passed:
        raise SystemExit(CheckFailed.exit_code)


@cli.command()
@pair_options_no_default
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="The newest N moves."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def history(pair: PairOptions, limit: int, as_json: bool) -> None:
    """The record of every move (switchover, failover, failback, take-over, drill) on both sites, newest
    first: who, when, from, to, RPO, duration, result, reason."""
    from .history import history as read_history

    if pair.source.endpoints is None:
        raise click.UsageError(
            "--endpoints (or ETCDCTL_ENDPOINTS) is required: give the other site's endpoints"
        )
    config = pair.config()
    show_result(runner.run(read_history([config.source, config.dest], config.layout, limit=limit)), as_json)


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the clusters and the mirror running until Ctrl-C.")
@click.option(
    "--etcd-version", default=None, help="Use this etcd version (e.g. 3.4, 3.5); default: the newest found."
)
@click.option("--verbose", is_flag=True, help="Print every command in full (endpoints, TLS flags).")
def demo(keep: bool, etcd_version: str | None, verbose: bool) -> None:
    """Two local TLS clusters, the mirror between them, and the procedure narrated."""
    from .demo import run_demo

    runner.run(
        run_demo(lambda line: click.echo(line), keep=keep, version=etcd_version, verbose=verbose),
        repeat_cancel=True,
    )


@cli.group()
def pki() -> None:
    """Certificates for etcd members and clients (replaces cfssl)."""


@pki.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path), help="Where ca.pem goes.")
@click.option("--cn", default=None, help="Subject CN (default: the CSR's, else etcd-dr CA).")
@click.option(
    "--key-type", type=click.Choice(["ecdsa", "rsa"]), default=None, help="Default: the CSR's, else ecdsa."
)
@click.option(
    "--days", type=int, default=None, help="Default: the CSR's ca.expiry (cfssl: 5 years), else 36500."
)
@click.option(
    "--csr",
    type=click.Path(path_type=Path),
    default=None,
    help="cfssl's ca-csr.json (as for gencert -initca).",
)
def pki_init(
    directory: Path, cn: str | None, key_type: str | None, days: int | None, csr: Path | None
) -> None:
    """Create a CA: DIR/ca.pem and DIR/ca-key.pem."""
    from . import pki as pki_lib

    paths = pki_lib.init_ca(directory, cn=cn, key_type=key_type, days=days, csr_json=csr)
    click.echo(f"wrote {paths.cert} and {paths.key}")


@pki.command("issue")
@click.option(
    "--dir", "directory", required=True, type=click.Path(path_type=Path), help="The CA's directory."
)
@click.option(
    "--profile",
    default=None,
    help='server, peer or client; with --config, one of its profiles (default: its "default").',
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="cfssl's ca-config.json: the profile's usages and expiry (as cfssl gencert -config).",
)
@click.option("--name", required=True, help="Writes DIR/NAME.pem and DIR/NAME-key.pem.")
@click.option("--hosts", multiple=True, help="IPs and DNS names (SANs), comma-separated and/or repeated.")
@click.option("--days", type=int, default=None, help="Default: the --config profile's expiry, else 3650.")
@click.option(
    "--key-type", type=click.Choice(["ecdsa", "rsa"]), default=None, help="Default: the CSR's, else ecdsa."
)
@click.option("--csr", "csr", type=click.Path(path_type=Path), default=None, help="A cfssl CSR JSON file.")
@click.option("--cn", default=None, help="Subject CN (default: NAME).")
def pki_issue(
    directory: Path,
    profile: str | None,
    config_file: Path | None,
    name: str,
    hosts: tuple[str, ...],
    days: int | None,
    key_type: str | None,
    csr: Path | None,
    cn: str | None,
) -> None:
    """Issue a server, peer or client certificate (or a cfssl --config profile's) signed by DIR's CA."""
    from . import pki as pki_lib

    if config_file is None and profile not in pki_lib.PROFILES:
        raise click.UsageError(
            f"--profile {profile!r}: use server, peer or client (or a profile of a cfssl --config)"
            if profile
            else "--profile is required without --config: server, peer or client"
        )

    paths = pki_lib.issue(
        directory,
        profile=profile,
        name=name,
        hosts=split_list(hosts),
        days=days,
        key_type=key_type,
        csr_json=csr,
        cn=cn,
        config_json=config_file,
    )
    click.echo(f"wrote {paths.cert} and {paths.key}")


@pki.command("check")
@click.option(
    "--endpoints", default=None, help="Endpoints whose server certificates to check, comma-separated."
)
@click.option("--cacert", type=click.Path(path_type=Path), default=None, help="The CA they must chain to.")
@click.option(
    "--cert", type=click.Path(path_type=Path), default=None, help="Client certificate (mutual TLS)."
)
@click.option("--key", type=click.Path(path_type=Path), default=None, help="Client key.")
@click.option(
    "--cert-file",
    "cert_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Check this certificate file instead of endpoints (repeatable).",
)
@click.option(
    "--hosts",
    multiple=True,
    help="With --cert-file: IPs / DNS names the SANs must include (comma-separated and/or repeated).",
)
@click.option("--warn-days", type=int, default=30, show_default=True, help="Warn when fewer days are left.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (a certificate expiring soon).")
@click.option("--dial-timeout", type=POSITIVE, default=5.0, show_default=True, help="Seconds to connect.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def pki_check(
    endpoints: str | None,
    cacert: Path | None,
    cert: Path | None,
    key: Path | None,
    cert_files: tuple[Path, ...],
    hosts: tuple[str, ...],
    warn_days: int,
    strict: bool,
    dial_timeout: float,
    as_json: bool,
) -> None:
    """Check expiry, SANs and chain of endpoints' certificates (or files): exit 0 good, 1 problem, 2 error."""
    from . import pki_check as lib

    if bool(endpoints) == bool(cert_files):
        raise UsageError("give --endpoints (check what members present) or --cert-file (check files)")
    if cert_files:
        if cert is not None or key is not None:
            raise UsageError("--cert / --key are for --endpoints; with --cert-file give only --cacert")
        report = lib.check_files(
            cert_files,
            cacert=cacert,
            hosts=split_list(hosts),
            warn_days=warn_days,
            strict=strict,
        )
    else:
        if hosts:
            raise UsageError("--hosts is for --cert-file; with --endpoints each endpoint's host is checked")
        assert endpoints is not None
        report = lib.check_endpoints(
            endpoints,
            cacert=cacert,
            cert=cert,
            key=key,
            warn_days=warn_days,
            timeout=dial_timeout,
            strict=strict,
        )
    if as_json:
        click.echo(report.json_text())
    else:
        for line in lib.format_human(report):
            click.echo(line)
    if report.exit_code == 2:
        raise EtcdDrError(report.first_problem() or "a certificate could not be read")
    if report.exit_code == 1:
        raise SystemExit(CheckFailed.exit_code)


@cli.command("render")
@click.argument("topology_file", metavar="TOPOLOGY.yaml", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to write into.")
@click.option("--force", is_flag=True, help="Overwrite files a previous render wrote.")
def render_cmd(topology_file: Path, out: Path, force: bool) -> None:
    """etcd configuration and systemd units for every member of both sites, the mirror's unit, pki.sh."""
    from . import render as render_lib
    from .topology import TopologyError, load_topology

    try:
        files = render_lib.render(load_topology(topology_file), source=str(topology_file))
    except TopologyError as e:
        if len(e.problems) > 1:
            for line in e.problems:
                click.echo(line, err=True)
        raise
    written = render_lib.write_rendered(files, out, force=force)
    click.echo(f"wrote {len(written)} files under {out}; what to copy where: {out / 'README.txt'}")


# ---- entry point -------------------------------------------------------------------------------


def exit_status(e: BaseException) -> tuple[str, int]:
    """The line (after "etcd-dr: ") and the exit code for what ended a command: the one place where
    errors become exit codes (each error's code is drawn in etcd_dr.errors)."""
    if isinstance(e, click.ClickException):
        return f"error: {e.format_message()}", 2
    if isinstance(e, click.exceptions.Abort | KeyboardInterrupt):
        # Ctrl-C outside an async command (a prompt, a certificate being written).
        e = Stopped("SIGINT")
    if isinstance(e, Stopped):
        # A signal ended the command: a plain line, not an error (the operator asked for it).
        return str(e), e.exit_code
    if isinstance(e, EtcdDrError):
        return f"error: {e}", e.exit_code
    # A bug: say so in one line; the traceback goes to the debug log.
    log.debug("unexpected error", exc_info=e)
    return f"error: internal error: {type(e).__name__}: {e} (run with --log-level debug for details)", 2


def main(argv: list[str] | None = None) -> None:
    try:
        args = etcdctl_compat.normalize_argv(cli, sys.argv[1:] if argv is None else argv)
        cli.main(args=args, prog_name="etcd-dr", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        raise SystemExit(2) from None
    except (Exception, KeyboardInterrupt) as e:
        line, code = exit_status(e)
        sys.stderr.flush()
        print(f"etcd-dr: {line}", file=sys.stderr)
        raise SystemExit(code) from None
