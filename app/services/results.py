"""A run's logs and metrics: from the container while it runs, from the object store after."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import (
    AdapterError,
    BucketNotFound,
    ContainerRuntime,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
)
from app.errors import Conflict, NotFound, ServiceUnavailable
from app.models import Run, RunState
from app.repositories import RunRepository
from app.services.metrics import parse_metrics_tsv
from app.services.runs import log_name, result_location
from app.services.s3uri import parse_s3_uri

MAX_METRICS_BYTES = 64 * 1024 * 1024


class RunResults:
    def __init__(
        self,
        store: ObjectStore,
        max_log_bytes: int,
        runtime: ContainerRuntime,
        sessionmaker: async_sessionmaker[AsyncSession],
        poll_seconds: float = 0.5,
        follow_max_seconds: float = 3600.0,
    ) -> None:
        self.store = store
        self.max_log_bytes = max_log_bytes
        self.runtime = runtime
        self.sessionmaker = sessionmaker
        self.poll_seconds = poll_seconds
        self.follow_max_seconds = follow_max_seconds

    async def _read(self, run: Run, name: str, max_bytes: int) -> bytes:
        if not RunState(run.state).terminal:
            raise Conflict(f"run {run.id} is {run.state}; its {name} is stored once it finishes")
        where = result_location(run)  # the last attempt's folder when the run was retried
        try:
            return await self.store.get_bytes(
                where.bucket, f"{where.prefix}{name}", max_bytes=max_bytes
            )
        except (ObjectNotFound, BucketNotFound) as exc:
            raise NotFound(f"run {run.id} has no {name} (it ended before one was written)") from exc
        except ObjectStoreError as exc:
            raise ServiceUnavailable(f"object store: {exc}") from exc

    async def log(self, run: Run, stream: str) -> bytes:
        # The kept bytes plus the truncation marker the executor appends.
        return await self._read(run, log_name(run, stream), self.max_log_bytes + 4096)

    async def metrics(self, run: Run) -> dict[str, Any]:
        """The stored metrics.json of a finished run; while it runs, the samples so far, parsed
        from the wrapper's file in the container (`live` is true then)."""
        if container_id := _live_container(run):
            text = await self._from_container(container_id, "metrics.tsv", MAX_METRICS_BYTES)
            return {**parse_metrics_tsv(text.decode(errors="replace")).to_json(), "live": True}
        doc: dict[str, Any] = json.loads(await self._read(run, "metrics.json", MAX_METRICS_BYTES))
        return doc

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
        """What the stream holds now: the stored log once the run ended, the wrapper's file
        in the container while it runs, nothing before it starts."""
        if RunState(run.state).terminal:
            return await self.log(run, stream)
        if container_id := _live_container(run):
            # The file itself is capped in the container.
            cap = self.max_log_bytes + 1024 * 1024
            return await self._from_container(container_id, f"{stream}.log", cap)
        return b""

    async def _from_container(self, container_id: str, name: str, cap: int) -> bytes:
        """One of the wrapper's files in /workspace/.taskdeploy of a live container, reading
        no more than about `cap` bytes of it."""
        buffer = io.BytesIO()
        try:
            async for chunk in self.runtime.stream_archive(
                container_id, f"/workspace/.taskdeploy/{name}"
            ):
                buffer.write(chunk)
                if buffer.tell() > cap:
                    break
        except AdapterError:
            return b""  # not there yet, or already removed: the next look tells
        buffer.seek(0)
        try:
            with tarfile.open(fileobj=buffer) as tar:
                member = next((m for m in tar if m.isreg()), None)
                body = tar.extractfile(member) if member is not None else None
                return body.read() if body is not None else b""
        except (tarfile.TarError, EOFError):
            return b""

    async def follow(self, run_id: str, stream: str) -> AsyncIterator[bytes]:
        """New bytes as the command writes them, until the run ends. Each follower reads at
        its own pace: nothing is buffered for a slow one beyond one capped read."""
        sent = 0
        # Bounded like everything else: a follower of a run that never starts is let go after
        # follow_max_seconds (it can follow again).
        ends = asyncio.get_running_loop().time() + self.follow_max_seconds
        while asyncio.get_running_loop().time() < ends:
            async with self.sessionmaker() as session:
                run = await RunRepository(session).get(run_id)
            if run is None:
                return
            try:
                data = await self.log_so_far(run, stream)
            except NotFound:
                data = b""
            if len(data) > sent:
                yield data[sent:]
                sent = len(data)
            if RunState(run.state).terminal:
                return
            await asyncio.sleep(self.poll_seconds)


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
