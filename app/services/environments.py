"""Environment images: base image + packages, built once per cache key and reused by every run."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tarfile
import time
from dataclasses import dataclass
from importlib import resources

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import BuildLimits, ContainerRuntime, ImageBuildFailed
from app.db import utcnow
from app.observability import IMAGE_BUILD_SECONDS, IMAGE_CACHE
from app.repositories import EnvironmentImageRepository, RunRepository

log = logging.getLogger(__name__)

MANAGED_LABEL = "taskdeploy.managed"
KIND_LABEL = "taskdeploy.kind"
KEY_LABEL = "taskdeploy.env_key"
PACKAGES_LABEL = "taskdeploy.packages"
TAG_REPOSITORY = "taskdeploy-env"


class EnvironmentUnavailable(Exception):
    """The environment image could not be had; `build_log` is set when a build failed."""

    def __init__(self, reason: str, build_log: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.build_log = build_log


@dataclass(frozen=True, slots=True)
class EnvironmentImageRef:
    key: str
    tag: str
    image_id: str
    cached: bool
    build_seconds: float = 0.0


def _asset(name: str) -> bytes:
    return resources.files("app.assets").joinpath(name).read_bytes()


def environment_key(base_image_id: str, packages: list[str], template_version: str) -> str:
    """sha256 over the base image id, the sorted package list and the template version."""
    digest = hashlib.sha256()
    for part in (base_image_id, "\n".join(sorted(set(packages))), template_version):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def build_context(packages: list[str]) -> io.BytesIO:
    """The build context as an in-memory tar: a fixed Dockerfile, the installer, the list."""
    files = {
        "Dockerfile": _asset("Dockerfile.env"),
        "install-packages.sh": _asset("install-packages.sh"),
        "packages.txt": "".join(f"{p}\n" for p in sorted(set(packages))).encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


class EnvironmentImages:
    """Finds or builds environment images; concurrent requests for one key share one build."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        template_version: str,
        build_timeout: float,
        build_limits: BuildLimits | None = None,
    ) -> None:
        self.runtime = runtime
        self.sessionmaker = sessionmaker
        # The template's own bytes are part of the key: editing it retires every cached image.
        template_digest = hashlib.sha256(
            _asset("Dockerfile.env") + b"\0" + _asset("install-packages.sh")
        ).hexdigest()[:16]
        self.template_version = f"{template_version}:{template_digest}"
        self.build_timeout = build_timeout
        self.build_limits = build_limits
        self._builds: dict[str, asyncio.Task[EnvironmentImageRef]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def tag_for(key: str) -> str:
        return f"{TAG_REPOSITORY}:{key[:32]}"

    async def resolve_key(self, base_image: str, packages: list[str]) -> tuple[str, str]:
        """(key, base image id); raises EnvironmentUnavailable when the base image is missing."""
        info = await self.runtime.image_info(base_image)
        if info is None:
            raise EnvironmentUnavailable(
                f"base image {base_image!r} is not present on the Docker engine and cannot be "
                "pulled here; build or load it (see scripts/ensure-images.sh)"
            )
        return environment_key(info.id, packages, self.template_version), info.id

    async def ensure(
        self, key: str, base_image_id: str, base_image: str, packages: list[str]
    ) -> EnvironmentImageRef:
        tag = self.tag_for(key)
        existing = await self.runtime.image_info(tag)
        if existing is not None:
            self.hits += 1
            IMAGE_CACHE.labels("hit").inc()
            await self._record(key, tag, existing.id, base_image, packages, existing.size)
            return EnvironmentImageRef(key, tag, existing.id, cached=True)
        task = self._builds.get(key)
        if task is None:
            self.misses += 1
            IMAGE_CACHE.labels("miss").inc()
            task = asyncio.create_task(self._build(key, tag, base_image_id, base_image, packages))
            self._builds[key] = task
            task.add_done_callback(lambda _t: self._builds.pop(key, None))
        # shield: one waiter being cancelled must not abort the build the others share.
        return await asyncio.shield(task)

    async def _build(
        self, key: str, tag: str, base_image_id: str, base_image: str, packages: list[str]
    ) -> EnvironmentImageRef:
        started = time.monotonic()
        labels = {
            MANAGED_LABEL: "true",
            KIND_LABEL: "environment",
            KEY_LABEL: key,
            PACKAGES_LABEL: ",".join(sorted(set(packages))),
        }
        try:
            result = await asyncio.wait_for(
                self.runtime.build_image(
                    build_context(packages),
                    tag=tag,
                    labels=labels,
                    buildargs={"BASE_IMAGE": base_image_id},
                    limits=self.build_limits,
                ),
                self.build_timeout,
            )
        except ImageBuildFailed as exc:
            raise EnvironmentUnavailable(
                f"environment image build failed: {exc}", build_log=exc.log
            ) from exc
        except TimeoutError as exc:
            raise EnvironmentUnavailable(
                f"environment image build took longer than {self.build_timeout:g} s"
            ) from exc
        elapsed = time.monotonic() - started
        IMAGE_BUILD_SECONDS.observe(elapsed)
        info = await self.runtime.image_info(tag)
        await self._record(
            key, tag, result.image_id, base_image, packages, info.size if info else 0
        )
        log.info("built environment image %s in %.1f s", tag, elapsed)
        return EnvironmentImageRef(key, tag, result.image_id, cached=False, build_seconds=elapsed)

    async def _record(
        self, key: str, tag: str, image_id: str, base_image: str, packages: list[str], size: int
    ) -> None:
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            await EnvironmentImageRepository(session).record_use(
                {
                    "key": key,
                    "tag": tag,
                    "image_id": image_id,
                    "base_image": base_image,
                    "packages": sorted(set(packages)),
                    "size_bytes": size,
                    "created_at": now,
                    "last_used_at": now,
                }
            )

    async def evict(self, *, max_count: int, max_bytes: int) -> list[str]:
        """Removes least-recently-used environment images beyond the caps, never one in use
        and never one another service (with another database) built on the same engine."""
        images = await self.runtime.list_images(f"{KIND_LABEL}=environment")
        async with self.sessionmaker() as session:
            in_use = await RunRepository(session).env_keys_in_use()
            rows = {row.key: row for row in await EnvironmentImageRepository(session).all()}
        in_flight = set(self._builds)

        def last_used(key: str) -> float:
            row = rows.get(key)
            return row.last_used_at.timestamp() if row else 0.0

        # Only images this service's database knows: an engine may hold other services' cache
        # (their own database says when those are in use, not ours).
        keyed = [(key, img) for img in images if (key := img.labels.get(KEY_LABEL, "")) in rows]
        keyed.sort(key=lambda pair: last_used(pair[0]))
        count, total = len(keyed), sum(img.size for _, img in keyed)
        removed: list[str] = []
        for key, img in keyed:
            if count <= max_count and total <= max_bytes:
                break
            if key in in_use or key in in_flight:
                continue
            for ref in img.tags or [img.id]:
                await self.runtime.remove_image(ref)
            count -= 1
            total -= img.size
            removed.append(key)
            async with self.sessionmaker() as session, session.begin():
                await EnvironmentImageRepository(session).delete(key)
        if removed:
            log.info("evicted %d environment image(s)", len(removed))
        return removed
