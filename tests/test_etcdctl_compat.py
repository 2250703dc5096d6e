"""`etcd-dr make-mirror` takes `etcdctl make-mirror` lines as written (etcd 3.3 to 3.7): every flag form,
accepted with etcdctl's meaning or refused with one line naming the flag.

The table tests parse the command line the way `etcd-dr` does (argv normalization, then click) and look
at the configuration it builds; no etcd is needed for that. The seed's own line against real TLS clusters
is tests/test_seed.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import click
import pytest

from etcd_dr import cli as cli_mod
from etcd_dr import etcdctl_compat
from etcd_dr.config import MirrorConfig
from etcd_dr.durations import DurationError, parse_duration
from etcd_dr.etcdctl_compat import ETCDCTL_FLAGS, normalize_argv

SRC = "https://127.0.0.1:2379"
DEST = "https://127.0.0.1:3379"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for k in list(os.environ):
        if k.startswith("ETCDCTL_"):
            monkeypatch.delenv(k)
    yield


def parse(*argv: str) -> tuple[list[str], dict[str, Any], MirrorConfig]:
    """What `etcd-dr make-mirror ARGV` would run with: (group args, the command's kw, its config)."""
    args = normalize_argv(cli_mod.cli, ["make-mirror", *argv])
    at = args.index("make-mirror")
    cmd = cli_mod.cli.commands["make-mirror"]
    with cmd.make_context("make-mirror", args[at + 1 :]) as ctx:
        kw = dict(ctx.params)
        dest = kw.pop("dest")
        config = cli_mod.pair_config(dest, kw)
    return args[:at], kw, config


def refused(capsys: pytest.CaptureFixture[str], *argv: str, command: str = "make-mirror") -> str:
    """Run `etcd-dr COMMAND ARGV` in-process; it must exit 2 with one `etcd-dr: error:` line."""
    with pytest.raises(SystemExit) as exc:
        cli_mod.main([command, *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("etcd-dr: error: "), err
    assert err.count("etcd-dr: error: ") == 1 and "Traceback" not in err, err
    return lines[-1]


def test_make_mirror_is_mirror() -> None:
    assert cli_mod.cli.commands["make-mirror"] is cli_mod.cli.commands["mirror"]


# ---- Go durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h30m", 5400.0), ("438000h", 438000 * 3600.0),
        ("1.5s", 1.5), (".5s", 0.5), ("100us", 1e-4), ("100\u00b5s", 1e-4), ("10ns", 1e-8), ("0", 0.0),
        ("90", 90.0), ("2.5", 2.5), ("-2s", -2.0), ("+3s", 3.0), ("1h1m1s1ms", 3661.001),
    ],
)  # fmt: skip
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "2x", "2 s", "1m30", "2S", "1d", "--2s", "2s3", "ms"])
def test_not_durations(text: str) -> None:
    with pytest.raises(DurationError, match="not a duration"):
        parse_duration(text)


# ---- booleans: --flag, --flag=true, --flag=false ----------------------------------------------


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ([], None),
        (["--no-dest-prefix"], b""),
        (["--no-dest-prefix=true"], b""),
        (["--no-dest-prefix=TRUE"], b""),
        (["--no-dest-prefix=1"], b""),
        (["--no-dest-prefix=t"], b""),
        (["--no-dest-prefix=false"], None),
        (["--no-dest-prefix=0"], None),
        (["--no-dest-prefix=F"], None),
    ],
)
def test_boolean_forms(form: list[str], expected: bytes | None) -> None:
    _, _, config = parse(*form, "--prefix", "/p/", DEST, "--endpoints", SRC)
    assert config.dest_prefix == expected


def test_boolean_with_a_separate_value_is_an_argument_as_in_etcdctl(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # pflag: `--no-dest-prefix true` makes "true" an argument; etcdctl then refuses two destinations.
    line = refused(capsys, "--no-dest-prefix", "true", DEST)
    assert "true" in line or DEST in line


def test_boolean_bad_value_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--no-dest-prefix=yes" in refused(capsys, "--no-dest-prefix=yes", DEST)


# ---- time flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "attr", "seconds"),
    [
        ("--dial-timeout", "2s", "dial_timeout", 2.0),
        ("--dial-timeout", "3", "dial_timeout", 3.0),
        ("--command-timeout", "5s", "request_timeout", 5.0),
        ("--command-timeout", "1m30s", "request_timeout", 90.0),
        ("--keepalive-time", "2s", "keepalive_time", 2.0),
        ("--keepalive-timeout", "6s", "keepalive_timeout", 6.0),
        ("--keepalive-timeout", "500ms", "keepalive_timeout", 0.5),
    ],
)
def test_client_time_flags(flag: str, value: str, attr: str, seconds: float) -> None:
    for form in ([f"{flag}={value}"], [flag, value]):
        _, _, config = parse(*form, DEST, "--endpoints", SRC)
        # make-mirror's destination client takes the global settings too.
        assert getattr(config.source, attr) == pytest.approx(seconds)
        assert getattr(config.dest, attr) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("flag", "value", "key", "expected"),
    [
        ("--timeout", "1m", "timeout", 60.0),
        ("--timeout", "45", "timeout", 45.0),
        ("--lock-ttl", "30s", "lock_ttl", 30),
        ("--lock-ttl", "1m", "lock_ttl", 60),
        ("--verify-every", "1h30m", "verify_every", 5400.0),
        ("--heartbeat-interval", "500ms", "heartbeat_interval", 0.5),
    ],
)
def test_own_time_flags_take_go_durations(flag: str, value: str, key: str, expected: float) -> None:
    _, kw, _ = parse(f"{flag}={value}", DEST)
    got = kw[key]
    assert (cli_mod.duration(got, flag) if isinstance(got, str) else got) == pytest.approx(expected)


def test_other_commands_time_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for command, flag in (("failover", "--probe-timeout"), ("switchover", "--catch-up-timeout")):
        cmd = cli_mod.cli.commands[command]
        with cmd.make_context(command, [DEST, f"{flag}=1m30s"]) as ctx:
            assert ctx.params[flag[2:].replace("-", "_")] == pytest.approx(90.0)
    with cli_mod.cli.commands["failover"].make_context(
        "failover", [DEST, "--dns-ttl=5m", "--hook-timeout=2m"]
    ) as ctx:
        assert (ctx.params["dns_ttl"], ctx.params["hook_timeout"]) == (300, 120.0)
    assert "--dial-timeout" in refused(capsys, "--dial-timeout=0s", DEST)
    assert "--lock-ttl" in refused(capsys, "--lock-ttl=1500ms", DEST)
    assert "--timeout" in refused(capsys, "--timeout=-1s", DEST)


# ---- etcdctl's global flags ---------------------------------------------------------------------


def test_insecure_transport() -> None:
    # Default (true): TLS only with TLS files or https endpoints, as in etcdctl.
    _, _, config = parse("http://127.0.0.1:3379", "--endpoints", "127.0.0.1:2379")
    assert config.source.tls is None and config.dest.tls is None
    for form in (["--insecure-transport"], ["--insecure-transport=true"]):
        _, _, config = parse(*form, "http://127.0.0.1:3379", "--endpoints", "127.0.0.1:2379")
        assert config.source.tls is None
    # false: TLS with the system's CAs even without TLS files.
    _, _, config = parse("--insecure-transport=false", "127.0.0.1:3379", "--endpoints", "127.0.0.1:2379")
    assert config.source.tls is not None and config.source.endpoints[0].scheme == "https"
    assert config.dest.tls is None
    _, _, config = parse("--dest-insecure-transport=false", "127.0.0.1:3379", "--endpoints", "127.0.0.1:2379")
    assert config.dest.tls is not None and config.source.tls is None
    # make-mirror's default for the destination is true: TLS files alone make it TLS.
    _, _, config = parse("--dest-insecure-transport=true", "--dest-cacert", "/ca.pem", "127.0.0.1:3379")
    assert config.dest.tls is not None


def test_debug_is_log_level_debug() -> None:
    for form in (["--debug"], ["--debug=true"]):
        head, _, _ = parse(*form, DEST)
        assert head == ["--log-level", "debug"]
    head, _, _ = parse("--debug=false", DEST)
    assert head == []


def test_output_flags_are_ignored_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="etcd_dr")
    parse("-w", "json", "--hex=true", "--max-request-bytes=10485760", "--max-recv-bytes", "100", DEST)
    text = caplog.text
    for flag in ("--write-out json: ignored", "--hex", "--max-request-bytes 10485760", "--max-recv-bytes"):
        assert flag in text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--insecure-skip-tls-verify", DEST], "--insecure-skip-tls-verify"),
        (["--insecure-skip-tls-verify=true", DEST], "--insecure-skip-tls-verify"),
        (["--auth-jwt-token=abc", DEST], "--auth-jwt-token"),
        (["--keepalive-time=soon", DEST], "--keepalive-time"),
        (["--debug=maybe", DEST], "--debug=maybe"),
        (["--no-such-flag", DEST], "--no-such-flag"),
    ],
)
def test_refused_flags_named(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert needle in refused(capsys, *argv)


def test_insecure_skip_tls_verify_false_is_accepted() -> None:
    parse("--insecure-skip-tls-verify=false", DEST)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ETCDCTL_API", "3")
    monkeypatch.setenv("ETCDCTL_DIAL_TIMEOUT", "2s")
    monkeypatch.setenv("ETCDCTL_COMMAND_TIMEOUT", "5s")
    monkeypatch.setenv("ETCDCTL_KEEPALIVE_TIME", "3s")
    monkeypatch.setenv("ETCDCTL_KEEPALIVE_TIMEOUT", "7s")
    monkeypatch.setenv("ETCDCTL_INSECURE_TRANSPORT", "false")
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "127.0.0.1:2379")
    _, _, config = parse("127.0.0.1:3379")
    s = config.source
    assert (s.dial_timeout, s.request_timeout, s.keepalive_time, s.keepalive_timeout) == (2, 5, 3, 7)
    assert s.tls is not None and s.endpoints[0].scheme == "https"
    monkeypatch.setenv("ETCDCTL_DEBUG", "true")
    head, _, _ = parse(DEST)
    assert head == ["--log-level", "debug"]
    monkeypatch.setenv("ETCDCTL_INSECURE_SKIP_TLS_VERIFY", "true")
    assert "--insecure-skip-tls-verify" in refused(capsys, DEST)
    monkeypatch.delenv("ETCDCTL_INSECURE_SKIP_TLS_VERIFY")
    monkeypatch.setenv("ETCDCTL_API", "2")
    assert "ETCDCTL_API=2" in refused(capsys, DEST)


def test_discovery_srv_failure_names_the_domain(capsys: pytest.CaptureFixture[str]) -> None:
    # .invalid never resolves (RFC 6761): the refusal names the flag and the domain.
    line = refused(capsys, "--discovery-srv=etcd.invalid", "--dial-timeout=1s", DEST)
    assert "--discovery-srv etcd.invalid" in line


# ---- every flag of every etcdctl make-mirror (3.3 .. 3.7) ---------------------------------------

_SAMPLE: dict[str, list[str]] = {
    "prefix": ["--prefix=/a/"],
    "dest-prefix": ["--prefix=/a/", "--dest-prefix=/b/"],
    "no-dest-prefix": ["--no-dest-prefix=true"],
    "dest-cacert": ["--dest-cacert=/ca.pem"],
    "dest-cert": ["--dest-cert=/c.pem", "--dest-key=/k.pem"],
    "dest-key": ["--dest-cert=/c.pem", "--dest-key=/k.pem"],
    "dest-insecure-transport": ["--dest-insecure-transport=false"],
    "dest-user": ["--dest-user=u:p"],
    "dest-password": ["--dest-user=u", "--dest-password=p"],
    "rev": ["--rev=5"],
    "max-txn-ops": ["--max-txn-ops=64"],
    "endpoints": ["--endpoints=https://127.0.0.1:2379,https://127.0.0.2:2379"],
    "cacert": ["--cacert=/ca.pem"],
    "cert": ["--cert=/c.pem", "--key=/k.pem"],
    "key": ["--cert=/c.pem", "--key=/k.pem"],
    "user": ["--user=root:pw"],
    "password": ["--user=root", "--password=pw"],
    "dial-timeout": ["--dial-timeout=2s"],
    "command-timeout": ["--command-timeout=5s"],
    "keepalive-time": ["--keepalive-time=2s"],
    "keepalive-timeout": ["--keepalive-timeout=6s"],
    "insecure-transport": ["--insecure-transport=true"],
    "insecure-discovery": ["--insecure-discovery=false"],
    "discovery-srv": ["-d", "etcd.invalid"],
    "discovery-srv-name": ["--discovery-srv-name=x"],
    "debug": ["--debug"],
    "write-out": ["--write-out=table"],
    "hex": ["--hex"],
    "max-request-bytes": ["--max-request-bytes=100"],
    "max-recv-bytes": ["--max-recv-bytes=100"],
    "insecure-skip-tls-verify": ["--insecure-skip-tls-verify=true"],
    "auth-jwt-token": ["--auth-jwt-token=t"],
}


@pytest.mark.parametrize("flag", ETCDCTL_FLAGS, ids=lambda f: f.name)
def test_every_etcdctl_flag_accepted_or_refused_by_name(
    flag: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*_SAMPLE[flag.name], DEST]
    if flag.handling == "refused":
        assert f"--{flag.name}" in refused(capsys, *argv)
    elif flag.name == "discovery-srv":
        # Accepted; it then asks DNS, and a domain that does not resolve is named.
        assert "--discovery-srv etcd.invalid" in refused(capsys, *argv)
    else:
        _, kw, _ = parse(*argv)
        if flag.name not in ("debug", "insecure-skip-tls-verify"):
            assert flag.name.replace("-", "_") in kw


def test_flag_table_is_complete() -> None:
    assert set(_SAMPLE) == {f.name for f in ETCDCTL_FLAGS}
    # The seed's own line, as written: it must parse (the run is in test_seed.py).
    with pytest.raises(click.exceptions.NoSuchOption):
        cli_mod.cli.commands["mirror"].make_context("mirror", ["--no-such", DEST])


# ---- the forms of etcdctl's own parser ----------------------------------------------------------


def test_global_flags_before_the_command() -> None:
    # `etcdctl --endpoints=X --cacert Y make-mirror DEST`: pflag takes global flags anywhere.
    args = normalize_argv(
        cli_mod.cli,
        ["--endpoints=https://10.0.0.1:2379", "--cacert", "/ca.pem", "--debug", "make-mirror", DEST],
    )
    assert args == [
        "--log-level",
        "debug",
        "make-mirror",
        "--endpoints",
        "https://10.0.0.1:2379",
        "--cacert",
        "/ca.pem",
        DEST,
    ]
    # etcd-dr's own group options stay where they are.
    args = normalize_argv(cli_mod.cli, ["--log-format", "json", "-w", "json", "make-mirror", DEST])
    assert args == ["--log-format", "json", "make-mirror", "-w", "json", DEST]


def test_endpoints_given_twice_add_up() -> None:
    # pflag's StringSlice: each --endpoints adds to the list (click would keep only the last).
    _, _, config = parse("--endpoints", "https://10.0.0.1:2379", DEST, "--endpoints=https://10.0.0.2:2379")
    assert [str(e) for e in config.source.endpoints] == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]


def test_global_flag_before_a_command_without_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_mod.main(["--endpoints=x", "pki", "init", "--dir", "/nonexistent/x"])
    assert "--endpoints" in capsys.readouterr().err


def test_write_out_json_is_json_where_there_is_json() -> None:
    for form in (["-w", "json"], ["--write-out=json"], ["--write-out", "json"]):
        assert normalize_argv(cli_mod.cli, ["verify", DEST, *form]) == ["verify", DEST, "--json"]
        assert normalize_argv(cli_mod.cli, ["status", *form, DEST]) == ["status", "--json", DEST]
    # Other formats, and commands without --json, keep the flag (accepted and ignored with a log line).
    assert normalize_argv(cli_mod.cli, ["verify", DEST, "-w", "table"]) == ["verify", DEST, "-w", "table"]
    assert normalize_argv(cli_mod.cli, ["mirror", DEST, "-w", "json"]) == ["mirror", DEST, "-w", "json"]


def test_make_mirror_rev_zero_and_one_copy_first(capsys: pytest.CaptureFixture[str]) -> None:
    # etcdctl make-mirror: --rev 0 is its default and 1 copies too; etcd-dr mirror refuses them.
    cmd = cli_mod.cli.commands["make-mirror"]
    for rev in ("0", "1", "-1"):
        with cmd.make_context("make-mirror", [DEST, f"--rev={rev}"]) as ctx:
            assert etcdctl_compat.make_mirror_rev(ctx.params["rev"]) is None
    with cmd.make_context("make-mirror", [DEST, "--rev=7"]) as ctx:
        assert etcdctl_compat.make_mirror_rev(ctx.params["rev"]) == 7
    with cmd.make_context("mirror", [DEST, "--rev=0"]) as ctx:
        assert etcdctl_compat.make_mirror_rev(ctx.params["rev"]) == 0
    assert "--rev 0" in refused(capsys, DEST, "--rev=0", command="mirror")
