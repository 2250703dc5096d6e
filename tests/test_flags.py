"""No flag silently dropped: every option of every command either accumulates its occurrences
(multiple=True) or refuses a second one with one clear line (issue 12, finding 6)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from cryptography import x509
from harness.clirun import assert_refused, etcd_dr_sync

from etcd_dr.cli import OneValueCommand, OneValueGroup, cli


def commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def a_value(option: click.Option) -> str:
    if isinstance(option.type, click.Choice):
        return str(option.type.choices[0])
    return "1"


def twice(option: click.Option) -> list[str]:
    name = option.opts[0]
    if option.is_flag:
        return [name, name]
    values = [a_value(option)] * max(option.nargs, 1)
    return [name, *values, name, *values]


def all_options() -> list[tuple[tuple[str, ...], click.Command, click.Option]]:
    found = []
    for path, command in commands(cli):
        for param in command.params:
            if isinstance(param, click.Option) and not (param.is_eager and not param.expose_value):
                found.append((path, command, param))
    return found


def test_every_command_refuses_repeats() -> None:
    # A command added with another class would let repeated flags through again.
    for path, command in commands(cli):
        assert isinstance(command, OneValueCommand | OneValueGroup), path


@pytest.mark.parametrize(
    ("path", "command", "option"),
    all_options(),
    ids=[" ".join((*p, o.opts[0])) for p, _, o in all_options()],
)
def test_each_option_is_repeatable_or_refuses_a_second_occurrence(
    path: tuple[str, ...], command: click.Command, option: click.Option
) -> None:
    args = twice(option)
    if option.multiple:
        ctx = command.make_context(path[-1] if path else "etcd-dr", args, resilient_parsing=True)
        assert len(ctx.params[option.name or ""]) == 2, ctx.params
        return
    with pytest.raises(click.UsageError) as refused:
        command.make_context(path[-1] if path else "etcd-dr", args, resilient_parsing=True)
    assert f"{option.opts[0]} is given more than once" in refused.value.format_message()


def test_a_flag_value_that_looks_like_a_flag_is_not_counted() -> None:
    # `--prefix --exclude` gives --prefix the value "--exclude"; nothing is repeated.
    mirror = cli.commands["mirror"]
    ctx = mirror.make_context("mirror", ["D", "--prefix", "--prefix=x"], resilient_parsing=True)
    assert ctx.params["prefix"] == "--prefix=x"


def test_repeated_flag_is_one_line_exit_2_and_nothing_written(tmp_path: Path) -> None:
    assert etcd_dr_sync("pki", "init", "--dir", str(tmp_path)).code == 0
    run = etcd_dr_sync(
        "pki", "issue", "--dir", str(tmp_path), "--profile", "server", "--name", "s",
        "--cn", "a", "--cn", "b",
    )  # fmt: skip
    assert_refused(run, "--cn", "more than once")
    assert not (tmp_path / "s.pem").exists()
    run = etcd_dr_sync("--log-level", "info", "--log-format", "text", "--log-level", "debug", "status", "x")
    assert_refused(run, "--log-level", "more than once")


def test_hosts_accumulate_and_split_commas(tmp_path: Path) -> None:
    assert etcd_dr_sync("pki", "init", "--dir", str(tmp_path)).code == 0
    run = etcd_dr_sync(
        "pki", "issue", "--dir", str(tmp_path), "--profile", "server", "--name", "s",
        "--hosts", "127.0.0.1", "--hosts", "localhost,etcd-a.example", "--hosts", "::1",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "s.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = sans.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert sorted(names) == ["etcd-a.example", "localhost"]
    assert sorted(ips) == ["127.0.0.1", "::1"]
    run = etcd_dr_sync(
        "pki", "check", "--cert-file", str(tmp_path / "s.pem"), "--cacert", str(tmp_path / "ca.pem"),
        "--hosts", "127.0.0.1", "--hosts", "nothere.example",
    )  # fmt: skip
    assert run.code == 1, run.stdout + run.stderr
    assert "nothere.example" in run.stdout + run.stderr
