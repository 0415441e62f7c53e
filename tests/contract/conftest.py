"""The backends every contract test runs against: the in-memory fake and the real Docker
engine (marked `docker`), so the fake cannot drift from the real thing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.adapters.docker import DockerRuntime
from app.adapters.docker_backend import DockerBackend
from app.adapters.ports import AttemptSpec, RunBackend
from tests.fakes.memory_backend import MemoryBackend

BUSYBOX = "busybox:latest"


@dataclass
class Harness:
    """A backend and how to make one attempt do something on it: `command` is what Docker
    runs, the same behaviour is scripted into the memory backend."""

    kind: str
    backend: Any

    def spec(self, command: str, *, runs: bool = False, **script: Any) -> AttemptSpec:
        run_id = f"c{uuid.uuid4().hex[:12]}"
        if isinstance(self.backend, MemoryBackend):
            self.backend.script(run_id, runs=runs, **script)
        return AttemptSpec(
            run_id=run_id,
            attempt=1,
            instance_id="contract",
            image=BUSYBOX,
            command=command,
            env={"TASKDEPLOY_METRICS_INTERVAL": "1", "TASKDEPLOY_LOG_LIMIT": "1048576"},
            nano_cpus=500_000_000,
            memory_bytes=64 * 1024 * 1024,
            pids_limit=64,
            tmp_bytes=16 * 1024 * 1024,
            nofile=256,
            file_size_bytes=64 * 1024 * 1024,
            disk_bytes=None,
            network=None,
        )


@pytest.fixture(params=["memory", pytest.param("docker", marks=pytest.mark.docker)])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    backend: RunBackend
    if request.param == "memory":
        backend = MemoryBackend()
    else:
        backend = DockerBackend(DockerRuntime(), tmp_dir=tmp_path)
    try:
        yield Harness(request.param, backend)
    finally:
        for info in await backend.owned():
            if info.instance_id == "contract":
                await backend.forget(info.ref)
        await backend.close()
