"""A writer that records every acknowledged write (key, value, revision), Jepsen style: what a
drill checks the surviving site against. Every write is a new key, so "was this write kept" has one
answer whatever else happened around it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from etcd_dr.etcd import EtcdClient, EtcdError


@dataclass(frozen=True)
class Ack:
    key: bytes
    value: bytes
    revision: int


@dataclass
class AckedWriter:
    client: EtcdClient
    prefix: bytes = b"/app/acked/"
    inflight: int = 8
    acked: list[Ack] = field(default_factory=list)
    failed: int = 0  # writes with an error (outcome unknown): never counted as acknowledged
    _n: int = 0

    async def run(self, stop: asyncio.Event, *, rate: float | None = None) -> None:
        """Write until `stop` is set; a failing cluster is retried (writes in doubt are not acked)."""

        async def one() -> None:
            delay = self.inflight / rate if rate else 0.0
            while not stop.is_set():
                self._n += 1
                key = self.prefix + b"%08d" % self._n
                value = b"v%d" % self._n
                try:
                    put = await self.client.put(key, value)
                except EtcdError:
                    self.failed += 1
                    await asyncio.sleep(0.05)
                    continue
                self.acked.append(Ack(key, value, put.header.revision))
                if delay:
                    await asyncio.sleep(delay)

        await asyncio.gather(*(one() for _ in range(self.inflight)))

    def up_to(self, revision: int) -> list[Ack]:
        return [a for a in self.acked if a.revision <= revision]

    def after(self, revision: int) -> list[Ack]:
        return [a for a in self.acked if a.revision > revision]
