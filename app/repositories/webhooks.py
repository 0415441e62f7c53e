"""All SQL of webhooks: the outbox's claims and results, attempts, and owners' signing secrets."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import WebhookAttempt, WebhookDelivery, WebhookSigningSecret
from app.repositories.paging import insert_or_ignore


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_candidates(
        self, now: datetime, *, limit: int, per_owner: int, skip_owners: Collection[str]
    ) -> list[WebhookDelivery]:
        """Due pending deliveries, at most `per_owner` of each owner, taken in turns (every
        owner's oldest first, then every owner's second...), none of `skip_owners` (owner
        null counts as ""). Locked until commit; rows another replica holds are skipped."""
        owner_key = func.coalesce(WebhookDelivery.owner, "")
        due = and_(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        turn = (
            func.row_number()
            .over(
                partition_by=owner_key,
                order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id),
            )
            .label("turn")
        )
        ranked_query = select(WebhookDelivery.id, turn).where(due)
        if skip_owners:
            ranked_query = ranked_query.where(owner_key.not_in(list(skip_owners)))
        ranked = ranked_query.subquery()
        query = (
            select(WebhookDelivery)
            .join(ranked, ranked.c.id == WebhookDelivery.id)
            # Repeated outside the ranking: PostgreSQL re-checks these on rows that another
            # replica claimed after this statement's snapshot was taken.
            .where(due, ranked.c.turn <= per_owner)
            .order_by(ranked.c.turn, WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=WebhookDelivery)
        return list((await self.session.execute(query)).scalars())

    async def lease(self, delivery_ids: Sequence[str], until: datetime) -> None:
        """Moves the claimed rows' next attempt past `until`: no replica takes them meanwhile."""
        if delivery_ids:
            await self.session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(list(delivery_ids)))
                .values(next_attempt_at=until)
                .execution_options(synchronize_session=False)
            )

    async def settle(
        self, delivery_id: str, leased_until: datetime, values: dict[str, Any]
    ) -> bool:
        """Records an attempt's effect, only while the claim still holds (the row is pending
        with the lease this replica set); False when the lease was lost to another replica."""
        result = await self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at == leased_until,
            )
            .values(attempts=WebhookDelivery.attempts + 1, **values)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def earliest_pending(self, skip_owners: Collection[str] = ()) -> datetime | None:
        query = select(func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status == "pending"
        )
        if skip_owners:
            query = query.where(func.coalesce(WebhookDelivery.owner, "").not_in(list(skip_owners)))
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
