"""One transaction per request, against real databases (PostgreSQL and SQLite): services only
flush, wake-ups follow the commit, and a refused or raced submission undoes only itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import LegacyPrefixClaim, Run, RunEvent
from app.schemas.runs import RunCreate
from app.services.legacy import ResultPrefixTaken
from app.services.runs import RunService
from app.services.transactions import after_commit
from tests.factories import make_limits
from tests.integration.databases import migrated_database

LIMITS = make_limits()


class Recorder:
    """Wake-ups as the process's context receives them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def wake_dispatcher(self) -> None:
        self.calls.append("dispatcher")

    def wake_scheduler(self) -> None:
        self.calls.append("scheduler")

    def cancel_run(self, run_id: str) -> None:
        self.calls.append(f"cancel {run_id}")


@pytest.fixture(params=["postgresql", "sqlite"])
async def db(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_database(request.param, postgres_url, tmp_path, "txn") as sessionmaker:
        yield sessionmaker


def body(command: str = "true") -> RunCreate:
    return RunCreate(command=command, output="s3://bucket/out/")


async def count(db: async_sessionmaker[AsyncSession], model: type[object]) -> int:
    async with db() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_wake_up_follows_the_commit_and_a_rollback_drops_it(
    db: async_sessionmaker[AsyncSession],
) -> None:
    woken = Recorder()
    async with db() as session:
        _run, created = await RunService(session, LIMITS, wakeups=woken).create(body(), None, "a")
        assert created and woken.calls == []  # flushed, not committed: nobody is told yet
        await session.commit()
    assert woken.calls == ["dispatcher"]
    async with db() as session:
        await RunService(session, LIMITS, wakeups=woken).create(body("false"), None, "a")
        await session.rollback()
        await session.commit()  # a later commit of the same session announces nothing
    assert woken.calls == ["dispatcher"]
    assert await count(db, Run) == 1


async def test_callbacks_wait_for_the_outer_commit_not_a_savepoint(
    db: async_sessionmaker[AsyncSession],
) -> None:
    seen: list[str] = []
    async with db() as session:
        await session.execute(select(1))
        after_commit(session, lambda: seen.append("outer"))
        async with session.begin_nested():
            after_commit(session, lambda: seen.append("inner"))
        assert seen == []
        await session.commit()
    assert seen == ["outer", "inner"]


async def test_lost_idempotency_race_answers_as_a_replay(
    db: async_sessionmaker[AsyncSession],
) -> None:
    first, second = Recorder(), Recorder()
    async with db() as session:
        won, _ = await RunService(session, LIMITS, wakeups=first).create(body(), "k1", "a")
        await session.commit()
    async with db() as loser:
        service = RunService(loser, LIMITS, wakeups=second)
        earlier, _ = await service.create(body("echo earlier"), None, "a")
        # The loser looked for the key before the winner's row was committed: it saw none.
        lookups = 0
        look_up = service.repo.get_by_idempotency_key

        async def stale_first_lookup(key: str) -> Run | None:
            nonlocal lookups
            lookups += 1
            return None if lookups == 1 else await look_up(key)

        service.repo.get_by_idempotency_key = stale_first_lookup  # type: ignore[method-assign]
        replayed, created = await service.create(body(), "k1", "a")
        assert (replayed.id, created, lookups) == (won.id, False, 2)
        # Only the savepoint was undone: what the transaction wrote before stays and commits.
        await loser.commit()
    assert second.calls == ["dispatcher"]  # for the earlier run only
    async with db() as session:
        ids = set((await session.execute(select(Run.id))).scalars())
    assert ids == {won.id, earlier.id}
    assert await count(db, RunEvent) == 2


async def test_a_refused_legacy_prefix_leaves_no_run_behind(
    db: async_sessionmaker[AsyncSession],
) -> None:
    woken = Recorder()
    async with db() as session:
        service = RunService(session, LIMITS, wakeups=woken)
        await service.create(body(), None, "a", legacy_prefix="t1/e1/output/")
        await session.commit()
    async with db() as session:
        service = RunService(session, LIMITS, wakeups=woken)
        with pytest.raises(ResultPrefixTaken):
            await service.create(body("other"), None, "a", legacy_prefix="t1/e1/output/")
        await session.commit()  # the request answered 409 normally: its session commits
    assert await count(db, Run) == 1
    assert await count(db, RunEvent) == 1
    assert await count(db, LegacyPrefixClaim) == 1
    assert woken.calls == ["dispatcher"]
