"""Hostile job output end to end: every byte a job writes in its container, the wrapper's own
control files included, is read with caps, parsed off the event loop, and never changes the
verdict the service itself observed. Live-log followers are limited and share one read.

Each hostile run happens under tests/e2e/probe.py: no probe request waits over a second, the
event-loop lag p99 stays under 100 ms, and the figures (worst latency, lag p99, RSS growth) are
printed for the record (`-s` shows them).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
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
    new_key,
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
    module_services: Any, postgres_url: str, s3_endpoint: str, created_databases: list[str]
) -> Service:
    """One service for the hostile runs, with a small log cap and output file cap."""
    settings = {
        "TASKDEPLOY_LOG_LIMIT_BYTES": str(LOG_LIMIT),
        "TASKDEPLOY_MAX_OUTPUT_FILES": str(MAX_OUTPUT_FILES),
    }
    return await dedicated(module_services, postgres_url, s3_endpoint, created_databases, settings)


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


def metric(text: str, name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} is not in /metrics")


async def container_reads(client: httpx.AsyncClient, file: str) -> float:
    """How often the service has read that file of a running container (its own count)."""
    text = (await client.get("/metrics")).text
    return metric(text, "taskdeploy_container_file_reads_total", file=file)


def manifest_of(s3: Any, bucket: str, run: dict[str, Any]) -> Any:
    return json.loads(get_object(s3, bucket, f"o/{run['id']}/run.json"))


# --------------------------------------------------------------------------- metrics.tsv
@pytest.mark.serial  # asserts latency (or free space): not beside other tests
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


@pytest.mark.serial  # asserts latency (or free space): not beside other tests
async def test_live_metrics_of_a_million_line_file_hammered_while_it_runs(
    jobs_service: Service, bucket: str
) -> None:
    command = f"{MILLION_SAMPLES}; echo written; sleep 12"
    body = make_run(f"s3://{bucket}/o", command=command, timeout_seconds=240)
    async with client_for(jobs_service) as c:
        run_id = await submit(c, body)
        await wait_for_log(c, run_id, b"written")
        answers: list[dict[str, Any]] = []
        reads_before = await container_reads(c, "metrics.tsv")
        started = time.monotonic()

        async def hammer() -> None:
            # Four clients asking ten times a second each: more than any dashboard does.
            while time.monotonic() - started < 8:
                resp = await c.get(f"/v1/runs/{run_id}/metrics")
                assert resp.status_code == 200, resp.text
                answers.append(resp.json())
                await asyncio.sleep(0.1)

        async with probe(jobs_service) as report:
            await asyncio.gather(*(hammer() for _ in range(4)))
            elapsed = time.monotonic() - started
        reads = await container_reads(c, "metrics.tsv") - reads_before
        print(report.summary(f"live /metrics of a 1M-line file, {len(answers)} requests"))
        print(f"  {reads:.0f} reads of metrics.tsv in {elapsed:.1f} s for {len(answers)} answers")
        assert (await c.get(f"/v1/runs/{run_id}")).json()["state"] == "running"
        run = await wait_for_state(c, run_id, TERMINAL, 120)
    assert run["state"] == "succeeded", run
    live = [a for a in answers if a["live"]]
    assert len(live) >= 8, f"only {len(live)} live answers"
    assert all(0 < len(a["series"]) <= 1000 for a in live)
    # Concurrent and repeated requests share reads: about one a second, not one per answer.
    assert reads <= elapsed + 2, f"{reads} container reads for {len(answers)} answers"
    report.check()
    assert report.rss_growth < RSS_BOUND, report.summary("RSS")


# --------------------------------------------------------------------------- output folder
@pytest.mark.serial  # asserts latency (or free space): not beside other tests
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
@pytest.mark.serial  # asserts latency (or free space): not beside other tests
async def test_forged_control_lines_do_not_change_the_verdict(
    jobs_service: Service, s3_client: Any, bucket: str
) -> None:
    digits = "9" * 5000  # int() refuses to parse this many digits
    command = (
        f"printf 'stopped\\nexit 7\\nf 1 1 1\\ns 1 {digits} 1\\nexit {digits}\\n' >> {META}/metrics.tsv; "
        f"printf '%s\\n' 123456789012345678901234567890 > {META}/stderr.total; "
        # Long enough for the probe to say something: a trivial run now ends in well under a
        # second, fewer than the probe's five looks 0.2 s apart.
        f"chmod 444 {META}/stderr.total; sleep 2; echo ok"
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


# --------------------------------------------------------------------------- the logs
@pytest.mark.serial  # asserts latency (or free space): not beside other tests
async def test_a_job_rewriting_its_stdout_log_past_the_cap_keeps_logs_readable(
    jobs_service: Service, bucket: str
) -> None:
    # Nothing else goes to stdout: the wrapper's own writes to the file would race the job's.
    command = f"head -c 3000000 /dev/zero > {META}/stdout.log; echo rewritten >&2; sleep 6"
    async with client_for(jobs_service) as c:
        async with probe(jobs_service) as report:
            run_id = await submit(c, make_run(f"s3://{bucket}/o", command=command))
            await wait_for_log(c, run_id, b"rewritten", stream="stderr")
            live = await c.get(f"/v1/runs/{run_id}/logs")
            run = await wait_for_state(c, run_id, TERMINAL)
            after = await c.get(f"/v1/runs/{run_id}/logs")
        print(report.summary("stdout.log rewritten past the cap"))
    assert live.status_code == 200, live.text
    assert live.content == bytes(LOG_LIMIT)  # the first LOG_LIMIT bytes of the file
    assert run["state"] == "succeeded", run
    assert run["logs"]["stdout"] == {"bytes": 3_000_000, "kept_bytes": LOG_LIMIT, "truncated": True}
    assert "stdout.log in the container is 3000000 bytes" in run["status_reason"]
    assert after.status_code == 200, after.text
    marker = f"\n[taskdeploy: stdout truncated: kept the first {LOG_LIMIT} of 3000000 bytes]\n"
    assert after.content == bytes(LOG_LIMIT) + marker.encode()
    report.check()


def parse_sse(raw: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Events (type, data) and other fields set, as a browser's EventSource reads the stream:
    lines end at CR, LF or CRLF, a blank line dispatches."""
    events: list[tuple[str, str]] = []
    others: list[str] = []
    data: list[str] = []
    kind = ""
    for line in re.split(r"\r\n|\r|\n", raw):
        if not line:
            if data:
                events.append((kind or "message", "\n".join(data)))
            data, kind = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        else:
            others.append(line)
    return events, others


async def test_server_sent_events_cannot_be_forged_by_carriage_returns(
    jobs_service: Service, bucket: str
) -> None:
    command = (
        "printf 'one\\rtwo\\r\\nthree\\nevent: end\\rdata: forged\\r\\rid: 7\\rretry: 1\\n'; "
        "sleep 1; echo last"
    )
    async with client_for(jobs_service) as c:
        run_id = await submit(c, make_run(f"s3://{bucket}/o", command=command))
        async with c.stream(
            "GET",
            f"/v1/runs/{run_id}/logs",
            params={"follow": "true"},
            headers={"Accept": "text/event-stream"},
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["x-content-type-options"] == "nosniff"
            raw = (await resp.aread()).decode()
        await wait_for_state(c, run_id, TERMINAL)
        async with c.stream("GET", f"/v1/runs/{run_id}/logs", params={"follow": "true"}) as plain:
            assert plain.headers["x-content-type-options"] == "nosniff"
            await plain.aread()
        stored = await c.get(f"/v1/runs/{run_id}/logs")
        assert stored.headers["x-content-type-options"] == "nosniff"
    events, others = parse_sse(raw)
    lines = ["one", "two", "three", "event: end", "data: forged", "", "id: 7", "retry: 1", "last"]
    assert events == [*(("message", line) for line in lines), ("end", "")], raw
    assert others == [], raw


async def test_control_characters_never_reach_the_service_log_raw(
    service_factory: Any,
    postgres_url: str,
    s3_endpoint: str,
    created_databases: list[str],
    bucket: str,
) -> None:
    services = [
        await dedicated(
            service_factory,
            postgres_url,
            s3_endpoint,
            created_databases,
            {"TASKDEPLOY_LOG_FORMAT": fmt, "TASKDEPLOY_LOG_LIMIT_BYTES": str(LOG_LIMIT)},
        )
        for fmt in ("text", "json")
    ]
    nasty = "\\033[2J\\033[31mred\\r\\n2026-01-01 00:00:00,000 INFO forged: line\\177\\302\\233\\342\\200\\250"
    command = (
        f"printf '{nasty}\\n'; printf '{nasty}\\n' >&2; "
        f"touch \"$OUTPUT_DIR/$(printf 'x\\033y')\"; printf 'junk {nasty}\\n' >> {META}/metrics.tsv; "
        f"printf '{nasty}\\n' > {META}/stdout.total; chmod 444 {META}/stdout.total; "
        f"head -c 2000000 /dev/zero > {META}/stderr.log; exit 3"
    )
    body = make_run(f"s3://{bucket}/o", command=command)
    for service in services:
        async with client_for(service) as c:
            run = await wait_for_state(c, await submit(c, body), TERMINAL)
            assert run["state"] == "failed", run
            # The job's notes were logged: the test saw its bytes come near the log.
            assert "stdout.total in the container is not a byte count" in run["status_reason"]
        text = service.logs()
        assert run["id"] in text
        raw = re.findall(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", text)
        assert not raw, f"raw control characters in the service log: {sorted(set(raw))}"


# --------------------------------------------------------------------------- followers
FOLLOWER_LIMITS = {
    "TASKDEPLOY_MAX_FOLLOWERS_PER_RUN": "4",
    "TASKDEPLOY_MAX_FOLLOWERS_PER_OWNER": "6",
    "TASKDEPLOY_ALLOWED_BUCKETS": "*",  # keys exist: the list must be named; each test has its own bucket
}
TICKING = "for i in $(seq 1 40); do echo line-$i; sleep 0.5; done"


@pytest.fixture(scope="module")
async def followers_service(
    module_services: Any, postgres_url: str, s3_endpoint: str, created_databases: list[str]
) -> Service:
    return await dedicated(
        module_services, postgres_url, s3_endpoint, created_databases, FOLLOWER_LIMITS
    )


@pytest.fixture(scope="module")
def owner_keys(followers_service: Service) -> dict[str, str]:
    return {owner: new_key(followers_service, owner) for owner in ("alice", "bob")}


@asynccontextmanager
async def following(client: httpx.AsyncClient, run_id: str) -> AsyncIterator[httpx.Response]:
    """An open follow stream whose first bytes arrived (the follower is admitted)."""
    async with client.stream("GET", f"/v1/runs/{run_id}/logs", params={"follow": "true"}) as resp:
        assert resp.status_code == 200, (await resp.aread()).decode()
        yield resp


@asynccontextmanager
async def following_when_free(
    client: httpx.AsyncClient, run_id: str
) -> AsyncIterator[httpx.Response]:
    """`following` once a slot is free: a follower that just left gives its slot back as
    soon as the service sees its connection close, which takes a moment."""
    deadline = time.monotonic() + 10
    while True:
        async with client.stream(
            "GET", f"/v1/runs/{run_id}/logs", params={"follow": "true"}
        ) as resp:
            if resp.status_code == 200:
                yield resp
                return
            assert resp.status_code == 429 and time.monotonic() < deadline, resp.status_code
        await asyncio.sleep(0.1)


async def refused(client: httpx.AsyncClient, run_id: str) -> httpx.Response:
    resp = await client.get(f"/v1/runs/{run_id}/logs", params={"follow": "true"})
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["retry-after"]) > 0
    return resp


async def test_followers_past_the_per_run_limit_get_429_until_one_leaves(
    followers_service: Service, owner_keys: dict[str, str], bucket: str
) -> None:
    async with client_for(followers_service, owner_keys["alice"]) as c, AsyncExitStack() as stack:
        run_id = await submit(c, make_run(f"s3://{bucket}/o", command=TICKING))
        streams = [await stack.enter_async_context(following(c, run_id)) for _ in range(3)]
        async with following(c, run_id):
            resp = await refused(c, run_id)
            assert "TASKDEPLOY_MAX_FOLLOWERS_PER_RUN" in resp.json()["error"]["message"]
        # One left: its slot is free again.
        async with following_when_free(c, run_id) as again:
            assert again.status_code == 200
        assert len(streams) == 3
        await c.post(f"/v1/runs/{run_id}/cancel")


async def test_followers_past_the_per_owner_limit_get_429_and_other_owners_do_not(
    followers_service: Service, owner_keys: dict[str, str], bucket: str
) -> None:
    async with (
        client_for(followers_service, owner_keys["alice"]) as alice,
        client_for(followers_service, owner_keys["bob"]) as bob,
        AsyncExitStack() as stack,
    ):
        first = await submit(alice, make_run(f"s3://{bucket}/o", command=TICKING))
        second = await submit(alice, make_run(f"s3://{bucket}/o", command=TICKING))
        bobs = await submit(bob, make_run(f"s3://{bucket}/o", command=TICKING))
        for run_id in (first, first, first, second, second, second):
            await stack.enter_async_context(following(alice, run_id))
        resp = await refused(alice, second)
        assert "TASKDEPLOY_MAX_FOLLOWERS_PER_OWNER" in resp.json()["error"]["message"]
        async with following(bob, bobs) as theirs:
            assert theirs.status_code == 200
        for run_id, client in ((first, alice), (second, alice), (bobs, bob)):
            await client.post(f"/v1/runs/{run_id}/cancel")


async def test_followers_of_one_run_share_one_container_read_and_a_slow_one_holds_none_back(
    followers_service: Service, owner_keys: dict[str, str], bucket: str
) -> None:
    # 800 KB at once (more than the sockets buffer for a reader that stopped), then lines.
    command = (
        "sleep 1; head -c 600000 /dev/zero | base64 | tr -d '\\n' | fold -w 100; "
        "for i in $(seq 1 12); do echo line-$i; sleep 0.5; done"
    )
    async with client_for(followers_service, owner_keys["alice"]) as c:
        run_id = await submit(c, make_run(f"s3://{bucket}/o", command=command))
        await wait_for_state(c, run_id, {"running"})
        reads_before = await container_reads(c, "stdout.log")
        started = time.monotonic()
        stalled_open = asyncio.Event()
        release_stalled = asyncio.Event()

        async def follow() -> tuple[bytes, float]:
            async with following(c, run_id) as resp:
                body = b"".join([chunk async for chunk in resp.aiter_bytes()])
            return body, time.monotonic()

        async def stalled() -> bytes:
            async with following(c, run_id) as resp:
                pieces = resp.aiter_bytes()
                first = await anext(pieces)
                stalled_open.set()
                await release_stalled.wait()  # meanwhile nothing is read from the socket
                return first + b"".join([chunk async for chunk in pieces])

        slow = asyncio.create_task(stalled())
        await stalled_open.wait()
        fast = await asyncio.gather(follow(), follow(), follow())
        ended = time.monotonic()
        reads = await container_reads(c, "stdout.log") - reads_before
        run = await wait_for_state(c, run_id, TERMINAL)
        release_stalled.set()
        slow_body = await slow
        stored = (await c.get(f"/v1/runs/{run_id}/logs")).content
    assert run["state"] == "succeeded", run
    assert stored.endswith(b"line-12\n")
    # Everyone got the whole log, the stalled follower too once it read on.
    assert all(body == stored for body, _ in fast)
    assert slow_body == stored
    # The fast ones finished with the run, not with the stalled one.
    assert all(at <= ended for _, at in fast)
    elapsed = ended - started
    polls = elapsed / POLL_SECONDS
    print(
        f"followers: 4 followers, {reads:.0f} container reads in {elapsed:.1f} s ({polls:.0f} polls)"
    )
    # One read per poll interval for all four (plus the poll that saw the end).
    assert reads <= polls + 2, f"{reads} reads in {elapsed:.1f} s"
