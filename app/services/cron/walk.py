"""Fire time enumeration on the wall clock of a time zone, with the daylight saving rules."""

from __future__ import annotations

import copy
import functools
import heapq
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from app.services.cron.spec import CronSpec, time_zone

# A walk that finds nothing for this long has run out of fire times (croniter gives up
# after 50 years without a match too).
_HORIZON = timedelta(days=366 * 50)
_SECOND = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --- fire time enumeration -------------------------------------------------------------------
#
# croniter walks the *wall clock*: it is given naive local datetimes, so it knows nothing about
# DST and yields every matching local time in order. `_instants` then maps each wall-clock time
# to its UTC fire instants by the rules in the module docstring. A repeated hour makes that
# mapping non-monotonic (second occurrences come after later wall-clock times' first ones), so
# both walks hold instants in a heap until no later wall-clock time can produce an earlier one.


@functools.lru_cache(maxsize=4096)
def _parsed(expression: str) -> croniter:
    """A parsed expression to copy for each walk: parsing is most of what a short walk costs
    (a tick of 10,000 due schedules parsed 20,000 times). Bounded: expressions are tenants'."""
    return croniter(expression, _EPOCH.replace(tzinfo=None), ret_type=datetime)


def _cron_at(expression: str, start: datetime) -> croniter:
    """A walker of its own (walks may be interleaved) from the shared parse, set at `start`."""
    cron = copy.copy(_parsed(expression))
    cron.set_current(start, force=True)
    return cron


def _is_periodic(spec: CronSpec) -> bool:
    fields = spec.expression.split()
    watched = fields[:2] + fields[5:]  # minute, hour and (if present) seconds
    return any(field.startswith("*") for field in watched)


def _instants(
    wall: datetime, zone: ZoneInfo, periodic: bool
) -> tuple[tuple[datetime, ...], datetime | None]:
    """The UTC fire instants of the wall-clock time `wall`, and the UTC instant the clock jumps
    forward if `wall` falls in a gap (else None)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return (first,), None
    if first < second:  # PEP 495: in a repeated hour fold=0 is the earlier instant
        return ((first, second) if periodic else (first,)), None
    # In a gap fold=0 reads the time with the offset before the jump, fold=1 with the one after;
    # the jump lies between the two readings.
    jump = _jump_instant(second, first, wall, zone)
    return ((() if periodic else (jump,)), jump)


def _jump_instant(low: datetime, high: datetime, wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant in (low, high] whose local time is past `wall`."""
    steps = int((high - low).total_seconds())
    while steps > 1:
        middle = low + timedelta(seconds=steps // 2)
        if middle.astimezone(zone).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
        steps = int((high - low).total_seconds())
    return high


def _fold_length(wall: datetime, zone: ZoneInfo) -> timedelta:
    """How long the repeated hour containing `wall` is, or zero if `wall` occurs once."""
    earlier = wall.replace(tzinfo=zone, fold=0).utcoffset()
    later = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert earlier is not None and later is not None  # ZoneInfo always has an offset
    return max(earlier - later, timedelta(0))


def _matched_wall_times(
    spec: CronSpec, origin: datetime, *, backward: bool
) -> Iterator[tuple[datetime, ...]]:
    """The fire instants of each matching wall-clock time from `origin` on (or back), in
    wall-clock order, skipping times that map to none. May include instants on the wrong side
    of `origin`: callers filter."""
    zone = time_zone(spec.timezone)
    periodic = _is_periodic(spec)
    try:
        local = origin.astimezone(zone)
        wall = local.replace(tzinfo=None, microsecond=0)
        repeat = _fold_length(wall, zone)
        if backward:
            if local.fold == 1:
                # In the second pass of a repeated hour, the hour's later wall-clock times had
                # their first occurrence before `origin`.
                wall += repeat
            # get_prev is strictly before its start; `wall` itself must be included.
            cron = _cron_at(spec.expression, wall + _SECOND)
            step = cron.get_prev
        else:
            if local.fold == 0:
                # In the first pass of a repeated hour, the hour's earlier wall-clock times
                # come round again after `origin`.
                wall -= repeat
            cron = _cron_at(spec.expression, wall)
            step = cron.get_next
    except (ValueError, OverflowError):  # within a day of the calendar's ends
        return
    progress = wall
    while True:
        try:
            candidate: datetime = step(datetime)
            instants, jump = _instants(candidate, zone, periodic)
            if jump is not None:
                # The rest of this gap maps to the same jump (or nowhere): step past the gap.
                if backward:
                    before = (jump - _SECOND).astimezone(zone).replace(tzinfo=None)
                    cron.set_current(before + _SECOND)
                else:
                    cron.set_current(jump.astimezone(zone).replace(tzinfo=None) - _SECOND)
        except (ValueError, OverflowError):  # no further match, or the calendar's end
            return
        if instants:
            progress = candidate
            yield instants
        elif abs(candidate - progress) > _HORIZON:
            return


def fires_after(spec: CronSpec, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after `after`, oldest first."""
    pending: list[datetime] = []
    last = after
    for instants in _matched_wall_times(spec, after, backward=False):
        for instant in instants:
            heapq.heappush(pending, instant)
        # Later wall-clock times never map before this one's earliest instant.
        while pending and pending[0] <= instants[0]:
            fire = heapq.heappop(pending)
            if fire > last:
                last = fire
                yield fire
    for fire in sorted(pending):
        if fire > last:
            last = fire
            yield fire


def fires_until(spec: CronSpec, at: datetime) -> Iterator[datetime]:
    """Fire times at or before `at`, newest first."""
    pending: list[timedelta] = []  # _EPOCH - instant: a min-heap of these is newest first
    last: datetime | None = None
    for instants in _matched_wall_times(spec, at, backward=True):
        for instant in instants:
            heapq.heappush(pending, _EPOCH - instant)
        # Earlier wall-clock times never map after this one's latest instant.
        while pending and _EPOCH - pending[0] >= instants[-1]:
            fire = _EPOCH - heapq.heappop(pending)
            if fire <= at and (last is None or fire < last):
                last = fire
                yield fire
    for fire in sorted((_EPOCH - key for key in pending), reverse=True):
        if fire <= at and (last is None or fire < last):
            last = fire
            yield fire


def due_newest_first(spec: CronSpec, next_fire_at: datetime, now: datetime) -> Iterator[datetime]:
    """`next_fire_at` and every fire time after it up to `now`, newest first."""
    for fire in fires_until(spec, now):
        if fire <= next_fire_at:
            break
        yield fire
    yield next_fire_at.astimezone(UTC)
