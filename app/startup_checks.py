"""Start-up refusals: settings that would expose the service, an engine that cannot cap runs."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import (
    ContainerRuntime,
    ContainerSpec,
    DiskLimitUnsupported,
    RuntimeUnavailable,
)
from app.config import MiB, Settings
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


async def check_engine(settings: Settings, runtime: ContainerRuntime) -> None:
    """The engine must be able to cap a run's disk (unless the operator turned that off) and,
    when runs may have network, hold the job network with inter-container traffic off. An
    engine that cannot be reached yet is no reason to refuse: its runs fail with the reason."""
    try:
        if settings.allow_network:
            await _check_job_network(settings.job_network, runtime)
        if settings.disk_quota == "required":
            await _probe_disk_quota(settings, runtime)
    except RuntimeUnavailable as exc:
        log.warning("could not check the Docker engine at start-up: %s", exc)


async def _check_job_network(name: str, runtime: ContainerRuntime) -> None:
    network = await runtime.network_info(name)
    if network is None or network.driver != "bridge":
        raise UnsafeStartup(
            f"TASKDEPLOY_ALLOW_NETWORK is on but the Docker engine has no bridge network {name!r}"
            " for runs: make it with scripts/ensure-job-network.sh (it also sets the firewall "
            "rules that keep jobs away from this host and private ranges)"
        )
    if network.options.get("com.docker.network.bridge.enable_icc") != "false":
        raise UnsafeStartup(
            f"the job network {name!r} lets containers reach each other: recreate it with "
            "com.docker.network.bridge.enable_icc=false (scripts/ensure-job-network.sh)"
        )


async def _probe_disk_quota(settings: Settings, runtime: ContainerRuntime) -> None:
    """Creates (never starts) a container with a disk cap from a base image the engine has."""
    for image in dict.fromkeys([settings.default_image, *settings.image_allow_list]):
        if await runtime.image_info(image) is None:
            continue
        spec = ContainerSpec(image=image, command=["true"], env={}, labels={}, disk_bytes=16 * MiB)
        try:
            container_id = await runtime.create_container(spec)
        except DiskLimitUnsupported as exc:
            raise UnsafeStartup(f"{exc}. Without it one run could fill this host's disk.") from exc
        await runtime.remove(container_id)
        return
    log.warning("no allowed base image on the engine yet: the disk cap is checked at each run")
