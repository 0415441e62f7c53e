"""The ImageBuilder port on one Docker engine: environment images built from an in-memory tar
context (a fixed Dockerfile, the installer, the run wrapper, the package list), tagged by their
key."""

from __future__ import annotations

import io
import tarfile
from importlib import resources
from typing import Final

from app.adapters.docker import DockerRuntime
from app.adapters.docker_types import ImageInfo
from app.adapters.ports import JOB_UID, BuildLimits, ContainerError, EnvironmentImage

MANAGED_LABEL: Final = "taskdeploy.managed"
KIND_LABEL: Final = "taskdeploy.kind"
KEY_LABEL: Final = "taskdeploy.env_key"
PACKAGES_LABEL: Final = "taskdeploy.packages"
TAG_REPOSITORY: Final = "taskdeploy-env"
# Where Dockerfile.env puts app/assets/entrypoint.sh in every environment image.
WRAPPER: Final = "/opt/taskdeploy/entrypoint.sh"


def asset(name: str) -> bytes:
    return resources.files("app.assets").joinpath(name).read_bytes()


def build_context(packages: list[str]) -> io.BytesIO:
    """The build context as an in-memory tar: a fixed Dockerfile, the installer, the wrapper,
    the list."""
    files = {
        "Dockerfile": asset("Dockerfile.env"),
        "install-packages.sh": asset("install-packages.sh"),
        "entrypoint.sh": asset("entrypoint.sh"),
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


def tag_for(key: str) -> str:
    return f"{TAG_REPOSITORY}:{key[:32]}"


def _image(key: str, info: ImageInfo) -> EnvironmentImage:
    return EnvironmentImage(key=key, ref=tag_for(key), image_id=info.id, size=info.size)


class DockerImages:
    def __init__(self, docker: DockerRuntime) -> None:
        self.docker = docker

    async def base_id(self, image: str) -> str | None:
        info = await self.docker.image_info(image)
        return info.id if info is not None else None

    async def find(self, key: str) -> EnvironmentImage | None:
        info = await self.docker.image_info(tag_for(key))
        return _image(key, info) if info is not None else None

    async def build(
        self, key: str, base_id: str, packages: list[str], limits: BuildLimits | None
    ) -> EnvironmentImage:
        labels = {
            MANAGED_LABEL: "true",
            KIND_LABEL: "environment",
            KEY_LABEL: key,
            PACKAGES_LABEL: ",".join(sorted(set(packages))),
        }
        result = await self.docker.build_image(
            build_context(packages),
            tag=tag_for(key),
            labels=labels,
            buildargs={"BASE_IMAGE": base_id, "JOB_UID": str(JOB_UID)},
            limits=limits,
        )
        info = await self.docker.image_info(tag_for(key))
        size = info.size if info is not None else 0
        return EnvironmentImage(key=key, ref=tag_for(key), image_id=result.image_id, size=size)

    async def cached(self) -> list[EnvironmentImage]:
        found = await self.docker.list_images(f"{KIND_LABEL}=environment")
        return [_image(key, i) for i in found if (key := i.labels.get(KEY_LABEL, ""))]

    async def evict(self, image: EnvironmentImage) -> bool:
        """Untags and removes it; the engine refuses while a container uses it (no force)."""
        try:
            await self.docker.remove_image(image.ref)
        except ContainerError:
            return False
        return True

    async def prune(self, older_than_seconds: float) -> int:
        return await self.docker.prune_dangling_images(older_than_seconds)
