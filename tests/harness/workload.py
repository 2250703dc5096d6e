"""A randomized write workload for mirror tests and soaks: puts, overwrites, deletes, prefix deletes
and multi-op txns, inside and outside the mirrored prefix. Deterministic for a given seed."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from etcd_dr.etcd import Delete, EtcdClient, EtcdError, Put, Unavailable, prefix_range_end


@dataclass(frozen=True)
class Acked:
    revision: int  # the revision of the write (a delete that found nothing: the revision it saw)
    ops: tuple[Put | Delete, ...]


@dataclass
class Workload:
    client: EtcdClient
    prefix: bytes = b"/app/"
    outside: bytes = b"/other/"  # keys not mirrored when the mirror runs with --prefix
    seed: int = 1
    keys: int = 200  # size of the key pool under the prefix
    max_txn: int = 8  # ops in a multi-op txn (<= the source's --max-txn-ops)
    ops: int = 0  # how many requests were applied
    # Every acknowledged request with the revision etcd answered, and the requests whose outcome is
    # unknown (an error): the log a Jepsen-style checker holds the destination to.
    acked: list[Acked] = field(default_factory=list)
    uncertain: list[list[Put | Delete]] = field(default_factory=list)
    # The request sent and not answered yet: a mirror can apply it before its answer reaches us, so a
    # sample taken meanwhile may or may not hold it (the checkers leave its keys out, as uncertain ones).
    in_flight: list[Put | Delete] = field(default_factory=list)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _key(self) -> bytes:
        # Nested names so that prefix deletes hit several keys.
        n = self.rng.randrange(self.keys)
        return self.prefix + b"d%02d/k%04d" % (n % 17, n)

    def _value(self) -> bytes:
        size = self.rng.choice((0, 1, 16, 100, 1000))
        return self.rng.randbytes(size)

    async def step(self) -> None:
        r = self.rng.random()
        ops: list[Put | Delete]
        if r < 0.45:
            ops = [Put(self._key(), self._value())]
        elif r < 0.60:
            ops = [Delete(self._key())]
        elif r < 0.63:
            p = self.prefix + b"d%02d/" % self.rng.randrange(17)
            ops = [Delete(p, prefix_range_end(p))]
        elif r < 0.85:
            keys = {self._key() for _ in range(self.rng.randrange(2, self.max_txn + 1))}
            ops = [Put(k, self._value()) if self.rng.random() < 0.7 else Delete(k) for k in sorted(keys)]
        else:
            ops = [Put(self.outside + b"k%03d" % self.rng.randrange(50), self._value())]
        self.in_flight = ops
        try:
            revision = await self._send(ops)
        except EtcdError:
            self.uncertain.append(ops)  # maybe applied, maybe not: the checkers leave these keys out
            raise
        finally:
            self.in_flight = []
        self.acked.append(Acked(revision, tuple(ops)))
        self.ops += 1

    async def _send(self, ops: list[Put | Delete]) -> int:
        """Single puts and deletes as their own requests, several ops as one txn (as clients do)."""
        c = self.client
        op = ops[0]
        if len(ops) > 1:
            return (await c.txn([], ops)).header.revision
        if isinstance(op, Put):
            return (await c.put(op.key, op.value)).header.revision
        return (await c.delete_range(op.key, op.range_end)).header.revision

    async def run(
        self, count: int | None = None, *, rate: float | None = None, stop: asyncio.Event | None = None
    ) -> None:
        """Apply `count` requests (or until `stop` is set), at most `rate` per second when given.
        A request that fails because the source is briefly unavailable is simply skipped."""
        delay = 1.0 / rate if rate else 0.0
        n = 0
        while (count is None or n < count) and not (stop is not None and stop.is_set()):
            try:
                await self.step()
            except Unavailable:
                await asyncio.sleep(0.05)
            n += 1
            if delay:
                await asyncio.sleep(delay)
