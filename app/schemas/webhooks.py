"""Request and response models of webhooks: deliveries and signing secrets."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
)

from app.schemas.common import StrictModel


class WebhookAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


class WebhookDeliveryOut(BaseModel):
    """One webhook event for a run and every attempt to deliver it."""

    id: str = Field(description="the event id: stable across retries, for de-duplication")
    event_type: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    created_at: datetime
    delivered_at: datetime | None
    last_error: str | None
    attempts: list[WebhookAttemptOut]


class WebhookSecretOut(BaseModel):
    """The caller's webhook signing secret: events to their runs' callback_url are signed
    with it (`X-Taskdeploy-Signature`)."""

    owner: str
    secret: str
    created_at: datetime
    rotated_at: datetime | None
    previous_expires_at: datetime | None = Field(
        description="until then, events carry a second v1 signature made with the previous "
        "secret; null or past: only the current secret signs"
    )


class WebhookSecretRotate(StrictModel):
    """Make a new secret; the previous one keeps signing beside it for `grace_seconds`."""

    grace_seconds: StrictInt | None = Field(
        default=None,
        ge=0,
        le=7 * 86400,
        description="how long the previous secret keeps signing (0: stop at once); default "
        "TASKDEPLOY_WEBHOOK_SECRET_GRACE_SECONDS",
    )
