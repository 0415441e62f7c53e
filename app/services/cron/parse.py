"""Validation of cron expressions: aliases, each field alone, and that the whole ever fires."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

from croniter import CroniterError, croniter

from app.services.cron.spec import MAX_EXPRESSION_LENGTH, CronError, CronSpec, time_zone
from app.services.cron.times import next_fire_times

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

# parse_cron has no clock; "fires at least once" is checked from this fixed instant.
_PROBE_FROM = datetime(2025, 1, 1, tzinfo=UTC)


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
    time_zone(timezone)
    spec = CronSpec(expression=normalised, timezone=timezone, has_seconds=len(fields) == 6)
    if not next_fire_times(spec, _PROBE_FROM, 1):
        raise CronError(f"cron expression {normalised!r} never fires in time zone {timezone}")
    return spec


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
