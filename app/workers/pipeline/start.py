"""Phase `start`: launch the attempt with its staged workspace and start it; or adopt an
attempt a previous process already started; and forget what a half-done preparation left."""

from __future__ import annotations

import asyncio
import logging

from app.adapters.ports import (
    INPUT_DIR,
    OUTPUT_DIR,
    AttemptRef,
    AttemptSpec,
    ImageNotFound,
    ObjectStoreError,
    ObjectStoreRefused,
)
from app.models import Run, RunState
from app.services.environments import EnvironmentImageRef
from app.workers.pipeline import prepare
from app.workers.pipeline.context import Pipeline, RunAborted, RunContext
from app.workers.pipeline.stage import Inputs

log = logging.getLogger(__name__)


def attempt_spec(p: Pipeline, run: Run, image: str) -> AttemptSpec:
    cfg = p.config
    disk = cfg.disk_bytes(run)
    return AttemptSpec(
        run_id=run.id,
        attempt=run.attempt,
        instance_id=cfg.instance_id,
        image=image,
        command=run.command,
        env={
            **run.env,
            "INPUT_DIR": INPUT_DIR,
            "OUTPUT_DIR": OUTPUT_DIR,
            "TASKDEPLOY_RUN_ID": run.id,
            "TASKDEPLOY_ATTEMPT": str(run.attempt),
            "HOME": "/tmp",
            "TASKDEPLOY_METRICS_INTERVAL": f"{cfg.metrics_interval:g}",
            "TASKDEPLOY_LOG_LIMIT": str(cfg.log_limit_bytes),
        },
        nano_cpus=int(run.cpus * 1e9),
        memory_bytes=run.memory_mb * 1024 * 1024,
        pids_limit=cfg.pids_limit,
        tmp_bytes=cfg.tmp_size_mb * 1024 * 1024,
        nofile=cfg.nofile_limit,
        file_size_bytes=disk,
        disk_bytes=disk if cfg.disk_quota else None,
        network=cfg.job_network if run.network else None,
    )


async def check_cancel(p: Pipeline, ctx: RunContext) -> None:
    if ctx.cancel.is_set() or (await p.ledger.load(ctx.run_id)).cancel_requested:
        raise RunAborted(RunState.CANCELLED, "cancelled before the command started")


async def launch(p: Pipeline, ctx: RunContext, image: EnvironmentImageRef) -> AttemptRef:
    """Stages the inputs and launches the attempt, starting over while the object store is
    unreachable (bounded by the preparation deadline); a missing bucket or key is final. An
    image gone meanwhile (evicted by another service on the engine) is made again, once."""
    backoff = p.config.backoff(p.config.io_backoff)
    rebuilt = False
    while True:
        inputs = Inputs(p.config, p.store, ctx.current)
        try:
            files = await inputs.files()
            return await p.backend.launch(attempt_spec(p, ctx.current, image.tag), files)
        except ObjectStoreRefused:
            raise  # missing, denied, archived ...: final, the run ends with the reason
        except ObjectStoreError as exc:
            log.warning(
                "run %s: staging failed (%s); retrying in %.0f s", ctx.run_id, exc, backoff.delay
            )
            await backoff.wait()
        except ImageNotFound:
            if rebuilt:
                raise
            rebuilt = True
            image = await prepare.environment(p, ctx)
        finally:
            inputs.close()


async def start(p: Pipeline, ctx: RunContext, image: EnvironmentImageRef) -> None:
    """Launches, records the attempt, starts it and records `running`."""
    ref = await launch(p, ctx, image)
    prepare.release_pins(p, ctx)  # the attempt exists now, and holds its image
    ctx.ref = ref
    try:
        await p.ledger.update(ctx.run_id, container_id=ref.handle)
        await check_cancel(p, ctx)
        await p.backend.start(ref)
    except BaseException:
        ctx.ref = None
        await asyncio.shield(forget(p, ref))
        raise
    how = "cached" if image.cached else f"built ({image.build_seconds:.1f} s)"
    await p.ledger.transition(
        ctx.run_id,
        RunState.RUNNING,
        RunState.PREPARING,
        f"container {ref.handle[:12]} started from {how} environment image {image.tag}",
    )


async def adopt_started(p: Pipeline, ctx: RunContext) -> bool:
    """A crash between starting the attempt and recording it leaves a `preparing` run whose
    command already runs: adopt it rather than start the command a second time."""
    found = await p.backend.find(ctx.run_id)
    started = [info for info in found if info.started_at is not None]
    if not started:
        return False
    info = started[0]
    await p.ledger.transition(
        ctx.run_id,
        RunState.RUNNING,
        RunState.PREPARING,
        f"adopted container {info.ref.handle[:12]}, started before the crash",
        started_at=info.started_at,
        container_id=info.ref.handle,
    )
    ctx.ref = info.ref
    return True


async def adopt(p: Pipeline, ctx: RunContext, state: RunState) -> AttemptRef:
    """The attempt of a `running` or `finishing` run another process left."""
    found = await p.backend.find(ctx.run_id)
    if not found:
        raise RunAborted(RunState.ERROR, f"instance lost: the {state} run's container is gone")
    ctx.ref = found[0].ref
    return found[0].ref


async def forget_leftovers(p: Pipeline, run_id: str) -> None:
    for info in await p.backend.find(run_id):
        await forget(p, info.ref)


async def forget(p: Pipeline, ref: AttemptRef) -> None:
    try:
        await p.backend.forget(ref)
    except Exception:
        log.warning("could not remove container %s", ref.handle, exc_info=True)
