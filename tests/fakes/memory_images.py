"""A complete in-memory ImageBuilder: base images it holds, builds that succeed or fail."""

from __future__ import annotations

import hashlib

from app.adapters.ports import BuildLimits, EnvironmentImage, ImageBuildFailed


class MemoryImages:
    def __init__(self, bases: dict[str, str] | None = None) -> None:
        self.bases = dict(bases or {"busybox:latest": "sha256:busybox"})
        self.images: dict[str, EnvironmentImage] = {}
        self.in_use: set[str] = set()  # keys an attempt still uses: eviction is refused
        self.failing: set[str] = set()  # packages whose install fails
        self.builds = 0

    async def base_id(self, image: str) -> str | None:
        return self.bases.get(image)

    async def find(self, key: str) -> EnvironmentImage | None:
        return self.images.get(key)

    async def build(
        self, key: str, base_id: str, packages: list[str], limits: BuildLimits | None
    ) -> EnvironmentImage:
        self.builds += 1
        if base_id not in self.bases.values():
            raise ImageBuildFailed(f"no such image: {base_id}", log=f"FROM {base_id}: missing\n")
        bad = sorted(self.failing & set(packages))
        if bad:
            raise ImageBuildFailed("package install failed", log=f"E: Unable to locate {bad[0]}\n")
        image_id = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        image = EnvironmentImage(key=key, ref=f"mem-env:{key[:32]}", image_id=image_id, size=1000)
        self.images[key] = image
        return image

    async def cached(self) -> list[EnvironmentImage]:
        return list(self.images.values())

    async def evict(self, image: EnvironmentImage) -> bool:
        if image.key in self.in_use:
            return False
        return self.images.pop(image.key, None) is not None

    async def prune(self, older_than_seconds: float) -> int:
        return 0
