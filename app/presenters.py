"""How runs, schedules and webhooks look from outside: the API's answers (and, for runs, the
webhook events) are made here and nowhere else."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db import utcnow
from app.models import (
    Run,
    RunState,
    Schedule,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSigningSecret,
)
from app.schemas.runs import MetricsSummaryOut, ResourcesOut, RunLinks, RunMetricsOut, RunOut
from app.schemas.schedules import ScheduleOut
from app.schemas.webhooks import WebhookAttemptOut, WebhookDeliveryOut, WebhookSecretOut
from app.services.cron import describe_cron, describe_local, parse_cron, preview_fire_times

PREVIEW_COUNT = 5  # fire times a schedule shows


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


def present_metrics(run: Run, doc: dict[str, Any]) -> RunMetricsOut:
    """A run's metrics document (metrics.json, or the live one) as the API shows it."""
    return RunMetricsOut(
        run_id=run.id,
        source=str(doc.get("source", "none")),
        summary=doc.get("summary"),
        series=doc.get("series", []),
        live=bool(doc.get("live", False)),
    )


def upcoming_fires(schedule: Schedule, count: int = PREVIEW_COUNT) -> list[datetime]:
    """The schedule's next fire times, from its stored next fire (or from now while paused)."""
    spec = parse_cron(schedule.cron, schedule.timezone)
    return preview_fire_times(spec, schedule.next_fire_at, utcnow(), count)


def present_schedule(schedule: Schedule) -> ScheduleOut:
    return ScheduleOut(
        id=schedule.id,
        owner=schedule.owner,
        name=schedule.name,
        cron=schedule.cron,
        description=describe_cron(schedule.cron),
        timezone=schedule.timezone,
        run=schedule.run_template,
        concurrency_policy=schedule.concurrency_policy,
        misfire_policy=schedule.misfire_policy,
        starting_deadline_seconds=schedule.starting_deadline_seconds,
        paused=schedule.paused,
        next_fire_at=schedule.next_fire_at,
        next_fire_at_local=(
            describe_local(schedule.next_fire_at, schedule.timezone)
            if schedule.next_fire_at
            else None
        ),
        next_fire_times=upcoming_fires(schedule),
        last_fired_at=schedule.last_fired_at,
        created_at=schedule.created_at,
        updated_at=schedule.updated_at,
    )


def present_delivery(
    delivery: WebhookDelivery, attempts: list[WebhookAttempt]
) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=delivery.id,
        event_type=delivery.event_type,
        url=delivery.url,
        status=delivery.status,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
        last_error=delivery.last_error,
        attempts=[WebhookAttemptOut.model_validate(a) for a in attempts],
    )


def present_secret(row: WebhookSigningSecret) -> WebhookSecretOut:
    return WebhookSecretOut(
        owner=row.owner,
        secret=row.secret,
        created_at=row.created_at,
        rotated_at=row.rotated_at,
        previous_expires_at=row.previous_expires_at,
    )
