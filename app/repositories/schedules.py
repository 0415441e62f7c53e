"""All SQL of schedules and their skipped fires."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import (
    Schedule,
    ScheduleFire,
)
from app.repositories.paging import insert_statement, keyset_page


class ScheduleRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, schedule_id: str) -> Schedule | None:
        return await self.session.get(Schedule, schedule_id, populate_existing=True)

    def add(self, schedule: Schedule) -> None:
        self.session.add(schedule)

    async def names(self, schedule_ids: Sequence[str]) -> dict[str, str]:
        """Names of the given schedules (those that still exist)."""
        if not schedule_ids:
            return {}
        query = select(Schedule.id, Schedule.name).where(Schedule.id.in_(set(schedule_ids)))
        return {row.id: row.name for row in await self.session.execute(query)}

    async def delete(self, schedule: Schedule) -> None:
        await self.session.delete(schedule)

    async def page(
        self, *, owner: str | None, cursor: str | None, limit: int
    ) -> tuple[list[Schedule], str | None]:
        query = select(Schedule)
        if owner is not None:
            query = query.where(Schedule.owner == owner)
        return await keyset_page(self.session, query, Schedule, cursor, limit)

    async def claim_due(self, now: datetime, limit: int) -> list[Schedule]:
        """Due, unpaused schedules, locked for this transaction; other replicas skip them."""
        query = (
            select(Schedule)
            .where(Schedule.paused.is_(False), Schedule.next_fire_at <= now)
            .order_by(Schedule.next_fire_at)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return list((await self.session.execute(query)).scalars())

    async def earliest_next_fire(self) -> datetime | None:
        query = select(func.min(Schedule.next_fire_at)).where(Schedule.paused.is_(False))
        value = (await self.session.execute(query)).scalar_one_or_none()
        if value is not None and value.tzinfo is None:  # SQLite's MIN() bypasses the column type
            value = value.replace(tzinfo=UTC)
        return value

    async def record_skips(self, skips: Sequence[tuple[str, datetime, str]]) -> int:
        """Records skipped fires (schedule id, fire time, reason) in one statement, ignoring
        any already recorded; returns how many were new. One statement, not one per fire:
        thousands of one owner's refused templates must not hold up everyone's tick."""
        if not skips:
            return 0
        now = utcnow()
        rows = [
            {
                "schedule_id": schedule_id,
                "scheduled_for": scheduled_for,
                "outcome": "skipped",
                "reason": reason,
                "created_at": now,
            }
            for schedule_id, scheduled_for, reason in skips
        ]
        table = ScheduleFire.__table__
        statement = (
            insert_statement(self.session, table)
            .on_conflict_do_nothing(index_elements=["schedule_id", "scheduled_for"])  # type: ignore[attr-defined]
            .returning(table.c.schedule_id)
        )
        return len((await self.session.execute(statement, rows)).all())

    async def fires(self, schedule_id: str, limit: int) -> list[ScheduleFire]:
        query = (
            select(ScheduleFire)
            .where(ScheduleFire.schedule_id == schedule_id)
            .order_by(ScheduleFire.scheduled_for.desc())
            .limit(limit)
        )
        return list((await self.session.execute(query)).scalars())
