"""Cron expressions, fire times across daylight saving time, and which misfired runs to create."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from app.services.cron import (
    MAX_COUNT,
    CronError,
    CronSpec,
    MisfirePolicy,
    describe_cron,
    describe_local,
    due_fire_times,
    fire_times_between,
    next_fire_times,
    parse_cron,
)

NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"
SKIP, RUN_ONCE, RUN_ALL = MisfirePolicy.SKIP, MisfirePolicy.RUN_ONCE, MisfirePolicy.RUN_ALL


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def due(
    spec: CronSpec,
    *,
    next_fire_at: datetime,
    now: datetime,
    policy: MisfirePolicy,
    deadline: int | None = None,
    cap: int = 100,
    grace: float = 60,
) -> tuple[list[datetime], datetime]:
    return due_fire_times(
        spec,
        next_fire_at=next_fire_at,
        now=now,
        policy=policy,
        starting_deadline_seconds=deadline,
        max_catch_up=cap,
        grace_seconds=grace,
    )


def local_clock(fires: list[datetime], zone: str) -> list[str]:
    return [describe_local(fire, zone).strftime("%m-%d %H:%M:%S%z") for fire in fires]


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expression", "has_seconds"),
    [
        ("*/15 * * * *", "*/15 * * * *", False),
        ("  0   9 * *   mon-fri ", "0 9 * * mon-fri", False),
        ("0\t0 1 * *", "0 0 1 * *", False),
        ("30 2 * * * 15", "30 2 * * * 15", True),
        ("* * * * * *", "* * * * * *", True),
        ("0 0 29 2 *", "0 0 29 2 *", False),
        ("0 0 L * *", "0 0 L * *", False),
        ("0 0 * * 5#3", "0 0 * * 5#3", False),
        ("0 0 15W * *", "0 0 15W * *", False),
        ("0 12 ? * MON", "0 12 ? * MON", False),
        ("0 0 * * 7", "0 0 * * 7", False),
        # croniter's strict check alone calls this impossible; cron fires on February's Mondays.
        ("0 0 31 2 mon", "0 0 31 2 mon", False),
    ],
)
def test_valid_expressions_are_accepted_with_whitespace_normalised(
    text: str, expression: str, has_seconds: bool
) -> None:
    assert parse_cron(text) == CronSpec(
        expression=expression, timezone="UTC", has_seconds=has_seconds
    )


@pytest.mark.parametrize(
    ("alias", "expression"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
        (" @hourly ", "0 * * * *"),
    ],
)
def test_aliases_expand_to_five_fields(alias: str, expression: str) -> None:
    assert parse_cron(alias, BERLIN) == CronSpec(expression, BERLIN, has_seconds=False)


def test_the_seconds_field_is_the_last_one() -> None:
    every_twenty_seconds = parse_cron("* * * * * */20")
    assert next_fire_times(every_twenty_seconds, utc(2025, 1, 1, 12, 0, 5), 3) == [
        utc(2025, 1, 1, 12, 0, 20),
        utc(2025, 1, 1, 12, 0, 40),
        utc(2025, 1, 1, 12, 1, 0),
    ]
    assert next_fire_times(parse_cron("30 2 * * * 15"), utc(2025, 1, 1), 1) == [
        utc(2025, 1, 1, 2, 30, 15)
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cron expression is empty"),
        ("   ", "cron expression is empty"),
        (
            "* * *",
            "cron expression '* * *' has 3 fields; expected 5 (m h dom mon dow) or 6 (m h dom mon dow s)",
        ),
        ("hello", "'hello' has 1 field; expected 5"),
        ("* * * * * * *", "has 7 fields; expected 5"),
        ("0 0 1 1 * 0 2030", "has 7 fields"),
        ("61 * * * *", "minute field '61' is not valid; allowed: 0-59"),
        ("* 24 * * *", "hour field '24' is not valid; allowed: 0-23"),
        ("0 0 32 * *", "day-of-month field '32' is not valid"),
        ("0 0 0 * *", "day-of-month field '0' is not valid"),
        ("0 0 * 13 *", "month field '13' is not valid; allowed: 1-12 or jan-dec"),
        ("0 0 * * 8", "day-of-week field '8' is not valid"),
        ("0 0 * * funday", "day-of-week field 'funday' is not valid"),
        ("* * * * * 60", "second field '60' is not valid; allowed: 0-59"),
        ("*/0 * * * *", "minute field '*/0' is not valid"),
        ("5-1/x * * * *", "minute field '5-1/x' is not valid"),
        ("-1 * * * *", "minute field '-1' is not valid"),
        ("0 0 * * mon,2#3", "day-of-week field 'mon,2#3' is not valid"),
        ("0 0 ? * *" + " ?", "second field '?' is not valid"),
        ("H * * * *", "hashed (H) and random (R) values are not supported"),
        ("0 R * * *", "hour field 'R': hashed (H) and random (R)"),
        ("0 0 * * * R(0-29)", "second field 'R(0-29)': hashed"),
        ("0 0 31 2 *", "cron expression '0 0 31 2 *' never fires"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("0 0 31 2 ?", "never fires"),
        ("0 0 31 2 1#1", "never fires in time zone UTC"),
        ("@reboot", "cron alias '@reboot' is not supported"),
        ("@fortnightly", "unknown cron alias '@fortnightly'; expected one of @annually, @daily"),
        ("@daily 5", "unknown cron alias"),
        ("0 0 * * *\u00a00", "day-of-week field"),
    ],
)
def test_invalid_expressions_are_rejected_with_a_message_naming_the_problem(
    text: str, message: str
) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(text)
    assert message in str(caught.value)


def test_garbage_is_a_cron_error_and_whatever_is_accepted_fires() -> None:
    rng = random.Random(42)
    pieces = ["*", "1", "*/5", "1-5", "0,30", "L", "5#2", "15W", "?", "mon-fri", "jan", "l5"]
    garbage = "0123456789*/-,?LW#lwHR()jnmoafues"
    for _ in range(2000):
        fields = [
            "".join(rng.choice(garbage) for _ in range(rng.randint(1, 5)))
            if rng.random() < 0.15
            else rng.choice(pieces)
            for _ in range(rng.choice([5, 5, 6]))
        ]
        try:
            spec = parse_cron(" ".join(fields), rng.choice(["UTC", NEW_YORK]))
        except CronError:
            continue  # anything else escaping fails the test
        # Whatever is accepted can be scheduled.
        assert len(next_fire_times(spec, utc(2025, 6, 1), 3)) == 3, spec


def test_expressions_are_capped_at_200_characters() -> None:
    longest = "0" + " " * 192 + "0 * * *"
    assert len(longest) == 200
    assert parse_cron(longest).expression == "0 0 * * *"
    with pytest.raises(CronError, match="201 characters long; the limit is 200"):
        parse_cron(longest + "*")


@pytest.mark.parametrize("zone", ["UTC", NEW_YORK, BERLIN, "Asia/Kolkata", "Etc/GMT+5"])
def test_iana_time_zones_are_accepted(zone: str) -> None:
    assert parse_cron("0 9 * * *", zone).timezone == zone


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        ("", "time zone is empty"),
        ("Mars/Olympus", "unknown time zone 'Mars/Olympus'; use an IANA name"),
        ("america/new_york", "unknown time zone"),
        ("America", "unknown time zone"),
        ("../../etc/passwd", "unknown time zone"),
        ("/etc/localtime", "unknown time zone"),
        ("localtime", "unknown time zone"),
        ("right/UTC", "unknown time zone"),
        ("posixrules", "unknown time zone"),
        ("zone.tab", "unknown time zone"),
        ("UTC\x00", "unknown time zone"),
        ("Europe/" + "x" * 60, "longer than 64 characters"),
    ],
)
def test_unknown_time_zones_are_rejected(zone: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron("0 9 * * *", zone)
    assert message in str(caught.value)


def test_cron_errors_are_value_errors() -> None:
    assert issubclass(CronError, ValueError)


# --- fire times and daylight saving time ------------------------------------------------------


def test_five_field_schedules_fire_on_whole_minutes_strictly_after_the_instant() -> None:
    quarter_hours = parse_cron("*/15 * * * *")
    assert next_fire_times(quarter_hours, utc(2025, 1, 1, 12, 7, 30, 500), 2) == [
        utc(2025, 1, 1, 12, 15),
        utc(2025, 1, 1, 12, 30),
    ]
    assert next_fire_times(quarter_hours, utc(2025, 1, 1, 12, 15), 1) == [utc(2025, 1, 1, 12, 30)]


def test_the_starting_instant_may_be_in_any_time_zone() -> None:
    spec = parse_cron("0 9 * * *", BERLIN)
    india = timezone(timedelta(hours=5, minutes=30))
    after = datetime(2025, 6, 1, 12, 0, tzinfo=india)
    assert next_fire_times(spec, after, 2) == next_fire_times(spec, after.astimezone(UTC), 2)
    assert next_fire_times(spec, after, 1) == [utc(2025, 6, 1, 7, 0)]
    assert next_fire_times(spec, after, 1)[0].tzinfo is UTC


@pytest.mark.parametrize(
    ("zone", "expression", "after", "expected"),
    [
        # Spring forward: 02:30 does not exist on the day; it fires once at 03:00 local.
        (
            NEW_YORK,
            "30 2 * * *",
            utc(2025, 3, 7, 12),
            [utc(2025, 3, 8, 7, 30), utc(2025, 3, 9, 7), utc(2025, 3, 10, 6, 30)],
        ),
        (
            BERLIN,
            "30 2 * * *",
            utc(2025, 3, 28, 12),
            [utc(2025, 3, 29, 1, 30), utc(2025, 3, 30, 1), utc(2025, 3, 31, 0, 30)],
        ),
        # Two times in the gap still fire once.
        (
            NEW_YORK,
            "0,30 2 * * *",
            utc(2025, 3, 8, 12),
            [utc(2025, 3, 9, 7), utc(2025, 3, 10, 6), utc(2025, 3, 10, 6, 30)],
        ),
        # Fall back: 01:30 (New York) / 02:30 (Berlin) happens twice; it fires at the first.
        (
            NEW_YORK,
            "30 1 * * *",
            utc(2025, 11, 1),
            [utc(2025, 11, 1, 5, 30), utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 6, 30)],
        ),
        (
            BERLIN,
            "30 2 * * *",
            utc(2025, 10, 25),
            [utc(2025, 10, 25, 0, 30), utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)],
        ),
        # Several fixed hours in and after the repeated hour: each once.
        (
            NEW_YORK,
            "0 1,2 * * *",
            utc(2025, 11, 2, 4),
            [utc(2025, 11, 2, 5), utc(2025, 11, 2, 7), utc(2025, 11, 3, 6)],
        ),
    ],
)
def test_time_of_day_schedules_fire_once_a_day_across_dst(
    zone: str, expression: str, after: datetime, expected: list[datetime]
) -> None:
    assert next_fire_times(parse_cron(expression, zone), after, len(expected)) == expected


@pytest.mark.parametrize(
    "after",
    [
        utc(2025, 11, 2, 5, 30),
        utc(2025, 11, 2, 6),
        utc(2025, 11, 2, 6, 30),
        utc(2025, 11, 2, 6, 45),
    ],
)
def test_a_repeated_time_does_not_fire_again_when_asked_from_inside_the_repeat(
    after: datetime,
) -> None:
    assert next_fire_times(parse_cron("30 1 * * *", NEW_YORK), after, 1) == [
        utc(2025, 11, 3, 6, 30)
    ]


def test_an_instant_just_before_a_repeated_time_gets_its_first_occurrence() -> None:
    spec = parse_cron("30 1 * * *", NEW_YORK)
    assert next_fire_times(spec, utc(2025, 11, 2, 5, 29, 59), 2) == [
        utc(2025, 11, 2, 5, 30),
        utc(2025, 11, 3, 6, 30),
    ]


def test_an_hourly_schedule_fires_in_both_passes_of_a_repeated_hour() -> None:
    hourly = parse_cron("0 * * * *", NEW_YORK)
    fires = next_fire_times(hourly, utc(2025, 11, 2, 3, 30), 4)
    assert local_clock(fires, NEW_YORK) == [
        "11-02 00:00:00-0400",
        "11-02 01:00:00-0400",
        "11-02 01:00:00-0500",
        "11-02 02:00:00-0500",
    ]


def test_an_hourly_schedule_skips_the_missing_hour_of_a_spring_forward() -> None:
    hourly = parse_cron("0 * * * *", NEW_YORK)
    fires = next_fire_times(hourly, utc(2025, 3, 9, 5, 30), 3)
    assert local_clock(fires, NEW_YORK) == [
        "03-09 01:00:00-0500",
        "03-09 03:00:00-0400",
        "03-09 04:00:00-0400",
    ]


# Windows of six real hours around each 2025 transition.
_TRANSITION_WINDOWS = [
    pytest.param(NEW_YORK, utc(2025, 3, 9, 4), id="new-york-spring"),
    pytest.param(NEW_YORK, utc(2025, 11, 2, 3), id="new-york-fall"),
    pytest.param(BERLIN, utc(2025, 3, 29, 22), id="berlin-spring"),
    pytest.param(BERLIN, utc(2025, 10, 25, 22), id="berlin-fall"),
]


@pytest.mark.parametrize(("zone", "start"), _TRANSITION_WINDOWS)
@pytest.mark.parametrize(
    ("expression", "period"),
    [
        ("0 * * * *", timedelta(hours=1)),
        ("30 * * * *", timedelta(hours=1)),
        ("*/15 * * * *", timedelta(minutes=15)),
        ("* * * * *", timedelta(minutes=1)),
        ("* * * * * */30", timedelta(seconds=30)),
    ],
)
def test_periodic_schedules_keep_their_period_in_real_time_across_dst(
    zone: str, start: datetime, expression: str, period: timedelta
) -> None:
    end = start + timedelta(hours=6)
    fires = fire_times_between(parse_cron(expression, zone), start, end, MAX_COUNT)
    assert len(fires) == timedelta(hours=6) // period
    assert end - period < fires[-1] <= end
    assert all(later - earlier == period for earlier, later in itertools.pairwise(fires))


def test_a_periodic_schedule_inside_one_hour_runs_through_both_passes_of_it() -> None:
    spec = parse_cron("*/15 1 * * *", NEW_YORK)
    fires = fire_times_between(spec, utc(2025, 11, 2), utc(2025, 11, 3), MAX_COUNT)
    assert fires == [utc(2025, 11, 2, 5) + timedelta(minutes=15 * i) for i in range(8)]


def test_a_periodic_schedule_asked_from_the_first_pass_of_a_repeated_hour_gets_the_second() -> None:
    spec = parse_cron("*/15 * * * *", NEW_YORK)
    assert local_clock(next_fire_times(spec, utc(2025, 11, 2, 5, 40), 4), NEW_YORK) == [
        "11-02 01:45:00-0400",
        "11-02 01:00:00-0500",
        "11-02 01:15:00-0500",
        "11-02 01:30:00-0500",
    ]


@pytest.mark.parametrize(("zone", "fires"), [(NEW_YORK, False), (BERLIN, True)])
def test_an_expression_matching_only_missing_times_is_rejected_as_never_firing(
    zone: str, fires: bool
) -> None:
    # Every second of 02:00-02:59 on the second Sunday of March: New York's missing hour.
    if fires:
        assert parse_cron("* 2 * 3 0#2 *", zone).has_seconds
        return
    with pytest.raises(CronError, match="never fires in time zone America/New_York"):
        parse_cron("* 2 * 3 0#2 *", zone)


def test_a_periodic_schedule_that_only_matches_missing_times_does_not_fire_that_day() -> None:
    spec = parse_cron("*/30 2 * * *", NEW_YORK)
    fires = fire_times_between(spec, utc(2025, 3, 8), utc(2025, 3, 11), MAX_COUNT)
    assert local_clock(fires, NEW_YORK) == [
        "03-08 02:00:00-0500",
        "03-08 02:30:00-0500",
        "03-10 02:00:00-0400",
        "03-10 02:30:00-0400",
    ]


# --- an independent oracle, minute by minute -------------------------------------------------
#
# For five-field expressions without L/W/#, check every minute of two days around each 2025
# transition: an instant fires when its wall-clock time matches (periodic schedules: every
# instant; time-of-day schedules: the first occurrence only), and a time-of-day schedule
# also fires at the instant a forward jump skips over a matching wall-clock time.

_ORACLE_ZONES = [
    NEW_YORK,
    BERLIN,
    "Europe/Dublin",  # "negative DST" in the tz database
    "Australia/Sydney",  # southern hemisphere
    "Australia/Lord_Howe",  # a 30-minute shift
    "Pacific/Chatham",  # +12:45 / +13:45, shifts at 02:45
    "America/Santiago",  # shifts at midnight: the repeated hour is 23:00 the day before
    "America/Havana",  # midnight does not exist on the spring-forward day
]
_ORACLE_EXPRESSIONS = [
    "30 2 * * *",
    "30 1 * * *",
    "0 0 * * *",
    "45 2 * * *",
    "0 2 * * 0",
    "15 3 * * 0",
    "0,30 1-3 * * *",
    "0 0-4 * * *",
    "30 23 * * *",
    "0 * * * *",
    "30 * * * *",
    "*/15 * * * *",
    "*/20 2 * * *",
    "*/7 0-3 * * *",
]


def _transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """The instants in `year` at which `zone`'s UTC offset changes (to the minute)."""
    found = []
    hour = timedelta(hours=1)
    instant = datetime(year, 1, 1, tzinfo=UTC)
    while instant.year == year:
        if instant.astimezone(zone).utcoffset() != (instant + hour).astimezone(zone).utcoffset():
            minute = instant
            offset = minute.astimezone(zone).utcoffset()
            while minute.astimezone(zone).utcoffset() == offset:
                minute += timedelta(minutes=1)
            found.append(minute)
        instant += hour
    return found


def _minutes(
    zone: ZoneInfo, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, int]]:
    """Every whole minute in (start, end] as (instant, local wall-clock time, fold)."""
    minute = timedelta(minutes=1)
    found = []
    instant = start + minute
    while instant <= end:
        local = instant.astimezone(zone)
        found.append((instant, local.replace(tzinfo=None), local.fold))
        instant += minute
    return found


def _matcher(expression: str) -> Callable[[datetime], bool]:
    expanded, _nth = croniter.expand(expression)
    minutes, hours, days, months, weekdays = (
        None if values == ["*"] else set(values) for values in expanded
    )

    def matches(wall: datetime) -> bool:
        def ok(values: set[int] | None, value: int) -> bool:
            return values is None or value in values

        weekday = wall.isoweekday() % 7
        if days is not None and weekdays is not None:
            day_ok = wall.day in days or weekday in weekdays
        else:
            day_ok = ok(days, wall.day) and ok(weekdays, weekday)
        return (
            ok(minutes, wall.minute) and ok(hours, wall.hour) and ok(months, wall.month) and day_ok
        )

    return matches


def _oracle(expression: str, minutes: list[tuple[datetime, datetime, int]]) -> list[datetime]:
    matches = _matcher(expression)
    periodic = any(field.startswith("*") for field in expression.split()[:2])
    minute = timedelta(minutes=1)
    fires = []
    for (_, previous, _), (instant, wall, fold) in itertools.pairwise(minutes):
        fires_now = matches(wall) and (periodic or fold == 0)
        if not periodic and wall - previous > minute:  # the clock jumped over some times
            skipped = previous + minute
            while skipped < wall and not fires_now:
                fires_now = matches(skipped)
                skipped += minute
        if fires_now:
            fires.append(instant)
    return fires


@pytest.mark.parametrize("zone_name", _ORACLE_ZONES)
def test_fire_times_match_a_minute_by_minute_oracle_around_every_transition(
    zone_name: str,
) -> None:
    zone = ZoneInfo(zone_name)
    transitions = _transitions(zone, 2025)
    assert len(transitions) == 2, transitions
    for transition in transitions:
        start, end = transition - timedelta(hours=25), transition + timedelta(hours=25)
        minutes = _minutes(zone, start - timedelta(minutes=1), end)
        # Also start just before, inside and just after the repeated or missing time.
        offsets = [timedelta(minutes=minutes) for minutes in (-61, -20, -1, 0, 1, 20, 61)]
        for expression in _ORACLE_EXPRESSIONS:
            spec = parse_cron(expression, zone_name)
            expected = _oracle(expression, minutes)
            assert fire_times_between(spec, start, end, MAX_COUNT) == expected, (
                expression,
                transition,
            )
            for offset in offsets:
                later_start = transition + offset
                assert (
                    fire_times_between(spec, later_start, end, 12)
                    == [fire for fire in expected if fire > later_start][:12]
                ), (expression, later_start)


# --- properties over random expressions --------------------------------------------------------

_RANDOM_ZONES = ["UTC", NEW_YORK, BERLIN, "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham"]


def _random_field(rng: random.Random, low: int, high: int) -> str:
    kind = rng.random()
    if kind < 0.3:
        return "*"
    if kind < 0.45:
        return f"*/{rng.randint(2, max(2, (high - low) // 2))}"
    if kind < 0.65:
        return str(rng.randint(low, high))
    if kind < 0.8:
        first = rng.randint(low, high)
        return f"{first}-{rng.randint(first, high)}"
    return ",".join(str(value) for value in sorted({rng.randint(low, high) for _ in range(3)}))


def _random_spec(rng: random.Random) -> CronSpec:
    while True:
        fields = [
            _random_field(rng, 0, 59),
            _random_field(rng, 0, 23),
            _random_field(rng, 1, 31) if rng.random() < 0.5 else "*",
            _random_field(rng, 1, 12) if rng.random() < 0.3 else "*",
            _random_field(rng, 0, 6) if rng.random() < 0.3 else "*",
        ]
        if rng.random() < 0.25:
            fields.append(_random_field(rng, 0, 59))
        try:
            return parse_cron(" ".join(fields), rng.choice(_RANDOM_ZONES))
        except CronError:
            continue  # e.g. "0 0 31 2 *": draw again


def _random_instant(rng: random.Random) -> datetime:
    # Half of the draws land within a day of a 2025 transition in New York or Berlin.
    if rng.random() < 0.5:
        around = rng.choice(
            [utc(2025, 3, 9, 7), utc(2025, 11, 2, 6), utc(2025, 3, 30, 1), utc(2025, 10, 26, 1)]
        )
        return around + timedelta(seconds=rng.randint(-86_400, 86_400))
    return utc(2024, 1, 1) + timedelta(seconds=rng.randint(0, 3 * 365 * 86_400))


def test_fire_times_are_strictly_increasing_utc_and_resumable_from_any_of_them() -> None:
    rng = random.Random(20250309)
    for _ in range(150):
        spec = _random_spec(rng)
        after = _random_instant(rng)
        fires = next_fire_times(spec, after, 25)
        assert len(fires) == 25, spec
        assert fires[0] > after, spec
        assert all(fire.tzinfo is UTC for fire in fires)
        assert all(a < b for a, b in itertools.pairwise(fires)), (spec, after)
        # A scheduler stores one fire time and asks again from it: same sequence.
        index = rng.randrange(24)
        assert next_fire_times(spec, fires[index], 25 - index - 1) == fires[index + 1 :], spec
        # Walking back from the last one (catch-up) finds the very same times.
        caught_up, _ = due(
            spec, next_fire_at=fires[0], now=fires[-1], policy=RUN_ALL, cap=MAX_COUNT, grace=0
        )
        assert caught_up == fires, (spec, after)


def test_due_fire_times_always_move_next_fire_at_past_now() -> None:
    rng = random.Random(7)
    for _ in range(150):
        spec = _random_spec(rng)
        now = _random_instant(rng)
        next_fire_at = now + timedelta(seconds=rng.randint(-10 * 86_400, 3_600))
        cap = rng.randint(0, 20)
        fires, following = due(
            spec,
            next_fire_at=next_fire_at,
            now=now,
            policy=rng.choice(list(MisfirePolicy)),
            deadline=rng.choice([None, 0, 30, 600, 86_400]),
            cap=cap,
            grace=rng.choice([0, 1, 60]),
        )
        if next_fire_at > now:
            assert (fires, following) == ([], next_fire_at)
            continue
        assert following > now
        assert following == next_fire_times(spec, now, 1)[0]
        assert all(next_fire_at <= fire <= now for fire in fires)
        assert all(a < b for a, b in itertools.pairwise(fires))


# --- limits and edges ----------------------------------------------------------------------------


def test_fire_times_between_excludes_the_start_includes_the_end_and_stops_at_the_limit() -> None:
    every_five = parse_cron("*/5 * * * *")
    start, end = utc(2025, 1, 1, 12), utc(2025, 1, 1, 12, 20)
    assert fire_times_between(every_five, start, end, 10) == [
        utc(2025, 1, 1, 12, 5),
        utc(2025, 1, 1, 12, 10),
        utc(2025, 1, 1, 12, 15),
        utc(2025, 1, 1, 12, 20),
    ]
    assert fire_times_between(every_five, start, end, 2) == [
        utc(2025, 1, 1, 12, 5),
        utc(2025, 1, 1, 12, 10),
    ]
    assert fire_times_between(every_five, start, end, 0) == []
    assert fire_times_between(every_five, end, start, 10) == []
    assert fire_times_between(every_five, start, start, 10) == []


def test_a_per_second_schedule_over_a_year_stops_at_the_limit() -> None:
    every_second = parse_cron("* * * * * *")
    fires = fire_times_between(every_second, utc(2025, 1, 1), utc(2026, 1, 1), MAX_COUNT)
    assert len(fires) == MAX_COUNT
    assert fires[-1] == utc(2025, 1, 1, 0, 16, 40)


@pytest.mark.parametrize("count", [-1, MAX_COUNT + 1])
def test_counts_outside_the_cap_are_refused(count: int) -> None:
    spec = parse_cron("* * * * *")
    with pytest.raises(ValueError, match="between 0 and 1000"):
        next_fire_times(spec, utc(2025, 1, 1), count)
    with pytest.raises(ValueError, match="between 0 and 1000"):
        fire_times_between(spec, utc(2025, 1, 1), utc(2025, 1, 2), count)


def test_counts_at_the_edges_of_the_cap_are_served() -> None:
    spec = parse_cron("* * * * *")
    assert next_fire_times(spec, utc(2025, 1, 1), 0) == []
    assert len(next_fire_times(spec, utc(2025, 1, 1), MAX_COUNT)) == MAX_COUNT


@pytest.mark.parametrize(
    "call",
    [
        lambda spec: next_fire_times(spec, datetime(2025, 1, 1), 1),
        lambda spec: fire_times_between(spec, datetime(2025, 1, 1), utc(2025, 1, 2), 1),
        lambda spec: fire_times_between(spec, utc(2025, 1, 1), datetime(2025, 1, 2), 1),
        lambda spec: due(spec, next_fire_at=datetime(2025, 1, 1), now=utc(2025, 1, 1), policy=SKIP),
        lambda spec: due(spec, next_fire_at=utc(2025, 1, 1), now=datetime(2025, 1, 1), policy=SKIP),
        lambda spec: describe_local(datetime(2025, 1, 1), BERLIN),
    ],
)
def test_naive_datetimes_are_refused(call: Callable[[CronSpec], object]) -> None:
    with pytest.raises(ValueError, match="must be a timezone-aware datetime"):
        call(parse_cron("* * * * *"))


def test_schedules_run_out_quietly_at_the_end_of_the_calendar() -> None:
    assert next_fire_times(parse_cron("@yearly"), utc(9999, 6, 1), 3) == []
    assert next_fire_times(parse_cron("* * * * *"), utc(9999, 12, 31, 23, 57), 5) == [
        utc(9999, 12, 31, 23, 58),
        utc(9999, 12, 31, 23, 59),
    ]
    assert next_fire_times(parse_cron("@hourly", NEW_YORK), utc(9999, 12, 31, 20), 5) == [
        utc(9999, 12, 31, 21),
        utc(9999, 12, 31, 22),
        utc(9999, 12, 31, 23),
    ]


def test_old_instants_work_too() -> None:
    assert next_fire_times(parse_cron("0 12 * * *", BERLIN), utc(1950, 6, 1), 1) == [
        utc(1950, 6, 1, 11)
    ]


# --- misfires --------------------------------------------------------------------------------

EVERY_FIVE = parse_cron("*/5 * * * *")


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_nothing_is_due_before_next_fire_at(policy: MisfirePolicy) -> None:
    assert due(
        EVERY_FIVE, next_fire_at=utc(2025, 1, 1, 12), now=utc(2025, 1, 1, 11, 59, 59), policy=policy
    ) == ([], utc(2025, 1, 1, 12))


@pytest.mark.parametrize("policy", list(MisfirePolicy))
@pytest.mark.parametrize("late_by", [timedelta(0), timedelta(seconds=2), timedelta(seconds=60)])
def test_a_fire_within_the_grace_period_runs_under_every_policy(
    policy: MisfirePolicy, late_by: timedelta
) -> None:
    assert due(
        EVERY_FIVE,
        next_fire_at=utc(2025, 1, 1, 12),
        now=utc(2025, 1, 1, 12) + late_by,
        policy=policy,
        deadline=0,
    ) == ([utc(2025, 1, 1, 12)], utc(2025, 1, 1, 12, 5))


def test_a_fire_just_past_the_grace_period_is_missed() -> None:
    now = utc(2025, 1, 1, 12) + timedelta(seconds=60, microseconds=1)
    assert due(EVERY_FIVE, next_fire_at=utc(2025, 1, 1, 12), now=now, policy=SKIP) == (
        [],
        utc(2025, 1, 1, 12, 5),
    )
    assert due(EVERY_FIVE, next_fire_at=utc(2025, 1, 1, 12), now=now, policy=SKIP, grace=61)[0] == [
        utc(2025, 1, 1, 12)
    ]


def test_with_no_grace_even_a_two_second_delay_is_a_miss() -> None:
    result = due(
        EVERY_FIVE,
        next_fire_at=utc(2025, 1, 1, 12),
        now=utc(2025, 1, 1, 12, 0, 2),
        policy=SKIP,
        grace=0,
    )
    assert result == ([], utc(2025, 1, 1, 12, 5))


# Down from 10:00 until 12:02: 25 missed fires, 10:00 ... 12:00, none on time.
OUTAGE_FROM, OUTAGE_UNTIL = utc(2025, 1, 1, 10), utc(2025, 1, 1, 12, 2)


def _every_five_minutes(first: datetime, last: datetime) -> list[datetime]:
    return [
        first + timedelta(minutes=5 * i) for i in range((last - first) // timedelta(minutes=5) + 1)
    ]


@pytest.mark.parametrize(
    ("policy", "deadline", "cap", "expected"),
    [
        (SKIP, None, 100, []),
        (RUN_ONCE, None, 100, [utc(2025, 1, 1, 12)]),
        (RUN_ONCE, 120, 100, [utc(2025, 1, 1, 12)]),
        (RUN_ONCE, 119, 100, []),
        (RUN_ONCE, None, 0, [utc(2025, 1, 1, 12)]),
        (RUN_ALL, None, 100, _every_five_minutes(utc(2025, 1, 1, 10), utc(2025, 1, 1, 12))),
        (RUN_ALL, None, 3, [utc(2025, 1, 1, 11, 50), utc(2025, 1, 1, 11, 55), utc(2025, 1, 1, 12)]),
        (RUN_ALL, None, 0, []),
        (RUN_ALL, 600, 100, [utc(2025, 1, 1, 11, 55), utc(2025, 1, 1, 12)]),
        (RUN_ALL, 3 * 3600, 100, _every_five_minutes(utc(2025, 1, 1, 10), utc(2025, 1, 1, 12))),
        (RUN_ALL, 119, 100, []),
    ],
)
def test_missed_fires_follow_the_policy_deadline_and_cap(
    policy: MisfirePolicy, deadline: int | None, cap: int, expected: list[datetime]
) -> None:
    fires, following = due(
        EVERY_FIVE,
        next_fire_at=OUTAGE_FROM,
        now=OUTAGE_UNTIL,
        policy=policy,
        deadline=deadline,
        cap=cap,
    )
    assert fires == expected
    assert following == utc(2025, 1, 1, 12, 5)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (SKIP, [utc(2025, 1, 1, 12)]),
        (RUN_ONCE, [utc(2025, 1, 1, 11, 55), utc(2025, 1, 1, 12)]),
        (RUN_ALL, [utc(2025, 1, 1, 11, 50), utc(2025, 1, 1, 11, 55), utc(2025, 1, 1, 12)]),
    ],
)
def test_an_on_time_fire_runs_beside_the_missed_ones(
    policy: MisfirePolicy, expected: list[datetime]
) -> None:
    fires, following = due(
        EVERY_FIVE,
        next_fire_at=utc(2025, 1, 1, 11),
        now=utc(2025, 1, 1, 12, 0, 30),
        policy=policy,
        cap=2,
    )
    assert (fires, following) == (expected, utc(2025, 1, 1, 12, 5))


def test_a_stored_next_fire_at_off_the_schedule_is_still_due() -> None:
    fires, following = due(
        EVERY_FIVE,
        next_fire_at=utc(2025, 1, 1, 11, 58),
        now=utc(2025, 1, 1, 12, 2),
        policy=RUN_ALL,
    )
    assert (fires, following) == (
        [utc(2025, 1, 1, 11, 58), utc(2025, 1, 1, 12)],
        utc(2025, 1, 1, 12, 5),
    )


@pytest.mark.parametrize(
    ("policy", "cap", "count"),
    [(RUN_ALL, 100, 160), (RUN_ALL, MAX_COUNT, 1060), (RUN_ONCE, 100, 61), (SKIP, 100, 60)],
)
def test_a_year_long_outage_of_a_per_second_schedule_returns_only_what_is_kept(
    policy: MisfirePolicy, cap: int, count: int
) -> None:
    now = utc(2025, 1, 1, 12) + timedelta(microseconds=500_000)
    fires, following = due(
        parse_cron("* * * * * *"),
        next_fire_at=utc(2024, 1, 1),
        now=now,
        policy=policy,
        cap=cap,
    )
    # 60 on time (11:59:01 ... 12:00:00) plus the kept misses just before them.
    assert len(fires) == count
    assert fires[-1] == utc(2025, 1, 1, 12)
    assert fires[-60] == utc(2025, 1, 1, 11, 59, 1)
    if policy is RUN_ALL:
        assert fires[0] == utc(2025, 1, 1, 12) - timedelta(seconds=count - 1)
    assert following == utc(2025, 1, 1, 12, 0, 1)


def test_catching_up_across_fall_back_does_not_repeat_a_daily_fire() -> None:
    spec = parse_cron("30 1 * * *", NEW_YORK)
    fires, following = due(
        spec, next_fire_at=utc(2025, 11, 2, 5, 30), now=utc(2025, 11, 3, 12), policy=RUN_ALL
    )
    assert fires == [utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 6, 30)]
    assert following == utc(2025, 11, 4, 6, 30)


@pytest.mark.parametrize(
    "now",
    [
        utc(2025, 11, 2, 5, 40),
        utc(2025, 11, 2, 6, 10),
        utc(2025, 11, 2, 6, 59),
        utc(2025, 11, 2, 9),
    ],
)
def test_catching_up_inside_a_repeated_hour_finds_the_same_fires_as_looking_ahead(
    now: datetime,
) -> None:
    for expression in ("*/15 * * * *", "30 1 * * *", "*/10 1 * * *"):
        spec = parse_cron(expression, NEW_YORK)
        start = utc(2025, 11, 2, 3, 55)
        expected = fire_times_between(spec, start, now, MAX_COUNT)
        fires, following = due(
            spec, next_fire_at=expected[0], now=now, policy=RUN_ALL, cap=MAX_COUNT, grace=0
        )
        assert fires == expected, expression
        assert following == next_fire_times(spec, now, 1)[0]


@pytest.mark.parametrize(
    "arguments",
    [
        {"cap": -1},
        {"cap": MAX_COUNT + 1},
        {"deadline": -1},
        {"grace": -1},
        {"grace": float("nan")},
    ],
)
def test_due_fire_times_refuses_nonsense_limits(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        due(
            EVERY_FIVE,
            next_fire_at=utc(2025, 1, 1),
            now=utc(2025, 1, 1),
            policy=RUN_ALL,
            **arguments,  # type: ignore[arg-type]  # deadline and cap are ints here
        )


def test_misfire_policies_are_their_stored_strings() -> None:
    assert [policy.value for policy in MisfirePolicy] == ["skip", "run_once", "run_all"]
    assert MisfirePolicy("run_once") is RUN_ONCE


# --- display ---------------------------------------------------------------------------------


def test_describe_local_shows_a_utc_fire_time_on_the_schedule_wall_clock() -> None:
    shifted = describe_local(utc(2025, 3, 9, 7), NEW_YORK)
    assert (shifted.hour, shifted.minute, shifted.utcoffset()) == (3, 0, timedelta(hours=-4))
    assert (
        describe_local(utc(2025, 10, 26, 0, 30), BERLIN).isoformat() == "2025-10-26T02:30:00+02:00"
    )
    assert (
        describe_local(utc(2025, 10, 26, 1, 30), BERLIN).isoformat() == "2025-10-26T02:30:00+01:00"
    )


def test_describe_local_rejects_unknown_time_zones() -> None:
    with pytest.raises(CronError, match="unknown time zone 'Nowhere/Special'"):
        describe_local(utc(2025, 1, 1), "Nowhere/Special")


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("30 2 * * *", "At 02:30 every day"),
        ("*/5 * * * *", "Every 5 minutes"),
        ("0 9 * * 1-5", "At 09:00, Monday through Friday"),
        ("0 0 1 1 *", "At 00:00, on day 1 of the month, only in January"),
        ("@hourly", "Every hour"),
        ("@daily", "At 00:00 every day"),
        ("15 10 * * * 30", "At 10:15:30 every day"),  # six fields: seconds last, as croniter
        ("* * * * * *", "Every second"),
    ],
)
def test_describe_cron_in_words(expression: str, words: str) -> None:
    assert describe_cron(expression) == words


def test_describe_cron_falls_back_to_the_expression() -> None:
    assert describe_cron("not a cron") == "not a cron"
