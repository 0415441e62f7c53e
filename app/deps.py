"""FastAPI dependencies: the request's session, the caller, services, fetch-or-404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.errors import NotFound, Unauthorized
from app.models import Run, Schedule
from app.services.auth import LOCAL_PRINCIPAL, Principal, principal_for
from app.services.runs import RunService
from app.services.schedules import ScheduleService
from app.services.webhooks import SigningSecrets


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session and one transaction per request, committed here and nowhere else: once the
    endpoint returns and before the answer goes out (so a client that gets 202 can read the
    run at once), or rolled back if it raised. Services only flush; the wake-ups they ask for
    (app.services.transactions) run after this commit."""
    context = get_context(request)
    async with context.sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

# Declares the scheme in OpenAPI (Swagger's Authorize button, generated clients).
bearer = HTTPBearer(auto_error=False, description="An API key from `taskdeploy keys create`")


async def get_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is not None:
        principal = await principal_for(session, credentials.credentials)
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        return principal
    if await get_context(request).access.key_required(session):
        raise Unauthorized("an API key is required: Authorization: Bearer <token>")
    return LOCAL_PRINCIPAL


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def get_run_service(request: Request, session: SessionDep) -> RunService:
    context = get_context(request)
    return RunService(session, context.run_limits, wakeups=context)


RunServiceDep = Annotated[RunService, Depends(get_run_service)]


async def get_run(
    service: RunServiceDep,
    principal: CurrentPrincipal,
    run_id: Annotated[str, Path(max_length=64, description="run id")],
) -> Run:
    run = await service.get(run_id)
    if not principal.can_see(run.owner):
        raise NotFound(f"run {run_id} not found")  # no existence leak: same as a missing one
    return run


RunFromPath = Annotated[Run, Depends(get_run)]


async def get_run_at_rest(run: RunFromPath, session: SessionDep) -> Run:
    """The run, with the request's transaction ended: for endpoints that go on to read the
    Docker engine or the object store, since no transaction may stay open across a network
    call. The run's loaded attributes stay readable."""
    await session.close()
    return run


RunAtRest = Annotated[Run, Depends(get_run_at_rest)]


def get_schedule_service(request: Request, session: SessionDep) -> ScheduleService:
    context = get_context(request)
    return ScheduleService(session, context.run_limits, wakeups=context)


ScheduleServiceDep = Annotated[ScheduleService, Depends(get_schedule_service)]


async def get_schedule(
    service: ScheduleServiceDep,
    principal: CurrentPrincipal,
    schedule_id: Annotated[str, Path(max_length=64, description="schedule id")],
) -> Schedule:
    schedule = await service.get(schedule_id)
    if not principal.can_see(schedule.owner):
        raise NotFound(f"schedule {schedule_id} not found")
    return schedule


ScheduleFromPath = Annotated[Schedule, Depends(get_schedule)]


def get_signing_secrets(session: SessionDep) -> SigningSecrets:
    return SigningSecrets(session)


SigningSecretsDep = Annotated[SigningSecrets, Depends(get_signing_secrets)]
