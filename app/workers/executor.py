"""The per-run pipeline: image → container → inputs → start → wait → harvest → upload → cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import (
    AdapterError,
    BucketNotFound,
    ContainerError,
    ContainerNotFound,
    ContainerRuntime,
    ContainerSpec,
    ContainerState,
    ImageNotFound,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreRefused,
    RuntimeUnavailable,
)
from app.db import utcnow
from app.models import Run, RunState
from app.observability import current_run_id
from app.repositories import RunRepository
from app.services.environments import (
    EnvironmentImageRef,
    EnvironmentImages,
    EnvironmentUnavailable,
)
from app.services.outputs import OutputPlan
from app.services.runs import (
    log_name,
    output_name,
    reserved_output_paths,
    result_location,
    retry_decision,
    transition,
)
from app.services.s3uri import parse_s3_uri, safe_relative_path
from app.services.workspace import (
    ENTRYPOINT,
    WorkspaceTarWriter,
    write_workspace_skeleton,
)
from app.services.zipinputs import ZipRefused, copy_entry, plan_zip
from app.workers import harvest
from app.workers.harvest import Outcome
from app.workers.watcher import ContainerWatcher

log = logging.getLogger(__name__)

OUTCOMES = frozenset({"exited", "timed_out", "cancelled"})
T = TypeVar("T")
MANAGED_LABELS = ("taskdeploy.managed", "taskdeploy.instance", "taskdeploy.run_id")
STOP_WAIT_SECONDS = 30.0
STOP_GRACE_SECONDS = 5.0
MAX_KEY_BYTES = 1024  # S3's limit on an object key
MAX_INPUT_PATH_BYTES = 4096
CANCEL_POLL_SECONDS = 2.0


class RunAborted(Exception):
    """Ends the run in `state` with `reason` (infrastructure faults, bad inputs, cancellation)."""

    def __init__(self, state: RunState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    instance_id: str
    log_limit_bytes: int
    metrics_interval: float
    pids_limit: int
    tmp_size_mb: int
    max_input_bytes: int
    max_input_files: int
    max_output_bytes: int
    max_output_files: int
    spool_memory_bytes: int
    tmp_dir: Path
    job_network: str = "taskdeploy-jobs"
    disk_quota: bool = True  # cap each container's writable layer (the workspace) at its disk_mb
    default_disk_mb: int = 2048  # for runs submitted before disk limits existed
    nofile_limit: int = 4096
    prepare_deadline_seconds: float = 1800.0
    finish_deadline_seconds: float = 1800.0
    db_retry_seconds: float = 120.0


class RunExecutor:
    """Drives one run at a time through the pipeline; one instance serves all runs."""

    def __init__(
        self,
        *,
        config: ExecutorConfig,
        sessionmaker: async_sessionmaker[AsyncSession],
        runtime: ContainerRuntime,
        store: ObjectStore,
        environments: EnvironmentImages,
        watcher: ContainerWatcher,
        on_image_built: Callable[[], None] | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.sessionmaker = sessionmaker
        self.runtime = runtime
        self.store = store
        self.environments = environments
        self.watcher = watcher
        self.on_image_built = on_image_built
        self.on_settled = on_settled  # a run ended (or was requeued): its events wait in the outbox
        self.phases: dict[str, str] = {}  # run id -> preparing | running | finishing
        # The watcher's stream generation when each container started: an engine restart
        # ends the stream, so a killed container seen in a later generation was killed by it.
        self._started_generation: dict[str, int] = {}

    # ------------------------------------------------------------------ database
    async def _db(self, operation: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Runs `operation` in its own short transaction, retrying while the database is
        unreachable (a restart, a failover) up to the configured deadline."""
        delay = 0.5
        deadline = time.monotonic() + self.config.db_retry_seconds
        while True:
            try:
                async with self.sessionmaker() as session, session.begin():
                    return await operation(session)
            except (OperationalError, InterfaceError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except DBAPIError as exc:
                if not exc.connection_invalidated or time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _load(self, run_id: str) -> Run:
        run = await self._db(lambda session: RunRepository(session).get(run_id))
        if run is None:
            raise RunAborted(RunState.ERROR, "run vanished from the database")
        return run

    async def _update(self, run_id: str, **values: Any) -> None:
        await self._db(lambda session: RunRepository(session).update_fields(run_id, values))

    async def _transition(
        self,
        run_id: str,
        to: RunState,
        expected: RunState,
        detail: str | None = None,
        **values: Any,
    ) -> None:
        await self._db(
            lambda session: transition(
                session, run_id, to, expected=expected, detail=detail, **values
            )
        )

    async def _check_cancel(self, run_id: str, cancel: asyncio.Event) -> None:
        if cancel.is_set() or (await self._load(run_id)).cancel_requested:
            raise RunAborted(RunState.CANCELLED, "cancelled before the command started")

    # ------------------------------------------------------------------ pipeline
    async def execute(self, run_id: str, cancel: asyncio.Event) -> None:
        """Runs a claimed run to its end, or resumes one another process left half-way:
        preparing starts over, running is adopted, finishing is harvested again."""
        container_id: str | None = None
        keep_container = False
        current_run_id.set(run_id)  # every log line of this task names the run
        try:
            run = await self._load(run_id)
            state = RunState(run.state)
            log.info("executing (%s, attempt %d)", state.value, run.attempt)
            if state == RunState.PREPARING and await self._adopt_started(run):
                run = await self._load(run_id)
                state = RunState(run.state)
            if state == RunState.PREPARING:
                await self._remove_leftovers(run_id)  # a half-done preparation starts over
                self._phase(run_id, "preparing")
                try:
                    container_id = await asyncio.wait_for(
                        self._prepare(run, cancel), self.config.prepare_deadline_seconds
                    )
                except TimeoutError as exc:
                    raise RunAborted(
                        RunState.ERROR,
                        f"preparation took longer than {self.config.prepare_deadline_seconds:g} s",
                    ) from exc
                run = await self._load(run_id)
            else:
                found = await self._find_container(run_id)
                if found is None:
                    raise RunAborted(
                        RunState.ERROR, f"instance lost: the {state} run's container is gone"
                    )
                container_id = found.id
            if RunState(run.state) == RunState.RUNNING:
                self._phase(run_id, "running")
                outcome = await self._await_exit(run, container_id, cancel)
                await self._transition(run_id, RunState.FINISHING, RunState.RUNNING, outcome)
            else:
                outcome = await self._recorded_outcome(run_id)
            self._phase(run_id, "finishing")
            await self._finish(await self._load(run_id), container_id, outcome)
        except RunAborted as exc:
            await self._end_early(run_id, exc.state, exc.reason)
        except EnvironmentUnavailable as exc:
            await self._upload_build_log(run_id, exc.build_log)
            await self._end_early(run_id, RunState.ERROR, exc.reason)
        except AdapterError as exc:
            await self._end_early(run_id, RunState.ERROR, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            # Shutdown: the run keeps its state and its container; once this instance's
            # lease lapses, the next process (or another replica) resumes it.
            keep_container = True
            raise
        except Exception as exc:
            log.exception("run %s: unexpected failure", run_id)
            await self._end_early(
                run_id, RunState.ERROR, f"internal error: {type(exc).__name__}: {exc}"
            )
        finally:
            self.phases.pop(run_id, None)
            if self.on_settled is not None:
                self.on_settled()
            if container_id is not None:
                self.watcher.forget(container_id)
                self._started_generation.pop(container_id, None)
                if not keep_container:
                    await asyncio.shield(self._remove_container(container_id))

    def _phase(self, run_id: str, phase: str) -> None:
        self.phases[run_id] = phase

    async def _prepare(self, run: Run, cancel: asyncio.Event) -> str:
        """Environment image, container, inputs, start: returns the started container's id."""
        await self._check_cancel(run.id, cancel)
        image_ref = await self._environment(run)
        await self._check_cancel(run.id, cancel)
        how = "cached" if image_ref.cached else f"built ({image_ref.build_seconds:.1f} s)"
        with self._spool() as workspace_tar:
            await self._stage_inputs_retrying(run, workspace_tar)
            container_id = await self._create_container(run, image_ref.tag)
            try:
                await self._update(run.id, container_id=container_id)
                workspace_tar.seek(0)
                await self.runtime.put_archive(container_id, "/", workspace_tar)
                await self._check_cancel(run.id, cancel)
                self.watcher.expect(container_id)  # before start: the die event can't be missed
                self._started_generation[container_id] = self.watcher.generation
                await self.runtime.start(container_id)
            except BaseException:
                await asyncio.shield(self._remove_container(container_id))
                raise
        await self._transition(
            run.id,
            RunState.RUNNING,
            RunState.PREPARING,
            f"container {container_id[:12]} started from {how} environment image {image_ref.tag}",
        )
        return container_id

    async def _adopt_started(self, run: Run) -> bool:
        """A crash between starting the container and recording it leaves a `preparing` run
        whose command already runs: adopt it rather than start the command a second time."""
        found = await self._find_container(run.id)
        if found is None or found.started_at is None:
            return False
        await self._transition(
            run.id,
            RunState.RUNNING,
            RunState.PREPARING,
            f"adopted container {found.id[:12]}, started before the crash",
            started_at=found.started_at,
        )
        return True

    async def _find_container(self, run_id: str) -> ContainerState | None:
        found = await self.runtime.list_containers({"taskdeploy.run_id": run_id})
        return found[0] if found else None

    async def _remove_leftovers(self, run_id: str) -> None:
        for container in await self.runtime.list_containers({"taskdeploy.run_id": run_id}):
            await self._remove_container(container.id)

    async def _recorded_outcome(self, run_id: str) -> Outcome:
        """How the command ended, as recorded when the run entered `finishing`."""
        events = await self._db(lambda session: RunRepository(session).events(run_id))
        for event in reversed(events):
            if event.to_state == RunState.FINISHING.value and event.detail in OUTCOMES:
                return event.detail  # type: ignore[return-value]
        return "exited"

    async def _await_exit(self, run: Run, container_id: str, cancel: asyncio.Event) -> Outcome:
        """Waits for the container (adopted ones too), enforcing the time limit from the
        run's original start."""
        died = self.watcher.expect(container_id)
        self._started_generation.setdefault(container_id, self.watcher.generation)
        started = run.started_at or utcnow()
        remaining = run.timeout_seconds - (utcnow() - started).total_seconds()
        flag_watch = asyncio.create_task(self._watch_cancel_flag(run.id, cancel))
        try:
            return await self._wait(container_id, died, max(remaining, 0.0), cancel)
        finally:
            flag_watch.cancel()

    async def _remove_container(self, container_id: str) -> None:
        try:
            await self.runtime.remove(container_id)
        except AdapterError:
            log.warning("could not remove container %s", container_id, exc_info=True)

    async def _end_early(self, run_id: str, state: RunState, reason: str) -> None:
        """Ends (or retries) a run that did not reach a normal finish, whatever its state."""
        try:
            await self._db(lambda session: self._settle(session, run_id, state, reason, {}))
        except Exception:
            log.exception("run %s: could not record %s (%s)", run_id, state, reason)

    async def _settle(
        self,
        session: AsyncSession,
        run_id: str,
        state: RunState,
        reason: str | None,
        values: dict[str, Any],
        *,
        detail: str | None = None,
    ) -> None:
        """The final transition, or a retry when the run's policy asks for one."""
        run = await RunRepository(session).get(run_id)
        if run is None or RunState(run.state).terminal:
            return
        retry = retry_decision(run, state, values.get("exit_code"))
        summary = {
            "attempt": run.attempt,
            "state": state.value,
            "status_reason": reason,
            "exit_code": values.get("exit_code"),
            "oom_killed": values.get("oom_killed", False),
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": utcnow().isoformat(),
            "prefix": result_location(run).prefix,
        }
        if retry is None:
            if run.retry_policy:
                values["attempts"] = [*run.attempts, summary]
            await transition(
                session,
                run_id,
                state,
                detail=detail or reason or state.value,
                status_reason=reason,
                **values,
            )
            return
        await transition(
            session,
            run_id,
            RunState.QUEUED,
            detail=f"attempt {run.attempt} ended {state.value}; attempt {run.attempt + 1} "
            f"in {retry:g} s",
            attempt=run.attempt + 1,
            attempts=[*run.attempts, summary],
            not_before=utcnow() + timedelta(seconds=retry),
            status_reason=reason,
            exit_code=None,
            oom_killed=False,
            started_at=None,
            container_id=None,
            instance_id=None,
            lease_expires_at=None,
            cancel_requested=False,
        )

    @contextlib.contextmanager
    def _spool(self) -> Any:
        self.config.tmp_dir.mkdir(parents=True, exist_ok=True)
        spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by the context manager
            max_size=self.config.spool_memory_bytes, dir=str(self.config.tmp_dir)
        )
        try:
            yield spool
        finally:
            spool.close()

    # ------------------------------------------------------------------ 1. environment image
    async def _environment(self, run: Run) -> EnvironmentImageRef:
        key, base_id = await self.environments.resolve_key(run.image, run.packages)
        # Recorded before the build so the janitor never evicts an image a run is about to use.
        await self._update(run.id, env_key=key)
        ref = await self.environments.ensure(key, base_id, run.image, run.packages)
        await self._update(run.id, image_id=ref.image_id)
        if not ref.cached and self.on_image_built is not None:
            self.on_image_built()
        return ref

    async def _upload_build_log(self, run_id: str, build_log: str | None) -> None:
        if not build_log:
            return
        try:
            run = await self._load(run_id)
            where = result_location(run)
            await self.store.put_bytes(
                where.bucket,
                f"{where.prefix}build.log",
                build_log.encode(),
                content_type="text/plain",
            )
            await self._update(
                run_id,
                artifacts=[{"key": f"{where.prefix}build.log", "size": len(build_log.encode())}],
            )
        except Exception:
            log.warning("run %s: could not upload the build log", run_id, exc_info=True)

    # ------------------------------------------------------------------ 2. container
    async def _create_container(self, run: Run, image: str) -> str:
        cfg = self.config
        spec = ContainerSpec(
            image=image,
            command=["/bin/sh", ENTRYPOINT],
            env={
                **run.env,
                "INPUT_DIR": "/workspace/input",
                "OUTPUT_DIR": "/workspace/output",
                "TASKDEPLOY_RUN_ID": run.id,
                "TASKDEPLOY_ATTEMPT": str(run.attempt),
                "HOME": "/tmp",
                "TASKDEPLOY_METRICS_INTERVAL": f"{cfg.metrics_interval:g}",
                "TASKDEPLOY_LOG_LIMIT": str(cfg.log_limit_bytes),
            },
            labels={
                "taskdeploy.managed": "true",
                "taskdeploy.instance": cfg.instance_id,
                "taskdeploy.run_id": run.id,
            },
            nano_cpus=int(run.cpus * 1e9),
            memory_bytes=run.memory_mb * 1024 * 1024,
            pids_limit=cfg.pids_limit,
            network=cfg.job_network if run.network else None,
            log_max_bytes=1024 * 1024,
            disk_bytes=self._disk_bytes(run) if cfg.disk_quota else None,
            ulimits={
                "nofile": cfg.nofile_limit,
                # A backstop for an engine without a disk cap: no single file beyond it.
                "fsize": self._disk_bytes(run),
                "core": 0,
            },
            # mode: an image without /tmp gets a root-owned 0755 one from the build.
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={cfg.tmp_size_mb}m,mode=1777"},
            name=f"taskdeploy-{run.id}",
        )
        try:
            return await self.runtime.create_container(spec)
        except ImageNotFound:
            # The janitor may have evicted the image between lookup and create: build it again.
            ref = await self._environment(run)
            return await self.runtime.create_container(dataclasses.replace(spec, image=ref.tag))

    def _disk_bytes(self, run: Run) -> int:
        return (run.disk_mb or self.config.default_disk_mb) * 1024 * 1024

    # ------------------------------------------------------------------ 3. inputs
    async def _stage_inputs_retrying(self, run: Run, spool: BinaryIO) -> None:
        """Stages the inputs, starting over while the object store is unreachable (bounded by
        the preparation deadline); a missing bucket or key is final."""
        delay = 1.0
        while True:
            try:
                await self._stage_inputs(run, spool)
                return
            except ObjectStoreRefused:
                raise  # missing, denied, archived ...: final, the run ends with the reason
            except ObjectStoreError as exc:
                log.warning("run %s: staging failed (%s); retrying in %.0f s", run.id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
                spool.seek(0)
                spool.truncate()

    async def _stage_inputs(self, run: Run, spool: BinaryIO) -> None:
        writer = WorkspaceTarWriter(spool)
        write_workspace_skeleton(writer, run.command)
        if run.input_uri:
            source = parse_s3_uri(run.input_uri)
            files = total = 0
            try:
                async for obj in self.store.list_objects(source.bucket, source.prefix):
                    if obj.key.endswith("/"):
                        continue  # a "folder" marker, not a file
                    rel = safe_relative_path(obj.key, source.prefix)
                    if rel is None:
                        raise RunAborted(
                            RunState.ERROR, f"input key {obj.key[:300]!r} is not a safe file path"
                        )
                    if run.unpack_zip and rel.lower().endswith(".zip"):
                        added_files, added_bytes = await self._stage_zip(
                            source.bucket, obj, rel, writer, room=self._input_room(run) - total
                        )
                        files, total = files + added_files, total + added_bytes
                        self._check_input_caps(run, files, total)
                        continue
                    files += 1
                    total += obj.size
                    self._check_input_caps(run, files, total)
                    writer.begin_file(f"input/{rel}", obj.size)
                    written = await self._download_exactly(source.bucket, obj, spool)
                    writer.pad(written)
            except BucketNotFound as exc:
                raise RunAborted(
                    RunState.ERROR, f"input bucket {source.bucket!r} does not exist"
                ) from exc
            except ObjectStoreRefused as exc:
                raise RunAborted(RunState.ERROR, f"could not stage the inputs: {exc}") from exc
        writer.close()

    def _input_room(self, run: Run) -> int:
        """The bytes of input a run may stage: the operator's cap, and no more than its own
        workspace can hold (the rest of the disk limit is for what the job writes)."""
        return min(self.config.max_input_bytes, self._disk_bytes(run))

    def _check_input_caps(self, run: Run, files: int, total: int) -> None:
        if files > self.config.max_input_files or total > self.config.max_input_bytes:
            raise RunAborted(
                RunState.ERROR,
                f"inputs exceed the caps of {self.config.max_input_files} files / "
                f"{self.config.max_input_bytes} bytes",
            )
        if total > self._disk_bytes(run):
            raise RunAborted(
                RunState.ERROR,
                f"inputs of {total} bytes do not fit the run's disk limit of "
                f"{self._disk_bytes(run) // (1024 * 1024)} MiB (resources.disk_mb)",
            )

    async def _download_exactly(self, bucket: str, obj: ObjectInfo, fileobj: BinaryIO) -> int:
        """Downloads exactly the `obj.size` bytes the listing promised: an object that grew or
        shrank since (replaced meanwhile) ends the run instead of being written past its size."""
        written = 0
        async with contextlib.aclosing(self.store.stream_object(bucket, obj.key)) as chunks:
            async for chunk in chunks:
                written += len(chunk)
                if written > obj.size:
                    break
                await asyncio.to_thread(fileobj.write, chunk)
        if written != obj.size:
            raise RunAborted(RunState.ERROR, f"input {obj.key!r} changed while it was being staged")
        return written

    async def _stage_zip(
        self, bucket: str, obj: ObjectInfo, rel: str, writer: WorkspaceTarWriter, *, room: int
    ) -> tuple[int, int]:
        """Unpacks one .zip input into input/<rel without .zip>/, refusing the whole run when
        the archive breaks a rule (unsafe names, links, a bomb, more than `room` bytes)."""
        key = obj.key
        folder = f"input/{rel[: -len('.zip')]}"
        if obj.size > room:
            # Checked on the listing's size, before a byte of the archive is downloaded.
            raise RunAborted(
                RunState.ERROR,
                f"zip input {key!r} refused: the archive alone is {obj.size} bytes, more than "
                f"the {max(room, 0)} bytes of input room left",
            )
        with tempfile.TemporaryFile(dir=str(self.config.tmp_dir)) as archive:
            await self._download_exactly(bucket, obj, archive)
            try:
                return await asyncio.to_thread(_unpack_zip, archive, folder, writer, room)
            except (ZipRefused, zipfile.BadZipFile, UnicodeDecodeError, NotImplementedError) as exc:
                raise RunAborted(RunState.ERROR, f"zip input {key!r} refused: {exc}") from exc

    # ------------------------------------------------------------------ 6. wait
    async def _watch_cancel_flag(self, run_id: str, cancel: asyncio.Event) -> None:
        """A cancel recorded by another replica (or a schedule's replace policy) reaches this
        executor through the database; in-process cancels set the event directly."""
        while not cancel.is_set():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            try:
                if (await self._load(run_id)).cancel_requested:
                    cancel.set()
            except Exception:
                log.debug("run %s: cancel flag check failed", run_id, exc_info=True)

    async def _wait(
        self,
        container_id: str,
        died: asyncio.Future[Any],
        timeout: float,
        cancel: asyncio.Event,
    ) -> Outcome:
        """The container's `die` event, `wait` as the fallback, the time limit or a cancel,
        whichever comes first. While the engine is unreachable it looks again with backoff."""
        loop = asyncio.get_running_loop()
        time_limit = loop.time() + timeout
        delay = 1.0
        while True:
            waited = asyncio.ensure_future(self.runtime.wait(container_id))
            cancelled = asyncio.ensure_future(cancel.wait())
            try:
                done, _ = await asyncio.wait(
                    {died, waited, cancelled},
                    timeout=max(time_limit - loop.time(), 0.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                cancelled.cancel()
                if not waited.done():
                    waited.cancel()
            if died in done:
                return "exited"
            if waited in done:
                failure = waited.exception()
                if failure is None:
                    return "exited"
                if isinstance(failure, ContainerNotFound):
                    raise RunAborted(RunState.ERROR, "instance lost: the container disappeared")
                log.warning(
                    "wait on %s failed (%s); retrying in %.0f s", container_id, failure, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
                continue
            outcome: Outcome = "cancelled" if cancelled in done else "timed_out"
            await self._stop(container_id, died)
            return outcome

    async def _stop(self, container_id: str, died: asyncio.Future[Any]) -> None:
        """SIGTERM first so the wrapper can flush the logs and write its final sample, then
        SIGKILL whatever is still running after the grace period."""
        await self.runtime.kill(container_id, "SIGTERM")
        waited = asyncio.ensure_future(self.runtime.wait(container_id))
        try:
            done, _ = await asyncio.wait(
                {died, waited}, timeout=STOP_GRACE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                await self.runtime.kill(container_id, "SIGKILL")
                await asyncio.wait_for(asyncio.shield(waited), STOP_WAIT_SECONDS)
        finally:
            if not waited.done():
                waited.cancel()

    # ------------------------------------------------------------------ 7. harvest and upload
    async def _finish(self, run: Run, container_id: str, outcome: Outcome) -> None:
        """Harvests and uploads, retrying while Docker or the object store is unreachable
        (uploads overwrite the same keys, so a retry leaves no duplicates)."""
        deadline = time.monotonic() + self.config.finish_deadline_seconds
        delay = 1.0
        while True:
            try:
                await self._harvest_and_settle(run, container_id, outcome)
                return
            except BucketNotFound as exc:
                where = result_location(run)
                raise RunAborted(
                    RunState.ERROR, f"output bucket {where.bucket!r} does not exist"
                ) from exc
            except ObjectStoreRefused as exc:
                raise RunAborted(RunState.ERROR, f"could not store the results: {exc}") from exc
            except (ObjectStoreError, RuntimeUnavailable, ContainerError) as exc:
                # ContainerError: the engine is busy restarting ("database not open" ...).
                if time.monotonic() + delay > deadline:
                    raise RunAborted(RunState.ERROR, f"could not store the results: {exc}") from exc
                log.warning("run %s: harvest failed (%s); retrying in %.0f s", run.id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    async def _harvest_and_settle(self, run: Run, container_id: str, outcome: Outcome) -> None:
        state = await self.runtime.inspect(container_id)
        if state is None:
            raise RunAborted(RunState.ERROR, "instance lost: the container vanished before harvest")
        exit_code = state.exit_code
        oom = state.oom_killed or container_id in self.watcher.oom_seen
        where = result_location(run)
        artifacts: list[dict[str, Any]] = []

        async def upload(rel: str, fileobj: BinaryIO, content_type: str | None = None) -> None:
            key = f"{where.prefix}{rel}"
            size = await self.store.upload_fileobj(
                where.bucket, key, fileobj, content_type=content_type
            )
            artifacts.append({"key": key, "size": size})

        meta = await harvest.harvest_meta(
            self.runtime,
            container_id,
            log_limit=self.config.log_limit_bytes,
            log_names={stream: log_name(run, stream) for stream in ("stdout", "stderr")},
            upload=upload,
        )
        for note in meta.notes:
            log.warning("run %s: %s", run.id, note)
        with self._spool() as spool:
            plan = await harvest.harvest_outputs(
                self.runtime,
                container_id,
                spool,
                max_files=self.config.max_output_files,
                max_bytes=self.config.max_output_bytes,
                max_key_bytes=MAX_KEY_BYTES - len(f"{where.prefix}output/".encode()),
                reserved=reserved_output_paths(run),
            )
            for member in plan.files:
                body = harvest.output_body(spool, member.offset, member.size)
                await upload(output_name(run, member.path), body)
        # The service's own observations only: a line the job wrote never decides. The engine
        # reports every kill and stop it is asked for; the service's own stops end in
        # timed_out or cancelled, so one seen for an exited run came from outside (docker
        # stop/kill by hand), as does a stop by an engine restart (the event stream ended).
        engine_restarted = (
            not oom
            and exit_code in (137, 143)
            and self.watcher.generation != self._started_generation.get(container_id)
        )
        stopped_outside = outcome == "exited" and (
            engine_restarted or container_id in self.watcher.kills_seen
        )
        final, reason = harvest.verdict(
            outcome, exit_code, oom, plan, meta.notes, stopped_outside=stopped_outside
        )
        if final == RunState.FAILED and not oom:
            reason = "; ".join(filter(None, [reason, await self._disk_note(run, container_id)]))
        metrics_doc = {"run_id": run.id, **meta.report.to_json()}
        await upload("metrics.json", _json_file(metrics_doc), "application/json")
        manifest = await self._manifest(
            run, final, reason, exit_code, oom, artifacts, plan, meta.logs
        )
        manifest["harvest_notes"] = meta.notes
        await upload("run.json", _json_file(manifest), "application/json")
        values = {
            "exit_code": exit_code,
            "oom_killed": oom,
            "metrics": metrics_doc["summary"],
            "artifacts": artifacts,
            "logs": meta.logs,
        }
        await self._db(
            lambda session: self._settle(
                session, run.id, final, reason, values, detail=reason or f"exit code {exit_code}"
            )
        )

    async def _disk_note(self, run: Run, container_id: str) -> str | None:
        """Says so when a failed command had filled its workspace's disk limit (measured by the
        engine: what the job wrote cannot be trusted to tell)."""
        if not self.config.disk_quota:
            return None
        cap = self._disk_bytes(run)
        try:
            # Full means: not even 1 % more (at least 1 MiB) fits any more.
            if await self.runtime.has_disk_room(container_id, max(cap // 100, 1024 * 1024)):
                return None
        except AdapterError:
            return None
        return f"the job filled its disk limit of {cap // (1024 * 1024)} MiB (resources.disk_mb)"

    async def _manifest(
        self,
        run: Run,
        final: RunState,
        reason: str | None,
        exit_code: int | None,
        oom: bool,
        artifacts: list[dict[str, Any]],
        plan: OutputPlan,
        logs: dict[str, Any],
    ) -> dict[str, Any]:
        async with self.sessionmaker() as session:
            events = await RunRepository(session).events(run.id)
        states = [{"state": e.to_state, "at": e.at.isoformat(), "detail": e.detail} for e in events]
        states.append({"state": final.value, "at": utcnow().isoformat(), "detail": reason})
        return {
            "run_id": run.id,
            "request": {
                "command": run.command,
                "packages": run.packages,
                "image": run.image,
                "input": run.input_uri,
                "output": run.output_uri,
                "resources": {"cpus": run.cpus, "memory_mb": run.memory_mb},
                "timeout_seconds": run.timeout_seconds,
                "env": run.env,
                "network": run.network,
            },
            "state": final.value,
            "status_reason": reason,
            "states": states,
            "exit_code": exit_code,
            "oom_killed": oom,
            "image": {"base": run.image, "environment_image_id": run.image_id, "key": run.env_key},
            "instance_id": self.config.instance_id,
            "logs": logs,
            "artifacts": list(artifacts),
            "skipped_outputs": [
                {"path": s.path, "kind": s.kind, "reason": s.reason} for s in plan.skipped
            ],
            "skipped_outputs_count": plan.skipped_count,
        }


def _json_file(doc: dict[str, Any]) -> BinaryIO:
    return _bytes_file(json.dumps(doc, indent=2, default=str).encode())


def _bytes_file(data: bytes) -> BinaryIO:
    return io.BytesIO(data)


def _unpack_zip(
    archive: BinaryIO, folder: str, writer: WorkspaceTarWriter, room: int
) -> tuple[int, int]:
    """Blocking: streams a checked archive's entries into the workspace tar."""
    with zipfile.ZipFile(archive) as zf:
        entries = plan_zip(zf, max_total_bytes=max(room, 0))
        total = 0
        for entry in entries:
            name = f"{folder}/{entry.path}"
            if len(name.encode()) > MAX_INPUT_PATH_BYTES:
                raise ZipRefused(f"zip entry {entry.path!r} makes a path that is too long")
            writer.begin_file(name, entry.size)
            written = copy_entry(zf, entry, writer.fileobj)
            writer.pad(written)
            total += written
    return len(entries), total
