"""All SQL of API keys."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import (
    ApiKey,
)


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
