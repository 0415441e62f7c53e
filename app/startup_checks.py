"""Start-up refusals: settings that would expose the service, an engine that cannot cap runs."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import BackendMisconfigured, RunBackend
from app.config import Settings
from app.readiness import bucket_allow_list_missing
from app.repositories.keys import ApiKeyRepository
from app.services.auth import is_loopback

log = logging.getLogger("taskdeploy")


class UnsafeStartup(RuntimeError):
    """The settings would expose the service without access control."""


async def check_exposure(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Auth may be off only while the service listens on loopback, and once keys exist the
    operator must say which buckets their owners' runs may use."""
    async with sessionmaker() as session:
        keys = ApiKeyRepository(session)
        active = await keys.active_count()
        ever_created = active > 0 or await keys.any_created()
    if not is_loopback(settings.host):
        if settings.auth == "disabled":
            raise UnsafeStartup(
                f"refusing to listen on {settings.host} with TASKDEPLOY_AUTH=disabled: access "
                "control may be off only on a loopback address"
            )
        if active == 0:
            raise UnsafeStartup(
                f"refusing to listen on {settings.host} without API keys: anyone who can reach "
                "it could run commands. Create one with `taskdeploy keys create --owner NAME "
                "--admin`, or listen on 127.0.0.1."
            )
    if bucket_allow_list_missing(settings, keys_ever_created=ever_created):
        raise UnsafeStartup(
            "refusing to start: API keys exist but TASKDEPLOY_ALLOWED_BUCKETS is empty, so "
            "every key's owner could read and write any bucket the service's S3 credentials "
            "reach. Set TASKDEPLOY_ALLOWED_BUCKETS to a comma-separated list of buckets (or "
            "'*' to allow any bucket on purpose)."
        )


async def check_engine(settings: Settings, backend: RunBackend) -> None:
    """The backend must be able to cap a run's disk (unless the operator turned that off) and,
    when runs may have network, hold the job network with inter-container traffic off. A
    backend that cannot be reached yet is no reason to refuse: its runs fail with the reason."""
    try:
        await backend.check(
            disk_limits=settings.disk_quota == "required",
            network=settings.job_network if settings.allow_network else None,
            images=list(dict.fromkeys([settings.default_image, *settings.image_allow_list])),
        )
    except BackendMisconfigured as exc:
        raise UnsafeStartup(str(exc)) from exc
