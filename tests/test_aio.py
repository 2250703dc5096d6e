"""cancel_and_wait: the helper is cancelled and waited for, a cancel it loses is repeated, and a cancel
of the caller itself is never swallowed."""

from __future__ import annotations

import asyncio

import pytest

from etcd_dr import aio


async def test_a_helper_that_loses_its_cancel_is_cancelled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio, "RECANCEL_EVERY", 0.05, raising=False)
    cancels = 0

    async def loses_the_first_cancel() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # as grpc does with a cancel that arrives as a stream starts
                raise

    task = asyncio.create_task(loses_the_first_cancel())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await aio.cancel_and_wait(task)
    assert task.cancelled() and cancels == 2


async def test_the_callers_own_cancel_is_raised() -> None:
    started = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            started.set()
            await asyncio.shield(asyncio.sleep(0.3))

    helper = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(aio.cancel_and_wait(helper))
    await started.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait({helper}, timeout=2)
