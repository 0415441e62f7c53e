"""Webhook events: who may be called, how an event is signed, and the outbox rows."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import Forbidden
from app.models import Run, RunState, WebhookDelivery, new_id
from app.presenters import present_run
from app.services.webhook_targets import DestinationPolicy, parse_callback_url

SIGNATURE_HEADER = "X-Taskdeploy-Signature"
EVENT_ID_HEADER = "X-Taskdeploy-Event-Id"


def address_is_private(address: str) -> bool:
    """Loopback, private, link-local, reserved... anything that is not the public internet."""
    ip = ipaddress.ip_address(address)
    return not ip.is_global


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


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


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
            url=run.callback_url,
            event_type=payload["type"],
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
