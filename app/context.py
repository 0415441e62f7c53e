"""What the routers and workers of one process share, built once by the lifespan (app.main)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.adapters.ports import ObjectStore, RunBackend
from app.config import Settings
from app.readiness import Readiness
from app.services.auth import AccessPolicy
from app.services.environments import EnvironmentImages
from app.services.followers import LiveLogs
from app.services.results import RunResults
from app.services.runs import RunLimits
from app.services.schedules import FireReport
from app.services.waiters import RunWaiters
from app.workers.base import LoopService
from app.workers.dispatcher import Dispatcher, LeaseKeeper
from app.workers.janitor import Janitor
from app.workers.notifier import Notifier
from app.workers.reconciler import Reconciler
from app.workers.scheduler import Scheduler
from app.workers.watcher import ContainerWatcher


@dataclass
class Workers:
    """The background loops of one process."""

    watcher: ContainerWatcher
    janitor: Janitor
    dispatcher: Dispatcher
    leases: LeaseKeeper
    reconciler: Reconciler
    notifier: Notifier
    scheduler: Scheduler

    def enabled(self, *, dispatcher: bool, scheduler: bool) -> list[LoopService]:
        """The loops this replica runs (the dispatcher's and the scheduler's can be off)."""
        loops: list[LoopService] = [self.watcher, self.janitor, self.notifier]
        if dispatcher:
            loops += [self.dispatcher, self.leases, self.reconciler]
        if scheduler:
            loops.append(self.scheduler)
        return loops

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming, give running executors the grace period, then stop the rest; the
        containers of runs still going are adopted after a restart."""
        await self.dispatcher.stop()
        await self.reconciler.stop()
        await self.dispatcher.drain(grace_seconds)
        for loop in (self.leases, self.scheduler, self.notifier, self.janitor, self.watcher):
            with contextlib.suppress(Exception):
                await loop.stop()


@dataclass
class AppContext:
    """Everything the routers and workers share. Its wake-ups are what services ask for after
    a commit (app.services.transactions.Wakeups)."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    runtime: RunBackend
    store: ObjectStore
    run_limits: RunLimits
    results: RunResults
    live_logs: LiveLogs
    waiters: RunWaiters
    environments: EnvironmentImages
    workers: Workers
    access: AccessPolicy
    readiness: Readiness
    loops: list[LoopService] = field(default_factory=list)

    def wake_dispatcher(self) -> None:
        self.workers.dispatcher.wake()

    def wake_scheduler(self) -> None:
        self.workers.scheduler.wake()

    def cancel_run(self, run_id: str) -> None:
        self.workers.dispatcher.cancel(run_id)
        self.workers.notifier.wake()  # a queued run is cancelled at once: its event is queued

    def on_schedule_fired(self, report: FireReport) -> None:
        for run_id in report.to_cancel:
            self.workers.dispatcher.cancel(run_id)
        self.workers.dispatcher.wake()
