"""The RunBackend port on one Docker engine: an attempt is a labelled container.

Labels, container names, tar archives and the events stream live here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Final

from app.adapters.docker import DockerRuntime
from app.adapters.docker_archive import collect_outputs, read_file, read_wrapper_files
from app.adapters.docker_images import WRAPPER
from app.adapters.docker_types import (
    ContainerSpec,
    ContainerState,
    DiskLimitUnsupported,
    PathNotFound,
)
from app.adapters.docker_workspace import write_inputs
from app.adapters.ports import (
    JOB_UID,
    META_DIR,
    WORKSPACE,
    AttemptExit,
    AttemptInfo,
    AttemptLost,
    AttemptRef,
    AttemptSpec,
    BackendMisconfigured,
    Capture,
    CaptureLimits,
    Collected,
    ContainerNotFound,
    InputFile,
    OutputSink,
    RuntimeUnavailable,
)
from app.adapters.spool import spooled
from app.adapters.wrapper_files import OUTPUT_EMPTY_FILE

log = logging.getLogger(__name__)

MANAGED: Final = "taskdeploy.managed"
INSTANCE: Final = "taskdeploy.instance"
RUN_ID: Final = "taskdeploy.run_id"
ATTEMPT: Final = "taskdeploy.attempt"
DISK: Final = "taskdeploy.disk_bytes"
MiB: Final = 1024 * 1024
STOP_WAIT_SECONDS: Final = 30.0
# 128 + SIGKILL / SIGTERM: how the init reports a command the engine stopped.
STOP_EXIT_CODES: Final = (137, 143)


def container_name(run_id: str, attempt: int) -> str:
    return f"taskdeploy-{run_id}-{attempt}"


def container_spec(spec: AttemptSpec) -> ContainerSpec:
    labels = {MANAGED: "true", INSTANCE: spec.instance_id, RUN_ID: spec.run_id}
    labels[ATTEMPT] = str(spec.attempt)
    if spec.disk_bytes is not None:
        labels[DISK] = str(spec.disk_bytes)
    return ContainerSpec(
        image=spec.image,
        # The command is data in the wrapper's arguments (within MAX_ARG_STRLEN: the service
        # caps it, see max_command_bytes); the wrapper writes it to META_DIR/command.sh.
        command=["/bin/sh", WRAPPER, META_DIR, spec.command],
        env=dict(spec.env),
        labels=labels,
        user=f"{JOB_UID}:{JOB_UID}",
        working_dir=WORKSPACE,
        nano_cpus=spec.nano_cpus,
        memory_bytes=spec.memory_bytes,
        pids_limit=spec.pids_limit,
        network=spec.network,
        log_max_bytes=MiB,
        disk_bytes=spec.disk_bytes,
        ulimits={"nofile": spec.nofile, "fsize": spec.file_size_bytes, "core": 0},
        # mode: an image without /tmp gets a root-owned 0755 one from the build.
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={spec.tmp_bytes // MiB}m,mode=1777"},
        name=container_name(spec.run_id, spec.attempt),
    )


def _info(state: ContainerState) -> AttemptInfo:
    labels = state.labels
    attempt = labels.get(ATTEMPT, "")
    return AttemptInfo(
        ref=AttemptRef(labels.get(RUN_ID, ""), int(attempt) if attempt.isdigit() else 0, state.id),
        instance_id=labels.get(INSTANCE, ""),
        started_at=state.started_at,
        running=state.running,
    )


class DockerBackend:
    """Attempts as containers on one engine; one events stream (`die`, `oom`, `kill`) for all
    of this service's containers completes the waits (the engine's `wait` is the fallback).

    `kill` is how the engine reports every signal it was asked to send: only the engine emits
    it, so unlike anything written inside the container it tells a stop the job did not make
    (the service's own stops are remembered here)."""

    def __init__(
        self,
        docker: DockerRuntime,
        *,
        tmp_dir: Path,
        spool_memory_bytes: int = 8 * MiB,
    ) -> None:
        self.docker = docker
        self.tmp_dir = tmp_dir
        self.spool_memory_bytes = spool_memory_bytes
        self._died: dict[str, asyncio.Future[object]] = {}
        self._oom: set[str] = set()
        self._kills: set[str] = set()
        self._stopped: set[str] = set()  # the service stopped these itself
        # The events stream's generation when each container started: an engine restart ends
        # the stream, so a killed container seen in a later generation was killed by it.
        self._generation = 0
        self._started_in: dict[str, int] = {}
        self.last_event = time.monotonic()

    # ------------------------------------------------------------------ set-up
    async def ping(self) -> None:
        await self.docker.ping()

    async def close(self) -> None:
        await self.docker.close()

    async def check(self, *, disk_limits: bool, network: str | None, images: list[str]) -> None:
        try:
            if network is not None:
                await self._check_network(network)
            if disk_limits:
                await self._probe_disk_limit(images)
        except RuntimeUnavailable as exc:
            log.warning("could not check the Docker engine at start-up: %s", exc)

    async def _check_network(self, name: str) -> None:
        found = await self.docker.network_info(name)
        if found is None or found.driver != "bridge":
            raise BackendMisconfigured(
                f"TASKDEPLOY_ALLOW_NETWORK is on but the Docker engine has no bridge network "
                f"{name!r} for runs: make it with scripts/ensure-job-network.sh (it also sets the "
                "firewall rules that keep jobs away from this host and private ranges)"
            )
        if found.options.get("com.docker.network.bridge.enable_icc") != "false":
            raise BackendMisconfigured(
                f"the job network {name!r} lets containers reach each other: recreate it with "
                "com.docker.network.bridge.enable_icc=false (scripts/ensure-job-network.sh)"
            )

    async def _probe_disk_limit(self, images: list[str]) -> None:
        """Creates (never starts) a container with a disk cap from a base image it has."""
        for image in images:
            if await self.docker.image_info(image) is None:
                continue
            probe = ContainerSpec(
                image=image, command=["true"], env={}, labels={}, disk_bytes=16 * MiB
            )
            try:
                container_id = await self.docker.create_container(probe)
            except DiskLimitUnsupported as exc:
                raise BackendMisconfigured(
                    f"{exc}. Without it one run could fill this host's disk."
                ) from exc
            await self.docker.remove(container_id)
            return
        log.warning("no allowed base image on the engine yet: the disk cap is checked at each run")

    # ------------------------------------------------------------------ lifecycle
    async def launch(self, spec: AttemptSpec, inputs: list[InputFile]) -> AttemptRef:
        """Creates the container from an environment image (which holds the wrapper and the
        workspace's folders); only a run with inputs has an archive put into it before start."""
        if not inputs:
            container_id = await self.docker.create_container(container_spec(spec))
            return AttemptRef(spec.run_id, spec.attempt, container_id)
        with spooled(self.tmp_dir, self.spool_memory_bytes) as tar:
            await write_inputs(tar, inputs)  # type: ignore[arg-type]
            container_id = await self.docker.create_container(container_spec(spec))
            try:
                tar.seek(0)
                await self.docker.put_archive(container_id, "/", tar)  # type: ignore[arg-type]
            except BaseException:
                await asyncio.shield(self._remove(container_id))
                raise
        return AttemptRef(spec.run_id, spec.attempt, container_id)

    async def start(self, ref: AttemptRef) -> None:
        self._expect(ref.handle)  # before start: the die event can't be missed
        self._started_in[ref.handle] = self._generation
        await self._engine(self.docker.start(ref.handle))

    async def wait(self, ref: AttemptRef, timeout: float) -> AttemptExit | None:
        died = self._expect(ref.handle)
        self._started_in.setdefault(ref.handle, self._generation)  # adopted ones too
        if not died.done():
            # An attempt that had ended (adopted after a restart) answers at once.
            state = await self.docker.inspect(ref.handle)
            if state is None:
                raise AttemptLost("the container disappeared")
            if state.status in ("exited", "dead"):
                return await self._exit(ref.handle)
        waited: asyncio.Future[object] = asyncio.ensure_future(self.docker.wait(ref.handle))
        try:
            done, _ = await asyncio.wait(
                [died, waited], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not waited.done():
                waited.cancel()
        if not done:
            return None
        if waited in done and waited.exception() is not None:
            failure = waited.exception()
            if isinstance(failure, ContainerNotFound):
                raise AttemptLost("the container disappeared") from failure
            raise failure  # type: ignore[misc]
        return await self._exit(ref.handle)

    async def _exit(self, container_id: str) -> AttemptExit:
        state = await self.docker.inspect(container_id)
        if state is None:
            raise AttemptLost("the container vanished after it exited")
        code = state.exit_code
        oom = state.oom_killed or container_id in self._oom
        restarted = self._generation != self._started_in.get(container_id, self._generation)
        outside = container_id not in self._stopped and (
            container_id in self._kills or (not oom and code in STOP_EXIT_CODES and restarted)
        )
        disk_full = False
        cap = state.labels.get(DISK, "")
        if code not in (0, None) and not oom and cap.isdigit():
            # Full means: not even 1 % more (at least 1 MiB) fits any more.
            with contextlib.suppress(Exception):
                needed = max(int(cap) // 100, MiB)
                disk_full = not await self.docker.has_disk_room(container_id, needed)
        return AttemptExit(code, oom, outside, disk_full)

    async def stop(self, ref: AttemptRef, grace: float) -> None:
        """SIGTERM first so the wrapper can flush the logs and write its final sample, then
        SIGKILL whatever is still running after the grace period."""
        self._stopped.add(ref.handle)
        died = self._expect(ref.handle)
        await self._engine(self.docker.kill(ref.handle, "SIGTERM"))
        waited: asyncio.Future[object] = asyncio.ensure_future(self.docker.wait(ref.handle))
        try:
            done, _ = await asyncio.wait(
                [died, waited], timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                await self._engine(self.docker.kill(ref.handle, "SIGKILL"))
                await asyncio.wait_for(asyncio.shield(waited), STOP_WAIT_SECONDS)
        finally:
            if not waited.done():
                waited.cancel()

    async def collect(self, ref: AttemptRef, limits: CaptureLimits, sink: OutputSink) -> Collected:
        """The wrapper's folder, then the output folder unless the wrapper found it empty:
        never `/workspace` whole (the inputs may be large). The engine serves one archive of a
        container at a time (each mounts it), so the two reads gain nothing from overlapping.
        No inspect first: a missing container (AttemptLost) is told from a path the job
        removed (PathNotFound, reported) by the engine's answer itself."""
        try:
            found = await read_wrapper_files(self.docker, ref.handle, limits.log_bytes)
            if OUTPUT_EMPTY_FILE in found.files:
                return found
            found.output_problem, found.listing_incomplete = await collect_outputs(
                self.docker, ref.handle, limits, sink, self.tmp_dir, self.spool_memory_bytes
            )
        except PathNotFound:
            raise
        except ContainerNotFound as exc:
            raise AttemptLost("the container vanished before harvest") from exc
        return found

    async def read_live(self, handle: str, name: str, capture: Capture, max_bytes: int) -> bool:
        try:
            return await read_file(
                self.docker, handle, f"{META_DIR}/{name}", capture, max_bytes=max_bytes
            )
        except ContainerNotFound as exc:
            if await self.docker.inspect(handle) is None:
                raise AttemptLost(str(exc)) from exc
            return False  # not written yet

    async def forget(self, ref: AttemptRef) -> None:
        future = self._died.pop(ref.handle, None)
        if future is not None and not future.done():
            future.cancel()
        for seen in (self._oom, self._kills, self._stopped):
            seen.discard(ref.handle)
        self._started_in.pop(ref.handle, None)
        await self._remove(ref.handle)

    async def _remove(self, container_id: str) -> None:
        await self.docker.remove(container_id)

    async def find(self, run_id: str) -> list[AttemptInfo]:
        return [_info(c) for c in await self.docker.list_containers({RUN_ID: run_id})]

    async def owned(self) -> list[AttemptInfo]:
        return [_info(c) for c in await self.docker.list_containers({MANAGED: "true"})]

    # ------------------------------------------------------------------ events
    def _expect(self, container_id: str) -> asyncio.Future[object]:
        future = self._died.get(container_id)
        if future is None or future.cancelled():
            future = asyncio.get_running_loop().create_future()
            self._died[container_id] = future
        return future

    async def watch(self) -> None:
        # All of this service's containers: a run adopted from another replica keeps the
        # other replica's instance label.
        events = self.docker.events({MANAGED: "true"})
        try:
            async for event in events:
                self.last_event = time.monotonic()
                watched = event.container_id in self._died
                if event.action == "oom" and watched:
                    self._oom.add(event.container_id)
                elif event.action == "kill" and watched:  # only watched ones: bounded
                    self._kills.add(event.container_id)
                elif event.action == "die" and watched:
                    future = self._died[event.container_id]
                    if not future.done():
                        future.set_result(event)
        finally:
            self._generation += 1
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]

    @staticmethod
    async def _engine(call: object) -> None:
        try:
            await call  # type: ignore[misc]
        except ContainerNotFound as exc:
            raise AttemptLost(str(exc)) from exc
