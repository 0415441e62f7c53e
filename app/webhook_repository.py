"""All SQL of webhooks: the outbox's claims and results, attempts, and owners' signing secrets."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import WebhookAttempt, WebhookDelivery, WebhookSigningSecret
from app.repositories import insert_or_ignore


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def due(self, now: datetime, limit: int) -> list[WebhookDelivery]:
        """Pending deliveries whose next attempt is due, skipping ones another replica holds."""
        query = (
            select(WebhookDelivery)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return list((await self.session.execute(query)).scalars())

    async def earliest_pending(self) -> datetime | None:
        query = select(func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status == "pending"
        )
        value = (await self.session.execute(query)).scalar_one_or_none()
        if value is not None and value.tzinfo is None:  # SQLite's MIN() bypasses the column type
            value = value.replace(tzinfo=UTC)
        return value

    def add_attempt(self, attempt: WebhookAttempt) -> None:
        self.session.add(attempt)

    async def of_run(self, run_id: str) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
        deliveries = list(
            (
                await self.session.execute(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.run_id == run_id)
                    .order_by(WebhookDelivery.created_at)
                )
            ).scalars()
        )
        if not deliveries:
            return []
        attempts = list(
            (
                await self.session.execute(
                    select(WebhookAttempt)
                    .where(WebhookAttempt.delivery_id.in_([d.id for d in deliveries]))
                    .order_by(WebhookAttempt.id)
                )
            ).scalars()
        )
        return [(d, [a for a in attempts if a.delivery_id == d.id]) for d in deliveries]

    # --- signing secrets
    async def secrets_of(self, owners: Collection[str]) -> dict[str, WebhookSigningSecret]:
        if not owners:
            return {}
        query = select(WebhookSigningSecret).where(WebhookSigningSecret.owner.in_(list(owners)))
        return {row.owner: row for row in (await self.session.execute(query)).scalars()}

    async def add_secret_unless_present(self, owner: str, secret: str, now: datetime) -> None:
        """One statement, so two replicas making an owner's first secret cannot collide."""
        values = {"owner": owner, "secret": secret, "created_at": now}
        await insert_or_ignore(self.session, WebhookSigningSecret.__table__, values, ["owner"])

    async def secret_for_update(self, owner: str) -> WebhookSigningSecret | None:
        query = select(WebhookSigningSecret).where(WebhookSigningSecret.owner == owner)
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        query = query.execution_options(populate_existing=True)
        return (await self.session.execute(query)).scalar_one_or_none()
