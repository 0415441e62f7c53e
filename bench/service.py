"""Drives the service through its HTTP API: POST /v1/runs, then GET /v1/runs/{id}/wait until the
client learns the run's end, which is where a client's time ends too."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import httpx

from bench.common import Job, Outcome, gather_bounded
from tests.e2e.harness import TERMINAL, make_run

# Longest single wait request, and how many of them at once (below the service's default
# TASKDEPLOY_MAX_WAITERS_PER_OWNER of 50).
WAIT_SECONDS = 30.0
WAITERS = 32


def run_body(job: Job) -> dict[str, Any]:
    body = make_run(
        job.output,
        command=job.command,
        image=job.image,
        packages=list(job.packages),
        resources={"cpus": job.cpus, "memory_mb": job.memory_mb},
        timeout_seconds=job.timeout_seconds,
    )
    if job.input:
        body["input"] = job.input
    return body


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


@dataclass(frozen=True)
class RequestSample:
    """One request of the load test: its kind, latency and whether it was answered well."""

    kind: str
    seconds: float
    ok: bool
    error: str = ""


class ServiceDriver:
    """A client of one running service; every wait has a deadline."""

    def __init__(self, client: httpx.AsyncClient, poll_interval: float = 0.05) -> None:
        self.client = client
        self.poll_interval = poll_interval

    async def submit(self, job: Job) -> str:
        response = await self.client.post("/v1/runs", json=run_body(job))
        response.raise_for_status()
        return str(response.json()["id"])

    async def wait(self, run_id: str, deadline_s: float) -> dict[str, Any]:
        """The run once the service says it is terminal (through the wait endpoint, which
        answers the moment the terminal transition commits)."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            seconds = min(WAIT_SECONDS, max(deadline - time.monotonic(), 0.1))
            response = await self.client.get(
                f"/v1/runs/{run_id}/wait",
                params={"timeout": f"{seconds:.1f}"},
                timeout=seconds + 30,
            )
            response.raise_for_status()
            run: dict[str, Any] = response.json()
            if run["state"] in TERMINAL:
                return run
        raise TimeoutError(f"run {run_id} did not end within {deadline_s:g} s")

    async def wait_until_running(self, run_ids: list[str], deadline_s: float = 120) -> None:
        deadline = time.monotonic() + deadline_s
        for run_id in run_ids:
            while True:
                response = await self.client.get(f"/v1/runs/{run_id}")
                response.raise_for_status()
                state = response.json()["state"]
                if state == "running":
                    break
                if state in TERMINAL or time.monotonic() > deadline:
                    raise RuntimeError(f"run {run_id} is {state}, not running")
                await asyncio.sleep(self.poll_interval)

    async def run_to_end(self, job: Job) -> tuple[float, dict[str, Any]]:
        """(seconds from the client's POST to the client learning the terminal state, the run)."""
        started = time.perf_counter()
        run = await self.wait(await self.submit(job), job.timeout_seconds + 60)
        return time.perf_counter() - started, run

    async def run(self, job: Job) -> Outcome:
        seconds, run = await self.run_to_end(job)
        learned = time.time()
        ok = run["state"] == "succeeded"
        phases = await self.phases(run)
        # From the terminal transition's stamp to the client knowing (the same host clock).
        phases["ended->client"] = learned - _timestamp(run["finished_at"])
        return Outcome(seconds, ok, run["status_reason"] or run["state"], phases)

    async def phases(self, run: dict[str, Any]) -> dict[str, float]:
        """Seconds the run spent in each state, from its recorded events."""
        events = await self.events(run["id"])
        times = [(e["to_state"], _timestamp(e["at"])) for e in events]
        return {state: later - at for (state, at), (_, later) in itertools.pairwise(times)}

    async def stdout(self, run_id: str) -> str:
        response = await self.client.get(f"/v1/runs/{run_id}/logs", params={"stream": "stdout"})
        response.raise_for_status()
        return response.text

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/v1/runs/{run_id}/events")
        response.raise_for_status()
        return list(response.json()["items"])

    async def throughput(
        self, job: Job, count: int, deadline_s: float
    ) -> tuple[float, list[Outcome]]:
        """Submits `count` runs at once; (runs per minute from the first submit until the client
        learned the last end, outcomes: each from that first submit to the client learning it)."""
        started = time.perf_counter()
        run_ids = await gather_bounded([lambda: self.submit(job)] * count, 16)

        async def learn(run_id: str) -> Outcome:
            run = await self.wait(run_id, deadline_s)
            return Outcome(time.perf_counter() - started, run["state"] == "succeeded", run["state"])

        # Fewer waiters at once than an owner may have (TASKDEPLOY_MAX_WAITERS_PER_OWNER).
        outcomes = await gather_bounded([partial(learn, r) for r in run_ids], WAITERS)
        return len(outcomes) / max(o.seconds for o in outcomes) * 60, outcomes

    async def open_loop(
        self, job: Job, rate: float, duration: float, seed_ids: list[str]
    ) -> list[RequestSample]:
        """POST /v1/runs and GET /v1/runs/{id} alternately at `rate` requests/s for `duration`
        seconds, on a fixed schedule: a slow answer never delays the next request (open loop),
        so queueing in the service shows up in the latencies instead of hiding."""
        known = list(seed_ids)
        body = run_body(job)
        chooser = random.Random(1)

        async def post() -> httpx.Response:
            response = await self.client.post("/v1/runs", json=body)
            if response.status_code == 202:
                known.append(response.json()["id"])
            return response

        async def get() -> httpx.Response:
            return await self.client.get(f"/v1/runs/{chooser.choice(known)}")

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            kind, call = ("POST", post) if i % 2 == 0 else ("GET", get)
            tasks.append(asyncio.create_task(_timed(kind, call)))
        return list(await asyncio.gather(*tasks))


async def _timed(kind: str, call: Any) -> RequestSample:
    started = time.perf_counter()
    try:
        response = await call()
    except httpx.HTTPError as exc:
        return RequestSample(kind, time.perf_counter() - started, False, repr(exc))
    seconds = time.perf_counter() - started
    ok = response.status_code in (200, 202)
    return RequestSample(kind, seconds, ok, "" if ok else f"HTTP {response.status_code}")
