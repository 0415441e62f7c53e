"""Shared plumbing for the benchmarks: real services, S3 buckets, statistics, tables and results."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aioboto3
import aiodocker
import aiohttp
import asyncpg
from botocore.config import Config

from tests.e2e.harness import BUSYBOX, Service, create_database, pg_s3_env, start_service

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
BENCH_LABEL = "taskdeploy.bench"
"""Every container and image the benchmarks create themselves carries `taskdeploy.bench=1`."""
S3_REGION = "us-east-1"
KiB = 1024
MiB = 1024 * KiB

T = TypeVar("T")


# ---------------------------------------------------------------------- what to run
@dataclass(frozen=True)
class Endpoints:
    """The PostgreSQL server and S3 endpoint the tests use; `make bench` exports both."""

    database_url: str
    s3_endpoint: str

    @classmethod
    def from_env(cls) -> Endpoints:
        names = ("TASKDEPLOY_TEST_DATABASE_URL", "TASKDEPLOY_TEST_S3_ENDPOINT")
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            raise SystemExit(f"{', '.join(missing)} not set: run the benchmarks with `make bench`")
        return cls(os.environ[names[0]], os.environ[names[1]])


@dataclass(frozen=True)
class Job:
    """One run, described once and carried out by the service, the floor or the old design."""

    command: str
    output: str  # s3://bucket/prefix/; results land under <prefix><run id>/
    input: str | None = None
    image: str = BUSYBOX
    packages: tuple[str, ...] = ()
    cpus: float = 1.0
    memory_mb: int = 128
    timeout_seconds: int = 600
    # Whether the command writes into $OUTPUT_DIR: the floor then stages the folder and reads
    # it back (the service always does both; a floor does only what the job needs).
    writes_outputs: bool = False


@dataclass(frozen=True)
class Outcome:
    """How one run went, as its driver measured it; `phases` splits `seconds` into steps."""

    seconds: float
    ok: bool
    detail: str = ""
    phases: dict[str, float] = field(default_factory=dict)


class Laps:
    """Seconds spent in consecutive named steps."""

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self.started


def phase_summary(outcomes: Sequence[Outcome]) -> str:
    """Each step's p50 over the outcomes ("create 0.008, start 0.2"), in the order they ran."""
    names = list(dict.fromkeys(name for outcome in outcomes for name in outcome.phases))
    return ", ".join(
        f"{name} {p50([o.phases[name] for o in outcomes if name in o.phases]):.3f}"
        for name in names
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """("bucket", "prefix/") of an s3://bucket/prefix/ URI."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix


# ---------------------------------------------------------------------- the service
@asynccontextmanager
async def running_service(
    endpoints: Endpoints, workdir: Path, settings: dict[str, object]
) -> AsyncIterator[Service]:
    """A `taskdeploy serve` subprocess (as the e2e tests start it) on a fresh database.

    `settings` are Settings field names (`max_concurrent_runs=2`), passed as TASKDEPLOY_* vars.
    Afterwards the process is stopped, anything labelled with its instance id removed and the
    database dropped.
    """
    database = await create_database(endpoints.database_url)
    env = pg_s3_env(database, endpoints.s3_endpoint)
    env.update({f"TASKDEPLOY_{key.upper()}": str(value) for key, value in settings.items()})
    try:
        service = await asyncio.to_thread(start_service, workdir, env)
        try:
            yield service
        finally:
            await asyncio.to_thread(service.stop)
            await remove_labelled({"taskdeploy.instance": service.instance_id})
    finally:
        await drop_database(endpoints.database_url, database)


DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")


async def durability(server_url: str) -> dict[str, str]:
    """The PostgreSQL settings a commit's cost depends on, as the server reports them (SHOW)."""
    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in DURABILITY_SETTINGS}
    finally:
        await conn.close()


def durability_line(settings: dict[str, str]) -> str:
    line = "PostgreSQL: " + ", ".join(f"{name}={value}" for name, value in settings.items())
    if settings.get("fsync") != "on" or settings.get("synchronous_commit") != "on":
        line += " -- NOT default durability: no figure here stands for a production database"
    return line


async def drop_database(server_url: str, database_url: str) -> None:
    name = database_url.rpartition("/")[2]
    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def remove_labelled(labels: dict[str, str]) -> int:
    """Force-removes containers (with their volumes) and images carrying all `labels`."""
    filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
    removed = 0
    async with aiodocker.Docker() as docker:
        for container in await docker.containers.list(all=True, filters=filters):
            with suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)
                removed += 1
        for image in await docker.images.list(filters=filters):
            with suppress(aiodocker.DockerError):
                await docker.images.delete(image["Id"], force=True)
                removed += 1
    return removed


@asynccontextmanager
async def docker_client(socket: str = "/var/run/docker.sock") -> AsyncIterator[aiodocker.Docker]:
    """One aiodocker client for the whole bench run, which never advertises gzip.

    aiohttp sends `Accept-Encoding: gzip, deflate` by default, and dockerd then gzips every
    archive download (GET .../archive): 64 MiB of outputs took 2 s instead of 0.2 s here. A
    floor must not pay for that, so its session skips the header.
    """
    connector = aiohttp.UnixConnector(socket)
    session = aiohttp.ClientSession(
        connector=connector,
        # No total timeout: archives of a GiB take a while; each scenario has its own budget.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        skip_auto_headers=["Accept-Encoding"],
    )
    # With a connector given, the URL only names the host in request URLs.
    docker = aiodocker.Docker(url="unix://localhost", connector=connector, session=session)
    try:
        yield docker
    finally:
        await docker.close()
        await session.close()


# ---------------------------------------------------------------------- S3
@asynccontextmanager
async def s3_client(endpoint: str) -> AsyncIterator[Any]:
    """One aioboto3 client for the whole bench run (moto accepts any credentials)."""
    session = aioboto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=S3_REGION
    )
    config = Config(s3={"addressing_style": "path"}, max_pool_connections=32)
    async with session.client("s3", endpoint_url=endpoint, config=config) as client:
        yield client


@asynccontextmanager
async def scratch_bucket(s3: Any) -> AsyncIterator[str]:
    """A fresh bucket, emptied and deleted afterwards (moto keeps objects in memory)."""
    name = f"bench-{uuid.uuid4().hex[:12]}"
    await s3.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        await delete_prefix(s3, name, "")
        await s3.delete_bucket(Bucket=name)


async def delete_prefix(s3: Any, bucket: str, prefix: str) -> None:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    async for page in pages:
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if keys:  # a listing page holds at most 1,000 keys, the delete_objects limit
            await s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


class PatternReader(io.RawIOBase):
    """`size` bytes of incompressible data without holding them: a random block, rotated."""

    _BLOCK = os.urandom(MiB)

    def __init__(self, size: int, seed: int) -> None:
        super().__init__()
        self._left = size
        self._offset = random.Random(seed).randrange(MiB)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        count = self._left if size < 0 else min(size, self._left)
        out = bytearray()
        while len(out) < count:
            take = min(count - len(out), MiB - self._offset)
            out += self._BLOCK[self._offset : self._offset + take]
            self._offset = (self._offset + take) % MiB
        self._left -= count
        return bytes(out)


async def put_inputs(s3: Any, uri: str, files: Sequence[tuple[str, int]]) -> int:
    """Uploads generated files (name, size) under `uri`; returns the bytes written."""
    bucket, prefix = split_s3_uri(uri)

    def upload(index: int, name: str, size: int) -> Callable[[], Awaitable[None]]:
        return lambda: s3.upload_fileobj(PatternReader(size, index), bucket, f"{prefix}{name}")

    await gather_bounded([upload(i, name, size) for i, (name, size) in enumerate(files)], 8)
    return sum(size for _, size in files)


# ---------------------------------------------------------------------- concurrency
async def gather_bounded(factories: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Awaits every factory's awaitable, at most `limit` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await factory()

    return list(await asyncio.gather(*(one(factory) for factory in factories)))


# ---------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def p50(values: Sequence[float]) -> float:
    return percentile(values, 50)


def p99(values: Sequence[float]) -> float:
    return percentile(values, 99)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


# ---------------------------------------------------------------------- process probes
def _status_bytes(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * KiB
    raise ValueError(f"no {field_name} in /proc/{pid}/status")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    # The fields after the command name, which may hold spaces: utime and stime are 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """Peak resident memory of a process over a `with` block, from /proc/PID/status.

    The kernel's high-water mark (VmHWM, reset by writing 5 to clear_refs) catches spikes a
    poller would miss; a thread polling VmRSS covers kernels that refuse the reset.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = self.peak = 0
        self._polled = 0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> PeakRss:
        self.baseline = self._polled = _status_bytes(self.pid, "VmRSS")
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._polled = max(self._polled, _status_bytes(self.pid, "VmRSS"))
            except (OSError, ValueError):
                return  # the process is gone

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = _status_bytes(self.pid, "VmHWM") if self._hwm_reset else 0
        self.peak = max(hwm, self._polled)


class LoopLag:
    """How late this process's own event loop wakes from a short sleep (client-side noise)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, time.perf_counter() - before - self.interval))

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


# ---------------------------------------------------------------------- results
@dataclass
class Check:
    """One line of a scenario's table: a measured figure against its baseline and target."""

    metric: str
    unit: str
    service: float | int | str | None
    baseline: float | int | str | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


@dataclass
class ScenarioResult:
    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        magnitude = abs(value)
        return (
            f"{value:.0f}"
            if magnitude >= 100
            else f"{value:.1f}"
            if magnitude >= 10
            else f"{value:.3f}"
        )
    return str(value)


def format_table(result: ScenarioResult) -> str:
    """The scenario as plain aligned text: a title, one row per check, then the notes."""
    header = ["metric", "unit", "service", "baseline", "ratio", "target", "met?"]
    rows = [
        [
            check.metric,
            check.unit,
            _cell(check.service),
            _cell(check.baseline),
            "-" if check.ratio is None else f"{_cell(check.ratio)}x",
            check.target or "-",
            {True: "yes", False: "NO", None: "-"}[check.met],
        ]
        for check in result.checks
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3, 4}

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [f"== {result.title}", line(header), line(["-" * width for width in widths])]
    out += [line(row) for row in rows]
    out += [f"  * {note}" for note in result.notes]
    return "\n".join(out)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Writes bench/results/<name>-<UTC timestamp>.json and returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
