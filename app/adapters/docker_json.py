"""The Docker adapter's mapping to and from the Engine API's JSON, and the small readers of its
streams: shapes only, no calls."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final, TypeAlias

import aiohttp

from app.adapters.docker_types import (
    ContainerEvent,
    ContainerSpec,
    ContainerState,
    ImageInfo,
    StatsSample,
)
from app.adapters.ports import BuildLimits, ContainerError

CHUNK_BYTES: Final = 256 * 1024
# A JSON line of the events or stats stream is a few KB; anything near this is a broken stream.
MAX_JSON_LINE_BYTES: Final = 4 * 1024 * 1024
# Docker mixes these into Actor.Attributes next to the container's labels (and they win on clash).
NON_LABEL_ATTRIBUTES: Final = frozenset({"image", "name", "exitCode", "signal"})
RFC3339 = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d{2}:\d{2})$"
)
BUILD_LOG_CHARS: Final = 1024 * 1024
Json: TypeAlias = dict[str, object]


# ---------------------------------------------------------------------- mapping
def container_config(spec: ContainerSpec) -> Json:
    host_config: Json = {
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
        "LogConfig": log_config(spec.log_max_bytes),
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


class Zeros(io.RawIOBase):
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


class BuildLog:
    """The build's output, keeping its last `limit` characters (where a failure shows)."""

    def __init__(self, limit: int = BUILD_LOG_CHARS) -> None:
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


def build_limit_params(limits: BuildLimits) -> dict[str, str]:
    period = 100_000  # CFS period in microseconds; the quota is the CPUs' share of it
    return {
        "memory": str(limits.memory_bytes),
        "memswap": str(limits.memory_bytes),  # equal to memory: no swap on top
        "cpuperiod": str(period),
        "cpuquota": str(max(1000, limits.nano_cpus * period // 1_000_000_000)),
        "ulimits": json.dumps([{"Name": "nofile", "Soft": limits.nofile, "Hard": limits.nofile}]),
    }


def log_config(max_bytes: int) -> Json:
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


def container_state(data: Json) -> ContainerState:
    state = as_obj(data.get("State"))
    status = as_str(state.get("Status"))
    running = state.get("Running") is True
    finished_at = parse_time(state.get("FinishedAt"))
    exited = not running and (status in ("exited", "dead") or finished_at is not None)
    return ContainerState(
        id=as_str(data.get("Id")),
        status=status,
        running=running,
        exit_code=as_int(state.get("ExitCode")) if exited else None,
        oom_killed=state.get("OOMKilled") is True,
        started_at=parse_time(state.get("StartedAt")),
        finished_at=finished_at,
        labels=str_map(as_obj(data.get("Config")).get("Labels")),
        image_id=as_str(data.get("Image")),
    )


def image_summary(data: Json) -> ImageInfo:
    created = as_int(data.get("Created"))
    return ImageInfo(
        id=as_str(data.get("Id")),
        tags=tags(data.get("RepoTags")),
        size=as_int(data.get("Size")) or 0,
        labels=str_map(data.get("Labels")),
        created=datetime.fromtimestamp(created, UTC) if created else None,
    )


def container_event(data: Json) -> ContainerEvent | None:
    action = as_str(data.get("Action") or data.get("status"))
    actor = as_obj(data.get("Actor"))
    container_id = as_str(actor.get("ID") or data.get("id"))
    if not action or not container_id:
        return None
    attributes = str_map(actor.get("Attributes"))
    return ContainerEvent(
        action=action,
        container_id=container_id,
        exit_code=int_text(attributes.get("exitCode")),
        labels={k: v for k, v in attributes.items() if k not in NON_LABEL_ATTRIBUTES},
        time_nano=as_int(data.get("timeNano")) or (as_int(data.get("time")) or 0) * 1_000_000_000,
    )


def stats_sample(data: Json, read_at: datetime) -> StatsSample | None:
    memory = as_obj(data.get("memory_stats"))
    usage = as_int(memory.get("usage"))
    cpu_total = as_int(as_obj(as_obj(data.get("cpu_stats")).get("cpu_usage")).get("total_usage"))
    if usage is None or cpu_total is None:
        return None
    details = as_obj(memory.get("stats"))
    # Usage includes page cache the kernel can drop; `docker stats` subtracts the same.
    inactive = as_int(details.get("total_inactive_file"))  # cgroup v1
    if inactive is None:
        inactive = as_int(details.get("inactive_file")) or 0  # cgroup v2
    return StatsSample(
        cpu_total_ns=cpu_total,
        memory_bytes=usage - inactive if inactive < usage else usage,
        read_at=read_at,
    )


def parse_time(value: object) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds, and 0001-01-01 stands for "never"."""
    if not isinstance(value, str):
        return None
    match = RFC3339.match(value)
    if match is None or match["base"].startswith("0001-01-01"):
        return None
    micros = (match["frac"] or "")[:6].ljust(6, "0")
    tz = "+00:00" if match["tz"] == "Z" else match["tz"]
    try:
        return datetime.fromisoformat(f"{match['base']}.{micros}{tz}").astimezone(UTC)
    except ValueError:
        return None


# ---------------------------------------------------------------------- streaming helpers
async def read_chunks(source: BinaryIO) -> AsyncIterator[bytes]:
    # A generator rather than the file itself: works for any BinaryIO, never reads ahead more than
    # one chunk, and keeps file reads off the event loop.
    while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
        yield chunk


async def json_lines(response: aiohttp.ClientResponse, action: str) -> AsyncIterator[Json]:
    buffer = bytearray()
    async for chunk in response.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield decode_json_object(line, action)
        if len(buffer) > MAX_JSON_LINE_BYTES:
            raise ContainerError(f"{action}: a stream item exceeds {MAX_JSON_LINE_BYTES} bytes")
    if buffer.strip():
        yield decode_json_object(bytes(buffer), action)


def decode_json_object(line: bytes, action: str) -> Json:
    try:
        return as_obj(json.loads(line))
    except ValueError as exc:
        raise ContainerError(f"{action}: the engine sent malformed JSON") from exc


# ---------------------------------------------------------------------- JSON narrowing
def as_obj(value: object) -> Json:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return None


def int_text(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def tags(value: object) -> list[str]:
    return [tag for tag in as_list(value) if isinstance(tag, str) and tag != "<none>:<none>"]
