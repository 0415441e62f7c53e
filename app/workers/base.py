"""The loop-service base: run_once() on an interval or when woken, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

log = logging.getLogger(__name__)


class LoopService:
    """A background coroutine that calls `run_once()` every `interval` seconds or when woken.

    Errors in one tick are logged and the loop goes on; `last_tick` lets readiness checks
    spot a loop that has stalled.
    """

    name = "loop"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_tick: float | None = None

    async def run_once(self) -> None:
        raise NotImplementedError

    def next_delay(self) -> float:
        """Seconds to sleep after a tick; a loop that knows when work is due overrides it."""
        return self.interval

    def wake(self) -> None:
        self._wake.set()

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: tick failed", self.name)
            self.last_tick = time.monotonic()
            await self._sleep(self.next_delay())

    async def _sleep(self, seconds: float) -> None:
        """Waits for the interval, a wake-up or a stop, whichever comes first."""
        waiters = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except asyncio.CancelledError:
            self._task.cancel()
            raise
        self._task = None
