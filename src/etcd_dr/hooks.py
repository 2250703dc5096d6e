"""Operator hooks: `--switch-hook CMD` (point the clients elsewhere: load balancer, Kubernetes Service,
/etc/hosts) and `--fence-hook CMD` (stop writes to a primary when etcd auth cannot do it).

A hook is a shell command line. It runs with the current environment plus ETCD_DR_ACTION and the
variables the caller gives (ETCD_DR_NEW_PRIMARY_ENDPOINTS, ...), in a process group of its own so that
on timeout or cancellation everything it started is ended. Its output is logged line by line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping

from .errors import EtcdDrError

log = logging.getLogger("etcd_dr.failover")

# After SIGTERM to the hook's process group, how long before SIGKILL.
KILL_GRACE = 2.0
# After the hook's shell has exited, how long to keep reading output a background child still writes.
DRAIN_GRACE = 1.0
_MAX_LINE = 4096  # longer output lines are logged in pieces


class HookFailed(EtcdDrError):
    """The hook exited non-zero, was killed by a signal, or did not finish in time."""

    def __init__(self, message: str, *, returncode: int | None, last_stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.last_stderr = last_stderr


def _flag(action: str) -> str:
    if "fence" in action:  # fence, unfence
        return "--fence-hook"
    if "switch" in action:
        return "--switch-hook"
    return "hook"


async def run_hook(cmd: str, action: str, env: Mapping[str, str], timeout: float = 60.0) -> None:
    """Run `cmd` through /bin/sh with os.environ + env + ETCD_DR_ACTION=action; wait at most `timeout`
    seconds. Raises HookFailed (exit code and the last stderr line) when it does not exit 0."""
    flag = _flag(action)
    child_env = {**os.environ, **env, "ETCD_DR_ACTION": action}
    log.info("%s (%s): running %s", flag, action, cmd)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        # A protocol rather than create_subprocess_shell: Process.wait() also waits for the pipes to
        # close, which a background child of the hook (`daemon &`) may hold open long after the hook
        # itself has exited; process_exited() is told of the exit alone.
        transport, proto = await loop.subprocess_shell(
            lambda: _HookProtocol(flag, loop),
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            start_new_session=True,  # its own process group, ended as a whole on timeout
        )
    except OSError as exc:
        raise HookFailed(
            f"{flag} {cmd!r}: cannot start: {exc.strerror or exc}", returncode=None, last_stderr=""
        ) from None
    pid = transport.get_pid()
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(proto.exited)
        except TimeoutError:
            timed_out = True
            log.warning("%s %r: still running after %g s, ending its process group", flag, cmd, timeout)
            await _end_group(pid, proto)
        # Output a background child of the hook still holds open must not keep us waiting.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_GRACE):
                await asyncio.shield(proto.drained)
    finally:
        if not proto.exited.done():  # cancelled while it ran
            await asyncio.shield(_end_group(pid, proto))
        proto.flush()
        transport.close()
    rc = transport.get_returncode()
    tail = proto.last_stderr
    detail = f": {tail}" if tail else ""
    if timed_out:
        raise HookFailed(
            f"{flag} {cmd!r} did not finish within {timeout:g} s and was killed{detail}",
            returncode=rc,
            last_stderr=tail,
        )
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
        raise HookFailed(f"{flag} {cmd!r} {how}{detail}", returncode=rc, last_stderr=tail)
    log.info("%s (%s): done in %.2f s", flag, action, loop.time() - started)


class _HookProtocol(asyncio.SubprocessProtocol):
    """Logs the hook's output line by line; futures for its exit and for both pipes closed."""

    def __init__(self, flag: str, loop: asyncio.AbstractEventLoop) -> None:
        self.flag = flag
        self.exited: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self.last_stderr = ""
        self._buf = {1: b"", 2: b""}
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        *lines, rest = (self._buf[fd] + data).split(b"\n")
        while len(rest) > _MAX_LINE:
            lines.append(rest[:_MAX_LINE])
            rest = rest[_MAX_LINE:]
        self._buf[fd] = rest
        for raw in lines:
            self._emit(fd, raw)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._flush(fd)
        self._open.discard(fd)
        if not self._open and not self.drained.done():
            self.drained.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def flush(self) -> None:
        for fd in (1, 2):
            self._flush(fd)

    def _flush(self, fd: int) -> None:
        if self._buf.get(fd):
            self._emit(fd, self._buf[fd])
            self._buf[fd] = b""

    def _emit(self, fd: int, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line.strip():
            return
        log.info("%s %s: %s", self.flag, "stderr" if fd == 2 else "stdout", line)
        if fd == 2:
            self.last_stderr = line.strip()


async def _end_group(pid: int, proto: _HookProtocol) -> None:
    """SIGTERM the process group the hook leads (started in a new session, its pgid is its pid),
    SIGKILL after KILL_GRACE; then SIGKILL what is left of the group once the shell is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        try:
            async with asyncio.timeout(KILL_GRACE):
                await asyncio.shield(proto.exited)
        except TimeoutError:
            continue
        break
    # The group outlives its leader while members remain, so its id still names only our processes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
