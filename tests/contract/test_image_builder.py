"""One contract for every ImageBuilder (the memory fake and the Docker engine)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.adapters.docker import DockerRuntime
from app.adapters.docker_images import DockerImages
from app.adapters.ports import ImageBuildFailed
from tests.contract.conftest import BUSYBOX
from tests.fakes.memory_images import MemoryImages


@pytest.fixture(params=["memory", pytest.param("docker", marks=pytest.mark.docker)])
async def builder(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryImages()
        return
    docker = DockerRuntime()
    images = DockerImages(docker)
    made: list[str] = []
    images.made = made  # type: ignore[attr-defined]
    try:
        yield images
    finally:
        for found in await images.cached():
            if found.key in made:
                await images.evict(found)
        await docker.close()


def new_key(builder: Any) -> str:
    key = f"{uuid.uuid4().hex}{uuid.uuid4().hex}"
    getattr(builder, "made", []).append(key)
    return key


async def test_an_image_is_built_found_listed_and_evicted(builder: Any) -> None:
    base = await builder.base_id(BUSYBOX)
    assert base is not None
    assert await builder.base_id(f"taskdeploy-missing-{uuid.uuid4().hex}:latest") is None
    key = new_key(builder)
    assert await builder.find(key) is None
    built = await builder.build(key, base, [], None)
    assert built.key == key and built.image_id
    found = await builder.find(key)
    assert found is not None and found.image_id == built.image_id and found.ref == built.ref
    assert key in [image.key for image in await builder.cached()]
    assert await builder.evict(found)
    assert await builder.find(key) is None


async def test_a_build_from_a_missing_base_fails_with_its_log(builder: Any) -> None:
    with pytest.raises(ImageBuildFailed) as failed:
        await builder.build(new_key(builder), "sha256:" + "0" * 64, [], None)
    assert failed.value.log
