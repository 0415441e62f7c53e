"""All SQL lives here (and webhooks' in app.webhook_repository): runs, schedules, images, keys."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, Select, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    ApiKey,
    EnvironmentImage,
    Run,
    RunEvent,
    RunState,
    Schedule,
    ScheduleFire,
)


class InvalidCursor(ValueError):
    """A pagination cursor that this service did not issue."""


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, run_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), run_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("cursor is not one this service issued") from exc


async def _keyset_page(
    session: AsyncSession, query: Select[Any], model: Any, cursor: str | None, limit: int
) -> tuple[list[Any], str | None]:
    """One page of `query`, newest first by (created_at, id), resuming after `cursor`."""
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(
            or_(
                model.created_at < created_at,
                and_(model.created_at == created_at, model.id < row_id),
            )
        )
    rows = list((await session.execute(query)).scalars())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)


def _insert(session: AsyncSession, table: Any) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"insert-or-ignore is not written for {dialect}")


async def insert_or_ignore(
    session: AsyncSession, table: Any, values: dict[str, Any], conflict: list[str]
) -> bool:
    """Inserts a row unless one with the same `conflict` columns exists; True if inserted."""
    statement = _insert(session, table).values(**values)
    statement = statement.on_conflict_do_nothing(index_elements=conflict)  # type: ignore[attr-defined]
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0) == 1)


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
        return await _keyset_page(self.session, query, Run, cursor, limit)

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
            _insert(self.session, Run.__table__)
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


class EnvironmentImageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, key: str) -> EnvironmentImage | None:
        return await self.session.get(EnvironmentImage, key, populate_existing=True)

    async def record_use(self, values: dict[str, Any]) -> None:
        """Inserts the image's row or, when another run or replica has one, refreshes it:
        one statement, so concurrent first uses cannot collide."""
        statement = _insert(self.session, EnvironmentImage.__table__).values(**values)
        statement = statement.on_conflict_do_update(  # type: ignore[attr-defined]
            index_elements=["key"],
            set_={
                "image_id": statement.excluded.image_id,  # type: ignore[attr-defined]
                "size_bytes": statement.excluded.size_bytes,  # type: ignore[attr-defined]
                "last_used_at": statement.excluded.last_used_at,  # type: ignore[attr-defined]
            },
        )
        await self.session.execute(statement)

    async def touch(self, key: str) -> None:
        await self.session.execute(
            update(EnvironmentImage)
            .where(EnvironmentImage.key == key)
            .values(last_used_at=utcnow())
            .execution_options(synchronize_session=False)
        )

    async def all(self) -> list[EnvironmentImage]:
        query = select(EnvironmentImage).order_by(EnvironmentImage.last_used_at)
        return list((await self.session.execute(query)).scalars())

    async def delete(self, key: str) -> None:
        await self.session.execute(delete(EnvironmentImage).where(EnvironmentImage.key == key))


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
        return await _keyset_page(self.session, query, Schedule, cursor, limit)

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

    async def record_skip(self, schedule_id: str, scheduled_for: datetime, reason: str) -> bool:
        values = {
            "schedule_id": schedule_id,
            "scheduled_for": scheduled_for,
            "outcome": "skipped",
            "reason": reason,
            "created_at": utcnow(),
        }
        return await insert_or_ignore(
            self.session, ScheduleFire.__table__, values, ["schedule_id", "scheduled_for"]
        )

    async def fires(self, schedule_id: str, limit: int) -> list[ScheduleFire]:
        query = (
            select(ScheduleFire)
            .where(ScheduleFire.schedule_id == schedule_id)
            .order_by(ScheduleFire.scheduled_for.desc())
            .limit(limit)
        )
        return list((await self.session.execute(query)).scalars())


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, key: ApiKey) -> None:
        self.session.add(key)

    async def by_hash(self, token_sha256: str) -> ApiKey | None:
        query = select(ApiKey).where(ApiKey.token_sha256 == token_sha256)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def active_count(self) -> int:
        query = select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
        return int((await self.session.execute(query)).scalar_one())

    async def any_created(self) -> bool:
        """Whether a key was ever created, revoked ones included."""
        query = select(ApiKey.id).limit(1)
        return (await self.session.execute(query)).first() is not None

    async def all(self) -> list[ApiKey]:
        return list(
            (await self.session.execute(select(ApiKey).order_by(ApiKey.created_at))).scalars()
        )

    async def revoke(self, key_id: str) -> bool:
        result = await self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)
