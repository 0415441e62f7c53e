"""Session-wide access to the real parts the suite runs against: PostgreSQL, an S3 endpoint, Docker,
Chromium.

`scripts/test` starts them and exports their addresses; a test run without them fails loudly
instead of skipping, because every core test needs the real thing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import boto3
import pytest

S3_REGION = "us-east-1"


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite through ./scripts/test", pytrace=False)
    return value


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """An asyncpg URL of a PostgreSQL database the suite may create schemas in."""
    return _required_env("TASKDEPLOY_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """The URL of moto's S3 server on loopback."""
    return _required_env("TASKDEPLOY_TEST_S3_ENDPOINT")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium, which Playwright drives as a system browser (nothing is downloaded)."""
    return _required_env("TASKDEPLOY_TEST_CHROMIUM")


@pytest.fixture(scope="session", autouse=True)
def _aws_test_credentials() -> Iterator[None]:
    """moto accepts any credentials; make sure nothing can pick up real ones."""
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = S3_REGION
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str):  # type: ignore[no-untyped-def]
    """A plain boto3 client for arranging and checking bucket contents from tests."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=S3_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


# Integration modules that drive the real Docker engine (the rest need only PostgreSQL, S3).
DOCKER_MODULES = frozenset({"test_docker_adapter.py", "test_entrypoint.py", "test_environments.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks what the fast tier (`./scripts/test --fast`, `-m "not e2e and not docker"`)
    leaves out: everything under tests/e2e, and the Docker integration modules."""
    for item in items:
        parts = item.path.parts
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.docker)
        elif "integration" in parts and item.path.name in DOCKER_MODULES:
            item.add_marker(pytest.mark.docker)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        items[:] = slow_first_in_each_share(items, workers)


def slow_first_in_each_share(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The same tests, ordered so that each worker's first share (pytest-xdist's worksteal
    gives worker k the k-th contiguous slice, sized as below) begins with its part of the
    `slow` tests: the minutes-long ones start at once instead of ending the run alone."""
    slow = [item for item in items if item.get_closest_marker("slow")]
    rest = [item for item in items if not item.get_closest_marker("slow")]
    ordered: list[pytest.Item] = []
    remaining = len(items)
    for k in range(workers):
        share = remaining // (workers - k)
        mine = slow[k::workers]
        take = max(share - len(mine), 0)
        ordered += mine + rest[:take]
        del rest[:take]
        remaining -= share
    return ordered + rest
