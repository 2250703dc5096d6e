"""The real-etcd fixtures themselves, checked with etcdctl (an independent client) on every version."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from harness.proxy import FaultProxy

from etcd_dr.local import cluster as cluster_module
from etcd_dr.local.binaries import EtcdBinaries, EtcdNotFoundError, find, find_all
from etcd_dr.local.cluster import EtcdCluster, EtcdctlError

EtcdClusterFactory = Callable[..., EtcdCluster]


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- binaries ---------------------------------------------------------------------------------------


def test_binaries_found_and_versions_distinct() -> None:
    found = find_all()
    assert found, "no etcd binary found"
    assert len({b.version for b in found}) == len(found)
    for b in found:
        assert os.access(b.etcd, os.X_OK) and os.access(b.etcdctl, os.X_OK)
    assert find(found[0].minor).version == found[0].version
    with pytest.raises(EtcdNotFoundError, match="not found"):
        find("0.1")


# -- clusters ---------------------------------------------------------------------------------------


def test_single_member_serves_put_get(etcd_cluster: EtcdCluster, etcd_bin: EtcdBinaries) -> None:
    assert etcd_cluster.version == etcd_bin.version
    [member] = etcd_cluster.members
    assert etcd_cluster.endpoints == [member.client_url]
    assert member.client_url.startswith("http://127.0.0.1:")
    assert member.pid is not None and member.data_dir.is_dir() and member.log_path.is_file()
    assert etcd_cluster.etcdctl("put", "/k", "v1").strip() == "OK"
    assert etcd_cluster.etcdctl("get", "/k", "--print-value-only").strip() == "v1"
    version = json.loads(etcd_cluster.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]["version"]
    assert version == etcd_bin.version


def test_three_members_listed(etcd_cluster3: EtcdCluster) -> None:
    listing = json.loads(etcd_cluster3.etcdctl("member", "list", "-w", "json"))
    assert sorted(m["name"] for m in listing["members"]) == ["etcd-0", "etcd-1", "etcd-2"]
    assert sorted(url for m in listing["members"] for url in m["clientURLs"]) == sorted(
        etcd_cluster3.endpoints
    )
    # Written through one member, read through another: they really form one cluster.
    etcd_cluster3.etcdctl("put", "k", "v", endpoints=[etcd_cluster3.endpoints[0]])
    got = etcd_cluster3.etcdctl("get", "k", "--print-value-only", endpoints=[etcd_cluster3.endpoints[2]])
    assert got.strip() == "v"


def test_kill_and_restart_keeps_data(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.etcdctl("put", "durable", "yes")
    old_pid = etcd_cluster.members[0].pid
    assert old_pid is not None
    etcd_cluster.kill(0)
    assert _pid_gone(old_pid) and etcd_cluster.members[0].pid is None
    with pytest.raises(EtcdctlError):
        etcd_cluster.etcdctl("get", "durable", "--dial-timeout=300ms", "--command-timeout=500ms")
    etcd_cluster.restart(0)
    assert etcd_cluster.members[0].pid not in (None, old_pid)
    assert etcd_cluster.etcdctl("get", "durable", "--print-value-only").strip() == "yes"


def test_member_of_three_catches_up_after_restart(etcd_cluster3: EtcdCluster) -> None:
    c = etcd_cluster3
    c.etcdctl("put", "a", "1")
    c.kill(1)
    assert c.wait_leader() != 1  # a write sent to a dead leader would only time out
    others = [c.endpoints[0], c.endpoints[2]]
    c.etcdctl("put", "b", "2", endpoints=others)  # quorum of two still writes
    c.restart(1)
    got = c.etcdctl("get", "", "--prefix", "--print-value-only", endpoints=[c.endpoints[1]])
    assert got.split() == ["1", "2"]
    c.stop_member(2)
    assert c.members[2].pid is None
    c.restart(2)
    assert c.etcdctl("get", "b", "--print-value-only", endpoints=[c.endpoints[2]]).strip() == "2"


def test_pause_and_resume(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.etcdctl("put", "k", "v")
    etcd_cluster.pause(0)
    try:
        with pytest.raises(EtcdctlError):
            etcd_cluster.etcdctl("get", "k", "--command-timeout=500ms")
        assert etcd_cluster.members[0].pid is not None  # stopped, not dead
    finally:
        etcd_cluster.resume(0)
    assert etcd_cluster.etcdctl("get", "k", "--print-value-only").strip() == "v"


def test_tls_cluster_requires_client_cert(tls_cluster: EtcdCluster) -> None:
    client = tls_cluster.client_tls
    assert client is not None
    url = tls_cluster.endpoints[0]
    assert url.startswith("https://127.0.0.1:")

    no_cert = ssl.create_default_context(cafile=str(client.cacert))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=no_cert)
    )
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        opener.open(f"{url}/health", timeout=5).read()

    with_cert = ssl.create_default_context(cafile=str(client.cacert))
    with_cert.load_cert_chain(str(client.cert), str(client.key))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=with_cert)
    )
    assert b"true" in opener.open(f"{url}/health", timeout=5).read()

    # etcdctl with only the CA (no client certificate) is refused; with the client cert it works.
    env = {k: v for k, v in tls_cluster.etcdctl_env().items() if k not in ("ETCDCTL_CERT", "ETCDCTL_KEY")}
    refused = subprocess.run(
        [str(tls_cluster.binaries.etcdctl), "get", "k", "--dial-timeout=500ms", "--command-timeout=1s"],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0
    assert tls_cluster.etcdctl("put", "k", "v").strip() == "OK"


def test_auth_cluster(etcd_cluster_factory: EtcdClusterFactory) -> None:
    c = etcd_cluster_factory(1, auth=("root", "s3cret"))
    assert c.etcdctl("put", "k", "v").strip() == "OK"  # as root
    with pytest.raises(EtcdctlError):
        c.etcdctl("get", "k", "--user=root:wrong")
    env = {k: v for k, v in c.etcdctl_env().items() if k != "ETCDCTL_USER"}
    anonymous = subprocess.run(
        [str(c.binaries.etcdctl), "get", "k"],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert anonymous.returncode != 0
    c.kill(0)
    c.restart(0)  # health check must still pass with auth on
    assert c.etcdctl("get", "k", "--print-value-only").strip() == "v"


@pytest.mark.parametrize("size", [1, 3])
def test_stop_leaves_no_process_and_no_data(etcd_bin: EtcdBinaries, size: int) -> None:
    cluster = EtcdCluster(etcd_bin, size).start()
    pids = [m.pid for m in cluster.members]
    assert all(pid is not None for pid in pids)
    dirs = [m.data_dir for m in cluster.members]
    assert cluster.base_dir is not None and all(d.is_dir() for d in dirs)
    cluster.pause(size - 1)  # a stopped (SIGSTOP) member must be ended too
    started = time.monotonic()
    cluster.stop()
    assert time.monotonic() - started < 4.5, "stop() hit the SIGKILL grace period"
    assert all(pid is not None and _pid_gone(pid) for pid in pids)
    assert not any(d.exists() for d in dirs) and not cluster.base_dir.exists()
    cluster.stop()  # idempotent


def test_context_manager_stops(etcd_bin: EtcdBinaries) -> None:
    with EtcdCluster(etcd_bin, name="ctx") as cluster:
        pid = cluster.members[0].pid
        assert cluster.members[0].name == "ctx-0"
    assert pid is not None and _pid_gone(pid)


def test_port_clash_is_retried(etcd_bin: EtcdBinaries, monkeypatch: pytest.MonkeyPatch) -> None:
    # Someone grabs a port between our probe and etcd's bind: start() must pick new ports.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real = cluster_module.free_ports
        calls: list[int] = []

        def first_call_clashes(count: int) -> list[int]:
            calls.append(count)
            ports = real(count)
            return [taken, *ports[1:]] if len(calls) == 1 else ports

        monkeypatch.setattr(cluster_module, "free_ports", first_call_clashes)
        with EtcdCluster(etcd_bin) as cluster:
            assert len(calls) == 2
            assert cluster.members[0].client_port != taken
            assert cluster.etcdctl("put", "k", "v").strip() == "OK"


def test_failed_start_reports_log(etcd_bin: EtcdBinaries) -> None:
    cluster = EtcdCluster(etcd_bin, extra_args=["--no-such-flag"], start_timeout=10)
    with pytest.raises(RuntimeError, match="no-such-flag"):
        cluster.start()
    assert cluster.base_dir is not None and not cluster.base_dir.exists()


# -- fault proxy ------------------------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def _echo_proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with FaultProxy("127.0.0.1", port) as proxy:
            yield proxy
    finally:
        server.close()


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> float:
    started = time.monotonic()
    writer.write(data)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(data)), 5) == data
    return time.monotonic() - started


def test_proxy_forwards_etcd_traffic(etcd_cluster: EtcdCluster) -> None:
    with FaultProxy.to(etcd_cluster.endpoints[0]) as proxy:
        assert proxy.address.startswith("127.0.0.1:")
        etcd_cluster.etcdctl("put", "via", "proxy", endpoints=[proxy.url()])
        got = etcd_cluster.etcdctl("get", "via", "--print-value-only", endpoints=[proxy.address])
        assert got.strip() == "proxy"
        assert proxy.bytes_forwarded > 0


async def test_proxy_cut_resets_open_connections() -> None:
    async with _echo_proxy() as proxy:
        reader, writer = await _connect(proxy)
        await _round_trip(reader, writer, b"before")
        assert proxy.cut() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        writer.close()
        reader2, writer2 = await _connect(proxy)  # new connections still accepted
        await _round_trip(reader2, writer2, b"after")
        writer2.close()


async def test_proxy_delay_adds_latency_without_serializing() -> None:
    async with _echo_proxy() as proxy:
        reader, writer = await _connect(proxy)
        base = await _round_trip(reader, writer, b"warm")
        proxy.set_delay(0.05)
        assert await _round_trip(reader, writer, b"ping") >= 0.1
        # 20 messages 10 ms apart under 0.2 s one-way delay: pipelined they take ~0.6 s in all;
        # a proxy that slept per chunk before reading the next would need 20 * 0.4 s.
        proxy.set_delay(0.2)
        started = time.monotonic()
        for i in range(20):
            writer.write(b"%02d" % i)
            await writer.drain()
            await asyncio.sleep(0.01)
        echoed = await asyncio.wait_for(reader.readexactly(40), 10)
        assert echoed == b"".join(b"%02d" % i for i in range(20))  # order kept
        assert time.monotonic() - started < 3.0
        proxy.set_delay(0)
        assert await _round_trip(reader, writer, b"fast") < base + 0.1
        writer.close()


async def test_proxy_blackhole_holds_traffic() -> None:
    async with _echo_proxy() as proxy:
        reader, writer = await _connect(proxy)
        await _round_trip(reader, writer, b"a")
        proxy.set_blackhole(True)
        before = proxy.bytes_forwarded
        writer.write(b"lost?")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(5), 0.3)
        assert proxy.bytes_forwarded == before
        proxy.set_blackhole(False)  # the partition heals: held data arrives
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"lost?"
        writer.close()


async def test_proxy_refuse_new_connections() -> None:
    async with _echo_proxy() as proxy:
        reader, writer = await _connect(proxy)
        await _round_trip(reader, writer, b"accepted before")  # the proxy has taken it up
        proxy.set_refuse(True)
        try:
            reader2, writer2 = await _connect(proxy)
            assert await asyncio.wait_for(reader2.read(10), 5) == b""
            writer2.close()
        except ConnectionError:
            pass  # the reset can arrive before connect() returns
        await _round_trip(reader, writer, b"open ones live on")
        proxy.set_refuse(False)
        reader3, writer3 = await _connect(proxy)
        await _round_trip(reader3, writer3, b"back")
        writer.close()
        writer3.close()


def test_proxy_only_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 80)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("127.0.0.1", 80, listen_host="0.0.0.0")


def test_proxy_close_is_idempotent_and_frees_port() -> None:
    proxy = FaultProxy("127.0.0.1", 9)
    port = proxy.port
    proxy.close()
    proxy.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
