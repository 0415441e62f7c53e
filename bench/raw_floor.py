"""The raw-Docker floor: a run's work done directly with aiodocker and aioboto3.

No service, no database, no in-container wrapper, none of app/'s code: create the container
with the service's settings (user, capabilities, limits, disk cap, ulimits, tmpfs, log driver,
network none), start, wait, read stdout and stderr, put them and a manifest into S3, remove the
container. A job with inputs also has them put_archived first (streamed from S3 into the tar as
they arrive, no temporary file); a job that writes outputs has them read with get_archive and
uploaded. What this takes is the least any implementation of the pipeline pays on this machine.
"""

from __future__ import annotations

import json
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiodocker

from bench.common import BENCH_LABEL, Job, Laps, MiB, Outcome, split_s3_uri

WORKSPACE = "/workspace"
JOB_UID = 65534
CHUNK_BYTES = MiB
# The service's defaults (TASKDEPLOY_PIDS_LIMIT, _TMP_SIZE_MB, _DEFAULT_DISK_MB, _NOFILE_LIMIT).
PIDS_LIMIT = 512
TMP_SIZE_MB = 256
DISK_MB = 2048
NOFILE_LIMIT = 4096
LOG_MAX_BYTES = MiB


def container_config(job: Job, image: str) -> dict[str, Any]:
    """The container the service creates (app/adapters/docker_json.py, docker_backend.py),
    labelled for the bench: the workspace in the writable layer under the same disk cap.

    The command runs as `sh -c` directly: the service's wrapper (log capture, metrics sampler)
    is part of what the floor leaves out.
    """
    memory = job.memory_mb * MiB
    disk = DISK_MB * MiB
    ulimits = {"nofile": NOFILE_LIMIT, "fsize": disk, "core": 0}
    return {
        "Image": image,
        "Entrypoint": [],
        "Cmd": ["/bin/sh", "-c", job.command],
        "Env": ["INPUT_DIR=/workspace/input", "OUTPUT_DIR=/workspace/output", "HOME=/tmp"],
        "Labels": {BENCH_LABEL: "1"},
        "User": f"{JOB_UID}:{JOB_UID}",
        "WorkingDir": WORKSPACE,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": {
            "Init": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "PidsLimit": PIDS_LIMIT,
            "Memory": memory,
            "MemorySwap": memory,
            "NanoCpus": int(job.cpus * 1e9),
            "NetworkMode": "none",
            "ReadonlyRootfs": False,
            "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={TMP_SIZE_MB}m,mode=1777"},
            "Ulimits": [{"Name": name, "Soft": v, "Hard": v} for name, v in ulimits.items()],
            "LogConfig": {
                "Type": "local",
                "Config": {
                    "max-size": str(LOG_MAX_BYTES // 2),
                    "max-file": "2",
                    "compress": "false",
                },
            },
            "StorageOpt": {"size": str(disk)},
            "AutoRemove": False,
            "RestartPolicy": {"Name": "no"},
        },
    }


async def list_objects(s3: Any, bucket: str, prefix: str) -> AsyncIterator[tuple[str, int]]:
    """(key, size) of every object under `prefix`."""
    async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            yield item["Key"], int(item["Size"])


def _tar_header(name: str, *, size: int = 0, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = size
    info.mode = 0o755 if directory else 0o644
    info.uid = info.gid = JOB_UID
    info.mtime = int(time.time())
    return info.tobuf(tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


async def workspace_tar(s3: Any, job: Job) -> AsyncIterator[bytes]:
    """/workspace as one tar stream for the root: input/ and output/ owned by the job's user,
    then every input object's bytes straight from its S3 response."""
    for name in ("", "/input", "/output"):
        yield _tar_header(f"workspace{name}", directory=True)
    if job.input:
        bucket, prefix = split_s3_uri(job.input)
        async for key, size in list_objects(s3, bucket, prefix):
            yield _tar_header(f"workspace/input/{key.removeprefix(prefix)}", size=size)
            body = (await s3.get_object(Bucket=bucket, Key=key))["Body"]
            async with body:
                async for chunk in body.iter_chunks(CHUNK_BYTES):
                    yield chunk
            yield _padding(size)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


async def harvest(container: Any, s3: Any, job: Job, run_id: str) -> int:
    """Uploads an exited container's logs, its outputs (if the job writes any) and a manifest
    with Docker's own start and finish times; returns the exit code. The keys are the service's,
    under <output><run id>/."""
    bucket, prefix = split_s3_uri(job.output)
    base = f"{prefix}{run_id}/"
    artifacts: dict[str, int] = {}

    async def put(key: str, data: bytes) -> None:
        await s3.put_object(Bucket=bucket, Key=f"{base}{key}", Body=data)
        artifacts[key] = len(data)

    for stream in ("stdout", "stderr"):
        lines = await container.log(**{stream: True})
        await put(f"{stream}.log", "".join(lines).encode())
    if job.writes_outputs:
        await upload_outputs(container, s3, bucket, base, artifacts)
    state = (await container.show())["State"]
    manifest = {
        "run_id": run_id,
        "exit_code": state["ExitCode"],
        "started_at": state["StartedAt"],
        "finished_at": state["FinishedAt"],
        "artifacts": artifacts,
    }
    await put("run.json", json.dumps(manifest, indent=2).encode())
    return int(state["ExitCode"])


async def upload_outputs(
    container: Any, s3: Any, bucket: str, base: str, artifacts: dict[str, int]
) -> None:
    """Every regular file under /workspace/output, read with one get_archive."""
    outputs = await container.get_archive(f"{WORKSPACE}/output")
    with outputs:
        for member in outputs:
            body = outputs.extractfile(member) if member.isreg() else None
            if body is not None:
                key = f"output/{member.name.partition('/')[2]}"
                await s3.upload_fileobj(body, bucket, f"{base}{key}")
                artifacts[key] = member.size


class RawFloor:
    """Runs jobs the direct way over one aiodocker client and one aioboto3 client.

    `Outcome.seconds` ends when the results are uploaded, where the service records the
    terminal state; the container is removed after that, before `run` returns, as the
    service's executor does too.
    """

    def __init__(self, docker: aiodocker.Docker, s3: Any) -> None:
        self.docker = docker
        self.s3 = s3

    async def run(self, job: Job) -> Outcome:
        laps = Laps()
        run_id = uuid.uuid4().hex
        container = await self.docker.containers.create(
            container_config(job, job.image), name=f"bench-floor-{run_id[:12]}"
        )
        laps.lap("create")
        try:
            if job.input or job.writes_outputs:
                await container.put_archive("/", workspace_tar(self.s3, job))
                laps.lap("put_archive")
            await container.start()
            await container.wait()
            laps.lap("start+wait")
            exit_code = await harvest(container, self.s3, job, run_id)
            laps.lap("harvest+upload")
            seconds = laps.total
        finally:
            await container.delete(force=True, v=True)
        laps.lap("remove")
        return Outcome(seconds, exit_code == 0, f"exit code {exit_code}", laps.phases)
