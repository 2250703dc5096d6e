"""The destination's txn limits (its etcd --max-txn-ops and --max-request-bytes), learned by the mirror.

etcd does not expose them, so the mirror probes. A txn whose compare cannot hold writes nothing, yet
etcd checks its op count against --max-txn-ops before anything else ("too many operations in txn
request", etcd 3.4 and 3.5 alike). Its ops are reads of the checkpoint key, so the probe names no key
the mirror may not read, and a read repeated in one txn is allowed where a repeated write is not. The
search goes down from 4096 (what `render` configures a standby for, docs/benchmarks.md): 4096, then
128 (etcd's default), then powers of two; at start, one or two round trips on a rendered or a default
destination, a handful otherwise. A limit that is not a power of two is used rounded down to one.

The byte limit cannot be probed as cheaply (a probe would carry the bytes over the link), so it is
guessed from the op limit (a destination configured for big txns takes big requests) and learned when
the destination refuses a txn as too large (the engine halves it, logged once each time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..etcd import Compare, CompareResult, EtcdClient, Get, TooManyOpsError

log = logging.getLogger("etcd_dr.mirror")

# The op limit the probe starts from when the user gives no --max-txn-ops: the standby's etcd as
# `render` configures it (max-txn-ops 4096). etcd's own default is 128.
PROBE_FROM = 4096
ETCD_DEFAULT_OPS = 128
# Bytes of keys and values per txn: under etcd's default --max-request-bytes (1.5 MiB) ...
DEFAULT_TXN_BYTES = 1024 * 1024
# ... and, for a destination that takes more than etcd's default ops, under the 10 MiB `render`
# configures (the request also carries the op framing and the guards: 2 MiB is ample room).
LARGE_TXN_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class TxnLimits:
    max_ops: int  # ops per txn, the checkpoint's included
    max_bytes: int  # bytes of keys and values per txn


def _powers_below(n: int, floor: int) -> list[int]:
    """Powers of two below n and above floor, largest first."""
    out, p = [], 1 << (n.bit_length() - 1)
    while p > floor:
        if p < n:
            out.append(p)
        p //= 2
    return out


async def _fits(dest: EtcdClient, key: bytes, n: int) -> bool:
    never = Compare.version(key, CompareResult.LESS, 0)  # a version is never below 0: nothing runs
    try:
        await dest.txn([never], [Get(key, count_only=True)] * n)
    except TooManyOpsError:
        return False
    return True


async def probe_max_ops(dest: EtcdClient, key: bytes, start: int) -> int:
    """The most ops per txn the destination takes, at most `start`: `start` itself, else etcd's
    default and the powers of two between the two, else the powers of two below the default (2 at
    least: a txn is the checkpoint and one op; a destination below that fails the txn, which says so)."""
    if await _fits(dest, key, start):
        return start
    if start > ETCD_DEFAULT_OPS and await _fits(dest, key, ETCD_DEFAULT_OPS):
        for n in _powers_below(start, ETCD_DEFAULT_OPS):
            if await _fits(dest, key, n):
                return n
        return ETCD_DEFAULT_OPS
    for n in _powers_below(min(start, ETCD_DEFAULT_OPS), 1):
        if await _fits(dest, key, n):
            return n
    return 2


async def learn(dest: EtcdClient, key: bytes, cap: int | None, max_bytes: int | None) -> TxnLimits:
    """The limits the mirror's txns keep to on `dest`: the op limit probed (at most the user's
    --max-txn-ops), the byte limit given or guessed from it. Logged with how they were found."""
    start = cap or PROBE_FROM
    ops = await probe_max_ops(dest, key, start)
    if max_bytes is None:
        max_bytes = LARGE_TXN_BYTES if ops > ETCD_DEFAULT_OPS else DEFAULT_TXN_BYTES
    how = f"at most --max-txn-ops {cap}" if cap else f"probed down from {PROBE_FROM}"
    log.info(
        "destination txn limits: %d ops per txn (%s; the destination took %s), up to %d bytes of keys "
        "and values per txn (%s)",
        ops,
        how,
        "all of them" if ops == start else f"{ops} and no more",
        max_bytes,
        "learned lower if the destination refuses a txn as too large",
    )
    return TxnLimits(ops, max_bytes)
