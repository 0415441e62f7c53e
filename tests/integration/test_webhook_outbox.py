"""The webhook outbox on real databases (PostgreSQL and SQLite): migration 0008 both ways."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy import inspect, text

from app import migrate
from app.db import create_engine, utcnow


async def _new_pg_database(postgres_url: str) -> str:
    name = f"hooks_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{postgres_url.rpartition('/')[0]}/{name}"


@pytest.fixture(params=["postgresql", "sqlite"])
async def database_url(request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return await _new_pg_database(postgres_url)
    return f"sqlite+aiosqlite:///{tmp_path / 'hooks.db'}"


def _alembic(url: str, action: str, revision: str) -> None:
    getattr(command, action)(migrate.alembic_config(url), revision)


async def test_migration_0008_upgrades_backfills_and_downgrades(database_url: str) -> None:
    await asyncio.to_thread(_alembic, database_url, "upgrade", "0007")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO runs (id, owner, state, command, packages, image, output_uri, "
                    "cpus, memory_mb, timeout_seconds, env, network, unpack_zip, request_hash, "
                    "oom_killed, cancel_requested, created_at, updated_at, artifacts, attempt, "
                    "attempts) VALUES ('r1', 'alice', 'succeeded', 'true', '[]', 'busybox', "
                    "'s3://b/o/', 1, 64, 60, '{}', false, false, 'h', false, false, "
                    ":now, :now, '[]', 1, '[]')"
                ),
                {"now": utcnow()},
            )
            for event_id, run_id in (("e1", "r1"), ("e2", "gone")):
                await conn.execute(
                    text(
                        "INSERT INTO webhook_deliveries (id, run_id, url, event_type, payload, "
                        "status, attempts, next_attempt_at, created_at) VALUES (:id, :run, "
                        "'https://x.example/', 'run.succeeded', '{}', 'pending', 0, :now, :now)"
                    ),
                    {"id": event_id, "run": run_id, "now": utcnow()},
                )
        await asyncio.to_thread(_alembic, database_url, "upgrade", "0008")
        async with engine.connect() as conn:
            owners = dict(
                (await conn.execute(text("SELECT id, owner FROM webhook_deliveries"))).all()
            )
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert owners == {"e1": "alice", "e2": None}  # a delivery without its run: operator's
        assert "webhook_signing_secrets" in tables

        await asyncio.to_thread(_alembic, database_url, "downgrade", "0007")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("webhook_deliveries")}
            )
        assert "webhook_signing_secrets" not in tables and "owner" not in columns
        await asyncio.to_thread(_alembic, database_url, "upgrade", "head")
    finally:
        await engine.dispose()
