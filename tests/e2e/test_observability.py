"""Prometheus metrics and JSON logs of the real service."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.e2e.harness import TERMINAL, Service, make_run, pg_s3_env, wait_for_state


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format."""
    wanted = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    )
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in /metrics")


async def test_metrics_and_json_logs(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    service: Service = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_LOG_FORMAT": "json"}
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        ok = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/o"))
        bad = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/o", command="exit 2"))
        for resp in (ok, bad):
            await wait_for_state(client, resp.json()["id"], TERMINAL)
        scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text
    assert metric(text, "taskdeploy_runs_finished_total", state="succeeded") >= 1
    assert metric(text, "taskdeploy_runs_finished_total", state="failed") >= 1
    assert metric(text, "taskdeploy_run_duration_seconds_count") >= 2
    assert metric(text, "taskdeploy_run_phase_seconds_count", phase="running") >= 2
    assert metric(text, "taskdeploy_image_cache_total", result="hit") >= 1
    assert metric(text, "taskdeploy_event_loop_lag_seconds_count") >= 1
    assert "taskdeploy_queue_depth" in text and "taskdeploy_running_executors" in text

    lines = [line for line in service.logs().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r.get("run_id") == ok.json()["id"] for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)
