"""Phase `prepare`: the run's environment image, found or built (shared by concurrent runs)."""

from __future__ import annotations

import logging

from app.services.environments import EnvironmentImageRef
from app.services.runs import result_location
from app.workers.pipeline.context import Pipeline, RunContext

log = logging.getLogger(__name__)


async def environment(p: Pipeline, ctx: RunContext) -> EnvironmentImageRef:
    """Its key is recorded before the build, and pinned before it is looked up, so the janitor
    never evicts an image a run is about to use; `release_pins` ends the pins."""
    run = ctx.current
    key, base_id = await p.environments.resolve_key(run.image, run.packages)
    await p.ledger.update(run.id, env_key=key)
    await p.environments.pin(key)  # released once the attempt exists (or the run ends)
    ctx.pins.append(key)
    ref = await p.environments.ensure(key, base_id, run.image, run.packages)
    await p.ledger.update(run.id, image_id=ref.image_id)
    if not ref.cached and p.on_image_built is not None:
        p.on_image_built()
    return ref


async def upload_build_log(p: Pipeline, run_id: str, build_log: str | None) -> None:
    if not build_log:
        return
    try:
        run = await p.ledger.load(run_id)
        where = result_location(run)
        data = build_log.encode()
        key = f"{where.prefix}build.log"
        await p.store.put_bytes(where.bucket, key, data, content_type="text/plain")
        await p.ledger.update(run_id, artifacts=[{"key": key, "size": len(data)}])
    except Exception:
        log.warning("run %s: could not upload the build log", run_id, exc_info=True)


def release_pins(p: Pipeline, ctx: RunContext) -> None:
    """The attempt exists (and holds its image), or the run ended: the images may go."""
    while ctx.pins:
        p.environments.unpin(ctx.pins.pop())
