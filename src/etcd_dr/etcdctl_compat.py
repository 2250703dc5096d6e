"""etcdctl's command-line conventions, so that an `etcdctl make-mirror` line works with `etcd-dr` in
place of `etcdctl` (etcd 3.3 to 3.7).

- Go booleans (pflag): `--flag`, `--flag=true`, `--flag=false` (and strconv.ParseBool's 1/0/t/f/...).
  pflag gives a boolean flag a value only after '=': `--flag true` makes "true" an argument, in etcdctl
  as here.
- Go durations for every time flag (etcd_dr.durations).
- etcdctl's global flags: those that mean something here are honoured (insecure transport, keepalive,
  DNS SRV discovery, --debug), those that only shape etcdctl's output are accepted and ignored with a
  log line (make-mirror prints nothing they would format), and those etcd-dr cannot honour are refused
  with one line naming the flag. Each also reads its ETCDCTL_* environment variable, as etcdctl does.
- ETCDCTL_API=3 is ignored; any other value is refused (etcd-dr speaks the v3 API only).

`ETCDCTL_FLAGS` lists every flag of etcdctl's make-mirror line, per etcd version, with what etcd-dr
does with it; tests/test_etcdctl_compat.py checks each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import click

from .durations import Duration

__all__ = [
    "ETCDCTL_FLAGS",
    "EtcdctlFlag",
    "EtcdctlOptions",
    "check_api_env",
    "client_options",
    "dest_endpoints",
    "dest_etcdctl_options",
    "etcdctl_global_options",
    "log_ignored",
    "normalize_argv",
    "source_endpoints",
    "srv_endpoints",
]

log = logging.getLogger("etcd_dr")

F = TypeVar("F", bound=Callable[..., Any])

_TRUE = {"1", "t", "true"}
_FALSE = {"0", "f", "false"}


@dataclass(frozen=True)
class EtcdctlOptions:
    """The values of etcdctl's global flags beyond the connection ones (etcdctl_global_options)."""

    keepalive_time: float | None = None
    keepalive_timeout: float | None = None
    insecure_transport: bool = True
    discovery_srv: str | None = None
    discovery_srv_name: str | None = None
    insecure_discovery: bool = True
    debug: bool = False
    write_out: str | None = None
    hex: bool = False
    max_request_bytes: int | None = None
    max_recv_bytes: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EtcdctlOptions:
        """Out of click's parameters (or any mapping of them): the flags not given keep their defaults."""
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})


@dataclass(frozen=True)
class EtcdctlFlag:
    name: str  # without dashes
    versions: str  # etcd versions whose etcdctl has it (make-mirror's own or global)
    handling: str  # "same", "honoured", "ignored", "refused"
    note: str = ""


# Read from etcd's source: etcdctl/ctlv3/ctl.go (global flags) and
# etcdctl/ctlv3/command/make_mirror_command.go, branches release-3.3 ... release-3.7.
ETCDCTL_FLAGS: tuple[EtcdctlFlag, ...] = (
    # make-mirror's own
    EtcdctlFlag("prefix", "3.3-3.7", "same"),
    EtcdctlFlag("dest-prefix", "3.3-3.7", "same"),
    EtcdctlFlag("no-dest-prefix", "3.3-3.7", "same"),
    EtcdctlFlag("dest-cacert", "3.3-3.7", "same"),
    EtcdctlFlag("dest-cert", "3.3-3.7", "same"),
    EtcdctlFlag("dest-key", "3.3-3.7", "same"),
    EtcdctlFlag("dest-insecure-transport", "3.3-3.7", "honoured", "default true in both"),
    EtcdctlFlag("dest-user", "3.5-3.7", "same"),
    EtcdctlFlag("dest-password", "3.5-3.7", "same"),
    EtcdctlFlag("rev", "3.6-3.7", "same", "start watching there, no initial copy"),
    EtcdctlFlag("max-txn-ops", "3.6-3.7", "same", "a cap; by default etcd-dr probes the destination's limit"),
    # global
    EtcdctlFlag("endpoints", "3.3-3.7", "same"),
    EtcdctlFlag("cacert", "3.3-3.7", "same"),
    EtcdctlFlag("cert", "3.3-3.7", "same"),
    EtcdctlFlag("key", "3.3-3.7", "same"),
    EtcdctlFlag("user", "3.3-3.7", "same"),
    EtcdctlFlag("password", "3.4-3.7", "same"),
    EtcdctlFlag("dial-timeout", "3.3-3.7", "same", "etcdctl's default 2s, etcd-dr's 5s"),
    EtcdctlFlag("command-timeout", "3.3-3.7", "same", "etcdctl's default 5s, etcd-dr's 30s"),
    EtcdctlFlag("keepalive-time", "3.3-3.7", "honoured", "etcdctl's default 2s, etcd-dr's 10s"),
    EtcdctlFlag("keepalive-timeout", "3.3-3.7", "honoured", "etcdctl's default 6s, etcd-dr's 5s"),
    EtcdctlFlag("insecure-transport", "3.3-3.7", "honoured", "default true in both"),
    EtcdctlFlag("insecure-discovery", "3.3-3.7", "honoured", "false: only https SRV endpoints"),
    EtcdctlFlag("discovery-srv", "3.3-3.7", "honoured", "-d too"),
    EtcdctlFlag("discovery-srv-name", "3.4-3.7", "honoured"),
    EtcdctlFlag("debug", "3.3-3.7", "honoured", "as --log-level debug"),
    EtcdctlFlag("write-out", "3.3-3.7", "ignored", "-w too; make-mirror prints only a count"),
    EtcdctlFlag("hex", "3.3-3.7", "ignored", "make-mirror prints no keys"),
    EtcdctlFlag("max-request-bytes", "3.6-3.7", "ignored", "etcd-dr learns the destination's limits"),
    EtcdctlFlag("max-recv-bytes", "3.6-3.7", "ignored", "etcd-dr's responses are paged"),
    EtcdctlFlag("insecure-skip-tls-verify", "3.3-3.7", "refused", "etcd-dr always verifies"),
    EtcdctlFlag("auth-jwt-token", "3.7", "refused", "use --user/--password or client certificates"),
)


# ---- argv -------------------------------------------------------------------------------------


def normalize_argv(group: click.Group, argv: Sequence[str]) -> list[str]:
    """Rewrite Go's boolean forms for click, and --debug as --log-level debug.

    `--flag=true` becomes `--flag`; `--flag=false` becomes the flag's off switch (`--no-flag`) or is
    dropped when the flag is off by default. Only options the command really has as booleans are
    touched; anything else is left for click to parse (and refuse).
    """
    args = list(argv)
    # The command: the first word that is not a group option (or its value). etcdctl's global flags
    # may come before the command (`etcdctl --endpoints=X make-mirror DEST`): they are moved after it.
    group_ctx_opts = {o: p for p in group.params if isinstance(p, click.Option) for o in p.opts}
    kept: list[str] = []
    moved: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        name, eq, _ = args[i].partition("=")
        p = group_ctx_opts.get(name)
        takes_value = (p is not None and not p.is_flag) or (p is None and name in _GLOBAL_VALUE_FLAGS)
        width = 2 if takes_value and not eq else 1
        (kept if p is not None or name in ("-h", "--help", "--version") else moved).extend(
            args[i : i + width]
        )
        i += width
    args = kept + args[i:]
    i = len(kept)
    command: click.Command | None = None
    j = i
    node: click.Command = group
    while j < len(args) and isinstance(node, click.Group):
        sub = node.commands.get(args[j])
        if sub is None:
            break
        node = sub
        command = sub
        j += 1
    if command is None or (moved and not any(p.name == "endpoints" for p in command.params)):
        # Not a command that takes etcdctl's flags: leave the line to click, which names what is wrong.
        return list(argv)
    flags: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.is_flag and param.is_bool_flag:
            for opt in param.opts:
                flags[opt] = param
    head, tail = args[:j], _join_endpoints(moved + args[j:])
    if any("--json" in p.opts for p in command.params if isinstance(p, click.Option)):
        tail = _write_out_json(tail)
    out: list[str] = []
    debug = False
    for k, arg in enumerate(tail):
        if arg == "--":
            out.extend(tail[k:])
            break
        name, eq, value = arg.partition("=")
        if not eq or name not in flags:
            out.append(arg)
            continue
        truth = value.lower()
        if truth not in _TRUE | _FALSE:
            raise click.UsageError(f"{name}={value}: a boolean flag takes true or false (Go's forms)")
        on = truth in _TRUE
        param = flags[name]
        if name == "--debug":
            debug = debug or on
            continue
        if on:
            out.append(name)
        elif param.secondary_opts:
            out.append(param.secondary_opts[0])
        # else: off is the default; nothing to pass.
    if "--debug" in out:
        out.remove("--debug")
        debug = True
    if debug or ("--debug" in flags and _env_bool("ETCDCTL_DEBUG")):
        head = ["--log-level", "debug", *head]
    return head + out


# etcdctl's global flags that take a value (pflag: `--flag value` or `--flag=value`).
_GLOBAL_VALUE_FLAGS = {
    "--endpoints", "--cacert", "--cert", "--key", "--user", "--password", "--dial-timeout",
    "--command-timeout", "--keepalive-time", "--keepalive-timeout", "--discovery-srv", "-d",
    "--discovery-srv-name", "--write-out", "-w", "--max-request-bytes", "--max-recv-bytes",
    "--auth-jwt-token",
}  # fmt: skip


def _join_endpoints(args: list[str]) -> list[str]:
    """etcdctl's --endpoints is a list flag: given twice, the lists add up (pflag StringSlice)."""
    values: list[str] = []
    out: list[str] = []
    first = -1
    k = 0
    while k < len(args):
        arg = args[k]
        if arg == "--":
            out.extend(args[k:])
            break
        if arg == "--endpoints" and k + 1 < len(args):
            value, k = args[k + 1], k + 2
        elif arg.startswith("--endpoints="):
            value, k = arg.partition("=")[2], k + 1
        else:
            out.append(arg)
            k += 1
            continue
        if first < 0:
            first = len(out)
        values.append(value)
    if len(values) > 1:
        out[first:first] = ["--endpoints", ",".join(values)]
    elif values:
        out[first:first] = ["--endpoints", values[0]]
    return out


def _write_out_json(args: list[str]) -> list[str]:
    """On a command with --json (verify, status, ...), etcdctl's `-w json` asks for the same."""
    out: list[str] = []
    k = 0
    while k < len(args):
        arg = args[k]
        if arg == "--":
            out.extend(args[k:])
            break
        if arg in ("-w", "--write-out") and k + 1 < len(args) and args[k + 1] == "json":
            out.append("--json")
            k += 2
        elif arg in ("-w=json", "--write-out=json", "-wjson"):
            out.append("--json")
            k += 1
        else:
            out.append(arg)
            k += 1
    return out


def _env_bool(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return value in _TRUE


def check_api_env(env: Mapping[str, str] | None = None) -> None:
    """ETCDCTL_API=3 (or unset) is what etcd-dr speaks; refuse a v2 selection rather than ignore it."""
    value = (env if env is not None else os.environ).get("ETCDCTL_API")
    if value is not None and value.strip() not in ("", "3"):
        raise click.UsageError(
            f"ETCDCTL_API={value}: etcd-dr uses etcd's v3 API only (v2 keys are not mirrored); "
            "set ETCDCTL_API=3 or unset it"
        )


# ---- click options ----------------------------------------------------------------------------


def _refuse_if_set(reason: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value:
            raise click.UsageError(f"--{param.name.replace('_', '-') if param.name else ''}: {reason}")
        return value

    return callback


def etcdctl_global_options(f: F) -> F:
    """etcdctl's global flags beyond the connection ones that cli.source_options already has."""
    duration = Duration()
    opts = [
        click.option(
            "--keepalive-time",
            type=duration,
            default=None,
            envvar="ETCDCTL_KEEPALIVE_TIME",
            help="Ping an idle connection this often (default 10s; env ETCDCTL_KEEPALIVE_TIME).",
        ),
        click.option(
            "--keepalive-timeout",
            type=duration,
            default=None,
            envvar="ETCDCTL_KEEPALIVE_TIMEOUT",
            help="Drop a connection whose ping is unanswered this long (default 5s).",
        ),
        click.option(
            "--insecure-transport/--no-insecure-transport",
            default=True,
            envvar="ETCDCTL_INSECURE_TRANSPORT",
            help="etcdctl's: false means TLS even without --cacert/--cert (system CAs). Default true.",
        ),
        click.option(
            "--discovery-srv",
            "-d",
            default=None,
            envvar="ETCDCTL_DISCOVERY_SRV",
            help="Find the source's endpoints in DNS SRV records of this domain (_etcd-client-ssl._tcp).",
        ),
        click.option(
            "--discovery-srv-name",
            default=None,
            envvar="ETCDCTL_DISCOVERY_SRV_NAME",
            help="Service name of those records (_etcd-client-ssl-NAME._tcp).",
        ),
        click.option(
            "--insecure-discovery/--no-insecure-discovery",
            default=True,
            envvar="ETCDCTL_INSECURE_DISCOVERY",
            help="false: use only the https (etcd-client-ssl) SRV records. Default true.",
        ),
        click.option(
            "--debug",
            is_flag=True,
            hidden=True,
            help="etcdctl's; the same as etcd-dr --log-level debug.",
        ),
        click.option("--write-out", "-w", default=None, envvar="ETCDCTL_WRITE_OUT", hidden=True),
        click.option("--hex", is_flag=True, envvar="ETCDCTL_HEX", hidden=True),
        click.option(
            "--max-request-bytes", type=int, default=None, envvar="ETCDCTL_MAX_REQUEST_BYTES", hidden=True
        ),
        click.option(
            "--max-recv-bytes", type=int, default=None, envvar="ETCDCTL_MAX_RECV_BYTES", hidden=True
        ),
        click.option(
            "--insecure-skip-tls-verify",
            is_flag=True,
            envvar="ETCDCTL_INSECURE_SKIP_TLS_VERIFY",
            hidden=True,
            expose_value=False,
            callback=_refuse_if_set(
                "not supported: etcd-dr always verifies the server's certificate; give --cacert with the "
                "CA that signed it (`etcd-dr pki check --endpoints ...` shows which)"
            ),
        ),
        click.option(
            "--auth-jwt-token",
            default=None,
            envvar="ETCDCTL_AUTH_JWT_TOKEN",
            hidden=True,
            expose_value=False,
            callback=_refuse_if_set("not supported: use --user/--password or a client certificate"),
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def dest_etcdctl_options(f: F) -> F:
    """make-mirror's --dest-insecure-transport (its default, true, is etcd-dr's behaviour too)."""
    return click.option(
        "--dest-insecure-transport/--no-dest-insecure-transport",
        default=True,
        help="make-mirror's: false means TLS to DEST even without --dest-cacert/--dest-cert. Default true.",
    )(f)


# ---- what the options mean --------------------------------------------------------------------


def _secure(endpoints: str) -> str:
    # etcdctl with --insecure-transport=false dials with TLS; an endpoint without a scheme then is https.
    # An explicit http:// stays plain, as in etcdctl's client (it drops TLS for http endpoints).
    return ",".join(e if "://" in e else f"https://{e}" for e in endpoints.split(",") if e.strip())


def source_endpoints(endpoints: str, flags: EtcdctlOptions, given: bool = True) -> str:
    """The source's endpoints: --endpoints, or the SRV records of --discovery-srv."""
    check_api_env()
    domain = flags.discovery_srv
    if domain:
        found = srv_endpoints(domain, flags.discovery_srv_name, secure_only=not flags.insecure_discovery)
        if found:
            if given:
                log.warning(
                    "--discovery-srv %s: --endpoints %s is not used (as in etcdctl)", domain, endpoints
                )
            log.info("--discovery-srv %s: source endpoints %s", domain, ",".join(found))
            endpoints = ",".join(found)
        else:
            # etcdctl too falls back to --endpoints when discovery leaves no endpoint.
            log.warning(
                "--discovery-srv %s: no https endpoint found; using --endpoints %s", domain, endpoints
            )
    if not flags.insecure_transport:
        endpoints = _secure(endpoints)
    return endpoints


def dest_endpoints(dest: str, insecure_transport: bool = True) -> str:
    """DEST, with https:// where --dest-insecure-transport=false asks for TLS."""
    return dest if insecure_transport else _secure(dest)


def client_options(flags: EtcdctlOptions | Mapping[str, Any]) -> dict[str, Any]:
    """ClientConfig keyword arguments from the etcdctl flags given (both clusters use them, as in
    make-mirror, whose destination client takes the global keepalive settings)."""
    if not isinstance(flags, EtcdctlOptions):
        flags = EtcdctlOptions.from_params(flags)
    out: dict[str, Any] = {}
    if flags.discovery_srv and not flags.insecure_discovery:
        # etcdctl then verifies the source's certificates against the discovery domain (its TLS
        # ServerName), not against each SRV target's host name.
        out["extra_options"] = (("grpc.ssl_target_name_override", flags.discovery_srv.rstrip(".")),)
    if flags.keepalive_time is not None:
        out["keepalive_time"] = float(flags.keepalive_time)
    if flags.keepalive_timeout is not None:
        out["keepalive_timeout"] = float(flags.keepalive_timeout)
    return out


def make_mirror_rev(rev: int | None) -> int | None:
    """--rev as given; under the name make-mirror, etcdctl's meaning of 1 and below (0 is its default):
    copy first, then watch (etcdctl watches from REV without a copy only when REV - 1 > 0)."""
    ctx = click.get_current_context(silent=True)
    if rev is not None and rev <= 1 and ctx is not None and ctx.info_name == "make-mirror":
        log.info("--rev %d: copy first, then watch (as etcdctl make-mirror)", rev)
        return None
    return rev


def log_ignored(flags: EtcdctlOptions) -> None:
    """Say which accepted etcdctl flags have no effect here (nothing is dropped silently)."""
    for value, flag, why in (
        (flags.write_out, "--write-out", "etcd-dr logs; make-mirror printed only a count"),
        (flags.hex, "--hex", "etcd-dr logs keys escaped, never raw"),
        (flags.max_request_bytes, "--max-request-bytes", "etcd-dr learns the destination's limits"),
        (flags.max_recv_bytes, "--max-recv-bytes", "etcd-dr pages its reads"),
    ):
        if value:
            log.info("%s %s: ignored (%s)", flag, value if value is not True else "", why)


def srv_endpoints(
    domain: str, service_name: str | None, *, secure_only: bool = False, nameservers: Sequence[str] = ()
) -> list[str]:
    """Endpoints from DNS SRV records as etcdctl finds them (etcd's client/pkg/srv.GetClient):
    _etcd-client-ssl[-NAME]._tcp.DOMAIN (https) and _etcd-client[-NAME]._tcp.DOMAIN (http); with
    `secure_only` (--insecure-discovery=false) the http ones are dropped, with a log line."""
    import dns.exception
    import dns.resolver

    from .errors import UsageError

    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        hostports = [n.rsplit(":", 1) if n.count(":") == 1 else [n, "53"] for n in nameservers]
        resolver.nameservers = [h for h, _ in hostports]
        resolver.port = int(hostports[0][1])
    suffix = f"-{service_name}" if service_name else ""
    found: list[str] = []
    errors: list[str] = []
    for service, scheme in (("etcd-client-ssl", "https"), ("etcd-client", "http")):
        name = f"_{service}{suffix}._tcp.{domain.rstrip('.')}"
        try:
            answer = resolver.resolve(name, "SRV", lifetime=5.0)
        except dns.exception.DNSException as e:
            errors.append(f"{name}: {e.__class__.__name__}")
            continue
        for rr in answer:
            host = str(rr.target).rstrip(".")
            if scheme == "http" and secure_only:
                log.warning(
                    "--discovery-srv %s: ignoring discovered insecure endpoint http://%s:%d",
                    domain,
                    host,
                    rr.port,
                )
                continue
            found.append(f"{scheme}://{host}:{rr.port}")
    if len(errors) == 2:
        # As etcdctl: an error only when neither lookup answered.
        raise UsageError(f"--discovery-srv {domain}: no SRV records found ({'; '.join(errors)})")
    return found
