"""Phase `harvest`: the logs, the metrics and the outputs an ended attempt left, read back
within the caps (everything read was written by the job) and uploaded to the run's folder."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from app.adapters.ports import (
    AttemptRef,
    Capture,
    CaptureLimits,
    Collected,
    OutputEntry,
)
from app.adapters.tarstream import TarEntry
from app.adapters.wrapper_files import METRICS_FILE
from app.models import Run
from app.services.metrics import MetricsReport, parse_metrics_tsv, read_metrics
from app.services.outputs import OutputPlan, OutputPlanner
from app.services.runs import log_name, output_name, reserved_output_paths, result_location
from app.workers.pipeline.context import Pipeline

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024  # S3's limit on an object key
# A log size is shown to API clients as a JSON number: above 2**53 it is not a byte count.
MAX_PLAUSIBLE_TOTAL = 2**53

Upload = Callable[[str, BinaryIO, str | None], Awaitable[None]]


@dataclass
class Harvest:
    """What was uploaded, and notes on what was left out."""

    artifacts: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, Any] = field(default_factory=dict)
    report: MetricsReport = field(default_factory=lambda: parse_metrics_tsv(""))
    notes: list[str] = field(default_factory=list)
    plan: OutputPlan = field(default_factory=OutputPlan)


class PlannedSink:
    """The OutputSink over the output policy (services/outputs): which entries are uploaded,
    under which names; each taken body is uploaded as it is handed over."""

    def __init__(self, planner: OutputPlanner, run: Run, upload: Upload) -> None:
        self.planner = planner
        self.run = run
        self.upload = upload
        self._taken = 0  # the bodies taken so far, end to end: the planner's offsets

    @property
    def full(self) -> bool:
        return self.planner.full

    def offer(self, entry: OutputEntry) -> str | None:
        files = self.planner.plan.files
        before = len(files)
        self.planner.on_entry(TarEntry(entry.path, entry.kind, entry.size, self._taken, entry.link))
        if len(files) == before:
            return None
        if entry.kind != "hardlink":
            self._taken += entry.size
        return files[-1].path

    async def receive(self, name: str, body: BinaryIO, size: int) -> None:
        await self.upload(output_name(self.run, name), body, None)


async def harvest(p: Pipeline, run: Run, ref: AttemptRef) -> Harvest:
    where = result_location(run)
    done = Harvest()

    async def upload(rel: str, fileobj: BinaryIO, content_type: str | None = None) -> None:
        key = f"{where.prefix}{rel}"
        size = await p.store.upload_fileobj(where.bucket, key, fileobj, content_type=content_type)
        done.artifacts.append({"key": key, "size": size})

    cfg = p.config
    key_room = MAX_KEY_BYTES - len(f"{where.prefix}output/".encode())
    limits = CaptureLimits(
        log_bytes=cfg.log_limit_bytes,
        output_files=cfg.max_output_files,
        output_bytes=cfg.max_output_bytes,
        output_key_bytes=key_room,
        reserved=reserved_output_paths(run),
    )
    planner = OutputPlanner(
        root="output",
        max_files=cfg.max_output_files,
        max_bytes=cfg.max_output_bytes,
        kept_bytes=2**62,  # only taken bodies are spooled: the byte cap is what bounds them
        max_key_bytes=key_room,
        reserved=limits.reserved,
    )
    outputs: list[dict[str, Any]] = []

    async def upload_output(rel: str, fileobj: BinaryIO, content_type: str | None = None) -> None:
        key = f"{where.prefix}{rel}"
        size = await p.store.upload_fileobj(where.bucket, key, fileobj, content_type=content_type)
        outputs.append({"key": key, "size": size})

    collected = await p.backend.collect(ref, limits, PlannedSink(planner, run, upload_output))
    done.plan = planner.plan
    if collected.output_problem is not None:
        done.plan.limit_reason = collected.output_problem
    elif collected.listing_incomplete:
        done.plan.note("the listing of what was left out is incomplete")
    # The logs are listed first, as they always were.
    await _logs_and_metrics(run, collected, cfg.log_limit_bytes, done, upload)
    done.artifacts.extend(outputs)
    for note in done.notes:
        log.warning("run %s: %s", run.id, note)
    return done


async def _logs_and_metrics(
    run: Run, found: Collected, log_limit: int, done: Harvest, upload: Upload
) -> None:
    """stdout and stderr (at most `log_limit` bytes each, with a truncation marker), and the
    metrics parsed off the event loop."""
    done.notes.extend(found.notes)
    for stream in ("stdout", "stderr"):
        captured = found.files.get(f"{stream}.log")
        kept = captured.head if captured is not None else b""
        if captured is not None and captured.size > log_limit:
            done.notes.append(
                f"{stream}.log in the container is {captured.size} bytes, over the {log_limit}"
                f"-byte log cap: kept the first {len(kept)}"
            )
        total = _log_total(found.files.get(f"{stream}.total"), captured, stream, done.notes)
        truncated = total > len(kept)
        body = kept
        if truncated:
            body += (
                f"\n[taskdeploy: {stream} truncated: kept the first {len(kept)} of {total} bytes]\n"
            ).encode()
        await upload(log_name(run, stream), io.BytesIO(body), "text/plain; charset=utf-8")
        done.logs[stream] = {"bytes": total, "kept_bytes": len(kept), "truncated": truncated}
    metrics = found.files.get(METRICS_FILE)
    if metrics is not None:
        done.report, notes = await asyncio.to_thread(
            read_metrics, metrics.head, metrics.tail, size=metrics.size, complete=metrics.complete
        )
        done.notes.extend(notes)


def _log_total(raw: Capture | None, log: Capture | None, stream: str, notes: list[str]) -> int:
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
