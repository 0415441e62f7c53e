"""The backends every contract test runs against: the in-memory fake and the real Docker
engine (marked `docker`), so the fake cannot drift from the real thing."""

from __future__ import annotations

import asyncio
import fcntl
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.adapters.docker import DockerRuntime
from app.adapters.docker_backend import DockerBackend
from app.adapters.docker_images import DockerImages
from app.adapters.ports import AttemptSpec, RunBackend
from app.services.environments import environment_key, versioned_template
from tests.fakes.memory_backend import MemoryBackend

BUSYBOX = "busybox:latest"


@dataclass
class Harness:
    """A backend and how to make one attempt do something on it: `command` is what Docker
    runs, the same behaviour is scripted into the memory backend."""

    kind: str
    backend: Any
    image: str = BUSYBOX

    def spec(self, command: str, *, runs: bool = False, **script: Any) -> AttemptSpec:
        run_id = f"c{uuid.uuid4().hex[:12]}"
        if isinstance(self.backend, MemoryBackend):
            self.backend.script(run_id, runs=runs, **script)
        return AttemptSpec(
            run_id=run_id,
            attempt=1,
            instance_id="contract",
            image=self.image,
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


async def environment_image(images: DockerImages, base: str) -> str:
    """An attempt runs from an environment image (it holds the wrapper): busybox with no
    packages, built as the service builds it, once per template."""
    base_id = await images.base_id(base)
    assert base_id is not None, f"{base} is missing: run ./scripts/ensure-images.sh"
    key = environment_key(base_id, [], versioned_template("contract"))
    # One build across test processes: a second build of the tag retags it mid-test.
    with open(Path(tempfile.gettempdir()) / "taskdeploy-contract-image.lock", "w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        found = await images.find(key) or await images.build(key, base_id, [], None)
    return found.ref


@pytest.fixture(params=["memory", pytest.param("docker", marks=pytest.mark.docker)])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    backend: RunBackend
    image = BUSYBOX
    if request.param == "memory":
        backend = MemoryBackend()
    else:
        runtime = DockerRuntime()
        backend = DockerBackend(runtime, tmp_dir=tmp_path)
        image = await environment_image(DockerImages(runtime), BUSYBOX)
    try:
        yield Harness(request.param, backend, image)
    finally:
        for info in await backend.owned():
            if info.instance_id == "contract":
                await backend.forget(info.ref)
        await backend.close()
