"""Webhook events: the outbox rows, per-owner signing secrets, and the rules of one attempt."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters.ports import WebhookSender
from app.db import utcnow
from app.errors import Forbidden
from app.models import Run, RunState, WebhookDelivery, WebhookSigningSecret, new_id
from app.presenters import present_run
from app.repositories.webhooks import WebhookRepository
from app.services.webhook_targets import (
    DestinationPolicy,
    literal_address,
    parse_callback_url,
)

SIGNATURE_HEADER = "X-Taskdeploy-Signature"
EVENT_ID_HEADER = "X-Taskdeploy-Event-Id"
RETRYABLE_4XX = frozenset({408, 429})
MAX_ERROR_CHARS = 500


def check_callback_url(url: str, policy: DestinationPolicy, *, field: str = "callback_url") -> None:
    """Refuses, at submission, URLs naming this machine or a literal address the policy
    refuses. Host names are resolved and checked again at every attempt (DNS can change)."""
    try:
        parsed = parse_callback_url(url)
    except ValueError as exc:  # the schema has refused it already; kept for other callers
        raise Forbidden(f"callback_url {exc}", field=field) from None
    if reason := policy.submission_refusal(parsed):
        raise Forbidden(
            f"callback_url {reason}; the operator has not allowed that "
            "(TASKDEPLOY_WEBHOOK_ALLOWED_CIDRS, TASKDEPLOY_WEBHOOK_ALLOW_PRIVATE)",
            field=field,
        )


# --------------------------------------------------------------------------- signing
def signature_header(keys: Sequence[str], timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, one v1 per key (the current secret
    first; during a rotation's grace period the previous one too, as Stripe does)."""
    signed = f"{timestamp}.".encode() + body
    macs = [hmac.new(key.encode(), signed, hashlib.sha256).hexdigest() for key in keys]
    return ",".join([f"t={timestamp}", *(f"v1={mac}" for mac in macs)])


def new_signing_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class SigningSecrets:
    """Each owner's webhook secret: made on first need, rotated with a grace period."""

    def __init__(self, session: AsyncSession) -> None:
        self.repo = WebhookRepository(session)

    async def current(self, owner: str) -> WebhookSigningSecret:
        return (await self.of_owners([owner]))[owner]

    async def of_owners(self, owners: Collection[str]) -> dict[str, WebhookSigningSecret]:
        found = await self.repo.secrets_of(owners)
        missing = [owner for owner in owners if owner not in found]
        for owner in missing:
            await self.repo.add_secret_unless_present(owner, new_signing_secret(), utcnow())
        if missing:
            found.update(await self.repo.secrets_of(missing))
        return found

    async def rotate(self, owner: str, grace: timedelta) -> WebhookSigningSecret:
        """A new current secret; the old one keeps signing beside it for `grace`."""
        await self.of_owners([owner])
        row = await self.repo.secret_for_update(owner)
        assert row is not None
        now = utcnow()
        row.previous_secret, row.previous_expires_at = row.secret, now + grace
        row.secret, row.rotated_at = new_signing_secret(), now
        await self.repo.session.flush()
        return row

    async def signing_keys(self, owners: Collection[str]) -> dict[str, tuple[str, ...]]:
        """The keys that sign each owner's events now: current, then previous in its grace."""
        now = utcnow()
        keys: dict[str, tuple[str, ...]] = {}
        for owner, row in (await self.of_owners(owners)).items():
            previous, expires = row.previous_secret, row.previous_expires_at
            if previous is not None and expires is not None and expires > now:
                keys[owner] = (row.secret, previous)
            else:
                keys[owner] = (row.secret,)
        return keys


# --------------------------------------------------------------------------- the outbox
def event_body(delivery: WebhookDelivery) -> bytes:
    return json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()


def enqueue_run_event(session: AsyncSession, run: Run, state: RunState) -> None:
    """Adds the event to the outbox in the caller's transaction (the state change's own)."""
    if not run.callback_url:
        return
    event_id = new_id()
    now = utcnow()
    payload: dict[str, Any] = {
        "id": event_id,
        "type": f"run.{state.value}",
        "created_at": now.isoformat(),
        "data": present_run(run).model_dump(mode="json"),
    }
    session.add(
        WebhookDelivery(
            id=event_id,
            run_id=run.id,
            owner=run.owner,
            url=run.callback_url,
            event_type=payload["type"],
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


# --------------------------------------------------------------------------- one attempt
@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """What the notifier took out of the outbox: everything one attempt and its record
    need, so that nothing of the database is held while it sends."""

    id: str
    owner: str | None
    url: str
    body: bytes
    keys: tuple[str, ...]
    attempts: int
    created_at: datetime
    leased_until: datetime


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False  # a failure that no retry can mend

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class DestinationRefused(Exception):
    """The URL's host is, or resolves to, an address the policy refuses."""


def printable(text: str) -> str:
    """Error text as it is stored and logged: no raw control characters from anyone's URL."""
    cleaned = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return cleaned[:MAX_ERROR_CHARS]


async def checked_address(sender: WebhookSender, policy: DestinationPolicy, url: httpx.URL) -> str:
    """Looks the host up once and checks every address it has; the caller connects to the
    first one, the very address that was checked (a name cannot re-resolve in between)."""
    host = url.raw_host.decode("ascii")
    literal = literal_address(url)
    if literal is not None:
        addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [literal]
    else:
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = [ipaddress.ip_address(a) for a in await sender.resolve(host, port)]
        if not addresses:
            raise DestinationRefused(f"{host} has no address")
    for address in addresses:
        if reason := policy.refusal(address):
            if literal is None:
                reason = f"{host} resolves to {address} ({reason})"
            raise DestinationRefused(f"refused: {reason}")
    return str(addresses[0])


async def attempt_delivery(
    sender: WebhookSender,
    policy: DestinationPolicy,
    url: str,
    headers: dict[str, str],
    body: bytes,
    *,
    time_limit: float,
) -> AttemptOutcome:
    """One attempt, whatever happens: lookup, check, connect, send and read all within
    `time_limit`; every failure of any kind becomes this attempt's outcome, never an
    exception (only cancellation propagates)."""
    try:
        target = parse_callback_url(url)
    except ValueError as exc:
        return AttemptOutcome(error=printable(f"callback_url {exc}"), permanent=True)
    try:
        async with asyncio.timeout(time_limit):
            address = await checked_address(sender, policy, target)
            status = await sender.post(str(target), address, headers, body)
    except TimeoutError:
        return AttemptOutcome(error=f"TimeoutError: no complete answer within {time_limit:g} s")
    except DestinationRefused as exc:
        return AttemptOutcome(error=printable(str(exc)), permanent=True)
    except Exception as exc:  # isolation: one receiver's failure is that delivery's only
        return AttemptOutcome(error=printable(f"{type(exc).__name__}: {exc}"))
    permanent = 400 <= status < 500 and status not in RETRYABLE_4XX
    return AttemptOutcome(status_code=status, permanent=permanent)


@dataclass(frozen=True, slots=True)
class Settlement:
    outcome: str  # delivered | retry | failed
    values: dict[str, Any]


def settle(
    claim: ClaimedDelivery, outcome: AttemptOutcome, now: datetime, total: timedelta
) -> Settlement:
    """What an attempt does to its delivery: delivered on a 2xx; failed on a final answer or
    once the total time is spent; otherwise retried with backoff."""
    if outcome.delivered:
        return Settlement(
            "delivered", {"status": "delivered", "delivered_at": now, "last_error": None}
        )
    last_error = outcome.error or f"HTTP {outcome.status_code}"
    retry_at = now + backoff(claim.attempts + 1)
    if outcome.permanent or retry_at > claim.created_at + total:
        return Settlement("failed", {"status": "failed", "last_error": last_error})
    return Settlement("retry", {"next_attempt_at": retry_at, "last_error": last_error})


def backoff(attempts: int) -> timedelta:
    """Exponential (1 s, 2 s, 4 s, ... capped at 5 min) with full jitter on half of it."""
    base = min(2.0 ** (attempts - 1), 300.0)
    return timedelta(seconds=base / 2 + random.uniform(0, base / 2))
