"""FastAPI dependencies: the request's session, the run service, fetch-a-run-or-404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Run, Schedule
from app.services.runs import RunService
from app.services.schedules import ScheduleService

if TYPE_CHECKING:
    from app.main import AppContext


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated["AppContext", Depends(get_context)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request. Write endpoints commit once, before they respond (so a client
    that gets 202 can read the run at once, and the workers are woken after the commit);
    anything left uncommitted, as on an error, is rolled back when the session closes."""
    context = get_context(request)
    async with context.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def get_run_service(request: Request, session: SessionDep) -> RunService:
    context = get_context(request)
    return RunService(session, context.run_limits, wake=context.wake_dispatcher)


RunServiceDep = Annotated[RunService, Depends(get_run_service)]


async def get_run(
    service: RunServiceDep, run_id: Annotated[str, Path(max_length=64, description="run id")]
) -> Run:
    return await service.get(run_id)


RunFromPath = Annotated[Run, Depends(get_run)]


def get_schedule_service(request: Request, session: SessionDep) -> ScheduleService:
    return ScheduleService(session, get_context(request).run_limits)


ScheduleServiceDep = Annotated[ScheduleService, Depends(get_schedule_service)]


async def get_schedule(
    service: ScheduleServiceDep,
    schedule_id: Annotated[str, Path(max_length=64, description="schedule id")],
) -> Schedule:
    return await service.get(schedule_id)


ScheduleFromPath = Annotated[Schedule, Depends(get_schedule)]
