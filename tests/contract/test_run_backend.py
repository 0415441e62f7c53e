"""One contract for every RunBackend: what the orchestrator relies on."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import pytest

from app.adapters.ports import AttemptLost, Capture, CaptureLimits, OutputEntry
from tests.contract.conftest import Harness

LIMITS = CaptureLimits(log_bytes=1024, output_files=10, output_bytes=10_000, output_key_bytes=200)


@dataclass(frozen=True)
class BytesInput:
    path: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    async def copy_to(self, fileobj: BinaryIO) -> int:
        fileobj.write(self.data)
        return len(self.data)


class KeepAll:
    """A sink that takes every regular file and keeps its body."""

    def __init__(self, max_files: int = 100) -> None:
        self.max_files = max_files
        self.offered: list[OutputEntry] = []
        self.got: dict[str, bytes] = {}

    @property
    def full(self) -> bool:
        return False

    def offer(self, entry: OutputEntry) -> str | None:
        self.offered.append(entry)
        if entry.kind != "regular" or len(self.got) + 1 > self.max_files:
            return None
        return entry.path.removeprefix("output/")

    async def receive(self, name: str, body: BinaryIO, size: int) -> None:
        self.got[name] = body.read()
        assert len(self.got[name]) == size


async def test_an_attempt_runs_exits_with_its_code_and_leaves_logs_and_outputs(
    harness: Harness,
) -> None:
    spec = harness.spec(
        "cat input/in.txt; echo oops >&2; cp input/in.txt output/copy.txt; exit 3",
        code=3,
        stdout=b"hello\n",
        stderr=b"oops\n",
        outputs={"copy.txt": b"hello\n"},
    )
    ref = await harness.backend.launch(spec, [BytesInput("in.txt", b"hello\n")])
    assert ref.run_id == spec.run_id and ref.attempt == 1
    await harness.backend.start(ref)
    ended = await harness.backend.wait(ref, 60)
    assert ended is not None
    assert (ended.code, ended.oom_killed, ended.stopped_outside) == (3, False, False)
    sink = KeepAll()
    found = await harness.backend.collect(ref, LIMITS, sink)
    assert found.files["stdout.log"].head == b"hello\n"
    assert found.files["stderr.log"].head == b"oops\n"
    assert found.files["stdout.total"].head.strip() == b"6"
    assert sink.got == {"copy.txt": b"hello\n"}


async def test_wait_times_out_on_a_running_attempt_and_stop_ends_it(harness: Harness) -> None:
    ref = await harness.backend.launch(harness.spec("sleep 600", runs=True), [])
    await harness.backend.start(ref)
    assert await harness.backend.wait(ref, 0.2) is None
    await harness.backend.stop(ref, 5)
    ended = await harness.backend.wait(ref, 30)
    assert ended is not None and ended.code != 0
    assert not ended.stopped_outside  # the service's own stop


async def test_find_and_owned_list_attempts_until_forgotten(harness: Harness) -> None:
    spec = harness.spec("true")
    assert await harness.backend.find(spec.run_id) == []
    ref = await harness.backend.launch(spec, [])
    [found] = await harness.backend.find(spec.run_id)
    assert found.ref == ref and found.started_at is None and not found.running
    assert found.instance_id == "contract"
    assert ref in [info.ref for info in await harness.backend.owned()]
    await harness.backend.start(ref)
    assert await harness.backend.wait(ref, 60) is not None
    [after] = await harness.backend.find(spec.run_id)
    assert after.started_at is not None and not after.running
    await harness.backend.forget(ref)
    assert await harness.backend.find(spec.run_id) == []
    await harness.backend.forget(ref)  # harmless when already gone


async def test_a_forgotten_attempt_is_lost(harness: Harness) -> None:
    ref = await harness.backend.launch(harness.spec("sleep 600", runs=True), [])
    await harness.backend.start(ref)
    await harness.backend.forget(ref)
    with pytest.raises(AttemptLost):
        await harness.backend.wait(ref, 5)


async def test_live_reads_are_bounded(harness: Harness) -> None:
    spec = harness.spec("echo 0123456789; sleep 600", runs=True, stdout=b"0123456789\n")
    ref = await harness.backend.launch(spec, [])
    await harness.backend.start(ref)
    capture = Capture(0, 4)
    for _ in range(200):  # the wrapper writes the log as the command runs
        capture = Capture(0, 4)
        there = await harness.backend.read_live(ref.handle, "stdout.log", capture, 4096)
        if there and capture.head:
            break
        await harness.backend.wait(ref, 0.05)
    assert capture.head == b"0123"
    assert not await harness.backend.read_live(ref.handle, "no-such.log", Capture(0, 4), 4096)


async def test_launch_stages_every_input_byte_for_byte(harness: Harness) -> None:
    body = bytes(range(256)) * 40
    spec = harness.spec("cp input/sub/b.bin output/b.bin", outputs={"b.bin": body}, stdout=b"")
    ref = await harness.backend.launch(spec, [BytesInput("sub/b.bin", body)])
    await harness.backend.start(ref)
    assert (await harness.backend.wait(ref, 60)) is not None
    sink = KeepAll()
    await harness.backend.collect(ref, LIMITS, sink)
    assert sink.got["b.bin"] == body
    assert io.BytesIO(sink.got["b.bin"]).getbuffer().nbytes == len(body)


async def test_an_ended_attempt_answers_wait_at_once(harness: Harness) -> None:
    ref = await harness.backend.launch(harness.spec("exit 7", code=7), [])
    await harness.backend.start(ref)
    first = await harness.backend.wait(ref, 60)
    again = await harness.backend.wait(ref, 0)  # as after adoption: no time to wait
    assert first is not None and again is not None
    assert first.code == again.code == 7


async def test_an_attempt_without_inputs_has_its_folders_and_may_write_them(
    harness: Harness,
) -> None:
    spec = harness.spec(
        "ls -A input | wc -l; echo made > output/m.txt; echo note > kept.txt",
        stdout=b"0\n",
        outputs={"m.txt": b"made\n"},
    )
    ref = await harness.backend.launch(spec, [])
    await harness.backend.start(ref)
    ended = await harness.backend.wait(ref, 60)
    assert ended is not None and ended.code == 0
    sink = KeepAll()
    found = await harness.backend.collect(ref, LIMITS, sink)
    assert found.files["stdout.log"].head == b"0\n"
    assert found.files["stderr.log"].head == b""
    assert sink.got == {"m.txt": b"made\n"}


async def test_collecting_a_forgotten_attempt_says_it_is_lost(harness: Harness) -> None:
    ref = await harness.backend.launch(harness.spec("true"), [])
    await harness.backend.start(ref)
    assert await harness.backend.wait(ref, 60) is not None
    await harness.backend.forget(ref)
    with pytest.raises(AttemptLost):
        await harness.backend.collect(ref, LIMITS, KeepAll())
