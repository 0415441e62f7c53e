"""Webhooks with a real HTTP receiver on 127.0.0.1: events signed with the owner's secret,
retries with backoff, final 4xx, every attempt recorded, and a pending delivery that survives
a restart. Hostile tenants' webhooks: test_tenants_webhooks.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    TERMINAL,
    Service,
    free_port,
    launch_service,
    make_run,
    pg_s3_env,
    wait_for_state,
)

SECRET = "webhook-test-secret"


class Receiver:
    """Answers `statuses` in turn (then 200) and keeps every request it got."""

    def __init__(self, statuses: list[int], port: int | None = None) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The README's verification, as a receiver would write it: any v1 entry may match."""
    fields = [item.split("=", 1) for item in headers["X-Taskdeploy-Signature"].split(",")]
    timestamp = dict(fields)["t"]
    assert abs(time.time() - int(timestamp)) < 300
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return any(
        hmac.compare_digest(value, expected.hexdigest()) for key, value in fields if key == "v1"
    )


@pytest.fixture
def hooked(service_factory: Any, pg_database: str, s3_endpoint: str) -> Service:
    env = {
        **pg_s3_env(pg_database, s3_endpoint),
        "TASKDEPLOY_WEBHOOK_SECRET": SECRET,
        "TASKDEPLOY_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
    }
    return service_factory(env)  # type: ignore[no-any-return]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver([503, 503])
    yield hook
    hook.close()


async def _deliveries(client: httpx.AsyncClient, run_id: str, status: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = (await client.get(f"/v1/runs/{run_id}/deliveries")).json()["items"]
        if items and all(d["status"] == status for d in items):
            return items
        await asyncio.sleep(0.2)
    raise AssertionError(f"deliveries never became {status}: {items}")


async def test_signed_event_retried_until_delivered(
    hooked: Service, receiver: Receiver, bucket: str
) -> None:
    async with httpx.AsyncClient(base_url=hooked.base_url, timeout=30) as client:
        body = make_run(f"s3://{bucket}/o", callback_url=receiver.url)
        run = await wait_for_state(
            client, (await client.post("/v1/runs", json=body)).json()["id"], TERMINAL
        )
        deliveries = await _deliveries(client, run["id"], "delivered")
        owner_secret = (await client.get("/v1/webhooks/secret")).json()["secret"]
    assert len(deliveries) == 1
    delivery = deliveries[0]
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 200]
    assert all(a["latency_ms"] >= 0 for a in delivery["attempts"])
    assert len(receiver.requests) == 3
    ids = set()
    for headers, raw in receiver.requests:
        # The run's own callback_url: signed with its owner's secret, not the operator's.
        assert verify(owner_secret, headers, raw) and not verify(SECRET, headers, raw)
        event = json.loads(raw)
        ids.add((event["id"], headers["X-Taskdeploy-Event-Id"]))
        assert event["type"] == "run.succeeded"
        assert event["data"]["id"] == run["id"] and event["data"]["state"] == "succeeded"
    assert ids == {(delivery["id"], delivery["id"])}  # one stable event id for de-duplication


async def test_a_final_4xx_is_not_retried(hooked: Service, bucket: str) -> None:
    hook = Receiver([400])
    try:
        async with httpx.AsyncClient(base_url=hooked.base_url, timeout=30) as client:
            body = make_run(f"s3://{bucket}/o", command="exit 5", callback_url=hook.url)
            run_id = (await client.post("/v1/runs", json=body)).json()["id"]
            await wait_for_state(client, run_id, TERMINAL)
            (delivery,) = await _deliveries(client, run_id, "failed")
        assert [a["status_code"] for a in delivery["attempts"]] == [400]
        assert json.loads(hook.requests[0][1])["type"] == "run.failed"
    finally:
        hook.close()


async def test_pending_delivery_survives_a_restart(hooked: Service, bucket: str) -> None:
    port = free_port()  # nothing listens yet: attempts fail with connection errors
    async with httpx.AsyncClient(base_url=hooked.base_url, timeout=30) as client:
        body = make_run(f"s3://{bucket}/o", callback_url=f"http://127.0.0.1:{port}/hook")
        run_id = (await client.post("/v1/runs", json=body)).json()["id"]
        await wait_for_state(client, run_id, TERMINAL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            (pending,) = (await client.get(f"/v1/runs/{run_id}/deliveries")).json()["items"]
            if pending["attempts"]:
                break
            await asyncio.sleep(0.2)
    assert pending["status"] == "pending" and pending["attempts"][0]["error"]
    hooked.kill()
    hook = Receiver([], port=port)
    restarted = await asyncio.to_thread(launch_service, dict(hooked.env))
    try:
        async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as client:
            (delivered,) = await _deliveries(client, run_id, "delivered")
        assert delivered["id"] == pending["id"]
        assert json.loads(hook.requests[-1][1])["id"] == pending["id"]
    finally:
        restarted.stop()
        hook.close()


async def test_private_callback_urls_are_refused_by_default(
    client: httpx.AsyncClient, bucket: str
) -> None:
    for url in (
        "http://127.0.0.1:9/x",
        "http://10.1.2.3/x",
        "http://localhost/x",
        "http://[::1]/x",
    ):
        resp = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/o", callback_url=url))
        assert resp.status_code == 403, (url, resp.text)
        assert resp.json()["error"]["field"] == "callback_url"
    bad = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/o", callback_url="ftp://x/"))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "callback_url"
