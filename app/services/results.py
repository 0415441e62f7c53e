"""Reading a finished run's logs and metrics back from the object store."""

from __future__ import annotations

import json
from typing import Any

from app.adapters.ports import BucketNotFound, ObjectNotFound, ObjectStore, ObjectStoreError
from app.errors import Conflict, NotFound, ServiceUnavailable
from app.models import Run, RunState
from app.services.runs import result_location

MAX_METRICS_BYTES = 64 * 1024 * 1024


class RunResults:
    def __init__(self, store: ObjectStore, max_log_bytes: int) -> None:
        self.store = store
        self.max_log_bytes = max_log_bytes

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
        return await self._read(run, f"{stream}.log", self.max_log_bytes + 4096)

    async def metrics(self, run: Run) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await self._read(run, "metrics.json", MAX_METRICS_BYTES))
        return doc
