"""Fresh, migrated databases for integration tests: one PostgreSQL database or SQLite file each."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import migrate
from app.db import create_engine, create_sessionmaker


async def new_postgres_database(postgres_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{postgres_url.rpartition('/')[0]}/{name}"


@asynccontextmanager
async def migrated_database(
    kind: str, postgres_url: str, tmp_path: Path, prefix: str
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A sessionmaker on a new database of `kind` ("postgresql" or "sqlite"), migrated."""
    if kind == "postgresql":
        url = await new_postgres_database(postgres_url, prefix)
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / f'{prefix}.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()
