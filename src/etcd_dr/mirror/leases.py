"""Lease mirroring: a source key attached to lease L is written on the destination attached to a
destination lease of the same ID, granted with the source lease's TTL, kept alive while the source lease
lives, and revoked when it ends. If the mirror dies, the destination leases expire by themselves after
their TTL, as ephemeral keys should.

Using the source's lease ID on the destination keeps the mapping stateless; which leases the mirror
owns is recorded under the state prefix (as each is granted), so that a restarted
mirror keeps them alive too. That registry is only a claim: every cycle starts by checking it against
both clusters (`reconcile`), because a registered lease may have expired on the destination while the
mirror was down, and a destination lease with a source lease's ID may have been granted by someone else
(the mirror of the other direction, before a switchover and back).

Following the source costs a time and a source request rate independent of the round trip and of the
number of leases (asking each lease's TTL one after the other cost leases x round trip per pass, and
the source 2 requests per lease per second): one LeaseLeases request (every lease ID the source has)
once a second says which source leases live; the destination's copy of each is refreshed at about a
third of its TTL on a few keepalive streams, pipelined, and revoked once the source no longer lists it.
LeaseTimeToLive is asked only when granting (for the source lease's TTL), many at once. Figures:
docs/benchmarks.md, "Leases at the scale of a service registry".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from ..errors import Fenced
from ..etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    LeaseExists,
    LeaseKeepAlive,
    LeaseNotFound,
    Put,
    prefix_range_end,
)
from ..state.reader import decode
from .stats import MirrorStats

log = logging.getLogger("etcd_dr.mirror")

T = TypeVar("T")

# Requests in flight together when granting or revoking many leases (the source's TTLs are asked with
# more: it may be a long round trip away, and 10,000 leases at 100 ms must not take minutes), and
# registry entries per txn (below etcd's default --max-txn-ops of 128, with room for the guards).
INFLIGHT = 64
SOURCE_INFLIGHT = 256
# Keepalive streams the destination's leases are refreshed on: etcd serves each stream's requests one
# after the other (etcd 3.4 about 1,750 a second on this project's test machine, 3.5 about 4,000),
# and 10,000 leases of 10 s need 3,000 a second at a third of their TTL.
KEEPALIVE_STREAMS = 8
# A source lease listing older than this (seconds) keeps nothing alive: with the source unreachable,
# the destination's copies run down as the source's leases may have.
STALE_LISTING = 5.0
REGISTRY_TXN_OPS = 100
# How often the source's lease list is read (seconds). A source lease that ends is revoked on the
# destination within about this long (its keys go anyway, by the replay of their deletes).
POLL_INTERVAL = 1.0


async def _each(fn: Callable[[int], Awaitable[T]], leases: Sequence[int], limit: int = INFLIGHT) -> list[T]:
    """fn(lease) for every lease, at most `limit` in flight: following thousands of leases across a
    distance must not cost one round trip per lease one after the other."""
    sem = asyncio.Semaphore(limit)

    async def one(lease: int) -> T:
        async with sem:
            return await fn(lease)

    return list(await asyncio.gather(*(one(lease) for lease in leases)))


class LeaseMirror:
    def __init__(
        self,
        source: EtcdClient,
        dest: EtcdClient,
        registry: bytes,
        stats: MirrorStats,
        guards: Callable[[], list[Compare]],
        poll_interval: float = POLL_INTERVAL,
        *,
        same_cluster: bool = False,
    ) -> None:
        # A mirror between two ranges of one cluster: a key's lease is the source lease itself, which
        # the mirror must neither grant, keep alive (it would outlive its owner) nor revoke.
        self._same = same_cluster
        self._guards = guards
        self._source = source
        self._dest = dest
        self._registry = registry  # state prefix for the leases this mirror owns on the destination
        self._stats = stats
        self._poll = poll_interval
        # Owned destination leases: id -> (its TTL, monotonic time of its last grant or refresh).
        self._owned: dict[int, tuple[int, float]] = {}
        self._ready = asyncio.Event()  # set once `reconcile` has read the registry this cycle
        self._lost: set[int] = set()  # leases lost on the destination, until a copy has restored keys
        # Leases revoked because their source lease ended: a replay that is behind may still bring
        # puts attached to one; they are written without it (the deletes of those keys follow).
        self._ended: set[int] = set()
        self.lost = asyncio.Event()

    def _key(self, lease: int) -> bytes:
        return self._registry + f"{lease:016x}".encode()

    def owns(self, lease: int) -> bool:
        """Whether the destination lease `lease` is this mirror's (granted or taken over by it): only
        then is a destination key attached to it equal to a source key attached to the source's."""
        return self._same or lease in self._owned

    def new_cycle(self) -> None:
        """A cycle starts: nothing follows the leases until its `reconcile` has checked them."""
        self._ready.clear()
        self.lost.clear()

    def _count(self) -> None:
        self._stats.leases = len(self._owned)

    # ---- checking the registry against both clusters --------------------------------------------

    async def load(self) -> None:
        """The leases an earlier run of this mirror granted, checked against both clusters."""
        await self.reconcile()

    async def reconcile(self) -> bool:
        """Before any key is attached this cycle: make the registry true. A registered lease whose
        source lease ended is revoked and dropped; one that expired on the destination while the
        source's lives is granted again; a destination lease with a live source lease's ID that this
        mirror did not grant is taken over (registered and kept alive from now on). True when keys are
        known to be missing on the destination (their lease expired there): the cycle must copy."""
        self._ready.clear()
        if self._same:
            self._ready.set()
            return False
        kvs = (await self._dest.range(self._registry, prefix_range_end(self._registry))).kvs
        registered: dict[int, int] = {}
        for kv in kvs:
            # The lease's hex id is in the key, its TTL in the value.
            lease = decode("lease registry", kv.key, kv.key[len(self._registry) :], self._dest, _hex)
            registered[lease] = decode("lease registry", kv.key, kv.value or b"0", self._dest, int)
        # One request each, whatever the number of leases (etcd >= 3.3).
        source_live = set(await self._source.leases())
        dest_live = set(await self._dest.leases())
        ended = [lease for lease in registered if lease not in source_live]
        missing = [lease for lease in registered if lease in source_live and lease not in dest_live]
        foreign = sorted((source_live & dest_live) - registered.keys())
        now = time.monotonic()
        # Refreshed at the first look: how long each has left is not known here.
        self._owned = {
            lease: (ttl or 1, now - (ttl or 1))
            for lease, ttl in registered.items()
            if lease in source_live and lease in dest_live
        }
        # From here the leases can be followed (the ones granted below join as each is granted):
        # granting thousands takes longer than a short TTL, and the first must not expire meanwhile.
        self._ready.set()
        if ended:
            await self._end_many(ended, registered=True)
            log.info(
                "leases: %d registered source leases ended while the mirror was away: dropped", len(ended)
            )
        if missing:
            self._flag_lost(
                missing,
                "expired on the destination while the source's lives: the mirror was stopped or cut off "
                "for longer than their TTL",
            )
            log.info("leases: granting %d leases again before any key is attached", len(missing))
            await self._grant(missing, register=False)
        if foreign:
            # Same ID, granted by someone else (typically the mirror of the other direction before a
            # switchover and back): nobody keeps it alive here any more, so its keys would vanish one
            # TTL later. Taken over: registered and kept alive while the source's lives.
            log.warning(
                "leases: %d destination leases with a live source lease's ID were not granted by this "
                "mirror (made while this site was the primary?), %s: taking them over",
                len(foreign),
                _ids(foreign),
            )
            await self._take_over(foreign)
        self._count()
        return bool(self._lost)

    async def _take_over(self, leases: Sequence[int]) -> None:
        infos = await _each(self._dest.lease_time_to_live, leases)
        now = time.monotonic()
        ttls = {lease: info.granted_ttl for lease, info in zip(leases, infos, strict=True) if info.ttl > 0}
        await self._register(ttls)
        # Refreshed at once: its remaining TTL is whatever the previous owner left.
        for lease, ttl in ttls.items():
            self._owned[lease] = (ttl, now - ttl)

    # ---- granting ---------------------------------------------------------------------------------

    async def ensure(self, lease: int) -> int:
        """Make sure destination lease `lease` exists before a txn uses it. Returns the lease to write
        with: 0 when the source lease is already gone (the deletes of its keys follow)."""
        return (await self.ensure_many([lease]))[lease]

    async def ensure_many(self, leases: Iterable[int]) -> dict[int, int]:
        """`ensure` for many leases, the new ones granted with several requests in flight."""
        wanted = {lease for lease in leases if lease}
        await self._ready.wait()
        if self._same:
            ids = sorted(wanted)
            infos = await _each(self._source.lease_time_to_live, ids, SOURCE_INFLIGHT)
            return {lease: lease if info.ttl > 0 else 0 for lease, info in zip(ids, infos, strict=True)}
        new = sorted(lease for lease in wanted if lease not in self._owned and lease not in self._ended)
        granted = await self._grant(new, register=True) if new else set()
        return {lease: lease if lease in self._owned or lease in granted else 0 for lease in wanted}

    async def _grant(self, leases: Sequence[int], *, register: bool) -> set[int]:
        """Grant destination copies of source leases, with the source lease's TTL; the ones whose source
        lease is gone are left out. Registered before any key uses them (a crash in between leaves a
        lease with no keys, revoked when its source lease ends)."""
        infos = await _each(self._source.lease_time_to_live, leases, SOURCE_INFLIGHT)
        # The TTL as granted, not what remains: a refresh gives a lease its own TTL back, so a copy
        # granted with a remainder would stay that short. The end of the source lease is caught by
        # its absence from the source's list, not by the copy's TTL.
        ttls = {
            lease: info.granted_ttl or info.ttl
            for lease, info in zip(leases, infos, strict=True)
            if info.ttl > 0
        }

        async def grant(lease: int) -> None:
            # LeaseExists: granted by an earlier run whose registry write did not land, or by someone
            # else (taken over: this mirror keeps it alive from now on).
            with contextlib.suppress(LeaseExists):
                await self._dest.lease_grant(ttls[lease], lease)
            # Followed (kept alive) from its grant on, not once all are granted. Should the registry
            # write below not land, the next cycle's reconcile takes the lease over.
            self._owned[lease] = (ttls[lease], time.monotonic())

        await _each(grant, list(ttls))
        if register:
            await self._register(ttls)
        for lease in set(leases) - ttls.keys():
            if not register:  # registered, but its source lease ended meanwhile
                await self._end_many([lease], registered=True)
        self._count()
        return set(ttls)

    async def _register(self, ttls: dict[int, int]) -> None:
        items = list(ttls.items())
        for i in range(0, len(items), REGISTRY_TXN_OPS):
            puts = [
                Put(self._key(lease), str(ttl).encode()) for lease, ttl in items[i : i + REGISTRY_TXN_OPS]
            ]
            # Under the lock like every write of the mirror.
            ok, _ = await self._dest.txn_succeeded(self._guards(), puts)
            if not ok:
                raise Fenced("lost the mirror lock while granting a lease")

    async def prepare(self, ops: list[Put | Delete]) -> list[Put | Delete]:
        """The ops, their leases granted on the destination first."""
        used = {op.lease for op in ops if isinstance(op, Put) and op.lease}
        if not used:
            return ops
        granted = await self.ensure_many(used)
        return [
            Put(op.key, op.value, granted[op.lease])
            if isinstance(op, Put) and op.lease and granted[op.lease] != op.lease
            else op
            for op in ops
        ]

    # ---- following the source ----------------------------------------------------------------------

    async def keep_alive(self) -> None:
        """Follow every owned lease on the source: refresh the destination's at about a third of its
        TTL while the source lists it, revoke it when the source no longer does. The listing and the
        refreshing run side by side: a pass refreshing thousands of leases may take seconds, and the
        end of a source lease must still be seen within about a second."""
        if self._same:
            await asyncio.Event().wait()  # nothing to follow: the leases are the source's own
        async with contextlib.AsyncExitStack() as stack:
            kas = [
                await stack.enter_async_context(self._dest.lease_keepalive())
                for _ in range(KEEPALIVE_STREAMS)
            ]
            self._live = None
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._every_poll(self._list))
                tg.create_task(self._every_poll(lambda: self._refresh(kas)))

    async def _every_poll(self, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await self._ready.wait()
            started = time.monotonic()
            try:
                await step()
            except EtcdError as e:
                # Nothing is concluded from a failed look: the next one, a second later, decides.
                log.debug("leases: following the source: %s", e)
            await asyncio.sleep(max(0.0, self._poll - (time.monotonic() - started)))

    # The source's live lease IDs at the last listing, and when that listing was asked for.
    _live: tuple[set[int], float] | None = None

    async def _list(self) -> None:
        # Leases owned before the listing was asked for: a lease granted meanwhile may be newer than
        # the list, and must not be taken for ended.
        before = set(self._owned)
        asked = time.monotonic()
        live = set(await self._source.leases())
        self._live = live, asked
        ended = [lease for lease in before if lease not in live and lease in self._owned]
        if ended:
            await self._end_many(ended, registered=True)

    async def _refresh(self, kas: Sequence[LeaseKeepAlive]) -> None:
        if self._live is None:
            return
        live, asked = self._live
        now = time.monotonic()
        if now - asked > STALE_LISTING:
            # The source has not said for a while which of its leases live (unreachable?): nothing is
            # refreshed on its behalf, and the destination's copies run down as the source's may have.
            return
        due = [
            lease
            for lease, (ttl, at) in self._owned.items()
            if lease in live and now - at + self._poll >= ttl / 3
        ]
        if not due:
            return
        ttls: dict[int, int] = {}
        for part in await asyncio.gather(*(ka.refresh_many(due[i :: len(kas)]) for i, ka in enumerate(kas))):
            ttls.update(part)
        log.debug(
            "leases: %d listed on the source, %d of %d owned refreshed on the destination in %.2f s",
            len(live),
            len(due),
            len(self._owned),
            time.monotonic() - now,
        )
        lost = []
        for lease in due:
            if ttls.get(lease, 1) <= 0:
                lost.append(lease)
            elif lease in self._owned:
                self._owned[lease] = (self._owned[lease][0], now)  # refreshed no earlier than this
        if lost:
            self.mark_lost(lost, "it expired on the destination while the source's lives")

    def mark_lost(self, leases: Sequence[int], why: str) -> None:
        """Destination leases gone while their source leases live: their keys are gone from the
        standby. Said loudly (/healthz, log) until a copy has put them back; the cycle ends (`lost`)
        and the next one grants them again and copies."""
        self._flag_lost(leases, why)
        self.lost.set()

    def _flag_lost(self, leases: Sequence[int], why: str) -> None:
        for lease in leases:
            self._owned.pop(lease, None)
        new = set(leases) - self._lost
        self._lost.update(leases)
        self._count()
        if not new:
            return  # already said
        detail = (
            f"destination lease{'s' if len(self._lost) > 1 else ''} {_ids(sorted(self._lost))} lost ({why}): "
            "their keys are missing from the standby until the re-sync restores them"
        )
        self._stats.flag("lease_lost", detail)
        log.warning("%s; granting them again and copying to restore the keys", detail)

    def restored(self) -> None:
        """A copy has finished after `reconcile` granted every live source lease again: keys are back."""
        if self._lost:
            log.info("leases: the keys of %s are restored on the destination", _ids(sorted(self._lost)))
        self._lost.clear()
        self._stats.clear("lease_lost")

    async def _end_many(self, leases: Sequence[int], *, registered: bool) -> None:
        async def revoke(lease: int) -> None:
            with contextlib.suppress(LeaseNotFound):
                await self._dest.lease_revoke(lease)

        await _each(revoke, leases)
        if registered:
            keys = [self._key(lease) for lease in leases]
            for i in range(0, len(keys), REGISTRY_TXN_OPS):
                await self._dest.txn([], [Delete(k) for k in keys[i : i + REGISTRY_TXN_OPS]])
        if len(self._ended) > 100_000:
            self._ended.clear()  # bounded: only a replay far behind needs old ones
        for lease in leases:
            self._owned.pop(lease, None)
            self._ended.add(lease)
        self._count()
        log.debug("leases: source leases ended, revoked on the destination: %s", _ids(leases))


def _ids(leases: Sequence[int], first: int = 5) -> str:
    shown = ", ".join(f"{lease:x}" for lease in leases[:first])
    return shown + (f" and {len(leases) - first} more" if len(leases) > first else "")


def _hex(data: bytes) -> int:
    return int(data, 16)
