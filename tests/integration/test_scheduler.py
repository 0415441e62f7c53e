"""The scheduler against real databases (PostgreSQL and SQLite), with an injected clock."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import create_engine, create_sessionmaker
from app.models import Run, RunState, Schedule, ScheduleFire
from app.schemas import RunCreate, ScheduleCreate, ScheduleUpdate
from app.services.schedules import ScheduleService
from app.workers.scheduler import Scheduler
from tests.factories import make_limits
from tests.integration.databases import migrated_database

LIMITS = make_limits()
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(params=["postgresql", "sqlite"])
async def db(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_database(request.param, postgres_url, tmp_path, "sched") as sessionmaker:
        yield sessionmaker


def schedule_body(**overrides: Any) -> ScheduleCreate:
    fields: dict[str, Any] = {
        "name": "every-minute",
        "cron": "* * * * *",
        "run": RunCreate(command="true", output="s3://bucket/out/"),
    }
    fields.update(overrides)
    return ScheduleCreate(**fields)


async def create(db: async_sessionmaker[AsyncSession], clock: Clock, **overrides: Any) -> str:
    async with db() as session, session.begin():
        schedule = await ScheduleService(session, LIMITS, clock).create(
            schedule_body(**overrides), "tester"
        )
        return schedule.id


def scheduler(db: async_sessionmaker[AsyncSession], clock: Clock, **kwargs: Any) -> Scheduler:
    options: dict[str, Any] = {"max_catch_up": 10, "grace_seconds": 60, "max_idle": 30}
    options.update(kwargs)
    return Scheduler(db, LIMITS, clock=clock, **options)


async def fire_times(db: async_sessionmaker[AsyncSession], schedule_id: str) -> list[datetime]:
    async with db() as session:
        query = (
            select(Run.scheduled_for)
            .where(Run.schedule_id == schedule_id, Run.scheduled_for.is_not(None))
            .order_by(Run.scheduled_for)
        )
        return [t for t in (await session.execute(query)).scalars() if t is not None]


async def test_fires_once_per_fire_time_and_advances(db: async_sessionmaker[AsyncSession]) -> None:
    clock = Clock(T0 + timedelta(seconds=30))
    schedule_id = await create(db, clock)
    tick = scheduler(db, clock, max_idle=300)
    assert (await tick.tick()).created == []  # 12:01 is not due yet
    clock.advance(seconds=31)  # 12:01:01
    first = await tick.tick()
    assert len(first.created) == 1
    assert (await tick.tick()).created == []  # the same fire time never fires twice
    clock.advance(minutes=1)
    await tick.tick()
    assert await fire_times(db, schedule_id) == [
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=2),
    ]
    # The scheduler sleeps until the next fire time, not a fixed poll.
    assert 58 <= tick.next_delay() <= 60


async def test_two_schedulers_racing_create_one_run_per_fire(
    db: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock(T0)
    ids = [await create(db, clock, name=f"s{i}", cron="* * * * * *") for i in range(20)]
    replicas = [scheduler(db, clock) for _ in range(3)]
    for _ in range(5):
        clock.advance(seconds=1)
        await asyncio.gather(*(r.tick() for r in replicas))
    for schedule_id in ids:
        times = await fire_times(db, schedule_id)
        assert times == [T0 + timedelta(seconds=s) for s in range(1, 6)], schedule_id


@pytest.mark.parametrize(
    ("policy", "deadline", "expected_missed"),
    [("skip", None, 0), ("run_once", None, 1), ("run_once", 20, 0), ("run_all", None, 10)],
)
async def test_misfire_policies_after_downtime(
    db: async_sessionmaker[AsyncSession], policy: str, deadline: int | None, expected_missed: int
) -> None:
    clock = Clock(T0)
    schedule_id = await create(db, clock, misfire_policy=policy, starting_deadline_seconds=deadline)
    clock.advance(hours=1, seconds=30)  # down across 60 fire times; 13:00 is 30 s late
    await scheduler(db, clock, grace_seconds=10).tick()
    times = await fire_times(db, schedule_id)
    assert len(times) == expected_missed
    assert all(t <= T0 + timedelta(hours=1) for t in times)
    if policy == "run_once" and expected_missed:
        assert times == [T0 + timedelta(hours=1)]  # the latest missed time only
    if policy == "run_all":
        assert times[-1] == T0 + timedelta(hours=1)  # capped, newest kept, oldest first
        assert times == sorted(times)


async def test_forbid_skips_while_a_run_is_unfinished_and_records_it(
    db: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock(T0)
    schedule_id = await create(db, clock, concurrency_policy="forbid")
    tick = scheduler(db, clock)
    clock.advance(minutes=1)
    await tick.tick()
    clock.advance(minutes=1)
    report = await tick.tick()  # the first run is still queued: nothing new
    assert report.created == [] and report.skipped == 1
    assert len(await fire_times(db, schedule_id)) == 1
    async with db() as session:
        fires = list((await session.execute(select(ScheduleFire))).scalars())
    assert [(f.scheduled_for, f.outcome) for f in fires] == [(T0 + timedelta(minutes=2), "skipped")]
    assert fires[0].reason and "still queued" in fires[0].reason


async def test_replace_cancels_the_previous_run(db: async_sessionmaker[AsyncSession]) -> None:
    clock = Clock(T0)
    schedule_id = await create(db, clock, concurrency_policy="replace")
    tick = scheduler(db, clock)
    clock.advance(minutes=1)
    first = (await tick.tick()).created
    clock.advance(minutes=1)
    report = await tick.tick()
    assert report.to_cancel == first and len(report.created) == 1
    async with db() as session:
        states = {
            r.id: r.state
            for r in (await session.execute(select(Run).where(Run.schedule_id == schedule_id)))
            .scalars()
            .all()
        }
    assert states[first[0]] == RunState.CANCELLED
    assert states[report.created[0]] == RunState.QUEUED


async def test_pause_resume_and_catch_up(db: async_sessionmaker[AsyncSession]) -> None:
    clock = Clock(T0)
    schedule_id = await create(db, clock, misfire_policy="run_all")
    tick = scheduler(db, clock)
    async with db() as session, session.begin():
        await ScheduleService(session, LIMITS, clock).pause(schedule_id)
    clock.advance(minutes=5)
    await tick.tick()
    assert await fire_times(db, schedule_id) == []  # paused schedules do not fire
    async with db() as session, session.begin():
        resumed = await ScheduleService(session, LIMITS, clock).resume(schedule_id, catch_up=False)
        assert resumed.next_fire_at == T0 + timedelta(minutes=6)  # from now, not the window
    await tick.tick()
    assert await fire_times(db, schedule_id) == []

    # Paused again for 3 minutes, resumed with catch_up: the window goes through run_all.
    async with db() as session, session.begin():
        await ScheduleService(session, LIMITS, clock).pause(schedule_id)
    clock.advance(minutes=3, seconds=30)
    async with db() as session, session.begin():
        await ScheduleService(session, LIMITS, clock).resume(schedule_id, catch_up=True)
    await scheduler(db, clock, grace_seconds=0).tick()
    assert await fire_times(db, schedule_id) == [
        T0 + timedelta(minutes=6),
        T0 + timedelta(minutes=7),
        T0 + timedelta(minutes=8),
    ]


async def test_editing_cron_or_timezone_recomputes_next_fire(
    db: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock(T0)
    schedule_id = await create(db, clock, cron="0 3 * * *")
    async with db() as session, session.begin():
        service = ScheduleService(session, LIMITS, clock)
        assert (await service.get(schedule_id)).next_fire_at == datetime(2026, 3, 2, 3, tzinfo=UTC)
        updated = await service.update(schedule_id, ScheduleUpdate(timezone="America/New_York"))
        # 03:00 in New York on 2026-03-01 (EST, UTC-5) is 08:00 UTC, still ahead of 12:00? No:
        # 12:00 UTC is 07:00 EST, so the next 03:00 local is on 2026-03-02 at 08:00 UTC.
        assert updated.next_fire_at == datetime(2026, 3, 2, 8, tzinfo=UTC)
        updated = await service.update(schedule_id, ScheduleUpdate(cron="30 12 * * *"))
        assert updated.next_fire_at == datetime(2026, 3, 1, 17, 30, tzinfo=UTC)


async def test_count_of_rows_is_bounded_after_a_long_outage(
    db: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock(T0)
    schedule_id = await create(db, clock, cron="* * * * * *", misfire_policy="run_all")
    clock.advance(days=30, milliseconds=500)  # 2.6 million missed fire times
    await scheduler(db, clock, grace_seconds=0, max_catch_up=25).tick()
    async with db() as session:
        count = (
            await session.execute(
                select(func.count()).select_from(Run).where(Run.schedule_id == schedule_id)
            )
        ).scalar_one()
    assert count == 25


async def skipped_fires(db: async_sessionmaker[AsyncSession], schedule_id: str) -> list[str]:
    async with db() as session:
        query = select(ScheduleFire.reason).where(ScheduleFire.schedule_id == schedule_id)
        return [reason or "" for reason in (await session.execute(query)).scalars()]


async def test_templates_the_tightened_limits_refuse_record_a_skip_and_the_rest_fire(
    db: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock(T0 + timedelta(seconds=30))
    loose = dataclasses.replace(LIMITS, allow_network=True, allowed_buckets=("*",))
    async with db() as session, session.begin():
        service = ScheduleService(session, loose, clock)
        network = await service.create(
            schedule_body(
                name="net", run=RunCreate(command="true", output="s3://bucket/o/", network=True)
            ),
            "tester",
        )
        bucket = await service.create(
            schedule_body(name="bucket", run=RunCreate(command="true", output="s3://other/o/")),
            "tester",
        )
        big = await service.create(
            schedule_body(
                name="big",
                run=RunCreate(
                    command="true", output="s3://bucket/o/", resources={"memory_mb": 1024}
                ),
            ),
            "tester",
        )
        replaced = await service.create(
            schedule_body(
                name="replaced",
                concurrency_policy="replace",
                run=RunCreate(command="true", output="s3://bucket/o/", network=True),
            ),
            "tester",
        )
        healthy = await service.create(schedule_body(name="healthy"), "tester")
        previous = await service.trigger(replaced.id)  # unfinished: replace would cancel it
    # The operator turns network off, lists buckets and lowers the memory maximum.
    tight = dataclasses.replace(
        LIMITS, allow_network=False, allowed_buckets=("bucket",), max_memory_mb=512
    )
    tick = Scheduler(db, tight, clock=clock, max_catch_up=10, grace_seconds=60, max_idle=300)
    clock.advance(seconds=31)

    report = await tick.tick()  # before: the Forbidden escaped and rolled the whole batch back

    assert len(report.created) == 1 and report.skipped == 4
    assert len(await fire_times(db, healthy.id)) == 1
    [net_reason] = await skipped_fires(db, network.id)
    assert "network" in net_reason
    [bucket_reason] = await skipped_fires(db, bucket.id)
    assert "'other'" in bucket_reason and "allow-list" in bucket_reason
    [big_reason] = await skipped_fires(db, big.id)
    assert "memory_mb" in big_reason
    assert len(await skipped_fires(db, replaced.id)) == 1
    async with db() as session:
        # A refused fire cancels nothing: the replace policy needs a new run to replace with.
        kept = await session.get(Run, previous.id)
        assert kept is not None and kept.state == RunState.QUEUED and not kept.cancel_requested
        schedules = {s.id: s for s in (await session.execute(select(Schedule))).scalars()}
    # Every schedule moved on to its next fire time: nothing spins on the refused ones.
    assert {s.next_fire_at for s in schedules.values()} == {T0 + timedelta(minutes=2)}
    assert 58 <= tick.next_delay() <= 60


async def test_a_template_that_no_longer_validates_records_a_skip(
    db: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock(T0 + timedelta(seconds=30))
    broken = await create(db, clock, name="broken")
    healthy = await create(db, clock, name="healthy")
    async with db() as session, session.begin():
        schedule = await session.get(Schedule, broken)
        assert schedule is not None
        # As if stored before a validation rule existed (or edited by hand).
        schedule.run_template = {**schedule.run_template, "command": "", "unknown": 1}
    clock.advance(seconds=31)

    report = await scheduler(db, clock, max_idle=300).tick()

    assert len(report.created) == 1 and report.skipped == 1
    [reason] = await skipped_fires(db, broken)
    assert "run template" in reason and "command" in reason
    assert len(await fire_times(db, healthy)) == 1


async def test_a_failing_tick_is_retried_after_a_pause_not_in_a_tight_loop() -> None:
    clock = Clock(T0)
    broken = Scheduler(
        _unreachable_database(),
        LIMITS,
        clock=clock,
        max_catch_up=10,
        grace_seconds=60,
        max_idle=300,
    )

    with pytest.raises(OSError):
        await broken.run_once()

    assert broken.next_delay() == 2.0


def _unreachable_database() -> async_sessionmaker[AsyncSession]:
    # Port 9 (discard) has no listener on loopback: every connection is refused at once.
    return create_sessionmaker(create_engine("postgresql+asyncpg://x:y@127.0.0.1:9/none"))
