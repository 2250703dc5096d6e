"""Real etcd clusters on loopback, for the tests, `etcd-dr demo` and the benchmarks.

Each member is a real etcd process on free 127.0.0.1 ports with its own data dir (on /dev/shm when
there is one: tests then never wait on a disk). Processes are tracked by PID and ended by PID; a
running cluster is registered in etcd_dr.local.resources, whose exit hook stops it if a crashed caller
did not.

`EtcdCluster.from_config_files` runs members from etcd configuration files instead (`etcd
--config-file FILE`, e.g. the files `etcd-dr render` writes), with the same process control.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import yaml

from etcd_dr.local import resources
from etcd_dr.local.binaries import EtcdBinaries, restore_argv

if TYPE_CHECKING:
    from etcd_dr.local.tls import ClusterTLS, TLSFiles

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_GRACE = 5.0
_PORT_ATTEMPTS = 4
_LOG_TAIL_LINES = 40
_LEADER_SETTLE = 0.25


class EtcdClusterError(RuntimeError):
    """A member failed to start, died, or did not become healthy in time."""


class EtcdctlError(RuntimeError):
    """etcdctl exited non-zero; the message carries its stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"etcdctl {' '.join(args)} failed (exit {returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class EtcdPortInUseError(EtcdClusterError):
    """A member started from a configuration file could not bind a port the file names (another
    process has it). Only from_config_files clusters raise it: other clusters pick new ports and retry."""


class _PortClash(Exception):
    """A member could not bind its port: someone took it between our probe and etcd's bind."""


@dataclass(frozen=True)
class _ConfigFileMember:
    """What a member's etcd configuration file says about it."""

    path: Path
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    scheme: str


def _read_member_config(path: Path) -> tuple[_ConfigFileMember, dict[str, Any]]:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read an etcd configuration file: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not an etcd configuration file (expected a mapping)")

    def url(key: str) -> urllib.parse.SplitResult:
        value = config.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{path}: {key} is missing")
        first = urllib.parse.urlsplit(value.split(",")[0].strip())
        if first.hostname != HOST or first.port is None or first.scheme not in ("http", "https"):
            raise ValueError(f"{path}: {key} {value!r}: local clusters listen on http(s)://{HOST}:PORT")
        return first

    client, peer = url("listen-client-urls"), url("listen-peer-urls")
    if client.scheme != peer.scheme:
        raise ValueError(f"{path}: client and peer URLs must both be http or both https")
    name, data_dir = config.get("name"), config.get("data-dir")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: name is missing")
    if not isinstance(data_dir, str) or not data_dir:
        raise ValueError(f"{path}: data-dir is missing")
    assert client.port is not None and peer.port is not None
    member = _ConfigFileMember(path, name, Path(data_dir), client.port, peer.port, client.scheme)
    return member, config


@dataclass
class Member:
    index: int
    name: str
    client_port: int
    peer_port: int
    scheme: str  # "http" or "https", for client and peer URLs alike
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    paused: bool = False
    host: str = HOST  # the address clients and peers reach the member at

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"

    @property
    def hostport(self) -> str:
        """The client address as "127.0.0.1:PORT" (no scheme)."""
        return f"{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """PID of the running process, None when the member is not running."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * 1024))
                data = f.read()
        except OSError:
            return "(no log)"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on HOST (free when looked at: etcd may still lose a race)."""
    # Hold every socket open until all are bound so the kernel hands out distinct ports.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # etcd reads ETCD_* and etcdctl ETCDCTL_* variables as flags: a developer's shell must not
    # change what a test runs against.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    if extra:
        env.update(extra)
    return env


def _base_tmpdir() -> str | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return None


class EtcdCluster:
    """An etcd cluster of `size` local members.

    Use as a context manager, or call start() / stop(); stop() is idempotent.
    Member i is named f"{name}-{i}". With `tls`, client and peer traffic is mutual TLS.
    With `auth=(user, password)` ("root" being the usual user), auth is enabled after start and
    etcdctl() authenticates as that user.

    To run the members elsewhere than on loopback, e.g. in a network namespace (see
    harness.netns): `command_prefix` goes before etcd's command line (["ip", "netns", "exec",
    NS]; it must exec etcd, so that the PID is etcd's), `host` is the address the members are reached at
    (from here, and advertised), and `listen_host` the one they bind ("0.0.0.0": every address of their
    namespace). Ports are still picked free on this host's loopback.
    """

    def __init__(
        self,
        binaries: EtcdBinaries,
        size: int = 1,
        *,
        tls: ClusterTLS | None = None,
        name: str = "etcd",
        auth: tuple[str, str] | None = None,
        quota_backend_bytes: int | None = None,
        auto_compaction_mode: str | None = None,
        auto_compaction_retention: str | None = None,
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
        extra_args: Sequence[str] = (),
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
        host: str = HOST,
        listen_host: str | None = None,
        command_prefix: Sequence[str] = (),
        snapshot: Path | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"cluster size must be at least 1, not {size}")
        self.binaries = binaries
        self.size = size
        self.tls = tls
        self.name = name
        self.auth = auth
        self.quota_backend_bytes = quota_backend_bytes
        self.auto_compaction_mode = auto_compaction_mode
        self.auto_compaction_retention = auto_compaction_retention
        # A lone member never holds an election against anyone: a short timeout only makes it
        # elect itself sooner (~0.1 s instead of ~1 s). With peers, keep enough margin that a busy
        # test machine does not cause spurious leader changes.
        self.heartbeat_ms = heartbeat_ms if heartbeat_ms is not None else (10 if size == 1 else 50)
        self.election_ms = election_ms if election_ms is not None else (100 if size == 1 else 500)
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.host = host
        self.listen_host = listen_host
        self.command_prefix = tuple(command_prefix)
        # A snapshot file (etcd's Maintenance Snapshot) each member's data dir is restored from before
        # its first start: a copy of another cluster's data (the drill's throwaway standby).
        self.snapshot = snapshot
        self._base_dir_arg = base_dir
        self.base_dir: Path | None = None
        self.token = f"{name}-{uuid.uuid4().hex[:12]}"
        self.members: list[Member] = []
        # Set by from_config_files only.
        self._config_members: list[_ConfigFileMember] = []
        self._client_tls: TLSFiles | None = None
        self._auth_enabled = False
        self._started = False
        self._stopped = False

    @classmethod
    def from_config_files(
        cls,
        binaries: EtcdBinaries,
        config_files: Sequence[Path],
        *,
        client_tls: TLSFiles | None = None,
        name: str = "etcd",
        base_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> EtcdCluster:
        """A cluster whose member i runs `etcd --config-file config_files[i]` and nothing else.

        Names, ports, data dirs, TLS and timing come from the files, whose client and peer URLs must
        be on 127.0.0.1. `client_tls` is a client certificate the members accept (for health checks,
        leader lookups and etcdctl()); required when the files use https. The data dirs are the files'
        own: stop() ends the members and removes only what it made (the logs under `base_dir`). A port
        the files name that another process holds is an EtcdPortInUseError (no retry: the ports are
        the files'). Not for auth=...: enable etcd auth yourself if you need it.
        """
        parsed = [_read_member_config(Path(f)) for f in config_files]
        if not parsed:
            raise ValueError("from_config_files needs at least one configuration file")
        members = [m for m, _ in parsed]
        if any(m.scheme == "https" for m in members) and client_tls is None:
            raise ValueError("the members use https: pass client_tls, a client certificate they accept")

        def timing(key: str, default: int) -> int:
            value = parsed[0][1].get(key, default)
            return value if isinstance(value, int) and not isinstance(value, bool) else default

        cluster = cls(
            binaries,
            len(members),
            name=name,
            base_dir=base_dir,
            start_timeout=start_timeout,
            # etcd's defaults when the files do not set them.
            heartbeat_ms=timing("heartbeat-interval", 100),
            election_ms=timing("election-timeout", 1000),
        )
        cluster._config_members = members
        cluster._client_tls = client_tls
        return cluster

    # -- properties -------------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member, e.g. ["http://127.0.0.1:23456"]."""
        return [m.client_url for m in self.members]

    @property
    def hostports(self) -> list[str]:
        """Client addresses without scheme, e.g. ["127.0.0.1:23456"]."""
        return [m.hostport for m in self.members]

    @property
    def client_tls(self) -> TLSFiles | None:
        """The client certificate a caller needs to talk to this cluster (None without TLS)."""
        if self._client_tls is not None:
            return self._client_tls
        return self.tls.client if self.tls is not None else None

    @property
    def version(self) -> str:
        return self.binaries.version

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every member and wait until all are healthy; enable auth if asked."""
        if self._started:
            raise RuntimeError("cluster already started")
        self._started = True
        self.base_dir = Path(
            tempfile.mkdtemp(
                prefix=f"etcd-dr-{self.name}-",
                dir=str(self._base_dir_arg) if self._base_dir_arg else _base_tmpdir(),
            )
        )
        resources.track(self, f"etcd cluster {self.name} in {self.base_dir}", self.stop)
        try:
            # Ports from configuration files are fixed: another attempt would clash again.
            attempts = 1 if self._config_members else _PORT_ATTEMPTS
            for attempt in range(attempts):
                self._make_members()
                try:
                    opener = self._http_opener()
                    for member in self.members:
                        if self.snapshot is not None:
                            self._restore(member)
                        self._spawn(member, "new")
                        if self.size > 1:
                            self._wait_peer_serving(member, opener)
                    self.wait_healthy()
                    break
                except _PortClash as clash:
                    self._terminate(self.members)
                    if self._config_members:
                        raise EtcdPortInUseError(
                            f"cluster {self.name}: etcd member {clash} could not bind a port its "
                            "configuration file names: address already in use"
                        ) from None
                    for member in self.members:
                        shutil.rmtree(member.data_dir, ignore_errors=True)
                    if attempt == _PORT_ATTEMPTS - 1:
                        raise EtcdClusterError(
                            f"cluster {self.name}: ports kept clashing after {_PORT_ATTEMPTS} attempts"
                        ) from None
            if self.auth is not None:
                self._enable_auth(*self.auth)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every member (SIGTERM, SIGKILL after 5 s), then remove data dirs and logs."""
        if self._stopped:
            return
        self._stopped = True
        try:
            # A paused member is a hung machine: nothing to be graceful with, and woken up it would
            # still think it leads.
            for member in self.members:
                if member.paused:
                    self.kill(member.index)
            # Followers first, then the leader: a leader told to stop hands leadership to a peer it
            # still believes alive and waits for it (seconds, if that peer is going too). Once it
            # has seen its followers go (well under 0.25 s), it has nobody to hand over to and exits.
            try:
                leader = self._leader_for_stop()
            except Exception:  # never let a status lookup keep processes alive
                leader = None
            if leader is not None:
                self._terminate([m for m in self.members if m.index != leader])
                time.sleep(_LEADER_SETTLE)
            self._terminate(self.members)
        finally:
            if self.base_dir is not None:
                resources.remove_dir(self.base_dir)
            resources.untrack(self)

    def __enter__(self) -> Self:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Starting blocks for a fraction of a second; keep the caller's event loop responsive.
        if not self._started:
            await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- member control ---------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """SIGKILL member i and reap it: a crash, no graceful shutdown."""
        member = self.members[i]
        proc = member.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        member.paused = False

    def stop_member(self, i: int) -> None:
        """Gracefully stop member i (SIGTERM, SIGKILL after 5 s)."""
        self._terminate([self.members[i]])

    def pause(self, i: int) -> None:
        """SIGSTOP member i: it keeps its sockets but answers nothing, like a hung machine."""
        member = self.members[i]
        self._require_running(member).send_signal(signal.SIGSTOP)
        member.paused = True

    def resume(self, i: int) -> None:
        """SIGCONT a paused member i."""
        member = self.members[i]
        self._require_running(member).send_signal(signal.SIGCONT)
        member.paused = False

    def restart(self, i: int, *, wait: bool = True) -> None:
        """Start member i again on its ports and data dir (stopping it first if it runs).

        With wait=False, call wait_healthy() later: e.g. to bring back several members of a cluster
        that lost quorum, none of which can be healthy alone.
        """
        member = self.members[i]
        if self._stopped:
            raise RuntimeError("cluster is stopped")
        if member.running:
            self._terminate([member])
        self._spawn(member, "existing")
        if wait:
            self.wait_healthy([i])

    def wait_healthy(self, indices: Iterable[int] | None = None, timeout: float | None = None) -> None:
        """Wait until the given members (default all) answer /health with true."""
        members = [self.members[i] for i in indices] if indices is not None else list(self.members)
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        opener = self._http_opener()
        for member in members:
            self._wait_member_healthy(member, opener, deadline)

    def leader(self) -> int | None:
        """Index of the member the running members agree is leader; None if there is none yet."""
        # etcdctl rather than the HTTP gateway: the gateway refuses TLS clients whose certificate
        # has a CN once auth is on, and etcdctl already has our TLS flags and credentials.
        live = [m for m in self.members if m.running and not m.paused]
        if not live:
            return None
        try:
            out = self.etcdctl(
                "endpoint",
                "status",
                "-w",
                "json",
                "--command-timeout=1s",
                endpoints=[m.client_url for m in live],
                timeout=5,
            )
            statuses = json.loads(out)
            by_id = {
                int(st["Status"]["header"]["member_id"]): m.index
                for st, m in zip(statuses, live, strict=True)
            }
            leaders = {int(st["Status"]["leader"]) for st in statuses}
        except (EtcdctlError, ValueError, KeyError, TypeError):
            return None
        # Followers keep naming a dead leader until their election timeout: not a leader yet.
        if len(leaders) != 1:
            return None
        return by_id.get(leaders.pop())

    def wait_leader(self, timeout: float = START_TIMEOUT) -> int:
        """Wait until the running members agree on a running leader; return its index.

        After killing a leader, writes sent before this returns may hang until etcd's request
        timeout (the proposal went to the dead leader).
        """
        deadline = time.monotonic() + timeout
        while (leader := self.leader()) is None:
            if time.monotonic() >= deadline:
                raise EtcdClusterError(f"cluster {self.name}: no leader after {timeout} s")
            time.sleep(0.05)
        return leader

    def _leader_for_stop(self) -> int | None:
        live = [m for m in self.members if m.running]
        if len(self.members) < 2 or not live:
            return None
        leader = self.leader()
        if leader is None and 2 * len(live) > len(self.members):
            # A quorum is left, so a leader is on its way (its predecessor just died): wait for it,
            # or it may be elected between our look and the SIGTERM and then hang handing over.
            with contextlib.suppress(EtcdClusterError):
                leader = self.wait_leader(timeout=3 * self.election_ms / 1000 + 1)
        return leader

    # -- etcdctl ----------------------------------------------------------------------------------

    def etcdctl_env(self, endpoints: Sequence[str] | None = None) -> dict[str, str]:
        """Environment that points etcdctl (API v3) at this cluster, with TLS and credentials."""
        env = {
            "ETCDCTL_API": "3",
            "ETCDCTL_ENDPOINTS": ",".join(endpoints if endpoints is not None else self.endpoints),
        }
        client = self.client_tls
        if client is not None:
            env["ETCDCTL_CACERT"] = str(client.cacert)
            env["ETCDCTL_CERT"] = str(client.cert)
            env["ETCDCTL_KEY"] = str(client.key)
        if self.auth is not None and self._auth_enabled:
            env["ETCDCTL_USER"] = f"{self.auth[0]}:{self.auth[1]}"
        return env

    def etcdctl(
        self,
        *args: str,
        endpoints: Sequence[str] | None = None,
        input: str | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Run the matching etcdctl against the cluster and return its stdout.

        Connection settings go in through ETCDCTL_* variables, so a flag in `args`
        (e.g. --endpoints, --user) overrides them.
        """
        env = _child_env(self.etcdctl_env(endpoints))
        try:
            out = subprocess.run(
                [str(self.binaries.etcdctl), *args],
                env=env,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EtcdctlError(args, -1, "", f"timed out after {timeout} s") from exc
        if out.returncode != 0:
            raise EtcdctlError(args, out.returncode, out.stdout, out.stderr)
        return out.stdout

    # -- internals --------------------------------------------------------------------------------

    def _make_members(self) -> None:
        assert self.base_dir is not None
        if self._config_members:
            self.members = [
                Member(
                    index=i,
                    name=c.name,
                    client_port=c.client_port,
                    peer_port=c.peer_port,
                    scheme=c.scheme,
                    data_dir=c.data_dir,
                    log_path=self.base_dir / f"{c.name}.log",
                )
                for i, c in enumerate(self._config_members)
            ]
            return
        ports = free_ports(2 * self.size)
        scheme = "https" if self.tls is not None else "http"
        self.members = [
            Member(
                index=i,
                name=f"{self.name}-{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                scheme=scheme,
                data_dir=self.base_dir / f"{self.name}-{i}.data",
                log_path=self.base_dir / f"{self.name}-{i}.log",
                host=self.host,
            )
            for i in range(self.size)
        ]

    def _command(self, member: Member, state: str) -> list[str]:
        if self._config_members:
            # etcd reads only the file (initial-cluster-state is ignored once the data dir exists).
            return [str(self.binaries.etcd), "--config-file", str(self._config_members[member.index].path)]
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        listen = self.listen_host or member.host
        cmd = [
            *self.command_prefix,
            str(self.binaries.etcd),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.scheme}://{listen}:{member.client_port}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.scheme}://{listen}:{member.peer_port}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={self.token}",
            f"--initial-cluster-state={state}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            # zap on both versions: 3.4's default capnslog prints a deprecation warning.
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        if self.binaries.version_tuple >= (3, 5):
            # Data dirs are throwaway: skipping fsync makes writes cheap (flag exists from 3.5).
            cmd.append("--unsafe-no-fsync")
        if self.quota_backend_bytes is not None:
            cmd.append(f"--quota-backend-bytes={self.quota_backend_bytes}")
        if self.auto_compaction_mode is not None:
            cmd.append(f"--auto-compaction-mode={self.auto_compaction_mode}")
        if self.auto_compaction_retention is not None:
            cmd.append(f"--auto-compaction-retention={self.auto_compaction_retention}")
        if self.tls is not None:
            t = self.tls
            cmd += [
                f"--cert-file={t.server_cert}",
                f"--key-file={t.server_key}",
                f"--trusted-ca-file={t.ca}",
                "--client-cert-auth",
                f"--peer-cert-file={t.peer_cert}",
                f"--peer-key-file={t.peer_key}",
                f"--peer-trusted-ca-file={t.ca}",
                "--peer-client-cert-auth",
            ]
        cmd += self.extra_args
        return cmd

    def _restore(self, member: Member) -> None:
        """Restore `self.snapshot` into the member's data dir, as the member it will start as."""
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        cmd = [
            *restore_argv(self.binaries),
            str(self.snapshot),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={self.token}",
            f"--initial-advertise-peer-urls={member.peer_url}",
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=_child_env({"ETCDCTL_API": "3"}),
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise EtcdClusterError(
                f"cluster {self.name}: restoring {self.snapshot} failed (exit {proc.returncode}): "
                + (proc.stderr.strip().splitlines() or ["no message"])[-1]
            )

    def _spawn(self, member: Member, state: str) -> None:
        with member.log_path.open("ab") as log:
            how = (
                f"--config-file {self._config_members[member.index].path}"
                if self._config_members
                else f"--initial-cluster-state={state}"
            )
            log.write(f"==== etcd-dr: starting {member.name} ({how})\n".encode())
            log.flush()
            # A session of its own: a Ctrl-C meant for the caller reaches the members only through
            # stop(), in order, rather than racing it.
            member.process = subprocess.Popen(
                self._command(member, state),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_child_env(),
                start_new_session=True,
            )
        member.paused = False

    def _http_opener(self) -> urllib.request.OpenerDirector:
        # No proxies: an http_proxy in the environment must not see (or break) loopback checks.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        client = self.client_tls
        if client is not None:
            ctx = ssl.create_default_context(cafile=str(client.cacert))
            ctx.load_cert_chain(str(client.cert), str(client.key))
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        return urllib.request.build_opener(*handlers)

    def _wait_peer_serving(self, member: Member, opener: urllib.request.OpenerDirector) -> None:
        """Wait (briefly) until the member serves its peer port.

        A new member asks each peer whether it was bootstrapped already, waiting up to 1 s for each
        one whose port is bound but not yet serving: started all at once, members stall each other
        for seconds. One after the other, each finds the earlier ones serving and the later ones
        not listening, and goes on at once.
        """
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if member.process is None or member.process.poll() is not None:
                return  # wait_healthy reports it, with the log
            try:
                with opener.open(f"{member.peer_url}/version", timeout=0.5) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it serves
            except (urllib.error.URLError, OSError, ssl.SSLError):
                time.sleep(0.01)

    def _wait_member_healthy(
        self, member: Member, opener: urllib.request.OpenerDirector, deadline: float
    ) -> None:
        last_error = "no answer yet"
        while True:
            proc = member.process
            if proc is None or proc.poll() is not None:
                tail = member.log_tail()
                if "address already in use" in tail:
                    raise _PortClash(member.name)
                code = proc.returncode if proc is not None else None
                raise EtcdClusterError(
                    f"etcd member {member.name} ({self.binaries.version}) exited with {code} before "
                    f"becoming healthy; log {member.log_path}:\n{tail}"
                )
            try:
                with opener.open(f"{member.client_url}/health", timeout=0.5) as resp:
                    body = resp.read().decode("utf-8", "replace")
                # Re-check the process: a stranger on a clashed port could have answered.
                if '"health":"true"' in body.replace(" ", "") and proc.poll() is None:
                    return
                last_error = body.strip()
            except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
                last_error = str(exc)
            if time.monotonic() >= deadline:
                raise EtcdClusterError(
                    f"etcd member {member.name} ({self.binaries.version}) not healthy at "
                    f"{member.client_url} in time (last: {last_error}); log {member.log_path}:\n"
                    f"{member.log_tail()}"
                )
            time.sleep(0.02)

    def _enable_auth(self, user: str, password: str) -> None:
        self.etcdctl("user", "add", f"{user}:{password}")
        if user == "root":
            # `auth enable` wants root to hold the root role; etcd creates the role on grant.
            self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("auth", "enable")
        self._auth_enabled = True

    @staticmethod
    def _require_running(member: Member) -> subprocess.Popen[bytes]:
        if member.process is None or member.process.poll() is not None:
            raise RuntimeError(f"member {member.name} is not running")
        return member.process

    @staticmethod
    def _terminate(members: Sequence[Member]) -> None:
        # Signal all first, then wait: members of one cluster shut down in parallel.
        running = [m.process for m in members if m.process is not None and m.process.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
                # A stopped process only acts on SIGTERM once continued.
                proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + STOP_GRACE
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for m in members:
            m.paused = False
