"""A client generated from the service's own OpenAPI document (openapi-python-client) drives it.

The document is fetched from the running service, the generator runs with `--fail-on-warning`
(otherwise an endpoint it cannot generate is skipped with exit 0), and the generated package is
imported from its temporary folder and used against the real service on PostgreSQL + S3.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.e2e.harness import TERMINAL, Service, make_run

# The generator and the `ruff` it runs as a post-hook both come from the dev dependencies.
VENV_BIN = Path(sys.executable).parent
GENERATOR = VENV_BIN / "openapi-python-client"
PACKAGE = "taskdeploy_client"  # not "client": the package is imported by its folder's name

EXPECTED_OPERATIONS = {
    "runs": {
        "create_run",
        "list_runs",
        "get_run",
        "cancel_run",
        "get_run_logs",
        "get_run_metrics",
        "list_run_events",
    },
    "schedules": {
        "create_schedule",
        "list_schedules",
        "get_schedule",
        "update_schedule",
        "delete_schedule",
        "pause_schedule",
        "resume_schedule",
        "trigger_schedule",
        "list_schedule_runs",
        "list_skipped_fires",
    },
    "health": {"healthz", "readyz"},
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
MISSING_RUN = "0" * 32


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


@pytest.fixture(scope="module")
def spec(pg_service: Service) -> dict[str, Any]:
    resp = httpx.get(f"{pg_service.base_url}/openapi.json", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def generated(
    spec: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ModuleType, Path]]:
    """Generates the client package, then imports it from its parent folder."""
    if not GENERATOR.exists():
        pytest.fail(f"{GENERATOR} is missing: pip install -e '.[dev]'", pytrace=False)
    work = tmp_path_factory.mktemp("generated-client")
    (work / "openapi.json").write_text(json.dumps(spec))
    out = work / PACKAGE
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(GENERATOR), "generate", "--path", "openapi.json", "--meta", "none"]
    cmd += ["--fail-on-warning", "--output-path", str(out)]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"generator exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert (out / "__init__.py").is_file(), sorted(p.name for p in work.iterdir())

    sys.path.insert(0, str(work))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(PACKAGE), out
    finally:
        sys.path.remove(str(work))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def api_client(generated: tuple[ModuleType, Path], pg_service: Service) -> Iterator[Any]:
    """The generated `Client`: this service has no API keys, so no token is sent. (The generated
    functions are annotated with `AuthenticatedClient` because the spec declares a bearer scheme;
    both classes have the same interface.)"""
    package, _ = generated
    with package.Client(base_url=pg_service.base_url, timeout=httpx.Timeout(30)) as c:
        yield c


def api(operation: str) -> Any:
    """The generated module of one operation, e.g. `api("runs.create_run")`."""
    return importlib.import_module(f"{PACKAGE}.api.{operation}")


def test_operation_ids_are_the_route_names(spec: dict[str, Any]) -> None:
    found: dict[str, set[str]] = {}
    ids: list[str] = []
    for method, path, operation in operations(spec):
        op_id = operation.get("operationId", "")
        ids.append(op_id)
        # FastAPI's default is `<name>_<path>_<method>`, e.g. create_run_v1_runs_post.
        assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", op_id), (method, path, op_id)
        assert not re.search(r"_(get|put|post|delete|patch)$|_v1_", op_id), (method, path, op_id)
        tags = operation.get("tags", [])
        assert len(tags) == 1, (method, path, tags)  # one module folder per resource
        found.setdefault(tags[0], set()).add(op_id)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for tag, expected in EXPECTED_OPERATIONS.items():
        assert expected <= found.get(tag, set()), (tag, sorted(expected - found.get(tag, set())))


def test_every_response_declares_a_schema(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        assert operation["responses"], (method, path)
        for code, response in operation["responses"].items():
            content = response.get("content")
            if code == "204":
                assert not content, (method, path, code, content)
                continue
            assert content, (method, path, code, response)
            for media_type, body in content.items():
                assert body.get("schema"), (method, path, code, media_type)


def test_error_responses_are_declared_as_json(spec: dict[str, Any]) -> None:
    wrong = []
    for method, path, operation in operations(spec):
        for code, response in operation["responses"].items():
            for media_type, body in response.get("content", {}).items():
                is_error = body.get("schema", {}).get("$ref", "").endswith("/ErrorResponse")
                if is_error and media_type != "application/json":
                    wrong.append(f"{method} {path} {code} {media_type}")
    assert not wrong, wrong


def test_generated_client_runs_a_command(
    generated: tuple[ModuleType, Path], api_client: Any, pg_service: Service, bucket: str
) -> None:
    package, out = generated
    models = importlib.import_module(f"{PACKAGE}.models")
    for tag, expected in EXPECTED_OPERATIONS.items():
        for op_id in expected:
            assert (out / "api" / tag / f"{op_id}.py").is_file(), (tag, op_id)

    body = models.RunCreate.from_dict(
        make_run(f"s3://{bucket}/gen/", command="echo generated-client")
    )
    created = api("runs.create_run").sync_detailed(client=api_client, body=body)
    assert created.status_code == 202, created.content
    assert isinstance(created.parsed, models.RunOut), created.parsed
    run_id = created.parsed.id

    get_run = api("runs.get_run")
    deadline = time.monotonic() + 45
    run = created.parsed
    while run.state.value not in TERMINAL:
        assert time.monotonic() < deadline, f"run {run_id} still {run.state.value}"
        time.sleep(0.1)
        resp = get_run.sync_detailed(run_id, client=api_client)
        assert resp.status_code == 200, resp.content
        run = resp.parsed
        assert isinstance(run, models.RunOut), run
    assert run.state == models.RunState.SUCCEEDED, run.to_dict()
    assert run.exit_code == 0, run.to_dict()

    logs = api("runs.get_run_logs").sync_detailed(run_id, client=api_client)
    assert logs.status_code == 200, logs.content
    assert logs.content == b"generated-client\n"
    assert logs.parsed == "generated-client\n"

    listed = api("runs.list_runs").sync_detailed(client=api_client, limit=100)
    assert listed.status_code == 200, listed.content
    assert isinstance(listed.parsed, models.PageRunOut), listed.parsed
    assert run_id in [item.id for item in listed.parsed.items]

    bad = models.RunCreate.from_dict(make_run(f"s3://{bucket}/gen/", timeout_seconds=0))
    rejected = api("runs.create_run").sync_detailed(client=api_client, body=bad)
    assert rejected.status_code == 422, rejected.content
    assert isinstance(rejected.parsed, models.ErrorResponse), rejected.parsed
    assert rejected.parsed.error.code == "validation_error", rejected.parsed.to_dict()
    assert "timeout_seconds" in str(rejected.parsed.error.field), rejected.parsed.to_dict()

    # The bearer scheme reaches the client: AuthenticatedClient sends the token, and an unknown
    # one is a typed 401.
    with package.AuthenticatedClient(base_url=pg_service.base_url, token="not-a-key") as authed:
        refused = get_run.sync_detailed(run_id, client=authed)
    assert refused.status_code == 401, refused.content
    assert isinstance(refused.parsed, models.ErrorResponse), refused.parsed
    assert refused.parsed.error.code == "unauthorized", refused.parsed.to_dict()

    missing = get_run.sync_detailed(MISSING_RUN, client=api_client)
    assert missing.status_code == 404, missing.content
    assert isinstance(missing.parsed, models.ErrorResponse), missing.parsed
    assert missing.parsed.error.code == "not_found", missing.parsed.to_dict()


def test_generated_client_reads_a_missing_runs_logs_as_error_response(api_client: Any) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    missing = api("runs.get_run_logs").sync_detailed(MISSING_RUN, client=api_client)
    assert missing.status_code == 404, missing.content
    assert isinstance(missing.parsed, models.ErrorResponse), missing.parsed
    assert missing.parsed.error.code == "not_found", missing.parsed.to_dict()
