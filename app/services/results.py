"""A run's logs and metrics: from the container while it runs, from the object store after."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from app.adapters.ports import (
    AdapterError,
    BucketNotFound,
    Capture,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    RunBackend,
)
from app.adapters.wrapper_files import (
    METRICS_FILE,
    METRICS_HEAD_BYTES,
    METRICS_READ_BYTES,
    METRICS_TAIL_BYTES,
)
from app.errors import Conflict, NotFound, ServiceUnavailable
from app.models import Run, RunState
from app.observability import CONTAINER_FILE_READS
from app.services.metrics import parse_metrics_tsv, read_metrics
from app.services.runs import log_name, result_location
from app.services.s3uri import parse_s3_uri

# metrics.json is the service's own (a bounded series); older runs' may be larger.
MAX_METRICS_JSON_BYTES = 64 * 1024 * 1024
# The stored log is the kept bytes plus the truncation marker.
LOG_MARKER_BYTES = 4096
# A live metrics answer is reused for at least this long, and for ten times what reading and
# parsing it took: however many clients ask, a run's file is read about once a second.
LIVE_METRICS_MIN_SECONDS = 1.0
LIVE_METRICS_COST_FACTOR = 10.0


@dataclass
class _LiveMetrics:
    body: bytes  # the answer as JSON, in RunMetricsOut's shape
    expires: float


class RunResults:
    def __init__(
        self,
        store: ObjectStore,
        max_log_bytes: int,
        backend: RunBackend,
    ) -> None:
        self.store = store
        self.max_log_bytes = max_log_bytes
        self.backend = backend
        self._live_metrics: dict[str, _LiveMetrics] = {}
        self._live_metrics_reads: dict[str, asyncio.Future[bytes]] = {}

    def _stored_key(self, run: Run, name: str) -> tuple[str, str]:
        if not RunState(run.state).terminal:
            raise Conflict(f"run {run.id} is {run.state}; its {name} is stored once it finishes")
        where = result_location(run)  # the last attempt's folder when the run was retried
        return where.bucket, f"{where.prefix}{name}"

    async def log(self, run: Run, stream: str) -> bytes:
        """The stored log: the kept bytes plus the truncation marker. An object larger than
        that (stored before a lower log cap, or by an older version) is cut, with a note."""
        bucket, key = self._stored_key(run, log_name(run, stream))
        cap = self.max_log_bytes + LOG_MARKER_BYTES
        parts: list[bytes] = []
        size = 0
        try:
            chunks = self.store.stream_object(bucket, key)
            try:
                async for chunk in chunks:
                    parts.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        break
            finally:
                await chunks.aclose()
        except (ObjectNotFound, BucketNotFound) as exc:
            raise NotFound(
                f"run {run.id} has no {stream} log (it ended before one was written)"
            ) from exc
        except ObjectStoreError as exc:
            raise ServiceUnavailable(f"object store: {exc}") from exc
        body = b"".join(parts)
        if size <= cap:
            return body
        return (
            body[:cap]
            + (
                f"\n[taskdeploy: the stored {stream} log is larger than {cap} bytes: showing the "
                "first ones; the whole object is among the run's artifacts]\n"
            ).encode()
        )

    async def metrics(self, run: Run) -> dict[str, Any]:
        """The stored metrics.json of a finished run."""
        bucket, key = self._stored_key(run, "metrics.json")
        try:
            raw = await self.store.get_bytes(bucket, key, max_bytes=MAX_METRICS_JSON_BYTES)
        except (ObjectNotFound, BucketNotFound) as exc:
            raise NotFound(
                f"run {run.id} has no metrics (it ended before they were written)"
            ) from exc
        except ObjectStoreError as exc:
            raise ServiceUnavailable(f"object store: {exc}") from exc
        doc: dict[str, Any] = await asyncio.to_thread(json.loads, raw)
        return doc

    async def live_metrics_json(self, run: Run) -> bytes | None:
        """While the run runs, its samples so far as the JSON answer (`live` true), parsed
        from the wrapper's file in the container; None once it is not running.

        One read serves every client asking at the same time, and its answer, rendered once,
        is reused for a while (LIVE_METRICS_*): a hundred clients cost one read and no
        rendering each."""
        container_id = _live_container(run)
        if container_id is None:
            return None
        now = asyncio.get_running_loop().time()
        cached = self._live_metrics.get(container_id)
        if cached is not None and cached.expires > now:
            return cached.body
        reading = self._live_metrics_reads.get(container_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read_live_metrics(run.id, container_id))
            self._live_metrics_reads[container_id] = reading
            reading.add_done_callback(lambda _: self._live_metrics_reads.pop(container_id, None))
        # Shielded: one client going away must not cancel the read the others wait for.
        return await asyncio.shield(reading)

    async def _read_live_metrics(self, run_id: str, container_id: str) -> bytes:
        loop = asyncio.get_running_loop()
        started = loop.time()
        CONTAINER_FILE_READS.labels(file=METRICS_FILE).inc()
        try:
            read = Capture(0, METRICS_HEAD_BYTES, METRICS_TAIL_BYTES)
            there = await self.backend.read_live(
                container_id, METRICS_FILE, read, METRICS_READ_BYTES
            )
            capture = read if there else None
        except AdapterError:
            capture = None  # not there yet, or already removed: the next look tells
        body = await asyncio.to_thread(_render_live_metrics, run_id, capture)
        now = loop.time()
        ttl = max(LIVE_METRICS_MIN_SECONDS, LIVE_METRICS_COST_FACTOR * (now - started))
        for stale in [key for key, entry in self._live_metrics.items() if entry.expires <= now]:
            del self._live_metrics[stale]
        self._live_metrics[container_id] = _LiveMetrics(body, now + ttl)
        return body

    async def open_artifact(self, run: Run, key: str) -> AsyncIterator[bytes]:
        """One of the run's listed artifacts, streamed from the object store. Only keys the run
        lists are served, so a request cannot name any other object of the bucket."""
        if key not in {artifact["key"] for artifact in run.artifacts or []}:
            raise NotFound(f"run {run.id} has no artifact {key!r}")
        chunks = self.store.stream_object(parse_s3_uri(run.output_uri).bucket, key)
        try:
            first = await anext(chunks, b"")  # errors surface here, before a 200 is sent
        except (ObjectNotFound, BucketNotFound) as exc:
            raise NotFound(f"artifact {key!r} of run {run.id} is gone from the store") from exc
        except ObjectStoreError as exc:
            raise ServiceUnavailable(f"object store: {exc}") from exc
        return _prepend(first, chunks)

    async def log_so_far(self, run: Run, stream: str) -> bytes:
        """What the stream holds now: the stored log once the run ended, the first
        `max_log_bytes` of the wrapper's file in the container while it runs (the job may
        have made that file any size), nothing before it starts."""
        if RunState(run.state).terminal:
            return await self.log(run, stream)
        if container_id := _live_container(run):
            name = f"{stream}.log"
            CONTAINER_FILE_READS.labels(file=name).inc()
            try:
                capture = Capture(0, self.max_log_bytes)
                there = await self.backend.read_live(
                    container_id, name, capture, self.max_log_bytes + 64 * 1024
                )
            except AdapterError:
                return b""  # not there yet, or already removed: the next look tells
            return capture.head if there else b""
        return b""


def _render_live_metrics(run_id: str, capture: Capture | None) -> bytes:
    """Blocking: parses what was read of metrics.tsv and renders the answer."""
    if capture is None:
        report = parse_metrics_tsv("")
    else:
        report, _ = read_metrics(
            capture.head, capture.tail, size=capture.size, complete=capture.complete
        )
    doc = report.to_json()
    answer = {"run_id": run_id, "source": doc["source"], "summary": doc["summary"]}
    return json.dumps({**answer, "series": doc["series"], "live": True}).encode()


def _live_container(run: Run) -> str | None:
    """The container whose files hold the run's output so far, while it runs."""
    if RunState(run.state) in (RunState.RUNNING, RunState.FINISHING):
        return run.container_id
    return None


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
