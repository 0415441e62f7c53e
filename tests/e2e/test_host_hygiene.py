"""Runs after every other test (its own step in scripts/test): nothing the service ran is left
on the Docker host, and what is not the service's is left alone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import Service, docker_ids

# Looks at the whole engine: runs alone, after everything else.
pytestmark = pytest.mark.serial


def test_no_containers_or_volumes_left_behind(
    pg_service: Service, sqlite_service: Service, volumes_at_start: set[str]
) -> None:
    leftovers = docker_ids("ps", "-aq", "--filter", "label=taskdeploy.managed=true")
    instance_leftovers = [
        c
        for c in leftovers
        if subprocess.run(
            ["docker", "inspect", "-f", '{{index .Config.Labels "taskdeploy.instance"}}', c],
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .startswith("e2e-")
    ]
    assert instance_leftovers == []
    # scripts/test lists the volumes before its first pytest step; else this run's start counts.
    listed = os.environ.get("TASKDEPLOY_TEST_VOLUMES_AT_START")
    before = set(Path(listed).read_text().split()) if listed else volumes_at_start
    volumes_now = set(docker_ids("volume", "ls", "-q"))
    assert volumes_now - before == set()
