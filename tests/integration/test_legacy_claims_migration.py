"""Migration 0009 (legacy prefix claims) up, down and up again on PostgreSQL and SQLite, with
legacy runs made before it existed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import IntegrityError

from app import migrate
from app.db import create_engine

BEFORE = "0008"  # the revision 0009 follows
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
async def database_url(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'claims.db'}"
        return
    name = f"claims_{uuid.uuid4().hex[:12]}"
    admin = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield f"{postgres_url.rpartition('/')[0]}/{name}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


def legacy_run(run_id: str, bucket: str, prefix: str | None, minutes: int) -> dict[str, Any]:
    """A runs row with the columns revision 0007 requires."""
    at = T0 + timedelta(minutes=minutes)
    return {
        "id": run_id,
        "state": "succeeded",
        "command": "true",
        "packages": [],
        "image": "busybox:latest",
        "output_uri": f"s3://{bucket}/",
        "cpus": 1.0,
        "memory_mb": 64,
        "timeout_seconds": 60,
        "env": {},
        "network": False,
        "request_hash": "0" * 64,
        "oom_killed": False,
        "cancel_requested": False,
        "created_at": at,
        "updated_at": at,
        "artifacts": [],
        "legacy_prefix": prefix,
    }


RUNS_0007 = sa.table(
    "runs",
    *(
        sa.column(name, type_)
        for name, type_ in {
            "id": sa.String(),
            "state": sa.String(),
            "command": sa.Text(),
            "packages": sa.JSON(),
            "image": sa.String(),
            "output_uri": sa.Text(),
            "cpus": sa.Float(),
            "memory_mb": sa.Integer(),
            "timeout_seconds": sa.Integer(),
            "env": sa.JSON(),
            "network": sa.Boolean(),
            "request_hash": sa.String(),
            "oom_killed": sa.Boolean(),
            "cancel_requested": sa.Boolean(),
            "created_at": sa.DateTime(timezone=True),
            "updated_at": sa.DateTime(timezone=True),
            "artifacts": sa.JSON(),
            "legacy_prefix": sa.Text(),
        }.items()
    ),
)
CLAIMS = sa.table(
    "legacy_prefix_claims",
    sa.column("run_id", sa.String()),
    sa.column("bucket", sa.String()),
    sa.column("prefix", sa.Text()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


async def test_upgrade_backfills_claims_and_downgrade_removes_them(database_url: str) -> None:
    config = migrate.alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, BEFORE)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(RUNS_0007),
                [
                    legacy_run("old", "b1", "t/e/output/", 1),
                    legacy_run("new", "b1", "t/e/output/", 2),  # overwrote "old": it holds it
                    legacy_run("other-bucket", "b2", "t/e/output/", 3),
                    legacy_run("usual", "b1", None, 4),
                ],
            )
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(CLAIMS.c.bucket, CLAIMS.c.prefix, CLAIMS.c.run_id).order_by(
                        CLAIMS.c.bucket
                    )
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            ("b1", "t/e/output/", "new"),
            ("b2", "t/e/output/", "other-bucket"),
        ]
        # The prefix is claimed once per bucket.
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    sa.insert(CLAIMS).values(
                        run_id="old", bucket="b1", prefix="t/e/output/", created_at=T0
                    )
                )

        await asyncio.to_thread(command.downgrade, config, BEFORE)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        assert "legacy_prefix_claims" not in tables and "runs" in tables
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.connect() as conn:
            count = (await conn.execute(sa.select(sa.func.count()).select_from(CLAIMS))).scalar()
        assert count == 2
    finally:
        await engine.dispose()
