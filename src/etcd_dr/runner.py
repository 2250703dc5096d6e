"""The one signal runner: every command (and the demo) runs its coroutine here.

SIGINT (Ctrl-C), SIGTERM (systemd stopping a service) and SIGHUP (a closed terminal) cancel the running
coroutine, so that its cleanup runs (the mirror releases its lock at once instead of making a successor
wait out the lock's TTL; the demo ends every process it started), then `Stopped` is raised: the CLI
prints "etcd-dr: stopped (SIGINT)" and exits 128 + the signal's number.

SIGUSR1 prints what every task of the run is waiting on to stderr and goes on (like a Go program's
SIGQUIT dump, without the exit): what to look at when a mirror seems stuck.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from .errors import Stopped

__all__ = ["SIGNALS", "RunState", "cleanup_begins", "dump_tasks", "run"]

log = logging.getLogger("etcd_dr")

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# With repeat_cancel: seconds between cancels until the coroutine's cleanup has begun.
RETRY = 1.0


@dataclass
class RunState:
    """The signals one run received, and whether the coroutine's cleanup has begun."""

    received: list[str] = field(default_factory=list)
    cleaning: bool = False


_current: contextvars.ContextVar[RunState | None] = contextvars.ContextVar("etcd_dr_run", default=None)


def cleanup_begins() -> None:
    """Called by a coroutine run with `repeat_cancel` where its cleanup begins: a signal no longer
    cancels it (a cancel would cut the cleanup short). Outside the runner it does nothing."""
    state = _current.get()
    if state is not None:
        state.cleaning = True


@overload
def run(
    coro: Coroutine[Any, Any, T], *, stop_ok: Literal[False] = False, repeat_cancel: bool = False
) -> T: ...
@overload
def run(coro: Coroutine[Any, Any, T], *, stop_ok: bool, repeat_cancel: bool = False) -> T | None: ...
def run(coro: Coroutine[Any, Any, T], *, stop_ok: bool = False, repeat_cancel: bool = False) -> T | None:
    """Run `coro` to its end; a signal cancels it, and once its cleanup is done `Stopped` is raised.

    `stop_ok` (the mirror daemon): SIGTERM and SIGHUP are its normal end and return None, since an exit
    code other than 0 would show a systemd unit as failed; SIGINT still raises Stopped.
    `repeat_cancel` (the demo, the mirror): a cancel can be lost (grpc swallows one that arrives as a
    call starts or completes, see etcd.connection.read_stream), so it is repeated every RETRY seconds
    until the coroutine calls cleanup_begins(); a run that ends anyway after a signal is still Stopped."""

    async def main() -> T | None:
        state = RunState()
        _current.set(state)  # the task below copies this context
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()

        def cancel() -> None:
            if task.done() or state.cleaning:
                return
            task.cancel()
            if repeat_cancel:
                loop.call_later(RETRY, cancel)

        def on_signal(name: str) -> None:
            if not state.received:
                log.info("%s received: stopping", name)
            state.received.append(name)
            cancel()

        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig.name)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        try:
            result = await task
        except asyncio.CancelledError:
            if not state.received:
                raise
            _stopped(state.received[0], stop_ok)
            return None
        finally:
            # Ctrl-C goes back to raising KeyboardInterrupt (asyncio.run's own handler was replaced).
            for sig in (*SIGNALS, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
        if repeat_cancel and state.received:  # every cancel was lost, and the run went to its end
            _stopped(state.received[0], stop_ok)
            return None
        return result

    return asyncio.run(main())


def dump_tasks() -> None:
    """Print each task of the running loop with the stack it waits in (SIGUSR1)."""
    tasks = asyncio.all_tasks()
    print(f"etcd-dr: {len(tasks)} tasks, each with the stack it waits in:", file=sys.stderr)
    for task in tasks:
        task.print_stack(limit=20, file=sys.stderr)
    sys.stderr.flush()


def _stopped(name: str, stop_ok: bool) -> None:
    """Raise Stopped, unless `stop_ok` and the signal is the daemon's normal end (then return)."""
    if not stop_ok or name == "SIGINT":
        raise Stopped(name) from None
