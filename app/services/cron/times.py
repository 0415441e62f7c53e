"""Fire times of a spec: the next ones, those in a window, and those due under a misfire policy."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice

from app.services.cron.spec import MAX_COUNT, CronError, CronSpec, MisfirePolicy
from app.services.cron.walk import due_newest_first, fires_after


def next_fire_times(spec: CronSpec, after: datetime, count: int) -> list[datetime]:
    """The first `count` fire times strictly after `after`, as aware UTC datetimes, oldest first.

    Fewer are returned only when the schedule has no more fire times (near year 9999).
    """
    require_aware(after, "after")
    require_count(count, "count")
    return list(islice(fires_after(spec, after), count))


def preview_fire_times(
    spec: CronSpec, next_fire_at: datetime | None, now: datetime, count: int
) -> list[datetime]:
    """The next `count` fire times shown for a schedule: from its stored next fire, or from
    `now` when it has none (while paused)."""
    if next_fire_at is None:
        return next_fire_times(spec, now, count)
    return [next_fire_at, *next_fire_times(spec, next_fire_at, count - 1)]


def fire_times_between(
    spec: CronSpec, start: datetime, end: datetime, limit: int
) -> list[datetime]:
    """Fire times t with start < t <= end, oldest first, at most `limit` of them."""
    require_aware(start, "start")
    require_aware(end, "end")
    require_count(limit, "limit")
    found: list[datetime] = []
    if limit == 0 or start >= end:
        return found
    for fire in fires_after(spec, start):
        if fire > end:
            break
        found.append(fire)
        if len(found) == limit:
            break
    return found


def due_fire_times(
    spec: CronSpec,
    *,
    next_fire_at: datetime,
    now: datetime,
    policy: MisfirePolicy,
    starting_deadline_seconds: int | None,
    max_catch_up: int,
    grace_seconds: float = 60,
) -> tuple[list[datetime], datetime]:
    """The fire times to create runs for at `now` (oldest first) and the next fire time after `now`.

    `next_fire_at` is the stored next fire time; it and every later fire time up to `now` are
    due. Those at most `grace_seconds` old always run; older ones follow `policy` (see the
    module docstring). When `next_fire_at` is still in the future nothing is due and it is
    returned unchanged.
    """
    require_aware(next_fire_at, "next_fire_at")
    require_aware(now, "now")
    require_count(max_catch_up, "max_catch_up")
    if starting_deadline_seconds is not None and starting_deadline_seconds < 0:
        raise ValueError("starting_deadline_seconds must be >= 0 or None")
    if not grace_seconds >= 0:  # also refuses NaN
        raise ValueError("grace_seconds must be >= 0")
    if next_fire_at > now:
        return [], next_fire_at

    on_time_from = seconds_before(now, grace_seconds)
    deadline = (
        None
        if starting_deadline_seconds is None
        else seconds_before(now, starting_deadline_seconds)
    )
    # Mostly only the stored fire time is due: one step forward shows it, and gives the next
    # fire time too. Otherwise walking back from `now` means a long outage costs only as
    # much as what is kept.
    following = next(fires_after(spec, next_fire_at), None)
    newest_first: Iterator[datetime] = iter([next_fire_at.astimezone(UTC)])
    if following is not None and following <= now:
        newest_first = due_newest_first(spec, next_fire_at, now)
        following = next(fires_after(spec, now), None)
    on_time: list[datetime] = []
    missed: list[datetime] = []
    for fire in newest_first:
        if on_time_from is None or fire >= on_time_from:
            on_time.append(fire)
            if len(on_time) == MAX_COUNT:
                break
            continue
        if policy is MisfirePolicy.SKIP or (deadline is not None and fire < deadline):
            break
        if policy is MisfirePolicy.RUN_ALL and len(missed) == max_catch_up:
            break
        missed.append(fire)
        if policy is MisfirePolicy.RUN_ONCE:
            break
    due = on_time + missed
    due.reverse()
    if following is None:
        raise CronError(f"cron expression {spec.expression!r} has no fire time after {now}")
    return due, following


def seconds_before(instant: datetime, seconds: float) -> datetime | None:
    """`seconds` before `instant`, or None when that is before the calendar starts."""
    try:
        return instant - timedelta(seconds=seconds)
    except OverflowError:
        return None


def require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def require_count(value: int, name: str) -> None:
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be between 0 and {MAX_COUNT}")
