"""Small asyncio helpers."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Future[object] | None) -> None:
    """Cancel a helper task and wait for it to end, without swallowing OUR OWN cancellation.

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
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling() > before:
            raise
    except Exception:
        pass  # the helper's own failure was already handed on (or reported) where it happened
