"""Webhooks between hostile tenants, on the real service (PostgreSQL, S3, Docker): bad callback
URLs refused at submission and at start-up."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.e2e.harness import (
    cli,
    make_run,
)

RECEIVER_HOST = "127.0.0.2"
ALLOWED = {"TASKDEPLOY_WEBHOOK_ALLOWED_CIDRS": f"{RECEIVER_HOST}/32"}


# --------------------------------------------------------------------------- submission
BAD_URLS = {
    "tab": "http://hooks.example.com/\tx",
    "newline": "http://hooks.example.com/x\n",
    "space": "http://hooks.example.com/a b",
    "carriage return": "http://hooks.example.com/\rx",
    "tab in the host": "http://hooks\t.example.com/",
    "line separator": "http://hooks.example.com/\u2028",
    "credentials": "http://user:pw@hooks.example.com/",
    "bad port": "http://hooks.example.com:99999/",
    "no host": "http:///x",
}


async def test_bad_callback_urls_are_a_422_naming_the_field(
    client: httpx.AsyncClient, bucket: str
) -> None:
    schedule = await client.post(
        "/v1/schedules",
        json={"name": "ok", "cron": "0 3 * * *", "run": make_run(f"s3://{bucket}/o")},
    )
    assert schedule.status_code == 201, schedule.text
    for what, url in BAD_URLS.items():
        run = make_run(f"s3://{bucket}/o", callback_url=url)
        resp = await client.post("/v1/runs", json=run)
        assert resp.status_code == 422, (what, resp.text)
        assert resp.json()["error"]["field"] == "callback_url", (what, resp.text)
        template = {"name": "s", "cron": "0 3 * * *", "run": run}
        made = await client.post("/v1/schedules", json=template)
        assert made.status_code == 422, (what, made.text)
        assert made.json()["error"]["field"] == "run.callback_url", (what, made.text)
        changed = await client.patch(f"/v1/schedules/{schedule.json()['id']}", json={"run": run})
        assert changed.status_code == 422, (what, changed.text)
        assert changed.json()["error"]["field"] == "run.callback_url"


def test_the_operator_webhook_url_is_checked_at_start_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDEPLOY_")}
    env["TASKDEPLOY_DATA_DIR"] = str(tmp_path)
    for settings, expected in (
        ({"TASKDEPLOY_WEBHOOK_URL": "http://hooks.example.com/\tx"}, "U+0009"),
        ({"TASKDEPLOY_WEBHOOK_URL": "http://127.0.0.1:9/x"}, "loopback"),
        ({"TASKDEPLOY_WEBHOOK_URL": "http://10.0.0.1/x", **ALLOWED}, "private"),
        ({"TASKDEPLOY_WEBHOOK_ALLOWED_CIDRS": "127.0.0.2/8"}, "CIDR"),
    ):
        done = cli({**env, **settings}, "serve")
        assert done.returncode == 2, (settings, done.stdout, done.stderr)
        variable = next(iter(settings))
        assert f"taskdeploy: {variable}" in done.stderr and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
