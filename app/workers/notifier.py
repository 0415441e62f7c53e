"""Delivers webhook events from the outbox: claim, commit, send (bounded, concurrent), record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import WebhookSender
from app.db import utcnow
from app.models import WebhookAttempt, WebhookDelivery
from app.observability import WEBHOOK_DELIVERIES
from app.repositories.webhooks import WebhookRepository
from app.services.webhook_targets import DestinationPolicy
from app.services.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    AttemptOutcome,
    ClaimedDelivery,
    SigningSecrets,
    attempt_delivery,
    event_body,
    settle,
    signature_header,
)
from app.workers.base import LoopService

log = logging.getLogger(__name__)

# A claim outlives its attempt's time limit by this much: time to write the result down.
LEASE_MARGIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    policy: DestinationPolicy
    operator_url: str | None
    operator_secret: str
    total_seconds: float
    timeout_seconds: float
    max_in_flight: int
    max_in_flight_per_owner: int


class Notifier(LoopService):
    """At-least-once delivery: a delivery stays `pending` until a 2xx, a final answer, or its
    total time runs out; every attempt is recorded against its own delivery only.

    No transaction is open while a request is on the wire: a tick claims due rows in one short
    transaction (FOR UPDATE SKIP LOCKED on PostgreSQL) and leases them by moving their next
    attempt past the attempt's time limit, commits, then sends each in a task of its own; each
    task records its result in a new short transaction. A crash between sending and recording
    sends that event again once the lease ends (receivers de-duplicate on the event id).
    At most `max_in_flight` attempts run at once, `max_in_flight_per_owner` of one owner's, so
    one owner's slow receivers cannot take another owner's turn."""

    name = "notifier"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        sender: WebhookSender,
        config: NotifierConfig,
        *,
        max_idle: float = 30.0,
    ) -> None:
        super().__init__(max_idle)
        self.sessionmaker = sessionmaker
        self.sender = sender
        self.config = config
        self.total = timedelta(seconds=config.total_seconds)
        self._in_flight: dict[asyncio.Task[None], str] = {}  # task -> owner ("" for none)
        self._delay = 0.0

    # --------------------------------------------------------------------------- the loop
    async def run_once(self) -> None:
        cfg = self.config
        busy = Counter(self._in_flight.values())
        free = cfg.max_in_flight - len(self._in_flight)
        claims: list[ClaimedDelivery] = []
        if free > 0:
            claims = await self._claim(free, busy)
            for claim in claims:
                busy[claim.owner or ""] += 1
                task = asyncio.create_task(self._deliver(claim), name=f"webhook-{claim.id}")
                self._in_flight[task] = claim.owner or ""
                task.add_done_callback(self._forget)
        if claims and len(claims) == free:
            self._delay = 0.0  # there may be more: take them as soon as a slot frees
            return
        full = {owner for owner, count in busy.items() if count >= cfg.max_in_flight_per_owner}
        async with self.sessionmaker() as session:
            earliest = await WebhookRepository(session).earliest_pending(full)
        if len(self._in_flight) >= cfg.max_in_flight or earliest is None:
            self._delay = self.interval  # a finishing attempt wakes the loop
        else:
            self._delay = (earliest - utcnow()).total_seconds()

    def next_delay(self) -> float:
        return min(max(self._delay, 0.05), self.interval)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self.wake()  # a slot is free

    async def _claim(self, free: int, busy: Counter[str]) -> list[ClaimedDelivery]:
        """Takes up to `free` due deliveries, in turns across owners, none beyond an owner's
        share; leases them and reads the keys that sign them, in one short transaction."""
        cfg = self.config
        per_owner = cfg.max_in_flight_per_owner
        full = {owner for owner, count in busy.items() if count >= per_owner}
        lease = timedelta(seconds=cfg.timeout_seconds + LEASE_MARGIN_SECONDS)
        async with self.sessionmaker() as session, session.begin():
            repo = WebhookRepository(session)
            now = utcnow()
            rows = await repo.claim_candidates(
                now,
                # Owners partly busy may bring candidates beyond their share: room for them.
                limit=free + sum(count for owner, count in busy.items() if owner not in full),
                per_owner=per_owner,
                skip_owners=full,
            )
            taken: list[WebhookDelivery] = []
            shares = Counter(busy)
            for row in rows:
                if len(taken) < free and shares[row.owner or ""] < per_owner:
                    shares[row.owner or ""] += 1
                    taken.append(row)
            leased_until = now + lease
            await repo.lease([row.id for row in taken], leased_until)
            owners = {row.owner for row in taken if row.owner and not self._to_operator(row)}
            keys = await SigningSecrets(session).signing_keys(owners)
            return [
                ClaimedDelivery(
                    id=row.id,
                    owner=row.owner,
                    url=row.url,
                    body=event_body(row),
                    keys=(
                        (cfg.operator_secret,)
                        if not row.owner or self._to_operator(row)
                        else keys[row.owner]
                    ),
                    attempts=row.attempts,
                    created_at=row.created_at,
                    leased_until=leased_until,
                )
                for row in taken
            ]

    def _to_operator(self, row: WebhookDelivery) -> bool:
        """Events to the operator's own URL keep the operator's secret."""
        return self.config.operator_url is not None and row.url == self.config.operator_url

    # --------------------------------------------------------------------------- one delivery
    async def _deliver(self, claim: ClaimedDelivery) -> None:
        try:
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(claim.keys, int(time.time()), claim.body),
                EVENT_ID_HEADER: claim.id,
            }
            started = time.monotonic()
            outcome = await attempt_delivery(
                self.sender,
                self.config.policy,
                claim.url,
                headers,
                claim.body,
                time_limit=self.config.timeout_seconds,
            )
            await self._record(claim, outcome, (time.monotonic() - started) * 1000)
        except Exception:
            # Left leased: the event is sent again when the lease ends (at least once).
            log.exception("webhook %s: its attempt could not be recorded", claim.id)

    async def _record(
        self, claim: ClaimedDelivery, outcome: AttemptOutcome, latency_ms: float
    ) -> None:
        async with self.sessionmaker() as session, session.begin():
            repo = WebhookRepository(session)
            now = utcnow()
            repo.add_attempt(
                WebhookAttempt(
                    delivery_id=claim.id,
                    at=now,
                    status_code=outcome.status_code,
                    latency_ms=latency_ms,
                    error=outcome.error,
                )
            )
            result = settle(claim, outcome, now, self.total)
            if not await repo.settle(claim.id, claim.leased_until, result.values):
                log.warning("webhook %s: its lease ran out before the result was written", claim.id)
                return
        WEBHOOK_DELIVERIES.labels(result.outcome).inc()
        if result.outcome == "failed":
            log.warning(
                "webhook %s to %r failed: %s", claim.id, claim.url, result.values["last_error"]
            )

    # --------------------------------------------------------------------------- shutdown
    async def stop(self, timeout: float = 5.0) -> None:
        """Stops claiming, lets attempts on the wire finish for `timeout`, then cancels the
        rest: their rows stay leased and are sent again after the lease (at least once)."""
        await super().stop(timeout)
        if self._in_flight:
            _, pending = await asyncio.wait(list(self._in_flight), timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.sender.close()
