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

from app.services.cron.describe import describe_cron, describe_local
from app.services.cron.parse import parse_cron
from app.services.cron.spec import (
    MAX_COUNT,
    MAX_EXPRESSION_LENGTH,
    MAX_TIMEZONE_LENGTH,
    CronError,
    CronSpec,
    MisfirePolicy,
)
from app.services.cron.times import (
    due_fire_times,
    fire_times_between,
    next_fire_times,
    preview_fire_times,
)

__all__ = [
    "MAX_COUNT",
    "MAX_EXPRESSION_LENGTH",
    "MAX_TIMEZONE_LENGTH",
    "CronError",
    "CronSpec",
    "MisfirePolicy",
    "describe_cron",
    "describe_local",
    "due_fire_times",
    "fire_times_between",
    "next_fire_times",
    "parse_cron",
    "preview_fire_times",
]
