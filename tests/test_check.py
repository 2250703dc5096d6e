"""`etcd-dr check` (failover readiness) on real etcd 3.4 and 3.5, and the same checks run by a mirror
and exported as metrics.

One module-wide pair per etcd version: two single-member clusters with auth on (root, etcd-dr's user
`etcd-dr` holding root, and `weak`, who may read and write everything but holds no root), and a mirror
process between them (as root) with a periodic verify, readiness checks every second and /metrics.
Each item's ok and failing path is one run of the command against it; the test that stops the mirror
starts it again. BIND (tests/harness/bind.py) serves the clients' name; its tests are skipped where
named is absent. A TLS cluster with a certificate expiring in 5 days gives the certificates item.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness.bind import BindServer, bind_server, named_unavailable_reason, new_tsig_secret
from harness.clirun import Run, etcd_dr
from harness.mirrorproc import MirrorProcess

from etcd_dr import pki
from etcd_dr.config import MirrorConfig
from etcd_dr.etcd import ClientConfig, EtcdClient
from etcd_dr.failover.config import MoveConfig
from etcd_dr.failover.dns import DnsConfig
from etcd_dr.local.binaries import EtcdBinaries
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import ClusterTLS, TLSFiles
from etcd_dr.metrics import MirrorCollector
from etcd_dr.mirror.stats import MirrorStats
from etcd_dr.readiness import ITEMS, CheckOptions, Item, check, hook_problem
from etcd_dr.state.records import REPLAY, Checkpoint

ROOT = ("root", "rootpw")
DR = ["--user", "etcd-dr:drpw", "--dest-user", "etcd-dr:drpw"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_users(cluster: EtcdCluster) -> EtcdCluster:
    ctl = cluster.etcdctl
    ctl("user", "add", "etcd-dr:drpw")
    ctl("user", "grant-role", "etcd-dr", "root")
    ctl("role", "add", "everything")
    ctl("role", "grant-permission", "everything", "readwrite", "--from-key", "")
    ctl("user", "add", "weak:weakpw")
    ctl("user", "grant-role", "weak", "everything")
    return cluster


@dataclass
class Pair:
    src: EtcdCluster
    dst: EtcdCluster
    directory: Path
    mirror: MirrorProcess | None = None
    metrics_port: int = 0

    def args(self, *more: str, users: list[str] = DR) -> list[str]:
        return ["check", self.dst.endpoints[0], "--endpoints", self.src.endpoints[0], *users, *more]

    def start_mirror(self) -> None:
        self.metrics_port = _free_port()
        self.mirror = MirrorProcess(
            self.dst.endpoints[0],
            self.src.endpoints[0],
            "--user",
            "root:rootpw",
            "--dest-user",
            "root:rootpw",
            "--heartbeat-interval",
            "200ms",
            "--verify-every",
            "1s",
            "--check-every",
            "1s",
            "--metrics-addr",
            f"127.0.0.1:{self.metrics_port}",
            log_path=self.directory / "mirror.log",
        ).start()

    def client(self, cluster: EtcdCluster) -> EtcdClient:
        return EtcdClient(
            ClientConfig.create(cluster.endpoints, user="root", password="rootpw", dial_timeout=10.0)
        )

    async def caught_up(self, timeout: float = 60) -> None:
        """Until the mirror holds its lock and has applied the source's revision read on entry."""
        async with self.client(self.src) as s, self.client(self.dst) as d:
            target = (await s.status()).revision
            deadline = time.monotonic() + timeout
            while True:
                found = await d.range(b"/etcd-dr/mirror/", b"/etcd-dr/mirror0")
                locks = await d.range(b"/etcd-dr/lock/", b"/etcd-dr/lock0")
                ck = [Checkpoint.decode(kv.value) for kv in found.kvs]
                if locks.kvs and ck and ck[0].phase == REPLAY and ck[0].revision >= target:
                    return
                assert time.monotonic() < deadline, self.mirror.log_text() if self.mirror else ""
                await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def pair(etcd_bin: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    d = tmp_path_factory.mktemp(f"check-{etcd_bin.minor}")
    src = EtcdCluster(etcd_bin, 1, name="src", auth=ROOT)
    dst = EtcdCluster(etcd_bin, 1, name="dst", auth=ROOT)
    p = Pair(src, dst, d)
    try:
        _with_users(src.start())
        _with_users(dst.start())
        src.etcdctl("put", "/app/a", "1")
        p.start_mirror()
        yield p
    finally:
        if p.mirror is not None:
            p.mirror.kill()
        src.stop()
        dst.stop()


def items(run: Run) -> dict[str, dict[str, str]]:
    """The items of a `check --json` run: name -> {level, message}."""
    assert run.code in (0, 1), run.stderr
    report = json.loads(run.stdout)
    assert report["ready"] is (run.code == 0)
    return {i["item"]: {"level": i["level"], "message": i["message"]} for i in report["items"]}


# ---- the whole pair ready, in lines and in JSON ---------------------------------------------------


async def test_ready_pair_every_item_ok(pair: Pair) -> None:
    await pair.caught_up()
    run = await etcd_dr(*pair.args("--switch-hook", "/bin/true", "--verify"))
    assert run.code == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    found = {line.split()[1]: line for line in lines[1:-2]}
    assert list(found) == list(ITEMS), run.stdout
    assert all(line.split()[0] == "ok" for line in found.values()), run.stdout
    assert "--verify now: equal" in found["verify"]
    assert "auth is on at both sites and etcd-dr holds root" in found["fencing"]
    assert lines[-2].startswith("RPO a failover would have now: every write up to source revision "), lines
    assert lines[-1].startswith("READY"), run.stdout


# ---- each item's failing path -------------------------------------------------------------------


def move(pair: Pair, user: str = "etcd-dr:drpw", dest: str | None = None, **kw: Any) -> MoveConfig:
    """The MoveConfig the CLI builds from `--user USER --dest-user USER` and the move's flags `kw`."""
    return MoveConfig(
        pair=MirrorConfig(
            source=ClientConfig.create(pair.src.endpoints, user=user, role="source", dial_timeout=10.0),
            dest=ClientConfig.create(
                dest or pair.dst.endpoints[0],
                user=user,
                role="destination",
                flag_prefix="dest-",
                dial_timeout=1.0 if dest else 10.0,  # a machine under load answers slowly
            ),
        ),
        **kw,
    )


async def verdicts(config: MoveConfig, **options: Any) -> dict[str, Item]:
    report = await check(config, CheckOptions(**options))
    assert report.ready is not any(i.level == "fail" for i in report.items)
    return {i.name: i for i in report.items}


async def test_fencing_user_without_root(pair: Pair) -> None:
    run = await etcd_dr(*pair.args("--json", users=["--user", "weak:weakpw", "--dest-user", "weak:weakpw"]))
    assert run.code == 1, run.stdout + run.stderr
    fencing = items(run)["fencing"]
    assert fencing["level"] == "fail"
    assert "the user weak (--user) lacks the root role" in fencing["message"]
    assert "the user weak (--dest-user) lacks the root role" in fencing["message"]
    assert json.loads(run.stdout)["rpo"]["revision"] > 0


@pytest.mark.newest_etcd_only  # the hooks and the DNS server do not depend on etcd's version
async def test_hooks_missing_and_not_executable(pair: Pair, tmp_path: Path) -> None:
    plain = tmp_path / "fence.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")
    plain.chmod(0o644)
    hooks = {"fence": "hook", "fence_hook": f"{plain} --now", "switch_hook": "/nonexistent/switch"}
    found = await verdicts(move(pair, **hooks))
    assert found["fencing"].level == "fail"
    assert f"{plain} is not executable" in found["fencing"].message
    assert found["switch"].level == "fail"
    assert "/nonexistent/switch does not exist" in found["switch"].message

    plain.chmod(0o755)
    ok = await verdicts(move(pair, **{**hooks, "switch_hook": "true"}))
    assert ok["fencing"].level == "ok" and ok["switch"].level == "ok", ok


def test_hook_problem_names_the_flag() -> None:
    assert hook_problem("no-such-program-here x", "--switch-hook") == (
        "--switch-hook 'no-such-program-here x': 'no-such-program-here' is not found on PATH"
    )
    assert hook_problem("/bin/sh -c 'exit 0'", "--fence-hook") is None
    assert "is not executable" in (hook_problem("/tmp", "--fence-hook") or "")


async def test_quota_and_warnings(pair: Pair) -> None:
    found = await verdicts(move(pair, fence="none"), quota_bytes=4096)
    assert found["quota"].level == "fail" and "compact and defragment" in found["quota"].message
    # No fencing, no switch: warnings, which alone do not make a pair not ready.
    assert found["fencing"].level == "warn" and found["switch"].level == "warn", found
    assert [i for i, v in found.items() if v.level == "fail"] == ["quota"], found


async def test_destination_down_is_not_ready(pair: Pair) -> None:
    found = await verdicts(move(pair, dest=f"127.0.0.1:{_free_port()}"))
    assert found["destination"].level == "fail" and "DOWN" in found["destination"].message
    assert found["source"].level == "ok"
    assert found["mirror"].level == "fail"


@pytest.mark.newest_etcd_only  # the hooks and the DNS server do not depend on etcd's version
async def test_bad_input_exit_2(pair: Pair) -> None:
    run = await etcd_dr(*pair.args("--max-rpo", "soon"))
    assert run.code == 2 and run.last_line.startswith("etcd-dr: error: --max-rpo"), run.stderr


# ---- the mirror's gauges --------------------------------------------------------------------------


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _gauges(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("etcd_dr_failover_ready", "etcd_dr_readiness"))
    }


async def test_mirror_exports_readiness(pair: Pair) -> None:
    await pair.caught_up()
    deadline = time.monotonic() + 60
    while True:
        found = _gauges(await asyncio.to_thread(_scrape, pair.metrics_port))
        if found.get('etcd_dr_readiness{item="verify"}') == 1.0:
            break
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.3)
    assert found["etcd_dr_failover_ready"] == 1.0, found
    for name in ("source", "destination", "quota", "certificates", "mirror", "lag", "fencing"):
        assert found[f'etcd_dr_readiness{{item="{name}"}}'] == 1.0, (name, found)
    assert 'etcd_dr_readiness{item="switch"}' not in found  # no DNS or hook flags in the mirror
    assert found["etcd_dr_readiness_last_timestamp_seconds"] > time.time() - 60


# ---- the mirror stopped: lag beyond --max-rpo; and check changes nothing -------------------------


async def _everything(c: EtcdClient) -> tuple[int, list[tuple[bytes, bytes, int, int, int]]]:
    r = await c.range(b"\0", b"\0")
    return r.header.revision, [
        (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in r.kvs
    ]


async def test_mirror_stopped_lag_beyond_max_rpo_and_nothing_changed(pair: Pair) -> None:
    await pair.caught_up()
    assert pair.mirror is not None
    await pair.mirror.stop()
    try:
        async with pair.client(pair.src) as s:
            for i in range(5):
                await s.put(b"/app/late/%d" % i, b"v")
        await asyncio.sleep(1.5)
        async with pair.client(pair.src) as s, pair.client(pair.dst) as d:
            before = (await _everything(s), await _everything(d))
            report = await check(move(pair, switch_hook="true"), CheckOptions(max_rpo=1.0, verify_now=True))
            after = (await _everything(s), await _everything(d))
        assert before == after, "check changed the clusters"
        assert not report.ready
        found = {i.name: i for i in report.items}
        assert found["lag"].level == "fail"
        assert "above --max-rpo 1 s" in found["lag"].message
        assert found["mirror"].level == "fail" and "its lock is free" in found["mirror"].message
        assert found["verify"].level == "ok", found["verify"]  # compared at the mirror's revision
        assert report.rpo_behind is not None and report.rpo_behind >= 5
        assert report.rpo_seconds is not None and report.rpo_seconds > 1
        assert f"{report.rpo_behind} revisions" in found["lag"].message
        lines = report.lines()
        assert lines[-1].startswith("NOT READY: 2 item(s) fail (mirror, lag)"), lines
        assert any(line.startswith("  FAIL  lag ") for line in lines), lines

        # A key on the standby the source does not have: --verify finds it (then it is removed again).
        async with pair.client(pair.dst) as d:
            await d.put(b"/app/only-on-the-standby", b"x")
            try:
                differs = await check(move(pair, switch_hook="true"), CheckOptions(verify_now=True))
            finally:
                await d.delete_range(b"/app/only-on-the-standby")
        verify = {i.name: i for i in differs.items}["verify"]
        assert verify.level == "fail" and "1 extra" in verify.message, verify
    finally:
        pair.start_mirror()


# ---- the clients' switch on a real BIND -----------------------------------------------------------


@pytest.fixture(scope="module")
def ns() -> Iterator[BindServer]:
    reason = named_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with bind_server(zone="dr.test.", records={"etcd": ["127.0.0.1"], "other": ["127.0.0.99"]}) as server:
        yield server


def dns(ns: BindServer, name: str, key: Path) -> dict[str, Any]:
    return {"dns": DnsConfig.create(server=ns.server, zone="dr.test", name=name, tsig_key_file=key)}


@pytest.mark.newest_etcd_only  # the hooks and the DNS server do not depend on etcd's version
async def test_dns_switch_ok_wrong_key_and_name_elsewhere(pair: Pair, ns: BindServer, tmp_path: Path) -> None:
    serial = ns.soa_serial()
    ok = (await verdicts(move(pair, **dns(ns, "etcd", ns.key_file))))["switch"]
    assert ok.level == "ok", ok
    assert "TSIG key accepted" in ok.message and "127.0.0.1" in ok.message

    wrong = ns.write_key_file(tmp_path / "wrong.key", secret=new_tsig_secret())
    bad = (await verdicts(move(pair, **dns(ns, "etcd", wrong))))["switch"]
    assert bad.level == "fail" and "BADSIG" in bad.message, bad

    other = (await verdicts(move(pair, **dns(ns, "other", ns.key_file))))["switch"]
    assert other.level == "fail", other
    assert "answers 127.0.0.99, not the current primary's 127.0.0.1" in other.message
    assert ns.soa_serial() == serial  # nothing was updated
    assert ns.addresses("etcd") == {"127.0.0.1"}


# ---- certificates -------------------------------------------------------------------------------


def _expired_client(directory: Path, tls: ClusterTLS) -> TLSFiles:
    """A client certificate signed by the cluster's CA that expired two days ago."""
    ca_cert = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((tls.ca.parent / "ca-key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=2))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (directory / "old.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "old-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TLSFiles(tls.ca, directory / "old.pem", directory / "old-key.pem")


@pytest.fixture(scope="module")
def short_tls(
    etcd_bin: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EtcdCluster, ClusterTLS]]:
    d = tmp_path_factory.mktemp(f"check-tls-{etcd_bin.minor}")
    ca = pki.init_ca(d, cn="short CA")
    server = pki.issue(d, profile="server", name="server", hosts=("127.0.0.1",), days=5)
    peer = pki.issue(d, profile="peer", name="peer", hosts=("127.0.0.1",))
    client = pki.issue(d, profile="client", name="client", cn="root")
    tls = ClusterTLS(
        ca.cert, server.cert, server.key, peer.cert, peer.key, TLSFiles(ca.cert, client.cert, client.key)
    )
    cluster = EtcdCluster(etcd_bin, 1, tls=tls, name="short")
    try:
        yield cluster.start(), tls
    finally:
        cluster.stop()


def tls_move(cluster: EtcdCluster, source: TLSFiles, dest: TLSFiles) -> MoveConfig:
    """The cluster is its own destination under another prefix: only the certificates (and fencing:
    auth is off here) are looked at."""

    def client(files: TLSFiles, **kw: Any) -> ClientConfig:
        return ClientConfig.create(
            cluster.endpoints, cacert=files.cacert, cert=files.cert, key=files.key, **kw
        )

    return MoveConfig(
        pair=MirrorConfig(
            source=client(source, role="source"),
            dest=client(dest, role="destination", flag_prefix="dest-"),
            prefix=b"/a/",
            dest_prefix=b"/b/",
        )
    )


async def test_certificate_expiring_and_expired(
    short_tls: tuple[EtcdCluster, ClusterTLS], tmp_path: Path
) -> None:
    cluster, tls = short_tls
    found = await verdicts(tls_move(cluster, tls.client, tls.client))
    assert found["certificates"].level == "warn", found["certificates"]
    assert "certificate expires in 4 days" in found["certificates"].message
    assert found["fencing"].level == "fail", found
    assert "etcd auth is off" in found["fencing"].message, found

    short = await verdicts(tls_move(cluster, tls.client, tls.client), warn_days=3)
    assert short["certificates"].level == "ok", short["certificates"]

    old = _expired_client(tmp_path, tls)
    expired = await verdicts(tls_move(cluster, old, tls.client))
    assert expired["certificates"].level == "fail", expired["certificates"]
    assert "expired on" in expired["certificates"].message
    assert expired["source"].level == "fail", expired["source"]  # the member refuses the certificate


def test_gauges_of_a_failing_item() -> None:
    stats = MirrorStats()
    assert not [m for m in MirrorCollector(stats).collect() if "readiness" in m.name or "ready" in m.name]
    stats.readiness, stats.readiness_at = {"lag": "fail", "mirror": "ok", "verify": "warn"}, 1234.5
    found = {
        (s.name, s.labels.get("item", "")): s.value
        for m in MirrorCollector(stats).collect()
        for s in m.samples
        if "ready" in s.name or "readiness" in s.name
    }
    assert found == {
        ("etcd_dr_failover_ready", ""): 0.0,
        ("etcd_dr_readiness", "lag"): 0.0,
        ("etcd_dr_readiness", "mirror"): 1.0,
        ("etcd_dr_readiness", "verify"): 0.5,
        ("etcd_dr_readiness_last_timestamp_seconds", ""): 1234.5,
    }
