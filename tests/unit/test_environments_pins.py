"""An image chosen for a run is not evicted until its attempt exists (issue 13's flake)."""

from __future__ import annotations

from pathlib import Path

from app.db import create_engine, create_sessionmaker
from app.services.environments import EnvironmentImages
from tests.fakes.memory_images import MemoryImages
from tests.unit.pipeline_harness import migrated_copy


async def test_a_pinned_image_survives_eviction_until_released(tmp_path: Path) -> None:
    engine = create_engine(await migrated_copy(tmp_path))
    images = MemoryImages()
    envs = EnvironmentImages(
        images, create_sessionmaker(engine), template_version="pins", build_timeout=10
    )
    try:
        key, base = await envs.resolve_key("busybox:latest", ["jq"])
        await envs.ensure(key, base, "busybox:latest", ["jq"])
        with envs.pinned(key):
            assert await envs.evict(max_count=0, max_bytes=0) == []
            assert key in images.images
        assert await envs.evict(max_count=0, max_bytes=0) == [key]
        assert key not in images.images
    finally:
        await engine.dispose()


async def test_an_image_an_attempt_still_uses_is_kept(tmp_path: Path) -> None:
    engine = create_engine(await migrated_copy(tmp_path))
    images = MemoryImages()
    envs = EnvironmentImages(
        images, create_sessionmaker(engine), template_version="pins", build_timeout=10
    )
    try:
        key, base = await envs.resolve_key("busybox:latest", [])
        await envs.ensure(key, base, "busybox:latest", [])
        images.in_use.add(key)  # the backend refuses: a container was made from it
        assert await envs.evict(max_count=0, max_bytes=0) == []
    finally:
        await engine.dispose()
