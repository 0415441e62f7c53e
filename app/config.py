"""Service settings, read once from TASKDEPLOY_* environment variables (and an optional .env)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.crosssite import normalize_origin
from app.services.webhook_targets import DestinationPolicy, parse_callback_url

MiB = 1024 * 1024
# Linux: the longest single argument execve takes, its NUL included (include/uapi/linux/binfmts.h).
MAX_ARG_STRLEN = 128 * 1024


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        return 4 * 1024 * MiB


class Settings(BaseSettings):
    """Every knob of the service. Only `app.main` reads it; adapters get explicit arguments."""

    model_config = SettingsConfigDict(
        env_prefix="TASKDEPLOY_", env_file=".env", extra="ignore", frozen=True
    )

    # --- serving
    host: str = "127.0.0.1"
    port: int = 8000
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    data_dir: Path = Path(".taskdeploy")

    # --- access
    auth: str = "auto"  # auto: keys required once any exists | required | disabled (loopback only)
    # "*": any bucket. Empty: any bucket for the local user (no key) only; refused at start-up
    # once keys exist. Per owner (JSON) an owner gets exactly its list, [] meaning none.
    allowed_buckets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_buckets_by_owner: dict[str, list[str]] = Field(default_factory=dict)
    # Host names the service answers to besides 127.0.0.1, localhost, [::1] and the listen
    # address ("name" for any port, "name:port"; "*" turns the DNS-rebinding check off).
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Origins besides the service's own that may use the dashboard and change state.
    trusted_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- webhooks
    webhook_url: str | None = None  # every run's events also go here unless it names its own
    webhook_secret: str = ""  # signs events to webhook_url; default: a per-data-dir one
    webhook_allow_private: bool = False  # any address, loopback and private ones included
    webhook_allowed_cidrs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_total_seconds: float = Field(default=3600, gt=0)
    # One attempt in all: lookup, connect, TLS, sending and reading the answer.
    webhook_timeout_seconds: float = Field(default=10, gt=0, le=300)
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0, le=16 * MiB)
    webhook_max_in_flight: int = Field(default=32, ge=1, le=1000)
    webhook_max_in_flight_per_owner: int = Field(default=4, ge=1, le=1000)
    webhook_secret_grace_seconds: int = Field(default=24 * 3600, ge=0, le=7 * 24 * 3600)

    # --- storage
    database_url: str = ""  # empty: SQLite under data_dir
    object_store: str = "auto"  # auto | s3 | local
    local_store_dir: Path | None = None  # default: <data_dir>/objects
    s3_region: str | None = None
    s3_max_concurrency: int = Field(default=4, ge=1, le=64)

    # --- docker and images
    docker_url: str | None = None
    default_image: str = "debian:bookworm-slim"
    allowed_images: Annotated[list[str], NoDecode] = Field(default_factory=list)
    env_template_version: str = "1"
    image_cache_max_count: int = Field(default=20, ge=1)
    image_cache_max_bytes: int = Field(default=20 * 1024 * MiB, ge=1)
    build_timeout_seconds: float = Field(default=900, gt=0)
    build_memory_mb: int = Field(default=2048, ge=64)  # each environment image build's RAM
    build_cpus: float = Field(default=1.0, gt=0)  # ... and CPU quota

    # --- run limits and defaults
    max_concurrent_runs: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    default_cpus: float = Field(default=1.0, gt=0)
    default_memory_mb: int = Field(default=512, ge=6)
    max_cpus: float = Field(default_factory=lambda: float(os.cpu_count() or 1), gt=0)
    # Half the host: one run's memory limit must leave room for the service, the engine and
    # the page cache the other runs' inputs and outputs go through.
    max_memory_mb: int = Field(default_factory=lambda: _host_memory_bytes() // 2 // MiB, ge=6)
    # The workspace (inputs, outputs, anything the job writes outside the tmpfs /tmp) lives in
    # the container's writable layer, capped with the engine's `size` storage option.
    default_disk_mb: int = Field(default=2048, ge=16)
    max_disk_mb: int = Field(default=20 * 1024, ge=16)
    # required: refuse to start on an engine that cannot cap a container's disk; off: no cap
    # (RLIMIT_FSIZE still caps each file) — only for engines without btrfs, zfs or XFS pquota.
    disk_quota: Literal["required", "off"] = "required"
    nofile_limit: int = Field(default=4096, ge=64)
    default_timeout_seconds: int = Field(default=3600, ge=1)
    max_timeout_seconds: int = Field(default=24 * 3600, ge=1)
    pids_limit: int = Field(default=512, ge=16)
    tmp_size_mb: int = Field(default=256, ge=1)
    allow_network: bool = False
    # The network runs with network access join: made by scripts/ensure-job-network.sh, with no
    # route to the host's own services, the metadata address, private ranges or other jobs.
    job_network: str = Field(default="taskdeploy-jobs", min_length=1, max_length=128)
    metrics_interval_seconds: float = Field(default=1.0, ge=0.1, le=60)
    log_limit_bytes: int = Field(default=10 * MiB, ge=1024)
    follow_max_seconds: float = Field(default=3600, gt=0)  # longest live-log stream
    # Live-log streams open at once in this process (429 beyond): per run, and per owner.
    max_followers_per_run: int = Field(default=10, ge=1)
    max_followers_per_owner: int = Field(default=20, ge=1)
    # Requests waiting for a run's end (GET /v1/runs/{id}/wait) in this process (429 beyond):
    # per owner, and in all; runs that end on another replica are seen within the poll.
    max_waiters_per_owner: int = Field(default=50, ge=1)
    max_waiters: int = Field(default=1000, ge=1)
    wait_poll_seconds: float = Field(default=0.5, ge=0.05, le=10)
    wait_max_seconds: float = Field(default=60, gt=0, le=60)  # a longer `timeout` is cut to it
    # The command reaches the container as one argument of the wrapper, and Linux refuses an
    # argument of MAX_ARG_STRLEN bytes or more (its terminating NUL included): the cap stays below.
    max_command_bytes: int = Field(default=64 * 1024, ge=1, lt=MAX_ARG_STRLEN)
    # Largest request body: a run's env may hold 100 values of 32 KiB.
    max_request_bytes: int = Field(default=4 * MiB, ge=64 * 1024)
    max_input_bytes: int = Field(default=10 * 1024 * MiB, ge=1)
    max_input_files: int = Field(default=100_000, ge=1)
    max_output_bytes: int = Field(default=10 * 1024 * MiB, ge=1)
    max_output_files: int = Field(default=10_000, ge=1)
    spool_memory_bytes: int = Field(default=8 * MiB, ge=0)

    # --- workers
    dispatch_interval_seconds: float = Field(default=2.0, gt=0)
    janitor_interval_seconds: float = Field(default=60.0, gt=0)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    lease_seconds: float = Field(default=30.0, ge=1)
    reconcile_interval_seconds: float = Field(default=10.0, gt=0)
    prepare_deadline_seconds: float = Field(default=1800.0, gt=0)
    finish_deadline_seconds: float = Field(default=1800.0, gt=0)
    db_retry_seconds: float = Field(default=120.0, ge=0)
    migrate_on_start: bool = True
    workers_enabled: bool = True  # all background loops
    dispatcher_enabled: bool = True  # off: this replica serves the API and fires schedules only
    scheduler_enabled: bool = True
    scheduler_max_catch_up: int = Field(default=10, ge=1, le=1000)
    scheduler_grace_seconds: float = Field(default=60, ge=0)
    scheduler_max_idle_seconds: float = Field(default=30, gt=0)
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one object per line, with run_id/schedule_id)

    @field_validator(
        "allowed_images",
        "allowed_buckets",
        "webhook_allowed_cidrs",
        "allowed_hosts",
        "trusted_origins",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.auth not in {"auto", "required", "disabled"}:
            raise ValueError("TASKDEPLOY_AUTH must be auto, required or disabled")
        if self.object_store not in {"auto", "s3", "local"}:
            raise ValueError("TASKDEPLOY_OBJECT_STORE must be auto, s3 or local")
        if self.default_disk_mb > self.max_disk_mb:
            raise ValueError("TASKDEPLOY_DEFAULT_DISK_MB exceeds TASKDEPLOY_MAX_DISK_MB")
        for origin in self.trusted_origins:
            if normalize_origin(origin) is None:
                raise ValueError(
                    f"TASKDEPLOY_TRUSTED_ORIGINS: {origin!r} is not an origin such as "
                    "https://ops.example.com or http://127.0.0.1:3000"
                )
        if self.default_timeout_seconds > self.max_timeout_seconds:
            raise ValueError(
                "TASKDEPLOY_DEFAULT_TIMEOUT_SECONDS exceeds TASKDEPLOY_MAX_TIMEOUT_SECONDS"
            )
        self._check_webhooks()
        return self

    def _check_webhooks(self) -> None:
        """The operator's URL passes the tenants' rules, and names no address the notifier
        would refuse: better a refusal at start-up than every event failing later."""
        try:
            policy = self.webhook_policy
        except ValueError as exc:
            raise ValueError(f"TASKDEPLOY_WEBHOOK_ALLOWED_CIDRS: {exc}") from None
        if self.webhook_url is None:
            return
        try:
            url = parse_callback_url(self.webhook_url)
        except ValueError as exc:
            raise ValueError(f"TASKDEPLOY_WEBHOOK_URL {exc}") from None
        if reason := policy.submission_refusal(url):
            raise ValueError(
                f"TASKDEPLOY_WEBHOOK_URL {reason}: add its network to "
                "TASKDEPLOY_WEBHOOK_ALLOWED_CIDRS (or set TASKDEPLOY_WEBHOOK_ALLOW_PRIVATE=true)"
            )

    @property
    def webhook_policy(self) -> DestinationPolicy:
        return DestinationPolicy.of(
            allow_private=self.webhook_allow_private, allowed_cidrs=self.webhook_allowed_cidrs
        )

    @property
    def image_allow_list(self) -> list[str]:
        return self.allowed_images or [self.default_image]

    @property
    def effective_database_url(self) -> str:
        return (
            self.database_url
            or f"sqlite+aiosqlite:///{(self.data_dir / 'taskdeploy.db').resolve()}"
        )

    @property
    def uses_s3(self) -> bool:
        if self.object_store == "auto":
            return bool(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))
        return self.object_store == "s3"

    @property
    def effective_local_store_dir(self) -> Path:
        return self.local_store_dir or self.data_dir / "objects"
