"""Phase `wait`: the attempt's exit, its time limit (counted from its first start, adopted
attempts too), a cancel, or a lost lease, whichever comes first. While the backend is
unreachable it looks again with backoff."""

from __future__ import annotations

import asyncio
import logging

from app.adapters.ports import AdapterError, AttemptExit, AttemptLost, AttemptRef
from app.db import utcnow
from app.models import RunState
from app.services.verdict import Outcome
from app.workers.pipeline.context import Pipeline, RunAborted, RunContext

log = logging.getLogger(__name__)


async def watch_cancel_flag(p: Pipeline, ctx: RunContext) -> None:
    """A cancel recorded by another replica (or a schedule's replace policy) reaches this
    process through the database; in-process cancels set the event directly."""
    while not ctx.cancel.is_set():
        await asyncio.sleep(p.config.cancel_poll_seconds)
        try:
            if (await p.ledger.load(ctx.run_id)).cancel_requested:
                ctx.cancel.set()
        except Exception:
            log.debug("run %s: cancel flag check failed", ctx.run_id, exc_info=True)


async def await_exit(p: Pipeline, ctx: RunContext, ref: AttemptRef) -> tuple[Outcome, AttemptExit]:
    run = ctx.current
    started = run.started_at or utcnow()
    remaining = run.timeout_seconds - (utcnow() - started).total_seconds()
    flag_watch = asyncio.create_task(watch_cancel_flag(p, ctx))
    try:
        outcome = await _first_end(p, ctx, ref, max(remaining, 0.0))
    finally:
        flag_watch.cancel()
    if isinstance(outcome, AttemptExit):
        return "exited", outcome
    await p.backend.stop(ref, p.config.stop_grace_seconds)
    ended = await p.backend.wait(ref, p.config.stop_wait_seconds)
    return outcome, ended or AttemptExit(code=None)


async def _first_end(
    p: Pipeline, ctx: RunContext, ref: AttemptRef, timeout: float
) -> AttemptExit | Outcome:
    loop = asyncio.get_running_loop()
    time_limit = loop.time() + timeout
    backoff = p.config.backoff(p.config.io_backoff)
    while True:
        waited = asyncio.ensure_future(p.backend.wait(ref, max(time_limit - loop.time(), 0.0)))
        cancelled = asyncio.ensure_future(ctx.cancel.wait())
        try:
            done, _ = await asyncio.wait({waited, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not waited.done():
                waited.cancel()
        if waited in done:  # an exit that raced the cancel wins: it happened first
            failure = waited.exception()
            if failure is None:
                return waited.result() or "timed_out"
            if isinstance(failure, AttemptLost):
                raise RunAborted(RunState.ERROR, "instance lost: the container disappeared")
            if not isinstance(failure, AdapterError):
                raise failure
            log.warning(
                "wait on %s failed (%s); retrying in %.0f s", ref.handle, failure, backoff.delay
            )
            await backoff.wait()
            continue
        return "cancelled"
