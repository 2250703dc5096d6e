"""`etcd-dr demo`: two local 3-member etcd sites with mutual TLS, built the way a user builds them with
the product, the mirror between them, and the source procedure narrated step by step.

1. a topology file: two sites of three members on 127.0.0.1 (free ports), written to the demo's
   directory as topology.yaml and loaded as `etcd-dr render` loads it;
2. certificates made with etcd_dr.pki following render's pki plan (what the rendered pki.sh does): a
   CA per site, a server and a peer certificate per member, the mirror's client certificate per site;
3. `render` into the demo's directory: etcd.conf.yml and etcd.service per member, the mirror's unit;
4. every member started as its rendered unit starts it: `etcd --config-file FILE`;
5. the mirror, in this process, with the command line of the rendered etcd-dr-mirror.service;
then writes, a member killed and restarted, and `verify`.

It ends every process it started and removes its files on any exit, Ctrl-C included.

The code follows the story, one step per function or method: _Demo tells steps 1-9 (and --keep),
_Moves steps 10-18 (switchover, failover, failback).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from . import runner
from .config import MirrorConfig
from .errors import CheckFailed, EtcdDrError, Refused, UsageError
from .etcd import ClientConfig, EtcdClient, EtcdError, TLSError, TransientError, prefix_range_end
from .failover.config import MoveConfig
from .failover.failback import FailbackResult, failback
from .failover.failover import failover
from .failover.sites import mirror_command, reversed_pair
from .failover.switchover import SwitchoverResult, switchover
from .local.acked import Ack, AckedWriter
from .local.binaries import EtcdBinaries, EtcdNotFoundError, find
from .local.cluster import EtcdCluster, EtcdClusterError, EtcdPortInUseError, free_ports
from .local.tls import TLSFiles
from .metrics import health
from .mirror import Mirror
from .readiness import CheckOptions, check
from .render import MIRROR_UNIT, config_file_of, make_pki, mirror_argv, pki_plan, render, write_rendered
from .state.roles import read_role
from .topology import Topology, expand, load_topology
from .verify import verify

log = logging.getLogger("etcd_dr.demo")

T = TypeVar("T")

SITES = {"site-a": ("A", "primary"), "site-b": ("B", "standby")}
MEMBERS = 3
PREFIX = "/registry/"
HOST = "127.0.0.1"
# Another program may take a free port between our look and etcd's bind: pick new ports, render again.
_START_ATTEMPTS = 3


def _data_root() -> Path:
    # Member data on tmpfs when there is one: the demo's throwaway data then costs no disk syncs.
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="etcd-dr-demo-data-", dir=where))


def _etcd_dr_binary() -> str | None:
    script = Path(sys.executable).parent / "etcd-dr"
    return str(script) if script.is_file() else None


def _topology_doc(etcd: Path, out: Path, data_root: Path, ports: list[int], token: str) -> dict[str, Any]:
    """Two sites of three members on 127.0.0.1. Every "host" is this machine, so the TLS paths are where
    the certificates are made (OUT/pki/<site>/, as the rendered pki.sh makes them) and each member's
    configuration file is where render writes it: nothing needs copying."""
    pki = f"{out}/pki/{{site}}"
    doc: dict[str, Any] = {"sites": {}}
    standby = next(site for site, (_, role) in SITES.items() if role == "standby")
    port = iter(ports)
    for site, (letter, role) in SITES.items():
        doc["sites"][site] = {
            "role": role,
            "client_dns": "localhost",
            "members": [
                {
                    "name": f"etcd-{letter.lower()}{i}",
                    "host": HOST,
                    "client_port": next(port),
                    "peer_port": next(port),
                    "data_dir": str(data_root / f"etcd-{letter.lower()}{i}"),
                }
                for i in range(1, MEMBERS + 1)
            ],
            "tls": {
                "server": {
                    # The standby's members also trust the primary's CA for clients (render's
                    # clients-pki.sh makes this bundle of both CAs).
                    "ca": f"{out}/pki/clients-ca.pem" if site == standby else f"{pki}/ca.pem",
                    "cert": f"{pki}/{{member}}-server.pem",
                    "key": f"{pki}/{{member}}-server-key.pem",
                },
                "peer": {
                    "ca": f"{pki}/ca.pem",
                    "cert": f"{pki}/{{member}}-peer.pem",
                    "key": f"{pki}/{{member}}-peer-key.pem",
                },
                "mirror_client": {
                    "ca": f"{pki}/ca.pem",
                    "cert": f"{pki}/mirror.pem",
                    "key": f"{pki}/mirror-key.pem",
                },
            },
            "etcd_binary": str(etcd),
            # Three members share this host: each needs its own configuration file and unit name.
            "config_file": f"{out}/{{site}}/{{member}}/etcd.conf.yml",
            "unit_name": "etcd-{member}.service",
            "cluster_token": f"{site}-{token}",
            # Quicker elections than etcd's defaults: every member is on loopback.
            "extra_flags": {"heartbeat-interval": 50, "election-timeout": 500},
        }
    doc["mirror"] = {"prefix": PREFIX}
    binary = _etcd_dr_binary()
    if binary is not None:
        doc["mirror"]["etcd_dr_binary"] = binary
    return doc


def _write_topology(path: Path, doc: dict[str, Any]) -> Topology:
    header = (
        "# The demo's two sites, all on this machine (etcd-dr demo writes and removes this file).\n"
        "# `etcd-dr render topology.yaml --out DIR` turns it into what the demo runs.\n"
    )
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    # As `etcd-dr render` reads it: validated, every problem reported.
    return load_topology(path)


def _mirror_config(topology: Topology) -> MirrorConfig:
    """The configuration the rendered etcd-dr-mirror.service's command line gives the mirror."""
    argv = mirror_argv(topology)
    dest, flags = argv[2], argv[3:]
    opts = dict(zip(flags[::2], flags[1::2], strict=True))
    expected = {"--endpoints", "--cacert", "--cert", "--key", "--dest-cacert", "--dest-cert", "--dest-key"}
    # --metrics-addr: the demo's mirror runs in-process, without a metrics server.
    if not expected <= set(opts) <= expected | {"--prefix", "--state-prefix", "--metrics-addr"}:
        raise RuntimeError(f"unexpected mirror command line: {argv}")  # the demo's topology changed
    source = ClientConfig.create(
        opts["--endpoints"],
        cacert=opts["--cacert"],
        cert=opts["--cert"],
        key=opts["--key"],
        role="source",
        flag_prefix="",
    )
    destination = ClientConfig.create(
        dest,
        cacert=opts["--dest-cacert"],
        cert=opts["--dest-cert"],
        key=opts["--dest-key"],
        role="destination",
        flag_prefix="dest-",
    )
    return MirrorConfig(
        source=source,
        dest=destination,
        prefix=opts.get("--prefix", "").encode(),
        state_prefix=opts["--state-prefix"].encode(),
        status_interval=3600,
    )


def _files_line(written: list[Path], out: Path) -> str:
    """ "6 etcd.conf.yml, 6 etcd.service, 2 pki.sh, etcd-dr-mirror.service, ..., README.txt in OUT"."""
    counts = Counter(p.name for p in written)
    return ", ".join(f"{n} {name}" if n > 1 else name for name, n in counts.most_common()) + f" in {out}"


async def _end_mirror(task: asyncio.Task[Any] | None) -> None:
    """Cancel the mirror and wait for it to end; a cancel it loses is repeated, and one that does not end
    it within seconds does not hold up the cleanup (the clusters go away under it anyway)."""
    if task is None:
        return
    for _ in range(3):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if done:
            if not task.cancelled() and task.exception() is not None:
                log.debug("the mirror had failed", exc_info=task.exception())
            return
    log.warning("the mirror did not end within 15 s of being cancelled; stopping the clusters under it")


def _check_mirror(task: asyncio.Task[Any]) -> None:
    """A mirror that ended by itself failed: say why rather than wait for the standby in vain."""
    if task.done():
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
        raise CheckFailed("demo: the mirror ended by itself")


async def _wait_equal(
    src: EtcdClient, dst: EtcdClient, prefix: bytes, mirror: asyncio.Task[Any], timeout: float = 30.0
) -> float:
    """Seconds until the destination's prefix holds exactly what the source's does."""
    t0 = time.monotonic()
    end = prefix_range_end(prefix)
    while True:
        _check_mirror(mirror)
        a = [(kv.key, kv.value) for kv in (await src.range(prefix, end)).kvs]
        b = [(kv.key, kv.value) for kv in (await dst.range(prefix, end)).kvs]
        if a == b:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise CheckFailed(f"demo: the standby did not catch up within {timeout:g} s")
        await asyncio.sleep(0.02)


async def _app_put(client: EtcdClient, key: bytes, value: bytes) -> None:
    """The demo's application: a put retried while the cluster elects a new leader, as real clients do
    (the same put twice leaves the same value)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.put(key, value)
            return
        except TransientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


class _Sites:
    """The demo's etcd processes. Every start, kill and restart runs in one thread pool, so that
    cleanup can wait for one still in flight (after a Ctrl-C) before it ends the processes: a member
    spawned after stop() would otherwise outlive the demo."""

    def __init__(self) -> None:
        self.clusters: list[EtcdCluster] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="etcd-dr-demo")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self, clusters: list[EtcdCluster]) -> list[BaseException | None]:
        self.clusters += clusters
        futures = [asyncio.get_running_loop().run_in_executor(self._pool, c.start) for c in clusters]
        # Shielded: a Ctrl-C leaves the starts running; close() waits for them.
        results = await asyncio.shield(asyncio.gather(*futures, return_exceptions=True))
        return [r if isinstance(r, BaseException) else None for r in results]

    def stop(self, clusters: list[EtcdCluster]) -> None:
        threads = [threading.Thread(target=c.stop) for c in clusters]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def close(self) -> None:
        """Wait for whatever is in flight, then end every member (sites in parallel)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.stop(self.clusters)


# The narration's width: a terminal of 120 columns shows every line whole.
WIDTH = 119
_TLS_FLAG = re.compile(r" --(?:dest-)?(?:cacert|cert|key) \S+")
_COMMAND = re.compile(
    r"\betcd-dr (?:mirror|switchover|failover|failback|verify|status|check|drill) (?=\S*https?://|[AB] )"
)


class _Narrator:
    """The demo's lines as a reader wants them: the sites named ("site A") instead of their endpoint
    lists, commands without their TLS flags, and no line wider than WIDTH. With --verbose, the commands
    are printed in full (to copy them), on one line each."""

    def __init__(self, out: Callable[[str], None], verbose: bool) -> None:
        self.out = out
        self.verbose = verbose
        self._names: list[tuple[str, str, str]] = []  # (endpoint text, in prose, in a command)
        self._told = False

    def name_sites(self, sites: dict[str, list[str]]) -> None:
        for letter, endpoints in sites.items():
            self._names.append((",".join(endpoints), f"site {letter}", letter))
            self._names += [(e, f"site {letter}", letter) for e in endpoints]
        self._names.sort(key=lambda n: -len(n[0]))  # a list before its first endpoint

    def __call__(self, line: str) -> None:
        # A command line: "   $ etcd-dr ..." or a result's "| ...: etcd-dr mirror B --endpoints A ...".
        found = _COMMAND.search(line)
        if found is not None and self.verbose:
            self.out(line)
            return
        head, command = (line[: found.start()], line[found.start() :]) if found else (line, "")
        if command:
            command = _TLS_FLAG.sub("", command)
        for text, prose, short in self._names:
            head = head.replace(text, prose)
            command = command.replace(text, short)
        if command and not self._told:
            self._told = True
            self._wrapped(
                "   (commands name the sites A and B and leave out their TLS flags; "
                "`etcd-dr demo --verbose` prints them in full)"
            )
        self._wrapped(head + command)

    def _wrapped(self, line: str) -> None:
        if len(line) <= WIDTH:
            self.out(line)
            return
        # Continuation lines are indented 5 more than their line (no line of the demo starts with 5
        # spaces): a reader, or a test, can join them back.
        indent = " " * (len(line) - len(line.lstrip(" ")) + 5)
        for piece in textwrap.wrap(
            line, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
        ):
            self.out(piece)


async def run_demo(
    say: Callable[[str], None], *, keep: bool = False, version: str | None = None, verbose: bool = False
) -> None:
    say = _Narrator(say, verbose)
    # The narration says what happens; the mirror's own info lines would only repeat it.
    for name in ("etcd_dr.mirror", "etcd_dr.etcd", "etcd_dr.failover"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        binaries: EtcdBinaries = find(version)
    except EtcdNotFoundError as e:
        raise UsageError(f"--etcd-version {version}: {e}" if version else str(e)) from None
    # Signals: the runner (cli runs the demo with repeat_cancel); its cleanup ends every process.
    await _run(say, binaries, keep=keep)


async def _run(say: Callable[[str], None], binaries: EtcdBinaries, *, keep: bool) -> None:
    demo = _Demo(say, binaries)
    try:
        await demo.run(keep=keep)
    finally:
        runner.cleanup_begins()
        await demo.clean_up()


class _Demo:
    """Steps 1-9 and --keep: the two sites rendered and started, the mirror, writes, a member killed,
    verify; _Moves tells steps 10-18. clean_up() ends whatever was started and removes every file."""

    def __init__(self, say: Callable[[str], None], binaries: EtcdBinaries) -> None:
        self.say = say
        self.binaries = binaries
        self.workdir = Path(tempfile.mkdtemp(prefix="etcd-dr-demo-"))
        self.data_root: Path | None = None
        self.sites = _Sites()
        self.mirrors: list[asyncio.Task[Any]] = []  # every mirror started, ended on the way out

    async def run(self, *, keep: bool) -> None:
        self.data_root = _data_root()
        self.say(f"etcd {self.binaries.version} ({self.binaries.etcd})")
        self.say(f"working directory {self.workdir} (member data in {self.data_root})")
        topology, clusters = await self._start_sites(self.data_root)
        site_a, site_b = clusters["site-a"], clusters["site-b"]
        if isinstance(self.say, _Narrator):
            self.say.name_sites({"A": site_a.endpoints, "B": site_b.endpoints})
        for letter, cluster in (("A", site_a), ("B", site_b)):
            members = ", ".join(f"{m.name} :{m.client_port}" for m in cluster.members)
            self.say(f"   site {letter}: {members}")
        config = _mirror_config(topology)
        async with EtcdClient(config.source) as a, EtcdClient(config.dest) as b:
            await self._mirror(topology, config, a, b)
            await self._member_dies(site_a, a, b)
            result = await verify(config)
            self.say(f"9. etcd-dr verify (the mirror's flags): {result.summary()}")
            if not result.equal:
                raise CheckFailed(f"demo: verify found differences: {result.summary()}")
            moves = _Moves(self.say, self.sites, site_a, config, self.workdir, a, b, self.mirrors)
            await moves.run()
            if keep:
                await self._keep_running(topology, site_a, site_b)

    async def clean_up(self) -> None:
        try:
            for task in self.mirrors:
                await _end_mirror(task)
        finally:
            self.sites.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            if self.data_root is not None:
                shutil.rmtree(self.data_root, ignore_errors=True)
            self.say("Stopped every process the demo started and removed its files.")

    async def _start_sites(self, data_root: Path) -> tuple[Topology, dict[str, EtcdCluster]]:
        """Steps 1-4: the topology, certificates, render, the members started; rendered again on new
        ports if another program took one meanwhile."""
        topo_file, out = self.workdir / "topology.yaml", self.workdir / "sites"
        token = uuid.uuid4().hex[:8]
        for attempt in range(_START_ATTEMPTS):
            ports = free_ports(2 * MEMBERS * len(SITES))
            topology = _write_topology(
                topo_file, _topology_doc(self.binaries.etcd, out, data_root, ports, token)
            )
            if attempt == 0:
                self._certificates(topology, topo_file, out)
            # What `etcd-dr render topology.yaml --out DIR` does (again, with --force, on new ports).
            written = write_rendered(render(topology, source=str(topo_file)), out, force=attempt > 0)
            if attempt == 0:
                self.say(f"3. render: {_files_line(written, out)}")
            clusters = {
                site: EtcdCluster.from_config_files(
                    self.binaries,
                    [Path(config_file_of(site, s, m)) for m in s.members],
                    client_tls=_client_tls(topology, site),
                    name=site,
                    base_dir=self.workdir,
                )
                for site, s in topology.sites.items()
            }
            if attempt == 0:
                self.say(
                    f"4. Start the {MEMBERS * len(SITES)} members as their rendered units do: etcd "
                    f"--config-file {out}/<site>/<member>/etcd.conf.yml (client and peer mutual TLS)."
                )
            if await self._started(list(clusters.values()), attempt, data_root):
                return topology, clusters
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _certificates(self, topology: Topology, topo_file: Path, out: Path) -> None:
        """Steps 1-2: the topology written, the certificates made as the rendered pki.sh makes them."""
        self.say(
            f"1. Topology: sites A (primary) and B (standby), {MEMBERS} members each on {HOST}, "
            f"mirror of {PREFIX} from A to B -> {topo_file}"
        )
        make_pki(topology, out / "pki")
        plan = pki_plan(topology)
        self.say(
            "2. Certificates with etcd-dr pki (not cfssl), as the rendered pki.sh makes them: per "
            "site a CA, a server and a peer certificate per member, the mirror's client "
            f"certificate -> {sum(map(len, plan.values())) + len(plan)} certificates in "
            f"{out / 'pki'}/{{{','.join(plan)}}}"
        )

    async def _started(self, clusters: list[EtcdCluster], attempt: int, data_root: Path) -> bool:
        """Start the clusters: True once all run; False (all stopped, data removed) if a port was taken
        and another attempt is left; the failure otherwise."""
        errors = await self.sites.start(clusters)
        if not any(errors):
            return True
        self.sites.stop(clusters)
        failure = next(e for e in errors if e is not None)
        if not isinstance(failure, EtcdPortInUseError) or attempt == _START_ATTEMPTS - 1:
            raise _start_failed(failure)
        self.say("   another program took one of the ports meanwhile: rendering again with new ports.")
        _empty(data_root)
        return False

    async def _mirror(self, topology: Topology, config: MirrorConfig, a: EtcdClient, b: EtcdClient) -> None:
        """Steps 5-7: the application's keys, the mirror started, new writes mirrored."""
        say = self.say
        say(f"5. Applications write to site A: 2,000 keys under {PREFIX}.")
        for i in range(0, 2000, 100):
            await asyncio.gather(
                *(a.put(b"/registry/pods/pod-%04d" % j, b"spec-%d" % j) for j in range(i, i + 100))
            )
        say(
            f"6. etcd-dr mirror A -> B as the rendered {MIRROR_UNIT} runs it (here in-process), with "
            f"its client certificates pki/{topology.primary}/mirror.pem and "
            f"pki/{topology.standby}/mirror.pem: copy at one revision, then replay; checkpoint in site B."
        )
        mirror = Mirror(config)
        mirror_task = asyncio.create_task(mirror.run())
        self.mirrors.append(mirror_task)
        took = await _wait_equal(a, b, PREFIX.encode(), mirror_task)
        say(f"   site B holds the same 2,000 keys after {took:.2f} s.")
        say("7. New writes, overwrites and a prefix delete on site A appear on site B:")
        for j in range(10):
            await a.put(b"/registry/services/svc-%d" % j, b"v1")
        await a.put(b"/registry/pods/pod-0001", b"spec-1-updated")
        await a.delete_range(b"/registry/pods/pod-19", prefix_range_end(b"/registry/pods/pod-19"))
        took = await _wait_equal(a, b, PREFIX.encode(), mirror_task)
        say(
            f"   equal again after {took * 1000:.0f} ms; "
            f"mirror at source revision {mirror.stats.applied_revision}."
        )

    async def _member_dies(self, site_a: EtcdCluster, a: EtcdClient, b: EtcdClient) -> None:
        """Step 8: the member the mirror reads from is killed, writes go on, it is restarted."""
        # Member 0: the first endpoint, the one the mirror reads from.
        victim = site_a.members[0].name
        self.say(f"8. Member {victim} of site A dies: the mirror moves to another member and loses nothing.")
        leader = await self.sites.run(site_a.leader)
        await self.sites.run(site_a.kill, 0)
        took_over = ""
        if leader == 0:
            # Writes sent before a new leader is elected would wait for etcd's request timeout
            # (6 s here): the proposal went to the dead leader. Clients see a slow write; wait instead.
            t0 = time.monotonic()
            new = await self.sites.run(site_a.wait_leader)
            took_over = (
                f" (it led site A: {site_a.members[new].name} took over after "
                f"{(time.monotonic() - t0) * 1000:.0f} ms)"
            )
        for j in range(10, 20):
            await _app_put(a, b"/registry/services/svc-%d" % j, b"v1")
        took = await _wait_equal(a, b, PREFIX.encode(), self.mirrors[-1])
        await self.sites.run(site_a.restart, 0)
        self.say(
            f"   equal after {took * 1000:.0f} ms with {victim} down{took_over}; "
            f"{victim} restarted from its etcd.conf.yml."
        )

    async def _keep_running(self, topology: Topology, site_a: EtcdCluster, site_b: EtcdCluster) -> None:
        """--keep: how to reach each site with etcdctl, then wait for a signal."""
        self.say(
            f"   --keep: the {MEMBERS * len(SITES)} members and the mirror keep running; Ctrl-C "
            f"ends them. Files: {self.workdir}."
        )
        self.say("   Reach the sites with:")
        for letter, site, cluster in (("A", topology.primary, site_a), ("B", topology.standby, site_b)):
            tls = _client_tls(topology, site)
            # etcdctl's settings in a file of their own: the command fits on a line.
            env = self.workdir / f"site-{letter.lower()}.env"
            env.write_text(
                "".join(
                    f"export {k}={shlex.quote(str(v))}\n"
                    for k, v in (
                        ("ETCDCTL", self.binaries.etcdctl),
                        ("ETCDCTL_API", 3),
                        ("ETCDCTL_ENDPOINTS", ",".join(cluster.endpoints)),
                        ("ETCDCTL_CACERT", tls.cacert),
                        ("ETCDCTL_CERT", tls.cert),
                        ("ETCDCTL_KEY", tls.key),
                    )
                ),
                encoding="utf-8",
            )
            self.say(f'   site {letter}: . {env} && "$ETCDCTL" get --prefix {PREFIX} --keys-only')
        await asyncio.Event().wait()


# ---- failover and failback ----------------------------------------------------------------------

# The application's writes: new keys, so that "was this write kept" has one answer (Kubernetes keeps
# Endpoints, among its busiest objects, under this prefix).
APP_PREFIX = b"/registry/services/endpoints/"
APP_WRITES = 400  # acknowledged writes recorded before site A dies
# How far above site A's last known revision site B's is raised on promotion (etcd-dr's default is
# 10,000; a Kubernetes site keeps that, the demo keeps its pace).
REVISION_MARGIN = 2000


def _command(verb: str, pair: MirrorConfig, *extra: str) -> str:
    """The `etcd-dr VERB` command line a user types for `pair` (source --endpoints, DEST)."""
    words = shlex.split(mirror_command(pair))
    words[1] = verb
    yes = ["--yes"] if verb in ("switchover", "failover", "failback") else []  # no prompt on a terminal
    return "   $ " + shlex.join([*words, *extra, *yes])


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """While a site is down, the mirror's retry warnings (several a second) would bury the story."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _kill_site(cluster: EtcdCluster) -> list[int]:
    """The site loses power: SIGKILL to every member's PID at once, then each one reaped."""
    pids = [m.pid for m in cluster.members if m.pid is not None]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for i in range(len(cluster.members)):
        cluster.kill(i)
    return pids


def _start_site(cluster: EtcdCluster) -> None:
    """Every member again from its etcd.conf.yml; none is healthy alone, so all start before the wait."""
    for i in range(len(cluster.members)):
        cluster.restart(i, wait=False)
    cluster.wait_healthy()


async def _dump(client: EtcdClient, prefix: bytes) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await client.range(prefix, prefix_range_end(prefix))).kvs}


async def _record_writes(writer: AckedWriter, count: int, timeout: float = 30.0) -> asyncio.Task[None]:
    """Start `writer` and return its task once it has `count` acknowledged writes."""
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    task.add_done_callback(lambda _: stop.set())
    deadline = time.monotonic() + timeout
    while len(writer.acked) < count:
        if task.done():
            await task  # its error
            raise CheckFailed("demo: the application stopped writing")
        if time.monotonic() > deadline:
            task.cancel()
            raise CheckFailed(f"demo: site A acknowledged {len(writer.acked)} writes in {timeout:g} s")
        await asyncio.sleep(0.01)
    return task


async def _rerun_if_cut(say: Callable[[str], None], move: Callable[[int], Awaitable[T]]) -> T:
    """Run a move; run it again (each is idempotent) if a member still starting cut a connection in
    its TLS handshake, which the etcd client reports as a TLS failure ("Handshake read failed
    (Endpoint closing)") rather than as a transient one."""
    for attempt in range(3):
        try:
            return await move(attempt)
        except TLSError as e:
            if "endpoint closing" not in str(e).lower() or attempt == 2:
                raise
            say(f"   (stopped by a connection cut during a TLS handshake: {e}; run again, as after any stop)")
    raise AssertionError("unreachable")


async def _switchover(move: MoveConfig, _attempt: int) -> SwitchoverResult:
    return await switchover(move)


async def _stopped_by_promotion(task: asyncio.Task[Any], what: str) -> str:
    """The refusal that ends a mirror whose destination was promoted (it compares the role record)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), 30)
    except Refused as e:
        return str(e)
    except TimeoutError:
        raise CheckFailed(f"demo: {what} still runs after its destination was promoted") from None
    raise CheckFailed(f"demo: {what} ended without a refusal")


async def _switchover_and_back(
    say: Callable[[str], None],
    config: MirrorConfig,
    hook: str,
    a: EtcdClient,
    b: EtcdClient,
    mirrors: list[asyncio.Task[Any]],
) -> None:
    """Step 10: a planned switchover to site B, the reverse mirror, and a switchover back to site A."""
    prefix = PREFIX.encode()
    for pair, (src, dst), back in ((config, (a, b), False), (reversed_pair(config), (b, a), True)):
        say(_command("switchover", pair, "--no-fence", "--switch-hook", hook))
        # The mirror fenced by the promotion logs its failed txn before it stops: the narration says it.
        with _quiet("etcd_dr.mirror", "etcd_dr.etcd"):
            move = MoveConfig(pair=pair, fence="none", switch_hook=hook)
            result = await _rerun_if_cut(say, functools.partial(_switchover, move))
            for line in result.lines():
                say(f"   | {line}")
            stopped = await _stopped_by_promotion(mirrors[-1], "the mirror")
        mirror = Mirror(reversed_pair(pair))
        mirrors.append(asyncio.create_task(mirror.run()))
        t0 = time.monotonic()
        # The next switchover needs its checkpoint: the copy done, replaying.
        while mirror.stats.phase != "replay":
            _check_mirror(mirrors[-1])
            if time.monotonic() - t0 > 30:
                raise CheckFailed("demo: the reverse mirror did not finish its copy within 30 s")
            await asyncio.sleep(0.01)
        await _wait_equal(dst, src, prefix, mirrors[-1])
        took = time.monotonic() - t0
        old, new = ("B -> A", "A -> B") if back else ("A -> B", "B -> A")
        say(
            f"   The mirror {old} stops: {stopped.partition(': mirroring into')[0]}. The mirror {new} "
            f"(the printed command) copies what differs and replays: equal after {took:.2f} s."
        )


class _Moves:
    """Steps 10-18: a switchover to B and back; site A dies under writes, failover to B with the RPO,
    the old mirror fenced, site A back, failback with the errant-writes report and the switch back, the
    mirror again, verify."""

    def __init__(
        self,
        say: Callable[[str], None],
        sites: _Sites,
        site_a: EtcdCluster,
        config: MirrorConfig,
        workdir: Path,
        a: EtcdClient,
        b: EtcdClient,
        mirrors: list[asyncio.Task[Any]],
    ) -> None:
        self.say, self.sites, self.site_a, self.config = say, sites, site_a, config
        self.workdir, self.a, self.b, self.mirrors = workdir, a, b, mirrors
        self.endpoints_file = workdir / "clients.endpoints"
        # What points the clients at the new primary: here a file the application reads.
        self.hook = f'echo "$ETCD_DR_NEW_PRIMARY_ENDPOINTS" > {shlex.quote(str(self.endpoints_file))}'
        self.apps = {config.source.endpoints_text: ("A", a), config.dest.endpoints_text: ("B", b)}
        self.writer = AckedWriter(a, prefix=APP_PREFIX + b"a-", inflight=32)

    def app_site(self) -> tuple[str, EtcdClient]:
        return self.apps[self.endpoints_file.read_text(encoding="utf-8").strip()]

    async def run(self) -> None:
        self.endpoints_file.write_text(self.config.source.endpoints_text + "\n", encoding="utf-8")
        self._tell_switchover()
        await _switchover_and_back(self.say, self.config, self.hook, self.a, self.b, self.mirrors)
        await self._check_ready()
        self.say(
            f"11. The application writes to the site named in {self.endpoints_file.name} (site A), recording "
            "every write the site acknowledges (key, revision)."
        )
        old_mirror = self.mirrors[-1]  # the mirror A -> B that runs when site A dies
        writing = await _record_writes(self.writer, APP_WRITES)
        try:
            with _quiet("etcd_dr.mirror", "etcd_dr.etcd"):
                await self._drill()
                await self._site_a_dies(writing)
                rpo, lost = await self._failover()
                await self._writes_on_b()
                await self._site_a_back(old_mirror)
            fb = await self._failback(rpo, lost)
            await self._mirror_again(fb)
        finally:
            writing.cancel()

    def _tell_switchover(self) -> None:
        self.say(
            "10. A planned switchover to site B (site A's maintenance, a drill) and back. --no-fence: "
            'nothing writes now ("writes were refused" below is how long a fenced site refuses them); '
            "a real site fences writes on the old primary with etcd auth (etcd-dr's user holding the root "
            "role) or --fence-hook CMD."
        )
        self.say(
            f"   The application finds the primary in {self.endpoints_file}, which every move's "
            "--switch-hook rewrites; a real site moves a DNS name instead (--dns-server/--dns-zone/"
            "--dns-name/--dns-tsig-key) or its load balancer (--switch-hook)."
        )

    async def _check_ready(self) -> None:
        """Before the disaster: `etcd-dr check` with the failover's flags says site B is ready."""
        move = MoveConfig(pair=self.config, fence="none", switch_hook=self.hook)
        self.say(
            "   Would a failover to site B work now? etcd-dr check takes the failover's flags and checks "
            "what it needs (both sites, the mirror and its lag, a verify now, fencing, the clients' "
            "switch), changing nothing:"
        )
        self.say(_command("check", self.config, "--no-fence", "--switch-hook", self.hook, "--verify"))
        with _quiet("etcd_dr.checkpoints"):
            report = await check(move, CheckOptions(verify_now=True))
        for line in report.lines()[1:]:
            self.say(f"   | {line.lstrip()}")
        if not report.ready:
            raise CheckFailed("demo: etcd-dr check says site B is not ready for a failover")

    async def _drill(self) -> None:
        """Step 11, continued: the failover to site B rehearsed on a throwaway copy of it, while the
        application writes; both sites untouched (the drill's record goes on site B)."""
        from .drill import DrillConfig, drill

        self.say(
            "   Before any disaster, etcd-dr drill rehearses the failover to site B on a copy of it (a "
            "snapshot restored into a throwaway local etcd): the RPO and RTO it would have, both sites "
            "untouched."
        )
        reason = "demo: rehearsal before the disaster"
        self.say(_command("drill", self.config, "--revision-margin", "1000", "--reason", reason))
        move = MoveConfig(pair=self.config, revision_margin=1000, reason=reason)
        with _quiet("etcd_dr.failover", "etcd_dr.drill", "etcd_dr.checkpoints", "etcd_dr.verify"):
            result = await drill(DrillConfig(move), lambda line: None)
        for line in result.lines():
            self.say(f"   | {line}")
        if not result.passed:
            raise CheckFailed(f"demo: the drill of a failover to site B failed: {result.why}")

    async def _site_a_dies(self, writing: asyncio.Task[None]) -> None:
        """Step 12: every member of site A killed while the application writes."""
        pids = await self.sites.run(_kill_site, self.site_a)
        writing.cancel()  # its next writes could only fail; those in flight are not acknowledged
        with contextlib.suppress(asyncio.CancelledError):
            await writing
        last = max(w.revision for w in self.writer.acked)
        self.say(
            f"12. Site A dies while the application writes: SIGKILL to its {len(pids)} members "
            f"(PIDs {', '.join(map(str, pids))}), as the demo started them. {len(self.writer.acked)} writes "
            f"were acknowledged, the last at revision {last}."
        )

    async def _failover(self) -> tuple[int, list[Ack]]:
        """Step 13: failover to site B; the acknowledged writes up to the RPO checked on site B. Returns
        the RPO revision and the writes after it."""
        move = MoveConfig(
            pair=self.config,
            fence="none",
            switch_hook=self.hook,
            revision_margin=REVISION_MARGIN,
            probe_timeout=1.0,
        )
        self.say(
            "13. etcd-dr failover promotes site B, the standby of the unreachable site A (it refuses "
            "while site A answers and is healthy, unless --force). --no-fence: the demo's clusters "
            "have no auth; a real site fences writes on the old primary with etcd auth (etcd-dr's "
            "user holding the root role) or --fence-hook CMD."
        )
        flags = ["--no-fence", "--switch-hook", self.hook, "--probe-timeout", "1"]
        self.say(_command("failover", self.config, *flags, "--revision-margin", str(REVISION_MARGIN)))
        t0 = time.monotonic()
        result = await _rerun_if_cut(self.say, lambda _: failover(move))
        took = time.monotonic() - t0
        for line in result.lines():
            self.say(f"   | {line}")
        rpo = result.rpo_revision
        kept, lost = await self._check_rpo(rpo)
        after = (
            f"{len(lost)} came after it (acknowledged by site A, not yet mirrored when it died): "
            "failback will list them"
            if lost
            else "none came after it (the mirror had applied every write site A acknowledged)"
        )
        self.say(
            f"   RPO, in {took:.2f} s: site B has applied site A's revision {rpo}: all {len(kept)} "
            f"recorded writes up to it are on site B; {after}."
        )
        self.say(
            "   Kubernetes: site B's revision was raised past site A's last known one + "
            f"{REVISION_MARGIN} and compacted there (now {result.new_revision}): a watcher holding "
            "site A's resource versions is told to re-list instead of waiting for events that never come."
        )
        return rpo, lost

    async def _check_rpo(self, rpo: int) -> tuple[list[Ack], list[Ack]]:
        """Every acknowledged write up to the RPO is on site B, none after it: (kept, lost)."""
        on_b = await _dump(self.b, APP_PREFIX)
        kept, lost = self.writer.up_to(rpo), self.writer.after(rpo)
        missing = [w.key for w in kept if on_b.get(w.key) != w.value]
        if missing:
            raise CheckFailed(f"demo: {len(missing)} writes up to the RPO revision {rpo} are not on site B")
        if any(w.key in on_b for w in lost):
            raise CheckFailed(f"demo: site B holds writes after the RPO revision {rpo}")
        return kept, lost

    async def _writes_on_b(self) -> None:
        """Step 14: the switch hook pointed the application at site B, which takes its writes."""
        letter, client = self.app_site()
        if letter != "B":
            raise CheckFailed(f"demo: the switch hook did not point the application at site B ({letter})")
        for j in range(100):
            await _app_put(client, APP_PREFIX + b"b-%04d" % j, b"written on B")
        self.say(
            f"14. The application follows {self.endpoints_file.name} to site {letter}: 100 writes there "
            "while site A is down."
        )

    async def _site_a_back(self, old_mirror: asyncio.Task[Any]) -> None:
        """Step 15: site A started again; the mirror left running from before is refused."""
        await self.sites.run(_start_site, self.site_a)
        role_a = (await read_role(self.a, self.config.layout)).role
        self.say(
            f"15. Site A is back, its {len(self.site_a.members)} members started again from their "
            f"etcd.conf.yml. It still says {role_a.describe() if role_a else 'nothing'} and holds the "
            "writes site B never got; nothing writes into it (the clients point at site B)."
        )
        # The mirror of step 6 has been retrying site A all along (its replay waits for the source);
        # back in touch, it begins a new cycle, which reads site B's role record first.
        try:
            await asyncio.wait_for(asyncio.shield(old_mirror), 30)
        except Refused as e:
            self.say(f"   The mirror left running from step 10 reaches site A again and stops: {e}")
        except TimeoutError:
            raise CheckFailed("demo: the mirror from before the failover still runs") from None
        except (EtcdError, EtcdDrError) as e:
            # Not the refusal: whatever ended it, the same mirror started again must be refused.
            self.say(f"   The mirror left running from step 10 ended with: {e}")
            try:
                await asyncio.wait_for(Mirror(self.config).run(), 30)
            except Refused as refused:
                self.say(f"   Started again (as its unit's Restart= would), it stops: {refused}")
            else:
                raise CheckFailed("demo: a mirror into the new primary was not refused") from None
        else:
            raise CheckFailed("demo: the mirror from before the failover ended without a refusal")

    async def _failback(self, rpo: int, lost: list[Ack]) -> FailbackResult:
        """Step 16: failback, its report checked against the writes recorded after the RPO."""
        report = self.workdir / "failback-report.json"
        back = MoveConfig(
            pair=reversed_pair(self.config),
            fence="none",
            switch_hook=self.hook,
            revision_margin=REVISION_MARGIN,
            report=report,
        )
        self.say(
            "16. etcd-dr failback: fence site A and make it site B's standby, list the writes site A took "
            "after the RPO in a report (nothing is overwritten before it is listed), re-sync site A from "
            "site B (only what differs), then a planned switchover back to site A (--stay would stop "
            "before it):"
        )
        flags = ["--no-fence", "--switch-hook", self.hook, "--report", str(report)]
        self.say(_command("failback", back.pair, *flags, "--revision-margin", str(REVISION_MARGIN)))
        # The re-sync names each errant write it removes (the report has them); watches of the moves break.
        with _quiet("etcd_dr.mirror", "etcd_dr.etcd"):
            # A rerun writes the same list to a new file: a report is never overwritten.
            fb = await _rerun_if_cut(
                self.say,
                lambda n: failback(
                    replace(back, report=report.with_name(f"failback-report-{n + 1}.json")) if n else back
                ),
            )
        for line in fb.lines():
            self.say(f"   | {line}")
        self._tell_report(fb, _checked_report(fb, rpo, lost), lost)
        return fb

    def _tell_report(self, fb: FailbackResult, doc: dict[str, Any], lost: list[Ack]) -> None:
        report = Path(fb.report)
        unacked = fb.errant_writes - len(lost)
        parts = [f"the {len(lost)} recorded writes after the RPO"] if lost else []
        if unacked:
            parts.append(f"{unacked} that site A applied but never acknowledged (in flight when it died)")
        if parts:
            self.say(
                f"   The report {report} lists {fb.errant_writes} writes: {' and '.join(parts)}; each with "
                "its key, value, mod revision and what site B has, e.g. "
                f"{json.dumps(doc['writes'][0])}. The re-sync removed them from site A only after that."
            )
        else:
            self.say(f"   The report {report} lists no writes: site B had every write site A took.")

    async def _mirror_again(self, fb: FailbackResult) -> None:
        """Steps 17-18: the application back on site A, the mirror A -> B again, verify and /healthz."""
        letter, client = self.app_site()
        if letter != "A":
            raise CheckFailed(
                f"demo: the switch hook did not point the application back at site A ({letter})"
            )
        mirror = Mirror(self.config)
        self.mirrors.append(asyncio.create_task(mirror.run()))
        if fb.switched_back is None:
            raise CheckFailed("demo: failback did not switch back")
        self.say("17. The mirror A -> B again (the rendered unit's command, which the switchover printed):")
        self.say(f"   $ {fb.switched_back.next_command}")
        for j in range(100):
            await _app_put(client, APP_PREFIX + b"c-%04d" % j, b"written on A again")
        took = await _wait_equal(self.a, self.b, PREFIX.encode(), self.mirrors[-1])
        self.say(f"   the application's 100 new writes on site A are on site B after {took * 1000:.0f} ms.")
        result_v = await verify(self.config)
        self.say(f"18. etcd-dr verify: {result_v.summary()}")
        if not result_v.equal:
            raise CheckFailed(f"demo: verify found differences: {result_v.summary()}")
        # The standby's health as the mirror itself reports it (/healthz) must agree with verify.
        healthy, why = health(mirror.stats)
        self.say(f"   the mirror's /healthz: {'200' if healthy else '503'} {why} (verify: equal)")
        if not healthy:
            raise CheckFailed(f"demo: verify says equal but the mirror's health says: {why}")


def _checked_report(fb: FailbackResult, rpo: int, lost: list[Ack]) -> dict[str, Any]:
    """The failback report, read back: it must list every recorded write after the RPO, and as many
    writes as failback said."""
    report = Path(fb.report)
    doc: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    listed = {(w["key"], w["mod_revision"]) for w in doc["writes"]}
    absent = [w.key for w in lost if (w.key.decode(), w.revision) not in listed]
    if absent or fb.errant_writes != len(doc["writes"]):
        revisions = [int(w["mod_revision"]) for w in doc["writes"]] or [0]
        first = min((w for w in lost if w.key in absent), key=lambda w: w.revision, default=None)
        raise CheckFailed(
            f"demo: {len(absent)} of the {len(lost)} recorded writes after the RPO revision {rpo} are "
            f"not in {report}"
            + (f" (the first: {first.key.decode()} at revision {first.revision})" if first else "")
            + f"; it lists {len(doc['writes'])} writes (failback said {fb.errant_writes}), revisions "
            f"{min(revisions)}-{max(revisions)}, applied up to {doc['applied_up_to_revision']}, "
            f"fenced at {doc['old_primary_fenced_at_revision']}"
        )
    return doc


def _empty(directory: Path) -> None:
    for d in directory.iterdir():
        shutil.rmtree(d, ignore_errors=True)


def _client_tls(topology: Topology, site: str) -> TLSFiles:
    """The site's CA and the mirror's client certificate for it, where the topology puts them."""
    t = topology.sites[site].tls.mirror_client
    return TLSFiles(
        cacert=Path(expand(t.ca, site=site)),
        cert=Path(expand(t.cert, site=site)),
        key=Path(expand(t.key, site=site)),
    )


def _start_failed(error: BaseException) -> BaseException:
    if not isinstance(error, EtcdClusterError):
        return error
    # The message ends with the member's log, which goes away with the demo's directory: log it all,
    # and end with one line.
    first, _, rest = str(error).partition("\n")
    if rest:
        log.error("%s", rest)
    return CheckFailed(f"demo: {first}")
