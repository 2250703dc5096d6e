"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

# How long a cancelled helper may run on before it is cancelled again: grpc can lose a cancel (see
# etcd.connection.read_stream), and one lost cancel would leave the caller waiting for the helper forever.
RECANCEL_EVERY = 1.0


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Future[object] | None) -> None:
    """Cancel a helper task and wait for it to end, without swallowing OUR OWN cancellation; a helper
    still running RECANCEL_EVERY seconds after its cancel is cancelled again.

    `with suppress(CancelledError): await task` would also swallow a cancel aimed at the caller while it
    waits, and a cancelled mirror would then carry on forever.
    """
    if task is None:
        return
    task.cancel()
    current = asyncio.current_task()
    # Cancels of the caller made before this call (it may be cleaning up after one) are not ours to
    # re-raise here; only a cancel that arrives while we wait is.
    before = current.cancelling() if current is not None else 0
    while not task.done():
        try:
            done, _ = await asyncio.wait({task}, timeout=RECANCEL_EVERY)
        except asyncio.CancelledError:
            if current is not None and current.cancelling() > before:
                raise
            continue
        if not done:
            log.debug("%r still runs %g s after its cancel; cancelling it again", task, RECANCEL_EVERY)
            task.cancel()
    if not task.cancelled():
        task.exception()  # the helper's own failure was already handed on (or reported) where it happened
