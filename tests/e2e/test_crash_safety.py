"""Crash safety with real processes and real kills: SIGKILL the service in each phase of a
run, start it again, and check that the run ends truthfully with every artifact in place,
nothing duplicated and nothing left on the Docker host. Both databases."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    DEBIAN,
    TERMINAL,
    Service,
    containers_gone,
    docker_ids,
    launch_service,
    make_run,
    pg_s3_env,
    wait_for_state,
)

# Short leases so a killed instance's runs are recovered within seconds.
FAST_RECOVERY = {
    "TASKDEPLOY_LEASE_SECONDS": "3",
    "TASKDEPLOY_RECONCILE_INTERVAL_SECONDS": "1",
}
BIG = 64 * 1000 * 1000


def fault_log() -> Path:
    """One JSON line per kill, printed as the fault suite's summary (tests/e2e/conftest.py).
    A file, so that the summary sees the kills of every xdist worker: it is named after the
    process that prints the summary (the workers' parent, or pytest itself)."""
    printer = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
    return Path(tempfile.gettempdir()) / f"taskdeploy-faults-{printer}.jsonl"


class Objects:
    """The bucket, whichever store the service uses (S3 or the local directory)."""

    def __init__(self, s3: Any | None, bucket: str, root: Path | None) -> None:
        self.s3, self.bucket, self.root = s3, bucket, root

    def put(self, key: str, data: bytes) -> None:
        if self.s3 is not None:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        else:
            assert self.root is not None
            path = self.root / self.bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def keys(self, prefix: str) -> dict[str, int]:
        if self.s3 is not None:
            found: dict[str, int] = {}
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
            return found
        assert self.root is not None
        base = self.root / self.bucket
        return {
            str(p.relative_to(base)): p.stat().st_size
            for p in (base / prefix).rglob("*")
            if p.is_file()
        }

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        if self.s3 is not None:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
        else:
            assert self.root is not None
            with (self.root / self.bucket / key).open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    def read(self, key: str) -> bytes:
        if self.s3 is not None:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]
        assert self.root is not None
        return (self.root / self.bucket / key).read_bytes()


@pytest.fixture
def setup(
    request: pytest.FixtureRequest,
    service_factory: Any,
    pg_database: str,
    s3_endpoint: str,
    s3_client: Any,
) -> tuple[Callable[..., Service], Callable[[str], Objects]]:
    """(start a service with extra settings, the bucket as that service sees it)."""

    def start(**extra: str) -> Service:
        env = {**FAST_RECOVERY, **extra}
        if request.param == "postgresql":
            env.update(pg_s3_env(pg_database, s3_endpoint))
        return service_factory(env)  # type: ignore[no-any-return]

    def objects_for(service: Service) -> Objects:
        bucket = f"crash-{uuid.uuid4().hex[:12]}"
        if request.param == "postgresql":
            s3_client.create_bucket(Bucket=bucket)
            return Objects(s3_client, bucket, None)
        root = Path(service.env["TASKDEPLOY_DATA_DIR"]) / "objects"
        (root / bucket).mkdir(parents=True)
        return Objects(None, bucket, root)

    return start, objects_for  # type: ignore[return-value]


async def _poll_state(
    base_url: str, run_id: str, states: set[str], deadline_s: float = 120
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        await wait_for_state(client, run_id, states, deadline_s)


def _remove_env_images(packages: str) -> None:
    for image in docker_ids("images", "-q", "--filter", f"label=taskdeploy.packages={packages}"):
        docker_ids("rmi", "-f", image)


PHASES = ["queued", "preparing-build", "preparing-staging", "running", "finishing"]
# Every phase on PostgreSQL, the production database; on SQLite the adoption of a running
# container. Adoption and take-over in every phase on both databases are also covered, in
# milliseconds, by the orchestrator's unit tests on the in-memory backend.
KILLS = [("postgresql", phase) for phase in PHASES] + [("sqlite", "running")]


@pytest.mark.slow
@pytest.mark.parametrize(("setup", "phase"), KILLS, indirect=["setup"])
async def test_sigkill_in_each_phase_loses_nothing(
    setup: tuple[Callable[..., Service], Callable[[Service], Objects]], phase: str
) -> None:
    start, objects_for = setup
    service = start(TASKDEPLOY_WORKERS_ENABLED="false") if phase == "queued" else start()
    objects = objects_for(service)
    body = make_run(f"s3://{objects.bucket}/out/", command="echo ran; echo out > $OUTPUT_DIR/o.txt")
    expect_output = {"o.txt": hashlib.sha256(b"out\n").hexdigest()}
    if phase == "preparing-build":
        _remove_env_images("dc")
        body.update(image=DEBIAN, packages=["dc"])
    elif phase == "preparing-staging":
        payload = uuid.uuid4().bytes * (BIG // 16)
        objects.put("in/big.bin", payload)
        body.update(
            input=f"s3://{objects.bucket}/in/", command="cp $INPUT_DIR/big.bin $OUTPUT_DIR/"
        )
        body["resources"] = {"memory_mb": 512}
        expect_output = {"big.bin": hashlib.sha256(payload).hexdigest()}
    elif phase == "running":
        body["command"] = "echo ran; sleep 4; echo out > $OUTPUT_DIR/o.txt"
    elif phase == "finishing":
        body["command"] = f"echo ran; head -c {BIG} /dev/zero > $OUTPUT_DIR/zeros.bin"
        body["resources"] = {"memory_mb": 512}
        expect_output = {"zeros.bin": hashlib.sha256(bytes(BIG)).hexdigest()}

    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        resp = await client.post("/v1/runs", json=body)
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["id"]
        state_at_kill = {
            "queued": "queued",
            "preparing-build": "preparing",
            "preparing-staging": "preparing",
            "running": "running",
            "finishing": "finishing",
        }[phase]
        await wait_for_state(client, run_id, {state_at_kill}, 300)
    service.kill()
    assert (await asyncio.to_thread(_state_via_new_process, service, run_id)) == state_at_kill

    env = dict(service.env)
    env["TASKDEPLOY_WORKERS_ENABLED"] = "true"
    restart_began = time.monotonic()
    restarted = await asyncio.to_thread(launch_service, env)
    outcome = {"case": f"{phase} ({'sqlite' if objects.root else 'postgresql'})", "ok": False}
    try:
        async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as client:
            run = await wait_for_state(client, run_id, TERMINAL, 300)
            outcome["recovery_seconds"] = time.monotonic() - restart_began
            assert run["state"] == "succeeded", (run, restarted.logs()[-3000:])
            events = (await client.get(f"/v1/runs/{run_id}/events")).json()["items"]
            if phase in {"running", "finishing"}:
                # Adopted, not run again: the command started once.
                assert [e["to_state"] for e in events].count("running") == 1
        prefix = f"out/{run_id}/"
        stored = objects.keys(prefix)
        expected_keys = {
            prefix + name for name in ("stdout.log", "stderr.log", "metrics.json", "run.json")
        } | {f"{prefix}output/{name}" for name in expect_output}
        assert set(stored) == expected_keys  # every artifact, nothing twice, nothing extra
        assert (
            objects.read(prefix + "stdout.log") in {b"ran\n", b""} or phase == "preparing-staging"
        )
        for name, digest in expect_output.items():
            assert objects.sha256(f"{prefix}output/{name}") == digest
        await containers_gone(run_id)
        outcome["ok"] = True
    finally:
        restarted.stop()
        with fault_log().open("a") as log:
            log.write(json.dumps(outcome) + "\n")


def _state_via_new_process(service: Service, run_id: str) -> str:
    """The run's state after the kill, read by a short-lived API process on the same data."""
    env = dict(service.env)
    env["TASKDEPLOY_WORKERS_ENABLED"] = "false"
    reader = launch_service(env)
    try:
        return str(httpx.get(f"{reader.base_url}/v1/runs/{run_id}", timeout=10).json()["state"])
    finally:
        reader.stop()


@pytest.mark.parametrize("setup", ["postgresql", "sqlite"], indirect=True)
async def test_graceful_shutdown_leaves_running_containers_for_the_next_start(
    setup: tuple[Callable[..., Service], Callable[[Service], Objects]],
) -> None:
    start, objects_for = setup
    service = start()
    objects = objects_for(service)
    body = make_run(f"s3://{objects.bucket}/out/", command="sleep 3; echo survived")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        run_id = (await client.post("/v1/runs", json=body)).json()["id"]
        await wait_for_state(client, run_id, {"running"})
    container = docker_ids("ps", "-q", "--filter", f"label=taskdeploy.run_id={run_id}")
    service.process.send_signal(signal.SIGTERM)
    service.process.wait(timeout=60)
    # Not killed by a normal shutdown: the user's container is still there.
    assert docker_ids("ps", "-aq", "--filter", f"label=taskdeploy.run_id={run_id}") == container
    restarted = await asyncio.to_thread(launch_service, dict(service.env))
    try:
        async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as client:
            run = await wait_for_state(client, run_id, TERMINAL, 120)
        assert run["state"] == "succeeded", run
        assert objects.read(f"out/{run_id}/stdout.log") == b"survived\n"
    finally:
        restarted.stop()


async def test_retries_until_the_third_attempt_succeeds(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    body = make_run(
        f"s3://{bucket}/out/",
        command='echo "attempt $TASKDEPLOY_ATTEMPT"; [ "$TASKDEPLOY_ATTEMPT" -ge 3 ] || exit 7',
        retry={"attempts": 3, "backoff_seconds": 0.5, "backoff_factor": 2, "on": ["failed"]},
    )
    resp = await client.post("/v1/runs", json=body)
    run = await wait_for_state(client, resp.json()["id"], TERMINAL, 120)
    assert run["state"] == "succeeded", run
    assert run["attempt"] == 3
    assert [(a["attempt"], a["state"], a["exit_code"]) for a in run["attempts"]] == [
        (1, "failed", 7),
        (2, "failed", 7),
        (3, "succeeded", 0),
    ]
    for n in (1, 2, 3):
        key = f"out/{run['id']}/attempt-{n}/stdout.log"
        assert (
            s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == f"attempt {n}\n".encode()
        )
    logs = await client.get(f"/v1/runs/{run['id']}/logs")
    assert logs.text == "attempt 3\n"  # the last attempt's


async def test_timeouts_count_as_attempts_and_the_last_state_wins(
    client: httpx.AsyncClient, bucket: str
) -> None:
    body = make_run(
        f"s3://{bucket}/out/",
        command="sleep 30",
        timeout_seconds=1,
        retry={"attempts": 2, "backoff_seconds": 0, "on": ["timed_out"]},
    )
    run = await wait_for_state(
        client, (await client.post("/v1/runs", json=body)).json()["id"], TERMINAL, 120
    )
    assert run["state"] == "timed_out"
    assert [a["state"] for a in run["attempts"]] == ["timed_out", "timed_out"]


async def test_readiness_reports_each_dependency(client: httpx.AsyncClient) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert {"database", "docker", "object_store"} <= set(checks)
    assert {k for k in checks if k.startswith("worker:")} >= {
        "worker:dispatcher",
        "worker:scheduler",
        "worker:reconciler",
    }
    assert (await client.get("/healthz")).json() == {"status": "ok", "checks": {}}
