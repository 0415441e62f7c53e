"""Turns due schedules into runs, exactly once per fire time, however many replicas run it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.repositories import ScheduleRepository
from app.services.runs import RunLimits
from app.services.schedules import FireReport, ScheduleService
from app.workers.base import LoopService

log = logging.getLogger(__name__)

CLAIM_BATCH = 200
FAILED_TICK_RETRY_SECONDS = 2.0


class Scheduler(LoopService):
    """Sleeps until the earliest next fire time (or `max_idle`), or until woken by a change."""

    name = "scheduler"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        limits: RunLimits,
        *,
        max_catch_up: int,
        grace_seconds: float,
        max_idle: float,
        on_fired: Callable[[FireReport], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(max_idle)
        self.sessionmaker = sessionmaker
        self.limits = limits
        self.max_catch_up = max_catch_up
        self.grace_seconds = grace_seconds
        self.on_fired = on_fired
        self.clock = clock
        self._delay = 0.0

    async def run_once(self) -> None:
        try:
            await self.tick()
        except Exception:
            # A failed tick (the database away, a bug) is retried soon, never in a tight loop.
            self._delay = min(FAILED_TICK_RETRY_SECONDS, self.interval)
            raise

    async def tick(self) -> FireReport:
        """Fires everything due now and plans the next wake-up; returns what it did."""
        total = FireReport()
        while True:
            async with self.sessionmaker() as session, session.begin():
                service = ScheduleService(session, self.limits, self.clock)
                report = await service.fire_due(
                    batch=CLAIM_BATCH,
                    max_catch_up=self.max_catch_up,
                    grace_seconds=self.grace_seconds,
                )
            total.created += report.created
            total.skipped += report.skipped
            total.to_cancel += report.to_cancel
            # A full batch means more may be due: claim again before sleeping.
            if report.claimed < CLAIM_BATCH:
                break
        if self.on_fired is not None and (total.created or total.to_cancel):
            self.on_fired(total)
        async with self.sessionmaker() as session:
            earliest = await ScheduleRepository(session).earliest_next_fire()
        now = self.clock()
        self._delay = self.interval if earliest is None else (earliest - now).total_seconds()
        return total

    def next_delay(self) -> float:
        return min(max(self._delay, 0.0), self.interval)
