"""The run lifecycle over its phases: prepare → stage/start → wait → harvest → settle.

A run is resumed where another process left it: `preparing` starts over (or adopts an attempt
that had already started), `running` is adopted, `finishing` is harvested again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import (
    AdapterError,
    AttemptExit,
    AttemptLost,
    AttemptRef,
    BucketNotFound,
    ContainerError,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreRefused,
    RunBackend,
    RuntimeUnavailable,
)
from app.models import Run, RunState
from app.observability import current_run_id
from app.services.environments import EnvironmentImages, EnvironmentUnavailable
from app.services.runs import result_location
from app.services.verdict import OUTCOMES, Outcome
from app.workers.pipeline import harvest, prepare, settle, start, wait
from app.workers.pipeline.context import (
    LeaseLost,
    Ledger,
    Pipeline,
    PipelineConfig,
    RunAborted,
    RunContext,
)

log = logging.getLogger(__name__)


class RunOrchestrator:
    """Drives runs through the pipeline; one instance serves all runs of a process."""

    def __init__(
        self,
        *,
        config: PipelineConfig,
        sessionmaker: async_sessionmaker[AsyncSession],
        backend: RunBackend,
        store: ObjectStore,
        environments: EnvironmentImages,
        on_image_built: Callable[[], None] | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.p = Pipeline(
            config, Ledger(sessionmaker, config), backend, store, environments, on_image_built
        )
        self.on_settled = on_settled  # a run ended (or was requeued): its events wait in the outbox
        self.phases = self.p.phases

    async def execute(self, run_id: str, cancel: asyncio.Event) -> None:
        """Runs a claimed run to its end, or resumes one another process left half-way."""
        p, ctx = self.p, RunContext(run_id, cancel)
        current_run_id.set(run_id)  # every log line of this task names the run
        try:
            await self._lifecycle(ctx)
        except RunAborted as exc:
            await settle.end_early(p, run_id, exc.state, exc.reason)
        except EnvironmentUnavailable as exc:
            await prepare.upload_build_log(p, run_id, exc.build_log)
            await settle.end_early(p, run_id, RunState.ERROR, exc.reason)
        except LeaseLost as exc:
            log.warning("run %s: %s; leaving it to its new owner", run_id, exc)
            ctx.keep_attempt = True
        except AdapterError as exc:
            await settle.end_early(p, run_id, RunState.ERROR, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            # Shutdown: the run keeps its state and its attempt; once this instance's lease
            # lapses, the next process (or another replica) resumes it.
            ctx.keep_attempt = True
            raise
        except Exception as exc:
            log.exception("run %s: unexpected failure", run_id)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            await settle.end_early(p, run_id, RunState.ERROR, reason)
        finally:
            prepare.release_pins(p, ctx)
            p.phases.pop(run_id, None)
            if self.on_settled is not None:
                self.on_settled()
            if ctx.ref is not None and not ctx.keep_attempt:
                await asyncio.shield(start.forget(p, ctx.ref))

    async def _lifecycle(self, ctx: RunContext) -> None:
        p = self.p
        ctx.run = await p.ledger.load(ctx.run_id)
        state = RunState(ctx.run.state)
        log.info("executing (%s, attempt %d)", state.value, ctx.run.attempt)
        if state == RunState.PREPARING and await start.adopt_started(p, ctx):
            ctx.run = await p.ledger.load(ctx.run_id)
            state = RunState(ctx.run.state)
        if state == RunState.PREPARING:
            await start.forget_leftovers(p, ctx.run_id)  # a half-done preparation starts over
            p.phases[ctx.run_id] = "preparing"
            await self._prepare(ctx)
            ctx.run = await p.ledger.load(ctx.run_id)
        elif ctx.ref is None:
            await start.adopt(p, ctx, state)
        assert ctx.ref is not None
        if RunState(ctx.run.state) == RunState.RUNNING:
            p.phases[ctx.run_id] = "running"
            outcome, ended = await wait.await_exit(p, ctx, ctx.ref)
            await p.ledger.transition(ctx.run_id, RunState.FINISHING, RunState.RUNNING, outcome)
        else:
            outcome = await self._recorded_outcome(ctx.run_id)
            ended = await self._exit_of(ctx.ref)
        p.phases[ctx.run_id] = "finishing"
        await self._finish(await p.ledger.load(ctx.run_id), ctx.ref, outcome, ended)

    async def _prepare(self, ctx: RunContext) -> None:
        """Environment image, inputs, launch, start, within the preparation deadline."""
        p = self.p
        deadline = p.config.prepare_deadline_seconds

        async def phases() -> None:
            await start.check_cancel(p, ctx)
            image = await prepare.environment(p, ctx)
            await start.check_cancel(p, ctx)
            await start.start(p, ctx, image)

        try:
            await asyncio.wait_for(phases(), deadline)
        except TimeoutError as exc:
            raise RunAborted(
                RunState.ERROR, f"preparation took longer than {deadline:g} s"
            ) from exc

    async def _recorded_outcome(self, run_id: str) -> Outcome:
        """How the command ended, as recorded when the run entered `finishing`."""
        for event in reversed(await self.p.ledger.events(run_id)):
            if event.to_state == RunState.FINISHING.value and event.detail in OUTCOMES:
                return event.detail  # type: ignore[return-value]
        return "exited"

    async def _exit_of(self, ref: AttemptRef) -> AttemptExit:
        """The exit of an attempt adopted in `finishing` (it ended before the restart)."""
        try:
            ended = await self.p.backend.wait(ref, self.p.config.stop_wait_seconds)
        except AttemptLost as exc:
            raise RunAborted(
                RunState.ERROR, "instance lost: the container vanished before harvest"
            ) from exc
        return ended or AttemptExit(code=None)

    async def _finish(
        self, run: Run, ref: AttemptRef, outcome: Outcome, ended: AttemptExit
    ) -> None:
        """Harvests and settles, retrying while the backend or the object store is unreachable
        (uploads overwrite the same keys, so a retry leaves no duplicates)."""
        p = self.p
        backoff = p.config.backoff(p.config.io_backoff, p.config.finish_deadline_seconds)
        while True:
            try:
                done = await harvest.harvest(p, run, ref)
                await settle.settle(p, run, outcome, ended, done)
                return
            except AttemptLost as exc:
                raise RunAborted(
                    RunState.ERROR, "instance lost: the container vanished before harvest"
                ) from exc
            except BucketNotFound as exc:
                where = result_location(run)
                raise RunAborted(
                    RunState.ERROR, f"output bucket {where.bucket!r} does not exist"
                ) from exc
            except ObjectStoreRefused as exc:
                raise RunAborted(RunState.ERROR, f"could not store the results: {exc}") from exc
            except (ObjectStoreError, RuntimeUnavailable, ContainerError) as exc:
                # ContainerError: the engine is busy restarting ("database not open" ...).
                if backoff.exhausted:
                    raise RunAborted(RunState.ERROR, f"could not store the results: {exc}") from exc
                log.warning(
                    "run %s: harvest failed (%s); retrying in %.0f s", run.id, exc, backoff.delay
                )
                await backoff.wait()
