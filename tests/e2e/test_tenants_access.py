"""Hostile tenants and hostile web pages against the real service (PostgreSQL, moto's S3, Docker):
auth that fails closed, cross-site and DNS-rebinding requests refused, bucket allow-lists that
fail closed, and readiness answers without exception text. Each service here has a database of
its own, so its key table and runs are nobody else's."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, async_playwright, expect

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


# ------------------------------------------------------------------ 2. cross-site requests
EVIL = "http://evil.example"


def assert_cross_site_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "cross_site_request" and error["field"] == field, error


async def run_ids(client: httpx.AsyncClient) -> set[str]:
    listing = await client.get("/v1/runs", params={"limit": 100})
    assert listing.status_code == 200, listing.text
    return {run["id"] for run in listing.json()["items"]}


async def test_forged_browser_headers_are_refused_and_plain_clients_are_not(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    service = service_factory(pg_s3_env(pg_database, s3_endpoint))  # loopback, no keys
    own = service.base_url
    body = make_run(f"s3://{bucket}/out/")
    legacy = {"s3_bucket": bucket, "command": "echo legacy", "task_id": "t", "exec_id": "e"}
    async with as_(service) as plain:
        target = (
            await plain.post("/v1/runs", json=make_run(f"s3://{bucket}/t/", command="sleep 120"))
        ).json()
        await wait_for_state(plain, target["id"], {"running"})
        before = await run_ids(plain)
        schedule = (
            await plain.post(
                "/v1/schedules",
                json={"name": "keep", "cron": "0 3 * * *", "run": body, "paused": True},
            )
        ).json()

        hostile = [
            ({"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
            ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site"),  # another port of 127.0.0.1
            ({"Origin": EVIL}, "Origin"),
            ({"Origin": "null"}, "Origin"),
            ({"Origin": "http://127.0.0.1:3000"}, "Origin"),
        ]
        for headers, field in hostile:
            assert_cross_site_refused(
                await plain.post("/v1/runs", json=body, headers=headers), field
            )
            assert_cross_site_refused(
                await plain.post(
                    "/v1/runs",
                    content=json.dumps(body),
                    headers={**headers, "Content-Type": "text/plain"},
                ),
                field,
            )
            assert_cross_site_refused(
                await plain.post(f"/v1/runs/{target['id']}/cancel", headers=headers), field
            )
            assert_cross_site_refused(
                await plain.post(f"/ui/parts/runs/{target['id']}/cancel", headers=headers), field
            )
            assert_cross_site_refused(
                await plain.post(
                    "/ui/parts/submit",
                    data={
                        "command": "echo pwned",
                        "output": f"s3://{bucket}/p/",
                        "image": "busybox:latest",
                    },
                    headers=headers,
                ),
                field,
            )
            assert_cross_site_refused(
                await plain.post("/deploy", json=legacy, headers=headers), field
            )
            assert_cross_site_refused(
                await plain.post(
                    "/submit_task", json={**legacy, "cron_expression": "0 3 * * *"}, headers=headers
                ),
                field,
            )
            assert_cross_site_refused(
                await plain.patch(
                    f"/v1/schedules/{schedule['id']}", json={"name": "changed"}, headers=headers
                ),
                field,
            )
            assert_cross_site_refused(
                await plain.delete(f"/v1/schedules/{schedule['id']}", headers=headers), field
            )
            assert_cross_site_refused(
                await plain.post(f"/v1/schedules/{schedule['id']}/trigger", headers=headers), field
            )
        # The dashboard refuses to be loaded by another site at all.
        assert_cross_site_refused(
            await plain.get("/ui/runs", headers={"Sec-Fetch-Site": "cross-site"}), "Sec-Fetch-Site"
        )
        assert_cross_site_refused(
            await plain.get("/ui/parts/runs", headers={"Sec-Fetch-Site": "same-site"}),
            "Sec-Fetch-Site",
        )

        # Nothing was created, cancelled or changed.
        assert await run_ids(plain) == before
        assert (await plain.get(f"/v1/runs/{target['id']}")).json()["state"] == "running"
        kept = await plain.get(f"/v1/schedules/{schedule['id']}")
        assert kept.status_code == 200 and kept.json()["name"] == "keep"
        assert (await plain.get("/v1/schedules")).json()["items"] == [kept.json()]

        # The service's own pages (the dashboard, Swagger UI at /docs) and plain clients.
        same_origin = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
        assert (await plain.get("/ui/runs", headers={"Sec-Fetch-Site": "none"})).status_code == 200
        assert (
            await plain.get("/docs", headers={"Sec-Fetch-Site": "cross-site"})
        ).status_code == 200
        from_docs = await plain.post("/v1/runs", json=body, headers=same_origin)
        assert from_docs.status_code == 202, from_docs.text
        from_curl = await plain.post("/v1/runs", json=body)
        assert from_curl.status_code == 202, from_curl.text
        cancelled = await plain.post(f"/v1/runs/{target['id']}/cancel", headers=same_origin)
        assert cancelled.status_code == 202, cancelled.text
        for created in (from_docs, from_curl, cancelled):
            await wait_for_state(plain, created.json()["id"], TERMINAL)


async def test_requests_for_another_host_name_are_refused(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    """DNS rebinding: a page from evil.example whose name now resolves to 127.0.0.1 sends its
    requests here with its own name in Host."""
    service = service_factory(
        {
            **pg_s3_env(pg_database, s3_endpoint),
            "TASKDEPLOY_ALLOWED_HOSTS": "td.example.com,alt.example.com:8443",
            "TASKDEPLOY_TRUSTED_ORIGINS": "http://127.0.0.1:3000",
        }
    )
    port = service.base_url.rpartition(":")[2]
    async with as_(service) as client:
        before = await run_ids(client)
        for host in (
            f"evil.example:{port}",
            "evil.example",
            "alt.example.com:9000",
            f"0.0.0.0:{port}",
        ):
            for method, path in (("GET", "/v1/runs"), ("GET", "/ui/runs"), ("GET", "/metrics")):
                refused = await client.request(method, path, headers={"Host": host})
                assert refused.status_code == 400, (host, path, refused.text)
                error = refused.json()["error"]
                assert error["code"] == "host_not_allowed" and error["field"] == "Host"
                assert "TASKDEPLOY_ALLOWED_HOSTS" in error["message"]
            posted = await client.post(
                "/v1/runs",
                json=make_run(f"s3://{bucket}/out/"),
                headers={"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"},
            )
            assert posted.status_code == 400, posted.text
            # Probes still answer a kubelet that asks by IP.
            assert (await client.get("/healthz", headers={"Host": host})).status_code == 200
        assert await run_ids(client) == before
        for host in (
            "td.example.com",
            f"TD.example.com:{port}",
            "alt.example.com:8443",
            f"localhost:{port}",
            f"[::1]:{port}",
        ):
            assert (await client.get("/v1/runs", headers={"Host": host})).status_code == 200, host
        # The configured origin may do what a same-site page may not.
        trusted = await client.post(
            "/v1/runs",
            json=make_run(f"s3://{bucket}/out/"),
            headers={"Origin": "http://127.0.0.1:3000", "Sec-Fetch-Site": "same-site"},
        )
        assert trusted.status_code == 202, trusted.text
        await wait_for_state(client, trusted.json()["id"], TERMINAL)


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


# ------------------------------------------------------------------ 2. the same, in a browser
HOSTILE_PAGE = """<!doctype html>
<html><head><title>cute cats</title></head><body>
<form method="post" action="{service}/ui/parts/submit">
  <input name="command" value="echo pwned-by-form">
  <input name="output" value="s3://{bucket}/pwned/"><input name="image" value="busybox:latest">
</form>
<form method="post" action="{service}/v1/runs/{run_id}/cancel"></form>
<form method="post" action="{service}/ui/parts/runs/{run_id}/cancel"></form>
<form method="post" enctype="text/plain" action="{service}/v1/runs">
  <input name='{{"command":"echo pwned-by-text-form","image":"busybox:latest","output":"s3://{bucket}/pwned/","pad":"' value='"}}'>
</form>
<script>
  const service = "{service}", bucket = "{bucket}", runId = "{run_id}";
  const run = {{command: "echo pwned-by-fetch", image: "busybox:latest", output: `s3://${{bucket}}/pwned/`}};
  const legacy = {{s3_bucket: bucket, command: "echo pwned", task_id: "pwned", exec_id: "x"}};
  const text = {{"Content-Type": "text/plain"}};
  const post = (path, init) =>
    fetch(service + path, {{method: "POST", mode: "no-cors", credentials: "include", ...init}})
      .catch(() => null);
  const sent = [
    post("/v1/runs", {{headers: text, body: JSON.stringify(run)}}),
    post("/deploy", {{headers: text, body: JSON.stringify(legacy)}}),
    post("/submit_task", {{headers: text, body: JSON.stringify({{...legacy, cron_expression: "* * * * *"}})}}),
    post(`/v1/runs/${{runId}}/cancel`, {{}}),
    post(`/ui/parts/runs/${{runId}}/cancel`, {{}}),
    post("/ui/parts/submit", {{body: new URLSearchParams({{...run, command: "echo pwned-by-fetch-form"}})}}),
  ];
  // Each form posts into a frame of its own, so this page stays to report.
  const answered = [...document.forms].map((form, index) => new Promise((resolve) => {{
    const frame = document.createElement("iframe");
    frame.name = `sink${{index}}`;
    document.body.append(frame);
    frame.addEventListener("load", resolve, {{once: true}});
    form.target = frame.name;
    form.submit();
  }}));
  Promise.all([...sent, ...answered]).then(() => {{ document.title = "sent"; }});
</script>
</body></html>
"""
REFUSED_PATHS = ("/v1/runs", "/deploy", "/submit_task", "/ui/parts/submit")


@contextlib.contextmanager
def hostile_site(address: str, page: str) -> Iterator[str]:
    """Another origin's web page, served on `address` (a loopback address) by a tiny server."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer((address, 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://{address}:{server.server_address[1]}/"
        finally:
            server.shutdown()
            thread.join(timeout=10)


@pytest.fixture(scope="module")
async def browser(
    chromium_path: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Browser]:
    home = tmp_path_factory.mktemp("chromium")  # Chromium writes here even with a temp profile
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "XDG_CACHE_HOME": str(home)}
    args = [
        # evil.example resolves to this machine, as a rebinding attacker's name would.
        "--host-resolver-rules=MAP evil.example 127.0.0.1 , MAP * ~NOTFOUND , "
        "EXCLUDE 127.0.0.1 , EXCLUDE 127.0.0.2",
        "--component-updater=url-source=http://127.0.0.1:9/",
    ]
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path, args=args, env=env
        )
        yield launched
        await launched.close()


@pytest.mark.parametrize(
    ("with_keys", "hostile_address"),
    [(False, "127.0.0.2"), (False, "127.0.0.1"), (True, "127.0.0.2")],
    ids=["no-keys-cross-site", "no-keys-same-site", "keys-cross-site"],
)
async def test_a_hostile_page_cannot_start_or_cancel_runs_through_the_browser(
    browser: Browser,
    service_factory: Any,
    pg_database: str,
    s3_endpoint: str,
    bucket: str,
    with_keys: bool,
    hostile_address: str,
) -> None:
    service = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_ALLOWED_BUCKETS": bucket}
    )
    token = create_key(service.env, "alice")[0] if with_keys else None
    async with as_(service, token) as owner:
        target = await owner.post(
            "/v1/runs", json=make_run(f"s3://{bucket}/target/", command="sleep 120")
        )
        assert target.status_code == 202, target.text
        run_id = target.json()["id"]
        await wait_for_state(owner, run_id, {"running"})
        before = await run_ids(owner)

    context = await browser.new_context()
    try:
        if token is not None:  # the owner has the dashboard open, with the key, in this browser
            await context.add_init_script(
                f"localStorage.setItem('taskdeploy.apiKey', {json.dumps(token)})"
            )
        dashboard = await context.new_page()
        await dashboard.goto(f"{service.base_url}/ui/runs")
        await expect(dashboard.locator(f"#run-{run_id}")).to_be_visible(timeout=30_000)

        page = HOSTILE_PAGE.format(service=service.base_url, bucket=bucket, run_id=run_id)
        with hostile_site(hostile_address, page) as url:
            attacker = await context.new_page()
            await attacker.goto(url)
            await expect(attacker).to_have_title("sent", timeout=30_000)
        async with as_(service, token) as owner:
            assert await run_ids(owner) == before  # no run started
            assert (await owner.get(f"/v1/runs/{run_id}")).json()["state"] == "running"
            assert (await owner.get("/v1/schedules")).json()["items"] == []
        # The hostile requests did reach the service, and were refused there.
        logged = service.logs()
        for path in (*REFUSED_PATHS, f"/v1/runs/{run_id}/cancel"):
            assert f"refused POST '{path}': cross_site_request" in logged, path

        # A page of the service's own (Swagger UI's /docs) still may.
        docs = await context.new_page()
        assert (await docs.goto(f"{service.base_url}/docs")).status == 200  # type: ignore[union-attr]
        status = await docs.evaluate(
            """async ([body, token]) => {
                const headers = {"Content-Type": "application/json"};
                if (token) headers.Authorization = `Bearer ${token}`;
                const answer = await fetch("/v1/runs", {method: "POST", headers, body});
                return answer.status;
            }""",
            [json.dumps(make_run(f"s3://{bucket}/docs/")), token],
        )
        assert status == 202

        # DNS rebinding: evil.example now resolves here, but the service knows no such name.
        port = service.base_url.rpartition(":")[2]
        rebound = await docs.goto(f"http://evil.example:{port}/ui/runs")
        assert rebound is not None and rebound.status == 400
        assert "host_not_allowed" in await rebound.text()
    finally:
        await context.close()

    async with as_(service, token) as owner:
        created = await run_ids(owner) - before
        assert len(created) == 1, created  # the one from /docs
        cancelled = await owner.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 202
        for created_id in (*created, run_id):
            await wait_for_state(owner, created_id, TERMINAL)
