"""All SQL of cached environment images."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import (
    EnvironmentImage,
)
from app.repositories.paging import (
    insert_statement,
)


class EnvironmentImageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, key: str) -> EnvironmentImage | None:
        return await self.session.get(EnvironmentImage, key, populate_existing=True)

    async def record_use(self, values: dict[str, Any]) -> None:
        """Inserts the image's row or, when another run or replica has one, refreshes it:
        one statement, so concurrent first uses cannot collide."""
        statement = insert_statement(self.session, EnvironmentImage.__table__).values(**values)
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
