"""One backoff rule for every retry loop: the delay doubles up to a cap, within a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """`first` seconds, then twice the last, never more than `cap`; `give_up_after` seconds
    (from the first call) bound the whole (None: no bound). Clock and sleep are injectable."""

    first: float
    cap: float
    give_up_after: float | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    delay: float = field(init=False)
    _deadline: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.delay = self.first
        if self.give_up_after is not None:
            self._deadline = self.clock() + self.give_up_after

    @property
    def exhausted(self) -> bool:
        """Waiting once more would pass the deadline."""
        return self._deadline is not None and self.clock() + self.delay > self._deadline

    async def wait(self) -> None:
        """Sleeps the current delay, then doubles it (up to the cap)."""
        await self.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)
