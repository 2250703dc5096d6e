"""The one registry of live local resources: etcd clusters, mirror processes, network namespaces,
BIND servers and their temporary directories.

Whatever starts a resource registers, with `track`, how to end it (its own stop or close), and
unregisters it with `untrack` once ended. An exit hook ends whatever a crashed or interrupted caller
left registered, newest first: the processes run inside a namespace end before the namespace, a
server before its directory. Only what was registered here is ended, and processes only by the PID
of the child this process started (`end_process`), never by name.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

# id(owner) -> (owner, what, end). A dict keeps registration order, so the exit hook can go newest first;
# holding the owner keeps its id from being reused while it is registered.
_LIVE: dict[int, tuple[object, str, Callable[[], None]]] = {}
_LOCK = threading.Lock()


def track(owner: object, what: str, end: Callable[[], None]) -> None:
    """Register `owner` (described by `what`, e.g. "etcd cluster src") as live; `end()` ends it."""
    with _LOCK:
        _LIVE[id(owner)] = (owner, what, end)


def untrack(owner: object) -> None:
    """`owner` has been ended (or was never started): forget it. Idempotent."""
    with _LOCK:
        entry = _LIVE.get(id(owner))
        if entry is not None and entry[0] is owner:
            del _LIVE[id(owner)]


def live() -> list[str]:
    """What is registered now, oldest first (the descriptions given to `track`)."""
    with _LOCK:
        return [what for _owner, what, _end in _LIVE.values()]


def end_all() -> None:
    """End everything still registered, newest first; one failure does not keep the rest alive."""
    with _LOCK:
        entries = list(_LIVE.values())
    for owner, _what, end in reversed(entries):
        with contextlib.suppress(Exception):
            end()
        untrack(owner)


atexit.register(end_all)


def end_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """End a child this process started, by its PID: SIGTERM (and SIGCONT, as a stopped process acts on
    SIGTERM only once continued), SIGKILL after `grace` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
        proc.send_signal(signal.SIGCONT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def remove_dir(path: Path) -> None:
    """Remove a temporary directory made here (its contents included); gone already is fine."""
    shutil.rmtree(path, ignore_errors=True)
