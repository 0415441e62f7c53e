"""What every phase of a run shares: the configuration, the run's context, and the ledger that
writes each database change as its own short transaction, fenced by the run's lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import AttemptRef, ObjectStore, RunBackend
from app.adapters.spool import spooled
from app.models import Run, RunEvent, RunState
from app.repositories import RunRepository
from app.services.backoff import Backoff
from app.services.environments import EnvironmentImages
from app.services.runs import transition

log = logging.getLogger(__name__)
T = TypeVar("T")


class RunAborted(Exception):
    """Ends the run in `state` with `reason` (infrastructure faults, bad inputs, cancellation)."""

    def __init__(self, state: RunState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class LeaseLost(Exception):
    """Another replica holds the run now: this one writes nothing more and leaves it alone."""


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    instance_id: str
    log_limit_bytes: int
    metrics_interval: float
    pids_limit: int
    tmp_size_mb: int
    max_input_bytes: int
    max_input_files: int
    max_output_bytes: int
    max_output_files: int
    spool_memory_bytes: int
    tmp_dir: Path
    job_network: str = "taskdeploy-jobs"
    disk_quota: bool = True  # cap each attempt's workspace at its disk_mb
    default_disk_mb: int = 2048  # for runs submitted before disk limits existed
    nofile_limit: int = 4096
    prepare_deadline_seconds: float = 1800.0
    finish_deadline_seconds: float = 1800.0
    db_retry_seconds: float = 120.0
    cancel_poll_seconds: float = 2.0
    stop_grace_seconds: float = 5.0
    stop_wait_seconds: float = 30.0
    # Retry delays (first, cap): the database, the object store and the backend.
    db_backoff: tuple[float, float] = (0.5, 5.0)
    io_backoff: tuple[float, float] = (1.0, 15.0)

    def disk_bytes(self, run: Run) -> int:
        return (run.disk_mb or self.default_disk_mb) * 1024 * 1024

    def backoff(self, which: tuple[float, float], give_up_after: float | None = None) -> Backoff:
        return Backoff(which[0], which[1], give_up_after)

    def spool(self) -> contextlib.AbstractContextManager[IO[bytes]]:
        return spooled(self.tmp_dir, self.spool_memory_bytes)


@dataclass
class RunContext:
    """One execution of one run: what the phases learn along the way."""

    run_id: str
    cancel: asyncio.Event
    run: Run | None = None
    ref: AttemptRef | None = None
    keep_attempt: bool = False  # shutdown or a lost lease: the attempt stays for its next owner
    pins: list[str] = field(default_factory=list)  # environment image keys pinned for it

    @property
    def current(self) -> Run:
        assert self.run is not None
        return self.run


class Ledger:
    """Every database access of a run, each in its own short transaction, retried while the
    database is unreachable; every write checks that this replica still holds the run."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], config: PipelineConfig
    ) -> None:
        self.sessionmaker = sessionmaker
        self.config = config

    async def db(self, operation: Callable[[AsyncSession], Awaitable[T]]) -> T:
        backoff = self.config.backoff(self.config.db_backoff, self.config.db_retry_seconds)
        while True:
            try:
                async with self.sessionmaker() as session, session.begin():
                    return await operation(session)
            except (OperationalError, InterfaceError, OSError) as exc:
                if backoff.exhausted:
                    raise
                log.warning("database unavailable (%s); retrying in %.1f s", exc, backoff.delay)
            except DBAPIError as exc:
                if not exc.connection_invalidated or backoff.exhausted:
                    raise
            await backoff.wait()

    async def _fenced(self, session: AsyncSession, run_id: str) -> Run | None:
        run = await RunRepository(session).get(run_id)
        if run is not None and run.instance_id not in (None, self.config.instance_id):
            raise LeaseLost(f"run {run_id} is held by {run.instance_id} now")
        return run

    async def write(
        self, run_id: str, operation: Callable[[AsyncSession, Run], Awaitable[T]]
    ) -> T | None:
        """`operation` on the run in one transaction, if this replica still holds it."""

        async def fenced(session: AsyncSession) -> T | None:
            run = await self._fenced(session, run_id)
            return None if run is None else await operation(session, run)

        return await self.db(fenced)

    async def load(self, run_id: str) -> Run:
        run = await self.db(lambda session: RunRepository(session).get(run_id))
        if run is None:
            raise RunAborted(RunState.ERROR, "run vanished from the database")
        return run

    async def update(self, run_id: str, **values: Any) -> None:
        await self.write(run_id, lambda s, _run: RunRepository(s).update_fields(run_id, values))

    async def transition(
        self,
        run_id: str,
        to: RunState,
        expected: RunState,
        detail: str | None = None,
        **values: Any,
    ) -> None:
        await self.write(
            run_id,
            lambda s, _run: transition(s, run_id, to, expected=expected, detail=detail, **values),
        )

    async def events(self, run_id: str) -> list[RunEvent]:
        return await self.db(lambda session: RunRepository(session).events(run_id))


@dataclass
class Pipeline:
    """The collaborators every phase uses."""

    config: PipelineConfig
    ledger: Ledger
    backend: RunBackend
    store: ObjectStore
    environments: EnvironmentImages
    on_image_built: Callable[[], None] | None = None
    phases: dict[str, str] = field(default_factory=dict)  # run id -> preparing | running | ...
