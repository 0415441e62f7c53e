"""An image chosen for a run is not evicted until its attempt exists (issue 13's flake)."""

from __future__ import annotations

import asyncio
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
    await envs.pin(key)
    await envs.pin(key)  # two runs chose it
    assert await envs.evict(max_count=0, max_bytes=0) == []
    envs.unpin(key)
    assert await envs.evict(max_count=0, max_bytes=0) == []
    assert key in images.images
    envs.unpin(key)
    assert await envs.evict(max_count=0, max_bytes=0) == [key]
    assert key not in images.images


async def test_an_image_an_attempt_still_uses_is_kept(envs: EnvironmentImages) -> None:
    images: MemoryImages = envs.builder  # type: ignore[assignment]
    key, base = await envs.resolve_key("busybox:latest", [])
    await envs.ensure(key, base, "busybox:latest", [])
    images.in_use.add(key)  # the backend refuses: a container was made from it
    assert await envs.evict(max_count=0, max_bytes=0) == []


class SlowEvict(MemoryImages):
    """An eviction that takes a while: `entered` is set while it is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def evict(self, image):  # type: ignore[no-untyped-def]
        self.entered.set()
        await self.release.wait()
        return await super().evict(image)


async def test_a_pin_waits_for_an_eviction_under_way_so_the_run_sees_the_image_gone(
    envs: EnvironmentImages,
) -> None:
    slow = SlowEvict()
    envs.builder = slow
    key, base = await envs.resolve_key("busybox:latest", [])
    await envs.ensure(key, base, "busybox:latest", [])
    evicting = asyncio.create_task(envs.evict(max_count=0, max_bytes=0))
    await asyncio.wait_for(slow.entered.wait(), 5)
    pinning = asyncio.create_task(envs.pin(key))
    await asyncio.sleep(0)
    assert not pinning.done()  # the run waits for the removal under way
    slow.release.set()
    assert await evicting == [key]
    await asyncio.wait_for(pinning, 5)
    again = await envs.ensure(key, base, "busybox:latest", [])  # built again, not a stale hit
    assert not again.cached and key in slow.images
    assert await envs.evict(max_count=0, max_bytes=0) == []  # pinned now
    envs.unpin(key)
