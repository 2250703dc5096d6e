"""The procedure etcd-dr replaces, run as written: its cfssl files make both sites' certificates (with
cfssl 1.2.0), its `etcdctl make-mirror` line runs with `etcdctl` replaced by `etcd-dr` (paths and ports
replaced), and its check passes (`etcdctl put 1 2` on the primary, `etcdctl get 1` on the standby).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.mirrorproc import end_process
from harness.seed import SeedCommand, cfssl_gencert, cfssl_path, seed_commands, write_seed_json

from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import ClusterTLS, TLSFiles

Factory = Callable[..., EtcdCluster]

PRIMARY, STANDBY = "k8s001", "k8s002"
HOSTS = {"192.168.1.1": PRIMARY, "192.168.1.2": STANDBY}


def site_tls(directory: Path) -> ClusterTLS:
    """One site made as the seed makes it: its own CA and one etcd.pem for server, peer and client."""
    write_seed_json(directory)
    cfssl_gencert(directory)
    client = TLSFiles(directory / "ca.pem", directory / "etcd.pem", directory / "etcd-key.pem")
    return ClusterTLS(
        ca=client.cacert,
        server_cert=client.cert,
        server_key=client.key,
        peer_cert=client.cert,
        peer_key=client.key,
        client=client,
    )


def localize(cmd: SeedCommand, sites: dict[str, tuple[EtcdCluster, Path]]) -> list[str]:
    """The seed's line with this machine's paths and ports: on host H, /etc/kubernetes/ssl/ca.pem and
    /etc/etcd/ssl/* are H's own files, /etc/kubernetes/backup/* the other site's (copied there by scp
    in the seed), and https://192.168.1.N:2379 the site's endpoint."""
    own = sites[cmd.host][1]
    other = sites[STANDBY if cmd.host == PRIMARY else PRIMARY][1]
    out = []
    for arg in cmd.argv:
        arg = arg.replace("/etc/kubernetes/ssl/", f"{own}/").replace("/etc/etcd/ssl/", f"{own}/")
        arg = arg.replace("/etc/kubernetes/backup/", f"{other}/")
        for ip, host in HOSTS.items():
            arg = arg.replace(f"https://{ip}:2379", sites[host][0].endpoints[0])
        out.append(arg)
    return out


@pytest.mark.skipif(cfssl_path() is None, reason="cfssl/cfssljson not installed (golang-cfssl)")
def test_seed_procedure_with_etcd_dr(etcd_cluster_factory: Factory, tmp_path: Path) -> None:
    sites = {}
    for host, name in ((PRIMARY, "primary"), (STANDBY, "standby")):
        tls = site_tls(tmp_path / host)
        sites[host] = (etcd_cluster_factory(name=name, tls=tls), tmp_path / host)
    commands = seed_commands()
    assert [c.argv[:2] for c in commands] == [
        ["etcdctl", "put"], ["etcdctl", "get"], ["etcdctl", "make-mirror"], ["etcdctl", "get"],
    ]  # fmt: skip
    put, get_primary, make_mirror, get_standby = commands
    etcdctl = str(sites[PRIMARY][0].binaries.etcdctl)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}

    def run_etcdctl(cmd: SeedCommand) -> str:
        out = subprocess.run(
            [etcdctl, *localize(cmd, sites)[1:]],
            env={**env, **cmd.env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    run_etcdctl(put)
    assert run_etcdctl(get_primary) == "1\n2\n"

    # The make-mirror line: `etcdctl` replaced by `etcd-dr`, nothing else changed.
    line = localize(make_mirror, sites)
    assert line[1:3] == ["make-mirror", "--no-dest-prefix=true"]
    log_path = tmp_path / "make-mirror.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etcd_dr", *line[1:]],
            env={**env, **make_mirror.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            seen = run_etcdctl(get_standby)
            if seen:
                break
            time.sleep(0.2)
        assert seen == "1\n2\n", log_path.read_text()
        # Later writes follow, as with make-mirror.
        subprocess.run(
            [etcdctl, "put", "1", "3", *localize(put, sites)[4:]],
            env={**env, **put.env},
            check=True,
            capture_output=True,
            timeout=30,
        )
        while time.monotonic() < deadline and run_etcdctl(get_standby) != "1\n3\n":
            time.sleep(0.2)
        assert run_etcdctl(get_standby) == "1\n3\n", log_path.read_text()
    finally:
        code = end_process(proc, signal.SIGTERM, 30)
    # Stopped by SIGTERM (systemd's stop) is a normal end.
    assert code == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()
