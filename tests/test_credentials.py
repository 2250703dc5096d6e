"""Credentials kept out of sight (issue 12, finding 5): passwords from a file or the environment for
both sides, a warning for one typed on the command line, and no password or token in any log line or
message of the auth runs, at debug level."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from pathlib import Path

from harness.clirun import Run, assert_refused, etcd_dr

from etcd_dr.etcd import ClientConfig, EtcdClient
from etcd_dr.local.cluster import EtcdCluster

Factory = Callable[..., EtcdCluster]
APP = "/app/"
# etcd's simple tokens look like this (random letters, a dot, a counter); JWTs start with "eyJ".
TOKEN = re.compile(r"\b[a-zA-Z]{16}\.\d+\b|eyJ[\w-]+\.[\w-]+\.[\w-]+")


def site(make: Factory, name: str, root_pw: str, dr_pw: str) -> EtcdCluster:
    """Auth on; etcd-dr's own user has the root role (what auth fencing needs)."""
    cluster = make(name=name, auth=("root", root_pw))
    cluster.etcdctl("user", "add", f"etcd-dr:{dr_pw}")
    cluster.etcdctl("user", "grant-role", "etcd-dr", "root")
    return cluster


def no_secrets(run: Run, *secrets_: str) -> None:
    text = run.stdout + run.stderr
    for secret in secrets_:
        assert secret not in text, f"a password reached the output:\n{text[-3000:]}"
    assert not TOKEN.search(text), f"an auth token reached the output: {TOKEN.search(text)}"


async def test_password_file_and_env_flows_leak_nothing(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    pw = {n: "Pw-" + secrets.token_hex(8) for n in ("root_a", "dr_a", "root_b", "dr_b", "wrong")}
    a = site(etcd_cluster_factory, "site-a", pw["root_a"], pw["dr_a"])
    b = site(etcd_cluster_factory, "site-b", pw["root_b"], pw["dr_b"])
    all_pw = list(pw.values())
    for i in range(20):
        a.etcdctl("put", f"{APP}{i:03d}", f"v{i}")
    src_file = tmp_path / "source.pw"
    src_file.write_text(pw["dr_a"] + "\n")
    src_file.chmod(0o600)
    dest_env = {"ETCDCTL_DEST_USER": "etcd-dr", "ETCDCTL_DEST_PASSWORD": pw["dr_b"]}
    common = ["--endpoints", a.endpoints[0], "--prefix", APP]
    src_creds = ["--user", "etcd-dr", "--password-file", str(src_file)]

    # Mirror with auth on both sides: the source's password from a file, the destination's from env.
    run = await etcd_dr(
        "--log-level", "debug", "mirror", b.endpoints[0], *common, *src_creds, "--once", env=dest_env
    )
    assert run.code == 0, run.stderr
    assert "command line" not in run.stderr  # nothing typed: no warning
    no_secrets(run, *all_pw)
    async with EtcdClient(ClientConfig.create(b.endpoints, user="root", password=pw["root_b"])) as cb:
        assert len((await cb.range(APP.encode(), b"/app0")).kvs) == 20

    # The destination's from a file, the source's from env; verify and status take the same.
    dest_file = tmp_path / "dest.pw"
    dest_file.write_text(pw["dr_b"] + "\r\n")
    src_env = {"ETCDCTL_USER": "etcd-dr", "ETCDCTL_PASSWORD": pw["dr_a"]}
    dest_creds = ["--dest-user", "etcd-dr", "--dest-password-file", str(dest_file)]
    for command in ("verify", "status"):
        run = await etcd_dr(
            "--log-level", "debug", command, b.endpoints[0], *common, *dest_creds, env=src_env
        )
        # status: degraded (exit 1) only because no mirror runs after the --once one; it read both sites.
        expected = 1 if command == "status" else 0
        assert run.code == expected and "error:" not in run.stderr, run.stdout + run.stderr
        assert command != "status" or "mirror-stopped" in run.stdout, run.stdout
        no_secrets(run, *all_pw)

    # A wrong password: refused at once, naming the user and flags, and not repeating the password.
    wrong_file = tmp_path / "wrong.pw"
    wrong_file.write_text(pw["wrong"] + "\n")
    run = await etcd_dr(
        "--log-level", "debug", "mirror", b.endpoints[0], *common,
        "--user", "etcd-dr", "--password-file", str(wrong_file), "--once", env=dest_env, timeout=30,
    )  # fmt: skip
    assert_refused(run, "authentication failed", "etcd-dr")
    no_secrets(run, *all_pw)
    run = await etcd_dr(
        "--log-level", "debug", "verify", b.endpoints[0], *common, *src_creds,
        "--dest-user", f"etcd-dr:{pw['wrong']}", timeout=30,
    )  # fmt: skip
    assert_refused(run, "destination", "authentication failed")
    assert pw["wrong"] not in run.last_line

    # Typed on the command line: it works, with a warning naming the safer ways.
    run = await etcd_dr(
        "--log-level", "debug", "mirror", b.endpoints[0], *common, *src_creds,
        "--dest-user", "etcd-dr", "--dest-password", pw["dr_b"], "--once",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert "--dest-password-file" in run.stderr and "ETCDCTL_DEST_PASSWORD" in run.stderr
    no_secrets(run, *all_pw)

    # A move with auth (auth fencing, the default): a switchover with both passwords from files.
    run = await etcd_dr(
        "--log-level", "debug", "switchover", b.endpoints[0], *common, *src_creds, *dest_creds, timeout=120
    )
    assert run.code == 0, run.stdout + run.stderr
    no_secrets(run, *all_pw)


async def test_bad_password_files_are_one_line_exit_2(etcd_cluster_factory: Factory, tmp_path: Path) -> None:
    dst = etcd_cluster_factory(name="dst")
    missing = tmp_path / "nope.pw"
    run = await etcd_dr("mirror", dst.endpoints[0], "--user", "u", "--password-file", str(missing), "--once")
    assert_refused(run, "--password-file", str(missing))
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    run = await etcd_dr("status", dst.endpoints[0], "--dest-user", "u", "--dest-password-file", str(empty))
    assert_refused(run, "--dest-password-file", str(empty), "empty")
    unreadable = tmp_path / "dir.pw"
    unreadable.mkdir()
    run = await etcd_dr(
        "verify", dst.endpoints[0], "--dest-user", "u", "--dest-password-file", str(unreadable)
    )
    assert_refused(run, "--dest-password-file", str(unreadable))
    good = tmp_path / "good.pw"
    good.write_text("x\n")
    run = await etcd_dr(
        "verify",
        dst.endpoints[0],
        "--dest-user",
        "u",
        "--dest-password",
        "x",
        "--dest-password-file",
        str(good),
    )
    assert_refused(run, "--dest-password", "--dest-password-file")
    async with EtcdClient(ClientConfig.create(dst.endpoints)) as c:
        assert (await c.range(b"\0", b"\0", count_only=True)).count == 0


def grant(cluster: EtcdCluster, *perms: tuple[str, ...]) -> None:
    """etcdctl role grant-permission dr-mirror PERM...: the commands docs/failover.md gives."""
    for perm in perms:
        cluster.etcdctl("role", "grant-permission", "dr-mirror", *perm)


EVERY_KEY = ("read", "--from-key", "")  # the shell's `read --from-key ''`
STATE = ("readwrite", "--prefix=true", "/etcd-dr/")
APP_RW = ("readwrite", "--prefix=true", "/app/")


async def test_least_privilege_users_run_mirror_verify_and_status(
    etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    """The permissions docs/failover.md gives a mirror-only user are enough: no root role anywhere."""
    root_pw = "Pw-" + secrets.token_hex(8)
    a = etcd_cluster_factory(name="site-a", auth=("root", root_pw))
    b = etcd_cluster_factory(name="site-b", auth=("root", root_pw))
    for cluster in (a, b):
        cluster.etcdctl("role", "add", "dr-mirror")
        cluster.etcdctl("user", "add", "dr-mirror:mirrorpw")
        cluster.etcdctl("user", "grant-role", "dr-mirror", "dr-mirror")
    # Source: read every key (the mirror follows every revision), write its heartbeat in the state prefix.
    grant(a, EVERY_KEY, STATE)
    # Destination: read and write the mirrored range and the state prefix.
    grant(b, APP_RW, STATE)
    for i in range(10):
        a.etcdctl("put", f"{APP}{i}", "v")
    a.etcdctl("put", "/elsewhere", "not mirrored")
    pw = tmp_path / "pw"
    pw.write_text("mirrorpw\n")
    creds = [
        "--endpoints", a.endpoints[0], "--prefix", APP,
        "--user", "dr-mirror", "--password-file", str(pw),
        "--dest-user", "dr-mirror", "--dest-password-file", str(pw),
    ]  # fmt: skip
    run = await etcd_dr("mirror", b.endpoints[0], *creds, "--once")
    assert run.code == 0, run.stderr
    run = await etcd_dr("verify", b.endpoints[0], *creds)
    assert run.code == 0, run.stdout + run.stderr
    # status counts every key and finds the compaction point of both sites: read on every key there.
    grant(b, EVERY_KEY)
    run = await etcd_dr("status", b.endpoints[0], *creds)
    # Degraded (exit 1) only because no mirror runs after the --once one: it read both sites.
    assert run.code == 1 and "error:" not in run.stderr, run.stdout + run.stderr
    assert "mirror-stopped" in run.stdout and "DOWN" not in run.stdout, run.stdout
    # A move fencing by auth changes roles: it needs the root role, and says so before changing anything.
    run = await etcd_dr("switchover", b.endpoints[0], *creds, timeout=120)
    assert_refused(run, "root")
    # Without auth fencing (--fence-hook or --no-fence), the same on both sites is enough.
    grant(a, APP_RW)
    run = await etcd_dr("switchover", b.endpoints[0], *creds, "--no-fence", timeout=120)
    assert run.code == 0, run.stdout + run.stderr
