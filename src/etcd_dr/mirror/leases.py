"""Lease mirroring: a source key attached to lease L is written on the destination attached to a
destination lease of the same ID, granted with the source lease's TTL, refreshed whenever the source
lease is refreshed, and revoked when the source lease ends. If the mirror dies, the destination leases
expire by themselves after their TTL, as ephemeral keys should.

Using the source's lease ID on the destination keeps the mapping stateless; which leases the mirror
owns is recorded under the state prefix (in the same txn as the first key that uses each), so that a
restarted mirror keeps them alive too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..errors import Fenced
from ..etcd import Compare, Delete, EtcdClient, EtcdError, LeaseExists, LeaseNotFound, Put, prefix_range_end
from .stats import MirrorStats

log = logging.getLogger("etcd_dr.mirror")


class LeaseLost(EtcdError):
    """A destination lease expired while its source lease lives: its keys are gone from the destination
    and a re-sync must restore them."""


class LeaseMirror:
    def __init__(
        self,
        source: EtcdClient,
        dest: EtcdClient,
        registry: bytes,
        stats: MirrorStats,
        guards: Callable[[], list[Compare]],
    ) -> None:
        self._guards = guards
        self._source = source
        self._dest = dest
        self._registry = registry  # state prefix for the leases this mirror owns on the destination
        self._stats = stats
        self._ttl: dict[int, int] = {}  # lease id -> source remaining TTL at the last look
        self._refreshed: dict[int, tuple[int, float]] = {}  # lease id -> (granted TTL, monotonic time)
        self.lost = asyncio.Event()

    def _key(self, lease: int) -> bytes:
        return self._registry + f"{lease:016x}".encode()

    async def load(self) -> None:
        """The leases an earlier run of this mirror granted (kept alive from now on)."""
        kvs = (await self._dest.range(self._registry, prefix_range_end(self._registry))).kvs
        for kv in kvs:
            self._ttl.setdefault(int(kv.key[len(self._registry) :], 16), 0)
        self._stats.leases = len(self._ttl)

    async def ensure(self, lease: int) -> int:
        """Make sure destination lease `lease` exists before a txn uses it. Returns the lease to write
        with: 0 when the source lease is already gone (the deletes of its keys follow)."""
        if lease in self._ttl:
            return lease
        info = await self._source.lease_time_to_live(lease)
        if info.ttl <= 0:
            return 0
        # LeaseExists: granted by an earlier run whose registry write did not land.
        with contextlib.suppress(LeaseExists):
            await self._dest.lease_grant(info.granted_ttl or info.ttl, lease)
        # Recorded before any key uses it (a crash in between leaves a lease with no keys, which is
        # revoked when its source lease ends), under the lock like every write of the mirror.
        ok, _ = await self._dest.txn_succeeded(
            self._guards(), [Put(self._key(lease), str(info.granted_ttl).encode())]
        )
        if not ok:
            raise Fenced("lost the mirror lock while granting a lease")
        self._ttl[lease] = info.ttl
        self._refreshed[lease] = (info.granted_ttl or info.ttl, time.monotonic())
        self._stats.leases = len(self._ttl)
        return lease

    async def prepare(self, ops: list[Put | Delete]) -> list[Put | Delete]:
        """The ops, their leases granted on the destination first."""
        out: list[Put | Delete] = []
        for op in ops:
            if isinstance(op, Put) and op.lease:
                lease = await self.ensure(op.lease)
                if lease != op.lease:
                    op = Put(op.key, op.value, lease)
            out.append(op)
        return out

    async def keep_alive(self, interval: float = 0.5) -> None:
        """Follow every owned lease on the source: refresh the destination's when the source's was
        refreshed, revoke it when the source's ended."""
        async with self._dest.lease_keepalive() as ka:
            while True:
                await asyncio.sleep(interval)
                for lease, last in list(self._ttl.items()):
                    try:
                        info = await self._source.lease_time_to_live(lease)
                        if info.ttl <= 0:
                            await self._end(lease)
                            continue
                        # Our estimate of the destination lease's remaining TTL; refresh it as soon as
                        # the source's (whole seconds, rounded down) has caught up with it.
                        granted, at = self._refreshed.get(lease, (0, 0.0))
                        if last == 0 or info.ttl >= granted - (time.monotonic() - at):
                            await ka.refresh(lease)
                            self._refreshed[lease] = (info.granted_ttl or info.ttl, time.monotonic())
                        self._ttl[lease] = info.ttl
                    except LeaseNotFound:
                        log.warning(
                            "destination lease %x expired while the source's lives: its keys are gone from "
                            "the destination; copying again to restore them",
                            lease,
                        )
                        self._ttl.pop(lease, None)
                        self.lost.set()
                    except EtcdError as e:
                        log.debug("lease %x: %s", lease, e)

    async def _end(self, lease: int) -> None:
        with contextlib.suppress(LeaseNotFound):
            await self._dest.lease_revoke(lease)
        await self._dest.delete_range(self._key(lease))
        self._ttl.pop(lease, None)
        self._refreshed.pop(lease, None)
        self._stats.leases = len(self._ttl)
        log.debug("source lease %x ended: revoked it on the destination", lease)
