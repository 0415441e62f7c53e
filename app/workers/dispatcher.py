"""Claims queued runs, up to max_concurrent_runs at once, and starts one executor task per run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import RunState
from app.repositories import RunRepository
from app.services.runs import IllegalTransition, transition
from app.workers.base import LoopService

log = logging.getLogger(__name__)

Execute = Callable[[str, asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class RunHandle:
    task: asyncio.Task[None]
    cancel: asyncio.Event


class Dispatcher(LoopService):
    name = "dispatcher"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        execute: Execute,
        *,
        instance_id: str,
        max_concurrent: int,
        interval: float,
    ) -> None:
        super().__init__(interval)
        self.sessionmaker = sessionmaker
        self.execute = execute
        self.instance_id = instance_id
        self.max_concurrent = max_concurrent
        self.running: dict[str, RunHandle] = {}

    async def run_once(self) -> None:
        free = self.max_concurrent - len(self.running)
        if free <= 0 or self.stopping:
            return
        claimed: list[str] = []
        async with self.sessionmaker() as session, session.begin():
            for run_id in await RunRepository(session).queued_ids(free):
                try:
                    await transition(
                        session,
                        run_id,
                        RunState.PREPARING,
                        expected=RunState.QUEUED,
                        detail=f"claimed by {self.instance_id}",
                        instance_id=self.instance_id,
                    )
                    claimed.append(run_id)
                except IllegalTransition:
                    continue  # cancelled or claimed elsewhere in the meantime
        for run_id in claimed:
            self._launch(run_id)
        if len(claimed) == free:
            self.wake()  # there may be more waiting; look again as soon as a slot frees up

    def _launch(self, run_id: str) -> None:
        cancel = asyncio.Event()
        task = asyncio.create_task(self.execute(run_id, cancel), name=f"run-{run_id}")
        self.running[run_id] = RunHandle(task, cancel)
        task.add_done_callback(lambda _t: self._finished(run_id))

    def _finished(self, run_id: str) -> None:
        self.running.pop(run_id, None)
        self.wake()

    def cancel(self, run_id: str) -> None:
        handle = self.running.get(run_id)
        if handle is not None:
            handle.cancel.set()

    async def drain(self, grace: float) -> None:
        """Lets executors finish for `grace` seconds, then cancels the rest."""
        tasks = [handle.task for handle in self.running.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=30)
