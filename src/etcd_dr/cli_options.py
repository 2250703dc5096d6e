"""The CLI's option groups: each set of flags reaches a command as one typed, frozen object.

A group is a dataclass whose fields are its click parameters' names (less a prefix: DestOptions' `cacert`
is --dest-cacert), and a decorator that adds the flags to a command and hands the command the object
instead of the flags one by one. So mypy checks every use of a flag, and the flag -> config mapping
(ClientConfig, MirrorConfig, MoveConfig) is written once, here: cli.py parses, builds config objects
with these, calls the library and maps errors to exit codes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar, cast

import click
from click.core import ParameterSource

from . import etcdctl_compat
from .config import DEFAULT_STATE_PREFIX, MirrorConfig
from .durations import Duration
from .errors import UsageError
from .etcd import ClientConfig
from .etcdctl_compat import EtcdctlOptions

if TYPE_CHECKING:
    from .failover.config import MoveConfig

__all__ = [
    "POSITIVE",
    "DestOptions",
    "MoveOptions",
    "PairOptions",
    "PrefixOptions",
    "SourceOptions",
    "arg_bytes",
    "check_options",
    "dest_config",
    "dest_options",
    "move_config",
    "move_options",
    "pair_config",
    "pair_options",
    "readiness_options",
]

log = logging.getLogger("etcd_dr")

F = TypeVar("F", bound=Callable[..., Any])

# Seconds that must be above zero (timeouts): plain seconds or Go durations ("2s", "1m30s"), as etcdctl.
POSITIVE = Duration()


def arg_bytes(text: str) -> bytes:
    # Keys given on the command line are UTF-8; undecodable argv bytes round-trip via surrogateescape.
    return text.encode("utf-8", "surrogateescape")


# ---- groups ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Options:
    """Base of the groups: the values of a set of click options as one typed object."""

    # Click names its parameters PARAM_PREFIX + field name.
    PARAM_PREFIX: ClassVar[str] = ""
    # Fields (not parameter names) whose value the user gave (on the command line or in the
    # environment), and those typed on the command line, where other users of the host see them.
    given: frozenset[str] = frozenset()
    typed: frozenset[str] = frozenset()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        """The group's values out of click's parameters (a command's keyword arguments, ctx.params);
        the one place where a flag's name indexes a value."""
        ctx = click.get_current_context(silent=True)
        values: dict[str, Any] = {}
        given: set[str] = set()
        typed: set[str] = set()
        for f in fields(cls):
            name = cls.PARAM_PREFIX + f.name
            if f.name in ("given", "typed") or name not in params:
                continue
            values[f.name] = params[name]
            where = ctx.get_parameter_source(name) if ctx is not None else None
            if where not in (None, ParameterSource.DEFAULT):
                given.add(f.name)
            if where is ParameterSource.COMMANDLINE:
                typed.add(f.name)
        return cls(**values, **cls._nested(params), given=frozenset(given), typed=frozenset(typed))

    @classmethod
    def _nested(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        return {}


def option_group(
    kwarg: str, build: Callable[[Mapping[str, Any]], object], *decorators: Callable[[F], F]
) -> Callable[[F], F]:
    """A decorator that adds the options of `decorators` (in that order on --help) to a command and
    passes them to it as one object, build(their values), in the keyword argument `kwarg`."""

    def decorate(f: F) -> F:
        names: list[str] = []

        @functools.wraps(f)
        def command(*args: Any, **kw: Any) -> Any:
            values = {name: kw.pop(name) for name in names}
            kw[kwarg] = build(values)
            return f(*args, **kw)

        # click's decorators append to __click_params__ (the list functools.wraps shared with `f`).
        params: list[click.Parameter] = command.__dict__.setdefault("__click_params__", [])
        before = len(params)
        out: Callable[..., Any] = command
        for decorator in reversed(decorators):
            out = decorator(cast(F, out))
        names += [p.name for p in params[before:] if p.expose_value and p.name]
        return cast(F, out)

    return decorate


@dataclass(frozen=True, kw_only=True)
class ClusterOptions(Options):
    """One cluster's TLS files and credentials: the source's flags, or the same with --dest-."""

    FLAG_PREFIX: ClassVar[str] = ""
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    password_file: str | None = None
    insecure_transport: bool = True

    def credentials(self) -> tuple[str | None, str | None]:
        """(user, password) from --[dest-]user, --[dest-]password, --[dest-]password-file and their
        environment variables; a password typed on the command line works but is warned about."""
        prefix = self.FLAG_PREFIX
        user, password = self.user, self.password
        if self.password_file is not None:
            if password is not None:
                raise UsageError(f"--{prefix}password and --{prefix}password-file exclude each other")
            if user is not None and ":" in user:
                raise UsageError(
                    f"--{prefix}user USER:PASSWORD and --{prefix}password-file exclude each other"
                )
            password = read_password_file(self.password_file, f"--{prefix}password-file")
            if user is None:
                raise UsageError(f"--{prefix}password-file is given without --{prefix}user")
        typed = "password" in self.typed
        typed_in_user = user is not None and ":" in user and "user" in self.typed
        if typed or typed_in_user:
            env = "ETCDCTL_DEST_PASSWORD" if prefix else "ETCDCTL_PASSWORD"
            log.warning(
                "the %s password is given on the command line (--%s%s), where other users of this "
                "host see it (ps, the unit file): use --%spassword-file or %s instead",
                "destination" if prefix else "source",
                prefix,
                "password" if typed else "user USER:PASSWORD",
                prefix,
                env,
            )
        return user, password


@dataclass(frozen=True, kw_only=True)
class SourceOptions(ClusterOptions):
    """The source's flags: etcdctl's global ones."""

    endpoints: str | None = None
    dial_timeout: float = 5.0
    command_timeout: float = 30.0
    etcdctl: EtcdctlOptions = field(default_factory=EtcdctlOptions)

    @classmethod
    def _nested(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"etcdctl": EtcdctlOptions.from_params(params)}

    def client_config(self) -> ClientConfig:
        etcdctl_compat.log_ignored(self.etcdctl)
        user, password = self.credentials()
        return ClientConfig.create(
            etcdctl_compat.source_endpoints(str(self.endpoints), self.etcdctl, "endpoints" in self.given),
            cacert=self.cacert,
            cert=self.cert,
            key=self.key,
            user=user,
            password=password,
            dial_timeout=self.dial_timeout,
            request_timeout=self.command_timeout,
            role="source",
            flag_prefix="",
            **etcdctl_compat.client_options(self.etcdctl),
        )


@dataclass(frozen=True, kw_only=True)
class DestOptions(ClusterOptions):
    """The destination's flags: make-mirror's --dest-*."""

    PARAM_PREFIX: ClassVar[str] = "dest_"
    FLAG_PREFIX: ClassVar[str] = "dest-"


def dest_config(
    dest: str,
    options: DestOptions,
    *,
    dial_timeout: float,
    command_timeout: float,
    etcdctl: EtcdctlOptions | None = None,
) -> ClientConfig:
    """DEST's client: the timeouts and etcdctl's keepalive flags are the source's (as in make-mirror)."""
    user, password = options.credentials()
    return ClientConfig.create(
        etcdctl_compat.dest_endpoints(dest, options.insecure_transport),
        cacert=options.cacert,
        cert=options.cert,
        key=options.key,
        user=user,
        password=password,
        dial_timeout=dial_timeout,
        request_timeout=command_timeout,
        role="destination",
        flag_prefix="dest-",
        **etcdctl_compat.client_options(etcdctl or EtcdctlOptions()),
    )


@dataclass(frozen=True, kw_only=True)
class PrefixOptions(Options):
    """The key mapping: which keys are mirrored, where they go, where etcd-dr keeps its own."""

    prefix: str = ""
    dest_prefix: str | None = None
    no_dest_prefix: bool = False
    exclude: tuple[str, ...] = ()
    ordered_prefix: tuple[str, ...] = ()
    ignore_keys_regex: str | None = None
    state_prefix: str = DEFAULT_STATE_PREFIX.decode()

    def dest_prefix_bytes(self) -> bytes | None:
        if self.no_dest_prefix and self.dest_prefix is not None:
            raise click.UsageError("--dest-prefix and --no-dest-prefix exclude each other")
        if self.no_dest_prefix:
            return b""
        return None if self.dest_prefix is None else arg_bytes(self.dest_prefix)


@dataclass(frozen=True, kw_only=True)
class MoveOptions(Options):
    """What switchover, failover and failback share beyond the pair: fencing, the clients' switch,
    the output, and the confirmation."""

    fence_hook: str | None = None
    no_fence: bool = False
    dns_server: str | None = None
    dns_zone: str | None = None
    dns_name: str | None = None
    dns_tsig_key: str | None = None
    dns_ttl: int = 30
    dns_address: tuple[str, ...] = ()
    switch_hook: str | None = None
    revision_margin: int = 10_000
    hook_timeout: float = 60.0
    reason: str | None = None
    as_json: bool = False
    dry_run: bool = False
    yes: bool = False


@dataclass(frozen=True)
class PairOptions:
    """The source/destination pair and key mapping as the flags give them."""

    dest: str
    source: SourceOptions
    destination: DestOptions
    keys: PrefixOptions

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PairOptions:
        return cls(
            dest=str(params["dest"]),
            source=SourceOptions.from_params(params),
            destination=DestOptions.from_params(params),
            keys=PrefixOptions.from_params(params),
        )

    def config(self, **options: Any) -> MirrorConfig:
        """The MirrorConfig of the pair, with `options` (the command's own) for the rest."""
        warn_open_prefix(self.keys.prefix)
        return MirrorConfig(
            source=self.source.client_config(),
            dest=dest_config(
                self.dest,
                self.destination,
                dial_timeout=self.source.dial_timeout,
                command_timeout=self.source.command_timeout,
                etcdctl=self.source.etcdctl,
            ),
            prefix=arg_bytes(self.keys.prefix),
            dest_prefix=self.keys.dest_prefix_bytes(),
            excludes=tuple(arg_bytes(e) for e in self.keys.exclude),
            ordered_prefixes=tuple(arg_bytes(o) for o in self.keys.ordered_prefix),
            ignore_keys_regex=self.keys.ignore_keys_regex,
            state_prefix=arg_bytes(self.keys.state_prefix),
            **options,
        )


# ---- the flags ---------------------------------------------------------------------------------


def _source_flags(endpoints_default: str | None) -> list[Callable[[F], F]]:
    return [
        click.option(
            "--endpoints",
            envvar="ETCDCTL_ENDPOINTS",
            default=endpoints_default,
            show_default=endpoints_default is not None,
            help="Source endpoints, comma-separated (env ETCDCTL_ENDPOINTS)."
            + ("" if endpoints_default else " Required: a move has no default."),
        ),
        click.option("--cacert", envvar="ETCDCTL_CACERT", help="Source CA bundle (env ETCDCTL_CACERT)."),
        click.option("--cert", envvar="ETCDCTL_CERT", help="Source client certificate (env ETCDCTL_CERT)."),
        click.option("--key", envvar="ETCDCTL_KEY", help="Source client key (env ETCDCTL_KEY)."),
        click.option(
            "--user", envvar="ETCDCTL_USER", help="Source user, USER or USER:PASSWORD (env ETCDCTL_USER)."
        ),
        click.option(
            "--password",
            envvar="ETCDCTL_PASSWORD",
            help="Source password (env ETCDCTL_PASSWORD; on the command line others see it: prefer the "
            "file or env).",
        ),
        click.option(
            "--password-file",
            default=None,
            help="Read the source password from the first line of this file (env ETCDCTL_PASSWORD_FILE).",
            envvar="ETCDCTL_PASSWORD_FILE",
        ),
        click.option(
            "--dial-timeout",
            type=POSITIVE,
            default=5.0,
            show_default=True,
            envvar="ETCDCTL_DIAL_TIMEOUT",
            help="Time to connect (seconds, or 2s, 1m30s).",
        ),
        click.option(
            "--command-timeout",
            type=POSITIVE,
            default=30.0,
            show_default=True,
            envvar="ETCDCTL_COMMAND_TIMEOUT",
            help="Time per request.",
        ),
    ]


def pair_options(f: F, *, endpoints_default: str | None = "127.0.0.1:2379") -> F:
    """DEST, the source's flags (etcdctl's global ones, read from ETCDCTL_* too), the destination's
    and the key mapping, as `pair`: what mirror, verify, status and the moves share."""
    flags = [
        click.argument("dest"),
        *_source_flags(endpoints_default),
        # etcdctl's other global flags, listed after these.
        etcdctl_compat.etcdctl_global_options,
        *_dest_flags(),
        etcdctl_compat.dest_etcdctl_options,
        *_prefix_flags(),
    ]
    return option_group("pair", PairOptions.from_params, *flags)(f)


def dest_options(f: F) -> F:
    """The destination's flags, as `destination`."""
    flags = [*_dest_flags(), etcdctl_compat.dest_etcdctl_options]
    return option_group("destination", DestOptions.from_params, *flags)(f)


def _dest_flags() -> list[Callable[[F], F]]:
    return [
        click.option(
            "--dest-cacert",
            envvar="ETCDCTL_DEST_CACERT",
            help="Destination CA bundle (env ETCDCTL_DEST_CACERT).",
        ),
        click.option(
            "--dest-cert",
            envvar="ETCDCTL_DEST_CERT",
            help="Destination client certificate (env ETCDCTL_DEST_CERT).",
        ),
        click.option(
            "--dest-key", envvar="ETCDCTL_DEST_KEY", help="Destination client key (env ETCDCTL_DEST_KEY)."
        ),
        click.option(
            "--dest-user",
            envvar="ETCDCTL_DEST_USER",
            help="Destination user, USER or USER:PASSWORD (env ETCDCTL_DEST_USER).",
        ),
        click.option(
            "--dest-password",
            envvar="ETCDCTL_DEST_PASSWORD",
            help="Destination password (env ETCDCTL_DEST_PASSWORD; on the command line others see it: "
            "prefer the file or env).",
        ),
        click.option(
            "--dest-password-file",
            envvar="ETCDCTL_DEST_PASSWORD_FILE",
            default=None,
            help="Read the destination password from the first line of this file "
            "(env ETCDCTL_DEST_PASSWORD_FILE).",
        ),
    ]


def _prefix_flags() -> list[Callable[[F], F]]:
    return [
        click.option("--prefix", default="", help="Mirror only keys under this prefix."),
        click.option("--dest-prefix", default=None, help="Rewrite --prefix to this on the destination."),
        click.option(
            "--no-dest-prefix",
            is_flag=True,
            help="Strip --prefix on the destination (make-mirror semantics).",
        ),
        click.option("--exclude", multiple=True, help="Never mirror keys under this prefix (repeatable)."),
        click.option(
            "--ordered-prefix",
            multiple=True,
            help="Keep the source's create order for unleased keys under this prefix too, as for "
            "leased keys (locks and elections without leases; repeatable).",
        ),
        click.option("--ignore-keys-regex", default=None, help="Never mirror keys matching this regex."),
        click.option(
            "--state-prefix",
            default=DEFAULT_STATE_PREFIX.decode(),
            show_default=True,
            help="Where etcd-dr keeps its own keys; never mirrored.",
        ),
    ]


def check_options(f: F) -> F:
    """DEST, both clusters' flags, the key mapping and --json: what verify and status take."""
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")(f)
    return pair_options(f)


def move_options(f: F) -> F:
    """`pair` (DEST, both clusters' flags, the mirror's key mapping), and `move`: fencing, the clients'
    switch, --json, --dry-run, --yes."""
    f = option_group("move", MoveOptions.from_params, *_move_flags())(f)
    # No default endpoints: a move against a guessed address could promote a standby beside a healthy
    # primary (issue 17, finding 1).
    return pair_options(f, endpoints_default=None)


def readiness_options(f: F) -> F:
    """`check`: the flags a move to DEST takes (move_options), less --dry-run and --yes: it changes
    nothing and asks nothing."""
    f = option_group("move", MoveOptions.from_params, *_move_flags(confirm=False))(f)
    return pair_options(f, endpoints_default=None)


def _move_flags(*, confirm: bool = True) -> list[Callable[[F], F]]:
    return [
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
        click.option(
            "--dns-ttl",
            type=Duration(min_seconds=0, min_open=False, max_seconds=2**31 - 1, whole=True),
            default=30,
            show_default=True,
            help="TTL of the new records (seconds, or 5m).",
        ),
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
            "--hook-timeout", type=POSITIVE, default=60.0, show_default=True, help="Seconds per hook."
        ),
        click.option(
            "--reason", default=None, help="Why this move is made: kept in its record (etcd-dr history)."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines."),
    ] + (_confirm_flags() if confirm else [])


def _confirm_flags() -> list[Callable[[F], F]]:
    return [
        click.option(
            "--dry-run", is_flag=True, help="Run the checks and print the plan step by step; change nothing."
        ),
        click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation on a terminal."),
    ]


# ---- config objects ----------------------------------------------------------------------------


def read_password_file(path: str, flag: str) -> str:
    """The first line of `path` without its line ending: a password kept out of `ps` and unit files."""
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise UsageError(f"{flag} {path}: cannot read the password: {reason}") from None
    password = line.rstrip("\r\n")
    if not password:
        raise UsageError(f"{flag} {path}: the first line is empty; it must hold the password")
    return password


def warn_open_prefix(prefix: str) -> None:
    """A prefix is a byte prefix: `/app` also takes `/apple/` and `/app2`. Said once, for every command
    that takes --prefix (they all build their pair here)."""
    if prefix and not prefix.endswith("/"):
        log.warning(
            "--prefix %r has no trailing '/': it also matches keys such as %r and %r, not only the "
            "directory %r; give --prefix %r for the directory alone",
            prefix,
            prefix + "2",
            prefix + "-old/",
            prefix + "/",
            prefix + "/",
        )


def pair_config(dest: str, params: Mapping[str, Any], **options: Any) -> MirrorConfig:
    """The pair's MirrorConfig from click's parameters (a command's, or ctx.params) and DEST."""
    return PairOptions.from_params({**params, "dest": dest}).config(**options)


def move_config(pair: PairOptions, move: MoveOptions, **options: Any) -> MoveConfig:
    """A move's config: the pair, fencing, the clients' switch, and `options` (the move's own)."""
    from .failover.config import MoveConfig

    if move.no_fence and move.fence_hook:
        raise click.UsageError("--fence-hook and --no-fence exclude each other")
    if pair.source.endpoints is None:
        raise click.UsageError(
            "--endpoints (or ETCDCTL_ENDPOINTS) is required: give the current primary's endpoints "
            "(for failover, the old primary's, as its mirror read them); a move has no default"
        )
    mirror = pair.config()
    dns = None
    if move.dns_server or move.dns_zone or move.dns_name or move.dns_tsig_key or move.dns_address:
        from .failover.dns import DnsConfig, addresses_from_endpoints

        dns = DnsConfig.create(
            # A missing one is refused there, naming its flag.
            server=move.dns_server or "",
            zone=move.dns_zone or "",
            name=move.dns_name or "",
            tsig_key_file=move.dns_tsig_key,
            ttl=move.dns_ttl,
        )
        if not move.dns_address:
            # Checked now, so that a DEST given by name fails before anything is changed.
            addresses_from_endpoints([str(e) for e in mirror.dest.endpoints])
    return MoveConfig(
        pair=mirror,
        fence="none" if move.no_fence else "hook" if move.fence_hook else "auth",
        fence_hook=move.fence_hook,
        dns=dns,
        dns_addresses=tuple(a for arg in move.dns_address for a in arg.split(",") if a),
        switch_hook=move.switch_hook,
        revision_margin=move.revision_margin,
        hook_timeout=move.hook_timeout,
        reason=move.reason or "",
        **options,
    )
