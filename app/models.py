"""ORM models: runs, their state-change events, and the environment-image cache index."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime, utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit one.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class RunState(StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    FINISHING = "finishing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    ERROR = "error"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT, RunState.CANCELLED, RunState.ERROR}
)
ACTIVE_STATES = frozenset({RunState.PREPARING, RunState.RUNNING, RunState.FINISHING})


def new_id() -> str:
    return str(uuid.uuid4())


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100), index=True, default="")
    state: Mapped[RunState] = mapped_column(String(16), index=True, default=RunState.QUEUED)
    status_reason: Mapped[str | None] = mapped_column(Text)

    # --- the request
    command: Mapped[str] = mapped_column(Text)
    packages: Mapped[list[str]] = mapped_column(JSON, default=list)
    image: Mapped[str] = mapped_column(String(255))
    input_uri: Mapped[str | None] = mapped_column(Text)
    output_uri: Mapped[str] = mapped_column(Text)
    cpus: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int | None] = mapped_column(Integer)  # null: submitted before disk limits
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    network: Mapped[bool] = mapped_column(Boolean, default=False)
    unpack_zip: Mapped[bool] = mapped_column(Boolean, default=False)
    callback_url: Mapped[str | None] = mapped_column(Text)
    # The replaced service's layout (seed-compatible endpoints): results straight under this
    # prefix, logs named stdout.txt / stderr.txt, output files without an output/ folder.
    legacy_prefix: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))

    # --- what happened
    exit_code: Mapped[int | None] = mapped_column(Integer)
    oom_killed: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    instance_id: Mapped[str | None] = mapped_column(String(255))
    container_id: Mapped[str | None] = mapped_column(String(80))
    env_key: Mapped[str | None] = mapped_column(String(64), index=True)
    image_id: Mapped[str | None] = mapped_column(String(80))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    artifacts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    logs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The replica executing the run holds a lease it renews; an expired lease lets any
    # replica recover the run.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Retries: the attempt being run, the policy, earlier attempts' summaries, and when the
    # next attempt may start (backoff).
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    retry_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set for runs a schedule created; scheduled_for is null for a manual trigger.
    schedule_id: Mapped[str | None] = mapped_column(String(36), index=True)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)

    events: Mapped[list[RunEvent]] = relationship(
        back_populates="run", order_by="RunEvent.id", cascade="all, delete-orphan", lazy="raise"
    )

    __table_args__ = (
        Index("ix_runs_created_at_id", "created_at", "id"),
        # Exactly one run per schedule and fire time, whichever replica fires it.
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_runs_schedule_fire"),
    )


class LegacyPrefixClaim(Base):
    """A legacy result prefix (the old layout's fixed folder in a bucket) and the one run that
    writes there: a prefix is claimed once, so no legacy run overwrites another's results."""

    __tablename__ = "legacy_prefix_claims"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(63))
    prefix: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("bucket", "prefix", name="uq_legacy_prefix_claims_prefix"),)


class RunEvent(Base):
    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="events", lazy="raise")


class ConcurrencyPolicy(StrEnum):
    ALLOW = "allow"
    FORBID = "forbid"
    REPLACE = "replace"


class Schedule(Base):
    """A run template fired on a cron expression in a time zone."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100), index=True, default="")
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    run_template: Mapped[dict[str, Any]] = mapped_column(JSON)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    concurrency_policy: Mapped[str] = mapped_column(String(16), default=ConcurrencyPolicy.ALLOW)
    misfire_policy: Mapped[str] = mapped_column(String(16), default="skip")
    starting_deadline_seconds: Mapped[int | None] = mapped_column(Integer)
    # Null while paused; the scheduler claims rows whose next_fire_at has passed.
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    last_fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ScheduleFire(Base):
    """One fire time of a schedule that did not create a run (skipped), with the reason."""

    __tablename__ = "schedule_fires"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(
        ForeignKey("schedules.id", ondelete="CASCADE"), index=True
    )
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_schedule_fires_fire"),
    )


class EnvironmentImage(Base):
    """One cached environment image (base image + packages) and when a run last used it."""

    __tablename__ = "environment_images"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[str] = mapped_column(String(80))
    base_image: Mapped[str] = mapped_column(String(255))
    packages: Mapped[list[str]] = mapped_column(JSON, default=list)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """A bearer token's SHA-256 (the token itself is shown once and never stored)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """The outbox: one event to POST to one URL, written in the transaction of the state
    change, delivered (at least once) by the notifier."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)  # event id
    run_id: Mapped[str] = mapped_column(String(36), index=True)
    # The run's owner: whose secret signs the event (unless it goes to the operator's URL) and
    # whose share of the notifier it uses. Null for rows older than the column without a run.
    owner: Mapped[str | None] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class WebhookSigningSecret(Base):
    """One owner's HMAC key for webhook signatures, and the key it replaced, which keeps
    signing beside it until `previous_expires_at` (a rotation's grace period). Plain text
    until secrets are encrypted at rest."""

    __tablename__ = "webhook_signing_secrets"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    secret: Mapped[str] = mapped_column(String(200))
    previous_secret: Mapped[str | None] = mapped_column(String(200))
    previous_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
