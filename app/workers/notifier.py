"""Delivers webhook events from the outbox: signed POSTs, retried with backoff and jitter."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.models import WebhookAttempt, WebhookDelivery
from app.observability import WEBHOOK_DELIVERIES
from app.services.webhook_targets import DestinationPolicy
from app.services.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    SigningSecrets,
    event_body,
    signature_header,
)
from app.webhook_repository import WebhookRepository
from app.workers.base import LoopService

log = logging.getLogger(__name__)

BATCH = 20
RETRYABLE_4XX = {408, 429}


class Notifier(LoopService):
    """At-least-once delivery: a delivery stays `pending` until a 2xx, a final 4xx, or its
    total time runs out; every attempt is recorded. A restart loses nothing: the outbox is
    in the database."""

    name = "notifier"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        secret: str,
        operator_url: str | None,
        total_seconds: float,
        timeout_seconds: float,
        policy: DestinationPolicy,
        max_idle: float = 30.0,
    ) -> None:
        super().__init__(max_idle)
        self.sessionmaker = sessionmaker
        self.secret = secret
        self.operator_url = operator_url
        self.total = timedelta(seconds=total_seconds)
        self.timeout = timeout_seconds
        self.policy = policy
        self._client: httpx.AsyncClient | None = None
        self._delay = 0.0

    async def run_once(self) -> None:
        if self._client is None:
            # No proxies from the environment, no redirects: the URL is the one that was checked.
            self._client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False
            )
        async with self.sessionmaker() as session, session.begin():
            deliveries = await WebhookRepository(session).due(utcnow(), BATCH)
            owners = {d.owner for d in deliveries if d.owner and d.url != self.operator_url}
            keys = await SigningSecrets(session).signing_keys(owners)
            results = await asyncio.gather(
                *(self._attempt(d, self._keys(d, keys)) for d in deliveries)
            )
            repo = WebhookRepository(session)
            for delivery, attempt in zip(deliveries, results, strict=True):
                repo.add_attempt(attempt)
                self._settle(delivery, attempt)
        async with self.sessionmaker() as session:
            earliest = await WebhookRepository(session).earliest_pending()
        self._delay = self.interval if earliest is None else (earliest - utcnow()).total_seconds()
        if len(deliveries) == BATCH:
            self._delay = 0.0

    def next_delay(self) -> float:
        return min(max(self._delay, 0.05), self.interval)

    def _keys(self, delivery: WebhookDelivery, keys: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
        """The owner's keys for the run's own callback_url; the operator's for the operator's
        URL (and for rows older than the owner column whose run is gone)."""
        if not delivery.owner or delivery.url == self.operator_url:
            return (self.secret,)
        return keys[delivery.owner]

    async def _attempt(self, delivery: WebhookDelivery, keys: tuple[str, ...]) -> WebhookAttempt:
        assert self._client is not None
        body = event_body(delivery)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            await self._check_destination(delivery.url)
            response = await self._client.post(
                delivery.url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: signature_header(keys, int(time.time()), body),
                    EVENT_ID_HEADER: delivery.id,
                    "User-Agent": "taskdeploy-webhooks",
                },
            )
            status = response.status_code
        except (httpx.HTTPError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        return WebhookAttempt(
            delivery_id=delivery.id,
            at=utcnow(),
            status_code=status,
            latency_ms=(time.monotonic() - started) * 1000,
            error=error,
        )

    async def _check_destination(self, url: str) -> None:
        """Resolves the host now, so a name that points at a private address is refused
        even when it changed after the run was submitted."""
        host = urlsplit(url).hostname or ""
        port = urlsplit(url).port or 443
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for info in infos:
            if reason := self.policy.refusal(ipaddress.ip_address(info[4][0])):
                raise ValueError(f"{host} resolves to {reason}")

    def _settle(self, delivery: WebhookDelivery, attempt: WebhookAttempt) -> None:
        delivery.attempts += 1
        status = attempt.status_code
        if status is not None and 200 <= status < 300:
            delivery.status, delivery.delivered_at, delivery.last_error = (
                "delivered",
                attempt.at,
                None,
            )
            return
        delivery.last_error = attempt.error or f"HTTP {status}"
        final = status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX
        retry_at = attempt.at + _backoff(delivery.attempts)
        if final or retry_at > delivery.created_at + self.total:
            WEBHOOK_DELIVERIES.labels("failed").inc()
            delivery.status = "failed"
            log.warning(
                "webhook %s to %s failed: %s", delivery.id, delivery.url, delivery.last_error
            )
            return
        WEBHOOK_DELIVERIES.labels("retry").inc()
        delivery.next_attempt_at = retry_at

    async def stop(self, timeout: float = 5.0) -> None:
        await super().stop(timeout)
        if self._client is not None:
            await self._client.aclose()


def _backoff(attempts: int) -> timedelta:
    """Exponential (1 s, 2 s, 4 s, ... capped at 5 min) with full jitter on half of it."""
    base = min(2.0 ** (attempts - 1), 300.0)
    return timedelta(seconds=base / 2 + random.uniform(0, base / 2))
