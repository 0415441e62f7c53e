"""gather_or_cancel: results in order; a failure ends the others before it is raised."""

from __future__ import annotations

import asyncio

import pytest

from app.tasks import gather_or_cancel


async def test_results_come_back_in_order() -> None:
    async def later(value: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return value

    assert await gather_or_cancel(later(1, 0.02), later(2, 0), later(3, 0.01)) == [1, 2, 3]


async def test_a_failure_cancels_the_others_and_they_end_before_it_is_raised() -> None:
    ended = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()  # its clean-up ran

    async def fails() -> None:
        await started.wait()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await gather_or_cancel(slow(), fails())
    assert ended.is_set()


async def test_cancelling_the_caller_cancels_every_one() -> None:
    ended: list[int] = []
    running = asyncio.Event()

    async def forever(n: int) -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(n)

    task = asyncio.create_task(gather_or_cancel(forever(1), forever(2)))
    await running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(ended) == [1, 2]
