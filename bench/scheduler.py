"""Scheduler benchmark: N schedules all due in the same second, on 1 and 3 replicas (PostgreSQL).

For each case: a fresh database, migrated; N schedules inserted with next_fire_at = T (a few
seconds ahead) and a yearly cron, so each fires exactly once; then the replicas start (the
dispatcher off: this measures firing, not running) and the benchmark waits until every run
row exists. Reported: time from T until the last row, p50/p99 lateness (created_at -
scheduled_for per run) and duplicates (must be 0).

    python -m bench.scheduler [--sizes 1000,10000] [--replicas 1,3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import mkdtemp

import asyncpg

from app import migrate
from bench.common import (
    Check,
    Endpoints,
    ScenarioResult,
    drop_database,
    format_table,
    p50,
    p99,
    write_results,
)
from tests.e2e.harness import create_database, pg_s3_env, start_service

LEAD_SECONDS = 20  # time for the replicas to start before the fire time
DEADLINE_SECONDS = 300
TEMPLATE = {
    "command": "true",
    "image": "busybox:latest",
    "output": "s3://bench-scheduler/out/",
}


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _insert_schedules(database: str, count: int, fire_at: datetime) -> None:
    conn = await asyncpg.connect(_dsn(database))
    try:
        now = datetime.now(UTC)
        rows = [
            (
                str(uuid.uuid4()),
                f"bench-{i}",
                "0 0 1 1 *",
                "UTC",
                json.dumps(TEMPLATE),
                False,
                "allow",
                "skip",
                fire_at,
                now,
                now,
            )
            for i in range(count)
        ]
        await conn.copy_records_to_table(
            "schedules",
            records=rows,
            columns=[
                "id",
                "name",
                "cron",
                "timezone",
                "run_template",
                "paused",
                "concurrency_policy",
                "misfire_policy",
                "next_fire_at",
                "created_at",
                "updated_at",
            ],
        )
    finally:
        await conn.close()


async def _measure(database: str, count: int, fire_at: datetime) -> dict[str, float]:
    conn = await asyncpg.connect(_dsn(database))
    try:
        deadline = time.monotonic() + LEAD_SECONDS + DEADLINE_SECONDS
        done_at = None
        while time.monotonic() < deadline:
            rows = await conn.fetchval("SELECT count(*) FROM runs")
            skipped = await conn.fetchval("SELECT reason FROM schedule_fires LIMIT 1")
            if skipped is not None:  # a refused template never makes its run: do not wait
                raise RuntimeError(f"the service skipped fires instead of running them: {skipped}")
            if rows >= count:
                done_at = await conn.fetchval("SELECT max(created_at) FROM runs")
                break
            await asyncio.sleep(0.2)
        lateness = [
            r["late"]
            for r in await conn.fetch(
                "SELECT extract(epoch FROM created_at - scheduled_for)::float AS late FROM runs"
            )
        ]
        duplicates = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT (schedule_id, scheduled_for)) FROM runs"
        )
    finally:
        await conn.close()
    return {
        "runs": float(len(lateness)),
        "all_rows_seconds": (done_at - fire_at).total_seconds() if done_at else float("nan"),
        "lateness_p50": p50(lateness) if lateness else float("nan"),
        "lateness_p99": p99(lateness) if lateness else float("nan"),
        "duplicates": float(duplicates),
    }


async def run_case(
    endpoints: Endpoints, count: int, replicas: int, workdir: Path
) -> dict[str, float]:
    database = await create_database(endpoints.database_url)
    try:
        await asyncio.to_thread(migrate.upgrade, database)
        fire_at = (datetime.now(UTC) + timedelta(seconds=LEAD_SECONDS)).replace(microsecond=0)
        await _insert_schedules(database, count, fire_at)
        env = {
            **pg_s3_env(database, endpoints.s3_endpoint),
            "TASKDEPLOY_DISPATCHER_ENABLED": "false",
            "TASKDEPLOY_ALLOWED_BUCKETS": TEMPLATE["output"].split("/")[2],
            "TASKDEPLOY_LOG_LEVEL": "WARNING",
        }
        with ThreadPoolExecutor(replicas) as pool:
            services = list(pool.map(lambda _: start_service(workdir, env), range(replicas)))
        try:
            return await _measure(database, count, fire_at)
        finally:
            for service in services:
                service.stop()
    finally:
        await drop_database(endpoints.database_url, database)


async def main(sizes: list[int], replica_counts: list[int]) -> ScenarioResult:
    endpoints = Endpoints.from_env()
    workdir = Path(mkdtemp(prefix="bench-scheduler-"))
    result = ScenarioResult(
        "scheduler", "Scheduler: N schedules due in the same second (PostgreSQL)"
    )
    for count in sizes:
        for replicas in replica_counts:
            figures = await run_case(endpoints, count, replicas, workdir)
            result.data[f"{count}x{replicas}"] = figures
            label = f"{count} schedules, {replicas} replica(s)"
            result.checks += [
                Check(f"{label}: all rows", "s", figures["all_rows_seconds"]),
                Check(f"{label}: lateness p50", "s", figures["lateness_p50"]),
                Check(f"{label}: lateness p99", "s", figures["lateness_p99"]),
                Check(
                    f"{label}: duplicates",
                    "runs",
                    figures["duplicates"],
                    target="0",
                    met=figures["duplicates"] == 0 and figures["runs"] == count,
                ),
            ]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--replicas", default="1,3")
    args = parser.parse_args()
    outcome = asyncio.run(
        main([int(s) for s in args.sizes.split(",")], [int(r) for r in args.replicas.split(",")])
    )
    print(format_table(outcome))
    print(f"results: {write_results('scheduler', {'scheduler': outcome.data})}")
