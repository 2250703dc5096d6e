"""Quiet, exact output (issue 17, item 6), through the real command line: no gRPC C-core lines on stderr,
no gRPC internals in our messages, a signal ends a command with a plain "stopped" line and the shell's
exit code, and a warning that repeats is logged once, then with a count."""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.clirun import ERROR_PREFIX, GRPC_LOG_LINE, assert_refused, etcd_dr_sync, tls_flags
from harness.mirrorproc import end_process

from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import make_cluster_tls
from etcd_dr.logs import RepeatFilter

GRPC_INTERNALS = ("ipv4:", "ipv6:", "UNKNOWN:", "TSI_", "SSL routines", "OPENSSL_internal", ": OK")


def _only_our_line(stderr: str) -> None:
    assert not GRPC_LOG_LINE.search(stderr), stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), stderr
    for internal in GRPC_INTERNALS:
        assert internal not in stderr, (internal, stderr)


def test_tls_failures_print_only_our_line(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    cluster = etcd_cluster_factory(1, tls=True)
    assert cluster.client_tls is not None
    ours = cluster.client_tls
    other = make_cluster_tls(tmp_path / "other").client
    ep = cluster.endpoints[0]
    dest = [ep, *tls_flags("dest-", ours.cacert, ours.cert, ours.key)]

    # The server's certificate is signed by a CA we were not given.
    run = etcd_dr_sync("verify", *dest, "--endpoints", ep, *tls_flags("", other.cacert, ours.cert, ours.key))
    assert_refused(run, ep, "TLS handshake failed", f"--cacert {other.cacert}")
    _only_our_line(run.stderr)
    assert "certificate verify failed" in run.stderr, run.stderr

    # The server rejects our client certificate (gRPC's "Corruption detected" lines).
    run = etcd_dr_sync("verify", *dest, "--endpoints", ep, *tls_flags("", ours.cacert, other.cert, other.key))
    assert_refused(run, ep, "TLS handshake failed", f"--cert {other.cert}")
    _only_our_line(run.stderr)

    # Plain text against a TLS port.
    run = etcd_dr_sync("verify", *dest, "--endpoints", ep.replace("https://", "http://"))
    assert run.code == 2, run.stderr
    _only_our_line(run.stderr)


def test_a_refused_connection_is_said_plainly(etcd_cluster: EtcdCluster) -> None:
    dead = _dead_port()
    run = etcd_dr_sync("verify", etcd_cluster.endpoints[0], "--endpoints", f"http://127.0.0.1:{dead}")
    assert_refused(run, f"http://127.0.0.1:{dead}")
    _only_our_line(run.stderr)
    assert run.last_line.endswith(f"http://127.0.0.1:{dead} unavailable: cannot connect (connection refused)")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "etcd_dr", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )


def _wait_for(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{log.read_text(errors='replace')}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes], signum: int) -> int:
    return end_process(proc, signum, 60)


def test_ctrl_c_stops_the_mirror_with_a_plain_line_and_130(
    etcd_cluster_factory: Callable[..., EtcdCluster], tmp_path: Path
) -> None:
    src, dst = etcd_cluster_factory(name="src"), etcd_cluster_factory(name="dst")
    log = tmp_path / "mirror.log"
    proc = _start(["mirror", dst.endpoints[0], "--endpoints", src.endpoints[0], "--lock-ttl", "60"], log)
    _wait_for(proc, log, "holding the mirror lock")
    code = _stop(proc, signal.SIGINT)
    text = log.read_text()
    assert code == 130, text
    assert text.strip().splitlines()[-1] == "etcd-dr: stopped (SIGINT)", text
    assert ERROR_PREFIX not in text and "Traceback" not in text, text
    # Its cleanup ran: the lock is released at once (its 60 s lease revoked), as on SIGTERM.
    assert dst.etcdctl("get", "--prefix", "/etcd-dr/lock/", "--keys-only").strip() == ""


def test_sigterm_stops_a_one_shot_run_with_a_plain_line_and_143(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """`mirror --once` stopped before its end did not do its job: 143, not the daemon's 0."""
    log = tmp_path / "once.log"
    dead = f"http://127.0.0.1:{_dead_port()}"
    args = ["mirror", etcd_cluster.endpoints[0], "--endpoints", dead, "--once", "--timeout", "300"]
    proc = _start(args, log)
    _wait_for(proc, log, "source not reachable yet")
    code = _stop(proc, signal.SIGTERM)
    text = log.read_text()
    assert code == 143, text
    assert text.strip().splitlines()[-1] == "etcd-dr: stopped (SIGTERM)", text
    assert ERROR_PREFIX not in text and "Traceback" not in text, text


def test_a_source_down_is_warned_once_then_with_a_count(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    log = tmp_path / "mirror.log"
    dead = f"http://127.0.0.1:{_dead_port()}"
    args = ["--log-repeat-interval", "3", "mirror", etcd_cluster.endpoints[0], "--endpoints", dead]
    proc = _start(args, log)
    _wait_for(proc, log, "more like it in the last")
    assert _stop(proc, signal.SIGTERM) == 0
    warnings = [line for line in log.read_text().splitlines() if "source not reachable yet" in line]
    counts = [int(m.group(1)) for w in warnings if (m := re.search(r"\((\d+) more like it", w))]
    # The first is shown as it is; later ones only with the count of those left out in between.
    assert "more like it" not in warnings[0], warnings
    assert counts and all(n >= 1 for n in counts), warnings
    assert len(warnings) == 1 + len(counts), warnings


def test_repeat_filter_keys_by_template_and_text() -> None:
    now = [0.0]
    f = RepeatFilter(60, clock=lambda: now[0])

    def passes(msg: str, *args: object, level: int = logging.WARNING) -> str | None:
        record = logging.LogRecord("etcd_dr.x", level, __file__, 1, msg, args, None)
        return record.getMessage() if f.filter(record) else None

    assert passes("%s down; retrying in %.1f s", "source", 0.2) == "source down; retrying in 0.2 s"
    assert passes("%s down; retrying in %.1f s", "source", 0.4) is None  # only the backoff differs
    assert passes("%s down; retrying in %.1f s", "destination", 0.4) is not None  # another text
    assert passes("starting", level=logging.INFO) == "starting"
    assert passes("starting", level=logging.INFO) == "starting"  # info lines are never collapsed
    now[0] = 61.0
    assert passes("%s down; retrying in %.1f s", "source", 5.0) == (
        "source down; retrying in 5.0 s (1 more like it in the last 61 s)"
    )
    assert passes("%s down; retrying in %.1f s", "source", 5.0) is None
