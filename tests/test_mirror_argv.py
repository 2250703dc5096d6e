"""config.mirror_argv, the one inverse of the CLI's flags: a MirrorConfig written as an `etcd-dr mirror`
command line and parsed back by the CLI gives the same config (render's unit and the moves' printed
commands come from it)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcd_dr import cli
from etcd_dr.config import DEFAULT_STATE_PREFIX, MirrorConfig, mirror_argv
from etcd_dr.etcd import ClientConfig
from etcd_dr.failover.sites import mirror_command, reversed_pair


@pytest.fixture(autouse=True)
def _no_etcdctl_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("ETCDCTL_"):
            monkeypatch.delenv(name)
    yield


def parsed(argv: list[str]) -> MirrorConfig:
    """What `etcd-dr mirror ...` (argv as mirror_argv wrote it) runs with."""
    assert argv[1] == "mirror"
    command = cli.cli.commands["mirror"]
    with command.make_context("mirror", argv[2:]) as ctx:
        params = dict(ctx.params)
        return cli.pair_config(params.pop("dest"), params, metrics_addr=params["metrics_addr"])


def source(endpoints: str, **tls: str) -> ClientConfig:
    return ClientConfig.create(endpoints, role="source", flag_prefix="", **tls)  # type: ignore[arg-type]


def dest(endpoints: str, **tls: str) -> ClientConfig:
    return ClientConfig.create(endpoints, role="destination", flag_prefix="dest-", **tls)  # type: ignore[arg-type]


CONFIGS = {
    "plain": MirrorConfig(source=source("127.0.0.1:2379"), dest=dest("127.0.0.1:3379")),
    "tls, users, the whole key mapping": MirrorConfig(
        source=ClientConfig.create(
            "https://10.0.0.1:2379,https://10.0.0.2:2379",
            cacert="/pki/a/ca.pem",
            cert="/pki/a/mirror.pem",
            key="/pki/a/mirror-key.pem",
            user="etcd-dr",
            role="source",
            flag_prefix="",
        ),
        dest=ClientConfig.create(
            "https://10.1.0.1:2379",
            cacert="/pki/b/ca.pem",
            user="dr-b",
            role="destination",
            flag_prefix="dest-",
        ),
        prefix=b"/app/\xff odd key/",  # not UTF-8: argv carries it by surrogateescape
        dest_prefix=b"/standby/app/",
        excludes=(b"/app/\xff odd key/tmp/", b"/app/\xff odd key/cache/"),
        ignore_keys_regex=r"^/app/.*\.lock$",
        state_prefix=b"/dr-state/",
        metrics_addr="127.0.0.1:9400",
    ),
    "make-mirror's stripped prefix": MirrorConfig(
        source=source("127.0.0.1:2379"), dest=dest("127.0.0.1:3379"), prefix=b"/app/", dest_prefix=b""
    ),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_config_to_argv_to_config(config: MirrorConfig) -> None:
    argv = mirror_argv(config)
    back = parsed(argv)
    for side in ("source", "dest"):
        want, got = getattr(config, side), getattr(back, side)
        assert (got.endpoints, got.tls, got.user) == (want.endpoints, want.tls, want.user), side
    assert back.prefix == config.prefix
    assert back.dest_prefix == config.dest_prefix
    assert back.excludes == config.excludes
    assert back.ignore_keys_regex == config.ignore_keys_regex
    assert back.state_prefix == config.state_prefix
    assert back.metrics_addr == config.metrics_addr
    assert mirror_argv(back) == argv
    # No password ever: the mirror reads it from its env file, the user gives it by env or flag.
    assert not any("password" in word for word in argv)


def test_the_state_prefix_is_said_only_when_asked_or_not_the_default() -> None:
    config = CONFIGS["plain"]
    assert "--state-prefix" not in mirror_argv(config)
    always = mirror_argv(config, program="/usr/local/bin/etcd-dr", always_state_prefix=True)
    assert always[0] == "/usr/local/bin/etcd-dr"
    assert always[-2:] == ["--state-prefix", DEFAULT_STATE_PREFIX.decode()]


def test_the_moves_print_the_same_command_line() -> None:
    config = CONFIGS["tls, users, the whole key mapping"]
    pair = reversed_pair(config)
    assert shlex.split(mirror_command(pair)) == mirror_argv(pair)


def test_paths_with_spaces_survive_the_printed_command(tmp_path: Path) -> None:
    ca = tmp_path / "my certs" / "ca.pem"
    config = MirrorConfig(
        source=source("https://127.0.0.1:2379", cacert=str(ca)), dest=dest("127.0.0.1:3379")
    )
    back = parsed(shlex.split(mirror_command(config)))
    assert back.source.tls is not None and back.source.tls.cacert == ca
