"""Claims queued runs, up to max_concurrent_runs at once, and starts one executor task per run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.models import RunState
from app.observability import QUEUE_DEPTH, RUNNING_CONTAINERS
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
        lease_seconds: float,
        phase_of: Callable[[str], str | None] = lambda _run_id: None,
    ) -> None:
        super().__init__(interval)
        self.sessionmaker = sessionmaker
        self.execute = execute
        self.instance_id = instance_id
        self.max_concurrent = max_concurrent
        self.lease_seconds = lease_seconds
        self.phase_of = phase_of
        self.running: dict[str, RunHandle] = {}

    async def run_once(self) -> None:
        RUNNING_CONTAINERS.set(len(self.running))
        async with self.sessionmaker() as session:
            QUEUE_DEPTH.set(await RunRepository(session).count_in_states([RunState.QUEUED]))
        free = self.max_concurrent - len(self.running)
        if free <= 0 or self.stopping:
            return
        claimed: list[str] = []
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            for run_id in await RunRepository(session).queued_ids(free, now):
                try:
                    await transition(
                        session,
                        run_id,
                        RunState.PREPARING,
                        expected=RunState.QUEUED,
                        detail=f"claimed by {self.instance_id}",
                        instance_id=self.instance_id,
                        lease_expires_at=now + timedelta(seconds=self.lease_seconds),
                        not_before=None,
                    )
                    claimed.append(run_id)
                except IllegalTransition:
                    continue  # cancelled or claimed elsewhere in the meantime
        for run_id in claimed:
            self.launch(run_id)
        if len(claimed) == free:
            self.wake()  # there may be more waiting; look again as soon as a slot frees up

    def launch(self, run_id: str) -> None:
        """Starts (or, for a recovered run, resumes) the executor of a run this instance holds."""
        if run_id in self.running:
            return
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
        """Shutdown: executors that are harvesting get `grace` seconds to finish; the others
        stop at once, leaving their containers running to be adopted on the next start."""
        handles = dict(self.running)
        harvesting = {h.task for rid, h in handles.items() if self.phase_of(rid) == "finishing"}
        for handle in handles.values():
            if handle.task not in harvesting:
                handle.task.cancel()
        if harvesting:
            _, pending = await asyncio.wait(harvesting, timeout=grace)
            for task in pending:
                task.cancel()
        tasks = [h.task for h in handles.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=30)


class LeaseKeeper(LoopService):
    """Renews the leases of the runs this instance is executing."""

    name = "leases"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        *,
        lease_seconds: float,
    ) -> None:
        super().__init__(lease_seconds / 3)
        self.sessionmaker = sessionmaker
        self.dispatcher = dispatcher
        self.lease_seconds = lease_seconds

    async def run_once(self) -> None:
        run_ids = list(self.dispatcher.running)
        if not run_ids:
            return
        until = utcnow() + timedelta(seconds=self.lease_seconds)
        async with self.sessionmaker() as session, session.begin():
            await RunRepository(session).renew_leases(run_ids, self.dispatcher.instance_id, until)
