"""The orchestrator on the in-memory backend, a migrated SQLite database and a local-folder
object store: every lifecycle rule in milliseconds, no sleeps (short injected delays, and
waits on conditions with a deadline)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import migrate
from app.adapters.localfs import LocalObjectStore
from app.adapters.ports import AttemptSpec
from app.db import create_engine, create_sessionmaker, utcnow
from app.models import Run, RunState
from app.repositories import RunRepository
from app.services.environments import EnvironmentImages
from app.services.runs import transition
from app.workers.pipeline import PipelineConfig, RunOrchestrator
from tests.fakes.memory_backend import MemoryBackend
from tests.fakes.memory_images import MemoryImages

INSTANCE = "unit-1"
BUCKET = "results"
_TEMPLATE: dict[str, Path] = {}


async def migrated_copy(tmp_path: Path) -> str:
    """A migrated SQLite file (migrated once per session, then copied)."""
    if "db" not in _TEMPLATE:
        template = Path(f"/tmp/taskdeploy-unit-{uuid.uuid4().hex}.db")
        await asyncio.to_thread(migrate.upgrade, f"sqlite+aiosqlite:///{template}")
        _TEMPLATE["db"] = template
    target = tmp_path / "runs.db"
    shutil.copyfile(_TEMPLATE["db"], target)
    return f"sqlite+aiosqlite:///{target}"


def config(tmp_path: Path, **overrides: Any) -> PipelineConfig:
    values: dict[str, Any] = {
        "instance_id": INSTANCE,
        "log_limit_bytes": 1024,
        "metrics_interval": 1.0,
        "pids_limit": 64,
        "tmp_size_mb": 16,
        "max_input_bytes": 10_000,
        "max_input_files": 10,
        "max_output_bytes": 10_000,
        "max_output_files": 3,
        "spool_memory_bytes": 1 << 20,
        "tmp_dir": tmp_path / "tmp",
        "cancel_poll_seconds": 0.005,
        "stop_grace_seconds": 0.01,
        "stop_wait_seconds": 1.0,
        "db_backoff": (0.001, 0.002),
        "io_backoff": (0.001, 0.004),
        "finish_deadline_seconds": 30.0,
    }
    values.update(overrides)
    return PipelineConfig(**values)


@dataclass
class World:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    backend: MemoryBackend
    images: MemoryImages
    environments: EnvironmentImages
    store: LocalObjectStore
    objects: Path
    orchestrator: RunOrchestrator
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def add_run(self, state: RunState = RunState.PREPARING, **values: Any) -> str:
        """A run claimed by this instance, moved through the states up to `state`."""
        fields: dict[str, Any] = {
            "command": "true",
            "image": "busybox:latest",
            "output_uri": f"s3://{BUCKET}/out/",
            "cpus": 0.5,
            "memory_mb": 64,
            "disk_mb": 64,
            "timeout_seconds": 60,
            "request_hash": "h",
            "owner": "",
        }
        fields.update(values)
        finishing_detail = fields.pop("finishing_detail", None)
        run = Run(**fields)
        async with self.sessionmaker() as session, session.begin():
            session.add(run)
        path = [RunState.PREPARING, RunState.RUNNING, RunState.FINISHING]
        for step in path[: path.index(state) + 1] if state in path else []:
            extra: dict[str, Any] = {"instance_id": INSTANCE} if step == RunState.PREPARING else {}
            detail = finishing_detail if step == RunState.FINISHING else None
            await self.move(run.id, step, detail=detail, **extra)
        return run.id

    async def move(
        self, run_id: str, to: RunState, detail: str | None = None, **values: Any
    ) -> None:
        async with self.sessionmaker() as session, session.begin():
            await transition(session, run_id, to, detail=detail, **values)

    async def set(self, run_id: str, **values: Any) -> None:
        async with self.sessionmaker() as session, session.begin():
            await RunRepository(session).update_fields(run_id, values)

    async def run(self, run_id: str) -> Run:
        async with self.sessionmaker() as session:
            run = await RunRepository(session).get(run_id)
        assert run is not None
        return run

    async def events(self, run_id: str) -> list[tuple[str, str | None]]:
        async with self.sessionmaker() as session:
            return [(e.to_state, e.detail) for e in await RunRepository(session).events(run_id)]

    def execute(self, run_id: str, cancel: asyncio.Event | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(self.orchestrator.execute(run_id, cancel or asyncio.Event()))
        self.tasks.append(task)
        return task

    def stored(self, run_id: str) -> dict[str, bytes]:
        """Every object under the run's folder, by its path below the folder."""
        root = self.objects / BUCKET / "out" / run_id
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    def spec_of(self, run_id: str) -> AttemptSpec:
        return next(a.spec for a in self.backend.attempts.values() if a.ref.run_id == run_id)


async def until(condition: Callable[[], Any], seconds: float = 5.0) -> None:
    """Yields to the loop until `condition()` holds, failing after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


async def world(tmp_path: Path, **overrides: Any) -> World:
    engine = create_engine(await migrated_copy(tmp_path))
    sessionmaker = create_sessionmaker(engine)
    backend = MemoryBackend()
    images = MemoryImages()
    environments = EnvironmentImages(
        images, sessionmaker, template_version="unit", build_timeout=10
    )
    objects = tmp_path / "objects"
    store = LocalObjectStore(objects)
    await store.create_bucket(BUCKET)
    orchestrator = RunOrchestrator(
        config=config(tmp_path, **overrides),
        sessionmaker=sessionmaker,
        backend=backend,
        store=store,
        environments=environments,
    )
    return World(engine, sessionmaker, backend, images, environments, store, objects, orchestrator)


def seconds_since(moment: datetime) -> float:
    return (utcnow() - moment).total_seconds()
