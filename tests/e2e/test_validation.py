"""Bad input gets a 4xx naming the field, never a 500; idempotency keys replay or conflict."""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import TERMINAL, make_run, wait_for_state

OUT = "s3://some-bucket/out/"


def _body(**overrides: Any) -> dict[str, Any]:
    return {**make_run(OUT), **overrides}


def _without(field: str) -> dict[str, Any]:
    body = _body()
    body.pop(field)
    return body


HOST_CPUS = os.cpu_count() or 1

BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("missing command", _without("command"), "command"),
    ("empty command", _body(command=""), "command"),
    ("blank command", _body(command="   \n"), "command"),
    ("command over 64 KiB", _body(command="x" * (64 * 1024 + 1)), "command"),
    ("package with shell", _body(packages=["jq; rm -rf /"]), "packages.0"),
    ("package with space", _body(packages=["a b"]), "packages.0"),
    ("package with path", _body(packages=["../x"]), "packages.0"),
    ("malformed s3 uri", _body(input="s3://"), "input"),
    ("input not s3", _body(input="http://example.com/in/"), "input"),
    ("output not s3", _body(output="/tmp/out"), "output"),
    ("bad bucket name", _body(output="s3://Bad_Bucket/x/"), "output"),
    ("missing output", _without("output"), "output"),
    ("unknown field", _body(colour="blue"), "colour"),
    ("negative cpus", _body(resources={"cpus": -1}), "resources.cpus"),
    ("too many cpus", _body(resources={"cpus": HOST_CPUS + 1}), "resources.cpus"),
    ("absurd memory", _body(resources={"memory_mb": 10**9}), "resources.memory_mb"),
    ("tiny memory", _body(resources={"memory_mb": 1}), "resources.memory_mb"),
    ("memory as string", _body(resources={"memory_mb": "lots"}), "resources.memory_mb"),
    ("timeout zero", _body(timeout_seconds=0), "timeout_seconds"),
    ("timeout over max", _body(timeout_seconds=10**8), "timeout_seconds"),
    ("timeout as bool", _body(timeout_seconds=True), "timeout_seconds"),
    ("env name not identifier", _body(env={"1BAD": "x"}), "env"),
    ("env name with dash", _body(env={"A-B": "x"}), "env"),
    ("env overrides service var", _body(env={"OUTPUT_DIR": "/"}), "env"),
    ("image not allowed", _body(image="alpine:latest"), "image"),
    ("command with NUL", _body(command="echo a\u0000b"), "command"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in BAD_BODIES], ids=[n for n, _, _ in BAD_BODIES]
)
async def test_bad_request_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    resp = await client.post("/v1/runs", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field, error
    assert error["message"]


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "validation_error"


async def test_unknown_run_is_404(client: httpx.AsyncClient) -> None:
    for path in ("", "/events", "/logs", "/metrics"):
        resp = await client.get(f"/v1/runs/{uuid.uuid4()}{path}")
        assert resp.status_code == 404, path
        assert resp.json()["error"]["code"] == "not_found"
    resp = await client.post(f"/v1/runs/{uuid.uuid4()}/cancel")
    assert resp.status_code == 404


async def test_bad_list_parameters(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/runs", params={"state": "sleeping"})).status_code == 422
    assert (await client.get("/v1/runs", params={"limit": 0})).status_code == 422
    resp = await client.get("/v1/runs", params={"cursor": "garbage!"})
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "cursor"


async def test_idempotency_key_header_replays_or_conflicts(
    client: httpx.AsyncClient, bucket: str
) -> None:
    key = f"k-{uuid.uuid4()}"
    body = make_run(f"s3://{bucket}/o")
    first = await client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202
    again = await client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = await client.post(
        "/v1/runs", json={**body, "command": "echo other"}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 409
    assert other.json()["error"]["field"] == "idempotency_key"
    await wait_for_state(client, first.json()["id"], TERMINAL)


async def test_idempotency_key_field(client: httpx.AsyncClient, bucket: str) -> None:
    body = make_run(f"s3://{bucket}/o", idempotency_key=f"f-{uuid.uuid4()}")
    first = await client.post("/v1/runs", json=body)
    again = await client.post("/v1/runs", json=body)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert (await client.post("/v1/runs", json={**body, "command": "echo x"})).status_code == 409
    await wait_for_state(client, first.json()["id"], TERMINAL)


async def test_logs_before_the_run_starts_are_empty_not_an_error(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    from tests.e2e.harness import pg_s3_env

    idle = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_WORKERS_ENABLED": "false"}
    )
    async with httpx.AsyncClient(base_url=idle.base_url, timeout=30) as c:
        run_id = (await c.post("/v1/runs", json=make_run(f"s3://{bucket}/o"))).json()["id"]
        logs = await c.get(f"/v1/runs/{run_id}/logs")
        assert logs.status_code == 200 and logs.content == b""
        assert (await c.get(f"/v1/runs/{run_id}/metrics")).status_code == 409


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    ops = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"create_run", "list_runs", "get_run", "cancel_run", "get_run_logs"} <= ops
    assert (await client.get("/docs")).status_code == 200
