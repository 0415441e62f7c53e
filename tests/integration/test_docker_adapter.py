"""DockerRuntime against the real engine: busybox:latest only, nothing pulled, everything labelled."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import pytest_asyncio

from app.adapters.docker import MANAGED_LABEL, DockerRuntime
from app.adapters.docker_types import (
    ContainerEvent,
    ContainerSpec,
    ContainerState,
    LogStream,
    PathNotFound,
)
from app.adapters.ports import (
    BuildLimits,
    ContainerNotFound,
    ImageBuildFailed,
    ImageNotFound,
    RuntimeUnavailable,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

BUSYBOX = "busybox:latest"
TEST_LABELS = {"taskdeploy.test": "adapter"}
RUN_LABEL = "taskdeploy.test.run"
JOB_UID = 65534
DEADLINE_S = 60.0
MiB = 1024 * 1024
BIG_TAR_FILE_BYTES = 200 * MiB
RSS_GROWTH_LIMIT = 100 * MiB


# --------------------------------------------------------------------------- fixtures
@pytest_asyncio.fixture(scope="session")
async def runtime() -> AsyncIterator[DockerRuntime]:
    subject = DockerRuntime()
    await subject.ping()
    yield subject
    await subject.close()


@pytest_asyncio.fixture(scope="session")
async def engine() -> AsyncIterator[aiodocker.Docker]:
    """A separate raw client, to check the engine's side of things behind the adapter's back."""
    client = aiodocker.Docker()
    yield client
    await client.close()


@pytest_asyncio.fixture
async def images(engine: aiodocker.Docker) -> AsyncIterator[list[str]]:
    """Image refs a test built; removed (forcibly, whatever the test left) afterwards."""
    refs: list[str] = []
    yield refs
    for ref in reversed(refs):
        try:
            await engine.images.delete(ref, force=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise


@pytest_asyncio.fixture
async def containers(runtime: DockerRuntime, images: list[str]) -> AsyncIterator[list[str]]:
    """Container ids a test created; removed afterwards (before its images go)."""
    ids: list[str] = []
    yield ids
    for container_id in ids:
        await runtime.remove(container_id)


@pytest.fixture
def run_labels() -> dict[str, str]:
    """Labels unique to one test, so filters can't see other tests' (or other runs') containers."""
    return {**TEST_LABELS, RUN_LABEL: uuid.uuid4().hex}


# --------------------------------------------------------------------------- helpers
def make_spec(**overrides: Any) -> ContainerSpec:
    spec = ContainerSpec(image=BUSYBOX, command=["true"], env={}, labels=dict(TEST_LABELS))
    return dataclasses.replace(spec, **overrides)


def workspace_tar(files: dict[str, bytes] | None = None) -> io.BytesIO:
    """The workspace as the executor stages it at the container's root: workspace/, input/ and
    output/ owned by the job user."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("workspace", "workspace/input", "workspace/output"):
            tar.addfile(_dir_entry(name))
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(f"workspace/input/{name}")
            info.size, info.uid, info.gid, info.mode = len(data), JOB_UID, JOB_UID, 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _dir_entry(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.uid, info.gid, info.mode = tarfile.DIRTYPE, JOB_UID, JOB_UID, 0o755
    return info


def build_context(dockerfile: str, files: dict[str, bytes] | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


async def create(runtime: DockerRuntime, containers: list[str], spec: ContainerSpec) -> str:
    container_id = await runtime.create_container(spec)
    containers.append(container_id)
    return container_id


async def run(
    runtime: DockerRuntime,
    containers: list[str],
    command: list[str],
    *,
    files: dict[str, bytes] | None = None,
    **overrides: Any,
) -> tuple[str, ContainerState]:
    """Create, stage a workspace, start and wait: one job from start to finish."""
    container_id = await create(runtime, containers, make_spec(command=command, **overrides))
    await runtime.put_archive(container_id, "/", workspace_tar(files))
    await runtime.start(container_id)
    state = await asyncio.wait_for(runtime.wait(container_id), DEADLINE_S)
    return container_id, state


async def read_log(runtime: DockerRuntime, container_id: str, stream: LogStream) -> bytes:
    return b"".join([chunk async for chunk in runtime.stream_logs(container_id, stream)])


async def eventually(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until `probe` holds; fail at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not await probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S}s waiting for {what}")
        await asyncio.sleep(0.05)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert match, field
    return int(match[1])


async def rss_growth_during(work: Awaitable[object]) -> int:
    """Peak resident memory above the starting point while `work` runs, in bytes."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM (the peak) to the current RSS
    before = _proc_status_kib("VmRSS")
    await work
    return (_proc_status_kib("VmHWM") - before) * 1024


# --------------------------------------------------------------------------- jobs
async def test_a_job_runs_with_its_inputs_and_reports_its_exit_code(
    runtime: DockerRuntime, containers: list[str], run_labels: dict[str, str]
) -> None:
    before = time.time()
    container_id, state = await run(
        runtime,
        containers,
        ["sh", "-c", 'cat input/hello.txt; echo "$GREETING" > output/greeting.txt; exit 3'],
        files={"hello.txt": b"hello from the input\n"},
        env={"GREETING": "hi there"},
        labels=run_labels,
    )

    assert state.id == container_id
    assert (state.status, state.running, state.exit_code, state.oom_killed) == (
        "exited",
        False,
        3,
        False,
    )
    assert state.labels[RUN_LABEL] == run_labels[RUN_LABEL]
    assert state.image_id.startswith("sha256:")
    assert state.started_at is not None and state.finished_at is not None
    # The engine stamps StartedAt after the process is already running, so for a command that
    # exits at once FinishedAt can come out a fraction of a millisecond earlier (seen here).
    assert before - 5 < state.started_at.timestamp() < time.time()
    assert state.started_at.timestamp() - 0.1 <= state.finished_at.timestamp() < time.time()
    assert await read_log(runtime, container_id, "stdout") == b"hello from the input\n"


async def test_a_created_container_has_no_exit_code_or_times(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    container_id = await create(runtime, containers, make_spec(command=["true"]))

    state = await runtime.inspect(container_id)

    assert state is not None
    assert (state.status, state.running, state.exit_code) == ("created", False, None)
    assert (state.started_at, state.finished_at) == (None, None)


async def test_the_sandbox_settings_apply_inside_the_container(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    script = "; ".join(
        [
            "id -u",
            "id -g",
            "grep CapEff /proc/self/status",
            "grep NoNewPrivs /proc/self/status",
            "ls /sys/class/net",
            "touch /probe 2>/dev/null && echo root-writable || echo root-closed-to-the-job",
            "touch /tmp/probe && echo tmp-writable",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
            "cat /sys/fs/cgroup/pids/pids.max",
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max",
            "pwd",
            "ulimit -n",
            "ulimit -c",
        ]
    )
    container_id, state = await run(
        runtime,
        containers,
        ["sh", "-c", script],
        memory_bytes=48 * MiB,
        pids_limit=77,
        nano_cpus=500_000_000,
        ulimits={"nofile": 321, "core": 0},
    )

    stderr = await read_log(runtime, container_id, "stderr")
    assert state.exit_code == 0, stderr
    lines = (await read_log(runtime, container_id, "stdout")).decode().splitlines()
    assert lines == [
        "65534",
        "65534",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "lo",
        "root-closed-to-the-job",
        "tmp-writable",
        str(48 * MiB),
        "77",
        "50000",  # half of the default 100 ms CFS period
        "/workspace",
        "321",
        "0",
    ]


async def test_the_network_is_there_only_when_enabled(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    container_id, state = await run(runtime, containers, ["ls", "/sys/class/net"], network="bridge")

    assert state.exit_code == 0
    assert (await read_log(runtime, container_id, "stdout")).split() == [b"eth0", b"lo"]


async def test_stdout_and_stderr_stay_apart_byte_exact(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    script = (
        r"printf 'out\377\376\n'; printf 'err\300\n' >&2; seq 1 50000; "
        r"printf 'more err\n' >&2; printf 'tail'"
    )
    # The log budget counts the driver's framing too: leave room so nothing rotates away.
    container_id, state = await run(
        runtime, containers, ["sh", "-c", script], log_max_bytes=32 * MiB
    )

    assert state.exit_code == 0
    numbers = "".join(f"{n}\n" for n in range(1, 50001)).encode()
    assert await read_log(runtime, container_id, "stdout") == b"out\xff\xfe\n" + numbers + b"tail"
    assert await read_log(runtime, container_id, "stderr") == b"err\xc0\nmore err\n"


async def test_log_max_bytes_keeps_the_tail_of_a_long_log(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    container_id, state = await run(
        runtime, containers, ["seq", "1", "100000"], log_max_bytes=1 * MiB
    )

    assert state.exit_code == 0
    kept = await read_log(runtime, container_id, "stdout")
    numbers = "".join(f"{n}\n" for n in range(1, 100001)).encode()
    # The budget counts the engine's framing of each line too, so less output than that survives.
    assert 64 * 1024 < len(kept) < 1 * MiB
    assert kept == numbers[-len(kept) :]


async def test_the_memory_limit_ends_a_job_as_oom_killed(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    _, state = await run(
        runtime,
        containers,
        ["sh", "-c", "x=a; while :; do x=$x$x; done"],
        memory_bytes=16 * MiB,
    )

    assert state.oom_killed is True
    assert state.status == "exited"


async def test_kill_stops_a_sleeping_job_and_ignores_a_stopped_one(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    async def start_sleeper() -> str:
        container_id = await create(
            runtime, containers, make_spec(command=["sh", "-c", "echo ready; exec sleep 300"])
        )
        await runtime.start(container_id)

        # Signal only once the job runs: tini must be forwarding signals by then.
        async def is_ready() -> bool:
            return b"ready" in await read_log(runtime, container_id, "stdout")

        await eventually(is_ready, "the sleeper to start")
        return container_id

    terminated, killed = await asyncio.gather(start_sleeper(), start_sleeper())
    await runtime.kill(terminated, "SIGTERM")
    await runtime.kill(killed)
    states = await asyncio.wait_for(
        asyncio.gather(runtime.wait(terminated), runtime.wait(killed)), DEADLINE_S
    )

    assert [(s.status, s.exit_code) for s in states] == [("exited", 128 + 15), ("exited", 128 + 9)]
    await runtime.kill(killed)  # not running any more: no error


async def test_remove_deletes_the_container_and_leaves_no_volume(
    runtime: DockerRuntime, engine: aiodocker.Docker, containers: list[str]
) -> None:
    async def volume_names() -> set[str]:
        listing = await engine.volumes.list()  # type: ignore[no-untyped-call]
        return {volume["Name"] for volume in listing["Volumes"] or []}

    before = await volume_names()
    container_id, _ = await run(runtime, containers, ["sh", "-c", "echo data > output/file"])
    details = await engine.containers.get(container_id)
    # The workspace lives in the container's own (capped) layer, not in a volume.
    assert details["Mounts"] == []

    await runtime.remove(container_id)

    assert await runtime.inspect(container_id) is None
    assert await volume_names() <= before
    await runtime.remove(container_id)  # already gone: no error


async def test_disk_bytes_caps_what_the_job_can_write_and_has_disk_room_tells(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    script = "dd if=/dev/zero of=output/fill bs=1M count={} 2>&1; echo exit=$?"
    full_id, state = await run(
        runtime, containers, ["sh", "-c", script.format(200)], disk_bytes=40 * MiB
    )
    roomy_id, _ = await run(
        runtime, containers, ["sh", "-c", script.format(10)], disk_bytes=40 * MiB
    )

    out = (await read_log(runtime, full_id, "stdout")).decode()
    assert state.exit_code == 0, out
    assert "exit=1" in out and "quota exceeded" in out.lower(), out
    assert await runtime.has_disk_room(full_id, 1 * MiB) is False
    assert await runtime.has_disk_room(roomy_id, 1 * MiB) is True
    # The probe lives outside the workspace: the output folder holds only the job's file.
    chunks = [chunk async for chunk in runtime.stream_archive(roomy_id, "/workspace/output")]
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        assert sorted(tar.getnames()) == ["output", "output/fill"]


async def test_fsize_caps_each_file(runtime: DockerRuntime, containers: list[str]) -> None:
    script = "dd if=/dev/zero of=output/big bs=1M count=8 2>/dev/null; wc -c < output/big"
    container_id, state = await run(
        runtime, containers, ["sh", "-c", script], ulimits={"fsize": 3 * MiB}
    )

    assert (await read_log(runtime, container_id, "stdout")).strip() == str(3 * MiB).encode()
    assert state.exit_code == 0


async def test_network_info_reads_the_job_network(runtime: DockerRuntime) -> None:
    # Made by scripts/ensure-job-network.sh, which the suite's set-up runs.
    network = await runtime.network_info("taskdeploy-jobs")

    assert network is not None and network.driver == "bridge"
    assert network.options["com.docker.network.bridge.enable_icc"] == "false"
    assert await runtime.network_info(f"missing-{uuid.uuid4().hex}") is None


async def test_list_containers_finds_exactly_the_labelled_ones(
    runtime: DockerRuntime,
    engine: aiodocker.Docker,
    containers: list[str],
    run_labels: dict[str, str],
) -> None:
    name = f"taskdeploy-test-{uuid.uuid4().hex[:12]}"
    wanted = {
        await create(runtime, containers, make_spec(labels=run_labels, name=name)),
        await create(runtime, containers, make_spec(labels={**run_labels, "role": "b"})),
    }
    await create(runtime, containers, make_spec(labels={**run_labels, RUN_LABEL: "other"}))

    states = await runtime.list_containers({RUN_LABEL: run_labels[RUN_LABEL]})

    assert {state.id for state in states} == wanted
    assert {state.status for state in states} == {"created"}
    assert all(state.labels[RUN_LABEL] == run_labels[RUN_LABEL] for state in states)
    assert await runtime.list_containers({RUN_LABEL: uuid.uuid4().hex}) == []
    named = await engine.containers.get(name)
    assert named.id in wanted


# --------------------------------------------------------------------------- streams
async def test_stream_archive_returns_the_output_folder_as_a_tar(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    script = "printf hello > output/a.txt; mkdir output/sub; seq 1 30000 > output/sub/numbers.txt"
    container_id, state = await run(runtime, containers, ["sh", "-c", script])
    assert state.exit_code == 0

    chunks = [chunk async for chunk in runtime.stream_archive(container_id, "/workspace/output")]

    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        files = {
            member.name: extracted.read()
            for member in tar.getmembers()
            if (extracted := tar.extractfile(member)) is not None
        }
    numbers = "".join(f"{n}\n" for n in range(1, 30001)).encode()
    assert files == {"output/a.txt": b"hello", "output/sub/numbers.txt": numbers}


async def test_archives_tell_a_missing_path_from_a_missing_container(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    container_id = await create(runtime, containers, make_spec())

    with pytest.raises(PathNotFound, match="no such path"):
        await _drain(runtime.stream_archive(container_id, "/workspace/nothing"))
    with pytest.raises(ContainerNotFound, match="no such container") as gone:
        await _drain(runtime.stream_archive(uuid.uuid4().hex, "/workspace"))
    assert not isinstance(gone.value, PathNotFound)
    with pytest.raises(PathNotFound, match="no such path"):
        await runtime.put_archive(container_id, "/nothing", workspace_tar())
    with pytest.raises(ContainerNotFound, match="no such container") as gone:
        await runtime.put_archive(uuid.uuid4().hex, "/", workspace_tar())
    assert not isinstance(gone.value, PathNotFound)


async def test_events_report_the_labelled_container_dying_with_its_exit_code(
    runtime: DockerRuntime,
    engine: aiodocker.Docker,
    containers: list[str],
    run_labels: dict[str, str],
) -> None:
    decoy = await create(
        runtime, containers, make_spec(labels={**run_labels, RUN_LABEL: "decoy"}, command=["true"])
    )
    target = await create(
        runtime, containers, make_spec(labels=run_labels, command=["sh", "-c", "exit 7"])
    )
    listeners_before = (await engine.system.info())["NEventsListener"]
    seen: list[ContainerEvent] = []

    async def watch() -> ContainerEvent:
        async for event in runtime.events({RUN_LABEL: run_labels[RUN_LABEL]}):
            seen.append(event)
            if event.action == "die":
                return event
        raise AssertionError("the event stream ended before a die event")

    watcher = asyncio.create_task(watch())
    try:
        # The engine counts its subscribers: start only once ours is one of them.
        async def subscribed() -> bool:
            if watcher.done():
                watcher.result()  # surfaces the watcher's error
            info = await engine.system.info()
            return bool(info["NEventsListener"] > listeners_before)

        await eventually(subscribed, "the event subscription")
        await runtime.start(decoy)
        await runtime.start(target)
        died = await asyncio.wait_for(watcher, DEADLINE_S)
    finally:
        watcher.cancel()

    assert (died.container_id, died.exit_code) == (target, 7)
    assert died.labels[RUN_LABEL] == run_labels[RUN_LABEL]
    assert died.time_nano > 0
    assert [(e.action, e.container_id, e.exit_code) for e in seen] == [
        ("start", target, None),
        ("die", target, 7),
    ]


async def test_stats_sample_a_running_job_and_end_when_it_stops(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    container_id = await create(
        runtime, containers, make_spec(command=["sh", "-c", "while :; do :; done"])
    )
    await runtime.start(container_id)
    samples = runtime.stats(container_id)

    first = await asyncio.wait_for(anext(samples), DEADLINE_S)
    second = await asyncio.wait_for(anext(samples), DEADLINE_S)
    await runtime.kill(container_id)
    rest = await asyncio.wait_for(_drain(samples), DEADLINE_S)

    assert second.read_at > first.read_at
    assert second.cpu_total_ns > first.cpu_total_ns > 0
    assert 0 < second.memory_bytes < 256 * MiB
    assert len(rest) < 5


async def test_stats_of_a_container_that_never_ran_end_at_once(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    container_id = await create(runtime, containers, make_spec())

    assert await asyncio.wait_for(_drain(runtime.stats(container_id)), DEADLINE_S) == []


async def _drain(samples: AsyncIterator[object]) -> list[object]:
    return [sample async for sample in samples]


async def test_put_archive_streams_a_large_tar_without_holding_it(
    runtime: DockerRuntime, containers: list[str], tmp_path: Path
) -> None:
    tar_path = tmp_path / "big.tar"
    with tarfile.open(tar_path, "w") as tar, open("/dev/urandom", "rb") as noise:
        for name in (".", "input", "output"):
            tar.addfile(_dir_entry(name))
        info = tarfile.TarInfo("input/big.bin")
        info.size, info.uid, info.gid = BIG_TAR_FILE_BYTES, JOB_UID, JOB_UID
        tar.addfile(info, noise)
    container_id = await create(runtime, containers, make_spec())

    with open(tar_path, "rb") as upload:
        upload_growth = await rss_growth_during(
            runtime.put_archive(container_id, "/workspace", upload)
        )

    copy_path = tmp_path / "copy.tar"

    async def download() -> None:
        with open(copy_path, "wb") as copy:
            async for chunk in runtime.stream_archive(container_id, "/workspace/input/big.bin"):
                copy.write(chunk)

    download_growth = await rss_growth_during(download())
    print(
        f"RSS growth: put_archive {upload_growth / MiB:.1f} MiB, stream_archive "
        f"{download_growth / MiB:.1f} MiB for a {BIG_TAR_FILE_BYTES / MiB:.0f} MiB file"
    )

    assert upload_growth < RSS_GROWTH_LIMIT
    assert download_growth < RSS_GROWTH_LIMIT
    with tarfile.open(tar_path) as original, tarfile.open(copy_path) as copy:
        sent = original.extractfile("input/big.bin")
        [received_info] = copy.getmembers()
        received = copy.extractfile(received_info)
        assert sent is not None and received is not None
        assert received_info.size == BIG_TAR_FILE_BYTES
        while block := sent.read(MiB):
            assert received.read(MiB) == block


# --------------------------------------------------------------------------- images
async def test_build_image_returns_the_id_and_log_and_drops_the_entrypoint_at_run(
    runtime: DockerRuntime, containers: list[str], images: list[str], run_labels: dict[str, str]
) -> None:
    tag = f"taskdeploy-test/adapter:{uuid.uuid4().hex[:12]}"
    images.append(tag)
    dockerfile = (
        f"FROM {BUSYBOX}\n"
        "ARG GREETING\n"
        "COPY hello.txt /hello.txt\n"
        'RUN echo "building with $GREETING" && cat /hello.txt\n'
        'ENTRYPOINT ["echo", "from-entrypoint"]\n'
    )
    context = build_context(dockerfile, {"hello.txt": b"hello from the context\n"})

    result = await runtime.build_image(
        context, tag=tag, labels=run_labels, buildargs={"GREETING": "hi"}
    )

    assert result.image_id.startswith("sha256:")
    assert "building with hi" in result.log
    assert "hello from the context" in result.log
    info = await runtime.image_info(tag)
    assert info is not None
    assert (info.id, info.tags, info.labels) == (result.image_id, [tag], run_labels)
    assert info.size > 0 and info.created is not None
    listed = await runtime.list_images(f"{RUN_LABEL}={run_labels[RUN_LABEL]}")
    assert [(i.id, i.tags) for i in listed] == [(result.image_id, [tag])]

    container_id, state = await run(
        runtime, containers, ["cat", "/hello.txt"], image=tag, read_only_root=False
    )
    assert state.exit_code == 0
    assert await read_log(runtime, container_id, "stdout") == b"hello from the context\n"

    await runtime.remove(container_id)
    await runtime.remove_image(tag)
    assert await runtime.image_info(tag) is None
    assert await runtime.image_info(result.image_id) is None
    await runtime.remove_image(tag)  # already gone: no error


async def test_a_failing_build_raises_with_the_build_output(
    runtime: DockerRuntime, images: list[str], run_labels: dict[str, str]
) -> None:
    tag = f"taskdeploy-test/adapter:{uuid.uuid4().hex[:12]}"
    images.append(tag)
    context = build_context(f"FROM {BUSYBOX}\nRUN echo 'about to fail' && exit 3\n")

    with pytest.raises(ImageBuildFailed) as failure:
        await runtime.build_image(context, tag=tag, labels=run_labels, buildargs={})

    assert "about to fail" in failure.value.log
    assert "non-zero code: 3" in str(failure.value)
    assert await runtime.image_info(tag) is None


async def test_a_build_runs_within_its_memory_cpu_and_file_limits(
    runtime: DockerRuntime, images: list[str], run_labels: dict[str, str]
) -> None:
    tag = f"taskdeploy-test/adapter:{uuid.uuid4().hex[:12]}"
    images.append(tag)
    probe = "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max"
    dockerfile = (
        f"FROM {BUSYBOX}\n"
        f'RUN echo "{tag} quota=$({probe})" && echo "nofile=$(ulimit -n)" && '
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max\n"
        # Then a step that wants more memory than the build may have.
        "RUN x=a; while :; do x=$x$x; done\n"
    )
    limits = BuildLimits(memory_bytes=64 * MiB, nano_cpus=500_000_000, nofile=333)

    with pytest.raises(ImageBuildFailed) as failure:
        await runtime.build_image(
            build_context(dockerfile), tag=tag, labels=run_labels, buildargs={}, limits=limits
        )

    log = failure.value.log
    assert "quota=50000" in log and "nofile=333" in log and str(64 * MiB) in log, log
    assert "non-zero code: 137" in str(failure.value)  # the memory bomb was killed
    assert await runtime.image_info(tag) is None


async def test_a_cancelled_build_stops_and_leaves_no_container(
    runtime: DockerRuntime,
    engine: aiodocker.Docker,
    images: list[str],
    run_labels: dict[str, str],
) -> None:
    tag = f"taskdeploy-test/adapter:{uuid.uuid4().hex[:12]}"
    images.append(tag)
    marker = f"sleep 300 # {uuid.uuid4().hex}"
    build = asyncio.create_task(
        runtime.build_image(
            build_context(f"FROM {BUSYBOX}\nRUN {marker}\n"),
            tag=tag,
            labels=run_labels,
            buildargs={},
        )
    )

    async def step_containers() -> list[str]:
        listing = await engine.containers.list(all=True)
        return [c.id for c in listing if marker in str(c._container.get("Command", ""))]

    found: list[str] = []

    async def step_running() -> bool:
        found[:] = await step_containers()
        return bool(found)

    await eventually(step_running, "the build's RUN step to start")
    build.cancel()
    with pytest.raises(asyncio.CancelledError):
        await build

    async def step_gone() -> bool:
        return not await step_containers()

    await eventually(step_gone, "the engine to stop and remove the build step's container")
    assert await runtime.image_info(tag) is None


async def test_prune_removes_managed_images_left_dangling_by_a_rebuild(
    runtime: DockerRuntime, images: list[str], run_labels: dict[str, str]
) -> None:
    tag = f"taskdeploy-test/adapter:{uuid.uuid4().hex[:12]}"
    images.append(tag)
    key, value = MANAGED_LABEL.split("=")
    labels = {**run_labels, key: value}

    async def build(content: str) -> str:
        dockerfile = f"FROM {BUSYBOX}\nRUN echo {content} > /version\n"
        result = await runtime.build_image(
            build_context(dockerfile), tag=tag, labels=labels, buildargs={}
        )
        images.append(result.image_id)
        return result.image_id

    # Unique contents: the engine's build cache must not answer from another run's layers.
    replaced = await build(f"one-{run_labels[RUN_LABEL]}")
    current = await build(f"two-{run_labels[RUN_LABEL]}")
    replaced_info = await runtime.image_info(replaced)
    assert replaced_info is not None and replaced_info.tags == []

    # Younger than the cut-off: maybe part of a build still going on, so kept.
    assert await runtime.prune_dangling_images(older_than_seconds=3600) == 0
    assert await runtime.image_info(replaced) is not None
    assert await runtime.prune_dangling_images(older_than_seconds=-60) >= 1

    assert await runtime.image_info(replaced) is None
    current_info = await runtime.image_info(tag)
    assert current_info is not None and current_info.id == current


async def test_image_info_is_none_for_a_missing_image(runtime: DockerRuntime) -> None:
    assert await runtime.image_info(f"taskdeploy-test/missing:{uuid.uuid4().hex[:12]}") is None
    busybox = await runtime.image_info(BUSYBOX)
    assert busybox is not None and BUSYBOX in busybox.tags


# --------------------------------------------------------------------------- failures
async def test_missing_things_raise_the_ports_errors_without_pulling(
    runtime: DockerRuntime, containers: list[str]
) -> None:
    missing_image = f"taskdeploy-test/missing:{uuid.uuid4().hex[:12]}"
    missing = uuid.uuid4().hex

    with pytest.raises(ImageNotFound):
        await runtime.create_container(make_spec(image=missing_image))
    assert await runtime.image_info(missing_image) is None
    assert await runtime.inspect(missing) is None
    for operation in (
        runtime.start(missing),
        runtime.wait(missing),
        runtime.kill(missing),
        runtime.put_archive(missing, "/", workspace_tar()),
        _drain(runtime.stream_logs(missing, "stdout")),
        _drain(runtime.stats(missing)),
    ):
        with pytest.raises(ContainerNotFound):
            await operation
    await runtime.remove(missing)


async def test_an_unreachable_engine_raises_runtime_unavailable() -> None:
    unreachable = DockerRuntime("unix:///nonexistent.sock")
    try:
        with pytest.raises(RuntimeUnavailable):
            await unreachable.ping()
        with pytest.raises(RuntimeUnavailable):
            await unreachable.inspect("anything")
        with pytest.raises(RuntimeUnavailable):
            await unreachable.create_container(make_spec())
        with pytest.raises(RuntimeUnavailable):
            await anext(unreachable.events({}))
    finally:
        await unreachable.close()
    with pytest.raises(RuntimeUnavailable, match="closed"):
        await unreachable.ping()
