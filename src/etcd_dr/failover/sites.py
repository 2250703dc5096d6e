"""What every move reads first: each site's identity, revision and role; the standby's mirror
checkpoints; and how to point the clients at the new primary (DNS update or a hook)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..config import MirrorConfig, mirror_argv
from ..errors import EtcdDrError, Refused
from ..etcd import ClientConfig, EtcdClient, Event, Status, TransientError
from ..state.layout import StateLayout
from ..state.roles import RoleState, read_role
from ..state.site import SiteState, StoredCheckpoint
from .config import MoveConfig

log = logging.getLogger("etcd_dr.failover")


@dataclass(frozen=True)
class Site:
    client: EtcdClient
    config: ClientConfig
    status: Status
    role: RoleState

    @property
    def id(self) -> int:
        return self.status.cluster_id

    @property
    def text(self) -> str:
        return self.config.endpoints_text

    def describe(self) -> str:
        role = self.role.role.describe() if self.role.role else "without a role record"
        return f"{self.text} (cluster {self.id:x}, {role})"


async def open_site(client: EtcdClient, config: ClientConfig, layout: StateLayout) -> Site:
    status, role = await asyncio.gather(client.status(), read_role(client, layout))
    return Site(client, config, status, role)


async def refresh(site: Site, layout: StateLayout) -> Site:
    return await open_site(site.client, site.config, layout)


@contextlib.asynccontextmanager
async def open_pair(pair: MirrorConfig) -> AsyncIterator[tuple[Site, Site]]:
    """Both sites of a move (the pair's source, then its destination), refused if they are one."""
    async with EtcdClient(pair.source) as source, EtcdClient(pair.dest) as dest:
        a, b = await asyncio.gather(
            open_site(source, pair.source, pair.layout), open_site(dest, pair.dest, pair.layout)
        )
        refuse_same_cluster(a, b)
        yield a, b


def refuse_same_cluster(a: Site, b: Site) -> None:
    if a.id == b.id:
        raise Refused(f"{a.text} and {b.text} are the same cluster (cluster id {a.id:x})")


async def probe(config: ClientConfig, timeout: float) -> Status | str:
    """The cluster's status if some member answers within `timeout`, else why not (for the log)."""
    try:
        async with asyncio.timeout(timeout), EtcdClient(config) as client:
            return await client.status()
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except TransientError as e:
        return str(e)


async def checkpoints_from(client: EtcdClient, layout: StateLayout, source_id: int) -> list[StoredCheckpoint]:
    """Every mirror checkpoint on `client` of mirrors from the cluster `source_id`."""
    return (await SiteState.read(client, layout)).stored_checkpoints(source_id)


async def events_between(
    client: EtcdClient, after: int, upto: int, *, retry_for: float | None = None
) -> list[Event]:
    """Every event of the cluster in revisions (after, upto], from its history (CompactedError when it
    is gone). The whole keyspace is watched: every revision has an event, so the walk knows when it
    has reached `upto`."""
    events: list[Event] = []
    if upto <= after:
        return events
    async with client.watch(b"\0", b"\0", start_revision=after + 1, retry_for=retry_for) as watch:
        async for batch in watch:
            for ev in batch.events:
                if ev.kv.mod_revision > upto:
                    return events
                events.append(ev)
            if batch.events and batch.events[-1].kv.mod_revision >= upto:
                return events
    return events


def mirror_command(pair: MirrorConfig) -> str:
    """The `etcd-dr mirror` command line for `pair` (passwords left out: give them by env or flag)."""
    return shlex.join(mirror_argv(pair))


def reversed_pair(pair: MirrorConfig) -> MirrorConfig:
    """The same mirror the other way: source and destination swapped, the key mapping inverted."""
    from dataclasses import replace

    source = replace(pair.dest, role="source", flag_prefix="")
    dest = replace(pair.source, role="destination", flag_prefix="dest-")
    prefix, dest_prefix = pair.effective_dest_prefix, pair.prefix
    excludes = tuple(dest_prefix_of(pair, e) for e in pair.excludes if e.startswith(pair.prefix))
    return replace(
        pair,
        source=source,
        dest=dest,
        prefix=prefix,
        dest_prefix=None if dest_prefix == prefix else dest_prefix,
        excludes=excludes,
        ordered_prefixes=tuple(
            dest_prefix_of(pair, o) for o in pair.ordered_prefixes if o.startswith(pair.prefix)
        ),
    )


def dest_prefix_of(pair: MirrorConfig, source_key: bytes) -> bytes:
    return pair.effective_dest_prefix + source_key[len(pair.prefix) :]


async def switch_clients(cfg: MoveConfig, new_primary: Site, old_primary_text: str, epoch: int) -> str:
    """Point the clients' name at the new primary: a DNS update, a hook, or (neither given) a line
    saying it is the operator's to do. Returns what was done, for the report."""
    if cfg.rehearsal:
        return "not switched (a drill never moves the clients)"
    try:
        return await _switch_clients(cfg, new_primary, old_primary_text, epoch)
    except EtcdDrError:
        log.error(
            "the roles have moved (%s is the primary, epoch %d) but the clients were not switched; "
            "rerun the same command to retry the switch",
            new_primary.text,
            epoch,
        )
        raise


async def _switch_clients(cfg: MoveConfig, new_primary: Site, old_primary_text: str, epoch: int) -> str:
    done = []
    if cfg.dns is not None:
        from .dns import addresses_from_endpoints, switch_name

        addresses = list(cfg.dns_addresses) or addresses_from_endpoints(
            [str(e) for e in new_primary.config.endpoints]
        )
        result = await switch_name(cfg.dns, addresses)
        done.append(f"DNS {cfg.dns.name} -> {', '.join(result.after)}")
    if cfg.switch_hook:
        from ..hooks import run_hook

        await run_hook(
            cfg.switch_hook,
            "switch",
            {
                "ETCD_DR_NEW_PRIMARY_ENDPOINTS": new_primary.text,
                "ETCD_DR_NEW_PRIMARY_CLUSTER_ID": f"{new_primary.id:x}",
                "ETCD_DR_OLD_PRIMARY_ENDPOINTS": old_primary_text,
                "ETCD_DR_EPOCH": str(epoch),
            },
            timeout=cfg.hook_timeout,
        )
        done.append(f"--switch-hook ran for {new_primary.text}")
    if not done:
        log.warning(
            "no --dns-server or --switch-hook given: point the clients at %s yourself", new_primary.text
        )
        return "clients not switched (no --dns-server or --switch-hook)"
    return "; ".join(done)


def switch_plan(cfg: MoveConfig, site: Site) -> str:
    """What switch_clients would do, for a --dry-run plan."""
    done = []
    if cfg.dns is not None:
        to = ", ".join(cfg.dns_addresses) or f"the addresses of {site.text}"
        done.append(f"DNS {cfg.dns.name} in {cfg.dns.zone} on {cfg.dns.server} -> {to}")
    if cfg.switch_hook:
        done.append(f"run --switch-hook {cfg.switch_hook!r}")
    return "; ".join(done) or "not switched (no --dns-server or --switch-hook): yours to do"
