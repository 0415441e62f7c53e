"""Outages of the service's dependencies, caused on daemons the tests started themselves:
the S3 endpoint unreachable for 15 s while staging and while uploading, PostgreSQL restarted
mid-run, the Docker engine restarted mid-run. The API keeps answering and every run ends in
a truthful state."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import REPO, TERMINAL, Service, make_run, pg_s3_env, wait_for_state
from tests.e2e.outages import CuttableProxy, PrivatePostgres

OUTAGE_SECONDS = 15
SIZE = 200 * 1000 * 1000


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Any:
    proxy = CuttableProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


async def _outage(client: httpx.AsyncClient, cut: Any, restore: Any) -> datetime:
    """Cuts a dependency for OUTAGE_SECONDS; the API must keep answering meanwhile.
    Returns when the outage ended (UTC)."""
    cut()
    try:
        ends = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < ends:
            started = time.monotonic()
            assert (await client.get("/healthz")).status_code == 200
            # Not stuck behind the dependency's timeouts (tens of seconds); the tight latency
            # bounds are asserted by the serial tests, on an otherwise idle host.
            assert time.monotonic() - started < 5
            await asyncio.sleep(1)
    finally:
        restore()
    return datetime.now(UTC)


async def _entered(client: httpx.AsyncClient, run_id: str, state: str) -> datetime:
    events = (await client.get(f"/v1/runs/{run_id}/events")).json()["items"]
    return datetime.fromisoformat(next(e["at"] for e in events if e["to_state"] == state))


def _sha_of_object(s3: Any, bucket: str, key: str) -> str:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
async def test_s3_unreachable_while_staging(
    service_factory: Any, pg_database: str, s3_proxy: CuttableProxy, s3_client: Any, bucket: str
) -> None:
    service: Service = service_factory(pg_s3_env(pg_database, s3_proxy.url))
    payload = os.urandom(1 << 20) * (SIZE >> 20)
    s3_client.put_object(Bucket=bucket, Key="in/big.bin", Body=payload)
    body = make_run(
        f"s3://{bucket}/out/",
        input=f"s3://{bucket}/in/",
        command="sha256sum $INPUT_DIR/big.bin | cut -d' ' -f1",
        resources={"memory_mb": 512},
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        # Cut first: submitting needs no S3, so staging is sure to meet the outage.
        outage = asyncio.create_task(_outage(client, s3_proxy.cut, s3_proxy.restore))
        await asyncio.sleep(0.1)
        run_id = (await client.post("/v1/runs", json=body)).json()["id"]
        restored = await outage
        run = await wait_for_state(client, run_id, TERMINAL, 300)
        assert run["state"] == "succeeded", run
        # Staging waited the outage out: the command started only after S3 came back.
        assert await _entered(client, run_id, "running") >= restored - timedelta(seconds=1)
        logs = await client.get(f"/v1/runs/{run_id}/logs")
    assert logs.text.strip() == hashlib.sha256(payload).hexdigest()


@pytest.mark.slow
async def test_s3_unreachable_while_uploading(
    service_factory: Any, pg_database: str, s3_proxy: CuttableProxy, s3_client: Any, bucket: str
) -> None:
    service: Service = service_factory(pg_s3_env(pg_database, s3_proxy.url))
    command = f"head -c {SIZE} /dev/zero > $OUTPUT_DIR/zeros.bin; echo written"
    body = make_run(f"s3://{bucket}/out/", command=command, resources={"memory_mb": 512})
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        # A run without inputs needs S3 only to upload: cut first, so the upload meets it.
        outage = asyncio.create_task(_outage(client, s3_proxy.cut, s3_proxy.restore))
        await asyncio.sleep(0.1)
        run_id = (await client.post("/v1/runs", json=body)).json()["id"]
        restored = await outage
        run = await wait_for_state(client, run_id, TERMINAL, 300)
        assert run["state"] == "succeeded", run
        assert await _entered(client, run_id, "finishing") < restored  # uploading met the cut
        assert await _entered(client, run_id, "succeeded") >= restored - timedelta(seconds=1)
    key = f"out/{run_id}/output/zeros.bin"
    assert _sha_of_object(s3_client, bucket, key) == hashlib.sha256(bytes(SIZE)).hexdigest()


async def test_postgres_restarted_mid_run(
    service_factory: Any, s3_endpoint: str, bucket: str
) -> None:
    # Not under pytest's tmp dir: the postgres OS user must be able to reach the cluster.
    base = Path(tempfile.mkdtemp(prefix="taskdeploy-pg-test-", dir="/var/tmp"))
    postgres = PrivatePostgres(base)
    try:
        service: Service = service_factory(pg_s3_env(postgres.url, s3_endpoint))
        body = make_run(f"s3://{bucket}/out/", command="sleep 6; echo survived")
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
            run_id = (await client.post("/v1/runs", json=body)).json()["id"]
            await wait_for_state(client, run_id, {"running"})
            postgres.stop()
            try:
                assert (await client.get("/healthz")).status_code == 200
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"].startswith("error")
                await asyncio.sleep(5)  # the outage: the command finishes meanwhile
            finally:
                postgres.start()
            run = await wait_for_state(client, run_id, TERMINAL, 180)
            assert run["state"] == "succeeded", run
            assert (await client.get(f"/v1/runs/{run_id}/logs")).text == "survived\n"
            assert (await client.get("/readyz")).status_code == 200
    finally:
        with contextlib.suppress(Exception):
            postgres.stop()
        shutil.rmtree(base, ignore_errors=True)


DOCKERD_PIDFILE = Path("/var/run/taskdeploy-dockerd.pid")


@pytest.mark.serial  # restarts the engine every other test uses
async def test_docker_engine_restarted_mid_run(client: httpx.AsyncClient, bucket: str) -> None:
    """The engine stops every container when it restarts: the run must not claim success."""
    if not DOCKERD_PIDFILE.exists():
        pytest.skip("the Docker engine was not started by scripts/ensure-docker.sh")
    body = make_run(f"s3://{bucket}/out/", command="echo before; sleep 120; echo after")
    run_id = (await client.post("/v1/runs", json=body)).json()["id"]
    await wait_for_state(client, run_id, {"running"})
    pid = int(DOCKERD_PIDFILE.read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        await asyncio.sleep(0.2)
    subprocess.run([str(REPO / "scripts" / "ensure-docker.sh")], check=True, timeout=120)
    run = await wait_for_state(client, run_id, TERMINAL, 180)
    assert run["state"] == "error", run
    assert "stopped from outside the service" in run["status_reason"]
    assert (await client.get(f"/v1/runs/{run_id}/logs")).text == "before\n"
