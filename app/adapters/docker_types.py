"""The Docker engine's own shapes: what the engine client (docker.py) speaks. Only the Docker
adapters use them; the rest of the service speaks the ports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from app.adapters.ports import BackendMisconfigured, ContainerNotFound

LogStream = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class ImageInfo:
    id: str
    tags: list[str]
    size: int
    labels: dict[str, str]
    created: datetime | None = None


@dataclass(frozen=True, slots=True)
class BuildResult:
    image_id: str
    log: str


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything needed to create one job container; the adapter maps it to the engine's API."""

    image: str
    command: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    user: str = "65534:65534"
    working_dir: str = "/workspace"
    nano_cpus: int = 1_000_000_000
    memory_bytes: int = 256 * 1024 * 1024
    pids_limit: int = 256
    network: str | None = None  # the network to join; None: no network at all
    log_max_bytes: int = 1024 * 1024
    # The cap of the container's writable layer, where the workspace lives (None: no cap).
    disk_bytes: int | None = None
    ulimits: dict[str, int] = field(default_factory=dict)  # RLIMIT name -> soft = hard limit
    tmpfs: dict[str, str] = field(default_factory=lambda: {"/tmp": "rw,nosuid,nodev,size=64m"})
    # The workspace is staged into the writable layer, so the root stays writable (for the
    # job only where the image lets its uid write, all of it under `disk_bytes`).
    read_only_root: bool = False
    name: str | None = None


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    name: str
    driver: str
    options: dict[str, str]


class PathNotFound(ContainerNotFound):
    """The container is there but the path is not (the engine answers 404 for both)."""


class DiskLimitUnsupported(BackendMisconfigured):
    """The engine cannot cap a container's writable layer (its storage driver has no quotas)."""


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    status: str  # created | running | paused | restarting | removing | exited | dead
    running: bool
    exit_code: int | None
    oom_killed: bool
    started_at: datetime | None
    finished_at: datetime | None
    labels: dict[str, str]
    image_id: str = ""


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    action: str  # die | oom | start | ...
    container_id: str
    exit_code: int | None
    labels: dict[str, str]
    time_nano: int


@dataclass(frozen=True, slots=True)
class StatsSample:
    """One sample of Docker's stats stream (the fallback when the in-container sampler is absent)."""

    cpu_total_ns: int
    memory_bytes: int
    read_at: datetime


# --------------------------------------------------------------------------- ports
