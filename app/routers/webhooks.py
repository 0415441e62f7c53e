"""/v1/webhooks: the caller's webhook signing secret, read and rotated."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from app.deps import ContextDep, CurrentPrincipal, SigningSecretsDep
from app.exception_handlers import ERROR_RESPONSES
from app.presenters import present_secret
from app.schemas.webhooks import WebhookSecretOut, WebhookSecretRotate

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


@router.get("/secret", response_model=WebhookSecretOut)
async def get_webhook_secret(
    secrets: SigningSecretsDep, principal: CurrentPrincipal
) -> WebhookSecretOut:
    """Your signing secret (made on first use): verify your runs' events with it."""
    return present_secret(await secrets.current(principal.owner))


@router.post("/secret/rotate", response_model=WebhookSecretOut)
async def rotate_webhook_secret(
    secrets: SigningSecretsDep,
    principal: CurrentPrincipal,
    context: ContextDep,
    body: WebhookSecretRotate | None = None,
) -> WebhookSecretOut:
    """A new signing secret; the previous one keeps signing beside it for the grace period."""
    grace = body.grace_seconds if body and body.grace_seconds is not None else None
    if grace is None:
        grace = context.settings.webhook_secret_grace_seconds
    row = await secrets.rotate(principal.owner, timedelta(seconds=grace))
    return present_secret(row)
