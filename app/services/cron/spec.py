"""The cron vocabulary: a validated spec, its errors, misfire policies, limits, time zones."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_EXPRESSION_LENGTH = 200
MAX_TIMEZONE_LENGTH = 64
# The most fire times one call returns: the API lists a few, a catch-up creates runs.
MAX_COUNT = 1000
# Names ZoneInfo opens that are not IANA zones: the host's own zone (differs per machine)
# and the tree whose clocks count leap seconds (off from UTC by tens of seconds).
_NOT_IANA_ZONES = {"localtime", "posixrules"}
_NOT_IANA_PREFIXES = ("right/",)


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


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; CronError names what is wrong with any other."""
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
