"""Keeps the environment-image cache within its caps and prunes what failed builds leave behind."""

from __future__ import annotations

import logging

from app.services.environments import EnvironmentImages
from app.workers.base import LoopService

log = logging.getLogger(__name__)


class Janitor(LoopService):
    name = "janitor"

    def __init__(
        self,
        environments: EnvironmentImages,
        *,
        max_images: int,
        max_bytes: int,
        interval: float,
        prune_after_seconds: float,
    ) -> None:
        super().__init__(interval)
        self.environments = environments
        self.max_images = max_images
        self.max_bytes = max_bytes
        # Leftovers of failed builds, once no build that may still use them can be running.
        self.prune_after_seconds = prune_after_seconds

    async def run_once(self) -> None:
        await self.environments.evict(max_count=self.max_images, max_bytes=self.max_bytes)
        pruned = await self.environments.prune(self.prune_after_seconds)
        if pruned:
            log.info("pruned %d dangling image(s)", pruned)
