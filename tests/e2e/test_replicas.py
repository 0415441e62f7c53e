"""Three service processes on one PostgreSQL and one Docker engine: 60 runs, each executed
exactly once (container starts counted from the engine's own events), then one replica is
SIGKILLed with runs in flight and the others finish all of them."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.harness import Service, create_database, make_run, pg_s3_env

# Ten times what the three replicas run at once (2 each): enough for claims to race.
RUNS = 60
FAST_RECOVERY = {
    "TASKDEPLOY_LEASE_SECONDS": "3",
    "TASKDEPLOY_RECONCILE_INTERVAL_SECONDS": "1",
    "TASKDEPLOY_MAX_CONCURRENT_RUNS": "2",
    "TASKDEPLOY_LOG_LEVEL": "WARNING",
}


class ContainerStarts:
    """Counts `start` events of the service's containers, by run id, from `docker events`."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [
                "docker",
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--filter",
                "label=taskdeploy.managed=true",
                "--format",
                '{{index .Actor.Attributes "taskdeploy.run_id"}}',
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.counts: Counter[str] = Counter()
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def pump() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                loop.call_soon_threadsafe(self._lines.put_nowait, line.strip())

        self._thread = loop.run_in_executor(None, pump)

    async def until(self, run_ids: set[str], deadline_s: float = 60) -> Counter[str]:
        deadline = time.monotonic() + deadline_s
        while not run_ids <= set(self.counts) and time.monotonic() < deadline:
            try:
                line = await asyncio.wait_for(self._lines.get(), 1)
            except TimeoutError:
                continue
            self.counts[line] += 1
        while not self._lines.empty():
            self.counts[self._lines.get_nowait()] += 1
        return self.counts

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
async def starts() -> Iterator[ContainerStarts]:  # type: ignore[misc]
    events = ContainerStarts()
    yield events
    events.close()


async def _terminal_states(database: str, run_ids: list[str], deadline_s: float) -> dict[str, str]:
    conn = await asyncpg.connect(database.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            rows = await conn.fetch("SELECT id, state FROM runs WHERE id = ANY($1)", run_ids)
            states = {r["id"]: r["state"] for r in rows}
            done = [
                s
                for s in states.values()
                if s in {"succeeded", "failed", "timed_out", "cancelled", "error"}
            ]
            if len(done) == len(run_ids) or time.monotonic() > deadline:
                return states
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _submit(services: list[Service], bodies: list[dict[str, Any]]) -> list[str]:
    clients = [httpx.AsyncClient(base_url=s.base_url, timeout=30) for s in services]
    try:
        gate = asyncio.Semaphore(16)

        async def post(i: int, body: dict[str, Any]) -> str:
            async with gate:
                resp = await clients[i % len(clients)].post("/v1/runs", json=body)
                assert resp.status_code == 202, resp.text
                return str(resp.json()["id"])

        return await asyncio.gather(*(post(i, b) for i, b in enumerate(bodies)))
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.slow
async def test_three_replicas_run_each_once_and_survive_losing_one(
    service_factory: Any,
    postgres_url: str,
    s3_endpoint: str,
    bucket: str,
    starts: ContainerStarts,
) -> None:
    database = await create_database(postgres_url)
    env = {**pg_s3_env(database, s3_endpoint), **FAST_RECOVERY}
    replicas: list[Service] = [service_factory(env) for _ in range(3)]

    run_ids = await _submit(replicas, [make_run(f"s3://{bucket}/o/", command="true")] * RUNS)
    states = await _terminal_states(database, run_ids, 600)
    assert Counter(states.values()) == Counter({"succeeded": RUNS})
    counts = await starts.until(set(run_ids))
    assert {run_id: counts[run_id] for run_id in run_ids} == dict.fromkeys(run_ids, 1)

    # Runs in flight on every replica; then one replica dies.
    sleepers = await _submit(
        replicas, [make_run(f"s3://{bucket}/o/", command="sleep 4; echo done")] * 12
    )
    conn = await asyncpg.connect(database.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT instance_id FROM runs WHERE id = ANY($1) AND state = 'running'", sleepers
            )
            if rows:
                victim = rows[0]["instance_id"]
            else:
                await asyncio.sleep(0.1)
    finally:
        await conn.close()
    assert victim is not None
    killed = next(s for s in replicas if s.instance_id == victim)
    killed.kill()

    states = await _terminal_states(database, sleepers, 300)
    assert Counter(states.values()) == Counter({"succeeded": 12}), states
    counts = await starts.until(set(sleepers))
    assert {run_id: counts[run_id] for run_id in sleepers} == dict.fromkeys(sleepers, 1)
