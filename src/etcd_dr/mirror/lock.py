"""Leader election among mirror processes: a key on the destination held by a lease (etcd's own
election pattern). The lock key's create revision is part of the compare of every mirror txn, so a
paused or partitioned former holder cannot write once it has lost the lock, whatever it believes."""

from __future__ import annotations

import asyncio
import logging

from ..aio import cancel_and_wait
from ..errors import CheckFailed
from ..etcd import Compare, CompareResult, EtcdClient, EtcdError, Get, LeaseNotFound, Put, TransientError
from ..state.reader import decode
from ..state.records import LockHolder, encode_key

log = logging.getLogger("etcd_dr.mirror")


class LockHeld(CheckFailed):
    """A one-shot command gave up waiting for the mirror lock: another mirror runs into the destination.
    Exit 1 (a precondition that does not hold now), not 2: nothing is wrong with the command itself."""


class MirrorLock:
    def __init__(self, dest: EtcdClient, key: bytes, ttl: int) -> None:
        self._dest = dest
        self.key = key
        self.ttl = ttl
        self.owner = LockHolder.mine()
        self.revision = 0  # create revision of our lock key while we hold it
        self.lost = asyncio.Event()
        self._lease = 0
        self._keepalive: asyncio.Task[None] | None = None

    def guard(self) -> Compare:
        """The compare every txn carries: our lock key is still the one we created."""
        return Compare.create(self.key, CompareResult.EQUAL, self.revision)

    async def acquire(self, wait: float | None = None) -> None:
        """Wait until this process holds the lock (a dead holder's lease expires within the TTL); with
        `wait`, at most that many seconds, then LockHeld naming the holder."""
        waiting_for: LockHolder | None = None
        deadline = None if wait is None else asyncio.get_running_loop().time() + wait
        while True:
            grant = await self._dest.lease_grant(self.ttl)
            result = await self._dest.txn(
                [Compare.create(self.key, CompareResult.EQUAL, 0)],
                [Put(self.key, self.owner.encode(), lease=grant.id)],
                [Get(self.key)],
            )
            if result.succeeded:
                await cancel_and_wait(self._keepalive)  # a previous holding's, if it still runs
                self._lease = grant.id
                self.revision = result.header.revision
                self.lost = asyncio.Event()
                self._keepalive = asyncio.create_task(self._keep())
                log.info(
                    "holding the mirror lock %s (lease %x, ttl %d s)",
                    encode_key(self.key),
                    grant.id,
                    self.ttl,
                )
                return
            await self._dest.lease_revoke(grant.id)
            rng = result.responses[0].range if result.responses else None
            held = rng.kvs[0] if rng and rng.kvs else None
            holder = (
                decode("lock", held.key, held.value, self._dest, LockHolder.decode)
                if held
                else LockHolder("?")
            )
            if holder != waiting_for:
                if deadline is None:
                    log.info("standing by: the mirror lock is held by %s; taking over if it stops", holder)
                else:
                    log.warning(
                        "the mirror lock is held by %s: another mirror runs into this destination; waiting "
                        "at most %g s for it to stop",
                        holder,
                        wait,
                    )
                waiting_for = holder
            if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                raise LockHeld(
                    f"the mirror lock {encode_key(self.key)} on the destination is held by "
                    f"{holder.describe()}: another mirror runs into it; gave up after {wait:g} s "
                    "(--timeout). Stop that mirror, or let it do the work"
                )
            await asyncio.sleep(min(1.0, self.ttl / 3))

    async def _keep(self) -> None:
        async with self._dest.lease_keepalive() as ka:
            while True:
                await asyncio.sleep(self.ttl / 3)
                try:
                    await ka.refresh(self._lease)
                except LeaseNotFound:
                    log.warning("lost the mirror lock (its lease expired); standing by")
                    self.lost.set()
                    return
                except TransientError as e:
                    log.warning("mirror lock keepalive failed: %s", e)
                except EtcdError as e:
                    log.warning("mirror lock keepalive stopped: %s", e)
                    self.lost.set()
                    return

    async def release(self) -> None:
        await cancel_and_wait(self._keepalive)
        if self._lease and not self.lost.is_set():
            try:
                await self._dest.lease_revoke(self._lease)
            except EtcdError as e:
                log.debug("releasing the mirror lock: %s", e)
        self._lease = 0
