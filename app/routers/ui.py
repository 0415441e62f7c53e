"""/ui: the dashboard, served by the service itself (every asset is local: it works air-gapped).

Pages are server-rendered shells that hold no data. The data comes in HTML fragments under
/ui/parts that htmx fetches with the viewer's API key as a bearer token, through the same
dependencies as the API (`CurrentPrincipal`, the owner-checked `RunFromPath` and
`ScheduleFromPath`): a fragment never shows another owner's runs or schedules. Logs, metrics
and artifact downloads are read from the JSON API itself by the page's script.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from app.deps import (
    CurrentPrincipal,
    RunFromPath,
    RunServiceDep,
    ScheduleFromPath,
    ScheduleServiceDep,
)
from app.errors import AppError, validation_details
from app.models import Run, RunEvent, RunState
from app.presenters import upcoming_fires
from app.schemas.runs import RunCreate
from app.services.cron import describe_cron, describe_local
from app.services.runs import CANCELLABLE, RunService, result_location
from app.services.schedules import ScheduleService

UI_DIR = FilePath(__file__).resolve().parents[1] / "ui"
STATIC_DIR = UI_DIR / "static"

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=UI_DIR / "templates")

# Pages load nothing from elsewhere and run no inline script: a command's text or a log line
# that slipped past escaping still could not execute.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# htmx stops polling a fragment that answers 286: a finished run does not change any more.
STOP_POLLING = 286
PAGE_SIZE = 25
NONE = "\u2013"  # an en dash: "no value" in a table cell
# The filter form sends "state=" for "any state".
StateQuery = Annotated[RunState | Literal[""] | None, Query()]
LimitQuery = Annotated[int, Query(ge=1, le=100)]
IdQuery = Annotated[str | None, Query(max_length=64)]
CursorQuery = Annotated[str | None, Query(max_length=512)]


# ---------------------------------------------------------------------------- formatting
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _size(count: int | None) -> str:
    if count is None:
        return NONE
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _when(value: datetime | None) -> str:
    if value is None:
        return NONE
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def _run_seconds(run: Run) -> float | None:
    """How long the command ran (so far, while it runs)."""
    if run.started_at is None:
        return None
    end = run.finished_at or datetime.now(UTC)
    return max(0.0, (end - run.started_at).total_seconds())


templates.env.filters.update(duration=_duration, size=_size, when=_when, clock=_clock)
templates.env.globals.update(run_seconds=_run_seconds, states=[s.value for s in RunState])


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, headers=PAGE_HEADERS)


def _part(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


# ---------------------------------------------------------------------------- pages
@router.get("")
async def ui_home() -> RedirectResponse:
    return RedirectResponse("/ui/runs")


@router.get("/runs")
async def ui_runs(
    request: Request,
    state: StateQuery = None,
    schedule_id: IdQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = PAGE_SIZE,
) -> HTMLResponse:
    return _page(
        request,
        "runs.html",
        nav="runs",
        state=state or None,
        schedule_id=schedule_id or "",
        parts_url="/ui/parts/runs" + _runs_query(state, schedule_id, limit, cursor),
    )


def _runs_query(
    state: str | None, schedule_id: str | None, limit: int, cursor: str | None = None
) -> str:
    """The query string of a runs listing: its filters, page size and page, when set."""
    query = {
        "state": state,
        "schedule_id": schedule_id,
        "limit": limit if limit != PAGE_SIZE else None,
        "cursor": cursor,
    }
    text = urlencode({k: v for k, v in query.items() if v})
    return f"?{text}" if text else ""


@router.get("/runs/{run_id}")
async def ui_run(
    request: Request, run_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
) -> HTMLResponse:
    return _page(request, "run.html", nav="runs", run_id=run_id)


@router.get("/schedules")
async def ui_schedules(request: Request, cursor: CursorQuery = None) -> HTMLResponse:
    parts_url = "/ui/parts/schedules" + (f"?{urlencode({'cursor': cursor})}" if cursor else "")
    return _page(request, "schedules.html", nav="schedules", parts_url=parts_url)


@router.get("/submit")
async def ui_submit(request: Request) -> HTMLResponse:
    return _page(request, "submit.html", nav="submit", values={}, errors={}, summary=[])


# ---------------------------------------------------------------------------- runs
@router.get("/parts/runs")
async def part_runs(
    request: Request,
    runs_service: RunServiceDep,
    schedules: ScheduleServiceDep,
    principal: CurrentPrincipal,
    state: StateQuery = None,
    schedule_id: IdQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = PAGE_SIZE,
) -> HTMLResponse:
    state = state or None
    runs, next_cursor = await runs_service.page(
        states=(state,) if state else (),
        owner=principal.owner_filter,
        schedule_id=schedule_id or None,
        cursor=cursor,
        limit=limit,
    )
    # A run's schedule is its owner's, so the names shown are the viewer's own.
    names = await schedules.names([r.schedule_id for r in runs if r.schedule_id])
    return _part(
        request,
        "parts/runs_table.html",
        runs=runs,
        schedule_names=names,
        older=f"/ui/runs{_runs_query(state, schedule_id, limit, next_cursor)}"
        if next_cursor
        else None,
        first_page=cursor is None,
        newest=f"/ui/runs{_runs_query(state, schedule_id, limit)}",
        show_owner=principal.owner_filter is None,
    )


@router.get("/parts/runs/{run_id}")
async def part_run(request: Request, run: RunFromPath, service: RunServiceDep) -> HTMLResponse:
    return await _run_detail(request, run, service)


@router.post("/parts/runs/{run_id}/cancel")
async def part_cancel_run(
    request: Request, run: RunFromPath, service: RunServiceDep
) -> HTMLResponse:
    return await _run_detail(request, await service.cancel(run.id), service)


async def _run_detail(request: Request, run: Run, service: RunService) -> HTMLResponse:
    events = await service.events(run.id)
    state = RunState(run.state)
    prefix = result_location(run).prefix
    artifacts = [
        {
            "name": a["key"].removeprefix(prefix),
            "size": a["size"],
            "href": f"/v1/runs/{run.id}/artifacts/{quote(a['key'], safe='/')}",
            "filename": a["key"].rpartition("/")[2],
        }
        for a in run.artifacts or []
    ]
    return _part(
        request,
        "parts/run_detail.html",
        status_code=STOP_POLLING if state.terminal else 200,
        run=run,
        state=state,
        timeline=_timeline(events, run),
        artifacts=artifacts,
        cancellable=state in CANCELLABLE,
    )


def _timeline(events: list[RunEvent], run: Run) -> list[dict[str, Any]]:
    """Each state change with how long the run stayed in the state it entered."""
    now = datetime.now(UTC)
    rows = []
    for index, event in enumerate(events):
        later = events[index + 1].at if index + 1 < len(events) else None
        ongoing = later is None and not RunState(run.state).terminal
        end = later or (now if ongoing else None)
        rows.append(
            {
                "event": event,
                "seconds": (end - event.at).total_seconds() if end is not None else None,
                "ongoing": ongoing,
            }
        )
    return rows


# ---------------------------------------------------------------------------- schedules
ScheduleAction = Literal["pause", "resume", "trigger"]


@router.get("/parts/schedules")
async def part_schedules(
    request: Request,
    schedules: ScheduleServiceDep,
    principal: CurrentPrincipal,
    cursor: CursorQuery = None,
) -> HTMLResponse:
    return await _schedules_table(request, schedules, principal.owner_filter, cursor)


@router.post("/parts/schedules/{schedule_id}/{action}")
async def part_schedule_action(
    request: Request,
    schedule: ScheduleFromPath,
    action: Annotated[ScheduleAction, Path()],
    service: ScheduleServiceDep,
    principal: CurrentPrincipal,
    cursor: CursorQuery = None,
) -> HTMLResponse:
    notice: dict[str, str] | None = None
    if action == "pause":
        await service.pause(schedule.id)
    elif action == "resume":
        await service.resume(schedule.id, catch_up=False)
    else:
        run = await service.trigger(schedule.id)
        notice = {"text": f"Run {run.id} queued for {schedule.name}", "href": f"/ui/runs/{run.id}"}
    return await _schedules_table(request, service, principal.owner_filter, cursor, notice=notice)


async def _schedules_table(
    request: Request,
    service: ScheduleService,
    owner: str | None,
    cursor: str | None,
    notice: dict[str, str] | None = None,
) -> HTMLResponse:
    schedules, next_cursor = await service.page(owner=owner, cursor=cursor, limit=PAGE_SIZE)
    latest = await service.runs.latest_of_schedules([s.id for s in schedules])
    rows = [
        {
            "schedule": s,
            "description": describe_cron(s.cron),
            "next": [describe_local(t, s.timezone) for t in upcoming_fires(s, 3)],
            "last_run": latest.get(s.id),
        }
        for s in schedules
    ]
    return _part(
        request,
        "parts/schedules_table.html",
        rows=rows,
        notice=notice,
        cursor=cursor,
        older=f"/ui/schedules?{urlencode({'cursor': next_cursor})}" if next_cursor else None,
        show_owner=owner is None,
    )


# ---------------------------------------------------------------------------- submit
FORM_FIELDS = (
    "command",
    "packages",
    "image",
    "input",
    "output",
    "resources.cpus",
    "resources.memory_mb",
    "timeout_seconds",
)
_SEPARATORS = re.compile(r"[\s,]+")


def _number(text: str, kind: type[int] | type[float]) -> int | float | str:
    """The form's text as a number; unparseable text goes to the API's validation as is, so
    its message is the API's."""
    try:
        return kind(text)
    except ValueError:
        return text


def run_body_from_form(values: dict[str, str], network: bool) -> dict[str, Any]:
    """The JSON body the form stands for: empty fields are left out, as a client would."""
    body: dict[str, Any] = {
        k: values[k] for k in ("command", "image", "input", "output") if values.get(k)
    }
    if packages := [p for p in _SEPARATORS.split(values.get("packages", "")) if p]:
        body["packages"] = packages
    resources: dict[str, Any] = {}
    if cpus := values.get("resources.cpus"):
        resources["cpus"] = _number(cpus, float)
    if memory := values.get("resources.memory_mb"):
        resources["memory_mb"] = _number(memory, int)
    if resources:
        body["resources"] = resources
    if timeout := values.get("timeout_seconds"):
        body["timeout_seconds"] = _number(timeout, int)
    if network:
        body["network"] = True
    return body


def _field_of(path: str) -> str | None:
    """The form field an API error path belongs to ("packages.0" -> "packages")."""
    for name in sorted(FORM_FIELDS, key=len, reverse=True):
        if path == name or path.startswith(f"{name}."):
            return name
    return None


@router.post("/parts/submit")
async def part_submit(
    request: Request, service: RunServiceDep, principal: CurrentPrincipal
) -> Response:
    form = await request.form()
    values = {name: str(form.get(name) or "").strip() for name in FORM_FIELDS}
    values["command"] = str(form.get("command") or "")  # a command's spaces are its own
    network = form.get("network") == "on"
    body = run_body_from_form(values, network)
    try:
        run, _ = await service.create(RunCreate.model_validate(body), None, principal.owner)
    except ValidationError as exc:
        return _form(request, values, network, validation_details(exc.errors()), 422)
    except AppError as exc:
        details = [{"field": exc.field or "", "message": exc.message}]
        return _form(request, values, network, details, exc.status_code)
    # htmx follows HX-Redirect with a full page load: the new run's page.
    return Response(
        status_code=status.HTTP_201_CREATED, headers={"HX-Redirect": f"/ui/runs/{run.id}"}
    )


def _form(
    request: Request,
    values: dict[str, str],
    network: bool,
    details: list[dict[str, str]],
    status_code: int,
) -> HTMLResponse:
    """The form again with the user's values, each message by its field and all of them, as
    the API words them, in the summary on top."""
    errors: dict[str, list[str]] = {}
    for detail in details:
        if (field := _field_of(detail["field"])) is not None:
            errors.setdefault(field, []).append(detail["message"])
    return _part(
        request,
        "parts/submit_form.html",
        status_code=status_code,
        values={**values, "network": network},
        errors=errors,
        summary=[f"{d['field']}: {d['message']}" if d["field"] else d["message"] for d in details],
    )
