"""Bounded reads of what a job left in its container, from the engine's tar archives.

Everything read here was written by the job, the wrapper's control files included: bytes are
capped before they are read, entries are capped, and nothing is kept beyond what each cap
allows. Output bodies are spooled only when the sink takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from app.adapters.docker import DockerRuntime
from app.adapters.docker_types import PathNotFound
from app.adapters.ports import (
    META_DIR,
    OUTPUT_DIR,
    Capture,
    CaptureLimits,
    Collected,
    OutputEntry,
    OutputSink,
)
from app.adapters.spool import spooled
from app.adapters.tarstream import BodySink, TarEntry, TarStreamParser
from app.adapters.wrapper_files import (
    MAX_META_ENTRIES,
    METRICS_FILE,
    METRICS_READ_BYTES,
    WRAPPER_FILES,
    capture_for,
)

# Headers arrive by the hundred in one network chunk: parse in slices, yielding in between.
PARSE_SLICE_BYTES = 64 * 1024
# Past the output byte cap the archive is still read for its headers (what was left out is
# listed), for at most this long, and through at most this much more of the archive.
LISTING_BUDGET_SECONDS = 60.0
OUTPUT_SLACK_BYTES = 64 * 1024 * 1024


async def feed_archive(
    chunks: AsyncIterator[bytes],
    parser: TarStreamParser,
    *,
    max_bytes: int,
    enough: Callable[[], bool],
) -> str | None:
    """Feeds an archive stream to `parser` until the archive ends, `enough()` is true or
    `max_bytes` were read, and closes the stream. Returns why it stopped early, or None when
    it read the archive to its end."""
    read = 0
    try:
        async for chunk in chunks:
            read += len(chunk)
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


async def read_file(
    docker: DockerRuntime, container_id: str, path: str, capture: Capture, *, max_bytes: int
) -> bool:
    """Feeds one regular file of a container to `capture`, reading no more than about
    `max_bytes` of the archive. False when the path is missing or not a regular file (a job
    may have replaced it with a link or a folder)."""
    found: list[Capture] = []

    def on_entry(entry: TarEntry) -> BodySink | None:
        if found or entry.kind != "regular":
            return None
        capture.size = entry.size
        found.append(capture)
        return capture

    await feed_archive(
        docker.stream_archive(container_id, path),
        TarStreamParser(on_entry),
        max_bytes=max_bytes,
        # The archive holds one entry: once its capture is satisfied, the rest is not needed.
        enough=lambda: bool(found) and found[0].satisfied,
    )
    return bool(found)


async def read_wrapper_files(docker: DockerRuntime, container_id: str, log_limit: int) -> Collected:
    """The wrapper's files from one archive of its folder, with caps on the bytes read, on the
    entries and on each file. When a job stuffed the folder so that reading stopped before
    every file was found, the missing ones are read one by one, each with its own cap."""
    result = Collected()
    budget = 2 * log_limit + METRICS_READ_BYTES + 1024 * 1024

    def on_entry(entry: TarEntry) -> BodySink | None:
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
            docker.stream_archive(container_id, META_DIR),
            parser,
            max_bytes=budget,
            enough=lambda: parser.entries > MAX_META_ENTRIES,
        )
    except PathNotFound:
        return result  # the job removed the folder: there is nothing to read
    if stopped is None:
        return result
    result.notes.append(
        f"{META_DIR} holds more than {MAX_META_ENTRIES} entries"
        if parser.entries > MAX_META_ENTRIES
        else f"{META_DIR} is larger than {budget} bytes"
    )
    for name in WRAPPER_FILES:
        capture = result.files.get(name)
        if capture is not None and (capture.complete or name == METRICS_FILE):
            continue  # whole, or metrics.tsv cut by the budget: it is too large anyway
        again = capture_for(name, 0, log_limit)
        assert again is not None
        try:
            there = await read_file(
                docker,
                container_id,
                f"{META_DIR}/{name}",
                again,
                max_bytes=METRICS_READ_BYTES if name == METRICS_FILE else log_limit + 65536,
            )
        except PathNotFound:
            there = False  # the job removed it
        if there:
            result.files[name] = again
        else:
            result.files.pop(name, None)
    return result


class _Spool:
    """The bodies the sink took, one after the other in one spooled file."""

    def __init__(self, spool: IO[bytes]) -> None:
        self.file = spool
        self.size = 0
        self.taken: list[tuple[str, int, int]] = []  # (name, offset, size)
        self.by_archive_name: dict[str, tuple[int, int]] = {}

    def body(self, archive_name: str, name: str, size: int) -> BodySink:
        offset = self.size
        self.size += size
        self.taken.append((name, offset, size))
        self.by_archive_name[archive_name] = (offset, size)
        spool = self.file

        def write(piece: memoryview) -> None:
            spool.seek(0, io.SEEK_END)
            spool.write(piece)

        return write


async def collect_outputs(
    docker: DockerRuntime,
    container_id: str,
    limits: CaptureLimits,
    sink: OutputSink,
    tmp_dir: Path,
    spool_memory_bytes: int,
) -> tuple[str | None, bool]:
    """Streams OUTPUT_DIR's archive, offering each entry to the sink and spooling the bodies it
    takes; past the byte cap (and some slack) the headers are still read for
    LISTING_BUDGET_SECONDS so that what was left out is listed. Then hands the sink every
    taken body. Returns (why the folder could not be read, whether the listing is cut)."""
    with spooled(tmp_dir, spool_memory_bytes) as raw:
        spool = _Spool(raw)
        read_limit = limits.output_bytes + OUTPUT_SLACK_BYTES
        listing_ends: float | None = None
        read = 0

        def on_entry(entry: TarEntry) -> BodySink | None:
            name = sink.offer(OutputEntry(entry.name, entry.kind, entry.size, entry.linkname))
            if name is None:
                return None
            if entry.kind == "hardlink":
                offset, size = spool.by_archive_name.get(entry.linkname, (0, 0))
                spool.taken.append((name, offset, size))
                return None
            return spool.body(entry.name, name, entry.size)

        parser = TarStreamParser(on_entry)

        def enough() -> bool:
            nonlocal listing_ends
            if sink.full:
                return True
            if read < read_limit:
                return False
            listing_ends = listing_ends or time.monotonic() + LISTING_BUDGET_SECONDS
            return time.monotonic() > listing_ends

        async def counted() -> AsyncIterator[bytes]:
            nonlocal read
            async for chunk in docker.stream_archive(container_id, OUTPUT_DIR):
                read += len(chunk)
                yield chunk

        try:
            stopped = await feed_archive(counted(), parser, max_bytes=2**63, enough=enough)
        except PathNotFound as exc:
            return f"output folder could not be read: {exc}", False
        for name, offset, size in spool.taken:
            await sink.receive(name, _window(raw, offset, size), size)
    return None, stopped is not None and not sink.full


class _SpoolWindow(io.RawIOBase):
    """`size` bytes of `spool` from `offset`, read as a file of their own."""

    def __init__(self, spool: IO[bytes], offset: int, size: int) -> None:
        super().__init__()
        self._spool = spool
        self._position = offset
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._left)
        if want <= 0:
            return 0
        self._spool.seek(self._position)
        data = self._spool.read(want)
        buffer[: len(data)] = data
        self._position += len(data)
        self._left -= len(data)
        return len(data)


def _window(spool: IO[bytes], offset: int, size: int) -> BinaryIO:
    return io.BufferedReader(_SpoolWindow(spool, offset, size), buffer_size=1024 * 1024)
