"""Cron expressions and fire times shown to people: in words, and on a local clock."""

from __future__ import annotations

import functools
from datetime import datetime

from cron_descriptor import ExpressionDescriptor, Options

from app.services.cron.parse import parse_cron
from app.services.cron.spec import CronError, time_zone
from app.services.cron.times import require_aware


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
    require_aware(dt, "dt")
    return dt.astimezone(time_zone(timezone))
