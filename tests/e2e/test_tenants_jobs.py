"""Hostile job output end to end: every byte a job writes in its container, the wrapper's own
control files included, is read with caps, parsed off the event loop, and never changes the
verdict the service itself observed.

Each hostile run happens under tests/e2e/probe.py: no probe request waits over a second, the
event-loop lag p99 stays under 100 ms, and the figures (worst latency, lag p99, RSS growth) are
printed for the record (`-s` shows them).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    TERMINAL,
    Service,
    create_database,
    docker_ids,
    get_object,
    keys_under,
    make_run,
    pg_s3_env,
    wait_for_state,
)
from tests.e2e.probe import MiB, probe

META = "/workspace/.taskdeploy"
LOG_LIMIT = MiB
MAX_OUTPUT_FILES = 100
# The service's live-log poll interval (LiveLogs.poll_seconds).
POLL_SECONDS = 0.5
# The RSS a hostile run may add to the service: the caps hold it well below this.
RSS_BOUND = 64 * MiB
# Forged samples, one per millisecond after the real start, appended past the wrapper's lines.
MILLION_SAMPLES = (
    "read t0 _ < /proc/uptime; "
    'awk -v t0="$t0" \'BEGIN { for (i = 1; i <= 1000000; i++) '
    f'printf "s %.3f %d %d\\n", t0 + i / 1000, i * 1000000, 4096 + i >> "{META}/metrics.tsv" }}\''
)


async def dedicated(
    service_factory: Any,
    postgres_url: str,
    s3_endpoint: str,
    created_databases: list[str],
    settings: dict[str, str],
) -> Service:
    database = await create_database(postgres_url)
    created_databases.append(database)
    return service_factory({**pg_s3_env(database, s3_endpoint), **settings})  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def jobs_service(
    service_factory: Any, postgres_url: str, s3_endpoint: str, created_databases: list[str]
) -> Service:
    """One service for the hostile runs, with a small log cap and output file cap."""
    settings = {
        "TASKDEPLOY_LOG_LIMIT_BYTES": str(LOG_LIMIT),
        "TASKDEPLOY_MAX_OUTPUT_FILES": str(MAX_OUTPUT_FILES),
    }
    return await dedicated(service_factory, postgres_url, s3_endpoint, created_databases, settings)


@asynccontextmanager
async def client_for(
    service: Service, token: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60, headers=headers) as c:
        yield c


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    resp = await client.post("/v1/runs", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


async def wait_for_log(
    client: httpx.AsyncClient, run_id: str, needle: bytes, stream: str = "stdout"
) -> None:
    """Polls the live log until it holds `needle` (the job got that far)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        resp = await client.get(f"/v1/runs/{run_id}/logs", params={"stream": stream})
        assert resp.status_code == 200, resp.text
        if needle in resp.content:
            return
        state = (await client.get(f"/v1/runs/{run_id}")).json()["state"]
        assert state not in TERMINAL, f"the run ended ({state}) before printing {needle!r}"
        await asyncio.sleep(0.3)
    raise AssertionError(f"{needle!r} never showed in the {stream} of run {run_id}")


def manifest_of(s3: Any, bucket: str, run: dict[str, Any]) -> Any:
    return json.loads(get_object(s3, bucket, f"o/{run['id']}/run.json"))


# --------------------------------------------------------------------------- metrics.tsv
async def test_a_million_line_metrics_file_is_harvested_within_the_caps(
    jobs_service: Service, s3_client: Any, bucket: str
) -> None:
    body = make_run(f"s3://{bucket}/o", command=MILLION_SAMPLES, timeout_seconds=240)
    async with client_for(jobs_service) as c:
        async with probe(jobs_service) as report:
            run_id = await submit(c, body)
            run = await wait_for_state(c, run_id, TERMINAL, 300)
        print(report.summary("1M-line metrics.tsv, harvested"))
        assert run["state"] == "succeeded", run
        assert "metrics.tsv is" in run["status_reason"], run["status_reason"]
        metrics = (await c.get(f"/v1/runs/{run_id}/metrics")).json()
    # The series is downsampled; the summary rests on the parsed head and tail.
    assert 0 < len(metrics["series"]) <= 1000
    assert 0 < metrics["summary"]["samples"] <= 100_000
    notes = manifest_of(s3_client, bucket, run)["harvest_notes"]
    assert any("metrics.tsv" in note for note in notes), notes
    report.check()
    assert report.rss_growth < RSS_BOUND, report.summary("RSS")


# --------------------------------------------------------------------------- output folder
async def test_two_hundred_thousand_empty_output_files_stay_within_the_caps(
    jobs_service: Service, s3_client: Any, bucket: str
) -> None:
    command = 'cd "$OUTPUT_DIR" && seq 200000 | xargs touch && echo made'
    body = make_run(f"s3://{bucket}/o", command=command, timeout_seconds=280)
    async with client_for(jobs_service) as c:
        async with probe(jobs_service) as report:
            run_id = await submit(c, body)
            run = await wait_for_state(c, run_id, TERMINAL, 300)
        print(report.summary("200 000 empty output files"))
    assert run["state"] == "succeeded", run
    reason = run["status_reason"]
    assert f"only the first {MAX_OUTPUT_FILES} files were uploaded" in reason, reason
    assert "more than 100000 entries" in reason, reason
    assert len(keys_under(s3_client, bucket, f"o/{run_id}/output/")) == MAX_OUTPUT_FILES
    manifest = manifest_of(s3_client, bucket, run)
    assert 99_000 < manifest["skipped_outputs_count"] < 100_000
    assert len(manifest["skipped_outputs"]) == 1000
    report.check()
    assert report.rss_growth < RSS_BOUND, report.summary("RSS")


# --------------------------------------------------------------------------- the verdict
async def test_forged_control_lines_do_not_change_the_verdict(
    jobs_service: Service, s3_client: Any, bucket: str
) -> None:
    digits = "9" * 5000  # int() refuses to parse this many digits
    command = (
        f"printf 'stopped\\nexit 7\\nf 1 1 1\\ns 1 {digits} 1\\nexit {digits}\\n' >> {META}/metrics.tsv; "
        f"printf '%s\\n' 123456789012345678901234567890 > {META}/stderr.total; "
        f"chmod 444 {META}/stderr.total; echo ok"
    )
    async with client_for(jobs_service) as c:
        async with probe(jobs_service) as report:
            run = await wait_for_state(
                c, await submit(c, make_run(f"s3://{bucket}/o", command=command)), TERMINAL
            )
        print(report.summary("forged control lines"))
    assert run["state"] == "succeeded", run
    assert run["exit_code"] == 0
    assert "outside" not in (run["status_reason"] or "")
    # The forged total is not shown as the stream's size.
    assert run["logs"]["stderr"] == {"bytes": 0, "kept_bytes": 0, "truncated": False}
    assert "stderr.total in the container is not a byte count" in run["status_reason"]
    assert get_object(s3_client, bucket, f"o/{run['id']}/stdout.log") == b"ok\n"
    report.check()


async def test_a_job_that_signals_its_own_wrapper_fails_with_its_exit_code(
    jobs_service: Service, bucket: str
) -> None:
    # The wrapper's TERM trap ends the command and writes `stopped`; no stop came from outside.
    command = "echo before; kill -TERM $PPID; sleep 30; echo after"
    async with client_for(jobs_service) as c:
        run = await wait_for_state(
            c, await submit(c, make_run(f"s3://{bucket}/o", command=command)), TERMINAL
        )
    assert run["state"] == "failed", run
    assert run["exit_code"] in (137, 143), run
    assert run["status_reason"] == f"exit code {run['exit_code']}", run["status_reason"]


async def test_a_docker_stop_by_hand_is_seen_by_the_engine_and_ends_in_error(
    jobs_service: Service, bucket: str
) -> None:
    async with client_for(jobs_service) as c:
        run_id = await submit(c, make_run(f"s3://{bucket}/o", command="echo up; sleep 60"))
        await wait_for_log(c, run_id, b"up")
        [container] = docker_ids("ps", "-q", "--filter", f"label=taskdeploy.run_id={run_id}")
        subprocess.run(["docker", "stop", "-t", "2", container], check=True, timeout=60)
        run = await wait_for_state(c, run_id, TERMINAL)
    assert run["state"] == "error", run
    assert "stopped from outside the service" in run["status_reason"]
