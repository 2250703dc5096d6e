"""The standby's health, kept by a running mirror beside its copy and replay: the periodic verify,
the watch for writes the mirror did not make (foreign.py), the health record on the destination
(state/records.py HealthRecord, read by `status`) and --fence-standby. Mixed into `Mirror`
(engine.py), whose state these duties read; they never write data into the mirrored range except
through the restore of foreign writes (foreign.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from ..aio import cancel_and_wait
from ..config import MirrorConfig
from ..errors import Refused
from ..etcd import (
    CompactedError,
    Compare,
    EtcdClient,
    EtcdError,
    Put,
)
from ..state.records import HealthRecord, encode_key
from ..state.records import VerifyResult as VerifyRecord
from ..state.roles import RoleState
from .foreign import ForeignWatch, ForeignWrite, restore_foreign
from .keys import KeyMapper
from .leases import LeaseMirror
from .lock import MirrorLock
from .stats import MirrorStats

log = logging.getLogger("etcd_dr.mirror")

# Differences of a periodic verify read again before they are believed, and logged one by one.
RECHECK_MAX = 100
LOG_EACH_DIFFERENCE = 20


class StandbyDuties:
    # Kept by Mirror (engine.py).
    config: MirrorConfig
    stats: MirrorStats
    mapper: KeyMapper
    _key: bytes
    _health_key: bytes
    _lock: MirrorLock
    _leases: LeaseMirror | None
    _role: RoleState
    # The failover readiness checks (readiness.run_for_mirror: item -> ok / warn / fail), run every
    # --check-every. They sit a layer above the mirror (they read as `etcd-dr check` does), so the
    # command that runs the mirror hands them in; None: not run.
    readiness_check: Callable[[MirrorConfig], Awaitable[Mapping[str, str]]] | None = None

    def _guards(self) -> list[Compare]:
        raise NotImplementedError  # Mirror's: the lock and the role record

    def _holding_lock(self) -> bool:
        return bool(self._lock.revision) and not self._lock.lost.is_set()

    async def _verify_periodically(self) -> None:
        """Compare the standby with the source every --verify-every, paced to --verify-rate. A difference
        is checked again key by key before it is believed (flag verify_differs); an equal verify clears
        it, and clears foreign_write when no foreign write came since it began."""
        from ..verify import recheck, verify_in_segments

        assert self.config.verify_every
        while True:
            await asyncio.sleep(self.config.verify_every)
            if not self._holding_lock() or self.stats.phase != "replay":
                continue  # a stand-by process, or a copy under way: nothing to compare yet
            foreign_before = self.stats.foreign_writes
            t0, started = time.monotonic(), time.time()
            try:
                result = await verify_in_segments(
                    self.config, rate=self.config.verify_rate, page_size=self.config.verify_page_size
                )
                found = [*result.missing, *result.extra, *result.different]
                confirmed = await recheck(self.config, found[:RECHECK_MAX]) if found else []
            except (EtcdError, Refused) as e:
                log.warning(
                    "periodic verify did not finish: %s; the next one is in %g s", e, self.config.verify_every
                )
                continue
            seconds = time.monotonic() - t0
            # Past the keys read again, the rest of a large difference is taken as found.
            differences = len(confirmed) + (max(0, len(found) - RECHECK_MAX) if confirmed else 0)
            self.stats.verify_runs += 1
            self.stats.verify_mismatch = differences
            self.stats.last_verify = VerifyRecord(
                at=round(time.time(), 3),
                seconds=round(seconds, 3),
                equal=not confirmed,
                keys=result.keys,
                differences=differences,
                source_revision=result.source_revision,
                dest_revision=result.dest_revision,
            )
            if found and not confirmed:
                log.info(
                    "periodic verify: %d differences found, none there when read again (the mirror moved "
                    "on meanwhile): equal, %d keys in %.1f s",
                    len(found),
                    result.keys,
                    seconds,
                )
            elif not confirmed:
                log.info("periodic verify: %s, in %.1f s", result.summary(), seconds)
            if not confirmed:
                self.stats.clear("verify_differs")
                if self.stats.foreign_writes == foreign_before:
                    self.stats.clear("foreign_write")
                continue
            kinds = {
                k: kind
                for kind, ks in (
                    ("missing", result.missing),
                    ("extra", result.extra),
                    ("different", result.different),
                )
                for k in ks
            }
            for key in confirmed[:LOG_EACH_DIFFERENCE]:
                log.warning(
                    "periodic verify: %s on the standby: %s", kinds.get(key, "different"), encode_key(key)
                )
            if len(confirmed) > LOG_EACH_DIFFERENCE:
                log.warning(
                    "periodic verify: ... and %d more differences", len(confirmed) - LOG_EACH_DIFFERENCE
                )
            log.warning(
                "periodic verify: the standby differs from the source in %d keys (confirmed by reading them "
                "again), at source revision %d; %s",
                differences,
                result.source_revision,
                result.summary(),
            )
            self.stats.flag(
                "verify_differs",
                f"the periodic verify at {time.strftime('%H:%M:%S', time.gmtime(started))} UTC found "
                f"{differences} keys differing (first: {encode_key(confirmed[0])})",
            )

    async def _check_readiness_periodically(self) -> None:
        """The readiness checks (`readiness_check`) as soon as this process replays holding the lock,
        then every --check-every; their verdicts go to the metrics (etcd_dr_failover_ready,
        etcd_dr_readiness), a change of verdict to the log."""
        assert self.readiness_check is not None and self.config.check_every
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            if not self._holding_lock() or self.stats.phase != "replay":
                delay = 1.0  # a stand-by process, or a copy under way: the holder's replay is judged
                continue
            levels = dict(await self.readiness_check(self.config))
            delay = self.config.check_every
            if not levels:
                continue  # it did not finish (logged): the last verdicts stand
            failing = sorted(item for item, level in levels.items() if level == "fail")
            before = sorted(item for item, level in self.stats.readiness.items() if level == "fail")
            if failing != before or not self.stats.readiness_at:
                log.log(
                    logging.WARNING if failing else logging.INFO,
                    "failover readiness: %s",
                    f"NOT READY ({', '.join(failing)} fail; `etcd-dr check` says why)"
                    if failing
                    else "ready",
                )
            self.stats.readiness, self.stats.readiness_at = levels, time.time()

    async def _watch_foreign_writes(self, source: EtcdClient) -> None:
        """Watch the standby's range for writes the mirror did not make (mirror/foreign.py), while this
        process holds the lock, from the destination revision at which it first held it. Its watches
        have connections of their own: a watch moving to another endpoint closes its connection's
        channel, which must not cut the replay's txns (nor the other watch)."""
        async with EtcdClient(self.config.dest) as dest, EtcdClient(self.config.dest) as ckpt_dest:
            await self._watch_foreign_writes_on(source, dest, ckpt_dest)

    async def _watch_foreign_writes_on(
        self, source: EtcdClient, dest: EtcdClient, ckpt_dest: EtcdClient
    ) -> None:
        start = 0
        restore = self.config.foreign_writes == "restore"

        async def put_back(writes: list[ForeignWrite]) -> None:
            try:
                restored, left = await restore_foreign(
                    source, dest, self.mapper, self._key, self._guards, self._leases, writes
                )
            except (EtcdError, Refused) as e:
                log.warning("foreign writes not restored: %s; the next verify checks them", e)
                return
            log.warning(
                "foreign writes: %d keys restored to the source's state, %d left as they were (written by "
                "the mirror since, or a copy under way)",
                restored,
                left,
            )

        watch = ForeignWatch(
            dest,
            self.mapper,
            self._key,
            self.stats,
            restore=put_back if restore else None,
            checkpoint_dest=ckpt_dest,
        )
        while True:
            while not self._holding_lock() or not self._key:  # noqa: ASYNC110 (the lock has no event for it)
                await asyncio.sleep(0.2)
            if not start:
                # From the destination revision at which this process took the lock (a stand-by
                # process that takes over: before, the writes were the other holder's to judge).
                start = self._lock.revision + 1
            run = asyncio.ensure_future(watch.run(start))
            lost = asyncio.ensure_future(self._lock.lost.wait())
            try:
                await asyncio.wait({run, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(run)
                await cancel_and_wait(lost)
            if run.cancelled():
                continue  # the lock was lost: wait until this process holds it again
            try:
                run.result()
            except CompactedError as e:
                now = (await dest.status()).revision
                log.warning(
                    "foreign writes: the destination compacted past revision %d (%s); watching from "
                    "revision %d on (the periodic verify covers the gap)",
                    watch.next_revision or start,
                    e,
                    now + 1,
                )
                start = watch.next_revision = now + 1
            except EtcdError as e:
                log.warning("foreign-write watch: %s; watching again", e)
                await asyncio.sleep(1.0)

    async def _write_health(self, dest: EtcdClient) -> None:
        """The health record on the destination (HealthRecord): every --health-interval, and at
        once when a problem appears or clears, a foreign write is seen or a verify ends."""
        written: tuple[int, int, int] | None = None
        last = 0.0
        while True:
            await asyncio.sleep(0.2)
            s = self.stats
            now = (s.problems_changed, s.foreign_writes, s.verify_runs)
            if not self._holding_lock() or not self._key:
                continue
            if now == written and time.monotonic() - last < self.config.health_interval:
                continue
            record = HealthRecord(
                updated=round(time.time(), 3),
                problems=dict(s.problems),
                verify=s.last_verify,
                foreign_writes=s.foreign_writes,
                last_foreign_key=s.last_foreign_key,
                last_foreign_revision=s.last_foreign_revision,
            )
            try:
                await dest.txn([self._lock.guard()], [Put(self._health_key, record.encode())])
            except EtcdError as e:
                log.debug("health record not written: %s", e)
                continue
            written, last = now, time.monotonic()

    async def _fence_standby(self, dest: EtcdClient) -> None:
        """--fence-standby: only root and etcd-dr's user may write on the standby (the fence a move
        makes; a promotion lifts it)."""
        from ..fence import fence_writes

        if not await dest.auth_enabled():
            raise Refused(
                f"--fence-standby: etcd auth is not enabled on the destination "
                f"{self.config.dest.endpoints_text}, so its writes cannot be fenced; enable auth there "
                "(with a user holding the root role for the mirror), or run without --fence-standby"
            )
        log.info(
            "--fence-standby: fencing application writes on the destination %s through etcd auth (reason: "
            "a standby takes writes only from its mirror)",
            self.config.dest.endpoints_text,
        )
        await fence_writes(dest, self.config.layout, mode="auth", epoch=self._role.epoch)
