"""Hostile tenants and hostile web pages against the real service (PostgreSQL, moto's S3, Docker):
auth that fails closed, cross-site and DNS-rebinding requests refused, bucket allow-lists that
fail closed, and readiness answers without exception text. Each service here has a database of
its own, so its key table and runs are nobody else's."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    REPO,
    TERMINAL,
    Service,
    cli,
    free_port,
    make_run,
    pg_s3_env,
    wait_for_state,
)

pytestmark = pytest.mark.e2e

# The service cached "are there keys?" for 5 s before it failed closed: every window below that
# asserts "still refused" lasts longer than that.
OLD_KEY_CACHE_SECONDS = 5.0


def as_(service: Service, token: str | None = None, **headers: str) -> httpx.AsyncClient:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(base_url=service.base_url, headers=headers, timeout=30)


def database_env(database: str, s3_endpoint: str, tmp_path: Any) -> dict[str, str]:
    """What the CLI needs to work on a service's database before the service starts."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TASKDEPLOY_") and not k.startswith("AWS_ENDPOINT")
    }
    return {**env, **pg_s3_env(database, s3_endpoint), "TASKDEPLOY_DATA_DIR": str(tmp_path)}


def create_key(env: dict[str, str], owner: str, *, admin: bool = False) -> tuple[str, str]:
    """(token, key id) of a new key made with the CLI."""
    done = cli(env, "keys", "create", "--owner", owner, *(["--admin"] if admin else []))
    assert done.returncode == 0, done.stderr
    found = re.search(r"^key (\S+) for ", done.stderr, re.MULTILINE)
    assert found, done.stderr
    return done.stdout.strip(), found.group(1)


def revoke_key(env: dict[str, str], key_id: str) -> None:
    done = cli(env, "keys", "revoke", key_id)
    assert done.returncode == 0, done.stderr


async def assert_refused_for(service: Service, seconds: float, token: str | None = None) -> int:
    """Asserts that reading and creating runs stays refused (401) for `seconds`; returns how
    many requests were tried."""
    tried = 0
    deadline = time.monotonic() + seconds
    async with as_(service, token) as client:
        while time.monotonic() < deadline:
            listing = await client.get("/v1/runs")
            assert listing.status_code == 401, (tried, listing.text)
            created = await client.post("/v1/runs", json=make_run("s3://any-bucket/out/"))
            assert created.status_code == 401, (tried, created.text)
            tried += 2
            await asyncio.sleep(0.25)
    return tried


# ------------------------------------------------------------------ 1. auth fails closed
async def test_revoking_the_last_key_of_an_exposed_service_keeps_auth_on(
    service_factory: Any, pg_database: str, s3_endpoint: str, tmp_path: Any
) -> None:
    env = database_env(pg_database, s3_endpoint, tmp_path)
    token, key_id = create_key(env, "ops", admin=True)
    # Listening on every address; the test itself talks to 127.0.0.1 only.
    service = service_factory(
        {
            **pg_s3_env(pg_database, s3_endpoint),
            "TASKDEPLOY_HOST": "0.0.0.0",
            "TASKDEPLOY_ALLOWED_BUCKETS": "tenants-bucket",
        }
    )
    async with as_(service) as anonymous, as_(service, token) as ops:
        assert (await anonymous.get("/v1/runs")).status_code == 401
        assert (await ops.get("/v1/runs")).status_code == 200

    revoke_key(service.env, key_id)
    # No key is active now: the service must not fall back to "no keys, so everyone is admin".
    tried = await assert_refused_for(service, OLD_KEY_CACHE_SECONDS + 1.5)
    assert tried >= 10
    await assert_refused_for(service, 0.5, token)  # the revoked key itself
    async with as_(service) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200


async def test_loopback_auto_closes_at_the_first_key_and_stays_closed_after_revoking(
    service_factory: Any, pg_database: str, s3_endpoint: str
) -> None:
    service = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_ALLOWED_BUCKETS": "tenants-bucket"}
    )
    async with as_(service) as anonymous:
        # No key was ever made: the caller is the machine's own user, an admin.
        assert (await anonymous.get("/v1/runs")).status_code == 200
    token, key_id = create_key(service.env, "alice")
    # A new connection: the CLI may take longer than the server's keep-alive.
    async with as_(service) as anonymous:
        # The very next request, not some seconds later: no stale "no keys" answer.
        closed = await anonymous.get("/v1/runs")
        assert closed.status_code == 401, closed.text
        assert closed.json()["error"]["code"] == "unauthorized"
    async with as_(service, token) as alice:
        assert (await alice.get("/v1/runs")).status_code == 200

    revoke_key(service.env, key_id)
    await assert_refused_for(service, OLD_KEY_CACHE_SECONDS + 1.5)

    # Nobody can mint the local user's identity as a key.
    reserved = cli(service.env, "keys", "create", "--owner", "local")
    assert reserved.returncode == 2 and "reserved" in reserved.stderr


# ------------------------------------------------------------------ 3. allow-lists fail closed
def serve_once(env: dict[str, str], seconds: float = 30) -> subprocess.CompletedProcess[str]:
    """`taskdeploy serve` expected to refuse to start (it would otherwise run until killed)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=REPO,
        env={**env, "TASKDEPLOY_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=seconds,
    )


async def test_keys_without_a_bucket_allow_list_refuse_to_start(
    service_factory: Any, pg_database: str, s3_endpoint: str, tmp_path: Any, bucket: str
) -> None:
    env = database_env(pg_database, s3_endpoint, tmp_path)
    token, _ = create_key(env, "alice")
    refused = serve_once(env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "TASKDEPLOY_ALLOWED_BUCKETS is empty" in refused.stderr

    # Saying "any bucket" on purpose is allowed, and then means it.
    service = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_ALLOWED_BUCKETS": "*"}
    )
    async with as_(service, token) as alice:
        created = await alice.post("/v1/runs", json=make_run(f"s3://{bucket}/out/"))
        assert created.status_code == 202, created.text
        assert (await wait_for_state(alice, created.json()["id"], TERMINAL))["state"] == "succeeded"


async def test_an_owner_with_an_empty_bucket_list_gets_no_bucket(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    service = service_factory(
        {
            **pg_s3_env(pg_database, s3_endpoint),
            "TASKDEPLOY_ALLOWED_BUCKETS": bucket,
            "TASKDEPLOY_ALLOWED_BUCKETS_BY_OWNER": '{"carol": []}',
        }
    )
    carol, _ = create_key(service.env, "carol")
    dave, _ = create_key(service.env, "dave")
    async with as_(service, carol) as client:
        for uri in (f"s3://{bucket}/out/", "s3://some-other-bucket/out/"):
            refused = await client.post("/v1/runs", json=make_run(uri))
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert error["field"] == "output"
            assert "'carol' may use no bucket" in error["message"]
            assert "TASKDEPLOY_ALLOWED_BUCKETS_BY_OWNER" in error["message"]
        schedule = await client.post(
            "/v1/schedules",
            json={"name": "s", "cron": "0 3 * * *", "run": make_run(f"s3://{bucket}/s/")},
        )
        assert schedule.status_code == 403, schedule.text
        assert (await client.get("/v1/runs")).json()["items"] == []
    async with as_(service, dave) as client:  # not listed per owner: the global list
        created = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/out/"))
        assert created.status_code == 202, created.text
        await wait_for_state(client, created.json()["id"], TERMINAL)


async def test_keys_made_while_running_need_a_bucket_allow_list(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    service = service_factory(pg_s3_env(pg_database, s3_endpoint))
    async with as_(service) as local:
        # The embedded default: no key, no allow-list, and the machine's user may use any bucket.
        created = await local.post("/v1/runs", json=make_run(f"s3://{bucket}/out/"))
        assert created.status_code == 202, created.text
        await wait_for_state(local, created.json()["id"], TERMINAL)
        ready = await local.get("/readyz")
        assert ready.json()["checks"]["allowed_buckets"] == "ok", ready.text

    token, _ = create_key(service.env, "dave")
    async with as_(service, token) as dave:
        refused = await dave.post("/v1/runs", json=make_run(f"s3://{bucket}/out/"))
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["field"] == "output"
        assert "TASKDEPLOY_ALLOWED_BUCKETS" in refused.json()["error"]["message"]
        assert (await dave.get("/v1/runs")).json()["items"] == []
        ready = await dave.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["allowed_buckets"] == "error: not_configured"


# ------------------------------------------------------------------ 4. readiness
READINESS_VALUES = {"ok", "stale", "error", "error: timeout", "error: not_configured"}


async def test_readyz_names_failing_checks_without_their_exception_text(
    service_factory: Any, pg_database: str, tmp_path: Any
) -> None:
    missing_socket = tmp_path / "no-docker-here.sock"
    service = service_factory(
        {
            **pg_s3_env(pg_database, "http://127.0.0.1:9"),  # nothing listens on port 9
            "TASKDEPLOY_DOCKER_URL": f"unix://{missing_socket}",
        }
    )
    async with as_(service) as client:
        answer = await client.get("/readyz")
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["docker"] == "error"
    assert checks["object_store"] in {"error", "error: timeout"}
    assert set(checks.values()) <= READINESS_VALUES, checks
    for leak in ("no-docker-here", "127.0.0.1:9", "Error", "Exception", "Traceback"):
        assert leak not in answer.text, answer.text
    # The operator still learns what failed, from the service's log.
    logged = service.logs()
    assert "readiness check docker failed" in logged and "no-docker-here.sock" in logged
