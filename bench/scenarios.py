"""The scenarios of the performance issue: each measures the service against its baseline."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import httpx

from bench.common import (
    Check,
    Endpoints,
    Job,
    LoopLag,
    MiB,
    Outcome,
    PeakRss,
    ScenarioResult,
    Service,
    delete_prefix,
    gather_bounded,
    p50,
    p99,
    phase_summary,
    process_cpu_seconds,
    put_inputs,
    ratio,
    running_service,
    scratch_bucket,
)
from bench.per_run_build import PerRunBuild
from bench.profile import profiled
from bench.raw_floor import RawFloor
from bench.service import RequestSample, ServiceDriver
from tests.e2e.harness import DEBIAN

RunFn = Callable[[Job], Awaitable[Outcome]]


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does: the issue's figures, or `--quick` ones."""

    reps: int  # packages, data, metrics
    trivial_reps: int
    throughput_runs: int
    api_seconds: float
    small_files: int
    big_file_bytes: int
    cpu_loop: int  # shell-loop iterations of the CPU-bound command (1M = about 2 s here)
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    api_rate: float = 100.0
    small_file_bytes: int = 512 * 1024
    budget_s: float = 1800  # per scenario; then it is cancelled and cleaned up


FULL = Sizes(
    reps=5,
    trivial_reps=50,  # p99 of fewer is only the slowest run
    throughput_runs=200,
    api_seconds=30,
    small_files=1000,
    big_file_bytes=512 * MiB,
    cpu_loop=2_500_000,
)
QUICK = Sizes(
    reps=3,
    trivial_reps=5,
    throughput_runs=20,
    api_seconds=10,
    small_files=64,
    big_file_bytes=32 * MiB,
    cpu_loop=1_000_000,
    budget_s=600,
)


@dataclass
class Bench:
    """What every scenario shares: sizes, the endpoints and one Docker and one S3 client."""

    endpoints: Endpoints
    sizes: Sizes
    workdir: Path
    docker: aiodocker.Docker
    s3: Any
    profile_dir: Path | None = None

    @property
    def floor(self) -> RawFloor:
        return RawFloor(self.docker, self.s3)

    @property
    def old_design(self) -> PerRunBuild:
        return PerRunBuild(self.docker, self.s3, self.workdir)

    @asynccontextmanager
    async def service(self, **settings: object) -> AsyncIterator[tuple[Service, ServiceDriver]]:
        """A fresh service with these settings, and a driver for it (profiled if asked)."""
        async with (
            running_service(self.endpoints, self.workdir, settings) as service,
            httpx.AsyncClient(base_url=service.base_url, timeout=30) as client,
        ):
            profile = None
            if self.profile_dir is not None:
                profile = self.profile_dir / f"{service.instance_id}.folded"
            with profiled(service.pid, profile):
                yield service, ServiceDriver(client)


# ---------------------------------------------------------------------- helpers
def seconds(outcomes: list[Outcome]) -> list[float]:
    return [outcome.seconds for outcome in outcomes]


def failures(label: str, outcomes: list[Outcome]) -> list[str]:
    bad = [outcome.detail for outcome in outcomes if not outcome.ok]
    return [f"{label}: {len(bad)} of {len(outcomes)} runs failed ({bad[0]})"] if bad else []


def versus(
    metric: str,
    unit: str,
    service: float,
    baseline: float,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
) -> Check:
    """A row comparing the service with its baseline; a target, if any, is on service/baseline."""
    r = ratio(service, baseline)
    check = Check(metric, unit, service, baseline, r)
    if at_least is not None:
        check.target, check.met = f">= {at_least:g}x", r >= at_least
    if at_most is not None:
        check.target, check.met = f"<= {at_most:g}x", r <= at_most
    return check


def within(metric: str, unit: str, value: float, limit: float) -> Check:
    """A row whose value must stay at or below `limit`, in its own unit."""
    return Check(metric, unit, value, target=f"<= {limit:g} {unit}", met=value <= limit)


async def alternate(
    first: RunFn,
    second: RunFn,
    job: Job,
    reps: int,
    *,
    warmup: Job,
    between: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[Outcome], list[Outcome]]:
    """`reps` runs of each, interleaved (ABBA...) so drift hits both alike, after one `warmup`
    run of each (connection pools; the service builds its environment image once)."""
    await first(warmup)
    await second(warmup)
    a: list[Outcome] = []
    b: list[Outcome] = []
    for rep in range(reps):
        order = [(first, a), (second, b)]
        for run, into in order if rep % 2 == 0 else reversed(order):
            into.append(await run(job))
            if between is not None:
                await between()
    return a, b


def latency_checks(
    label: str, service: list[float], baseline: list[float], limits: tuple[float, float] | None
) -> list[Check]:
    """p50 and p99 rows, against `limits` on service/baseline when given."""
    p50_limit, p99_limit = limits or (None, None)
    return [
        versus(f"{label} p50", "s", p50(service), p50(baseline), at_most=p50_limit),
        versus(f"{label} p99", "s", p99(service), p99(baseline), at_most=p99_limit),
    ]


# ---------------------------------------------------------------------- scenarios
async def trivial(bench: Bench) -> ScenarioResult:
    """`true` on busybox, no inputs: submit -> terminal against the floor's whole pipeline."""
    result = ScenarioResult(
        "trivial", "Trivial run: `true` on busybox, no inputs (submit -> terminal)"
    )
    async with scratch_bucket(bench.s3) as bucket, bench.service() as (_, driver):
        job = Job(command="true", output=f"s3://{bucket}/trivial/")
        served, floor = await alternate(
            driver.run, bench.floor.run, job, bench.sizes.trivial_reps, warmup=job
        )
    result.checks = latency_checks("submit->terminal", seconds(served), seconds(floor), (1.25, 1.5))
    result.notes = [
        f"{bench.sizes.trivial_reps} runs each, interleaved, after one warm-up run each; baseline = raw floor",
        "service: the client's POST -> the client learning the terminal state (GET .../wait); "
        "floor: create -> start -> wait -> logs -> stdout, stderr, run.json in S3 (the removal "
        "after it is left out, as the service removes its container after the terminal state)",
        f"service states p50 (s): {phase_summary(served)}",
        f"floor steps p50 (s): {phase_summary(floor)}",
        *failures("service", served),
        *failures("floor", floor),
    ]
    result.data = {
        "service_s": seconds(served),
        "floor_s": seconds(floor),
        "service_phases": [o.phases for o in served],
        "floor_phases": [o.phases for o in floor],
    }
    return result


async def throughput(bench: Bench) -> ScenarioResult:
    """N trivial runs submitted at once, per max_concurrent_runs, against the floor at that width."""
    n = bench.sizes.throughput_runs
    result = ScenarioResult("throughput", f"Throughput: {n} trivial runs submitted at once")
    cpu_notes = []
    async with scratch_bucket(bench.s3) as bucket:
        job = Job(command="true", output=f"s3://{bucket}/throughput/")
        for width in bench.sizes.concurrency:
            served_rate, served, served_cpu = await service_throughput(bench, job, width)
            await delete_prefix(bench.s3, bucket, "throughput/")
            floor_rate, floor, floor_cpu = await floor_throughput(bench, job, width)
            await delete_prefix(bench.s3, bucket, "throughput/")
            metric = f"max_concurrent_runs={width}"
            result.checks.append(versus(metric, "runs/min", served_rate, floor_rate, at_least=0.9))
            result.notes += failures(f"service at {width}", served)
            result.notes += failures(f"floor at {width}", floor)
            cpu_notes.append(f"{width}: {served_cpu * 1000:.0f} vs {floor_cpu * 1000:.0f}")
            result.data[f"concurrency_{width}"] = {
                "service_runs_per_min": served_rate,
                "floor_runs_per_min": floor_rate,
                "service_cpu_s_per_run": served_cpu,
                "floor_client_cpu_s_per_run": floor_cpu,
            }
    result.notes[:0] = [
        "service: first submit -> last terminal state; floor: the same runs, that many at a time",
        "CPU ms per run, service process vs the floor's whole client process, by width: "
        + "; ".join(cpu_notes),
    ]
    return result


async def service_throughput(
    bench: Bench, job: Job, width: int
) -> tuple[float, list[Outcome], float]:
    """(runs/min, outcomes, service CPU seconds per run) with max_concurrent_runs=width."""
    n = bench.sizes.throughput_runs
    async with bench.service(max_concurrent_runs=width) as (service, driver):
        await driver.run(job)  # warm-up
        cpu_before = process_cpu_seconds(service.pid)
        rate, outcomes = await driver.throughput(job, n, deadline_s=bench.sizes.budget_s)
        return rate, outcomes, (process_cpu_seconds(service.pid) - cpu_before) / n


async def floor_throughput(
    bench: Bench, job: Job, width: int
) -> tuple[float, list[Outcome], float]:
    """(runs/min, outcomes, this process's CPU seconds per run) with `width` runs at a time."""
    n = bench.sizes.throughput_runs
    started, cpu_before = time.perf_counter(), time.process_time()
    outcomes = await gather_bounded([lambda: bench.floor.run(job)] * n, width)
    rate = n / (time.perf_counter() - started) * 60
    return rate, outcomes, (time.process_time() - cpu_before) / n


PACKAGES_COMMAND = (
    'jq -n --arg n "$(ls "$INPUT_DIR" | wc -l)" \'{files: ($n | tonumber)}\' > "$OUTPUT_DIR/summary.json"'
    ' && cat "$INPUT_DIR"/* | wc -c'
)


async def packages(bench: Bench) -> ScenarioResult:
    """packages ["jq"] + 10 MiB of inputs, repeated: cached environment image vs a build per run."""
    reps = max(bench.sizes.reps, 2)
    result = ScenarioResult("packages", f'Packages ["jq"] + 10 MiB of inputs, {reps} runs each')
    async with scratch_bucket(bench.s3) as bucket:
        inputs = f"s3://{bucket}/jq-in/"
        await put_inputs(bench.s3, inputs, [(f"part-{i:02d}.bin", MiB) for i in range(10)])
        job = Job(
            command=PACKAGES_COMMAND,
            image=DEBIAN,
            packages=("jq",),
            input=inputs,
            output=f"s3://{bucket}/jq-out/",
            memory_mb=256,
            writes_outputs=True,
        )
        async with bench.service() as (_, driver):
            first_s, first_run = await driver.run_to_end(job)
            how = [
                e["detail"]
                for e in await driver.events(first_run["id"])
                if e["to_state"] == "running"
            ]
            served = [await driver.run(job) for _ in range(reps - 1)]
        old = [await bench.old_design.run(job) for _ in range(reps)]
    later, old_later = seconds(served), seconds(old[1:])
    speedup = ratio(p50(old_later), p50(later))
    result.checks = [
        versus("first run", "s", first_s, old[0].seconds),
        *latency_checks("later runs", later, old_later, None),
        Check(
            "speed-up after the first run (p50)", "x", speedup, target=">= 20x", met=speedup >= 20
        ),
    ]
    result.notes = [
        "baseline = per-run-build design (apt-get update + install + COPY inputs, no layer cache, image removed)",
        f"service's first run: {how[0] if how else first_run['state']}",
        f"service states p50 after the first (s): {phase_summary(served)}",
        f"per-run build steps p50 after the first (s): {phase_summary(old[1:])}",
        *failures("service", served),
        *failures("per-run build", old),
    ]
    result.data = {"service_first_s": first_s, "service_s": later, "per_run_build_s": seconds(old)}
    return result


def request_checks(samples: list[RequestSample]) -> list[Check]:
    rows = []
    for kind in ("POST", "GET"):
        ms = [s.seconds * 1000 for s in samples if s.kind == kind]
        rows += [
            Check(f"{kind} /v1/runs p50", "ms", p50(ms)),
            within(f"{kind} /v1/runs p99", "ms", p99(ms), 25),
        ]
    rows.append(within("errors", "requests", sum(not s.ok for s in samples), 0))
    return rows


async def api(bench: Bench) -> ScenarioResult:
    """POST and GET at a fixed rate while 4 containers run; latency from the client's side."""
    rate, duration = bench.sizes.api_rate, bench.sizes.api_seconds
    result = ScenarioResult(
        "api", f"API under load: {rate:g} requests/s for {duration:g} s while 4 containers run"
    )
    async with (
        scratch_bucket(bench.s3) as bucket,
        bench.service(max_concurrent_runs=4) as (_, driver),
    ):
        output = f"s3://{bucket}/api/"
        holders = [
            await driver.submit(Job(command=f"sleep {duration + 120:.0f}", output=output))
            for _ in range(4)
        ]
        await driver.wait_until_running(holders)
        # With all 4 slots held, the POSTed runs stay queued: the load is the API and the database.
        async with LoopLag() as client_lag:
            samples = await driver.open_loop(
                Job(command="true", output=output), rate, duration, holders
            )
        # The holders are not cancelled: that would start the queued runs. Stopping the service
        # ends them (its shutdown grace), and its containers are removed by label.
    result.checks = request_checks(samples)
    result.checks.append(Check("event-loop lag p99", "ms", "not exposed yet", target="<= 10 ms"))
    client_p99 = p99(client_lag.samples) * 1000
    result.notes = [
        f"{len(samples)} requests, open loop (a fixed schedule, not waiting for answers); latency measured by the client",
        f"the client's own event-loop lag p99 was {client_p99:.1f} ms (it inflates every figure above by up to that much)",
        *sorted({s.error for s in samples if not s.ok})[:3],
    ]
    result.data = {
        "latency_ms": {
            k: [s.seconds * 1000 for s in samples if s.kind == k] for k in ("POST", "GET")
        },
        "errors": [s.error for s in samples if not s.ok],
        "client_loop_lag_ms_p99": client_p99,
    }
    return result


async def data(bench: Bench) -> ScenarioResult:
    """About 1 GiB of inputs staged in and the same volume of outputs uploaded."""
    sizes = bench.sizes
    files = [(f"small-{i:04d}.bin", sizes.small_file_bytes) for i in range(sizes.small_files)]
    files.append(("big.bin", sizes.big_file_bytes))
    volume = sum(size for _, size in files)
    result = ScenarioResult(
        "data",
        f"Data: {len(files)} files, {volume / MiB:.0f} MiB in and the same out, {sizes.reps} runs each",
    )
    async with scratch_bucket(bench.s3) as bucket, bench.service() as (service, driver):
        inputs = f"s3://{bucket}/data-in/"
        await put_inputs(bench.s3, inputs, files)
        job = Job(
            command='cp -R "$INPUT_DIR"/. "$OUTPUT_DIR"/',
            input=inputs,
            output=f"s3://{bucket}/data-out/",
            memory_mb=1024,
            timeout_seconds=3600,
            writes_outputs=True,
        )
        growth: list[int] = []

        async def served_run(job: Job) -> Outcome:
            with PeakRss(service.pid) as rss:
                outcome = await driver.run(job)
            growth.append(rss.growth)
            return outcome

        async def clear_outputs() -> None:
            await delete_prefix(bench.s3, bucket, "data-out/")  # moto holds objects in memory

        warmup = Job(command="true", output=job.output)
        served, floor = await alternate(
            served_run, bench.floor.run, job, sizes.reps, warmup=warmup, between=clear_outputs
        )
    served_mibs = [2 * volume / MiB / s for s in seconds(served)]
    floor_mibs = [2 * volume / MiB / s for s in seconds(floor)]
    peak = max(growth[1:] or growth) / MiB  # the first entry is the warm-up run
    result.checks = [
        versus(
            "throughput (in + out) p50", "MiB/s", p50(served_mibs), p50(floor_mibs), at_least=0.8
        ),
        versus("run time p50", "s", p50(seconds(served)), p50(seconds(floor))),
        within("service peak RSS growth (max)", "MiB", peak, 100),
    ]
    result.notes = [
        "command: cp -R $INPUT_DIR/. $OUTPUT_DIR/; throughput = 2 x input volume / (submit -> terminal)",
        f"service states p50 (s): {phase_summary(served)}",
        f"floor steps p50 (s): {phase_summary(floor)}",
        *failures("service", served),
        *failures("floor", floor),
    ]
    result.data = {
        "volume_bytes": volume,
        "service_s": seconds(served),
        "floor_s": seconds(floor),
        "rss_growth_bytes": growth,
        "service_phases": [o.phases for o in served],
        "floor_phases": [o.phases for o in floor],
    }
    return result


def cpu_loop_command(iterations: int) -> str:
    """A CPU-bound shell loop that prints its start and end on /proc/uptime's clock, then its
    own CPU time (`times`: user and system of the shell, which forks nothing in the loop)."""
    return (
        "read a _ </proc/uptime; i=0; "
        f"while [ $i -lt {iterations} ]; do i=$((i+1)); done; "
        'read b _ </proc/uptime; echo "$a $b"; times'
    )


@dataclass(frozen=True)
class LoopRun:
    elapsed: float  # the loop's wall time inside the container
    own_cpu: float  # the loop's own CPU time
    other_cpu: float  # the rest of the container's CPU time: wrapper, log readers, sampler
    samples: int


def _minutes_seconds(text: str) -> float:
    minutes, _, rest = text.partition("m")
    return int(minutes) * 60 + float(rest.rstrip("s"))


def parse_loop_run(stdout: str, run: dict[str, Any]) -> LoopRun:
    clock, own = stdout.splitlines()[:2]
    start, end = (float(x) for x in clock.split())
    own_cpu = sum(_minutes_seconds(x) for x in own.split())
    summary = run["metrics"] or {}
    return LoopRun(
        end - start, own_cpu, summary.get("cpu_seconds", 0) - own_cpu, summary.get("samples", 0)
    )


METRICS_INTERVALS = {"off": 60.0, "1 s": 1.0, "0.1 s": 0.1}
METRICS_LIMITS = {"1 s": 1.0, "0.1 s": 3.0}  # % of one CPU


async def metrics(bench: Bench) -> ScenarioResult:
    """A CPU-bound command with the in-container sampler at 1 s and 0.1 s against sampling off."""
    reps = bench.sizes.reps
    result = ScenarioResult(
        "metrics", f"Metrics sampler overhead: CPU-bound command, {reps} runs per interval"
    )
    runs: dict[str, list[LoopRun]] = {label: [] for label in METRICS_INTERVALS}
    async with scratch_bucket(bench.s3) as bucket, AsyncExitStack() as stack:
        job = Job(command=cpu_loop_command(bench.sizes.cpu_loop), output=f"s3://{bucket}/metrics/")
        drivers = {}
        for label, interval in METRICS_INTERVALS.items():
            _, drivers[label] = await stack.enter_async_context(
                bench.service(metrics_interval_seconds=interval)
            )
            await drivers[label].run(Job(command="true", output=job.output))  # warm-up
        for _ in range(reps):  # round robin over the three services, so drift hits all alike
            for label, driver in drivers.items():
                _, run = await driver.run_to_end(job)
                runs[label].append(parse_loop_run(await driver.stdout(run["id"]), run))
    result.checks = metrics_checks(runs)
    result.notes = [
        "sampling off = TASKDEPLOY_METRICS_INTERVAL_SECONDS=60 (its maximum): only the start and final samples",
        "by run time: (fastest loop with sampling - fastest without) / fastest without; the loop runs under a "
        "1-CPU limit, so CPU the sampler takes slows it by that share; fastest of N because contention only adds",
        "by CPU accounting: (container CPU - the loop's own CPU) with sampling, minus the same without, "
        "per second of loop; insensitive to other load on the host",
        "samples per run p50: "
        + ", ".join(f"{k}: {p50([r.samples for r in v]):.0f}" for k, v in runs.items()),
    ]
    result.data = {label: [vars(r) for r in v] for label, v in runs.items()}
    return result


def metrics_checks(runs: dict[str, list[LoopRun]]) -> list[Check]:
    fastest_off = min(r.elapsed for r in runs["off"])
    other_off = p50([r.other_cpu for r in runs["off"]])
    checks = [Check("loop time, sampling off (fastest)", "s", fastest_off)]
    for label, limit in METRICS_LIMITS.items():
        fastest = min(r.elapsed for r in runs[label])
        by_time = (fastest - fastest_off) / fastest_off * 100
        extra_cpu = p50([r.other_cpu for r in runs[label]]) - other_off
        by_cpu = extra_cpu / p50([r.elapsed for r in runs[label]]) * 100
        checks += [
            versus(f"loop time, sampling every {label} (fastest)", "s", fastest, fastest_off),
            within(f"sampler cost at {label}, by run time", "% of 1 CPU", by_time, limit),
            within(f"sampler cost at {label}, by CPU accounting", "% of 1 CPU", by_cpu, limit),
        ]
    return checks


SCENARIOS: dict[str, Callable[[Bench], Awaitable[ScenarioResult]]] = {
    "trivial": trivial,
    "throughput": throughput,
    "packages": packages,
    "api": api,
    "data": data,
    "metrics": metrics,
}
