"""Phase `settle`: the verdict, the retry decision, metrics.json and run.json, and the final
transition (or the re-queue of the next attempt into its own attempt-<n>/ folder)."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters.ports import AttemptExit
from app.db import utcnow
from app.models import Run, RunState
from app.services.manifest import build_manifest
from app.services.runs import result_location, retry_decision, transition
from app.services.verdict import Outcome, harvest_notes, verdict
from app.workers.pipeline.context import Pipeline
from app.workers.pipeline.harvest import Harvest

log = logging.getLogger(__name__)


async def settle(p: Pipeline, run: Run, outcome: Outcome, exit: AttemptExit, done: Harvest) -> None:
    notes = harvest_notes(done.plan.limit_reason, done.plan.skipped_count, done.notes)
    disk_mb = p.config.disk_bytes(run) // (1024 * 1024) if p.config.disk_quota else None
    final, reason = verdict(outcome, exit, notes, disk_mb=disk_mb)
    where = result_location(run)

    async def upload(name: str, doc: dict[str, Any]) -> None:
        key = f"{where.prefix}{name}"
        body = io.BytesIO(json.dumps(doc, indent=2, default=str).encode())
        size = await p.store.upload_fileobj(
            where.bucket, key, body, content_type="application/json"
        )
        done.artifacts.append({"key": key, "size": size})

    metrics_doc = {"run_id": run.id, **done.report.to_json()}
    await upload("metrics.json", metrics_doc)
    manifest = build_manifest(
        run,
        final=final,
        reason=reason,
        exit=exit,
        events=await p.ledger.events(run.id),
        now=utcnow(),
        instance_id=p.config.instance_id,
        artifacts=done.artifacts,
        plan=done.plan,
        logs=done.logs,
        notes=done.notes,
    )
    await upload("run.json", manifest)
    values = {
        "exit_code": exit.code,
        "oom_killed": exit.oom_killed,
        "metrics": metrics_doc["summary"],
        "artifacts": done.artifacts,
        "logs": done.logs,
    }
    detail = reason or f"exit code {exit.code}"
    await p.ledger.write(run.id, lambda s, _r: record(s, run.id, final, reason, values, detail))


async def end_early(p: Pipeline, run_id: str, state: RunState, reason: str) -> None:
    """Ends (or retries) a run that did not reach a normal finish, whatever its state."""
    try:
        await p.ledger.write(run_id, lambda s, _r: record(s, run_id, state, reason, {}, None))
    except Exception:
        log.exception("run %s: could not record %s (%s)", run_id, state, reason)


async def record(
    session: AsyncSession,
    run_id: str,
    state: RunState,
    reason: str | None,
    values: dict[str, Any],
    detail: str | None,
) -> None:
    """The final transition, or a retry when the run's policy asks for one."""
    run = await session.get(Run, run_id, populate_existing=True)
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
        detail=f"attempt {run.attempt} ended {state.value}; attempt {run.attempt + 1} in {retry:g} s",
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
