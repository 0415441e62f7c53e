"""The dashboard's server side without a browser: form to API body, error placement, templates
(escaping, states), formatting, and the request body cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.bodylimit import BodyLimitMiddleware
from app.errors import validation_details
from app.models import Run, RunEvent, RunState
from app.routers import ui
from app.schemas import RunCreate

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def form(**values: str) -> dict[str, str]:
    return {name: "" for name in ui.FORM_FIELDS} | values


# ------------------------------------------------------------------ form -> body
def test_empty_fields_are_left_out_like_a_client_would() -> None:
    body = ui.run_body_from_form(form(command="echo hi", output="s3://bkt/o/"), network=False)
    assert body == {"command": "echo hi", "output": "s3://bkt/o/"}


def test_every_field_maps_to_the_api_body() -> None:
    values = form(
        command="jq . in.json",
        packages="jq,  curl\nzip",
        image="debian:bookworm-slim",
        input="s3://bkt/in/",
        output="s3://bkt/out/",
        **{"resources.cpus": "0.5", "resources.memory_mb": "256", "timeout_seconds": "60"},
    )
    assert ui.run_body_from_form(values, network=True) == {
        "command": "jq . in.json",
        "packages": ["jq", "curl", "zip"],
        "image": "debian:bookworm-slim",
        "input": "s3://bkt/in/",
        "output": "s3://bkt/out/",
        "resources": {"cpus": 0.5, "memory_mb": 256},
        "timeout_seconds": 60,
        "network": True,
    }
    RunCreate.model_validate(ui.run_body_from_form(values, network=True))  # a valid request


def test_text_in_a_number_field_gets_the_apis_message() -> None:
    body = ui.run_body_from_form(
        form(
            command="x",
            output="s3://bkt/o/",
            **{"resources.cpus": "lots", "timeout_seconds": "1.5"},
        ),
        network=False,
    )
    assert body["resources"] == {"cpus": "lots"} and body["timeout_seconds"] == "1.5"
    with pytest.raises(ValidationError) as refused:
        RunCreate.model_validate(body)
    fields = {d["field"] for d in validation_details(refused.value.errors())}
    assert fields == {"resources.cpus", "timeout_seconds"}


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("packages.1", "packages"),
        ("resources.cpus", "resources.cpus"),
        ("resources", None),
        ("output", "output"),
        ("env", None),
        ("", None),
    ],
)
def test_an_error_path_lands_on_its_form_field(path: str, field: str | None) -> None:
    assert ui._field_of(path) == field


# ------------------------------------------------------------------ formatting
@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "\u2013"),
        (0.04, "0.0 s"),
        (3.25, "3.2 s"),
        (42, "42 s"),
        (125, "2 min 05 s"),
        (3 * 3600 + 7 * 60, "3 h 07 min"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert ui._duration(seconds) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (7 * 1024**2, "7.0 MiB"),
        (3 * 1024**4, "3072.0 GiB"),
    ],
)
def test_size(count: int, text: str) -> None:
    assert ui._size(count) == text


# ------------------------------------------------------------------ templates
def make_run(**overrides: Any) -> Run:
    values: dict[str, Any] = {
        "id": "0f1e2d3c-0000-4000-8000-000000000001",
        "owner": "alice",
        "state": RunState.SUCCEEDED,
        "status_reason": None,
        "command": "echo hi",
        "packages": [],
        "image": "busybox:latest",
        "input_uri": None,
        "output_uri": "s3://bucket/out/",
        "cpus": 1.0,
        "memory_mb": 128,
        "timeout_seconds": 60,
        "network": False,
        "exit_code": 0,
        "oom_killed": False,
        "created_at": T0,
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=4),
        "metrics": {"cpu_seconds": 2.5, "peak_memory_bytes": 7 * 1024**2},
        "artifacts": [],
        "attempt": 1,
        "schedule_id": None,
        "legacy_prefix": None,
        "retry_policy": None,
    }
    values.update(overrides)
    return Run(**values)


def events(*states: str) -> list[RunEvent]:
    return [
        RunEvent(id=i, run_id="r", from_state=None, to_state=s, at=T0 + timedelta(seconds=i))
        for i, s in enumerate(states)
    ]


def render_detail(run: Run, history: list[RunEvent]) -> str:
    state = RunState(run.state)
    return ui.templates.get_template("parts/run_detail.html").render(
        run=run,
        state=state,
        timeline=ui._timeline(history, run),
        artifacts=[],
        cancellable=state in ui.CANCELLABLE,
    )


def test_untrusted_text_is_escaped() -> None:
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    html = render_detail(
        make_run(command=hostile, status_reason=hostile, owner=hostile), events("queued")
    )
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    table = ui.templates.get_template("parts/runs_table.html").render(
        runs=[make_run(command=hostile, schedule_id="s1")],
        schedule_names={"s1": hostile},
        show_owner=True,
        first_page=True,
        older=None,
    )
    assert "<script>" not in table and 'title="&lt;script&gt;' in table
    assert table.count("&lt;script&gt;alert(1)") == 3  # command, its title, the schedule name


def test_cancel_button_only_while_cancellable() -> None:
    for state in RunState:
        html = render_detail(make_run(state=state, finished_at=None), events("queued"))
        assert ("Cancel run" in html) == (state in {"queued", "preparing", "running"}), state


def test_timeline_shows_how_long_each_state_lasted() -> None:
    run = make_run()
    rows = ui._timeline(events("queued", "preparing", "running", "finishing", "succeeded"), run)
    assert [r["seconds"] for r in rows] == [1.0, 1.0, 1.0, 1.0, None]
    assert not any(r["ongoing"] for r in rows)
    running = make_run(state=RunState.RUNNING, finished_at=None)
    last = ui._timeline(events("queued", "running"), running)[-1]
    assert last["ongoing"] and last["seconds"] > 1  # so far, against the clock


# ------------------------------------------------------------------ request body cap
async def echo_size(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


@pytest.fixture
async def capped() -> AsyncIterator[httpx.AsyncClient]:
    app = BodyLimitMiddleware(Starlette(routes=[Route("/", echo_size, methods=["POST"])]), 1000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_body_under_the_cap_passes(capped: httpx.AsyncClient) -> None:
    response = await capped.post("/", content=b"x" * 1000)
    assert response.status_code == 200 and response.json() == {"size": 1000}


async def test_declared_length_over_the_cap_is_refused_unread(capped: httpx.AsyncClient) -> None:
    response = await capped.post("/", content=b"x" * 1001)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "payload_too_large",
        "message": "the request body is over the 1000-byte limit",
        "field": "body",
    }


async def test_chunked_body_over_the_cap_is_cut_off(capped: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 400
            yield b"x" * 400

    response = await capped.post("/", content=chunks())
    assert response.status_code == 413
    assert sent < 100 * 400  # the app stopped reading at the cap
