"""Planned switchover as an operator runs it: auth-enabled sites, an application writing through its
own user, the mirror daemon running, then `etcd-dr switchover` from the command line with the clients'
name in a real BIND. Nothing acknowledged is lost, writes are refused for well under 2 s, the old
primary refuses the application's writes afterwards, the new one takes them, the daemon is fenced and
stops with one clear line, and the name answers with the new site's address."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.bind import BindServer, bind_server, named_unavailable_reason

from etcd_dr.etcd import ClientConfig, EtcdClient, PermissionDenied, prefix_range_end
from etcd_dr.local.acked import AckedWriter
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.state import StateLayout
from etcd_dr.state.roles import read_role

STATE = b"/etcd-dr/"
LAYOUT = StateLayout(STATE)
APP = b"/app/"
ROOT = ("root", "rootpw")


@pytest.fixture
def ns() -> Iterator[BindServer]:
    reason = named_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with bind_server(zone="dr.test.", records={"etcd": ["127.0.0.1"]}) as server:
        yield server


def auth_site(make: Callable[..., EtcdCluster], name: str) -> EtcdCluster:
    """Auth on; the application's user `app` may read and write /app/; etcd-dr's user has root."""
    cluster = make(name=name, auth=ROOT)
    ctl = cluster.etcdctl
    ctl("role", "add", "app-rw")
    ctl("role", "grant-permission", "app-rw", "readwrite", APP.decode(), "--prefix=true")
    ctl("user", "add", "app:apppw")
    ctl("user", "grant-role", "app", "app-rw")
    ctl("user", "add", "etcd-dr:drpw")
    ctl("user", "grant-role", "etcd-dr", "root")
    return cluster


def client(cluster: EtcdCluster, user: str, password: str) -> EtcdClient:
    return EtcdClient(ClientConfig.create(cluster.endpoints, user=user, password=password))


async def dump(c: EtcdClient) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await c.range(APP, prefix_range_end(APP))).kvs}


async def test_switchover_from_the_command_line_fences_loses_nothing_and_moves_the_name(
    etcd_cluster_factory: Callable[..., EtcdCluster], ns: BindServer, tmp_path: Path
) -> None:
    a, b = auth_site(etcd_cluster_factory, "site-a"), auth_site(etcd_cluster_factory, "site-b")
    creds = ["--user", "etcd-dr:drpw", "--dest-user", "etcd-dr:drpw", "--prefix", APP.decode()]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    daemon_log = tmp_path / "mirror.log"
    with daemon_log.open("wb") as out:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "etcd_dr", "mirror", b.endpoints[0], "--endpoints", a.endpoints[0],
            *creds, stdout=out, stderr=out, env=env,
        )  # fmt: skip
    try:
        async with client(a, "app", "apppw") as app_a, client(b, "etcd-dr", "drpw") as dr_b:
            for i in range(300):
                await app_a.put(APP + b"seed/%04d" % i, b"s" * 64)
            deadline = time.monotonic() + 60
            while len(await dump(dr_b)) < 300:
                assert time.monotonic() < deadline, daemon_log.read_text()[-3000:]
                await asyncio.sleep(0.1)

            writer = AckedWriter(app_a, prefix=APP + b"acked/", inflight=4)
            stop = asyncio.Event()
            writing = asyncio.create_task(writer.run(stop, rate=300))
            await asyncio.sleep(1.0)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "etcd_dr", "switchover", b.endpoints[0], "--endpoints", a.endpoints[0],
                *creds, "--dns-server", ns.server, "--dns-zone", "dr.test.", "--dns-name", "etcd",
                "--dns-tsig-key", str(ns.key_file), "--dns-address", "127.0.0.2", "--json", "--yes",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
            stop.set()
            await writing
            assert proc.returncode == 0, err_b.decode()[-3000:]
            result = json.loads(out_b)

            # Writes were refused for a while bounded by the catch-up's timeout (30 s; how short is a figure
            # for a benchmark, not a timed test), and the application's writes on A are refused now.
            assert 0 <= result["writes_refused_seconds"] < 30.0, (result, err_b.decode()[-5000:])
            assert writer.failed > 0 or result["writes_refused_seconds"] < 0.05
            with pytest.raises(PermissionDenied):
                await app_a.put(APP + b"after", b"1")

            # Nothing acknowledged by A is missing on B.
            on_b = await dump(dr_b)
            missing = [ack.key for ack in writer.acked if on_b.get(ack.key) != ack.value]
            assert writer.acked and not missing, f"{len(missing)} of {len(writer.acked)} acked writes missing"
            async with client(a, "etcd-dr", "drpw") as dr_a:
                assert await dump(dr_a) == on_b
                role_a = (await read_role(dr_a, LAYOUT)).role
                assert (await dr_b.status()).revision > (await dr_a.status()).revision
            role_b = (await read_role(dr_b, LAYOUT)).role
            assert role_b is not None and role_b.is_primary and role_b.epoch == result["epoch"] == 2
            assert role_a is not None and not role_a.is_primary and role_a.epoch == 2

            # The application can write on the new primary; the name points at it.
            async with client(b, "app", "apppw") as app_b:
                await app_b.put(APP + b"on-b", b"1")
            assert ns.addresses("etcd") == {"127.0.0.2"}

            # The daemon started before the switchover cannot write into the new primary: it stops.
            code = await asyncio.wait_for(daemon.wait(), 60)
            text = daemon_log.read_text()
            assert code == 2, text[-3000:]
            last = text.strip().splitlines()[-1]
            assert last.startswith("etcd-dr: error: ") and "marked primary" in last, last
            assert "Traceback" not in text
            assert "etcd-dr mirror" in result["next_command"]
    finally:
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGKILL)
            await daemon.wait()


def test_move_flags_are_checked_before_anything_is_done(tmp_path: Path) -> None:
    import concurrent.futures
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        return subprocess.run(
            [sys.executable, "-m", "etcd_dr", *args], capture_output=True, text=True, timeout=60, env=env
        )

    ep = ["--endpoints", "127.0.0.1:2"]
    cases = [
        (["switchover", "127.0.0.1:1", "--no-fence", "--fence-hook", "true"], "--fence-hook and --no-fence"),
        (["failover", "127.0.0.1:1", *ep, "--dns-server", "127.0.0.1:53"], "--dns-zone"),
        (["failback", "127.0.0.1:1", *ep, "--report", str(tmp_path / "nodir" / "r.json")], "--report"),
        (["failover", "127.0.0.1:1", "--no-fence"], "--endpoints (or ETCDCTL_ENDPOINTS) is required"),
        (["switchover", "127.0.0.1:1", "--dry-run"], "--endpoints (or ETCDCTL_ENDPOINTS) is required"),
        (["failback", "127.0.0.1:1", "--yes"], "--endpoints (or ETCDCTL_ENDPOINTS) is required"),
        (
            [
                "switchover",
                "etcd-b.example:2379",
                *ep,
                "--dns-server",
                "127.0.0.1",
                "--dns-zone",
                "dr.test.",
                "--dns-name",
                "etcd",
            ],
            "--dns-address",
        ),
    ]
    # Each case is a fresh interpreter (about a second of imports): run side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(cases)) as pool:
        procs = list(pool.map(lambda case: run(*case[0]), cases))
    for (args, needle), proc in zip(cases, procs, strict=True):
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("etcd-dr: error: ") and needle in lines[-1], (args, proc.stderr)
        assert "Traceback" not in proc.stderr
