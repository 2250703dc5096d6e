"""etcd_dr.local.resources: the one registry of live local resources (etcd clusters, mirror processes,
BIND servers and their directories) ends, at exit, what a caller left running, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.bind import bind_server, named_unavailable_reason
from harness.mirrorproc import MirrorProcess

from etcd_dr.local import resources
from etcd_dr.local.binaries import EtcdBinaries
from etcd_dr.local.cluster import EtcdCluster

_TESTS = Path(__file__).resolve().parent


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_end_all_goes_newest_first_and_survives_a_failing_end() -> None:
    ended: list[str] = []

    def failing() -> None:
        ended.append("middle")
        raise RuntimeError("cannot end")

    owners = [object(), object(), object()]
    resources.track(owners[0], "first", lambda: ended.append("first"))
    resources.track(owners[1], "middle", failing)
    resources.track(owners[2], "last", lambda: ended.append("last"))
    try:
        assert resources.live()[-3:] == ["first", "middle", "last"]
        resources.end_all()
        assert ended == ["last", "middle", "first"]
        assert not {"first", "middle", "last"} & set(resources.live())
    finally:
        for owner in owners:
            resources.untrack(owner)


def test_untrack_forgets_only_its_owner() -> None:
    a, b = object(), object()
    resources.track(a, "a", lambda: None)
    resources.track(b, "b", lambda: None)
    resources.untrack(a)
    resources.untrack(a)  # idempotent
    try:
        assert "a" not in resources.live() and "b" in resources.live()
    finally:
        resources.untrack(b)


def test_exit_hook_ends_what_a_crashed_caller_left_and_nothing_else(
    etcd_bin: EtcdBinaries, tmp_path: Path
) -> None:
    """A process that starts two clusters, a mirror between them and a BIND server and exits without
    stopping any of them: at its exit, the registry ends them all (by PID) and removes their
    directories, and leaves alone a process it did not start (a sleep this test started). The mirror runs
    in its own session: before the registry, nothing ended it and it outlived its starter."""
    reason = named_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    log = tmp_path / "mirror.log"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(_TESTS)!r})
        from harness.bind import bind_server
        from harness.mirrorproc import MirrorProcess
        from etcd_dr.local.binaries import EtcdBinaries
        from etcd_dr.local.cluster import EtcdCluster

        bins = EtcdBinaries(etcd=Path({str(etcd_bin.etcd)!r}), etcdctl=Path({str(etcd_bin.etcdctl)!r}),
                            version={etcd_bin.version!r})
        src = EtcdCluster(bins, name="leftsrc").start()
        dst = EtcdCluster(bins, name="leftdst").start()
        named_cm = bind_server()  # held, and never exited: a caller that crashed inside its block
        named = named_cm.__enter__()
        mirror = MirrorProcess(dst.endpoints[0], src.endpoints[0], log_path=Path({str(log)!r})).start()
        deadline = time.monotonic() + 60
        while "holding the mirror lock" not in mirror.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mirror.running(), mirror.log_text()
        pids = [m.pid for c in (src, dst) for m in c.members] + [named.pid, mirror.pid]
        print(*pids, src.base_dir, dst.base_dir, named.directory, flush=True)
        sys.exit(0)
        """
    )
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr
        *pids, src_dir, dst_dir, named_dir = run.stdout.split()
        assert len(pids) == 4
        for pid in pids:
            assert _pid_gone(int(pid)), f"PID {pid} still running after its starter exited"
        for d in (src_dir, dst_dir, named_dir):
            assert not Path(d).exists(), f"{d} left behind"
        assert bystander.poll() is None, "the registry ended a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()


def test_objects_leave_the_registry_when_stopped(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    reason = named_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    src, dst = etcd_cluster_factory(1, name="regsrc"), etcd_cluster_factory(1, name="regdst")
    assert any(w.startswith("etcd cluster regsrc in ") for w in resources.live())
    with bind_server() as named:
        assert f"BIND server in {named.directory}" in resources.live()
        mirror = MirrorProcess(dst.endpoints[0], src.endpoints[0], log_path=tmp_path / "mirror.log").start()
        assert f"mirror process {mirror.pid}" in resources.live()
        mirror.kill()
        assert f"mirror process {mirror.pid}" not in resources.live()
    assert f"BIND server in {named.directory}" not in resources.live()
    src.stop()
    assert not any(w.startswith("etcd cluster regsrc in ") for w in resources.live())
