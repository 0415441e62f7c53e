"""The engine is shared: a service leaves what is not its own alone, and its image cache cap
counts only its own images."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import httpx

from tests.e2e.harness import DEBIAN, Service, docker_ids, make_run, pg_s3_env, run_to_end


async def test_foreign_containers_are_left_untouched(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    foreign = docker_ids("create", "busybox:latest", "sleep", "3600")[0]
    other_instance = docker_ids(
        "create",
        "--label",
        "taskdeploy.managed=true",
        "--label",
        "taskdeploy.instance=someone-else",
        "busybox:latest",
        "true",
    )[0]
    try:
        # A fresh service reconciles at start-up and runs a job; neither touches the above.
        service = service_factory(pg_s3_env(pg_database, s3_endpoint))
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
            run = await run_to_end(client, make_run(f"s3://{bucket}/o"))
            assert run["state"] == "succeeded"
        present = set(docker_ids("ps", "-aq", "--no-trunc"))
        assert {foreign, other_instance} <= present
    finally:
        subprocess.run(["docker", "rm", "-f", foreign, other_instance], capture_output=True)


async def test_image_cache_stays_within_its_cap(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    cap = 2
    service: Service = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_IMAGE_CACHE_MAX_COUNT": str(cap)}
    )
    package_sets = [["jq"], ["bc"], ["file"]]
    image_ids: list[str] = []
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        for packages in package_sets:
            body = make_run(f"s3://{bucket}/o", image=DEBIAN, packages=packages, command="true")
            run = await run_to_end(client, body, 600)
            assert run["state"] == "succeeded", run
            image_ids.append(run["image_id"])
    assert len(set(image_ids)) == len(package_sets)

    # Only this service's images count: the engine may hold other services' caches.
    def still_there() -> list[str]:
        return [
            i
            for i in image_ids
            if subprocess.run(
                ["docker", "image", "inspect", i], capture_output=True, check=False
            ).returncode
            == 0
        ]

    # The janitor is woken after every build; wait for it to get under the cap.
    deadline = time.monotonic() + 60
    kept = still_there()
    while len(kept) > cap and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        kept = still_there()
    assert len(kept) <= cap, kept
    assert image_ids[-1] in kept  # least recently used first: the newest stays
