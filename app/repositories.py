"""All SQL lives here: reading and writing runs, their events and the image-cache index."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import ACTIVE_STATES, EnvironmentImage, Run, RunEvent, RunState


class InvalidCursor(ValueError):
    """A pagination cursor that this service did not issue."""


def encode_cursor(created_at: datetime, run_id: str) -> str:
    raw = f"{created_at.isoformat()}|{run_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, run_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), run_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("cursor is not one this service issued") from exc


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
        self, *, states: Sequence[RunState] = (), cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Run], str | None]:
        query = select(Run).order_by(Run.created_at.desc(), Run.id.desc()).limit(limit + 1)
        if states:
            query = query.where(Run.state.in_([s.value for s in states]))
        if cursor:
            created_at, run_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    Run.created_at < created_at, and_(Run.created_at == created_at, Run.id < run_id)
                )
            )
        runs = list((await self.session.execute(query)).scalars())
        if len(runs) <= limit:
            return runs, None
        last = runs[limit - 1]
        return runs[:limit], encode_cursor(last.created_at, last.id)

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

    async def queued_ids(self, limit: int) -> list[str]:
        """The oldest queued runs, skipping rows another replica has locked (PostgreSQL)."""
        query = (
            select(Run.id)
            .where(Run.state == RunState.QUEUED.value)
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

    async def active_runs(self, instance_id: str | None = None) -> list[Run]:
        query = select(Run).where(Run.state.in_([s.value for s in ACTIVE_STATES]))
        if instance_id is not None:
            query = query.where(Run.instance_id == instance_id)
        return list((await self.session.execute(query)).scalars())

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

    async def upsert(self, image: EnvironmentImage) -> None:
        await self.session.merge(image)

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
