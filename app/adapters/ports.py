"""The ports services and workers depend on: run backend, image builder, object store,
webhook sender. Nothing here is shaped by one vendor: tar archives, labels and event streams
stay inside the adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Protocol


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
class BuildLimits:
    """What one image build may use: its RUN steps are other people's package installs."""

    memory_bytes: int
    nano_cpus: int
    nofile: int = 4096


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # the full key in the bucket
    size: int


# --------------------------------------------------------------------------- run backend
# Where a job sees its files, whatever runs it: the wrapper and the command sit in META_DIR.
WORKSPACE = "/workspace"
INPUT_DIR = f"{WORKSPACE}/input"
OUTPUT_DIR = f"{WORKSPACE}/output"
META_DIR = f"{WORKSPACE}/.taskdeploy"
JOB_UID = 65534


class AttemptLost(AdapterError):
    """The backend no longer has the attempt (removed outside the service, or its host gone)."""


class BackendMisconfigured(AdapterError):
    """The backend cannot run jobs safely as configured (no disk caps, an open job network)."""


@dataclass(frozen=True, slots=True)
class AttemptSpec:
    """One attempt of one run, in the service's terms; the backend maps it to its own API."""

    run_id: str
    attempt: int
    instance_id: str  # the replica that launches it
    image: str  # an environment image the ImageBuilder made
    command: str  # the user's shell command, run by the service's wrapper as data
    env: dict[str, str]
    nano_cpus: int
    memory_bytes: int
    pids_limit: int
    tmp_bytes: int
    nofile: int
    file_size_bytes: int  # no single file beyond it (a backstop for a backend without disk caps)
    disk_bytes: int | None  # the cap of the workspace (None: not capped)
    network: str | None  # the job network to join; None: no network at all


@dataclass(frozen=True, slots=True)
class AttemptRef:
    """A launched attempt: `handle` is the backend's own id of it (a container id ...)."""

    run_id: str
    attempt: int
    handle: str


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """An attempt the backend holds, as `find` and `owned` list it."""

    ref: AttemptRef
    instance_id: str  # the replica that launched it
    started_at: datetime | None  # None: launched, never started
    running: bool


@dataclass(frozen=True, slots=True)
class AttemptExit:
    """How an attempt's command ended, as the backend itself saw it (never as the job says)."""

    code: int | None
    oom_killed: bool = False
    stopped_outside: bool = False  # stopped by someone else than the service (an engine restart)
    disk_full: bool = False  # the job had filled its disk cap


class InputFile(Protocol):
    """One input file for the workspace, `size` bytes under INPUT_DIR; it copies itself."""

    @property
    def path(self) -> str:
        """Relative to INPUT_DIR, already checked safe."""
        ...

    @property
    def size(self) -> int: ...

    async def copy_to(self, fileobj: BinaryIO) -> int:
        """Writes exactly `size` bytes to `fileobj` (or raises); returns the bytes written."""
        ...


class Capture:
    """Keeps the first `head` and the last `tail` bytes of one file's body of `size` bytes,
    counting the rest without keeping it."""

    def __init__(self, size: int, head: int, tail: int = 0) -> None:
        self.size = size
        self.head_limit = head
        self.tail_limit = tail
        self.received = 0
        self._head = bytearray()
        self._tail = bytearray()

    def __call__(self, piece: memoryview | bytes) -> None:
        self.received += len(piece)
        room = self.head_limit - len(self._head)
        if room > 0:
            self._head += piece[:room]
            piece = piece[room:]
        if piece and self.tail_limit:
            self._tail += piece
            if len(self._tail) > 2 * self.tail_limit:  # trimmed now and then, not per piece
                del self._tail[: -self.tail_limit]

    @property
    def complete(self) -> bool:
        """The whole body went through (not only what was kept)."""
        return self.received >= self.size

    @property
    def satisfied(self) -> bool:
        """Nothing more would be kept: complete, or only a head is wanted and it is full."""
        return self.complete or (not self.tail_limit and len(self._head) >= self.head_limit)

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    @property
    def tail(self) -> bytes:
        return bytes(self._tail[-self.tail_limit :]) if self.tail_limit else b""


@dataclass(frozen=True, slots=True)
class CaptureLimits:
    """How much of what a job left is read back (all of it was written by the job)."""

    log_bytes: int  # stdout.log / stderr.log, each
    output_files: int
    output_bytes: int
    output_key_bytes: int  # the longest output path that still makes an object key
    reserved: frozenset[str] = frozenset()  # output names that clash with the service's files


@dataclass(frozen=True, slots=True)
class OutputEntry:
    """One entry of the output folder, before its body is read."""

    path: str  # as the job named it, relative to OUTPUT_DIR (not yet checked)
    kind: str  # regular | hardlink | symlink | device | directory | fifo | other
    size: int
    link: str = ""  # a hard link's target, as named in the same listing


class OutputSink(Protocol):
    """Where collected outputs go: it decides, entry by entry, which bodies it takes (the caps),
    then receives each taken body, once the listing is read."""

    def offer(self, entry: OutputEntry) -> str | None:
        """The name to store the entry under, or None to leave it (and list it as skipped)."""
        ...

    @property
    def full(self) -> bool:
        """No more entries are wanted: stop reading the listing."""
        ...

    async def receive(self, name: str, body: BinaryIO, size: int) -> None: ...


@dataclass
class Collected:
    """What `collect` read back: the wrapper's files (bounded captures) and notes on what was
    left out. Output bodies went to the sink."""

    files: dict[str, Capture] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    output_problem: str | None = None  # the output folder could not be read (and why)
    listing_incomplete: bool = False


class RunBackend(Protocol):
    """What the run pipeline needs from any place that runs containers."""

    async def ping(self) -> None: ...

    async def check(self, *, disk_limits: bool, network: str | None, images: list[str]) -> None:
        """Raises BackendMisconfigured when it cannot cap disks (if asked) or has no safe
        job network (when given); a backend that cannot be reached yet passes."""
        ...

    async def launch(self, spec: AttemptSpec, inputs: list[InputFile]) -> AttemptRef:
        """Creates the attempt (not started) with the workspace staged: the wrapper, the
        command, the inputs. Leaves nothing behind when it raises."""
        ...

    async def start(self, ref: AttemptRef) -> None: ...

    async def wait(self, ref: AttemptRef, timeout: float) -> AttemptExit | None:
        """Its exit once it has ended (at once if it had), or None after `timeout` seconds."""
        ...

    async def stop(self, ref: AttemptRef, grace: float) -> None:
        """Asks the command to end, kills it after `grace` seconds; returns once it ended."""
        ...

    async def collect(self, ref: AttemptRef, limits: CaptureLimits, sink: OutputSink) -> Collected:
        """Reads back an ended attempt's wrapper files and outputs within `limits`."""
        ...

    async def read_live(self, handle: str, name: str, capture: Capture, max_bytes: int) -> bool:
        """Feeds the wrapper's file `name` (stdout.log, metrics.tsv ...) of a running attempt
        to `capture`, reading at most about `max_bytes`; False when it is not there."""
        ...

    async def forget(self, ref: AttemptRef) -> None:
        """Removes the attempt and everything it held; harmless when it is already gone."""
        ...

    async def find(self, run_id: str) -> list[AttemptInfo]:
        """The attempts the backend holds for a run (one, normally)."""
        ...

    async def owned(self) -> list[AttemptInfo]:
        """Every attempt of this service the backend holds, whichever replica launched it."""
        ...

    async def watch(self) -> None:
        """Follows the backend's own exit notices until they end (then call it again); waits
        complete sooner while it runs."""
        ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- images
@dataclass(frozen=True, slots=True)
class EnvironmentImage:
    key: str
    ref: str  # what AttemptSpec.image names
    image_id: str
    size: int


class ImageBuilder(Protocol):
    """Makes and keeps environment images (base image + packages), keyed by the service."""

    async def base_id(self, image: str) -> str | None:
        """The id of a base image the backend holds; None when it has not got it."""
        ...

    async def find(self, key: str) -> EnvironmentImage | None: ...

    async def build(
        self, key: str, base_id: str, packages: list[str], limits: BuildLimits | None
    ) -> EnvironmentImage:
        """Raises ImageBuildFailed with the build's log."""
        ...

    async def cached(self) -> list[EnvironmentImage]: ...

    async def evict(self, image: EnvironmentImage) -> bool:
        """Removes it unless an attempt still uses it; True when it went."""
        ...

    async def prune(self, older_than_seconds: float) -> int:
        """Removes what failed builds left behind; returns how many went."""
        ...


# --------------------------------------------------------------------------- object store
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
