"""`etcd-dr history DEST --endpoints SRC`: the record of every move (switchover, failover, failback,
take-over, drill), newest first, from both sites merged (a move recorded on both is listed once).

Each move is an event under the site's state prefix (state/events.py) carrying a MoveRecord: who
(user, host), when, from, to, the RPO, how long, the result, the reason given and whether --force
was. A site that does not answer is said so and the other's records are listed: after a disaster
the old primary may be gone, which is why a failover's record is on the promoted site.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .etcd import ClientConfig, EtcdClient, EtcdError
from .state.events import MOVES, Event
from .state.layout import StateLayout
from .state.site import SiteState

log = logging.getLogger("etcd_dr.history")


@dataclass
class History:
    moves: list[tuple[Event, list[str]]] = field(default_factory=list)  # newest first, with where read
    unreachable: list[str] = field(default_factory=list)  # "ENDPOINTS: why"

    def to_json(self) -> dict[str, Any]:
        return {
            "moves": [{**e.to_json(), "sites": sites} for e, sites in self.moves],
            "unreachable": self.unreachable,
        }

    def lines(self) -> list[str]:
        out = [f"not read: {u}" for u in self.unreachable]
        if not self.moves:
            return [*out, "no moves recorded"]
        return out + [describe(e) for e, _sites in self.moves]


def moves_of(events: tuple[Event, ...] | list[Event]) -> list[Event]:
    """The events that are moves' records, in the order given."""
    return [e for e in events if e.kind in MOVES and e.move is not None]


def describe(e: Event) -> str:
    """One line: when, what, from -> to, result, by whom, the RPO and duration, the reason."""
    m = e.move
    assert m is not None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time))
    parts = [f"{stamp} UTC {e.kind}: {m.source} -> {m.target}: {m.result}"]
    if m.rpo_revision is not None:
        rpo = f"RPO revision {m.rpo_revision}"
        if m.rpo_seconds is not None:
            rpo += f" ({m.rpo_seconds:.1f} s)"
        parts.append(rpo)
    if m.duration is not None:
        parts.append(f"took {m.duration:.2f} s")
    parts.append(f"by {m.user}@{m.host}" + (" with --force" if m.forced else ""))
    if m.reason:
        parts.append(f"reason: {m.reason}")
    return "; ".join(parts)


async def history(sites: list[ClientConfig], layout: StateLayout, *, limit: int = 50) -> History:
    """The moves recorded on every site that answers, merged, newest first, at most `limit`."""

    async def read(config: ClientConfig) -> list[Event] | EtcdError:
        try:
            async with EtcdClient(config) as client:
                return moves_of((await SiteState.read(client, layout)).events)
        except EtcdError as e:
            return e

    out = History()
    found_all = await asyncio.gather(*(read(c) for c in sites))
    errors = [f for f in found_all if isinstance(f, EtcdError)]
    if len(errors) == len(sites):
        raise errors[0]  # neither site answers: an error (exit 2), not an empty history
    merged: dict[str, tuple[Event, list[str]]] = {}
    for config, found in zip(sites, found_all, strict=True):
        if isinstance(found, EtcdError):
            log.warning("history: %s does not answer: %s", config.endpoints_text, found)
            out.unreachable.append(f"{config.endpoints_text}: {found}")
            continue
        for e in found:
            assert e.move is not None
            # A move recorded on both sites is one move (one id).
            key = e.move.id or f"{e.time}/{e.kind}"
            merged.setdefault(key, (e, []))[1].append(config.endpoints_text)
    out.moves = sorted(merged.values(), key=lambda m: m[0].time, reverse=True)[:limit]
    return out
