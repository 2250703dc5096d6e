"""A progress bar for the initial copy when stderr is a terminal (log lines say the same otherwise)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .aio import cancel_and_wait
from .mirror import MirrorStats

if TYPE_CHECKING:
    from rich.progress import Progress

T = TypeVar("T")


async def with_copy_progress(stats: MirrorStats, work: Coroutine[Any, Any, T]) -> T:
    if not sys.stderr.isatty():
        return await work
    # Imported here: rich costs 30-100 ms of start-up, wasted when stderr is not a terminal.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    task = asyncio.ensure_future(work)
    console = Console(stderr=True)
    columns = (
        TextColumn("copy"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} keys/s"),
        TimeRemainingColumn(),
    )
    progress: Progress | None = None
    bar = None
    loop = asyncio.get_running_loop()
    started = 0.0
    try:
        while not task.done():
            if stats.phase == "copy" and stats.copy_total:
                if progress is None:
                    progress = Progress(*columns, console=console, transient=True, redirect_stderr=True)
                    progress.start()
                    bar = progress.add_task("copy", total=stats.copy_total, rate=0.0)
                    started = loop.time()
                assert bar is not None
                rate = stats.copy_done / max(loop.time() - started, 1e-3)
                progress.update(bar, completed=stats.copy_done, total=stats.copy_total, rate=rate)
            elif progress is not None:
                progress.stop()
                progress = None
            await asyncio.wait({task}, timeout=0.2)
        return task.result()
    finally:
        if progress is not None:
            progress.stop()
        if not task.done():
            await cancel_and_wait(task)
