"""Runs the benchmark scenarios, prints one table each and writes them all to bench/results/.

Usage: make bench [BENCH_ARGS="--quick --scenario trivial --profile"]
Benchmarks report; they never fail on a missed target (the exit code is 1 only when a
scenario could not run at all).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_LABEL,
    REPO,
    RESULTS_DIR,
    Endpoints,
    ScenarioResult,
    docker_client,
    durability,
    durability_line,
    format_table,
    remove_labelled,
    s3_client,
    write_results,
)
from bench.profile import hot_spots, py_spy
from bench.scenarios import FULL, QUICK, SCENARIOS, Bench


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.run_all",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        action="append",
        help="run only this one (repeatable)",
    )
    parser.add_argument("--profile", action="store_true", help="sample every service with py-spy")
    parser.add_argument(
        "--trivial-runs", type=int, metavar="N", help="runs of each side in the trivial scenario"
    )
    return parser.parse_args(argv)


async def run_scenario(bench: Bench, name: str) -> ScenarioResult:
    """One scenario within its time budget; a crash becomes a result that says so."""
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    try:
        async with asyncio.timeout(bench.sizes.budget_s):
            result = await SCENARIOS[name](bench)
    except Exception as exc:
        traceback.print_exc()
        result = ScenarioResult(name, f"{name}: FAILED", notes=[f"{type(exc).__name__}: {exc}"])
        result.data["failed"] = True
    wall = (datetime.now(UTC) - started).total_seconds()
    load = (load_before, os.getloadavg()[0])
    # Other work on the host (a test suite, a build) shows up in every figure: say how busy it was.
    result.notes.append(
        f"{wall:.0f} s; host load average (1 min) {load[0]:.1f} at start, {load[1]:.1f} at end, "
        f"on {os.cpu_count()} CPUs"
    )
    result.data.update(started_at=started.isoformat(), wall_seconds=wall, load_average=load)
    return result


def report_profiles(profile_dir: Path, since: float) -> list[str]:
    lines = []
    for folded in sorted(profile_dir.glob("*.folded")):
        if folded.stat().st_mtime < since:
            continue
        spots = hot_spots(folded)
        lines.append(f"  py-spy {folded.name}: {spots.samples} on-CPU samples at 100 Hz")
        lines.append(
            "    innermost frame by package: "
            + ", ".join(f"{name} {share:.0f}%" for share, name in spots.packages[:6])
        )
        lines += [f"    {share:5.1f}%  {name}" for share, name in spots.functions]
    return lines


def machine() -> dict[str, Any]:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git_head": head.stdout.strip(),
    }


async def run(args: argparse.Namespace) -> int:
    endpoints = Endpoints.from_env()
    sizes = QUICK if args.quick else FULL
    if args.trivial_runs:
        sizes = replace(sizes, trivial_reps=args.trivial_runs)
    names = args.scenario or list(SCENARIOS)
    workdir = Path(tempfile.mkdtemp(prefix="taskdeploy-bench-"))
    profile_dir = None
    if args.profile:
        if py_spy() is None:
            print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
            return 2
        profile_dir = RESULTS_DIR / f"profiles-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        profile_dir.mkdir(parents=True)
    results: list[ScenarioResult] = []
    database = await durability(endpoints.database_url)
    print(durability_line(database), flush=True)
    try:
        async with (
            s3_client(endpoints.s3_endpoint) as s3,
            docker_client() as docker,
        ):
            bench = Bench(endpoints, sizes, workdir, docker, s3, profile_dir)
            for name in names:
                print(f"-- {name} ...", flush=True)
                since = datetime.now().timestamp()
                result = await run_scenario(bench, name)
                result.notes.append(durability_line(database))
                results.append(result)
                print(format_table(result), flush=True)
                if profile_dir is not None:
                    print("\n".join(report_profiles(profile_dir, since)), flush=True)
                print(flush=True)
    finally:
        # Whatever happened: nothing the benchmarks made themselves stays on the Docker host.
        await remove_labelled({BENCH_LABEL: "1"})
        failed = len(results) < len(names) or any(r.data.get("failed") for r in results)
        if failed:
            print(f"service logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    payload = {
        "started_at": results[0].data["started_at"] if results else None,
        "quick": args.quick,
        "sizes": asdict(sizes),
        "machine": machine(),
        "postgres": database,
        "scenarios": [asdict(result) for result in results],
    }
    name = "bench-quick" if args.quick else "bench"
    print(f"results: {write_results(name, payload).relative_to(REPO)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
