"""Helpers for e2e tests: the real service as a subprocess on 127.0.0.1, polling with deadlines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

REPO = Path(__file__).resolve().parents[2]
BUSYBOX = "busybox:latest"
DEBIAN = "debian:bookworm-slim"
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One `taskdeploy serve` process and a client for it."""

    base_url: str
    process: subprocess.Popen[bytes]
    instance_id: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def reset_peak_rss(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill of the service."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_service(tmp: Path, env_overrides: dict[str, str]) -> Service:
    port = free_port()
    instance_id = f"e2e-{uuid.uuid4().hex[:10]}"
    data_dir = tmp / instance_id
    data_dir.mkdir(parents=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TASKDEPLOY_") and not k.startswith("AWS_ENDPOINT")
    }
    env.update(
        {
            "TASKDEPLOY_PORT": str(port),
            "TASKDEPLOY_INSTANCE_ID": instance_id,
            "TASKDEPLOY_DATA_DIR": str(data_dir),
            "TASKDEPLOY_ALLOWED_IMAGES": f"{DEBIAN},{BUSYBOX}",
            "TASKDEPLOY_DISPATCH_INTERVAL_SECONDS": "1",
            "TASKDEPLOY_LOG_LEVEL": "INFO",
            "TASKDEPLOY_SHUTDOWN_GRACE_SECONDS": "5",
        }
    )
    env.update(env_overrides)
    return launch_service(env)


def launch_service(env: dict[str, str]) -> Service:
    """Starts `taskdeploy serve` with exactly `env` (a restart passes the old service's env:
    same port, instance id, data dir and database) and waits until it answers."""
    port, instance_id = env["TASKDEPLOY_PORT"], env["TASKDEPLOY_INSTANCE_ID"]
    data_dir = Path(env["TASKDEPLOY_DATA_DIR"])
    log_path = data_dir / "service.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", process, instance_id, log_path, env)
    deadline = time.monotonic() + 60
    # One client for every look: each new httpx client builds a TLS context, which cost
    # more CPU than the service's own start-up when made every 0.1 s.
    with httpx.Client(base_url=service.base_url, timeout=1) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"service exited early:\n{service.logs()}")
            try:
                if client.get("/healthz").status_code == 200:
                    return service
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    service.stop()
    raise AssertionError(f"service did not come up in 60 s:\n{service.logs()}")


async def create_database(postgres_url: str) -> str:
    """A fresh database on the suite's PostgreSQL server; returns its asyncpg URL."""
    name = f"td_{uuid.uuid4().hex[:12]}"
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = postgres_url.rpartition("/")
    return f"{base}/{name}"


def pg_s3_env(database_url: str, s3_endpoint: str) -> dict[str, str]:
    return {
        "TASKDEPLOY_DATABASE_URL": database_url,
        "TASKDEPLOY_OBJECT_STORE": "s3",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


async def wait_for_state(
    client: httpx.AsyncClient, run_id: str, states: set[str], deadline_s: float = 120
) -> dict[str, Any]:
    """Waits until the run is in one of `states` (or fails at the deadline). Terminal states
    are waited for with GET /v1/runs/{id}/wait, which answers the moment the run ends; other
    states (and a wait refused with 429) are polled."""
    deadline = time.monotonic() + deadline_s
    last: dict[str, Any] = {}
    while (left := deadline - time.monotonic()) > 0:
        if states <= TERMINAL:
            # Within the client's own read timeout, whatever the test gave it.
            read_timeout = client.timeout.read or 30.0
            wait = max(0.1, min(left, 10.0, read_timeout - 2.0))
            resp = await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": f"{wait:.1f}"})
            if resp.status_code == 429:
                resp = await client.get(f"/v1/runs/{run_id}")
        else:
            resp = await client.get(f"/v1/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        last = resp.json()
        if last["state"] in states:
            return last
        if last["state"] in TERMINAL:
            raise AssertionError(f"run ended {last['state']} while waiting for {states}: {last}")
        if resp.headers.get("Taskdeploy-Wait") != "timeout":
            await asyncio.sleep(0.1)  # polled, or a short wait the operator's cap cut
    raise AssertionError(f"run {run_id} not in {states} after {deadline_s} s: {last}")


async def run_to_end(
    client: httpx.AsyncClient, body: dict[str, Any], deadline_s: float = 180
) -> dict[str, Any]:
    """Submits a run and waits for its end; then its container must go, too (the service
    removes it right after recording the end)."""
    resp = await client.post("/v1/runs", json=body)
    assert resp.status_code == 202, resp.text
    run = await wait_for_state(client, resp.json()["id"], TERMINAL, deadline_s)
    await containers_gone(run["id"])
    return run


async def containers_gone(run_id: str, deadline_s: float = 30) -> None:
    """Waits until the engine holds no container of the run; fails at the deadline. Asks the
    engine's API directly: a `docker ps` process per look costs more CPU than the look."""
    deadline = time.monotonic() + deadline_s
    filters = json.dumps({"label": [f"taskdeploy.run_id={run_id}"]})
    async with engine_client() as engine:
        while True:
            resp = await engine.get("/containers/json", params={"all": "1", "filters": filters})
            resp.raise_for_status()
            left = [c["Id"][:12] for c in resp.json()]
            if not left:
                return
            assert time.monotonic() < deadline, (
                f"run {run_id} left containers {left} after {deadline_s} s"
            )
            await asyncio.sleep(0.2)


def engine_client() -> httpx.AsyncClient:
    """A client of the local Docker engine's API (DOCKER_HOST when it names a unix socket)."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    assert host.startswith("unix://"), f"the e2e tests drive a local engine, not {host}"
    # A unix socket: no TLS, so no TLS context to build for each client.
    transport = httpx.AsyncHTTPTransport(uds=host.removeprefix("unix://"), verify=False)
    return httpx.AsyncClient(transport=transport, base_url="http://docker", timeout=30)


def make_run(output: str, **overrides: Any) -> dict[str, Any]:
    """A request body for a quick busybox run; override any field."""
    body: dict[str, Any] = {
        "command": "echo hello",
        "image": BUSYBOX,
        "output": output,
        "resources": {"cpus": 1, "memory_mb": 128},
        "timeout_seconds": 60,
    }
    body.update(overrides)
    return body


def docker_ids(*args: str) -> list[str]:
    """Ids printed by a `docker` listing command (e.g. "ps", "-aq", "--filter", "label=x")."""
    out = subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [line for line in out.split() if line]


def get_object(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def keys_under(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Every key under `prefix` with its size."""
    found: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["Size"]
    return found


def cli(service_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=service_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def new_key(service: Service, owner: str, *, admin: bool = False) -> str:
    done = cli(service.env, "keys", "create", "--owner", owner, *(["--admin"] if admin else []))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("td_") and "shown once" in done.stderr
    return token
