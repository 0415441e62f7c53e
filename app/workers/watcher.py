"""One Docker events stream for this instance's containers; wakes the executor waiting on each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from app.adapters.ports import ContainerEvent, ContainerRuntime
from app.workers.base import LoopService

log = logging.getLogger(__name__)


class ContainerWatcher(LoopService):
    """Consumes `die`/`oom`/`kill` events; the stream is reopened (after `interval`) whenever
    it ends.

    `kill` is how the engine reports every signal it was asked to send (`docker kill`, and
    `docker stop` or an engine shutdown stopping a container). Only the engine can emit it, so
    unlike anything written inside the container it tells a stop the job did not make; which
    of them the service sent itself the executor knows (its own stops end the run in
    timed_out or cancelled)."""

    name = "watcher"

    def __init__(self, runtime: ContainerRuntime, labels: dict[str, str], interval: float = 1.0):
        super().__init__(interval)
        self.runtime = runtime
        self.labels = labels
        self._waiters: dict[str, asyncio.Future[ContainerEvent]] = {}
        self.oom_seen: set[str] = set()
        self.kills_seen: set[str] = set()  # watched containers the engine was told to signal
        self.generation = 0  # how many times the events stream ended (an engine restart ends it)

    def expect(self, container_id: str) -> asyncio.Future[ContainerEvent]:
        """A future completed by the container's `die` event; register it before `start`."""
        future = self._waiters.get(container_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[container_id] = future
        return future

    def forget(self, container_id: str) -> None:
        future = self._waiters.pop(container_id, None)
        if future is not None and not future.done():
            future.cancel()
        self.oom_seen.discard(container_id)
        self.kills_seen.discard(container_id)

    async def run_once(self) -> None:
        events = self.runtime.events(self.labels)
        try:
            async for event in events:
                self.last_tick = time.monotonic()
                if event.action == "oom":
                    self.oom_seen.add(event.container_id)
                elif event.action == "kill":
                    if event.container_id in self._waiters:  # only watched ones: bounded
                        self.kills_seen.add(event.container_id)
                elif event.action == "die":
                    future = self._waiters.get(event.container_id)
                    if future is not None and not future.done():
                        future.set_result(event)
                if self.stopping:
                    break
        finally:
            self.generation += 1
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]

    async def stop(self, timeout: float = 0.0) -> None:
        # The events stream blocks until Docker sends something: don't wait for it.
        await super().stop(timeout)
