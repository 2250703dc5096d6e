"""The CLI is typed: every command takes its flags as typed parameters or option groups (frozen
dataclasses), never as `**kw` indexed by string, so mypy checks the flag -> config mapping."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator

import click
import pytest

from etcd_dr.cli import cli
from etcd_dr.cli_options import DestOptions, PairOptions, SourceOptions


def _commands(group: click.Group, path: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path}{name} ")
        else:
            yield f"{path}{name}", command


@pytest.fixture(autouse=True)
def _no_etcdctl_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("ETCDCTL_"):
            monkeypatch.delenv(name)
    yield


def test_no_command_takes_untyped_keywords() -> None:
    found = dict(_commands(cli))
    assert {"mirror", "verify", "status", "switchover", "failover", "failback", "checkpoints"} <= set(found)
    for name, command in found.items():
        assert command.callback is not None, name
        function = inspect.unwrap(command.callback)
        for param in inspect.signature(function).parameters.values():
            assert param.kind is not param.VAR_KEYWORD, f"{name}: **{param.name}"
            assert param.annotation is not param.empty, f"{name}: {param.name} has no type"


def test_the_groups_carry_the_flags_and_where_they_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCDCTL_DEST_USER", "dr-b")
    command = cli.commands["verify"]
    argv = ["127.0.0.1:3379", "--endpoints", "127.0.0.1:2379", "--dest-cacert", "/b/ca.pem"]
    with command.make_context(
        "verify", [*argv, "--password", "pw", "--user", "u", "--keepalive-time", "3s"]
    ) as ctx:
        pair = PairOptions.from_params(ctx.params)
    assert pair.dest == "127.0.0.1:3379"
    assert isinstance(pair.source, SourceOptions) and isinstance(pair.destination, DestOptions)
    assert (pair.source.endpoints, pair.source.user, pair.source.password) == ("127.0.0.1:2379", "u", "pw")
    assert pair.source.etcdctl.keepalive_time == 3.0
    assert (pair.destination.cacert, pair.destination.user) == ("/b/ca.pem", "dr-b")
    # Typed on the command line (seen by `ps`: warned about) versus given by the environment.
    assert {"endpoints", "user", "password"} <= pair.source.typed
    assert "user" in pair.destination.given and "user" not in pair.destination.typed
    assert "cacert" not in pair.source.given  # its default
