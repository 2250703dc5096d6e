"""`etcd-dr render`: topology validation, the files it writes, and real etcd members started from them.

The key test renders two sites on 127.0.0.1, makes their certificates with etcd_dr.pki (what pki.sh
does), installs them where the topology says, starts real etcd members from the rendered etcd.conf.yml
files, checks both clusters are healthy with mutual TLS, and runs the rendered mirror unit's ExecStart
line with --once appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from harness.clirun import etcd_dr_sync as etcd_dr

from etcd_dr.cli import main as cli_main
from etcd_dr.etcd import ClientConfig, EtcdClient, EtcdError, Member, Status
from etcd_dr.local.binaries import EtcdBinaries
from etcd_dr.pki_check import check_endpoints
from etcd_dr.render import config_file_of, install_plan, make_pki, mirror_argv, render
from etcd_dr.topology import Topology, TopologyError, load_topology, parse_topology

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "topology.yaml"
ETCD_DR_BIN = Path(sys.executable).parent / "etcd-dr"


def exec_start(unit_text: str) -> list[str]:
    """The argv systemd would run for a unit's ExecStart (continuations, quotes, %% and $$ undone)."""
    text = unit_text.replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line[len("ExecStart=") :])]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------------------------------
# validation


BAD = """\
sites:
  primary:
    role: primary
    members:
      - {name: etcd-1, host: 10.0.0.1}
      - {name: etcd-1, host: 10.0.0.2, client_port: 70000}
      - {name: etcd-3, host: "not a host"}
      - {name: etcd-4, host: 10.0.0.1, colour: blue}
    tls:
      server: {cert: server.pem}
  standby:
    role: primary
    members:
      - {name: etcd-s1, host: 10.0.1.1, peer_port: 2379}
mirror:
  site: elsewhere
"""


def test_several_mistakes_each_reported_nothing_written(tmp_path: Path) -> None:
    f = tmp_path / "topology.yaml"
    f.write_text(BAD)
    out = tmp_path / "out"
    run = etcd_dr("render", str(f), "--out", str(out))
    assert run.code == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    expected = [
        f"{f}: sites.primary.members[1].client_port: must be between 1 and 65535, not 70000",
        f"{f}: sites.primary.members[2].host: must be an IP address or a DNS name, not 'not a host'",
        f"{f}: sites.primary.members[3].colour: unknown field",
        f"{f}: sites.primary.tls.server.cert: must be an absolute path (a path on the host), "
        "not 'server.pem'",
        f"{f}: sites: exactly one site must have `role: primary` (found 2: primary, standby)",
        f"{f}: sites.primary.members[1].name: duplicate member name 'etcd-1' (also members[0])",
        f"{f}: sites.primary.members[3].client_port: 10.0.0.1:2379 is already used by "
        "sites.primary.members[0].client_port",
        f"{f}: sites.primary.members[3].peer_port: 10.0.0.1:2380 is already used by "
        "sites.primary.members[0].peer_port",
        f"{f}: sites.standby.members[0].peer_port: 10.0.1.1:2379 is already used by "
        "sites.standby.members[0].client_port",
        f"{f}: mirror.site: unknown site 'elsewhere': use one of primary, standby",
    ]
    for line in expected:
        assert line in lines, f"{line!r} not in:\n{run.stderr}"
    assert lines[-1] == f"etcd-dr: error: {f}: {len(expected)} problems in the topology (listed above)"
    assert len(lines) == len(expected) + 1
    assert "Traceback" not in run.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "expected a mapping with `sites:` at the top"),
        ("sites: [\n", "line 2 column 1: expected"),
        (
            "sites:\n  a: {role: primary, members: [{name: m, host: h1}]}\n"
            "  a: {members: [{name: n, host: h2}]}\n",
            "line 3 column 3: duplicate key 'a'",
        ),
        (
            "sites:\n  a: {role: primary, members: [{name: m, host: h}]}\n",
            "sites: must name exactly two sites",
        ),
        (
            "sites:\n  a: {role: primary, members: [{name: m, host: h}]}\n"
            "  b: {role: standby, members: []}\n",
            "sites.b.members: a site needs at least one member",
        ),
        (
            "sites:\n  a: {role: boss, members: [{name: m, host: h}]}\n"
            "  b: {members: [{name: n, host: h}]}\n",
            "sites.a.role: must be 'primary' or 'standby'",
        ),
        (
            "sites:\n  a: {role: primary, members: [{name: m, host: h}], extra_flags: {data-dir: /x}}\n"
            "  b: {members: [{name: n, host: h2}]}\n",
            "sites.a.extra_flags: 'data-dir' is set by the topology (members[].data_dir)",
        ),
        (
            "sites:\n  a: {role: primary, members: [{name: m, host: h}],"
            " tls: {mirror_client: {cert: '/p/{member}.pem'}}}\n  b: {members: [{name: n, host: h2}]}\n",
            "sites.a.tls.mirror_client.cert: '/p/{member}.pem': unknown placeholder {member}",
        ),
        (
            "sites:\n  a: {role: primary, members: [{name: m, host: h}]}\n"
            "  b: {members: [{name: n, host: h2}]}\nmirror: {prefixx: /a}\n",
            "mirror.prefixx: unknown field (did you mean prefix?)",
        ),
        (
            "sites:\n  a: {role: primary, members: [{name: m, host: h}]}\n"
            "  b: {members: [{name: n, host: h2}]}\nclients: {applications: [{name: kube-apiserver}]}\n",
            "clients.applications: the applications need a name that follows the primary",
        ),
        (
            "sites:\n  a: {role: primary, client_dns: e.x, members: [{name: m, host: h}]}\n"
            "  b: {members: [{name: n, host: h2}]}\nclients: {applications: [{name: x}, {name: x}]}\n",
            "clients.applications: duplicate name 'x'",
        ),
        (
            "sites:\n  a: {role: primary, members: [{name: m, host: h}]}\n"
            "  b: {members: [{name: n, host: h2}]}\nclients: {ca: one}\n",
            "clients.ca: must be 'bundle' or 'shared'",
        ),
    ],
)
def test_one_problem(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology(text, source="t.yaml")
    assert any(p.startswith("t.yaml: ") and message in p for p in err.value.problems), err.value.problems


def test_members_sharing_a_host_need_their_own_files(tmp_path: Path) -> None:
    text = (
        "sites:\n"
        "  a:\n    role: primary\n    members:\n"
        "      - {name: m1, host: 127.0.0.1, client_port: 1001, peer_port: 1002}\n"
        "      - {name: m2, host: 127.0.0.1, client_port: 1003, peer_port: 1004}\n"
        "  b:\n    members: [{name: n, host: 10.0.0.2}]\n"
    )
    f = tmp_path / "t.yaml"
    f.write_text(text)
    run = etcd_dr("render", str(f), "--out", str(tmp_path / "out"))
    assert run.code == 2
    assert (
        f"{f}: /etc/etcd/pki/server.pem on host 127.0.0.1 would receive both "
        "pki/a/m1-server.pem and pki/a/m2-server.pem" in run.stderr
    )
    assert "data dir" not in run.stderr  # data dirs default to /var/lib/etcd/<name>: distinct
    assert not (tmp_path / "out").exists()


def test_missing_topology_file(tmp_path: Path) -> None:
    run = etcd_dr("render", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert run.code == 2
    assert run.last_line == f"etcd-dr: error: {tmp_path / 'nope.yaml'}: no such file"


# ---------------------------------------------------------------------------------------------------
# the example


EXPECTED_FILES = {
    "README.txt",
    "primary/pki.sh",
    "standby/pki.sh",
    "standby/etcd-dr-mirror.service",
    "standby/etcd-dr-mirror.env",
    "clients-pki.sh",
    *(f"primary/etcd-p{i}/{f}" for i in (1, 2, 3) for f in ("etcd.conf.yml", "etcd.service")),
    *(f"standby/etcd-s{i}/{f}" for i in (1, 2, 3) for f in ("etcd.conf.yml", "etcd.service")),
}


def test_example_renders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = etcd_dr("render", str(EXAMPLE), "--out", str(out))
    assert run.code == 0, run.stderr
    assert f"wrote {len(EXPECTED_FILES)} files under {out}" in run.stdout
    assert set(snapshot(out)) == EXPECTED_FILES

    config = yaml.safe_load((out / "primary/etcd-p2/etcd.conf.yml").read_text())
    assert config == {
        "name": "etcd-p2",
        "data-dir": "/var/lib/etcd/etcd-p2",
        "listen-client-urls": "https://192.168.1.12:2379",
        "advertise-client-urls": "https://192.168.1.12:2379",
        "listen-peer-urls": "https://192.168.1.12:2380",
        "initial-advertise-peer-urls": "https://192.168.1.12:2380",
        "initial-cluster": "etcd-p1=https://192.168.1.11:2380,etcd-p2=https://192.168.1.12:2380,"
        "etcd-p3=https://192.168.1.13:2380",
        "initial-cluster-token": "etcd-primary",
        "initial-cluster-state": "new",
        "client-transport-security": {
            "cert-file": "/etc/etcd/pki/server.pem",
            "key-file": "/etc/etcd/pki/server-key.pem",
            "client-cert-auth": True,
            "trusted-ca-file": "/etc/etcd/pki/ca.pem",
        },
        "peer-transport-security": {
            "cert-file": "/etc/etcd/pki/peer.pem",
            "key-file": "/etc/etcd/pki/peer-key.pem",
            "client-cert-auth": True,
            "trusted-ca-file": "/etc/etcd/pki/ca.pem",
        },
        "logger": "zap",
        "log-outputs": ["stderr"],
        # Both sites take the mirror's big txns (each is the standby in turn).
        "max-txn-ops": 4096,
        "max-request-bytes": 10 * 1024 * 1024,
        "auto-compaction-mode": "periodic",
        "auto-compaction-retention": "1h",
        "quota-backend-bytes": 8589934592,
    }
    standby = yaml.safe_load((out / "standby/etcd-s3/etcd.conf.yml").read_text())
    assert standby["initial-cluster-token"] == "etcd-standby"
    assert standby["listen-client-urls"] == "https://192.168.2.13:2379"
    assert (standby["max-txn-ops"], standby["max-request-bytes"]) == (4096, 10 * 1024 * 1024)

    unit = (out / "primary/etcd-p1/etcd.service").read_text()
    for line in ("Type=notify", "Restart=always", "RestartSec=5", "LimitNOFILE=65536"):
        assert line in unit.splitlines()
    assert exec_start(unit) == ["/usr/bin/etcd", "--config-file", "/etc/etcd/etcd.conf.yml"]

    mirror = (out / "standby/etcd-dr-mirror.service").read_text()
    assert "Restart=always" in mirror.splitlines()
    assert exec_start(mirror) == [
        "/usr/local/bin/etcd-dr", "mirror",
        "https://192.168.2.11:2379,https://192.168.2.12:2379,https://192.168.2.13:2379",
        "--endpoints", "https://192.168.1.11:2379,https://192.168.1.12:2379,https://192.168.1.13:2379",
        "--cacert", "/etc/etcd-dr/pki/primary/ca.pem",
        "--cert", "/etc/etcd-dr/pki/primary/mirror.pem",
        "--key", "/etc/etcd-dr/pki/primary/mirror-key.pem",
        "--dest-cacert", "/etc/etcd-dr/pki/standby/ca.pem",
        "--dest-cert", "/etc/etcd-dr/pki/standby/mirror.pem",
        "--dest-key", "/etc/etcd-dr/pki/standby/mirror-key.pem",
        "--state-prefix", "/etcd-dr/",
        "--metrics-addr", "192.168.2.11:9379",
    ]  # fmt: skip

    readme = (out / "README.txt").read_text()
    assert "pki/primary/etcd-p1-server.pem      ->  /etc/etcd/pki/server.pem" in readme
    assert "pki/primary/mirror-key.pem      ->  /etc/etcd-dr/pki/primary/mirror-key.pem" in readme
    assert "to the mirror host 192.168.2.11" in readme
    assert stat.S_IMODE((out / "primary/pki.sh").stat().st_mode) == 0o755

    # A second render refuses to overwrite anything, and writes nothing; --force rewrites.
    before = snapshot(out)
    (out / "primary/etcd-p1/etcd.service").write_text("edited by hand\n")
    again = etcd_dr("render", str(EXAMPLE), "--out", str(out))
    assert again.code == 2
    assert again.last_line.startswith(f"etcd-dr: error: --out {out}: {out}/")
    assert "already exists (and 17 more); nothing written (use --force to overwrite)" in again.last_line
    assert (out / "primary/etcd-p1/etcd.service").read_text() == "edited by hand\n"
    forced = etcd_dr("render", str(EXAMPLE), "--out", str(out), "--force")
    assert forced.code == 0, forced.stderr
    assert snapshot(out) == before


def test_mirror_flags_follow_the_topology() -> None:
    base = load_topology(EXAMPLE)

    def argv(**mirror: Any) -> list[str]:
        t = Topology.model_validate({**base.model_dump(), "mirror": {**base.mirror.model_dump(), **mirror}})
        return mirror_argv(t)[17:]  # after the connection flags

    metrics = ["--metrics-addr", "192.168.2.11:9379"]
    assert argv() == ["--state-prefix", "/etcd-dr/", *metrics]
    assert argv(prefix="/a/", dest_prefix="") == [
        "--prefix",
        "/a/",
        "--no-dest-prefix",
        "--state-prefix",
        "/etcd-dr/",
        *metrics,
    ]
    assert argv(prefix="/a/", dest_prefix="/b/", exclude=["/a/x"], extra_args=["--max-txn-ops", "64"]) == [
        "--prefix", "/a/", "--dest-prefix", "/b/", "--exclude", "/a/x", "--state-prefix", "/etcd-dr/",
        *metrics, "--max-txn-ops", "64",
    ]  # fmt: skip
    assert argv(ordered_prefix=["/election/", "/locks/"]) == [
        "--ordered-prefix", "/election/", "--ordered-prefix", "/locks/",
        "--state-prefix", "/etcd-dr/", *metrics,
    ]  # fmt: skip
    # The topology's own --metrics-addr replaces the default (twice would be refused); null turns it off.
    assert argv(extra_args=["--metrics-addr=0.0.0.0:1"]) == [
        "--state-prefix",
        "/etcd-dr/",
        "--metrics-addr=0.0.0.0:1",
    ]
    assert argv(metrics_port=None) == ["--state-prefix", "/etcd-dr/"]
    assert argv(host="mirror.example.com", metrics_port=9000)[-1] == "0.0.0.0:9000"


def test_example_pki_script_makes_every_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert etcd_dr("render", str(EXAMPLE), "--out", str(out)).code == 0
    # The shell runs pki.sh with ETCD_DR pointing at a recorder; each recorded command then runs through
    # the real command line in this process (a new interpreter per certificate would be slow).
    calls = tmp_path / "calls.jsonl"
    recorder = tmp_path / "record"
    recorder.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(calls)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    recorder.chmod(0o755)
    done = subprocess.run(
        ["sh", "primary/pki.sh"],
        cwd=out,
        env={**os.environ, "ETCD_DR": str(recorder)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    commands = [json.loads(line) for line in calls.read_text().splitlines()]
    assert commands[0] == ["pki", "init", "--dir", "pki/primary", "--cn", "primary etcd CA"]
    assert len(commands) == 1 + 2 * 3 + 1  # the CA, server + peer per member, the mirror's client cert
    monkeypatch.chdir(out)
    handlers = logging.getLogger().handlers[:]
    try:
        for args in commands:
            cli_main(args)
    finally:
        logging.getLogger().handlers[:] = handlers
    made = {p.name for p in (out / "pki/primary").iterdir()}
    # Every certificate the install plan names for site primary exists.
    plan = install_plan(load_topology(EXAMPLE))
    needed = {Path(c.source).name for c in plan if c.source.startswith("pki/primary/") and c.app is None}
    assert needed <= made, needed - made
    cert = x509.load_pem_x509_certificate((out / "pki/primary/etcd-p1-server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in sans} == {
        "192.168.1.11",
        "etcd.primary.example.com",
        "etcd.example.com",  # the name clients use, which a failover moves (clients.dns)
        "localhost",
        "127.0.0.1",
    }
    assert stat.S_IMODE((out / "pki/primary/etcd-p1-server-key.pem").stat().st_mode) == 0o600


# ---------------------------------------------------------------------------------------------------
# real etcd members from the rendered files


def free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def clean_env() -> dict[str, str]:
    # ETCD_* / ETCDCTL_* in the environment would change what etcd and etcd-dr do.
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}


@dataclass
class Proc:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def spawn(name: str, port: int, argv: list[str], log_dir: Path) -> Proc:
    log = log_dir / f"{name}.log"
    with log.open("wb") as f:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
    return Proc(name, port, popen, log)


def stop(procs: Sequence[Proc], last: int | None = None) -> None:
    """End the processes this test started, by their PIDs; the one on client port `last` (the leader)
    after the others: a leader stopped along with its followers waits seconds to hand over."""
    groups = [[p for p in procs if p.port != last], [p for p in procs if p.port == last]]
    for group in groups:
        for p in group:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in group:
            try:
                p.popen.wait(10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(10)


async def leader_port(config: ClientConfig) -> int | None:
    async with EtcdClient(config) as client:
        for ep, st in (await client.statuses()).items():
            if isinstance(st, Status) and st.header.member_id == st.leader:
                return ep.port
    return None


def topology_doc(etcd: Path, hosts: Path, data: Path, ports: list[int], token: str) -> dict[str, Any]:
    """Two sites on 127.0.0.1: "dc1" (3 members, primary) and "dc2" (1 member). `hosts` stands for the
    hosts' file systems: the TLS files go there, one directory per member."""

    def tls(site: str) -> dict[str, Any]:
        m = f"{hosts}/{site}/{{member}}"
        c = f"{hosts}/mirror-host/{{site}}"
        return {
            "server": {"ca": f"{m}/ca.pem", "cert": f"{m}/server.pem", "key": f"{m}/server-key.pem"},
            "peer": {"ca": f"{m}/ca.pem", "cert": f"{m}/peer.pem", "key": f"{m}/peer-key.pem"},
            "mirror_client": {"ca": f"{c}-ca.pem", "cert": f"{c}-client.pem", "key": f"{c}-client-key.pem"},
        }

    def members(prefix: str, count: int, first_port: int) -> list[dict[str, Any]]:
        return [
            {
                "name": f"{prefix}{i}",
                "host": "127.0.0.1",
                "client_port": ports[first_port + 2 * i],
                "peer_port": ports[first_port + 2 * i + 1],
                "data_dir": str(data / f"{prefix}{i}"),
            }
            for i in range(count)
        ]

    return {
        "sites": {
            "dc1": {
                "role": "primary",
                "client_dns": "localhost",
                "members": members("p", 3, 0),
                "tls": tls("dc1"),
                "etcd_binary": str(etcd),
                # Members share this host: each needs its own configuration file and unit name.
                "config_file": f"{hosts}/dc1/{{member}}/etcd.conf.yml",
                "unit_name": "etcd-{member}.service",
                "cluster_token": f"dc1-{token}",
                # Quicker elections than etcd's defaults, for the test; written into etcd.conf.yml.
                "extra_flags": {"heartbeat-interval": 50, "election-timeout": 500},
            },
            "dc2": {
                "client_dns": "localhost",
                "members": members("s", 1, 6),
                "tls": tls("dc2"),
                "etcd_binary": str(etcd),
                "config_file": f"{hosts}/dc2/{{member}}/etcd.conf.yml",
                "unit_name": "etcd-{member}.service",
                "cluster_token": f"dc2-{token}",
                "extra_flags": {"heartbeat-interval": 10, "election-timeout": 100},
            },
        },
        "mirror": {
            "prefix": "/app/",
            "etcd_dr_binary": str(ETCD_DR_BIN),
            "metrics_port": ports[8],
            "env_file": f"{hosts}/mirror-host/mirror.env",
        },
    }


async def wait_healthy(
    config: ClientConfig, procs: Sequence[Proc], size: int, timeout: float = 60
) -> list[Member]:
    """Every member answers Status with one leader; returns the member list."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    async with EtcdClient(config) as client:
        while True:
            for p in procs:
                if p.popen.poll() is not None:
                    pytest.fail(f"etcd {p.name} exited with {p.popen.returncode}:\n{p.tail()}")
            try:
                statuses = await client.statuses()
                ok = [s for s in statuses.values() if isinstance(s, Status)]
                leaders = {s.leader for s in ok}
                if len(ok) == size and len(leaders) == 1 and 0 not in leaders:
                    members = await client.member_list()
                    if len(members) == size:
                        return members
                last = repr(statuses)
            except EtcdError as e:
                last = str(e)
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
                pytest.fail(f"not healthy within {timeout} s (last: {last}):\n{logs}")
            await asyncio.sleep(0.1)


@pytest.fixture
def data_root() -> Iterator[Path]:
    # Member data on tmpfs when there is one: etcd's fsyncs then cost nothing.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix="etcd-dr-render-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(240)
async def test_rendered_sites_start_and_mirror(
    etcd_bin: EtcdBinaries, tmp_path: Path, data_root: Path
) -> None:
    hosts = tmp_path / "hosts"
    doc = topology_doc(etcd_bin.etcd, hosts, data_root, free_ports(9), uuid.uuid4().hex[:8])
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"
    run = etcd_dr("render", str(topo_file), "--out", str(out))
    assert run.code == 0, run.stderr
    topology = load_topology(topo_file)
    assert {r.path.as_posix() for r in render(topology)} == set(snapshot(out))

    # What the sites' pki.sh do, then the copies README.txt lists (every host is this machine; the
    # units are not installed, their ExecStart lines are run below).
    make_pki(topology, out / "pki")
    for copy in install_plan(topology):
        if not copy.dest.startswith("/etc/systemd/"):
            assert copy.dest.startswith(f"{hosts}/"), copy
            Path(copy.dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(out / copy.source, copy.dest)

    def client_config(site: str) -> ClientConfig:
        d = hosts / "mirror-host"
        endpoints = [f"https://127.0.0.1:{m.client_port}" for m in topology.sites[site].members]
        return ClientConfig.create(
            endpoints,
            cacert=d / f"{site}-ca.pem",
            cert=d / f"{site}-client.pem",
            key=d / f"{site}-client-key.pem",
            dial_timeout=2.0,
            request_timeout=5.0,
        )

    dc1, dc2 = client_config("dc1"), client_config("dc2")

    procs: list[Proc] = []
    try:
        for site_name, site in topology.sites.items():
            for m in site.members:
                unit_argv = exec_start((out / site_name / m.name / "etcd.service").read_text())
                assert unit_argv == [str(etcd_bin.etcd), "--config-file", config_file_of(site_name, site, m)]
                procs.append(spawn(m.name, m.client_port, unit_argv, tmp_path))

        members = await wait_healthy(dc1, [p for p in procs if p.name.startswith("p")], 3)
        assert sorted(m.name for m in members) == ["p0", "p1", "p2"]
        assert all(u.startswith("https://127.0.0.1:") for m in members for u in m.peer_urls + m.client_urls)
        assert len(await wait_healthy(dc2, [p for p in procs if p.name.startswith("s")], 1)) == 1

        # Mutual TLS: the members present certificates naming them, signed by their own site's CA, and
        # refuse a client certificate of the other site.
        good = await asyncio.to_thread(
            check_endpoints,
            [str(e) for e in dc1.endpoints],
            cacert=hosts / "mirror-host/dc1-ca.pem",
            cert=hosts / "mirror-host/dc1-client.pem",
            key=hosts / "mirror-host/dc1-client-key.pem",
        )
        assert good.exit_code == 0, good.certificates
        p0 = topology.sites["dc1"].members[0]
        crossed = await asyncio.to_thread(
            check_endpoints,
            # The client port, and the peer port (peer-transport-security client-cert-auth).
            [f"https://127.0.0.1:{p0.client_port}", f"https://127.0.0.1:{p0.peer_port}"],
            cacert=hosts / "mirror-host/dc1-ca.pem",
            cert=hosts / "mirror-host/dc2-client.pem",
            key=hosts / "mirror-host/dc2-client-key.pem",
        )
        assert crossed.exit_code == 2
        for c in crossed.certificates:
            assert "refused our client certificate" in (c.error or ""), c

        async with EtcdClient(dc1) as primary:
            await primary.put(b"/app/config", b"v1")
            await primary.put(b"/other/key", b"not mirrored")

        # The rendered mirror unit's command line, with --once: copies the primary into the standby.
        argv = exec_start((out / "dc2/etcd-dr-mirror.service").read_text())
        assert argv == mirror_argv(topology)
        proc = await asyncio.create_subprocess_exec(
            *argv, "--once", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env()
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), 90)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        assert proc.returncode == 0, stderr.decode()

        async with EtcdClient(dc2) as standby:
            got = await standby.get(b"/app/config")
            assert got is not None and got.value == b"v1"
            assert await standby.get(b"/other/key") is None  # mirror.prefix is /app/
            assert (await standby.get_prefix(b"/etcd-dr/")).kvs  # the mirror's checkpoint
    finally:
        leader: int | None = None
        with contextlib.suppress(Exception):
            leader = await asyncio.wait_for(leader_port(dc1), 5)
        stop(procs, last=leader)


# ---------------------------------------------------------------------------------------------------
# units an auditor would sign


def unit_settings(unit_text: str) -> dict[str, list[str]]:
    """KEY -> every value it is given in the unit (comments and ExecStart continuations left out)."""
    out: dict[str, list[str]] = {}
    for line in unit_text.replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_units_run_unprivileged_sandboxed_with_metrics_and_no_secret(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert etcd_dr("render", str(EXAMPLE), "--out", str(out)).code == 0
    member = unit_settings((out / "primary/etcd-p1/etcd.service").read_text())
    assert member["User"] == ["etcd"] and member["Group"] == ["etcd"]
    # systemd makes the data dir /var/lib/etcd/etcd-p1, owned by etcd, before etcd starts.
    assert member["StateDirectory"] == ["etcd/etcd-p1"] and member["StateDirectoryMode"] == ["0700"]
    assert member["NoNewPrivileges"] == ["yes"]

    text = (out / "standby/etcd-dr-mirror.service").read_text()
    mirror = unit_settings(text)
    assert mirror["User"] == ["etcd-dr"] and mirror["Group"] == ["etcd-dr"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
    }.items():
        assert mirror[key] == [value], key
    assert "ReadWritePaths" not in mirror  # it writes nothing on its host
    assert mirror["ReadOnlyPaths"] == ["/etc/etcd-dr/pki/primary /etc/etcd-dr/pki/standby"]
    assert mirror["EnvironmentFile"] == ["/etc/etcd-dr/mirror.env"]
    argv = exec_start(text)
    assert argv[argv.index("--metrics-addr") + 1] == "192.168.2.11:9379"
    assert not any("password" in a.lower() or a.startswith("--user") for a in argv)
    assert not [line for line in text.lower().splitlines() if "password" in line and not line.startswith("#")]

    env = out / "standby/etcd-dr-mirror.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert all(line.startswith("#") or not line for line in env.read_text().splitlines())  # no secret
    plan = [c for c in install_plan(load_topology(EXAMPLE)) if c.source == "standby/etcd-dr-mirror.env"]
    assert [(c.host, c.dest, c.private) for c in plan] == [("192.168.2.11", "/etc/etcd-dr/mirror.env", True)]
    readme = (out / "README.txt").read_text()
    assert "useradd --system --no-create-home --shell /usr/sbin/nologin etcd-dr" in readme


def test_ha_pair_gets_one_unit_per_host(tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    del doc["mirror"]["host"]
    doc["mirror"]["hosts"] = ["192.168.2.11", "192.168.2.12"]
    topology = parse_topology(yaml.safe_dump(doc))
    files = {f.path.as_posix(): f for f in render(topology)}
    units = sorted(p for p in files if p.endswith("etcd-dr-mirror.service"))
    assert units == [
        "standby/mirror@192.168.2.11/etcd-dr-mirror.service",
        "standby/mirror@192.168.2.12/etcd-dr-mirror.service",
    ]
    for host, path in zip(("192.168.2.11", "192.168.2.12"), units, strict=True):
        argv = exec_start(files[path].content)
        assert argv[argv.index("--metrics-addr") + 1] == f"{host}:9379"
        assert argv[:-2] == mirror_argv(topology, host)[:-2]
    for host in ("192.168.2.11", "192.168.2.12"):
        dests = {c.dest for c in install_plan(topology) if c.host == host and c.member is None}
        assert {"/etc/systemd/system/etcd-dr-mirror.service", "/etc/etcd-dr/mirror.env"} <= dests
        assert "/etc/etcd-dr/pki/primary/mirror-key.pem" in dests
    doc["mirror"]["host"] = "192.168.2.11"
    with pytest.raises(TopologyError, match=r"mirror\.hosts: give `host`"):
        parse_topology(yaml.safe_dump(doc))


def test_every_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    doc = yaml.safe_load(EXAMPLE.read_text())
    del doc["mirror"]["host"]
    doc["mirror"]["hosts"] = ["192.168.2.11", "192.168.2.12"]
    # verify checks that ExecStart's binary exists: point both at executables of this machine.
    for site in doc["sites"].values():
        site["etcd_binary"] = "/bin/sh"
    doc["mirror"]["etcd_dr_binary"] = str(ETCD_DR_BIN)
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert etcd_dr("render", str(topo), "--out", str(out)).code == 0
    units = sorted(out.rglob("*.service"))
    assert len(units) == 6 + 2
    for unit in units:
        # systemd-analyze wants the unit's own name: copy each to a directory of its own.
        d = tmp_path / "verify" / unit.relative_to(out).parent
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(unit, d / unit.name)
        done = subprocess.run(
            [analyze, "verify", "--man=no", str(d / unit.name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        # Unknown or misspelt settings are only warnings (exit 0): no output at all is the bar.
        assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
            unit,
            done.stdout + done.stderr,
        )


def test_clients_script_bundles_both_cas_and_issues_the_applications_certificates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert etcd_dr("render", str(EXAMPLE), "--out", str(out)).code == 0
    for site in ("primary", "standby"):
        (out / "pki" / site).mkdir(parents=True)
        (out / "pki" / site / "ca.pem").write_text(f"{site} CA\n")
    calls = tmp_path / "calls.jsonl"
    recorder = tmp_path / "record"
    recorder.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(calls)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    recorder.chmod(0o755)
    env = {**os.environ, "ETCD_DR": str(recorder)}
    done = subprocess.run(
        ["sh", "clients-pki.sh"], cwd=out, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (out / "pki/clients-ca.pem").read_text() == "primary CA\nstandby CA\n"
    commands = [json.loads(line) for line in calls.read_text().splitlines()]
    assert commands == [
        ["pki", "issue", "--dir", "pki/primary", "--profile", "client", "--name", "kube-apiserver-client",
         "--cn", "kube-apiserver"],
        ["pki", "issue", "--dir", "pki/primary", "--profile", "client", "--name", "patroni-client",
         "--cn", "patroni"],
    ]  # fmt: skip
    # Without a site's CA, it says which script to run first.
    (out / "pki/standby/ca.pem").unlink()
    done = subprocess.run(
        ["sh", "clients-pki.sh"], cwd=out, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1 and "run standby/pki.sh first" in done.stderr, done.stderr
    # Where the files go: kube-apiserver's are kubeadm's paths on its three hosts.
    plan = [c for c in install_plan(load_topology(EXAMPLE)) if c.app == "kube-apiserver"]
    assert {c.host for c in plan} == {"192.168.1.21", "192.168.1.22", "192.168.1.23"}
    assert {(c.source, c.dest, c.private) for c in plan} == {
        ("pki/clients-ca.pem", "/etc/kubernetes/pki/etcd/ca.crt", False),
        ("pki/primary/kube-apiserver-client.pem", "/etc/kubernetes/pki/apiserver-etcd-client.crt", False),
        ("pki/primary/kube-apiserver-client-key.pem", "/etc/kubernetes/pki/apiserver-etcd-client.key", True),
    }
    # The standby's members trust the primary's CA for clients too; the primary's only their own.
    members = {(c.site, c.dest): c.source for c in install_plan(load_topology(EXAMPLE)) if c.member}
    assert members[("standby", "/etc/etcd/pki/ca.pem")] == "pki/clients-ca.pem"
    assert members[("primary", "/etc/etcd/pki/ca.pem")] == "pki/primary/ca.pem"
    readme = (out / "README.txt").read_text()
    assert (
        "--etcd-servers=https://etcd.example.com:2379 --etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt" in readme
    )
