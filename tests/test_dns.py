"""Switching the clients' DNS name (RFC 2136 update, TSIG) against a real BIND 9 named on loopback, and
the operator hooks. What the server answers is checked with a plain dnspython resolver pointed at it,
not with the code under test."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.bind import (
    BindServer,
    bind_server,
    ipv6_loopback_usable,
    key_text,
    named_unavailable_reason,
    new_tsig_secret,
)

from etcd_dr.errors import EtcdDrError, UsageError
from etcd_dr.failover.dns import (
    DnsConfig,
    DnsError,
    addresses_from_endpoints,
    parse_server,
    switch_name,
)
from etcd_dr.hooks import HookFailed, run_hook

ZONE = "dr.test."
RECORDS = {
    "etcd": ["127.0.0.10"],
    "v6": ["127.0.0.11"],
    "again": ["127.0.0.12"],
    "badsig": ["127.0.0.13"],
    "badkey": ["127.0.0.14"],
    "unsigned": ["127.0.0.15"],
    "byname": ["127.0.0.16"],
}


@pytest.fixture(scope="module")
def ns() -> Iterator[BindServer]:
    reason = named_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with bind_server(
        zone=ZONE, records=RECORDS, extra_records=["alias IN CNAME etcd"], ipv6=ipv6_loopback_usable()
    ) as server:
        yield server


def cfg_for(ns: BindServer, name: str, *, key_file: Path | None = None, timeout: float = 5.0) -> DnsConfig:
    return DnsConfig.create(
        server=ns.server, zone="dr.test", name=name, tsig_key_file=key_file or ns.key_file, timeout=timeout
    )


# --- switching against the real named ---


async def test_switch_moves_the_name_to_the_new_address(
    ns: BindServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert ns.addresses("etcd") == {"127.0.0.10"}
    caplog.set_level(logging.INFO, logger="etcd_dr.failover")
    result = await switch_name(cfg_for(ns, "etcd"), ["127.0.0.20", "127.0.0.21"])
    assert ns.addresses("etcd") == {"127.0.0.20", "127.0.0.21"}
    assert result.before == ("127.0.0.10",)
    assert result.after == ("127.0.0.20", "127.0.0.21")
    assert result.changed
    assert result.name == "etcd.dr.test."
    assert 0 < result.seconds < 2
    # The TTL asked for is the one served.
    answer = ns.resolver().resolve("etcd.dr.test.", "A")
    assert answer.rrset is not None and answer.rrset.ttl == 30
    steps = [r.getMessage() for r in caplog.records if r.name == "etcd_dr.failover"]
    assert any("answers 127.0.0.10" in s for s in steps)
    assert any("update accepted" in s for s in steps)
    assert any("now answers 127.0.0.20, 127.0.0.21 (confirmed" in s for s in steps)


async def test_ipv6_addresses_become_aaaa_and_the_other_type_is_deleted(ns: BindServer) -> None:
    res = ns.resolver()
    await switch_name(cfg_for(ns, "v6.dr.test."), ["fd00::2", "::1"])
    assert ns.addresses("v6") == {"::1", "fd00::2"}
    a = res.resolve("v6.dr.test.", "A", raise_on_no_answer=False)
    assert a.rrset is None  # the A record 127.0.0.11 is gone
    both = await switch_name(cfg_for(ns, "v6"), ["127.0.0.31", "fd00::3"])
    assert both.before == ("::1", "fd00::2")
    assert ns.addresses("v6") == {"127.0.0.31", "fd00::3"}
    await switch_name(cfg_for(ns, "v6"), ["127.0.0.32"])
    assert ns.addresses("v6") == {"127.0.0.32"}
    assert res.resolve("v6.dr.test.", "AAAA", raise_on_no_answer=False).rrset is None


async def test_rerun_with_the_same_addresses_succeeds_and_changes_nothing(ns: BindServer) -> None:
    first = await switch_name(cfg_for(ns, "again"), ["127.0.0.40", "fd00::40"])
    assert first.changed
    serial = ns.soa_serial()
    second = await switch_name(cfg_for(ns, "again"), ["fd00::40", "127.0.0.40", "127.0.0.40"])
    assert not second.changed
    assert second.before == second.after == ("127.0.0.40", "fd00::40")
    assert ns.addresses("again") == {"127.0.0.40", "fd00::40"}
    assert ns.soa_serial() == serial


async def test_a_name_that_did_not_exist_is_created(ns: BindServer) -> None:
    result = await switch_name(cfg_for(ns, "brand-new"), ["127.0.0.50"])
    assert result.before == ()
    assert ns.addresses("brand-new") == {"127.0.0.50"}


async def test_wrong_tsig_secret_is_badsig_and_changes_nothing(ns: BindServer, tmp_path: Path) -> None:
    bad = ns.write_key_file(tmp_path / "bad.key", secret=new_tsig_secret())
    serial = ns.soa_serial()
    with pytest.raises(DnsError) as info:
        await switch_name(cfg_for(ns, "badsig", key_file=bad), ["127.0.0.60"])
    msg = str(info.value)
    assert ns.server in msg and "badsig.dr.test." in msg and "BADSIG" in msg and "\n" not in msg
    assert info.value.rcode == "BADSIG" and info.value.exit_code == 2
    assert isinstance(info.value, EtcdDrError)
    assert ns.addresses("badsig") == {"127.0.0.13"}
    assert ns.soa_serial() == serial


async def test_unknown_tsig_key_is_badkey(ns: BindServer, tmp_path: Path) -> None:
    other = ns.write_key_file(tmp_path / "other.key", name="not-the-servers-key")
    with pytest.raises(DnsError, match=r"BADKEY") as info:
        await switch_name(cfg_for(ns, "badkey", key_file=other), ["127.0.0.61"])
    assert info.value.rcode == "BADKEY"
    assert ns.addresses("badkey") == {"127.0.0.14"}


async def test_unsigned_update_is_refused(ns: BindServer) -> None:
    cfg = DnsConfig.create(server=ns.server, zone=ZONE, name="unsigned", tsig_key_file=None)
    with pytest.raises(DnsError, match=r"answered REFUSED") as info:
        await switch_name(cfg, ["127.0.0.62"])
    assert info.value.rcode == "REFUSED"
    assert ns.server in str(info.value)
    assert ns.addresses("unsigned") == {"127.0.0.15"}


async def test_server_given_by_ipv6_literal_and_by_name(ns: BindServer) -> None:
    if not ns.ipv6:
        pytest.skip("::1 is not usable on this host")
    cfg = DnsConfig.create(server=ns.server6, zone=ZONE, name="byname", tsig_key_file=ns.key_file)
    await switch_name(cfg, ["127.0.0.70"])
    assert ns.addresses("byname") == {"127.0.0.70"}
    # localhost resolves to 127.0.0.1 or ::1: named listens on both.
    cfg = DnsConfig.create(server=f"localhost:{ns.port}", zone=ZONE, name="byname", tsig_key_file=ns.key_file)
    await switch_name(cfg, ["127.0.0.71"])
    assert ns.addresses("byname") == {"127.0.0.71"}


async def test_a_cname_is_not_overwritten(ns: BindServer) -> None:
    serial = ns.soa_serial()
    with pytest.raises(DnsError, match=r"alias.dr.test. is a CNAME"):
        await switch_name(cfg_for(ns, "alias"), ["127.0.0.75"])
    assert ns.soa_serial() == serial


async def test_a_zone_the_server_does_not_serve_is_an_error(ns: BindServer) -> None:
    cfg = DnsConfig.create(server=ns.server, zone="elsewhere.test", name="etcd", tsig_key_file=ns.key_file)
    with pytest.raises(
        DnsError,
        match=r"^DNS query of etcd.elsewhere.test. at 127.0.0.1:\d+: (A|AAAA) query answered "
        r"REFUSED \(does it serve zone elsewhere.test.\?\)$",
    ) as info:
        await switch_name(cfg, ["127.0.0.76"])
    assert info.value.rcode == "REFUSED"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_server_not_listening_is_a_dns_error_at_once(ns: BindServer) -> None:
    port = _closed_port()
    cfg = DnsConfig.create(
        server=f"127.0.0.1:{port}", zone=ZONE, name="etcd", tsig_key_file=ns.key_file, timeout=2
    )
    started = time.monotonic()
    with pytest.raises(DnsError) as info:
        await switch_name(cfg, ["127.0.0.80"])
    assert time.monotonic() - started < 2
    assert f"127.0.0.1:{port}" in str(info.value) and "etcd.dr.test." in str(info.value)
    assert "refused" in str(info.value)


async def test_server_not_answering_is_a_dns_error_within_the_timeout(ns: BindServer) -> None:
    # A listening socket that never accepts: the TCP handshake completes, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        cfg = DnsConfig.create(
            server=f"127.0.0.1:{port}", zone=ZONE, name="etcd", tsig_key_file=ns.key_file, timeout=0.5
        )
        started = time.monotonic()
        with pytest.raises(DnsError, match=r"no answer within 0.5 s") as info:
            await switch_name(cfg, ["127.0.0.81"])
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2
    assert info.value.rcode == "TIMEOUT"


async def test_bad_addresses_are_usage_errors(ns: BindServer) -> None:
    with pytest.raises(UsageError, match=r"--dns-address 'etcd-1': not an IPv4 or IPv6 address"):
        await switch_name(cfg_for(ns, "etcd"), ["etcd-1"])
    with pytest.raises(UsageError, match=r"--dns-address: no address"):
        await switch_name(cfg_for(ns, "etcd"), [])


# --- flags ---


def _key(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "k.key"
    path.write_text(text)
    return path


def test_create_normalises(tmp_path: Path) -> None:
    key = _key(tmp_path, key_text("upd", "hmac-sha512", new_tsig_secret("hmac-sha512")))
    cfg = DnsConfig.create(
        server="[::1]:5353", zone="Example.COM", name="etcd", tsig_key_file=str(key), ttl=60
    )
    assert (cfg.zone, cfg.name, cfg.ttl, cfg.tsig_key_file) == ("Example.COM.", "etcd.Example.COM.", 60, key)
    assert cfg.tsig_key is not None and cfg.tsig_key.algorithm.to_text() == "hmac-sha512."
    assert "secret" not in repr(cfg)
    assert DnsConfig.create(
        server="ns1", zone="example.com", name="etcd.example.com", tsig_key_file=None
    ).name == ("etcd.example.com.")
    assert (
        DnsConfig.create(server="ns1", zone="example.com.", name="@", tsig_key_file=None).name
        == "example.com."
    )


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("[::1]:53", "::1", 53),
        ("[fd00::1]", "fd00::1", 53),
        ("::1", "::1", 53),
        ("ns1.example.com", "ns1.example.com", 53),
        ("ns1.example.com:1053", "ns1.example.com", 1053),
    ],
)
def test_parse_server(text: str, host: str, port: int) -> None:
    assert parse_server(text) == (host, port)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"server": ""}, r"^--dns-server: give"),
        ({"server": "127.0.0.1:"}, r"^--dns-server '127.0.0.1:': missing port"),
        ({"server": "127.0.0.1:99999"}, r"^--dns-server '127.0.0.1:99999': port '99999'"),
        ({"server": "[::1"}, r"^--dns-server '\[::1': write an IPv6 address"),
        ({"server": "[nope]:53"}, r"^--dns-server '\[nope\]:53': 'nope' is not an IPv6"),
        ({"server": "fd00::1::2"}, r"^--dns-server 'fd00::1::2': not host:port"),
        ({"server": "ns 1:53"}, r"^--dns-server 'ns 1:53': 'ns 1' is not a host name"),
        ({"zone": ""}, r"^--dns-zone: give"),
        ({"zone": "a..b"}, r"^--dns-zone 'a..b': not a valid DNS name"),
        ({"name": ""}, r"^--dns-name: give"),
        ({"name": "etcd.other.test."}, r"^--dns-name 'etcd.other.test.': not inside --dns-zone dr.test."),
        ({"name": "x" * 64}, r"^--dns-name 'x+': not a valid DNS name"),
        ({"ttl": 0}, r"^--dns-ttl 0: must be a whole number"),
        ({"ttl": -5}, r"^--dns-ttl -5: must be"),
        ({"timeout": 0}, r"^DNS timeout 0: must be more than 0"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(
    kwargs: dict[str, object], expected: str, tmp_path: Path
) -> None:
    args: dict[str, object] = {
        "server": "127.0.0.1:53",
        "zone": ZONE,
        "name": "etcd",
        "tsig_key_file": None,
        **kwargs,
    }
    with pytest.raises(UsageError, match=expected) as info:
        DnsConfig.create(**args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, r"cannot read: No such file or directory"),
        ("garbage\n", r"not a BIND key file \(expected key \"NAME\""),
        (key_text("k", "hmac-foo", new_tsig_secret()), r"algorithm 'hmac-foo' is not supported"),
        ('key "k" { algorithm hmac-sha256; secret ""; };\n', r"the key's secret is empty|not a BIND key"),
    ],
    # Named, not by their text: a random secret in a test's id differs between pytest-xdist's workers.
    ids=["missing", "garbage", "unknown-algorithm", "empty-secret"],
)
def test_bad_key_files(content: str | None, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "missing.key" if content is None else _key(tmp_path, content)
    with pytest.raises(UsageError, match=rf"^--dns-tsig-key {path}: {expected}") as info:
        DnsConfig.create(server="127.0.0.1", zone=ZONE, name="etcd", tsig_key_file=path)
    assert "\n" not in str(info.value)


def test_key_file_from_tsig_keygen(tmp_path: Path) -> None:
    # The real tool's output, when it is installed (it comes with bind9).
    keygen = shutil.which("tsig-keygen") or (
        "/usr/sbin/tsig-keygen" if os.path.exists("/usr/sbin/tsig-keygen") else None
    )
    if keygen is None:
        pytest.skip("tsig-keygen not installed (Debian package bind9)")
    out = subprocess.run([keygen, "-a", "hmac-sha384", "etcd-dr"], capture_output=True, text=True, check=True)
    path = _key(tmp_path, out.stdout)
    cfg = DnsConfig.create(server="127.0.0.1", zone=ZONE, name="etcd", tsig_key_file=path)
    assert cfg.tsig_key is not None
    assert cfg.tsig_key.name.to_text() == "etcd-dr."
    assert cfg.tsig_key.algorithm.to_text() == "hmac-sha384."
    assert len(cfg.tsig_key.secret) == 48


def test_addresses_from_endpoints() -> None:
    eps = ["http://127.0.0.1:2379", "[::1]:2379", "10.0.0.1:2379,http://10.0.0.1:2380", "[fd00:0::5]:1"]
    assert addresses_from_endpoints(eps) == ["127.0.0.1", "::1", "10.0.0.1", "fd00::5"]
    with pytest.raises(UsageError, match=r"etcd-0.example.com.*give --dns-address"):
        addresses_from_endpoints(["10.0.0.1:2379", "etcd-0.example.com:2379"])
    with pytest.raises(UsageError, match=r"no endpoints"):
        addresses_from_endpoints([])


# --- hooks ---


async def test_hook_runs_with_the_environment_and_logs_its_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etcd_dr.failover")
    out = tmp_path / "env.txt"
    cmd = (
        f'echo "$ETCD_DR_ACTION $ETCD_DR_NEW_PRIMARY_ENDPOINTS $HOME" > {out}; '
        "echo to-stdout; echo to-stderr >&2"
    )
    await run_hook(cmd, "switch", {"ETCD_DR_NEW_PRIMARY_ENDPOINTS": "10.0.0.1:2379,10.0.0.2:2379"})
    assert out.read_text() == f"switch 10.0.0.1:2379,10.0.0.2:2379 {os.environ.get('HOME', '')}\n"
    lines = [r.getMessage() for r in caplog.records]
    assert "--switch-hook stdout: to-stdout" in lines
    assert "--switch-hook stderr: to-stderr" in lines


async def test_hook_failure_names_exit_code_and_last_stderr_line() -> None:
    with pytest.raises(HookFailed) as info:
        await run_hook("echo first >&2; echo 'fence: no route to lb' >&2; exit 3", "fence", {})
    assert str(info.value) == (
        "--fence-hook \"echo first >&2; echo 'fence: no route to lb' >&2; exit 3\" exited with code 3: "
        "fence: no route to lb"
    )
    assert info.value.returncode == 3 and info.value.exit_code == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as ended.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def test_hook_timeout_kills_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(HookFailed, match=r"did not finish within 0.5 s and was killed: waiting"):
        await run_hook(f"sleep 30 & echo $! > {pidfile}; echo waiting >&2; wait", "switch", {}, timeout=0.5)
    assert time.monotonic() - started < 4
    child = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        await asyncio.sleep(0.02)
    assert not _alive(child)


async def test_hook_that_leaves_a_background_child_does_not_hang(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    await run_hook(f"sleep 30 & echo $! > {pidfile}", "switch", {}, timeout=10)
    assert time.monotonic() - started < 3
    child = int(pidfile.read_text())
    # Not ours to end on success, but this test started it: end it by its pid.
    if _alive(child):
        os.kill(child, 9)
