"""The command line: parse flags into config objects, call the library, map errors to exit codes.

Flag names follow etcdctl (source = etcdctl's global flags, destination = the same with --dest-), so
`etcdctl make-mirror` can be swapped for `etcd-dr mirror`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from . import __version__, logs
from .config import DEFAULT_STATE_PREFIX, MirrorConfig
from .errors import EtcdDrError
from .etcd import ClientConfig, EtcdError

log = logging.getLogger("etcd_dr")

F = TypeVar("F", bound=Callable[..., Any])


def _b(text: str) -> bytes:
    # Keys given on the command line are UTF-8; undecodable argv bytes round-trip via surrogateescape.
    return text.encode("utf-8", "surrogateescape")


# ---- shared flags ------------------------------------------------------------------------------


# Seconds that must be above zero (timeouts).
_POSITIVE = click.FloatRange(min=0, min_open=True)


def source_options(f: F) -> F:
    opts = [
        click.option(
            "--endpoints",
            envvar="ETCDCTL_ENDPOINTS",
            default="127.0.0.1:2379",
            show_default=True,
            help="Source endpoints, comma-separated (env ETCDCTL_ENDPOINTS).",
        ),
        click.option("--cacert", envvar="ETCDCTL_CACERT", help="Source CA bundle (env ETCDCTL_CACERT)."),
        click.option("--cert", envvar="ETCDCTL_CERT", help="Source client certificate (env ETCDCTL_CERT)."),
        click.option("--key", envvar="ETCDCTL_KEY", help="Source client key (env ETCDCTL_KEY)."),
        click.option("--user", envvar="ETCDCTL_USER", help="Source user, USER or USER:PASSWORD."),
        click.option("--password", envvar="ETCDCTL_PASSWORD", help="Source password."),
        click.option(
            "--dial-timeout", type=_POSITIVE, default=5.0, show_default=True, help="Seconds to connect."
        ),
        click.option(
            "--command-timeout", type=_POSITIVE, default=30.0, show_default=True, help="Seconds per request."
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def dest_options(f: F) -> F:
    opts = [
        click.option("--dest-cacert", help="Destination CA bundle."),
        click.option("--dest-cert", help="Destination client certificate."),
        click.option("--dest-key", help="Destination client key."),
        click.option("--dest-user", help="Destination user, USER or USER:PASSWORD."),
        click.option("--dest-password", help="Destination password."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def prefix_options(f: F) -> F:
    opts = [
        click.option("--prefix", default="", help="Mirror only keys under this prefix."),
        click.option("--dest-prefix", default=None, help="Rewrite --prefix to this on the destination."),
        click.option(
            "--no-dest-prefix",
            is_flag=True,
            help="Strip --prefix on the destination (make-mirror semantics).",
        ),
        click.option("--exclude", multiple=True, help="Never mirror keys under this prefix (repeatable)."),
        click.option("--ignore-keys-regex", default=None, help="Never mirror keys matching this regex."),
        click.option(
            "--state-prefix",
            default=DEFAULT_STATE_PREFIX.decode(),
            show_default=True,
            help="Where etcd-dr keeps its own keys; never mirrored.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def check_options(f: F) -> F:
    """DEST, both clusters' flags, the key mapping and --json: what verify and status take."""
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")(f)
    f = source_options(dest_options(prefix_options(f)))
    return click.argument("dest")(f)


def source_config(kw: dict[str, Any]) -> ClientConfig:
    return ClientConfig.create(
        kw["endpoints"],
        cacert=kw["cacert"],
        cert=kw["cert"],
        key=kw["key"],
        user=kw["user"],
        password=kw["password"],
        dial_timeout=kw["dial_timeout"],
        request_timeout=kw["command_timeout"],
        role="source",
        flag_prefix="",
    )


def dest_config(dest: str, kw: dict[str, Any]) -> ClientConfig:
    return ClientConfig.create(
        dest,
        cacert=kw["dest_cacert"],
        cert=kw["dest_cert"],
        key=kw["dest_key"],
        user=kw["dest_user"],
        password=kw["dest_password"],
        dial_timeout=kw["dial_timeout"],
        request_timeout=kw["command_timeout"],
        role="destination",
        flag_prefix="dest-",
    )


def dest_prefix_of(kw: dict[str, Any]) -> bytes | None:
    if kw["no_dest_prefix"] and kw["dest_prefix"] is not None:
        raise click.UsageError("--dest-prefix and --no-dest-prefix exclude each other")
    if kw["no_dest_prefix"]:
        return b""
    return None if kw["dest_prefix"] is None else _b(kw["dest_prefix"])


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
    """'90', '90s', '5m', '1h' -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    number = t[:-1] if scale else t
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise click.UsageError(f"{flag} {text!r}: expected a duration like 30s, 5m or 1h") from None
    if value < 0:
        raise click.UsageError(f"{flag} {text!r}: must not be negative")
    return value


def pair_config(dest: str, kw: dict[str, Any], **options: Any) -> MirrorConfig:
    """The source/destination pair and key mapping that mirror, verify and status share."""
    return MirrorConfig(
        source=source_config(kw),
        dest=dest_config(dest, kw),
        prefix=_b(kw["prefix"]),
        dest_prefix=dest_prefix_of(kw),
        excludes=tuple(_b(e) for e in kw["exclude"]),
        ignore_keys_regex=kw["ignore_keys_regex"],
        state_prefix=_b(kw["state_prefix"]),
        **options,
    )


class Stopped(Exception):
    """SIGTERM or SIGHUP (systemd stopping the service, a closed terminal) ended the command."""


def run_async(coro: Coroutine[Any, Any, Any], *, stop_ok: bool = False) -> Any:
    """Run `coro`; SIGTERM and SIGHUP cancel it like Ctrl-C, so that its cleanup runs (the mirror
    releases its lock at once instead of making a successor wait out the lock's TTL). With `stop_ok`,
    such a stop is a normal end (None); otherwise it is an error."""

    async def main() -> Any:
        import signal

        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        received: list[str] = []

        def stop(name: str) -> None:
            if not received:
                log.info("%s received: stopping", name)
            received.append(name)
            task.cancel()

        signals = (signal.SIGTERM, signal.SIGHUP)
        for sig in signals:
            loop.add_signal_handler(sig, stop, sig.name)
        try:
            return await task
        except asyncio.CancelledError:
            if not received:
                raise
            if stop_ok:
                return None
            raise Stopped(received[0]) from None
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


# ---- commands ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="etcd-dr")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def cli(log_level: str, log_format: str) -> None:
    """Disaster recovery for etcd across sites: mirror, verify, switch over, fail over, fail back."""
    logs.setup(log_level, log_format)


@cli.command()
@click.argument("dest")
@source_options
@dest_options
@prefix_options
@click.option(
    "--max-txn-ops",
    type=int,
    default=128,
    show_default=True,
    help="Ops per destination txn (the server's limit).",
)
@click.option(
    "--rev", type=int, default=None, help="Start watching at this source revision (no initial copy)."
)
@click.option("--once", is_flag=True, help="Copy / catch up to the source revision seen at start, then exit.")
@click.option("--leases", type=click.Choice(["mirror", "ignore"]), default="mirror", show_default=True)
@click.option(
    "--timeout",
    type=_POSITIVE,
    default=30.0,
    show_default=True,
    help="With --once: seconds an endpoint may be unreachable.",
)
@click.option(
    "--inflight", type=int, default=8, show_default=True, help="Destination txns in flight during the copy."
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
    type=click.IntRange(1, 3600),
    default=10,
    show_default=True,
    help="Seconds a stand-by mirror waits for a dead lock holder before taking over.",
)
@click.option("--allow-mass-delete", is_flag=True, help="Apply such deletes (and a source that reads empty).")
@click.option("--metrics-addr", default=None, help="Serve Prometheus /metrics and /healthz on HOST:PORT.")
@click.option(
    "--verify-every",
    default="10m",
    show_default=True,
    help="Verify the standby against the source every DURATION, paced by --verify-rate (0 or off: never).",
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
def mirror(dest: str, **kw: Any) -> None:
    """Continuously mirror SOURCE (--endpoints) into DEST, exactly once, resumable."""
    from .mirror import Mirror

    config = pair_config(
        dest,
        kw,
        max_txn_ops=kw["max_txn_ops"],
        inflight=kw["inflight"],
        start_revision=kw["rev"],
        once=kw["once"],
        leases=kw["leases"],
        timeout=kw["timeout"],
        max_delete_ratio=kw["max_delete_ratio"],
        allow_mass_delete=kw["allow_mass_delete"],
        lock_ttl=kw["lock_ttl"],
        metrics_addr=kw["metrics_addr"],
        verify_every=None
        if kw["verify_every"].strip().lower() in ("off", "never")
        else duration(kw["verify_every"], "--verify-every") or None,
        verify_rate=byte_size(kw["verify_rate"], "--verify-rate"),
        foreign_writes=kw["foreign_writes"],
        fence_standby=kw["fence_standby"],
        heartbeat_interval=duration(kw["heartbeat_interval"], "--heartbeat-interval"),
    )
    from .progress import with_copy_progress

    mirror = Mirror(config)
    with contextlib.ExitStack() as stack:
        if config.metrics_addr:
            from .metrics import MetricsServer

            stack.enter_context(MetricsServer(config.metrics_addr, mirror.stats))
        result = run_async(with_copy_progress(mirror.stats, mirror.run()), stop_ok=True)
    if result is None:
        log.info("stopped at source revision %d applied", mirror.stats.applied_revision)
    else:
        log.info("done: source revision %d applied", result.checkpoint.revision)


@cli.command()
@check_options
def verify(dest: str, as_json: bool, **kw: Any) -> None:
    """Compare SOURCE and DEST: exit 0 equal, 1 different, 2 error."""
    from .errors import CheckFailed
    from .mirror.checkpoint import encode_key
    from .verify import verify as run_verify

    config = pair_config(dest, kw)

    def show(kind: str, key: bytes) -> None:
        if not as_json:
            click.echo(f"{kind} {encode_key(key)}")

    result = run_async(run_verify(config, on_difference=show))
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(result.summary())
    if not result.equal:
        raise SystemExit(CheckFailed.exit_code)


@cli.command()
@check_options
def status(dest: str, as_json: bool, **kw: Any) -> None:
    """Both clusters' health, the mirror's revisions, lag, checkpoint age and compaction headroom."""
    from .status import status as run_status

    config = pair_config(dest, kw)
    report = run_async(run_status(config))
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for line in report.lines():
            click.echo(line)


# ---- moving the service between sites ----------------------------------------------------------


def move_options(f: F) -> F:
    """DEST, both clusters' flags, the mirror's key mapping, fencing, the clients' switch, --json."""
    opts = [
        click.option(
            "--fence-hook", default=None, help="Command that fences (and lifts) writes, when not by auth."
        ),
        click.option("--no-fence", is_flag=True, help="Do not fence writes on the old primary (not safe)."),
        click.option("--dns-server", default=None, help="DNS server for an RFC 2136 update, HOST[:PORT]."),
        click.option("--dns-zone", default=None, help="The zone holding --dns-name."),
        click.option("--dns-name", default=None, help="The name the clients use; its A/AAAA records move."),
        click.option(
            "--dns-tsig-key", default=None, help="TSIG key file (BIND format, as tsig-keygen writes)."
        ),
        click.option("--dns-ttl", type=int, default=30, show_default=True, help="TTL of the new records."),
        click.option(
            "--dns-address",
            multiple=True,
            help="The name's new address (repeatable; default: the new primary's endpoint IPs).",
        ),
        click.option(
            "--switch-hook", default=None, help="Command that points the clients at the new primary."
        ),
        click.option(
            "--revision-margin",
            type=int,
            default=10_000,
            show_default=True,
            help="Raise the new primary's revision this far above the old primary's last known one.",
        ),
        click.option(
            "--hook-timeout", type=_POSITIVE, default=60.0, show_default=True, help="Seconds per hook."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    f = source_options(dest_options(prefix_options(f)))
    return click.argument("dest")(f)


def move_config(dest: str, kw: dict[str, Any], **options: Any) -> Any:
    from .failover.config import MoveConfig

    if kw["no_fence"] and kw["fence_hook"]:
        raise click.UsageError("--fence-hook and --no-fence exclude each other")
    pair = pair_config(dest, kw)
    dns = None
    dns_flags = ("dns_server", "dns_zone", "dns_name")
    if any(kw[f] for f in dns_flags) or kw["dns_tsig_key"] or kw["dns_address"]:
        from .failover.dns import DnsConfig, addresses_from_endpoints

        dns = DnsConfig.create(
            server=kw["dns_server"],
            zone=kw["dns_zone"],
            name=kw["dns_name"],
            tsig_key_file=kw["dns_tsig_key"],
            ttl=kw["dns_ttl"],
        )
        if not kw["dns_address"]:
            # Checked now, so that a DEST given by name fails before anything is changed.
            addresses_from_endpoints([str(e) for e in pair.dest.endpoints])
    return MoveConfig(
        pair=pair,
        fence="none" if kw["no_fence"] else "hook" if kw["fence_hook"] else "auth",
        fence_hook=kw["fence_hook"],
        dns=dns,
        dns_addresses=tuple(a for arg in kw["dns_address"] for a in arg.split(",") if a),
        switch_hook=kw["switch_hook"],
        revision_margin=kw["revision_margin"],
        hook_timeout=kw["hook_timeout"],
        **options,
    )


def show_result(result: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        for line in result.lines():
            click.echo(line)


@cli.command()
@move_options
@click.option(
    "--catch-up-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds the standby may take to apply the fenced primary's last revision.",
)
@click.option("--no-verify", is_flag=True, help="Do not compare the sites before the roles change.")
def switchover(dest: str, as_json: bool, **kw: Any) -> None:
    """Planned move: fence the primary (--endpoints), let DEST catch up, verify, swap the roles."""
    from .failover.switchover import switchover as run_switchover

    config = move_config(dest, kw, catch_up_timeout=kw["catch_up_timeout"], verify=not kw["no_verify"])
    show_result(run_async(run_switchover(config)), as_json)


@cli.command()
@move_options
@click.option("--force", is_flag=True, help="Promote even if the primary answers and is healthy.")
@click.option(
    "--probe-timeout",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds to wait for the primary before calling it unreachable.",
)
def failover(dest: str, as_json: bool, **kw: Any) -> None:
    """Unplanned move: promote DEST, the standby of the unreachable primary (--endpoints); report the RPO."""
    from .failover.failover import failover as run_failover

    config = move_config(dest, kw, force=kw["force"], probe_timeout=kw["probe_timeout"])
    show_result(run_async(run_failover(config)), as_json)


@cli.command()
@move_options
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the old primary's unreplicated writes are listed (JSON; default: a new file here).",
)
@click.option("--stay", is_flag=True, help="Keep the current primary; make DEST its standby and stop there.")
@click.option("--catch-up-timeout", type=_POSITIVE, default=30.0, show_default=True)
def failback(dest: str, as_json: bool, **kw: Any) -> None:
    """The old primary DEST is back: report its unreplicated writes, re-sync it from the primary
    (--endpoints), then switch back (unless --stay)."""
    from .failover.failback import failback as run_failback

    config = move_config(
        dest, kw, report=kw["report"], stay=kw["stay"], catch_up_timeout=kw["catch_up_timeout"]
    )
    show_result(run_async(run_failback(config)), as_json)


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the clusters and the mirror running until Ctrl-C.")
@click.option(
    "--etcd-version", default=None, help="Use this etcd version (e.g. 3.4, 3.5); default: the newest found."
)
def demo(keep: bool, etcd_version: str | None) -> None:
    """Two local TLS clusters, the mirror between them, and the procedure narrated."""
    from .demo import run_demo

    run_async(run_demo(lambda line: click.echo(line), keep=keep, version=etcd_version))


@cli.group()
def pki() -> None:
    """Certificates for etcd members and clients (replaces cfssl)."""


@pki.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path), help="Where ca.pem goes.")
@click.option("--cn", default="etcd-dr CA", show_default=True)
@click.option("--key-type", type=click.Choice(["ecdsa", "rsa"]), default="ecdsa", show_default=True)
@click.option("--days", type=int, default=36500, show_default=True)
def pki_init(directory: Path, cn: str, key_type: str, days: int) -> None:
    """Create a CA: DIR/ca.pem and DIR/ca-key.pem."""
    from . import pki as pki_lib

    paths = pki_lib.init_ca(directory, cn=cn, key_type=key_type, days=days)
    click.echo(f"wrote {paths.cert} and {paths.key}")


@pki.command("issue")
@click.option(
    "--dir", "directory", required=True, type=click.Path(path_type=Path), help="The CA's directory."
)
@click.option("--profile", type=click.Choice(["server", "peer", "client"]), required=True)
@click.option("--name", required=True, help="Writes DIR/NAME.pem and DIR/NAME-key.pem.")
@click.option("--hosts", default="", help="IPs and DNS names, comma-separated (SANs).")
@click.option("--days", type=int, default=3650, show_default=True)
@click.option(
    "--key-type", type=click.Choice(["ecdsa", "rsa"]), default=None, help="Default: the CSR's, else ecdsa."
)
@click.option("--csr", "csr", type=click.Path(path_type=Path), default=None, help="A cfssl CSR JSON file.")
@click.option("--cn", default=None, help="Subject CN (default: NAME).")
def pki_issue(
    directory: Path,
    profile: str,
    name: str,
    hosts: str,
    days: int,
    key_type: str | None,
    csr: Path | None,
    cn: str | None,
) -> None:
    """Issue a server, peer or client certificate signed by DIR's CA."""
    from . import pki as pki_lib

    paths = pki_lib.issue(
        directory,
        profile=profile,
        name=name,
        hosts=[h for h in hosts.split(",") if h.strip()],
        days=days,
        key_type=key_type,
        csr_json=csr,
        cn=cn,
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
@click.option("--hosts", default="", help="With --cert-file: IPs / DNS names the SANs must include.")
@click.option("--warn-days", type=int, default=30, show_default=True, help="Warn when fewer days are left.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (a certificate expiring soon).")
@click.option("--dial-timeout", type=_POSITIVE, default=5.0, show_default=True, help="Seconds to connect.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def pki_check(
    endpoints: str | None,
    cacert: Path | None,
    cert: Path | None,
    key: Path | None,
    cert_files: tuple[Path, ...],
    hosts: str,
    warn_days: int,
    strict: bool,
    dial_timeout: float,
    as_json: bool,
) -> None:
    """Check expiry, SANs and chain of endpoints' certificates (or files): exit 0 good, 1 problem, 2 error."""
    from . import pki_check as lib
    from .errors import CheckFailed, UsageError

    if bool(endpoints) == bool(cert_files):
        raise UsageError("give --endpoints (check what members present) or --cert-file (check files)")
    if cert_files:
        if cert is not None or key is not None:
            raise UsageError("--cert / --key are for --endpoints; with --cert-file give only --cacert")
        report = lib.check_files(
            cert_files,
            cacert=cacert,
            hosts=[h.strip() for h in hosts.split(",") if h.strip()],
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


def fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.flush()
    print(f"etcd-dr: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    from .pki import PkiError

    try:
        cli.main(args=argv, prog_name="etcd-dr", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        raise SystemExit(2) from None
    except click.ClickException as e:
        fail(e.format_message())
    except click.exceptions.Abort:
        fail("interrupted", 130)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Stopped as e:
        fail(f"stopped by {e}", 143)
    except EtcdDrError as e:
        fail(str(e), e.exit_code)
    except EtcdError as e:
        fail(str(e))
    except PkiError as e:
        fail(str(e))
    except Exception as e:  # a bug: say so in one line; the traceback goes to the debug log
        logging.getLogger("etcd_dr").debug("unexpected error", exc_info=True)
        fail(f"internal error: {type(e).__name__}: {e} (run with --log-level debug for details)")
