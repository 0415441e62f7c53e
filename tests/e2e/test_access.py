"""Access control through the real API: API keys made with the CLI, owners who cannot see each
other's runs and schedules, revocation, the bucket allow-list, and refusing to expose the
service without keys."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    TERMINAL,
    Service,
    cli,
    create_database,
    make_run,
    new_key,
    pg_s3_env,
    wait_for_state,
)


def as_(service: Service, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=service.base_url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
async def secured(module_services: Any, postgres_url: str, s3_endpoint: str) -> Service:
    database = await create_database(postgres_url)
    env = pg_s3_env(database, s3_endpoint)
    env["TASKDEPLOY_ALLOWED_BUCKETS"] = "shared-bucket,alice-bucket"
    env["TASKDEPLOY_ALLOWED_BUCKETS_BY_OWNER"] = '{"bob": ["shared-bucket"]}'
    return module_services(env)  # type: ignore[no-any-return]


async def test_keys_owners_and_isolation(secured: Service, s3_client: Any) -> None:
    for name in ("shared-bucket", "alice-bucket"):
        with contextlib.suppress(s3_client.exceptions.BucketAlreadyOwnedByYou):
            s3_client.create_bucket(Bucket=name)
    alice, bob, admin = (
        new_key(secured, "alice"),
        new_key(secured, "bob"),
        new_key(secured, "ops", admin=True),
    )
    listed = cli(secured.env, "keys", "list")
    assert listed.returncode == 0 and alice not in listed.stdout  # tokens are never shown again

    async with as_(secured, None) as anonymous:
        # Keys exist: the loopback service now requires one (re-checked within seconds).
        missing = await anonymous.get("/v1/runs")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert (await anonymous.get("/healthz")).status_code == 200
    async with as_(secured, "td_not-a-real-key") as forged:
        assert (await forged.get("/v1/runs")).status_code == 401

    body = make_run("s3://shared-bucket/out/", command="echo secret-of-alice")
    async with as_(secured, alice) as a, as_(secured, bob) as b, as_(secured, admin) as ops:
        run = (await a.post("/v1/runs", json=body)).json()
        assert run["owner"] == "alice"
        done = await wait_for_state(a, run["id"], TERMINAL)
        assert done["state"] == "succeeded"
        schedule = (
            await a.post(
                "/v1/schedules",
                json={"name": "a", "cron": "0 3 * * *", "run": body, "paused": True},
            )
        ).json()

        # Bob gets 404 for each of alice's things, exactly like for things that do not exist.
        for path in (
            f"/v1/runs/{run['id']}",
            f"/v1/runs/{run['id']}/events",
            f"/v1/runs/{run['id']}/logs",
            f"/v1/runs/{run['id']}/metrics",
            f"/v1/schedules/{schedule['id']}",
            f"/v1/schedules/{schedule['id']}/runs",
        ):
            assert (await b.get(path)).status_code == 404, path
        assert (await b.post(f"/v1/runs/{run['id']}/cancel")).status_code == 404
        assert (await b.post(f"/v1/schedules/{schedule['id']}/trigger")).status_code == 404
        assert (await b.delete(f"/v1/schedules/{schedule['id']}")).status_code == 404
        assert run["id"] not in {r["id"] for r in (await b.get("/v1/runs")).json()["items"]}
        assert (await b.get("/v1/schedules")).json()["items"] == []

        # Alice sees hers; the admin sees everyone's.
        assert (await a.get(f"/v1/runs/{run['id']}/logs")).text == "secret-of-alice\n"
        all_runs = (await ops.get("/v1/runs", params={"limit": 200})).json()["items"]
        assert run["id"] in {r["id"] for r in all_runs}
        assert (await ops.get(f"/v1/schedules/{schedule['id']}")).status_code == 200

        # The same idempotency key in two owners' hands makes two runs, not a leak or a 409.
        key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        first = await a.post("/v1/runs", json=body, headers=key)
        second = await b.post("/v1/runs", json=body, headers=key)
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.json()["id"] != second.json()["id"]
        assert second.json()["idempotency_key"] == key["Idempotency-Key"]
        for created, client in ((first, a), (second, b)):
            await wait_for_state(client, created.json()["id"], TERMINAL)

        # Bucket allow-list: global, and narrower for bob.
        refused = await a.post("/v1/runs", json=make_run("s3://other-bucket/out/"))
        assert refused.status_code == 403
        assert refused.json()["error"]["field"] == "output"
        bob_refused = await b.post("/v1/runs", json={**body, "input": "s3://alice-bucket/in/"})
        assert bob_refused.status_code == 403 and bob_refused.json()["error"]["field"] == "input"
        allowed = await a.post("/v1/runs", json={**body, "input": "s3://alice-bucket/in/"})
        assert allowed.status_code == 202
        await wait_for_state(a, allowed.json()["id"], TERMINAL)

    # Revoked keys stop working at once.
    key_id = next(
        line.split()[0]
        for line in cli(secured.env, "keys", "list").stdout.splitlines()
        if " bob " in f" {line} "
    )
    assert cli(secured.env, "keys", "revoke", key_id).returncode == 0
    async with as_(secured, bob) as b:
        assert (await b.get("/v1/runs")).status_code == 401


def test_refuses_to_listen_beyond_loopback_without_keys(tmp_path: Any) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TASKDEPLOY_DATA_DIR": str(tmp_path),
        "TASKDEPLOY_HOST": "0.0.0.0",
        "TASKDEPLOY_PORT": "1",  # never reached: the check comes first
    }
    done = cli(env, "serve")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in done.stderr
    disabled = cli({**env, "TASKDEPLOY_AUTH": "disabled"}, "serve")
    assert disabled.returncode == 2 and "TASKDEPLOY_AUTH=disabled" in disabled.stderr


def test_openapi_declares_the_bearer_scheme(secured: Service) -> None:
    spec = httpx.get(f"{secured.base_url}/openapi.json", timeout=10).json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    create = spec["paths"]["/v1/runs"]["post"]
    assert create["security"] and "401" in create["responses"]
