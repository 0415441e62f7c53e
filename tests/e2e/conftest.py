"""Fixtures for e2e tests: services on PostgreSQL + S3 and on the embedded defaults."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.harness import Service, create_database, docker_ids, pg_s3_env, start_service


@pytest.fixture(scope="session")
def volumes_at_start() -> set[str]:
    """Docker volumes that existed before the e2e tests ran."""
    return set(docker_ids("volume", "ls", "-q"))


@pytest.fixture(scope="session", autouse=True)
def _record_volumes(volumes_at_start: set[str]) -> None:
    """Records the volume list before any e2e service starts."""


@pytest.fixture(scope="session")
def e2e_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
async def created_databases(postgres_url: str) -> AsyncIterator[list[str]]:
    """Every database the e2e tests made; dropped once the services using them are gone."""
    databases: list[str] = []
    yield databases
    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for database in databases:
            name = database.rpartition("/")[2]
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class ServiceSet:
    """Services started for one scope; `close` stops them and removes what they left."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Service] = []

    def __call__(self, env: dict[str, str]) -> Service:
        service = start_service(self.tmp, env)
        self.started.append(service)
        return service

    def close(self) -> None:
        while self.started:
            service = self.started.pop()
            service.stop()
            # A stopped service leaves running containers for its next start to adopt; the
            # suite has no next start, so it removes what its services left.
            leftovers = docker_ids(
                "ps", "-aq", "--filter", f"label=taskdeploy.instance={service.instance_id}"
            )
            if leftovers:
                done = subprocess.run(
                    ["docker", "rm", "-f", "-v", *leftovers], capture_output=True, text=True
                )
                # One may have gone meanwhile (its engine-side removal was under way).
                gone = all("No such container" in line for line in done.stderr.splitlines())
                assert done.returncode == 0 or gone, done.stderr


@pytest.fixture(scope="session")
def session_services(e2e_tmp: Path, created_databases: list[str]) -> Iterator[ServiceSet]:
    """The services every module shares (pg_service, sqlite_service)."""
    services = ServiceSet(e2e_tmp)
    yield services
    services.close()


@pytest.fixture(scope="module")
def module_services(e2e_tmp: Path, created_databases: list[str]) -> Iterator[ServiceSet]:
    """Services a module's fixtures start; stopped when the module ends, so idle services and
    their database pools do not pile up over the suite."""
    services = ServiceSet(e2e_tmp)
    yield services
    services.close()


@pytest.fixture
def service_factory(e2e_tmp: Path, created_databases: list[str]) -> Iterator[ServiceSet]:
    """Services one test starts with its own settings; stopped when the test ends."""
    services = ServiceSet(e2e_tmp)
    yield services
    services.close()


@pytest.fixture
async def pg_database(postgres_url: str, created_databases: list[str]) -> str:
    """A fresh database for one test: a service started on it shares it with nobody, so no
    other service's workers can claim its runs."""
    database = await create_database(postgres_url)
    created_databases.append(database)
    return database


@pytest.fixture(scope="session")
async def pg_service(
    session_services: ServiceSet, postgres_url: str, s3_endpoint: str, created_databases: list[str]
) -> Service:
    """The main configuration: PostgreSQL + S3 (moto) + Docker, on a database of its own."""
    database = await create_database(postgres_url)
    created_databases.append(database)
    return session_services(pg_s3_env(database, s3_endpoint))


@pytest.fixture(scope="session")
def sqlite_service(session_services: ServiceSet) -> Service:
    """The embedded defaults: SQLite + a local-directory object store."""
    return session_services({})


@pytest.fixture
async def client(pg_service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=30) as c:
        yield c


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault suite's figures: kills survived, recovery time after the restart."""
    from tests.e2e.test_crash_safety import fault_log

    log = fault_log()
    if not log.exists():
        return
    cases = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    survived = [case for case in cases if case["ok"]]
    times = sorted(case["recovery_seconds"] for case in survived if "recovery_seconds" in case)
    write = terminalreporter.write_line
    write("")
    write("fault suite: SIGKILL of the service, then a restart")
    for case in cases:
        seconds = case.get("recovery_seconds")
        shown = f"{seconds:6.1f} s" if seconds is not None else "     -  "
        write(f"  {case['case']:<32} {'survived' if case['ok'] else 'FAILED'}  recovery {shown}")
    write(f"  kills survived: {len(survived)}/{len(cases)}")
    if times:
        p50 = times[len(times) // 2]
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        write(f"  recovery after restart: p50 {p50:.1f} s, p99 {p99:.1f} s (lease 3 s)")
