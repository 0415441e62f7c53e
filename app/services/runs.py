"""Run rules: admission of a request, idempotency, cancellation and the state machine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import Conflict, Forbidden, InvalidRequest, NotFound
from app.models import (
    TERMINAL_STATES,
    Run,
    RunEvent,
    RunState,
    WebhookAttempt,
    WebhookDelivery,
    new_id,
)
from app.observability import PHASE_DURATION, RUN_DURATION, RUNS_FINISHED
from app.repositories.runs import RunRepository
from app.repositories.webhooks import WebhookRepository
from app.schemas.runs import RunCreate
from app.services.auth import LOCAL_OWNER
from app.services.legacy import claim_result_prefix
from app.services.s3uri import S3Location, parse_s3_uri
from app.services.transactions import NO_WAKEUPS, Wakeups, after_commit
from app.services.waiters import announce_end
from app.services.webhook_targets import DestinationPolicy
from app.services.webhooks import check_callback_url, enqueue_run_event

S = RunState
ALLOWED_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    S.QUEUED: frozenset({S.PREPARING, S.CANCELLED, S.ERROR}),
    # `queued` from an active state is a retry: the next attempt waits for its backoff.
    S.PREPARING: frozenset({S.RUNNING, S.CANCELLED, S.ERROR, S.QUEUED}),
    S.RUNNING: frozenset({S.FINISHING, S.CANCELLED, S.ERROR, S.QUEUED}),
    S.FINISHING: frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED, S.ERROR, S.QUEUED}),
}
CANCELLABLE = frozenset({S.QUEUED, S.PREPARING, S.RUNNING})
ANY_BUCKET = "*"


class IllegalTransition(Conflict):
    code = "illegal_transition"


@dataclass(frozen=True, slots=True)
class RunLimits:
    """Operator limits a request is checked against (built from settings by app.main)."""

    allowed_images: tuple[str, ...]
    default_image: str
    default_cpus: float
    default_memory_mb: int
    max_cpus: float
    max_memory_mb: int
    default_disk_mb: int
    max_disk_mb: int
    default_timeout_seconds: int
    max_timeout_seconds: int
    max_command_bytes: int
    allow_network: bool
    # "*" allows any bucket; empty allows any bucket to the local user only (no key).
    allowed_buckets: tuple[str, ...] = ()
    default_callback_url: str | None = None
    webhook_policy: DestinationPolicy = field(default_factory=DestinationPolicy)
    # An owner listed here gets exactly its list: [] is no bucket, not "fall back to global".
    allowed_buckets_by_owner: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def bucket_refusal(self, owner: str, bucket: str) -> str | None:
        """Why `owner` may not use `bucket`, or None when it may. Fails closed: an empty list
        means no bucket, except that with no global list at all the machine's own user (the
        embedded default, no key) may use any; an owner with a key then gets none."""
        if owner in self.allowed_buckets_by_owner:
            listed, setting = (
                self.allowed_buckets_by_owner[owner],
                "TASKDEPLOY_ALLOWED_BUCKETS_BY_OWNER",
            )
        else:
            listed, setting = self.allowed_buckets, "TASKDEPLOY_ALLOWED_BUCKETS"
            if not listed:
                if owner == LOCAL_OWNER:
                    return None
                return (
                    "the operator has not configured which buckets runs may use: "
                    "TASKDEPLOY_ALLOWED_BUCKETS is empty (a comma-separated list, or '*' for any)"
                )
        if ANY_BUCKET in listed or bucket in listed:
            return None
        if not listed:
            return f"owner {owner!r} may use no bucket ({setting} gives it an empty list)"
        return f"bucket {bucket!r} is not on the operator's allow-list ({setting})"


async def transition(
    session: AsyncSession,
    run_id: str,
    to: RunState,
    *,
    expected: RunState | None = None,
    detail: str | None = None,
    **values: Any,
) -> Run:
    """The one way a run changes state: refuses illegal moves and logs an event in the same txn.

    `expected` pins the state the caller believes the run is in; a concurrent change (for
    example a cancel racing the executor) then surfaces as IllegalTransition instead of an
    overwrite.
    """
    repo = RunRepository(session)
    run = await repo.get(run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    current = RunState(run.state)
    if expected is not None and current != expected:
        raise IllegalTransition(f"run {run_id} is {current}, not {expected}")
    if to not in ALLOWED_TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"run {run_id} cannot go from {current} to {to}")
    now = utcnow()
    entered = await repo.last_event_at(run_id) or run.created_at
    if to == S.RUNNING and "started_at" not in values:
        values["started_at"] = now
    if to in TERMINAL_STATES:
        values.setdefault("finished_at", now)
    if not await repo.compare_and_set_state(run_id, current, to, values):
        raise IllegalTransition(f"run {run_id} changed state concurrently")
    repo.add_event(run_id, current, to, detail)
    refreshed = await repo.get(run_id)
    assert refreshed is not None
    PHASE_DURATION.labels(current.value).observe(max(0.0, (now - entered).total_seconds()))
    if to in TERMINAL_STATES:
        enqueue_run_event(session, refreshed, to)  # the outbox row commits with the change
        announce_end(session, run_id)  # this process's waiters wake once it has committed
        RUNS_FINISHED.labels(to.value).inc()
        RUN_DURATION.observe(max(0.0, (now - run.created_at).total_seconds()))
    return refreshed


def result_location(run: Run) -> S3Location:
    """Where a run's results go: <output>/<run_id>/, and with a retry policy one folder per
    attempt, <output>/<run_id>/attempt-<n>/ (the legacy layout: its fixed prefix)."""
    out = parse_s3_uri(run.output_uri)
    if run.legacy_prefix is not None:
        return S3Location(out.bucket, run.legacy_prefix)
    attempt = f"attempt-{run.attempt}/" if run.retry_policy else ""
    return S3Location(out.bucket, f"{out.prefix}{run.id}/{attempt}")


def log_name(run: Run, stream: str) -> str:
    return f"{stream}.txt" if run.legacy_prefix is not None else f"{stream}.log"


def output_name(run: Run, path: str) -> str:
    return path if run.legacy_prefix is not None else f"output/{path}"


def reserved_output_paths(run: Run) -> frozenset[str]:
    """Output paths that would land on the service's own files: in the legacy layout the
    outputs sit beside the logs, metrics.json and run.json (elsewhere under output/)."""
    if run.legacy_prefix is None:
        return frozenset()
    return frozenset({log_name(run, "stdout"), log_name(run, "stderr"), "metrics.json", "run.json"})


def retry_decision(run: Run, state: RunState, exit_code: int | None) -> float | None:
    """Seconds to wait before the next attempt, or None when the run ends in `state`."""
    policy = run.retry_policy
    if not policy or state.value not in policy.get("on", ()) or run.attempt >= policy["attempts"]:
        return None
    if run.cancel_requested:
        return None
    codes = policy.get("exit_codes")
    if state == RunState.FAILED and codes and exit_code not in codes:
        return None
    return float(policy["backoff_seconds"]) * float(policy["backoff_factor"]) ** (run.attempt - 1)


def scoped_idempotency_key(owner: str, key: str) -> str:
    return f"{owner}:{key}"


def request_fingerprint(body: RunCreate) -> str:
    payload = body.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class RunService:
    """Business rules for one-off runs. It only flushes: the caller commits (a request once, in
    its session dependency), and the wake-ups it asks for run after that commit."""

    def __init__(
        self, session: AsyncSession, limits: RunLimits, *, wakeups: Wakeups = NO_WAKEUPS
    ) -> None:
        self.session = session
        self.repo = RunRepository(session)
        self.limits = limits
        self.wakeups = wakeups

    def _admit(self, body: RunCreate, owner: str) -> dict[str, Any]:
        lim = self.limits
        for name, uri in (("input", body.input), ("output", body.output)):
            if not uri:
                continue
            # Refused before anything touches the bucket with the service's credentials.
            if (refusal := lim.bucket_refusal(owner, parse_s3_uri(uri).bucket)) is not None:
                raise Forbidden(refusal, field=name)
        if len(body.command.encode()) > lim.max_command_bytes:
            raise InvalidRequest(
                f"command is {len(body.command.encode())} bytes; the limit is "
                f"{lim.max_command_bytes}",
                field="command",
            )
        image = body.image or lim.default_image
        if image not in lim.allowed_images:
            raise InvalidRequest(
                f"image {image!r} is not on the operator's allow-list "
                f"({', '.join(lim.allowed_images)})",
                field="image",
            )
        cpus = float(body.resources.cpus) if body.resources.cpus is not None else lim.default_cpus
        if cpus > lim.max_cpus:
            raise InvalidRequest(
                f"resources.cpus {cpus:g} exceeds the maximum of {lim.max_cpus:g}",
                field="resources.cpus",
            )
        memory = body.resources.memory_mb or min(lim.default_memory_mb, lim.max_memory_mb)
        if memory > lim.max_memory_mb:
            raise InvalidRequest(
                f"resources.memory_mb {memory} exceeds the maximum of {lim.max_memory_mb}",
                field="resources.memory_mb",
            )
        disk = body.resources.disk_mb or min(lim.default_disk_mb, lim.max_disk_mb)
        if disk > lim.max_disk_mb:
            raise InvalidRequest(
                f"resources.disk_mb {disk} exceeds the maximum of {lim.max_disk_mb}",
                field="resources.disk_mb",
            )
        timeout = body.timeout_seconds or lim.default_timeout_seconds
        if timeout > lim.max_timeout_seconds:
            raise InvalidRequest(
                f"timeout_seconds {timeout} exceeds the maximum of {lim.max_timeout_seconds}",
                field="timeout_seconds",
            )
        callback_url = body.callback_url or lim.default_callback_url
        if body.callback_url:
            check_callback_url(body.callback_url, lim.webhook_policy)
        if body.network and not lim.allow_network:
            raise Forbidden("network access for runs is disabled by the operator", field="network")
        return {
            "image": image,
            "cpus": cpus,
            "memory_mb": memory,
            "disk_mb": disk,
            "timeout_seconds": timeout,
            "packages": sorted(set(body.packages)),
            "callback_url": callback_url,
        }

    async def create(
        self,
        body: RunCreate,
        idempotency_header: str | None,
        owner: str,
        *,
        legacy_prefix: str | None = None,
    ) -> tuple[Run, bool]:
        """Queues a run; returns (run, created). A replayed idempotency key returns the original."""
        key = idempotency_header or body.idempotency_key
        if (
            idempotency_header
            and body.idempotency_key
            and idempotency_header != body.idempotency_key
        ):
            raise InvalidRequest(
                "Idempotency-Key header and idempotency_key field differ", field="idempotency_key"
            )
        fingerprint = request_fingerprint(body)
        # Keys are per owner: one owner's key never answers, or blocks, another's request.
        key = scoped_idempotency_key(owner, key) if key else None
        if key:
            existing = await self.repo.get_by_idempotency_key(key)
            if existing is not None:
                return self._replay(existing, fingerprint), False
        run = self.build(body, owner=owner, idempotency_key=key, legacy_prefix=legacy_prefix)
        try:
            # A savepoint: a refusal (409) or a lost race undoes this run only, and leaves the
            # request's transaction usable.
            async with self.session.begin_nested():
                self.repo.add(run)
                await self.session.flush()
                self.repo.add_event(run.id, None, RunState.QUEUED, "submitted")
                if legacy_prefix is not None:
                    await claim_result_prefix(self.session, run, owner)  # or 409
        except IntegrityError:
            # Another request with the same key won the race: answer like a replay.
            existing = await self.repo.get_by_idempotency_key(key) if key else None
            if existing is None:
                raise
            return self._replay(existing, fingerprint), False
        after_commit(self.session, self.wakeups.wake_dispatcher)
        return run, True

    def build(
        self,
        body: RunCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        schedule_id: str | None = None,
        scheduled_for: datetime | None = None,
        legacy_prefix: str | None = None,
    ) -> Run:
        """A new queued run for `body`, checked against the operator's limits (not yet added)."""
        admitted = self._admit(body, owner)
        now = utcnow()
        return Run(
            id=new_id(),
            owner=owner,
            state=RunState.QUEUED,
            command=body.command,
            input_uri=body.input,
            output_uri=body.output,
            env=body.env,
            network=body.network,
            unpack_zip=body.unpack_zip,
            idempotency_key=idempotency_key,
            request_hash=request_fingerprint(body),
            created_at=now,
            updated_at=now,
            artifacts=[],
            oom_killed=False,
            cancel_requested=False,
            schedule_id=schedule_id,
            scheduled_for=scheduled_for,
            legacy_prefix=legacy_prefix,
            attempt=1,
            attempts=[],
            retry_policy=body.retry.model_dump(mode="json") if body.retry else None,
            **admitted,
        )

    @staticmethod
    def _replay(existing: Run, fingerprint: str) -> Run:
        if existing.request_hash != fingerprint:
            raise Conflict(
                "idempotency key was already used with a different request body",
                field="idempotency_key",
            )
        return existing

    async def get(self, run_id: str) -> Run:
        run = await self.repo.get(run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    async def page(
        self,
        *,
        owner: str | None,
        states: Sequence[RunState] = (),
        schedule_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Run], str | None]:
        """Runs newest first (`owner` None: everyone's), and the cursor of the next page."""
        return await self.repo.page(
            states=states, owner=owner, schedule_id=schedule_id, cursor=cursor, limit=limit
        )

    async def events(self, run_id: str) -> list[RunEvent]:
        return await self.repo.events(run_id)

    async def deliveries(self, run_id: str) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
        """The run's webhook events, each with its delivery attempts."""
        return await WebhookRepository(self.session).of_run(run_id)

    async def latest_of_schedules(self, schedule_ids: Sequence[str]) -> dict[str, Run]:
        return await self.repo.latest_of_schedules(schedule_ids)

    async def cancel(self, run_id: str) -> Run:
        """Queued runs are cancelled at once; preparing/running ones are flagged for the executor."""
        run = await self.get(run_id)
        state = RunState(run.state)
        if state not in CANCELLABLE:
            raise Conflict(f"run {run_id} is {state} and can no longer be cancelled", field="state")
        await self.repo.update_fields(run_id, {"cancel_requested": True})
        after_commit(self.session, lambda: self.wakeups.cancel_run(run_id))
        if state == RunState.QUEUED:
            try:
                return await transition(
                    self.session, run_id, RunState.CANCELLED, expected=state, detail="cancelled"
                )
            except IllegalTransition:
                pass  # the dispatcher claimed it meanwhile: the executor honours the flag
        return await self.get(run_id)
