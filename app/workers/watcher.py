"""Keeps the backend's exit notices flowing (Docker: one events stream), reopening them after
`interval` whenever they end; the waits of running attempts complete sooner through them."""

from __future__ import annotations

import time

from app.adapters.ports import RunBackend
from app.workers.base import LoopService


class AttemptWatcher(LoopService):
    name = "watcher"

    def __init__(self, backend: RunBackend, interval: float = 1.0):
        super().__init__(interval)
        self.backend = backend

    async def run_once(self) -> None:
        self.last_tick = time.monotonic()
        await self.backend.watch()

    async def stop(self, timeout: float = 0.0) -> None:
        # The stream blocks until the backend sends something: don't wait for it.
        await super().stop(timeout)


ContainerWatcher = AttemptWatcher
