"""Waiting for a run's end through GET /v1/runs/{id}/wait on the real service (Docker, moto's S3,
PostgreSQL): the answer that ends the wait is the run in its terminal state."""

from __future__ import annotations

import time

import httpx

from tests.e2e.harness import TERMINAL, make_run


async def test_a_trivial_run_is_waited_for_until_it_succeeds(
    client: httpx.AsyncClient, bucket: str
) -> None:
    created = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/out/", command="true"))
    assert created.status_code == 202, created.text
    run_id = created.json()["id"]
    answers: list[tuple[str, str]] = []
    deadline = time.monotonic() + 180
    while not answers or answers[-1][0] != "ended":
        assert time.monotonic() < deadline, answers
        waited = await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 30}, timeout=60)
        assert waited.status_code == 200, waited.text
        answers.append((waited.headers["Taskdeploy-Wait"], waited.json()["state"]))
        # A wait that timed out says so, with the run still going.
        assert (answers[-1][0] == "ended") == (answers[-1][1] in TERMINAL), answers
    assert answers[-1] == ("ended", "succeeded"), answers
    assert waited.json() == (await client.get(f"/v1/runs/{run_id}")).json()
    again = await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60})
    assert again.headers["Taskdeploy-Wait"] == "ended"  # a terminal run: at once


async def test_a_wait_that_times_out_answers_the_run_as_it_is(
    client: httpx.AsyncClient, bucket: str
) -> None:
    body = make_run(f"s3://{bucket}/out/", command="sleep 300")
    run_id = (await client.post("/v1/runs", json=body)).json()["id"]
    try:
        waited = await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 0.5})
        assert waited.status_code == 200, waited.text
        assert waited.headers["Taskdeploy-Wait"] == "timeout"
        assert waited.json()["state"] not in TERMINAL
    finally:
        await client.post(f"/v1/runs/{run_id}/cancel")
    cancelled = await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}, timeout=90)
    assert cancelled.json()["state"] in TERMINAL, cancelled.json()
