"""An image chosen for a run is not evicted until its attempt exists (issue 13's flake)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.db import create_engine, create_sessionmaker
from app.services.environments import EnvironmentImages
from tests.fakes.memory_images import MemoryImages
from tests.unit.pipeline_harness import migrated_copy


@pytest.fixture
async def envs(tmp_path: Path) -> AsyncIterator[EnvironmentImages]:
    engine = create_engine(await migrated_copy(tmp_path))
    yield EnvironmentImages(
        MemoryImages(), create_sessionmaker(engine), template_version="pins", build_timeout=10
    )
    await engine.dispose()


async def test_a_pinned_image_survives_eviction_until_released(envs: EnvironmentImages) -> None:
    images: MemoryImages = envs.builder  # type: ignore[assignment]
    key, base = await envs.resolve_key("busybox:latest", ["jq"])
    await envs.ensure(key, base, "busybox:latest", ["jq"])
    with envs.pinned(key):
        assert await envs.evict(max_count=0, max_bytes=0) == []
        assert key in images.images
    assert await envs.evict(max_count=0, max_bytes=0) == [key]
    assert key not in images.images


async def test_an_image_an_attempt_still_uses_is_kept(envs: EnvironmentImages) -> None:
    images: MemoryImages = envs.builder  # type: ignore[assignment]
    key, base = await envs.resolve_key("busybox:latest", [])
    await envs.ensure(key, base, "busybox:latest", [])
    images.in_use.add(key)  # the backend refuses: a container was made from it
    assert await envs.evict(max_count=0, max_bytes=0) == []
