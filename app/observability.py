"""Prometheus metrics, event-loop lag, and log lines (text or JSON) carrying the run or schedule
id, with control characters from user input escaped."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram

RUNS_FINISHED = Counter(
    "taskdeploy_runs_finished_total", "Runs that reached a terminal state", ["state"]
)
RUN_DURATION = Histogram(
    "taskdeploy_run_duration_seconds",
    "From submission to the terminal state",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400),
)
PHASE_DURATION = Histogram(
    "taskdeploy_run_phase_seconds",
    "Time spent in each phase of a run",
    ["phase"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
QUEUE_DEPTH = Gauge("taskdeploy_queue_depth", "Runs waiting in queued")
RUNNING_CONTAINERS = Gauge("taskdeploy_running_executors", "Runs this replica is executing")
IMAGE_CACHE = Counter(
    "taskdeploy_image_cache_total",
    "Environment image lookups",
    ["result"],  # hit | miss
)
IMAGE_BUILD_SECONDS = Histogram(
    "taskdeploy_image_build_seconds",
    "Environment image builds",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 900),
)
SCHEDULER_LATENESS = Histogram(
    "taskdeploy_scheduler_lateness_seconds",
    "How late a schedule's run was created after its fire time",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 60),
)
WEBHOOK_DELIVERIES = Counter(
    "taskdeploy_webhook_attempts_total", "Webhook delivery attempts", ["outcome"]
)
LOOP_LAG = Histogram(
    "taskdeploy_event_loop_lag_seconds",
    "How late the event loop ran a timer that was due",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)

CONTAINER_FILE_READS = Counter(
    "taskdeploy_container_file_reads_total",
    "Reads of a running container's files for live logs and live metrics",
    ["file"],
)
for _file in ("stdout.log", "stderr.log", "metrics.tsv"):
    CONTAINER_FILE_READS.labels(file=_file)  # exported at 0 from the start

current_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
current_schedule_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "schedule_id", default=None
)


async def measure_loop_lag(interval: float = 0.1) -> None:
    """Sleeps `interval` over and over and records by how much each wake-up was late (ten
    observations a second: over a minute, the p99 is not just the worst one)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        LOOP_LAG.observe(max(0.0, loop.time() - started - interval))


# C0 and C1 controls, DEL, and the characters that move or reorder text on a terminal or in an
# editor (line and paragraph separators, bidirectional overrides). Job output, reasons, S3 keys
# and command text reach log messages: none of these may reach the log raw, or a job could
# forge log lines, rewrite the operator's terminal or hide text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character written as a `\\xNN` or `\\uNNNN` escape."""
    return _UNSAFE.sub(_escaped, text)


def escape_lines(text: str) -> str:
    """A traceback's lines, each escaped and indented: its own line breaks stay, and a forged
    one cannot start a line that looks like a log record."""
    return "\n".join(f"    {escape_controls(line)}" for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    """`logging.Formatter` with the message escaped (one record, one line) and the traceback
    escaped line by line and indented."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + escape_lines(record.exc_text)
        if record.stack_info:
            line += "\n" + escape_lines(self.formatStack(record.stack_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the run or schedule the line is about. JSON already
    escapes C0 controls; the message and traceback are escaped as in the text format too, so
    a consumer printing them decoded shows no control characters either."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": escape_controls(record.getMessage()),
        }
        for key, var in (("run_id", current_run_id), ("schedule_id", current_schedule_id)):
            value = var.get()
            if value:
                entry[key] = escape_controls(value)
        if record.exc_info:
            entry["exception"] = "\n".join(
                escape_controls(line) for line in self.formatException(record.exc_info).split("\n")
            )
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers go through the root handler, so they follow the format too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def monotonic() -> float:
    return time.monotonic()
