"""How the CLI shows the API's answers: JSON, times, sizes, tables, states, run details."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from app.cli.options import TERMINAL_STATES
from app.client import JsonObject


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def local_time(value: str | None) -> str:
    """An API timestamp in the user's local time, to the second."""
    if not value:
        return "-"
    try:
        return f"{datetime.fromisoformat(value).astimezone():%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return value


def zone_time(value: str | None, zone: str) -> str:
    """An API timestamp in a schedule's time zone (the user's when the zone is unknown here)."""
    if not value:
        return "-"
    try:
        return f"{datetime.fromisoformat(value).astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M:%S %Z}"
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        return local_time(value)


def run_duration(run: JsonObject) -> str:
    if not run.get("started_at"):
        return "-"
    started = datetime.fromisoformat(run["started_at"])
    end = datetime.fromisoformat(run["finished_at"]) if run.get("finished_at") else None
    seconds = ((end or datetime.now(started.tzinfo)) - started).total_seconds()
    return f"{seconds:.1f} s"


def byte_size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def fit_table(headers: list[str], rows: list[list[str]], *, flexible: int) -> Table:
    """A borderless table whose columns keep their full width, except `flexible`, which is cut
    short (with an ellipsis) when the terminal is narrow: ids and times stay whole."""
    table = Table(*headers, box=None)
    for index, column in enumerate(table.columns):
        column.no_wrap = True
        cells = [headers[index], *(row[index] for row in rows)]
        width = max(Text.from_markup(cell).cell_len for cell in cells)
        if index == flexible:
            column.overflow = "ellipsis"
            width = min(width, 16)
        column.min_width = width
    for row in rows:
        table.add_row(*row)
    return table


def state_style(state: str) -> str:
    if state == "succeeded":
        return "green"
    if state in TERMINAL_STATES:
        return "red"
    return "yellow"


def state_markup(run: JsonObject) -> str:
    state = str(run["state"])
    return f"[{state_style(state)}]{state}[/]"


def bucket_of(uri: str) -> str:
    return uri.removeprefix("s3://").split("/", 1)[0]


def run_details(run: JsonObject) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    resources = run.get("resources") or {}
    rows: list[tuple[str, str]] = [
        ("id", run["id"]),
        ("state", state_markup(run)),
        ("reason", escape(run.get("status_reason") or "-")),
        ("exit code", "-" if run.get("exit_code") is None else str(run["exit_code"])),
        ("command", escape(run["command"])),
        ("image", escape(run["image"])),
        ("packages", escape(" ".join(run.get("packages") or []) or "-")),
        ("input", escape(run.get("input") or "-")),
        ("output", escape(run["output"])),
        ("resources", f"{resources.get('cpus')} CPUs, {resources.get('memory_mb')} MiB"),
        ("timeout", f"{run.get('timeout_seconds')} s"),
        ("env", escape(" ".join(sorted(run.get("env") or {})) or "-")),  # names only
        ("created", local_time(run.get("created_at"))),
        ("started", local_time(run.get("started_at"))),
        ("finished", local_time(run.get("finished_at"))),
        ("duration", run_duration(run)),
    ]
    if run.get("oom_killed"):
        rows.append(("oom", "killed out of memory"))
    if (run.get("attempt") or 1) > 1:
        rows.append(("attempt", str(run["attempt"])))
    if run.get("schedule_id"):
        rows.append(
            ("schedule", f"{run['schedule_id']} (for {local_time(run.get('scheduled_for'))})")
        )
    metrics = run.get("metrics")
    if metrics:
        rows.append(
            (
                "metrics",
                f"{metrics['cpu_seconds']:.2f} CPU s, CPU avg {metrics['cpu_percent_avg']:.0f}% "
                f"max {metrics['cpu_percent_max']:.0f}%, "
                f"peak memory {byte_size(metrics['peak_memory_bytes'])}",
            )
        )
    bucket = bucket_of(run["output"])
    for index, artifact in enumerate(run.get("artifacts") or []):
        rows.append(
            (
                "artifacts" if index == 0 else "",
                f"s3://{bucket}/{escape(artifact['key'])}  {byte_size(artifact['size'])}",
            )
        )
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def schedule_state(schedule: JsonObject) -> str:
    return "[yellow]paused[/]" if schedule["paused"] else "[green]active[/]"


def next_fire(schedule: JsonObject) -> str:
    return zone_time(schedule.get("next_fire_at"), schedule["timezone"])
