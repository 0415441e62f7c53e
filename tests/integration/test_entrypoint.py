"""app/assets/entrypoint.sh in real job containers (busybox and Debian), plus its shells on the host."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.adapters.docker_images import WRAPPER, build_context
from app.config import MAX_ARG_STRLEN, Settings
from app.services.metrics import SOURCE_CGROUP, SOURCE_NONE, MetricsReport, parse_metrics_tsv

ENTRYPOINT = Path(__file__).resolve().parents[2] / "app" / "assets" / "entrypoint.sh"
BUSYBOX = "busybox:latest"
DEBIAN = "debian:bookworm-slim"
IMAGES = [BUSYBOX, DEBIAN]
JOB_UID = 65534
# Per test process: with xdist another worker's jobs are not this one's leftovers.
TEST_LABEL = f"taskdeploy.test=entrypoint-{uuid.uuid4().hex[:12]}"
DEFAULT_LOG_LIMIT = 10 * 1024 * 1024
DOCKER_DEADLINE_S = 60.0
RESULT_FILES = ("metrics.tsv", "stdout.log", "stderr.log", "stdout.total", "stderr.total")
# Where dd lacks iflag=count_bytes (old busybox) the entrypoint splits logs with tee; the hook
# forces that path, since busybox sh runs its own dd applet whatever PATH says.
TEE_SPLIT_ENV = {"TASKDEPLOY_TEST_LOG_SPLIT": "tee"}


@dataclass
class Job:
    """What one container run left behind, read back from its /workspace volume."""

    status: int
    console: bytes  # the container's own stdout+stderr: the entrypoint itself writes nothing
    seconds: float  # `docker start -a`, container start-up included
    files: dict[str, bytes] = field(default_factory=dict)  # relative to /workspace
    owners: dict[str, int] = field(default_factory=dict)
    fifos: list[str] = field(default_factory=list)

    def result(self, name: str) -> bytes:
        return self.files[f".taskdeploy/{name}"]

    def total(self, stream: str) -> int:
        return int(self.result(f"{stream}.total").decode())

    @property
    def report(self) -> MetricsReport:
        return parse_metrics_tsv(self.result("metrics.tsv").decode())

    @property
    def metric_lines(self) -> list[str]:
        return self.result("metrics.tsv").decode().splitlines()


def extra_tar(extra: dict[str, bytes]) -> bytes:
    """Files put into /workspace before start, owned by the job's user, as inputs are."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes | None) -> None:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = JOB_UID
            info.mtime = int(time.time())
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o755 if name.startswith("bin/") else 0o644
                tar.addfile(info, io.BytesIO(data))

        for name, data in sorted(extra.items()):
            parent = name.rpartition("/")[0]
            if parent:
                add(parent, None)
            add(name, data)
    return buffer.getvalue()


def docker(*args: str, stdin: bytes | None = None, timeout: float = DOCKER_DEADLINE_S) -> bytes:
    done = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"docker {args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def run_job(
    image: str,
    command: str,
    *,
    interval: str = "1",
    log_limit: int = DEFAULT_LOG_LIMIT,
    env: dict[str, str] | None = None,
    extra: dict[str, bytes] | None = None,
    init: bool = True,
    deadline: float = DOCKER_DEADLINE_S,
) -> Job:
    """Create, stage, start and harvest one job container the way the service does."""
    name = f"td-entrypoint-{uuid.uuid4().hex[:12]}"
    all_env = {
        "TASKDEPLOY_METRICS_INTERVAL": interval,
        "TASKDEPLOY_LOG_LIMIT": str(log_limit),
        "INPUT_DIR": "/workspace/input",
        "OUTPUT_DIR": "/workspace/output",
        "TASKDEPLOY_RUN_ID": name,
        **(env or {}),
    }
    create = [
        "create", "--name", name, "--label", TEST_LABEL,
        "--user", f"{JOB_UID}:{JOB_UID}", "--read-only", "--tmpfs", "/tmp",
        "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--memory", "256m", "--memory-swap", "256m", "--pids-limit", "256",
        "-v", "/workspace", "-w", "/workspace",
        *(["--init"] if init else []),
        *(arg for key, value in all_env.items() for arg in ("-e", f"{key}={value}")),
        ENV_IMAGES[image], "/bin/sh", WRAPPER, "/workspace/.taskdeploy", command,
    ]  # fmt: skip
    docker(*create)
    try:
        if extra:
            docker("cp", "-", f"{name}:/workspace", stdin=extra_tar(extra))
        started = time.monotonic()
        attached = subprocess.run(
            ["docker", "start", "-a", name], capture_output=True, timeout=deadline, check=False
        )
        seconds = time.monotonic() - started
        job = Job(attached.returncode, attached.stdout + attached.stderr, seconds)
        archive = docker("cp", f"{name}:/workspace", "-")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                relative = member.name.partition("/")[2]  # drop the leading "workspace"
                job.owners[relative] = member.uid
                if member.isfifo():
                    job.fifos.append(relative)
                elif member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    job.files[relative] = extracted.read()
        return job
    finally:
        subprocess.run(["docker", "rm", "-v", "-f", name], capture_output=True, timeout=60)


def build_environment_image(base: str) -> str:
    """An environment image of `base` with no packages, from the service's own build context
    (Dockerfile.env puts the wrapper and the workspace's folders in it)."""
    tag = f"taskdeploy-test-entrypoint:{uuid.uuid4().hex[:12]}"
    docker(
        "build", "-q", "--no-cache", "--label", TEST_LABEL, "-t", tag,
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"JOB_UID={JOB_UID}", "-",
        stdin=build_context([]).getvalue(), timeout=180,
    )  # fmt: skip
    return tag


ENV_IMAGES: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _images_present() -> Iterator[None]:
    for image in IMAGES:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            pytest.fail(f"{image} is missing: run ./scripts/ensure-images.sh", pytrace=False)
    for image in IMAGES:
        ENV_IMAGES[image] = build_environment_image(image)
    try:
        yield
    finally:
        subprocess.run(["docker", "rmi", *ENV_IMAGES.values()], capture_output=True, timeout=60)
        ENV_IMAGES.clear()
    leftovers = docker("ps", "-aq", "--filter", f"label={TEST_LABEL}").split()
    assert leftovers == [], "test containers were left behind"


each_image = pytest.mark.parametrize("image", IMAGES)


# --------------------------------------------------------------------------- logs
@each_image
def test_stdout_and_stderr_are_kept_apart_byte_for_byte(image: str) -> None:
    # Invalid UTF-8, NUL, CR, no final newline: nothing may be decoded or normalised.
    command = r"""printf 'out\377\376\000\r\nend' ; printf 'err \200\300\n' >&2; printf 'out2'"""

    job = run_job(image, command)

    stdout, stderr = b"out\xff\xfe\x00\r\nendout2", b"err \x80\xc0\n"
    assert job.status == 0
    assert job.result("stdout.log") == stdout
    assert job.result("stderr.log") == stderr
    assert job.total("stdout") == len(stdout)
    assert job.total("stderr") == len(stderr)
    assert job.console == b""
    assert job.fifos == []


each_splitter = pytest.mark.parametrize("splitter", ["dd", "tee"])


def splitter_env(splitter: str) -> dict[str, str]:
    return TEE_SPLIT_ENV if splitter == "tee" else {}


@each_image
@each_splitter
def test_a_capped_stream_keeps_its_first_bytes_and_counts_them_all(
    image: str, splitter: str
) -> None:
    # 1000 lines of 1000 bytes on each stream; the first line is all zeros.
    command = """
i=0
while [ "$i" -lt 1000 ]; do
    printf '%0999d\\n' "$i"
    printf '%0999d\\n' "$((i + 5000))" >&2
    i=$((i + 1))
done
echo finished > "$OUTPUT_DIR/done"
"""

    job = run_job(image, command, log_limit=1000, env=splitter_env(splitter))

    assert job.status == 0
    assert job.result("stdout.log") == b"0" * 999 + b"\n"
    assert job.result("stderr.log") == b"0" * 995 + b"5000\n"
    assert job.total("stdout") == 1_000_000
    assert job.total("stderr") == 1_000_000
    # The command ran to its end: never blocked nor killed by the cap.
    assert job.files["output/done"] == b"finished\n"
    assert job.report.exit_code == 0


@each_image
@each_splitter
def test_two_gigabytes_of_stdout_are_drained_quickly_in_little_memory(
    image: str, splitter: str
) -> None:
    command = "dd if=/dev/zero bs=1000000 count=2000 2>/dev/null; echo tail >&2"

    job = run_job(image, command, env=splitter_env(splitter), deadline=240)

    assert job.status == 0
    assert job.total("stdout") == 2_000_000_000
    assert job.result("stdout.log") == bytes(DEFAULT_LOG_LIMIT)
    assert job.result("stderr.log") == b"tail\n"
    report = job.report
    # Pipes only: the cgroup's peak (page cache of the 10 MiB log included) stays far below 2 GB.
    assert report.summary.peak_memory_bytes < 64 * 1024 * 1024
    rate = 2_000 / report.summary.wall_seconds
    print(
        f"\n{image}, {splitter}: 2 GB stdout in {report.summary.wall_seconds:.2f} s inside the container "
        f"({job.seconds:.2f} s for docker start -a), {rate:.0f} MB/s, "
        f"peak memory {report.summary.peak_memory_bytes / 2**20:.1f} MiB, "
        f"{report.summary.cpu_seconds:.2f} CPU s"
    )


def test_a_dd_without_count_bytes_switches_to_the_tee_split() -> None:
    # Debian's sh is dash, which takes dd from PATH: a stand-in that refuses every operand.
    stand_in = b'#!/bin/sh\n: >"$0.called"\nexit 1\n'
    path = "/workspace/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    job = run_job(
        DEBIAN, "seq 1 100000", log_limit=10, extra={"bin/dd": stand_in}, env={"PATH": path}
    )

    assert "bin/dd.called" in job.files
    assert job.result("stdout.log") == b"1\n2\n3\n4\n5\n"
    assert job.total("stdout") == 588895
    assert job.status == 0


# --------------------------------------------------------------------------- metrics
@pytest.mark.serial  # needs a CPU to itself for 3 s
@each_image
def test_a_cpu_burning_command_is_sampled_as_busy(image: str) -> None:
    command = "sh -c 'while :; do :; done' & sleep 3; kill $!"

    job = run_job(image, command, interval="0.5")

    report = job.report
    assert job.status == 0
    assert report.source == SOURCE_CGROUP
    assert report.summary.samples >= 5
    assert report.summary.cpu_percent_max > 50
    assert report.summary.cpu_seconds > 1.5
    assert 2.9 <= report.summary.wall_seconds < 10
    assert all(s.memory_bytes > 0 for s in report.series)
    assert [s.t for s in report.series] == sorted(s.t for s in report.series)


@each_image
def test_a_tiny_command_still_gets_final_totals(image: str) -> None:
    job = run_job(image, "true")

    lines = job.metric_lines
    report = job.report
    assert lines[0].startswith("start ")
    assert lines[1].startswith("s ")  # the immediate sample
    assert lines[-2].startswith("f ")
    assert lines[-1] == "exit 0"
    assert report.exit_code == 0
    assert report.summary.peak_memory_bytes > 0
    assert report.summary.cpu_seconds >= 0
    assert report.summary.wall_seconds < 2


def test_sampling_off_writes_no_samples_but_the_final_line() -> None:
    job = run_job(BUSYBOX, "sleep 0.3", interval="0")

    assert [line.split()[0] for line in job.metric_lines] == ["start", "f", "exit"]
    report = job.report
    assert report.series == []
    assert report.summary.peak_memory_bytes > 0
    assert report.summary.wall_seconds >= 0.29


def test_no_readable_cgroup_is_reported_once_with_no_samples() -> None:
    job = run_job(BUSYBOX, "exit 3", env={"TASKDEPLOY_TEST_CGROUP_ROOT": "/nonexistent"})

    assert job.metric_lines[1:] == ["nocgroup", "exit 3"]
    assert job.report.source == SOURCE_NONE
    assert job.report.exit_code == 3


FAKE_CGROUP_V2 = {
    "fakecg/cgroup.controllers": b"cpuset cpu io memory pids\n",
    "fakecg/cpu.stat": b"usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
    "fakecg/memory.current": b"4096000\n",
    # no memory.peak, like kernels before 5.19
}
FAKE_CGROUP_V1_COMBINED = {
    "fakecg/cpu,cpuacct/cpuacct.usage": b"2500000000\n",
    "fakecg/memory/memory.usage_in_bytes": b"7000000\n",
    "fakecg/memory/memory.max_usage_in_bytes": b"9000000\n",
}


@each_image
@pytest.mark.parametrize(
    ("tree", "cpu_ns", "memory", "peak"),
    [
        pytest.param(FAKE_CGROUP_V2, 1_500_000_000, 4_096_000, 4_096_000, id="v2"),
        pytest.param(
            FAKE_CGROUP_V1_COMBINED, 2_500_000_000, 7_000_000, 9_000_000, id="v1-cpu,cpuacct"
        ),
    ],
)
def test_other_cgroup_layouts_are_read(
    image: str, tree: dict[str, bytes], cpu_ns: int, memory: int, peak: int
) -> None:
    job = run_job(
        image, "sleep 0.5", interval="0.2", extra=tree,
        env={"TASKDEPLOY_TEST_CGROUP_ROOT": "/workspace/fakecg"},
    )  # fmt: skip

    samples = [line.split() for line in job.metric_lines if line.startswith("s ")]
    final = next(line.split() for line in job.metric_lines if line.startswith("f "))
    assert len(samples) >= 2
    assert {(s[2], s[3]) for s in samples} == {(str(cpu_ns), str(memory))}
    assert final[2:] == [str(cpu_ns), str(peak)]
    assert job.metric_lines[0].split()[2] == str(cpu_ns)
    # The fake counters stand still: no CPU time between start and end.
    assert job.report.summary.cpu_seconds == 0.0
    assert job.report.summary.peak_memory_bytes == peak


# --------------------------------------------------------------------------- the command
@each_image
@pytest.mark.parametrize(
    ("command", "status"),
    [("exit 7", 7), ("kill -9 $$", 128 + 9), ("kill -TERM $$", 128 + 15)],
)
def test_the_exit_status_is_passed_on(image: str, command: str, status: int) -> None:
    job = run_job(image, command)

    assert job.status == status
    assert job.metric_lines[-1] == f"exit {status}"
    assert job.report.exit_code == status


@each_image
def test_the_command_runs_exactly_as_written(image: str) -> None:
    command = (
        'echo "double \\"quoted\\" $(echo hi)"\n'
        "echo 'single $(not run) `nor this`'\n"
        "printf '%s\\n' \"ünïcødé ✓\"\n"
        "cat <<'EOF'\n"
        "heredoc $HOME \\n\n"
        "EOF\n"
        "pwd; cat | wc -c\n"  # cwd is the workspace, stdin is empty
        'echo "$INPUT_DIR $OUTPUT_DIR ${td_limit-unset} $SECRET"\n'
    )

    job = run_job(image, command, env={"SECRET": "it's $HOME"})

    lines = job.result("stdout.log").decode().splitlines()
    assert job.result("stderr.log") == b""
    assert lines[0] == 'double "quoted" hi'
    assert lines[1] == "single $(not run) `nor this`"
    assert lines[2] == "ünïcødé ✓"
    assert lines[3] == "heredoc $HOME \\n"
    assert [line.strip() for line in lines[4:6]] == ["/workspace", "0"]
    # The entrypoint's own variables never reach the command.
    assert lines[6] == "/workspace/input /workspace/output unset it's $HOME"


@each_image
@pytest.mark.parametrize("init", [True, False], ids=["init", "sh-as-pid-1"])
def test_leftover_background_processes_do_not_hold_the_run(image: str, init: bool) -> None:
    # `sleep` keeps the stdout pipe open; Docker would kill it when the main process exits.
    command = "sleep 1000 & (sleep 1000; echo never) & echo started"

    job = run_job(image, command, init=init, deadline=30)

    assert job.status == 0
    assert job.seconds < 15
    assert job.result("stdout.log") == b"started\n"
    assert job.metric_lines[-1] == "exit 0"


def test_results_belong_to_the_job_user_and_no_pipes_remain() -> None:
    job = run_job(BUSYBOX, "echo hi; echo ho >&2")

    assert job.fifos == []
    assert sorted(name for name in job.files if name.startswith(".taskdeploy/")) == sorted(
        f".taskdeploy/{name}" for name in ("command.sh", "output.empty", *RESULT_FILES)
    )
    assert job.result("command.sh") == b"echo hi; echo ho >&2"
    assert {name: job.owners[f".taskdeploy/{name}"] for name in RESULT_FILES} == dict.fromkeys(
        RESULT_FILES, JOB_UID
    )
    # The workspace's folders come from the image, the job's own.
    assert {job.owners[name] for name in ("", "input", "output", ".taskdeploy")} == {JOB_UID}


@each_image
def test_the_image_holds_the_wrapper_root_owned_and_read_only(image: str) -> None:
    job = run_job(image, f"printf x >> {WRAPPER} || echo refused")

    assert job.result("stdout.log") == b"refused\n"
    name = f"td-entrypoint-{uuid.uuid4().hex[:12]}"
    docker("create", "--name", name, "--label", TEST_LABEL, ENV_IMAGES[image], "true")
    try:
        with tarfile.open(fileobj=io.BytesIO(docker("cp", f"{name}:{WRAPPER}", "-"))) as tar:
            member = tar.getmember("entrypoint.sh")
            body = tar.extractfile(member)
            assert body is not None and body.read() == ENTRYPOINT.read_bytes()
    finally:
        docker("rm", name)
    assert (member.uid, member.gid, member.mode & 0o7777) == (0, 0, 0o555)


@pytest.mark.parametrize(
    ("command", "empty"),
    [
        ("true", True),
        ("mkdir output/sub", False),
        ("echo x > output/.hidden", False),
        ("echo x > output/..dots", False),
        ("ln -s /nowhere output/dangling", False),
        ("rmdir output && ln -s input output", False),
        ("rmdir output", False),
        ("echo x > output/f; chmod 000 output", False),
        ("touch .taskdeploy/output.empty; echo x > output/f", False),
    ],
)
def test_output_empty_marks_an_empty_output_folder_only(command: str, empty: bool) -> None:
    job = run_job(BUSYBOX, command)

    assert job.status == 0
    assert (".taskdeploy/output.empty" in job.files) is empty
    if empty:
        assert job.result("output.empty") == b""


def test_a_command_of_the_largest_allowed_size_reaches_the_wrapper() -> None:
    # The cap on commands stays below MAX_ARG_STRLEN: the longest one still gets through execve.
    limit = MAX_ARG_STRLEN - 1
    with pytest.raises(ValueError, match="max_command_bytes"):
        Settings(max_command_bytes=limit + 1)
    assert Settings(max_command_bytes=limit).max_command_bytes == limit
    command = "echo ok #" + "x" * (limit - len("echo ok #"))

    job = run_job(BUSYBOX, command)

    assert len(job.result("command.sh")) == limit
    assert job.result("stdout.log") == b"ok\n"


# --------------------------------------------------------------------------- host shells
def job_lines_cpu(td: Path) -> set[str]:
    """The CPU figures on the start, sample and final lines of a metrics.tsv."""
    lines = (td / "metrics.tsv").read_text().splitlines()
    return {line.split()[2] for line in lines if line.split()[0] in ("start", "s", "f")}


HOST_SHELLS = {"busybox": ["busybox", "sh"], "dash": ["dash"], "bash": ["bash"]}


@pytest.mark.parametrize("shell", sorted(HOST_SHELLS))
@each_splitter
def test_each_shell_runs_it_on_the_host(shell: str, splitter: str, tmp_path: Path) -> None:
    argv = HOST_SHELLS[shell]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed on this host")
    td = tmp_path / "ws" / ".taskdeploy"
    td.mkdir(parents=True)
    command = "head -c 300000 /dev/zero; printf 'e\\377' >&2; exit 9\n"
    for name, data in FAKE_CGROUP_V2.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    env = {
        **splitter_env(splitter),
        "PATH": os.environ["PATH"],
        "TASKDEPLOY_LOG_LIMIT": "1000",
        "TASKDEPLOY_METRICS_INTERVAL": "0.1",
        "TASKDEPLOY_TEST_CGROUP_ROOT": str(tmp_path / "fakecg"),
    }

    done = subprocess.run(
        [*argv, str(ENTRYPOINT), str(td), command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 9
    assert done.stdout == done.stderr == b""
    assert (td / "stdout.log").read_bytes() == bytes(1000)
    assert (td / "stdout.total").read_text() == "300000\n"
    assert (td / "stderr.log").read_bytes() == b"e\xff"
    assert (td / "stderr.total").read_text() == "2\n"
    report = parse_metrics_tsv((td / "metrics.tsv").read_text())
    assert report.exit_code == 9
    assert job_lines_cpu(td) == {"1500000000"}
    assert (td / "command.sh").read_text() == command
    assert sorted(p.name for p in td.iterdir()) == sorted(["command.sh", *RESULT_FILES])


@pytest.mark.parametrize("shell", sorted(HOST_SHELLS))
@pytest.mark.parametrize("args", [[], ["/nonexistent-meta-dir", "true"], ["", "true"]])
def test_a_wrapper_started_wrongly_refuses_with_125(
    shell: str, args: list[str], tmp_path: Path
) -> None:
    argv = HOST_SHELLS[shell]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed on this host")
    done = subprocess.run(
        [*argv, str(ENTRYPOINT), *args], cwd=tmp_path, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 125
    assert list(tmp_path.iterdir()) == []
