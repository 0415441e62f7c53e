"""A complete in-memory RunBackend, scriptable per run: exit codes, OOM, slow starts, die
events, engine outages, lost attempts, a full disk. It passes tests/contract like Docker."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.adapters.ports import (
    AttemptExit,
    AttemptInfo,
    AttemptLost,
    AttemptRef,
    AttemptSpec,
    Capture,
    CaptureLimits,
    Collected,
    ContainerError,
    InputFile,
    OutputEntry,
    OutputSink,
    RuntimeUnavailable,
)

STOPPED_CODE = 143  # 128 + SIGTERM


@dataclass
class Script:
    """What an attempt of a run does once started: exits with `code` at once, or runs until
    `finish()` (or a stop) when `runs` is set."""

    code: int = 0
    oom: bool = False
    runs: bool = False
    stdout: bytes = b""
    stderr: bytes = b""
    outputs: dict[str, bytes] = field(default_factory=dict)
    disk_full: bool = False
    start_delay: asyncio.Event | None = None  # start blocks until it is set (a slow start)
    launch_delay: asyncio.Event | None = None  # launch blocks (once staged) until it is set


@dataclass
class _Attempt:
    spec: AttemptSpec
    ref: AttemptRef
    script: Script
    inputs: dict[str, bytes]
    started_at: datetime | None = None
    exit: AttemptExit | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: bool = False


class MemoryBackend:
    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.default = Script()
        self.attempts: dict[str, _Attempt] = {}
        self.down = False  # an engine outage: every call fails with RuntimeUnavailable
        self.refusals = 0  # calls refused while down
        self.launches = 0
        self.starts = 0  # start calls, counted as they begin
        self.forgotten: list[str] = []
        self._ids: Iterator[int] = itertools.count(1)
        self._watch_ended = asyncio.Event()
        self.closed = False

    # ------------------------------------------------------------------ scripting
    def script(self, run_id: str, **how: object) -> Script:
        self.scripts[run_id] = Script(**how)  # type: ignore[arg-type]
        return self.scripts[run_id]

    def finish(
        self, run_id: str, code: int = 0, *, oom: bool = False, outside: bool = False
    ) -> None:
        """The running attempt of `run_id` ends by itself (or is stopped by someone else)."""
        for attempt in self._of(run_id):
            self._end(attempt, AttemptExit(code, oom, outside, attempt.script.disk_full))

    def lose(self, run_id: str) -> None:
        """The attempt disappears (removed outside the service, its host gone)."""
        for attempt in self._of(run_id):
            del self.attempts[attempt.ref.handle]
            attempt.ended.set()

    def end_watch(self) -> None:
        """The exit notices end (an engine restart ends Docker's events stream)."""
        self._watch_ended.set()

    def running(self, run_id: str) -> bool:
        return any(a.started_at is not None and a.exit is None for a in self._of(run_id))

    def _of(self, run_id: str) -> list[_Attempt]:
        return [a for a in self.attempts.values() if a.ref.run_id == run_id]

    def _end(self, attempt: _Attempt, exit: AttemptExit) -> None:
        if attempt.exit is None:
            attempt.exit = exit
            attempt.ended.set()

    def _up(self) -> None:
        if self.down:
            self.refusals += 1
            raise RuntimeUnavailable("the in-memory engine is down")

    def _get(self, ref: AttemptRef | str) -> _Attempt:
        handle = ref if isinstance(ref, str) else ref.handle
        attempt = self.attempts.get(handle)
        if attempt is None:
            raise AttemptLost(f"no attempt {handle}")
        return attempt

    # ------------------------------------------------------------------ port
    async def ping(self) -> None:
        self._up()

    async def check(self, *, disk_limits: bool, network: str | None, images: list[str]) -> None:
        return None

    async def launch(self, spec: AttemptSpec, inputs: list[InputFile]) -> AttemptRef:
        self._up()
        staged: dict[str, bytes] = {}
        for item in inputs:
            buffer = io.BytesIO()
            written = await item.copy_to(buffer)
            if written != item.size:
                raise ContainerError(f"input {item.path!r} gave {written} bytes, not {item.size}")
            staged[item.path] = buffer.getvalue()
        handle = f"mem{next(self._ids):06d}{spec.run_id}"
        ref = AttemptRef(spec.run_id, spec.attempt, handle)
        script = self.scripts.get(spec.run_id, self.default)
        self.attempts[handle] = _Attempt(spec, ref, script, staged)
        self.launches += 1
        if script.launch_delay is not None:
            await script.launch_delay.wait()
        return ref

    async def start(self, ref: AttemptRef) -> None:
        self._up()
        attempt = self._get(ref)
        self.starts += 1
        if attempt.script.start_delay is not None:
            await attempt.script.start_delay.wait()
        attempt.started_at = datetime.now(UTC)
        if not attempt.script.runs:
            script = attempt.script
            self._end(attempt, AttemptExit(script.code, script.oom, False, script.disk_full))

    async def wait(self, ref: AttemptRef, timeout: float) -> AttemptExit | None:
        self._up()
        attempt = self._get(ref)
        if attempt.started_at is None and attempt.exit is None:
            raise ContainerError(f"attempt {ref.handle} was never started")
        if attempt.exit is not None:
            return attempt.exit  # an attempt that had ended answers at once
        try:
            await asyncio.wait_for(attempt.ended.wait(), timeout)
        except TimeoutError:
            return None
        self._up()
        return self._get(ref).exit

    async def stop(self, ref: AttemptRef, grace: float) -> None:
        self._up()
        attempt = self._get(ref)
        attempt.stopped = True
        self._end(attempt, AttemptExit(STOPPED_CODE))

    async def collect(self, ref: AttemptRef, limits: CaptureLimits, sink: OutputSink) -> Collected:
        self._up()
        attempt = self._get(ref)
        found = Collected()
        for name, data in (("stdout", attempt.script.stdout), ("stderr", attempt.script.stderr)):
            found.files[f"{name}.log"] = _captured(data, limits.log_bytes)
            found.files[f"{name}.total"] = _captured(str(len(data)).encode(), 32)
        for path, data in attempt.script.outputs.items():
            if sink.full:
                found.listing_incomplete = True
                break
            name = sink.offer(OutputEntry(f"output/{path}", "regular", len(data)))
            if name is not None:
                await sink.receive(name, io.BytesIO(data), len(data))
        return found

    async def read_live(self, handle: str, name: str, capture: Capture, max_bytes: int) -> bool:
        self._up()
        attempt = self._get(handle)
        data = {"stdout.log": attempt.script.stdout, "stderr.log": attempt.script.stderr}.get(name)
        if data is None or attempt.started_at is None:
            return False
        capture.size = len(data)
        capture(data[:max_bytes])
        return True

    async def forget(self, ref: AttemptRef) -> None:
        self._up()
        attempt = self.attempts.pop(ref.handle, None)
        if attempt is not None:
            self.forgotten.append(ref.handle)
            attempt.ended.set()

    async def find(self, run_id: str) -> list[AttemptInfo]:
        self._up()
        return [_info(a) for a in self._of(run_id)]

    async def owned(self) -> list[AttemptInfo]:
        self._up()
        return [_info(a) for a in self.attempts.values()]

    async def watch(self) -> None:
        self._up()
        await self._watch_ended.wait()
        self._watch_ended.clear()

    async def close(self) -> None:
        self.closed = True


def _captured(data: bytes, head: int) -> Capture:
    capture = Capture(len(data), head)
    capture(data)
    return capture


def _info(attempt: _Attempt) -> AttemptInfo:
    return AttemptInfo(
        ref=attempt.ref,
        instance_id=attempt.spec.instance_id,
        started_at=attempt.started_at,
        running=attempt.started_at is not None and attempt.exit is None,
    )
