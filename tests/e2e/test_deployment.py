"""The deployment files: docker-compose.yml validates and wires its services, and the Dockerfile
builds an image that runs as non-root and reports healthy."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.e2e.harness import REPO

T = TypeVar("T")

SERVICE_IMAGE = "taskdeploy-service:test"
PYTHON_IMAGE = "taskdeploy/python:3.11-slim"
TEST_LABEL = "taskdeploy.test=deployment"
SERVICES = {"taskdeploy", "postgres", "minio", "minio-init"}
HEALTHY = {"condition": "service_healthy"}
# Runs inside the container: never connect to a container's address from the host.
HEALTH_PROBE = (
    "import urllib.request as u; "
    "r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/healthz', timeout=4); "
    "print(r.read().decode())"
)


def run(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def checked(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        pytest.fail(f"{what} failed (exit {result.returncode}):\n{output}", pytrace=False)
    return result.stdout


def compose_config(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """`docker-compose config` of the repo's file, with only `env` to interpolate from."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed: scripts/ensure-docker.sh must install Debian's "
            "docker-compose package (run the suite through ./scripts/test)",
            pytrace=False,
        )
    # An empty env file: a developer's .env (or shell) must not change what is checked here.
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    # Plain `config`, not `-q`: -q skips some type checks.
    result = run(
        exe,
        "--env-file",
        str(empty_env_file),
        "-f",
        str(REPO / "docker-compose.yml"),
        "config",
        cwd=REPO,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), **env},
    )
    config: dict[str, Any] = yaml.safe_load(checked(result, "docker-compose config"))
    return config


def test_compose_file_validates_and_wires_healthy_services(tmp_path: Path) -> None:
    config = compose_config(tmp_path, {"DOCKER_GID": "4242"})
    services = config["services"]
    assert set(services) == SERVICES

    app = services["taskdeploy"]
    assert app["build"]["args"] == {"PYTHON_IMAGE": "python:3.11-slim"}
    assert any(v.startswith("/var/run/docker.sock:/var/run/docker.sock") for v in app["volumes"])
    assert any(":/var/lib/taskdeploy" in v for v in app["volumes"])
    assert [str(g) for g in app["group_add"]] == ["4242"]
    assert app["depends_on"] == {"postgres": HEALTHY, "minio": HEALTHY}
    assert services["minio-init"]["depends_on"] == {"minio": HEALTHY}
    for name in ("taskdeploy", "postgres", "minio"):
        assert services[name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(app["healthcheck"]["test"])

    env = app["environment"]
    minio_env = services["minio"]["environment"]
    assert env["TASKDEPLOY_DATABASE_URL"] == (
        "postgresql+asyncpg://taskdeploy:taskdeploy@postgres:5432/taskdeploy"
    )
    assert env["TASKDEPLOY_OBJECT_STORE"] == "s3"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"

    # Whatever is published is published on loopback only.
    published = [str(p) for s in services.values() for p in s.get("ports", [])]
    assert "127.0.0.1:8000:8000/tcp" in published
    assert all(p.startswith("127.0.0.1:") for p in published), published


def test_compose_docker_gid_has_a_default(tmp_path: Path) -> None:
    config = compose_config(tmp_path, {})
    assert [str(g) for g in config["services"]["taskdeploy"]["group_add"]] == ["999"]


# ----------------------------------------------------------------------------- the image


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def served_on_loopback(directory: Path) -> Iterator[str]:
    """An HTTP directory listing of `directory` on 127.0.0.1 (pip reads it as --find-links)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            thread.join(10)


def download_wheelhouse(dest: Path) -> None:
    """The image's runtime and build requirements as wheels, fetched by the host's pip.

    Build containers may not reach PyPI (on the CI host they do not trust the TLS-intercepting
    proxy's certificate that the host's pip is configured for), so the build installs from this
    wheelhouse (`PIP_FIND_LINKS` + `PIP_NO_INDEX`) and the test does not depend on that.
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    result = run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        # The image's interpreter, whatever the host's is.
        "--only-binary",
        ":all:",
        "--python-version",
        "3.11",
        *requirements,
        timeout=300,
    )
    checked(result, "pip download of the image's requirements")


def builder_stage_image(build_log: str) -> str | None:
    """The builder stage's last image, read from the classic builder's log: the id printed just
    before the second FROM. No image descends from it, so removing the service image leaves it."""
    last_id = None
    froms = 0
    for line in build_log.splitlines():
        if re.match(r"Step \d+/\d+ : FROM ", line):
            froms += 1
            if froms == 2:
                return last_id
        elif step := re.fullmatch(r" ---> ([0-9a-f]{12})", line.rstrip()):
            last_id = step.group(1)
    return None


def wait_for(what: str, seconds: float, check: Callable[[], T | None]) -> T:
    """Call `check` every 0.25 s until it returns a truthy value; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {seconds}s", pytrace=False)
        time.sleep(0.25)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_service_image_runs_as_non_root_and_becomes_healthy(tmp_path: Path) -> None:
    checked(
        run(str(REPO / "scripts" / "ensure-python-image.sh"), timeout=600),
        "scripts/ensure-python-image.sh",
    )
    wheels = tmp_path / "wheels"
    download_wheelhouse(wheels)

    start = time.monotonic()
    with served_on_loopback(wheels) as wheel_url:
        build = run(
            "docker",
            "build",
            # A failed step must not leave its container behind.
            "--force-rm",
            # The build container shares the host's loopback to reach the wheelhouse.
            "--network",
            "host",
            "--build-arg",
            f"PYTHON_IMAGE={PYTHON_IMAGE}",
            "--build-arg",
            f"PIP_FIND_LINKS={wheel_url}",
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--label",
            TEST_LABEL,
            "-t",
            SERVICE_IMAGE,
            str(REPO),
            timeout=600,
        )
    build_seconds = time.monotonic() - start
    builder = builder_stage_image(build.stdout)
    try:
        checked(build, "docker build of the service image")
        size = inspect(SERVICE_IMAGE, "{{.Size}}")
        print(f"built {SERVICE_IMAGE} in {build_seconds:.1f}s, {int(size) / 1e6:.0f} MB")
        check_image()
    finally:
        run("docker", "rmi", "-f", SERVICE_IMAGE, *([builder] if builder else []))


def check_image() -> None:
    one_shot = ["docker", "run", "--rm", "--network", "none", SERVICE_IMAGE]
    assert checked(run(*one_shot, "id", "-u"), "id -u").strip() == "10001"
    assert "serve" in checked(run(*one_shot, "taskdeploy", "--help"), "taskdeploy --help")
    migrations = "import app.migrate as m; print(m.MIGRATIONS_DIR.is_dir())"
    assert checked(run(*one_shot, "python", "-c", migrations), "migrations").strip() == "True"

    # No Docker socket and no workers: the API still starts (on SQLite in the data dir).
    name = f"taskdeploy-deployment-{uuid.uuid4().hex[:10]}"
    container = checked(
        run(
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--label",
            TEST_LABEL,
            "--network",
            "none",
            "-e",
            "TASKDEPLOY_WORKERS_ENABLED=false",
            "-e",
            "TASKDEPLOY_ALLOWED_BUCKETS=taskdeploy",  # with a key, the service needs the list
            "--health-interval",
            "1s",
            "--health-timeout",
            "5s",
            "--health-retries",
            "3",
            "--health-start-period",
            "60s",
            SERVICE_IMAGE,
            # The image listens on 0.0.0.0, where the service refuses to start without a key.
            "sh",
            "-c",
            "taskdeploy keys create --owner ops --admin >/dev/null && exec taskdeploy serve",
        ),
        "docker run -d",
    ).strip()
    try:

        def healthz() -> str | None:
            if inspect(container, "{{.State.Running}}") != "true":
                pytest.fail(f"the service exited:\n{logs(container)}", pytrace=False)
            probe = run("docker", "exec", container, "python", "-c", HEALTH_PROBE, timeout=30)
            return probe.stdout if probe.returncode == 0 else None

        body = wait_for("GET /healthz inside the container", 60, healthz)
        assert json.loads(body)["status"] == "ok"

        def docker_health() -> str | None:
            status = inspect(container, "{{.State.Health.Status}}")
            if status == "unhealthy":
                pytest.fail(f"the HEALTHCHECK failed:\n{logs(container)}", pytrace=False)
            return status if status == "healthy" else None

        wait_for("the HEALTHCHECK to report healthy", 30, docker_health)

        # The dashboard's templates and vendored assets are in the image.
        for path, marker in (
            ("/ui/runs", "<title>Runs · taskdeploy</title>"),
            ("/ui/static/vendor/uPlot.iife.min.js", "uPlot"),
        ):
            probe = HEALTH_PROBE.replace("/healthz", path)
            page = run("docker", "exec", container, "python", "-c", probe, timeout=30)
            assert page.returncode == 0 and marker in page.stdout, (path, page.stderr)
    finally:
        run("docker", "rm", "-f", "-v", container)


def inspect(obj: str, template: str) -> str:
    return checked(run("docker", "inspect", "-f", template, obj), "docker inspect").strip()


def logs(container: str) -> str:
    result = run("docker", "logs", "--tail", "40", container)
    return (result.stdout + result.stderr)[-4000:]
