"""Environment images on the real engine: one build per key, shared by concurrent requests."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import migrate
from app.adapters.docker import DockerRuntime
from app.adapters.docker_images import DockerImages, build_context, tag_for
from app.adapters.docker_types import BuildResult
from app.adapters.ports import BuildLimits
from app.db import create_engine, create_sessionmaker
from app.repositories import EnvironmentImageRepository
from app.services.environments import EnvironmentImages, EnvironmentUnavailable, environment_key


class CountingRuntime(DockerRuntime):
    """The real Docker adapter, counting the builds it is asked for."""

    builds = 0

    async def build_image(
        self,
        context_tar: BinaryIO,
        *,
        tag: str,
        labels: dict[str, str],
        buildargs: dict[str, str],
        limits: BuildLimits | None = None,
    ) -> BuildResult:
        self.builds += 1
        return await super().build_image(
            context_tar, tag=tag, labels=labels, buildargs=buildargs, limits=limits
        )


@pytest.fixture
async def sessionmaker(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'env.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def sqlite_sessionmaker(path: Path) -> async_sessionmaker[AsyncSession]:
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(migrate.upgrade, url)
    return create_sessionmaker(create_engine(url))


@pytest.fixture
async def runtime() -> AsyncIterator[CountingRuntime]:
    docker = CountingRuntime()
    yield docker
    await docker.close()


async def test_concurrent_requests_for_one_key_share_one_build(
    runtime: CountingRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    # A template version unique to this test gives a key no earlier run has built.
    images = EnvironmentImages(
        DockerImages(runtime),
        sessionmaker,
        template_version=f"test-{uuid.uuid4()}",
        build_timeout=120,
    )
    key, base_id = await images.resolve_key("busybox:latest", [])
    try:
        refs = await asyncio.gather(
            *(images.ensure(key, base_id, "busybox:latest", []) for _ in range(5))
        )
        assert runtime.builds == 1
        assert len({r.image_id for r in refs}) == 1
        assert not refs[0].cached
        again = await images.ensure(key, base_id, "busybox:latest", [])
        assert again.cached and again.image_id == refs[0].image_id
        assert runtime.builds == 1
        async with sessionmaker() as session:
            row = await EnvironmentImageRepository(session).get(key)
        assert row is not None and row.image_id == refs[0].image_id
    finally:
        subprocess.run(["docker", "rmi", "-f", tag_for(key)], capture_output=True)


async def test_missing_base_image_is_reported_not_pulled(
    runtime: CountingRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    images = EnvironmentImages(
        DockerImages(runtime), sessionmaker, template_version="1", build_timeout=60
    )
    with pytest.raises(EnvironmentUnavailable, match="not present on the Docker engine"):
        await images.resolve_key(f"taskdeploy-missing-{uuid.uuid4().hex}:latest", [])
    assert runtime.builds == 0


def test_key_depends_on_sorted_packages_not_their_order() -> None:
    a = environment_key("sha256:base", ["jq", "curl"], "1")
    assert a == environment_key("sha256:base", ["curl", "jq", "jq"], "1")
    assert a != environment_key("sha256:base", ["curl"], "1")
    assert a != environment_key("sha256:other", ["jq", "curl"], "1")
    assert a != environment_key("sha256:base", ["jq", "curl"], "2")


def test_build_context_carries_packages_as_data() -> None:
    import tarfile

    hostile = ["jq", "x\nRUN rm -rf /"]  # never admitted by the API; proves it stays data here
    with tarfile.open(fileobj=build_context(hostile)) as tar:
        dockerfile = tar.extractfile("Dockerfile").read().decode()  # type: ignore[union-attr]
        packages = tar.extractfile("packages.txt").read().decode()  # type: ignore[union-attr]
    assert "rm -rf" not in dockerfile
    assert packages == "jq\nx\nRUN rm -rf /\n"


async def test_eviction_leaves_the_images_of_another_services_database_alone(
    runtime: CountingRuntime, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    version = f"test-{uuid.uuid4()}"
    ours = EnvironmentImages(
        DockerImages(runtime), sessionmaker, template_version=version, build_timeout=120
    )
    # Another service on the same engine, with a database of its own and a cache cap of 0.
    theirs = EnvironmentImages(
        DockerImages(runtime),
        await sqlite_sessionmaker(tmp_path / "other.db"),
        template_version=version,
        build_timeout=120,
    )
    key, base_id = await ours.resolve_key("busybox:latest", [])
    try:
        built = await ours.ensure(key, base_id, "busybox:latest", [])

        assert await theirs.evict(max_count=0, max_bytes=0) == []
        assert await runtime.image_info(built.tag) is not None
        # Its own database's images are its to evict.
        assert await ours.evict(max_count=0, max_bytes=0) == [key]
        assert await runtime.image_info(built.tag) is None
    finally:
        subprocess.run(["docker", "rmi", "-f", tag_for(key)], capture_output=True)
