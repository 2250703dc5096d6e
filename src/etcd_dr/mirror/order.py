"""The source's create order, kept on the standby.

etcd's concurrency recipes (Go's `concurrency.Mutex` and `Election`, `etcdctl lock` / `elect`, and the
services built on them) rank the keys under one prefix by create revision: the lowest holds the lock
or leads, a waiter waits until no key under the prefix has a lower one. The standby cannot keep the
source's revision numbers, but it can keep their order: a key created after a sibling on the source
is created after it on the standby. Otherwise a failover makes several holders of one lock at once.

What is ordered: keys attached to a lease (every session key of the recipes is) and the keys under
`--ordered-prefix`. Only siblings are compared by clients (keys with the same parent: the key up to its
last `/`), so only a parent with two or more ordered keys of distinct source create revisions needs
anything: the copy writes those keys in layers, one destination txn per distinct source create
revision of a parent (several parents share a layer's txn), one txn at a time, since txns in flight
together reach etcd's raft in no particular order. The replay keeps whole source revisions together
anyway; it only must not join two revisions that create ordered siblings in one txn (`joins`).

One txn per create revision costs a round trip each: 10,000 leased siblings (Kubernetes' events of one
namespace) would take 1,000 s over 100 ms. So the copy spends at most a time budget on its layers
(--ordered-copy-time, measured as it goes): the layers it cannot afford are written the fast way and
their source order kept as data under the state prefix (records.OrderRecord) while the site is a
standby (nobody campaigns there); the promotion creates those keys again in that order, where the
link is short (failover/reorder.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby

from ..etcd import KeyValueLike


def parent(key: bytes) -> bytes:
    """The prefix siblings share: the key up to and including its last `/` (b"" without one)."""
    return key[: key.rfind(b"/") + 1]


@dataclass(frozen=True)
class OrderRule:
    """Which source keys keep their create order on the standby: leased ones, and those under
    `prefixes` (source keys)."""

    prefixes: tuple[bytes, ...] = ()

    def ordered(self, source_key: bytes, lease: int) -> bool:
        return bool(lease) or (bool(self.prefixes) and source_key.startswith(self.prefixes))

    def any_ordered(self, kvs: Iterable[KeyValueLike]) -> bool:
        """Whether any of these source key-values is ordered (the copy's per-page check: most pages
        of most keyspaces have none)."""
        if not self.prefixes:
            return any(kv.lease for kv in kvs)
        return any(self.ordered(kv.key, kv.lease) for kv in kvs)


def joins(group_keys: Collection[bytes], group_parents: Collection[bytes], creates: Iterable[bytes]) -> bool:
    """Whether a source revision that creates the ordered destination keys `creates` may join a
    destination txn already holding ops on `group_keys` and creating ordered keys under `group_parents`:
    not when it creates a sibling of a key the txn creates (they would share a create revision), nor a
    key the txn already touches (a delete and the re-create would collapse into a put that keeps the
    old create revision)."""
    return not any(k in group_keys or parent(k) in group_parents for k in creates)


@dataclass(slots=True)
class OrderedKey:
    """An ordered source key as the copy found it: its destination key, the source's value, lease and
    create revision, and the destination's create revision (0: not on the destination)."""

    key: bytes
    value: bytes
    lease: int
    create: int
    dest_create: int
    differs: bool  # missing on the destination, or its value or lease differs


@dataclass
class OrderPlan:
    """What the copy writes of its ordered keys: `puts` in any order (in place or alone under their
    parent), `deletes` first (keys on the destination out of the source's order), then `layers`, each
    one txn (or more when it exceeds the txn limits), one after the other."""

    puts: list[OrderedKey]
    deletes: list[bytes]
    layers: list[list[OrderedKey]]
    parents: int = 0  # parents written in layers

    @property
    def layered_keys(self) -> int:
        return sum(len(layer) for layer in self.layers)


def plan(keys: Sequence[OrderedKey]) -> OrderPlan:
    """Order each parent's keys by source create revision. The longest run from the lowest that the
    destination already holds in that order stays (values put in place keep a create revision); from
    the first key out of order on, every key is (re-)created, one layer per source create revision,
    after all the others. A parent whose ordered keys share one source create revision (or that has one)
    has no order to keep."""
    out = OrderPlan([], [], [])
    by_parent: dict[bytes, list[OrderedKey]] = {}
    for k in keys:
        by_parent.setdefault(parent(k.key), []).append(k)
    for siblings in by_parent.values():
        siblings.sort(key=lambda k: k.create)
        groups = [list(g) for _, g in groupby(siblings, key=lambda k: k.create)]
        if len(groups) < 2:
            out.puts.extend(k for k in siblings if k.differs)
            continue
        kept = 0
        below = 0  # the highest destination create revision among the kept keys
        for group in groups:
            if any(not k.dest_create for k in group) or min(k.dest_create for k in group) <= below:
                break
            below = max(k.dest_create for k in group)
            kept += 1
        rest = groups[kept:]
        for group in groups[:kept]:
            out.puts.extend(k for k in group if k.differs)
        if rest:
            out.parents += 1
        for i, group in enumerate(rest):
            out.deletes.extend(k.key for k in group if k.dest_create)
            if i == len(out.layers):
                out.layers.append([])
            out.layers[i].extend(group)
    return out


AsData = list[tuple[bytes, list[list[bytes]]]]  # (parent, its keys in source create order, ties together)


def as_data(layers: Sequence[Sequence[OrderedKey]]) -> AsData:
    """The order of the keys of `layers` (not written in layers) as data: per parent, its keys
    layer by layer (a layer holds one source create revision of each parent)."""
    out: dict[bytes, list[list[bytes]]] = {}
    for layer in layers:
        for name, group in groupby(sorted(layer, key=lambda k: parent(k.key)), key=lambda k: parent(k.key)):
            out.setdefault(name, []).append([k.key for k in group])
    return list(out.items())
