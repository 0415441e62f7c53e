"""Bounded reads of a container's files (the Docker adapter's docker_archive), on tar streams
made in memory by a fake engine."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator

import pytest

from app.adapters.docker_archive import read_file, read_wrapper_files
from app.adapters.docker_types import PathNotFound
from app.adapters.wrapper_files import MAX_META_ENTRIES, METRICS_HEAD_BYTES, BodyCapture

MiB = 1024 * 1024


def archive(
    members: dict[str, bytes], *, folder: str | None = None, links: tuple[str, ...] = ()
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if folder:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name in links:
            info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        for name, body in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


class FakeRuntime:
    """stream_archive over archives in memory, in 256 KiB chunks, counting what was sent."""

    def __init__(self, archives: dict[str, bytes]) -> None:
        self.archives = archives
        self.sent: dict[str, int] = {}
        self.closed: list[str] = []

    async def stream_archive(self, container_id: str, path: str) -> AsyncIterator[bytes]:
        if path not in self.archives:
            raise PathNotFound(f"no {path}")  # the container is there, the path is not
        data = self.archives[path]
        try:
            for start in range(0, len(data), 256 * 1024):
                self.sent[path] = self.sent.get(path, 0) + len(data[start : start + 256 * 1024])
                yield data[start : start + 256 * 1024]
        finally:
            self.closed.append(path)


async def read_container_file(  # type: ignore[no-untyped-def]
    runtime, container_id: str, path: str, make, *, max_bytes: int
) -> BodyCapture | None:
    capture = make(0)
    there = await read_file(runtime, container_id, path, capture, max_bytes=max_bytes)
    return capture if there else None


def test_a_capture_keeps_its_head_and_tail_and_counts_all() -> None:
    capture = BodyCapture(size=30, head=5, tail=4)
    for piece in (b"0123", b"456789abcdef", b"ghijklmnopqrstuvwxyz"[:14]):
        capture(memoryview(piece))
    assert capture.received == 30 and capture.complete
    assert capture.head == b"01234" and capture.tail == b"qrst"


def test_a_head_only_capture_is_satisfied_once_full() -> None:
    capture = BodyCapture(size=100, head=10)
    capture(memoryview(b"x" * 12))
    assert capture.satisfied and not capture.complete and capture.head == b"x" * 10


async def test_reading_a_file_stops_once_its_cap_is_kept() -> None:
    path = "/workspace/.taskdeploy/stdout.log"
    runtime = FakeRuntime({path: archive({"stdout.log": b"a" * (8 * MiB)})})
    capture = await read_container_file(
        runtime,
        "c",
        path,
        lambda size: BodyCapture(size, MiB),
        max_bytes=64 * MiB,  # type: ignore[arg-type]
    )
    assert capture is not None and capture.head == b"a" * MiB and capture.size == 8 * MiB
    assert runtime.sent[path] <= MiB + 512 * 1024  # the rest was never pulled
    assert runtime.closed == [path]


async def test_a_file_replaced_by_a_link_is_not_read() -> None:
    path = "/workspace/.taskdeploy/stdout.log"
    runtime = FakeRuntime({path: archive({}, links=("stdout.log",))})
    got = await read_container_file(
        runtime,
        "c",
        path,
        lambda size: BodyCapture(size, MiB),
        max_bytes=MiB,  # type: ignore[arg-type]
    )
    assert got is None


async def test_the_wrapper_files_are_read_with_their_caps() -> None:
    metrics = b"s 1 1 1\n" * 1_000_000  # 8 MB
    folder = archive(
        {
            "stdout.log": b"o" * (3 * MiB),  # the job rewrote it past the 1 MiB cap
            "stderr.log": b"e\n",
            "stdout.total": b"3145728\n",
            "metrics.tsv": metrics,
            "command.sh": b"echo\n",
        },
        folder=".taskdeploy",
        links=("stderr.total",),  # a link is never followed
    )
    runtime = FakeRuntime({"/workspace/.taskdeploy": folder})
    found = await read_wrapper_files(runtime, "c", MiB)  # type: ignore[arg-type]
    assert found.notes == []
    assert set(found.files) == {"stdout.log", "stderr.log", "stdout.total", "metrics.tsv"}
    assert found.files["stdout.log"].head == b"o" * MiB
    assert found.files["stdout.log"].size == 3 * MiB
    assert len(found.files["metrics.tsv"].head) == METRICS_HEAD_BYTES
    assert found.files["metrics.tsv"].tail.endswith(b"s 1 1 1\n")


async def test_a_folder_stuffed_with_entries_is_read_file_by_file() -> None:
    # More entries than one network chunk holds, so reading stops before stdout.log.
    junk = {f"junk{i}": b"" for i in range(1000)}
    folder = archive({**junk, "stdout.log": b"hello\n"}, folder=".taskdeploy")
    single = archive({"stdout.log": b"hello\n"})
    runtime = FakeRuntime(
        {"/workspace/.taskdeploy": folder, "/workspace/.taskdeploy/stdout.log": single}
    )
    found = await read_wrapper_files(runtime, "c", MiB)  # type: ignore[arg-type]
    assert found.notes == [f"/workspace/.taskdeploy holds more than {MAX_META_ENTRIES} entries"]
    assert found.files["stdout.log"].head == b"hello\n"
    assert "stderr.log" not in found.files  # missing in the container: looked for, not found


@pytest.mark.parametrize("cut", [100, 700, 5000])
async def test_a_truncated_archive_gives_what_was_whole(cut: int) -> None:
    data = archive({"stdout.log": b"x" * 4000})[:cut]
    path = "/workspace/.taskdeploy/stdout.log"
    runtime = FakeRuntime({path: data})
    got = await read_container_file(
        runtime,
        "c",
        path,
        lambda size: BodyCapture(size, MiB),
        max_bytes=MiB,  # type: ignore[arg-type]
    )
    if got is not None:
        assert not got.complete or got.head == b"x" * 4000
