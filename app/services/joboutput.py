"""Bounded reads of the files a job leaves in its container: a byte cap before reading, a cap on
entries, and nothing kept beyond what each cap allows."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from app.adapters.ports import ContainerNotFound, ContainerRuntime
from app.services.tarstream import TarEntry, TarStreamParser

META_PATH = "/workspace/.taskdeploy"
LOG_FILES = ("stdout.log", "stderr.log")
TOTAL_FILES = ("stdout.total", "stderr.total")
METRICS_FILE = "metrics.tsv"
WRAPPER_FILES = (*LOG_FILES, *TOTAL_FILES, METRICS_FILE)

# A *.total holds one decimal number: anything longer is not the wrapper's.
MAX_TOTAL_BYTES = 32
# metrics.tsv: its first and last bytes are kept (the start line is at the head, the final
# sample and the exit line at the tail); the file is read through at most METRICS_READ_BYTES.
METRICS_HEAD_BYTES = 2 * 1024 * 1024
METRICS_TAIL_BYTES = 2 * 1024 * 1024
METRICS_READ_BYTES = 64 * 1024 * 1024
# The wrapper's folder holds a dozen entries; a job may fill it with more.
MAX_META_ENTRIES = 64
# Headers arrive by the hundred in one network chunk: parse in slices, yielding in between.
PARSE_SLICE_BYTES = 64 * 1024


class BodyCapture:
    """Keeps the first `head` and the last `tail` bytes of one entry's body of `size` bytes,
    counting the rest without keeping it."""

    def __init__(self, size: int, head: int, tail: int = 0) -> None:
        self.size = size
        self.head_limit = head
        self.tail_limit = tail
        self.received = 0
        self._head = bytearray()
        self._tail = bytearray()

    def __call__(self, piece: memoryview) -> None:
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
        """Nothing more would be kept: the body is complete, or only a head is wanted and
        it is full."""
        return self.complete or (not self.tail_limit and len(self._head) >= self.head_limit)

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    @property
    def tail(self) -> bytes:
        return bytes(self._tail[-self.tail_limit :]) if self.tail_limit else b""


def capture_for(name: str, size: int, log_limit: int) -> BodyCapture | None:
    """How much of each of the wrapper's files is kept; None for any other file."""
    if name in LOG_FILES:
        return BodyCapture(size, log_limit)
    if name in TOTAL_FILES:
        return BodyCapture(size, MAX_TOTAL_BYTES)
    if name == METRICS_FILE:
        return BodyCapture(size, METRICS_HEAD_BYTES, METRICS_TAIL_BYTES)
    return None


def _capture_named(name: str, log_limit: int, size: int) -> BodyCapture | None:
    return capture_for(name, size, log_limit)


async def feed_archive(
    chunks: AsyncIterator[bytes],
    parser: TarStreamParser,
    *,
    max_bytes: int,
    enough: Callable[[], bool] = lambda: False,
    on_chunk: Callable[[bytes], None] | None = None,
) -> str | None:
    """Feeds an archive stream to `parser` until the archive ends, `enough()` is true or
    `max_bytes` were read, and closes the stream. Returns why it stopped early, or None when
    it read the archive to its end. `on_chunk` sees every chunk first (to spool it)."""
    read = 0
    try:
        async for chunk in chunks:
            read += len(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
            for start in range(0, len(chunk), PARSE_SLICE_BYTES):
                parser.feed(memoryview(chunk)[start : start + PARSE_SLICE_BYTES])
                if len(chunk) > PARSE_SLICE_BYTES:
                    await asyncio.sleep(0)
            if parser.finished:
                return None
            if enough():
                return "enough"
            if read >= max_bytes:
                return f"the archive is larger than the read cap of {max_bytes} bytes"
        return None
    finally:
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]


async def read_container_file(
    runtime: ContainerRuntime,
    container_id: str,
    path: str,
    make_capture: Callable[[int], BodyCapture | None],
    *,
    max_bytes: int,
) -> BodyCapture | None:
    """One regular file of a container, kept as `make_capture(size)` says, reading no more
    than about `max_bytes` of the archive. None when the path is missing or not a regular
    file (a job may have replaced it with a link or a folder)."""
    found: list[BodyCapture] = []

    def on_entry(entry: TarEntry) -> BodyCapture | None:
        if found or entry.kind != "regular":
            return None
        capture = make_capture(entry.size)
        if capture is not None:
            found.append(capture)
        return capture

    parser = TarStreamParser(on_entry)
    await feed_archive(
        runtime.stream_archive(container_id, path),
        parser,
        max_bytes=max_bytes,
        # The archive holds one entry: once its capture is satisfied, the rest is not needed.
        enough=lambda: bool(found) and found[0].satisfied,
    )
    return found[0] if found else None


@dataclass
class WrapperFiles:
    """What was read of the wrapper's files in /workspace/.taskdeploy, with notes on what was
    left out; a file that is missing or not a regular file is absent from `files`."""

    files: dict[str, BodyCapture] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def read_wrapper_files(
    runtime: ContainerRuntime, container_id: str, log_limit: int
) -> WrapperFiles:
    """The wrapper's files from one archive of its folder, with caps on the bytes read, on the
    entries and on each file. When a job stuffed the folder so that reading stopped before
    every file was found, the missing ones are read one by one, each with its own cap."""
    result = WrapperFiles()
    budget = 2 * log_limit + METRICS_READ_BYTES + 1024 * 1024

    def on_entry(entry: TarEntry) -> BodyCapture | None:
        _, _, name = entry.name.rstrip("/").partition("/")
        if entry.kind != "regular" or "/" in name or name in result.files:
            return None
        capture = capture_for(name, entry.size, log_limit)
        if capture is not None:
            result.files[name] = capture
        return capture

    parser = TarStreamParser(on_entry)
    try:
        stopped = await feed_archive(
            runtime.stream_archive(container_id, META_PATH),
            parser,
            max_bytes=budget,
            enough=lambda: parser.entries > MAX_META_ENTRIES,
        )
    except ContainerNotFound:
        return result  # the job emptied the folder's parent? then there is nothing to read
    if stopped is None:
        return result
    result.notes.append(
        f"{META_PATH} holds more than {MAX_META_ENTRIES} entries"
        if parser.entries > MAX_META_ENTRIES
        else f"{META_PATH} is larger than {budget} bytes"
    )
    for name in WRAPPER_FILES:
        capture = result.files.get(name)
        if capture is not None and (capture.complete or name == METRICS_FILE):
            continue  # whole, or metrics.tsv cut by the budget: it is too large anyway
        try:
            again = await read_container_file(
                runtime,
                container_id,
                f"{META_PATH}/{name}",
                functools.partial(_capture_named, name, log_limit),
                max_bytes=METRICS_READ_BYTES if name == METRICS_FILE else log_limit + 65536,
            )
        except ContainerNotFound:
            again = None  # the job removed it
        if again is not None:
            result.files[name] = again
        else:
            result.files.pop(name, None)
    return result
