"""The layering rules of docs/architecture.md, checked over the source (no cluster needed):

- no module outside `state/` builds a key under the state prefix: it neither concatenates with the
  state prefix nor spells a record's path segment (state/layout.py is the one place);
- `mirror/` never imports `failover/`, and `failover/` takes from `mirror/` only the engine it runs
  (never a record or a key: those come from `state/`); `state/` imports neither;
- and SiteState, a site's whole state read in one range (the one test here that needs a cluster).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.mirroring import connect

import etcd_dr
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.state import StateLayout
from etcd_dr.state.events import record_event
from etcd_dr.state.layout import pair_id
from etcd_dr.state.reader import UnreadableRecord
from etcd_dr.state.records import Checkpoint, HealthRecord, LockHolder
from etcd_dr.state.roles import STANDBY, Role
from etcd_dr.state.site import SiteState

SRC = Path(etcd_dr.__file__).parent
# The records' path segments as state/layout.py spells them (b"mirror/", b"role", ...).
SEGMENTS = (
    b"mirror/",
    b"lock/",
    b"health/",
    b"leases/",
    b"heartbeat/",
    b"events/",
    b"role",
    b"fence",
    b"bump",
)
# Names the code gives the state prefix.
PREFIX_NAMES = {"state_prefix", "sp"}


def modules(*under: str) -> list[Path]:
    roots = [SRC / u for u in under] if under else [SRC]
    return sorted(p for r in roots for p in r.rglob("*.py") if "_pb" not in p.parts)


def _is_prefix(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in PREFIX_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr in PREFIX_NAMES
    )


def key_building(path: Path) -> list[str]:
    """Where `path` concatenates with the state prefix or spells a record's path segment."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            if _is_prefix(node.left) or _is_prefix(node.right):
                found.append(f"{where}: concatenates with the state prefix")
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            if node.value in SEGMENTS or any(
                node.value.startswith(s) or b"/" + s in node.value for s in SEGMENTS if s.endswith(b"/")
            ):
                found.append(f"{where}: spells the state record segment {node.value!r}")
        elif isinstance(node, ast.JoinedStr):
            # f"mirror/{id:016x}/...".encode(): a record key written by hand.
            head = node.values[0] if node.values else None
            slashed = tuple(s for s in SEGMENTS if s.endswith(b"/"))
            if (
                isinstance(head, ast.Constant)
                and isinstance(head.value, str)
                and head.value.encode().startswith(slashed)
            ):
                found.append(f"{where}: formats a state record key {head.value!r}")
    return found


def test_no_state_key_is_built_outside_state() -> None:
    offenders = [hit for p in modules() if "state" not in p.relative_to(SRC).parts for hit in key_building(p)]
    assert offenders == [], "\n".join(offenders)


# Where a StateLayout is built from a prefix: the config objects (MirrorConfig.layout), and the one
# command without one (`checkpoints`, which has only a destination).
LAYOUT_BUILDERS = {"config.py", "cli.py"}
# Who takes the prefix itself: the flag's value (cli.py), and the key mapping that never mirrors the
# state prefix (mirror/keys.py: a range to exclude, not a record).
PREFIX_TAKERS = {"cli.py", "keys.py"}


def layout_threading(path: Path) -> list[str]:
    """Where `path` threads the state prefix instead of holding the StateLayout built once."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and path.name not in PREFIX_TAKERS:
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            found += [
                f"{where}: {node.name} takes the state prefix {a.arg}" for a in args if a.arg in PREFIX_NAMES
            ]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "StateLayout"
            and path.name not in LAYOUT_BUILDERS
        ):
            found.append(f"{where}: builds a StateLayout of its own")
    return found


def test_the_state_prefix_is_held_as_one_layout() -> None:
    offenders = [
        hit for p in modules() if "state" not in p.relative_to(SRC).parts for hit in layout_threading(p)
    ]
    offenders += [f"state/layout.py: {hit}" for hit in layout_threading(SRC / "state" / "layout.py")]
    assert offenders == [], "\n".join(offenders)


def test_the_check_sees_a_key_built_by_hand(tmp_path: Path) -> None:
    # The walker must catch the very forms the old code used, or the test above proves nothing.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(state_prefix: bytes, lock: bytes, sid: int) -> list[bytes]:\n"
        "    return [state_prefix + b'role', lock.replace(b'/lock/', b'/leases/'),\n"
        "            f'mirror/{sid:016x}/'.encode()]\n"
    )
    hits = key_building(bad)
    # state_prefix + ..., b"role", b"/lock/", b"/leases/", f"mirror/...".
    assert len(hits) == 5, hits
    assert any("concatenates" in h for h in hits) and any("formats" in h for h in hits)


def test_layout_keys_are_the_ones_on_disk() -> None:
    # Existing clusters keep their state: the keys must not move (a failover would find no checkpoint).
    layout = StateLayout(b"/etcd-dr/")
    pair = pair_id(0xABC, b"/app/", b"/app/")
    assert pair == b"0000000000000abc/" + pair[17:] and len(pair) == 17 + 16
    assert layout.checkpoint(0xABC, b"/app/", b"/app/") == b"/etcd-dr/mirror/" + pair
    assert layout.lock(0xABC, b"/app/", b"/app/") == b"/etcd-dr/lock/" + pair
    assert layout.health(0xABC, b"/app/", b"/app/") == b"/etcd-dr/health/" + pair
    assert layout.lease_registry(0xABC, b"/app/", b"/app/") == b"/etcd-dr/leases/" + pair + b"/"
    assert layout.heartbeat(0x12) == b"/etcd-dr/heartbeat/0000000000000012"
    assert (layout.role, layout.fence, layout.revision_raise) == (
        b"/etcd-dr/role",
        b"/etcd-dr/fence",
        b"/etcd-dr/bump",
    )
    assert layout.event(5, "failover") == b"/etcd-dr/events/00000000000000000005-failover"
    assert layout.pair_of(layout.checkpoint(0xABC, b"/app/", b"/app/")) == pair
    assert layout.checkpoints_of(0xABC) == b"/etcd-dr/mirror/0000000000000abc/"


def imports(path: Path) -> set[str]:
    """The etcd_dr modules `path` imports (relative imports resolved), at any depth of the file."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("etcd_dr")}


def test_import_rule() -> None:
    broken = []
    for p in modules("mirror"):
        broken += [f"{p.name} imports {m}" for m in imports(p) if m.startswith("etcd_dr.failover")]
    for p in modules("state"):
        broken += [
            f"state/{p.name} imports {m}"
            for m in imports(p)
            if m.startswith(("etcd_dr.failover", "etcd_dr.mirror", "etcd_dr.fence", "etcd_dr.cli"))
        ]
    # failover runs mirrors (switchover, failback) but takes no record or key from mirror/.
    allowed = ("etcd_dr.mirror.engine", "etcd_dr.mirror.keys")
    for p in modules("failover"):
        broken += [
            f"failover/{p.name} imports {m}"
            for m in imports(p)
            if m.startswith("etcd_dr.mirror") and not m.startswith(allowed)
        ]
    assert broken == [], "\n".join(broken)


async def test_site_state_reads_every_record_in_one_range(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    c = etcd_cluster_factory(name="s")
    layout = StateLayout(b"/etcd-dr/")
    ckpt = Checkpoint(0xABC, b"/app/", b"/app/", revision=7)
    health = HealthRecord(updated=1.0, problems={"lag": "behind"})
    role = Role(STANDBY, 3, 0xABC, 2.0, via="mirror")
    pair = pair_id(0xABC, b"/app/", b"/app/")
    async with connect(c) as client:
        await client.put(layout.checkpoint(0xABC, b"/app/", b"/app/"), ckpt.encode())
        await client.put(layout.lock(0xABC, b"/app/", b"/app/"), b"host:1:tok")
        await client.put(layout.health(0xABC, b"/app/", b"/app/"), health.encode())
        await client.put(layout.lease_registry(0xABC, b"/app/", b"/app/") + b"00000000000000ff", b"10")
        await client.put(layout.role, role.encode())
        await record_event(client, layout, "promoted", "made primary")
        site = await SiteState.read(client, layout)
        assert site.checkpoint(pair) == ckpt and site.health(pair) == health and site.role == role
        assert site.lock_holder(pair) == LockHolder("host:1:tok") and site.lease_counts == {pair: 1}
        assert site.fence is None and [e.kind for e in site.events] == ["promoted"]
        assert [i.id for i in site.stored_checkpoints()] == [pair.decode()]
        # A damaged record is met when it is used, naming its key.
        await client.put(layout.health(0xABC, b"/app/", b"/app/"), b"[1]")
        site = await SiteState.read(client, layout)
        with pytest.raises(UnreadableRecord, match="mirror health record /etcd-dr/health/"):
            site.health(pair)
