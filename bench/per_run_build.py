"""The design the service replaced: every run builds its own image, then runs it once.

Per run: download the inputs to a temporary folder, write a Dockerfile that runs
`apt-get update && apt-get install -y <packages>` and COPYs the inputs, `docker build`, run,
copy the logs and outputs out, upload them, remove the container and the image.

No layer cache, as in the old service, which built from scratch every time: the build passes
`nocache=True`, and removing the tagged image afterwards takes its intermediate layers along,
so nothing of one run's build is left for the next. Container limits, harvest and upload are
the floor's (bench/raw_floor.py), so the difference between the two is the build.
"""

from __future__ import annotations

import asyncio
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import aiodocker

from bench.common import BENCH_LABEL, Job, Laps, Outcome, split_s3_uri
from bench.raw_floor import JOB_UID, WORKSPACE, container_config, harvest, list_objects

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def dockerfile(job: Job) -> str:
    # The base images here are imported root filesystems without PATH (see NOTES.md).
    lines = [f"FROM {job.image}", f"ENV PATH={PATH} DEBIAN_FRONTEND=noninteractive"]
    if job.packages:
        lines.append(f"RUN apt-get update && apt-get install -y {' '.join(job.packages)}")
    lines.append(f"COPY --chown={JOB_UID}:{JOB_UID} workspace/ {WORKSPACE}/")
    return "\n".join(lines) + "\n"


async def download_inputs(s3: Any, job: Job, folder: Path) -> None:
    folder.mkdir(parents=True)
    if not job.input:
        return
    bucket, prefix = split_s3_uri(job.input)
    async for key, _size in list_objects(s3, bucket, prefix):
        with (folder / key.removeprefix(prefix)).open("wb") as file:
            await s3.download_fileobj(bucket, key, file)


def _tar_folder(folder: Path, out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(folder, arcname=".")


class PerRunBuild:
    """Runs jobs the old way; `Outcome.seconds` ends once the results are uploaded."""

    def __init__(self, docker: aiodocker.Docker, s3: Any, scratch: Path) -> None:
        self.docker = docker
        self.s3 = s3
        self.scratch = scratch

    async def run(self, job: Job) -> Outcome:
        laps = Laps()
        run_id = uuid.uuid4().hex
        tag = f"taskdeploy-bench-build:{run_id[:16]}"
        await self._build(job, tag)
        laps.lap("download+build")
        try:
            container = await self.docker.containers.create(
                container_config(job, tag), name=f"bench-build-{run_id[:12]}"
            )
            try:
                await container.start()
                await container.wait()
                laps.lap("create+start+wait")
                exit_code = await harvest(container, self.s3, job, run_id)
                laps.lap("harvest+upload")
                seconds = laps.total
            finally:
                await container.delete(force=True, v=True)
        finally:
            await self.docker.images.delete(tag, force=True)
        laps.lap("remove")
        return Outcome(seconds, exit_code == 0, f"exit code {exit_code}", laps.phases)

    async def _build(self, job: Job, tag: str) -> None:
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            context = Path(tmp)
            await download_inputs(self.s3, job, context / "workspace" / "input")
            (context / "workspace" / "output").mkdir()
            (context / "Dockerfile").write_text(dockerfile(job))
            with tempfile.TemporaryFile(dir=self.scratch) as context_tar:
                await asyncio.to_thread(_tar_folder, context, context_tar)
                context_tar.seek(0)
                # The stream raises DockerStreamError when a step fails.
                async for _item in self.docker.images.build(
                    fileobj=context_tar,
                    encoding="application/x-tar",
                    tag=tag,
                    labels={BENCH_LABEL: "1"},
                    nocache=True,
                    rm=True,
                    forcerm=True,
                    stream=True,
                ):
                    pass
