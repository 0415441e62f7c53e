"""The Docker engine client: the Engine API through aiodocker's HTTP client, in the engine's
own shapes (docker_types). The ports are implemented over it by docker_backend (RunBackend)
and docker_images (ImageBuilder)."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import BinaryIO, Final

import aiohttp

from app.adapters.docker_client import Conflict, DockerClient, Missing
from app.adapters.docker_json import (
    CHUNK_BYTES,
    BuildLog,
    Zeros,
    as_int,
    as_list,
    as_obj,
    as_str,
    build_limit_params,
    container_config,
    container_event,
    container_state,
    image_summary,
    json_lines,
    parse_time,
    read_chunks,
    stats_sample,
    str_map,
    tags,
)
from app.adapters.docker_types import (
    BuildResult,
    ContainerEvent,
    ContainerSpec,
    ContainerState,
    DiskLimitUnsupported,
    ImageInfo,
    LogStream,
    NetworkInfo,
    PathNotFound,
    StatsSample,
)
from app.adapters.ports import (
    BuildLimits,
    ContainerError,
    ContainerNotFound,
    ImageBuildFailed,
    ImageNotFound,
)

MANAGED_LABEL: Final = "taskdeploy.managed=true"
"""Only images carrying this label are ever pruned: the engine may hold other people's images."""

_EVENT_ACTIONS: Final = ("start", "die", "oom", "kill")
_STREAM_TYPES: Final[Mapping[LogStream, int]] = {"stdout": 1, "stderr": 2}


class DockerRuntime(DockerClient):
    """A container runtime backed by one Docker engine, over one shared HTTP client."""

    # ------------------------------------------------------------------ images
    async def image_info(self, ref: str) -> ImageInfo | None:
        try:
            data = as_obj(
                await self._json(
                    f"inspect image {ref}", f"images/{ref}/json", not_found=ImageNotFound
                )
            )
        except ImageNotFound:
            return None
        return ImageInfo(
            id=as_str(data.get("Id")),
            tags=tags(data.get("RepoTags")),
            size=as_int(data.get("Size")) or 0,
            labels=str_map(as_obj(data.get("Config")).get("Labels")),
            created=parse_time(data.get("Created")),
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
        log = BuildLog()
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
            **(build_limit_params(limits) if limits is not None else {}),
        }
        try:
            async with self._request(
                action,
                "build",
                "POST",
                params=params,
                data=read_chunks(context_tar),
                headers={"Content-Type": "application/x-tar"},
                not_found=ImageNotFound,
            ) as response:
                async for item in json_lines(response, action):
                    if isinstance(text := item.get("stream"), str):
                        log.add(text)
                    if isinstance(item.get("aux"), dict):
                        produced_image = True
                    if item.get("error") is not None:
                        message = as_str(item.get("error")) or "the build failed"
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
        return [image_summary(as_obj(item)) for item in as_list(data)]

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
            as_str(as_obj(item).get("Id"))
            for item in as_list(candidates)
            if (as_int(as_obj(item).get("Created")) or 0) <= cutoff
        }
        data = as_obj(
            await self._json(
                "prune dangling images",
                "images/prune",
                "POST",
                params={"filters": json.dumps({**filters, "until": [str(cutoff)]})},
                not_found=ImageNotFound,
            )
        )
        deleted = {
            as_str(as_obj(item).get("Deleted")) for item in as_list(data.get("ImagesDeleted"))
        }
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
                body=container_config(spec),
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
        data = as_obj(created)
        container_id = as_str(data.get("Id"))
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
                data=read_chunks(tar),
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
        return container_state(as_obj(data))

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        try:
            await self._json(
                f"send {signal} to container {container_id}",
                f"containers/{container_id}/kill",
                "POST",
                params={"signal": signal},
            )
        except Conflict as exc:
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
            tar.addfile(info, Zeros(needed))
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
            data = as_obj(
                await self._json(f"inspect network {name}", f"networks/{name}", not_found=Missing)
            )
        except Missing:
            return None
        return NetworkInfo(
            name=as_str(data.get("Name")),
            driver=as_str(data.get("Driver")),
            options=str_map(data.get("Options")),
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
        except Conflict as exc:
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
        ids = [as_str(as_obj(item).get("Id")) for item in as_list(summaries)]
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
                    chunk = await reader.read(min(remaining, CHUNK_BYTES))
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
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    yield chunk
        except ContainerNotFound as exc:
            raise await self._archive_not_found(container_id, action) from exc

    async def _archive_not_found(self, container_id: str, action: str) -> ContainerNotFound:
        # The engine answers 404 both for a missing container and for a missing path.
        if await self.inspect(container_id) is None:
            return ContainerNotFound(f"{action}: no such container")
        return PathNotFound(f"{action}: no such path in the container")

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
                async for item in json_lines(response, "watch container events"):
                    event = container_event(item)
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
                async for item in json_lines(response, f"read stats of {container_id}"):
                    read_at = parse_time(item.get("read"))
                    if read_at is None:
                        # Once the container stops the engine streams empty samples until it is
                        # removed; the first one means we are done.
                        return
                    sample = stats_sample(item, read_at)
                    if sample is not None:
                        yield sample
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                return
