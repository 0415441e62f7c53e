"""All SQL of runs and their events: pages, claims, leases, state changes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Run,
    RunEvent,
    RunState,
)
from app.repositories.paging import (
    insert_statement,
    keyset_page,
)


class RunRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, run_id: str) -> Run | None:
        return await self.session.get(Run, run_id, populate_existing=True)

    async def get_by_idempotency_key(self, key: str) -> Run | None:
        result = await self.session.execute(select(Run).where(Run.idempotency_key == key))
        return result.scalar_one_or_none()

    def add(self, run: Run) -> None:
        self.session.add(run)

    async def page(
        self,
        *,
        states: Sequence[RunState] = (),
        owner: str | None = None,
        schedule_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Run], str | None]:
        query = select(Run)
        if owner is not None:
            query = query.where(Run.owner == owner)
        if schedule_id is not None:
            query = query.where(Run.schedule_id == schedule_id)
        if states:
            query = query.where(Run.state.in_([s.value for s in states]))
        return await keyset_page(self.session, query, Run, cursor, limit)

    async def last_event_at(self, run_id: str) -> datetime | None:
        query = select(func.max(RunEvent.at)).where(RunEvent.run_id == run_id)
        value = (await self.session.execute(query)).scalar_one_or_none()
        if value is not None and value.tzinfo is None:  # SQLite's MAX() bypasses the column type
            value = value.replace(tzinfo=UTC)
        return value

    async def events(self, run_id: str) -> list[RunEvent]:
        query = select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)
        return list((await self.session.execute(query)).scalars())

    async def compare_and_set_state(
        self, run_id: str, expected: RunState, new: RunState, values: dict[str, Any]
    ) -> bool:
        """Moves a run from `expected` to `new` only if nobody moved it first."""
        result = await self.session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state == expected.value)
            .values(state=new.value, updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def update_fields(self, run_id: str, values: dict[str, Any]) -> None:
        await self.session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )

    def add_event(
        self, run_id: str, from_state: RunState | None, to_state: RunState, detail: str | None
    ) -> None:
        self.session.add(
            RunEvent(
                run_id=run_id,
                from_state=from_state.value if from_state else None,
                to_state=to_state.value,
                detail=detail,
                at=utcnow(),
            )
        )

    async def queued_ids(self, limit: int, now: datetime) -> list[str]:
        """The oldest queued runs whose backoff has passed, skipping rows another replica has
        locked (PostgreSQL)."""
        query = (
            select(Run.id)
            .where(
                Run.state == RunState.QUEUED.value,
                or_(Run.not_before.is_(None), Run.not_before <= now),
            )
            .order_by(Run.created_at, Run.id)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return list((await self.session.execute(query)).scalars())

    async def count_in_states(self, states: Iterable[RunState]) -> int:
        query = (
            select(func.count()).select_from(Run).where(Run.state.in_([s.value for s in states]))
        )
        return int((await self.session.execute(query)).scalar_one())

    async def expired_leases(self, now: datetime, limit: int) -> list[Run]:
        """Active runs whose executing replica stopped renewing its lease."""
        query = (
            select(Run)
            .where(
                Run.state.in_([s.value for s in ACTIVE_STATES]),
                or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now),
            )
            .order_by(Run.updated_at)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return list((await self.session.execute(query)).scalars())

    async def take_over(
        self, run: Run, instance_id: str, now: datetime, lease_until: datetime
    ) -> bool:
        """Moves an expired lease to `instance_id`, unless someone renewed or took it first."""
        result = await self.session.execute(
            update(Run)
            .where(
                Run.id == run.id,
                Run.state == run.state,
                or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now),
            )
            .values(instance_id=instance_id, lease_expires_at=lease_until, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def renew_leases(self, run_ids: Sequence[str], instance_id: str, until: datetime) -> int:
        if not run_ids:
            return 0
        result = await self.session.execute(
            update(Run)
            .where(Run.id.in_(list(run_ids)), Run.instance_id == instance_id)
            .values(lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0))

    async def states_of(self, run_ids: Sequence[str]) -> dict[str, RunState]:
        if not run_ids:
            return {}
        query = select(Run.id, Run.state).where(Run.id.in_(list(run_ids)))
        return {row.id: RunState(row.state) for row in (await self.session.execute(query))}

    async def insert_scheduled(self, runs: Sequence[Run]) -> set[str]:
        """Adds scheduled runs in one statement, skipping any whose (schedule, fire time)
        already has a run; returns the ids of those inserted."""
        if not runs:
            return set()
        columns = [c.key for c in Run.__table__.columns]
        statement = (
            insert_statement(self.session, Run.__table__)
            .on_conflict_do_nothing(index_elements=["schedule_id", "scheduled_for"])  # type: ignore[attr-defined]
            .returning(Run.__table__.c.id)
        )
        # A parameter list runs as SQLAlchemy's batched "insertmanyvalues" with a cached plan.
        rows = [{name: getattr(run, name) for name in columns} for run in runs]
        return set((await self.session.execute(statement, rows)).scalars())

    def add_events(self, events: Sequence[tuple[str, RunState, str]]) -> None:
        """Records the first event (`queued`) of many new runs at once."""
        now = utcnow()
        self.session.add_all(
            RunEvent(run_id=run_id, from_state=None, to_state=state.value, detail=detail, at=now)
            for run_id, state, detail in events
        )

    async def unfinished_of_schedule(self, schedule_id: str) -> list[Run]:
        query = select(Run).where(
            Run.schedule_id == schedule_id,
            Run.state.not_in([s.value for s in TERMINAL_STATES]),
        )
        return list((await self.session.execute(query)).scalars())

    async def latest_of_schedules(self, schedule_ids: Sequence[str]) -> dict[str, Run]:
        """Each schedule's newest run (one query: a window over the schedules' runs)."""
        if not schedule_ids:
            return {}
        newest_first = (
            func.row_number()
            .over(partition_by=Run.schedule_id, order_by=(Run.created_at.desc(), Run.id.desc()))
            .label("rank")
        )
        ranked = select(Run.id, newest_first).where(Run.schedule_id.in_(schedule_ids)).subquery()
        query = select(Run).join(ranked, Run.id == ranked.c.id).where(ranked.c.rank == 1)
        runs = (await self.session.execute(query)).scalars()
        return {run.schedule_id: run for run in runs if run.schedule_id is not None}

    async def env_keys_in_use(self) -> set[str]:
        query = select(Run.env_key).where(
            Run.env_key.is_not(None),
            Run.state.in_([s.value for s in (RunState.QUEUED, *ACTIVE_STATES)]),
        )
        return {key for key in (await self.session.execute(query)).scalars() if key}
