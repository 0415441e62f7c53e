"""Legacy result prefixes: each is claimed by one run per bucket, and none may overlap another
run's results folder, so no legacy run ever overwrites another run's artifacts."""

from __future__ import annotations

from typing import NoReturn

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import Conflict
from app.models import LegacyPrefixClaim, Run
from app.repositories.legacy import LegacyClaimRepository
from app.services.s3uri import parse_s3_uri


class ResultPrefixTaken(Conflict):
    code = "result_prefix_taken"


def enclosing_prefixes(prefix: str) -> list[str]:
    """ "a/b/" -> ["a/", "a/b/"]: the folders that hold `prefix`, itself included."""
    segments = prefix.removesuffix("/").split("/")
    return ["/".join(segments[: n + 1]) + "/" for n in range(len(segments))]


def folders_of_runs_above(prefix: str) -> list[tuple[str, str]]:
    """Every (output prefix, run id) whose results folder <output prefix><run id>/ would
    hold `prefix`: "a/b/" -> [("", "a"), ("a/", "b")]."""
    segments = prefix.removesuffix("/").split("/")
    return [("".join(s + "/" for s in segments[:n]), segments[n]) for n in range(len(segments))]


async def claim_result_prefix(session: AsyncSession, run: Run, owner: str) -> None:
    """Records that `run` writes under its legacy prefix, or raises ResultPrefixTaken if the
    prefix overlaps a claimed one or another run's results folder. In the request's
    transaction: the claim commits with the run."""
    assert run.legacy_prefix is not None
    bucket, prefix = parse_s3_uri(run.output_uri).bucket, run.legacy_prefix
    repo = LegacyClaimRepository(session)
    await repo.lock_bucket(bucket)
    claimed = await repo.overlapping_claim(bucket, prefix, enclosing_prefixes(prefix))
    if claimed is not None:
        other_prefix, other_run, other_owner = claimed
        whose = (
            f"run {other_run}'s results at {other_prefix!r}"
            if other_owner == owner
            else ("another run's results")
        )
        raise ResultPrefixTaken(
            f"the result prefix {prefix!r} in bucket {bucket!r} overlaps {whose}; choose "
            "another destination_s3_prefix or exec_id"
        )
    above = folders_of_runs_above(prefix)
    for other in await repo.runs_by_id({run_id for _, run_id in above}):
        where = parse_s3_uri(other.output_uri)
        if where.bucket == bucket and (where.prefix, other.id) in above:
            _raise_inside(prefix, bucket, other, owner, "is inside")
    below = await repo.run_writing_below(bucket, prefix)
    if below is not None:
        _raise_inside(prefix, bucket, below, owner, "holds")
    repo.add(LegacyPrefixClaim(run_id=run.id, bucket=bucket, prefix=prefix, created_at=utcnow()))
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent claim the lock did not serialise (SQLite)
        raise ResultPrefixTaken(
            f"the result prefix {prefix!r} in bucket {bucket!r} was just claimed by another run"
        ) from exc


def _raise_inside(prefix: str, bucket: str, other: Run, owner: str, relation: str) -> NoReturn:
    whose = f"run {other.id}'s results folder" if other.owner == owner else "another run's results"
    raise ResultPrefixTaken(
        f"the result prefix {prefix!r} in bucket {bucket!r} {relation} {whose}; choose another "
        "destination_s3_prefix or exec_id"
    )
