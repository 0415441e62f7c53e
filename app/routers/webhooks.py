"""/v1/webhooks: the caller's webhook signing secret, read and rotated."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from app.deps import ContextDep, CurrentPrincipal, SessionDep
from app.exception_handlers import ERROR_RESPONSES
from app.models import WebhookSigningSecret
from app.schemas.webhooks import WebhookSecretOut, WebhookSecretRotate
from app.services.webhooks import SigningSecrets

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


def present_secret(row: WebhookSigningSecret) -> WebhookSecretOut:
    return WebhookSecretOut(
        owner=row.owner,
        secret=row.secret,
        created_at=row.created_at,
        rotated_at=row.rotated_at,
        previous_expires_at=row.previous_expires_at,
    )


@router.get("/secret", response_model=WebhookSecretOut)
async def get_webhook_secret(session: SessionDep, principal: CurrentPrincipal) -> WebhookSecretOut:
    """Your signing secret (made on first use): verify your runs' events with it."""
    row = await SigningSecrets(session).current(principal.owner)
    await session.commit()
    return present_secret(row)


@router.post("/secret/rotate", response_model=WebhookSecretOut)
async def rotate_webhook_secret(
    session: SessionDep,
    principal: CurrentPrincipal,
    context: ContextDep,
    body: WebhookSecretRotate | None = None,
) -> WebhookSecretOut:
    """A new signing secret; the previous one keeps signing beside it for the grace period."""
    grace = body.grace_seconds if body and body.grace_seconds is not None else None
    if grace is None:
        grace = context.settings.webhook_secret_grace_seconds
    row = await SigningSecrets(session).rotate(principal.owner, timedelta(seconds=grace))
    await session.commit()
    return present_secret(row)
