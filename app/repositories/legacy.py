"""All SQL of legacy result-prefix claims."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import LegacyPrefixClaim, Run


class LegacyClaimRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_bucket(self, bucket: str) -> None:
        """Serialises claims in `bucket` until the transaction ends, so that two requests for
        nested prefixes cannot both find the other absent. PostgreSQL takes a transaction
        advisory lock; SQLite has one writer at a time (the run's insert already holds it)."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        digest = hashlib.sha256(f"taskdeploy.legacy-prefix:{bucket}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        await self.session.execute(select(func.pg_advisory_xact_lock(key)))

    async def overlapping_claim(
        self, bucket: str, prefix: str, enclosing: Iterable[str]
    ) -> tuple[str, str, str] | None:
        """(prefix, run id, owner) of a claim in `bucket` at `prefix`, above it (one of
        `enclosing`) or below it, if any."""
        claim = LegacyPrefixClaim
        query = (
            select(claim.prefix, claim.run_id, Run.owner)
            .join(Run, Run.id == claim.run_id)
            .where(
                claim.bucket == bucket,
                or_(
                    claim.prefix.in_(list(enclosing)),
                    func.substr(claim.prefix, 1, len(prefix)) == prefix,
                ),
            )
            .limit(1)
        )
        row = (await self.session.execute(query)).first()
        return None if row is None else (row[0], row[1], row[2])

    async def runs_by_id(self, run_ids: Iterable[str]) -> list[Run]:
        """Runs in the usual layout among `run_ids`."""
        query = select(Run).where(Run.id.in_(list(run_ids)), Run.legacy_prefix.is_(None))
        return list((await self.session.execute(query)).scalars())

    async def run_writing_below(self, bucket: str, prefix: str) -> Run | None:
        """A run in the usual layout whose output prefix lies at or below `prefix` of
        `bucket` (its results folder <output prefix><run id>/ is then inside `prefix`)."""
        folder = f"s3://{bucket}/{prefix}"
        query = (
            select(Run)
            .where(
                Run.legacy_prefix.is_(None),
                or_(
                    Run.output_uri == folder.removesuffix("/"),
                    func.substr(Run.output_uri, 1, len(folder)) == folder,
                ),
            )
            .limit(1)
        )
        return (await self.session.execute(query)).scalars().first()

    def add(self, claim: LegacyPrefixClaim) -> None:
        self.session.add(claim)
