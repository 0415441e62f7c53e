"""The ports services and workers depend on: container runtime, object store, webhook sender."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Literal, Protocol

LogStream = Literal["stdout", "stderr"]


# --------------------------------------------------------------------------- errors
class AdapterError(Exception):
    """Base of every error an adapter raises; vendor exceptions never leak past an adapter."""


class RuntimeUnavailable(AdapterError):
    """The container engine cannot be reached."""


class ImageNotFound(AdapterError):
    """An image reference does not exist on the engine (and nothing was pulled)."""


class ImageBuildFailed(AdapterError):
    """An image build failed; `log` holds the build output."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


class ContainerNotFound(AdapterError):
    """A container id is unknown to the engine."""


class ContainerError(AdapterError):
    """Any other engine-side failure on a container operation."""


class ObjectStoreError(AdapterError):
    """Any object-store failure not covered by a more precise subclass."""


class ObjectStoreRefused(ObjectStoreError):
    """The store answered, and no for good: access denied, an archived object, a request it
    will never take. Retrying cannot help, unlike an outage or a throttle."""


class BucketNotFound(ObjectStoreRefused):
    """The bucket does not exist."""


class ObjectNotFound(ObjectStoreRefused):
    """The key does not exist."""


# --------------------------------------------------------------------------- values
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
class BuildLimits:
    """What one image build may use: its RUN steps are other people's package installs."""

    memory_bytes: int
    nano_cpus: int
    nofile: int = 4096


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    name: str
    driver: str
    options: dict[str, str]


class DiskLimitUnsupported(AdapterError):
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


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # the full key in the bucket
    size: int


# --------------------------------------------------------------------------- ports
class ContainerRuntime(Protocol):
    """What the executor, watcher, reconciler and janitor need from a container engine."""

    async def ping(self) -> None: ...

    async def image_info(self, ref: str) -> ImageInfo | None: ...

    async def build_image(
        self,
        context_tar: BinaryIO,
        *,
        tag: str,
        labels: dict[str, str],
        buildargs: dict[str, str],
        limits: BuildLimits | None = None,
    ) -> BuildResult: ...

    async def list_images(self, label: str) -> list[ImageInfo]: ...

    async def remove_image(self, ref: str) -> None: ...

    async def prune_dangling_images(self, older_than_seconds: float) -> int: ...

    async def create_container(self, spec: ContainerSpec) -> str: ...

    async def put_archive(self, container_id: str, path: str, tar: BinaryIO) -> None: ...

    async def start(self, container_id: str) -> None: ...

    async def wait(self, container_id: str) -> ContainerState: ...

    async def inspect(self, container_id: str) -> ContainerState | None: ...

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> None: ...

    async def has_disk_room(self, container_id: str, needed: int) -> bool:
        """Whether `needed` more bytes still fit the (stopped) container's capped layer."""
        ...

    async def network_info(self, name: str) -> NetworkInfo | None: ...

    async def remove(self, container_id: str) -> None: ...

    async def list_containers(self, labels: dict[str, str]) -> list[ContainerState]: ...

    def stream_logs(self, container_id: str, stream: LogStream) -> AsyncIterator[bytes]: ...

    def stream_archive(self, container_id: str, path: str) -> AsyncIterator[bytes]: ...

    def events(self, labels: dict[str, str]) -> AsyncIterator[ContainerEvent]: ...

    def stats(self, container_id: str) -> AsyncIterator[StatsSample]: ...

    async def close(self) -> None: ...


class ObjectStore(Protocol):
    """A bucket/key store: S3 or a local directory with one folder per bucket."""

    async def bucket_exists(self, bucket: str) -> bool: ...

    def list_objects(self, bucket: str, prefix: str) -> AsyncIterator[ObjectInfo]: ...

    async def download_fileobj(self, bucket: str, key: str, fileobj: BinaryIO) -> int: ...

    def stream_object(self, bucket: str, key: str) -> AsyncGenerator[bytes, None]: ...

    async def upload_fileobj(
        self, bucket: str, key: str, fileobj: BinaryIO, *, content_type: str | None = None
    ) -> int: ...

    async def put_bytes(
        self, bucket: str, key: str, data: bytes, *, content_type: str | None = None
    ) -> None: ...

    async def get_bytes(self, bucket: str, key: str, *, max_bytes: int) -> bytes: ...

    async def close(self) -> None: ...


async def write_chunks(chunks: AsyncIterator[bytes], fileobj: BinaryIO) -> int:
    """Write each chunk to `fileobj` off the event loop; return the bytes written. An object
    store's download_fileobj is its stream_object written this way."""
    written = 0
    async for chunk in chunks:
        await asyncio.to_thread(fileobj.write, chunk)
        written += len(chunk)
    return written


# --------------------------------------------------------------------------- webhooks
class WebhookSendError(AdapterError):
    """A webhook POST got no status line: lookup, connection, TLS or protocol failure."""


class WebhookSender(Protocol):
    """How the notifier reaches a receiver: look its host up once, then POST to one address."""

    async def resolve(self, host: str, port: int) -> list[str]: ...

    async def post(self, url: str, address: str, headers: dict[str, str], body: bytes) -> int:
        """POSTs `body` to `url` over a connection to `address`, never looking the URL's host
        up again (the Host header and the TLS server name and certificate check still use it);
        reads at most the sender's cap of the answer, then closes; returns the status."""
        ...

    async def close(self) -> None: ...
