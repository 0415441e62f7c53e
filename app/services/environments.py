"""Environment images: base image + packages, built once per cache key and reused by every run."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from importlib import resources

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.ports import (
    JOB_UID,
    BuildLimits,
    EnvironmentImage,
    ImageBuilder,
    ImageBuildFailed,
)
from app.db import utcnow
from app.observability import IMAGE_BUILD_SECONDS, IMAGE_CACHE
from app.repositories import EnvironmentImageRepository, RunRepository

log = logging.getLogger(__name__)


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


# What an environment image is made of besides its base and packages: editing any of these (the
# wrapper included, which lives in the image) retires every cached image.
TEMPLATE_ASSETS = ("Dockerfile.env", "install-packages.sh", "entrypoint.sh")


def versioned_template(version: str) -> str:
    """The operator's template version plus a digest of the template's own bytes."""
    digest = hashlib.sha256()
    for name in TEMPLATE_ASSETS:
        digest.update(_asset(name))
        digest.update(b"\0")
    digest.update(str(JOB_UID).encode())
    return f"{version}:{digest.hexdigest()[:16]}"


def environment_key(base_image_id: str, packages: list[str], template_version: str) -> str:
    """sha256 over the base image id, the sorted package list and the template version."""
    digest = hashlib.sha256()
    for part in (base_image_id, "\n".join(sorted(set(packages))), template_version):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class EnvironmentImages:
    """Finds or builds environment images; concurrent requests for one key share one build.

    An image chosen for a run is pinned (`pin`, before it is looked up) until the run's
    attempt exists on the backend (which then holds it): eviction never takes a pinned image,
    and a pin waits for an eviction of its key in progress, so an image cannot vanish between
    being chosen and being used."""

    def __init__(
        self,
        builder: ImageBuilder,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        template_version: str,
        build_timeout: float,
        build_limits: BuildLimits | None = None,
    ) -> None:
        self.builder = builder
        self.sessionmaker = sessionmaker
        self.template_version = versioned_template(template_version)
        self.build_timeout = build_timeout
        self.build_limits = build_limits
        self._builds: dict[str, asyncio.Task[EnvironmentImageRef]] = {}
        self._pins: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # a pin and an eviction of one key exclude
        self.hits = 0
        self.misses = 0

    async def resolve_key(self, base_image: str, packages: list[str]) -> tuple[str, str]:
        """(key, base image id); raises EnvironmentUnavailable when the base image is missing."""
        base_id = await self.builder.base_id(base_image)
        if base_id is None:
            raise EnvironmentUnavailable(
                f"base image {base_image!r} is not present on the Docker engine and cannot be "
                "pulled here; build or load it (see scripts/ensure-images.sh)"
            )
        return environment_key(base_id, packages, self.template_version), base_id

    async def pin(self, key: str) -> None:
        """Keeps `key` from eviction until `unpin` (from choosing the image to its attempt
        existing). Waits for an eviction of `key` in progress: the image is then gone, and
        the caller's `ensure` builds it again instead of using one about to vanish."""
        async with self._lock(key):
            self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, key: str) -> None:
        left = self._pins.get(key, 0) - 1
        if left > 0:
            self._pins[key] = left
            return
        self._pins.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def ensure(
        self, key: str, base_image_id: str, base_image: str, packages: list[str]
    ) -> EnvironmentImageRef:
        existing = await self.builder.find(key)
        if existing is not None:
            self.hits += 1
            IMAGE_CACHE.labels("hit").inc()
            await self._record(
                key, existing.ref, existing.image_id, base_image, packages, existing.size
            )
            return EnvironmentImageRef(key, existing.ref, existing.image_id, cached=True)
        task = self._builds.get(key)
        if task is None:
            self.misses += 1
            IMAGE_CACHE.labels("miss").inc()
            task = asyncio.create_task(self._build(key, base_image_id, base_image, packages))
            self._builds[key] = task
            task.add_done_callback(lambda _t: self._builds.pop(key, None))
        # shield: one waiter being cancelled must not abort the build the others share.
        return await asyncio.shield(task)

    async def _build(
        self, key: str, base_image_id: str, base_image: str, packages: list[str]
    ) -> EnvironmentImageRef:
        started = time.monotonic()
        try:
            built = await asyncio.wait_for(
                self.builder.build(key, base_image_id, packages, self.build_limits),
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
        await self._record(key, built.ref, built.image_id, base_image, packages, built.size)
        log.info("built environment image %s in %.1f s", built.ref, elapsed)
        return EnvironmentImageRef(
            key, built.ref, built.image_id, cached=False, build_seconds=elapsed
        )

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
        (a run's recorded key, a pin, a build, a container the backend holds) and never one
        another service (with another database) built on the same engine."""
        images = await self.builder.cached()
        async with self.sessionmaker() as session:
            in_use = await RunRepository(session).env_keys_in_use()
            rows = {row.key: row for row in await EnvironmentImageRepository(session).all()}

        def last_used(key: str) -> float:
            row = rows.get(key)
            return row.last_used_at.timestamp() if row else 0.0

        # Only images this service's database knows: an engine may hold other services' cache
        # (their own database says when those are in use, not ours).
        keyed = sorted((img for img in images if img.key in rows), key=lambda i: last_used(i.key))
        count, total = len(keyed), sum(img.size for img in keyed)
        removed: list[str] = []
        for img in keyed:
            if count <= max_count and total <= max_bytes:
                break
            if img.key in in_use or not await self._evict_unpinned(img):
                continue
            count -= 1
            total -= img.size
            removed.append(img.key)
            async with self.sessionmaker() as session, session.begin():
                await EnvironmentImageRepository(session).delete(img.key)
        if removed:
            log.info("evicted %d environment image(s)", len(removed))
        return removed

    async def _evict_unpinned(self, image: EnvironmentImage) -> bool:
        async with self._lock(image.key):
            if image.key in self._pins or image.key in self._builds:
                return False
            # False when an attempt still uses it (the backend refuses).
            gone = await self.builder.evict(image)
        if image.key not in self._pins:
            self._locks.pop(image.key, None)
        return gone

    async def prune(self, older_than_seconds: float) -> int:
        return await self.builder.prune(older_than_seconds)
