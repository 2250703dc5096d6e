"""Every state record filled with random bytes makes every command that reads it exit 2 with one line
naming the record's key, the cluster's endpoints and the fix (DESIGN.md, "State kept in etcd"; the
reader is state/reader.py). One cluster pair per record; the commands run as the user runs them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from harness.clirun import ERROR_PREFIX, etcd_dr
from harness.mirroring import connect, pair_config

from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror
from etcd_dr.state import StateLayout
from etcd_dr.state.roles import read_role

Factory = Callable[..., EtcdCluster]
LAYOUT = StateLayout(b"/etcd-dr/")
APP = b"/app/"

# record -> (which cluster holds it: "a" the source/primary, "b" the destination/standby;
#            the commands that read it; the words of its line)
RECORDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "checkpoint": (
        "b",
        ("mirror", "verify", "status", "checkpoints", "switchover", "failover"),
        "mirror checkpoint",
    ),
    "health": ("b", ("status",), "mirror health record"),
    "role": ("b", ("mirror", "status", "switchover", "failover", "failback"), "role record"),
    "fence": ("a", ("switchover",), "fence record"),  # failback: the test below
    "lease registry": ("b", ("mirror",), "lease registry entry"),
    "heartbeat": ("a", ("status",), "mirror heartbeat"),
    # Not a mirror's HOST:PID:TOKEN: a mirror would wait on it forever, the others would show garbage.
    "lock": ("b", ("mirror", "status", "checkpoints"), "mirror lock"),
    # Issue 18's records of the source's create order kept as data, read by status/verify (counted) and by
    # the promotion that creates those keys again in order.
    "order": (
        "b",
        ("status", "verify", "switchover", "failover"),
        "order record (the source's create order of keys written tied)",
    ),
    "order journal": (
        "b",
        ("switchover", "failover"),
        "order journal (keys a promotion deleted to create them again)",
    ),
    # The history of moves shown by status: a damaged entry is not skipped (it may be the move looked for).
    "event": ("b", ("status",), "event record"),
}


def argv(command: str, a: EtcdCluster, b: EtcdCluster) -> list[str]:
    pair = ["--prefix", APP.decode(), "--dial-timeout", "2", "--command-timeout", "10"]
    return {
        "mirror": ["mirror", b.endpoints[0], "--endpoints", a.endpoints[0], "--once", *pair],
        "verify": ["verify", b.endpoints[0], "--endpoints", a.endpoints[0], *pair],
        "status": ["status", b.endpoints[0], "--endpoints", a.endpoints[0], "--no-fence", *pair],
        "checkpoints": ["checkpoints", b.endpoints[0]],
        "switchover": [
            "switchover",
            b.endpoints[0],
            "--endpoints",
            a.endpoints[0],
            "--no-fence",
            "--yes",
            *pair,
        ],
        "failover": [
            "failover",
            b.endpoints[0],
            "--endpoints",
            a.endpoints[0],
            "--no-fence",
            "--force",
            "--yes",
            *pair,
        ],
        # After a failover b is the primary; a failback makes the old primary a a standby again.
        "failback": ["failback", a.endpoints[0], "--endpoints", b.endpoints[0], "--no-fence", "--yes", *pair],
    }[command]


def key_of(record: str, source_id: int, dest_id: int) -> bytes:
    return {
        "checkpoint": LAYOUT.checkpoint(source_id, APP, APP),
        "health": LAYOUT.health(source_id, APP, APP),
        "role": LAYOUT.role,
        "fence": LAYOUT.fence,
        "lease registry": LAYOUT.lease_registry(source_id, APP, APP) + b"0000000000000001",
        "heartbeat": LAYOUT.heartbeat(dest_id),
        "lock": LAYOUT.lock(source_id, APP, APP),
        "order": LAYOUT.order_record(LAYOUT.pair_of(LAYOUT.checkpoint(source_id, APP, APP)), APP, 0),
        "order journal": LAYOUT.order_journal,
        "event": LAYOUT.event(time.time_ns(), "promoted"),
    }[record]


@pytest.mark.parametrize("record", list(RECORDS))
async def test_random_bytes_in_a_record_is_exit_2_naming_it(
    etcd_cluster_factory: Factory, record: str
) -> None:
    where, commands, words = RECORDS[record]
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    key = await mirrored_then_broken(a, b, record, where)
    for command in commands:
        await assert_names_the_record(argv(command, a, b), command, key, words, a if where == "a" else b)


async def test_failback_on_a_broken_fence_record(etcd_cluster_factory: Factory) -> None:
    # Failback runs after a failover: b is the primary then, a (the old one) keeps the fence record.
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    await mirrored_then_broken(a, b, None, "a")
    moved = await etcd_dr(*argv("failover", a, b), timeout=60)
    assert moved.code == 0, moved.stderr
    async with connect(a) as ca:
        await ca.put(LAYOUT.fence, garbage())
    await assert_names_the_record(argv("failback", a, b), "failback", LAYOUT.fence, "fence record", a)


@pytest.mark.parametrize("record", ["order", "order journal"])
async def test_a_damaged_order_record_stops_a_move_before_the_promotion(
    etcd_cluster_factory: Factory, record: str
) -> None:
    """The promotion re-creates the keys the order records name: a record it cannot read must stop the
    move while the standby is still a standby, not leave it promoted with half the move done."""
    a, b = etcd_cluster_factory(name="a"), etcd_cluster_factory(name="b")
    key = await mirrored_then_broken(a, b, record, "b")
    for command in ("switchover", "failover"):
        await assert_names_the_record(argv(command, a, b), command, key, RECORDS[record][2], b)
        async with connect(b) as cb:
            role = (await read_role(cb, LAYOUT)).role
        assert role is not None and not role.is_primary, (command, role)


def garbage() -> bytes:
    """Random bytes that are neither JSON nor a number (a '{' never closed)."""
    return b"{" + os.urandom(24).replace(b"}", b"")


async def mirrored_then_broken(a: EtcdCluster, b: EtcdCluster, record: str | None, where: str) -> bytes:
    """/app/ mirrored once from a into b; then `record` (if any) filled with random bytes: its key."""
    async with connect(a) as ca, connect(b) as cb:
        await ca.put(APP + b"k", b"v")
        await Mirror(pair_config(a, b, prefix=APP, once=True, heartbeat_interval=0)).run()
        if record is None:
            return b""
        key = key_of(record, (await ca.status()).cluster_id, (await cb.status()).cluster_id)
        await (ca if where == "a" else cb).put(key, garbage())
        return key


async def assert_names_the_record(
    args: list[str], command: str, key: bytes, words: str, holder: EtcdCluster
) -> None:
    run = await etcd_dr(*args, timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.code == 2 and lines, (command, run.code, run.stdout, run.stderr)
    last = lines[-1]
    assert last.startswith(f"{ERROR_PREFIX}the {words} {key.decode()} on "), (command, last)
    assert holder.endpoints[0].removeprefix("http://") in last and "is not readable" in last, (command, last)
    assert f"etcdctl del {key.decode()}" in last, (command, last)
    assert "Traceback" not in run.stderr, (command, run.stderr)
