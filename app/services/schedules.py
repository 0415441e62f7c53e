"""Schedule rules: validation, pause/resume, manual triggers and firing due schedules once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import AppError, InvalidRequest, NotFound
from app.models import ConcurrencyPolicy, Run, RunState, Schedule, ScheduleFire
from app.observability import SCHEDULER_LATENESS
from app.repositories.schedules import ScheduleRepository
from app.schemas.runs import RunCreate
from app.schemas.schedules import ScheduleCreate, ScheduleUpdate
from app.services.cron import (
    CronError,
    CronSpec,
    MisfirePolicy,
    due_fire_times,
    next_fire_times,
    parse_cron,
)
from app.services.runs import CANCELLABLE, RunLimits, RunService
from app.services.transactions import NO_WAKEUPS, Wakeups, after_commit

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Skip = tuple[str, datetime, str]  # a skipped fire: schedule id, fire time, reason


def cron_spec(cron: str, timezone: str) -> CronSpec:
    """Parses a schedule's cron and time zone; the error names the field at fault."""
    try:
        parse_cron("0 0 * * *", timezone)
    except CronError as exc:
        raise InvalidRequest(str(exc), field="timezone") from exc
    try:
        return parse_cron(cron, timezone)
    except CronError as exc:
        raise InvalidRequest(str(exc), field="cron") from exc


@dataclass
class FireReport:
    """What one scheduler tick did."""

    claimed: int = 0  # due schedules this tick handled
    created: list[str] = field(default_factory=list)  # run ids
    skipped: int = 0
    to_cancel: list[str] = field(default_factory=list)  # runs replaced by a newer fire


class ScheduleService:
    """Business rules for schedules. It only flushes: the caller commits, and the wake-ups it
    asks for run after that commit."""

    def __init__(
        self,
        session: AsyncSession,
        limits: RunLimits,
        clock: Clock = utcnow,
        *,
        wakeups: Wakeups = NO_WAKEUPS,
    ) -> None:
        self.session = session
        self.repo = ScheduleRepository(session)
        self.runs = RunService(session, limits)
        self.clock = clock
        self.wakeups = wakeups

    # ------------------------------------------------------------------ reading
    async def get(self, schedule_id: str) -> Schedule:
        schedule = await self.repo.get(schedule_id)
        if schedule is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return schedule

    async def page(
        self, *, owner: str | None, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Schedule], str | None]:
        """Schedules newest first (`owner` None: everyone's), and the next page's cursor."""
        return await self.repo.page(owner=owner, cursor=cursor, limit=limit)

    async def names(self, schedule_ids: Sequence[str]) -> dict[str, str]:
        return await self.repo.names(schedule_ids)

    async def skipped_fires(self, schedule_id: str, limit: int) -> list[ScheduleFire]:
        return await self.repo.fires(schedule_id, limit)

    # ------------------------------------------------------------------ writing
    def _check_template(self, run: RunCreate, owner: str) -> dict[str, Any]:
        if run.idempotency_key is not None:
            raise InvalidRequest(
                "a schedule's runs cannot share one idempotency key", field="run.idempotency_key"
            )
        try:
            self.runs.build(run, owner=owner)  # the same admission checks as POST /v1/runs
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, field=f"run.{exc.field or 'body'}") from exc
        return run.model_dump(mode="json", exclude_none=True)

    async def create(self, body: ScheduleCreate, owner: str) -> Schedule:
        spec = cron_spec(body.cron, body.timezone)
        template = self._check_template(body.run, owner)
        now = self.clock()
        schedule = Schedule(
            owner=owner,
            name=body.name,
            cron=spec.expression,
            timezone=body.timezone,
            run_template=template,
            paused=body.paused,
            concurrency_policy=body.concurrency_policy,
            misfire_policy=body.misfire_policy,
            starting_deadline_seconds=body.starting_deadline_seconds,
            next_fire_at=None if body.paused else next_fire_times(spec, now, 1)[0],
            paused_at=now if body.paused else None,
            created_at=now,
            updated_at=now,
        )
        self.repo.add(schedule)
        await self.session.flush()
        after_commit(self.session, self.wakeups.wake_scheduler)
        return schedule

    async def update(self, schedule_id: str, body: ScheduleUpdate) -> Schedule:
        schedule = await self.get(schedule_id)
        changes = body.model_dump(exclude_unset=True)
        for name in ("name", "concurrency_policy", "misfire_policy"):
            if changes.get(name) is not None:
                setattr(schedule, name, changes[name])
        if "starting_deadline_seconds" in changes:
            schedule.starting_deadline_seconds = body.starting_deadline_seconds
        if body.run is not None:
            schedule.run_template = self._check_template(body.run, schedule.owner)
        if body.cron is not None or body.timezone is not None:
            spec = cron_spec(body.cron or schedule.cron, body.timezone or schedule.timezone)
            schedule.cron, schedule.timezone = spec.expression, spec.timezone
            if not schedule.paused:
                schedule.next_fire_at = next_fire_times(spec, self.clock(), 1)[0]
        schedule.updated_at = self.clock()
        await self.session.flush()
        after_commit(self.session, self.wakeups.wake_scheduler)
        return schedule

    async def delete(self, schedule_id: str) -> None:
        await self.repo.delete(await self.get(schedule_id))

    async def pause(self, schedule_id: str) -> Schedule:
        schedule = await self.get(schedule_id)
        if not schedule.paused:
            schedule.paused = True
            schedule.paused_at = self.clock()
            schedule.next_fire_at = None
            schedule.updated_at = schedule.paused_at
            await self.session.flush()
        return schedule

    async def resume(self, schedule_id: str, *, catch_up: bool) -> Schedule:
        """Unpauses. The next fire is computed from now, unless `catch_up` asks for the paused
        window's fire times to go through the misfire policy."""
        schedule = await self.get(schedule_id)
        if not schedule.paused:
            return schedule
        spec = parse_cron(schedule.cron, schedule.timezone)
        now = self.clock()
        start = schedule.paused_at if catch_up and schedule.paused_at else now
        schedule.paused = False
        schedule.paused_at = None
        schedule.next_fire_at = next_fire_times(spec, min(start, now), 1)[0]
        schedule.updated_at = now
        await self.session.flush()
        after_commit(self.session, self.wakeups.wake_scheduler)
        return schedule

    async def trigger(self, schedule_id: str) -> Run:
        """One run now, outside the cron (it has no fire time)."""
        schedule = await self.get(schedule_id)
        run = self.runs.build(
            RunCreate.model_validate(schedule.run_template),
            owner=schedule.owner,
            schedule_id=schedule.id,
        )
        self.runs.repo.add(run)
        await self.session.flush()
        self.runs.repo.add_event(run.id, None, RunState.QUEUED, f"triggered from {schedule.name}")
        after_commit(self.session, self.wakeups.wake_dispatcher)
        return run

    # ------------------------------------------------------------------ firing
    async def fire_due(self, *, batch: int, max_catch_up: int, grace_seconds: float) -> FireReport:
        """Creates the runs of every due schedule (claimed with SKIP LOCKED on PostgreSQL) and
        advances their next fire times, all in the caller's one transaction."""
        now = self.clock()
        report = FireReport()
        pending: list[tuple[Run, str]] = []
        skips: list[Skip] = []
        for schedule in await self.repo.claim_due(now, batch):
            assert schedule.next_fire_at is not None
            report.claimed += 1
            spec = parse_cron(schedule.cron, schedule.timezone)
            fires, following = due_fire_times(
                spec,
                next_fire_at=schedule.next_fire_at,
                now=now,
                policy=MisfirePolicy(schedule.misfire_policy),
                starting_deadline_seconds=schedule.starting_deadline_seconds,
                max_catch_up=max_catch_up,
                grace_seconds=grace_seconds,
            )
            queued_here = False
            for fire_time in fires:
                run = await self._fire(schedule, fire_time, report, skips, queued_here)
                if run is not None:
                    if queued_here and schedule.concurrency_policy == ConcurrencyPolicy.REPLACE:
                        pending.pop()  # replaced before it was ever queued
                    pending.append((run, f"fired by schedule {schedule.name} for {fire_time}"))
                    queued_here = True
            if fires:
                schedule.last_fired_at = fires[-1]
            schedule.next_fire_at = following
        # One statement for all the runs of this tick; a fire time that already has a run
        # (another replica got there first) is skipped by the unique constraint.
        inserted = await self.runs.repo.insert_scheduled([run for run, _ in pending])
        self.runs.repo.add_events(
            [(run.id, RunState.QUEUED, detail) for run, detail in pending if run.id in inserted]
        )
        report.created = [run.id for run, _ in pending if run.id in inserted]
        report.skipped = await self.repo.record_skips(skips)
        for run, _ in pending:
            if run.id in inserted and run.scheduled_for is not None:
                SCHEDULER_LATENESS.observe((run.created_at - run.scheduled_for).total_seconds())
        return report

    async def _fire(
        self,
        schedule: Schedule,
        fire_time: datetime,
        report: FireReport,
        skips: list[Skip],
        queued_here: bool,
    ) -> Run | None:
        """The run for one fire time, or None (a skip added to `skips`) when its template is
        refused or the concurrency policy skips it."""
        run = self._admit_fire(schedule, fire_time, skips)
        if run is None:
            return None  # refused: nothing is cancelled for a run that will not exist
        policy = ConcurrencyPolicy(schedule.concurrency_policy)
        if policy != ConcurrencyPolicy.ALLOW:
            unfinished = await self.runs.repo.unfinished_of_schedule(schedule.id)
            if (unfinished or queued_here) and policy == ConcurrencyPolicy.FORBID:
                reason = (
                    f"run {unfinished[0].id} of this schedule is still {unfinished[0].state}"
                    if unfinished
                    else "an earlier fire in the same catch-up is still queued"
                )
                skips.append((schedule.id, fire_time, reason))
                return None
            for previous in unfinished:
                if RunState(previous.state) in CANCELLABLE:
                    await self.runs.cancel(previous.id)
                    report.to_cancel.append(previous.id)
        return run

    def _admit_fire(self, schedule: Schedule, fire_time: datetime, skips: list[Skip]) -> Run | None:
        """The fire's run, admitted like POST /v1/runs; a template the operator's limits (or
        the API's rules) now refuse records a skipped fire with the reason, and the schedule
        keeps firing: one schedule must never hold up the others' batch."""
        try:
            template = RunCreate.model_validate(schedule.run_template)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
                for error in exc.errors()[:5]
            )
            reason = f"run template no longer valid: {problems}"
        else:
            try:
                return self.runs.build(
                    template, owner=schedule.owner, schedule_id=schedule.id, scheduled_for=fire_time
                )
            except AppError as exc:
                reason = f"run refused: {exc.message}"
        skips.append((schedule.id, fire_time, reason[:2000]))
        return None
