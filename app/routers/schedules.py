"""/v1/schedules: cron schedules of run templates, their runs and skipped fires."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.deps import CurrentPrincipal, RunServiceDep, ScheduleFromPath, ScheduleServiceDep
from app.exception_handlers import ERROR_RESPONSES
from app.presenters import present_run, present_schedule
from app.schemas.common import Page
from app.schemas.runs import RunOut
from app.schemas.schedules import ScheduleCreate, ScheduleFireOut, ScheduleOut, ScheduleUpdate

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=ERROR_RESPONSES)

CursorQuery = Annotated[str | None, Query(max_length=512)]
LimitQuery = Annotated[int, Query(ge=1, le=200)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleOut)
async def create_schedule(
    body: ScheduleCreate,
    service: ScheduleServiceDep,
    principal: CurrentPrincipal,
    response: Response,
) -> ScheduleOut:
    """Create a schedule; the answer shows its next fire time (UTC and local) and the next 5."""
    schedule = await service.create(body, principal.owner)
    response.headers["Location"] = f"/v1/schedules/{schedule.id}"
    return present_schedule(schedule)


@router.get("", response_model=Page[ScheduleOut])
async def list_schedules(
    service: ScheduleServiceDep,
    principal: CurrentPrincipal,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[ScheduleOut]:
    """List schedules, newest first, with cursor pagination."""
    rows, next_cursor = await service.page(owner=principal.owner_filter, cursor=cursor, limit=limit)
    return Page[ScheduleOut](items=[present_schedule(s) for s in rows], next_cursor=next_cursor)


@router.get("/{schedule_id}", response_model=ScheduleOut)
async def get_schedule(schedule: ScheduleFromPath) -> ScheduleOut:
    """One schedule with its next fire times."""
    return present_schedule(schedule)


@router.patch("/{schedule_id}", response_model=ScheduleOut)
async def update_schedule(
    schedule: ScheduleFromPath,
    body: ScheduleUpdate,
    service: ScheduleServiceDep,
) -> ScheduleOut:
    """Change a schedule; a new cron or time zone recomputes the next fire time at once."""
    return present_schedule(await service.update(schedule.id, body))


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_schedule(schedule: ScheduleFromPath, service: ScheduleServiceDep) -> Response:
    """Delete a schedule; its runs stay."""
    await service.delete(schedule.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{schedule_id}/pause", response_model=ScheduleOut)
async def pause_schedule(schedule: ScheduleFromPath, service: ScheduleServiceDep) -> ScheduleOut:
    """Stop firing until resumed."""
    return present_schedule(await service.pause(schedule.id))


@router.post("/{schedule_id}/resume", response_model=ScheduleOut)
async def resume_schedule(
    schedule: ScheduleFromPath,
    service: ScheduleServiceDep,
    catch_up: Annotated[
        bool, Query(description="apply the misfire policy to fire times missed while paused")
    ] = False,
) -> ScheduleOut:
    """Fire again; the next fire is computed from now unless `catch_up` is set."""
    return present_schedule(await service.resume(schedule.id, catch_up=catch_up))


@router.post("/{schedule_id}/trigger", status_code=status.HTTP_202_ACCEPTED, response_model=RunOut)
async def trigger_schedule(schedule: ScheduleFromPath, service: ScheduleServiceDep) -> RunOut:
    """Run the schedule's template once now, outside the cron."""
    return present_run(await service.trigger(schedule.id))


@router.get("/{schedule_id}/runs", response_model=Page[RunOut])
async def list_schedule_runs(
    schedule: ScheduleFromPath,
    service: RunServiceDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[RunOut]:
    """The schedule's runs, newest first (failures included: a failing schedule keeps firing)."""
    runs, next_cursor = await service.page(
        owner=None, schedule_id=schedule.id, cursor=cursor, limit=limit
    )
    return Page[RunOut](items=[present_run(r) for r in runs], next_cursor=next_cursor)


@router.get("/{schedule_id}/fires", response_model=Page[ScheduleFireOut])
async def list_skipped_fires(
    schedule: ScheduleFromPath, service: ScheduleServiceDep, limit: LimitQuery = 50
) -> Page[ScheduleFireOut]:
    """Fire times that created no run (e.g. forbidden by the concurrency policy), newest first."""
    fires = await service.skipped_fires(schedule.id, limit)
    return Page[ScheduleFireOut](items=[ScheduleFireOut.model_validate(f) for f in fires])
