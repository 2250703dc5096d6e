"""Fencing application writes (failover/fence.py) on real etcd, every version found: by etcd auth (role
permissions taken and given back exactly), by a hook, or recorded only; idempotent, and finished
after a crash halfway."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from etcd_dr.config import DEFAULT_STATE_PREFIX
from etcd_dr.etcd import ClientConfig, EtcdClient, Permission, PermissionDenied
from etcd_dr.fence import FenceError, fence_writes, read_fence, unfence_writes
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.state import StateLayout
from etcd_dr.state.records import FENCED, FENCING, UNFENCING, FenceRecord

SP = DEFAULT_STATE_PREFIX
LAYOUT = StateLayout(SP)
ROOT_AUTH = ("root", "rootpw")
APP_ROLES = ("app-rw", "app-wo", "app-ro")


@contextlib.asynccontextmanager
async def connect(cluster: EtcdCluster, user: str | None = None) -> AsyncIterator[EtcdClient]:
    password = {"etcd-dr": "drpw", "app": "apppw", "root": "rootpw"}.get(user or "")
    config = ClientConfig.create(
        cluster.endpoints, user=user, password=password, request_timeout=10.0, dial_timeout=2.0
    )
    async with EtcdClient(config) as client:
        yield client


def auth_cluster(make: Callable[..., EtcdCluster]) -> EtcdCluster:
    """Auth on; an application user `app` with three roles, and etcd-dr's user with the root role."""
    cluster = make(name="fence", auth=ROOT_AUTH)
    ctl = cluster.etcdctl
    for role in (*APP_ROLES, "dr-state"):
        ctl("role", "add", role)
    ctl("role", "grant-permission", "app-rw", "readwrite", "/app/", "--prefix=true")
    ctl("role", "grant-permission", "app-rw", "readwrite", "/cfg")  # one key
    ctl("role", "grant-permission", "app-rw", "read", "/ref/", "--prefix=true")
    # Two permissions with the same key: etcd cannot change one of them in place.
    ctl("role", "grant-permission", "app-rw", "readwrite", "/dup/", "--prefix=true")
    ctl("role", "grant-permission", "app-rw", "write", "/dup/", "/dup/m")
    # Inside the state prefix (a mirror's heartbeat): etcd-dr's, kept.
    ctl("role", "grant-permission", "app-rw", "readwrite", SP.decode() + "hb/", "--prefix=true")
    ctl("role", "grant-permission", "app-wo", "write", "/logs/", "--prefix=true")
    ctl("role", "grant-permission", "app-ro", "read", "/app/", "--prefix=true")
    ctl("role", "grant-permission", "dr-state", "readwrite", SP.decode(), "--prefix=true")
    ctl("user", "add", "app:apppw")
    for role in APP_ROLES:
        ctl("user", "grant-role", "app", role)
    ctl("user", "add", "etcd-dr:drpw")
    ctl("user", "grant-role", "etcd-dr", "root")
    ctl("user", "grant-role", "etcd-dr", "dr-state")
    return cluster


async def role_perms(client: EtcdClient) -> dict[str, list[Permission]]:
    roles = await client.role_list()
    return {r: sorted(await client.role_get(r), key=lambda p: (p.key, p.range_end)) for r in roles}


async def assert_app_fenced(cluster: EtcdCluster) -> None:
    async with connect(cluster, "app") as app:
        for key in (b"/app/x", b"/cfg", b"/logs/x", b"/dup/a", b"/dup/z"):
            with pytest.raises(PermissionDenied):
                await app.put(key, b"fenced?")
        # Reads go on; the heartbeat inside the state prefix is still writable.
        kv = await app.get(b"/app/x")
        assert kv is not None and kv.value == b"before"
        assert await app.get(b"/dup/a") is not None
        await app.put(SP + b"hb/k", b"beat")
    async with connect(cluster, "etcd-dr") as dr:
        await dr.put(SP + b"event", b"etcd-dr still writes its state")


async def assert_app_writes(cluster: EtcdCluster, value: bytes) -> None:
    async with connect(cluster, "app") as app:
        for key in (b"/app/x", b"/cfg", b"/logs/x", b"/dup/a", b"/dup/z"):
            await app.put(key, value)


def report(capsys: pytest.CaptureFixture[str], cluster: EtcdCluster, what: str, seconds: float) -> None:
    with capsys.disabled():
        print(f"\n[etcd {cluster.version}] {what}: {seconds * 1000:.1f} ms", end="")


# ---- fencing by etcd auth ---------------------------------------------------------------------------


async def test_auth_fence_and_unfence(
    etcd_cluster_factory: Callable[..., EtcdCluster], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = auth_cluster(etcd_cluster_factory)
    await assert_app_writes(cluster, b"before")
    async with connect(cluster, "etcd-dr") as dr:
        before = await role_perms(dr)
        t0 = time.monotonic()
        record = await fence_writes(dr, LAYOUT, mode="auth", epoch=7)
        report(capsys, cluster, "fence (auth, 5 permissions of 2 roles)", time.monotonic() - t0)
        assert record.mode == "auth" and record.state == FENCED and record.epoch == 7
        assert record.mod_revision > 0 and "etcd-dr" in record.by
        assert dict(record.revoked) == {
            "app-rw": (
                Permission("readwrite", b"/app/", b"/app0"),
                Permission("readwrite", b"/cfg", b""),
                Permission("readwrite", b"/dup/", b"/dup0"),
                Permission("write", b"/dup/", b"/dup/m"),
            ),
            "app-wo": (Permission("write", b"/logs/", b"/logs0"),),
        }
        # Stored as described in the contract, and read back the same.
        stored = await read_fence(dr, LAYOUT)
        assert stored == record and stored.mod_revision == record.mod_revision
        kv = await dr.get(LAYOUT.fence)
        assert kv is not None and b'"key":"/app/"' in kv.value and b'"perm_type":"readwrite"' in kv.value

        fenced = await role_perms(dr)
        assert fenced["app-rw"] == [
            Permission("read", b"/app/", b"/app0"),
            Permission("read", b"/cfg", b""),
            Permission("read", b"/dup/", b"/dup0"),
            Permission("readwrite", SP + b"hb/", SP + b"hb0"),
            Permission("read", b"/ref/", b"/ref0"),
        ]
        assert fenced["app-wo"] == []
        for role in ("app-ro", "dr-state"):
            assert fenced[role] == before[role]
        await assert_app_fenced(cluster)

        # Fencing again: nothing changes, the same record comes back.
        again = await fence_writes(dr, LAYOUT, mode="auth", epoch=8)
        assert again == record and again.mod_revision == record.mod_revision
        assert await role_perms(dr) == fenced

        t0 = time.monotonic()
        lifted = await unfence_writes(dr, LAYOUT)
        report(capsys, cluster, "unfence (auth)", time.monotonic() - t0)
        assert lifted is not None and lifted.revoked == record.revoked
        assert await role_perms(dr) == before
        assert await read_fence(dr, LAYOUT) is None
        assert await unfence_writes(dr, LAYOUT) is None  # idempotent
    await assert_app_writes(cluster, b"after")


async def test_auth_fence_finishes_after_a_crash_halfway(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    cluster = auth_cluster(etcd_cluster_factory)
    await assert_app_writes(cluster, b"before")
    async with connect(cluster, "etcd-dr") as dr:
        before = await role_perms(dr)
        # What a fence that died after its first change leaves: the record (all it meant to take)
        # and one permission changed.
        plan = FenceRecord(
            mode="auth",
            since=time.time(),
            by="a run that crashed",
            revoked={
                "app-rw": (
                    Permission("readwrite", b"/app/", b"/app0"),
                    Permission("readwrite", b"/cfg", b""),
                    Permission("readwrite", b"/dup/", b"/dup0"),
                    Permission("write", b"/dup/", b"/dup/m"),
                ),
                "app-wo": (Permission("write", b"/logs/", b"/logs0"),),
            },
            epoch=3,
            state=FENCING,
        )
        # Meanwhile somebody gave an application role one more write permission: taken too.
        await dr.role_grant_permission("app-ro", Permission("write", b"/late/", b"/late0"))
        before_late = await role_perms(dr)
        await dr.put(LAYOUT.fence, plan.encode())
        await dr.role_grant_permission("app-rw", Permission("read", b"/app/", b"/app0"))

        record = await fence_writes(dr, LAYOUT, mode="auth", epoch=3)
        assert record.state == FENCED and record.by == "a run that crashed"
        assert record.revoked["app-ro"] == (Permission("write", b"/late/", b"/late0"),)
        assert record.permission_count == 6
        await assert_app_fenced(cluster)
        async with connect(cluster, "app") as app:
            with pytest.raises(PermissionDenied):
                await app.put(b"/late/x", b"v")

        # An unfence that died after giving one permission back: fencing again re-fences.
        await dr.put(LAYOUT.fence, replace(record, state=UNFENCING).encode())
        await dr.role_grant_permission("app-wo", Permission("write", b"/logs/", b"/logs0"))
        refenced = await fence_writes(dr, LAYOUT, mode="auth")
        assert refenced.state == FENCED and refenced.revoked == record.revoked
        await assert_app_fenced(cluster)

        # Half lifted again, then unfence finishes: everything back as it was (with the late grant).
        await dr.role_grant_permission("app-rw", Permission("readwrite", b"/cfg", b""))
        lifted = await unfence_writes(dr, LAYOUT)
        assert lifted is not None
        after = await role_perms(dr)
        assert after == before_late
        assert {r: p for r, p in after.items() if r != "app-ro"} == {
            r: p for r, p in before.items() if r != "app-ro"
        }
    await assert_app_writes(cluster, b"after")


async def test_auth_unfence_skips_a_deleted_role(
    etcd_cluster_factory: Callable[..., EtcdCluster], caplog: pytest.LogCaptureFixture
) -> None:
    cluster = auth_cluster(etcd_cluster_factory)
    async with connect(cluster, "etcd-dr") as dr:
        before = await role_perms(dr)
        await fence_writes(dr, LAYOUT, mode="auth")
        cluster.etcdctl("role", "delete", "app-wo")
        with caplog.at_level("WARNING", logger="etcd_dr.failover"):
            assert await unfence_writes(dr, LAYOUT) is not None
        assert "app-wo was deleted while fenced" in caplog.text
        after = await role_perms(dr)
        del before["app-wo"]
        assert after == before
        assert await read_fence(dr, LAYOUT) is None


async def test_auth_fence_refused_without_auth_or_root(
    etcd_cluster_factory: Callable[..., EtcdCluster],
) -> None:
    plain = etcd_cluster_factory(name="plain")
    async with connect(plain) as client:
        with pytest.raises(FenceError) as info:
            await fence_writes(client, LAYOUT, mode="auth")
        assert str(info.value) == (
            f"cannot fence writes on {plain.endpoints[0]}: etcd auth is not enabled; "
            "give --fence-hook CMD or --no-fence"
        )
        assert await read_fence(client, LAYOUT) is None
    cluster = auth_cluster(etcd_cluster_factory)
    async with connect(cluster, "app") as app:
        with pytest.raises(FenceError) as info:
            await fence_writes(app, LAYOUT, mode="auth")
        assert str(info.value) == (
            f"cannot fence writes on {cluster.endpoints[0]}: the user app (--user) lacks the root role "
            "needed to change role permissions"
        )
    async with connect(cluster, "etcd-dr") as dr:
        assert await read_fence(dr, LAYOUT) is None
        # A fence of another kind is not taken for this one.
        await fence_writes(dr, LAYOUT, mode="none")
        with pytest.raises(FenceError, match="has a fence by none"):
            await fence_writes(dr, LAYOUT, mode="auth")
        assert (await unfence_writes(dr, LAYOUT)) is not None
    await assert_app_writes(cluster, b"v")


# ---- by a hook, or recorded only ------------------------------------------------------------------


async def test_hook_fence_and_unfence(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = etcd_cluster_factory(name="hooked")
    out = tmp_path / "hook.log"
    hook = f'echo "$ETCD_DR_ACTION $ETCD_DR_CLUSTER_ID $ETCD_DR_ENDPOINTS $EXTRA" >> {out}'
    async with connect(cluster) as client:
        cluster_id = (await client.status()).header.cluster_id
        t0 = time.monotonic()
        record = await fence_writes(client, LAYOUT, mode="hook", hook=hook, epoch=2, env={"EXTRA": "x1"})
        report(capsys, cluster, "fence (hook)", time.monotonic() - t0)
        assert record.mode == "hook" and record.state == FENCED and record.revoked == {}
        assert out.read_text() == f"fence {cluster_id:x} {cluster.endpoints[0]} x1\n"
        # Already fenced: the hook does not run again.
        assert await fence_writes(client, LAYOUT, mode="hook", hook=hook) == record
        assert out.read_text().count("fence") == 1

        with pytest.raises(FenceError, match="give --fence-hook CMD"):
            await unfence_writes(client, LAYOUT)
        t0 = time.monotonic()
        lifted = await unfence_writes(client, LAYOUT, hook=hook, env={"EXTRA": "x2"})
        report(capsys, cluster, "unfence (hook)", time.monotonic() - t0)
        assert lifted == record
        assert out.read_text().splitlines()[1] == f"unfence {cluster_id:x} {cluster.endpoints[0]} x2"
        assert await read_fence(client, LAYOUT) is None


async def test_hook_failure(etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path) -> None:
    cluster = etcd_cluster_factory(name="hookfail")
    async with connect(cluster) as client:
        with pytest.raises(FenceError) as info:
            await fence_writes(client, LAYOUT, mode="hook", hook="echo no way >&2; exit 3")
        message = str(info.value)
        assert message.startswith(f"cannot fence writes on {cluster.endpoints[0]}: --fence-hook")
        assert "exited with code 3: no way" in message and "\n" not in message
        # The record stays (the fence may be half done): a rerun runs the hook again, an unfence lifts it.
        record = await read_fence(client, LAYOUT)
        assert record is not None and record.state == FENCING
        out = tmp_path / "retry"
        record = await fence_writes(client, LAYOUT, mode="hook", hook=f"touch {out}")
        assert record.state == FENCED and out.exists()
        with pytest.raises(FenceError, match=r"cannot lift the fence on .*exited with code 4"):
            await unfence_writes(client, LAYOUT, hook="exit 4")
        assert await unfence_writes(client, LAYOUT, hook="true") is not None
        assert await read_fence(client, LAYOUT) is None


async def test_no_fence_is_recorded_only(etcd_cluster_factory: Callable[..., EtcdCluster]) -> None:
    cluster = etcd_cluster_factory(name="nofence")
    async with connect(cluster) as client:
        record = await fence_writes(client, LAYOUT, mode="none", epoch=5, by="test")
        assert (record.mode, record.state, record.epoch, record.by) == ("none", FENCED, 5, "test")
        await client.put(b"/app/x", b"still writable")
        assert await fence_writes(client, LAYOUT, mode="none") == record
        assert await unfence_writes(client, LAYOUT) == record
        assert await read_fence(client, LAYOUT) is None


def test_record_round_trip() -> None:
    record = FenceRecord(
        mode="auth",
        since=1700000000.5,
        by="etcd-dr x@h pid 1",
        revoked={"r": (Permission("readwrite", b"\xff\x00bin", b"\xff\x01"), Permission("write", b"k", b""))},
        epoch=4,
        state=FENCING,
    )
    assert FenceRecord.decode(record.encode()) == record
    with pytest.raises(ValueError):
        FenceRecord.decode(record.encode().replace(b'"auth"', b'"magic"'))
