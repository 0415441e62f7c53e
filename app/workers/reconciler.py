"""Start-up reconciliation: runs this instance left active when it last stopped, and its containers."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import AdapterError, ContainerRuntime
from app.models import RunState
from app.repositories import RunRepository
from app.services.runs import IllegalTransition, transition

log = logging.getLogger(__name__)


class Reconciler:
    """Ends this instance's orphaned runs in `error` and removes its labelled containers."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        runtime: ContainerRuntime,
        instance_id: str,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.runtime = runtime
        self.instance_id = instance_id

    async def run_once(self) -> None:
        async with self.sessionmaker() as session, session.begin():
            orphans = await RunRepository(session).active_runs(self.instance_id)
            for run in orphans:
                try:
                    reason = "instance restarted while the run was active"
                    await transition(
                        session, run.id, RunState.ERROR, detail=reason, status_reason=reason
                    )
                except IllegalTransition:
                    continue
        labels = {"taskdeploy.managed": "true", "taskdeploy.instance": self.instance_id}
        for container in await self.runtime.list_containers(labels):
            try:
                await self.runtime.remove(container.id)
            except AdapterError:
                log.warning("could not remove leftover container %s", container.id, exc_info=True)
        if orphans:
            log.warning("ended %d orphaned run(s) of instance %s", len(orphans), self.instance_id)
