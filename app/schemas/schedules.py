"""Request and response models of schedules."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from app.schemas.common import StrictModel
from app.schemas.runs import RunCreate

ConcurrencyPolicyName = Literal["allow", "forbid", "replace"]
MisfirePolicyName = Literal["skip", "run_once", "run_all"]


class ScheduleCreate(StrictModel):
    """A run template fired on a cron expression, computed in an IANA time zone."""

    name: str = Field(min_length=1, max_length=200, examples=["nightly-report"])
    cron: str = Field(
        min_length=1,
        max_length=200,
        examples=["30 2 * * *"],
        description="5 fields (m h dom mon dow), or 6 with seconds LAST; or @hourly, @daily, "
        "@weekly, @monthly, @yearly",
    )
    timezone: str = Field(default="UTC", min_length=1, max_length=64, examples=["America/New_York"])
    run: RunCreate
    concurrency_policy: ConcurrencyPolicyName = "allow"
    misfire_policy: MisfirePolicyName = "skip"
    starting_deadline_seconds: StrictInt | None = Field(default=None, ge=0, le=366 * 86400)
    paused: StrictBool = False


class ScheduleUpdate(StrictModel):
    """Fields to change; a new cron or time zone recomputes the next fire time at once."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    run: RunCreate | None = None
    concurrency_policy: ConcurrencyPolicyName | None = None
    misfire_policy: MisfirePolicyName | None = None
    starting_deadline_seconds: StrictInt | None = Field(default=None, ge=0, le=366 * 86400)


class ScheduleOut(BaseModel):
    id: str
    owner: str
    name: str
    cron: str
    description: str = Field(description='the cron expression in words, e.g. "At 02:30 every day"')
    timezone: str
    run: dict[str, Any]
    concurrency_policy: str
    misfire_policy: str
    starting_deadline_seconds: int | None
    paused: bool
    next_fire_at: datetime | None = Field(description="UTC; null while paused")
    next_fire_at_local: datetime | None = Field(description="the same instant in `timezone`")
    next_fire_times: list[datetime] = Field(description="the next 5 fire times, UTC")
    last_fired_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ScheduleFireOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    scheduled_for: datetime
    outcome: str
    reason: str | None
    created_at: datetime
