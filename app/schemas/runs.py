"""Request and response models of runs: what a client submits and what it reads back."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

from app.models import RunState
from app.schemas.common import StrictModel
from app.services.s3uri import parse_s3_uri
from app.services.webhook_targets import MAX_CALLBACK_URL_LENGTH, parse_callback_url

PACKAGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+:~-]+)?$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = frozenset({"INPUT_DIR", "OUTPUT_DIR", "TASKDEPLOY_RUN_ID", "PATH", "HOME"})
MAX_PACKAGES = 100
MAX_ENV_VARS = 100
MAX_ENV_VALUE_BYTES = 32 * 1024


def _check_s3_uri(value: str) -> str:
    parse_s3_uri(value)  # raises ValueError with a message naming what is wrong
    return value


def _check_package(value: str) -> str:
    if len(value) > 200 or not PACKAGE_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a package name: lowercase letters, digits, '+', '.', '-', "
            "optionally '=version'"
        )
    return value


S3Uri = Annotated[
    str,
    Field(min_length=5, max_length=1024, examples=["s3://my-bucket/in/"]),
    AfterValidator(_check_s3_uri),
]
PackageName = Annotated[str, AfterValidator(_check_package)]


class Resources(StrictModel):
    """CPU and memory limits of one run; the service caps them at the host's size."""

    cpus: float | None = Field(
        default=None,
        gt=0,
        strict=True,
        description="CPUs (fractions allowed); default from settings",
    )
    memory_mb: StrictInt | None = Field(
        default=None, ge=6, description="memory limit in MiB (swap is not allowed)"
    )
    disk_mb: StrictInt | None = Field(
        default=None,
        ge=16,
        description="workspace size limit in MiB (inputs, outputs and whatever the job writes "
        "outside /tmp); default from settings",
    )


RetryableState = Literal["error", "failed", "timed_out"]
RETRYABLE_STATES: tuple[RetryableState, ...] = ("error", "failed", "timed_out")


class RetryPolicy(StrictModel):
    """Run again when an attempt ends in one of `on`; attempt n+1 waits
    backoff_seconds * backoff_factor^(n-1). Timeouts count as attempts."""

    attempts: StrictInt = Field(ge=1, le=10, description="total attempts, the first included")
    backoff_seconds: float = Field(default=10, ge=0, le=3600, strict=True)
    backoff_factor: float = Field(default=2, ge=1, le=10, strict=True)
    on: list[RetryableState] = Field(
        default_factory=lambda: list(RETRYABLE_STATES), min_length=1, max_length=3
    )
    exit_codes: list[StrictInt] | None = Field(
        default=None, max_length=50, description="retry `failed` only for these exit codes"
    )


class RunCreate(StrictModel):
    """A command to run once, in a container built from `image` plus `packages`."""

    command: str = Field(min_length=1, examples=["python3 -c 'print(56789)'"])
    packages: list[PackageName] = Field(default_factory=list, max_length=MAX_PACKAGES)
    input: S3Uri | None = Field(
        default=None, description="s3://bucket/prefix/ staged to $INPUT_DIR"
    )
    output: S3Uri = Field(description="s3://bucket/prefix/ where <run_id>/ is written")
    image: str | None = Field(default=None, max_length=255, description="allow-listed base image")
    resources: Resources = Field(default_factory=Resources)
    timeout_seconds: StrictInt | None = Field(default=None, ge=1)
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV_VARS)
    network: StrictBool = Field(default=False, description="ask for network (operator must allow)")
    unpack_zip: StrictBool = Field(
        default=False,
        description="unpack each .zip input into $INPUT_DIR/<its path without .zip>/",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=MAX_CALLBACK_URL_LENGTH,
        description="http(s) URL that gets a POST signed with the owner's webhook secret on "
        "every terminal state",
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=150)
    retry: RetryPolicy | None = None

    @field_validator("command")
    @classmethod
    def _command_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("command is empty")
        if "\x00" in value:
            raise ValueError("command contains a NUL byte")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_callback_url(value)  # the sender's own parser, plus what it must refuse
            except ValueError as exc:
                raise ValueError(f"callback_url {exc}") from None
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not ENV_NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name in RESERVED_ENV or name.startswith("TASKDEPLOY_"):
                raise ValueError(f"{name!r} is set by the service and cannot be overridden")
            if "\x00" in val or len(val.encode()) > MAX_ENV_VALUE_BYTES:
                raise ValueError(f"value of {name!r} has a NUL byte or is over 32 KiB")
        return value


class ResourcesOut(BaseModel):
    cpus: float
    memory_mb: int
    disk_mb: int | None = Field(default=None, description="null: a run from before disk limits")


class MetricsSummaryOut(BaseModel):
    cpu_seconds: float
    cpu_percent_avg: float
    cpu_percent_max: float
    peak_memory_bytes: int
    wall_seconds: float
    samples: int


class ArtifactOut(BaseModel):
    key: str
    size: int


class LogInfo(BaseModel):
    bytes: int
    kept_bytes: int
    truncated: bool


class RunLinks(BaseModel):
    self: str
    logs: str
    events: str
    metrics: str


class RunOut(BaseModel):
    """A run as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    owner: str
    state: RunState
    status_reason: str | None
    command: str
    packages: list[str]
    image: str
    input: str | None
    output: str
    resources: ResourcesOut
    timeout_seconds: int
    env: dict[str, str]
    network: bool
    unpack_zip: bool = False
    callback_url: str | None = None
    idempotency_key: str | None
    exit_code: int | None
    oom_killed: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    image_id: str | None
    metrics: MetricsSummaryOut | None
    artifacts: list[ArtifactOut]
    logs: dict[str, LogInfo] | None
    attempt: int = 1
    attempts: list[dict[str, Any]] = Field(
        default_factory=list, description="earlier attempts of a retried run"
    )
    retry: dict[str, Any] | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    lateness_seconds: float | None = Field(
        default=None, description="how long after its fire time a scheduled run was created"
    )
    links: RunLinks


class RunEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    from_state: str | None
    to_state: str
    at: datetime
    detail: str | None


class MetricsSampleOut(BaseModel):
    t: float
    cpu_percent: float
    memory_bytes: int


class RunMetricsOut(BaseModel):
    run_id: str
    source: str
    summary: MetricsSummaryOut | None
    series: list[MetricsSampleOut]
    live: bool = Field(
        default=False, description="true while the run is running: the samples so far"
    )
