"""Cron schedules: validate expressions and time zones, compute fire times, pick misfired runs.

Rules
-----
Expressions
    Five fields ``minute hour day-of-month month day-of-week``, or six fields where the
    sixth (last) field is **seconds**, as croniter reads them: ``"30 2 * * * 15"`` fires at
    02:30:15. Which field is seconds cannot be guessed from the text (``"0 30 2 * * *"`` is
    valid either way), so the rule is positional and fixed. Fewer than five or more than
    six fields are rejected (croniter's seven-field year form is not supported), as are
    croniter's hashed (``H``) and random (``R``) fields: a schedule must fire at the same
    times every time it is computed. ``@hourly``, ``@daily`` (= ``@midnight``),
    ``@weekly``, ``@monthly``, ``@yearly`` (= ``@annually``) are expanded to five fields;
    ``@reboot`` is refused. An expression must fire at least once (``"0 0 30 2 *"`` never
    does).

Time zones
    Fire times are computed on the wall clock of the schedule's IANA time zone and
    returned as aware UTC datetimes.

Daylight saving time
    A schedule is *periodic* when its seconds, minute or hour field starts with ``*``
    (``*``, ``*/15``): it follows real time. Otherwise it names *times of day*
    (``30 2 * * *``, ``0 1,13 * * *``). This is the split Vixie/ISC cron makes for the
    same problem.

    * Spring forward (a wall-clock time that does not exist): a time-of-day schedule fires
      once at the first instant after the gap ("30 2 * * *" in America/New_York on
      2025-03-09 fires at 03:00 EDT = 07:00 UTC); several matched times in one gap fire
      once. A periodic schedule skips the missing wall-clock times, so "0 * * * *" and
      "*/15 * * * *" keep firing every real hour / 15 minutes (and "*/30 2 * * *" does not
      fire at all that day).
    * Fall back (a wall-clock time that occurs twice): a time-of-day schedule fires once,
      at the first occurrence ("30 1 * * *" on 2025-11-02 in America/New_York fires at
      05:30 UTC only). A periodic schedule fires at every instant whose wall-clock time
      matches, so "0 * * * *" fires at 01:00 EDT and again at 01:00 EST.

    Fire times are strictly increasing and never repeat.

Misfires (``due_fire_times``)
    Due are the stored ``next_fire_at`` and every later fire time up to now. One at most
    ``grace_seconds`` old is on time and always runs, whatever the policy. Older ones are
    missed: ``skip`` runs none of them, ``run_once`` runs the latest, ``run_all`` runs the
    newest ``max_catch_up`` of them; ``run_once`` and ``run_all`` drop misses older than
    ``starting_deadline_seconds``. Missed and on-time runs are returned together, oldest
    first. Work is bounded by the number of runs returned, never by the length of an outage.
"""

from __future__ import annotations

import functools
import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cron_descriptor import ExpressionDescriptor, Options
from croniter import CroniterError, croniter

MAX_EXPRESSION_LENGTH = 200
MAX_TIMEZONE_LENGTH = 64
# The most fire times one call returns: the API lists a few, a catch-up creates runs.
MAX_COUNT = 1000

_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week", "second")
_FIELD_ALLOWED = (
    "0-59",
    "0-23",
    "1-31, L, nW or ?",
    "1-12 or jan-dec",
    "0-7 or sun-sat, d#n, Ld or ?",
    "0-59",
)
_FIELD_COUNT_HINT = "expected 5 (m h dom mon dow) or 6 (m h dom mon dow s)"
_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# croniter's hashed/random field syntax (H, H/5, R(0-29), ...); R would differ per computation.
_HASHED_FIELD = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
# croniter splits on ASCII whitespace only; splitting the same way keeps field counts equal.
_FIELDS = re.compile(r"\S+", re.ASCII)
# Names ZoneInfo opens that are not IANA zones: the host's own zone (differs per machine)
# and the tree whose clocks count leap seconds (off from UTC by tens of seconds).
_NOT_IANA_ZONES = {"localtime", "posixrules"}
_NOT_IANA_PREFIXES = ("right/",)

# parse_cron has no clock; "fires at least once" is checked from this fixed instant.
_PROBE_FROM = datetime(2025, 1, 1, tzinfo=UTC)
# A walk that finds nothing for this long has run out of fire times (croniter gives up
# after 50 years without a match too).
_HORIZON = timedelta(days=366 * 50)
_SECOND = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CronError(ValueError):
    """A cron expression or time zone that cannot be scheduled; the message says why."""


@dataclass(frozen=True)
class CronSpec:
    """A validated schedule: build it with `parse_cron`."""

    expression: str
    timezone: str
    has_seconds: bool


class MisfirePolicy(StrEnum):
    """What to do with fire times a stopped or late scheduler missed."""

    SKIP = "skip"
    RUN_ONCE = "run_once"
    RUN_ALL = "run_all"


@functools.lru_cache(maxsize=4096)  # schedulers parse the same few expressions every tick
def parse_cron(expression: str, timezone: str = "UTC") -> CronSpec:
    """Validate a cron expression and an IANA time zone name.

    The spec's expression has aliases expanded and single spaces between fields.
    """
    text = expression.strip()
    if not text:
        raise CronError("cron expression is empty")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise CronError(
            f"cron expression is {len(text)} characters long; the limit is {MAX_EXPRESSION_LENGTH}"
        )
    if text.startswith("@"):
        text = _expand_alias(text)
    fields = _FIELDS.findall(text)
    if len(fields) not in (5, 6):
        plural = "field" if len(fields) == 1 else "fields"
        raise CronError(
            f"cron expression {expression!r} has {len(fields)} {plural}; {_FIELD_COUNT_HINT}"
        )
    for index, field in enumerate(fields):
        _check_field(index, field, len(fields))
    normalised = " ".join(fields)
    try:
        croniter.expand(normalised, strict=True)
    except CroniterError as exc:
        # Each field is valid on its own, so day-of-month and month contradict each other
        # (Feb 30). croniter's strict check ignores day-of-week, but cron fires when either
        # day field matches ("0 0 31 2 mon" fires on February's Mondays): then the probe
        # below decides.
        if fields[4] in ("*", "?"):
            raise CronError(
                f"cron expression {normalised!r} never fires ({_reason(exc)})"
            ) from None
    _zone(timezone)
    spec = CronSpec(expression=normalised, timezone=timezone, has_seconds=len(fields) == 6)
    if not next_fire_times(spec, _PROBE_FROM, 1):
        raise CronError(f"cron expression {normalised!r} never fires in time zone {timezone}")
    return spec


def next_fire_times(spec: CronSpec, after: datetime, count: int) -> list[datetime]:
    """The first `count` fire times strictly after `after`, as aware UTC datetimes, oldest first.

    Fewer are returned only when the schedule has no more fire times (near year 9999).
    """
    _require_aware(after, "after")
    _require_count(count, "count")
    return list(islice(_fires_after(spec, after), count))


def fire_times_between(
    spec: CronSpec, start: datetime, end: datetime, limit: int
) -> list[datetime]:
    """Fire times t with start < t <= end, oldest first, at most `limit` of them."""
    _require_aware(start, "start")
    _require_aware(end, "end")
    _require_count(limit, "limit")
    found: list[datetime] = []
    if limit == 0 or start >= end:
        return found
    for fire in _fires_after(spec, start):
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
    _require_aware(next_fire_at, "next_fire_at")
    _require_aware(now, "now")
    _require_count(max_catch_up, "max_catch_up")
    if starting_deadline_seconds is not None and starting_deadline_seconds < 0:
        raise ValueError("starting_deadline_seconds must be >= 0 or None")
    if not grace_seconds >= 0:  # also refuses NaN
        raise ValueError("grace_seconds must be >= 0")
    if next_fire_at > now:
        return [], next_fire_at

    on_time_from = _seconds_before(now, grace_seconds)
    deadline = (
        None
        if starting_deadline_seconds is None
        else _seconds_before(now, starting_deadline_seconds)
    )
    # Walking back from `now` means a long outage costs only as much as what is kept.
    on_time: list[datetime] = []
    missed: list[datetime] = []
    for fire in _due_newest_first(spec, next_fire_at, now):
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
    following = next(_fires_after(spec, now), None)
    if following is None:
        raise CronError(f"cron expression {spec.expression!r} has no fire time after {now}")
    return due, following


@functools.lru_cache(maxsize=1024)  # listings describe the same few expressions every poll
def describe_cron(expression: str) -> str:
    """The expression in words ("At 02:30 every day", "Every 5 minutes, Monday through Friday"),
    by cron-descriptor; the expression itself when it cannot be described."""
    try:
        fields = parse_cron(expression).expression.split(" ")
    except CronError:
        return expression
    if len(fields) == 6:
        fields = [fields[5], *fields[:5]]  # cron-descriptor reads seconds first
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    try:
        text = str(ExpressionDescriptor(" ".join(fields), options).get_description())
    except Exception:  # a descriptor gap must never fail a listing
        return expression
    day_fields = fields[-3:]
    if text.startswith("At ") and "," not in text and day_fields == ["*", "*", "*"]:
        text += " every day"
    return text


def describe_local(dt: datetime, timezone: str) -> datetime:
    """`dt` on the wall clock of `timezone` (for showing a UTC fire time to people)."""
    _require_aware(dt, "dt")
    return dt.astimezone(_zone(timezone))


# --- validation -----------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    if not name:
        raise CronError("time zone is empty; use an IANA name such as 'Europe/Berlin'")
    if len(name) > MAX_TIMEZONE_LENGTH:
        raise CronError(f"time zone name is longer than {MAX_TIMEZONE_LENGTH} characters")
    unknown = CronError(f"unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin'")
    if name in _NOT_IANA_ZONES or name.startswith(_NOT_IANA_PREFIXES):
        raise unknown
    try:
        return ZoneInfo(name)
    # ValueError: a path outside the database or a file that is not a zone; OSError: a folder.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise unknown from None


def _expand_alias(text: str) -> str:
    alias = text.lower()
    if alias == "@reboot":
        raise CronError("cron alias '@reboot' is not supported: a schedule needs fire times")
    if alias not in _ALIASES:
        names = ", ".join(sorted(_ALIASES))
        raise CronError(f"unknown cron alias {text!r}; expected one of {names}")
    return _ALIASES[alias]


def _check_field(index: int, field: str, field_count: int) -> None:
    """Check one field alone, so the message can name it."""
    name = _FIELD_NAMES[index]
    if _HASHED_FIELD.fullmatch(field):
        raise CronError(
            f"cron {name} field {field!r}: hashed (H) and random (R) values are not supported"
        )
    probe = ["*"] * field_count
    probe[index] = field
    try:
        croniter.expand(" ".join(probe))
    except CroniterError:
        raise CronError(
            f"cron {name} field {field!r} is not valid; allowed: {_FIELD_ALLOWED[index]},"
            " with , - / *"
        ) from None


def _reason(exc: Exception) -> str:
    # croniter wraps unexpected errors with a whole traceback as the message.
    message = str(exc).strip()
    return message.splitlines()[-1] if message else type(exc).__name__


def _seconds_before(instant: datetime, seconds: float) -> datetime | None:
    """`seconds` before `instant`, or None when that is before the calendar starts."""
    try:
        return instant - timedelta(seconds=seconds)
    except OverflowError:
        return None


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _require_count(value: int, name: str) -> None:
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be between 0 and {MAX_COUNT}")


# --- fire time enumeration -------------------------------------------------------------------
#
# croniter walks the *wall clock*: it is given naive local datetimes, so it knows nothing about
# DST and yields every matching local time in order. `_instants` then maps each wall-clock time
# to its UTC fire instants by the rules in the module docstring. A repeated hour makes that
# mapping non-monotonic (second occurrences come after later wall-clock times' first ones), so
# both walks hold instants in a heap until no later wall-clock time can produce an earlier one.


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
    zone = _zone(spec.timezone)
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
            cron = croniter(spec.expression, wall + _SECOND, ret_type=datetime)
            step = cron.get_prev
        else:
            if local.fold == 0:
                # In the first pass of a repeated hour, the hour's earlier wall-clock times
                # come round again after `origin`.
                wall -= repeat
            cron = croniter(spec.expression, wall, ret_type=datetime)
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


def _fires_after(spec: CronSpec, after: datetime) -> Iterator[datetime]:
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


def _fires_until(spec: CronSpec, at: datetime) -> Iterator[datetime]:
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


def _due_newest_first(spec: CronSpec, next_fire_at: datetime, now: datetime) -> Iterator[datetime]:
    """`next_fire_at` and every fire time after it up to `now`, newest first."""
    for fire in _fires_until(spec, now):
        if fire <= next_fire_at:
            break
        yield fire
    yield next_fire_at.astimezone(UTC)
