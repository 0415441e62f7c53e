"""Hostile tenants and hostile web pages against the real service (PostgreSQL, moto's S3, Docker):
auth that fails closed, cross-site and DNS-rebinding requests refused, bucket allow-lists that
fail closed, and readiness answers without exception text. Each service here has a database of
its own, so its key table and runs are nobody else's."""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Service, cli, make_run, pg_s3_env

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
