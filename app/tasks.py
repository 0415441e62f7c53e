"""Running a few awaitables at once so that none outlives the call: the first failure cancels
the others, which end before it is raised."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def gather_or_cancel(*awaitables: Awaitable[Any]) -> list[Any]:
    """Their results, in order. Unlike `asyncio.gather`, a failure (or a cancel of the caller)
    does not leave the others running behind the caller's back: each holds resources (a spool
    file, a connection) that its caller's clean-up expects released."""
    tasks = [asyncio.ensure_future(item) for item in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
