"""The Docker engine client: the Engine API through aiodocker's HTTP client, in the engine's
own shapes (docker_types). The ports are implemented over it by docker_backend (RunBackend)
and docker_images (ImageBuilder)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import tarfile
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final, TypeAlias

import aiodocker
import aiohttp

from app.adapters.docker_types import (
    BuildResult,
    ContainerEvent,
    ContainerSpec,
    ContainerState,
    DiskLimitUnsupported,
    ImageInfo,
    LogStream,
    NetworkInfo,
    StatsSample,
)
from app.adapters.ports import (
    AdapterError,
    BuildLimits,
    ContainerError,
    ContainerNotFound,
    ImageBuildFailed,
    ImageNotFound,
    RuntimeUnavailable,
)

MANAGED_LABEL: Final = "taskdeploy.managed=true"
"""Only images carrying this label are ever pruned: the engine may hold other people's images."""

_CHUNK_BYTES: Final = 256 * 1024
# A JSON line of the events or stats stream is a few KB; anything near this is a broken stream.
_MAX_JSON_LINE_BYTES: Final = 4 * 1024 * 1024
_EVENT_ACTIONS: Final = ("start", "die", "oom", "kill")
# Docker mixes these into Actor.Attributes next to the container's labels (and they win on clash).
_NON_LABEL_ATTRIBUTES: Final = frozenset({"image", "name", "exitCode", "signal"})
_STREAM_TYPES: Final[Mapping[LogStream, int]] = {"stdout": 1, "stderr": 2}
_RFC3339 = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d{2}:\d{2})$"
)
_CONNECT_TIMEOUT_S: Final = 30.0
_BUILD_LOG_CHARS: Final = 1024 * 1024

_Json: TypeAlias = dict[str, object]


class DockerRuntime:
    """A container runtime backed by one Docker engine, over one shared HTTP client."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        # Created on first use: aiohttp binds its connector to the running loop, and this object
        # may be built before any loop runs.
        self._docker: aiodocker.Docker | None = None
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def _client(self) -> aiodocker.Docker:
        if self._closed:
            raise RuntimeUnavailable("the Docker runtime has been closed")
        if self._docker is None:
            try:
                # No total/read timeout: waits, logs and event streams legitimately last for hours.
                self._docker = aiodocker.Docker(
                    url=self._url,
                    timeout=aiohttp.ClientTimeout(sock_connect=_CONNECT_TIMEOUT_S),
                )
            except (
                ValueError,
                AssertionError,
                aiodocker.DockerError,
            ) as exc:  # aiodocker asserts when no socket is found
                raise RuntimeUnavailable(f"cannot set up a Docker client: {exc}") from exc
        return self._docker

    @asynccontextmanager
    async def _request(
        self,
        action: str,
        path: str,
        method: str = "GET",
        *,
        params: Mapping[str, str] | None = None,
        data: object = None,
        headers: Mapping[str, str] | None = None,
        not_found: type[AdapterError] = ContainerNotFound,
        versioned_api: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        with _translated(action, not_found):
            async with self._client()._query(
                path,
                method,
                params=params,
                data=data,
                headers=headers,
                versioned_api=versioned_api,
            ) as response:
                try:
                    yield response
                finally:
                    # aiodocker's _query never releases the response; an unread stream must be
                    # closed or it pins a pooled connection.
                    if response.content.at_eof():
                        response.release()
                    else:
                        response.close()

    async def _json(
        self,
        action: str,
        path: str,
        method: str = "GET",
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        not_found: type[AdapterError] = ContainerNotFound,
    ) -> object:
        data = None if body is None else json.dumps(body).encode()
        async with self._request(
            action, path, method, params=params, data=data, not_found=not_found
        ) as response:
            raw = await response.read()
        with _translated(action, not_found):
            return json.loads(raw) if raw.strip() else None

    # ------------------------------------------------------------------ engine
    async def ping(self) -> None:
        async with self._request("ping the engine", "_ping", versioned_api=False) as response:
            await response.read()

    async def close(self) -> None:
        self._closed = True
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()

    # ------------------------------------------------------------------ images
    async def image_info(self, ref: str) -> ImageInfo | None:
        try:
            data = _obj(
                await self._json(
                    f"inspect image {ref}", f"images/{ref}/json", not_found=ImageNotFound
                )
            )
        except ImageNotFound:
            return None
        return ImageInfo(
            id=_str(data.get("Id")),
            tags=_tags(data.get("RepoTags")),
            size=_int(data.get("Size")) or 0,
            labels=_str_map(_obj(data.get("Config")).get("Labels")),
            created=_parse_time(data.get("Created")),
        )

    async def build_image(
        self,
        context_tar: BinaryIO,
        *,
        tag: str,
        labels: dict[str, str],
        buildargs: dict[str, str],
        limits: BuildLimits | None = None,
    ) -> BuildResult:
        """Build from a tar context within `limits`; never pulls, so the caller must check that
        FROM exists. Closing the request (a cancelled caller) makes the engine stop the build."""
        log = _BuildLog()
        produced_image = False
        action = f"build image {tag}"
        params = {
            "t": tag,
            "labels": json.dumps(labels),
            "buildargs": json.dumps(buildargs),
            "pull": "0",  # a missing base must fail, never reach for a registry
            # No build cache: every environment image is built once per key anyway, and a cached
            # step is an intermediate image that evicting another image may delete mid-build
            # (the build then fails with "failed to get digest ...: no such file").
            "nocache": "1",
            "rm": "1",
            "forcerm": "1",
            **(_build_limit_params(limits) if limits is not None else {}),
        }
        try:
            async with self._request(
                action,
                "build",
                "POST",
                params=params,
                data=_read_chunks(context_tar),
                headers={"Content-Type": "application/x-tar"},
                not_found=ImageNotFound,
            ) as response:
                async for item in _json_lines(response, action):
                    if isinstance(text := item.get("stream"), str):
                        log.add(text)
                    if isinstance(item.get("aux"), dict):
                        produced_image = True
                    if item.get("error") is not None:
                        message = _str(item.get("error")) or "the build failed"
                        raise ImageBuildFailed(f"{action}: {message}", log.text())
        except ContainerError as exc:
            # The engine answers a bad Dockerfile or context with a 4xx/5xx before streaming.
            raise ImageBuildFailed(str(exc), log.text()) from exc
        if not produced_image:
            # The stream can end quietly when the connection drops; don't tag a half build.
            raise ImageBuildFailed(f"{action}: the build ended without an image", log.text())
        info = await self.image_info(tag)
        if info is None:
            raise ImageBuildFailed(f"{action}: the built tag is gone", log.text())
        return BuildResult(image_id=info.id, log=log.text())

    async def list_images(self, label: str) -> list[ImageInfo]:
        data = await self._json(
            f"list images labelled {label}",
            "images/json",
            params={"filters": json.dumps({"label": [label]})},
            not_found=ImageNotFound,
        )
        return [_image_summary(_obj(item)) for item in _list(data)]

    async def remove_image(self, ref: str) -> None:
        with suppress(ImageNotFound):
            await self._json(
                f"remove image {ref}",
                f"images/{ref}",
                "DELETE",
                params={"force": "0", "noprune": "0"},
                not_found=ImageNotFound,
            )

    async def prune_dangling_images(self, older_than_seconds: float) -> int:
        """Delete untagged images labelled `MANAGED_LABEL` made more than `older_than_seconds`
        ago; return how many went. A build in progress is a chain of such images: younger
        ones may still become a tagged image's parents, and deleting them fails that build."""
        filters = {"dangling": ["true"], "label": [MANAGED_LABEL]}
        cutoff = int(datetime.now(UTC).timestamp() - older_than_seconds)
        # The prune answer lists freed layers as "Deleted" too; count only the images it took.
        candidates = await self._json(
            "list dangling images",
            "images/json",
            params={"filters": json.dumps(filters)},
            not_found=ImageNotFound,
        )
        candidate_ids = {
            _str(_obj(item).get("Id"))
            for item in _list(candidates)
            if (_int(_obj(item).get("Created")) or 0) <= cutoff
        }
        data = _obj(
            await self._json(
                "prune dangling images",
                "images/prune",
                "POST",
                params={"filters": json.dumps({**filters, "until": [str(cutoff)]})},
                not_found=ImageNotFound,
            )
        )
        deleted = {_str(_obj(item).get("Deleted")) for item in _list(data.get("ImagesDeleted"))}
        return len(candidate_ids & deleted)

    # ------------------------------------------------------------------ containers
    async def create_container(self, spec: ContainerSpec) -> str:
        if not spec.command:
            # An empty Cmd makes the engine fall back to the image's CMD.
            raise ValueError("a container needs a command")
        params = {"name": spec.name} if spec.name else None
        try:
            created = await self._json(
                f"create a container from {spec.image}",
                "containers/create",
                "POST",
                params=params,
                body=_container_config(spec),
                not_found=ImageNotFound,
            )
        except ContainerError as exc:
            if spec.disk_bytes is not None and "storage-opt" in str(exc):
                raise DiskLimitUnsupported(
                    f"the Docker engine cannot cap a container's disk ({exc}); run it on btrfs, "
                    "zfs or overlay2 over XFS with pquota (scripts/ensure-docker.sh), or set "
                    "TASKDEPLOY_DISK_QUOTA=off"
                ) from exc
            raise
        data = _obj(created)
        container_id = _str(data.get("Id"))
        if not container_id:
            raise ContainerError("the engine created a container without an id")
        return container_id

    async def put_archive(self, container_id: str, path: str, tar: BinaryIO) -> None:
        """Unpack `tar` at `path` (which must exist), streaming it: it may be far larger than RAM."""
        action = f"copy an archive into {path} of container {container_id}"
        try:
            async with self._request(
                action,
                f"containers/{container_id}/archive",
                "PUT",
                params={"path": path},
                data=_read_chunks(tar),
                headers={"Content-Type": "application/x-tar"},
            ) as response:
                await response.read()
        except ContainerNotFound as exc:
            raise await self._archive_not_found(container_id, action) from exc

    async def start(self, container_id: str) -> None:
        async with self._request(
            f"start container {container_id}", f"containers/{container_id}/start", "POST"
        ) as response:
            await response.read()

    async def wait(self, container_id: str) -> ContainerState:
        """Block until the container is not running, then return its final state."""
        await self._json(
            f"wait for container {container_id}", f"containers/{container_id}/wait", "POST"
        )
        state = await self.inspect(container_id)
        if state is None:
            raise ContainerNotFound(f"container {container_id} vanished after it exited")
        return state

    async def inspect(self, container_id: str) -> ContainerState | None:
        try:
            data = await self._json(
                f"inspect container {container_id}", f"containers/{container_id}/json"
            )
        except ContainerNotFound:
            return None
        return _container_state(_obj(data))

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        try:
            await self._json(
                f"send {signal} to container {container_id}",
                f"containers/{container_id}/kill",
                "POST",
                params={"signal": signal},
            )
        except _Conflict as exc:
            if "is not running" not in str(exc):
                raise

    async def has_disk_room(self, container_id: str, needed: int) -> bool:
        """Writes `needed` bytes into the container's layer, outside the workspace, and tells
        whether they fitted. The engine's own SizeRw is no help here (-1 on btrfs), and what
        the job wrote cannot be trusted, so the engine is asked to write."""
        probe = io.BytesIO()
        with tarfile.open(fileobj=probe, mode="w") as tar:
            info = tarfile.TarInfo(f".taskdeploy-room-{uuid.uuid4().hex}")
            info.size = needed
            tar.addfile(info, _Zeros(needed))
        probe.seek(0)
        try:
            await self.put_archive(container_id, "/", probe)
        except ContainerError as exc:
            if any(word in str(exc).lower() for word in ("quota", "no space left")):
                return False
            raise
        return True

    async def network_info(self, name: str) -> NetworkInfo | None:
        try:
            data = _obj(
                await self._json(f"inspect network {name}", f"networks/{name}", not_found=_Missing)
            )
        except _Missing:
            return None
        return NetworkInfo(
            name=_str(data.get("Name")),
            driver=_str(data.get("Driver")),
            options=_str_map(data.get("Options")),
        )

    async def remove(self, container_id: str) -> None:
        try:
            await self._json(
                f"remove container {container_id}",
                f"containers/{container_id}",
                "DELETE",
                # v=1 takes the anonymous workspace volume with it.
                params={"force": "1", "v": "1"},
            )
        except ContainerNotFound:
            pass
        except _Conflict as exc:
            # Another remover got there first; the container is going away either way.
            if "already in progress" not in str(exc):
                raise

    async def list_containers(self, labels: dict[str, str]) -> list[ContainerState]:
        """Every container, running or not, carrying all `labels` (all of them if empty)."""
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        summaries = await self._json(
            "list containers",
            "containers/json",
            params={"all": "1", "filters": json.dumps(filters)},
        )
        ids = [_str(_obj(item).get("Id")) for item in _list(summaries)]
        # The summary lacks exit code, OOM flag and times; a container may go between the calls.
        states = await asyncio.gather(*(self.inspect(container_id) for container_id in ids))
        return [state for state in states if state is not None]

    # ------------------------------------------------------------------ streams
    async def stream_logs(self, container_id: str, stream: LogStream) -> AsyncIterator[bytes]:
        """The raw bytes one stream has logged so far (no follow), demultiplexed as they arrive."""
        wanted = _STREAM_TYPES[stream]
        action = f"read the {stream} of container {container_id}"
        params = {
            "stdout": "1" if stream == "stdout" else "0",
            "stderr": "1" if stream == "stderr" else "0",
            "follow": "0",
            "timestamps": "0",
        }
        async with self._request(
            action, f"containers/{container_id}/logs", params=params
        ) as response:
            reader = response.content
            while True:
                try:
                    header = await reader.readexactly(8)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise ContainerError(
                            f"{action}: the log ends inside a frame header"
                        ) from exc
                    return
                # Non-TTY logs come in frames: stream type, three zero bytes, big-endian length.
                if header[1:4] != b"\0\0\0" or header[0] > 2:
                    raise ContainerError(f"{action}: the log is not multiplexed (a TTY container?)")
                remaining = int.from_bytes(header[4:], "big")
                while remaining:
                    chunk = await reader.read(min(remaining, _CHUNK_BYTES))
                    if not chunk:
                        raise ContainerError(f"{action}: the log ends inside a frame")
                    remaining -= len(chunk)
                    if header[0] == wanted:
                        yield chunk

    async def stream_archive(self, container_id: str, path: str) -> AsyncIterator[bytes]:
        """The tar of `path` as the engine sends it, chunk by chunk; works on stopped containers."""
        action = f"read {path} from container {container_id}"
        try:
            async with self._request(
                action,
                f"containers/{container_id}/archive",
                params={"path": path},
                # aiohttp asks for gzip by default and the engine obliges: compressing a large
                # output folder cut its download from ~450 to ~28 MiB/s (bench/, data scenario).
                headers={"Accept-Encoding": "identity"},
            ) as response:
                async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                    yield chunk
        except ContainerNotFound as exc:
            raise await self._archive_not_found(container_id, action) from exc

    async def _archive_not_found(self, container_id: str, action: str) -> ContainerNotFound:
        # The engine answers 404 both for a missing container and for a missing path.
        if await self.inspect(container_id) is None:
            return ContainerNotFound(f"{action}: no such container")
        return ContainerNotFound(f"{action}: no such path in the container")

    async def events(self, labels: dict[str, str]) -> AsyncIterator[ContainerEvent]:
        """start/die/oom/kill of containers carrying all `labels`, from one request; ends with it.

        Events from before the request are not replayed: subscribe, then list containers to catch
        up. An own request per call, unlike aiodocker's shared subscription, whose first
        subscriber fixes the filters for everyone and whose queues grow without bound.
        """
        filters = {
            "type": ["container"],
            "event": list(_EVENT_ACTIONS),
            "label": [f"{key}={value}" for key, value in labels.items()],
        }
        async with self._request(
            "watch container events", "events", params={"filters": json.dumps(filters)}
        ) as response:
            try:
                async for item in _json_lines(response, "watch container events"):
                    event = _container_event(item)
                    if event is not None:
                        yield event
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                # A dropped stream ends like a closed one: the caller reconnects, and a dead engine
                # shows up as RuntimeUnavailable on that next request.
                return

    async def stats(self, container_id: str) -> AsyncIterator[StatsSample]:
        """About one sample a second while the container runs; ends when it stops."""
        async with self._request(
            f"read stats of container {container_id}",
            f"containers/{container_id}/stats",
            params={"stream": "1"},
        ) as response:
            try:
                async for item in _json_lines(response, f"read stats of {container_id}"):
                    read_at = _parse_time(item.get("read"))
                    if read_at is None:
                        # Once the container stops the engine streams empty samples until it is
                        # removed; the first one means we are done.
                        return
                    sample = _stats_sample(item, read_at)
                    if sample is not None:
                        yield sample
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                return


# ---------------------------------------------------------------------- error translation
class _Conflict(ContainerError):
    """A 409 from the engine; callers decide whether the conflict is harmless."""


class _Missing(AdapterError):
    """A 404 for something that is neither a container nor an image."""


@contextmanager
def _translated(action: str, not_found: type[AdapterError]) -> Iterator[None]:
    try:
        yield
    except AdapterError:
        raise
    except aiodocker.DockerError as exc:
        message = f"{action}: {exc.message}"
        if exc.status == 404:
            raise not_found(message) from exc
        if exc.status == 409:
            raise _Conflict(message) from exc
        # aiodocker reports an unreachable engine as 900 and a bad context config as 0.
        if exc.status in (0, 900):
            raise RuntimeUnavailable(message) from exc
        raise ContainerError(message) from exc
    except aiohttp.ClientConnectionError as exc:
        raise RuntimeUnavailable(f"{action}: lost the connection to the engine: {exc}") from exc
    except (aiohttp.ClientError, ValueError) as exc:
        # ValueError: a body the engine sent that is not the JSON it promised.
        raise ContainerError(f"{action}: {exc}") from exc


# ---------------------------------------------------------------------- mapping
def _container_config(spec: ContainerSpec) -> _Json:
    host_config: _Json = {
        "Init": True,  # a shell as PID 1 ignores SIGTERM; tini forwards it
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "PidsLimit": spec.pids_limit,
        "Memory": spec.memory_bytes,
        "MemorySwap": spec.memory_bytes,  # equal to Memory: no swap on top
        "NanoCpus": spec.nano_cpus,
        "NetworkMode": spec.network or "none",
        "ReadonlyRootfs": spec.read_only_root,
        "Tmpfs": dict(spec.tmpfs),
        "Ulimits": [{"Name": name, "Soft": v, "Hard": v} for name, v in spec.ulimits.items()],
        "LogConfig": _log_config(spec.log_max_bytes),
        "AutoRemove": False,  # the outputs and exit code are read after exit
        "RestartPolicy": {"Name": "no"},
    }
    if spec.disk_bytes is not None:
        host_config["StorageOpt"] = {"size": str(spec.disk_bytes)}
    return {
        "Image": spec.image,
        # An empty Entrypoint list (unlike a missing one) drops the image's entrypoint.
        "Entrypoint": [],
        "Cmd": list(spec.command),
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": dict(spec.labels),
        "User": spec.user,
        "WorkingDir": spec.working_dir,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": host_config,
    }


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read in any chunks (a tar member's body without holding it)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


class _BuildLog:
    """The build's output, keeping its last `limit` characters (where a failure shows)."""

    def __init__(self, limit: int = _BUILD_LOG_CHARS) -> None:
        self.limit = limit
        self.parts: deque[str] = deque()
        self.size = 0
        self.dropped = False

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        while self.size > self.limit and len(self.parts) > 1:
            self.size -= len(self.parts.popleft())
            self.dropped = True

    def text(self) -> str:
        body = "".join(self.parts)[-self.limit :]
        return f"[taskdeploy: earlier build output left out]\n{body}" if self.dropped else body


def _build_limit_params(limits: BuildLimits) -> dict[str, str]:
    period = 100_000  # CFS period in microseconds; the quota is the CPUs' share of it
    return {
        "memory": str(limits.memory_bytes),
        "memswap": str(limits.memory_bytes),  # equal to memory: no swap on top
        "cpuperiod": str(period),
        "cpuquota": str(max(1000, limits.nano_cpus * period // 1_000_000_000)),
        "ulimits": json.dumps([{"Name": "nofile", "Soft": limits.nofile, "Hard": limits.nofile}]),
    }


def _log_config(max_bytes: int) -> _Json:
    # "local", not "json-file": json-file stores lines as JSON strings and turns invalid UTF-8 into
    # U+FFFD, while "local" keeps the bytes. Two files of half the budget each, because a single
    # file is truncated on rotation and can leave almost nothing; two always keep a recent tail.
    # The budget counts the driver's framing too (about 30 bytes per line).
    return {
        "Type": "local",
        "Config": {
            "max-size": str(max(max_bytes // 2, 1)),
            "max-file": "2",
            "compress": "false",
        },
    }


def _container_state(data: _Json) -> ContainerState:
    state = _obj(data.get("State"))
    status = _str(state.get("Status"))
    running = state.get("Running") is True
    finished_at = _parse_time(state.get("FinishedAt"))
    exited = not running and (status in ("exited", "dead") or finished_at is not None)
    return ContainerState(
        id=_str(data.get("Id")),
        status=status,
        running=running,
        exit_code=_int(state.get("ExitCode")) if exited else None,
        oom_killed=state.get("OOMKilled") is True,
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=finished_at,
        labels=_str_map(_obj(data.get("Config")).get("Labels")),
        image_id=_str(data.get("Image")),
    )


def _image_summary(data: _Json) -> ImageInfo:
    created = _int(data.get("Created"))
    return ImageInfo(
        id=_str(data.get("Id")),
        tags=_tags(data.get("RepoTags")),
        size=_int(data.get("Size")) or 0,
        labels=_str_map(data.get("Labels")),
        created=datetime.fromtimestamp(created, UTC) if created else None,
    )


def _container_event(data: _Json) -> ContainerEvent | None:
    action = _str(data.get("Action") or data.get("status"))
    actor = _obj(data.get("Actor"))
    container_id = _str(actor.get("ID") or data.get("id"))
    if not action or not container_id:
        return None
    attributes = _str_map(actor.get("Attributes"))
    return ContainerEvent(
        action=action,
        container_id=container_id,
        exit_code=_int_text(attributes.get("exitCode")),
        labels={k: v for k, v in attributes.items() if k not in _NON_LABEL_ATTRIBUTES},
        time_nano=_int(data.get("timeNano")) or (_int(data.get("time")) or 0) * 1_000_000_000,
    )


def _stats_sample(data: _Json, read_at: datetime) -> StatsSample | None:
    memory = _obj(data.get("memory_stats"))
    usage = _int(memory.get("usage"))
    cpu_total = _int(_obj(_obj(data.get("cpu_stats")).get("cpu_usage")).get("total_usage"))
    if usage is None or cpu_total is None:
        return None
    details = _obj(memory.get("stats"))
    # Usage includes page cache the kernel can drop; `docker stats` subtracts the same.
    inactive = _int(details.get("total_inactive_file"))  # cgroup v1
    if inactive is None:
        inactive = _int(details.get("inactive_file")) or 0  # cgroup v2
    return StatsSample(
        cpu_total_ns=cpu_total,
        memory_bytes=usage - inactive if inactive < usage else usage,
        read_at=read_at,
    )


def _parse_time(value: object) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds, and 0001-01-01 stands for "never"."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.match(value)
    if match is None or match["base"].startswith("0001-01-01"):
        return None
    micros = (match["frac"] or "")[:6].ljust(6, "0")
    tz = "+00:00" if match["tz"] == "Z" else match["tz"]
    try:
        return datetime.fromisoformat(f"{match['base']}.{micros}{tz}").astimezone(UTC)
    except ValueError:
        return None


# ---------------------------------------------------------------------- streaming helpers
async def _read_chunks(source: BinaryIO) -> AsyncIterator[bytes]:
    # A generator rather than the file itself: works for any BinaryIO, never reads ahead more than
    # one chunk, and keeps file reads off the event loop.
    while chunk := await asyncio.to_thread(source.read, _CHUNK_BYTES):
        yield chunk


async def _json_lines(response: aiohttp.ClientResponse, action: str) -> AsyncIterator[_Json]:
    buffer = bytearray()
    async for chunk in response.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield _decode_json_object(line, action)
        if len(buffer) > _MAX_JSON_LINE_BYTES:
            raise ContainerError(f"{action}: a stream item exceeds {_MAX_JSON_LINE_BYTES} bytes")
    if buffer.strip():
        yield _decode_json_object(bytes(buffer), action)


def _decode_json_object(line: bytes, action: str) -> _Json:
    try:
        return _obj(json.loads(line))
    except ValueError as exc:
        raise ContainerError(f"{action}: the engine sent malformed JSON") from exc


# ---------------------------------------------------------------------- JSON narrowing
def _obj(value: object) -> _Json:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return None


def _int_text(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _tags(value: object) -> list[str]:
    return [tag for tag in _list(value) if isinstance(tag, str) and tag != "<none>:<none>"]
