"""Live logs: following a running command's output as Server-Sent Events or chunked text."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.e2e.harness import TERMINAL, make_run, wait_for_state

TICKING = "for i in 1 2 3; do echo line-$i; sleep 1; done; echo done >&2"
EARLY = "echo early; sleep 4; echo late"


async def _submit(client: httpx.AsyncClient, bucket: str, command: str = TICKING) -> str:
    resp = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/o", command=command))
    assert resp.status_code == 202
    return str(resp.json()["id"])


async def test_follow_as_server_sent_events(client: httpx.AsyncClient, bucket: str) -> None:
    run_id = await _submit(client, bucket)
    lines: list[str] = []
    started = time.monotonic()
    first_line_at = 0.0
    async with client.stream(
        "GET",
        f"/v1/runs/{run_id}/logs",
        params={"follow": "true"},
        headers={"Accept": "text/event-stream"},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line:
                lines.append(line)
                first_line_at = first_line_at or time.monotonic()
    assert [line.removeprefix("data: ") for line in lines[:3]] == ["line-1", "line-2", "line-3"]
    assert lines[-2] == "event: end"
    # line-1 came about a second after the start, not after the whole 3-second command.
    assert first_line_at - started < time.monotonic() - started - 1.5
    run = (await client.get(f"/v1/runs/{run_id}")).json()
    assert run["state"] == "succeeded"


async def test_follow_delivers_output_while_the_command_runs(
    client: httpx.AsyncClient, bucket: str
) -> None:
    run_id = await _submit(client, bucket, EARLY)
    arrivals: list[tuple[float, bytes]] = []
    async with client.stream("GET", f"/v1/runs/{run_id}/logs", params={"follow": "true"}) as resp:
        async for chunk in resp.aiter_bytes():
            arrivals.append((time.monotonic(), chunk))
    assert b"".join(chunk for _, chunk in arrivals) == b"early\nlate\n"
    # "early" arrived seconds before "late", while the command was sleeping.
    early_at = next(t for t, chunk in arrivals if chunk.startswith(b"early"))
    late_at = next(t for t, chunk in arrivals if b"late" in chunk)
    assert late_at - early_at > 2


async def test_several_followers_and_a_slow_one(client: httpx.AsyncClient, bucket: str) -> None:
    run_id = await _submit(client, bucket)

    async def follow() -> bytes:
        async with client.stream(
            "GET", f"/v1/runs/{run_id}/logs", params={"follow": "true"}
        ) as resp:
            return b"".join([chunk async for chunk in resp.aiter_bytes()])

    async def stalled() -> None:
        # Reads the first chunk, then stops reading while the run goes on.
        async with client.stream(
            "GET", f"/v1/runs/{run_id}/logs", params={"follow": "true"}
        ) as resp:
            async for _chunk in resp.aiter_bytes():
                break
            await wait_for_state(client, run_id, TERMINAL, 60)

    started = time.monotonic()
    results: list[Any] = await asyncio.gather(follow(), follow(), stalled())
    assert results[0] == results[1] == b"line-1\nline-2\nline-3\n"
    # The stalled follower did not hold the run back: it ended in about its own 3 s.
    run = (await client.get(f"/v1/runs/{run_id}")).json()
    assert run["state"] == "succeeded" and time.monotonic() - started < 30


async def test_without_follow_shows_what_exists_so_far(
    client: httpx.AsyncClient, bucket: str
) -> None:
    run_id = await _submit(client, bucket, EARLY)
    deadline = time.monotonic() + 30
    seen = b""
    while time.monotonic() < deadline and not seen:
        seen = (await client.get(f"/v1/runs/{run_id}/logs")).content
        await asyncio.sleep(0.2)
    assert seen == b"early\n"
    assert (await client.get(f"/v1/runs/{run_id}")).json()["state"] == "running"
    await wait_for_state(client, run_id, TERMINAL)
    assert (await client.get(f"/v1/runs/{run_id}/logs")).content == b"early\nlate\n"
