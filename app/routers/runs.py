"""/v1/runs: submit, list, inspect and cancel one-off runs; read their events, logs and metrics."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app.deps import ContextDep, CurrentPrincipal, RunAtRest, RunFromPath, RunServiceDep
from app.exception_handlers import ERROR_RESPONSES
from app.models import RunState
from app.presenters import present_delivery, present_metrics, present_run
from app.schemas.common import ErrorResponse, Page
from app.schemas.runs import RunCreate, RunEventOut, RunMetricsOut, RunOut
from app.schemas.webhooks import WebhookDeliveryOut

T = TypeVar("T")
router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    responses={200: {"model": RunOut, "description": "Replay of an idempotent request"}},
)
async def create_run(
    body: RunCreate,
    response: Response,
    service: RunServiceDep,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[str | None, Header(max_length=150)] = None,
) -> RunOut:
    """Queue a command to run in a container; returns at once with the queued run."""
    run, created = await service.create(body, idempotency_key, principal.owner)
    response.status_code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/runs/{run.id}"
    return present_run(run)


@router.get("", response_model=Page[RunOut])
async def list_runs(
    service: RunServiceDep,
    principal: CurrentPrincipal,
    state: Annotated[list[RunState] | None, Query(description="filter by state")] = None,
    schedule_id: Annotated[
        str | None, Query(max_length=64, description="only this schedule's runs")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[RunOut]:
    """List runs, newest first, with cursor pagination."""
    runs, next_cursor = await service.page(
        states=state or (),
        owner=principal.owner_filter,
        schedule_id=schedule_id,
        cursor=cursor,
        limit=limit,
    )
    return Page[RunOut](items=[present_run(r) for r in runs], next_cursor=next_cursor)


@router.get("/{run_id}", response_model=RunOut)
async def get_run(run: RunFromPath) -> RunOut:
    """One run with its state, exit code, metrics summary and artifacts."""
    return present_run(run)


# Says how a wait ended: `ended` (the body is the run in its terminal state) or `timeout`.
WAIT_HEADER = "Taskdeploy-Wait"


@router.get(
    "/{run_id}/wait",
    response_model=RunOut,
    responses={
        200: {
            "description": "The run, as GET /v1/runs/{run_id} shows it: terminal, or as it is "
            "when the timeout passed (then not terminal)",
            "headers": {
                WAIT_HEADER: {
                    "description": "`ended`: the run is terminal; `timeout`: it was still going",
                    "schema": {"type": "string", "enum": ["ended", "timeout"]},
                }
            },
        },
        429: {"model": ErrorResponse, "description": "too many waiters (per owner or in all)"},
    },
)
async def wait_for_run(
    run: RunAtRest,
    request: Request,
    response: Response,
    context: ContextDep,
    principal: CurrentPrincipal,
    timeout: Annotated[
        float, Query(gt=0, le=60, description="seconds to wait at most (0 < timeout <= 60)")
    ] = 30,
) -> RunOut:
    """Answers as soon as the run is terminal, or when `timeout` seconds have passed with the run
    as it is then; header `Taskdeploy-Wait` says which (ended | timeout). Holds no database
    connection while it waits; 429 past the waiter limits."""
    terminal = RunState(run.state).terminal
    if not terminal:
        waited = await unless_disconnected(
            request, context.waiters.wait(run.id, principal.owner, timeout)
        )
        if waited is None:
            return present_run(run)  # nobody is listening any more
        run, terminal = waited
    response.headers[WAIT_HEADER] = "ended" if terminal else "timeout"
    return present_run(run)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None as soon as the client disconnects (then `work` is cancelled,
    which gives back whatever it held): a plain endpoint is not cancelled by a disconnect."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result() if task.done() and not task.cancelled() else None


async def _disconnect(request: Request) -> None:
    # A GET's (empty) body comes first; the next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/{run_id}/events", response_model=Page[RunEventOut])
async def list_run_events(run: RunFromPath, service: RunServiceDep) -> Page[RunEventOut]:
    """Every state change of a run, oldest first."""
    events = await service.events(run.id)
    return Page[RunEventOut](items=[RunEventOut.model_validate(e) for e in events])


@router.post("/{run_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=RunOut)
async def cancel_run(run: RunFromPath, service: RunServiceDep) -> RunOut:
    """Cancel a queued, preparing or running run; a running container is killed and harvested."""
    return present_run(await service.cancel(run.id))


@router.get(
    "/{run_id}/logs",
    # A bare Response class: the 200 is declared below, the errors stay JSON.
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
            "description": "the log's bytes; with follow=true a stream that ends with the run",
        },
        429: {"model": ErrorResponse, "description": "too many live-log followers (follow=true)"},
    },
)
async def get_run_logs(
    run: RunAtRest,
    context: ContextDep,
    principal: CurrentPrincipal,
    stream: Annotated[Literal["stdout", "stderr"], Query()] = "stdout",
    follow: Annotated[bool, Query(description="stream new output until the run ends")] = False,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """stdout or stderr: what exists so far (from the container while it runs, from the object
    store after), or followed live as Server-Sent Events or chunked text by Accept header
    (429 past the live-log follower limits)."""
    if not follow:
        body = await context.results.log_so_far(run, stream)
        return Response(content=body, media_type="text/plain; charset=utf-8", headers=NOSNIFF)
    follower = context.live_logs.admit(run.id, principal.owner)
    chunks = context.live_logs.stream(follower, stream)
    if accept and "text/event-stream" in accept:
        return StreamingResponse(
            server_sent_events(chunks), media_type="text/event-stream", headers=NOSNIFF
        )
    return StreamingResponse(chunks, media_type="text/plain; charset=utf-8", headers=NOSNIFF)


# A job's output is served as text, never as whatever a browser would sniff it to be.
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
# A line longer than this is sent as several events, so one line cannot grow a buffer.
MAX_EVENT_LINE_CHARS = 64 * 1024
_LINE_ENDS = re.compile(r"\r\n|\r|\n")


async def server_sent_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """One `data:` event per line, then `end`. SSE ends a line at CR, LF or CRLF, so the
    output is split at all three: a job's CR can neither start a field (`event:`, `id:`,
    `retry:`) nor end an event. A partial last line waits for its end; a line longer than
    MAX_EVENT_LINE_CHARS is sent in pieces."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    after_cr = False  # the last text ended with CR: an LF starting the next one is its CRLF
    async for chunk in chunks:
        text = decoder.decode(chunk)
        if not text:
            continue  # the start of a character split across chunks
        if after_cr and text.startswith("\n"):
            text = text[1:]
        after_cr = text.endswith("\r")
        *lines, pending = _LINE_ENDS.split(pending + text)
        for line in lines:
            yield _event(line)
        while len(pending) > MAX_EVENT_LINE_CHARS:
            yield _event(pending[:MAX_EVENT_LINE_CHARS])
            pending = pending[MAX_EVENT_LINE_CHARS:]
    pending += decoder.decode(b"", final=True)
    if pending:
        yield _event(pending)
    yield b"event: end\ndata: \n\n"


def _event(line: str) -> bytes:
    return b"data: " + line.encode() + b"\n\n"


@router.get("/{run_id}/metrics", response_model=RunMetricsOut)
async def get_run_metrics(run: RunAtRest, context: ContextDep) -> Response | RunMetricsOut:
    """CPU and memory samples with the summary: of a finished run, or so far while it runs
    (`live` true)."""
    live = await context.results.live_metrics_json(run)
    if live is not None:
        # Rendered once for every client asking within a second or so (RunMetricsOut's shape).
        return Response(content=live, media_type="application/json")
    return present_metrics(run, await context.results.metrics(run))


@router.get(
    "/{run_id}/artifacts/{key:path}",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "description": "the artifact's bytes, streamed from the object store",
        }
    },
)
async def download_artifact(
    run: RunAtRest,
    context: ContextDep,
    key: Annotated[str, Path(max_length=1024, description="an artifact key the run lists")],
) -> Response:
    """Download one of the run's artifacts through the service (owner-checked like the run)."""
    chunks = await context.results.open_artifact(run, key)
    filename = quote(key.rpartition("/")[2] or "artifact", safe="")
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/{run_id}/deliveries", response_model=Page[WebhookDeliveryOut])
async def list_run_deliveries(run: RunFromPath, service: RunServiceDep) -> Page[WebhookDeliveryOut]:
    """The run's webhook events and every attempt to deliver them."""
    rows = await service.deliveries(run.id)
    return Page[WebhookDeliveryOut](items=[present_delivery(d, a) for d, a in rows])
