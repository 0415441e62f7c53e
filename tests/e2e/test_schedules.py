"""Schedules through the real API: firing real runs, policies, bad input, several replicas."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.harness import (
    TERMINAL,
    create_database,
    make_run,
    pg_s3_env,
    wait_for_state,
)


def schedule_body(bucket: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "every-second",
        "cron": "* * * * * *",
        "run": make_run(f"s3://{bucket}/sched/"),
    }
    body.update(overrides)
    return body


async def wait_for_runs(
    client: httpx.AsyncClient, schedule_id: str, count: int, deadline_s: float = 60
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + deadline_s
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        page = await client.get(f"/v1/schedules/{schedule_id}/runs", params={"limit": 200})
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        if len(items) >= count:
            return items
        await asyncio.sleep(0.2)
    raise AssertionError(f"schedule {schedule_id} has {len(items)} runs, expected {count}")


async def test_create_shows_next_fire_times_in_utc_and_local(
    client: httpx.AsyncClient, bucket: str
) -> None:
    body = schedule_body(
        bucket,
        name="nightly-report",
        cron="30 2 * * *",
        timezone="America/New_York",
        concurrency_policy="forbid",
        misfire_policy="run_once",
        starting_deadline_seconds=3600,
    )
    resp = await client.post("/v1/schedules", json=body)
    assert resp.status_code == 201, resp.text
    schedule = resp.json()
    assert resp.headers["location"] == f"/v1/schedules/{schedule['id']}"
    times = [datetime.fromisoformat(t) for t in schedule["next_fire_times"]]
    assert len(times) == 5 and times == sorted(times)
    assert datetime.fromisoformat(schedule["next_fire_at"]) == times[0]
    local = datetime.fromisoformat(schedule["next_fire_at_local"])
    assert (local.hour, local.minute) in {(2, 30), (3, 0)}  # 03:00 on a spring-forward day
    assert local == times[0]
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert (await client.get(f"/v1/schedules/{schedule['id']}")).json()["id"] == schedule["id"]
    listed = (await client.get("/v1/schedules", params={"limit": 200})).json()
    assert schedule["id"] in {s["id"] for s in listed["items"]}

    patched = await client.patch(f"/v1/schedules/{schedule['id']}", json={"cron": "0 4 * * *"})
    assert patched.status_code == 200
    assert datetime.fromisoformat(patched.json()["next_fire_at_local"]).hour == 4

    assert (await client.delete(f"/v1/schedules/{schedule['id']}")).status_code == 204
    assert (await client.get(f"/v1/schedules/{schedule['id']}")).status_code == 404


async def test_fires_real_runs_then_pause_trigger_and_lateness(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    resp = await client.post("/v1/schedules", json=schedule_body(bucket))
    schedule_id = resp.json()["id"]
    runs = await wait_for_runs(client, schedule_id, 2)
    paused = await client.post(f"/v1/schedules/{schedule_id}/pause")
    assert paused.json()["paused"] is True and paused.json()["next_fire_at"] is None
    run = await wait_for_state(client, runs[-1]["id"], TERMINAL)
    assert run["state"] == "succeeded", run
    assert run["schedule_id"] == schedule_id and run["scheduled_for"]
    assert 0 <= run["lateness_seconds"] < 5
    key = f"sched/{run['id']}/stdout.log"
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello\n"
    # (That a paused schedule does not fire is tested with an injected clock in
    # tests/integration/test_scheduler.py.)
    paused_at = datetime.fromisoformat(paused.json()["updated_at"])

    triggered = await client.post(f"/v1/schedules/{schedule_id}/trigger")
    assert triggered.status_code == 202
    assert triggered.json()["schedule_id"] == schedule_id
    assert triggered.json()["scheduled_for"] is None
    done = await wait_for_state(client, triggered.json()["id"], TERMINAL)
    assert done["state"] == "succeeded"

    resumed = await client.post(f"/v1/schedules/{schedule_id}/resume")
    assert resumed.json()["paused"] is False
    assert datetime.fromisoformat(resumed.json()["next_fire_at"]) > paused_at
    await client.post(f"/v1/schedules/{schedule_id}/pause")


async def test_failing_schedule_keeps_firing(client: httpx.AsyncClient, bucket: str) -> None:
    body = schedule_body(bucket, run=make_run(f"s3://{bucket}/f/", command="exit 4"))
    schedule_id = (await client.post("/v1/schedules", json=body)).json()["id"]
    runs = await wait_for_runs(client, schedule_id, 3)
    await client.post(f"/v1/schedules/{schedule_id}/pause")
    finished = [await wait_for_state(client, r["id"], TERMINAL) for r in runs[-2:]]
    assert [r["state"] for r in finished] == ["failed", "failed"]


async def test_forbid_records_skipped_fires(client: httpx.AsyncClient, bucket: str) -> None:
    body = schedule_body(
        bucket,
        concurrency_policy="forbid",
        run=make_run(f"s3://{bucket}/f/", command="sleep 60"),
    )
    schedule_id = (await client.post("/v1/schedules", json=body)).json()["id"]
    deadline = time.monotonic() + 30
    fires: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(fires) < 2:
        fires = (await client.get(f"/v1/schedules/{schedule_id}/fires")).json()["items"]
        await asyncio.sleep(0.2)
    await client.post(f"/v1/schedules/{schedule_id}/pause")
    assert len(fires) >= 2
    assert all(f["outcome"] == "skipped" and "still" in f["reason"] for f in fires)
    runs = (await client.get(f"/v1/schedules/{schedule_id}/runs")).json()["items"]
    assert len(runs) == 1
    await client.post(f"/v1/runs/{runs[0]['id']}/cancel")
    await wait_for_state(client, runs[0]["id"], TERMINAL)


BAD_SCHEDULES: list[tuple[str, dict[str, Any], str]] = [
    ("minute out of range", {"cron": "61 * * * *"}, "cron"),
    ("three fields", {"cron": "* * *"}, "cron"),
    ("words", {"cron": "hello"}, "cron"),
    ("never fires", {"cron": "0 0 31 2 *"}, "cron"),
    ("seven fields", {"cron": "* * * * * * *"}, "cron"),
    ("unknown time zone", {"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ("bad concurrency policy", {"concurrency_policy": "sometimes"}, "concurrency_policy"),
    ("bad misfire policy", {"misfire_policy": "later"}, "misfire_policy"),
    ("negative deadline", {"starting_deadline_seconds": -1}, "starting_deadline_seconds"),
    (
        "bad package in template",
        {"run": {**make_run("s3://b-1/o/"), "packages": ["a b"]}},
        "run.packages.0",
    ),
    (
        "image not allowed in template",
        {"run": {**make_run("s3://b-1/o/"), "image": "alpine:3"}},
        "run.image",
    ),
    ("template without command", {"run": {"output": "s3://b-1/o/"}}, "run.command"),
    ("missing name", {"name": ""}, "name"),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(o, f) for _, o, f in BAD_SCHEDULES],
    ids=[n for n, _, _ in BAD_SCHEDULES],
)
async def test_bad_schedule_is_422_naming_the_field(
    client: httpx.AsyncClient, overrides: dict[str, Any], field: str
) -> None:
    resp = await client.post("/v1/schedules", json=schedule_body("b-1", **overrides))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field, resp.json()


@pytest.mark.slow
async def test_three_replicas_fire_each_time_exactly_once(
    service_factory: Any, postgres_url: str, s3_endpoint: str
) -> None:
    """50 schedules firing every second for 30 s on three service processes sharing one
    PostgreSQL: exactly one run per (schedule, fire time), no duplicate, no gap."""
    database = await create_database(postgres_url)
    env = {**pg_s3_env(database, s3_endpoint), "TASKDEPLOY_DISPATCHER_ENABLED": "false"}
    replicas = [service_factory(env) for _ in range(3)]
    async with httpx.AsyncClient(base_url=replicas[0].base_url, timeout=30) as client:
        ids = []
        for i in range(50):
            resp = await client.post(
                "/v1/schedules", json=schedule_body("replica-bucket", name=f"s{i}")
            )
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        started = time.monotonic()
        while time.monotonic() - started < 30:
            await asyncio.sleep(1)
        for schedule_id in ids:
            assert (await client.post(f"/v1/schedules/{schedule_id}/pause")).status_code == 200

    conn = await asyncpg.connect(database.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT schedule_id, scheduled_for FROM runs ORDER BY scheduled_for"
        )
    finally:
        await conn.close()
    by_schedule: dict[str, list[datetime]] = {}
    for row in rows:
        by_schedule.setdefault(row["schedule_id"], []).append(row["scheduled_for"])
    assert set(by_schedule) == set(ids)
    for schedule_id, times in by_schedule.items():
        assert len(times) == len(set(times)), f"duplicate fire for {schedule_id}"
        span = int((times[-1] - times[0]).total_seconds()) + 1
        assert len(times) == span, f"gap in the fires of {schedule_id}"
        assert len(times) >= 27, (schedule_id, len(times))
