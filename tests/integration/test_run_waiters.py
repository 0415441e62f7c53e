"""Run waiters against real databases (PostgreSQL and SQLite): a terminal transition committed
through this process's sessions wakes its waiters without the poll, one committed through
another replica's sessions is seen by the poll, and neither leaves a waiter behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import create_sessionmaker
from app.models import Run, RunState
from app.services.runs import transition
from app.services.waiters import RUN_WAITERS_INFO, RunWaiters
from tests.integration.databases import migrated_database
from tests.unit.pipeline_harness import until

S = RunState


@pytest.fixture(params=["postgresql", "sqlite"])
async def db(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_database(request.param, postgres_url, tmp_path, "wait") as sessionmaker:
        yield sessionmaker


async def finishing_run(sessionmaker: async_sessionmaker[AsyncSession]) -> str:
    run = Run(
        command="true",
        image="busybox:latest",
        output_uri="s3://bucket/out/",
        cpus=1,
        memory_mb=64,
        disk_mb=64,
        timeout_seconds=60,
        request_hash="h",
        owner="alice",
    )
    async with sessionmaker() as session, session.begin():
        session.add(run)
    for state in (S.PREPARING, S.RUNNING, S.FINISHING):
        async with sessionmaker() as session, session.begin():
            await transition(session, run.id, state)
    return run.id


async def test_a_commit_here_wakes_at_once_and_one_elsewhere_at_the_poll(
    db: async_sessionmaker[AsyncSession],
) -> None:
    here = RunWaiters(db, max_per_owner=5, max_total=5, poll_seconds=3600)
    db.configure(info={RUN_WAITERS_INFO: here})
    first = await finishing_run(db)
    waiting = asyncio.create_task(here.wait(first, "alice", 60))
    await until(lambda: here.waiting_for(first) == 1)
    async with db() as session, session.begin():
        await transition(session, first, S.SUCCEEDED)
    run, terminal = await asyncio.wait_for(waiting, 10)  # the poll is an hour away
    assert (run.state, terminal, here.waiting) == (S.SUCCEEDED, True, 0)

    here.poll_seconds = 0.05
    second = await finishing_run(db)
    waiting = asyncio.create_task(here.wait(second, "alice", 60))
    await until(lambda: here.waiting_for(second) == 1)
    announced = here.announced
    other_replica = create_sessionmaker(db.kw["bind"])
    async with other_replica() as session, session.begin():
        await transition(session, second, S.FAILED, exit_code=3)
    assert here.announced == announced  # nothing told this process
    run, terminal = await asyncio.wait_for(waiting, 10)
    assert (run.state, run.exit_code, terminal, here.waiting) == (S.FAILED, 3, True, 0)
    await here.close()
