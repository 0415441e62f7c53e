"""Webhook events: who may be called, per-owner signing secrets, and the outbox rows."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import Forbidden
from app.models import Run, RunState, WebhookDelivery, WebhookSigningSecret, new_id
from app.presenters import present_run
from app.services.webhook_targets import DestinationPolicy, parse_callback_url
from app.webhook_repository import WebhookRepository

SIGNATURE_HEADER = "X-Taskdeploy-Signature"
EVENT_ID_HEADER = "X-Taskdeploy-Event-Id"


def check_callback_url(url: str, policy: DestinationPolicy, *, field: str = "callback_url") -> None:
    """Refuses, at submission, URLs naming this machine or a literal address the policy
    refuses. Host names are resolved and checked again at every delivery (DNS can change)."""
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
