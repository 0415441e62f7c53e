"""Database ↔ Docker reconciliation: recovers runs whose replica vanished, removes leftovers."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import AdapterError, RunBackend
from app.db import utcnow
from app.repositories import RunRepository
from app.workers.base import LoopService
from app.workers.dispatcher import Dispatcher

log = logging.getLogger(__name__)

RECOVER_BATCH = 50


class Reconciler(LoopService):
    """At start-up and every `interval` seconds:

    * an active run whose lease expired (its replica was killed or stopped) is taken over and
      resumed here: preparation starts over, a running container is adopted (its time limit
      still counted from its first start), an exited one is harvested, a missing one ends the
      run in `error` ("instance lost") or retries it when its policy allows;
    * a container labelled by this service whose run is finished, or unknown and labelled by
      this instance, is removed. Containers without our labels are never touched.
    """

    name = "reconciler"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        backend: RunBackend,
        dispatcher: Dispatcher,
        *,
        lease_seconds: float,
        interval: float,
    ) -> None:
        super().__init__(interval)
        self.sessionmaker = sessionmaker
        self.backend = backend
        self.dispatcher = dispatcher
        self.instance_id = dispatcher.instance_id
        self.lease_seconds = lease_seconds

    async def run_once(self) -> None:
        await self.recover()
        await self.remove_leftovers()

    async def recover(self) -> list[str]:
        now = utcnow()
        until = now + timedelta(seconds=self.lease_seconds)
        taken: list[str] = []
        async with self.sessionmaker() as session, session.begin():
            repo = RunRepository(session)
            for run in await repo.expired_leases(now, RECOVER_BATCH):
                if run.id in self.dispatcher.running:
                    continue  # ours and alive: the lease keeper is just late
                if await repo.take_over(run, self.instance_id, now, until):
                    taken.append(run.id)
        for run_id in taken:
            log.warning("run %s: lease expired; resuming it on %s", run_id, self.instance_id)
            self.dispatcher.launch(run_id)
        return taken

    async def remove_leftovers(self) -> int:
        try:
            attempts = await self.backend.owned()
        except AdapterError as exc:
            log.warning("reconciler: the run backend is unavailable (%s)", exc)
            return 0
        async with self.sessionmaker() as session:
            states = await RunRepository(session).states_of(
                [a.ref.run_id for a in attempts if a.ref.run_id]
            )
        removed = 0
        for attempt in attempts:
            run_id = attempt.ref.run_id
            state = states.get(run_id)
            mine = attempt.instance_id == self.instance_id
            orphan = (state is None and mine) or (state is not None and state.terminal)
            if not orphan or run_id in self.dispatcher.running:
                continue
            try:
                await self.backend.forget(attempt.ref)
                removed += 1
            except AdapterError:
                log.warning(
                    "could not remove leftover attempt %s", attempt.ref.handle, exc_info=True
                )
        return removed
