"""How runs look from outside: the API's answers and webhook events share these."""

from __future__ import annotations

from app.models import Run, RunState
from app.schemas.runs import MetricsSummaryOut, ResourcesOut, RunLinks, RunOut


def unscoped_idempotency_key(stored: str | None) -> str | None:
    """Stored keys are "<owner>:<key>" (keys are per owner); callers see their own key."""
    return stored.split(":", 1)[1] if stored and ":" in stored else stored


def lateness_seconds(run: Run) -> float | None:
    if run.scheduled_for is None:
        return None
    return max(0.0, (run.created_at - run.scheduled_for).total_seconds())


def present_run(run: Run) -> RunOut:
    base = f"/v1/runs/{run.id}"
    return RunOut(
        id=run.id,
        owner=run.owner,
        state=RunState(run.state),
        status_reason=run.status_reason,
        command=run.command,
        packages=run.packages,
        image=run.image,
        input=run.input_uri,
        output=run.output_uri,
        resources=ResourcesOut(cpus=run.cpus, memory_mb=run.memory_mb, disk_mb=run.disk_mb),
        timeout_seconds=run.timeout_seconds,
        env=run.env,
        network=run.network,
        unpack_zip=run.unpack_zip,
        callback_url=run.callback_url,
        idempotency_key=unscoped_idempotency_key(run.idempotency_key),
        exit_code=run.exit_code,
        oom_killed=run.oom_killed,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        image_id=run.image_id,
        metrics=MetricsSummaryOut.model_validate(run.metrics) if run.metrics else None,
        artifacts=run.artifacts or [],
        logs=run.logs,
        attempt=run.attempt,
        attempts=run.attempts or [],
        retry=run.retry_policy,
        schedule_id=run.schedule_id,
        scheduled_for=run.scheduled_for,
        lateness_seconds=lateness_seconds(run),
        links=RunLinks(
            self=base, logs=f"{base}/logs", events=f"{base}/events", metrics=f"{base}/metrics"
        ),
    )
