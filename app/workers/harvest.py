"""Harvest: what a run left in its container read back within caps, and the verdict on it.

Everything read here was written by the job, the wrapper's control files included: bytes are
capped before they are read, parsed items are capped, the heavy parsing runs in a thread, and
nothing read here changes the verdict, which rests on what the service itself observed (the
engine's exit code and OOM flag, the stops the service sent, the engine's own events).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Literal

from app.adapters.ports import ContainerNotFound, ContainerRuntime
from app.models import RunState
from app.services.joboutput import (
    METRICS_FILE,
    BodyCapture,
    feed_archive,
    read_wrapper_files,
)
from app.services.metrics import MetricsReport, parse_metrics_tsv, read_metrics
from app.services.outputs import OutputPlan, OutputPlanner
from app.services.tarstream import TarStreamParser

log = logging.getLogger(__name__)

Outcome = Literal["exited", "timed_out", "cancelled"]
OUTPUT_PATH = "/workspace/output"
# Past the output byte cap the archive is still read for its headers (what was left out is
# listed), for at most this long.
LISTING_BUDGET_SECONDS = 60.0
# The download keeps this much of the archive beyond the byte cap (headers, skipped files).
OUTPUT_SLACK_BYTES = 64 * 1024 * 1024
# A log size is shown to API clients as a JSON number: above 2**53 it is not a byte count.
MAX_PLAUSIBLE_TOTAL = 2**53
# 128 + the signal: how the init reports a command killed by a signal.
SIGNAL_EXIT_BASE = 128

Upload = Callable[[str, BinaryIO, str | None], Awaitable[None]]


@dataclass
class MetaHarvest:
    """The logs and metrics the wrapper left, as uploaded, and notes on what was left out."""

    logs: dict[str, Any] = field(default_factory=dict)
    report: MetricsReport = field(default_factory=lambda: parse_metrics_tsv(""))
    notes: list[str] = field(default_factory=list)


async def harvest_meta(
    runtime: ContainerRuntime,
    container_id: str,
    *,
    log_limit: int,
    log_names: dict[str, str],
    upload: Upload,
) -> MetaHarvest:
    """Uploads stdout and stderr (at most `log_limit` bytes each, with a truncation marker)
    and parses the metrics, from the wrapper's files in /workspace/.taskdeploy."""
    found = await read_wrapper_files(runtime, container_id, log_limit)
    harvest = MetaHarvest(notes=list(found.notes))
    for stream in ("stdout", "stderr"):
        captured = found.files.get(f"{stream}.log")
        kept = captured.head if captured is not None else b""
        if captured is not None and captured.size > log_limit:
            harvest.notes.append(
                f"{stream}.log in the container is {captured.size} bytes, over the {log_limit}"
                f"-byte log cap: kept the first {len(kept)}"
            )
        total = _log_total(found.files.get(f"{stream}.total"), captured, stream, harvest.notes)
        truncated = total > len(kept)
        body = kept
        if truncated:
            body += (
                f"\n[taskdeploy: {stream} truncated: kept the first {len(kept)} of {total} bytes]\n"
            ).encode()
        await upload(log_names[stream], io.BytesIO(body), "text/plain; charset=utf-8")
        harvest.logs[stream] = {"bytes": total, "kept_bytes": len(kept), "truncated": truncated}
    metrics = found.files.get(METRICS_FILE)
    if metrics is not None:
        harvest.report, notes = await asyncio.to_thread(
            read_metrics,
            metrics.head,
            metrics.tail,
            size=metrics.size,
            complete=metrics.complete,
        )
        harvest.notes.extend(notes)
    return harvest


def _log_total(
    raw: BodyCapture | None, log: BodyCapture | None, stream: str, notes: list[str]
) -> int:
    """Every byte the stream produced, as the wrapper counted it; the log file's own size
    where the count is missing or not a plausible count of it (the job can write the file)."""
    size = log.size if log is not None else 0
    if raw is None:
        return size
    text = raw.head.strip()
    if raw.complete and text.isdigit() and len(text) <= 16:
        total = int(text)
        if size <= total <= MAX_PLAUSIBLE_TOTAL:
            return total
    notes.append(f"{stream}.total in the container is not a byte count of {stream}: ignored")
    return size


async def harvest_outputs(
    runtime: ContainerRuntime,
    container_id: str,
    spool: IO[bytes],
    *,
    max_files: int,
    max_bytes: int,
    max_key_bytes: int,
    reserved: frozenset[str] = frozenset(),
) -> OutputPlan:
    """Streams /workspace/output's archive into `spool` (at most the byte cap plus some slack)
    while planning the uploads header by header; past what is kept, the headers are still
    read (for LISTING_BUDGET_SECONDS) to list what was left out. Memory holds the planned files
    only, and no more than `output_entry_cap` entries are read."""
    kept_bytes = max_bytes + OUTPUT_SLACK_BYTES
    planner = OutputPlanner(
        root="output",
        max_files=max_files,
        max_bytes=max_bytes,
        kept_bytes=kept_bytes,
        max_key_bytes=max_key_bytes,
        reserved=reserved,
    )
    written = 0
    listing_ends: float | None = None

    def keep(chunk: bytes) -> None:
        nonlocal written
        if written < kept_bytes:
            spool.write(chunk)
            written += len(chunk)

    def enough() -> bool:
        nonlocal listing_ends
        if planner.full:
            return True
        if written < kept_bytes:
            return False
        listing_ends = listing_ends or time.monotonic() + LISTING_BUDGET_SECONDS
        return time.monotonic() > listing_ends

    try:
        stopped = await feed_archive(
            runtime.stream_archive(container_id, OUTPUT_PATH),
            TarStreamParser(planner.on_entry),
            max_bytes=2**63,
            enough=enough,
            on_chunk=keep,
        )
    except ContainerNotFound as exc:
        plan = OutputPlan()
        plan.limit_reason = f"output folder could not be read: {exc}"
        return plan
    if stopped is not None and not planner.full:
        planner.plan.note("the listing of what was left out is incomplete")
    return planner.plan


class SpoolWindow(io.RawIOBase):
    """`size` bytes of `spool` from `offset`, read as a file of their own (one output file's
    body inside the spooled archive)."""

    def __init__(self, spool: IO[bytes], offset: int, size: int) -> None:
        super().__init__()
        self._spool = spool
        self._position = offset
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._left)
        if want <= 0:
            return 0
        self._spool.seek(self._position)
        data = self._spool.read(want)
        buffer[: len(data)] = data
        self._position += len(data)
        self._left -= len(data)
        return len(data)


def output_body(spool: IO[bytes], offset: int, size: int) -> BinaryIO:
    return io.BufferedReader(SpoolWindow(spool, offset, size), buffer_size=1024 * 1024)


def verdict(
    outcome: Outcome,
    exit_code: int | None,
    oom: bool,
    plan: OutputPlan,
    notes: list[str],
    *,
    stopped_outside: bool,
) -> tuple[RunState, str | None]:
    """The run's end from what the service observed: its own stop (time limit, cancel), the
    engine's OOM flag and exit code, and whether the engine reported a stop the service did
    not send (`stopped_outside`). Notes on caps are added to the reason, never change the
    state."""
    extra = [plan.limit_reason] if plan.limit_reason else []
    if plan.skipped_count:
        extra.append(f"{plan.skipped_count} output entries were not uploaded (see run.json)")
    extra.extend(notes)
    if outcome == "cancelled":
        return RunState.CANCELLED, "; ".join(["cancelled while running", *extra])
    if outcome == "timed_out":
        return RunState.TIMED_OUT, "; ".join(["killed at the time limit", *extra])
    if oom:
        return RunState.FAILED, "; ".join(["killed: out of memory", *extra])
    if stopped_outside and exit_code is not None and exit_code > SIGNAL_EXIT_BASE:
        reason = (
            "the container was stopped from outside the service (Docker engine restart or "
            f"docker stop/kill) with exit code {exit_code}"
        )
        return RunState.ERROR, "; ".join([reason, *extra])
    if exit_code == 0:
        return RunState.SUCCEEDED, "; ".join(extra) or None
    return RunState.FAILED, "; ".join([f"exit code {exit_code}", *extra])
